//! The live volume as the diff sees it: which live directory and name an
//! object has, and a descriptor for it. Positions come from the store's
//! places and handles, checked against the backing filesystem (same inode
//! under that name), and the path of a directory from the kernel, which
//! keeps directories connected to their parents. What none of these name
//! is found by one walk of the live tree for all such objects together.
//!
//! Never opens anything but O_PATH descriptors and directories for
//! listing; never follows a symlink.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::Arc;

use lru::LruCache;
use umbra_store::{FileKind, ObjectId};

use crate::backing::{self, cstr};
use crate::{FsError, HIDDEN_DIR, Result, Volume};

/// Descriptors kept between lookups; a diff names its objects in path
/// order, so a few hundred directories cover a deep tree.
const FDS: usize = 256;
/// No directory chain is deeper; a longer one is a loop in stale hints.
const MAX_DEPTH: usize = 4096;

/// What the catalog's hints say of an object.
enum Hint {
    Found((ObjectId, OsString)),
    /// Its inode is gone, or only the sets keep it.
    Gone,
    /// Nothing recorded holds: only a search can tell.
    Unknown,
}

pub(super) struct Live<'v> {
    vol: &'v Volume,
    root: ObjectId,
    /// The backing root's path as the kernel prints it, with a slash.
    prefix: Vec<u8>,
    /// Live parent and name of each object found so far.
    positions: HashMap<ObjectId, (ObjectId, OsString)>,
    /// Every live name seen of each object (a file may have several).
    links: HashMap<ObjectId, Vec<(ObjectId, OsString)>>,
    fds: LruCache<ObjectId, Arc<OwnedFd>>,
    /// Where an object was at some instant, as a set's listing says: tried
    /// (and checked) before the catalog's hints, never taken as its path.
    guesses: HashMap<ObjectId, (ObjectId, OsString)>,
    /// Objects looked for and not found live.
    missing: HashSet<ObjectId>,
    /// Whether the tree was walked.
    pub searched: bool,
}

fn errno_of(e: &std::io::Error) -> Option<i32> {
    e.raw_os_error()
}

/// Whether an error means "not there any more" rather than a failure.
fn gone(e: &std::io::Error) -> bool {
    matches!(
        errno_of(e),
        Some(libc::ENOENT | libc::ESTALE | libc::ENOTDIR | libc::ELOOP)
    )
}

fn proc_link(fd: BorrowedFd<'_>) -> Option<Vec<u8>> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .ok()
        .map(|p| p.into_os_string().into_vec())
}

impl<'v> Live<'v> {
    pub fn new(vol: &'v Volume) -> Live<'v> {
        let mut prefix = proc_link(vol.root_fd()).unwrap_or_default();
        if prefix.last() != Some(&b'/') {
            prefix.push(b'/');
        }
        Live {
            vol,
            root: vol.root_object(),
            prefix,
            positions: HashMap::new(),
            links: HashMap::new(),
            fds: LruCache::new(NonZeroUsize::new(FDS).unwrap_or(NonZeroUsize::MIN)),
            guesses: HashMap::new(),
            missing: HashSet::new(),
            searched: false,
        }
    }

    fn root_fd(&self) -> Result<Arc<OwnedFd>> {
        Ok(Arc::new(backing::reopen_path(self.vol.root_fd())?))
    }

    /// An O_PATH descriptor of the live object, or None if it is not in
    /// the live volume (removed, or kept only for the sets).
    pub fn fd(&mut self, object: ObjectId) -> Result<Option<Arc<OwnedFd>>> {
        if object == self.root {
            return self.root_fd().map(Some);
        }
        if let Some(fd) = self.fds.get(&object) {
            return Ok(Some(fd.clone()));
        }
        if self.vol.is_aside(object) {
            return Ok(None);
        }
        if let Some((parent, name)) = self.guesses.remove(&object)
            && let Some(dir) = self.fd(parent)?
            && let Ok(fd) = backing::open_path(dir.as_fd(), &cstr(&name)?)
            && backing::fstat(fd.as_fd())?.st_ino == object.0
        {
            let fd = Arc::new(fd);
            self.fds.put(object, fd.clone());
            return Ok(Some(fd));
        }
        let Some((parent, name)) = self.position(object)? else {
            return Ok(None);
        };
        let Some(dir) = self.fd(parent)? else {
            return Ok(None);
        };
        match backing::open_path(dir.as_fd(), &cstr(&name)?) {
            Ok(fd) if backing::fstat(fd.as_fd())?.st_ino == object.0 => {
                let fd = Arc::new(fd);
                self.fds.put(object, fd.clone());
                Ok(Some(fd))
            }
            Ok(_) => Ok(None),
            Err(e) if gone(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The object's inode, live or kept for the sets only (moved aside):
    /// what a set reads where it has no record. None if it is gone.
    pub fn inode(&mut self, object: ObjectId) -> Result<Option<Arc<OwnedFd>>> {
        if let Some(fd) = self.fd(object)? {
            return Ok(Some(fd));
        }
        match self.vol.store().handle(self.vol.id(), object)? {
            Some(handle) => self.by_handle(&handle),
            None => Ok(None),
        }
    }

    /// The live directory and name of `object`, searching the tree if the
    /// catalog's hints do not hold. None: not in the live volume.
    pub fn position(&mut self, object: ObjectId) -> Result<Option<(ObjectId, OsString)>> {
        if object == self.root || self.missing.contains(&object) || self.vol.is_aside(object) {
            return Ok(None);
        }
        match self.hinted(object)? {
            Hint::Found(found) => Ok(Some(found)),
            Hint::Gone => {
                self.missing.insert(object);
                Ok(None)
            }
            Hint::Unknown => {
                self.search(&[object])?;
                Ok(self.positions.get(&object).cloned())
            }
        }
    }

    /// The position from what is known or recorded, without a search.
    fn hinted(&mut self, object: ObjectId) -> Result<Hint> {
        if let Some(found) = self.positions.get(&object) {
            return Ok(Hint::Found(found.clone()));
        }
        let store = self.vol.store().clone();
        if let Some(place) = store.place(self.vol.id(), object)? {
            let dir = if place.parent.is_empty() {
                Some(self.root_fd()?)
            } else {
                self.by_handle(&place.parent)?
            };
            if let Some(dir) = dir {
                let name = OsString::from_vec(place.name);
                if let Ok(st) = backing::statat(dir.as_fd(), &cstr(&name)?)
                    && st.st_ino == object.0
                {
                    let parent = ObjectId(backing::fstat(dir.as_fd())?.st_ino);
                    self.learn_path(dir.as_fd(), parent)?;
                    self.seen(object, parent, &name);
                    return Ok(Hint::Found((parent, name)));
                }
            }
        }
        // A handle says whether the inode is still there at all.
        if let Some(handle) = store.handle(self.vol.id(), object)? {
            let Some(fd) = self.by_handle(&handle)? else {
                return Ok(Hint::Gone);
            };
            let st = backing::fstat(fd.as_fd())?;
            if st.st_nlink == 0 {
                return Ok(Hint::Gone);
            }
            self.learn_path(fd.as_fd(), object)?;
            if let Some(found) = self.positions.get(&object) {
                return Ok(Hint::Found(found.clone()));
            }
        }
        Ok(Hint::Unknown)
    }

    fn by_handle(&self, handle: &[u8]) -> Result<Option<Arc<OwnedFd>>> {
        match backing::open_by_handle(self.vol.root_fd(), handle, libc::O_PATH | libc::O_NOFOLLOW) {
            Ok(fd) => Ok(Some(Arc::new(fd))),
            Err(e) if gone(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Learns the positions along the path the kernel gives for `fd` (a
    /// directory's is always connected), checking each step by inode.
    fn learn_path(&mut self, fd: BorrowedFd<'_>, object: ObjectId) -> Result<()> {
        let Some(link) = proc_link(fd) else {
            return Ok(());
        };
        let Some(rel) = link.strip_prefix(self.prefix.as_slice()) else {
            return Ok(());
        };
        let mut dir = self.root_fd()?;
        let mut parent = self.root;
        for (i, part) in rel.split(|b| *b == b'/').enumerate() {
            if part.is_empty() || (i == 0 && part == HIDDEN_DIR.as_bytes()) {
                return Ok(());
            }
            let name = OsStr::from_bytes(part);
            let next = match backing::open_path(dir.as_fd(), &cstr(name)?) {
                Ok(fd) => fd,
                Err(e) if gone(&e) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let child = ObjectId(backing::fstat(next.as_fd())?.st_ino);
            self.positions.insert(child, (parent, name.to_os_string()));
            dir = Arc::new(next);
            parent = child;
        }
        if parent != object {
            self.positions.remove(&object);
        }
        Ok(())
    }

    /// Walks the live tree until every one of `wanted` is placed (or the
    /// tree ends), remembering the position of everything it passes.
    pub fn search(&mut self, wanted: &[ObjectId]) -> Result<()> {
        let mut left: HashSet<ObjectId> = wanted
            .iter()
            .copied()
            .filter(|o| !self.positions.contains_key(o) && *o != self.root)
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        self.searched = true;
        tracing::info!(
            volume = self.vol.name(),
            objects = left.len(),
            "naming changed objects needs a walk of the live tree"
        );
        self.walk(|seen| {
            left.remove(&seen);
            left.is_empty()
        })?;
        self.missing.extend(left);
        Ok(())
    }

    /// Walks the live tree breadth first, noting every name it passes,
    /// until `enough` says so for an object just seen (or the tree ends).
    fn walk(&mut self, mut enough: impl FnMut(ObjectId) -> bool) -> Result<()> {
        let mut queue: VecDeque<(ObjectId, Arc<OwnedFd>)> = VecDeque::new();
        queue.push_back((self.root, self.root_fd()?));
        while let Some((dir_object, dir)) = queue.pop_front() {
            let hidden = (dir_object == self.root).then_some(OsStr::new(HIDDEN_DIR));
            let listing = match backing::reopen(dir.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
                .and_then(|d| backing::dir_record(d.as_fd(), hidden))
            {
                Ok(l) => l,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e.into()),
            };
            for entry in listing {
                let name = OsString::from_vec(entry.name);
                self.seen(entry.object, dir_object, &name);
                if enough(entry.object) {
                    return Ok(());
                }
                if entry.kind == FileKind::Directory
                    && let Ok(fd) = backing::open_path(dir.as_fd(), &cstr(&name)?)
                {
                    queue.push_back((entry.object, Arc::new(fd)));
                }
            }
        }
        Ok(())
    }

    /// The live path of `object` relative to the volume root.
    pub fn path(&mut self, object: ObjectId) -> Result<Option<PathBuf>> {
        let mut parts = Vec::new();
        let mut at = object;
        while at != self.root {
            if parts.len() > MAX_DEPTH {
                return Err(FsError::from_errno(libc::ELOOP));
            }
            let Some((parent, name)) = self.position(at)? else {
                return Ok(None);
            };
            parts.push(name);
            at = parent;
        }
        Ok(Some(parts.iter().rev().collect()))
    }

    /// A live directory's entries, None if it is not in the live volume.
    pub fn entries(&mut self, dir: ObjectId) -> Result<Option<Vec<umbra_store::DirEntry>>> {
        let Some(fd) = self.fd(dir)? else {
            return Ok(None);
        };
        let hidden = (dir == self.root).then_some(OsStr::new(HIDDEN_DIR));
        match backing::reopen(fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
            .and_then(|d| backing::dir_record(d.as_fd(), hidden))
        {
            Ok(entries) => Ok(Some(entries)),
            Err(e) if gone(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Learns that `object` is `name` in `parent` (from a live listing).
    pub fn note(&mut self, object: ObjectId, parent: ObjectId, name: &OsStr) {
        self.seen(object, parent, name);
    }

    fn seen(&mut self, object: ObjectId, parent: ObjectId, name: &OsStr) {
        self.positions
            .entry(object)
            .or_insert_with(|| (parent, name.to_os_string()));
        let names = self.links.entry(object).or_default();
        if !names.iter().any(|(p, n)| *p == parent && n == name) {
            names.push((parent, name.to_os_string()));
        }
    }

    /// Every live name of `object` known so far (at least its position's).
    pub fn names(&mut self, object: ObjectId) -> Result<Vec<(ObjectId, OsString)>> {
        let Some(first) = self.position(object)? else {
            return Ok(Vec::new());
        };
        let mut names = self.links.get(&object).cloned().unwrap_or_default();
        if !names.contains(&first) {
            names.insert(0, first);
        }
        Ok(names)
    }

    /// Finds every live name of a file with more links than names known:
    /// a walk of the whole live tree.
    pub fn find_links(&mut self, object: ObjectId) -> Result<()> {
        let Some(fd) = self.fd(object)? else {
            return Ok(());
        };
        let st = backing::fstat(fd.as_fd())?;
        let known = self.links.get(&object).map_or(0, Vec::len);
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR || st.st_nlink as usize <= known {
            return Ok(());
        }
        self.searched = true;
        self.walk(|_| false)?;
        Ok(())
    }

    /// Notes where a set's listing had `object`: where to look first.
    pub fn guess(&mut self, object: ObjectId, parent: ObjectId, name: &OsStr) {
        if !self.positions.contains_key(&object) {
            self.guesses.insert(object, (parent, name.to_os_string()));
        }
    }
}
