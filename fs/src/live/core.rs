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

use std::collections::HashMap;
use std::ffi::{CStr, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use umbra_store::{FileKind, ObjectId, Place, Timestamp};

use super::caller::AsCaller;
use super::nodes::{Node, Nodes, ROOT};
use super::privileges;
use crate::attr::Attr;
use crate::backing::{self, cstr};
use crate::{FsError, HIDDEN_DIR, Result, Volume};

/// Who asks: what they create is made as them (see caller.rs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// The calling thread, whose supplementary groups /proc knows.
    pub pid: u32,
    /// The umask a creation applies: the caller's when the kernel left it
    /// to umbra (FUSE_DONT_MASK), else 0, the kernel having applied it.
    pub umask: u32,
}

impl Caller {
    /// This caller when a change of a file's data by it must clear set-id
    /// bits (it lacks CAP_FSETID), else None.
    pub fn without_fsetid(self) -> Option<Caller> {
        privileges::lacks_fsetid(self).then_some(self)
    }
}

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

    pub fn setattr(&self, ino: u64, set: SetAttrs) -> Result<Attr> {
        let mut set = set;
        let truncating = set.size.is_some();
        if set.size == Some(0) && self.truncate_by_swap(ino)? {
            set.size = None;
        }
        let node = self.nodes.get(ino)?;
        let node_fd = node.fd()?;
        let object = node.object;
        let handle_file = set.fh.map(|fh| self.file(fh)).transpose()?;
        let mut m = self.vol.cow.begin(&[object]);
        let mut truncate_file = None;
        if let Some(size) = set.size {
            let file = match &handle_file {
                Some(of) => of.file.try_clone(),
                None => backing::reopen(node_fd.as_fd(), libc::O_RDWR).map(backing::as_file),
            }?;
            let current = file.metadata()?.len();
            if size < current {
                m.blocks(object, node_fd.as_fd(), &file, size, current)?;
            } else {
                m.attr(object, node_fd.as_fd())?;
            }
            truncate_file = Some(file);
        }
        if set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set.atime.is_some()
            || set.mtime.is_some()
        {
            m.attr(object, node_fd.as_fd())?;
        }
        m.preserve()?;
        debug_assert!(m.all_stored());
        if truncating && self.kills_privileges {
            let swapped;
            let file = match &truncate_file {
                Some(file) => file,
                None => {
                    swapped = backing::as_file(backing::reopen(node_fd.as_fd(), libc::O_RDWR)?);
                    &swapped
                }
            };
            self.drop_privileges(object, file, set.kill_suidgid)?;
        }
        let raw = node_fd.as_raw_fd();
        if set.uid.is_some() || set.gid.is_some() {
            // SAFETY: the empty path with AT_EMPTY_PATH names the fd itself.
            check(unsafe {
                libc::fchownat(
                    raw,
                    c"".as_ptr(),
                    set.uid.unwrap_or(u32::MAX),
                    set.gid.unwrap_or(u32::MAX),
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
        }
        if let Some(mode) = set.mode {
            let path = backing::proc_path(raw);
            // SAFETY: path is a valid C string.
            check(unsafe { libc::chmod(path.as_ptr(), mode & 0o7777) })?;
        }
        if let (Some(size), Some(file)) = (set.size, &truncate_file) {
            if set.mtime.is_some() {
                file.set_len(size)?;
            } else {
                self.keeping_mtime(file.as_fd(), || Ok(file.set_len(size)?))?;
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let spec = |t: Option<TimeSet>| match t {
                None => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                },
                Some(TimeSet::Now) => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_NOW,
                },
                Some(TimeSet::At(t)) => libc::timespec {
                    tv_sec: t.secs,
                    tv_nsec: i64::from(t.nanos),
                },
            };
            let times = [spec(set.atime), spec(set.mtime)];
            // SAFETY: times points at two timespecs.
            check(unsafe {
                libc::utimensat(
                    raw,
                    c"".as_ptr(),
                    times.as_ptr(),
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
        }
        if set.uid.is_some() || set.gid.is_some() || set.mode.is_some() || set.size.is_some() {
            // chown and truncation drop a file capability; chmod may go with it.
            node.forget_capability();
        }
        drop(m);
        self.attr_of(object, node_fd.as_fd())
    }

    /// Truncates a large single-link file to zero in O(1) when a set still
    /// needs its data: its inode moves aside whole and a new, empty inode
    /// takes its name and its inode number (an alias). Declines (Ok(false))
    /// whenever it cannot be sure: another link, an unknown or stale name,
    /// nothing to keep. Open handles of the file follow it to the successor,
    /// as they would follow a truncation in place.
    fn truncate_by_swap(&self, ino: u64) -> Result<bool> {
        const WORTH_IT: u64 = 4 * umbra_store::BLOCK_SIZE;
        let node = self.nodes.get(ino)?;
        let node_fd = node.fd()?;
        let st = backing::fstat(node_fd.as_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG
            || st.st_nlink != 1
            || (st.st_size as u64) < WORTH_IT
        {
            return Ok(false);
        }
        let Some((parent, name)) = node.name() else {
            return Ok(false);
        };
        let _ns = self.vol.namespace_lock();
        let pnode = self.nodes.get(parent)?;
        let parent_fd = pnode.fd()?;
        let cname = cstr(&name)?;
        match backing::statat(parent_fd.as_fd(), &cname) {
            Ok(now) if now.st_ino == node.object.0 => {}
            _ => return Ok(false),
        }
        let object = node.object;
        let mut m = self.vol.cow.begin(&[pnode.object, object]);
        if !m.needs(object) {
            return Ok(false);
        }
        m.dir(pnode.object, parent_fd.as_fd())?;
        m.attr(object, node_fd.as_fd())?;
        m.handle(object, parent_fd.as_fd(), &name)?;
        m.aside(object);
        // The successor, built in the hidden folder with the same owner,
        // mode, xattrs and atime; its mtime and ctime are now, as a
        // truncation's are.
        let aside = self.vol.aside_fd();
        let tmp =
            std::ffi::CString::new(format!("new-{}", object.0)).map_err(|_| errno(libc::EINVAL))?;
        // SAFETY: tmp is a valid C string; a leftover from a crash goes.
        unsafe { libc::unlinkat(aside.as_raw_fd(), tmp.as_ptr(), 0) };
        let new = backing::openat(
            aside,
            &tmp,
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
            0o600,
        )?;
        // SAFETY: plain syscalls on an owned descriptor.
        check(unsafe { libc::fchown(new.as_raw_fd(), st.st_uid, st.st_gid) })?;
        // SAFETY: as above.
        check(unsafe { libc::fchmod(new.as_raw_fd(), st.st_mode & 0o7777) })?;
        for (xname, value) in backing::all_xattrs(node_fd.as_fd())? {
            let xname = std::ffi::CString::new(xname).map_err(|_| errno(libc::EINVAL))?;
            backing::set_xattr(new.as_fd(), &xname, &value, 0)?;
        }
        let times = [
            libc::timespec {
                tv_sec: st.st_atime,
                tv_nsec: st.st_atime_nsec,
            },
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
        ];
        // SAFETY: times points at two timespecs.
        check(unsafe { libc::futimens(new.as_raw_fd(), times.as_ptr()) })?;
        let successor = ObjectId(backing::fstat(new.as_fd())?.st_ino);
        m.preserve()?;
        // A truncation never touches its directory: the swap's link and
        // rename must not show in the parent's times either.
        let pst = backing::fstat(parent_fd.as_fd())?;
        let aname = Volume::aside_name(object);
        let (pfd, afd) = (parent_fd.as_raw_fd(), aside.as_raw_fd());
        debug_assert!(m.all_stored());
        // SAFETY: both names are valid C strings.
        check(unsafe { libc::linkat(pfd, cname.as_ptr(), afd, aname.as_ptr(), 0) })?;
        // SAFETY: both names are valid C strings.
        if let Err(e) = check(unsafe { libc::renameat(afd, tmp.as_ptr(), pfd, cname.as_ptr()) }) {
            // SAFETY: aname is a valid C string.
            unsafe { libc::unlinkat(afd, aname.as_ptr(), 0) };
            return Err(e.into());
        }
        let parent_times = [
            libc::timespec {
                tv_sec: pst.st_atime,
                tv_nsec: pst.st_atime_nsec,
            },
            libc::timespec {
                tv_sec: pst.st_mtime,
                tv_nsec: pst.st_mtime_nsec,
            },
        ];
        // SAFETY: parent_times points at two timespecs.
        check(unsafe {
            libc::utimensat(
                pfd,
                c"".as_ptr(),
                parent_times.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        })?;
        m.born(successor);
        self.vol.mark_aside(object);
        self.vol.store().set_alias(self.vol.id(), successor, ino)?;
        let path_fd = backing::open_path(parent_fd.as_fd(), &cname)?;
        self.nodes
            .repoint(ino, successor, path_fd, Some((parent, name)));
        // An earlier successor that now moved aside presents nothing.
        self.retire_alias(object)?;
        let mut files = lock(&self.files);
        for of in files.values_mut().filter(|f| f.object == object) {
            let file = backing::as_file(backing::reopen(new.as_fd(), of.access)?);
            *of = Arc::new(OpenFile {
                file,
                object: successor,
                access: of.access,
            });
        }
        Ok(true)
    }

    /// Creates a name in `parent` with `make`, after preserving the
    /// directory; `make` runs as the caller, so the backing filesystem
    /// gives the new object its owner, group and mode as it would natively
    /// (see caller.rs). The object is born in this epoch.
    fn make(
        &self,
        parent: u64,
        name: &OsStr,
        caller: Caller,
        make: impl FnOnce(BorrowedFd<'_>, &CStr) -> io::Result<Option<File>>,
    ) -> Result<(Attr, ObjectId, Option<File>)> {
        Self::creatable(parent, name)?;
        let cname = cstr(name)?;
        let _ns = self.vol.namespace_lock();
        let pnode = self.nodes.get(parent)?;
        let parent_fd = pnode.fd()?;
        let mut m = self.vol.cow.begin(&[pnode.object]);
        m.dir(pnode.object, parent_fd.as_fd())?;
        m.preserve()?;
        debug_assert!(m.all_stored());
        let file = {
            let _as = AsCaller::enter(caller)?;
            make(parent_fd.as_fd(), &cname)?
        };
        let fd = backing::open_path(parent_fd.as_fd(), &cname)?;
        let st = backing::fstat(fd.as_fd())?;
        let object = ObjectId(st.st_ino);
        m.born(object);
        drop(m);
        let attr = self.attr_of(object, fd.as_fd())?;
        self.nodes.remember(object, fd, parent, name.to_owned());
        Ok((attr, object, file))
    }

    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        caller: Caller,
    ) -> Result<Attr> {
        let (attr, _, _) = self.make(parent, name, caller, |dir, c| {
            // SAFETY: c is a valid C string.
            check(unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), mode, rdev) }).map(|_| None)
        })?;
        Ok(attr)
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, caller: Caller) -> Result<Attr> {
        let (attr, _, _) = self.make(parent, name, caller, |dir, c| {
            // SAFETY: c is a valid C string.
            check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode & 0o7777) })
                .map(|_| None)
        })?;
        Ok(attr)
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
        caller: Caller,
    ) -> Result<Attr> {
        let target = cstr(target)?;
        let (attr, _, _) = self.make(parent, name, caller, |dir, c| {
            // SAFETY: both are valid C strings.
            check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), c.as_ptr()) })
                .map(|_| None)
        })?;
        Ok(attr)
    }

    /// Creates and opens a regular file. If the name exists and the caller
    /// did not ask for O_EXCL, opens it instead (the kernel raced a lookup).
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> Result<(Attr, u64)> {
        let made = self.make(parent, name, caller, |dir, c| {
            let fd = backing::openat(
                dir,
                c,
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_NOFOLLOW,
                mode & 0o7777,
            )?;
            Ok(Some(backing::as_file(fd)))
        });
        match made {
            Ok((attr, object, Some(file))) => {
                // A new file has no capability: no need to ask before its first write.
                if let Some(node) = self.node_of(object) {
                    node.lost_capability();
                }
                Ok((attr, self.add_file(file, object, libc::O_RDWR)))
            }
            Ok((_, _, None)) => Err(errno(libc::EIO)),
            Err(e) if e.errno() == libc::EEXIST && flags & libc::O_EXCL == 0 => {
                let attr = self.lookup(parent, name)?;
                let fh = self.open(attr.ino, flags)?;
                let attr = if flags & libc::O_TRUNC != 0 {
                    self.setattr(
                        attr.ino,
                        SetAttrs {
                            size: Some(0),
                            fh: Some(fh),
                            kill_suidgid: caller.without_fsetid(),
                            ..Default::default()
                        },
                    )?
                } else {
                    attr
                };
                Ok((attr, fh))
            }
            Err(e) => Err(e),
        }
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<Attr> {
        Self::creatable(newparent, newname)?;
        let cname = cstr(newname)?;
        let _ns = self.vol.namespace_lock();
        let node = self.nodes.get(ino)?;
        let node_fd = node.fd()?;
        if self.vol.is_aside(node.object) {
            return Err(errno(libc::ENOENT));
        }
        let pnode = self.nodes.get(newparent)?;
        let parent_fd = pnode.fd()?;
        let mut m = self.vol.cow.begin(&[pnode.object, node.object]);
        m.dir(pnode.object, parent_fd.as_fd())?;
        m.attr(node.object, node_fd.as_fd())?;
        m.preserve()?;
        debug_assert!(m.all_stored());
        // SAFETY: AT_EMPTY_PATH links the inode behind the fd itself.
        check(unsafe {
            libc::linkat(
                node_fd.as_raw_fd(),
                c"".as_ptr(),
                parent_fd.as_raw_fd(),
                cname.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        })?;
        drop(m);
        let attr = self.attr_of(node.object, node_fd.as_fd())?;
        let fd = backing::reopen_path(node_fd.as_fd())?;
        self.nodes
            .remember(node.object, fd, newparent, newname.to_owned());
        Ok(attr)
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.remove(parent, name, true)
    }

    /// unlink and rmdir: an inode a snapshot may need loses its last name by
    /// moving into the hidden folder, O(1), instead of being freed.
    fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<()> {
        if Self::hidden(parent, name) {
            return Err(errno(libc::ENOENT));
        }
        let cname = cstr(name)?;
        let _ns = self.vol.namespace_lock();
        let pnode = self.nodes.get(parent)?;
        let parent_fd = pnode.fd()?;
        let (fd, st) = self.child(parent_fd.as_fd(), name)?;
        match (dir, is_dir(&st)) {
            (true, false) => return Err(errno(libc::ENOTDIR)),
            (false, true) => return Err(errno(libc::EISDIR)),
            _ => {}
        }
        let object = ObjectId(st.st_ino);
        let mut m = self.vol.cow.begin(&[pnode.object, object]);
        m.dir(pnode.object, parent_fd.as_fd())?;
        let last_name = dir || st.st_nlink <= 1;
        let aside = m.needs(object) && last_name;
        if m.needs(object) {
            if dir && !backing::list_dir(fd.as_fd())?.is_empty() {
                return Err(errno(libc::ENOTEMPTY));
            }
            m.attr(object, fd.as_fd())?;
            m.handle(object, parent_fd.as_fd(), name)?;
            if aside {
                m.aside(object);
            }
        }
        m.preserve()?;
        debug_assert!(m.all_stored());
        if aside {
            let aname = Volume::aside_name(object);
            // SAFETY: both names are valid C strings.
            check(unsafe {
                libc::renameat(
                    parent_fd.as_raw_fd(),
                    cname.as_ptr(),
                    self.vol.aside_fd().as_raw_fd(),
                    aname.as_ptr(),
                )
            })?;
            self.vol.mark_aside(object);
        } else {
            let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
            // SAFETY: cname is a valid C string.
            check(unsafe { libc::unlinkat(parent_fd.as_raw_fd(), cname.as_ptr(), flags) })?;
        }
        if last_name {
            self.retire_alias(object)?;
        }
        Ok(())
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        if Self::hidden(parent, name) {
            return Err(errno(libc::ENOENT));
        }
        Self::creatable(newparent, newname)?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let (csrc, cdst) = (cstr(name)?, cstr(newname)?);
        let _ns = self.vol.namespace_lock();
        let pnode = self.nodes.get(parent)?;
        let parent_fd = pnode.fd()?;
        let npnode = self.nodes.get(newparent)?;
        let newparent_fd = npnode.fd()?;
        let (src_fd, src_st) = self.child(parent_fd.as_fd(), name)?;
        let dst = match self.child(newparent_fd.as_fd(), newname) {
            Ok(found) => Some(found),
            Err(e) if e.errno() == libc::ENOENT => None,
            Err(e) => return Err(e),
        };
        let src = ObjectId(src_st.st_ino);
        let mut objects = vec![pnode.object, npnode.object, src];
        if let Some((_, st)) = &dst {
            objects.push(ObjectId(st.st_ino));
        }
        let mut m = self.vol.cow.begin(&objects);
        m.dir(pnode.object, parent_fd.as_fd())?;
        m.dir(npnode.object, newparent_fd.as_fd())?;
        m.attr(src, src_fd.as_fd())?;
        m.handle(src, parent_fd.as_fd(), name)?;
        if let Some(parent) = self.nodes.place_handle(newparent) {
            m.place(
                src,
                Place {
                    parent,
                    name: newname.as_bytes().to_vec(),
                },
            );
        }
        // The replaced inode, if a snapshot may need it, goes aside.
        let mut aside = None;
        if let Some((dst_fd, dst_st)) = &dst {
            let object = ObjectId(dst_st.st_ino);
            if object != src && m.needs(object) {
                m.attr(object, dst_fd.as_fd())?;
                m.handle(object, newparent_fd.as_fd(), newname)?;
                if !exchange
                    && flags & libc::RENAME_NOREPLACE == 0
                    && (is_dir(dst_st) || dst_st.st_nlink <= 1)
                {
                    if is_dir(dst_st) {
                        if !is_dir(&src_st) {
                            return Err(errno(libc::EISDIR));
                        }
                        if !backing::list_dir(dst_fd.as_fd())?.is_empty() {
                            return Err(errno(libc::ENOTEMPTY));
                        }
                    } else if is_dir(&src_st) {
                        return Err(errno(libc::ENOTDIR));
                    }
                    m.aside(object);
                    aside = Some((object, is_dir(dst_st)));
                }
            }
        }
        m.preserve()?;
        debug_assert!(m.all_stored());
        let (pfd, npfd, afd) = (
            parent_fd.as_raw_fd(),
            newparent_fd.as_raw_fd(),
            self.vol.aside_fd().as_raw_fd(),
        );
        match aside {
            None => renameat2(pfd, &csrc, npfd, &cdst, flags)?,
            Some((object, false)) => {
                // Keep the replaced file by a second name first, so the
                // rename itself stays one atomic replacement.
                let aname = Volume::aside_name(object);
                // SAFETY: both names are valid C strings.
                check(unsafe { libc::linkat(npfd, cdst.as_ptr(), afd, aname.as_ptr(), 0) })?;
                if let Err(e) = renameat2(pfd, &csrc, npfd, &cdst, flags) {
                    // SAFETY: aname is a valid C string.
                    unsafe { libc::unlinkat(afd, aname.as_ptr(), 0) };
                    return Err(e.into());
                }
                self.vol.mark_aside(object);
            }
            Some((object, true)) => {
                // Directories cannot be linked: swap, then move the (empty)
                // replaced directory aside from the source name.
                renameat2(pfd, &csrc, npfd, &cdst, libc::RENAME_EXCHANGE)?;
                let aname = Volume::aside_name(object);
                // SAFETY: both names are valid C strings.
                check(unsafe { libc::renameat(pfd, csrc.as_ptr(), afd, aname.as_ptr()) })?;
                self.vol.mark_aside(object);
            }
        }
        self.renamed(src, newparent, newname);
        if let Some((_, st)) = &dst {
            let object = ObjectId(st.st_ino);
            if exchange {
                self.renamed(object, parent, name);
            } else if object != src && (is_dir(st) || st.st_nlink <= 1) {
                // The replaced inode lost its last name.
                self.retire_alias(object)?;
            }
        }
        Ok(())
    }

    /// Keeps the name hint of a moved inode current.
    fn renamed(&self, object: ObjectId, parent: u64, name: &OsStr) {
        if let Ok(node) = self.nodes.get(self.nodes.ino_of(object))
            && node.object == object
        {
            node.set_name(Some((parent, name.to_owned())));
        }
    }

    pub fn open(&self, ino: u64, flags: i32) -> Result<u64> {
        let node = self.nodes.get(ino)?;
        let node_fd = node.fd()?;
        let access = if flags & libc::O_ACCMODE == libc::O_RDONLY {
            libc::O_RDONLY
        } else {
            libc::O_RDWR
        };
        let keep = flags & (libc::O_SYNC | libc::O_DSYNC | libc::O_NONBLOCK);
        let file = backing::as_file(backing::reopen(node_fd.as_fd(), access | keep)?);
        let fh = self.add_file(file, node.object, access);
        if flags & libc::O_TRUNC != 0 && access == libc::O_RDWR {
            self.setattr(
                ino,
                SetAttrs {
                    size: Some(0),
                    fh: Some(fh),
                    ..Default::default()
                },
            )?;
        }
        Ok(fh)
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let of = self.file(fh)?;
        let mut buf = vec![0u8; size as usize];
        let n = backing::pread_full(&of.file, &mut buf, offset)?;
        buf.truncate(n);
        Ok(buf)
    }

    pub fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suidgid: Option<Caller>,
        writer: Caller,
    ) -> Result<u32> {
        let of = self.file(fh)?;
        let end = offset + data.len() as u64;
        let mut m = self.vol.cow.begin(&[of.object]);
        m.blocks(of.object, of.file.as_fd(), &of.file, offset, end)?;
        m.preserve()?;
        debug_assert!(m.all_stored());
        self.drop_privileges(of.object, &of.file, kill_suidgid)?;
        // Only the pwrite allocates: it runs as the writer, so that the
        // blocks reserved for root and quota limits hold as natively.
        let written = self.keeping_mtime(of.file.as_fd(), || {
            let _as = AsCaller::writing(writer)?;
            Ok(write_at(&of.file, data, offset)?)
        })?;
        Ok(written as u32)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        let of = self.file(fh)?;
        if datasync {
            of.file.sync_data()?
        } else {
            of.file.sync_all()?
        }
        Ok(())
    }

    /// Makes a directory's entries durable on the backing filesystem.
    pub fn fsyncdir(&self, ino: u64) -> Result<()> {
        let node = self.nodes.get(ino)?;
        let node_fd = node.fd()?;
        let dir = backing::as_file(backing::reopen(
            node_fd.as_fd(),
            libc::O_RDONLY | libc::O_DIRECTORY,
        )?);
        dir.sync_all()?;
        Ok(())
    }

    /// SEEK_DATA / SEEK_HOLE on the backing file. Reads and writes use
    /// pread/pwrite, so moving the backing descriptor's offset disturbs
    /// nothing.
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let of = self.file(fh)?;
        // SAFETY: plain syscall on an owned descriptor.
        let at = unsafe { libc::lseek64(of.file.as_raw_fd(), offset, whence) };
        if at < 0 {
            return Err(io::Error::last_os_error().into());
        }
        Ok(at)
    }

    pub fn release(&self, fh: u64) {
        lock(&self.files).remove(&fh);
    }

    /// As natively (`file_modified`), an allocation counts as a change of
    /// the file's data: it drops set-id bits for a caller without
    /// CAP_FSETID and any file capability; it allocates as the caller.
    pub fn fallocate(
        &self,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
        caller: Caller,
    ) -> Result<()> {
        let of = self.file(fh)?;
        let fd = of.file.as_fd();
        let mut m = self.vol.cow.begin(&[of.object]);
        if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
            m.blocks(
                of.object,
                fd,
                &of.file,
                offset,
                offset.saturating_add(length),
            )?;
        } else if mode & (libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE) != 0 {
            m.blocks(of.object, fd, &of.file, offset, u64::MAX)?;
        } else {
            m.attr(of.object, fd)?;
        }
        m.preserve()?;
        debug_assert!(m.all_stored());
        self.drop_privileges(of.object, &of.file, caller.without_fsetid())?;
        self.keeping_mtime(fd, || {
            let _as = AsCaller::writing(caller)?;
            // SAFETY: plain syscall on an owned descriptor.
            check(unsafe {
                libc::fallocate64(fd.as_raw_fd(), mode, offset as i64, length as i64)
            })?;
            Ok(())
        })?;
        // The backing filesystem drops a file capability on fallocate.
        if let Some(node) = self.node_of(of.object) {
            node.forget_capability();
        }
        Ok(())
    }

    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let node = self.nodes.get(ino)?;
        let node_fd = node.fd()?;
        let parent = if ino == ROOT {
            ROOT
        } else {
            let st = backing::statat(node_fd.as_fd(), c"..")?;
            self.nodes.ino_of(ObjectId(st.st_ino))
        };
        let stream = backing::DirStream::open(node_fd.as_fd())?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let open = OpenDir {
            ino,
            parent,
            cursor: Mutex::new(DirCursor { stream, at: 0 }),
        };
        lock(&self.dirs).insert(fh, Arc::new(open));
        Ok(fh)
    }

    /// Hands `add` the entries of open directory `fh` from `offset` on,
    /// each with the offset that follows it, until `add` says the reply is
    /// full (true: that entry was not taken, and is the next one read).
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        add: &mut dyn FnMut(&Listing, u64) -> bool,
    ) -> Result<()> {
        let open = lock(&self.dirs)
            .get(&fh)
            .cloned()
            .ok_or_else(|| errno(libc::EBADF))?;
        let mut cursor = lock(&open.cursor);
        if offset == 0 || cursor.at != offset {
            cursor.stream.seek(offset);
            cursor.at = offset;
        }
        loop {
            let before = cursor.at;
            let Some(entry) = cursor.stream.next()? else {
                return Ok(());
            };
            cursor.at = entry.next;
            let ino = match entry.name.as_encoded_bytes() {
                b"." => open.ino,
                b".." => open.parent,
                _ if Self::hidden(open.ino, &entry.name) => continue,
                _ => self.nodes.ino_of(ObjectId(entry.ino)),
            };
            let listing = Listing {
                ino,
                kind: entry.kind,
                name: entry.name,
            };
            if add(&listing, entry.next) {
                cursor.stream.seek(before);
                cursor.at = before;
                return Ok(());
            }
        }
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }

    pub fn statfs(&self) -> Result<libc::statvfs64> {
        let path = backing::proc_path(self.vol.root_fd().as_raw_fd());
        // SAFETY: zeroed statvfs64 is a valid out-buffer.
        let mut st: libc::statvfs64 = unsafe { std::mem::zeroed() };
        // SAFETY: path is a valid C string.
        check(unsafe { libc::statvfs64(path.as_ptr(), &mut st) })?;
        Ok(st)
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        let node = self.nodes.get(ino)?;
        let cname = cstr(name)?;
        if name == OsStr::new("security.capability") {
            // Asked before every write: a cached answer needs no descriptor.
            if let Some(known) = node.cached_capability() {
                return known.map_err(errno);
            }
            let node_fd = node.fd()?;
            return node
                .capability(|| {
                    backing::get_xattr(node_fd.as_fd(), &cname)
                        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
                })
                .map_err(errno);
        }
        let node_fd = node.fd()?;
        Ok(backing::get_xattr(node_fd.as_fd(), &cname)?)
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.nodes.get(ino)?;
        let node_fd = node.fd()?;
        Ok(backing::list_xattrs(node_fd.as_fd())?)
    }

    pub fn setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        caller: Caller,
    ) -> Result<()> {
        let node = self.nodes.get(ino)?;
        let node_fd = node.fd()?;
        let mut m = self.vol.cow.begin(&[node.object]);
        m.attr(node.object, node_fd.as_fd())?;
        m.preserve()?;
        debug_assert!(m.all_stored());
        let set = backing::set_xattr(node_fd.as_fd(), &cstr(name)?, value, flags);
        node.forget_capability();
        set?;
        if name == OsStr::new("system.posix_acl_access") {
            self.acl_kills_sgid(&node, caller)?;
        }
        Ok(())
    }

    /// Setting an access ACL drops the set-group-ID bit when the caller is
    /// outside the file's group and lacks CAP_FSETID (`posix_acl_update_mode`).
    /// The kernel asks for it
    /// with FUSE_SETXATTR_ACL_KILL_SGID, which needs FUSE_SETXATTR_EXT, a
    /// request layout fuser 0.18 cannot parse; the backing filesystem, set
    /// by root, keeps the bit.
    fn acl_kills_sgid(&self, node: &Node, caller: Caller) -> Result<()> {
        if caller.uid == u32::MAX {
            return Ok(());
        }
        let fd = node.fd()?;
        let st = backing::fstat(fd.as_fd())?;
        if st.st_mode & libc::S_ISGID == 0
            || privileges::in_group(caller, st.st_gid)
            || caller.without_fsetid().is_none()
        {
            return Ok(());
        }
        let path = backing::proc_path(fd.as_raw_fd());
        // SAFETY: path is a valid C string.
        check(unsafe { libc::chmod(path.as_ptr(), st.st_mode & 0o7777 & !libc::S_ISGID) })?;
        Ok(())
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        let node = self.nodes.get(ino)?;
        let node_fd = node.fd()?;
        let mut m = self.vol.cow.begin(&[node.object]);
        m.attr(node.object, node_fd.as_fd())?;
        m.preserve()?;
        debug_assert!(m.all_stored());
        let removed = backing::remove_xattr(node_fd.as_fd(), &cstr(name)?);
        node.forget_capability();
        Ok(removed?)
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

fn renameat2(olddir: i32, old: &CStr, newdir: i32, new: &CStr, flags: u32) -> io::Result<()> {
    // SAFETY: both names are valid C strings.
    check(unsafe { libc::renameat2(olddir, old.as_ptr(), newdir, new.as_ptr(), flags) })
}
