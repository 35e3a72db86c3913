//! The daemon's `[schedule]` end to end: a schedule of seconds makes sets
//! recorded as scheduled and retention thins them by its rules; `umbra
//! prune --dry-run --json` lists each set with its action and the rules
//! that keep it, and `umbra prune` deletes what it said; a daemon stopped
//! across several firings takes exactly one set at its next start; a bad
//! schedule is a one-line error.

#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

mod common;

use std::fs;
use std::thread::sleep;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use common::{Config, Daemon, SetJson, assert_one_line_error};

#[derive(Debug, Deserialize)]
struct PruneJson {
    dry_run: bool,
    sets: Vec<PrunedJson>,
}

#[derive(Debug, Deserialize)]
struct PrunedJson {
    id: u64,
    name: String,
    origin: String,
    action: String,
    kept_by: Vec<String>,
}

fn prune(d: &Daemon, args: &[&str]) -> PruneJson {
    let mut all = vec!["prune"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = d.umbra_ok(&all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("prune --json: {e}: {out}"))
}

fn scheduled(sets: &[SetJson]) -> Vec<&SetJson> {
    sets.iter().filter(|s| s.origin == "scheduled").collect()
}

fn created(set: &SetJson) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&set.created)
        .unwrap()
        .with_timezone(&Utc)
}

/// Polls `umbra list` until `done` holds, for at most `secs`.
fn wait_for(d: &Daemon, secs: u64, what: &str, done: impl Fn(&[SetJson]) -> bool) -> Vec<SetJson> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let sets = d.list_sets();
        if done(&sets) {
            return sets;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {secs}s; sets: {sets:#?}\n{}",
            d.stderr()
        );
        sleep(Duration::from_millis(200));
    }
}

/// The `[schedule]` table: last in the file's top part, so these lines
/// are its keys.
fn with_schedule(config: Config, lines: &[&str]) -> Config {
    let mut config = config.line("[schedule]");
    for line in lines {
        config = config.line(line);
    }
    config
}

const RULES: [&str; 7] = [
    "timezone = \"UTC\"",
    "keep_hourly = 0",
    "keep_daily = 0",
    "keep_weekly = 0",
    "keep_monthly = 0",
    "keep_yearly = 1",
    "min_age = 3",
];

#[test]
fn a_schedule_of_seconds_makes_scheduled_sets_and_retention_thins_them() {
    let mut lines = vec!["times = \"*:*:0/2\"", "label = \"timeline\""];
    lines.extend(RULES);
    let mut d = Daemon::start(with_schedule(Config::default(), &lines));
    fs::write(d.live("data").join("f"), "before").unwrap();
    let manual = d.create_set_with(&["--label", "by hand"]);
    assert_eq!(manual.origin, "manual");

    // Sets come every two seconds; retention after each keeps the first
    // scheduled set of the year, the newest, and those under 3 s old.
    let sets = wait_for(&d, 30, "six scheduled sets made", |sets| {
        sets.iter().map(|s| s.id).max().unwrap_or(0) >= manual.id + 6
    });
    let ours = scheduled(&sets);
    assert!(!ours.is_empty());
    for set in &ours {
        set.assert_well_formed();
        assert_eq!(set.label.as_deref(), Some("timeline"));
        assert_eq!(set.volumes, ["data"]);
        assert_eq!(
            created(set).timestamp() % 2,
            0,
            "fired on an even second: {set:?}"
        );
    }
    assert!(
        sets.iter().any(|s| s.id == manual.id),
        "the manual set stays"
    );
    // The year's first scheduled set stays: the first set the daemon made
    // (it may have fired before `umbra create`).
    let first = ours[0];
    assert!(first.id <= 2, "the first scheduled set stays: {ours:#?}");
    assert!(
        ours.len() < 6,
        "retention deleted some of the six: {ours:#?}"
    );
    let log = d.stderr();
    assert!(log.contains("retention deleted shadow copy set"), "{log}");
    assert!(log.contains("origin=scheduled"), "{log}");
    let status = d.status();
    assert_eq!(status["schedule"]["times"], serde_json::json!(["*:*:0/2"]));
    let next = DateTime::parse_from_rfc3339(status["schedule"]["next"].as_str().unwrap()).unwrap();
    assert_eq!(next.timestamp() % 2, 0, "{status}");
    assert!(next.with_timezone(&Utc) > Utc::now() - chrono::Duration::seconds(1));

    // The same rules without times: nothing new is made, so what prune
    // says can be checked against what it does.
    d.stop();
    let mut quiet = vec![];
    quiet.extend(RULES);
    d.config = with_schedule(Config::default(), &quiet);
    fs::write(&d.layout.config_path, d.layout.toml(&d.config)).unwrap();
    d.launch();
    sleep(Duration::from_secs(4)); // past min_age for every set
    let before = d.list_sets();
    let dry = prune(&d, &["--dry-run"]);
    assert!(dry.dry_run);
    assert_eq!(
        dry.sets.iter().map(|p| p.id).collect::<Vec<_>>(),
        before.iter().map(|s| s.id).collect::<Vec<_>>(),
        "every set is listed, oldest first"
    );
    let newest = before.last().unwrap().id;
    for p in &dry.sets {
        let expected: Vec<&str> = if p.id == manual.id {
            vec!["manual"]
        } else if p.id == first.id {
            vec!["yearly"]
        } else if p.id == newest {
            vec!["newest"]
        } else {
            vec![]
        };
        assert_eq!(p.kept_by, expected, "{p:?}");
        let action = if expected.is_empty() {
            "delete"
        } else {
            "keep"
        };
        assert_eq!(p.action, action, "{p:?}");
        assert_eq!(
            p.origin,
            if p.id == manual.id {
                "manual"
            } else {
                "scheduled"
            }
        );
    }
    assert_eq!(d.list_sets(), before, "--dry-run deleted nothing");
    let text = d.umbra_ok(&["prune", "--dry-run"]);
    assert!(text.starts_with("ACTION"), "{text}");
    let doomed: Vec<&str> = dry
        .sets
        .iter()
        .filter(|p| p.action == "delete")
        .map(|p| p.name.as_str())
        .collect();
    assert!(
        text.ends_with(&format!(
            "would delete {} of {} sets\n",
            doomed.len(),
            before.len()
        )),
        "{text}"
    );

    let done = prune(&d, &[]);
    assert!(!done.dry_run);
    let after: Vec<String> = d.list_sets().into_iter().map(|s| s.name).collect();
    let kept: Vec<String> = before
        .iter()
        .filter(|s| !doomed.contains(&s.name.as_str()))
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(after, kept, "prune deleted exactly what --dry-run said");
    assert_eq!(
        done.sets.iter().filter(|p| p.action == "delete").count(),
        doomed.len()
    );
    // The sets that stay are still browsable; the manual one as it was.
    assert_eq!(
        fs::read_to_string(d.browse(&manual, "data").join("f")).unwrap(),
        "before"
    );
    for name in &doomed {
        assert!(
            !d.snapshots().join(name).exists(),
            "{name} left the browser"
        );
    }
    let again = prune(&d, &[]);
    assert!(
        again.sets.iter().all(|p| p.action == "keep"),
        "pruning twice deletes nothing more: {again:?}"
    );
}

#[test]
fn retention_never_deletes_the_set_a_running_backup_reads() {
    // Rules that keep nothing: every set may go but the newest and the
    // one a backup is reading.
    let rules = [
        "keep_hourly = 0",
        "keep_daily = 0",
        "keep_monthly = 0",
        "keep_yearly = 0",
        "min_age = 0",
        "keep_manual = 0",
        "keep_backup = 0",
    ];
    let d = Daemon::start(with_schedule(Config::default(), &rules));
    fs::write(d.live("data").join("f"), "old").unwrap();
    let old = d.create_set();
    fs::write(d.live("data").join("f"), "backed up").unwrap();
    let report = d.root().join("prune.json");
    let socket = d.layout.socket.to_string_lossy().into_owned();
    let umbra = common::umbra_bin().to_string_lossy().into_owned();
    // The backup's own command prunes, then reads the set it backs up.
    let script =
        "\"$0\" prune --socket \"$1\" --json > \"$2\" && cat \"$UMBRA_SNAPSHOT/data/f\" > \"$2.f\"";
    let report_arg = report.to_string_lossy().into_owned();
    d.umbra_ok(&[
        "backup",
        "--keep",
        "--",
        "sh",
        "-c",
        script,
        &umbra,
        &socket,
        &report_arg,
    ]);
    let pruned: PruneJson = serde_json::from_str(&fs::read_to_string(&report).unwrap()).unwrap();
    assert!(!pruned.dry_run);
    let verdict = |id: u64| pruned.sets.iter().find(|p| p.id == id).unwrap();
    assert_eq!(verdict(old.id).action, "delete");
    let backup = pruned.sets.iter().find(|p| p.origin == "backup").unwrap();
    assert_eq!(backup.action, "keep");
    assert!(backup.kept_by.contains(&"in_use".to_string()), "{backup:?}");
    assert_eq!(
        fs::read_to_string(d.root().join("prune.json.f")).unwrap(),
        "backed up",
        "the backup read its set after the prune"
    );
    let sets = d.list_sets();
    assert_eq!(sets.len(), 1, "{sets:?}");
    assert_eq!(sets[0].origin, "backup", "kept by --keep, listed as backup");
}

/// `HH:MM:SS` in UTC, `secs` from `at`.
fn clock_time(at: DateTime<Utc>, secs: i64) -> String {
    (at + chrono::Duration::seconds(secs))
        .format("%H:%M:%S")
        .to_string()
}

#[test]
fn a_daemon_down_across_several_firings_takes_one_set_at_start() {
    let t0 = Utc::now();
    let times = format!(
        "times = [\"{}\", \"{}\", \"{}\", \"{}\"]",
        clock_time(t0, 5),
        clock_time(t0, 15),
        clock_time(t0, 16),
        clock_time(t0, 17)
    );
    let mut d = Daemon::start(with_schedule(
        Config::default(),
        &[&times, "timezone = \"UTC\"", "min_age = \"1h\""],
    ));
    let sets = wait_for(&d, 20, "the first scheduled set", |sets| {
        !scheduled(sets).is_empty()
    });
    assert_eq!(scheduled(&sets).len(), 1, "{sets:#?}");
    d.stop();
    assert!(
        Utc::now() < t0 + chrono::Duration::seconds(15),
        "the daemon started and stopped before the next firing"
    );
    // Down across the firings at +15, +16 and +17.
    let back = t0 + chrono::Duration::seconds(19);
    if let Ok(wait) = (back - Utc::now()).to_std() {
        sleep(wait);
    }
    d.launch();
    let sets = wait_for(&d, 20, "the catch-up set", |sets| {
        scheduled(sets).len() >= 2
    });
    sleep(Duration::from_secs(3));
    let sets_later = d.list_sets();
    assert_eq!(
        sets_later, sets,
        "no more than one set for the missed firings"
    );
    let ours = scheduled(&sets);
    assert_eq!(ours.len(), 2, "{sets:#?}");
    assert!(
        created(ours[1]).timestamp() >= back.timestamp(),
        "taken at the start: {:?}",
        ours[1]
    );
    let log = d.stderr();
    assert!(log.contains("missed while the daemon was down"), "{log}");

    // A restart with nothing missed takes nothing.
    d.stop();
    d.launch();
    sleep(Duration::from_secs(3));
    assert_eq!(scheduled(&d.list_sets()).len(), 2);
}

#[test]
fn a_bad_schedule_is_a_one_line_error_and_prune_needs_one() {
    let d = Daemon::prepare(Config::default());
    let good = d.layout.toml(&Config::default());
    let cases = [
        ("times = \"Mon..Fry 07:00\"", "unknown weekday \"Fry\""),
        ("times = \"*:*:0/0\"", "second \"0/0\""),
        (
            "times = \"hourly\"\nvolumes = [\"nope\"]",
            "no volume named \"nope\"",
        ),
        (
            "keep_daily = -1",
            "keep_daily must be from 0 to 100000, not -1",
        ),
        (
            "keep_hourly = 1000000000",
            "keep_hourly must be from 0 to 100000, not 1000000000",
        ),
        ("min_age = \"a while\"", "min_age \"a while\""),
        ("timezone = \"Mars/Olympus\"", "timezone \"Mars/Olympus\""),
    ];
    for (i, (table, message)) in cases.iter().enumerate() {
        let path = d.root().join(format!("bad-{i}.toml"));
        fs::write(&path, format!("{good}\n[schedule]\n{table}\n")).unwrap();
        let out = d.run_up(&path);
        let line = assert_one_line_error(&out, table);
        assert!(line.contains("schedule: "), "{line}");
        assert!(line.contains(message), "{table}: {line}");
    }

    let d = Daemon::start(Config::default());
    let out = d.umbra(&["prune", "--dry-run"]);
    let line = assert_one_line_error(&out, "prune without [schedule]");
    assert!(line.contains("no [schedule]"), "{line}");
}

fn hangup(d: &Daemon) {
    let pid = d.pid().expect("the daemon runs") as libc::pid_t;
    // SAFETY: kill sends a signal to our own child.
    let sent = unsafe { libc::kill(pid, libc::SIGHUP) };
    assert_eq!(sent, 0, "kill -HUP {pid}");
}

/// Waits for the daemon's log to hold `text` `count` times.
fn wait_for_log(d: &Daemon, text: &str, count: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = d.stderr();
        if log.matches(text).count() >= count {
            return log;
        }
        assert!(Instant::now() < deadline, "{text:?} x{count} in:\n{log}");
        sleep(Duration::from_millis(100));
    }
}

#[test]
fn sighup_puts_a_new_schedule_in_force_and_a_broken_config_changes_nothing() {
    let hourly = with_schedule(
        Config::default(),
        &["times = \"hourly\"", "label = \"hourly\""],
    );
    let mut d = Daemon::start(hourly);
    assert_eq!(
        d.status()["schedule"]["times"],
        serde_json::json!(["hourly"])
    );
    // The reloaded schedule's sets, by their label: a start just before the
    // hour may have made one "hourly" set too.
    let reloaded = |sets: &[SetJson]| -> Vec<u64> {
        scheduled(sets)
            .iter()
            .filter(|s| s.label.as_deref() == Some("reloaded"))
            .map(|s| s.id)
            .collect()
    };

    // Every two seconds, and a key only a restart applies.
    let every_2s = with_schedule(
        Config::default().line("max_clients = 7"),
        &[
            "times = \"*:*:0/2\"",
            "label = \"reloaded\"",
            "min_age = 3600",
        ],
    );
    fs::write(&d.layout.config_path, d.layout.toml(&every_2s)).unwrap();
    hangup(&d);
    let log = wait_for_log(&d, "reload: the new schedule is in force", 1);
    assert!(
        log.contains("reload: max_clients changed, which only a restart applies"),
        "{log}"
    );
    wait_for(&d, 15, "two sets of the reloaded schedule", |sets| {
        reloaded(sets).len() >= 2
    });
    assert_eq!(
        d.status()["schedule"]["times"],
        serde_json::json!(["*:*:0/2"])
    );

    // A schedule that does not parse: one line, and the old one stays.
    let broken = with_schedule(Config::default(), &["times = \"every blue moon\""]);
    fs::write(&d.layout.config_path, d.layout.toml(&broken)).unwrap();
    hangup(&d);
    let log = wait_for_log(&d, "the configuration in force stays", 1);
    let line = log
        .lines()
        .find(|l| l.contains("the configuration in force stays"))
        .unwrap();
    assert!(line.contains("every blue moon"), "{line}");
    let status = d.status();
    assert_eq!(status["schedule"]["times"], serde_json::json!(["*:*:0/2"]));
    let before = reloaded(&d.list_sets()).into_iter().max();
    wait_for(&d, 15, "the previous schedule goes on", |sets| {
        reloaded(sets).into_iter().max() > before
    });
    assert!(d.pid().is_some());
    d.stop();
}
