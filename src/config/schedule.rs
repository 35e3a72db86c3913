//! The `[schedule]` table: its keys as written, and their checks into a
//! [`Schedule`] (calendar times parsed, volumes known, keep counts within
//! bounds). Every problem is one line that names the key.

use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Deserializer};

use crate::schedule::{Calendar, Rules, Schedule, Zone};

/// The most sets a keep count may ask for: more is a typo, not a policy.
const MAX_KEEP: i64 = 100_000;
/// The longest `min_age`: ten years.
const MAX_MIN_AGE: Duration = Duration::from_secs(10 * 366 * 86_400);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    #[serde(default, deserialize_with = "one_or_many")]
    times: Vec<String>,
    #[serde(default)]
    volumes: Vec<String>,
    label: Option<String>,
    timezone: Option<String>,
    cluster: Option<bool>,
    keep_hourly: Option<i64>,
    keep_daily: Option<i64>,
    keep_weekly: Option<i64>,
    keep_monthly: Option<i64>,
    keep_quarterly: Option<i64>,
    keep_yearly: Option<i64>,
    min_age: Option<Age>,
    keep_manual: Option<Count>,
    keep_backup: Option<Count>,
}

#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a number of seconds or a duration such as \"30m\""
)]
enum Age {
    Secs(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(untagged, expecting = "a number of sets or \"all\"")]
enum Count {
    Number(i64),
    Text(String),
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(
        untagged,
        expecting = "a calendar time or a list of them, such as \"hourly\" or [\"Mon..Fri 07:00,12:00\"]"
    )]
    enum Times {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Times::deserialize(d)? {
        Times::One(t) => vec![t],
        Times::Many(ts) => ts,
    })
}

impl RawSchedule {
    /// The checked schedule; `known` are the configured volumes' names.
    pub fn resolve(&self, known: &[&str]) -> Result<Schedule, String> {
        let now = Utc::now();
        let mut times = Vec::with_capacity(self.times.len());
        for text in &self.times {
            let calendar = Calendar::parse(text).map_err(|e| format!("times: {text:?}: {e}"))?;
            // A time in the past (`2020-01-01`) or on no day (`*-02-30`)
            // would make a daemon that silently never takes a set.
            if calendar.next_after(now, &Utc).is_none() {
                return Err(format!("times: {text:?} never fires again"));
            }
            times.push(calendar);
        }
        if self.cluster == Some(true) && !self.volumes.is_empty() {
            return Err(
                "cluster = true takes every volume of every member: name no volumes".into(),
            );
        }
        for volume in &self.volumes {
            if !known.contains(&volume.as_str()) {
                return Err(format!("volumes: no volume named {volume:?}"));
            }
        }
        let mut volumes: Vec<String> = Vec::with_capacity(self.volumes.len());
        for volume in &self.volumes {
            if !volumes.contains(volume) {
                volumes.push(volume.clone());
            }
        }
        let zone = match self.timezone.as_deref() {
            None => Zone::Local,
            Some(z) if z.eq_ignore_ascii_case("local") => Zone::Local,
            Some(z) if z.eq_ignore_ascii_case("utc") => Zone::Utc,
            Some(z) => {
                return Err(format!(
                    "timezone {z:?}: expected \"local\" or \"UTC\" (other zones: set TZ for the daemon)"
                ));
            }
        };
        let defaults = Rules::default();
        let count = |key: &str, value: Option<i64>, default: u32| -> Result<u32, String> {
            match value {
                None => Ok(default),
                Some(n) if (0..=MAX_KEEP).contains(&n) => Ok(n as u32),
                Some(n) => Err(format!("{key} must be from 0 to {MAX_KEEP}, not {n}")),
            }
        };
        let all_or = |key: &str, value: &Option<Count>| -> Result<Option<u32>, String> {
            match value {
                None => Ok(None),
                Some(Count::Text(t)) if t == "all" => Ok(None),
                Some(Count::Text(t)) => Err(format!(
                    "{key} must be \"all\" or a number of sets, not {t:?}"
                )),
                Some(Count::Number(n)) => count(key, Some(*n), 0).map(Some),
            }
        };
        let retention = Rules {
            hourly: count("keep_hourly", self.keep_hourly, defaults.hourly)?,
            daily: count("keep_daily", self.keep_daily, defaults.daily)?,
            weekly: count("keep_weekly", self.keep_weekly, defaults.weekly)?,
            monthly: count("keep_monthly", self.keep_monthly, defaults.monthly)?,
            quarterly: count("keep_quarterly", self.keep_quarterly, defaults.quarterly)?,
            yearly: count("keep_yearly", self.keep_yearly, defaults.yearly)?,
            min_age: match &self.min_age {
                None => defaults.min_age,
                Some(age) => min_age(age)?,
            },
            keep_manual: all_or("keep_manual", &self.keep_manual)?,
            keep_backup: all_or("keep_backup", &self.keep_backup)?,
        };
        Ok(Schedule {
            times,
            volumes,
            label: self.label.clone(),
            zone,
            retention,
            cluster: self.cluster.unwrap_or(false),
        })
    }
}

fn min_age(age: &Age) -> Result<Duration, String> {
    let age = match age {
        Age::Secs(n) => u64::try_from(*n)
            .map(Duration::from_secs)
            .map_err(|_| format!("min_age must not be negative, not {n}"))?,
        Age::Text(t) => humantime::parse_duration(t)
            .map_err(|e| format!("min_age {t:?}: {e} (e.g. \"30m\", \"1h\", \"2d\")"))?,
    };
    if age > MAX_MIN_AGE {
        return Err(format!(
            "min_age must be at most ten years, not {}",
            humantime::format_duration(age)
        ));
    }
    Ok(age)
}
