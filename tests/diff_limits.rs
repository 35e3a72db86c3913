//! The diff area's limits through the real binary: `max_diff_size` with
//! `on_full` delete-oldest and protect, and `max_sets`.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

mod common;

use std::fs;
use std::os::unix::fs::FileExt;

use common::{Config, Daemon};

/// Bytes that do not deduplicate, different for each `seed`.
fn noise(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed << 20) >> 24) as u8)
        .collect()
}

fn overwrite(d: &Daemon, seed: u32) -> std::io::Result<()> {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(d.live("data").join("f"))?;
    f.write_all_at(&noise(seed, 600_000), 0)
}

#[test]
fn delete_oldest_makes_room_and_status_shows_the_limit() {
    let d = Daemon::start(Config::default().line("max_diff_size = \"1M\""));
    fs::write(d.live("data").join("f"), noise(1, 600_000)).unwrap();
    let one = d.create_set();
    overwrite(&d, 2).unwrap();
    let two = d.create_set();
    overwrite(&d, 3).expect("live writes go on when the diff area is full");
    let names: Vec<String> = d.list_sets().into_iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        std::slice::from_ref(&two.name),
        "{} made room",
        one.name
    );
    assert_eq!(
        fs::read(d.browse(&two, "data").join("f")).unwrap(),
        noise(2, 600_000)
    );
    let status = d.status();
    assert_eq!(status["diff_area"]["limit_bytes"], 1 << 20);
    assert!(status["diff_area"]["chunk_bytes"].as_u64().unwrap() <= 1 << 20);
}

#[test]
fn protect_fails_the_live_write_and_keeps_the_sets() {
    let d = Daemon::start(
        Config::default()
            .line("max_diff_size = 1048576")
            .line("on_full = \"protect\""),
    );
    fs::write(d.live("data").join("f"), noise(1, 600_000)).unwrap();
    d.create_set();
    overwrite(&d, 2).unwrap();
    d.create_set();
    let err = overwrite(&d, 3).expect_err("the diff area is full");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    assert_eq!(d.list_sets().len(), 2);
}

#[test]
fn max_sets_keeps_the_newest() {
    let d = Daemon::start(Config::default().line("max_sets = 2"));
    let sets: Vec<_> = (0..4).map(|_| d.create_set()).collect();
    assert_eq!(d.list_sets(), sets[2..]);
}

#[test]
fn a_bad_limit_is_a_one_line_error() {
    let mut d = Daemon::prepare(Config::default().line("max_diff_size = \"ten gigs\""));
    let err = d.try_launch().expect_err("refused");
    assert!(err.contains("max_diff_size"), "{err}");
}
