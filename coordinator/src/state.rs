//! A writer's state as VSS keeps it, the words `umbra writers` shows for
//! it, and how a writer fared in one set. Pure data; the sequence decides
//! the transitions.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

use crate::protocol::{Component, Event};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriterState {
    Stable,
    WaitingForFreeze,
    WaitingForThaw,
    WaitingForPostSnapshot,
    WaitingForBackupComplete,
    FailedAt(Event),
}

impl WriterState {
    /// The state a writer is in once it answered `event` successfully.
    pub fn after(event: Event) -> WriterState {
        match event {
            Event::PrepareForSnapshot => WriterState::WaitingForFreeze,
            Event::Freeze => WriterState::WaitingForThaw,
            Event::Thaw => WriterState::WaitingForPostSnapshot,
            Event::PostSnapshot => WriterState::WaitingForBackupComplete,
            _ => WriterState::Stable,
        }
    }

    pub fn is_failed(self) -> bool {
        matches!(self, WriterState::FailedAt(_))
    }
}

impl fmt::Display for WriterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriterState::Stable => f.write_str("stable"),
            WriterState::WaitingForFreeze => f.write_str("waiting-for-freeze"),
            WriterState::WaitingForThaw => f.write_str("waiting-for-thaw"),
            WriterState::WaitingForPostSnapshot => f.write_str("waiting-for-post-snapshot"),
            WriterState::WaitingForBackupComplete => f.write_str("waiting-for-backup-complete"),
            WriterState::FailedAt(event) => write!(f, "failed-at-{event}"),
        }
    }
}

impl Serialize for WriterState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_as_vss_names_them() {
        assert_eq!(WriterState::Stable.to_string(), "stable");
        assert_eq!(
            WriterState::after(Event::PrepareForSnapshot).to_string(),
            "waiting-for-freeze"
        );
        assert_eq!(
            WriterState::after(Event::Freeze).to_string(),
            "waiting-for-thaw"
        );
        assert_eq!(
            WriterState::after(Event::Thaw).to_string(),
            "waiting-for-post-snapshot"
        );
        assert_eq!(
            WriterState::after(Event::PostSnapshot).to_string(),
            "waiting-for-backup-complete"
        );
        assert_eq!(
            WriterState::after(Event::BackupComplete),
            WriterState::Stable
        );
        assert_eq!(
            WriterState::FailedAt(Event::PrepareForBackup).to_string(),
            "failed-at-prepare-backup"
        );
    }
}

/// A writer that took part in a set, and how it fared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetWriter {
    pub name: String,
    pub required: bool,
    /// `ok`, or the `failed-at-EVENT` state it ended in.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub components: Vec<Component>,
}
