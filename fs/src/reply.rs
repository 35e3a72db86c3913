//! What both FUSE adapters answer the same way: errnos, opened handles,
//! directory listings, data, xattrs and statfs. Adapters stay thin because
//! the packing of a core's result into a reply lives here once.

use std::ffi::OsString;
use std::sync::Arc;

use fuser::{
    Errno, FileHandle, FopenFlags, INodeNo, ReplyData, ReplyDirectory, ReplyOpen, ReplyStatfs,
    ReplyXattr,
};
use umbra_store::FileKind;

use crate::attr::file_type;
use crate::{FsError, Result};

/// One entry of a directory listing, as a core hands it to an adapter.
#[derive(Clone, Debug)]
pub(crate) struct Listing {
    pub ino: u64,
    pub kind: FileKind,
    pub name: OsString,
}

pub(crate) fn errno(e: &FsError) -> Errno {
    // A failure of the diff area reaches the application only as EIO: say
    // what it was, or nobody can tell why.
    if let FsError::Store(_) = e {
        tracing::error!("answering EIO: {e}");
    }
    Errno::from_i32(kernel_errno(e.errno()))
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

/// Fills a readdir reply from `offset` (the index after the last entry the
/// kernel has) until the buffer is full.
pub(crate) fn directory(result: Result<Arc<Vec<Listing>>>, offset: u64, mut reply: ReplyDirectory) {
    match result {
        Ok(entries) => {
            for (i, e) in entries.iter().enumerate().skip(offset as usize) {
                if reply.add(INodeNo(e.ino), (i + 1) as u64, file_type(e.kind), &e.name) {
                    break;
                }
            }
            reply.ok();
        }
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
}
