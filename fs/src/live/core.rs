//! The live filesystem's logic, independent of FUSE: every operation a
//! program uses, as a passthrough to the backing directory, with each
//! mutation preceded by its copy-on-write preservation (see cow.rs).
//! Operations take FUSE inode numbers and return `Result`s carrying errnos;
//! the adapter in fuse.rs only converts.
//!
//! Descriptors: an inode's O_PATH descriptor comes from the bounded cache
//! (nodes.rs) and is held only for the operation. What stays open is what
//! users hold open: one backing file per open file handle (`files`), until
//! the kernel releases it; directory listings hold none.
//!
//! This file owns the state, lookups and attributes; the operations live by
//! concern below core/: namespace (create, link, unlink, rename, ...),
//! setattr (chmod, chown, times, truncation), handles (open files and
//! directory streams) and xattrs.

mod handles;
mod namespace;
mod setattr;
mod xattrs;

use std::collections::HashMap;
use std::ffi::{CStr, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use umbra_store::{FileKind, ObjectId, Place, Swap, Timestamp};

use super::caller::{AsCaller, Caller};
use super::nodes::{Node, Nodes, ROOT};
use super::privileges;
use crate::attr::Attr;
use crate::backing::{self, cstr, renameat2};
use crate::{FsError, HIDDEN_DIR, Result, Volume};

/// Makes the kernel forget the attributes it cached for a FUSE inode.
pub(crate) type ForgetAttributes = Box<dyn Fn(u64) + Send + Sync>;

#[derive(Clone, Copy, Debug)]
pub(crate) enum TimeSet {
    Now,
    At(Timestamp),
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SetAttrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub fh: Option<u64>,
    /// A size change by this caller, without CAP_FSETID, clears set-id
    /// bits (when umbra kills privileges, see `LiveFs::kills_privileges`).
    pub kill_suidgid: Option<Caller>,
}

pub(crate) struct OpenFile {
    pub file: File,
    pub object: ObjectId,
    /// O_RDONLY or O_RDWR, as the backing file was opened.
    pub access: i32,
}

/// One entry of a directory listing, as a core hands it to an adapter.
#[derive(Clone, Debug)]
pub(crate) struct Listing {
    pub ino: u64,
    pub kind: FileKind,
    pub name: OsString,
}

/// An open directory: a backing directory stream of its own, read from
/// the position the kernel asks for (a `d_off` cookie, 0 for the start),
/// as passthrough filesystems do. It costs one descriptor and no memory
/// per entry, so no number of open handles of a huge directory can
/// exhaust the daemon's memory; and a listing that starts again from 0
/// (`rewinddir`) reads the directory as it is now, as POSIX asks.
struct OpenDir {
    ino: u64,
    parent: u64,
    cursor: Mutex<DirCursor>,
}

struct DirCursor {
    stream: backing::DirStream,
    /// Where `stream` stands: the `next` of the last entry it yielded.
    at: u64,
}

pub(crate) struct LiveFs {
    vol: Arc<Volume>,
    nodes: Arc<Nodes>,
    /// Shared with the volume, which lists the files open for writing
    /// when a set is flushed (see `Volume::files_open_for_writing`).
    files: Arc<Mutex<HashMap<u64, Arc<OpenFile>>>>,
    dirs: Mutex<HashMap<u64, Arc<OpenDir>>>,
    next_fh: AtomicU64,
    /// With the writeback cache the kernel owns a regular file's mtime: it
    /// sends it by SETATTR whenever it changes it, and shows it whatever the
    /// backing file says. Writes applied here must then leave the backing
    /// mtime as it was, or a set would show a time the live mount never did.
    kernel_mtime: bool,
    /// With FUSE_HANDLE_KILLPRIV_V2 the kernel marks the mount SB_NOSEC and
    /// stops asking GETXATTR(security.capability) before every write (half
    /// of all requests of a small-write load); in exchange the filesystem
    /// clears set-id bits and file capabilities on write and truncate, as
    /// the VFS does natively.
    kills_privileges: bool,
    /// Set once the mount exists. umbra changes a mode on its own behind
    /// replies that carry no attributes (a write or fallocate that drops
    /// set-id bits); without this the kernel would go on showing, and
    /// exec'ing with, the old set-id bits until its attribute TTL ran out.
    kernel: Arc<OnceLock<ForgetAttributes>>,
}

const CAPABILITY: &CStr = c"security.capability";

fn errno(e: i32) -> FsError {
    FsError::from_errno(e)
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn is_dir(st: &libc::stat64) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LiveFs {
    pub fn new(vol: Arc<Volume>) -> Result<LiveFs> {
        let root_fd = backing::reopen_path(vol.root_fd())?;
        let aliases = vol.store().aliases(vol.id())?;
        let nodes = Arc::new(Nodes::new(vol.name(), root_fd, vol.root_object(), aliases));
        vol.cow.set_namer(nodes.clone());
        let files: Arc<Mutex<HashMap<u64, Arc<OpenFile>>>> = Arc::default();
        let (listed, named) = (files.clone(), nodes.clone());
        vol.set_open_writes(Box::new(move || {
            lock(&listed)
                .values()
                .filter(|f| f.access != libc::O_RDONLY)
                .map(|f| named.ino_of(f.object))
                .collect()
        }));
        Ok(LiveFs {
            vol,
            nodes,
            files,
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            kernel_mtime: false,
            kills_privileges: false,
            kernel: Arc::default(),
        })
    }

    /// Where the mount puts its way of telling the kernel to forget an
    /// inode's attributes; taken before the filesystem moves into its
    /// session.
    pub fn kernel_link(&self) -> Arc<OnceLock<ForgetAttributes>> {
        self.kernel.clone()
    }

    fn forget_attributes(&self, object: ObjectId) {
        if let Some(forget) = self.kernel.get() {
            forget(self.nodes.ino_of(object));
        }
    }

    /// Called once the kernel agreed to FUSE_HANDLE_KILLPRIV_V2, before any
    /// request.
    pub fn kill_privileges(&mut self) {
        self.kills_privileges = true;
    }

    /// Called once the kernel agreed to a writeback cache, before any request.
    pub fn kernel_owns_mtime(&mut self) {
        self.kernel_mtime = true;
    }

    fn hidden(parent: u64, name: &OsStr) -> bool {
        parent == ROOT && name == OsStr::new(HIDDEN_DIR)
    }

    /// A name that must not be created: the daemon's folder at the root.
    fn creatable(parent: u64, name: &OsStr) -> Result<()> {
        if Self::hidden(parent, name) {
            return Err(errno(libc::EPERM));
        }
        Ok(())
    }

    fn attr_of(&self, object: ObjectId, fd: BorrowedFd<'_>) -> Result<Attr> {
        let st = backing::fstat(fd)?;
        let mut attr = Attr::from_stat(&st, self.nodes.ino_of(object));
        // An aside inode keeps one hidden name; the root counts the hidden
        // folder among its subdirectories. Neither is visible.
        if self.vol.is_aside(object) || object == self.vol.root_object() {
            attr.nlink = attr.nlink.saturating_sub(1);
        }
        Ok(attr)
    }

    fn child(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<(OwnedFd, libc::stat64)> {
        let fd = backing::open_path(dir, &cstr(name)?)?;
        let st = backing::fstat(fd.as_fd())?;
        Ok((fd, st))
    }

    fn file(&self, fh: u64) -> Result<Arc<OpenFile>> {
        lock(&self.files)
            .get(&fh)
            .cloned()
            .ok_or_else(|| errno(libc::EBADF))
    }

    /// What the VFS does before a native write or truncate (`file_remove_privs`):
    /// drops set-id bits if the caller lacks CAP_FSETID (`kill_suidgid`, as
    /// the kernel tells), and any file capability. Runs after the pre-images,
    /// which hold the attributes and xattrs, were kept.
    fn drop_privileges(
        &self,
        object: ObjectId,
        file: &File,
        kill_suidgid: Option<Caller>,
    ) -> Result<()> {
        if !self.kills_privileges {
            return Ok(());
        }
        if let Some(caller) = kill_suidgid {
            let st = backing::fstat(file.as_fd())?;
            let mode = st.st_mode & 0o7777;
            let kept = privileges::mode_after_change(mode, st.st_gid, caller);
            if kept != mode {
                // SAFETY: plain syscall on an owned descriptor.
                check(unsafe { libc::fchmod(file.as_raw_fd(), kept) })?;
                self.forget_attributes(object);
            }
        }
        let node = self.node_of(object);
        let read = || {
            backing::get_xattr(file.as_fd(), CAPABILITY)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
        };
        let capable = match &node {
            Some(node) => node.has_capability(read),
            None => read().is_ok(),
        };
        if capable {
            match backing::remove_xattr(file.as_fd(), CAPABILITY) {
                Err(e) if e.raw_os_error() != Some(libc::ENODATA) => return Err(e.into()),
                _ => {}
            }
            if let Some(node) = node {
                node.lost_capability();
            }
        }
        Ok(())
    }

    /// The node the kernel knows `object` by, if it knows it.
    fn node_of(&self, object: ObjectId) -> Option<Arc<Node>> {
        self.nodes
            .get(self.nodes.ino_of(object))
            .ok()
            .filter(|n| n.object == object)
    }

    fn add_file(&self, file: File, object: ObjectId, access: i32) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.files).insert(
            fh,
            Arc::new(OpenFile {
                file,
                object,
                access,
            }),
        );
        fh
    }

    /// Runs `change` on a regular file, keeping its backing mtime if the
    /// kernel owns it. Called under the object's mutation, which orders it
    /// with the kernel's SETATTRs of the same file.
    fn keeping_mtime<T>(
        &self,
        fd: BorrowedFd<'_>,
        change: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if !self.kernel_mtime {
            return change();
        }
        let before = backing::fstat(fd)?;
        let result = change()?;
        let times = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            libc::timespec {
                tv_sec: before.st_mtime,
                tv_nsec: before.st_mtime_nsec,
            },
        ];
        // SAFETY: times points at two timespecs; fd is open.
        check(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })?;
        Ok(result)
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        if Self::hidden(parent, name) {
            return Err(errno(libc::ENOENT));
        }
        let pnode = self.nodes.get(parent)?;
        let parent_fd = pnode.fd()?;
        let (fd, st) = self.child(parent_fd.as_fd(), name)?;
        let object = ObjectId(st.st_ino);
        let attr = self.attr_of(object, fd.as_fd())?;
        self.nodes.remember(object, fd, parent, name.to_owned());
        Ok(attr)
    }

    pub fn forget(&self, ino: u64, n: u64) {
        if self.nodes.forget(ino, n)
            && let Err(e) = self.vol.release_pin(ino)
        {
            tracing::warn!(volume = %self.vol.name(), ino, "freeing a pin: {e}");
        }
    }

    /// `object` left the live volume for good: the number it presented
    /// in place of an inode moved aside (a truncation's alias) is no longer
    /// shown. That inode's pin goes once the kernel has forgotten the
    /// number too, so the number is never handed out while still in use.
    fn retire_alias(&self, object: ObjectId) -> Result<()> {
        let Some(number) = self.nodes.unalias(object) else {
            return Ok(());
        };
        let known = self.nodes.get(number).is_ok_and(|n| n.object == object);
        if known {
            self.vol.hold_pin(number);
        }
        self.vol.store().drop_alias(self.vol.id(), object)?;
        if !known {
            self.vol.free_pin(number)?;
        }
        Ok(())
    }

    /// Drops the cached descriptor of `ino`, as the cache's eviction does.
    #[cfg(test)]
    pub fn evict(&self, ino: u64) {
        if let Ok(node) = self.nodes.get(ino) {
            node.evict();
        }
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        let node = self.nodes.get(ino)?;
        let node_fd = node.fd()?;
        self.attr_of(node.object, node_fd.as_fd())
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.nodes.get(ino)?;
        let node_fd = node.fd()?;
        Ok(backing::readlinkat(node_fd.as_fd(), c"")?)
    }

    pub fn statfs(&self) -> Result<libc::statvfs64> {
        let path = backing::proc_path(self.vol.root_fd().as_raw_fd());
        // SAFETY: zeroed statvfs64 is a valid out-buffer.
        let mut st: libc::statvfs64 = unsafe { std::mem::zeroed() };
        // SAFETY: path is a valid C string.
        check(unsafe { libc::statvfs64(path.as_ptr(), &mut st) })?;
        Ok(st)
    }
}

/// Writes all of `data` at `offset`, or as much as fit: a write that runs
/// out of space after some bytes answers their count, as write(2) does
/// natively, not the error.
fn write_at(file: &File, data: &[u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match file.write_at(&data[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(done)
}
