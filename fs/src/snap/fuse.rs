//! The thin fuser adapter of the shadow copy browser. The mount is
//! read-only, so the kernel answers EROFS to every mutation before it
//! reaches us. A shadow copy never changes, so the kernel may cache it for
//! long and keep file pages across opens; only the top level (sets come and
//! go, `latest` moves) is cached briefly.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyXattr, Request,
};

use super::core::Browser;
use super::inodes::{LATEST, ROOT};
use crate::reply::{self, errno};

const FROZEN_TTL: Duration = Duration::from_secs(24 * 3600);
const TOP_TTL: Duration = Duration::from_secs(1);

pub(crate) struct SnapAdapter {
    pub browser: Arc<Browser>,
}

fn ttl_of(ino: u64) -> Duration {
    if ino == ROOT || ino == LATEST {
        Duration::ZERO
    } else {
        FROZEN_TTL
    }
}

impl Filesystem for SnapAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(1024 * 1024);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.browser.lookup(parent.0, name) {
            Ok(attr) => {
                let entry_ttl = if parent.0 == ROOT {
                    TOP_TTL
                } else {
                    FROZEN_TTL
                };
                reply.entry_with_ttls(
                    &ttl_of(attr.ino),
                    &entry_ttl,
                    &attr.to_fuser(),
                    Generation(0),
                )
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.browser.getattr(ino.0) {
            Ok(attr) => reply.attr(&ttl_of(ino.0), &attr.to_fuser()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        reply::data(self.browser.readlink(ino.0), reply)
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        reply::opened(
            self.browser.open(ino.0),
            FopenFlags::FOPEN_KEEP_CACHE,
            reply,
        )
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        reply::data(self.browser.read(fh.0, offset, size), reply)
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.browser.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply::opened(self.browser.opendir(ino.0), FopenFlags::empty(), reply)
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        reply::directory(self.browser.readdir(fh.0), offset, reply)
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.browser.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply::statfs(self.browser.statfs(), true, reply)
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply::xattr(self.browser.getxattr(ino.0, name), size, reply)
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply::xattr(self.browser.listxattr(ino.0), size, reply)
    }
}
