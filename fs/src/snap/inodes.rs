//! The browser's inode numbers, allocated (never hashed): one per set
//! directory and one per (set, volume, object), so that hard links within a
//! set share a number and the same file in two sets has two. Numbers stay
//! fixed for the daemon's lifetime.

use std::collections::HashMap;
use std::ffi::OsString;
use std::sync::{Arc, RwLock};

use umbra_store::{Epoch, FileKind, ObjectId, SetId, VolumeId};

pub(crate) const ROOT: u64 = 1;
pub(crate) const LATEST: u64 = 2;
const FIRST_FREE: u64 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    SetDir(SetId),
    Object(SetId, VolumeId, ObjectId),
}

/// Where an object of a set lives: enough to resolve it from the store and
/// to find its live inode.
#[derive(Debug)]
pub(crate) struct ObjectNode {
    pub set: SetId,
    pub volume: VolumeId,
    pub epoch: Epoch,
    pub object: ObjectId,
    pub kind: FileKind,
    /// The browser inode of a directory that lists it, and the name there.
    pub parent: u64,
    pub name: OsString,
}

#[derive(Debug)]
pub(crate) enum Node {
    SetDir(SetId),
    Object(ObjectNode),
}

#[derive(Default)]
struct Table {
    next: u64,
    by_key: HashMap<Key, u64>,
    nodes: HashMap<u64, Arc<Node>>,
}

pub(crate) struct Inodes {
    table: RwLock<Table>,
}

impl Inodes {
    pub fn new() -> Inodes {
        Inodes {
            table: RwLock::new(Table {
                next: FIRST_FREE,
                ..Table::default()
            }),
        }
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Node>> {
        self.table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .nodes
            .get(&ino)
            .cloned()
    }

    pub fn set_dir(&self, set: SetId) -> u64 {
        self.intern(Key::SetDir(set), || Node::SetDir(set))
    }

    pub fn object(&self, node: ObjectNode) -> u64 {
        self.intern(Key::Object(node.set, node.volume, node.object), || {
            Node::Object(node)
        })
    }

    fn intern(&self, key: Key, make: impl FnOnce() -> Node) -> u64 {
        if let Some(ino) = self
            .table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_key
            .get(&key)
        {
            return *ino;
        }
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        if let Some(ino) = t.by_key.get(&key) {
            return *ino;
        }
        let ino = t.next;
        t.next += 1;
        t.by_key.insert(key, ino);
        t.nodes.insert(ino, Arc::new(make()));
        ino
    }

    /// Forgets every inode of a deleted set.
    pub fn drop_set(&self, set: SetId) {
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<(Key, u64)> = t
            .by_key
            .iter()
            .filter(|(k, _)| matches!(k, Key::SetDir(s) | Key::Object(s, _, _) if *s == set))
            .map(|(k, i)| (*k, *i))
            .collect();
        for (key, ino) in gone {
            t.by_key.remove(&key);
            t.nodes.remove(&ino);
        }
    }
}
