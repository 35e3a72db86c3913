//! The daemon's descriptors stay bounded whatever the tree: a volume of
//! 50,000 files, made in the backing directory before the daemon starts
//! under RLIMIT_NOFILE 1,024 (as `prlimit --nofile=1024:1024`), walked by
//! `find` through the live mount as root and as nobody and through a set in
//! the browser; then sets, reads in a set, and creating and writing files on
//! the live mount all still work, and the daemon never holds as many
//! descriptors as its limit (sampled all along from /proc/PID/fd).

#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Config, Daemon, open_the_way, run_with_timeout};

const FILES: usize = 50_000;
const PER_DIR: usize = 1_000;
const LIMIT: u64 = 1_024;
const NOBODY: &str = "65534";

fn file_rel(i: usize) -> String {
    format!("d{:02}/f{i:05}", i / PER_DIR)
}

fn content(i: usize) -> String {
    format!("file {i}\n")
}

/// `n` small files in directories of PER_DIR, two threads.
fn populate(root: &Path, n: usize) {
    for d in 0..n.div_ceil(PER_DIR) {
        fs::create_dir(root.join(format!("d{d:02}"))).unwrap();
    }
    thread::scope(|s| {
        for part in 0..2 {
            s.spawn(move || {
                for i in (part..n).step_by(2) {
                    fs::write(root.join(file_rel(i)), content(i)).unwrap();
                }
            });
        }
    });
}

/// `find . -printf` in `dir` (as nobody if asked), skipping the daemon's
/// hidden folder: every path with its type and mode, and a file's size,
/// sorted.
fn find(dir: &Path, as_nobody: bool) -> Vec<String> {
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "find",
        ]);
        c
    } else {
        Command::new("find")
    };
    cmd.current_dir(dir).args([
        ".",
        "-path",
        "./.umbra",
        "-prune",
        "-o",
        "-type",
        "f",
        "-printf",
        "%p f %s %m\\n",
        "-o",
        "-printf",
        "%p %y %m\\n",
    ]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "find in {} (nobody: {as_nobody}) failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort_unstable();
    lines
}

fn open_descriptors(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Samples the daemon's descriptor count until dropped; keeps the highest.
struct Sampler {
    most: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let (most, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (m, s) = (most.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                m.fetch_max(open_descriptors(pid), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(20));
            }
        });
        Sampler {
            most,
            stop,
            thread: Some(thread),
        }
    }

    fn most(&self) -> usize {
        self.most.load(Ordering::Relaxed)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn one_backing_descriptor_per_cached_inode_exhausts_rlimit_nofile() {
    let started = Instant::now();
    let mut d = Daemon::prepare(Config::default());
    let backing = d.backing("data");
    populate(&backing, FILES);
    d.limit_descriptors(LIMIT);
    d.launch();
    for dir in [d.root(), &d.live("data"), d.snapshots(), &backing] {
        open_the_way(dir);
    }
    let pid = d.pid().unwrap();
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.split_whitespace().nth(3) == Some("1024")),
        "the daemon kept the limit it was given:\n{limits}"
    );
    let sampler = Sampler::start(pid);
    let live = d.live("data");

    // The same walk natively and through the live mount, as each user.
    let native = find(&backing, true);
    assert_eq!(native.len(), FILES + FILES / PER_DIR + 1);
    assert_eq!(
        find(&live, true),
        native,
        "find as nobody through the live mount"
    );
    assert_eq!(
        find(&live, false),
        native,
        "find as root through the live mount"
    );
    println!(
        "after the live walks: {} descriptors now, {} at most (limit {LIMIT})",
        open_descriptors(pid),
        sampler.most()
    );

    let set = d.create_set();
    let snap = d.browse(&set, "data");
    assert_eq!(find(&snap, false), native, "find through the set");
    assert_eq!(find(&snap, true), native, "find as nobody through the set");
    for i in [0, FILES / 2, FILES - 1] {
        assert_eq!(
            fs::read_to_string(snap.join(file_rel(i))).unwrap(),
            content(i),
            "reading {} in the set",
            file_rel(i)
        );
    }

    // The live mount still creates and writes, and a second set sees it.
    fs::create_dir(live.join("new")).unwrap();
    for i in 0..300 {
        fs::write(live.join(format!("new/n{i}")), format!("new {i}\n")).unwrap();
    }
    fs::write(live.join(file_rel(7)), "changed\n").unwrap();
    for i in 0..300 {
        assert_eq!(
            fs::read_to_string(live.join(format!("new/n{i}"))).unwrap(),
            format!("new {i}\n")
        );
    }
    let second = d.create_set();
    let snap2 = d.browse(&second, "data");
    assert_eq!(
        fs::read_to_string(snap2.join("new/n299")).unwrap(),
        "new 299\n"
    );
    assert_eq!(
        fs::read_to_string(snap2.join(file_rel(7))).unwrap(),
        "changed\n"
    );
    assert_eq!(
        fs::read_to_string(snap.join(file_rel(7))).unwrap(),
        content(7)
    );

    let most = sampler.most();
    drop(sampler);
    println!(
        "descriptors: {} at the end, {most} at most (limit {LIMIT}); {:.1} s",
        open_descriptors(pid),
        started.elapsed().as_secs_f64()
    );
    assert!(
        (most as u64) < LIMIT * 3 / 4,
        "the daemon held {most} descriptors at once under a limit of {LIMIT}"
    );
    d.stop();
}

/// When users hold so many files open that the daemon does run out of
/// descriptors, the control socket still answers: each client is told why
/// (one line, not a reset or a hang), and once the files close everything
/// works again.
#[test]
fn a_daemon_out_of_descriptors_tells_control_clients_instead_of_resetting_them() {
    let mut d = Daemon::prepare(Config::default());
    d.limit_descriptors(256);
    d.launch();
    let live = d.live("data");
    let mut held = Vec::new();
    let exhausted = loop {
        let path = live.join(format!("open{}", held.len()));
        match fs::File::create(&path) {
            Ok(f) => held.push(f),
            Err(e) => break e,
        }
        assert!(held.len() < 1_000, "256 descriptors never ran out");
    };
    assert_eq!(
        exhausted.raw_os_error(),
        Some(libc::EMFILE),
        "after {} open files: {exhausted}",
        held.len()
    );
    for _ in 0..3 {
        let out = d.umbra(&["status", "--json"]);
        println!(
            "status with {} files held open: {}, {}",
            held.len(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if !out.status.success() {
            let line = common::assert_one_line_error(&out, "status while out of descriptors");
            assert!(
                line.contains("descriptors") || line.contains("Too many open files"),
                "{line}"
            );
        }
    }
    drop(held);
    // The kernel releases the files asynchronously: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = d.umbra(&["status", "--json"]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status still fails once the files are closed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        thread::sleep(Duration::from_millis(100));
    }
    let set = d.create_set();
    assert_eq!(fs::read(d.browse(&set, "data").join("open0")).unwrap(), b"");
    d.stop();
}
