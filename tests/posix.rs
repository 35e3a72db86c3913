//! POSIX conformance of the live mount (invariant 3): pjdfstest, the Rust
//! rewrite, runs on a plain directory of the backing filesystem and through
//! umbra's live mount, and every test that passes natively must pass
//! through umbra. It runs twice through umbra: on a volume that never had a
//! set (nothing is preserved), and after a first set while more sets are
//! taken over and over, so that the objects pjdfstest creates keep falling
//! under a set and its operations run the copy-on-write paths.
//!
//! Needs `pjdfstest` (`cargo install pjdfstest --locked`; found in PATH, in
//! `$CARGO_HOME/bin`, or at `$PJDFSTEST`) and the users `nobody` and
//! `tests`; `.ci/run` provides both. Without them the test fails; it never
//! skips. The whole suite runs (about 400 tests, some
//! seconds each way), so no subset is chosen.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use common::{Config, Daemon, run_with_timeout};

const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// Tests that pass natively and cannot run through any FUSE mount, with
/// why. `link_count_max` asks pathconf(_PC_LINK_MAX), which glibc answers
/// from statfs's f_type; for FUSE it has no entry and says 127, which
/// pjdfstest reads as "limit unknown" and skips. `link_emlink_passes_through`
/// below checks the same behaviour (EMLINK at the backing limit) directly.
const SKIPPED_ON_FUSE: &[&str] = &["link::link_count_max"];

/// pjdfstest's configuration: every optional feature Linux has, and a nap
/// longer than the kernel's coarse timestamp tick (at 1 ms, the time checks
/// fail even natively).
const PJDFSTEST_TOML: &str = r#"
[features]
posix_fallocate = {}
rename_ctime = {}
utime_now = {}
utimensat = {}

[settings]
naptime = 0.02
allow_remount = false
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    Skipped,
    FailedAsExpected,
}

/// One pjdfstest run: each test's outcome, and the text for a report.
struct Run {
    label: String,
    outcomes: BTreeMap<String, Outcome>,
    output: String,
}

impl Run {
    fn count(&self, outcome: Outcome) -> usize {
        self.outcomes.values().filter(|o| **o == outcome).count()
    }

    fn summary(&self) -> String {
        format!(
            "{}: {} passed, {} failed, {} skipped",
            self.label,
            self.count(Outcome::Ok),
            self.count(Outcome::Failed),
            self.count(Outcome::Skipped)
        )
    }

    /// The output pjdfstest printed about `test` (its line and the
    /// indented lines after it).
    fn detail(&self, test: &str) -> String {
        let mut out = String::new();
        let mut inside = false;
        for line in self.output.lines() {
            if line.starts_with(['\t', ' ']) {
                if inside {
                    let _ = writeln!(out, "    {line}");
                }
                continue;
            }
            inside = line.split_whitespace().next() == Some(test);
            if inside {
                let _ = writeln!(out, "  {line}");
            }
        }
        out
    }
}

fn parse(label: &str, output: String) -> Run {
    let mut outcomes = BTreeMap::new();
    for line in output.lines() {
        if line.starts_with(['\t', ' ']) || line.starts_with("Summary:") {
            continue;
        }
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let outcome = if line.ends_with(" failed as expected") {
            Outcome::FailedAsExpected
        } else if line.ends_with(" ok") {
            Outcome::Ok
        } else if line.ends_with(" FAILED") {
            Outcome::Failed
        } else if line.ends_with(" skipped") {
            Outcome::Skipped
        } else {
            continue;
        };
        outcomes.insert(name.to_string(), outcome);
    }
    Run {
        label: label.to_string(),
        outcomes,
        output,
    }
}

fn find_pjdfstest() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PJDFSTEST") {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    match std::env::var_os("CARGO_HOME") {
        Some(home) => dirs.push(PathBuf::from(home).join("bin")),
        None => {
            if let Some(home) = std::env::var_os("HOME") {
                dirs.push(PathBuf::from(home).join(".cargo/bin"));
            }
        }
    }
    dirs.into_iter()
        .map(|d| d.join("pjdfstest"))
        .find(|p| p.is_file())
}

fn user_exists(name: &str) -> bool {
    Command::new("id")
        .arg(name)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The pjdfstest binary; the test fails (never skips) when it or its users
/// are missing.
fn prerequisites() -> PathBuf {
    let missing = match find_pjdfstest() {
        None => "pjdfstest is not installed (`cargo install pjdfstest --locked`)".to_string(),
        Some(bin) => match ["nobody", "tests"].into_iter().find(|u| !user_exists(u)) {
            Some(user) => format!("pjdfstest needs the user {user:?} (`useradd`)"),
            None => return bin,
        },
    };
    panic!("{missing}; .ci/run sets both up");
}

/// A directory on another filesystem, for the EXDEV tests.
fn secondary_fs() -> Option<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        return None;
    }
    tempfile::Builder::new()
        .prefix("umbra-pjdfstest-")
        .tempdir_in(shm)
        .ok()
}

fn pjdfstest(bin: &Path, config: &Path, secondary: Option<&Path>, dir: &Path, label: &str) -> Run {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let mut cmd = Command::new(bin);
    cmd.current_dir(dir)
        .env("NO_COLOR", "1")
        .arg("-c")
        .arg(config)
        .arg("-p")
        .arg(dir);
    if let Some(secondary) = secondary {
        cmd.arg("-s").arg(secondary);
    }
    let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
    let run = parse(label, String::from_utf8_lossy(&out.stdout).into_owned());
    assert!(
        run.outcomes.len() > 300,
        "{label}: pjdfstest reported {} tests; is it broken?\nstdout:\n{}\nstderr:\n{}",
        run.outcomes.len(),
        run.output,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", run.summary());
    run
}

/// Every test that passed natively and did not pass in `umbra`.
fn divergences(native: &Run, umbra: &Run) -> String {
    let mut report = String::new();
    for (test, outcome) in &native.outcomes {
        if *outcome != Outcome::Ok {
            continue;
        }
        let through = umbra.outcomes.get(test).copied();
        if through == Some(Outcome::Ok)
            || (through == Some(Outcome::Skipped) && SKIPPED_ON_FUSE.contains(&test.as_str()))
        {
            continue;
        }
        let _ = writeln!(
            report,
            "{test}: ok natively, {through:?} in {}\n{}",
            umbra.label,
            umbra.detail(test)
        );
    }
    report
}

#[test]
fn pjdfstest_passes_through_umbra_as_on_the_backing_filesystem() {
    let bin = prerequisites();
    let d = Daemon::start(Config::default());
    let config = d.root().join("pjdfstest.toml");
    fs::write(&config, PJDFSTEST_TOML).expect("writing pjdfstest.toml");
    let secondary = secondary_fs();
    let secondary = secondary.as_ref().map(|t| t.path());

    // The native run is on the backing directory's filesystem, next to it.
    let native = pjdfstest(&bin, &config, secondary, &d.scratch("native"), "native");
    let no_set = pjdfstest(
        &bin,
        &config,
        secondary,
        &d.live("data").join("no-set"),
        "umbra, no set",
    );

    d.create_set();
    let stop = AtomicBool::new(false);
    let taken = AtomicUsize::new(1);
    let with_sets = thread::scope(|s| {
        let taker = s.spawn(|| -> Result<(), String> {
            while !stop.load(Ordering::Relaxed) {
                d.try_create_set()?;
                taken.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        let run = pjdfstest(
            &bin,
            &config,
            secondary,
            &d.live("data").join("with-sets"),
            "umbra, sets taken throughout",
        );
        stop.store(true, Ordering::Relaxed);
        if let Err(e) = taker.join().expect("set taker") {
            panic!("taking sets during pjdfstest: {e}");
        }
        run
    });
    let taken = taken.load(Ordering::Relaxed);
    eprintln!("{taken} sets taken during the run");
    assert!(taken > 10, "only {taken} sets were taken during pjdfstest");

    let report = divergences(&native, &no_set) + &divergences(&native, &with_sets);
    assert!(
        report.is_empty(),
        "pjdfstest passes natively but not through umbra:\n{report}\n{}\n{}\n{}",
        native.summary(),
        no_set.summary(),
        with_sets.summary()
    );
}

/// link(2) returns EMLINK at the backing filesystem's link limit, through
/// umbra as natively: what pjdfstest's link_count_max checks, which it
/// cannot run on FUSE (see SKIPPED_ON_FUSE).
#[test]
fn link_emlink_passes_through() {
    let d = Daemon::start(Config::default());
    let native = d.scratch("emlink");
    let through = d.live("data").join("emlink");
    fs::create_dir_all(&through).expect("mkdir");
    d.create_set();
    let limit = |dir: &Path| -> (usize, Option<i32>) {
        let file = dir.join("f");
        fs::write(&file, b"x").expect("write");
        let mut n = 1;
        loop {
            match fs::hard_link(&file, dir.join(format!("l{n}"))) {
                Ok(()) => n += 1,
                Err(e) => return (n, e.raw_os_error()),
            }
            if n > 200_000 {
                return (n, None);
            }
        }
    };
    let (native_max, native_err) = limit(&native);
    if native_err != Some(libc::EMLINK) {
        eprintln!("the backing filesystem has no link limit below 200000; nothing to compare");
        return;
    }
    let (umbra_max, umbra_err) = limit(&through);
    eprintln!("EMLINK after {native_max} names natively, {umbra_max} through umbra");
    assert_eq!(
        (umbra_max, umbra_err),
        (native_max, native_err),
        "links until the error, and the error, through umbra vs natively"
    );
}
