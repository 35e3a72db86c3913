//! The oracle: a seeded random list of live operations, with set creation,
//! set deletion and daemon restarts interleaved, applied both to the umbra
//! live mount and to a native reference directory on the same filesystem.
//!
//! - Every op must give the same result (Ok or the same errno) on both
//!   (invariant 3).
//! - At each set, the live tree must equal the reference tree, times aside;
//!   the live tree with its times is that set's image, and the new set's
//!   browse tree must equal it at once.
//! - The model follows the daemon's `max_sets` (the oldest sets go before a
//!   new one is taken): after each set, `umbra list` must name exactly the
//!   sets the model holds alive, evicted sets must be gone from the browser
//!   and `latest` must name the new set. The writeback run uses a small
//!   `max_sets`, so the default run evicts too.
//! - At the end, and again after a restart, every surviving set's browse tree
//!   must still equal its image (invariant 1), no inode number is shared
//!   between two sets, and `latest` names the newest set.
//!
//! Knobs: UMBRA_ORACLE_SEED (printed on every run), UMBRA_ORACLE_OPS (default
//! 3000), UMBRA_ORACLE_SHRINK_SECS (default 120), UMBRA_ORACLE_REPLAY=FILE
//! (replays an op list printed by a failure instead of generating one),
//! UMBRA_ORACLE_MAX_SETS (the daemon's `max_sets` in both runs).
//! A failure shrinks the op list by delta debugging against fresh daemons and
//! prints the shortest failing list it found, also written to a file.

#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::manifest::{self, Compare, Manifest};
use common::ops::{self, GenConfig, Generator, Op, Slots};
use common::shrink::{self, Verdict};
use common::{Config, Daemon, SetJson};

const DEFAULT_OPS: usize = 3000;
const DEFAULT_SHRINK_SECS: u64 = 120;
/// A soak says how far it got this often.
const PROGRESS_EVERY: usize = 50_000;

/// A failure and the op index it showed at (ops.len() for the end checks).
#[derive(Debug)]
struct Failure {
    at: usize,
    message: String,
}

fn fail(at: usize, message: impl Into<String>) -> Failure {
    Failure {
        at,
        message: message.into(),
    }
}

/// Where a set the run created stands, as the model sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SetState {
    Alive,
    /// `umbra delete`d by an op.
    Deleted,
    /// Deleted by the daemon itself: `max_sets` were there when a newer set
    /// was asked for, and this was the oldest.
    Evicted,
}

struct Recorded {
    set: SetJson,
    /// The tree the set must show; dropped once the set is gone, so that a
    /// soak's memory grows with the sets alive, not all it ever made.
    image: Option<Manifest>,
    state: SetState,
}

impl Recorded {
    fn alive(&self) -> bool {
        self.state == SetState::Alive
    }
}

/// How the live mount caches writes: write-through (the default), or the
/// kernel's writeback cache (`writeback_cache = true`), whose pages, sizes
/// and mtimes must reach every set through the flush before its hold.
#[derive(Clone, Copy, Debug)]
enum Cache {
    WriteThrough,
    Writeback,
}

/// One daemon, one reference tree, and what the sets should show.
struct Run {
    // Slots are declared (and so dropped) before the daemon: no fd may stay
    // open on a mount the daemon is unmounting.
    live_slots: Slots,
    ref_slots: Slots,
    sets: Vec<Recorded>,
    live: PathBuf,
    reference: PathBuf,
    daemon: Daemon,
    cache: Cache,
    /// The daemon's `max_sets`, as its status reports it: before a set is
    /// taken, the oldest sets are deleted while this many are alive.
    max_sets: usize,
}

/// The daemon's `max_sets` in the writeback runs, unless
/// UMBRA_ORACLE_MAX_SETS says otherwise: small, so that the default run
/// evicts a set at most creations (write-through runs keep the daemon's
/// default, so a soak also checks hundreds of sets at once).
const WRITEBACK_MAX_SETS: usize = 5;

/// The `max_sets` line a run's config gets, if any.
fn max_sets_for(cache: Cache) -> Option<usize> {
    env_u64("UMBRA_ORACLE_MAX_SETS")
        .map(|n| n as usize)
        .or(match cache {
            Cache::WriteThrough => None,
            Cache::Writeback => Some(WRITEBACK_MAX_SETS),
        })
}

impl Run {
    fn new(cache: Cache) -> Result<Run, Failure> {
        let mut config = match cache {
            Cache::WriteThrough => Config::default(),
            Cache::Writeback => Config::default().line("writeback_cache = true"),
        };
        let wanted = max_sets_for(cache);
        if let Some(n) = wanted {
            config = config.line(&format!("max_sets = {n}"));
        }
        let daemon =
            Daemon::try_start(config).map_err(|e| fail(0, format!("starting the daemon: {e}")))?;
        let max_sets = reported_max_sets(&daemon)?;
        if wanted.is_some_and(|n| n != max_sets) {
            return Err(fail(
                0,
                format!("the config says max_sets = {wanted:?}, the daemon's status {max_sets}"),
            ));
        }
        let live = daemon.live("data");
        let reference = daemon.scratch("reference");
        // Both roots start as the same empty directory.
        let mode = fs::symlink_metadata(&live)
            .map_err(|e| fail(0, format!("stat of the live root: {e}")))?;
        fs::set_permissions(&reference, mode.permissions())
            .map_err(|e| fail(0, format!("chmod reference: {e}")))?;
        Ok(Run {
            live_slots: Slots::default(),
            ref_slots: Slots::default(),
            sets: Vec::new(),
            live,
            reference,
            daemon,
            cache,
            max_sets,
        })
    }

    fn step(&mut self, i: usize, op: &Op) -> Result<(), Failure> {
        match op {
            Op::CreateSet => self.create_set(i),
            Op::DeleteSet { nth } => {
                // A set deleted or evicted already is no more: nothing to do
                // (its name may even be a newer set's now).
                let Some(rec) = self.sets.get_mut(*nth).filter(|r| r.alive()) else {
                    return Ok(());
                };
                self.daemon
                    .try_delete_set(&rec.set.name)
                    .map_err(|e| fail(i, format!("op #{i} {op}: {e}")))?;
                rec.state = SetState::Deleted;
                rec.image = None;
                Ok(())
            }
            Op::Restart => {
                self.live_slots.close_all();
                self.ref_slots.close_all();
                self.daemon
                    .try_restart()
                    .map_err(|e| fail(i, format!("op #{i} {op}: {e}")))
            }
            _ => {
                let got = ops::apply(op, &self.live, &mut self.live_slots);
                let want = ops::apply(op, &self.reference, &mut self.ref_slots);
                if got == want {
                    return Ok(());
                }
                Err(fail(
                    i,
                    format!(
                        "op #{i} `{op}`: live mount gave {}, the native reference {}",
                        ops::show_result(&got),
                        ops::show_result(&want)
                    ),
                ))
            }
        }
    }

    fn create_set(&mut self, i: usize) -> Result<(), Failure> {
        // The daemon's policy (fs/src/storage.rs, before_new_set): while
        // `max_sets` sets are alive, delete the oldest (lowest id, which is
        // the earliest created), then take the new one.
        let mut alive = self.sets.iter().filter(|r| r.alive()).count();
        let mut evicted = Vec::new();
        for (n, rec) in self.sets.iter_mut().enumerate() {
            if alive < self.max_sets.max(1) {
                break;
            }
            if rec.alive() {
                rec.state = SetState::Evicted;
                rec.image = None;
                alive -= 1;
                evicted.push(n);
            }
        }
        let set = match self.cache {
            Cache::WriteThrough => self.daemon.try_create_set(),
            // No fork: it would flush the files the slots hold open.
            Cache::Writeback => self.daemon.try_create_set_in_process(),
        }
        .map_err(|e| fail(i, format!("op #{i} set: {e}")))?;
        let image = Manifest::try_capture(&self.live, &[])
            .map_err(|e| fail(i, format!("capturing live: {e}")))?;
        let reference = Manifest::try_capture(&self.reference, &[])
            .map_err(|e| fail(i, format!("capturing reference: {e}")))?;
        let diffs = manifest::diff_with(&reference, &image, Compare::IGNORE_TIMES);
        if !diffs.is_empty() {
            return Err(fail(
                i,
                format!(
                    "op #{i} set {}: the live tree differs from the native reference (reference vs live):\n{}",
                    set.name,
                    manifest::explain(&diffs)
                ),
            ));
        }
        let browse = self.daemon.browse(&set, "data");
        let shown = match Manifest::try_capture(&browse, &[]) {
            Ok(shown) => shown,
            Err(e) => {
                return Err(fail(
                    i,
                    format!(
                        "op #{i}: new set {} is not browsable: {e}\n{}",
                        set.name,
                        self.daemon.last_words(40)
                    ),
                ));
            }
        };
        let diffs = manifest::diff(&image, &shown);
        if !diffs.is_empty() {
            return Err(fail(
                i,
                format!(
                    "op #{i}: new set {} differs from the live tree it was taken of (live vs set):\n{}",
                    set.name,
                    manifest::explain(&diffs)
                ),
            ));
        }
        self.sets.push(Recorded {
            set,
            image: Some(image),
            state: SetState::Alive,
        });
        self.check_list(i, &evicted)
    }

    /// Right after a set: `umbra list` names exactly the sets the model has
    /// alive, `latest` is the new one, and the sets this creation evicted
    /// (`evicted`, indices into `sets`) are gone from the browser.
    fn check_list(&self, i: usize, evicted: &[usize]) -> Result<(), Failure> {
        let listed = match self.cache {
            Cache::WriteThrough => self.daemon.try_list_sets(),
            // No fork: see create_set.
            Cache::Writeback => self.daemon.try_list_sets_in_process(),
        }
        .map_err(|e| fail(i, format!("op #{i} set, listing: {e}")))?;
        let got: Vec<(u64, &str)> = listed.iter().map(|s| (s.id, s.name.as_str())).collect();
        let want: Vec<(u64, &str)> = self
            .sets
            .iter()
            .filter(|r| r.alive())
            .map(|r| (r.set.id, r.set.name.as_str()))
            .collect();
        if got != want {
            let state = |id: u64| {
                self.sets
                    .iter()
                    .find(|r| r.set.id == id)
                    .map_or("never made by this run".to_string(), |r| {
                        format!("{:?}", r.state)
                    })
            };
            let extra: Vec<String> = got
                .iter()
                .filter(|s| !want.contains(s))
                .map(|(id, name)| format!("{name} (id {id}, model: {})", state(*id)))
                .collect();
            let missing: Vec<String> = want
                .iter()
                .filter(|s| !got.contains(s))
                .map(|(id, name)| format!("{name} (id {id})"))
                .collect();
            return Err(fail(
                i,
                format!(
                    "op #{i} set (max_sets = {}): `umbra list` disagrees with the model: \
                     listed but not alive in the model: {extra:?}; alive in the model but \
                     not listed: {missing:?}\nlisted: {got:?}\nmodel:  {want:?}",
                    self.max_sets
                ),
            ));
        }
        for &n in evicted {
            let name = &self.sets[n].set.name;
            // The new set may have taken an evicted set's name (same second).
            if !want.iter().any(|(_, w)| w == name) && self.daemon.snapshots().join(name).exists() {
                return Err(fail(
                    i,
                    format!("op #{i} set: evicted set {name} is still browsable"),
                ));
            }
        }
        if let Some(newest) = self.sets.last() {
            let latest = fs::read_link(self.daemon.snapshots().join("latest"))
                .map_err(|e| fail(i, format!("op #{i} set: reading `latest`: {e}")))?;
            if latest.as_path() != std::path::Path::new(&newest.set.name) {
                return Err(fail(
                    i,
                    format!(
                        "op #{i} set: latest -> {}, expected {}",
                        latest.display(),
                        newest.set.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Every surviving set against its image, the list, `latest`, and inode
    /// numbers across sets.
    fn check_sets(&self, at: usize, when: &str) -> Result<(), Failure> {
        let mut listed = self
            .daemon
            .try_list_sets()
            .map_err(|e| fail(at, format!("{when}: {e}")))?;
        listed.sort_by_key(|s| s.id);
        let alive: Vec<&Recorded> = self.sets.iter().filter(|r| r.alive()).collect();
        let want: Vec<&str> = alive.iter().map(|r| r.set.name.as_str()).collect();
        let got: Vec<&str> = listed.iter().map(|s| s.name.as_str()).collect();
        if want != got {
            return Err(fail(
                at,
                format!("{when}: `umbra list` shows {got:?}, expected {want:?}"),
            ));
        }
        // (A later set may take a deleted set's name: same second, same suffix.)
        for rec in self
            .sets
            .iter()
            .filter(|r| !r.alive() && !want.contains(&r.set.name.as_str()))
        {
            if self.daemon.snapshots().join(&rec.set.name).exists() {
                return Err(fail(
                    at,
                    format!(
                        "{when}: set {} ({:?}) is still browsable",
                        rec.set.name, rec.state
                    ),
                ));
            }
        }
        let mut owner: BTreeMap<u64, String> = BTreeMap::new();
        for rec in &alive {
            let browse = self.daemon.browse(&rec.set, "data");
            let shown = Manifest::try_capture(&browse, &[])
                .map_err(|e| fail(at, format!("{when}: capturing set {}: {e}", rec.set.name)))?;
            let Some(image) = &rec.image else {
                return Err(fail(
                    at,
                    format!("{when}: set {} has no image", rec.set.name),
                ));
            };
            let diffs = manifest::diff(image, &shown);
            if !diffs.is_empty() {
                return Err(fail(
                    at,
                    format!(
                        "{when}: set {} no longer shows the tree it was taken of (image vs set):\n{}",
                        rec.set.name,
                        manifest::explain(&diffs)
                    ),
                ));
            }
            let inodes = manifest::inode_map(&browse)
                .map_err(|e| fail(at, format!("{when}: inodes: {e}")))?;
            for (path, ino) in inodes {
                let here = format!("{}/{}", rec.set.name, path.display());
                if let Some(other) = owner.get(&ino)
                    && !other.starts_with(&format!("{}/", rec.set.name))
                {
                    return Err(fail(
                        at,
                        format!("{when}: inode {ino} is shared by {other} and {here} (two sets)"),
                    ));
                }
                owner.entry(ino).or_insert(here);
            }
        }
        if let Some(newest) = alive.last() {
            let latest = fs::read_link(self.daemon.snapshots().join("latest"))
                .map_err(|e| fail(at, format!("{when}: reading the `latest` symlink: {e}")))?;
            if latest.as_path() != std::path::Path::new(&newest.set.name) {
                return Err(fail(
                    at,
                    format!(
                        "{when}: latest -> {}, expected {}",
                        latest.display(),
                        newest.set.name
                    ),
                ));
            }
        }
        Ok(())
    }

    fn finish(&mut self, at: usize) -> Result<(), Failure> {
        self.live_slots.close_all();
        self.ref_slots.close_all();
        let live = Manifest::try_capture(&self.live, &[])
            .map_err(|e| fail(at, format!("capturing live: {e}")))?;
        let reference = Manifest::try_capture(&self.reference, &[])
            .map_err(|e| fail(at, format!("capturing reference: {e}")))?;
        let diffs = manifest::diff_with(&reference, &live, Compare::IGNORE_TIMES);
        if !diffs.is_empty() {
            return Err(fail(
                at,
                format!(
                    "at the end the live tree differs from the reference:\n{}",
                    manifest::explain(&diffs)
                ),
            ));
        }
        self.check_sets(at, "at the end")?;
        self.daemon
            .try_restart()
            .map_err(|e| fail(at, format!("final restart: {e}")))?;
        self.check_sets(at, "after the final restart")?;
        self.daemon
            .try_stop()
            .map_err(|e| fail(at, format!("final stop: {e}")))
    }
}

/// The `max_sets` the daemon's status reports: the model follows what the
/// daemon says it does, so a change of the default cannot leave it behind.
fn reported_max_sets(daemon: &Daemon) -> Result<usize, Failure> {
    let stdout = daemon
        .try_umbra_ok(&["status", "--json"])
        .map_err(|e| fail(0, format!("status: {e}")))?;
    let status: serde_json::Value = serde_json::from_str(&stdout).map_err(|e| {
        fail(
            0,
            format!("`umbra status --json` printed no JSON ({e}): {stdout:?}"),
        )
    })?;
    status["diff_area"]["max_sets"]
        .as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| {
            fail(
                0,
                format!("`umbra status --json` shows no diff_area.max_sets: {stdout}"),
            )
        })
}

/// Replays `ops` against a fresh daemon and reference. Past `deadline` the
/// replay stops and counts as passing: a shrink trial of half a soak must
/// not run for half an hour after the shrink's budget is spent.
fn replay(ops: &[Op], cache: Cache, deadline: Option<Instant>) -> Result<(), Failure> {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut run = Run::new(cache)?;
        for (i, op) in ops.iter().enumerate() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(());
            }
            run.step(i, op)?;
        }
        run.finish(ops.len())
    }));
    match result {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".to_string());
            Err(fail(ops.len(), format!("panicked: {msg}")))
        }
    }
}

/// Generates and runs `n` ops (plus a final set) from `seed`; on failure
/// returns the ops so far and the failure.
fn generate_and_run(seed: u64, n: usize, cache: Cache) -> Result<Vec<Op>, (Vec<Op>, Failure)> {
    let mut ops = Vec::with_capacity(n + 1);
    let mut run = match Run::new(cache) {
        Ok(r) => r,
        Err(f) => return Err((ops, f)),
    };
    let mut generator = Generator::new(seed, GenConfig::default());
    let started = Instant::now();
    for i in 0..=n {
        if i > 0 && i % PROGRESS_EVERY == 0 {
            let alive = run.sets.iter().filter(|r| r.alive()).count();
            eprintln!(
                "oracle: {i} ops, {} sets made, {alive} alive, {:.0?}, {:.0} ops/s",
                run.sets.len(),
                started.elapsed(),
                i as f64 / started.elapsed().as_secs_f64()
            );
        }
        let op = if i == n {
            Op::CreateSet
        } else {
            generator.next(&run.reference, run.ref_slots.open())
        };
        ops.push(op.clone());
        if let Err(f) = run.step(i, &op) {
            return Err((ops, f));
        }
    }
    match run.finish(ops.len()) {
        Ok(()) => Ok(ops),
        Err(f) => Err((ops, f)),
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?}: {e}")),
    )
}

fn random_seed() -> u64 {
    let mut buf = [0u8; 8];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut buf);
    }
    u64::from_le_bytes(buf) ^ u64::from(std::process::id())
}

/// Shrinks a failing list, writes it to a file and panics with all of it.
fn report(seed: Option<u64>, ops: Vec<Op>, first: Failure, cache: Cache) -> ! {
    let budget =
        Duration::from_secs(env_u64("UMBRA_ORACLE_SHRINK_SECS").unwrap_or(DEFAULT_SHRINK_SECS));
    let original_len = ops.len();
    let started = Instant::now();
    let first_message = first.message.clone();
    let shrunk = shrink::ddmin(
        ops,
        first.at,
        first.message,
        budget,
        |candidate| match replay(candidate, cache, Some(started + budget)) {
            Ok(()) => Verdict::Pass,
            Err(f) => Verdict::Fail {
                at: f.at,
                message: f.message,
            },
        },
    );
    let limit = std::env::var("UMBRA_ORACLE_MAX_SETS")
        .map(|n| format!(" UMBRA_ORACLE_MAX_SETS={n}"))
        .unwrap_or_default();
    let seed_text = seed.map_or(format!("replayed list{limit}, {cache:?}"), |s| {
        format!("UMBRA_ORACLE_SEED={s}{limit}, {cache:?}")
    });
    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "oracle-{}.ops",
        seed.map_or("replay".to_string(), |s| s.to_string())
    ));
    let listing = ops::format_ops(&shrunk.items);
    let header = format!(
        "# umbra oracle failure ({seed_text}), {} of {original_len} ops\n# fails with: {}\n",
        shrunk.items.len(),
        shrunk.message.lines().next().unwrap_or("")
    );
    let written = fs::write(&file, format!("{header}{listing}")).is_ok();
    panic!(
        "oracle failed ({seed_text})\n\nfirst failure:\n{first_message}\n\n\
         shrunk in {:.0?} ({} trials{}) from {original_len} to {} ops, which fail with:\n{}\n\n\
         --- minimal op list{} ---\n{listing}--- replay with: UMBRA_ORACLE_REPLAY={} cargo test --test oracle ---",
        started.elapsed(),
        shrunk.trials,
        if shrunk.minimal && started.elapsed() < budget {
            ", 1-minimal"
        } else {
            ", budget spent before 1-minimal"
        },
        shrunk.items.len(),
        shrunk.message,
        if written {
            format!(" (written to {})", file.display())
        } else {
            String::new()
        },
        file.display()
    );
}

/// One oracle at a time: another test's forks (starting a daemon, running
/// the CLI) would flush the files a writeback run holds open, and hide a
/// missing flush before a hold.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn random_live_ops_match_a_native_reference_and_every_set_keeps_its_image() {
    let _serial = serial();
    run_or_replay(Cache::WriteThrough);
}

#[test]
fn with_the_writeback_cache_every_set_keeps_its_image_too() {
    let _serial = serial();
    run_or_replay(Cache::Writeback);
}

fn run_or_replay(cache: Cache) {
    if let Some(path) = std::env::var_os("UMBRA_ORACLE_REPLAY") {
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path:?}: {e}"));
        let ops = ops::parse_ops(&text).unwrap_or_else(|e| panic!("parsing {path:?}: {e}"));
        eprintln!(
            "oracle: replaying {} ops from {path:?}, {cache:?}",
            ops.len()
        );
        if let Err(f) = replay(&ops, cache, None) {
            report(None, ops, f, cache);
        }
    } else {
        generate_run_and_report(cache);
    }
}

fn generate_run_and_report(cache: Cache) {
    let seed = env_u64("UMBRA_ORACLE_SEED").unwrap_or_else(random_seed);
    let n = env_u64("UMBRA_ORACLE_OPS").map_or(DEFAULT_OPS, |n| n as usize);
    eprintln!(
        "oracle: UMBRA_ORACLE_SEED={seed} UMBRA_ORACLE_OPS={n}, {cache:?}, max_sets {}",
        max_sets_for(cache).map_or("the daemon's default".to_string(), |n| n.to_string())
    );
    let started = Instant::now();
    match generate_and_run(seed, n, cache) {
        Ok(ops) => {
            let sets = ops.iter().filter(|o| matches!(o, Op::CreateSet)).count();
            let restarts = ops.iter().filter(|o| matches!(o, Op::Restart)).count();
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "oracle: seed {seed}: {} ops, {sets} sets, {restarts} restarts, {secs:.1}s, {:.0} ops/s",
                ops.len(),
                ops.len() as f64 / secs
            );
        }
        Err((ops, f)) => report(Some(seed), ops, f, cache),
    }
}

/// Op lists pinned because they walk the copy-on-write model's corners; a
/// shrunk failure printed by the test above belongs here too, named after
/// the bug it pins.
const PINNED: &[(&str, &str)] = &[
    (
        "truncation_by_swap_moved_its_directory_mtime",
        "mkdir d1 mode=2775
         mkdir d1/d1 mode=1777
         create d1/d1/c mode=777
         set
         append d1/d1/e len=3859 seed=7759357718986121411
         write d1/d1/c off=1251695 len=357999 seed=8448125967345177510
         overwrite d1/d1/c len=3671 seed=5400369499277448270
         set",
    ),
    (
        "truncate_to_zero_of_a_file_open_across_a_set",
        "overwrite big len=3000000 seed=77
         open 0 big
         set
         truncate big size=0
         fdwrite 0 off=100 len=5000 seed=78
         set
         fdread 0 off=0 len=6000
         close 0
         set",
    ),
    (
        "unlink_of_the_last_link_of_an_open_file",
        "overwrite f len=200000 seed=5
         link f g
         open 1 f
         set
         unlink g
         set
         unlink f
         fdwrite 1 off=65530 len=20 seed=9
         set
         close 1
         restart
         set",
    ),
    (
        "rename_noreplace_and_exchange_across_directories",
        "mkdir d0 mode=755
         mkdir d1 mode=755
         overwrite d0/a len=70000 seed=12
         overwrite d1/a len=10 seed=13
         symlink d0/a b
         set
         rename d0/a d1/a noreplace
         rename d0/a d1/a exchange
         rename d1 d0 exchange
         rename b d0/b
         rename d0/a d0/c
         set
         rename d1 d0
         rmdir d0
         set",
    ),
    (
        "sparse_unaligned_writes_spanning_blocks_and_a_restart",
        "create s mode=644
         write s off=131071 len=3 seed=5
         set
         write s off=65535 len=65538 seed=6
         truncate s size=5000000
         set
         restart
         write s off=4999999 len=2 seed=7
         truncate s size=65537
         write s off=10 len=1 seed=0
         set",
    ),
    (
        "metadata_only_changes_between_sets",
        "create m mode=600
         setxattr m name=a len=10 seed=5
         chown m uid=1234 gid=5678
         mtime m sec=1000000000 nsec=123456789
         mkfifo p mode=644
         chown p uid=1000 gid=100
         set
         rmxattr m name=a
         setxattr m name=b len=0 seed=0
         chmod m mode=4755
         mtime m sec=5 nsec=0
         mtime . sec=7 nsec=7
         set
         chown m uid=0 gid=0
         unlink p
         set",
    ),
    (
        "a_deleted_set_leaves_the_others_whole",
        "overwrite x len=100000 seed=21
         set
         write x off=1 len=1 seed=22
         set
         write x off=70000 len=1 seed=23
         set
         delete-set 1
         truncate x size=0
         set
         delete-set 0
         restart",
    ),
    (
        // The writeback flush opened files by the path their descriptor
        // showed: '(deleted)' once the name they were opened by was gone,
        // though another link still showed the file in the set.
        "writeback_flush_missed_a_file_open_by_a_removed_link",
        "create a mode=777
         link a c
         restart
         open 0 c
         unlink c
         fdwrite 0 off=45224 len=51940 seed=7061114034077812044
         set",
    ),
];

#[test]
fn pinned_op_lists_keep_every_set_whole() {
    let _serial = serial();
    let mut failures = Vec::new();
    for (name, text) in PINNED {
        let ops = ops::parse_ops(text).unwrap_or_else(|e| panic!("pinned list {name}: {e}"));
        for cache in [Cache::WriteThrough, Cache::Writeback] {
            if let Err(f) = replay(&ops, cache, None) {
                failures.push(format!(
                    "{name} ({cache:?}): at op #{}: {}\n--- ops ---\n{}",
                    f.at,
                    f.message,
                    ops::format_ops(&ops)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} pinned op list(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
