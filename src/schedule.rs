//! The daemon's `[schedule]`: when sets are taken (calendar.rs), which of
//! them retention keeps (retention.rs), and the thread that takes them on
//! time (timer.rs). This file holds the schedule as configured and the
//! time zone its times and periods are read in.
//!
//! Times are local time unless the config or a time says UTC, as in
//! systemd; the machine's zone is read (chrono: `TZ`, else /etc/localtime)
//! each time a firing is computed, so a changed zone takes effect at the
//! next firing.

pub mod calendar;
pub mod retention;
pub mod timer;

#[cfg(test)]
mod test_zone;

use chrono::{DateTime, Local, Utc};

pub use calendar::Calendar;
pub use retention::{Candidate, Keep, Rules};

/// The zone in which times without `UTC` and retention periods are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Zone {
    #[default]
    Local,
    Utc,
}

/// A checked `[schedule]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// When to take a set; none: only `umbra prune` applies the rules.
    pub times: Vec<Calendar>,
    /// The volumes of each scheduled set; empty: every volume.
    pub volumes: Vec<String>,
    pub label: Option<String>,
    pub zone: Zone,
    pub retention: Rules,
    /// Each firing is a cluster set (`cluster = true`), planned by the
    /// first member alive by name.
    pub cluster: bool,
}

impl Schedule {
    /// The first firing of any of the times after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.times
            .iter()
            .filter_map(|t| match self.zone {
                Zone::Local => t.next_after(after, &Local),
                Zone::Utc => t.next_after(after, &Utc),
            })
            .min()
    }

    /// Whether a firing fell between the last one (`last`) and `now`: the
    /// daemon was down then, or the clock jumped. However many fell, one
    /// set makes up for them.
    pub fn missed(&self, last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        last.and_then(|last| self.next_after(last))
            .is_some_and(|due| due <= now)
    }

    /// The rules that keep each of `sets` at `now` (see retention.rs).
    pub fn judge(&self, sets: &[Candidate], now: DateTime<Utc>) -> Vec<Vec<Keep>> {
        match self.zone {
            Zone::Local => retention::judge(sets, &self.retention, now, &Local),
            Zone::Utc => retention::judge(sets, &self.retention, now, &Utc),
        }
    }
}
