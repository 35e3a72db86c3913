//! A time zone with daylight saving time for the unit tests, so that they
//! do not depend on the machine's zone or a time zone database: Central
//! European Time as the EU's rules define it (UTC+1, and UTC+2 from the last
//! Sunday of March 01:00 UTC to the last Sunday of October 01:00 UTC).

use chrono::{
    Datelike, Duration, FixedOffset, MappedLocalTime, NaiveDate, NaiveDateTime, TimeZone, Weekday,
};

#[derive(Clone, Copy, Debug)]
pub struct Cet;

const WINTER: i32 = 3600;
const SUMMER: i32 = 7200;

fn offset(secs: i32) -> FixedOffset {
    FixedOffset::east_opt(secs).expect("a valid offset")
}

/// The last Sunday of `month` in `year`, at 01:00 UTC.
fn switch(year: i32, month: u32) -> NaiveDateTime {
    let first_next = NaiveDate::from_ymd_opt(year, month + 1, 1).expect("a date");
    let mut day = first_next - Duration::days(1);
    while day.weekday() != Weekday::Sun {
        day -= Duration::days(1);
    }
    day.and_hms_opt(1, 0, 0).expect("a time")
}

fn secs_at_utc(utc: &NaiveDateTime) -> i32 {
    let year = utc.year();
    if *utc >= switch(year, 3) && *utc < switch(year, 10) {
        SUMMER
    } else {
        WINTER
    }
}

impl TimeZone for Cet {
    type Offset = FixedOffset;

    fn from_offset(_: &FixedOffset) -> Cet {
        Cet
    }

    fn offset_from_local_date(&self, local: &NaiveDate) -> MappedLocalTime<FixedOffset> {
        self.offset_from_local_datetime(&local.and_hms_opt(12, 0, 0).expect("noon"))
    }

    fn offset_from_local_datetime(&self, local: &NaiveDateTime) -> MappedLocalTime<FixedOffset> {
        let fits = |secs: i32| secs_at_utc(&(*local - Duration::seconds(secs.into()))) == secs;
        match (fits(SUMMER), fits(WINTER)) {
            (true, true) => MappedLocalTime::Ambiguous(offset(SUMMER), offset(WINTER)),
            (true, false) => MappedLocalTime::Single(offset(SUMMER)),
            (false, true) => MappedLocalTime::Single(offset(WINTER)),
            (false, false) => MappedLocalTime::None,
        }
    }

    fn offset_from_utc_date(&self, utc: &NaiveDate) -> FixedOffset {
        self.offset_from_utc_datetime(&utc.and_hms_opt(12, 0, 0).expect("noon"))
    }

    fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> FixedOffset {
        offset(secs_at_utc(utc))
    }
}
