//! `umbra diff` and `umbra versions` end to end, through the live mount:
//! every kind of change (added, removed with its subtree, renamed, content,
//! mode, owner, times, xattrs, links) between two sets and between a set
//! and the live volume, only what happened in between, limited to a path;
//! the objects are named from the catalog after a restart too (no walk of
//! the tree); `versions` lists distinct contents newest first, follows a
//! rename, and finds the files an editor replaced by renaming over them.

#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use common::history::{diff, editor_story, random_history, sorted, versions, write, xattr};
use common::{Config, Daemon, assert_one_line_error};

#[test]
fn diff_names_every_kind_of_change_between_two_sets_and_the_live_volume() {
    let d = Daemon::start(Config::empty().volume("data"));
    let live = d.live("data");
    fs::create_dir_all(live.join("dir/sub")).unwrap();
    fs::create_dir_all(live.join("tree/deep")).unwrap();
    fs::create_dir_all(live.join("moved")).unwrap();
    write(&live.join("dir/a.txt"), "a");
    write(&live.join("dir/sub/k"), "k");
    write(&live.join("gone.txt"), "gone");
    write(&live.join("mod.txt"), "one");
    write(&live.join("tree/deep/f"), "f");
    write(&live.join("moved/inside"), "i");
    write(&live.join("attrs"), "x");
    write(&live.join("linked"), "l");
    write(&live.join("untouched"), "u");
    let first = d.create_set();

    fs::rename(live.join("dir/a.txt"), live.join("dir/sub/a2.txt")).unwrap();
    fs::remove_file(live.join("gone.txt")).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(live.join("mod.txt"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b" two"))
        .unwrap();
    fs::remove_dir_all(live.join("tree")).unwrap();
    fs::rename(live.join("moved"), live.join("renamed")).unwrap();
    fs::create_dir(live.join("new")).unwrap();
    write(&live.join("new/x"), "x");
    symlink("mod.txt", live.join("new/link")).unwrap();
    fs::set_permissions(live.join("dir/sub/k"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(live.join("attrs"), Some(65534), None).unwrap();
    xattr(&live.join("attrs"));
    fs::hard_link(live.join("linked"), live.join("dir/hard")).unwrap();
    // Born and gone between the two sets: no trace.
    write(&live.join("brief"), "b");
    fs::remove_file(live.join("brief")).unwrap();
    let second = d.create_set();
    // After the second set: not in a diff that ends there.
    write(&live.join("later"), "l");
    write(&live.join("mod.txt"), "three");

    let expected = [
        "M directory / times",
        "+ file /dir/hard",
        "M directory /dir times",
        "R file /dir/a.txt -> /dir/sub/a2.txt",
        "M directory /dir/sub times",
        "M file /dir/sub/k mode",
        "M file /attrs owner,xattrs",
        "- file /gone.txt",
        "M file /linked links",
        "M file /mod.txt content,times",
        "+ directory /new",
        "+ symlink /new/link",
        "+ file /new/x",
        "R directory /moved -> /renamed",
        "- directory /tree",
        "- directory /tree/deep",
        "- file /tree/deep/f",
    ];
    let (lines, json) = diff(&d, &[&first.name, &second.name]);
    assert_eq!(sorted(&lines), sorted(&expected), "{lines:#?}");
    assert!(
        !json.searched,
        "every changed object was named from the catalog"
    );
    assert!(json.examined < 40, "examined {} objects", json.examined);

    // To the live volume: the later changes too.
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

    // Limited to a path (relative to the client's directory or absolute).
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
            "M directory /dir/sub times",
            "M file /dir/sub/k mode",
        ])
    );
    let (lines, _) = diff(&d, &[&first.name, "data/tree"]);
    assert_eq!(lines.len(), 3, "{lines:#?}");

    // A file replaced by a rename over it: the name that went, then the
    // one that came, as zfs diff prints them.
    let third = d.create_set();
    write(&live.join("tmp"), "replacement");
    fs::rename(live.join("tmp"), live.join("untouched")).unwrap();
    let (lines, _) = diff(&d, &[&third.name]);
    let at: Vec<&String> = lines.iter().filter(|l| l.contains("/untouched")).collect();
    assert_eq!(at, ["- file /untouched", "+ file /untouched"], "{lines:#?}");

    // The text form is zfs diff -F's.
    let text = d.umbra_ok(&["diff", &first.name, &second.name]);
    let mount = live.display();
    assert!(
        text.contains(&format!("R\t/\t{mount}/moved -> {mount}/renamed\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("M\tF\t{mount}/mod.txt\tcontent,times\n")),
        "{text}"
    );
}

#[test]
fn diff_names_changed_files_after_a_restart_and_after_a_later_rename() {
    let mut d = Daemon::start(Config::empty().volume("data"));
    let live = d.live("data");
    fs::create_dir_all(live.join("a/b/c")).unwrap();
    write(&live.join("a/b/c/file"), "one");
    let first = d.create_set();
    write(&live.join("a/b/c/file"), "two");
    d.restart();
    // The kernel forgot every name: the catalog's places name the file.
    let (lines, json) = diff(&d, &[&first.name]);
    assert_eq!(
        sorted(&lines),
        sorted(&["M file /a/b/c/file content,times"])
    );
    assert!(!json.searched);
    // A directory above it renamed afterwards: the place still holds (it
    // names the file's directory by handle, not by path).
    let second = d.create_set();
    fs::rename(live.join("a/b"), live.join("a/renamed")).unwrap();
    let (lines, json) = diff(&d, &[&first.name, &second.name]);
    assert_eq!(
        lines,
        ["M file /a/b/c/file content,times"],
        "at the second set"
    );
    assert!(!json.searched);
    let (lines, _) = diff(&d, &[&first.name]);
    assert_eq!(
        sorted(&lines),
        sorted(&[
            "M directory /a times",
            "R directory /a/b -> /a/renamed",
            "M file /a/renamed/c/file content,times",
        ])
    );
}

#[test]
fn versions_lists_distinct_contents_newest_first_and_follows_renames_and_replacements() {
    let d = Daemon::start(Config::empty().volume("data"));
    let live = d.live("data");
    let ([_, s2, _, s4], v) = editor_story(&d, "data");
    for version in &v.versions {
        for set in &version.sets {
            assert_eq!(
                fs::metadata(&set.path).unwrap().len(),
                version.size,
                "{}",
                set.path
            );
        }
    }

    // Renamed: the file is followed into the sets under its old name.
    fs::create_dir(live.join("archive")).unwrap();
    fs::rename(live.join("notes.txt"), live.join("archive/n.txt")).unwrap();
    let v = versions(&d, &live.join("archive/n.txt"));
    assert_eq!(v.versions.len(), 2, "{v:?}");
    assert_eq!(
        v.versions[1].sets[0].path,
        d.browse(&s4, "data")
            .join("notes.txt")
            .display()
            .to_string()
    );
    // Deleted live: its versions are still found by path.
    let v = versions(&d, &live.join("notes.txt"));
    assert!(v.versions.iter().all(|v| !v.live));
    assert_eq!(v.versions.len(), 2, "{v:?}");
    // `VOLUME/path` and a path in a set's tree name the same file.
    let by_volume = versions(&d, Path::new("data/notes.txt"));
    assert_eq!(by_volume.versions.len(), 2);
    let in_set = versions(&d, &d.browse(&s2, "data").join("notes.txt"));
    assert_eq!(in_set.versions.len(), 2);
}

#[test]
fn diff_and_versions_refuse_bad_input_with_one_line() {
    let d = Daemon::start(Config::empty().volume("data"));
    let live = d.live("data");
    fs::create_dir(live.join("dir")).unwrap();
    let a = d.create_set();
    let b = d.create_set();
    for (args, wanted) in [
        (vec!["diff", "nope"], "no shadow copy set named \"nope\""),
        (vec!["diff", &b.name, &a.name], "give the older set first"),
        (
            vec!["diff", &a.name, "/etc/passwd"],
            "not inside any volume",
        ),
        (vec!["versions", live.to_str().unwrap()], "a volume's root"),
        (vec!["versions", "/etc/passwd"], "not inside any volume"),
        (vec!["versions", "data/.umbra/x"], "umbra's own folder"),
        (
            vec!["versions", "data/../../etc/passwd"],
            "leads out of volume",
        ),
        (
            vec!["versions", "data/never-was"],
            "no such file, live or in any set",
        ),
    ] {
        let out = d.umbra(&args);
        let line = assert_one_line_error(&out, &args.join(" "));
        assert!(line.contains(wanted), "{args:?}: {line}");
    }
    let out = d.umbra(&["versions", live.join("dir").to_str().unwrap()]);
    let line = assert_one_line_error(&out, "versions of a directory");
    assert!(line.contains("directory"), "{line}");
}

#[test]
fn diff_turns_every_set_into_every_later_one_after_random_changes() {
    random_diffs(Config::empty().volume("data"), true);
}

/// The same with the kernel's writeback cache: data reaches umbra late,
/// but every set flushes it first, so the diffs between sets are as
/// exact. (The live end is left out: a diff reads the backing files, which
/// the kernel's cache may not have reached yet, as any reader of them.)
#[test]
fn with_the_writeback_cache_diff_turns_every_set_into_every_later_one() {
    random_diffs(
        Config::empty()
            .volume("data")
            .line("writeback_cache = true"),
        false,
    );
}

fn random_diffs(config: Config, to_live: bool) {
    let d = Daemon::start(config);
    random_history(&d, "data", |set| d.browse(set, "data"), to_live);
}
