//! One read-only snapshot of a btrfs volume read as its tree: an inode's
//! item, names and xattrs, a directory's entries, a file's extents, the
//! inodes written since a transaction, and an inode opened by number. All
//! by tree search (search.rs) and file handles, never by walking paths:
//! what it costs follows what is asked. Answers are kept, the snapshot
//! never changes.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::rc::Rc;

use umbra_store::{AttrRecord, FileKind};

use super::ioctl;
use super::search::{self, DIR_INDEX, EXTENT_DATA, Extent, INODE_EXTREF, INODE_ITEM, INODE_REF};
use super::search::{InodeItem, Key, ROOT_ITEM, XATTR_ITEM};
use crate::HIDDEN_DIR;

/// The first inode number of a subvolume, its root directory's.
pub(crate) const ROOT_INO: u64 = ioctl::SUBVOLUME_ROOT_INO;
/// Past this, object ids are the tree's own (orphans, free space).
const LAST_INO: u64 = u64::MAX - 256;
/// No directory chain is deeper; a longer one is a corrupt tree.
const MAX_DEPTH: usize = 4096;

/// An inode as the tree holds it.
#[derive(Debug)]
pub(crate) struct Inode {
    pub item: InodeItem,
    /// Its names: (directory inode, name), hard links included.
    pub names: Vec<(u64, Vec<u8>)>,
    /// Its xattrs, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Inode {
    pub fn attrs(&self) -> AttrRecord {
        let i = &self.item;
        AttrRecord {
            mode: i.mode,
            uid: i.uid,
            gid: i.gid,
            size: i.size,
            blocks: i.nbytes / 512,
            nlink: i.nlink,
            rdev: i.rdev,
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
            xattrs: self.xattrs.clone(),
        }
    }

    pub fn kind(&self) -> FileKind {
        FileKind::from_mode(self.item.mode).unwrap_or(FileKind::Regular)
    }
}

/// What a directory entry names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Inode(u64),
    /// A subvolume inside this one: in a snapshot, an empty directory.
    Subvolume(u64),
}

/// One entry of a directory.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub name: Vec<u8>,
    pub target: Target,
    pub kind: FileKind,
}

pub(crate) struct Tree {
    /// The snapshot's root directory: the descriptor every ioctl goes
    /// through, and where a path is looked up.
    root: OwnedFd,
    pub id: u64,
    /// The transaction that made the snapshot.
    pub otransid: u64,
    inodes: HashMap<u64, Option<Rc<Inode>>>,
    paths: HashMap<u64, Option<PathBuf>>,
    searcher: search::Searcher,
}

impl Tree {
    /// The tree of the subvolume whose root directory is `root`.
    pub fn open(root: OwnedFd) -> io::Result<Tree> {
        let info = ioctl::subvolume_info(root.as_fd())?;
        Ok(Tree {
            root,
            id: info.tree_id,
            otransid: info.otransid,
            inodes: HashMap::new(),
            paths: HashMap::new(),
            searcher: search::Searcher::new(),
        })
    }

    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Inode `ino`, None if the tree has no such inode.
    pub fn inode(&mut self, ino: u64) -> io::Result<Option<Rc<Inode>>> {
        if let Some(known) = self.inodes.get(&ino) {
            return Ok(known.clone());
        }
        // The item, the names and the xattrs are neighbours in the tree:
        // one search reads them all.
        let items =
            self.searcher
                .items_of(self.root.as_fd(), self.id, ino, INODE_ITEM..=XATTR_ITEM)?;
        let mut item = None;
        let mut names = Vec::new();
        let mut xattrs = Vec::new();
        for (key, data) in &items {
            match key.kind {
                INODE_ITEM => item = Some(InodeItem::parse(data)?),
                INODE_REF | INODE_EXTREF => names.extend(search::inode_refs(*key, data)?),
                XATTR_ITEM => {
                    for x in search::dir_items(data)? {
                        xattrs.push((x.name.to_vec(), x.data.to_vec()));
                    }
                }
                _ => {}
            }
        }
        xattrs.sort();
        let inode = item.map(|item| {
            Rc::new(Inode {
                item,
                names,
                xattrs,
            })
        });
        self.inodes.insert(ino, inode.clone());
        Ok(inode)
    }

    /// A directory's entries (none if it is not a directory of the tree),
    /// without umbra's own folder at the root.
    pub fn entries(&mut self, dir: u64) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        self.searcher.search(
            self.root.as_fd(),
            self.id,
            Key::new(dir, DIR_INDEX, 0),
            Key::new(dir, DIR_INDEX, u64::MAX),
            0,
            |_, data| {
                for item in search::dir_items(data)? {
                    if dir == ROOT_INO && item.name == HIDDEN_DIR.as_bytes() {
                        continue;
                    }
                    let (target, kind) = if item.location.kind == ROOT_ITEM {
                        (
                            Target::Subvolume(item.location.objectid),
                            FileKind::Directory,
                        )
                    } else {
                        (
                            Target::Inode(item.location.objectid),
                            search::file_kind(item.kind),
                        )
                    };
                    out.push(Entry {
                        name: item.name.to_vec(),
                        target,
                        kind,
                    });
                }
                Ok(true)
            },
        )?;
        Ok(out)
    }

    /// The path of inode `ino` from the root (of a file with several
    /// links, the first name the tree keeps); None if it is not there.
    pub fn path(&mut self, ino: u64) -> io::Result<Option<PathBuf>> {
        // (inode, its name), from `ino` up to the first whose path is known.
        let mut chain: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut at = ino;
        let found = loop {
            if at == ROOT_INO {
                break Some(PathBuf::new());
            }
            if let Some(known) = self.paths.get(&at) {
                break known.clone();
            }
            if chain.len() > MAX_DEPTH {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            let Some(inode) = self.inode(at)? else {
                break None;
            };
            let Some((parent, name)) = inode.names.first() else {
                break None;
            };
            chain.push((at, name.clone()));
            at = *parent;
        };
        let mut path = found;
        for (step, name) in chain.iter().rev() {
            path = path.map(|p| p.join(std::ffi::OsStr::from_bytes(name)));
            self.paths.insert(*step, path.clone());
        }
        Ok(path)
    }

    /// A file's extents, in order: (file offset, bytes, where they are).
    /// What no extent covers is a hole.
    pub fn extents(&mut self, ino: u64) -> io::Result<Vec<(u64, u64, Extent)>> {
        let mut out = Vec::new();
        for (key, data) in
            self.searcher
                .items_of(self.root.as_fd(), self.id, ino, EXTENT_DATA..=EXTENT_DATA)?
        {
            let (extent, len) = search::file_extent(&data)?;
            out.push((key.offset, len, extent));
        }
        Ok(out)
    }

    /// Inode `ino` of generation `generation`, opened with `flags`.
    pub fn open_inode(&self, ino: u64, generation: u64, flags: i32) -> io::Result<OwnedFd> {
        ioctl::open_inode(self.root.as_fd(), self.id, ino, generation, flags)
    }

    /// Every inode whose item was written after transaction `transid`:
    /// read only from the leaves written since (the kernel skips every
    /// older subtree), so the cost follows what changed.
    pub fn written_since(&mut self, transid: u64) -> io::Result<Vec<(u64, InodeItem)>> {
        let mut out = Vec::new();
        self.searcher.search(
            self.root.as_fd(),
            self.id,
            Key::new(ROOT_INO, INODE_ITEM, 0),
            Key::new(LAST_INO, INODE_ITEM, 0),
            transid + 1,
            |key, data| {
                if key.kind == INODE_ITEM {
                    let item = InodeItem::parse(data)?;
                    if item.transid > transid {
                        out.push((key.objectid, item));
                    }
                }
                Ok(true)
            },
        )?;
        Ok(out)
    }
}
