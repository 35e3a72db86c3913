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
                // A plain listing needs only a file's number, which its
                // listing gives; a directory's may be a nested subvolume's
                // placeholder, which only its stat tells apart.
                _ if !plus && entries[i - 2].kind != FileKind::Directory => {
                    let entry = &entries[i - 2];
                    let item = Item {
                        offset: i as u64 + 1,
                        ino: self.inodes.number(node.view, entry.object),
                        kind: entry.kind,
                        name: OsStr::from_bytes(&entry.name),
                        attr: None,
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod tests {
    use std::os::unix::fs::{MetadataExt, symlink};
    use std::path::PathBuf;

    use umbra_store::{NewSet, SetInfo, SetOrigin, Store, StoreOptions, Timestamp};

    use super::*;
    use crate::TreeImages;
    use crate::snap::inodes::ROOT;

    /// Tree images as plain directories: `<images>/<set id>`.
    struct Plain {
        volume: VolumeId,
        images: PathBuf,
    }

    impl TreeImages for Plain {
        fn volume(&self) -> VolumeId {
            self.volume
        }

        fn name(&self) -> &str {
            "tree"
        }

        fn image(&self, set: SetId) -> Result<Option<OwnedFd>> {
            match File::open(self.images.join(set.0.to_string())) {
                Ok(f) => Ok(Some(f.into())),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
                Err(e) => Err(e.into()),
            }
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<Store>,
        browser: Arc<Browser>,
        set: SetInfo,
        image: PathBuf,
    }

    /// A set of one tree volume whose image holds a file, a hard link to
    /// it, a symlink, a sparse file, a directory and the hidden folder.
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(Store::open(&dir.path().join("state"), StoreOptions::default()).unwrap());
        let volume = store.ensure_volume("tree").unwrap().id;
        let set = store
            .commit_set(&NewSet {
                name: "one".into(),
                label: None,
                origin: SetOrigin::default(),
                created: Timestamp::default(),
                volumes: vec![volume],
            })
            .unwrap();
        let images = dir.path().join("images");
        let image = images.join(set.id.0.to_string());
        std::fs::create_dir_all(image.join(HIDDEN_DIR)).unwrap();
        std::fs::create_dir(image.join("sub")).unwrap();
        std::fs::write(image.join("file"), b"bytes of the set").unwrap();
        std::fs::hard_link(image.join("file"), image.join("sub/link")).unwrap();
        symlink("../file", image.join("sub/sym")).unwrap();
        let sparse = File::create(image.join("sparse")).unwrap();
        sparse.set_len(1 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&sparse, b"x", 512 << 10).unwrap();
        let tree: Arc<dyn TreeImages> = Arc::new(Plain { volume, images });
        let browser = Browser::new(store.clone(), Vec::new(), vec![tree]).unwrap();
        Fixture {
            _dir: dir,
            store,
            browser,
            set,
            image,
        }
    }

    fn errno_of(r: Result<impl std::fmt::Debug>) -> i32 {
        r.expect_err("an error").errno()
    }

    #[test]
    fn a_tree_volume_is_served_from_its_image_with_its_exact_attributes() {
        let f = fixture();
        let b = &f.browser;
        let set_dir = b.lookup(ROOT, OsStr::new("one")).unwrap().ino;
        let root = b.lookup(set_dir, OsStr::new("tree")).unwrap().ino;
        let mut names = Vec::new();
        b.readdir(root, 0, true, &mut |item| {
            assert!(item.attr.is_some(), "readdirplus brings attributes");
            names.push(item.name.to_string_lossy().into_owned());
            false
        })
        .unwrap();
        assert_eq!(names, [".", "..", "file", "sparse", "sub"], "no .umbra");
        assert_eq!(
            errno_of(b.lookup(root, OsStr::new(HIDDEN_DIR))),
            libc::ENOENT
        );

        let file = b.lookup(root, OsStr::new("file")).unwrap();
        let native = std::fs::symlink_metadata(f.image.join("file")).unwrap();
        assert_eq!(
            (file.mode, file.uid, file.size, file.nlink, file.blocks),
            (
                native.mode(),
                native.uid(),
                native.size(),
                2,
                native.blocks()
            )
        );
        assert_eq!(
            (file.mtime.secs, i64::from(file.mtime.nanos)),
            (native.mtime(), native.mtime_nsec())
        );
        assert_eq!(
            file.ino & ((1 << 40) - 1),
            native.ino(),
            "the image's number"
        );
        let sub = b.lookup(root, OsStr::new("sub")).unwrap().ino;
        let link = b.lookup(sub, OsStr::new("link")).unwrap();
        assert_eq!(link.ino, file.ino, "hard links share a number");
        let sym = b.lookup(sub, OsStr::new("sym")).unwrap().ino;
        assert_eq!(b.readlink(sym).unwrap(), b"../file");

        assert_eq!(b.read(file.ino, 6, 100).unwrap(), b"of the set");
        assert!(
            b.open(file.ino).unwrap().is_some(),
            "opened for passthrough"
        );
        assert_eq!(errno_of(b.open(sub)), libc::EISDIR);
        let sparse = b.lookup(root, OsStr::new("sparse")).unwrap().ino;
        assert_eq!(b.lseek(sparse, 0, libc::SEEK_DATA).unwrap(), 512 << 10);
        assert_eq!(b.lseek(sparse, 0, libc::SEEK_HOLE).unwrap(), 0);
    }

    #[test]
    fn a_tree_volume_found_again_after_its_descriptors_were_evicted() {
        let f = fixture();
        let b = &f.browser;
        let set_dir = b.lookup(ROOT, OsStr::new("one")).unwrap().ino;
        let root = b.lookup(set_dir, OsStr::new("tree")).unwrap().ino;
        let sub = b.lookup(root, OsStr::new("sub")).unwrap().ino;
        let link = b.lookup(sub, OsStr::new("link")).unwrap().ino;
        lock(&b.live_fds).clear();
        lock(&b.live_files).clear();
        lock(&b.attrs).clear();
        assert_eq!(b.read(link, 0, 5).unwrap(), b"bytes");
        assert_eq!(b.getattr(sub).unwrap().kind(), FileKind::Directory);
    }

    #[test]
    fn a_deleted_tree_set_answers_enoent_and_keeps_no_descriptor() {
        let f = fixture();
        let b = &f.browser;
        let set_dir = b.lookup(ROOT, OsStr::new("one")).unwrap().ino;
        let root = b.lookup(set_dir, OsStr::new("tree")).unwrap().ino;
        let file = b.lookup(root, OsStr::new("file")).unwrap().ino;
        b.read(file, 0, 1).unwrap();
        assert!(!lock(&b.live_fds).is_empty());
        f.store.remove_set(f.set.id).unwrap();
        std::fs::remove_dir_all(&f.image).unwrap();
        b.refresh().unwrap();
        assert!(lock(&b.live_fds).is_empty() && lock(&b.live_files).is_empty());
        assert_eq!(errno_of(b.lookup(root, OsStr::new("sub"))), libc::ENOENT);
        assert_eq!(errno_of(b.read(file, 0, 1)), libc::ENOENT);
        assert_eq!(errno_of(b.lookup(ROOT, OsStr::new("one"))), libc::ENOENT);
    }

    #[test]
    fn nested_subvolume_placeholders_are_told_apart() {
        // SAFETY: zeroed stat64 is a valid value.
        let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
        st.st_mode = libc::S_IFDIR | 0o755;
        st.st_ino = EMPTY_SUBVOL_DIR;
        let a = object_of(&st, ObjectId(258));
        let b = object_of(&st, ObjectId(259));
        assert_ne!(a, b);
        assert!(a.0 > 1 << 40, "numbered apart from every inode");
        st.st_mode = libc::S_IFREG | 0o644;
        st.st_ino = 300;
        assert_eq!(object_of(&st, ObjectId(300)), ObjectId(300));
    }
}
