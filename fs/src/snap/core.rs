//! The browser's logic, independent of FUSE. Every object of a set is
//! resolved as the copy-on-write model says: the pre-image record with the
//! smallest `hi >= e`, else the live object, found by name in its live
//! parent or by its recorded file handle. What is resolved is cached: a
//! shadow copy never changes. Nothing here is per open file: the kernel
//! reads and lists by inode (no OPEN, no OPENDIR), and every cache is
//! bounded; the live descriptors and files it keeps open are sized by the
//! process's descriptor budget (fds.rs).
//!
//! A tree volume (a provider's whole read-only copy, `TreeImages`) shows
//! beside the copy-on-write ones; everything under it is served from its
//! image by descriptor (trees.rs), through the same inode table and caches.
//!
//! Locking: an object's read lock and the deletion gate are taken after
//! every live descriptor a step needs has been found, never around the
//! search (which lists parents under their own locks): std's RwLock may
//! block a second read lock behind a waiting writer.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, RwLock};

use lru::LruCache;
use umbra_store::{BLOCK_SIZE, DirEntry, FileKind, SetId, SetInfo, Store, Timestamp, VolumeId};

use super::ahead::{self, Ahead, Job};
use super::inodes::{Inodes, LATEST, Node, ObjectNode, ROOT};
use crate::attr::Attr;
use crate::backing;
use crate::{FsError, HIDDEN_DIR, Result, TreeImages, Volume};

const ATTRS: usize = 64 * 1024;
/// Directory listings are kept up to this many entries in all.
const DIR_ENTRIES: usize = 256 * 1024;

/// What the browser tells the kernel (through the FUSE mount).
pub(crate) enum Kernel<'a> {
    /// Forget a name in a directory.
    ForgetEntry(u64, &'a OsStr),
    /// Forget an inode's attributes and cached pages (a directory's
    /// cached listing).
    ForgetInode(u64),
}

/// Sends a message to the kernel.
pub(crate) type Notify = Box<dyn Fn(Kernel<'_>) + Send + Sync>;

/// One entry of a directory as the browser lists it; `offset` is where the
/// next one starts.
pub(crate) struct Item<'a> {
    pub offset: u64,
    pub ino: u64,
    pub kind: FileKind,
    pub name: &'a OsStr,
    /// With readdirplus only.
    pub attr: Option<Attr>,
}

/// Directory listings by inode, bounded by their entries in all.
struct Dirs {
    lru: LruCache<u64, Arc<Vec<DirEntry>>>,
    entries: usize,
}

impl Dirs {
    fn put(&mut self, ino: u64, list: Arc<Vec<DirEntry>>) {
        self.entries += list.len();
        if let Some(old) = self.lru.put(ino, list) {
            self.entries -= old.len();
        }
        while self.entries > DIR_ENTRIES && self.lru.len() > 1 {
            match self.lru.pop_lru() {
                Some((_, old)) => self.entries -= old.len(),
                None => break,
            }
        }
    }
}

pub struct Browser {
    store: Arc<Store>,
    volumes: HashMap<VolumeId, Arc<Volume>>,
    /// Volumes whose sets are whole read-only trees (btrfs snapshots).
    pub(super) trees: HashMap<VolumeId, Arc<dyn TreeImages>>,
    pub(super) sets: RwLock<Vec<SetInfo>>,
    pub(super) inodes: Inodes,
    pub(super) attrs: Mutex<LruCache<u64, Attr>>,
    dirs: Mutex<Dirs>,
    /// O_PATH descriptors, of live objects and of tree images' entries.
    pub(super) live_fds: Mutex<LruCache<u64, Arc<OwnedFd>>>,
    /// Files open for reading, live ones and tree images' ones.
    pub(super) live_files: Mutex<LruCache<u64, Arc<File>>>,
    notify: Mutex<Option<Notify>>,
    ahead: Ahead,
    /// The read-ahead thread's queue, until the thread takes it.
    ahead_jobs: Mutex<Option<Receiver<Job>>>,
    /// When the list of sets last changed: the top directory's times.
    changed: Mutex<Timestamp>,
    /// Held through a whole refresh. Two at once (an eviction's, spawned,
    /// and the new set's own) could read the store in one order and install
    /// in the other, leaving the new set out of the browser.
    refreshing: Mutex<()>,
}

pub(super) fn errno(e: i32) -> FsError {
    FsError::from_errno(e)
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn lru<K: std::hash::Hash + Eq, V>(n: usize) -> Mutex<LruCache<K, V>> {
    Mutex::new(LruCache::new(
        NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN),
    ))
}

fn now() -> Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        secs: now.as_secs() as i64,
        nanos: now.subsec_nanos(),
    }
}

/// Drops every cached value of a deleted set's inodes.
fn purge<V>(cache: &Mutex<LruCache<u64, V>>, gone: impl Fn(u64) -> bool) {
    let mut cache = lock(cache);
    let doomed: Vec<u64> = cache.iter().map(|(k, _)| *k).filter(|k| gone(*k)).collect();
    for k in doomed {
        cache.pop(&k);
    }
}

impl Browser {
    /// A browser of the sets of `volumes` (copy-on-write) and `trees`.
    pub fn new(
        store: Arc<Store>,
        volumes: Vec<Arc<Volume>>,
        trees: Vec<Arc<dyn TreeImages>>,
    ) -> Result<Arc<Browser>> {
        let sets = store.sets()?;
        let (ahead, ahead_jobs) = Ahead::new();
        Ok(Arc::new(Browser {
            store,
            volumes: volumes.into_iter().map(|v| (v.id(), v)).collect(),
            trees: trees.into_iter().map(|t| (t.volume(), t)).collect(),
            sets: RwLock::new(sets),
            inodes: Inodes::new(),
            attrs: lru(ATTRS),
            dirs: Mutex::new(Dirs {
                lru: LruCache::unbounded(),
                entries: 0,
            }),
            live_fds: lru(crate::fds::budget().snap_fds),
            live_files: lru(crate::fds::budget().snap_files),
            notify: Mutex::new(None),
            ahead,
            ahead_jobs: Mutex::new(Some(ahead_jobs)),
            changed: Mutex::new(now()),
            refreshing: Mutex::new(()),
        }))
    }

    /// Connects the browser to its mount: from now on it tells the kernel
    /// what went stale, and reads small files ahead on a thread of its own
    /// (see ahead.rs).
    pub(crate) fn connect(self: &Arc<Self>, notify: Notify) {
        *lock(&self.notify) = Some(notify);
        let Some(jobs) = lock(&self.ahead_jobs).take() else {
            return;
        };
        let browser = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("umbra-ahead".into())
            .spawn(move || {
                // Ends when the browser is gone: its sender goes with it.
                while let Ok(job) = jobs.recv() {
                    match browser.upgrade() {
                        Some(b) => b.read_ahead(job),
                        None => break,
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("no read-ahead for the snapshot browser: {e}");
        }
    }

    fn tell(&self, what: Kernel<'_>) {
        if let Some(f) = lock(&self.notify).as_ref() {
            f(what);
        }
    }

    /// Re-reads the list of sets after a create or delete, and tells the
    /// kernel to forget what it cached of the top directory and of the sets
    /// that are gone.
    pub fn refresh(&self) -> Result<()> {
        let _one_at_a_time = lock(&self.refreshing);
        let fresh = self.store.sets()?;
        let (gone, changed) = {
            let mut sets = self.sets.write().unwrap_or_else(|p| p.into_inner());
            let gone: Vec<SetInfo> = sets
                .iter()
                .filter(|s| !fresh.iter().any(|f| f.id == s.id))
                .cloned()
                .collect();
            let changed = !gone.is_empty() || sets.len() != fresh.len();
            *sets = fresh;
            (gone, changed)
        };
        if changed {
            *lock(&self.changed) = now();
        }
        for set in &gone {
            let views = self.inodes.drop_set(set.id);
            let dead = |ino: u64| self.inodes.view_of(ino).is_none_or(|v| views.contains(&v));
            purge(&self.attrs, dead);
            purge(&self.live_fds, dead);
            purge(&self.live_files, dead);
            let mut dirs = lock(&self.dirs);
            let doomed: Vec<u64> = dirs
                .lru
                .iter()
                .map(|(k, _)| *k)
                .filter(|k| dead(*k))
                .collect();
            for k in doomed {
                if let Some(old) = dirs.lru.pop(&k) {
                    dirs.entries -= old.len();
                }
            }
        }
        // The top directory's mtime moved too: the kernel would drop its
        // cached listing at the next look anyway.
        for set in &gone {
            self.tell(Kernel::ForgetEntry(ROOT, OsStr::new(&set.name)));
        }
        if changed {
            self.tell(Kernel::ForgetInode(ROOT));
        }
        Ok(())
    }

    fn set(&self, id: SetId) -> Option<SetInfo> {
        self.sets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|s| s.id == id)
            .cloned()
    }

    fn newest(&self) -> Option<SetInfo> {
        self.sets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .cloned()
    }

    fn node(&self, ino: u64) -> Result<Node> {
        self.inodes.get(ino).ok_or_else(|| errno(libc::ENOENT))
    }

    fn object(&self, ino: u64) -> Result<ObjectNode> {
        match self.node(ino)? {
            Node::Object(node) => Ok(node),
            Node::SetDir(_) => Err(errno(libc::EISDIR)),
        }
    }

    fn volume(&self, id: VolumeId) -> Result<&Arc<Volume>> {
        self.volumes.get(&id).ok_or_else(|| errno(libc::ENOENT))
    }

    fn dir_attr(&self, ino: u64, time: Timestamp, nlink: u32) -> Attr {
        Attr {
            ino,
            mode: libc::S_IFDIR | 0o555,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 0,
            blocks: 0,
            atime: time,
            mtime: time,
            ctime: time,
        }
    }

    pub(crate) fn getattr(&self, ino: u64) -> Result<Attr> {
        match ino {
            ROOT => Ok(self.dir_attr(ROOT, *lock(&self.changed), 2)),
            LATEST => {
                let newest = self.newest().ok_or_else(|| errno(libc::ENOENT))?;
                Ok(Attr {
                    mode: libc::S_IFLNK | 0o777,
                    nlink: 1,
                    size: newest.name.len() as u64,
                    ..self.dir_attr(LATEST, newest.created, 1)
                })
            }
            _ => match self.node(ino)? {
                Node::SetDir(id) => {
                    let set = self.set(id).ok_or_else(|| errno(libc::ENOENT))?;
                    Ok(self.dir_attr(ino, set.created, 2))
                }
                Node::Object(node) => self.object_attr(ino, &node),
            },
        }
    }

    fn object_attr(&self, ino: u64, node: &ObjectNode) -> Result<Attr> {
        if let Some(attr) = lock(&self.attrs).get(&ino) {
            return Ok(attr.clone());
        }
        if self.is_tree(node.volume) {
            return self.tree_attr(ino, node);
        }
        let vol = self.volume(node.volume)?;
        let via = self.live_parent(node, vol)?;
        // Object lock first, then the deletion gate: a mutation holding the
        // object's lock may be deleting sets to make room (see storage.rs).
        let _still = vol.cow.read_lock(node.object);
        let _reading = self.alive(vol, node.set)?;
        let mut attr = match self
            .store
            .resolve_attr(node.volume, node.object, node.epoch)?
        {
            Some(record) => Attr::from_record(&record, ino),
            None => Attr::from_stat(&self.live_stat(ino, node, vol, via)?, ino),
        };
        // The backing root counts the hidden folder among its
        // subdirectories, as the live mount does not (see live/core.rs).
        if node.object == vol.root_object() {
            attr.nlink = attr.nlink.saturating_sub(1);
        }
        lock(&self.attrs).put(ino, attr.clone());
        Ok(attr)
    }

    /// The live object's stat: by name in its live parent when that name
    /// is still the same inode (no descriptor opened), else through its own
    /// descriptor. Called under the object's lock: it must not list a
    /// parent (see the module's note on locking), so `via` comes resolved.
    fn live_stat(
        &self,
        ino: u64,
        node: &ObjectNode,
        vol: &Volume,
        via: Option<(Arc<OwnedFd>, CString)>,
    ) -> Result<libc::stat64> {
        if let Some(fd) = lock(&self.live_fds).get(&ino) {
            return Ok(backing::fstat(fd.as_fd())?);
        }
        if let Some((dir, name)) = &via
            && let Ok(st) = backing::statat(dir.as_fd(), name)
            && st.st_ino == node.object.0
        {
            return Ok(st);
        }
        let fd = vol.open_object(
            node.object,
            via.as_ref()
                .map(|(dir, name)| (dir.as_fd(), OsStr::from_bytes(name.as_bytes()))),
        )?;
        Ok(backing::fstat(fd.as_fd())?)
    }

    /// Holds deletion off and checks the set is still there.
    fn alive<'a>(&self, vol: &'a Volume, set: SetId) -> Result<std::sync::RwLockReadGuard<'a, ()>> {
        let guard = vol.reading();
        let listed = self
            .sets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|s| s.id == set);
        if vol.is_retired(set) || !listed {
            return Err(errno(libc::ESTALE));
        }
        Ok(guard)
    }

    /// The live directory that lists `node` in the set and its name there,
    /// if the object is not the volume's root.
    fn live_parent(
        &self,
        node: &ObjectNode,
        vol: &Volume,
    ) -> Result<Option<(Arc<OwnedFd>, CString)>> {
        if node.object == vol.root_object() {
            return Ok(None);
        }
        let Some(Node::Object(parent)) = self.inodes.get(node.parent) else {
            return Ok(None);
        };
        let entries = self.entries(node.parent, &parent)?;
        let entry = match entries.get(node.index as usize) {
            Some(e) if e.object == node.object => e,
            _ => match entries.iter().find(|e| e.object == node.object) {
                Some(e) => e,
                None => return Ok(None),
            },
        };
        let dir = self.live_fd(node.parent, &parent, vol)?;
        let name = CString::new(entry.name.clone()).map_err(|_| errno(libc::EINVAL))?;
        Ok(Some((dir, name)))
    }

    /// The live inode of an object the set shows unchanged.
    fn live_fd(&self, ino: u64, node: &ObjectNode, vol: &Volume) -> Result<Arc<OwnedFd>> {
        if let Some(fd) = lock(&self.live_fds).get(&ino) {
            return Ok(fd.clone());
        }
        let parent = self.live_parent(node, vol)?;
        let fd = Arc::new(
            vol.open_object(
                node.object,
                parent
                    .as_ref()
                    .map(|(dir, name)| (dir.as_fd(), OsStr::from_bytes(name.as_bytes()))),
            )?,
        );
        lock(&self.live_fds).put(ino, fd.clone());
        Ok(fd)
    }

    /// The live file of a regular object, open for reading.
    fn live_file(&self, ino: u64, node: &ObjectNode, vol: &Volume) -> Result<Arc<File>> {
        if let Some(f) = lock(&self.live_files).get(&ino) {
            return Ok(f.clone());
        }
        let fd = self.live_fd(ino, node, vol)?;
        let file = Arc::new(backing::as_file(backing::reopen(
            fd.as_fd(),
            libc::O_RDONLY,
        )?));
        lock(&self.live_files).put(ino, file.clone());
        Ok(file)
    }

    pub(super) fn entries(&self, ino: u64, node: &ObjectNode) -> Result<Arc<Vec<DirEntry>>> {
        if let Some(entries) = lock(&self.dirs).lru.get(&ino) {
            return Ok(entries.clone());
        }
        if self.is_tree(node.volume) {
            let entries = Arc::new(self.tree_entries(ino, node)?);
            lock(&self.dirs).put(ino, entries.clone());
            return Ok(entries);
        }
        let vol = self.volume(node.volume)?;
        let live = self.live_fd(ino, node, vol);
        // Object lock first, then the deletion gate: a mutation holding the
        // object's lock may be deleting sets to make room (see storage.rs).
        let _still = vol.cow.read_lock(node.object);
        let _reading = self.alive(vol, node.set)?;
        let entries = match self
            .store
            .resolve_dir(node.volume, node.object, node.epoch)?
        {
            Some(entries) => entries,
            None => {
                let hidden = (node.object == vol.root_object()).then_some(OsStr::new(HIDDEN_DIR));
                backing::dir_record(live?.as_fd(), hidden)?
            }
        };
        let entries = Arc::new(entries);
        lock(&self.dirs).put(ino, entries.clone());
        Ok(entries)
    }

    /// The volume roots of a set directory, in the set's order.
    fn volume_roots<'s>(
        &self,
        set_ino: u64,
        set: &'s SetInfo,
    ) -> Result<Vec<(ObjectNode, &'s str)>> {
        let mut out = Vec::new();
        for sv in &set.volumes {
            let root = match self.volumes.get(&sv.volume) {
                Some(vol) => vol.root_object(),
                None if self.has_image(set, sv.volume) => super::trees::ROOT_OBJECT,
                None => continue,
            };
            let view = self
                .inodes
                .view(set.id, sv.volume, sv.epoch)
                .ok_or_else(|| errno(libc::ENFILE))?;
            out.push((
                ObjectNode {
                    view,
                    set: set.id,
                    volume: sv.volume,
                    epoch: sv.epoch,
                    object: root,
                    kind: FileKind::Directory,
                    parent: set_ino,
                    index: 0,
                },
                sv.name.as_str(),
            ));
        }
        Ok(out)
    }

    fn child(
        parent_ino: u64,
        parent: &ObjectNode,
        entry: &DirEntry,
        index: usize,
    ) -> Result<ObjectNode> {
        Ok(ObjectNode {
            object: entry.object,
            kind: entry.kind,
            parent: parent_ino,
            index: u32::try_from(index).map_err(|_| errno(libc::EOVERFLOW))?,
            ..*parent
        })
    }

    /// Looks `name` up in `parent`; an object found counts as one lookup
    /// the kernel will forget.
    pub(crate) fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        if parent == ROOT {
            if name == "latest" {
                return self.getattr(LATEST);
            }
            let id = self
                .sets
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|s| OsStr::new(&s.name) == name)
                .map(|s| s.id)
                .ok_or_else(|| errno(libc::ENOENT))?;
            return self.getattr(self.inodes.set_dir(id));
        }
        let child = match self.node(parent)? {
            Node::SetDir(id) => {
                let set = self.set(id).ok_or_else(|| errno(libc::ENOENT))?;
                self.volume_roots(parent, &set)?
                    .into_iter()
                    .find(|(_, n)| OsStr::new(n) == name)
                    .map(|(node, _)| node)
                    .ok_or_else(|| errno(libc::ENOENT))?
            }
            Node::Object(node) => {
                if node.kind != FileKind::Directory {
                    return Err(errno(libc::ENOTDIR));
                }
                let entries = self.entries(parent, &node)?;
                let i = entries
                    .binary_search_by(|e| e.name.as_slice().cmp(name.as_bytes()))
                    .map_err(|_| errno(libc::ENOENT))?;
                if self.is_tree(node.volume) {
                    let (child, attr) = self.tree_child(parent, &node, &entries, i)?;
                    self.inodes.hold(&child);
                    return Ok(attr);
                }
                Self::child(parent, &node, &entries[i], i)?
            }
        };
        let attr = self.object_attr(self.inodes.number(child.view, child.object), &child)?;
        self.inodes.hold(&child);
        Ok(attr)
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub(crate) fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
    }

    pub(crate) fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        if ino == LATEST {
            return self
                .newest()
                .map(|s| s.name.into_bytes())
                .ok_or_else(|| errno(libc::ENOENT));
        }
        let node = self.object(ino)?;
        if node.kind != FileKind::Symlink {
            return Err(errno(libc::EINVAL));
        }
        if self.is_tree(node.volume) {
            return self.tree_readlink(ino, &node);
        }
        // A symlink's target never changes while the inode lives, and a
        // snapshot's inode lives on (aside if unlinked).
        let vol = self.volume(node.volume)?;
        let fd = self.live_fd(ino, &node, vol)?;
        let _reading = self.alive(vol, node.set)?;
        Ok(backing::readlinkat(fd.as_fd(), c"")?)
    }

    /// Lists directory `ino` from `offset` (0 is the start) into `add` until
    /// it answers true (full). With `plus`, every item carries its
    /// attributes and every object accepted counts as one lookup.
    pub(crate) fn readdir(
        &self,
        ino: u64,
        offset: u64,
        plus: bool,
        add: &mut dyn FnMut(Item<'_>) -> bool,
    ) -> Result<()> {
        let dot = |ino: u64, offset: usize, name: &'static str| Item {
            offset: offset as u64 + 1,
            ino,
            kind: FileKind::Directory,
            name: OsStr::new(name),
            attr: plus.then(|| self.dir_attr(ino, Timestamp::default(), 2)),
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if ino == ROOT {
            let sets = self.sets.read().unwrap_or_else(|p| p.into_inner()).clone();
            let mut top: Vec<(u64, FileKind, &str)> = vec![
                (ROOT, FileKind::Directory, "."),
                (ROOT, FileKind::Directory, ".."),
            ];
            for set in &sets {
                top.push((self.inodes.set_dir(set.id), FileKind::Directory, &set.name));
            }
            if !sets.is_empty() {
                top.push((LATEST, FileKind::Symlink, "latest"));
            }
            for (i, (ino, kind, name)) in top.into_iter().enumerate().skip(start) {
                let attr = if plus { Some(self.getattr(ino)?) } else { None };
                let item = Item {
                    offset: i as u64 + 1,
                    ino,
                    kind,
                    name: OsStr::new(name),
                    attr,
                };
                if add(item) {
                    break;
                }
            }
            return Ok(());
        }
        match self.node(ino)? {
            Node::SetDir(id) => {
                let set = self.set(id).ok_or_else(|| errno(libc::ENOENT))?;
                let roots = self.volume_roots(ino, &set)?;
                for i in start..roots.len() + 2 {
                    let item = match i {
                        0 => dot(ino, i, "."),
                        1 => dot(ROOT, i, ".."),
                        _ => {
                            let (node, name) = &roots[i - 2];
                            let child = self.inodes.number(node.view, node.object);
                            Item {
                                offset: i as u64 + 1,
                                ino: child,
                                kind: FileKind::Directory,
                                name: OsStr::new(name),
                                attr: if plus {
                                    Some(self.object_attr(child, node)?)
                                } else {
                                    None
                                },
                            }
                        }
                    };
                    if add(item) {
                        break;
                    }
                    if plus && i >= 2 {
                        self.inodes.hold(&roots[i - 2].0);
                    }
                }
            }
            Node::Object(node) => {
                if node.kind != FileKind::Directory {
                    return Err(errno(libc::ENOTDIR));
                }
                let entries = self.entries(ino, &node)?;
                if self.is_tree(node.volume) {
                    return self.tree_readdir(ino, &node, &entries, start, plus, add);
                }
                let mut fetched = 0;
                for i in start..entries.len() + 2 {
                    if plus && i >= 2 && i - 2 >= fetched {
                        fetched = self.prefetch_attrs(ino, &node, &entries, i - 2)?;
                    }
                    let (item, child) = match i {
                        0 => (dot(ino, i, "."), None),
                        1 => (dot(node.parent, i, ".."), None),
                        _ => {
                            let entry = &entries[i - 2];
                            let child = Self::child(ino, &node, entry, i - 2)?;
                            let number = self.inodes.number(child.view, child.object);
                            let item = Item {
                                offset: i as u64 + 1,
                                ino: number,
                                kind: entry.kind,
                                name: OsStr::from_bytes(&entry.name),
                                attr: if plus {
                                    Some(self.object_attr(number, &child)?)
                                } else {
                                    None
                                },
                            };
                            (item, Some(child))
                        }
                    };
                    if add(item) {
                        break;
                    }
                    if plus && let Some(child) = child {
                        self.inodes.hold(&child);
                    }
                }
            }
        }
        Ok(())
    }

    /// Resolves the attributes of a run of a directory's entries at once
    /// into the cache: one query for their records, and a stat by name for
    /// the unchanged rest. Returns where the run ends. An entry whose
    /// object may have changed since the query is left to `object_attr`.
    fn prefetch_attrs(
        &self,
        dir: u64,
        node: &ObjectNode,
        entries: &[DirEntry],
        first: usize,
    ) -> Result<usize> {
        const RUN: usize = 128;
        let end = (first + RUN).min(entries.len());
        let missing: Vec<(usize, u64)> = {
            let attrs = lock(&self.attrs);
            (first..end)
                .map(|i| (i, self.inodes.number(node.view, entries[i].object)))
                .filter(|(_, ino)| !attrs.contains(ino))
                .collect()
        };
        if missing.is_empty() {
            return Ok(end);
        }
        let vol = self.volume(node.volume)?;
        let live = self.live_fd(dir, node, vol)?;
        let stores = vol.cow.stores();
        let objects: Vec<_> = missing.iter().map(|(i, _)| entries[*i].object).collect();
        let records = {
            let _reading = self.alive(vol, node.set)?;
            self.store
                .resolve_attrs(node.volume, &objects, node.epoch)?
        };
        let mut resolved = Vec::with_capacity(missing.len());
        for (i, ino) in missing {
            let entry = &entries[i];
            if let Some(record) = records.get(&entry.object) {
                // A record, once there, is the set's for good.
                resolved.push((ino, Attr::from_record(record, ino)));
                continue;
            }
            let name = CString::new(entry.name.clone()).map_err(|_| errno(libc::EINVAL))?;
            let _still = vol.cow.read_lock(entry.object);
            let _reading = self.alive(vol, node.set)?;
            if vol.cow.stores() != stores {
                continue;
            }
            if let Ok(st) = backing::statat(live.as_fd(), &name)
                && st.st_ino == entry.object.0
            {
                resolved.push((ino, Attr::from_stat(&st, ino)));
            }
        }
        let mut attrs = lock(&self.attrs);
        for (ino, attr) in resolved {
            attrs.put(ino, attr);
        }
        Ok(end)
    }

    /// Whether `volume` is a tree volume whose copy for `set` exists. One
    /// destroyed by hand (`btrfs subvolume delete`) leaves that volume out
    /// of the set's directory rather than failing the whole listing.
    fn has_image(&self, set: &SetInfo, volume: VolumeId) -> bool {
        let Some(images) = self.trees.get(&volume) else {
            return false;
        };
        match images.image(set.id) {
            Ok(Some(_)) => true,
            Ok(None) => {
                tracing::warn!(set = %set.name, volume = images.name(), "the set's copy of the volume is gone (destroyed outside umbra?); the set shows without it");
                false
            }
            Err(e) => {
                tracing::warn!(set = %set.name, volume = images.name(), "opening the set's copy of the volume: {e}");
                false
            }
        }
    }

    /// Whether any volume is served from tree images: then files are
    /// opened through the daemon (their reads may pass through).
    pub(crate) fn serves_trees(&self) -> bool {
        !self.trees.is_empty()
    }

    /// Checks that `ino` may be opened for reading; a tree image's file
    /// comes back open, for the kernel to read directly.
    pub(crate) fn open(&self, ino: u64) -> Result<Option<Arc<File>>> {
        let node = self.object(ino)?;
        match node.kind {
            FileKind::Regular if self.is_tree(node.volume) => self.tree_file(ino, &node).map(Some),
            FileKind::Regular => Ok(None),
            FileKind::Directory => Err(errno(libc::EISDIR)),
            _ => Err(errno(libc::EINVAL)),
        }
    }

    pub(crate) fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let node = self.object(ino)?;
        if node.kind != FileKind::Regular {
            return Err(errno(libc::EINVAL));
        }
        if self.is_tree(node.volume) {
            return self.tree_read(ino, &node, offset, size);
        }
        let (data, len) = self.read_object(ino, &node, offset, size)?;
        if offset == 0 && len <= ahead::SMALL && self.connected() {
            self.ahead.read(node.parent, node.index);
        }
        Ok(data)
    }

    /// Whether a mount connected the browser (and its read-ahead thread
    /// takes jobs).
    fn connected(&self) -> bool {
        lock(&self.ahead_jobs).is_none()
    }

    /// Opens the live files of a run of a directory's small entries and
    /// asks the backing filesystem to read them in (WILLNEED, which does not
    /// wait): the reads queue on the disk together, and each READ that
    /// follows finds its file open and its pages cached. Skips what the
    /// reader already passed.
    fn read_ahead(&self, job: Job) {
        let Some(Node::Object(dir)) = self.inodes.get(job.dir) else {
            return;
        };
        let (Ok(entries), Ok(vol)) = (self.entries(job.dir, &dir), self.volume(dir.volume)) else {
            return;
        };
        let mut bytes = 0;
        for i in job.from..job.to.min(u32::try_from(entries.len()).unwrap_or(u32::MAX)) {
            let entry = &entries[i as usize];
            if entry.kind != FileKind::Regular || !self.ahead.ahead(job.dir, i) {
                continue;
            }
            let Ok(child) = Self::child(job.dir, &dir, entry, i as usize) else {
                return;
            };
            let ino = self.inodes.number(child.view, child.object);
            let size = match self.object_attr(ino, &child) {
                Ok(attr) if attr.size > 0 && attr.size <= ahead::SMALL => attr.size,
                _ => continue,
            };
            let Ok(file) = self.live_file(ino, &child, vol) else {
                continue;
            };
            backing::will_need(&file, size);
            bytes += size;
            if bytes >= ahead::JOB_BYTES {
                return;
            }
        }
    }

    /// Bytes `offset..offset + size` of a regular object, and its size.
    fn read_object(
        &self,
        ino: u64,
        node: &ObjectNode,
        offset: u64,
        size: u32,
    ) -> Result<(Vec<u8>, u64)> {
        let len = self.object_attr(ino, node)?.size;
        let end = offset.saturating_add(u64::from(size)).min(len);
        if offset >= end {
            return Ok((Vec::new(), len));
        }
        let vol = self.volume(node.volume)?;
        let live = self.live_file(ino, node, vol);
        // Object lock first, then the deletion gate: a mutation holding the
        // object's lock may be deleting sets to make room (see storage.rs).
        let _still = vol.cow.read_lock(node.object);
        let _reading = self.alive(vol, node.set)?;
        let preserved = self.store.resolve_blocks(
            node.volume,
            node.object,
            offset / BLOCK_SIZE,
            (end - 1) / BLOCK_SIZE,
            node.epoch,
        )?;
        let mut out = vec![0u8; (end - offset) as usize];
        let mut preserved = preserved.iter().peekable();
        let mut pos = offset;
        while pos < end {
            let block = pos / BLOCK_SIZE;
            let dst_from = (pos - offset) as usize;
            match preserved.peek() {
                Some((b, chunk)) if *b == block => {
                    let block_end = ((block + 1) * BLOCK_SIZE).min(end);
                    let dst = &mut out[dst_from..(block_end - offset) as usize];
                    let from = (pos - block * BLOCK_SIZE) as usize;
                    let avail = chunk.len().saturating_sub(from).min(dst.len());
                    dst[..avail].copy_from_slice(&chunk[from..from + avail]);
                    preserved.next();
                    pos = block_end;
                }
                next => {
                    // Every block up to the next preserved one is live: one
                    // read for the whole run.
                    let run_end = next.map_or(end, |(b, _)| (b * BLOCK_SIZE).min(end));
                    let file = match &live {
                        Ok(f) => f,
                        Err(e) => {
                            tracing::warn!("snapshot read of object {}: {e}", node.object.0);
                            return Err(errno(e.errno()));
                        }
                    };
                    backing::pread_full(
                        file,
                        &mut out[dst_from..(run_end - offset) as usize],
                        pos,
                    )?;
                    pos = run_end;
                }
            }
        }
        Ok((out, len))
    }

    fn xattrs(&self, ino: u64) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if ino == ROOT || ino == LATEST {
            return Ok(Vec::new());
        }
        let Node::Object(node) = self.node(ino)? else {
            return Ok(Vec::new());
        };
        if self.is_tree(node.volume) {
            return self.tree_xattrs(ino, &node);
        }
        let vol = self.volume(node.volume)?;
        let live = self.live_fd(ino, &node, vol);
        // Object lock first, then the deletion gate: a mutation holding the
        // object's lock may be deleting sets to make room (see storage.rs).
        let _still = vol.cow.read_lock(node.object);
        let _reading = self.alive(vol, node.set)?;
        match self
            .store
            .resolve_attr(node.volume, node.object, node.epoch)?
        {
            Some(record) => Ok(record.xattrs),
            None => Ok(backing::all_xattrs(live?.as_fd())?),
        }
    }

    pub(crate) fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        self.xattrs(ino)?
            .into_iter()
            .find(|(n, _)| n.as_slice() == name.as_bytes())
            .map(|(_, v)| v)
            .ok_or_else(|| errno(libc::ENODATA))
    }

    pub(crate) fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for (name, _) in self.xattrs(ino)? {
            out.extend_from_slice(&name);
            out.push(0);
        }
        Ok(out)
    }

    /// Where the data (SEEK_DATA) or the hole (SEEK_HOLE) at or after
    /// `offset` starts in regular file `ino`. A tree image's file answers
    /// with its own holes; a copy-on-write set's file is data throughout.
    pub(crate) fn lseek(&self, ino: u64, offset: i64, whence: i32) -> Result<i64> {
        let node = self.object(ino)?;
        if node.kind != FileKind::Regular {
            return Err(errno(libc::EINVAL));
        }
        if self.is_tree(node.volume) {
            return self.tree_lseek(ino, &node, offset, whence);
        }
        let size = i64::try_from(self.object_attr(ino, &node)?.size).unwrap_or(i64::MAX);
        match whence {
            _ if offset < 0 => Err(errno(libc::EINVAL)),
            _ if offset >= size => Err(errno(libc::ENXIO)),
            libc::SEEK_DATA => Ok(offset),
            libc::SEEK_HOLE => Ok(size),
            _ => Err(errno(libc::EINVAL)),
        }
    }

    pub(crate) fn statfs(&self) -> Result<libc::statvfs64> {
        let path = std::ffi::CString::new(self.store.dir().as_os_str().as_bytes())
            .map_err(|_| errno(libc::EINVAL))?;
        // SAFETY: zeroed statvfs64 is a valid out-buffer.
        let mut st: libc::statvfs64 = unsafe { std::mem::zeroed() };
        // SAFETY: path is a valid C string.
        if unsafe { libc::statvfs64(path.as_ptr(), &mut st) } < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(st)
    }
}
