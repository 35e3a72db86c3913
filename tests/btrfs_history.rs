//! `umbra diff` and `umbra versions` on a btrfs volume (a subvolume of a
//! loop-mounted btrfs the test makes, used directly): every kind of change
//! (created, deleted, renamed within and between directories and over
//! another file, mode, owner, times, xattrs, hard links, bytes rewritten in
//! place, a directory removed or made with its subtree) between two sets
//! and from a set to the live volume, only what happened in between,
//! limited to a path, with no scratch snapshot left behind; `versions`
//! through renames, replacements and deletion; and the random model: each
//! diff turns the older snapshot's tree (read at `.umbra/N` directly) into
//! the newer one's. A diff examines the objects that changed, not every
//! object of the volume, tells a file that got a removed file's inode
//! number (after a remount) from that file, and shows a subvolume made
//! inside the volume as the empty directory its snapshots hold.

#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

mod common;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::history::{diff, editor_story, random_history, sorted, versions, write, xattr};
use common::{Config, Daemon, SetJson, assert_one_line_error};

fn vault() -> Daemon {
    Daemon::start(Config::empty().btrfs("vault"))
}

/// Set `set`'s snapshot of the vault, read directly.
fn image(d: &Daemon, set: &SetJson) -> PathBuf {
    d.live("vault").join(".umbra").join(set.id.to_string())
}

/// What `.umbra` holds: the sets' snapshots and nothing else.
fn snapshots(d: &Daemon) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(d.live("vault").join(".umbra"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn diff_names_every_kind_of_change_on_a_btrfs_volume_between_sets_and_to_live() {
    let d = vault();
    let live = d.live("vault");
    for dir in ["dir/sub", "tree/deep", "moved"] {
        fs::create_dir_all(live.join(dir)).unwrap();
    }
    for (file, text) in [
        ("dir/a.txt", "a"),
        ("dir/w", "w"),
        ("dir/sub/k", "k"),
        ("gone.txt", "gone"),
        ("mod.txt", "one"),
        ("tree/deep/f", "f"),
        ("moved/inside", "i"),
        ("attrs", "x"),
        ("linked", "l"),
        ("untouched", "u"),
        ("over.txt", "over"),
        ("victim.txt", "victim"),
        ("touched", "t"),
    ] {
        write(&live.join(file), text);
    }
    // Large enough to live in disk extents, not in the tree.
    fs::write(live.join("inplace"), vec![b'a'; 256 << 10]).unwrap();
    fs::write(live.join("same"), vec![b's'; 256 << 10]).unwrap();
    let first = d.create_set();

    fs::rename(live.join("dir/a.txt"), live.join("dir/sub/a2.txt")).unwrap();
    fs::rename(live.join("dir/w"), live.join("dir/w2")).unwrap();
    fs::rename(live.join("over.txt"), live.join("victim.txt")).unwrap();
    fs::remove_file(live.join("gone.txt")).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(live.join("mod.txt"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b" two"))
        .unwrap();
    let inplace = fs::OpenOptions::new()
        .write(true)
        .open(live.join("inplace"))
        .unwrap();
    inplace.write_all_at(&[b'b'; 4096], 64 << 10).unwrap();
    inplace.sync_all().unwrap();
    drop(inplace);
    // The same bytes written again and the mtime put back: new extents,
    // nothing a reader sees.
    let same = fs::OpenOptions::new()
        .write(true)
        .open(live.join("same"))
        .unwrap();
    let mtime = same.metadata().unwrap().modified().unwrap();
    same.write_all_at(&[b's'; 8192], 4096).unwrap();
    same.sync_all().unwrap();
    same.set_modified(mtime).unwrap();
    drop(same);
    fs::remove_dir_all(live.join("tree")).unwrap();
    fs::rename(live.join("moved"), live.join("renamed")).unwrap();
    fs::create_dir_all(live.join("new/deeper")).unwrap();
    write(&live.join("new/x"), "x");
    write(&live.join("new/deeper/y"), "y");
    symlink("mod.txt", live.join("new/link")).unwrap();
    fs::set_permissions(live.join("dir/sub/k"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(live.join("attrs"), Some(65534), None).unwrap();
    xattr(&live.join("attrs"));
    fs::File::options()
        .write(true)
        .open(live.join("touched"))
        .unwrap()
        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000))
        .unwrap();
    fs::hard_link(live.join("linked"), live.join("dir/hard")).unwrap();
    // Born and gone between the two sets: no trace.
    write(&live.join("brief"), "b");
    fs::remove_file(live.join("brief")).unwrap();
    // Read (its atime may move): no trace.
    assert_eq!(fs::read(live.join("untouched")).unwrap(), b"u");
    let second = d.create_set();
    // After the second set: not in a diff that ends there.
    write(&live.join("later"), "l");
    write(&live.join("mod.txt"), "three");

    let expected = [
        "M directory / times",
        "+ file /dir/hard",
        "M directory /dir times",
        "R file /dir/a.txt -> /dir/sub/a2.txt",
        "R file /dir/w -> /dir/w2",
        "M directory /dir/sub times",
        "M file /dir/sub/k mode",
        "M file /attrs owner,xattrs",
        "- file /gone.txt",
        "M file /inplace content,times",
        "M file /linked links",
        "M file /mod.txt content,times",
        "+ directory /new",
        "+ directory /new/deeper",
        "+ file /new/deeper/y",
        "+ symlink /new/link",
        "+ file /new/x",
        "R directory /moved -> /renamed",
        "R file /over.txt -> /victim.txt",
        "- file /victim.txt",
        "M file /touched times",
        "- directory /tree",
        "- directory /tree/deep",
        "- file /tree/deep/f",
    ];
    let (lines, json) = diff(&d, &[&first.name, &second.name]);
    assert_eq!(sorted(&lines), sorted(&expected), "{lines:#?}");
    assert!(!json.searched, "no tree was walked");
    assert!(json.examined < 40, "examined {} objects", json.examined);

    // To the live volume: the later changes too, through a snapshot of
    // the live subvolume that is gone afterwards.
    let (lines, _) = diff(&d, &[&first.name]);
    assert!(lines.contains(&"+ file /later".to_string()), "{lines:#?}");
    let (lines, _) = diff(&d, &[&second.name]);
    assert_eq!(
        sorted(&lines),
        sorted(&[
            "M directory / times",
            "+ file /later",
            "M file /mod.txt content,times"
        ]),
    );
    assert_eq!(
        snapshots(&d),
        sorted(&[first.id.to_string(), second.id.to_string()])
    );
    // A set against itself: nothing.
    let (lines, _) = diff(&d, &[&second.name, &second.name]);
    assert!(lines.is_empty(), "{lines:#?}");

    // Limited to a path (absolute, or VOLUME/path).
    let (lines, _) = diff(
        &d,
        &[
            &first.name,
            &second.name,
            live.join("dir").to_str().unwrap(),
        ],
    );
    assert_eq!(
        sorted(&lines),
        sorted(&[
            "+ file /dir/hard",
            "M directory /dir times",
            "R file /dir/a.txt -> /dir/sub/a2.txt",
            "R file /dir/w -> /dir/w2",
            "M directory /dir/sub times",
            "M file /dir/sub/k mode",
        ])
    );
    let (lines, _) = diff(&d, &[&first.name, "vault/tree"]);
    assert_eq!(lines.len(), 3, "{lines:#?}");

    // The text form is zfs diff -F's.
    let text = d.umbra_ok(&["diff", &first.name, &second.name]);
    let mount = live.display();
    assert!(
        text.contains(&format!("R\t/\t{mount}/moved -> {mount}/renamed\n")),
        "{text}"
    );
}

/// Where a version's set path points, as a path in the set's snapshot.
fn in_snapshot(d: &Daemon, set: &SetJson, shown: &str) -> PathBuf {
    let rel = Path::new(shown)
        .strip_prefix(d.browse(set, "vault"))
        .unwrap();
    image(d, set).join(rel)
}

#[test]
fn versions_on_a_btrfs_volume_follow_renames_replacements_and_deletions() {
    let d = vault();
    let live = d.live("vault");
    let (sets, v) = editor_story(&d, "vault");
    for version in &v.versions {
        for shown in &version.sets {
            let set = sets.iter().find(|s| s.name == shown.name).unwrap();
            let bytes = fs::read(in_snapshot(&d, set, &shown.path)).unwrap();
            assert_eq!(blake3::hash(&bytes).to_hex().to_string(), version.blake3);
        }
    }

    // Renamed into a new directory: followed into the sets under its old
    // name (by inode, in s4 only: s1's notes.txt was another file).
    fs::create_dir(live.join("archive")).unwrap();
    fs::rename(live.join("notes.txt"), live.join("archive/n.txt")).unwrap();
    let v = versions(&d, &live.join("archive/n.txt"));
    assert_eq!(v.versions.len(), 2, "{v:?}");
    assert!(v.versions[0].live);
    assert_eq!(v.versions[1].sets.len(), 1, "{v:?}");
    assert_eq!(
        v.versions[1].sets[0].path,
        d.browse(&sets[3], "vault")
            .join("notes.txt")
            .display()
            .to_string()
    );
    // Deleted live: its versions are still found by path.
    let v = versions(&d, &live.join("notes.txt"));
    assert!(v.versions.iter().all(|v| !v.live));
    assert_eq!(v.versions.len(), 2, "{v:?}");
    let by_volume = versions(&d, Path::new("vault/notes.txt"));
    assert_eq!(by_volume.versions.len(), 2);
    // A symlink's version is its target.
    symlink("archive/n.txt", live.join("pointer")).unwrap();
    let s5 = d.create_set();
    let v = versions(&d, &live.join("pointer"));
    assert_eq!(v.versions.len(), 1, "{v:?}");
    assert_eq!(
        v.versions[0].blake3,
        blake3::hash(b"archive/n.txt").to_hex().to_string()
    );
    assert_eq!(v.versions[0].sets[0].name, s5.name);
    // A directory, or a path no set ever had: one line.
    let out = d.umbra(&["versions", live.join("archive").to_str().unwrap()]);
    let line = assert_one_line_error(&out, "versions of a directory");
    assert!(line.contains("directory"), "{line}");
    let out = d.umbra(&["versions", "vault/never-was"]);
    let line = assert_one_line_error(&out, "versions of nothing");
    assert!(line.contains("no such file, live or in any set"), "{line}");
}

#[test]
fn diff_on_a_btrfs_volume_turns_every_snapshot_into_every_later_one_after_random_changes() {
    let d = vault();
    random_history(&d, "vault", |set| image(&d, set), true);
    assert!(
        snapshots(&d).iter().all(|n| n.parse::<u64>().is_ok()),
        "{:?}",
        snapshots(&d)
    );
}

#[test]
fn diff_on_a_btrfs_volume_examines_what_changed_not_every_file() {
    let d = vault();
    let live = d.live("vault");
    for dir in 0..5 {
        let dir = live.join(format!("d{dir}"));
        fs::create_dir(&dir).unwrap();
        for file in 0..1000 {
            write(&dir.join(format!("f{file:03}")), &format!("file {file}"));
        }
    }
    let first = d.create_set();
    write(&live.join("d1/f500"), "changed");
    fs::remove_file(live.join("d3/f007")).unwrap();
    fs::set_permissions(live.join("d4/f999"), fs::Permissions::from_mode(0o600)).unwrap();
    let second = d.create_set();
    let (lines, json) = diff(&d, &[&first.name, &second.name]);
    assert_eq!(
        sorted(&lines),
        sorted(&[
            "M file /d1/f500 content,times",
            "M directory /d3 times",
            "- file /d3/f007",
            "M file /d4/f999 mode",
        ])
    );
    // The two files changed and d3 (d3/f007 is in the newer tree no
    // more): not the 5,006 objects of the volume.
    assert_eq!(json.examined, 3);
}

#[test]
fn a_scratch_snapshot_a_diff_left_in_a_crash_is_destroyed_at_start() {
    let mut d = vault();
    let set = d.create_set();
    let live = d.live("vault");
    // What a daemon killed during a diff to the live volume leaves.
    let out = std::process::Command::new("btrfs")
        .args(["-q", "subvolume", "snapshot", "-r"])
        .arg(&live)
        .arg(live.join(".umbra/scratch-4242-0"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    d.restart();
    assert_eq!(snapshots(&d), [set.id.to_string()]);
    let (lines, _) = diff(&d, &[&set.name]);
    assert!(lines.is_empty(), "{lines:#?}");
}

/// Runs a command that must succeed.
fn run(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

#[test]
fn an_inode_number_given_again_after_a_remount_is_another_file_not_a_rename() {
    let mut d = vault();
    let live = d.live("vault");
    write(&live.join("a"), "a");
    // The newest inode: its number is the one btrfs gives again once the
    // filesystem is mounted afresh without it.
    write(&live.join("b"), "old");
    let reused = fs::metadata(live.join("b")).unwrap().ino();
    let first = d.create_set();
    fs::remove_file(live.join("b")).unwrap();
    d.stop();
    let btrfs = d.btrfs.as_ref().unwrap();
    run(std::process::Command::new("umount").arg(&btrfs.mount));
    run(std::process::Command::new("mount")
        .args(["-o", "loop"])
        .arg(btrfs.image())
        .arg(&btrfs.mount));
    d.launch();
    write(&live.join("b"), "new");
    write(&live.join("c"), "c");
    assert_eq!(
        fs::metadata(live.join("b")).unwrap().ino(),
        reused,
        "btrfs gave b's number again (the premise of this test)"
    );
    let second = d.create_set();
    let (lines, _) = diff(&d, &[&first.name, &second.name]);
    assert_eq!(
        sorted(&lines),
        sorted(&["M directory / times", "- file /b", "+ file /b", "+ file /c",]),
        "{lines:#?}"
    );
}

#[test]
fn a_subvolume_made_inside_a_btrfs_volume_is_a_directory_with_nothing_under_it() {
    let d = vault();
    let live = d.live("vault");
    let first = d.create_set();
    // A snapshot of the volume shows a subvolume inside it as an empty
    // directory: its files are in no set, so in no diff between sets.
    run(std::process::Command::new("btrfs")
        .args(["-q", "subvolume", "create"])
        .arg(live.join("inner")));
    write(&live.join("inner/file"), "f");
    let second = d.create_set();
    assert!(
        fs::read_dir(image(&d, &second).join("inner"))
            .unwrap()
            .next()
            .is_none()
    );
    let (lines, _) = diff(&d, &[&first.name, &second.name]);
    assert_eq!(
        sorted(&lines),
        sorted(&["M directory / times", "+ directory /inner"]),
        "{lines:#?}"
    );
    fs::rename(live.join("inner"), live.join("moved")).unwrap();
    let (lines, _) = diff(&d, &[&second.name]);
    assert_eq!(
        sorted(&lines),
        sorted(&["M directory / times", "R directory /inner -> /moved"]),
        "{lines:#?}"
    );
}
