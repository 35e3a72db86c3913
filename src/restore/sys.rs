//! The descriptor-relative system calls a restore is made of: every file
//! is reached by `openat` from its parent's descriptor with O_NOFOLLOW,
//! never through a path string that could be swapped under it. Thin,
//! `io::Result`-returning wrappers; nothing here decides what to copy.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

pub type Stat = libc::stat;

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn check_size(rc: libc::ssize_t) -> io::Result<usize> {
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

/// A name as the kernel takes it. A name with a NUL byte cannot exist.
pub fn cname(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

pub fn open(path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: path is NUL-terminated; the returned fd is owned by the result.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    owned(fd)
}

pub fn openat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: dir is a live descriptor, name is NUL-terminated.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            libc::c_uint::from(mode),
        )
    };
    owned(fd)
}

fn owned(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A directory entry's attributes, the entry itself if it is a symlink.
pub fn lstatat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Stat> {
    // SAFETY: zeroed stat is a valid out-buffer.
    let mut st: Stat = unsafe { std::mem::zeroed() };
    // SAFETY: dir is live, name NUL-terminated, st a valid out-buffer.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// `lstatat`, with a missing entry as `None`.
pub fn lstatat_opt(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<Stat>> {
    match lstatat(dir, name) {
        Ok(st) => Ok(Some(st)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: buf is writable for its length.
    let n = check_size(unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated, dir is live.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: name is NUL-terminated, dir is live.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })
}

pub fn mkfifoat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: name is NUL-terminated, dir is live.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), libc::S_IFIFO | mode, 0) })
}

pub fn linkat(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
) -> io::Result<()> {
    // SAFETY: names NUL-terminated, dirs live; flags 0: a symlink is linked, not followed.
    check(unsafe {
        libc::linkat(
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
            0,
        )
    })
}

pub fn renameat(dir: BorrowedFd<'_>, from: &CStr, to: &CStr) -> io::Result<()> {
    // SAFETY: names NUL-terminated, dir live.
    check(unsafe { libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr()) })
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: name NUL-terminated, dir live.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

/// Whether the caller (by its effective ids) may create and remove
/// entries in the directory `dir`.
pub fn can_write_dir(dir: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: the empty name is NUL-terminated, dir live; AT_EMPTY_PATH
    // makes the call about dir itself.
    // (glibc's faccessat emulates AT_EACCESS for root from the mode bits;
    // the system call asks the filesystem.)
    let rc = unsafe {
        libc::syscall(
            libc::SYS_faccessat2,
            dir.as_raw_fd(),
            c"".as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS | libc::AT_EMPTY_PATH,
        )
    };
    check(if rc == -1 { -1 } else { 0 })
}

/// Owner and group of an entry, a symlink itself and not its target.
pub fn lchownat(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: name NUL-terminated, dir live.
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: fd is live.
    check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: fd is live.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })
}

/// chmod of an entry that is not a symlink (a FIFO: opening it would block).
pub fn fchmodat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: name NUL-terminated, dir live.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) })
}

fn times_of(st: &Stat) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ]
}

/// Sets atime and mtime to those of `st`.
pub fn futimens(fd: BorrowedFd<'_>, st: &Stat) -> io::Result<()> {
    let times = times_of(st);
    // SAFETY: fd live, times a valid array of two timespecs.
    check(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })
}

/// Sets atime and mtime of an entry (a symlink itself) to those of `st`.
pub fn lutimensat(dir: BorrowedFd<'_>, name: &CStr, st: &Stat) -> io::Result<()> {
    let times = times_of(st);
    // SAFETY: name NUL-terminated, dir live, times valid.
    check(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

pub fn fsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fd is live.
    check(unsafe { libc::fsync(fd.as_raw_fd()) })
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: i64) -> io::Result<()> {
    // SAFETY: fd is live.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), size) })
}

/// lseek with SEEK_DATA / SEEK_HOLE; `None` past the end of the file.
pub fn seek(fd: BorrowedFd<'_>, offset: i64, whence: libc::c_int) -> io::Result<Option<i64>> {
    // SAFETY: fd is live.
    let at = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if at >= 0 {
        return Ok(Some(at));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(e)
    }
}

pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: i64) -> io::Result<usize> {
    // SAFETY: buf is writable for its length.
    check_size(unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), offset) })
}

pub fn pwrite_all(fd: BorrowedFd<'_>, mut buf: &[u8], mut offset: i64) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: buf is readable for its length.
        let n = check_size(unsafe {
            libc::pwrite(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), offset)
        })?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        offset += n as i64;
    }
    Ok(())
}

/// The path through which a descriptor's own inode is reached (for the
/// calls that take no descriptor: xattrs of an O_PATH descriptor, listing a
/// directory). The kernel resolves it to the very inode the descriptor
/// holds, whatever happened to its name since.
pub fn proc_path(fd: BorrowedFd<'_>) -> CString {
    // A decimal number has no NUL byte.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// Every extended attribute of the inode behind `fd`, name and value:
/// through the descriptor itself, or for an O_PATH descriptor (a FIFO),
/// through its /proc path, which does not follow a symlink.
pub fn xattrs(fd: BorrowedFd<'_>) -> io::Result<Vec<(CString, Vec<u8>)>> {
    let path = proc_path(fd);
    let raw = fd.as_raw_fd();
    let mut by_path = false;
    let list = |by_path: bool, buf: &mut [u8]| {
        // SAFETY: buf is writable for its length; fd is live and path
        // NUL-terminated.
        check_size(unsafe {
            if by_path {
                libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            } else {
                libc::flistxattr(raw, buf.as_mut_ptr().cast(), buf.len())
            }
        })
    };
    let get = |by_path: bool, name: &CStr, buf: &mut [u8]| {
        // SAFETY: as above; name is NUL-terminated.
        check_size(unsafe {
            if by_path {
                libc::getxattr(
                    path.as_ptr(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            } else {
                libc::fgetxattr(raw, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            }
        })
    };
    let mut names = vec![0u8; 4096];
    let len = loop {
        match list(by_path, &mut names) {
            Ok(n) => break n,
            Err(e) if e.raw_os_error() == Some(libc::EBADF) && !by_path => by_path = true,
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) && names.len() < 1 << 20 => {
                names.resize(names.len() * 4, 0);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut value = vec![0u8; 4096];
        let size = loop {
            match get(by_path, &name, &mut value) {
                Ok(n) => break Some(n),
                Err(e) if e.raw_os_error() == Some(libc::ERANGE) && value.len() < 1 << 20 => {
                    value.resize(value.len() * 4, 0);
                }
                // Gone between list and get, or not readable by this user.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA | libc::EPERM)) => {
                    break None;
                }
                Err(e) => return Err(e),
            }
        };
        if let Some(size) = size {
            value.truncate(size);
            out.push((name, value));
        }
    }
    Ok(out)
}

pub fn fsetxattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: fd live, name NUL-terminated, value readable for its length.
    check(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

pub fn fremovexattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: fd live, name NUL-terminated.
    check(unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) })
}

/// The names in a directory (without `.` and `..`), read through the
/// directory's own descriptor.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<std::ffi::OsString>> {
    let path = proc_path(dir);
    let path = std::path::Path::new(OsStr::from_bytes(path.as_bytes()));
    let mut names = Vec::new();
    for entry in std::fs::read_dir(path)? {
        names.push(entry?.file_name());
    }
    names.sort();
    Ok(names)
}

pub fn geteuid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() }
}
