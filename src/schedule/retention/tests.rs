//! Timeline retention against a fake clock.

use chrono::{DateTime, Duration as Span, Utc};
use proptest::prelude::*;

use super::*;
use crate::schedule::test_zone::Cet;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("an RFC 3339 time")
        .with_timezone(&Utc)
}

fn scheduled(created: DateTime<Utc>) -> Candidate {
    Candidate {
        created,
        origin: SetOrigin::Scheduled,
        in_use: false,
    }
}

/// Rules that keep nothing unless told.
fn none() -> Rules {
    Rules {
        hourly: 0,
        daily: 0,
        weekly: 0,
        monthly: 0,
        quarterly: 0,
        yearly: 0,
        min_age: std::time::Duration::ZERO,
        keep_manual: None,
        keep_backup: None,
    }
}

/// The indexes of the sets that go.
fn gone(verdicts: &[Vec<Keep>]) -> Vec<usize> {
    (0..verdicts.len())
        .filter(|&i| verdicts[i].is_empty())
        .collect()
}

#[test]
fn the_first_set_of_each_hour_is_kept_for_the_newest_n_hours() {
    // Every 20 minutes from 10:00 to 12:40: three sets an hour.
    let start = at("2026-12-04T10:00:00Z");
    let sets: Vec<Candidate> = (0..9)
        .map(|i| scheduled(start + Span::minutes(20 * i)))
        .collect();
    let rules = Rules {
        hourly: 2,
        ..none()
    };
    let now = at("2026-12-05T00:00:00Z");
    let verdicts = judge(&sets, &rules, now, &Utc);
    // 11:00 and 12:00 are the first of the two newest hours; 12:40 is the
    // newest set of all; everything else goes.
    assert_eq!(verdicts[3], [Keep::Hourly]);
    assert_eq!(verdicts[6], [Keep::Hourly]);
    assert_eq!(verdicts[8], [Keep::Newest]);
    assert_eq!(gone(&verdicts), [0, 1, 2, 4, 5, 7]);
}

#[test]
fn a_set_can_be_kept_by_several_periods() {
    // One set a day at 00:00 over 40 days from 2026-11-01.
    let start = at("2026-11-01T00:00:00Z");
    let sets: Vec<Candidate> = (0..40).map(|i| scheduled(start + Span::days(i))).collect();
    let rules = Rules {
        daily: 3,
        weekly: 2,
        monthly: 2,
        quarterly: 2,
        yearly: 1,
        ..none()
    };
    let now = at("2027-01-01T00:00:00Z");
    let verdicts = judge(&sets, &rules, now, &Utc);
    // Nov 1 is the first set of November and of 2026; Dec 1 of December.
    // Q4 2026 began before the first set: Nov 1 is its first.
    assert_eq!(verdicts[0], [Keep::Monthly, Keep::Quarterly, Keep::Yearly]);
    assert_eq!(verdicts[30], [Keep::Monthly]);
    // The daily ones: the three newest days.
    assert_eq!(verdicts[39], [Keep::Newest, Keep::Daily]);
    assert_eq!(verdicts[38], [Keep::Daily]);
    // Weekly: the first set of the two newest ISO weeks, Mon Nov 30 and
    // Mon Dec 7.
    let weekly: Vec<usize> = (0..40)
        .filter(|&i| verdicts[i].contains(&Keep::Weekly))
        .collect();
    assert_eq!(weekly, [29, 36]);
    assert_eq!(verdicts[37], [Keep::Daily]);
    assert_eq!(gone(&verdicts).len(), 40 - 7);
}

#[test]
fn periods_are_read_in_the_schedules_time_zone() {
    // One UTC day, two in Central Europe: 22:30 UTC is 23:30 CET (Dec 4),
    // 23:30 UTC is 00:30 CET (Dec 5).
    let sets = [
        scheduled(at("2026-12-04T22:30:00Z")),
        scheduled(at("2026-12-04T23:30:00Z")),
        scheduled(at("2026-12-04T23:45:00Z")),
    ];
    let rules = Rules {
        daily: 10,
        ..none()
    };
    let now = at("2026-12-06T00:00:00Z");
    let utc = judge(&sets, &rules, now, &Utc);
    assert_eq!(gone(&utc), [1], "one UTC day: only its first stays");
    let cet = judge(&sets, &rules, now, &Cet);
    assert_eq!(gone(&cet), Vec::<usize>::new(), "two CET days, two firsts");
    assert_eq!(cet[1], [Keep::Daily]);
}

#[test]
fn min_age_protects_young_sets_and_sets_from_the_future() {
    let now = at("2026-12-04T12:00:00Z");
    let sets = [
        scheduled(now - Span::minutes(40)),
        scheduled(now - Span::minutes(20)),
        scheduled(now - Span::minutes(10)),
        // The clock was set back: a set made "later" than now.
        scheduled(now + Span::hours(1)),
    ];
    let rules = Rules {
        min_age: std::time::Duration::from_secs(30 * 60),
        ..none()
    };
    let verdicts = judge(&sets, &rules, now, &Utc);
    assert_eq!(gone(&verdicts), [0]);
    assert_eq!(verdicts[1], [Keep::MinAge]);
    assert_eq!(verdicts[3], [Keep::Newest, Keep::MinAge]);
}

#[test]
fn manual_sets_stay_unless_keep_manual_says_how_many() {
    let base = at("2026-12-01T00:00:00Z");
    let mut sets: Vec<Candidate> = (0..4)
        .map(|i| Candidate {
            created: base + Span::hours(i),
            origin: SetOrigin::Manual,
            in_use: false,
        })
        .collect();
    sets.push(scheduled(base + Span::hours(10)));
    let now = at("2026-12-10T00:00:00Z");
    let all = judge(&sets, &none(), now, &Utc);
    assert_eq!(gone(&all), Vec::<usize>::new(), "every manual set stays");
    assert_eq!(all[0], [Keep::Manual]);
    let two = Rules {
        keep_manual: Some(2),
        ..none()
    };
    let verdicts = judge(&sets, &two, now, &Utc);
    assert_eq!(gone(&verdicts), [0, 1]);
    assert_eq!(verdicts[3], [Keep::Manual]);
    let zero = Rules {
        keep_manual: Some(0),
        ..none()
    };
    assert_eq!(gone(&judge(&sets, &zero, now, &Utc)), [0, 1, 2, 3]);
}

#[test]
fn kept_backup_sets_stay_unless_keep_backup_says_and_one_in_use_always() {
    let base = at("2026-12-01T00:00:00Z");
    let backup = |h: i64, in_use: bool| Candidate {
        created: base + Span::hours(h),
        origin: SetOrigin::Backup,
        in_use,
    };
    let sets = [
        backup(0, false),
        backup(1, true),
        backup(2, false),
        scheduled(base + Span::hours(3)),
    ];
    let now = at("2026-12-10T00:00:00Z");
    assert_eq!(gone(&judge(&sets, &none(), now, &Utc)), Vec::<usize>::new());
    let one = Rules {
        keep_backup: Some(1),
        ..none()
    };
    let verdicts = judge(&sets, &one, now, &Utc);
    assert_eq!(gone(&verdicts), [0]);
    assert_eq!(verdicts[1], [Keep::InUse]);
    assert_eq!(verdicts[2], [Keep::Backup]);
    // Scheduled sets are never counted as manual or backup ones.
    assert_eq!(verdicts[3], [Keep::Newest]);
}

#[test]
fn a_scheduled_set_in_use_by_a_backup_stays() {
    let base = at("2026-12-01T00:00:00Z");
    let mut sets: Vec<Candidate> = (0..3).map(|i| scheduled(base + Span::minutes(i))).collect();
    sets[0].in_use = true;
    let verdicts = judge(&sets, &none(), at("2026-12-10T00:00:00Z"), &Utc);
    assert_eq!(verdicts[0], [Keep::InUse]);
    assert_eq!(gone(&verdicts), [1]);
}

fn origin() -> impl Strategy<Value = SetOrigin> {
    prop_oneof![
        4 => Just(SetOrigin::Scheduled),
        1 => Just(SetOrigin::Manual),
        1 => Just(SetOrigin::Backup),
    ]
}

fn candidates() -> impl Strategy<Value = Vec<Candidate>> {
    // Up to 60 sets within about two years, some at the same second.
    prop::collection::vec(
        (0i64..60_000_000, origin(), prop::bool::weighted(0.05)),
        0..60,
    )
    .prop_map(|raw| {
        let base = at("2025-01-01T00:00:00Z");
        raw.into_iter()
            .map(|(secs, origin, in_use)| Candidate {
                created: base + Span::seconds(secs - secs % 7),
                origin,
                in_use,
            })
            .collect()
    })
}

fn rules() -> impl Strategy<Value = Rules> {
    (
        (0u32..5, 0u32..5, 0u32..5, 0u32..5, 0u32..3, 0u32..3),
        0u64..200_000,
        prop::option::of(0u32..4),
        prop::option::of(0u32..4),
    )
        .prop_map(
            |(
                (hourly, daily, weekly, monthly, quarterly, yearly),
                min_age,
                keep_manual,
                keep_backup,
            )| Rules {
                hourly,
                daily,
                weekly,
                monthly,
                quarterly,
                yearly,
                min_age: std::time::Duration::from_secs(min_age),
                keep_manual,
                keep_backup,
            },
        )
}

proptest! {
    #[test]
    fn retention_never_deletes_the_newest_set(
        sets in candidates(), rules in rules(), now_secs in 0i64..70_000_000
    ) {
        let now = at("2025-01-01T00:00:00Z") + Span::seconds(now_secs);
        let verdicts = judge(&sets, &rules, now, &Cet);
        if let Some(newest) = sets.iter().map(|s| s.created).max() {
            for (set, kept) in sets.iter().zip(&verdicts) {
                if set.created == newest && set == sets.iter().rev().find(|s| s.created == newest).expect("newest") {
                    prop_assert!(!kept.is_empty());
                }
            }
            prop_assert!(verdicts.iter().any(|k| k.contains(&Keep::Newest)));
        }
        for (set, kept) in sets.iter().zip(&verdicts) {
            if set.in_use {
                prop_assert!(kept.contains(&Keep::InUse));
            }
        }
    }

    #[test]
    fn pruning_twice_deletes_nothing_more_the_second_time(
        sets in candidates(), rules in rules(), now_secs in 0i64..70_000_000
    ) {
        let now = at("2025-01-01T00:00:00Z") + Span::seconds(now_secs);
        let first = judge(&sets, &rules, now, &Cet);
        let left: Vec<Candidate> = sets
            .iter()
            .zip(&first)
            .filter(|(_, kept)| !kept.is_empty())
            .map(|(set, _)| *set)
            .collect();
        let second = judge(&left, &rules, now, &Cet);
        prop_assert!(second.iter().all(|kept| !kept.is_empty()), "{:?}", second);
    }
}
