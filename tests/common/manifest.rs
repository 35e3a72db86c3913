//! A manifest: everything a shadow copy promises to keep about a tree
//! (invariant 1), captured with lstat and never following a symlink, and a
//! readable diff of two manifests. It knows nothing of umbra: the same code
//! captures a live mount, a snapshot, a backing directory or a plain
//! reference directory.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::sys;

/// Content is also hashed in blocks of this size, so that a diff can say
/// which blocks differ (umbra preserves 64 KiB blocks).
pub const BLOCK: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Content {
    pub hash: blake3::Hash,
    pub blocks: Vec<blake3::Hash>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Full st_mode, type bits included.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// st_nlink of everything but directories (whose count is a property of
    /// the filesystem, not of the tree).
    pub nlink: Option<u64>,
    /// Files and symlinks; a directory's size is a property of the filesystem.
    pub size: Option<u64>,
    pub mtime: (i64, i64),
    pub content: Option<Content>,
    pub target: Option<OsString>,
    /// `user.*` xattrs only.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The other paths in the tree that share this inode, sorted; empty when
    /// there are none. Paths, not inode numbers, so trees compare.
    pub links: Vec<PathBuf>,
    /// Directories: the sorted entry names.
    pub entries: Option<Vec<OsString>>,
}

/// What a comparison looks at besides structure, content, modes, owners,
/// xattrs, link targets and hard-link groups (always compared).
#[derive(Clone, Copy, Debug)]
pub struct Compare {
    pub mtime: bool,
    pub nlink: bool,
}

impl Compare {
    /// Everything a shadow copy must keep.
    pub const EXACT: Compare = Compare {
        mtime: true,
        nlink: true,
    };
    /// The live mount against a native reference tree built at other instants.
    pub const IGNORE_TIMES: Compare = Compare {
        mtime: false,
        nlink: true,
    };
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Relative paths; the root itself is ".".
    pub entries: BTreeMap<PathBuf, Entry>,
}

impl Manifest {
    /// Captures the tree under `root`; panics with the path on any error.
    pub fn capture(root: &Path) -> Manifest {
        Self::try_capture(root, &[]).unwrap_or_else(|e| panic!("capturing {}: {e}", root.display()))
    }

    /// Captures the tree under `root`, leaving out the root-level names in
    /// `exclude` (e.g. the daemon's hidden folder in a backing directory).
    pub fn capture_excluding(root: &Path, exclude: &[&str]) -> Manifest {
        Self::try_capture(root, exclude)
            .unwrap_or_else(|e| panic!("capturing {}: {e}", root.display()))
    }

    pub fn try_capture(root: &Path, exclude: &[&str]) -> io::Result<Manifest> {
        let mut entries = BTreeMap::new();
        let mut inodes: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
        let mut stack = vec![PathBuf::from(".")];
        while let Some(rel) = stack.pop() {
            let full = if rel == Path::new(".") {
                root.to_path_buf()
            } else {
                root.join(&rel)
            };
            let meta = fs::symlink_metadata(&full).map_err(|e| annotate(e, &rel))?;
            let ft = meta.file_type();
            let kind = if ft.is_file() {
                Kind::File
            } else if ft.is_dir() {
                Kind::Dir
            } else if ft.is_symlink() {
                Kind::Symlink
            } else if ft.is_fifo() {
                Kind::Fifo
            } else {
                Kind::Other
            };
            let mut entry = Entry {
                kind,
                mode: meta.mode(),
                uid: meta.uid(),
                gid: meta.gid(),
                nlink: (kind != Kind::Dir).then_some(meta.nlink()),
                size: matches!(kind, Kind::File | Kind::Symlink).then_some(meta.size()),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                content: None,
                target: None,
                xattrs: user_xattrs(&full)
                    .map_err(|e| annotate(io::Error::from_raw_os_error(e), &rel))?,
                links: Vec::new(),
                entries: None,
            };
            match kind {
                Kind::File => {
                    entry.content = Some(hash_file(&full).map_err(|e| annotate(e, &rel))?)
                }
                Kind::Symlink => {
                    entry.target = Some(fs::read_link(&full).map_err(|e| annotate(e, &rel))?.into())
                }
                Kind::Dir => {
                    let mut names = Vec::new();
                    for dirent in fs::read_dir(&full).map_err(|e| annotate(e, &rel))? {
                        let name = dirent.map_err(|e| annotate(e, &rel))?.file_name();
                        if rel == Path::new(".")
                            && exclude.iter().any(|x| name.as_bytes() == x.as_bytes())
                        {
                            continue;
                        }
                        names.push(name);
                    }
                    names.sort();
                    for name in names.iter().rev() {
                        stack.push(if rel == Path::new(".") {
                            PathBuf::from(name)
                        } else {
                            rel.join(name)
                        });
                    }
                    entry.entries = Some(names);
                }
                Kind::Fifo | Kind::Other => {}
            }
            if kind != Kind::Dir {
                inodes
                    .entry((meta.dev(), meta.ino()))
                    .or_default()
                    .push(rel.clone());
            }
            entries.insert(rel, entry);
        }
        for group in inodes.into_values().filter(|g| g.len() > 1) {
            let mut sorted = group.clone();
            sorted.sort();
            for path in &group {
                let others = sorted.iter().filter(|p| *p != path).cloned().collect();
                entries
                    .get_mut(path)
                    .expect("grouped paths were captured")
                    .links = others;
            }
        }
        Ok(Manifest { entries })
    }

    /// The number of entries, root included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, rel: &str) -> Option<&Entry> {
        self.entries.get(Path::new(rel))
    }

    /// Total bytes of regular files.
    pub fn file_bytes(&self) -> u64 {
        self.entries
            .values()
            .filter(|e| e.kind == Kind::File)
            .filter_map(|e| e.size)
            .sum()
    }
}

fn annotate(err: io::Error, rel: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", rel.display()))
}

fn user_xattrs(path: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, sys::Errno> {
    let mut out = BTreeMap::new();
    for name in sys::llistxattr(path)? {
        if name.starts_with(b"user.") {
            out.insert(name.clone(), sys::lgetxattr(path, &name)?);
        }
    }
    Ok(out)
}

/// blake3 of the whole content and of each BLOCK-sized piece.
pub fn hash_file(path: &Path) -> io::Result<Content> {
    let mut file = fs::File::open(path)?;
    let mut whole = blake3::Hasher::new();
    let mut blocks = Vec::new();
    let mut buf = vec![0u8; BLOCK];
    loop {
        let mut filled = 0;
        while filled < BLOCK {
            let n = file.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        whole.update(&buf[..filled]);
        blocks.push(blake3::hash(&buf[..filled]));
        if filled < BLOCK {
            break;
        }
    }
    Ok(Content {
        hash: whole.finalize(),
        blocks,
    })
}

struct Mode(u32);

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:o}", self.0)
    }
}

fn show_bytes(b: &[u8]) -> String {
    if b.len() > 40 {
        format!(
            "{:?}...({} bytes)",
            String::from_utf8_lossy(&b[..40]),
            b.len()
        )
    } else {
        format!("{:?}", String::from_utf8_lossy(b))
    }
}

fn show_names(names: &[OsString]) -> String {
    let shown: Vec<_> = names
        .iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    format!("[{}]", shown.join(", "))
}

/// Every difference between `expected` and `actual`, exact (times and link
/// counts included).
pub fn diff(expected: &Manifest, actual: &Manifest) -> Vec<String> {
    diff_with(expected, actual, Compare::EXACT)
}

/// Every difference between `expected` and `actual`, one readable line each.
pub fn diff_with(expected: &Manifest, actual: &Manifest, cmp: Compare) -> Vec<String> {
    let mut out = Vec::new();
    for (path, want) in &expected.entries {
        let p = path.display();
        let Some(got) = actual.entries.get(path) else {
            out.push(format!("{p}: missing (expected a {:?})", want.kind));
            continue;
        };
        if want.kind != got.kind {
            out.push(format!(
                "{p}: is a {:?}, expected a {:?}",
                got.kind, want.kind
            ));
            continue;
        }
        if want.mode != got.mode {
            out.push(format!(
                "{p}: mode {} expected {}",
                Mode(got.mode),
                Mode(want.mode)
            ));
        }
        if (want.uid, want.gid) != (got.uid, got.gid) {
            out.push(format!(
                "{p}: owner {}:{} expected {}:{}",
                got.uid, got.gid, want.uid, want.gid
            ));
        }
        if cmp.nlink && want.nlink != got.nlink {
            out.push(format!(
                "{p}: nlink {:?} expected {:?}",
                got.nlink, want.nlink
            ));
        }
        if want.size != got.size {
            out.push(format!("{p}: size {:?} expected {:?}", got.size, want.size));
        }
        if cmp.mtime && want.mtime != got.mtime {
            out.push(format!(
                "{p}: mtime {}.{:09} expected {}.{:09}",
                got.mtime.0, got.mtime.1, want.mtime.0, want.mtime.1
            ));
        }
        if let (Some(w), Some(g)) = (&want.content, &got.content)
            && w.hash != g.hash
        {
            let n = w.blocks.len().max(g.blocks.len());
            let differing: Vec<usize> = (0..n)
                .filter(|i| w.blocks.get(*i) != g.blocks.get(*i))
                .collect();
            let shown: Vec<String> = differing.iter().take(16).map(|i| i.to_string()).collect();
            out.push(format!(
                "{p}: content differs in {} of {n} 64 KiB blocks: [{}{}]",
                differing.len(),
                shown.join(", "),
                if differing.len() > 16 { ", ..." } else { "" }
            ));
        }
        if want.target != got.target {
            out.push(format!(
                "{p}: symlink target {:?} expected {:?}",
                got.target, want.target
            ));
        }
        if want.xattrs != got.xattrs {
            for (name, value) in &want.xattrs {
                match got.xattrs.get(name) {
                    None => out.push(format!("{p}: xattr {} missing", show_bytes(name))),
                    Some(v) if v != value => out.push(format!(
                        "{p}: xattr {} is {} expected {}",
                        show_bytes(name),
                        show_bytes(v),
                        show_bytes(value)
                    )),
                    Some(_) => {}
                }
            }
            for name in got.xattrs.keys().filter(|n| !want.xattrs.contains_key(*n)) {
                out.push(format!("{p}: unexpected xattr {}", show_bytes(name)));
            }
        }
        if want.links != got.links {
            out.push(format!(
                "{p}: hard-linked with {:?} expected with {:?}",
                got.links, want.links
            ));
        }
        if let (Some(w), Some(g)) = (&want.entries, &got.entries)
            && w != g
        {
            let missing: Vec<OsString> = w.iter().filter(|n| !g.contains(n)).cloned().collect();
            let extra: Vec<OsString> = g.iter().filter(|n| !w.contains(n)).cloned().collect();
            out.push(format!(
                "{p}: directory entries differ: missing {}, unexpected {}",
                show_names(&missing),
                show_names(&extra)
            ));
        }
    }
    for (path, got) in &actual.entries {
        if !expected.entries.contains_key(path) {
            out.push(format!("{}: unexpected {:?}", path.display(), got.kind));
        }
    }
    out
}

/// Formats differences for a panic message, at most 60 lines.
pub fn explain(diffs: &[String]) -> String {
    let mut text: Vec<String> = diffs.iter().take(60).map(|d| format!("  {d}")).collect();
    if diffs.len() > 60 {
        text.push(format!("  ... and {} more", diffs.len() - 60));
    }
    text.join("\n")
}

/// Panics naming every difference, exact comparison.
#[track_caller]
pub fn assert_same(expected: &Manifest, actual: &Manifest, context: &str) {
    assert_same_with(expected, actual, Compare::EXACT, context);
}

#[track_caller]
pub fn assert_same_with(expected: &Manifest, actual: &Manifest, cmp: Compare, context: &str) {
    let diffs = diff_with(expected, actual, cmp);
    assert!(
        diffs.is_empty(),
        "{context}: {} difference(s) (expected vs actual):\n{}",
        diffs.len(),
        explain(&diffs)
    );
}

/// Inode numbers of every path under `root` (lstat), root included as ".".
pub fn inode_map(root: &Path) -> io::Result<BTreeMap<PathBuf, u64>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::from(".")];
    while let Some(rel) = stack.pop() {
        let full = if rel == Path::new(".") {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let meta = fs::symlink_metadata(&full).map_err(|e| annotate(e, &rel))?;
        if meta.is_dir() {
            for dirent in fs::read_dir(&full).map_err(|e| annotate(e, &rel))? {
                let name = dirent?.file_name();
                stack.push(if rel == Path::new(".") {
                    PathBuf::from(name)
                } else {
                    rel.join(name)
                });
            }
        }
        out.insert(rel, meta.ino());
    }
    Ok(out)
}
