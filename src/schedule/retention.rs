//! Timeline retention, as snapper's: which sets stay and which rule keeps
//! each, given the sets (when made, who asked), the rules and "now". Pure:
//! it never reads the clock and never deletes anything; the daemon deletes
//! what it answers, `umbra prune --dry-run` shows it.
//!
//! Scheduled sets are thinned out by period: the first (oldest) scheduled
//! set of each hour, day, ISO week, month, quarter and year (in the schedule's time
//! zone) is that period's set, and the sets of the newest N periods of each
//! kind stay. A set can stay by several rules. Whatever the timeline says,
//! a set stays if it is the newest set of all, if a running `umbra backup`
//! is using it, or if it is younger than `min_age` (or from the future: a
//! clock set back). Manual and kept-backup sets stay unless `keep_manual` /
//! `keep_backup` give a count, then the newest that many stay.

use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use serde::{Deserialize, Serialize};
use umbra_store::SetOrigin;

/// The retention rules of a `[schedule]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub quarterly: u32,
    pub yearly: u32,
    /// A set younger than this always stays.
    pub min_age: Duration,
    /// `None`: every manual set stays; else the newest that many.
    pub keep_manual: Option<u32>,
    /// `None`: every kept backup set stays; else the newest that many.
    pub keep_backup: Option<u32>,
}

impl Default for Rules {
    /// snapper's timeline defaults.
    fn default() -> Rules {
        Rules {
            hourly: 10,
            daily: 10,
            weekly: 0,
            monthly: 10,
            quarterly: 0,
            yearly: 10,
            min_age: Duration::from_secs(1800),
            keep_manual: None,
            keep_backup: None,
        }
    }
}

/// Why a set stays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// The newest set of all (`latest`).
    Newest,
    /// A running `umbra backup` is reading it.
    InUse,
    /// Younger than `min_age`.
    MinAge,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Quarterly,
    Yearly,
    /// A manual set: all of them, or one of the newest `keep_manual`.
    Manual,
    /// A kept backup set: all, or one of the newest `keep_backup`.
    Backup,
}

impl Keep {
    pub fn as_str(self) -> &'static str {
        match self {
            Keep::Newest => "newest",
            Keep::InUse => "in_use",
            Keep::MinAge => "min_age",
            Keep::Hourly => "hourly",
            Keep::Daily => "daily",
            Keep::Weekly => "weekly",
            Keep::Monthly => "monthly",
            Keep::Quarterly => "quarterly",
            Keep::Yearly => "yearly",
            Keep::Manual => "manual",
            Keep::Backup => "backup",
        }
    }
}

/// One set as retention sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub created: DateTime<Utc>,
    pub origin: SetOrigin,
    /// A running backup is using it.
    pub in_use: bool,
}

/// The period a set falls in, as comparable numbers (year, month, day, hour).
type PeriodOf<'a> = dyn Fn(usize) -> (i32, u32, u32, u32) + 'a;

/// For each of `sets` (in the same order) the rules that keep it, in the
/// order of [`Keep`]; an empty list means the set goes. Periods are read in
/// `zone`.
pub fn judge<Tz: TimeZone>(
    sets: &[Candidate],
    rules: &Rules,
    now: DateTime<Utc>,
    zone: &Tz,
) -> Vec<Vec<Keep>> {
    let mut kept: Vec<Vec<Keep>> = vec![Vec::new(); sets.len()];
    // Newest first; equal times by position, the later one newer.
    let mut order: Vec<usize> = (0..sets.len()).collect();
    order.sort_by(|&a, &b| (sets[b].created, b).cmp(&(sets[a].created, a)));
    if let Some(&newest) = order.first() {
        kept[newest].push(Keep::Newest);
    }
    let young = |c: &Candidate| {
        now.signed_duration_since(c.created)
            .to_std()
            .map_or(true, |age| age < rules.min_age)
    };
    for (i, set) in sets.iter().enumerate() {
        if set.in_use {
            kept[i].push(Keep::InUse);
        }
        if young(set) {
            kept[i].push(Keep::MinAge);
        }
    }
    let scheduled: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| sets[i].origin == SetOrigin::Scheduled)
        .collect();
    let local = |i: usize| sets[i].created.with_timezone(zone);
    let periods: [(Keep, u32, &PeriodOf); 6] = [
        (Keep::Hourly, rules.hourly, &|i| {
            let t = local(i);
            (t.year(), t.month(), t.day(), t.hour())
        }),
        (Keep::Daily, rules.daily, &|i| {
            let t = local(i);
            (t.year(), t.month(), t.day(), 0)
        }),
        (Keep::Weekly, rules.weekly, &|i| {
            let week = local(i).iso_week();
            (week.year(), week.week(), 0, 0)
        }),
        (Keep::Monthly, rules.monthly, &|i| {
            let t = local(i);
            (t.year(), t.month(), 0, 0)
        }),
        (Keep::Quarterly, rules.quarterly, &|i| {
            let t = local(i);
            (t.year(), t.month0() / 3, 0, 0)
        }),
        (Keep::Yearly, rules.yearly, &|i| (local(i).year(), 0, 0, 0)),
    ];
    for (rule, limit, period) in periods {
        let mut taken = 0;
        for (n, &i) in scheduled.iter().enumerate() {
            if taken == limit {
                break;
            }
            // The first of its period: the next older scheduled set (if
            // any) is of another period.
            let first = scheduled
                .get(n + 1)
                .is_none_or(|&older| period(older) != period(i));
            if first {
                kept[i].push(rule);
                taken += 1;
            }
        }
    }
    for (origin, limit, rule) in [
        (SetOrigin::Manual, rules.keep_manual, Keep::Manual),
        (SetOrigin::Backup, rules.keep_backup, Keep::Backup),
    ] {
        let limit = limit.map_or(usize::MAX, |n| n as usize);
        for &i in order
            .iter()
            .filter(|&&i| sets[i].origin == origin)
            .take(limit)
        {
            kept[i].push(rule);
        }
    }
    for rules in &mut kept {
        rules.sort_unstable();
    }
    kept
}

#[cfg(test)]
mod tests;
