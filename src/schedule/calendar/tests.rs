//! The calendar against a fake clock: every "now" is given, never read.

use chrono::{DateTime, Utc};

use super::*;
use crate::schedule::test_zone::Cet;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("an RFC 3339 time")
        .with_timezone(&Utc)
}

/// The next firings of `spec` after `now`, in UTC, as RFC 3339.
fn next_utc(spec: &str, now: &str, n: usize) -> Vec<String> {
    let calendar = Calendar::parse(spec).expect("parses");
    let mut t = at(now);
    let mut out = Vec::new();
    for _ in 0..n {
        t = calendar.next_after(t, &Utc).expect("fires");
        out.push(t.format("%Y-%m-%dT%H:%M:%SZ").to_string());
    }
    out
}

fn next_cet(spec: &str, now: &str, n: usize) -> Vec<String> {
    let calendar = Calendar::parse(spec).expect("parses");
    let mut t = at(now);
    let mut out = Vec::new();
    for _ in 0..n {
        t = calendar.next_after(t, &Cet).expect("fires");
        out.push(t.format("%Y-%m-%dT%H:%M:%SZ").to_string());
    }
    out
}

#[test]
fn shorthands_fire_at_the_start_of_their_period() {
    let now = "2026-12-04T10:20:05Z"; // a Friday
    assert_eq!(next_utc("minutely", now, 1), ["2026-12-04T10:21:00Z"]);
    assert_eq!(
        next_utc("hourly", now, 2),
        ["2026-12-04T11:00:00Z", "2026-12-04T12:00:00Z"]
    );
    assert_eq!(next_utc("daily", now, 1), ["2026-12-05T00:00:00Z"]);
    assert_eq!(next_utc("weekly", now, 1), ["2026-12-07T00:00:00Z"]);
    assert_eq!(next_utc("monthly", now, 1), ["2027-01-01T00:00:00Z"]);
    assert_eq!(next_utc("quarterly", now, 1), ["2027-01-01T00:00:00Z"]);
    assert_eq!(next_utc("yearly", now, 1), ["2027-01-01T00:00:00Z"]);
    assert_eq!(next_utc("  Annually ", now, 1), ["2027-01-01T00:00:00Z"]);
}

#[test]
fn weekday_ranges_and_a_plain_list_of_times() {
    // Friday noon: the next are Monday's 07:00 and 12:00.
    assert_eq!(
        next_utc("Mon..Fri 07:00,12:00", "2026-12-04T12:00:00Z", 3),
        [
            "2026-12-07T07:00:00Z",
            "2026-12-07T12:00:00Z",
            "2026-12-08T07:00:00Z"
        ]
    );
    // systemd's own spelling of the same two times.
    assert_eq!(
        next_utc("Mon-Fri 07,12:00", "2026-12-04T12:00:00Z", 2),
        ["2026-12-07T07:00:00Z", "2026-12-07T12:00:00Z"]
    );
    assert_eq!(
        next_utc("Sat,Sunday 09:30", "2026-12-04T12:00:00Z", 2),
        ["2026-12-05T09:30:00Z", "2026-12-06T09:30:00Z"]
    );
    // A range may wrap around the end of the week.
    assert_eq!(
        next_utc("Sat..Mon 00:00", "2026-12-04T12:00:00Z", 3),
        [
            "2026-12-05T00:00:00Z",
            "2026-12-06T00:00:00Z",
            "2026-12-07T00:00:00Z"
        ]
    );
    // A weekday alone means midnight.
    assert_eq!(
        next_utc("Wed", "2026-12-04T12:00:00Z", 1),
        ["2026-12-09T00:00:00Z"]
    );
}

#[test]
fn repetitions_and_lists_of_components() {
    assert_eq!(
        next_utc("*:0/15", "2026-12-04T10:16:00Z", 3),
        [
            "2026-12-04T10:30:00Z",
            "2026-12-04T10:45:00Z",
            "2026-12-04T11:00:00Z"
        ]
    );
    assert_eq!(
        next_utc("*:*:0/2", "2026-12-04T10:00:01.5Z", 3),
        [
            "2026-12-04T10:00:02Z",
            "2026-12-04T10:00:04Z",
            "2026-12-04T10:00:06Z"
        ]
    );
    assert_eq!(
        next_utc("*-*-* 8..17/3:00", "2026-12-04T12:00:00Z", 3),
        [
            "2026-12-04T14:00:00Z",
            "2026-12-04T17:00:00Z",
            "2026-12-05T08:00:00Z"
        ]
    );
    assert_eq!(
        next_utc("2027-1,6-1 00:00", "2026-12-04T12:00:00Z", 2),
        ["2027-01-01T00:00:00Z", "2027-06-01T00:00:00Z"]
    );
    // The firing instant itself is not "after" it.
    assert_eq!(
        next_utc("12:00", "2026-12-04T12:00:00Z", 1),
        ["2026-12-05T12:00:00Z"]
    );
}

#[test]
fn month_ends_skip_the_months_without_that_day() {
    assert_eq!(
        next_utc("*-*-31 12:00", "2026-04-01T00:00:00Z", 2),
        ["2026-05-31T12:00:00Z", "2026-07-31T12:00:00Z"]
    );
    assert_eq!(
        next_utc("*-*-30", "2027-01-31T00:00:00Z", 1),
        ["2027-03-30T00:00:00Z"]
    );
    assert_eq!(
        next_utc("monthly", "2026-12-31T23:59:59Z", 1),
        ["2027-01-01T00:00:00Z"]
    );
}

#[test]
fn a_leap_day_fires_only_in_leap_years() {
    assert_eq!(
        next_utc("*-02-29 00:00", "2026-01-01T00:00:00Z", 2),
        ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]
    );
    // A leap day on a Monday: 2044, eighteen years on.
    assert_eq!(
        next_utc("Mon *-02-29", "2026-01-01T00:00:00Z", 1),
        ["2044-02-29T00:00:00Z"]
    );
    let never = Calendar::parse("*-02-30").expect("parses");
    assert_eq!(never.next_after(at("2026-01-01T00:00:00Z"), &Utc), None);
    let past = Calendar::parse("2020-01-01").expect("parses");
    assert_eq!(past.next_after(at("2026-01-01T00:00:00Z"), &Utc), None);
}

#[test]
fn local_time_reads_the_zone_and_utc_overrides_it() {
    // 07:00 in Central European winter time is 06:00 UTC.
    assert_eq!(
        next_cet("07:00", "2026-12-04T12:00:00Z", 1),
        ["2026-12-05T06:00:00Z"]
    );
    assert_eq!(
        next_cet("07:00 UTC", "2026-12-04T12:00:00Z", 1),
        ["2026-12-05T07:00:00Z"]
    );
    assert_eq!(
        next_cet("daily UTC", "2026-12-04T12:00:00Z", 1),
        ["2026-12-05T00:00:00Z"]
    );
    assert_eq!(
        next_cet("daily", "2026-12-04T12:00:00Z", 1),
        ["2026-12-04T23:00:00Z"]
    );
    // In summer it is 05:00 UTC.
    assert_eq!(
        next_cet("07:00", "2026-07-01T12:00:00Z", 1),
        ["2026-07-02T05:00:00Z"]
    );
}

#[test]
fn a_time_the_clocks_skip_fires_when_the_gap_ends() {
    // 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00 UTC). 02:30 does not
    // exist that night: it fires at 03:30 CEST, then normally.
    assert_eq!(
        next_cet("02:30", "2026-03-28T12:00:00Z", 3),
        [
            "2026-03-29T01:30:00Z",
            "2026-03-30T00:30:00Z",
            "2026-03-31T00:30:00Z"
        ]
    );
    // Hourly over the gap: 01:00 CET, then 03:00 CEST, no set lost or doubled.
    assert_eq!(
        next_cet("hourly", "2026-03-28T23:30:00Z", 3),
        [
            "2026-03-29T00:00:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-29T02:00:00Z"
        ]
    );
}

#[test]
fn a_time_the_clocks_repeat_fires_once() {
    // 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00 UTC); 02:30 happens
    // at 00:30 and at 01:30 UTC. A daily 02:30 fires at the first only.
    assert_eq!(
        next_cet("02:30", "2026-10-24T12:00:00Z", 2),
        ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
    );
    // Hourly: 02:00 is one wall time, so the repeated hour has no set of
    // its own (00:00 UTC is 02:00 CEST, 02:00 UTC is 03:00 CET).
    assert_eq!(
        next_cet("hourly", "2026-10-24T23:30:00Z", 3),
        [
            "2026-10-25T00:00:00Z",
            "2026-10-25T02:00:00Z",
            "2026-10-25T03:00:00Z"
        ]
    );
    // From inside the repeated hour, the next is the next wall time.
    assert_eq!(
        next_cet("hourly", "2026-10-25T01:10:00Z", 1),
        ["2026-10-25T02:00:00Z"]
    );
}

#[test]
fn bad_calendar_times_are_one_line_errors() {
    let error = |spec: &str| Calendar::parse(spec).expect_err(spec).to_string();
    assert_eq!(error(""), "empty calendar time");
    assert_eq!(
        error("Mon..Fry 07:00"),
        "unknown weekday \"Fry\" (Mon, Tue, Wed, Thu, Fri, Sat, Sun)"
    );
    assert_eq!(
        error("25:00"),
        "hour \"25\": expected a number from 0 to 23, *, a range a..b or a repetition a/n"
    );
    assert_eq!(
        error("*:0/0"),
        "minute \"0/0\": expected a number from 0 to 59, *, a range a..b or a repetition a/n"
    );
    assert_eq!(
        error("*-13-01"),
        "month \"13\": expected a number from 1 to 12, *, a range a..b or a repetition a/n"
    );
    assert_eq!(
        error("*-02~1"),
        "\"*-02~1\": \"~\" (days from the end of a month) is not supported"
    );
    assert_eq!(
        error("12:00 Europe/Berlin"),
        "time zone \"Europe/Berlin\" is not supported (only UTC; local time is the default)"
    );
    assert_eq!(
        error("every"),
        "unknown weekday \"every\" (Mon, Tue, Wed, Thu, Fri, Sat, Sun)"
    );
    assert_eq!(
        error("soon 12:00"),
        "unknown weekday \"soon\" (Mon, Tue, Wed, Thu, Fri, Sat, Sun)"
    );
    assert_eq!(
        error("12"),
        "\"12\" is neither a date (YEAR-MONTH-DAY) nor a time (HOUR:MINUTE[:SECOND])"
    );
    assert_eq!(
        error("12:00 13:00"),
        "two dates or two times in one calendar time"
    );
    assert_eq!(
        error("12:00:00.5"),
        "\"12:00:00.5\": fractional seconds are not supported"
    );
    for spec in ["5..1:00", "1:2:3:4", "a:00", "-1:00", "*-*-*-*"] {
        assert!(Calendar::parse(spec).is_err(), "{spec} is refused");
        assert!(!error(spec).contains('\n'));
    }
}
