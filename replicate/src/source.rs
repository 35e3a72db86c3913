//! The source rustic archives from: one volume of one set, read through
//! the browser mount. Without a parent it walks the set (a stat per
//! entry). With a parent it walks the parent snapshot's trees and merges in
//! umbra's diff between the parent's set and this one: an entry the diff
//! does not name is the parent's node, never stat'ed nor opened (rustic
//! then matches it to itself and copies its content), and only what the
//! diff names (and the directories above it) is read from the set.
//!
//! Entries are produced on a thread of the caller's scope (it reads trees
//! from the repository, which rustic's `'static` source cannot borrow)
//! and handed over through a bounded channel, depth-first and name-sorted
//! as rustic's tree builder needs them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use rustic_core::repofile::{Node, NodeType};
use rustic_core::{
    ErrorKind, IndexedIds, ReadSource, ReadSourceEntry, ReadSourceOpen, Repository, RusticError,
    RusticResult, TreeId,
};
use umbra_fs::{Change, Op};
use umbra_store::FileKind;

use crate::node::{node_of, stable_inode};

/// What one run read and what went wrong, shared by the producer, the
/// openers and the caller.
#[derive(Debug, Default)]
pub struct Counters {
    /// Entries handed to rustic.
    pub entries: AtomicU64,
    /// Regular files among them.
    pub files: AtomicU64,
    /// Everything but directories: what rustic counts as files.
    pub leaves: AtomicU64,
    /// Entries stat'ed in the set (the rest came from the parent).
    pub stats: AtomicU64,
    /// Files opened for reading.
    pub opened: AtomicU64,
    pub bytes_read: AtomicU64,
    /// Entries that could not be read: each one is a hole rustic would
    /// skip silently, so a run with any is not kept.
    pub errors: AtomicU64,
    /// The first error, for the message.
    pub first_error: Mutex<Option<String>>,
}

impl Counters {
    fn fail(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("replicate: {what}");
        if let Ok(mut first) = self.first_error.lock()
            && first.is_none()
        {
            *first = Some(what);
        }
    }
}

/// A file of the set, opened only if rustic finds no parent content for it.
pub struct SetFile {
    path: PathBuf,
    counters: Arc<Counters>,
}

impl ReadSourceOpen for SetFile {
    type Reader = CountingReader;

    fn open(self) -> RusticResult<Self::Reader> {
        self.counters.opened.fetch_add(1, Ordering::Relaxed);
        let opened = if failing(&self.path) {
            Err(io::Error::from_raw_os_error(libc::EIO))
        } else {
            File::open(&self.path)
        };
        match opened {
            Ok(file) => Ok(CountingReader {
                file,
                path: self.path,
                counters: self.counters,
            }),
            Err(e) => {
                let what = format!("opening {}: {e}", self.path.display());
                self.counters.fail(what.clone());
                Err(
                    RusticError::with_source(ErrorKind::InputOutput, "opening `{path}`", e)
                        .attach_context("path", self.path.display().to_string()),
                )
            }
        }
    }
}

/// The tests' way to make one file of a set unreadable (the daemon runs
/// as root and sets are immutable, so nothing else can):
/// `UMBRA_REPLICATE_FAIL_OPEN` names a path relative to the volume.
pub const FAIL_OPEN_ENV: &str = "UMBRA_REPLICATE_FAIL_OPEN";

fn failing(path: &Path) -> bool {
    std::env::var_os(FAIL_OPEN_ENV).is_some_and(|rel| !rel.is_empty() && path.ends_with(rel))
}

/// Counts bytes and failures of one file's reads.
pub struct CountingReader {
    file: File,
    path: PathBuf,
    counters: Arc<Counters>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.file.read(buf) {
            Ok(n) => {
                self.counters
                    .bytes_read
                    .fetch_add(n as u64, Ordering::Relaxed);
                Ok(n)
            }
            Err(e) => {
                self.counters
                    .fail(format!("reading {}: {e}", self.path.display()));
                Err(e)
            }
        }
    }
}

type Entry = RusticResult<ReadSourceEntry<SetFile>>;

/// The receiving end, handed to rustic.
pub struct ChannelSource {
    rx: Mutex<Option<Receiver<Entry>>>,
}

impl ReadSource for ChannelSource {
    type Open = SetFile;
    type Iter = std::sync::mpsc::IntoIter<Entry>;

    fn size(&self) -> RusticResult<Option<u64>> {
        Ok(None)
    }

    fn entries(&self) -> Self::Iter {
        let rx = self.rx.lock().ok().and_then(|mut rx| rx.take());
        // A second call (rustic makes one) gets an empty stream.
        rx.unwrap_or_else(|| sync_channel(0).1).into_iter()
    }
}

/// What the diff says about the paths under the volume's root.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Paths whose entry must be read from the set; `true`: a directory
    /// to be walked whole (added, or the new name of a rename).
    touched: HashMap<PathBuf, bool>,
    /// Directories with a touched path below them: listed from the set.
    dirty: HashSet<PathBuf>,
}

impl Plan {
    /// The plan for `changes` (paths relative to the volume's root).
    pub fn new(changes: &[Change]) -> Plan {
        let mut plan = Plan::default();
        for change in changes {
            let dir = change.kind == FileKind::Directory;
            match change.op {
                Op::Added => plan.touch(&change.path, dir),
                Op::Removed | Op::Modified => plan.touch(&change.path, false),
                Op::Renamed => {
                    plan.touch(&change.path, false);
                    if let Some(to) = &change.to {
                        plan.touch(to, dir);
                    }
                }
            }
        }
        plan
    }

    fn touch(&mut self, path: &Path, whole: bool) {
        let entry = self.touched.entry(path.to_path_buf()).or_insert(false);
        *entry |= whole;
        let mut up = path.parent();
        while let Some(dir) = up {
            if !self.dirty.insert(dir.to_path_buf()) {
                break;
            }
            up = dir.parent();
        }
        // The root is listed whenever anything changed.
        self.dirty.insert(PathBuf::new());
    }
}

/// Where a run reads from and how it names what it reads.
pub struct Walk<'a, S> {
    pub repo: &'a Repository<S>,
    /// The volume in the browser: `<snapshots>/<set>/<volume>`.
    pub root: PathBuf,
    /// The volume's path in the snapshot.
    pub snapshot_path: PathBuf,
    pub device_id: u64,
    pub counters: Arc<Counters>,
    /// The parent snapshot's root tree and what changed since its set.
    pub parent: Option<(TreeId, Plan)>,
}

/// A source and the function that feeds it (to run on a scoped thread).
pub fn channel() -> (ChannelSource, SyncSender<Entry>) {
    let (tx, rx) = sync_channel(1024);
    (
        ChannelSource {
            rx: Mutex::new(Some(rx)),
        },
        tx,
    )
}

/// Stops the walk: rustic stopped reading.
struct Hangup;

impl<S: IndexedIds> Walk<'_, S> {
    /// Sends every entry of the volume, depth-first and name-sorted.
    pub fn run(&self, tx: &SyncSender<Entry>) {
        let _ = self.walk_root(tx);
    }

    fn walk_root(&self, tx: &SyncSender<Entry>) -> Result<(), Hangup> {
        let name = self
            .snapshot_path
            .file_name()
            .map(OsStr::to_os_string)
            .unwrap_or_default();
        let Some(root) = self.stat_node(Path::new(""), &name) else {
            return Ok(());
        };
        self.send(tx, Path::new(""), root)?;
        match &self.parent {
            None => self.walk_set(tx, Path::new("")),
            Some((tree, plan)) => {
                let Some(tree) = self.volume_tree(*tree) else {
                    return Ok(());
                };
                let relinked = self.relinked(plan);
                self.walk_merged(tx, Path::new(""), Some(tree), plan, &relinked)
            }
        }
    }

    /// Sends `node` for `rel`, with an opener for a file.
    fn send(&self, tx: &SyncSender<Entry>, rel: &Path, node: Node) -> Result<(), Hangup> {
        self.counters.entries.fetch_add(1, Ordering::Relaxed);
        if !node.is_dir() {
            self.counters.leaves.fetch_add(1, Ordering::Relaxed);
        }
        let open = node.is_file().then(|| {
            self.counters.files.fetch_add(1, Ordering::Relaxed);
            SetFile {
                path: self.root.join(rel),
                counters: self.counters.clone(),
            }
        });
        let path = if rel.as_os_str().is_empty() {
            self.snapshot_path.clone()
        } else {
            self.snapshot_path.join(rel)
        };
        tx.send(Ok(ReadSourceEntry { path, node, open }))
            .map_err(|_| Hangup)
    }

    /// The node of `rel` as the set has it; a failure is counted and the
    /// entry left out (the run then fails).
    fn stat_node(&self, rel: &Path, name: &OsStr) -> Option<Node> {
        self.counters.stats.fetch_add(1, Ordering::Relaxed);
        let path = self.root.join(rel);
        let node = fs::symlink_metadata(&path)
            .and_then(|meta| node_of(&path, name, &meta, self.device_id));
        match node {
            Ok(node) => Some(node),
            Err(e) => {
                self.counters
                    .fail(format!("reading {}: {e}", path.display()));
                None
            }
        }
    }

    /// The tree of the volume's root in a snapshot whose root tree is
    /// `root`: down the snapshot path's components.
    fn volume_tree(&self, root: TreeId) -> Option<TreeId> {
        let mut tree = root;
        for part in self.snapshot_path.iter().skip(1) {
            let found = self
                .tree(tree, Path::new(part))?
                .remove(part)
                .and_then(|n| n.subtree);
            match found {
                Some(next) => tree = next,
                None => {
                    self.counters.fail(format!(
                        "the parent snapshot has no {}",
                        self.snapshot_path.display()
                    ));
                    return None;
                }
            }
        }
        Some(tree)
    }

    /// The names in the set's directory `rel`, byte-sorted.
    fn listing(&self, rel: &Path) -> Option<Vec<OsString>> {
        let path = self.root.join(rel);
        let read = fs::read_dir(&path).and_then(|dir| {
            dir.map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<Vec<_>>>()
        });
        match read {
            Ok(mut names) => {
                names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
                Some(names)
            }
            Err(e) => {
                self.counters
                    .fail(format!("listing {}: {e}", path.display()));
                None
            }
        }
    }

    /// Every entry under `rel`, read from the set.
    fn walk_set(&self, tx: &SyncSender<Entry>, rel: &Path) -> Result<(), Hangup> {
        let Some(names) = self.listing(rel) else {
            return Ok(());
        };
        for name in names {
            let child = rel.join(&name);
            let Some(node) = self.stat_node(&child, &name) else {
                continue;
            };
            let dir = node.is_dir();
            self.send(tx, &child, node)?;
            if dir {
                self.walk_set(tx, &child)?;
            }
        }
        Ok(())
    }

    /// The stable inodes of changed files with other names: those names,
    /// unchanged in the diff's eyes, must be read again to stay linked.
    fn relinked(&self, plan: &Plan) -> HashSet<u64> {
        plan.touched
            .keys()
            .filter_map(|rel| fs::symlink_metadata(self.root.join(rel)).ok())
            .filter(|meta| meta.is_file() && std::os::unix::fs::MetadataExt::nlink(meta) > 1)
            .map(|meta| stable_inode(std::os::unix::fs::MetadataExt::ino(&meta)))
            .collect()
    }

    fn tree(&self, id: TreeId, rel: &Path) -> Option<BTreeMap<OsString, Node>> {
        match self.repo.get_tree(&id) {
            Ok(tree) => Some(
                tree.nodes
                    .into_iter()
                    .map(|n| (n.name().into_owned(), n))
                    .collect(),
            ),
            Err(e) => {
                self.counters.fail(format!(
                    "reading the parent's tree of {}: {}",
                    rel.display(),
                    e.display_log()
                ));
                None
            }
        }
    }

    /// A directory the diff reaches into: listed from the set; what the
    /// diff names is read from the set, the rest is the parent's.
    fn walk_merged(
        &self,
        tx: &SyncSender<Entry>,
        rel: &Path,
        tree: Option<TreeId>,
        plan: &Plan,
        relinked: &HashSet<u64>,
    ) -> Result<(), Hangup> {
        let Some(names) = self.listing(rel) else {
            return Ok(());
        };
        let mut parent = match tree {
            Some(id) => match self.tree(id, rel) {
                Some(nodes) => nodes,
                None => return Ok(()),
            },
            None => BTreeMap::new(),
        };
        for name in names {
            let child = rel.join(&name);
            let touched = plan.touched.get(&child).copied();
            let old = parent.remove(&name);
            let fresh = touched.is_some() || plan.dirty.contains(&child);
            match old {
                Some(old) if !fresh => self.send_parent(tx, &child, old, relinked)?,
                old => {
                    let Some(node) = self.stat_node(&child, &name) else {
                        continue;
                    };
                    let dir = node.is_dir();
                    self.send(tx, &child, node)?;
                    if !dir {
                        continue;
                    }
                    match old.filter(Node::is_dir).and_then(|o| o.subtree) {
                        Some(subtree) if touched != Some(true) => {
                            self.walk_merged(tx, &child, Some(subtree), plan, relinked)?;
                        }
                        _ => self.walk_set(tx, &child)?,
                    }
                }
            }
        }
        Ok(())
    }

    /// An entry the diff does not reach: the parent's node, and below a
    /// directory the parent's whole subtree.
    fn send_parent(
        &self,
        tx: &SyncSender<Entry>,
        rel: &Path,
        node: Node,
        relinked: &HashSet<u64>,
    ) -> Result<(), Hangup> {
        if node.is_file() && node.meta.links > 1 && relinked.contains(&node.meta.inode) {
            let name = node.name().into_owned();
            if let Some(node) = self.stat_node(rel, &name) {
                self.send(tx, rel, node)?;
            }
            return Ok(());
        }
        let subtree = node.subtree.filter(|_| node.node_type == NodeType::Dir);
        self.send(tx, rel, node)?;
        if let Some(id) = subtree {
            let Some(nodes) = self.tree(id, rel) else {
                return Ok(());
            };
            for (name, child) in nodes {
                self.send_parent(tx, &rel.join(name), child, relinked)?;
            }
        }
        Ok(())
    }
}
