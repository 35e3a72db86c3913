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

/// A sequential overwrite after a set keeps the file's next blocks ahead
/// of the writes, a guess that must not refuse a write that fits: with 4
/// MiB of diff area, three 1 MiB writes in a row (the second would keep 9
/// MiB with its guess) all succeed and the set keeps their bytes.
#[test]
fn blocks_kept_ahead_never_refuse_a_write_that_fits() {
    let d = Daemon::start(
        Config::default()
            .line("max_diff_size = 4194304")
            .line("on_full = \"protect\""),
    );
    const MIB: usize = 1 << 20;
    let before = noise(7, 16 * MIB);
    let path = d.live("data").join("f");
    fs::write(&path, &before).unwrap();
    let set = d.create_set();
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    for m in 0..3 {
        f.write_all_at(&noise(8 + m as u32, MIB), (m * MIB) as u64)
            .unwrap_or_else(|e| panic!("write {m} of 1 MiB: {e}"));
    }
    drop(f);
    assert_eq!(
        fs::read(d.browse(&set, "data").join("f")).unwrap(),
        before,
        "the set keeps the bytes overwritten"
    );
}

#[test]
fn max_sets_keeps_the_newest_and_create_says_which_it_deleted() {
    let d = Daemon::start(Config::default().line("max_sets = 2"));
    let sets: Vec<_> = (0..3).map(|_| d.create_set()).collect();
    // The fourth set: JSON names the set deleted for it, text says so too.
    let out = d.umbra_ok(&["create", "--json"]);
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        created["evicted"][0]["name"],
        sets[1].name.as_str(),
        "{out}"
    );
    assert_eq!(
        created["evicted"].as_array().map(Vec::len),
        Some(1),
        "{out}"
    );
    let text = d.umbra_ok(&["create"]);
    assert!(
        text.starts_with(&format!(
            "deleted {} (id {}): the oldest set, to stay within max_sets\n",
            sets[2].name, sets[2].id
        )),
        "{text}"
    );
    let left = d.list_sets();
    assert_eq!(left.len(), 2);
    assert!(!left.iter().any(|s| sets.contains(s)), "{left:?}");
}

#[test]
fn a_bad_limit_is_a_one_line_error() {
    let mut d = Daemon::prepare(Config::default().line("max_diff_size = \"ten gigs\""));
    let err = d.try_launch().expect_err("refused");
    assert!(err.contains("max_diff_size"), "{err}");
}

/// A tmpfs of `mib` MiB mounted at `path` for the test's lifetime.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, mib: u32) -> Tmpfs {
        fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs at {}", path.display());
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// What one round of [`fill_a_small_store_disk`] did.
struct Round {
    set: Result<common::SetJson, String>,
    overwrite: std::io::Result<()>,
}

/// Takes a set and then overwrites a 1 MB live file, six times (seeds 2 to
/// 7; the file starts as seed 1), with the store on a 4 MiB disk of its
/// own: the pre-images cannot all fit. Stops at the first failure.
fn fill_a_small_store_disk(config: Config) -> (Daemon, Tmpfs, Vec<Round>) {
    let mut d = Daemon::prepare(config);
    let disk = Tmpfs::mount(&d.layout.state_dir, 4);
    d.launch();
    let live = d.live("data").join("f");
    fs::write(&live, noise(1, 1_000_000)).unwrap();
    let mut rounds = Vec::new();
    for seed in 2..8 {
        let set = d.try_create_set();
        let overwrite = match set {
            Ok(_) => {
                let f = fs::OpenOptions::new().write(true).open(&live).unwrap();
                f.write_all_at(&noise(seed, 1_000_000), 0)
            }
            Err(_) => Ok(()),
        };
        let failed = set.is_err() || overwrite.is_err();
        rounds.push(Round { set, overwrite });
        if failed {
            break;
        }
    }
    (d, disk, rounds)
}

#[test]
fn a_store_whose_disk_is_really_full_deletes_the_oldest_sets_and_live_writes_go_on() {
    let (mut d, _disk, rounds) = fill_a_small_store_disk(Config::default());
    for (seed, round) in (2..).zip(&rounds) {
        if let Err(e) = &round.set {
            panic!(
                "{}",
                d.failure(&format!("set before overwrite {seed}: {e}"))
            );
        }
        if let Err(e) = &round.overwrite {
            panic!(
                "{}",
                d.failure(&format!("overwrite {seed} with the store's disk full: {e}"))
            );
        }
    }
    let live = d.live("data").join("f");
    assert_eq!(
        fs::read(&live).unwrap(),
        noise(7, 1_000_000),
        "no live write was lost"
    );
    let sets = d.list_sets();
    assert!(
        sets.len() < 6,
        "the oldest sets made room: {} left",
        sets.len()
    );
    assert!(
        d.failure("").contains("disk is full; deleted the oldest"),
        "the deletions are logged"
    );
    // Every set left still shows its instant, before and after a restart:
    // the full disk damaged nothing.
    for round in ["before", "after"] {
        let sets = d.list_sets();
        for (k, set) in sets.iter().rev().enumerate() {
            let seed = 6 - k as u32;
            assert_eq!(
                fs::read(d.browse(set, "data").join("f")).unwrap(),
                noise(seed, 1_000_000),
                "set {} {round} a restart",
                set.name
            );
        }
        if round == "before" {
            d.restart();
        }
    }
    d.stop();
}

#[test]
fn protect_on_a_really_full_store_disk_refuses_and_keeps_every_set() {
    let (mut d, _disk, rounds) =
        fill_a_small_store_disk(Config::default().line("on_full = \"protect\""));
    let last = rounds.last().unwrap();
    match (&last.set, &last.overwrite) {
        (Err(e), _) => assert!(e.contains("disk is full"), "{e}"),
        (Ok(_), Err(e)) => assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}"),
        (Ok(_), Ok(())) => panic!("six 1 MB pre-images fit on a 4 MiB disk"),
    }
    let made: Vec<String> = rounds
        .iter()
        .filter_map(|r| r.set.as_ref().ok().map(|s| s.name.clone()))
        .collect();
    // Every set made is kept and, after a restart too, shows its instant:
    // set k was taken when the file held seed k + 1.
    for round in ["before", "after"] {
        let sets = d.list_sets();
        let names: Vec<String> = sets.iter().map(|s| s.name.clone()).collect();
        assert_eq!(names, made, "protect deletes nothing ({round} a restart)");
        for (k, set) in sets.iter().enumerate() {
            assert_eq!(
                fs::read(d.browse(set, "data").join("f")).unwrap(),
                noise(k as u32 + 1, 1_000_000),
                "set {} {round} a restart",
                set.name
            );
        }
        if round == "before" {
            d.restart();
        }
    }
    d.stop();
}

/// An ext4 of `mib` MiB with `reserved` percent kept for root, in an image
/// file beside `path`, loop-mounted at `path` for the test's lifetime.
struct Ext4(std::path::PathBuf);

impl Ext4 {
    fn mount(path: &std::path::Path, mib: u64, reserved: u32) -> Ext4 {
        let image = path.with_extension("img");
        fs::File::create(&image)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        let made = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", &reserved.to_string()])
            .arg(&image)
            .status()
            .unwrap();
        assert!(made.success(), "mkfs.ext4 {}", image.display());
        fs::create_dir_all(path).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(path)
            .status()
            .unwrap();
        assert!(
            mounted.success(),
            "mounting {} at {}",
            image.display(),
            path.display()
        );
        Ext4(path.to_path_buf())
    }

    /// (free blocks, blocks free to an unprivileged user), in bytes.
    fn free(&self) -> (u64, u64) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(self.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: zeroed statvfs is a valid out-buffer; c is a valid path.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        (st.f_bfree * st.f_frsize, st.f_bavail * st.f_frsize)
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Regression: pre-images are written by root, so the diff area filled its
/// disk through the blocks the filesystem keeps for root (`mkfs -m`), on
/// behalf of whoever wrote to the live volume. It now counts its disk as
/// full where an unprivileged user's would be: the oldest sets go, live
/// writes go on, and root's reserve stays whole.
#[test]
fn pre_images_never_take_the_blocks_the_store_disk_keeps_for_root() {
    let mut d = Daemon::prepare(Config::default());
    let disk = Ext4::mount(&d.layout.state_dir, 32, 25);
    let (free, available) = disk.free();
    let reserved = free - available;
    assert!(reserved > 6 << 20, "the reserve: {reserved}");
    d.launch();
    let live = d.live("data").join("f");
    let size = 4 << 20;
    fs::write(&live, noise(1, size)).unwrap();
    let mut sets = Vec::new();
    for seed in 2..10 {
        sets.push(d.create_set());
        // In place: a truncation would move the old inode aside instead.
        fs::OpenOptions::new()
            .write(true)
            .open(&live)
            .unwrap()
            .write_all_at(&noise(seed, size), 0)
            .unwrap();
        let (free, _) = disk.free();
        // The catalog's pages may take a few blocks; never the reserve.
        assert!(
            free + (1 << 20) >= reserved,
            "after overwrite {seed}: {free} bytes free, {reserved} reserved for root"
        );
    }
    let remaining = d.list_sets();
    assert!(
        !remaining.is_empty() && remaining.len() < sets.len(),
        "the oldest sets made room: {} of {} left",
        remaining.len(),
        sets.len()
    );
    let newest = remaining.last().unwrap();
    assert_eq!(newest.name, sets.last().unwrap().name);
    // Taken just before the last overwrite (seed 9).
    let kept = fs::read(d.browse(newest, "data").join("f")).unwrap();
    assert!(kept == noise(8, size), "the newest set keeps what it saw");
}

/// Every set that `max_sets` made room for is browsable as soon as its
/// creation answers. The eviction refreshed the browser from a thread of
/// its own, which could read the list of sets before the new set was in
/// it and install that list after the new set's own refresh: the new set
/// was missing from the browser until the next refresh (found by the
/// oracle's soak at its 620th set). The race is narrow: before the fix
/// about one eviction in 200 with 512 sets lost its new set, so this makes
/// 700 evictions (about 15 s).
#[test]
fn an_eviction_refreshing_the_browser_never_hides_the_new_set() {
    const MAX: usize = 512;
    const SETS: usize = MAX + 700;
    let d = Daemon::start(Config::default().line(&format!("max_sets = {MAX}")));
    fs::write(d.live("data").join("f"), b"kept").unwrap();
    let mut missing = Vec::new();
    for i in 0..SETS {
        // In process: thousands of forks would make the test slow, not the
        // race likelier.
        let set = d.try_create_set_in_process().unwrap();
        match fs::read(d.browse(&set, "data").join("f")) {
            Ok(bytes) => assert_eq!(bytes, b"kept", "set #{i} {}", set.name),
            Err(e) => missing.push(format!("set #{i} {}: {e}", set.name)),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {SETS} new sets were not browsable right after their creation: {missing:?}",
        missing.len()
    );
    assert_eq!(d.list_sets().len(), MAX);
}
