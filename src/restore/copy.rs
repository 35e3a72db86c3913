//! The copy of a planned tree: every file, symlink and FIFO is made under
//! a temporary name in its destination directory, given its contents
//! (holes kept as holes), owner (as root), mode, xattrs and ACLs and
//! times, fsynced and only then renamed over its name, so that a reader
//! never sees half a file and an interrupted restore leaves the old file or
//! the new one. Hard links within the restored tree are linked again.
//! A directory gets its mode, owner, xattrs and times after its entries.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::ProgressBar;

use super::plan::{Action, Kind, Node, open_dir};
use super::report::{Done, Report};
use super::sys::{self, Stat};
use super::{BLOCK, RestoreError};

/// Where the first copy of a hard-linked inode of the set was restored.
struct Linked {
    dir: std::sync::Arc<OwnedFd>,
    name: CString,
}

pub struct Copier<'a> {
    /// Root restores owners, groups, and trusted.*/security.* xattrs; a
    /// user restores as themselves.
    pub root: bool,
    /// Whether a directory that exists gets the set's metadata again.
    pub overwrite: bool,
    pub report: &'a mut Report,
    pub progress: Option<&'a ProgressBar>,
    links: HashMap<(u64, u64), Linked>,
    /// Set by SIGINT, SIGTERM or SIGHUP: the copy stops between two
    /// entries, so that no temporary file is left and the writers hear
    /// that the restore failed.
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> RestoreError {
    let path = path.display().to_string();
    move |source| RestoreError::Io { path, op, source }
}

impl<'a> Copier<'a> {
    pub fn new(
        report: &'a mut Report,
        progress: Option<&'a ProgressBar>,
        overwrite: bool,
    ) -> Copier<'a> {
        Copier {
            root: sys::geteuid() == 0,
            overwrite,
            report,
            progress,
            links: HashMap::new(),
            stop: None,
        }
    }

    /// Stops between two entries once `stop` is set.
    pub fn stopping_on(mut self, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Carries out `node`, an entry of the set's directory `src`, in the
    /// destination directory `dst`.
    pub fn node(
        &mut self,
        src: BorrowedFd<'_>,
        dst: &std::sync::Arc<OwnedFd>,
        node: &Node,
    ) -> Result<(), RestoreError> {
        if self
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
        {
            return Err(RestoreError::Interrupted);
        }
        match node.action {
            Action::Skip => {
                // An equal live file stands for its inode: the set's other
                // names of it are linked to it.
                if node.kind == Kind::File && node.st.st_nlink > 1 {
                    self.links
                        .entry((node.st.st_dev, node.st.st_ino))
                        .or_insert_with(|| Linked {
                            dir: dst.clone(),
                            name: node.dst_name.clone(),
                        });
                }
                self.report.add(Done::Skipped, node);
                Ok(())
            }
            Action::Keep => {
                self.report.add(Done::Kept, node);
                Ok(())
            }
            Action::Merge => {
                let src_dir =
                    open_dir(src, &node.name).map_err(io_err(&node.shown, "in the set"))?;
                let dst_dir = std::sync::Arc::new(
                    open_dir(dst.as_fd(), &node.dst_name)
                        .map_err(io_err(&node.shown, "opening"))?,
                );
                for child in &node.children {
                    self.node(src_dir.as_fd(), &dst_dir, child)?;
                }
                if self.overwrite {
                    self.dir_metadata(src_dir.as_fd(), dst_dir.as_fd(), &node.st, &node.shown)?;
                }
                Ok(())
            }
            Action::Restore => {
                match node.kind {
                    Kind::Dir => self.dir(src, dst, node)?,
                    Kind::File => self.file(src, dst, node)?,
                    Kind::Symlink => self.symlink(src, dst.as_fd(), node)?,
                    Kind::Fifo => self.fifo(src, dst.as_fd(), node)?,
                    Kind::Other => {
                        return Err(RestoreError::Unsupported {
                            path: node.shown.display().to_string(),
                        });
                    }
                }
                self.report.add(Done::Restored, node);
                Ok(())
            }
        }
    }

    fn dir(
        &mut self,
        src: BorrowedFd<'_>,
        dst: &std::sync::Arc<OwnedFd>,
        node: &Node,
    ) -> Result<(), RestoreError> {
        let shown = &node.shown;
        if node.replaces {
            // A file, symlink or FIFO where the set has a directory
            // (--overwrite): it goes, the directory comes.
            sys::unlinkat(dst.as_fd(), &node.dst_name, 0).map_err(io_err(shown, "replacing"))?;
        }
        // Private until its entries are in and its own mode is applied.
        match sys::mkdirat(dst.as_fd(), &node.dst_name, 0o700) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(io_err(shown, "creating")(e)),
        }
        let src_dir = open_dir(src, &node.name).map_err(io_err(shown, "in the set"))?;
        let dst_dir = std::sync::Arc::new(
            open_dir(dst.as_fd(), &node.dst_name).map_err(io_err(shown, "opening"))?,
        );
        for child in &node.children {
            self.node(src_dir.as_fd(), &dst_dir, child)?;
        }
        self.dir_metadata(src_dir.as_fd(), dst_dir.as_fd(), &node.st, shown)
    }

    /// Owner, mode, xattrs (default ACL included) and times of a directory.
    pub fn dir_metadata(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        st: &Stat,
        shown: &Path,
    ) -> Result<(), RestoreError> {
        self.metadata(src, dst, st, shown)?;
        sys::fsync(dst).map_err(io_err(shown, "syncing"))
    }

    /// Owner (as root), mode, xattrs, then times (last: the others change
    /// ctime only, but a FUSE setattr may touch mtime).
    fn metadata(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        st: &Stat,
        shown: &Path,
    ) -> Result<(), RestoreError> {
        if self.root {
            sys::fchown(dst, st.st_uid, st.st_gid)
                .map_err(io_err(shown, "setting the owner of"))?;
        }
        sys::fchmod(dst, st.st_mode & 0o7777).map_err(io_err(shown, "setting the mode of"))?;
        let wanted = sys::xattrs(src).map_err(io_err(shown, "reading xattrs in the set"))?;
        // What the set's copy does not have goes: above all an ACL that a
        // new file inherits from its directory's default ACL, or one a
        // directory got after the set.
        let present = sys::xattrs(dst).map_err(io_err(shown, "reading xattrs of"))?;
        for (name, _) in present {
            if self.may_set(&name) && !wanted.iter().any(|(w, _)| *w == name) {
                match sys::fremovexattr(dst, &name) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
                    Err(e) => return Err(io_err(shown, "removing an xattr of")(e)),
                }
            }
        }
        for (name, value) in wanted {
            if !self.may_set(&name) {
                continue;
            }
            sys::fsetxattr(dst, &name, &value).map_err(io_err(shown, "setting an xattr of"))?;
        }
        sys::futimens(dst, st).map_err(io_err(shown, "setting the times of"))
    }

    /// Which xattrs a restore writes: user.* and ACLs always, the
    /// privileged namespaces only as root.
    fn may_set(&self, name: &CStr) -> bool {
        let name = name.to_bytes();
        name.starts_with(b"user.")
            || name.starts_with(b"system.posix_acl_")
            || (self.root && (name.starts_with(b"trusted.") || name.starts_with(b"security.")))
    }

    fn file(
        &mut self,
        src: BorrowedFd<'_>,
        dst: &std::sync::Arc<OwnedFd>,
        node: &Node,
    ) -> Result<(), RestoreError> {
        let shown = &node.shown;
        let key = (node.st.st_dev, node.st.st_ino);
        if node.st.st_nlink > 1
            && let Some(first) = self.links.get(&key)
        {
            let (tmp, ()) =
                with_temp(|tmp| sys::linkat(first.dir.as_fd(), &first.name, dst.as_fd(), tmp))
                    .map_err(io_err(shown, "linking"))?;
            return self.rename(dst.as_fd(), &tmp, node);
        }
        let from = sys::openat(src, &node.name, libc::O_RDONLY | libc::O_NOFOLLOW, 0)
            .map_err(io_err(shown, "reading in the set"))?;
        let (tmp, to) = with_temp(|tmp| {
            sys::openat(
                dst.as_fd(),
                tmp,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                0o600,
            )
        })
        .map_err(io_err(shown, "creating a temporary file for"))?;
        let written = self
            .contents(from.as_fd(), to.as_fd(), node.st.st_size)
            .map_err(io_err(shown, "copying"))
            .and_then(|()| self.metadata(from.as_fd(), to.as_fd(), &node.st, shown))
            .and_then(|()| sys::fsync(to.as_fd()).map_err(io_err(shown, "syncing")));
        drop(to);
        if let Err(e) = written {
            let _ = sys::unlinkat(dst.as_fd(), &tmp, 0);
            return Err(e);
        }
        self.rename(dst.as_fd(), &tmp, node)?;
        if node.st.st_nlink > 1 {
            self.links.insert(
                key,
                Linked {
                    dir: dst.clone(),
                    name: node.dst_name.clone(),
                },
            );
        }
        Ok(())
    }

    /// The bytes of `from` into `to`: only the data the set has (SEEK_DATA
    /// where the set's file system reports holes), and of that, no block
    /// of zeros: a hole stays a hole, and the file ends at `size`.
    fn contents(&self, from: BorrowedFd<'_>, to: BorrowedFd<'_>, size: i64) -> io::Result<()> {
        let mut buf = vec![0u8; BLOCK];
        let mut at = 0i64;
        while at < size {
            let data = match sys::seek(from, at, libc::SEEK_DATA) {
                Ok(Some(data)) => data,
                Ok(None) => break,
                // No hole reporting: all of it is data.
                Err(_) => at,
            };
            let end = match sys::seek(from, data, libc::SEEK_HOLE) {
                Ok(Some(hole)) => hole.min(size),
                _ => size,
            };
            let mut off = data;
            while off < end {
                if self
                    .stop
                    .as_ref()
                    .is_some_and(|s| s.load(Ordering::Relaxed))
                {
                    return Err(io::ErrorKind::Interrupted.into());
                }
                let want = usize::try_from(end - off).unwrap_or(BLOCK).min(BLOCK);
                let n = sys::pread(from, &mut buf[..want], off)?;
                if n == 0 {
                    break;
                }
                if !all_zero(&buf[..n]) {
                    sys::pwrite_all(to, &buf[..n], off)?;
                }
                if let Some(bar) = self.progress {
                    bar.inc(n as u64);
                }
                off += n as i64;
            }
            at = end;
        }
        sys::ftruncate(to, size)
    }

    fn symlink(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        node: &Node,
    ) -> Result<(), RestoreError> {
        let shown = &node.shown;
        let target = sys::readlinkat(src, &node.name).map_err(io_err(shown, "in the set"))?;
        let target = CString::new(target)
            .map_err(|_| io_err(shown, "in the set")(io::Error::from_raw_os_error(libc::EINVAL)))?;
        let (tmp, ()) = with_temp(|tmp| sys::symlinkat(&target, dst, tmp))
            .map_err(io_err(shown, "creating"))?;
        let done = (|| {
            if self.root {
                sys::lchownat(dst, &tmp, node.st.st_uid, node.st.st_gid)?;
            }
            sys::lutimensat(dst, &tmp, &node.st)
        })();
        if let Err(e) = done {
            let _ = sys::unlinkat(dst, &tmp, 0);
            return Err(io_err(shown, "setting the owner and times of")(e));
        }
        self.rename(dst, &tmp, node)
    }

    fn fifo(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        node: &Node,
    ) -> Result<(), RestoreError> {
        let shown = &node.shown;
        let (tmp, ()) =
            with_temp(|tmp| sys::mkfifoat(dst, tmp, 0o600)).map_err(io_err(shown, "creating"))?;
        let done = (|| {
            if self.root {
                sys::lchownat(dst, &tmp, node.st.st_uid, node.st.st_gid)?;
            }
            sys::fchmodat(dst, &tmp, node.st.st_mode & 0o7777)?;
            // Its xattrs through O_PATH descriptors: opening a FIFO to read
            // would wait for a writer.
            let from = sys::openat(src, &node.name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
            let to = sys::openat(dst, &tmp, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
            let wanted = sys::xattrs(from.as_fd())?;
            // An ACL inherited from the directory goes, as for a file.
            for (name, _) in sys::xattrs(to.as_fd())? {
                if self.may_set(&name) && !wanted.iter().any(|(w, _)| *w == name) {
                    remove_xattr_path(to.as_fd(), &name)?;
                }
            }
            for (name, value) in wanted {
                if self.may_set(&name) {
                    set_xattr_path(to.as_fd(), &name, &value)?;
                }
            }
            sys::lutimensat(dst, &tmp, &node.st)
        })();
        if let Err(e) = done {
            let _ = sys::unlinkat(dst, &tmp, 0);
            return Err(io_err(shown, "setting the metadata of")(e));
        }
        self.rename(dst, &tmp, node)
    }

    fn rename(&self, dst: BorrowedFd<'_>, tmp: &CStr, node: &Node) -> Result<(), RestoreError> {
        sys::renameat(dst, tmp, &node.dst_name).map_err(|e| {
            let _ = sys::unlinkat(dst, tmp, 0);
            io_err(&node.shown, "renaming into place")(e)
        })
    }
}

/// An xattr set on an O_PATH descriptor's inode, through /proc.
fn set_xattr_path(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    let path = sys::proc_path(fd);
    // SAFETY: path and name are NUL-terminated, value readable for its length.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether `bytes` are all zero: compared a page at a time (memcmp),
/// several times faster than a byte loop on a large sparse file.
fn all_zero(bytes: &[u8]) -> bool {
    static ZEROS: [u8; 4096] = [0; 4096];
    bytes.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// An xattr removed from an O_PATH descriptor's inode, through /proc.
fn remove_xattr_path(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let path = sys::proc_path(fd);
    // SAFETY: path and name are NUL-terminated.
    let rc = unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) };
    if rc == -1 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENODATA) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// Runs `make` with a fresh temporary name until the name is
/// free; the name and what `make` returned.
fn with_temp<T>(mut make: impl FnMut(&CStr) -> io::Result<T>) -> io::Result<(CString, T)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = CString::new(format!(".umbra-restore.{}.{n}", std::process::id()))
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        match make(&name) {
            Ok(made) => return Ok((name, made)),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && n < u64::from(u32::MAX) => {}
            Err(e) => return Err(e),
        }
    }
}
