//! What the diff and versions tests share, whatever the provider: the
//! `--json` answers, `diff` as `MARK KIND PATH` lines, a tree's walk with
//! what a diff compares, the check that a diff turns one walked tree into
//! another, and the random changes the model tests make.

#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use serde::Deserialize;

use super::ops::Rng;
use super::{Daemon, SetJson};

#[derive(Debug, Deserialize)]
pub struct DiffJson {
    pub changes: Vec<ChangeJson>,
    pub examined: u64,
    pub searched: bool,
}

#[derive(Debug, Deserialize)]
pub struct ChangeJson {
    pub change: String,
    pub kind: String,
    pub volume: String,
    pub path: String,
    pub to: Option<String>,
    #[serde(default)]
    pub what: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct VersionsJson {
    pub versions: Vec<VersionJson>,
}

#[derive(Debug, Deserialize)]
pub struct VersionJson {
    pub blake3: String,
    pub size: u64,
    pub live: bool,
    pub sets: Vec<VersionSetJson>,
}

#[derive(Debug, Deserialize)]
pub struct VersionSetJson {
    pub name: String,
    pub path: String,
}

/// `umbra diff ARGS --json`, each change as `MARK KIND PATH[ -> TO][ WHAT]`
/// with paths relative to the volume's live mount.
pub fn diff(d: &Daemon, args: &[&str]) -> (Vec<String>, DiffJson) {
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

pub fn versions(d: &Daemon, path: &Path) -> VersionsJson {
    let out = d.umbra_ok(&["versions", path.to_str().unwrap(), "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

pub fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
}

pub fn sorted<S: AsRef<str>>(lines: &[S]) -> Vec<String> {
    let mut v: Vec<String> = lines.iter().map(|s| s.as_ref().to_string()).collect();
    v.sort();
    v
}

pub fn xattr(path: &Path) {
    let status = std::process::Command::new("setfattr")
        .args(["-n", "user.note", "-v", "hi"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "setfattr");
}

/// Uniform in `0..n` (0 when n is 0), as an index.
pub fn below(rng: &mut Rng, n: usize) -> usize {
    rng.below(n.max(1) as u64) as usize
}

/// Every path of a tree (relative, "" for the root) with what a diff
/// compares: kind, content hash, mode, owner, mtime, links, user xattrs.
pub fn walk(root: &Path) -> std::collections::BTreeMap<String, String> {
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
pub fn aspects(a: &str, b: &str) -> Vec<String> {
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
pub fn check_diff(
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

/// One random change of the tree under `live` (never umbra's own folder):
/// creates, writes, renames (over files too), links, removes (whole trees
/// too), attribute changes.
pub fn random_change(rng: &mut Rng, live: &Path, step: usize) {
    use std::os::unix::fs::MetadataExt;
    let all: Vec<std::path::PathBuf> = {
        let mut v = Vec::new();
        let mut stack = vec![live.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                // umbra's own folder, in a volume used directly (btrfs).
                if p == live.join(".umbra") {
                    continue;
                }
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

/// The model test of diff: 240 random changes of `volume`'s live tree,
/// a set every 24, each set's tree (at `image(set)`) walked when it is
/// made; then every diff between two sets, and from each set to the live
/// volume when `to_live`, must turn the older tree into the newer.
/// `UMBRA_DIFF_SEED=N` replays a run (the seed is printed).
pub fn random_history(
    d: &Daemon,
    volume: &str,
    image: impl Fn(&SetJson) -> std::path::PathBuf,
    to_live: bool,
) {
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
    let live = d.live(volume);
    let mut sets = Vec::new();
    let mut trees = Vec::new();
    for step in 0..240 {
        random_change(&mut rng, &live, step);
        if step % 24 == 23 {
            let set = d.create_set();
            trees.push(walk(&image(&set)));
            sets.push(set);
        }
    }
    let now = walk(&live);
    for (i, a) in sets.iter().enumerate() {
        if to_live {
            let (lines, _) = diff(d, &[&a.name]);
            check_diff(
                &lines,
                &trees[i],
                &now,
                &format!("seed {seed}: {} to live", a.name),
            );
        }
        for (j, b) in sets.iter().enumerate().skip(i + 1) {
            let (lines, _) = diff(d, &[&a.name, &b.name]);
            check_diff(
                &lines,
                &trees[i],
                &trees[j],
                &format!("seed {seed}: {} to {}", a.name, b.name),
            );
        }
    }
}

/// The story every provider's `versions` test starts with: `notes.txt`
/// written as "v1" (set 1), "v2, longer" (sets 2 and 3, unchanged in
/// between), replaced by an editor's save (a new file renamed over it)
/// with v1's bytes (set 4), then edited live. `versions` lists the live
/// bytes, then v1's (held by sets 4 and 1), then v2's (sets 3 and 2).
/// Returns the sets, oldest first, and the answer.
pub fn editor_story(d: &Daemon, volume: &str) -> ([SetJson; 4], VersionsJson) {
    let live = d.live(volume);
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

    let v = versions(d, &live.join("notes.txt"));
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
    ([s1, s2, s3, s4], v)
}
