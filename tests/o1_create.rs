//! Creating a set is O(1): it closes an epoch in one catalog transaction,
//! walks no tree and copies no data. Two volumes, 100,000 files and 1,000
//! files, made directly in the backing dirs before the daemon starts: a set
//! of each leaves the diff area as it was. Both creation times are printed
//! side by side (run with `-- --nocapture`); timings never decide the verdict.

#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::thread;
use std::time::Instant;

use common::{Config, Daemon};

const BIG: usize = 100_000;
const SMALL: usize = 1_000;
const PER_DIR: usize = 1_000;

fn file_rel(i: usize) -> String {
    format!("d{:03}/f{i:06}", i / PER_DIR)
}

fn content(i: usize) -> String {
    format!("file {i}\n")
}

/// `n` small files in directories of PER_DIR, two threads.
fn populate(root: &Path, n: usize) {
    for d in 0..n.div_ceil(PER_DIR) {
        fs::create_dir(root.join(format!("d{d:03}"))).unwrap();
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

/// Every number under a key that names the diff area, by its JSON path.
fn diff_area_numbers(status: &serde_json::Value) -> BTreeMap<String, u64> {
    fn walk(v: &serde_json::Value, path: String, inside: bool, out: &mut BTreeMap<String, u64>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = k.to_ascii_lowercase().replace(['-', '_'], "");
                    walk(
                        v,
                        format!("{path}.{k}"),
                        inside || key.contains("diff"),
                        out,
                    );
                }
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(v, format!("{path}[{i}]"), inside, out);
                }
            }
            serde_json::Value::Number(n) if inside => {
                out.insert(
                    path,
                    n.as_u64()
                        .unwrap_or_else(|| n.as_f64().unwrap_or(0.0) as u64),
                );
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk(status, String::new(), false, &mut out);
    out
}

/// Numbers that count bytes of files on disk (the catalog, its WAL) may grow
/// by the set's own catalog rows; every other diff-area number (chunks,
/// chunk bytes, records) must not move at all.
fn is_disk_size(path: &str) -> bool {
    let p = path.to_ascii_lowercase();
    ["disk", "catalog", "db", "wal", "file"]
        .iter()
        .any(|w| p.contains(w))
}

const CATALOG_SLACK: u64 = 1 << 20;

#[track_caller]
fn assert_diff_area_unchanged(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    what: &str,
) {
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "{what}: status shape changed"
    );
    for (k, b) in before {
        let a = after[k];
        if is_disk_size(k) {
            assert!(
                a <= b + CATALOG_SLACK,
                "{what}: {k} grew from {b} to {a}: more than one catalog transaction"
            );
        } else {
            assert_eq!(
                a, *b,
                "{what}: diff-area number {k} changed from {b} to {a}: the set copied data"
            );
        }
    }
}

#[test]
fn creating_a_set_walks_no_tree_and_copies_no_data() {
    let mut d = Daemon::prepare(Config::volumes(&["big", "small"]));
    let t = Instant::now();
    populate(&d.backing("big"), BIG);
    populate(&d.backing("small"), SMALL);
    let populated = t.elapsed();
    let t = Instant::now();
    d.launch();
    let started = t.elapsed();
    for (vol, i) in [("big", 99_999), ("big", 31_337), ("small", 999)] {
        assert_eq!(
            fs::read_to_string(d.live(vol).join(file_rel(i))).unwrap(),
            content(i),
            "live {vol}"
        );
    }

    let status = d.status();
    let before = diff_area_numbers(&status);
    assert!(
        before.keys().any(|k| !is_disk_size(k)),
        "`umbra status --json` shows no diff-area numbers (a key naming the diff area, e.g. `diff_area`): {status:#}"
    );

    let t = Instant::now();
    let big = d.create_set_with(&["big"]);
    let big_time = t.elapsed();
    let after_big = diff_area_numbers(&d.status());
    assert_diff_area_unchanged(&before, &after_big, "a set of 100,000 files");

    let t = Instant::now();
    let small = d.create_set_with(&["small"]);
    let small_time = t.elapsed();
    assert_diff_area_unchanged(
        &after_big,
        &diff_area_numbers(&d.status()),
        "a set of 1,000 files",
    );

    println!("populating the backing dirs: {populated:.2?}; umbra up: {started:.2?}");
    println!(
        "umbra create:  {BIG:>7} files: {big_time:>10.2?}   {SMALL:>7} files: {small_time:>10.2?}"
    );

    assert_eq!(big.volumes, ["big"]);
    assert_eq!(small.volumes, ["small"]);
    // The sets show the files; then a change to the live volume leaves them be.
    let dir = d.browse(&big, "big").join("d042");
    assert_eq!(fs::read_dir(&dir).unwrap().count(), PER_DIR);
    for i in [0, 42_000, 42_999, 99_999] {
        assert_eq!(
            fs::read_to_string(d.browse(&big, "big").join(file_rel(i))).unwrap(),
            content(i)
        );
    }
    assert_eq!(
        fs::read_to_string(d.browse(&small, "small").join(file_rel(7))).unwrap(),
        content(7)
    );
    fs::write(d.live("big").join(file_rel(42_000)), "changed").unwrap();
    assert_eq!(
        fs::read_to_string(d.browse(&big, "big").join(file_rel(42_000))).unwrap(),
        content(42_000)
    );
    assert_eq!(
        fs::read_to_string(d.live("big").join(file_rel(42_000))).unwrap(),
        "changed"
    );
}
