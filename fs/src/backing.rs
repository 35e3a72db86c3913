//! System calls on a backing directory, by file descriptor, never by path:
//! O_PATH descriptors, file handles (name_to_handle_at/open_by_handle_at),
//! stat, xattrs and directory listing. Everything here is a thin, checked
//! wrapper; no copy-on-write policy lives in this file.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use umbra_store::{AttrRecord, DirEntry, FileKind, ObjectId, Timestamp};

pub(crate) fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// `openat(dir, name, flags, mode)`; O_CLOEXEC always.
pub(crate) fn openat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: i32,
    mode: u32,
) -> io::Result<OwnedFd> {
    // SAFETY: name is a valid C string; the returned fd is owned by us.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode,
        )
    })?;
    // SAFETY: fd was just returned by openat and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// renameat2(2) between two directories given by descriptor.
pub(crate) fn renameat2(
    olddir: RawFd,
    old: &CStr,
    newdir: RawFd,
    new: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: both names are valid C strings.
    check(unsafe { libc::renameat2(olddir, old.as_ptr(), newdir, new.as_ptr(), flags) }).map(|_| ())
}

/// An O_PATH descriptor of `name` in `dir`, never following a symlink.
pub(crate) fn open_path(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)
}

/// The `/proc/self/fd/N` path of a descriptor: reopens an O_PATH fd with
/// real access flags and reaches calls that take no descriptor.
pub(crate) fn proc_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a formatted path")
}

/// Reopens an O_PATH descriptor for I/O. O_NOATIME: reads through umbra
/// never change the backing atime, so a snapshot's atime stays exact.
pub(crate) fn reopen(fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    let path = proc_path(fd.as_raw_fd());
    let flags = (flags | libc::O_CLOEXEC | libc::O_NOATIME | libc::O_NOFOLLOW)
        & !(libc::O_CREAT
            | libc::O_EXCL
            | libc::O_TRUNC
            | libc::O_APPEND
            | libc::O_DIRECT
            | libc::O_NOCTTY);
    // SAFETY: path is a valid C string.
    let raw = unsafe { libc::open(path.as_ptr(), flags & !libc::O_NOFOLLOW) };
    let raw = if raw < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
        // O_NOATIME is refused for files we do not own only without
        // CAP_FOWNER; retry without it rather than fail the open.
        // SAFETY: as above.
        unsafe { libc::open(path.as_ptr(), flags & !(libc::O_NOFOLLOW | libc::O_NOATIME)) }
    } else {
        raw
    };
    check(raw)?;
    // SAFETY: raw is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat64> {
    // SAFETY: zeroed stat64 is a valid out-buffer.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: the empty path with AT_EMPTY_PATH stats the fd itself.
    check(unsafe {
        libc::fstatat64(
            fd.as_raw_fd(),
            c"".as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

pub(crate) fn statat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat64> {
    // SAFETY: as in fstat.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: name is a valid C string.
    check(unsafe {
        libc::fstatat64(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// A file handle: survives renames and names the inode, not a path.
pub(crate) fn name_to_handle(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    name_to_handle_at(dir, name).map(|(handle, _)| handle)
}

/// The handle of the inode behind `fd` and the id of the mount it is on:
/// a handle opens only against a descriptor of the same filesystem.
pub(crate) fn handle_of(fd: BorrowedFd<'_>) -> io::Result<(Vec<u8>, i32)> {
    name_to_handle_at(fd, c"")
}

fn name_to_handle_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<(Vec<u8>, i32)> {
    const MAX_HANDLE: usize = 128;
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }
    let mut buf = vec![0u8; 8 + MAX_HANDLE];
    buf[..4].copy_from_slice(&(MAX_HANDLE as u32).to_ne_bytes());
    let mut mount_id: libc::c_int = 0;
    let flags = if name.is_empty() {
        libc::AT_EMPTY_PATH
    } else {
        0
    };
    // SAFETY: buf is large enough for MAX_HANDLE bytes of handle.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr(),
            &mut mount_id as *mut libc::c_int,
            flags,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    buf.truncate(8 + len.min(MAX_HANDLE));
    Ok((buf, mount_id))
}

/// Opens the inode a handle names, on the filesystem of `mount`.
pub(crate) fn open_by_handle(
    mount: BorrowedFd<'_>,
    handle: &[u8],
    flags: i32,
) -> io::Result<OwnedFd> {
    if handle.len() < 8 {
        return Err(io::Error::from_raw_os_error(libc::ESTALE));
    }
    let mut buf = handle.to_vec();
    // SAFETY: buf holds a struct file_handle as name_to_handle wrote it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            buf.as_mut_ptr(),
            flags | libc::O_CLOEXEC,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ret is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// Entries of a directory (not `.` and `..`), with inode numbers and kinds.
pub(crate) fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<(OsString, u64, FileKind)>> {
    let mut stream = DirStream::open(dir)?;
    let mut out = Vec::new();
    while let Some(entry) = stream.next()? {
        if entry.name != "." && entry.name != ".." {
            out.push((entry.name, entry.ino, entry.kind));
        }
    }
    Ok(out)
}

/// One entry as a directory stream yields it.
pub(crate) struct RawEntry {
    pub name: OsString,
    pub ino: u64,
    pub kind: FileKind,
    /// Where the stream stands after this entry (getdents' `d_off`): a
    /// position `seek` returns to.
    pub next: u64,
}

/// A directory stream of its own descriptor, read from where it is put.
/// Opened with O_NOATIME (`reopen`): a listing through umbra never moves
/// the backing directory's atime, which a set whose directory is still
/// live shows as its own. Positions are the backing filesystem's
/// `d_off` cookies, so a listing read in pieces costs no memory of its own.
pub(crate) struct DirStream(*mut libc::DIR);

// SAFETY: a DIR is used by one thread at a time (every user holds the
// stream under a lock or owns it); glibc keeps no thread-local state in it.
unsafe impl Send for DirStream {}

impl DirStream {
    pub fn open(dir: BorrowedFd<'_>) -> io::Result<DirStream> {
        let fd = reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
        // SAFETY: fdopendir takes ownership of the descriptor on success.
        let stream = unsafe { libc::fdopendir(fd.as_raw_fd()) };
        if stream.is_null() {
            return Err(io::Error::last_os_error());
        }
        std::mem::forget(fd);
        Ok(DirStream(stream))
    }

    /// Puts the stream at `position`: 0 is the start (read anew, so what
    /// was created since shows), anything else a `next` of an earlier entry.
    pub fn seek(&mut self, position: u64) {
        // SAFETY: the stream is open.
        unsafe {
            if position == 0 {
                libc::rewinddir(self.0);
            } else {
                libc::seekdir(self.0, position as libc::c_long);
            }
        }
    }

    /// The next entry, `.` and `..` included; None at the end.
    pub fn next(&mut self) -> io::Result<Option<RawEntry>> {
        // readdir64 reports an error only through errno, left as it was at
        // the end of the stream.
        // SAFETY: plain errno write of this thread.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: the stream is open; the entry stays valid until the next call.
        let entry = unsafe { libc::readdir64(self.0) };
        if entry.is_null() {
            return match io::Error::last_os_error().raw_os_error() {
                Some(0) | None => Ok(None),
                Some(e) => Err(io::Error::from_raw_os_error(e)),
            };
        }
        // SAFETY: a non-null entry from readdir64 with a NUL-terminated name.
        let (name, ino, d_type, next) = unsafe {
            let e = &*entry;
            (
                CStr::from_ptr(e.d_name.as_ptr()).to_bytes().to_vec(),
                e.d_ino,
                e.d_type,
                e.d_off as u64,
            )
        };
        let kind = match kind_of_dtype(d_type) {
            Some(kind) => kind,
            // A filesystem that does not fill d_type: ask the inode.
            None => {
                // SAFETY: the stream is open; its descriptor stays ours.
                let dir = unsafe { BorrowedFd::borrow_raw(libc::dirfd(self.0)) };
                FileKind::from_mode(statat(dir, &CString::new(name.clone())?)?.st_mode)
                    .unwrap_or(FileKind::Regular)
            }
        };
        Ok(Some(RawEntry {
            name: OsString::from_vec(name),
            ino,
            kind,
            next,
        }))
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: the stream came from fdopendir and is closed only here.
        unsafe { libc::closedir(self.0) };
    }
}

fn kind_of_dtype(d_type: u8) -> Option<FileKind> {
    Some(match d_type {
        libc::DT_DIR => FileKind::Directory,
        libc::DT_LNK => FileKind::Symlink,
        libc::DT_FIFO => FileKind::Fifo,
        libc::DT_SOCK => FileKind::Socket,
        libc::DT_CHR => FileKind::CharDevice,
        libc::DT_BLK => FileKind::BlockDevice,
        libc::DT_REG => FileKind::Regular,
        _ => return None,
    })
}

pub(crate) fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
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

/// The xattr names of the inode behind `fd` (an O_PATH fd is fine).
pub(crate) fn list_xattrs(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let path = proc_path(fd.as_raw_fd());
    loop {
        // SAFETY: a null buffer of size 0 asks for the size.
        let size =
            match check_size(unsafe { libc::listxattr(path.as_ptr(), std::ptr::null_mut(), 0) }) {
                Ok(n) => n,
                Err(e) if no_xattrs(&e) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
        let mut buf = vec![0u8; size];
        // SAFETY: buf is writable for size bytes.
        match check_size(unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), size) }) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) if no_xattrs(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    }
}

pub(crate) fn get_xattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let path = proc_path(fd.as_raw_fd());
    loop {
        // SAFETY: a null buffer of size 0 asks for the size.
        let size = check_size(unsafe {
            libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0)
        })?;
        let mut buf = vec![0u8; size];
        // SAFETY: buf is writable for size bytes.
        match check_size(unsafe {
            libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), size)
        }) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

pub(crate) fn set_xattr(
    fd: BorrowedFd<'_>,
    name: &CStr,
    value: &[u8],
    flags: i32,
) -> io::Result<()> {
    let path = proc_path(fd.as_raw_fd());
    // SAFETY: value is readable for its length.
    check(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })?;
    Ok(())
}

pub(crate) fn remove_xattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let path = proc_path(fd.as_raw_fd());
    // SAFETY: both are valid C strings.
    check(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) })?;
    Ok(())
}

fn no_xattrs(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENODATA))
}

/// Every xattr of the inode, sorted by name.
pub(crate) fn all_xattrs(fd: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = list_xattrs(fd)?;
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        match get_xattr(fd, &c) {
            Ok(value) => out.push((name.to_vec(), value)),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}

pub(crate) fn timestamp(secs: i64, nanos: i64) -> Timestamp {
    Timestamp {
        secs,
        nanos: nanos as u32,
    }
}

/// A stat and the xattrs as the store keeps them.
pub(crate) fn attr_record(st: &libc::stat64, xattrs: Vec<(Vec<u8>, Vec<u8>)>) -> AttrRecord {
    AttrRecord {
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        nlink: st.st_nlink as u32,
        rdev: st.st_rdev,
        atime: timestamp(st.st_atime, st.st_atime_nsec),
        mtime: timestamp(st.st_mtime, st.st_mtime_nsec),
        ctime: timestamp(st.st_ctime, st.st_ctime_nsec),
        xattrs,
    }
}

/// A directory's entries as the store keeps them, without `hidden` (the
/// daemon's own folder, at a volume root).
pub(crate) fn dir_record(dir: BorrowedFd<'_>, hidden: Option<&OsStr>) -> io::Result<Vec<DirEntry>> {
    let mut entries: Vec<DirEntry> = list_dir(dir)?
        .into_iter()
        .filter(|(name, _, _)| Some(name.as_os_str()) != hidden)
        .map(|(name, ino, kind)| DirEntry {
            name: name.into_vec(),
            object: ObjectId(ino),
            kind,
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// `pread` until `buf` is full or the file ends; returns the bytes read.
pub(crate) fn pread_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Asks the filesystem to start reading the first `len` bytes of `file`
/// in; does not wait. Only a hint: a failure changes nothing.
pub(crate) fn will_need(file: &File, len: u64) {
    // SAFETY: a plain advice call on a descriptor we hold.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            0,
            i64::try_from(len).unwrap_or(i64::MAX),
            libc::POSIX_FADV_WILLNEED,
        );
    }
}

pub(crate) fn as_file(fd: OwnedFd) -> File {
    File::from(fd)
}

/// A second descriptor of the same inode.
pub(crate) fn reopen_path(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}
