//! The browser's tree volumes: volumes whose sets are whole read-only trees
//! the kernel keeps (btrfs snapshots, through `TreeImages`). Nothing of
//! them is in the store: everything under `/<set>/<volume>/` is served from
//! the set's image by descriptor, an entry found by name in its parent's
//! descriptor (openat/fstatat, never following a symlink), never by path.
//! The image's own `.umbra` (the empty placeholder of the nested subvolume
//! that holds the snapshots) is hidden at its root.
//!
//! Numbers: as for copy-on-write objects (inodes.rs), the (set, volume)
//! view in the high bits and the image's own `st_ino` in the low bits, so
//! hard links within a set share a number, a file has a different one in
//! each set, and the number does not change when the kernel forgets the
//! inode. The image root, whose own number every btrfs subvolume shares, is
//! object 0 of its view. btrfs shows each nested subvolume of a snapshot
//! as an empty directory numbered 2; those are told apart by the number
//! their entry lists (the subvolume's id), lest two look like one directory
//! linked twice.
//!
//! Attributes come from the image's stat unchanged (mode, owners, size,
//! blocks, times to the nanosecond, link counts): the kernel checks
//! permissions against them and against the ACLs getxattr serves from the
//! image (default_permissions, FUSE_POSIX_ACL), as for every set.
//!
//! Descriptors: an entry's O_PATH descriptor and its file open for reading
//! live in the browser's bounded LRUs (fds.rs), found again from the parent
//! and the entry's place in the parent's listing, so a held inode costs no
//! descriptor. When a set is deleted its descriptors are closed at the
//! browser's refresh; btrfs destroys a snapshot that still has open files
//! (a user's, or one being read) lazily, once the last one closes, so
//! nothing the daemon holds stops its destruction. A deleted set's inodes
//! then answer ENOENT, or ESTALE while the deletion is under way.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use umbra_store::{DirEntry, FileKind, ObjectId, SetId, VolumeId};

use super::core::{Browser, Item, errno, lock};
use super::inodes::{Node, ObjectNode};
use crate::attr::Attr;
use crate::backing;
use crate::{HIDDEN_DIR, Result};

/// The object number of a tree image's root in its view.
pub(super) const ROOT_OBJECT: ObjectId = ObjectId(0);

/// BTRFS_EMPTY_SUBVOL_DIR_OBJECTID: the number btrfs gives every nested
/// subvolume's placeholder directory in a snapshot.
const EMPTY_SUBVOL_DIR: u64 = 2;

/// The object an entry listed as `listed` with stat `st` is.
fn object_of(st: &libc::stat64, listed: ObjectId) -> ObjectId {
    let dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    if dir && st.st_ino == EMPTY_SUBVOL_DIR && listed.0 != st.st_ino {
        // Above every inode number: the inode table allocates it one.
        ObjectId(u64::MAX - listed.0)
    } else {
        ObjectId(st.st_ino)
    }
}

/// Whether the image root `root` holds the hidden placeholder directory.
fn has_hidden(root: BorrowedFd<'_>) -> bool {
    CString::new(HIDDEN_DIR).is_ok_and(|name| {
        backing::statat(root, &name).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
    })
}

fn name_of(entry: &DirEntry) -> Result<CString> {
    CString::new(entry.name.clone()).map_err(|_| errno(libc::EINVAL))
}

impl Browser {
    pub(super) fn is_tree(&self, volume: VolumeId) -> bool {
        self.trees.contains_key(&volume)
    }

    /// Refuses a set no longer listed: its image is going or gone.
    fn tree_alive(&self, set: SetId) -> Result<()> {
        let listed = self
            .sets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|s| s.id == set);
        if listed {
            Ok(())
        } else {
            Err(errno(libc::ESTALE))
        }
    }

    /// The descriptor of a tree node: the image's root directory, or an
    /// O_PATH descriptor of the entry found again in its parent.
    fn tree_fd(&self, ino: u64, node: &ObjectNode) -> Result<Arc<OwnedFd>> {
        if let Some(fd) = lock(&self.live_fds).get(&ino) {
            return Ok(fd.clone());
        }
        self.tree_alive(node.set)?;
        let fd = if node.object == ROOT_OBJECT {
            let images = self
                .trees
                .get(&node.volume)
                .ok_or_else(|| errno(libc::ENOENT))?;
            images.image(node.set)?.ok_or_else(|| errno(libc::ENOENT))?
        } else {
            let parent = match self.inodes.get(node.parent) {
                Some(Node::Object(parent)) => parent,
                _ => return Err(errno(libc::ESTALE)),
            };
            let dir = self.tree_fd(node.parent, &parent)?;
            let entries = self.entries(node.parent, &parent)?;
            let entry = entries
                .get(node.index as usize)
                .ok_or_else(|| errno(libc::ESTALE))?;
            let fd = backing::open_path(dir.as_fd(), &name_of(entry)?)?;
            // An image never changes: anything else is a different tree.
            if object_of(&backing::fstat(fd.as_fd())?, entry.object) != node.object {
                return Err(errno(libc::ESTALE));
            }
            fd
        };
        let fd = Arc::new(fd);
        lock(&self.live_fds).put(ino, fd.clone());
        Ok(fd)
    }

    pub(super) fn tree_attr(&self, ino: u64, node: &ObjectNode) -> Result<Attr> {
        let fd = self.tree_fd(ino, node)?;
        let mut attr = Attr::from_stat(&backing::fstat(fd.as_fd())?, ino);
        // The root counts the hidden placeholder among its subdirectories
        // where the filesystem counts them (btrfs does not: always 1).
        if node.object == ROOT_OBJECT && attr.nlink > 2 && has_hidden(fd.as_fd()) {
            attr.nlink -= 1;
        }
        lock(&self.attrs).put(ino, attr.clone());
        Ok(attr)
    }

    /// A tree directory's entries, sorted by name, without the root's
    /// hidden placeholder.
    pub(super) fn tree_entries(&self, ino: u64, node: &ObjectNode) -> Result<Vec<DirEntry>> {
        let fd = self.tree_fd(ino, node)?;
        let hidden = (node.object == ROOT_OBJECT).then_some(OsStr::new(HIDDEN_DIR));
        Ok(backing::dir_record(fd.as_fd(), hidden)?)
    }

    /// Entry `index` of tree directory `parent`, as a node, and its
    /// attributes (cached). Only a directory needs a stat to be numbered
    /// (nested subvolumes list another number than they show); any other
    /// entry lists its own number, so cached attributes spare the stat.
    pub(super) fn tree_child(
        &self,
        parent_ino: u64,
        parent: &ObjectNode,
        entries: &[DirEntry],
        index: usize,
    ) -> Result<(ObjectNode, Attr)> {
        let entry = entries.get(index).ok_or_else(|| errno(libc::ENOENT))?;
        let index = u32::try_from(index).map_err(|_| errno(libc::EOVERFLOW))?;
        let node = |object: ObjectId, kind: FileKind| ObjectNode {
            object,
            kind,
            parent: parent_ino,
            index,
            ..*parent
        };
        if entry.kind != FileKind::Directory {
            let ino = self.inodes.number(parent.view, entry.object);
            if let Some(attr) = lock(&self.attrs).get(&ino) {
                return Ok((node(entry.object, attr.kind()), attr.clone()));
            }
        }
        let dir = self.tree_fd(parent_ino, parent)?;
        self.tree_alive(parent.set)?;
        let st = backing::statat(dir.as_fd(), &name_of(entry)?)?;
        let object = object_of(&st, entry.object);
        let ino = self.inodes.number(parent.view, object);
        let attr = Attr::from_stat(&st, ino);
        lock(&self.attrs).put(ino, attr.clone());
        Ok((node(object, attr.kind()), attr))
    }

    /// Lists tree directory `ino` from entry `start` (0 and 1 are `.` and
    /// `..`) into `add`, as `Browser::readdir` does.
    pub(super) fn tree_readdir(
        &self,
        ino: u64,
        node: &ObjectNode,
        entries: &[DirEntry],
        start: usize,
        plus: bool,
        add: &mut dyn FnMut(Item<'_>) -> bool,
    ) -> Result<()> {
        for i in start..entries.len() + 2 {
            let (item, child) = match i {
                0 | 1 => {
                    let (number, name) = if i == 0 {
                        (ino, ".")
                    } else {
                        (node.parent, "..")
                    };
                    let attr = if plus {
                        Some(self.getattr(number)?)
                    } else {
                        None
                    };
                    let item = Item {
                        offset: i as u64 + 1,
                        ino: number,
                        kind: FileKind::Directory,
                        name: OsStr::new(name),
                        attr,
                    };
                    (item, None)
                }
                _ => {
                    let entry = &entries[i - 2];
                    let (child, attr) = self.tree_child(ino, node, entries, i - 2)?;
                    let item = Item {
                        offset: i as u64 + 1,
                        ino: attr.ino,
                        kind: entry.kind,
                        name: OsStr::from_bytes(&entry.name),
                        attr: plus.then_some(attr),
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
        Ok(())
    }

    pub(super) fn tree_readlink(&self, ino: u64, node: &ObjectNode) -> Result<Vec<u8>> {
        let fd = self.tree_fd(ino, node)?;
        Ok(backing::readlinkat(fd.as_fd(), c"")?)
    }

    /// A tree image's regular file, open for reading (cached, bounded).
    pub(super) fn tree_file(&self, ino: u64, node: &ObjectNode) -> Result<Arc<File>> {
        if let Some(f) = lock(&self.live_files).get(&ino) {
            return Ok(f.clone());
        }
        let fd = self.tree_fd(ino, node)?;
        let file = Arc::new(backing::as_file(backing::reopen(
            fd.as_fd(),
            libc::O_RDONLY,
        )?));
        lock(&self.live_files).put(ino, file.clone());
        Ok(file)
    }

    /// A read the kernel did not pass through (see fuse.rs).
    pub(super) fn tree_read(
        &self,
        ino: u64,
        node: &ObjectNode,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>> {
        let file = self.tree_file(ino, node)?;
        self.tree_alive(node.set)?;
        let mut out = vec![0u8; size as usize];
        let n = backing::pread_full(&file, &mut out, offset)?;
        out.truncate(n);
        Ok(out)
    }

    pub(super) fn tree_lseek(
        &self,
        ino: u64,
        node: &ObjectNode,
        offset: i64,
        whence: i32,
    ) -> Result<i64> {
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            return Err(errno(libc::EINVAL));
        }
        let file = self.tree_file(ino, node)?;
        // The cached file's own position moves: every read of it is a
        // pread, which does not look at it.
        // SAFETY: lseek on a descriptor we hold open.
        let at = unsafe { libc::lseek64(file.as_raw_fd(), offset, whence) };
        if at < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(at)
    }

    pub(super) fn tree_xattrs(
        &self,
        ino: u64,
        node: &ObjectNode,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let fd = self.tree_fd(ino, node)?;
        self.tree_alive(node.set)?;
        Ok(backing::all_xattrs(fd.as_fd())?)
    }
}
