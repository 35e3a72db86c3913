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

use serde::Deserialize;

use common::ops::Rng;
use common::{Config, Daemon, assert_one_line_error};

#[derive(Debug, Deserialize)]
struct DiffJson {
    changes: Vec<ChangeJson>,
    examined: u64,
    searched: bool,
}

#[derive(Debug, Deserialize)]
struct ChangeJson {
    change: String,
    kind: String,
    volume: String,
    path: String,
    to: Option<String>,
    #[serde(default)]
    what: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct VersionsJson {
    versions: Vec<VersionJson>,
}

#[derive(Debug, Deserialize)]
struct VersionJson {
    blake3: String,
    size: u64,
    live: bool,
    sets: Vec<VersionSetJson>,
}

#[derive(Debug, Deserialize)]
struct VersionSetJson {
    name: String,
    path: String,
}

/// `umbra diff ARGS --json`, each change as `MARK KIND PATH[ -> TO][ WHAT]`
/// with paths relative to the volume's live mount.
fn diff(d: &Daemon, args: &[&str]) -> (Vec<String>, DiffJson) {
    let mut all = vec!["diff"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = d.umbra_ok(&all);
    let parsed: DiffJson = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let lines = parsed
        .changes
        .iter()
        .map(|c| {
            let mount = d.live(&c.volume);
            let rel = |p: &str| {
                let rel = Path::new(p).strip_prefix(&mount).unwrap();
                format!("/{}", rel.display())
            };
            let mut line = format!("{} {} {}", c.change, c.kind, rel(&c.path));
            if let Some(to) = &c.to {
                line += &format!(" -> {}", rel(to));
            }
            if !c.what.is_empty() {
                line += &format!(" {}", c.what.join(","));
            }
            line
        })
        .collect();
    (lines, parsed)
}

fn versions(d: &Daemon, path: &Path) -> VersionsJson {
    let out = d.umbra_ok(&["versions", path.to_str().unwrap(), "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
}

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

fn sorted<S: AsRef<str>>(lines: &[S]) -> Vec<String> {
    let mut v: Vec<String> = lines.iter().map(|s| s.as_ref().to_string()).collect();
    v.sort();
    v
}

fn xattr(path: &Path) {
    let status = std::process::Command::new("setfattr")
        .args(["-n", "user.note", "-v", "hi"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "setfattr");
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
    write(&live.join("notes.txt"), "v1");
    let s1 = d.create_set();
    write(&live.join("notes.txt"), "v2, longer");
    let s2 = d.create_set();
    // Unchanged in s3: the same version as s2.
    let s3 = d.create_set();
    // An editor's save: a new file renamed over the old one.
    write(&live.join(".notes.txt.swp"), "v1");
    fs::rename(live.join(".notes.txt.swp"), live.join("notes.txt")).unwrap();
    let s4 = d.create_set();
    write(&live.join("notes.txt"), "v4 live");

    let v = versions(&d, &live.join("notes.txt"));
    let summary: Vec<(u64, bool, Vec<&str>)> = v
        .versions
        .iter()
        .map(|v| {
            (
                v.size,
                v.live,
                v.sets.iter().map(|s| s.name.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (7, true, vec![]),
            // Same bytes as s1's: one version, held by both.
            (2, false, vec![s4.name.as_str(), s1.name.as_str()]),
            (10, false, vec![s3.name.as_str(), s2.name.as_str()]),
        ]
    );
    assert_eq!(
        v.versions[0].blake3,
        blake3::hash(b"v4 live").to_hex().to_string()
    );
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

/// Uniform in `0..n` (0 when n is 0), as an index.
fn below(rng: &mut Rng, n: usize) -> usize {
    rng.below(n.max(1) as u64) as usize
}

/// Every path of a tree (relative, "" for the root) with what a diff
/// compares: kind, content hash, mode, owner, mtime, links, user xattrs.
fn walk(root: &Path) -> std::collections::BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let path = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let meta = fs::symlink_metadata(&path).unwrap();
        let kind = if meta.is_dir() {
            "directory"
        } else if meta.file_type().is_symlink() {
            "symlink"
        } else {
            "file"
        };
        let content = match kind {
            "file" => blake3::hash(&fs::read(&path).unwrap()).to_hex()[..12].to_string(),
            _ => String::new(),
        };
        let links = if meta.is_dir() { 0 } else { meta.nlink() };
        let xattrs = std::process::Command::new("getfattr")
            .args(["-h", "-d", "--absolute-names"])
            .arg(&path)
            .output()
            .unwrap()
            .stdout;
        let xattrs = String::from_utf8_lossy(&xattrs)
            .lines()
            .filter(|l| l.starts_with("user."))
            .collect::<Vec<_>>()
            .join(";");
        out.insert(
            rel.clone(),
            format!(
                "{kind}|{content}|{:o}|{}:{}|{}.{}|{links}|{xattrs}|{}",
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ino()
            ),
        );
        if meta.is_dir() {
            for entry in fs::read_dir(&path).unwrap() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                if rel.is_empty() && name == ".umbra" {
                    continue;
                }
                stack.push(if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                });
            }
        }
    }
    out
}

/// Which attributes differ between two `walk` descriptions, as diff names
/// them.
fn aspects(a: &str, b: &str) -> Vec<String> {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.split('|').collect(), b.split('|').collect());
    // The last field, the inode number, tells hard links apart; not compared.
    let names = [
        "kind", "content", "mode", "owner", "times", "links", "xattrs",
    ];
    let mut out: Vec<String> = (1..names.len())
        .filter(|&i| a[i] != b[i])
        .map(|i| names[i].to_string())
        .collect();
    out.sort();
    out
}

/// Checks one diff against the two trees: the paths of `before` moved by
/// the diff's R, less its -, plus its +, are the paths of `after`; and
/// every path there at both ends as the same file differs in exactly the
/// aspects its M line names.
fn check_diff(
    lines: &[String],
    before: &std::collections::BTreeMap<String, String>,
    after: &std::collections::BTreeMap<String, String>,
    context: &str,
) {
    use std::collections::{BTreeMap, BTreeSet};
    let strip = |p: &str| p.trim_start_matches('/').to_string();
    let (mut removed, mut added) = (BTreeSet::new(), BTreeSet::new());
    let mut renamed: BTreeMap<String, String> = BTreeMap::new();
    let mut modified: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines {
        let mut parts = line.splitn(3, ' ');
        let (mark, _kind, rest) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        match mark {
            "-" => {
                removed.insert(strip(rest));
            }
            "+" => {
                added.insert(strip(rest));
            }
            "R" => {
                let (old, new) = rest.split_once(" -> ").unwrap();
                renamed.insert(strip(old), strip(new));
            }
            "M" => {
                let (path, what) = rest.rsplit_once(' ').unwrap();
                let mut what: Vec<String> = what.split(',').map(String::from).collect();
                what.sort();
                modified.insert(strip(path), what);
            }
            other => panic!("{context}: mark {other}"),
        }
    }
    // Where each path of `before` went.
    let image = |p: &str| -> Option<String> {
        if removed.contains(p) && !renamed.contains_key(p) {
            return None;
        }
        let mut prefix = p.to_string();
        loop {
            if let Some(to) = renamed.get(&prefix) {
                let rest = &p[prefix.len()..];
                return Some(format!("{to}{rest}"));
            }
            if removed.contains(&prefix) {
                return None;
            }
            match prefix.rfind('/') {
                Some(i) => prefix.truncate(i),
                None if !prefix.is_empty() => prefix.clear(),
                None => return Some(p.to_string()),
            }
        }
    };
    let mut expected: BTreeSet<String> = before.keys().filter_map(|p| image(p)).collect();
    expected.extend(added.iter().cloned());
    let actual: BTreeSet<String> = after.keys().cloned().collect();
    assert_eq!(
        expected.symmetric_difference(&actual).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "{context}: the diff does not turn the old tree into the new one\n{lines:#?}"
    );
    for (old, desc) in before {
        let Some(new) = image(old) else { continue };
        if added.contains(&new) {
            continue; // the name now holds another file
        }
        let Some(now) = after.get(&new) else { continue };
        let differs = aspects(desc, now);
        let mut listed = modified.get(&new).cloned().unwrap_or_default();
        // A file with several links is named under one of them, as zfs
        // diff does: any name of the same inode will do.
        if listed.is_empty() && !differs.is_empty() {
            let ino = now.rsplit('|').next();
            if let Some(other) = after
                .iter()
                .filter(|(p, d)| d.rsplit('|').next() == ino && modified.contains_key(*p))
                .map(|(p, _)| p)
                .next()
            {
                listed = modified[other].clone();
            }
        }
        assert_eq!(
            differs, listed,
            "{context}: {old} -> {new}: {desc} vs {now}\n{lines:#?}"
        );
    }
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
    let seed = std::env::var("UMBRA_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("UMBRA_DIFF_SEED={seed}");
    let mut rng = Rng::new(seed);
    let d = Daemon::start(config);
    let live = d.live("data");
    let mut sets = Vec::new();
    let mut trees = Vec::new();
    for step in 0..240 {
        random_change(&mut rng, &live, step);
        if step % 24 == 23 {
            let set = d.create_set();
            trees.push(walk(&d.browse(&set, "data")));
            sets.push(set);
        }
    }
    let now = walk(&live);
    for (i, a) in sets.iter().enumerate() {
        if to_live {
            let (lines, _) = diff(&d, &[&a.name]);
            check_diff(
                &lines,
                &trees[i],
                &now,
                &format!("seed {seed}: {} to live", a.name),
            );
        }
        for (j, b) in sets.iter().enumerate().skip(i + 1) {
            let (lines, _) = diff(&d, &[&a.name, &b.name]);
            check_diff(
                &lines,
                &trees[i],
                &trees[j],
                &format!("seed {seed}: {} to {}", a.name, b.name),
            );
        }
    }
}

/// One random change of the tree under `live`: creates, writes, renames
/// (over files too), links, removes (whole trees too), attribute changes.
fn random_change(rng: &mut Rng, live: &Path, step: usize) {
    use std::os::unix::fs::MetadataExt;
    let all: Vec<std::path::PathBuf> = {
        let mut v = Vec::new();
        let mut stack = vec![live.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if fs::symlink_metadata(&p).unwrap().is_dir() {
                    stack.push(p.clone());
                }
                v.push(p);
            }
        }
        v.sort();
        v
    };
    let dirs: Vec<std::path::PathBuf> = std::iter::once(live.to_path_buf())
        .chain(
            all.iter()
                .filter(|p| p.is_dir() && !p.is_symlink())
                .cloned(),
        )
        .collect();
    let files: Vec<&std::path::PathBuf> = all
        .iter()
        .filter(|p| fs::symlink_metadata(p).unwrap().is_file())
        .collect();
    let dir = dirs[below(rng, dirs.len())].clone();
    let fresh = dir.join(format!("n{step}"));
    let pick = |rng: &mut Rng| -> Option<std::path::PathBuf> {
        (!all.is_empty()).then(|| all[below(rng, all.len())].clone())
    };
    match below(rng, 12) {
        0 | 1 => write(&fresh, &"x".repeat(below(rng, 200_000))),
        2 => fs::create_dir(&fresh).unwrap(),
        3 => {
            if let Some(f) = files.get(below(rng, files.len())) {
                let data = vec![b'a' + (step % 26) as u8; below(rng, 70_000) + 1];
                let offset = below(rng, 150_000) as u64;
                let file = fs::OpenOptions::new().write(true).open(f).unwrap();
                std::os::unix::fs::FileExt::write_all_at(&file, &data, offset).unwrap();
            }
        }
        4 => {
            if let Some(from) = pick(rng) {
                // Over an existing file sometimes; never into itself.
                let to = if below(rng, 3) == 0 && !files.is_empty() {
                    files[below(rng, files.len())].clone()
                } else {
                    fresh.clone()
                };
                if !(to.starts_with(&from) || from.is_dir() && to.is_file()) {
                    let _ = fs::rename(&from, &to);
                }
            }
        }
        5 => {
            if let Some(f) = files.get(below(rng, files.len())) {
                fs::hard_link(f, &fresh).unwrap();
            }
        }
        6 => symlink(format!("t{step}"), &fresh).unwrap(),
        7 => {
            if let Some(p) = pick(rng) {
                if p.is_dir() && !p.is_symlink() {
                    fs::remove_dir_all(&p).unwrap();
                } else {
                    fs::remove_file(&p).unwrap();
                }
            }
        }
        8 => {
            if let Some(p) = pick(rng).filter(|p| !p.is_symlink()) {
                let mode = fs::metadata(&p).unwrap().mode() ^ 0o040;
                fs::set_permissions(&p, fs::Permissions::from_mode(mode & 0o7777)).unwrap();
            }
        }
        9 => {
            if let Some(p) = pick(rng) {
                std::os::unix::fs::lchown(&p, Some(below(rng, 3) as u32 + 1000), None).unwrap();
            }
        }
        10 => {
            if let Some(p) = pick(rng).filter(|p| !p.is_symlink()) {
                let status = std::process::Command::new("setfattr")
                    .args(["-n", "user.k", "-v", &format!("v{step}")])
                    .arg(&p)
                    .status()
                    .unwrap();
                assert!(status.success());
            }
        }
        _ => {
            if let Some(f) = files.get(below(rng, files.len())) {
                let file = fs::OpenOptions::new().write(true).open(f).unwrap();
                file.set_len(below(rng, 100_000) as u64).unwrap();
            }
        }
    }
}
