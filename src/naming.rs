//! Names and times of shadow copy sets: a set is named after its UTC creation
//! time through the configured strftime format, and its `created` time
//! travels as RFC 3339. This module never picks a suffix for a name that is
//! taken (the store does) and never reads a clock other than the one it is
//! handed.

use std::fmt::Write as _;

use chrono::format::StrftimeItems;
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use umbra_store::Timestamp;

/// The default set name: `2026-11-25T084250Z`. No colons: they break
/// Windows clients reading the snapshots over Samba.
pub const DEFAULT_NAME_FORMAT: &str = "%Y-%m-%dT%H%M%SZ";

/// The name of the browser's link to the newest set; no set or volume may
/// be called that.
pub const LATEST: &str = "latest";

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameFormatError {
    #[error("{0:?} is not a valid strftime format")]
    Invalid(String),
    #[error("{0:?} makes empty set names")]
    Empty(String),
    #[error("{format:?} makes set names with a '/' or a NUL (e.g. {sample:?})")]
    BadCharacter { format: String, sample: String },
    #[error("{format:?} makes the reserved set name {sample:?}")]
    Reserved { format: String, sample: String },
}

/// A validated strftime format for set names, always applied in UTC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameFormat {
    text: String,
}

impl NameFormat {
    /// Checks that `text` parses as strftime and makes names that can be
    /// directory names in the browser.
    pub fn new(text: &str) -> Result<NameFormat, NameFormatError> {
        if StrftimeItems::new(text).parse().is_err() {
            return Err(NameFormatError::Invalid(text.to_string()));
        }
        let format = NameFormat {
            text: text.to_string(),
        };
        let sample = format
            .try_name(sample_time())
            .ok_or_else(|| NameFormatError::Invalid(text.to_string()))?;
        if sample.is_empty() {
            return Err(NameFormatError::Empty(text.to_string()));
        }
        if sample.contains(['/', '\0']) {
            return Err(NameFormatError::BadCharacter {
                format: text.to_string(),
                sample,
            });
        }
        if [LATEST, ".", ".."].contains(&sample.as_str()) {
            return Err(NameFormatError::Reserved {
                format: text.to_string(),
                sample,
            });
        }
        Ok(format)
    }

    /// The wanted name of a set created at `at`.
    pub fn name(&self, at: DateTime<Utc>) -> String {
        // A validated format always renders; the fallback only keeps this
        // function total.
        self.try_name(at)
            .unwrap_or_else(|| at.format(DEFAULT_NAME_FORMAT).to_string())
    }

    fn try_name(&self, at: DateTime<Utc>) -> Option<String> {
        let mut out = String::new();
        write!(out, "{}", at.format(&self.text)).ok()?;
        Some(out)
    }
}

impl Default for NameFormat {
    fn default() -> Self {
        NameFormat {
            text: DEFAULT_NAME_FORMAT.to_string(),
        }
    }
}

fn sample_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 8, 42, 50)
        .single()
        .unwrap_or(DateTime::UNIX_EPOCH)
}

/// The store's timestamp of `at`.
pub fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp {
        secs: at.timestamp(),
        nanos: at.timestamp_subsec_nanos(),
    }
}

/// `ts` as RFC 3339 in UTC to the second: `2026-11-25T08:42:50Z`.
pub fn rfc3339(ts: Timestamp) -> String {
    match DateTime::from_timestamp(ts.secs, ts.nanos) {
        Some(at) => at.to_rfc3339_opts(SecondsFormat::Secs, true),
        // Beyond chrono's range (year 262143): say the number rather than lie.
        None => format!("@{}", ts.secs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .expect("valid test time")
    }

    #[test]
    fn default_names_have_no_colons() {
        let name = NameFormat::default().name(at(2026, 11, 25, 8, 42, 50));
        assert_eq!(name, "2026-11-25T084250Z");
    }

    #[test]
    fn samba_format_is_accepted() {
        let format = NameFormat::new("@GMT-%Y.%m.%d-%H.%M.%S").expect("valid");
        assert_eq!(
            format.name(at(2026, 1, 2, 3, 4, 5)),
            "@GMT-2026.01.02-03.04.05"
        );
    }

    #[test]
    fn names_are_utc_whatever_the_offset_of_the_instant() {
        let local = chrono::FixedOffset::east_opt(5 * 3600)
            .and_then(|o| o.with_ymd_and_hms(2026, 11, 25, 13, 42, 50).single())
            .expect("valid time");
        let name = NameFormat::default().name(local.with_timezone(&Utc));
        assert_eq!(name, "2026-11-25T084250Z");
    }

    #[test]
    fn bad_formats_are_refused() {
        assert!(matches!(
            NameFormat::new("%Y-%Q"),
            Err(NameFormatError::Invalid(_))
        ));
        assert!(matches!(
            NameFormat::new(""),
            Err(NameFormatError::Empty(_))
        ));
        assert!(matches!(
            NameFormat::new("%Y/%m"),
            Err(NameFormatError::BadCharacter { .. })
        ));
        assert!(matches!(
            NameFormat::new("%D"),
            Err(NameFormatError::BadCharacter { .. })
        ));
        assert!(matches!(
            NameFormat::new("latest"),
            Err(NameFormatError::Reserved { .. })
        ));
        assert!(matches!(
            NameFormat::new(".."),
            Err(NameFormatError::Reserved { .. })
        ));
    }

    #[test]
    fn created_is_rfc3339_utc_to_the_second() {
        let ts = timestamp(at(2026, 11, 25, 8, 42, 50));
        assert_eq!(
            rfc3339(Timestamp { nanos: 123, ..ts }),
            "2026-11-25T08:42:50Z"
        );
    }
}
