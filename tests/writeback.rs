//! Flush-and-hold with the kernel's writeback cache on the live mount
//! (`writeback_cache = true`): a write() returns while its bytes, the file's size and its mtime may still
//! be only in the kernel. Every set must nonetheless show exactly what the
//! live mount showed at its instant: bytes written and closed just before
//! `umbra create`, bytes of files still open (plain, O_WRONLY over partial
//! pages, O_APPEND, truncated and extended, mapped), and the size and mtime
//! the live mount reported.

#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

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
