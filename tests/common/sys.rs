//! Thin, errno-returning wrappers over the system calls the tests need and
//! std does not offer (renameat2, mkfifo, l*xattr, lchown, utimensat without
//! following symlinks, umount2). Every wrapper takes a full path and returns
//! `Err(errno)`; nothing here knows umbra.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// An errno, kept as the raw number so results compare with `==`.
pub type Errno = i32;

pub fn cstr(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("test paths have no NUL byte")
}

fn cstr_os(name: &OsStr) -> CString {
    CString::new(name.as_bytes()).expect("test names have no NUL byte")
}

/// The errno of the last failed call.
pub fn last_errno() -> Errno {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The errno of an io::Error, or EIO for errors that carry none.
pub fn errno_of(err: &io::Error) -> Errno {
    err.raw_os_error().unwrap_or(libc::EIO)
}

/// Turns `rc == -1` into the errno.
fn check(rc: libc::c_int) -> Result<(), Errno> {
    if rc == -1 { Err(last_errno()) } else { Ok(()) }
}

/// The symbolic name of an errno, for messages.
pub fn errno_name(errno: Errno) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTCONN => "ENOTCONN",
        libc::ESTALE => "ESTALE",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}

pub fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> Result<(), Errno> {
    let (from, to) = (cstr(from), cstr(to));
    // SAFETY: both strings are valid NUL-terminated paths for the call's duration.
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    })
}

pub fn mknod_fifo(path: &Path, mode: u32) -> Result<(), Errno> {
    let path = cstr(path);
    // SAFETY: valid NUL-terminated path.
    check(unsafe { libc::mknod(path.as_ptr(), libc::S_IFIFO | mode as libc::mode_t, 0) })
}

pub fn lchown(path: &Path, uid: u32, gid: u32) -> Result<(), Errno> {
    let path = cstr(path);
    // SAFETY: valid NUL-terminated path.
    check(unsafe { libc::lchown(path.as_ptr(), uid, gid) })
}

/// Sets the mtime (not following a final symlink), leaving atime alone.
pub fn set_mtime(path: &Path, sec: i64, nsec: i64) -> Result<(), Errno> {
    let path = cstr(path);
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    // SAFETY: valid path and a two-element timespec array.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

pub fn lsetxattr(path: &Path, name: &str, value: &[u8]) -> Result<(), Errno> {
    let (path, name) = (cstr(path), cstr_os(OsStr::new(name)));
    // SAFETY: valid strings; value pointer and length describe a live slice.
    check(unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// The xattr value of a POSIX ACL (`system.posix_acl_access` or
/// `_default`): version 2, then (tag, permissions, id) entries, which must
/// come sorted by tag and id. Ids of the owner, group, mask and other
/// entries are ignored.
pub fn posix_acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// ACL entry tags (linux/posix_acl.h).
pub const ACL_USER_OBJ: u16 = 0x01;
pub const ACL_USER: u16 = 0x02;
pub const ACL_GROUP_OBJ: u16 = 0x04;
pub const ACL_MASK: u16 = 0x10;
pub const ACL_OTHER: u16 = 0x20;

pub fn lremovexattr(path: &Path, name: &str) -> Result<(), Errno> {
    let (path, name) = (cstr(path), cstr_os(OsStr::new(name)));
    // SAFETY: valid NUL-terminated strings.
    check(unsafe { libc::lremovexattr(path.as_ptr(), name.as_ptr()) })
}

/// Every xattr name of `path` (not following a final symlink).
pub fn llistxattr(path: &Path) -> Result<Vec<Vec<u8>>, Errno> {
    let cpath = cstr(path);
    loop {
        // SAFETY: a null buffer with size 0 asks for the needed size.
        let need = unsafe { libc::llistxattr(cpath.as_ptr(), std::ptr::null_mut(), 0) };
        if need < 0 {
            return match last_errno() {
                libc::ENOTSUP => Ok(Vec::new()),
                errno => Err(errno),
            };
        }
        let mut buf = vec![0u8; need as usize];
        if buf.is_empty() {
            return Ok(Vec::new());
        }
        // SAFETY: buf is writable for buf.len() bytes.
        let got = unsafe { libc::llistxattr(cpath.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            match last_errno() {
                libc::ERANGE => continue, // grew in between: ask again
                errno => return Err(errno),
            }
        }
        buf.truncate(got as usize);
        return Ok(buf
            .split(|b| *b == 0)
            .filter(|n| !n.is_empty())
            .map(<[u8]>::to_vec)
            .collect());
    }
}

/// The value of xattr `name` of `path` (not following a final symlink).
pub fn lgetxattr(path: &Path, name: &[u8]) -> Result<Vec<u8>, Errno> {
    let cpath = cstr(path);
    let cname = CString::new(name).expect("xattr names have no NUL byte");
    loop {
        // SAFETY: a null buffer with size 0 asks for the needed size.
        let need =
            unsafe { libc::lgetxattr(cpath.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
        if need < 0 {
            return Err(last_errno());
        }
        let mut buf = vec![0u8; need as usize];
        if buf.is_empty() {
            return Ok(buf);
        }
        // SAFETY: buf is writable for buf.len() bytes.
        let got = unsafe {
            libc::lgetxattr(
                cpath.as_ptr(),
                cname.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if got < 0 {
            match last_errno() {
                libc::ERANGE => continue,
                errno => return Err(errno),
            }
        }
        buf.truncate(got as usize);
        return Ok(buf);
    }
}

/// Detaches the mount at `path` now (MNT_DETACH), falling back to
/// `fusermount3 -uz` when we may not call umount2 ourselves.
pub fn lazy_unmount(path: &Path) -> Result<(), Errno> {
    let cpath = cstr(path);
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::umount2(cpath.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let errno = last_errno();
    let status = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => Err(errno),
    }
}

/// Decodes the octal escapes (`\040`) of a /proc/self/mountinfo field.
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// How many mounts sit exactly at `path` (stacked mounts count each).
pub fn mount_count(path: &Path) -> usize {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return 0;
    };
    let want = path.as_os_str().as_bytes();
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|mp| unescape_mountinfo(mp) == want)
        .count()
}

pub fn is_mounted(path: &Path) -> bool {
    mount_count(path) > 0
}

/// `(dev, ino)` of `path` without following a final symlink.
pub fn lstat_ino(path: &Path) -> Result<(u64, u64), Errno> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .map(|m| (m.dev(), m.ino()))
        .map_err(|e| errno_of(&e))
}

/// Every entry of `dir` with the inode number readdir gives (d_ino, not a
/// stat), dots included.
pub fn readdir_inos(dir: &Path) -> Result<Vec<(Vec<u8>, u64)>, Errno> {
    let path = cstr(dir);
    // SAFETY: a valid NUL-terminated path.
    let handle = unsafe { libc::opendir(path.as_ptr()) };
    if handle.is_null() {
        return Err(last_errno());
    }
    let mut entries = Vec::new();
    loop {
        // SAFETY: handle is an open DIR*; the entry stays valid until the
        // next readdir on it.
        let entry = unsafe { libc::readdir(handle) };
        if entry.is_null() {
            break;
        }
        // SAFETY: d_name is NUL-terminated within the entry.
        let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) };
        // SAFETY: entry is valid (above).
        entries.push((name.to_bytes().to_vec(), unsafe { (*entry).d_ino }));
    }
    // SAFETY: handle was opened above and is closed once.
    unsafe { libc::closedir(handle) };
    Ok(entries)
}
