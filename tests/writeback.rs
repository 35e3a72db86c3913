//! Flush-and-hold with the kernel's writeback cache on the live mount
//! (`writeback_cache = true`): a write() returns while its bytes, the file's size and its mtime may still
//! be only in the kernel. Every set must nonetheless show exactly what the
//! live mount showed at its instant: bytes written and closed just before
//! `umbra create`, bytes of files still open (plain, O_WRONLY over partial
//! pages, O_APPEND, truncated and extended, mapped), and the size and mtime
//! the live mount reported. And a daemon killed while it flushes dies
//! promptly, unaided.

#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::ops::fill;
use common::{Config, Daemon, SetJson};

fn start() -> Daemon {
    Daemon::start(Config::default().line("writeback_cache = true"))
}

/// One test at a time: any fork in this process (another test starting a
/// daemon) would flush the files a test holds open, and hide a missing flush.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A set, asked for without forking (see `try_create_set_in_process`).
fn create(d: &Daemon) -> SetJson {
    d.try_create_set_in_process().unwrap()
}

/// What the live mount reports of a file: size and mtime.
fn seen(path: &Path) -> (u64, i64, i64) {
    let m = fs::metadata(path).unwrap();
    (m.len(), m.mtime(), m.mtime_nsec())
}

/// The set shows `content` at `rel`, with the size and mtime in `want`.
fn assert_in_set(d: &Daemon, set: &SetJson, rel: &str, content: &[u8], want: (u64, i64, i64)) {
    let path = d.browse(set, "data").join(rel);
    let got = fs::read(&path).unwrap();
    assert!(
        got == content,
        "set {}: {rel} has {} bytes that differ from the {} written",
        set.name,
        got.len(),
        content.len()
    );
    assert_eq!(seen(&path), want, "set {}: {rel} size and mtime", set.name);
}

#[test]
fn bytes_written_and_closed_just_before_create_are_in_the_set() {
    let _serial = serial();
    let d = start();
    let live = d.live("data");
    for round in 0..12u64 {
        let rel = format!("closed-{round}");
        let data = fill(round, 100_000 + round as usize * 7919);
        fs::write(live.join(&rel), &data).unwrap();
        let want = seen(&live.join(&rel));
        let set = create(&d);
        assert_in_set(&d, &set, &rel, &data, want);
        // The backing file has them too: close handed them to the daemon.
        assert_eq!(fs::read(d.backing("data").join(&rel)).unwrap(), data);
    }
}

#[test]
fn an_open_writer_shows_in_the_set_with_the_size_and_mtime_of_its_instant() {
    let _serial = serial();
    let d = start();
    let path = d.live("data").join("open");
    fs::write(&path, fill(1, 300_000)).unwrap();
    let mut model = fill(1, 300_000);
    // O_WRONLY over partial pages: the kernel must read the rest of each
    // page through this write-only handle.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    let mut sets = Vec::new();
    for (i, offset) in [5u64, 4093, 70_001, 299_990, 420_000]
        .into_iter()
        .enumerate()
    {
        let chunk = fill(10 + i as u64, 3001);
        f.write_all_at(&chunk, offset).unwrap();
        let end = offset as usize + chunk.len();
        if model.len() < end {
            model.resize(end, 0);
        }
        model[offset as usize..end].copy_from_slice(&chunk);
        sets.push((create(&d), model.clone(), seen(&path)));
    }
    // Shrink and extend through the open handle, with a write in between.
    f.set_len(12_345).unwrap();
    f.write_all_at(b"after the shrink", 9_000).unwrap();
    f.set_len(600_000).unwrap();
    model.truncate(12_345);
    model[9_000..9_016].copy_from_slice(b"after the shrink");
    model.resize(600_000, 0);
    sets.push((create(&d), model.clone(), seen(&path)));
    f.write_all_at(b"later", 0).unwrap();
    drop(f);
    model[..5].copy_from_slice(b"later");
    assert_eq!(fs::read(&path).unwrap(), model);
    for (set, content, want) in &sets {
        assert_in_set(&d, set, "open", content, *want);
    }
}

#[test]
fn an_append_writer_shows_every_returned_append_in_the_set() {
    let _serial = serial();
    let d = start();
    let path = d.live("data").join("log");
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .unwrap();
    let mut model = Vec::new();
    let mut sets = Vec::new();
    for i in 0..20u64 {
        let line = fill(i, 1 + (i as usize * 1237) % 9000);
        f.write_all(&line).unwrap();
        model.extend_from_slice(&line);
        if i % 4 == 3 {
            sets.push((create(&d), model.clone(), seen(&path)));
        }
    }
    drop(f);
    assert_eq!(fs::read(&path).unwrap(), model);
    for (set, content, want) in &sets {
        assert_in_set(&d, set, "log", content, *want);
    }
}

#[test]
fn a_mapped_store_shows_in_the_set_with_its_mtime() {
    const LEN: usize = 64 * 1024;
    let _serial = serial();
    let d = start();
    let path = d.live("data").join("mapped");
    fs::write(&path, vec![b'.'; LEN]).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    // SAFETY: a fresh shared mapping of an open file; checked below.
    let at = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
        )
    };
    assert_ne!(at, libc::MAP_FAILED);
    drop(f);
    let at: *mut u8 = at.cast();
    // Past one second, so that a lost mtime update shows.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // SAFETY: within the mapping.
    unsafe { std::ptr::copy_nonoverlapping(b"STORED".as_ptr(), at.add(40_000), 6) };
    let mut model = vec![b'.'; LEN];
    model[40_000..40_006].copy_from_slice(b"STORED");
    let want = seen(&path);
    let set = create(&d);
    // SAFETY: within the mapping, which is then unmapped once.
    unsafe {
        std::ptr::copy_nonoverlapping(b"LATER".as_ptr(), at.add(40_000), 5);
        assert_eq!(libc::munmap(at.cast(), LEN), 0);
    }
    assert_in_set(&d, &set, "mapped", &model, want);
    model[40_000..40_005].copy_from_slice(b"LATER");
    assert_eq!(fs::read(&path).unwrap(), model);
}

#[test]
fn a_file_written_through_a_name_removed_since_shows_under_its_other_name() {
    let _serial = serial();
    let d = start();
    let live = d.live("data");
    fs::write(live.join("a"), b"old").unwrap();
    fs::hard_link(live.join("a"), live.join("b")).unwrap();
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(live.join("a"))
        .unwrap();
    f.write_all_at(b"new bytes", 0).unwrap();
    fs::remove_file(live.join("a")).unwrap();
    let want = seen(&live.join("b"));
    let set = create(&d);
    assert_in_set(&d, &set, "b", b"new bytes", want);
    drop(f);
    assert_eq!(fs::read(live.join("b")).unwrap(), b"new bytes");
}

/// How the daemon under test flushes: in a child process (`umbra __flush`),
/// or, as builds before it did, on a thread named `flush`.
#[derive(Debug, PartialEq)]
enum Flushing {
    Child(u32),
    Thread,
}

/// The flush the daemon `pid` is running now, if any.
fn flushing(pid: u32) -> Option<Flushing> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in tasks.flatten() {
        if fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim() == "flush") {
            return Some(Flushing::Thread);
        }
        let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace() {
            let cmdline = fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            if cmdline.split(|b| *b == 0).nth(1) == Some(b"__flush".as_slice()) {
                return child.parse().ok().map(Flushing::Child);
            }
        }
    }
    None
}

/// The flush before a hold makes requests to the daemon's own mount. A
/// daemon SIGKILLed while one is in flight must die at once, without its
/// FUSE connections being aborted for it, and leave no flush behind: a
/// daemon thread waiting on such a request kept the process from ever
/// finishing its exit.
#[test]
fn a_daemon_killed_mid_flush_dies_unaided() {
    const ROUNDS: usize = 4;
    const FILES: usize = 48;
    let _serial = serial();
    let mut d = start();
    let mut caught = 0;
    for _attempt in 0..4 * ROUNDS {
        if caught == ROUNDS {
            break;
        }
        let live = d.live("data");
        let block = vec![0x5a; 1 << 20];
        let files: Vec<fs::File> = (0..FILES)
            .map(|i| {
                let mut f = fs::File::create(live.join(format!("f{i}"))).unwrap();
                f.write_all(&block).unwrap();
                f
            })
            .collect();
        let pid = d.pid().unwrap();
        let socket = d.layout.socket.clone();
        let creator = thread::spawn(move || common::create_set_in_process(&socket));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut found = None;
        while found.is_none() && !creator.is_finished() && Instant::now() < deadline {
            found = flushing(pid);
        }
        let Some(flush) = found else {
            // The flush ended before it was seen: try again.
            drop(files);
            creator.join().unwrap().unwrap();
            continue;
        };
        let aborted = d.kill_reporting_abort();
        assert!(
            !aborted,
            "the daemon, killed while flushing ({flush:?}), could not die until its FUSE connections were aborted"
        );
        if let Flushing::Child(child) = flush {
            let gone = Instant::now() + Duration::from_secs(2);
            while Path::new(&format!("/proc/{child}")).exists() && Instant::now() < gone {
                thread::sleep(Duration::from_millis(10));
            }
            assert!(
                !Path::new(&format!("/proc/{child}")).exists(),
                "the flush child {child} outlived the daemon"
            );
        }
        drop(files);
        assert!(
            creator.join().unwrap().is_err(),
            "a set came of a killed flush"
        );
        caught += 1;
        d.launch();
    }
    assert_eq!(caught, ROUNDS, "a flush in flight was caught too rarely");
}
