//! The filesystems mounted for real through the crate's API: live
//! operations, sets, and the browser showing each set's instant.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use umbra_fs::{
    Browser, MountHandle, MountOptions, Volume, commit_set, mount_live, mount_snapshots,
};
use umbra_store::{SetInfo, Store, StoreOptions, Timestamp};

struct Rig {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    volume: Arc<Volume>,
    browser: Arc<Browser>,
    live: PathBuf,
    snaps: PathBuf,
    mounts: Vec<MountHandle>,
}

impl Rig {
    fn new() -> Rig {
        Rig::on(tempfile::tempdir().expect("tempdir"))
    }

    /// Mounts over the directories of `dir`, keeping whatever state they hold.
    fn on(dir: tempfile::TempDir) -> Rig {
        let (backing, live, snaps, state) = (
            dir.path().join("backing"),
            dir.path().join("live"),
            dir.path().join("snaps"),
            dir.path().join("state"),
        );
        for d in [&backing, &live, &snaps] {
            fs::create_dir_all(d).expect("mkdir");
        }
        let store = Arc::new(Store::open(&state, StoreOptions::default()).expect("store"));
        let volume = Volume::open(store.clone(), "data", &backing).expect("volume");
        let browser =
            Browser::new(store.clone(), vec![volume.clone()], Vec::new()).expect("browser");
        let opts = MountOptions::default();
        let mounts = vec![
            mount_live(volume.clone(), &live, &opts).expect("mount live"),
            mount_snapshots(browser.clone(), &snaps, &opts).expect("mount snapshots"),
        ];
        Rig {
            _dir: dir,
            store,
            volume,
            browser,
            live,
            snaps,
            mounts,
        }
    }

    fn snapshot(&self, name: &str) -> SetInfo {
        let set = commit_set(
            &self.store,
            std::slice::from_ref(&self.volume),
            name.into(),
            None,
            Timestamp::default(),
        )
        .expect("commit");
        self.browser.refresh().expect("refresh");
        set
    }

    fn at(&self, set: &str) -> PathBuf {
        self.snaps.join(set).join("data")
    }
}

impl Rig {
    /// Unmounts everything and mounts again over the same state: a daemon
    /// restart.
    fn restart(mut self) -> Rig {
        self.unmount_all();
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().expect("tempdir"));
        drop(self);
        Rig::on(dir)
    }

    fn unmount_all(&mut self) {
        for m in self.mounts.drain(..).rev() {
            let _ = m.unmount();
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.unmount_all();
    }
}

fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

#[test]
fn a_set_keeps_its_instant_while_the_live_volume_changes() {
    let rig = Rig::new();
    let live = &rig.live;
    fs::write(live.join("report.txt"), b"v1").expect("write");
    fs::create_dir(live.join("dir")).expect("mkdir");
    fs::write(live.join("dir/big"), vec![7u8; 300_000]).expect("write big");
    fs::hard_link(live.join("report.txt"), live.join("dir/link")).expect("link");
    std::os::unix::fs::symlink("report.txt", live.join("sym")).expect("symlink");
    fs::set_permissions(live.join("report.txt"), fs::Permissions::from_mode(0o640)).expect("chmod");
    rig.snapshot("one");

    fs::write(live.join("report.txt"), b"v2 longer").expect("overwrite");
    let big = fs::OpenOptions::new()
        .write(true)
        .open(live.join("dir/big"))
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&big, b"XYZ", 70_000).expect("pwrite");
    drop(big);
    fs::rename(live.join("dir"), live.join("moved")).expect("rename");
    fs::remove_file(live.join("sym")).expect("unlink");
    fs::set_permissions(live.join("report.txt"), fs::Permissions::from_mode(0o600)).expect("chmod");
    fs::write(live.join("new"), b"new").expect("new file");
    rig.snapshot("two");
    fs::remove_dir_all(live.join("moved")).expect("rm -rf");
    fs::remove_file(live.join("report.txt")).expect("rm");

    let one = rig.at("one");
    assert_eq!(read(&one.join("report.txt")), b"v1");
    assert_eq!(read(&one.join("dir/link")), b"v1");
    assert_eq!(read(&one.join("dir/big")), vec![7u8; 300_000]);
    assert_eq!(
        fs::read_link(one.join("sym")).expect("readlink"),
        Path::new("report.txt")
    );
    assert_eq!(
        fs::metadata(one.join("report.txt")).expect("stat").mode() & 0o7777,
        0o640
    );
    assert_eq!(
        fs::metadata(one.join("report.txt")).expect("stat").ino(),
        fs::metadata(one.join("dir/link")).expect("stat").ino()
    );
    assert!(!one.join("new").exists());
    let mut names: Vec<_> = fs::read_dir(&one)
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["dir", "report.txt", "sym"]);

    let two = rig.at("two");
    assert_eq!(read(&two.join("report.txt")), b"v2 longer");
    let mut big2 = vec![7u8; 300_000];
    big2[70_000..70_003].copy_from_slice(b"XYZ");
    assert_eq!(read(&two.join("moved/big")), big2);
    assert!(!two.join("sym").exists());
    assert_eq!(read(&two.join("new")), b"new");
    assert_ne!(
        fs::metadata(one.join("report.txt")).expect("stat").ino(),
        fs::metadata(two.join("report.txt")).expect("stat").ino()
    );
    assert_eq!(
        fs::read_link(rig.snaps.join("latest")).expect("latest"),
        Path::new("two")
    );
    assert!(
        !fs::read_dir(live)
            .expect("ls")
            .any(|e| e.expect("entry").file_name() == ".umbra")
    );
    let err = fs::write(one.join("x"), b"x").expect_err("snapshots are read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
}

#[test]
fn sets_and_their_preimages_survive_a_restart_and_later_changes() {
    let rig = Rig::new();
    fs::write(rig.live.join("a"), vec![1u8; 200_000]).expect("write");
    fs::create_dir(rig.live.join("d")).expect("mkdir");
    fs::write(rig.live.join("d/b"), b"bee").expect("write");
    rig.snapshot("one");
    // Half the changes before the restart, half after: the write side must
    // find what it already preserved in this epoch from the catalog.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(rig.live.join("a"))
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&f, b"first", 0).expect("pwrite");
    drop(f);
    let rig = rig.restart();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(rig.live.join("a"))
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&f, b"second", 3).expect("pwrite");
    std::os::unix::fs::FileExt::write_all_at(&f, b"third", 150_000).expect("pwrite");
    drop(f);
    fs::rename(rig.live.join("d/b"), rig.live.join("b")).expect("rename");
    fs::remove_dir(rig.live.join("d")).expect("rmdir");
    rig.snapshot("two");
    fs::remove_file(rig.live.join("a")).expect("unlink");
    let rig = rig.restart();

    let one = rig.at("one");
    assert_eq!(read(&one.join("a")), vec![1u8; 200_000]);
    assert_eq!(read(&one.join("d/b")), b"bee");
    let mut two_a = vec![1u8; 200_000];
    two_a[..5].copy_from_slice(b"first");
    two_a[3..9].copy_from_slice(b"second");
    two_a[150_000..150_005].copy_from_slice(b"third");
    assert_eq!(read(&rig.at("two").join("a")), two_a);
    assert_eq!(read(&rig.at("two").join("b")), b"bee");
    assert!(!rig.at("two").join("d").exists());
    assert!(!rig.live.join("a").exists());
}

#[test]
fn an_open_unlinked_file_keeps_posix_link_counts_and_its_snapshot() {
    let rig = Rig::new();
    fs::write(rig.live.join("f"), b"kept").expect("write");
    rig.snapshot("one");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(rig.live.join("f"))
        .expect("open");
    fs::remove_file(rig.live.join("f")).expect("unlink");
    assert_eq!(f.metadata().expect("fstat").nlink(), 0);
    std::os::unix::fs::FileExt::write_all_at(&f, b"KEPT", 0).expect("write after unlink");
    drop(f);
    assert_eq!(read(&rig.at("one").join("f")), b"kept");
    assert!(fs::read_dir(&rig.live).expect("ls").next().is_none());
}

#[test]
fn truncating_a_large_file_to_zero_moves_it_aside_instead_of_copying() {
    let rig = Rig::new();
    let big: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(rig.live.join("log"), &big).expect("write");
    let ino = fs::metadata(rig.live.join("log")).expect("stat").ino();
    rig.snapshot("one");
    let before = rig.store.stats().expect("stats").chunk_bytes;
    // `echo > log`: open with O_TRUNC, then write.
    fs::write(rig.live.join("log"), b"fresh").expect("truncate and write");
    let after = rig.store.stats().expect("stats").chunk_bytes;
    assert!(
        after - before < 1_000_000,
        "truncation copied {} bytes into the diff area",
        after - before
    );
    assert_eq!(read(&rig.live.join("log")), b"fresh");
    assert_eq!(
        fs::metadata(rig.live.join("log")).expect("stat").ino(),
        ino,
        "the live inode number stays"
    );
    assert_eq!(read(&rig.at("one").join("log")), big);
    rig.snapshot("two");
    let rig = rig.restart();
    assert_eq!(
        fs::metadata(rig.live.join("log")).expect("stat").ino(),
        ino,
        "and survives a restart"
    );
    assert_eq!(read(&rig.at("one").join("log")), big);
    assert_eq!(read(&rig.at("two").join("log")), b"fresh");
    fs::write(rig.live.join("log"), b"again").expect("truncate again");
    assert_eq!(read(&rig.at("two").join("log")), b"fresh");
    assert_eq!(read(&rig.live.join("log")), b"again");
}

#[test]
fn deleting_the_last_set_that_needs_a_deleted_file_frees_its_inode() {
    let rig = Rig::new();
    fs::write(rig.live.join("big"), vec![3u8; 3_000_000]).expect("write");
    fs::write(rig.live.join("kept"), b"k").expect("write");
    let one = rig.snapshot("one");
    fs::remove_file(rig.live.join("big")).expect("unlink");
    let two = rig.snapshot("two");
    let aside = rig._dir.path().join("backing/.umbra/aside");
    assert_eq!(
        fs::read_dir(&aside).expect("ls aside").count(),
        1,
        "the unlinked file waits aside"
    );
    // Set two was taken after the unlink: deleting it frees nothing.
    umbra_fs::delete_set(&rig.store, std::slice::from_ref(&rig.volume), two.id)
        .expect("delete two");
    rig.browser.refresh().expect("refresh");
    assert_eq!(fs::read_dir(&aside).expect("ls aside").count(), 1);
    assert_eq!(read(&rig.at("one").join("big")), vec![3u8; 3_000_000]);
    umbra_fs::delete_set(&rig.store, std::slice::from_ref(&rig.volume), one.id)
        .expect("delete one");
    rig.browser.refresh().expect("refresh");
    assert_eq!(
        fs::read_dir(&aside).expect("ls aside").count(),
        0,
        "no set needs it any more"
    );
    assert_eq!(rig.store.stats().expect("stats").block_records, 0);
    assert_eq!(read(&rig.live.join("kept")), b"k");
}

/// Bytes that do not deduplicate, different for each `seed`.
fn noise(seed: u8, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| {
            (i.wrapping_mul(2_654_435_761)
                .wrapping_add(u32::from(seed) << 20)
                >> 24) as u8
        })
        .collect()
}

fn overwrite(path: &Path, seed: u8, len: usize) -> std::io::Result<()> {
    let f = fs::OpenOptions::new().write(true).open(path)?;
    std::os::unix::fs::FileExt::write_all_at(&f, &noise(seed, len), 0)
}

/// The rig's volume as the daemon's only provider (what evictions delete
/// through).
fn sets_of(rig: &Rig) -> Arc<umbra_fs::Sets> {
    let cow = umbra_fs::CowProvider::new(rig.store.clone(), vec![rig.volume.clone()]);
    umbra_fs::Sets::new(rig.store.clone(), vec![Arc::new(cow)])
}

#[test]
fn a_full_diff_area_deletes_the_oldest_sets_and_live_writes_go_on() {
    let rig = Rig::new();
    let limits = umbra_fs::StorageLimits {
        max_bytes: Some(1 << 20),
        ..Default::default()
    };
    let sets = sets_of(&rig);
    umbra_fs::ShadowStorage::install(
        &sets,
        std::slice::from_ref(&rig.volume),
        &rig.browser,
        limits,
    );
    fs::write(rig.live.join("f"), noise(1, 600_000)).expect("write");
    rig.snapshot("one");
    overwrite(&rig.live.join("f"), 2, 600_000).expect("first overwrite fits");
    rig.snapshot("two");
    overwrite(&rig.live.join("f"), 3, 600_000).expect("the second overwrite makes room");
    rig.browser.refresh().expect("refresh");
    let names: Vec<String> = rig
        .store
        .sets()
        .expect("sets")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["two"], "the oldest set made room");
    assert_eq!(read(&rig.at("two").join("f")), noise(2, 600_000));
    assert_eq!(read(&rig.live.join("f")), noise(3, 600_000));
    assert!(rig.store.diff_bytes() <= 1 << 20);
}

#[test]
fn a_protected_full_diff_area_fails_the_live_write_and_keeps_every_set() {
    let rig = Rig::new();
    let limits = umbra_fs::StorageLimits {
        max_bytes: Some(1 << 20),
        on_full: umbra_fs::OnFull::Protect,
        ..Default::default()
    };
    let sets = sets_of(&rig);
    umbra_fs::ShadowStorage::install(
        &sets,
        std::slice::from_ref(&rig.volume),
        &rig.browser,
        limits,
    );
    fs::write(rig.live.join("f"), noise(1, 600_000)).expect("write");
    rig.snapshot("one");
    overwrite(&rig.live.join("f"), 2, 600_000).expect("first overwrite fits");
    rig.snapshot("two");
    let err = overwrite(&rig.live.join("f"), 3, 600_000).expect_err("no room");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    assert_eq!(rig.store.sets().expect("sets").len(), 2);
    assert_eq!(read(&rig.at("one").join("f")), noise(1, 600_000));
    assert_eq!(read(&rig.at("two").join("f")), noise(2, 600_000));
}

#[test]
fn max_sets_deletes_the_oldest_before_a_new_set() {
    let rig = Rig::new();
    let limits = umbra_fs::StorageLimits {
        max_sets: Some(2),
        ..Default::default()
    };
    let sets = sets_of(&rig);
    let area = umbra_fs::ShadowStorage::install(
        &sets,
        std::slice::from_ref(&rig.volume),
        &rig.browser,
        limits,
    );
    for name in ["a", "b", "c"] {
        area.before_new_set().expect("room for a set");
        rig.snapshot(name);
    }
    let names: Vec<String> = rig
        .store
        .sets()
        .expect("sets")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["b", "c"]);
}

/// Every name under `root` with its inode number and, for a file, its
/// bytes.
fn walk(root: &Path) -> std::collections::BTreeMap<PathBuf, (u64, Vec<u8>)> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = fs::symlink_metadata(&path).expect("lstat");
            let bytes = if meta.is_file() {
                read(&path)
            } else {
                Vec::new()
            };
            if meta.is_dir() {
                todo.push(path.clone());
            }
            let rel = path.strip_prefix(root).expect("under root").to_path_buf();
            out.insert(rel, (meta.ino(), bytes));
        }
    }
    out
}

#[test]
fn a_set_keeps_its_inode_numbers_after_the_kernel_forgets_them() {
    let rig = Rig::new();
    fs::create_dir_all(rig.live.join("d/e")).expect("mkdir");
    fs::write(rig.live.join("d/e/f"), b"f").expect("write");
    fs::write(rig.live.join("d/e/u"), b"unchanged").expect("write");
    fs::write(rig.live.join("g"), b"g").expect("write");
    fs::hard_link(rig.live.join("g"), rig.live.join("d/h")).expect("link");
    rig.snapshot("one");
    fs::write(rig.live.join("d/e/f"), b"changed").expect("write");
    let before = walk(&rig.at("one"));
    assert_eq!(before[Path::new("d/h")].0, before[Path::new("g")].0);
    assert_eq!(before[Path::new("d/e/f")].1, b"f");
    // Dentries and inodes go: the kernel sends FORGET for every one of
    // them, and looks each up again below.
    fs::write("/proc/sys/vm/drop_caches", "2").expect("drop caches");
    let after = walk(&rig.at("one"));
    assert_eq!(before, after, "same numbers and bytes after FORGET");
    assert_eq!(read(&rig.at("one").join("d/e/u")), b"unchanged");
}

#[test]
fn the_top_listing_follows_sets_while_the_kernel_caches_listings() {
    let rig = Rig::new();
    let names = |rig: &Rig| -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&rig.snaps)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        names.sort();
        names
    };
    assert!(names(&rig).is_empty());
    fs::write(rig.live.join("f"), b"1").expect("write");
    let one = rig.snapshot("one");
    assert_eq!(names(&rig), ["latest", "one"]);
    rig.snapshot("two");
    assert_eq!(names(&rig), ["latest", "one", "two"]);
    assert_eq!(
        fs::read_link(rig.snaps.join("latest")).expect("readlink"),
        Path::new("two")
    );
    umbra_fs::delete_set(&rig.store, std::slice::from_ref(&rig.volume), one.id)
        .expect("delete one");
    rig.browser.refresh().expect("refresh");
    assert_eq!(names(&rig), ["latest", "two"]);
    assert!(!rig.snaps.join("one").exists());
    assert_eq!(read(&rig.at("two").join("f")), b"1");
}

/// The browser reads the files after the one asked for ahead of the
/// reader: every byte must still be the set's, changed or gone live.
#[test]
fn reading_many_small_files_in_order_gives_the_sets_bytes() {
    let rig = Rig::new();
    fs::create_dir(rig.live.join("many")).expect("mkdir");
    let name = |i: usize| format!("many/{i:04}");
    for i in 0..300 {
        fs::write(rig.live.join(name(i)), format!("v1 {i}")).expect("write");
    }
    rig.snapshot("one");
    for i in (0..300).step_by(3) {
        fs::write(rig.live.join(name(i)), format!("v2 {i}, longer")).expect("write");
    }
    for i in (1..300).step_by(7) {
        fs::remove_file(rig.live.join(name(i))).expect("unlink");
    }
    for pass in 0..2 {
        for i in 0..300 {
            assert_eq!(
                read(&rig.at("one").join(name(i))),
                format!("v1 {i}").into_bytes(),
                "pass {pass}, file {i}"
            );
        }
    }
}
