//! The browser's inode numbers and what it keeps of each inode the kernel
//! holds. A number is composed, never hashed: an allocated view number (one
//! per set and volume) in the high bits and the object's backing inode
//! number in the low bits; an object whose number does not fit gets one
//! allocated from the low range, kept while its set lives. So hard links
//! within a set share a number, the same file in two sets has two, and a
//! number never changes while the daemon runs, even after the kernel forgot
//! the inode, with nothing remembered per number to keep it so.
//!
//! Per inode the browser keeps only where to find it again (its parent and
//! its place in the parent's listing), while the kernel holds the inode
//! (its lookup count) or a child of it: FORGET frees it. A child pins its
//! parent, so the way to a held inode's live object never breaks.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use umbra_store::{Epoch, FileKind, ObjectId, SetId, VolumeId};

pub(crate) const ROOT: u64 = 1;
pub(crate) const LATEST: u64 = 2;
const FIRST_FREE: u64 = 3;

/// Backing inode numbers below 2^40 (every ext4 one, most of any other
/// filesystem's) are kept as they are in a number's low bits.
const VIEW_SHIFT: u32 = 40;
const OBJECT_MASK: u64 = (1 << VIEW_SHIFT) - 1;
/// View numbers start at 1: the high bits 0 are the low range.
const MAX_VIEWS: usize = (1 << (64 - VIEW_SHIFT)) - 1;

/// One volume of one set: every object of it is resolved at `epoch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct View {
    pub set: SetId,
    pub volume: VolumeId,
    pub epoch: Epoch,
}

/// An object of a set: enough to resolve it from the store and to find its
/// live inode.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ObjectNode {
    pub view: u32,
    pub set: SetId,
    pub volume: VolumeId,
    pub epoch: Epoch,
    pub object: ObjectId,
    pub kind: FileKind,
    /// The browser inode of a directory that lists it (a set directory for
    /// a volume root), and its position in that directory's sorted entries.
    pub parent: u64,
    pub index: u32,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Node {
    SetDir(SetId),
    Object(ObjectNode),
}

/// What is kept of an inode the kernel holds: 24 bytes.
#[derive(Debug)]
struct Held {
    parent: u64,
    /// The kernel's lookup count; once it reaches u32::MAX it stays there
    /// (the inode is kept for good rather than freed too early).
    lookups: u32,
    index: u32,
    /// Held inodes whose parent this is.
    children: u32,
    kind: FileKind,
}

#[derive(Default)]
struct Table {
    next: u64,
    set_dirs: HashMap<SetId, u64>,
    set_of_dir: HashMap<u64, SetId>,
    /// View `n` is `views[n - 1]`; None once its set is gone (numbers are
    /// never handed out twice).
    views: Vec<Option<View>>,
    view_numbers: HashMap<(SetId, VolumeId), u32>,
    wide: HashMap<(u32, ObjectId), u64>,
    wide_of: HashMap<u64, (u32, ObjectId)>,
    /// A B-tree grows a node at a time: no doubling of a million-entry
    /// table (and its peak of both copies) as a hash map would.
    held: BTreeMap<u64, Held>,
}

impl Table {
    fn number(&mut self, view: u32, object: ObjectId) -> u64 {
        if object.0 <= OBJECT_MASK {
            return (u64::from(view) << VIEW_SHIFT) | object.0;
        }
        if let Some(ino) = self.wide.get(&(view, object)) {
            return *ino;
        }
        let ino = self.next;
        self.next += 1;
        self.wide.insert((view, object), ino);
        self.wide_of.insert(ino, (view, object));
        ino
    }

    fn decode(&self, ino: u64) -> Option<(u32, ObjectId)> {
        let view = (ino >> VIEW_SHIFT) as u32;
        if view == 0 {
            self.wide_of.get(&ino).copied()
        } else {
            Some((view, ObjectId(ino & OBJECT_MASK)))
        }
    }

    fn view(&self, n: u32) -> Option<View> {
        *self.views.get((n as usize).checked_sub(1)?)?
    }

    /// Drops `n` of the kernel's references to `ino`, and whatever that
    /// leaves unreferenced up the parent chain.
    fn release(&mut self, mut ino: u64, mut n: u64) {
        loop {
            let Some(h) = self.held.get_mut(&ino) else {
                return;
            };
            if h.lookups != u32::MAX {
                h.lookups = h
                    .lookups
                    .saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
            }
            if h.lookups > 0 || h.children > 0 {
                return;
            }
            let parent = h.parent;
            self.held.remove(&ino);
            match self.held.get_mut(&parent) {
                Some(p) => p.children = p.children.saturating_sub(1),
                None => return,
            }
            ino = parent;
            n = 0;
        }
    }
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

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A set directory or an object the kernel holds.
    pub fn get(&self, ino: u64) -> Option<Node> {
        let t = self.read();
        if let Some(set) = t.set_of_dir.get(&ino) {
            return Some(Node::SetDir(*set));
        }
        let h = t.held.get(&ino)?;
        let (view, object) = t.decode(ino)?;
        let v = t.view(view)?;
        Some(Node::Object(ObjectNode {
            view,
            set: v.set,
            volume: v.volume,
            epoch: v.epoch,
            object,
            kind: h.kind,
            parent: h.parent,
            index: h.index,
        }))
    }

    pub fn set_dir(&self, set: SetId) -> u64 {
        if let Some(ino) = self.read().set_dirs.get(&set) {
            return *ino;
        }
        let mut t = self.write();
        if let Some(ino) = t.set_dirs.get(&set) {
            return *ino;
        }
        let ino = t.next;
        t.next += 1;
        t.set_dirs.insert(set, ino);
        t.set_of_dir.insert(ino, set);
        ino
    }

    /// The view number of a volume of a set; None when all are used up.
    pub fn view(&self, set: SetId, volume: VolumeId, epoch: Epoch) -> Option<u32> {
        if let Some(n) = self.read().view_numbers.get(&(set, volume)) {
            return Some(*n);
        }
        let mut t = self.write();
        if let Some(n) = t.view_numbers.get(&(set, volume)) {
            return Some(*n);
        }
        if t.views.len() >= MAX_VIEWS {
            return None;
        }
        t.views.push(Some(View { set, volume, epoch }));
        let n = t.views.len() as u32;
        t.view_numbers.insert((set, volume), n);
        Some(n)
    }

    /// The number of `object` in view `view`, held or not.
    pub fn number(&self, view: u32, object: ObjectId) -> u64 {
        if object.0 <= OBJECT_MASK {
            return (u64::from(view) << VIEW_SHIFT) | object.0;
        }
        if let Some(ino) = self.read().wide.get(&(view, object)) {
            return *ino;
        }
        self.write().number(view, object)
    }

    /// Counts one kernel lookup of `node` (reached through its parent) and
    /// returns its number.
    pub fn hold(&self, node: &ObjectNode) -> u64 {
        let mut t = self.write();
        let ino = t.number(node.view, node.object);
        if let Some(h) = t.held.get_mut(&ino) {
            h.lookups = h.lookups.saturating_add(1);
            return ino;
        }
        if let Some(p) = t.held.get_mut(&node.parent) {
            p.children += 1;
        }
        t.held.insert(
            ino,
            Held {
                parent: node.parent,
                lookups: 1,
                index: node.index,
                children: 0,
                kind: node.kind,
            },
        );
        ino
    }

    /// The kernel forgot `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        self.write().release(ino, n);
    }

    /// Forgets every inode of a deleted set and returns its view numbers;
    /// they are never reused, so a stale number of it finds nothing.
    pub fn drop_set(&self, set: SetId) -> Vec<u32> {
        let mut t = self.write();
        if let Some(ino) = t.set_dirs.remove(&set) {
            t.set_of_dir.remove(&ino);
        }
        let mut gone = Vec::new();
        for (i, v) in t.views.iter_mut().enumerate() {
            if v.is_some_and(|v| v.set == set) {
                *v = None;
                gone.push(i as u32 + 1);
            }
        }
        t.view_numbers.retain(|(s, _), _| *s != set);
        t.wide.retain(|(view, _), _| !gone.contains(view));
        t.wide_of.retain(|_, (view, _)| !gone.contains(view));
        let Table { held, wide_of, .. } = &mut *t;
        held.retain(|ino, _| {
            let view = (ino >> VIEW_SHIFT) as u32;
            !(gone.contains(&view) || (view == 0 && !wide_of.contains_key(ino)))
        });
        gone
    }

    /// The view an inode number belongs to, held or not; None for the
    /// top level and for numbers of deleted sets' wide objects.
    pub fn view_of(&self, ino: u64) -> Option<u32> {
        self.read().decode(ino).map(|(view, _)| view)
    }

    #[cfg(test)]
    fn held_count(&self) -> usize {
        self.read().held.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod tests {
    use super::*;

    fn node(view: u32, object: u64, parent: u64, index: u32) -> ObjectNode {
        ObjectNode {
            view,
            set: SetId(1),
            volume: VolumeId(1),
            epoch: Epoch(1),
            object: ObjectId(object),
            kind: FileKind::Directory,
            parent,
            index,
        }
    }

    #[test]
    fn numbers_stay_the_same_after_the_kernel_forgets() {
        let inodes = Inodes::new();
        let set_dir = inodes.set_dir(SetId(1));
        let v = inodes.view(SetId(1), VolumeId(1), Epoch(1)).unwrap();
        let root = inodes.hold(&node(v, 2, set_dir, 0));
        let wide = inodes.hold(&node(v, u64::MAX - 5, root, 0));
        let small = inodes.hold(&node(v, 12, root, 1));
        assert_eq!(inodes.held_count(), 3);
        inodes.forget(wide, 1);
        inodes.forget(small, 1);
        inodes.forget(root, 1);
        assert_eq!(
            inodes.held_count(),
            0,
            "FORGET frees what the kernel let go"
        );
        let root2 = inodes.hold(&node(v, 2, set_dir, 0));
        assert_eq!(root2, root);
        assert_eq!(inodes.hold(&node(v, u64::MAX - 5, root, 0)), wide);
        assert_eq!(inodes.hold(&node(v, 12, root, 1)), small);
        assert_ne!(wide, small);
        assert!((FIRST_FREE..1 << VIEW_SHIFT).contains(&wide));
    }

    #[test]
    fn a_held_child_pins_its_parent() {
        let inodes = Inodes::new();
        let set_dir = inodes.set_dir(SetId(1));
        let v = inodes.view(SetId(1), VolumeId(1), Epoch(1)).unwrap();
        let root = inodes.hold(&node(v, 2, set_dir, 0));
        let dir = inodes.hold(&node(v, 10, root, 0));
        let file = inodes.hold(&node(v, 11, dir, 0));
        inodes.hold(&node(v, 11, dir, 0));
        inodes.forget(dir, 1);
        inodes.forget(root, 1);
        let Some(Node::Object(f)) = inodes.get(file) else {
            panic!("file held");
        };
        assert_eq!(f.parent, dir);
        assert!(inodes.get(dir).is_some(), "a held child keeps its parent");
        assert!(inodes.get(root).is_some());
        inodes.forget(file, 1);
        assert!(inodes.get(file).is_some(), "two lookups, one forgotten");
        inodes.forget(file, 1);
        assert_eq!(inodes.held_count(), 0);
    }

    #[test]
    fn sets_and_views_never_share_numbers() {
        let inodes = Inodes::new();
        let a = inodes.view(SetId(1), VolumeId(1), Epoch(1)).unwrap();
        let b = inodes.view(SetId(2), VolumeId(1), Epoch(2)).unwrap();
        let c = inodes.view(SetId(2), VolumeId(2), Epoch(7)).unwrap();
        assert_eq!(inodes.view(SetId(1), VolumeId(1), Epoch(1)), Some(a));
        let nums = [
            inodes.number(a, ObjectId(5)),
            inodes.number(b, ObjectId(5)),
            inodes.number(c, ObjectId(5)),
            inodes.number(a, ObjectId(u64::MAX)),
            inodes.number(b, ObjectId(u64::MAX)),
            inodes.set_dir(SetId(1)),
            inodes.set_dir(SetId(2)),
            ROOT,
            LATEST,
        ];
        let unique: std::collections::HashSet<_> = nums.iter().collect();
        assert_eq!(unique.len(), nums.len());
        let held = inodes.hold(&node(b, 5, inodes.set_dir(SetId(2)), 0));
        inodes.drop_set(SetId(2));
        assert!(inodes.get(held).is_none());
        assert!(inodes.get(nums[6]).is_none());
        let d = inodes.view(SetId(2), VolumeId(1), Epoch(2)).unwrap();
        assert_ne!(d, b, "a gone set's view number is not handed out again");
    }
}
