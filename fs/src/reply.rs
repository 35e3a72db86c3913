//! What both FUSE adapters answer the same way: errnos, attributes (the
//! cores' `Attr` as fuser's type: fuser stays at this boundary), opened
//! handles, data, xattrs, statfs and the requests neither serves. Adapters stay thin because
//! the packing of a core's result into a reply lives here once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, INodeNo, ReplyData, ReplyOpen, ReplyStatfs,
    ReplyXattr,
};
use umbra_store::{FileKind, Timestamp};

use crate::attr::Attr;

use crate::{FsError, Result};

pub(crate) fn errno(e: &FsError) -> Errno {
    let code = e.errno();
    // A failure of the diff area reaches the application only as an errno:
    // say what it was, or nobody can tell why.
    if let FsError::Store(_) = e
        && code == libc::EIO
    {
        tracing::error!("answering EIO: {e}");
    }
    Errno::from_i32(kernel_errno(code))
}

/// The kernel refuses a reply whose error is 512 or more (its internal
/// codes, such as ENOTSUPP 524, which a backing filesystem may leak) before
/// it looks up the request, so that request would wait forever; such an
/// errno goes out as EIO.
fn kernel_errno(errno: i32) -> i32 {
    if errno >= 512 {
        tracing::warn!("answering EIO for the kernel-internal errno {errno}");
        libc::EIO
    } else {
        errno
    }
}

pub(crate) fn opened(result: Result<u64>, flags: FopenFlags, reply: ReplyOpen) {
    match result {
        Ok(fh) => reply.opened(FileHandle(fh), flags),
        Err(e) => reply.error(errno(&e)),
    }
}

pub(crate) fn data(result: Result<Vec<u8>>, reply: ReplyData) {
    match result {
        Ok(bytes) => reply.data(&bytes),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Answers an xattr request: the size when asked for it, ERANGE when the
/// caller's buffer is too small.
pub(crate) fn xattr(result: Result<Vec<u8>>, size: u32, reply: ReplyXattr) {
    match result {
        Ok(data) if size == 0 => reply.size(data.len() as u32),
        Ok(data) if data.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(data) => reply.data(&data),
        Err(e) => reply.error(errno(&e)),
    }
}

/// A read-only filesystem reports no free space.
pub(crate) fn statfs(result: Result<libc::statvfs64>, read_only: bool, reply: ReplyStatfs) {
    match result {
        Ok(s) => {
            let (bfree, bavail, ffree) = if read_only {
                (0, 0, 0)
            } else {
                (s.f_bfree, s.f_bavail, s.f_ffree)
            };
            reply.statfs(
                s.f_blocks,
                bfree,
                bavail,
                s.f_files,
                ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            )
        }
        Err(e) => reply.error(errno(&e)),
    }
}

/// The requests neither mount serves, answered without fuser's
/// "[Not Implemented]" warning (a log line per first use of each, which
/// told a user nothing): with ENOSYS the kernel remembers the answer and
/// takes its generic path (copy by read and write, the default poll mask);
/// an ioctl the filesystem does not know is ENOTTY, as natively.
macro_rules! unsupported_quietly {
    () => {
        fn bmap(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _blocksize: u32,
            _idx: u64,
            reply: fuser::ReplyBmap,
        ) {
            reply.error(fuser::Errno::ENOSYS);
        }

        fn ioctl(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _fh: fuser::FileHandle,
            _flags: fuser::IoctlFlags,
            _cmd: u32,
            _in_data: &[u8],
            _out_size: u32,
            reply: fuser::ReplyIoctl,
        ) {
            reply.error(fuser::Errno::ENOTTY);
        }

        fn poll(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _fh: fuser::FileHandle,
            _ph: fuser::PollNotifier,
            _events: fuser::PollEvents,
            _flags: fuser::PollFlags,
            reply: fuser::ReplyPoll,
        ) {
            reply.error(fuser::Errno::ENOSYS);
        }

        fn copy_file_range(
            &self,
            _req: &fuser::Request,
            _ino_in: fuser::INodeNo,
            _fh_in: fuser::FileHandle,
            _offset_in: u64,
            _ino_out: fuser::INodeNo,
            _fh_out: fuser::FileHandle,
            _offset_out: u64,
            _len: u64,
            _flags: fuser::CopyFileRangeFlags,
            reply: fuser::ReplyWrite,
        ) {
            reply.error(fuser::Errno::ENOSYS);
        }
    };
}
pub(crate) use unsupported_quietly;

/// The cores' attributes as fuser's.
pub(crate) trait ToFuser {
    fn to_fuser(&self) -> FileAttr;
}

impl ToFuser for Attr {
    fn to_fuser(&self) -> FileAttr {
        FileAttr {
            ino: INodeNo(self.ino),
            size: self.size,
            blocks: self.blocks,
            atime: system_time(self.atime),
            mtime: system_time(self.mtime),
            ctime: system_time(self.ctime),
            crtime: UNIX_EPOCH,
            kind: file_type(self.kind()),
            perm: (self.mode & 0o7777) as u16,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: self.rdev as u32,
            blksize: 4096,
            flags: 0,
        }
    }
}

pub(crate) fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

pub(crate) fn system_time(t: Timestamp) -> SystemTime {
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::new(t.secs as u64, t.nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs())
            + Duration::from_nanos(u64::from(t.nanos))
    }
}

#[cfg(test)]
mod errno_tests {
    use super::*;

    #[test]
    fn a_kernel_internal_errno_goes_out_as_eio() {
        const ENOTSUPP: i32 = 524;
        assert_eq!(errno(&FsError::from_errno(ENOTSUPP)).code(), libc::EIO);
        assert_eq!(errno(&FsError::from_errno(511)).code(), 511);
        assert_eq!(
            errno(&FsError::from_errno(libc::ENOSPC)).code(),
            libc::ENOSPC
        );
    }

    #[test]
    fn no_room_for_a_pre_image_is_enospc_decided_here_and_a_store_failure_eio() {
        assert_eq!(
            errno(&FsError::NoRoom("on_full = protect".into())).code(),
            libc::ENOSPC
        );
        let full = umbra_store::Error::Io {
            what: "appending".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(errno(&FsError::Store(full)).code(), libc::ENOSPC);
        let broken = umbra_store::Error::Io {
            what: "reading".into(),
            source: std::io::Error::from_raw_os_error(libc::EBADMSG),
        };
        assert_eq!(errno(&FsError::Store(broken)).code(), libc::EIO);
    }
}
