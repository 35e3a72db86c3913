//! The live mount's inode table. FUSE inode numbers are the backing inode
//! numbers (stable across restarts), with three exceptions: the volume root
//! is 1, whatever has backing number 1 takes the root's number, and an inode
//! that took the place of one moved aside by a truncation presents the old
//! number (an alias, kept in the catalog). Each known inode is counted by
//! kernel lookups and remembers the last name it was reached by (a hint,
//! always checked before use).
//!
//! A known inode holds a file handle, never a path and not a descriptor:
//! its O_PATH descriptor comes from the process's bounded cache
//! (`fds::LiveFds`), re-opened by handle against the volume root when it
//! was evicted, so the descriptors stay bounded however many inodes the
//! kernel keeps. Two kinds of node keep their descriptor for as long as
//! they are known (unbounded, so each is logged once per volume): the root,
//! and an inode without a usable handle, i.e. on another filesystem mounted
//! inside the backing directory, or every inode when the daemon may not
//! open by handle (no CAP_DAC_READ_SEARCH). A handle whose inode was freed
//! (ESTALE) answers ENOENT, as a path to a removed file does.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use umbra_store::{ObjectId, Place};

use crate::backing;
use crate::fds::LiveFds;
use crate::{FsError, Result};

pub(crate) const ROOT: u64 = 1;

/// Where a node's descriptor comes from.
enum Source {
    /// Opened on demand through the cache, under `key`.
    Handle {
        handle: Box<[u8]>,
        key: u64,
        mount: Arc<OwnedFd>,
    },
    /// Held for the node's life.
    Pinned(Arc<OwnedFd>),
}

impl Source {
    /// Whether a fresh lookup that found `handle` reached this same inode.
    /// A pinned descriptor keeps its inode, so its number cannot have been
    /// reused; a handle's inode may have been freed and its number reused.
    fn names(&self, handle: Option<&[u8]>) -> bool {
        match self {
            Source::Handle { handle: mine, .. } => Some(&**mine) == handle,
            Source::Pinned(_) => true,
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Source::Handle { key, .. } = self {
            LiveFds::shared().remove(*key);
        }
    }
}

pub(crate) struct Node {
    pub object: ObjectId,
    source: Source,
    lookups: AtomicU64,
    name: Mutex<Option<(u64, OsString)>>,
    /// `security.capability` as last read (value or errno): asked for before
    /// writes (by the kernel, or by umbra itself when it kills privileges),
    /// and only umbra changes it while mounted.
    capability: Mutex<Option<Result<Vec<u8>, i32>>>,
}

impl Node {
    fn new(source: Source, object: ObjectId, lookups: u64) -> Node {
        Node {
            object,
            source,
            lookups: AtomicU64::new(lookups),
            name: Mutex::new(None),
            capability: Mutex::new(None),
        }
    }

    /// The inode's O_PATH descriptor, valid for as long as the caller holds
    /// it (eviction closes it only after). A cache hit makes no syscall.
    pub fn fd(&self) -> Result<Arc<OwnedFd>> {
        let (handle, key, mount) = match &self.source {
            Source::Pinned(fd) => return Ok(fd.clone()),
            Source::Handle { handle, key, mount } => (handle, *key, mount),
        };
        let cache = LiveFds::shared();
        if let Some(fd) = cache.get(key) {
            return Ok(fd);
        }
        let fd =
            match backing::open_by_handle(mount.as_fd(), handle, libc::O_PATH | libc::O_NOFOLLOW) {
                Ok(fd) => Arc::new(fd),
                // The inode was freed (removed behind umbra's back, or while
                // only the kernel's cache still knew it): as a path would.
                Err(e) if e.raw_os_error() == Some(libc::ESTALE) => {
                    return Err(FsError::from_errno(libc::ENOENT));
                }
                Err(e) => return Err(e.into()),
            };
        cache.put(key, fd.clone());
        Ok(fd)
    }

    #[cfg(test)]
    pub fn evict(&self) {
        if let Source::Handle { key, .. } = &self.source {
            LiveFds::shared().remove(*key);
        }
    }

    /// The parent inode and name this node was last reached by.
    pub fn name(&self) -> Option<(u64, OsString)> {
        self.name.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The cached `security.capability`, filled by `read` on first use.
    pub fn capability(&self, read: impl FnOnce() -> Result<Vec<u8>, i32>) -> Result<Vec<u8>, i32> {
        let mut cached = self.capability.lock().unwrap_or_else(|p| p.into_inner());
        cached.get_or_insert_with(read).clone()
    }

    /// The cached `security.capability`, if it was read.
    pub fn cached_capability(&self) -> Option<Result<Vec<u8>, i32>> {
        self.capability
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the inode carries a file capability, read by `read` on
    /// first use.
    pub fn has_capability(&self, read: impl FnOnce() -> Result<Vec<u8>, i32>) -> bool {
        let mut cached = self.capability.lock().unwrap_or_else(|p| p.into_inner());
        cached.get_or_insert_with(read).is_ok()
    }

    /// Called after any change that may add or drop the capability
    /// (xattr calls, chown, chmod, truncation, fallocate).
    pub fn forget_capability(&self) {
        *self.capability.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Called once umbra removed the capability itself, or made the file.
    pub fn lost_capability(&self) {
        *self.capability.lock().unwrap_or_else(|p| p.into_inner()) = Some(Err(libc::ENODATA));
    }

    pub fn set_name(&self, name: Option<(u64, OsString)>) {
        *self.name.lock().unwrap_or_else(|p| p.into_inner()) = name;
    }
}

pub(crate) struct Nodes {
    root_object: ObjectId,
    table: RwLock<HashMap<u64, Arc<Node>>>,
    aliases: RwLock<HashMap<ObjectId, u64>>,
    /// The volume root, which handles are opened against.
    mount: Arc<OwnedFd>,
    /// The root's mount, when the daemon can open handles on it: only an
    /// inode on that mount is kept by handle.
    mount_id: Option<i32>,
    volume: String,
    /// Whether a pinned descriptor was logged already.
    pinned_told: AtomicBool,
}

impl Nodes {
    pub fn new(
        volume: &str,
        root_fd: OwnedFd,
        root_object: ObjectId,
        aliases: Vec<(ObjectId, u64)>,
    ) -> Nodes {
        let mount = Arc::new(root_fd);
        // Opening by handle needs CAP_DAC_READ_SEARCH, and a mount
        // descriptor that is not O_PATH (the volume opened its root
        // O_RDONLY): try it once on the root rather than fail on every miss.
        let mount_id = match backing::handle_of(mount.as_fd()).and_then(|(handle, id)| {
            backing::open_by_handle(mount.as_fd(), &handle, libc::O_PATH).map(|_| id)
        }) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(
                    volume,
                    "cannot open the backing inodes by file handle ({e}): the live mount keeps one descriptor per inode the kernel knows, bounded only by RLIMIT_NOFILE"
                );
                None
            }
        };
        let mut table = HashMap::new();
        table.insert(
            ROOT,
            Arc::new(Node::new(Source::Pinned(mount.clone()), root_object, 1)),
        );
        Nodes {
            root_object,
            table: RwLock::new(table),
            aliases: RwLock::new(aliases.into_iter().collect()),
            mount,
            mount_id,
            volume: volume.to_string(),
            pinned_told: AtomicBool::new(mount_id.is_none()),
        }
    }

    /// The handle `fd`'s inode is kept by, if it can be.
    fn handle(&self, fd: &OwnedFd) -> Option<Box<[u8]>> {
        let mount_id = self.mount_id?;
        let why = match backing::handle_of(fd.as_fd()) {
            Ok((handle, id)) if id == mount_id => return Some(handle.into_boxed_slice()),
            Ok(_) => "it is on another mount than the volume root".to_string(),
            Err(e) => format!("it has no file handle ({e})"),
        };
        if !self.pinned_told.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                volume = %self.volume,
                "an inode is kept by its descriptor while the kernel knows it, as {why}: such inodes are not bounded by the descriptor cache"
            );
        }
        None
    }

    /// The source of a node for `fd`, whose handle (if any) is `handle`;
    /// `fd` is cached as its first descriptor.
    fn source(&self, fd: OwnedFd, handle: Option<Box<[u8]>>) -> Source {
        match handle {
            Some(handle) => {
                let cache = LiveFds::shared();
                let key = cache.serial();
                cache.put(key, Arc::new(fd));
                Source::Handle {
                    handle,
                    key,
                    mount: self.mount.clone(),
                }
            }
            None => Source::Pinned(Arc::new(fd)),
        }
    }

    /// The handle of the directory known as `ino`, as a place names it:
    /// empty for the root, None for a node kept by its descriptor.
    pub fn place_handle(&self, ino: u64) -> Option<Vec<u8>> {
        if ino == ROOT {
            return Some(Vec::new());
        }
        match &self.get(ino).ok()?.source {
            Source::Handle { handle, .. } => Some(handle.to_vec()),
            Source::Pinned(_) => None,
        }
    }

    /// The FUSE inode number of a backing object.
    pub fn ino_of(&self, object: ObjectId) -> u64 {
        if object == self.root_object {
            return ROOT;
        }
        if let Some(presented) = self
            .aliases
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&object)
        {
            return *presented;
        }
        if object.0 == ROOT {
            self.root_object.0
        } else {
            object.0
        }
    }

    pub fn get(&self, ino: u64) -> Result<Arc<Node>> {
        self.table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ino)
            .cloned()
            .ok_or_else(|| FsError::from_errno(libc::ESTALE))
    }

    /// Counts one kernel lookup of `object` reached as `name` in `parent`,
    /// adopting `fd` if the inode is new to the table.
    pub fn remember(&self, object: ObjectId, fd: OwnedFd, parent: u64, name: OsString) -> u64 {
        let ino = self.ino_of(object);
        let handle = self.handle(&fd);
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        let node = match table.get(&ino) {
            Some(node) if node.object == object && node.source.names(handle.as_deref()) => {
                node.lookups.fetch_add(1, Ordering::Relaxed);
                if let Source::Handle { key, .. } = &node.source {
                    LiveFds::shared().offer(*key, fd);
                }
                node.clone()
            }
            known => {
                // A known number whose inode was freed and reused keeps
                // the kernel's lookups, now for the new inode.
                let lookups = known
                    .filter(|n| n.object == object)
                    .map_or(0, |n| n.lookups.load(Ordering::Relaxed));
                let node = Arc::new(Node::new(self.source(fd, handle), object, lookups + 1));
                table.insert(ino, node.clone());
                node
            }
        };
        node.set_name(Some((parent, name)));
        ino
    }

    /// Makes `ino` stand for a new backing inode from now on, keeping its
    /// number (persisting the alias is the caller's job).
    pub fn repoint(&self, ino: u64, object: ObjectId, fd: OwnedFd, name: Option<(u64, OsString)>) {
        self.aliases
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(object, ino);
        let handle = self.handle(&fd);
        let source = self.source(fd, handle);
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        let lookups = table
            .get(&ino)
            .map_or(1, |n| n.lookups.load(Ordering::Relaxed));
        let node = Node::new(source, object, lookups);
        node.set_name(name);
        table.insert(ino, Arc::new(node));
    }

    /// Drops the alias of `object`; returns the number it presented.
    pub fn unalias(&self, object: ObjectId) -> Option<u64> {
        self.aliases
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&object)
    }

    /// Counts `n` kernel forgets of `ino`; true when the kernel no longer
    /// knows it (and the node is gone from the table).
    pub fn forget(&self, ino: u64, n: u64) -> bool {
        if ino == ROOT {
            return false;
        }
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        if let Some(node) = table.get(&ino) {
            let before = node.lookups.fetch_sub(
                n.min(node.lookups.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            if before <= n {
                table.remove(&ino);
                return true;
            }
        }
        false
    }
}

impl crate::cow::Namer for Nodes {
    fn place(&self, object: ObjectId) -> Option<Place> {
        let (parent, name) = self.get(self.ino_of(object)).ok()?.name()?;
        Some(Place {
            parent: self.place_handle(parent)?,
            name: std::os::unix::ffi::OsStringExt::into_vec(name),
        })
    }
}
