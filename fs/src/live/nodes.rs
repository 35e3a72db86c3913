//! The live mount's inode table: FUSE inode numbers are the backing inode
//! numbers (stable across restarts), except that the volume root is 1 and
//! whatever has backing number 1 takes the root's number. Each known inode
//! holds an O_PATH descriptor, never a path, counted by kernel lookups.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use umbra_store::ObjectId;

use crate::{FsError, Result};

pub(crate) const ROOT: u64 = 1;

pub(crate) struct Node {
    pub fd: OwnedFd,
    pub object: ObjectId,
    lookups: AtomicU64,
}

pub(crate) struct Nodes {
    root_object: ObjectId,
    table: RwLock<HashMap<u64, Arc<Node>>>,
}

impl Nodes {
    pub fn new(root_fd: OwnedFd, root_object: ObjectId) -> Nodes {
        let mut table = HashMap::new();
        table.insert(
            ROOT,
            Arc::new(Node {
                fd: root_fd,
                object: root_object,
                lookups: AtomicU64::new(1),
            }),
        );
        Nodes {
            root_object,
            table: RwLock::new(table),
        }
    }

    /// The FUSE inode number of a backing object.
    pub fn ino_of(&self, object: ObjectId) -> u64 {
        if object == self.root_object {
            ROOT
        } else if object.0 == ROOT {
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

    /// Counts one kernel lookup of `object`, adopting `fd` if the inode is
    /// new to the table.
    pub fn remember(&self, object: ObjectId, fd: OwnedFd) -> u64 {
        let ino = self.ino_of(object);
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        match table.get(&ino) {
            Some(node) if node.object == object => {
                node.lookups.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                table.insert(
                    ino,
                    Arc::new(Node {
                        fd,
                        object,
                        lookups: AtomicU64::new(1),
                    }),
                );
            }
        }
        ino
    }

    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        if let Some(node) = table.get(&ino) {
            let before = node.lookups.fetch_sub(
                n.min(node.lookups.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            if before <= n {
                table.remove(&ino);
            }
        }
    }
}
