//! Calendar times in the syntax of systemd.time(7)'s calendar events (the
//! subset umbra.toml(5) lists), parsed into sets of allowed values, and the
//! next instant such a time fires after a given one, in a given time zone.
//! Pure: it never reads the clock; the caller says what "now" is.
//!
//! Supported: the shorthands `minutely`, `hourly`, `daily`, `weekly`,
//! `monthly`, `quarterly`, `semiannually`, `yearly`/`annually`; an optional
//! weekday list (`Mon`, `Monday`, `Mon..Fri`, `Sat,Sun`); an optional date
//! `[YEAR-]MONTH-DAY`; an optional time `HOUR:MINUTE[:SECOND]`; a trailing
//! `UTC`. Each date or time component is `*`, a number, a range `a..b`, a
//! repetition `a/n`, `*/n` or `a..b/n`, or a comma list of those. Not
//! supported (an error says so): `~` (last days of a month), fractional
//! seconds and time zones other than UTC.
//!
//! One reading differs from systemd's: a time part that is a comma list of
//! whole times (`07:00,12:00`) means each of those times (7:00 and 12:00),
//! as a person reads it; systemd would read a minute list there (7:00 and
//! 7:12). The systemd spelling of both times, `07,12:00`, works too.

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset,
    TimeZone, Timelike, Utc,
};

/// The earliest and latest year a calendar time can name.
const YEARS: (u32, u32) = (1970, 2199);
/// How far ahead a firing is looked for: 400 years covers every weekday a
/// leap day can fall on (the Gregorian cycle).
const MAX_DAYS: u32 = 400 * 366;
/// More than any zone's clock change (an hour, half an hour on Lord Howe).
const SHIFT_HOURS: i64 = 2;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    #[error("empty calendar time")]
    Empty,
    #[error("unknown weekday {0:?} (Mon, Tue, Wed, Thu, Fri, Sat, Sun)")]
    Weekday(String),
    #[error("{0:?} is neither a date (YEAR-MONTH-DAY) nor a time (HOUR:MINUTE[:SECOND])")]
    Part(String),
    #[error("two dates or two times in one calendar time")]
    Twice,
    #[error(
        "{what} {value:?}: expected a number from {min} to {max}, *, a range a..b or a repetition a/n"
    )]
    Value {
        what: &'static str,
        value: String,
        min: u32,
        max: u32,
    },
    #[error("{0:?}: \"~\" (days from the end of a month) is not supported")]
    Tilde(String),
    #[error("{0:?}: fractional seconds are not supported")]
    Fraction(String),
    #[error("time zone {0:?} is not supported (only UTC; local time is the default)")]
    Zone(String),
}

/// The allowed values of one component, as bits.
type Bits = u64;

/// Hours, minutes and seconds allowed together: every combination fires.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Clock {
    hours: Bits,
    minutes: Bits,
    seconds: Bits,
}

/// A parsed calendar time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Calendar {
    text: String,
    /// Bit 0 is Monday.
    weekdays: u8,
    /// `None`: every year.
    years: Option<Vec<u32>>,
    months: Bits,
    days: Bits,
    /// One clock, or one per time of a plain list (`07:00,12:00`).
    clocks: Vec<Clock>,
    /// Fires in UTC whatever zone the caller gives.
    utc: bool,
}

impl std::fmt::Display for Calendar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Calendar {
    pub fn parse(text: &str) -> Result<Calendar, CalendarError> {
        let trimmed = text.trim();
        let mut tokens: Vec<&str> = trimmed.split_whitespace().collect();
        let mut utc = false;
        if let Some(last) = tokens.last().copied()
            && last.starts_with(|c: char| c.is_ascii_alphabetic())
            && tokens.len() > 1
        {
            if !last.eq_ignore_ascii_case("UTC") {
                return Err(CalendarError::Zone(last.to_string()));
            }
            utc = true;
            tokens.pop();
        }
        let shorthand = match tokens.as_slice() {
            [one] => match one.to_ascii_lowercase().as_str() {
                "minutely" => Some("*-*-* *:*:00"),
                "hourly" => Some("*-*-* *:00:00"),
                "daily" => Some("*-*-* 00:00:00"),
                "weekly" => Some("Mon *-*-* 00:00:00"),
                "monthly" => Some("*-*-01 00:00:00"),
                "quarterly" => Some("*-01,04,07,10-01 00:00:00"),
                "semiannually" => Some("*-01,07-01 00:00:00"),
                "yearly" | "annually" => Some("*-01-01 00:00:00"),
                _ => None,
            },
            _ => None,
        };
        if let Some(expanded) = shorthand {
            tokens = expanded.split_whitespace().collect();
        }
        if tokens.is_empty() {
            return Err(CalendarError::Empty);
        }
        let mut weekdays = 0x7f;
        if let Some(first) = tokens.first().copied()
            && first.starts_with(|c: char| c.is_ascii_alphabetic())
        {
            weekdays = parse_weekdays(first)?;
            tokens.remove(0);
        }
        let (mut date, mut time) = (None, None);
        for token in tokens {
            let slot = if token.contains(':') {
                &mut time
            } else if token.contains('-') {
                &mut date
            } else {
                return Err(CalendarError::Part(token.to_string()));
            };
            if slot.replace(token).is_some() {
                return Err(CalendarError::Twice);
            }
        }
        let (years, months, days) = match date {
            None => (None, range_bits(1, 12), range_bits(1, 31)),
            Some(date) => parse_date(date)?,
        };
        let clocks = match time {
            None => vec![Clock {
                hours: 1,
                minutes: 1,
                seconds: 1,
            }],
            Some(time) => parse_time(time)?,
        };
        Ok(Calendar {
            text: trimmed.to_string(),
            weekdays,
            years,
            months,
            days,
            clocks,
            utc,
        })
    }

    /// The first instant after `after` at which this fires, read in `zone`
    /// (unless the time says UTC); `None` if it never fires again.
    ///
    /// Local time has gaps and repeats. A time in a gap (02:30 on the
    /// night clocks go forward) fires shifted as mktime(3) does (03:30); a
    /// time that happens twice (02:30 on the night clocks go back) fires
    /// once, the first time.
    pub fn next_after<Tz: TimeZone>(
        &self,
        after: DateTime<Utc>,
        zone: &Tz,
    ) -> Option<DateTime<Utc>> {
        if self.utc {
            return self.search(after, &Utc);
        }
        self.search(after, zone)
    }

    fn search<Tz: TimeZone>(&self, after: DateTime<Utc>, zone: &Tz) -> Option<DateTime<Utc>> {
        // Local time is not in the order of instants where clocks go back:
        // look from a little before `after`'s wall time, and take the
        // earliest instant after `after` among the wall times near the
        // first one that has such an instant.
        let whole = after.with_nanosecond(0)?;
        let mut from = whole.with_timezone(zone).naive_local() - Duration::hours(SHIFT_HOURS);
        let mut best: Option<DateTime<Utc>> = None;
        let mut horizon: Option<NaiveDateTime> = None;
        while let Some(wall) = self.next_wall_time(from) {
            if horizon.is_some_and(|h| wall > h) {
                break;
            }
            for instant in readings(zone, wall).into_iter().flatten() {
                if instant > after && best.is_none_or(|b| instant < b) {
                    best = Some(instant);
                    horizon.get_or_insert(wall + Duration::hours(SHIFT_HOURS));
                }
            }
            from = wall + Duration::seconds(1);
        }
        best
    }

    /// The first wall time at or after `from` that this names.
    fn next_wall_time(&self, from: NaiveDateTime) -> Option<NaiveDateTime> {
        let mut date = from.date();
        let mut time = from.time();
        for _ in 0..MAX_DAYS {
            if let Some(years) = &self.years
                && years.last().is_none_or(|&last| date.year() > last as i32)
            {
                return None;
            }
            if self.date_matches(date)
                && let Some(t) = self.first_time_from(time)
            {
                return Some(date.and_time(t));
            }
            date = date.succ_opt()?;
            time = NaiveTime::MIN;
        }
        None
    }

    fn date_matches(&self, date: NaiveDate) -> bool {
        let weekday = date.weekday().num_days_from_monday();
        self.weekdays & (1 << weekday) != 0
            && self.months & (1 << date.month()) != 0
            && self.days & (1 << date.day()) != 0
            && self
                .years
                .as_ref()
                .is_none_or(|years| years.contains(&(date.year() as u32)))
    }

    /// The first allowed time of day at or after `from`.
    fn first_time_from(&self, from: NaiveTime) -> Option<NaiveTime> {
        self.clocks
            .iter()
            .filter_map(|clock| clock.first_from(from))
            .min()
    }
}

impl Clock {
    fn first_from(&self, from: NaiveTime) -> Option<NaiveTime> {
        let (h0, m0, s0) = (from.hour(), from.minute(), from.second());
        for h in bits_from(self.hours, h0, 23) {
            let m_start = if h == h0 { m0 } else { 0 };
            for m in bits_from(self.minutes, m_start, 59) {
                let s_start = if h == h0 && m == m0 { s0 } else { 0 };
                if let Some(s) = bits_from(self.seconds, s_start, 59).next() {
                    return NaiveTime::from_hms_opt(h, m, s);
                }
            }
        }
        None
    }
}

/// The instant local time `wall` fires at in `zone`: where clocks go back
/// and it happens twice, the first time only (a daily 02:30 makes one set
/// that night, and an hourly schedule none for the repeated hour); where
/// clocks go forward over it, the instant it becomes read with the offset
/// from before the gap (as mktime(3) does: 02:30 in a gap from 02:00 to
/// 03:00 is 03:30).
fn readings<Tz: TimeZone>(zone: &Tz, wall: NaiveDateTime) -> [Option<DateTime<Utc>>; 2] {
    let utc = |d: DateTime<Tz>| Some(d.with_timezone(&Utc));
    match zone.from_local_datetime(&wall) {
        LocalResult::Single(d) => [utc(d), None],
        LocalResult::Ambiguous(first, _) => [utc(first), None],
        LocalResult::None => {
            let before = zone
                .from_local_datetime(&(wall - Duration::days(1)))
                .earliest();
            let shifted = before.map(|b| {
                let offset = b.offset().fix().local_minus_utc();
                Utc.from_utc_datetime(&(wall - Duration::seconds(i64::from(offset))))
            });
            [shifted, None]
        }
    }
}

fn bits_from(bits: Bits, from: u32, max: u32) -> impl Iterator<Item = u32> {
    (from..=max).filter(move |v| bits & (1 << v) != 0)
}

fn range_bits(min: u32, max: u32) -> Bits {
    (min..=max).fold(0, |acc, v| acc | (1 << v))
}

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const WEEKDAY_NAMES: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

fn weekday(name: &str) -> Option<u32> {
    let lower = name.to_ascii_lowercase();
    (0..7u32).find(|&i| lower == WEEKDAYS[i as usize] || lower == WEEKDAY_NAMES[i as usize])
}

fn parse_weekdays(token: &str) -> Result<u8, CalendarError> {
    let mut mask = 0u8;
    for item in token.split(',') {
        let (a, b) = item
            .split_once("..")
            .or_else(|| item.split_once('-'))
            .unwrap_or((item, item));
        let unknown = |n: &str| CalendarError::Weekday(n.to_string());
        let from = weekday(a).ok_or_else(|| unknown(a))?;
        let to = weekday(b).ok_or_else(|| unknown(b))?;
        // A range may wrap around the week's end: Sat..Mon.
        let mut day = from;
        loop {
            mask |= 1 << day;
            if day == to {
                break;
            }
            day = (day + 1) % 7;
        }
    }
    Ok(mask)
}

type Date = (Option<Vec<u32>>, Bits, Bits);

fn parse_date(token: &str) -> Result<Date, CalendarError> {
    if token.contains('~') {
        return Err(CalendarError::Tilde(token.to_string()));
    }
    let parts: Vec<&str> = token.split('-').collect();
    let (year, month, day) = match parts.as_slice() {
        [month, day] => (None, *month, *day),
        [year, month, day] => (Some(*year), *month, *day),
        _ => return Err(CalendarError::Part(token.to_string())),
    };
    let years = match year {
        None | Some("*") => None,
        Some(year) => {
            let values = values("year", year, YEARS.0, YEARS.1)?;
            Some(values)
        }
    };
    let months = bits(values("month", month, 1, 12)?);
    let days = bits(values("day", day, 1, 31)?);
    Ok((years, months, days))
}

fn parse_time(token: &str) -> Result<Vec<Clock>, CalendarError> {
    let pieces: Vec<&str> = token.split(',').collect();
    if pieces.len() > 1 && pieces.iter().all(|p| p.contains(':')) {
        return pieces.into_iter().map(parse_clock).collect();
    }
    Ok(vec![parse_clock(token)?])
}

fn parse_clock(token: &str) -> Result<Clock, CalendarError> {
    if token.contains('.') && !token.contains("..") {
        return Err(CalendarError::Fraction(token.to_string()));
    }
    let parts: Vec<&str> = token.split(':').collect();
    let (hour, minute, second) = match parts.as_slice() {
        [h, m] => (*h, *m, "00"),
        [h, m, s] => (*h, *m, *s),
        _ => return Err(CalendarError::Part(token.to_string())),
    };
    Ok(Clock {
        hours: bits(values("hour", hour, 0, 23)?),
        minutes: bits(values("minute", minute, 0, 59)?),
        seconds: bits(values("second", second, 0, 59)?),
    })
}

fn bits(values: Vec<u32>) -> Bits {
    values.into_iter().fold(0, |acc, v| acc | (1 << v))
}

/// The values a component allows, sorted: `*`, `5`, `1..5`, `0/15`, `*/15`,
/// `1..10/3`, or a comma list of those.
fn values(what: &'static str, text: &str, min: u32, max: u32) -> Result<Vec<u32>, CalendarError> {
    let bad = || CalendarError::Value {
        what,
        value: text.to_string(),
        min,
        max,
    };
    let number = |s: &str| -> Result<u32, CalendarError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<u32>()
            .ok()
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(bad)
    };
    let mut out = Vec::new();
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step.parse().ok().filter(|&s| s > 0).ok_or_else(bad)?;
                (range, Some(step))
            }
            None => (item, None),
        };
        let (from, to) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once("..") {
            let (a, b) = (number(a)?, number(b)?);
            if a > b {
                return Err(bad());
            }
            (a, b)
        } else {
            let a = number(range)?;
            // `a/n` runs to the end; a lone `a` is itself.
            (a, if step.is_some() { max } else { a })
        };
        let step = step.unwrap_or(1) as usize;
        out.extend((from..=to).step_by(step));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests;
