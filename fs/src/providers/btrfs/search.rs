//! Reading a btrfs tree's items by key with BTRFS_IOC_TREE_SEARCH_V2 (the
//! ioctl `btrfs subvolume find-new` and `btrfs inspect-internal` use), and
//! parsing the few item kinds the diff needs: inode items, inode refs,
//! directory entries, xattrs and file extents (the on-disk layouts of the
//! kernel's fs/btrfs/accessors.h, little-endian and packed).
//!
//! A search names a tree by id, so any descriptor on the filesystem can
//! read any subvolume or snapshot, without a path. It needs CAP_SYS_ADMIN.
//! It never writes.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};

use umbra_store::{FileKind, Timestamp};

pub(crate) const INODE_ITEM: u8 = 1;
pub(crate) const INODE_REF: u8 = 12;
pub(crate) const INODE_EXTREF: u8 = 13;
pub(crate) const XATTR_ITEM: u8 = 24;
pub(crate) const DIR_INDEX: u8 = 96;
pub(crate) const EXTENT_DATA: u8 = 108;
pub(crate) const ROOT_ITEM: u8 = 132;

/// The search buffer: a leaf is at most 64 KiB, so any item fits, and a
/// scan of changed leaves takes a few calls.
const BUF_BYTES: usize = 256 << 10;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: u64,
    unused2: u64,
    unused3: u64,
    unused4: u64,
}

#[repr(C)]
struct SearchArgsV2 {
    key: SearchKey,
    buf_size: u64,
    // Followed by buf_size bytes of results.
}

/// struct btrfs_ioctl_search_header.
const HEADER_BYTES: usize = 32;

const TREE_SEARCH_V2: u64 =
    (3 << 30) | ((size_of::<SearchArgsV2>() as u64) << 16) | (0x94 << 8) | 17;

/// A key of a btrfs tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key {
    pub objectid: u64,
    pub kind: u8,
    pub offset: u64,
}

impl Key {
    pub const fn new(objectid: u64, kind: u8, offset: u64) -> Key {
        Key {
            objectid,
            kind,
            offset,
        }
    }

    /// The next key in the tree's order, None past the last.
    fn next(self) -> Option<Key> {
        if self.offset < u64::MAX {
            Some(Key::new(self.objectid, self.kind, self.offset + 1))
        } else if self.kind < u8::MAX {
            Some(Key::new(self.objectid, self.kind + 1, 0))
        } else if self.objectid < u64::MAX {
            Some(Key::new(self.objectid + 1, 0, 0))
        } else {
            None
        }
    }
}

/// Tree searches through one buffer, kept between them (a diff makes
/// thousands of small searches).
pub(crate) struct Searcher {
    /// u64 words: the kernel's buffer is u64-aligned.
    words: Vec<u64>,
}

impl Searcher {
    pub fn new() -> Searcher {
        Searcher {
            words: vec![0u64; (size_of::<SearchArgsV2>() + BUF_BYTES) / 8],
        }
    }

    /// Calls `each` with every item of tree `tree` whose key is in
    /// `min..=max` (keys compare as tuples), in key order; with `min_transid`,
    /// only those in leaves written in that transaction or later (the kernel
    /// skips whole subtrees older than that). `each` returns false to stop;
    /// its error stops the search and is returned.
    pub fn search(
        &mut self,
        fd: BorrowedFd<'_>,
        tree: u64,
        min: Key,
        max: Key,
        min_transid: u64,
        mut each: impl FnMut(Key, &[u8]) -> io::Result<bool>,
    ) -> io::Result<()> {
        let words = &mut self.words;
        let mut from = min;
        loop {
            let key = SearchKey {
                tree_id: tree,
                min_objectid: from.objectid,
                max_objectid: max.objectid,
                min_offset: from.offset,
                max_offset: max.offset,
                min_transid,
                max_transid: u64::MAX,
                min_type: u32::from(from.kind),
                max_type: u32::from(max.kind),
                nr_items: u32::MAX,
                ..SearchKey::default()
            };
            let args = words.as_mut_ptr().cast::<SearchArgsV2>();
            // SAFETY: `words` is u64-aligned and larger than SearchArgsV2 plus
            // BUF_BYTES; the kernel writes at most buf_size bytes after it.
            let ret = unsafe {
                args.write(SearchArgsV2 {
                    key,
                    buf_size: BUF_BYTES as u64,
                });
                libc::ioctl(fd.as_raw_fd(), TREE_SEARCH_V2 as _, args)
            };
            if ret < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: the kernel filled the key back in; `args` is still ours.
            let found = unsafe { (*args).key.nr_items };
            if found == 0 {
                return Ok(());
            }
            // SAFETY: the results start right after the args, within `words`.
            let bytes: &[u8] = unsafe {
                std::slice::from_raw_parts(
                    words.as_ptr().cast::<u8>().add(size_of::<SearchArgsV2>()),
                    BUF_BYTES,
                )
            };
            let mut at = 0usize;
            let mut last = from;
            for _ in 0..found {
                let header = bytes
                    .get(at..at + HEADER_BYTES)
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
                let objectid = u64_at(header, 8);
                let offset = u64_at(header, 16);
                let kind = u32_at(header, 24) as u8;
                let len = u32_at(header, 28) as usize;
                let data = bytes
                    .get(at + HEADER_BYTES..at + HEADER_BYTES + len)
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
                at += HEADER_BYTES + len;
                last = Key::new(objectid, kind, offset);
                if !each(last, data)? {
                    return Ok(());
                }
            }
            match last.next() {
                Some(next) if next <= max => from = next,
                _ => return Ok(()),
            }
        }
    }

    /// Every item of one object's keys of kinds `kinds`, in key order.
    pub fn items_of(
        &mut self,
        fd: BorrowedFd<'_>,
        tree: u64,
        objectid: u64,
        kinds: std::ops::RangeInclusive<u8>,
    ) -> io::Result<Vec<(Key, Vec<u8>)>> {
        let mut out = Vec::new();
        self.search(
            fd,
            tree,
            Key::new(objectid, *kinds.start(), 0),
            Key::new(objectid, *kinds.end(), u64::MAX),
            0,
            |key, data| {
                out.push((key, data.to_vec()));
                Ok(true)
            },
        )?;
        Ok(out)
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        w.copy_from_slice(s);
    }
    u64::from_le_bytes(w)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        w.copy_from_slice(s);
    }
    u32::from_le_bytes(w)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut w = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        w.copy_from_slice(s);
    }
    u16::from_le_bytes(w)
}

fn bad() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "a btrfs item shorter than its kind",
    )
}

/// struct btrfs_inode_item: what the diff compares of an inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InodeItem {
    /// The transaction that created the inode: with the inode number, its
    /// identity (a number freed can be given again after a remount).
    pub generation: u64,
    /// The transaction that last wrote the item.
    pub transid: u64,
    pub size: u64,
    pub nbytes: u64,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub rdev: u64,
    pub atime: Timestamp,
    pub ctime: Timestamp,
    pub mtime: Timestamp,
}

const INODE_ITEM_BYTES: usize = 160;

fn timespec_at(b: &[u8], at: usize) -> Timestamp {
    Timestamp {
        secs: u64_at(b, at) as i64,
        nanos: u32_at(b, at + 8),
    }
}

impl InodeItem {
    pub fn parse(b: &[u8]) -> io::Result<InodeItem> {
        if b.len() < INODE_ITEM_BYTES {
            return Err(bad());
        }
        Ok(InodeItem {
            generation: u64_at(b, 0),
            transid: u64_at(b, 8),
            size: u64_at(b, 16),
            nbytes: u64_at(b, 24),
            nlink: u32_at(b, 40),
            uid: u32_at(b, 44),
            gid: u32_at(b, 48),
            mode: u32_at(b, 52),
            rdev: u64_at(b, 56),
            atime: timespec_at(b, 112),
            ctime: timespec_at(b, 124),
            mtime: timespec_at(b, 136),
        })
    }
}

/// One name of an inode: its directory and the name in it.
pub(crate) fn inode_refs(key: Key, b: &[u8]) -> io::Result<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        // INODE_REF: { index u64, name_len u16, name }, the directory in
        // the key; INODE_EXTREF: { parent u64, index u64, name_len u16, name }.
        let (parent, len_at) = match key.kind {
            INODE_REF => (key.offset, at + 8),
            INODE_EXTREF => (u64_at(b, at), at + 16),
            _ => return Ok(out),
        };
        let len = usize::from(u16_at(b, len_at));
        let name = b.get(len_at + 2..len_at + 2 + len).ok_or_else(bad)?;
        out.push((parent, name.to_vec()));
        at = len_at + 2 + len;
    }
    Ok(out)
}

/// struct btrfs_dir_item, as a DIR_INDEX or XATTR_ITEM holds it.
pub(crate) struct DirItem<'a> {
    /// The key it points at: an inode (INODE_ITEM), or for a subvolume
    /// inside this one, its tree (ROOT_ITEM).
    pub location: Key,
    pub kind: u8,
    pub name: &'a [u8],
    /// An xattr's value.
    pub data: &'a [u8],
}

const DIR_ITEM_BYTES: usize = 30;

/// The dir items packed in one item (an XATTR_ITEM holds every name with
/// the same hash).
pub(crate) fn dir_items(b: &[u8]) -> io::Result<Vec<DirItem<'_>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let head = b.get(at..at + DIR_ITEM_BYTES).ok_or_else(bad)?;
        let location = Key::new(u64_at(head, 0), head[8], u64_at(head, 9));
        let data_len = usize::from(u16_at(head, 25));
        let name_len = usize::from(u16_at(head, 27));
        let kind = head[29];
        let name_at = at + DIR_ITEM_BYTES;
        let name = b.get(name_at..name_at + name_len).ok_or_else(bad)?;
        let data = b
            .get(name_at + name_len..name_at + name_len + data_len)
            .ok_or_else(bad)?;
        out.push(DirItem {
            location,
            kind,
            name,
            data,
        });
        at = name_at + name_len + data_len;
    }
    Ok(out)
}

/// A directory entry's type (BTRFS_FT_*) as a file kind.
pub(crate) fn file_kind(ft: u8) -> FileKind {
    match ft {
        2 => FileKind::Directory,
        3 => FileKind::CharDevice,
        4 => FileKind::BlockDevice,
        5 => FileKind::Fifo,
        6 => FileKind::Socket,
        7 => FileKind::Symlink,
        _ => FileKind::Regular,
    }
}

/// Where one stretch of a file's bytes lives, as a file extent item says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Extent {
    /// Reads as zeros: a hole with an item, or space allocated unwritten.
    Zeros,
    /// `num` bytes at `offset` into the disk extent at `bytenr` (of
    /// `disk_bytes`, compressed with `compression`).
    Disk {
        bytenr: u64,
        disk_bytes: u64,
        compression: u8,
        offset: u64,
    },
    /// Bytes kept in the tree itself: them, unless compressed.
    Inline(Option<Vec<u8>>),
}

/// struct btrfs_file_extent_item: (what, how many bytes of the file).
pub(crate) fn file_extent(b: &[u8]) -> io::Result<(Extent, u64)> {
    if b.len() < 21 {
        return Err(bad());
    }
    let ram_bytes = u64_at(b, 8);
    let compression = b[16];
    match b[20] {
        0 => {
            let data = (compression == 0).then(|| b[21..].to_vec());
            Ok((Extent::Inline(data), ram_bytes))
        }
        kind => {
            if b.len() < 53 {
                return Err(bad());
            }
            let bytenr = u64_at(b, 21);
            let num = u64_at(b, 45);
            // A hole (bytenr 0) and unwritten space (prealloc) read as
            // zeros alike.
            if bytenr == 0 || kind == 2 {
                return Ok((Extent::Zeros, num));
            }
            Ok((
                Extent::Disk {
                    bytenr,
                    disk_bytes: u64_at(b, 29),
                    compression,
                    offset: u64_at(b, 37),
                },
                num,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_number_and_layouts_are_the_kernels() {
        assert_eq!(size_of::<SearchKey>(), 104);
        assert_eq!(size_of::<SearchArgsV2>(), 112);
        assert_eq!(TREE_SEARCH_V2, 0xc070_9411);
    }

    #[test]
    fn keys_advance_in_tuple_order() {
        assert_eq!(Key::new(5, 1, 7).next(), Some(Key::new(5, 1, 8)));
        assert_eq!(Key::new(5, 1, u64::MAX).next(), Some(Key::new(5, 2, 0)));
        assert_eq!(Key::new(5, 255, u64::MAX).next(), Some(Key::new(6, 0, 0)));
        assert_eq!(Key::new(u64::MAX, 255, u64::MAX).next(), None);
    }

    #[test]
    fn packed_dir_items_and_refs_parse_and_short_ones_are_refused() {
        let mut b = Vec::new();
        b.extend_from_slice(&300u64.to_le_bytes());
        b.push(INODE_ITEM);
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&9u64.to_le_bytes()); // transid
        b.extend_from_slice(&2u16.to_le_bytes()); // data_len
        b.extend_from_slice(&3u16.to_le_bytes()); // name_len
        b.push(1);
        b.extend_from_slice(b"abcxy");
        let items = dir_items(&b).expect("a whole dir item");
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].location, Key::new(300, INODE_ITEM, 0));
        assert_eq!((items[0].name, items[0].data), (&b"abc"[..], &b"xy"[..]));
        assert!(dir_items(&b[..b.len() - 1]).is_err());

        let mut r = Vec::new();
        r.extend_from_slice(&2u64.to_le_bytes());
        r.extend_from_slice(&1u16.to_le_bytes());
        r.push(b'f');
        let refs = inode_refs(Key::new(300, INODE_REF, 256), &r).expect("a whole ref");
        assert_eq!(refs, [(256, b"f".to_vec())]);
        assert!(inode_refs(Key::new(300, INODE_REF, 256), &r[..10]).is_err());
    }
}
