//! The live mount's inode table. FUSE inode numbers are the backing inode
//! numbers (stable across restarts), with three exceptions: the volume root
//! is 1, whatever has backing number 1 takes the root's number, and an inode
//! that took the place of one moved aside by a truncation presents the old
//! number (an alias, kept in the catalog). Each known inode holds an O_PATH
//! descriptor, never a path, counted by kernel lookups, and the last name it
//! was reached by (a hint, always checked before use).

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use umbra_store::ObjectId;

use crate::{FsError, Result};

pub(crate) const ROOT: u64 = 1;

pub(crate) struct Node {
    pub fd: OwnedFd,
    pub object: ObjectId,
    lookups: AtomicU64,
    name: Mutex<Option<(u64, OsString)>>,
    /// `security.capability` as last read (value or errno): asked for before
    /// writes (by the kernel, or by umbra itself when it kills privileges),
    /// and only umbra changes it while mounted.
    capability: Mutex<Option<Result<Vec<u8>, i32>>>,
}

impl Node {
    fn new(fd: OwnedFd, object: ObjectId, lookups: u64) -> Node {
        Node {
            fd,
            object,
            lookups: AtomicU64::new(lookups),
            name: Mutex::new(None),
            capability: Mutex::new(None),
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
}

impl Nodes {
    pub fn new(root_fd: OwnedFd, root_object: ObjectId, aliases: Vec<(ObjectId, u64)>) -> Nodes {
        let mut table = HashMap::new();
        table.insert(ROOT, Arc::new(Node::new(root_fd, root_object, 1)));
        Nodes {
            root_object,
            table: RwLock::new(table),
            aliases: RwLock::new(aliases.into_iter().collect()),
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
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        let node = match table.get(&ino) {
            Some(node) if node.object == object => {
                node.lookups.fetch_add(1, Ordering::Relaxed);
                node.clone()
            }
            _ => {
                let node = Arc::new(Node::new(fd, object, 1));
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
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        let lookups = table
            .get(&ino)
            .map_or(1, |n| n.lookups.load(Ordering::Relaxed));
        let node = Node::new(fd, object, lookups);
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
