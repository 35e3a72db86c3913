//! The user's story through the real binary: mount, change files through the
//! live mount in every way POSIX allows, take sets in between, and look: the
//! live mount gives what was written, and every set shows exactly the tree
//! the live mount had when it was taken, before and after a daemon restart.

#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::manifest::{self, Kind, Manifest};
use common::ops::fill;
use common::{Config, Daemon, SetJson, sys};

const MIB: usize = 1 << 20;

fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    f.write_all_at(data, offset).unwrap();
}

/// Writes `data` at `offset` into both the file and its in-memory model.
fn write_modeled(path: &Path, model: &mut Vec<u8>, offset: usize, data: &[u8]) {
    write_at(path, offset as u64, data);
    if model.len() < offset + data.len() {
        model.resize(offset + data.len(), 0);
    }
    model[offset..offset + data.len()].copy_from_slice(data);
}

fn truncate(path: &Path, size: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(size)
        .unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn ino(path: &Path) -> u64 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .ino()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Takes a set of every volume and captures each live tree right after.
fn take(d: &Daemon, volumes: &[&str]) -> (SetJson, BTreeMap<String, Manifest>) {
    let set = d.create_set();
    let mut images = BTreeMap::new();
    for v in volumes {
        let m = Manifest::capture(&d.live(v));
        let root = m.get(".").unwrap().entries.as_ref().unwrap();
        assert!(
            !root.iter().any(|n| n == ".umbra"),
            "the live mount of {v} lists the hidden folder"
        );
        images.insert(v.to_string(), m);
    }
    (set, images)
}

/// Every set shows its images; `list`, `latest` and inode numbers agree.
fn check_sets(d: &Daemon, sets: &[(SetJson, BTreeMap<String, Manifest>)], when: &str) {
    let mut listed = d.list_sets();
    listed.sort_by_key(|s| s.id);
    let want: Vec<&SetJson> = sets.iter().map(|s| &s.0).collect();
    assert_eq!(
        listed.iter().collect::<Vec<_>>(),
        want,
        "{when}: `umbra list --json`"
    );
    let mut owner: BTreeMap<u64, String> = BTreeMap::new();
    for (set, images) in sets {
        let vols: Vec<String> = images.keys().cloned().collect();
        assert_eq!(
            names(&d.snapshots().join(&set.name)),
            vols,
            "{when}: volumes of set {}",
            set.name
        );
        for (vol, image) in images {
            let browse = d.browse(set, vol);
            manifest::assert_same(
                image,
                &Manifest::capture(&browse),
                &format!("{when}: set {} volume {vol}", set.name),
            );
            for (path, ino) in manifest::inode_map(&browse).unwrap() {
                let here = format!("{}/{vol}/{}", set.name, path.display());
                if let Some(other) = owner.get(&ino) {
                    assert!(
                        other.starts_with(&format!("{}/{vol}/", set.name)),
                        "{when}: inode {ino} is shared by {other} and {here}: tar or rsync -H would see a false hard link"
                    );
                }
                owner.entry(ino).or_insert(here);
            }
        }
    }
    let newest = &sets.last().unwrap().0.name;
    assert_eq!(
        fs::read_link(d.snapshots().join("latest")).unwrap(),
        PathBuf::from(newest),
        "{when}: latest"
    );
}

/// Every kind of live operation, interleaved with three sets.
fn live_operations_interleaved_with_sets(config: Config) {
    let mut d = Daemon::start(config);
    let live = d.live("data");
    let p = |rel: &str| live.join(rel);
    let mut sets = Vec::new();

    // --- Before set 1: one of everything. ---
    fs::write(p("small.txt"), "hello").unwrap();
    fs::write(p("keep.txt"), "never changes").unwrap();
    let mut big = fill(11, 5 * MIB + 123);
    fs::write(p("big.bin"), &big).unwrap();
    let mut sparse = Vec::new();
    for (off, seed, len) in [(1, 12, 1), (70_001, 13, 5_000), (3_000_003, 14, 70_000)] {
        write_modeled(&p("sparse.bin"), &mut sparse, off, &fill(seed, len));
    }
    assert_eq!(
        fs::read(p("sparse.bin")).unwrap(),
        sparse,
        "sparse writes at unaligned offsets read back"
    );
    fs::write(p("zeroed.bin"), fill(15, 300_000)).unwrap();
    fs::create_dir_all(p("a/b/c")).unwrap();
    fs::write(p("a/b/c/deep.txt"), "deep").unwrap();
    symlink("big.bin", p("link-to-big")).unwrap();
    symlink("a/b", p("dirlink")).unwrap();
    symlink("nowhere", p("dangling")).unwrap();
    fs::hard_link(p("big.bin"), p("a/big-hardlink")).unwrap();
    fs::write(p("h1"), "linked").unwrap();
    fs::hard_link(p("h1"), p("a/h2")).unwrap();
    sys::mknod_fifo(&p("pipe"), 0o640).unwrap();
    sys::lsetxattr(&p("small.txt"), "user.note", b"first").unwrap();
    sys::lsetxattr(&p("a/b"), "user.x", b"on a dir").unwrap();
    chmod(&p("small.txt"), 0o600);
    sys::lchown(&p("a/b"), 1234, 5678).unwrap();
    for (name, text) in [
        ("moveme", "m"),
        ("winner", "w"),
        ("loser", "l"),
        ("x1", "1"),
        ("x2", "2"),
        ("ex-file", "e"),
    ] {
        fs::write(p(name), text).unwrap();
    }
    fs::create_dir(p("ex-dir")).unwrap();
    fs::write(p("ex-dir/inside"), "i").unwrap();
    sys::set_mtime(&p("a"), 1_000_000_000, 500_000_000).unwrap();
    assert_eq!(fs::read(p("a/h2")).unwrap(), b"linked");
    assert_eq!(fs::metadata(p("h1")).unwrap().nlink(), 2);
    assert_eq!(fs::symlink_metadata(p("a/b")).unwrap().uid(), 1234);
    assert_eq!(
        sys::lgetxattr(&p("small.txt"), b"user.note").unwrap(),
        b"first"
    );
    sets.push(take(&d, &["data"]));

    // --- Before set 2: change every kind of thing. ---
    fs::write(p("small.txt"), "bye").unwrap(); // overwrite (O_TRUNC)
    OpenOptions::new()
        .append(true)
        .open(p("small.txt"))
        .unwrap()
        .write_all(b" now")
        .unwrap();
    assert_eq!(fs::read(p("small.txt")).unwrap(), b"bye now");
    // Overlapping writes across a 64 KiB boundary, then a shrink.
    for (off, seed, len) in [
        (65_530, 16, 20_000),
        (65_540, 17, 100),
        (2 * MIB - 1, 18, 3),
    ] {
        write_modeled(&p("big.bin"), &mut big, off, &fill(seed, len));
    }
    truncate(&p("big.bin"), 1_234_567);
    big.truncate(1_234_567);
    assert_eq!(
        fs::read(p("a/big-hardlink")).unwrap(),
        big,
        "a hard link sees writes through the other name"
    );
    truncate(&p("sparse.bin"), 8 * MIB as u64); // grow
    sparse.resize(8 * MIB, 0);
    assert_eq!(fs::read(p("sparse.bin")).unwrap(), sparse);
    truncate(&p("zeroed.bin"), 0);
    chmod(&p("big.bin"), 0o640);
    chmod(&p("a"), 0o700);
    sys::lchown(&p("small.txt"), 1000, 100).unwrap();
    sys::lchown(&p("link-to-big"), 4321, 8765).unwrap();
    sys::set_mtime(&p("small.txt"), 123, 456).unwrap();
    sys::set_mtime(&p("link-to-big"), 77, 0).unwrap();
    sys::lsetxattr(&p("small.txt"), "user.note", b"second").unwrap();
    sys::lsetxattr(&p("small.txt"), "user.added", &fill(19, 200)).unwrap();
    sys::lremovexattr(&p("a/b"), "user.x").unwrap();
    assert_eq!(sys::lgetxattr(&p("a/b"), b"user.x"), Err(libc::ENODATA));
    fs::create_dir_all(p("new/dir")).unwrap();
    fs::remove_file(p("a/b/c/deep.txt")).unwrap();
    fs::remove_dir(p("a/b/c")).unwrap();
    assert_eq!(
        fs::remove_dir(p("a")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    fs::remove_file(p("dangling")).unwrap();
    fs::rename(p("moveme"), p("a/moved")).unwrap(); // across directories
    fs::rename(p("winner"), p("loser")).unwrap(); // over an existing file
    assert_eq!(fs::read(p("loser")).unwrap(), b"w");
    assert_eq!(
        sys::renameat2(&p("x1"), &p("x2"), libc::RENAME_NOREPLACE),
        Err(libc::EEXIST)
    );
    sys::renameat2(&p("x1"), &p("x3"), libc::RENAME_NOREPLACE).unwrap();
    sys::renameat2(&p("ex-file"), &p("ex-dir"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(p("ex-dir")).unwrap(), b"e");
    assert_eq!(fs::read(p("ex-file/inside")).unwrap(), b"i");
    fs::hard_link(p("sparse.bin"), p("new/dir/sparse-link")).unwrap();
    symlink("../../small.txt", p("new/dir/up")).unwrap();
    sys::mknod_fifo(&p("new/dir/pipe2"), 0o600).unwrap();
    sets.push(take(&d, &["data"]));

    // --- Before set 3: unlink one name of a hard link, remove a tree. ---
    fs::remove_file(p("big.bin")).unwrap();
    write_modeled(&p("a/big-hardlink"), &mut big, 100, b"after unlink");
    assert_eq!(fs::read(p("a/big-hardlink")).unwrap(), big);
    fs::remove_dir_all(p("a/b")).unwrap();
    fs::rename(p("new"), p("renamed-dir")).unwrap();
    fs::write(p("large.bin"), fill(20, 3 * MIB)).unwrap();
    fs::remove_file(p("x2")).unwrap();
    sys::set_mtime(&p("."), 2_000_000, 1).unwrap();
    sets.push(take(&d, &["data"]));

    // --- After the last set: destroy everything the sets show. ---
    for name in names(&live) {
        let path = p(&name);
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            fs::remove_dir_all(&path).unwrap();
        } else {
            fs::remove_file(&path).unwrap();
        }
    }
    fs::write(p("after.txt"), fill(21, 100_000)).unwrap();
    assert_eq!(names(&live), ["after.txt"]);

    // Within a set hard links share an inode; across sets a file does not.
    let s = |i: usize, rel: &str| d.browse(&sets[i].0, "data").join(rel);
    assert_eq!(
        ino(&s(0, "h1")),
        ino(&s(0, "a/h2")),
        "hard links inside one set share st_ino"
    );
    assert_eq!(ino(&s(0, "big.bin")), ino(&s(0, "a/big-hardlink")));
    assert_ne!(
        ino(&s(0, "keep.txt")),
        ino(&s(1, "keep.txt")),
        "one file in two sets has two st_ino"
    );
    assert_ne!(ino(&s(0, "h1")), ino(&s(1, "h1")));
    assert_eq!(
        sets[0].1["data"].get("h1").unwrap().links,
        [PathBuf::from("a/h2")]
    );
    assert_eq!(
        sets[2].1["data"].get("a/big-hardlink").unwrap().nlink,
        Some(1)
    );
    assert_eq!(fs::read(s(0, "small.txt")).unwrap(), b"hello");
    assert_eq!(fs::read(s(1, "small.txt")).unwrap(), b"bye now");
    assert_eq!(fs::read(s(2, "a/big-hardlink")).unwrap(), big);
    assert_eq!(sets[1].1["data"].get("pipe").unwrap().kind, Kind::Fifo);

    check_sets(&d, &sets, "before restart");
    d.restart();
    check_sets(&d, &sets, "after restart");
    assert_eq!(
        fs::read(p("after.txt")).unwrap(),
        fill(21, 100_000),
        "live data survives a restart"
    );
    d.stop();
}

#[test]
fn live_operations_and_sets_with_a_separate_mount() {
    live_operations_interleaved_with_sets(Config::default());
}

#[test]
fn live_operations_and_sets_mounted_in_place() {
    live_operations_interleaved_with_sets(Config::empty().in_place("data").threads(2));
}

#[test]
fn every_mount_is_announced_before_ready() {
    let d = Daemon::start(Config::volumes(&["data", "logs"]).in_place("home"));
    let lines = d.stdout_lines();
    let ready = lines.iter().position(|l| l == "umbra: ready").unwrap();
    let mounts = d.layout.mountpoints();
    // One line per mount and one naming the control socket, then ready.
    assert_eq!(
        ready,
        mounts.len() + 1,
        "one line per mount and the socket's, then `umbra: ready`; got {lines:#?}"
    );
    assert!(
        lines[..ready]
            .iter()
            .any(|l| l.contains("control socket at")),
        "no line names the control socket: {lines:#?}"
    );
    for mp in &mounts {
        let shown = mp.to_string_lossy();
        assert!(
            lines[..ready].iter().any(|l| l.contains(shown.as_ref())),
            "no line names {shown}: {lines:#?}"
        );
    }
}

#[test]
fn sigint_unmounts_everything_and_exits_zero() {
    let mut d = Daemon::start(Config::volumes(&["data", "logs"]));
    fs::write(d.live("data").join("f"), "kept").unwrap();
    d.create_set();
    d.try_stop_with(libc::SIGINT).unwrap();
    assert_eq!(fs::read(d.backing("data").join("f")).unwrap(), b"kept");
}

#[test]
fn the_hidden_folder_never_shows_in_the_live_mount() {
    let d = Daemon::start(Config::empty().in_place("data"));
    let live = d.live("data");
    let hidden_absent = |when: &str| {
        assert!(
            !names(&live).iter().any(|n| n == ".umbra"),
            "{when}: the live root lists .umbra"
        );
        let err = fs::symlink_metadata(live.join(".umbra"))
            .expect_err("the hidden folder can be looked up");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{when}: lstat(.umbra)");
    };
    hidden_absent("at start");
    fs::write(live.join("doomed"), fill(30, 300_000)).unwrap();
    fs::write(live.join("emptied"), fill(31, 300_000)).unwrap();
    let set = d.create_set();
    // Both make the daemon keep the old inode aside.
    fs::remove_file(live.join("doomed")).unwrap();
    truncate(&live.join("emptied"), 0);
    hidden_absent("after unlink and truncate");
    d.create_set();
    hidden_absent("after a second set");
    assert_eq!(
        fs::read(d.browse(&set, "data").join("doomed")).unwrap(),
        fill(30, 300_000)
    );
    assert_eq!(
        fs::read(d.browse(&set, "data").join("emptied")).unwrap(),
        fill(31, 300_000)
    );
    assert!(
        !names(&d.browse(&set, "data")).iter().any(|n| n == ".umbra"),
        "a set lists the hidden folder"
    );
}

#[test]
fn the_backing_directory_holds_plain_files_when_stopped() {
    let mut d = Daemon::start(Config::default());
    let live = d.live("data");
    fs::create_dir(live.join("dir")).unwrap();
    fs::write(live.join("dir/f"), fill(40, 200_000)).unwrap();
    fs::write(live.join("g"), fill(41, 100_000)).unwrap();
    fs::hard_link(live.join("g"), live.join("dir/g2")).unwrap();
    d.create_set();
    write_at(&live.join("dir/f"), 65_000, &fill(42, 10_000));
    fs::remove_file(live.join("g")).unwrap();
    truncate(&live.join("dir/g2"), 0);
    d.create_set();
    fs::write(live.join("h"), "h").unwrap();
    let seen = Manifest::capture(&live);
    d.stop();
    let backing = d.backing("data");
    let extra: Vec<String> = names(&backing)
        .into_iter()
        .filter(|n| {
            !seen
                .get(".")
                .unwrap()
                .entries
                .as_ref()
                .unwrap()
                .iter()
                .any(|e| e.to_string_lossy() == *n)
        })
        .collect();
    assert!(
        extra.is_empty() || extra == [".umbra"],
        "umbra left more than its hidden folder: {extra:?}"
    );
    manifest::assert_same(
        &seen,
        &Manifest::capture_excluding(&backing, &[".umbra"]),
        "backing dir vs live view",
    );
}

#[test]
fn a_set_of_several_volumes_shows_each_of_them() {
    let vols = ["data", "home", "logs"];
    let mut d = Daemon::start(Config::volumes(&["data", "logs"]).in_place("home"));
    for (i, v) in vols.iter().enumerate() {
        fs::write(d.live(v).join("who"), *v).unwrap();
        fs::write(d.live(v).join("blob"), fill(50 + i as u64, 100_000)).unwrap();
    }
    let mut sets = vec![take(&d, &vols)];
    let mut all = sets[0].0.volumes.clone();
    all.sort();
    assert_eq!(all, vols, "a set of every volume names every volume");

    for v in vols {
        write_at(&d.live(v).join("blob"), 5, b"changed");
    }
    let only_logs = d.create_set_with(&["logs"]);
    assert_eq!(only_logs.volumes, ["logs"]);
    assert_eq!(names(&d.snapshots().join(&only_logs.name)), ["logs"]);
    let logs_image = Manifest::capture(&d.live("logs"));
    sets.push((
        only_logs,
        BTreeMap::from([("logs".to_string(), logs_image)]),
    ));

    for v in vols {
        fs::remove_file(d.live(v).join("who")).unwrap();
    }
    sets.push(take(&d, &vols));
    for v in vols {
        fs::write(d.live(v).join("later"), "x").unwrap();
    }
    assert_eq!(
        fs::read(d.browse(&sets[0].0, "home").join("who")).unwrap(),
        b"home"
    );
    check_sets(&d, &sets, "before restart");
    d.restart();
    check_sets(&d, &sets, "after restart");
}

#[test]
fn all_volumes_of_a_set_show_one_instant() {
    // A writer bumps a counter in `data`, then the same counter in `logs`,
    // as fast as it can. At any one instant data == logs or data == logs + 1;
    // a set that took its volumes at two instants shows something else.
    // The writes are O_SYNC so that each write() returns only once the
    // daemon has it: with a writeback cache, pages dirtied while the set is
    // being flushed may reach the daemon in either order, and the only
    // promise is that every write() that returned before Freeze is in it.
    let d = Daemon::start(Config::volumes(&["data", "logs"]));
    let (a, b) = (
        d.live("data").join("counter"),
        d.live("logs").join("counter"),
    );
    fs::write(&a, 0u64.to_le_bytes()).unwrap();
    fs::write(&b, 0u64.to_le_bytes()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (fa, fb) = (
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_SYNC)
                .open(&a)
                .unwrap(),
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_SYNC)
                .open(&b)
                .unwrap(),
        );
        let stop = stop.clone();
        thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                fa.write_all_at(&n.to_le_bytes(), 0).unwrap();
                fb.write_all_at(&n.to_le_bytes(), 0).unwrap();
            }
            n
        })
    };
    thread::sleep(Duration::from_millis(100));
    let sets: Vec<SetJson> = (0..6)
        .map(|_| {
            let s = d.create_set();
            thread::sleep(Duration::from_millis(30));
            s
        })
        .collect();
    stop.store(true, Ordering::Relaxed);
    let last = writer.join().unwrap();
    let read = |p: PathBuf| u64::from_le_bytes(fs::read(p).unwrap().try_into().unwrap());
    let mut seen = Vec::new();
    for s in &sets {
        let (x, y) = (
            read(d.browse(s, "data").join("counter")),
            read(d.browse(s, "logs").join("counter")),
        );
        assert!(
            x == y || x == y + 1,
            "set {}: data counter {x}, logs counter {y}: not one instant",
            s.name
        );
        seen.push(x);
    }
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "later sets show later counts: {seen:?}"
    );
    assert!(
        *seen.last().unwrap() > 0 && *seen.last().unwrap() <= last,
        "the writer ran during the sets: {seen:?}"
    );
}

#[test]
fn a_file_written_through_an_open_handle_is_in_the_set() {
    // Every write() that returned before the set is in it, even while the
    // file stays open (flush-and-hold).
    let d = Daemon::start(Config::default());
    let path = d.live("data").join("open.log");
    let mut f = File::create(&path).unwrap();
    f.write_all(&fill(60, 1_000_000)).unwrap();
    let s1 = d.create_set();
    f.write_all(b"tail").unwrap();
    let s2 = d.create_set();
    drop(f);
    assert_eq!(
        fs::read(d.browse(&s1, "data").join("open.log")).unwrap(),
        fill(60, 1_000_000)
    );
    let mut both = fill(60, 1_000_000);
    both.extend_from_slice(b"tail");
    assert_eq!(
        fs::read(d.browse(&s2, "data").join("open.log")).unwrap(),
        both
    );
}

#[test]
fn sets_carry_labels_unique_names_and_rising_ids() {
    let d = Daemon::start(Config::default().threads(2));
    let labeled = d.create_set_with(&["--label", "before the upgrade"]);
    assert_eq!(labeled.label.as_deref(), Some("before the upgrade"));
    assert_eq!(labeled.volumes, ["data"]);
    // Several sets within one second get distinct names (a `-N` suffix).
    let quick: Vec<SetJson> = (0..3).map(|_| d.create_set()).collect();
    let mut all = vec![labeled.clone()];
    all.extend(quick);
    let names: std::collections::BTreeSet<&str> = all.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.len(), all.len(), "set names are unique: {all:#?}");
    assert!(
        all.windows(2).all(|w| w[0].id < w[1].id),
        "ids rise: {all:#?}"
    );
    assert!(all.iter().skip(1).all(|s| s.label.is_none()));
    let mut listed = d.list_sets();
    listed.sort_by_key(|s| s.id);
    assert_eq!(
        listed, all,
        "`umbra list --json` shows every set as `create --json` did"
    );

    // Without --json, create prints the id and name; list names every set.
    let text = d.umbra_ok(&["create"]);
    let newest = d.list_sets().into_iter().max_by_key(|s| s.id).unwrap();
    assert!(
        text.contains(&newest.name),
        "`umbra create` printed {text:?}, not the name {}",
        newest.name
    );
    assert!(
        text.contains(&newest.id.to_string()),
        "`umbra create` printed {text:?}, not the id {}",
        newest.id
    );
    let list = d.umbra_ok(&["list"]);
    for s in &all {
        assert!(
            list.contains(&s.name),
            "`umbra list` does not name {}: {list}",
            s.name
        );
    }
    assert!(
        d.status().is_object(),
        "`umbra status --json` prints one JSON object"
    );
    assert_eq!(
        fs::read_link(d.snapshots().join("latest")).unwrap(),
        PathBuf::from(&newest.name)
    );
}

#[test]
fn a_name_format_names_sets_after_their_creation_time() {
    let d = Daemon::start(Config::default().name_format("@GMT-%Y.%m.%d-%H.%M.%S"));
    fs::write(d.live("data").join("f"), "samba").unwrap();
    let set = d.create_set();
    let created = chrono::DateTime::parse_from_rfc3339(&set.created).unwrap();
    let stem = created
        .with_timezone(&chrono::Utc)
        .format("@GMT-%Y.%m.%d-%H.%M.%S")
        .to_string();
    assert!(
        set.name.starts_with(&stem),
        "set {} should be named {stem}",
        set.name
    );
    assert_eq!(
        fs::read(d.browse(&set, "data").join("f")).unwrap(),
        b"samba"
    );
    assert_eq!(
        fs::read_link(d.snapshots().join("latest")).unwrap(),
        PathBuf::from(&set.name)
    );
}

#[test]
fn a_daemon_killed_with_sigkill_leaves_stale_mounts_the_next_one_recovers() {
    let mut d = Daemon::start(Config::default().in_place("home"));
    fs::write(d.live("data").join("kept"), b"before the crash").unwrap();
    fs::write(d.live("home").join("kept"), b"in place").unwrap();
    let set = d.create_set();
    fs::write(d.live("data").join("kept"), b"after the set").unwrap();
    d.kill();
    let stale: Vec<_> = d
        .layout
        .mountpoints()
        .into_iter()
        .filter(|m| sys::is_mounted(m))
        .collect();
    assert!(
        !stale.is_empty(),
        "a killed daemon leaves its mounts behind"
    );
    d.launch();
    assert_eq!(d.list_sets(), std::slice::from_ref(&set));
    assert_eq!(
        fs::read(d.live("data").join("kept")).unwrap(),
        b"after the set"
    );
    assert_eq!(fs::read(d.live("home").join("kept")).unwrap(), b"in place");
    assert_eq!(
        fs::read(d.browse(&set, "data").join("kept")).unwrap(),
        b"before the crash"
    );
    for mp in d.layout.mountpoints() {
        assert_eq!(
            sys::mount_count(&mp),
            1,
            "{} mounted once after recovery",
            mp.display()
        );
    }
}

/// A directory's link count is 2 plus its subdirectories, live and in a
/// set alike: the volume's hidden folder is not one of them.
#[test]
fn directory_link_counts_match_live_and_in_sets() {
    let d = Daemon::start(Config::default());
    let live = d.live("data");
    fs::create_dir_all(live.join("a/b")).unwrap();
    fs::create_dir(live.join("c")).unwrap();
    let nlinks = |root: &Path| -> Vec<u64> {
        ["", "a", "a/b", "c"]
            .iter()
            .map(|rel| fs::metadata(root.join(rel)).unwrap().nlink())
            .collect()
    };
    assert_eq!(nlinks(&live), [4, 3, 2, 2], "live");
    let set = d.create_set();
    fs::remove_dir(live.join("c")).unwrap();
    assert_eq!(nlinks(&d.browse(&set, "data")), [4, 3, 2, 2], "in the set");
    assert_eq!(fs::metadata(&live).unwrap().nlink(), 3, "live after rmdir");
}

/// `ls -l` of a directory larger than one READDIRPLUS reply, after a restart
/// (nothing cached), shows every entry with the backing file's attributes
/// and the inode number a LOOKUP gives; a second listing, and one after an
/// O(1) truncation gave a file a new backing inode, agree.
#[test]
fn a_long_listing_of_a_large_directory_matches_the_backing_directory() {
    let mut d = Daemon::start(Config::default());
    let live = d.live("data").join("many");
    fs::create_dir(&live).unwrap();
    for i in 0..1500 {
        fs::write(live.join(format!("file-{i:04}")), vec![b'x'; i % 97]).unwrap();
    }
    fs::write(live.join("big"), vec![7u8; 4 * MIB]).unwrap();
    d.create_set();
    d.restart();
    let live = d.live("data").join("many");
    let backing = d.backing("data").join("many");
    let big_ino = ino(&live.join("big"));
    // The set needs the big file's data: truncating it to zero moves its
    // inode aside and a new backing inode takes its name and number.
    truncate(&live.join("big"), 0);
    for round in 0..2 {
        let out = std::process::Command::new("ls")
            .args(["-l", "--time-style=+%s", "-i"])
            .arg(&live)
            .output()
            .unwrap();
        assert!(out.status.success());
        let listed: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .skip(1)
            .map(str::to_string)
            .collect();
        assert_eq!(listed.len(), 1501, "round {round}");
        for line in &listed {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (shown_ino, size, name) = (fields[0], fields[5], fields[7]);
            let meta = fs::symlink_metadata(backing.join(name)).unwrap();
            assert_eq!(size, meta.len().to_string(), "{name}, round {round}");
            let expected = if name == "big" { big_ino } else { meta.ino() };
            assert_eq!(shown_ino, expected.to_string(), "{name}, round {round}");
        }
    }
    assert_eq!(names(&live).len(), 1501);
    // readdir (through READDIRPLUS at a listing's start) gives `.` and
    // `..` their own inode numbers.
    let dots: Vec<(Vec<u8>, u64)> = sys::readdir_inos(&live)
        .unwrap()
        .into_iter()
        .filter(|(name, _)| name == b"." || name == b"..")
        .collect();
    assert!(dots.contains(&(b".".to_vec(), ino(&live))), "{dots:?}");
    assert!(
        dots.contains(&(b"..".to_vec(), ino(&d.live("data")))),
        "{dots:?}"
    );
}

/// Lookups and listings of one directory run side by side
/// (FUSE_PARALLEL_DIROPS): four threads stat every name of a large
/// directory, cold, while two others list it, and every answer is the
/// backing file's (inode, size, mode), through a restart too.
#[test]
fn parallel_lookups_and_listings_of_one_directory_answer_as_the_backing_one() {
    let mut d = Daemon::start(Config::default());
    let backing = d.backing("data").join("wide");
    fs::create_dir(&backing).unwrap();
    for i in 0..3000 {
        let path = backing.join(format!("f{i:04}"));
        fs::write(&path, vec![b'x'; i % 53]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600 + (i as u32 % 8))).unwrap();
    }
    let wanted: Arc<Vec<String>> = Arc::new((0..3000).map(|i| format!("f{i:04}")).collect());
    for round in 0..2 {
        let live = d.live("data").join("wide");
        let mut workers = Vec::new();
        for k in 0..4 {
            let (live, backing, wanted) = (live.clone(), backing.clone(), wanted.clone());
            workers.push(thread::spawn(move || {
                for name in wanted.iter().skip(k).step_by(4) {
                    let seen = fs::symlink_metadata(live.join(name)).unwrap();
                    let real = fs::symlink_metadata(backing.join(name)).unwrap();
                    assert_eq!(
                        (seen.ino(), seen.len(), seen.mode()),
                        (real.ino(), real.len(), real.mode()),
                        "{name}, round {round}"
                    );
                }
            }));
        }
        for _ in 0..2 {
            let live = live.clone();
            workers.push(thread::spawn(move || {
                assert_eq!(names(&live).len(), 3000, "round {round}");
            }));
        }
        for w in workers {
            w.join().unwrap();
        }
        d.restart();
    }
}

/// The live mount answers xattr questions as the backing file does, while
/// it keeps their names in memory: a miss, then a set, a remove, a chmod
/// that rewrites an access ACL, and a file that inherits a default ACL at
/// its creation.
#[test]
fn xattrs_through_the_live_mount_answer_as_the_backing_files_do() {
    let d = Daemon::start(Config::default());
    let live = d.live("data");
    let backing = d.backing("data");
    let agree = |name: &str, attr: &[u8], when: &str| {
        assert_eq!(
            sys::lgetxattr(&live.join(name), attr),
            sys::lgetxattr(&backing.join(name), attr),
            "{name} {}: {when}",
            String::from_utf8_lossy(attr)
        );
        assert_eq!(
            sys::llistxattr(&live.join(name)),
            sys::llistxattr(&backing.join(name)),
            "{name}: list {when}"
        );
    };
    fs::write(live.join("f"), "x").unwrap();
    agree("f", b"user.a", "never set");
    sys::lsetxattr(&live.join("f"), "user.a", b"1").unwrap();
    agree("f", b"user.a", "set");
    assert_eq!(
        sys::lgetxattr(&live.join("f"), b"user.a"),
        Ok(b"1".to_vec())
    );
    sys::lremovexattr(&live.join("f"), "user.a").unwrap();
    agree("f", b"user.a", "removed");

    // A default ACL with a named user: files made in the directory get an
    // access ACL from the backing filesystem, not from umbra.
    let default = sys::posix_acl(&[
        (sys::ACL_USER_OBJ, 7, 0),
        (sys::ACL_USER, 4, 65534),
        (sys::ACL_GROUP_OBJ, 5, 0),
        (sys::ACL_MASK, 7, 0),
        (sys::ACL_OTHER, 5, 0),
    ]);
    fs::create_dir(live.join("acl")).unwrap();
    sys::lsetxattr(&live.join("acl"), "system.posix_acl_default", &default).unwrap();
    fs::write(live.join("acl/inherits"), "y").unwrap();
    agree(
        "acl/inherits",
        b"system.posix_acl_access",
        "inherited at creation",
    );
    assert!(sys::lgetxattr(&live.join("acl/inherits"), b"system.posix_acl_access").is_ok());
    fs::set_permissions(live.join("acl/inherits"), fs::Permissions::from_mode(0o600)).unwrap();
    agree("acl/inherits", b"system.posix_acl_access", "after a chmod");
}

/// The after-a-set shortcuts keep a set whole. Entries leave a directory
/// one by one (renames, unlinks, a replacing rename), past the point where
/// its entries' metadata and handles are kept all at once; small
/// directories are emptied from the first unlink on, a tree of them with
/// its subdirectories' entries kept at once; a file is overwritten
/// block after block through its end (its next blocks kept ahead, then by
/// background threads while the writes go on), another densely at random
/// within one region (the rest of the region kept with it). The set
/// shows every name, mode, xattr and byte of its instant, and the live
/// mount the new ones, before and after a restart (which finds the inodes
/// the unlinks moved aside by their rows).
#[test]
fn a_directory_emptied_after_a_set_and_files_overwritten_ahead_keep_the_set_whole() {
    let mut d = Daemon::start(Config::default());
    let live = d.live("data");
    let p = |rel: &str| live.join(rel);
    fs::create_dir_all(p("many/sub")).unwrap();
    for i in 0..40 {
        let f = p(&format!("many/f{i:02}"));
        fs::write(&f, fill(100 + i, 1000 + i as usize)).unwrap();
        chmod(&f, 0o600 + (i % 8) as u32);
        sys::lsetxattr(&f, "user.n", format!("{i}").as_bytes()).unwrap();
    }
    fs::create_dir(p("few")).unwrap();
    fs::write(p("few/a"), "a").unwrap();
    fs::write(p("few/b"), "b").unwrap();
    fs::create_dir(p("few/d")).unwrap();
    for (k, sub) in ["tree", "tree/a", "tree/a/b", "tree/a/b/c", "tree/x"]
        .iter()
        .enumerate()
    {
        fs::create_dir(p(sub)).unwrap();
        fs::write(p(&format!("{sub}/file")), fill(60 + k as u64, 3000)).unwrap();
        chmod(&p(&format!("{sub}/file")), 0o640);
    }
    fs::write(p("seq.bin"), fill(31, 12 * MIB + 5)).unwrap();
    fs::write(p("rand.bin"), fill(32, 4 * MIB)).unwrap();
    let (set, images) = take(&d, &["data"]);

    for i in 0..40 {
        let f = p(&format!("many/f{i:02}"));
        match i % 4 {
            0 => fs::rename(&f, p(&format!("many/sub/r{i:02}"))).unwrap(),
            1 => fs::rename(&f, p(&format!("many/f{:02}", i - 1 + 4))).unwrap(),
            _ => {
                if f.exists() {
                    fs::remove_file(&f).unwrap();
                }
            }
        }
    }
    fs::remove_dir_all(p("few")).unwrap();
    fs::remove_dir_all(p("tree")).unwrap();
    let mut seq = fill(31, 12 * MIB + 5);
    // Through the whole file: past the window kept with the second write,
    // into the windows background threads keep while the writes go on.
    for m in 0..13 {
        write_modeled(&p("seq.bin"), &mut seq, m * MIB, &fill(40 + m as u64, MIB));
    }
    let mut rand = fill(32, 4 * MIB);
    for (k, block) in [3usize, 9, 5, 14, 0, 11].into_iter().enumerate() {
        let off = MIB + block * 64 * 1024 + 100;
        write_modeled(&p("rand.bin"), &mut rand, off, &fill(20 + k as u64, 4096));
    }
    assert_eq!(fs::read(p("seq.bin")).unwrap(), seq, "live seq.bin");
    assert_eq!(fs::read(p("rand.bin")).unwrap(), rand, "live rand.bin");
    let sets = [(set, images)];
    check_sets(&d, &sets, "after the directories were emptied");
    d.restart();
    check_sets(&d, &sets, "after a restart");
    assert_eq!(
        fs::read(p("seq.bin")).unwrap(),
        seq,
        "live seq.bin after a restart"
    );
}

/// A directory too large to have all its entries kept at once by one
/// departure (over 4,096 entries) keeps each leaving entry by itself:
/// after a set, unlinks and renames past the point where a smaller one
/// would be kept whole, the set shows every entry.
#[test]
fn entries_leaving_a_directory_too_large_to_keep_at_once_keep_the_set_whole() {
    let mut d = Daemon::start(Config::default());
    let live = d.live("data");
    let dir = live.join("huge");
    fs::create_dir(&dir).unwrap();
    for i in 0..4200 {
        fs::write(dir.join(format!("f{i:04}")), format!("{i}")).unwrap();
    }
    let (set, images) = take(&d, &["data"]);
    for i in 0..12 {
        let f = dir.join(format!("f{i:04}"));
        if i % 3 == 0 {
            fs::rename(&f, dir.join(format!("r{i:04}"))).unwrap();
        } else {
            fs::remove_file(&f).unwrap();
        }
    }
    let sets = [(set, images)];
    check_sets(&d, &sets, "after the departures");
    d.restart();
    check_sets(&d, &sets, "after a restart");
}
