//! `umbra diff` of a btrfs volume, read from the two snapshots' trees
//! rather than by walking them, so the cost follows the changes, not the
//! files.
//!
//! btrfs keeps an inode's number across snapshots, and every inode item
//! carries the transaction that last wrote it. Tree search over the newer
//! snapshot's tree with `min_transid` just past the older snapshot's
//! creation returns only the leaves written since (the kernel skips every
//! subtree older than that, as `btrfs subvolume find-new` does): their
//! inode items written since are the objects that may have changed. Every
//! change to an inode (data, mode, owner, times, xattrs, links) rewrites
//! its item, and every change of a directory's entries rewrites the
//! directory's (size, mtime), so nothing that changed is missed; an item
//! rewritten with nothing visible changed (atime) is dropped by the
//! comparison. The changed directories are listed at both ends by their
//! DIR_INDEX items, names by INODE_REF/INODE_EXTREF items, and diff.rs
//! pairs, walks and compares as for every provider. A file's bytes are
//! compared by its extent items first: stretches that point at the same
//! disk bytes at both ends (or read as zeros at both) are not read; only
//! the others are read and compared.
//!
//! Why not a send stream (BTRFS_IOC_SEND with NO_FILE_DATA between the two
//! snapshots): it costs the same tree comparison, but names everything
//! through orphan renames (`o257-12-0`) that would have to be replayed to
//! say what moved where, and it says which extents were rewritten, not
//! whether their bytes differ. The items themselves say both directly.
//!
//! An inode number is the same object at both ends only if its generation
//! (the transaction that created it) is too: a number freed can be given
//! again after a remount. Such an old inode is told apart by [`REBORN`].
//! The live end is a read-only snapshot taken for the diff and destroyed
//! after it (provider's `changes`): the live tree's items lag behind its
//! files (btrfs delays inode and directory index updates until a commit),
//! and a snapshot is one instant, where a live tree changes under a
//! search.

use std::collections::HashSet;
use std::path::PathBuf;

use umbra_store::{AttrRecord, DirEntry, FileKind, ObjectId};

use super::search::Extent;
use super::tree::{Target, Tree};
use crate::backing;
use crate::changes::diff::{End, Ends};
use crate::{FsError, Result};

/// The object id of an old inode whose number a newer one was given.
const REBORN: u64 = 1 << 63;
/// The object id of a subvolume inside the volume, by its tree id.
const SUBVOLUME: u64 = 1 << 62;
/// Bytes compared at a time.
const CHUNK: usize = 1 << 20;

/// Two snapshots of a btrfs volume, the older and the newer.
pub(crate) struct BtrfsEnds {
    old: Tree,
    new: Tree,
    /// Inode numbers the newer tree gave to another inode than the older.
    reborn: HashSet<u64>,
    changed: Vec<u64>,
    changed_set: HashSet<u64>,
    dirs: Vec<u64>,
    examined: usize,
}

impl BtrfsEnds {
    /// What may have changed from `old` to `new` (`new` made later).
    pub fn new(mut old: Tree, mut new: Tree) -> Result<BtrfsEnds> {
        if new.otransid < old.otransid {
            return Err(FsError::from_errno(libc::EINVAL));
        }
        let written = new.written_since(old.otransid)?;
        let examined = written.len();
        let mut reborn = HashSet::new();
        let mut changed = Vec::with_capacity(written.len());
        let mut dirs = Vec::new();
        for (ino, item) in written {
            if let Some(before) = old.inode(ino)?
                && before.item.generation != item.generation
            {
                reborn.insert(ino);
            }
            if FileKind::from_mode(item.mode) == Some(FileKind::Directory) {
                dirs.push(ino);
            }
            changed.push(ino);
        }
        Ok(BtrfsEnds {
            old,
            new,
            reborn,
            changed_set: changed.iter().copied().collect(),
            changed,
            dirs,
            examined,
        })
    }

    fn tree(&mut self, end: End) -> &mut Tree {
        match end {
            End::Old => &mut self.old,
            End::New => &mut self.new,
        }
    }

    /// The inode number `object` has in `end`'s tree; None if the object
    /// is not an inode of that end.
    fn ino(&self, end: End, object: ObjectId) -> Option<u64> {
        let o = object.0;
        if o & SUBVOLUME != 0 {
            return None;
        }
        if o & REBORN != 0 {
            return (end == End::Old).then_some(o & !REBORN);
        }
        if end == End::Old && self.reborn.contains(&o) {
            return None;
        }
        Some(o)
    }

    fn object(&self, end: End, target: Target) -> ObjectId {
        match target {
            Target::Subvolume(id) => ObjectId(SUBVOLUME | id),
            Target::Inode(ino) if end == End::Old && self.reborn.contains(&ino) => {
                ObjectId(REBORN | ino)
            }
            Target::Inode(ino) => ObjectId(ino),
        }
    }
}

impl Ends for BtrfsEnds {
    // A removed directory's inode is in neither tree's changed leaves.
    const NAMES_REMOVED_DIRS: bool = false;

    fn changed_objects(&mut self) -> Result<Vec<ObjectId>> {
        Ok(self.changed.iter().map(|i| ObjectId(*i)).collect())
    }

    fn changed_dirs(&mut self) -> Result<Vec<ObjectId>> {
        Ok(self.dirs.iter().map(|i| ObjectId(*i)).collect())
    }

    fn entries(&mut self, end: End, dir: ObjectId) -> Result<Vec<DirEntry>> {
        let Some(ino) = self.ino(end, dir) else {
            return Ok(Vec::new());
        };
        if !self.changed_set.contains(&ino) {
            // A directory that came or went with its subtree.
            self.examined += 1;
        }
        let entries = self.tree(end).entries(ino)?;
        Ok(entries
            .into_iter()
            .map(|e| DirEntry {
                object: self.object(end, e.target),
                name: e.name,
                kind: e.kind,
            })
            .collect())
    }

    fn listing(&mut self, end: End, dir: ObjectId) -> Result<Vec<DirEntry>> {
        // A directory's index items exist exactly while it does.
        self.entries(end, dir)
    }

    fn path(&mut self, end: End, object: ObjectId) -> Result<Option<PathBuf>> {
        let Some(ino) = self.ino(end, object) else {
            return Ok(None);
        };
        Ok(self.tree(end).path(ino)?)
    }

    fn attrs(&mut self, end: End, object: ObjectId) -> Result<Option<AttrRecord>> {
        let Some(ino) = self.ino(end, object) else {
            return Ok(None);
        };
        Ok(self.tree(end).inode(ino)?.map(|i| i.attrs()))
    }

    fn content_differs(&mut self, object: ObjectId) -> Result<bool> {
        let Some(ino) = self.ino(End::New, object) else {
            return Ok(false);
        };
        let (Some(before), Some(after)) = (self.old.inode(ino)?, self.new.inode(ino)?) else {
            return Ok(false);
        };
        let size = after.item.size;
        let ranges = differing(&self.old.extents(ino)?, &self.new.extents(ino)?, size);
        if ranges.is_empty() {
            return Ok(false);
        }
        let open = |tree: &Tree, generation| -> Result<std::fs::File> {
            Ok(backing::as_file(tree.open_inode(
                ino,
                generation,
                libc::O_RDONLY | libc::O_NOFOLLOW,
            )?))
        };
        let a = open(&self.old, before.item.generation)?;
        let b = open(&self.new, after.item.generation)?;
        let most = ranges.iter().map(|(a, b)| b - a).max().unwrap_or(0);
        let room = usize::try_from(most).unwrap_or(CHUNK).min(CHUNK);
        let (mut x, mut y) = (vec![0u8; room], vec![0u8; room]);
        for (start, end) in ranges {
            let mut at = start;
            while at < end {
                let len = (end - at).min(room as u64) as usize;
                let n = backing::pread_full(&a, &mut x[..len], at)?;
                let m = backing::pread_full(&b, &mut y[..len], at)?;
                if x[..n] != y[..m] {
                    return Ok(true);
                }
                if n < len {
                    break;
                }
                at += len as u64;
            }
        }
        Ok(false)
    }

    fn examined(&self) -> usize {
        self.examined
    }

    fn searched(&self) -> bool {
        false
    }
}

/// Where byte `at` of a file reads from.
#[derive(Debug, PartialEq, Eq)]
enum Source<'a> {
    Zeros,
    /// (disk extent, its length, compression, offset into it).
    Disk(u64, u64, u8, u64),
    /// Kept in the tree: the bytes from `at` on (None if compressed: only
    /// reading the file tells).
    Inline(Option<&'a [u8]>),
}

fn source(extents: &[(u64, u64, Extent)], at: u64) -> Source<'_> {
    let i = extents.partition_point(|(start, _, _)| *start <= at);
    let Some((start, len, extent)) = i.checked_sub(1).map(|i| &extents[i]) else {
        return Source::Zeros;
    };
    if at >= start.saturating_add(*len) {
        return Source::Zeros;
    }
    match extent {
        Extent::Zeros => Source::Zeros,
        Extent::Inline(data) => Source::Inline(
            data.as_deref()
                .and_then(|d| d.get(usize::try_from(at - start).ok()?..)),
        ),
        Extent::Disk {
            bytenr,
            disk_bytes,
            compression,
            offset,
        } => Source::Disk(*bytenr, *disk_bytes, *compression, offset + (at - start)),
    }
}

/// The byte ranges of a file of `size` bytes whose extents at the two
/// ends do not point at the same bytes (or at zeros at both), merged.
fn differing(old: &[(u64, u64, Extent)], new: &[(u64, u64, Extent)], size: u64) -> Vec<(u64, u64)> {
    let mut cuts: Vec<u64> = vec![0, size];
    for (start, len, _) in old.iter().chain(new) {
        cuts.push(*start);
        cuts.push(start.saturating_add(*len));
    }
    cuts.retain(|c| *c <= size);
    cuts.sort_unstable();
    cuts.dedup();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for w in cuts.windows(2) {
        let (a, b) = (w[0], w[1]);
        let (x, y) = (source(old, a), source(new, a));
        let len = usize::try_from(b - a).unwrap_or(usize::MAX);
        let same = match (&x, &y) {
            (Source::Inline(Some(x)), Source::Inline(Some(y))) => {
                x.len() >= len && y.len() >= len && x[..len] == y[..len]
            }
            (Source::Inline(_), _) | (_, Source::Inline(_)) => false,
            _ => x == y,
        };
        if same {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 == a => last.1 = b,
            _ => out.push((a, b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(bytenr: u64, offset: u64) -> Extent {
        Extent::Disk {
            bytenr,
            disk_bytes: 1 << 20,
            compression: 0,
            offset,
        }
    }

    #[test]
    fn only_stretches_on_other_disk_bytes_are_read() {
        let old = vec![(0, 8192, disk(100, 0))];
        // A 4 KiB rewrite in the middle of the same file.
        let new = vec![
            (0, 4096, disk(100, 0)),
            (4096, 2048, disk(200, 0)),
            (6144, 2048, disk(100, 6144)),
        ];
        assert_eq!(differing(&old, &new, 8192), [(4096, 6144)]);
        assert!(differing(&old, &old, 8192).is_empty());
        // A hole at one end, unwritten space at the other: zeros both.
        let zeros = vec![(0, 8192, Extent::Zeros)];
        assert!(differing(&[], &zeros, 8192).is_empty());
        // Inline bytes are compared as the tree keeps them; compressed
        // ones are read.
        let inline = |b: &[u8]| vec![(0, b.len() as u64, Extent::Inline(Some(b.to_vec())))];
        assert!(differing(&inline(b"0123456789"), &inline(b"0123456789"), 10).is_empty());
        assert_eq!(
            differing(&inline(b"0123456789"), &inline(b"0123x56789"), 10),
            [(0, 10)]
        );
        let packed = vec![(0, 10, Extent::Inline(None))];
        assert_eq!(differing(&packed, &packed, 10), [(0, 10)]);
        // Shifted within the same disk extent: other bytes.
        assert_eq!(
            differing(&old, &[(0, 8192, disk(100, 4096))], 8192),
            [(0, 8192)]
        );
    }
}
