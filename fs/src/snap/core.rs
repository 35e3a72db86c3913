//! The browser's logic, independent of FUSE. Every object of a set is
//! resolved as the copy-on-write model says: the pre-image record with the
//! smallest `hi >= e`, else the live object, found by name in its live
//! parent or by its recorded file handle. What is resolved is cached: a
//! shadow copy never changes.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use lru::LruCache;
use umbra_store::{BLOCK_SIZE, DirEntry, FileKind, SetId, SetInfo, Store, Timestamp, VolumeId};

use super::inodes::{Inodes, LATEST, Node, ObjectNode, ROOT};
use crate::attr::Attr;
use crate::backing;
use crate::reply::Listing;
use crate::{FsError, HIDDEN_DIR, Result, Volume};

const CACHE_ENTRIES: usize = 64 * 1024;
const LIVE_FDS: usize = 1024;

/// Tells the kernel to forget a name it cached (set by the FUSE mount).
pub(crate) type Invalidate = Box<dyn Fn(u64, &OsStr) + Send + Sync>;

pub(crate) struct SnapFile {
    ino: u64,
    node: Arc<Node>,
    size: u64,
    live: OnceLock<File>,
}

pub struct Browser {
    store: Arc<Store>,
    volumes: HashMap<VolumeId, Arc<Volume>>,
    sets: RwLock<Vec<SetInfo>>,
    inodes: Inodes,
    attrs: Mutex<LruCache<u64, Attr>>,
    dirs: Mutex<LruCache<u64, Arc<Vec<DirEntry>>>>,
    live_fds: Mutex<LruCache<u64, Arc<OwnedFd>>>,
    listings: Mutex<HashMap<u64, Arc<Vec<Listing>>>>,
    files: Mutex<HashMap<u64, Arc<SnapFile>>>,
    next_fh: AtomicU64,
    invalidate: Mutex<Option<Invalidate>>,
    started: Timestamp,
}

fn errno(e: i32) -> FsError {
    FsError::from_errno(e)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn lru<K: std::hash::Hash + Eq, V>(n: usize) -> Mutex<LruCache<K, V>> {
    Mutex::new(LruCache::new(
        NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN),
    ))
}

impl Browser {
    pub fn new(store: Arc<Store>, volumes: Vec<Arc<Volume>>) -> Result<Arc<Browser>> {
        let sets = store.sets()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Arc::new(Browser {
            store,
            volumes: volumes.into_iter().map(|v| (v.id(), v)).collect(),
            sets: RwLock::new(sets),
            inodes: Inodes::new(),
            attrs: lru(CACHE_ENTRIES),
            dirs: lru(CACHE_ENTRIES / 16),
            live_fds: lru(LIVE_FDS),
            listings: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            invalidate: Mutex::new(None),
            started: Timestamp {
                secs: now.as_secs() as i64,
                nanos: now.subsec_nanos(),
            },
        }))
    }

    pub(crate) fn set_invalidate(&self, f: Invalidate) {
        *lock(&self.invalidate) = Some(f);
    }

    /// Re-reads the list of sets after a create or delete, and tells the
    /// kernel to forget what it cached of the ones that are gone.
    pub fn refresh(&self) -> Result<()> {
        let fresh = self.store.sets()?;
        let gone: Vec<SetInfo> = {
            let mut sets = self.sets.write().unwrap_or_else(|p| p.into_inner());
            let gone = sets
                .iter()
                .filter(|s| !fresh.iter().any(|f| f.id == s.id))
                .cloned()
                .collect();
            *sets = fresh;
            gone
        };
        for set in gone {
            self.inodes.drop_set(set.id);
            if let Some(f) = lock(&self.invalidate).as_ref() {
                f(ROOT, OsStr::new(&set.name));
            }
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

    fn node(&self, ino: u64) -> Result<Arc<Node>> {
        self.inodes.get(ino).ok_or_else(|| errno(libc::ENOENT))
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
            ROOT => {
                let time = self.newest().map_or(self.started, |s| s.created);
                Ok(self.dir_attr(ROOT, time, 2))
            }
            LATEST => {
                let newest = self.newest().ok_or_else(|| errno(libc::ENOENT))?;
                Ok(Attr {
                    mode: libc::S_IFLNK | 0o777,
                    nlink: 1,
                    size: newest.name.len() as u64,
                    ..self.dir_attr(LATEST, newest.created, 1)
                })
            }
            _ => match &*self.node(ino)? {
                Node::SetDir(id) => {
                    let set = self.set(*id).ok_or_else(|| errno(libc::ENOENT))?;
                    Ok(self.dir_attr(ino, set.created, 2))
                }
                Node::Object(node) => self.object_attr(ino, node),
            },
        }
    }

    fn object_attr(&self, ino: u64, node: &ObjectNode) -> Result<Attr> {
        if let Some(attr) = lock(&self.attrs).get(&ino) {
            return Ok(attr.clone());
        }
        let vol = self.volume(node.volume)?;
        // Object lock first, then the deletion gate: a mutation holding the
        // object's lock may be deleting sets to make room (see diff.rs).
        let _still = vol.cow.read_lock(node.object);
        let _reading = self.alive(vol, node.set)?;
        let mut attr = match self
            .store
            .resolve_attr(node.volume, node.object, node.epoch)?
        {
            Some(record) => Attr::from_record(&record, ino),
            None => Attr::from_stat(&backing::fstat(self.live_fd(ino, node, vol)?.as_fd())?, ino),
        };
        // The backing root counts the hidden folder among its
        // subdirectories, as the live mount does not (see live/core.rs).
        if node.object == vol.root_object() {
            attr.nlink = attr.nlink.saturating_sub(1);
        }
        lock(&self.attrs).put(ino, attr.clone());
        Ok(attr)
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

    /// The live inode of an object the set shows unchanged.
    fn live_fd(&self, ino: u64, node: &ObjectNode, vol: &Volume) -> Result<Arc<OwnedFd>> {
        if let Some(fd) = lock(&self.live_fds).get(&ino) {
            return Ok(fd.clone());
        }
        let parent = match self.inodes.get(node.parent).as_deref() {
            Some(Node::Object(p)) if node.object != vol.root_object() => {
                Some(self.live_fd(node.parent, p, vol)?)
            }
            _ => None,
        };
        let fd = Arc::new(vol.open_object(
            node.object,
            parent.as_ref().map(|p| (p.as_fd(), node.name.as_os_str())),
        )?);
        lock(&self.live_fds).put(ino, fd.clone());
        Ok(fd)
    }

    fn entries(&self, ino: u64, node: &ObjectNode) -> Result<Arc<Vec<DirEntry>>> {
        if let Some(entries) = lock(&self.dirs).get(&ino) {
            return Ok(entries.clone());
        }
        let vol = self.volume(node.volume)?;
        // Object lock first, then the deletion gate: a mutation holding the
        // object's lock may be deleting sets to make room (see diff.rs).
        let _still = vol.cow.read_lock(node.object);
        let _reading = self.alive(vol, node.set)?;
        let entries = match self
            .store
            .resolve_dir(node.volume, node.object, node.epoch)?
        {
            Some(entries) => entries,
            None => {
                let hidden = (node.object == vol.root_object()).then_some(OsStr::new(HIDDEN_DIR));
                backing::dir_record(self.live_fd(ino, node, vol)?.as_fd(), hidden)?
            }
        };
        let entries = Arc::new(entries);
        lock(&self.dirs).put(ino, entries.clone());
        Ok(entries)
    }

    fn child_ino(&self, parent: u64, node: &ObjectNode, entry: &DirEntry) -> u64 {
        self.inodes.object(ObjectNode {
            set: node.set,
            volume: node.volume,
            epoch: node.epoch,
            object: entry.object,
            kind: entry.kind,
            parent,
            name: OsString::from_vec(entry.name.clone()),
        })
    }

    fn volume_root_ino(&self, set_ino: u64, set: &SetInfo, name: &str) -> Option<u64> {
        let sv = set.volumes.iter().find(|v| v.name == name)?;
        let vol = self.volumes.get(&sv.volume)?;
        Some(self.inodes.object(ObjectNode {
            set: set.id,
            volume: sv.volume,
            epoch: sv.epoch,
            object: vol.root_object(),
            kind: FileKind::Directory,
            parent: set_ino,
            name: OsString::from(name),
        }))
    }

    pub(crate) fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        let ino = self.lookup_ino(parent, name)?;
        self.getattr(ino)
    }

    fn lookup_ino(&self, parent: u64, name: &OsStr) -> Result<u64> {
        if parent == ROOT {
            if name == "latest" {
                return self
                    .newest()
                    .map(|_| LATEST)
                    .ok_or_else(|| errno(libc::ENOENT));
            }
            let sets = self.sets.read().unwrap_or_else(|p| p.into_inner());
            let set = sets
                .iter()
                .find(|s| OsStr::new(&s.name) == name)
                .ok_or_else(|| errno(libc::ENOENT))?;
            return Ok(self.inodes.set_dir(set.id));
        }
        match &*self.node(parent)? {
            Node::SetDir(id) => {
                let set = self.set(*id).ok_or_else(|| errno(libc::ENOENT))?;
                let name = name.to_str().ok_or_else(|| errno(libc::ENOENT))?;
                self.volume_root_ino(parent, &set, name)
                    .ok_or_else(|| errno(libc::ENOENT))
            }
            Node::Object(node) => {
                if node.kind != FileKind::Directory {
                    return Err(errno(libc::ENOTDIR));
                }
                let entries = self.entries(parent, node)?;
                let entry = entries
                    .binary_search_by(|e| e.name.as_slice().cmp(name.as_bytes()))
                    .map(|i| &entries[i])
                    .map_err(|_| errno(libc::ENOENT))?;
                Ok(self.child_ino(parent, node, entry))
            }
        }
    }

    pub(crate) fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        if ino == LATEST {
            return self
                .newest()
                .map(|s| s.name.into_bytes())
                .ok_or_else(|| errno(libc::ENOENT));
        }
        let Node::Object(node) = &*self.node(ino)? else {
            return Err(errno(libc::EINVAL));
        };
        if node.kind != FileKind::Symlink {
            return Err(errno(libc::EINVAL));
        }
        // A symlink's target never changes while the inode lives, and a
        // snapshot's inode lives on (aside if unlinked).
        let vol = self.volume(node.volume)?;
        let _reading = self.alive(vol, node.set)?;
        Ok(backing::readlinkat(
            self.live_fd(ino, node, vol)?.as_fd(),
            c"",
        )?)
    }

    pub(crate) fn opendir(&self, ino: u64) -> Result<u64> {
        let dot = |ino: u64, name: &str| Listing {
            ino,
            kind: FileKind::Directory,
            name: name.into(),
        };
        let mut listing = Vec::new();
        if ino == ROOT {
            listing.push(dot(ROOT, "."));
            listing.push(dot(ROOT, ".."));
            let sets = self.sets.read().unwrap_or_else(|p| p.into_inner()).clone();
            for set in &sets {
                listing.push(Listing {
                    ino: self.inodes.set_dir(set.id),
                    kind: FileKind::Directory,
                    name: set.name.clone().into(),
                });
            }
            if !sets.is_empty() {
                listing.push(Listing {
                    ino: LATEST,
                    kind: FileKind::Symlink,
                    name: "latest".into(),
                });
            }
        } else {
            match &*self.node(ino)? {
                Node::SetDir(id) => {
                    let set = self.set(*id).ok_or_else(|| errno(libc::ENOENT))?;
                    listing.push(dot(ino, "."));
                    listing.push(dot(ROOT, ".."));
                    for sv in &set.volumes {
                        if let Some(child) = self.volume_root_ino(ino, &set, &sv.name) {
                            listing.push(Listing {
                                ino: child,
                                kind: FileKind::Directory,
                                name: sv.name.clone().into(),
                            });
                        }
                    }
                }
                Node::Object(node) => {
                    if node.kind != FileKind::Directory {
                        return Err(errno(libc::ENOTDIR));
                    }
                    listing.push(dot(ino, "."));
                    listing.push(dot(node.parent, ".."));
                    for entry in self.entries(ino, node)?.iter() {
                        listing.push(Listing {
                            ino: self.child_ino(ino, node, entry),
                            kind: entry.kind,
                            name: OsString::from_vec(entry.name.clone()),
                        });
                    }
                }
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.listings).insert(fh, Arc::new(listing));
        Ok(fh)
    }

    pub(crate) fn readdir(&self, fh: u64) -> Result<Arc<Vec<Listing>>> {
        lock(&self.listings)
            .get(&fh)
            .cloned()
            .ok_or_else(|| errno(libc::EBADF))
    }

    pub(crate) fn releasedir(&self, fh: u64) {
        lock(&self.listings).remove(&fh);
    }

    pub(crate) fn open(&self, ino: u64) -> Result<u64> {
        let node = self.node(ino)?;
        let Node::Object(obj) = &*node else {
            return Err(errno(libc::EISDIR));
        };
        if obj.kind != FileKind::Regular {
            return Err(errno(libc::EINVAL));
        }
        let size = self.object_attr(ino, obj)?.size;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.files).insert(
            fh,
            Arc::new(SnapFile {
                ino,
                node: node.clone(),
                size,
                live: OnceLock::new(),
            }),
        );
        Ok(fh)
    }

    pub(crate) fn release(&self, fh: u64) {
        lock(&self.files).remove(&fh);
    }

    pub(crate) fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let file = lock(&self.files)
            .get(&fh)
            .cloned()
            .ok_or_else(|| errno(libc::EBADF))?;
        let Node::Object(node) = &*file.node else {
            return Err(errno(libc::EBADF));
        };
        let end = offset.saturating_add(u64::from(size)).min(file.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let vol = self.volume(node.volume)?;
        // Object lock first, then the deletion gate: a mutation holding the
        // object's lock may be deleting sets to make room (see diff.rs).
        let _still = vol.cow.read_lock(node.object);
        let _reading = self.alive(vol, node.set)?;
        let mut out = vec![0u8; (end - offset) as usize];
        let mut pos = offset;
        while pos < end {
            let block = pos / BLOCK_SIZE;
            let block_end = ((block + 1) * BLOCK_SIZE).min(end);
            let dst = &mut out[(pos - offset) as usize..(block_end - offset) as usize];
            match self
                .store
                .resolve_block(node.volume, node.object, block, node.epoch)?
            {
                Some(chunk) => {
                    let from = (pos - block * BLOCK_SIZE) as usize;
                    let avail = chunk.len().saturating_sub(from).min(dst.len());
                    dst[..avail].copy_from_slice(&chunk[from..from + avail]);
                }
                None => {
                    let live = self.live_file(&file, node, vol)?;
                    backing::pread_full(live, dst, pos)?;
                }
            }
            pos = block_end;
        }
        Ok(out)
    }

    fn live_file<'a>(
        &self,
        file: &'a SnapFile,
        node: &ObjectNode,
        vol: &Volume,
    ) -> Result<&'a File> {
        if let Some(f) = file.live.get() {
            return Ok(f);
        }
        let fd = self.live_fd(file.ino, node, vol)?;
        let opened = backing::as_file(backing::reopen(fd.as_fd(), libc::O_RDONLY)?);
        Ok(file.live.get_or_init(|| opened))
    }

    fn xattrs(&self, ino: u64) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if ino == ROOT || ino == LATEST {
            return Ok(Vec::new());
        }
        let Node::Object(node) = &*self.node(ino)? else {
            return Ok(Vec::new());
        };
        let vol = self.volume(node.volume)?;
        // Object lock first, then the deletion gate: a mutation holding the
        // object's lock may be deleting sets to make room (see diff.rs).
        let _still = vol.cow.read_lock(node.object);
        let _reading = self.alive(vol, node.set)?;
        match self
            .store
            .resolve_attr(node.volume, node.object, node.epoch)?
        {
            Some(record) => Ok(record.xattrs),
            None => Ok(backing::all_xattrs(self.live_fd(ino, node, vol)?.as_fd())?),
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
