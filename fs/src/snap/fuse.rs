//! The thin fuser adapter of the shadow copy browser. The mount is
//! read-only, so the kernel answers EROFS to every mutation before it
//! reaches us. A shadow copy never changes, so the kernel may cache it for
//! long, keep file pages and directory listings across opens, and open
//! without asking; only the top level (sets come and go, `latest` moves)
//! is cached briefly, and its listing is dropped when the sets change.
//!
//! Tree volumes (btrfs snapshots) are read by the kernel's FUSE
//! passthrough: OPEN answers with the image's file registered as the
//! backing file (FUSE_DEV_IOC_BACKING_OPEN), and the kernel then reads,
//! splices and maps it directly, at the backing filesystem's speed, without
//! a READ reaching the daemon. An image never changes, which is what
//! passthrough needs (a file that is also written through FUSE could not be
//! passed through). One backing id serves every open of an inode (the kernel
//! refuses two for one inode) and is closed at the last RELEASE; it holds a
//! kernel reference to the file, not a descriptor of the daemon, so the
//! files a user holds open cost the daemon none. Passthrough is taken when
//! the kernel offers FUSE_PASSTHROUGH (6.9 and later, with the daemon
//! holding CAP_SYS_ADMIN, as it does); when the kernel does not offer it, or
//! refuses a backing file, files are read through the daemon instead
//! (pread of the image's file, its pages kept by FOPEN_KEEP_CACHE), and the
//! mount stays on that path from then on (an inode opened both ways at once
//! would fail with EIO). Passthrough needs an OPEN per open, so a browser
//! that serves tree volumes does not let the kernel open without asking.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{
    BackingId, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use super::core::Browser;
use super::inodes::{LATEST, ROOT};
use crate::reply::{self, errno};
use crate::reply::{ToFuser, file_type};

const FROZEN_TTL: Duration = Duration::from_secs(24 * 3600);
const TOP_TTL: Duration = Duration::from_secs(1);

pub(crate) struct SnapAdapter {
    pub browser: Arc<Browser>,
    /// The kernel opens files and directories without asking (it offered
    /// FUSE_NO_OPEN_SUPPORT / FUSE_NO_OPENDIR_SUPPORT): the first OPEN is
    /// answered ENOSYS and none follows, nor any RELEASE; the kernel then
    /// keeps file pages and directory listings cached across opens.
    no_open: bool,
    no_opendir: bool,
    /// Tree images' files are passed through (see the top of this file).
    passthrough: AtomicBool,
    /// The backing id of each passed-through inode and its open handles.
    backings: Mutex<HashMap<u64, (BackingId, u64)>>,
}

/// The handle of a passed-through open; every other handle is 0.
const PASSED_THROUGH: FileHandle = FileHandle(1);

impl SnapAdapter {
    pub fn new(browser: Arc<Browser>) -> SnapAdapter {
        SnapAdapter {
            browser,
            no_open: false,
            no_opendir: false,
            passthrough: AtomicBool::new(false),
            backings: Mutex::new(HashMap::new()),
        }
    }

    fn backings(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (BackingId, u64)>> {
        self.backings.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn ttl_of(ino: u64) -> Duration {
    if ino == ROOT || ino == LATEST {
        Duration::ZERO
    } else {
        FROZEN_TTL
    }
}

/// How long the kernel may keep a name of directory `parent` and what it
/// names: sets come and go, `latest` moves; below, nothing changes.
fn entry_ttl(parent: u64, ino: u64) -> Duration {
    if ino == LATEST {
        Duration::ZERO
    } else if parent == ROOT {
        TOP_TTL
    } else {
        FROZEN_TTL
    }
}

impl Filesystem for SnapAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(1024 * 1024);
        let offered = config.capabilities();
        let trees = self.browser.serves_trees();
        self.no_open = offered.contains(InitFlags::FUSE_NO_OPEN_SUPPORT) && !trees;
        if trees {
            // Depth 1: the images rest on a filesystem that stacks on none.
            let passthrough = config.set_max_stack_depth(1).is_ok()
                && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok();
            if passthrough {
                tracing::info!("btrfs sets are read by FUSE passthrough");
            } else {
                tracing::warn!(
                    "the kernel offers no FUSE_PASSTHROUGH: btrfs sets are read \
                     through the daemon"
                );
            }
            self.passthrough.store(passthrough, Ordering::Relaxed);
        }
        self.no_opendir = offered.contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        // Listing a directory brings every entry's attributes with it: a
        // tree walk costs no LOOKUP per name. Lookups and listings may run
        // in parallel in one directory: nothing here changes.
        for wanted in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
        ] {
            let _ = config.add_capabilities(wanted);
        }
        // The kernel checks each file's ACL of the set's instant, which
        // getxattr serves from the set: a user reads in a set only what
        // the ACLs let them read at its instant.
        if config.add_capabilities(InitFlags::FUSE_POSIX_ACL).is_err() {
            tracing::warn!(
                "the kernel offers no FUSE_POSIX_ACL: ACL entries other than the \
                 mode's are not enforced in the sets"
            );
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.browser.lookup(parent.0, name) {
            Ok(attr) => reply.entry_with_ttls(
                &ttl_of(attr.ino),
                &entry_ttl(parent.0, attr.ino),
                &attr.to_fuser(),
                Generation(0),
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// BATCH_FORGET comes here too (fuser's default splits it).
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.browser.forget(ino.0, nlookup);
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
        if self.no_open {
            return reply.error(Errno::ENOSYS);
        }
        let keep = FopenFlags::FOPEN_KEEP_CACHE;
        let file = match self.browser.open(ino.0) {
            Ok(file) => file,
            Err(e) => return reply.error(errno(&e)),
        };
        let Some(file) = file else {
            return reply.opened(FileHandle(0), keep);
        };
        // Held until the id is in the table: the RELEASE of this open
        // waits for it. No other flag: the kernel refuses (EIO) a
        // passed-through open with any but a few (FOPEN_PASSTHROUGH_MASK),
        // and its pages are the backing file's anyway.
        let through = FopenFlags::empty();
        let mut backings = self.backings();
        // An inode open passed through stays so, even once passthrough
        // stopped: the kernel refuses a second mode while one is open.
        if let Some((id, opens)) = backings.get_mut(&ino.0) {
            *opens += 1;
            return reply.opened_passthrough(PASSED_THROUGH, through, id);
        }
        if !self.passthrough.load(Ordering::Relaxed) {
            drop(backings);
            return reply.opened(FileHandle(0), keep);
        }
        match reply.open_backing(&*file) {
            Ok(id) => {
                reply.opened_passthrough(PASSED_THROUGH, through, &id);
                backings.insert(ino.0, (id, 1));
            }
            Err(e) => {
                drop(backings);
                if self.passthrough.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        "the kernel refused a backing file ({e}): btrfs sets are read \
                         through the daemon from now on"
                    );
                }
                reply.opened(FileHandle(0), keep)
            }
        }
    }

    /// The last release of a passed-through inode closes its backing id.
    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: fuser::ReplyEmpty,
    ) {
        if fh == PASSED_THROUGH {
            let mut backings = self.backings();
            let last = match backings.get_mut(&ino.0) {
                Some((_, opens)) => {
                    *opens = opens.saturating_sub(1);
                    *opens == 0
                }
                None => false,
            };
            let closed = if last { backings.remove(&ino.0) } else { None };
            drop(backings);
            drop(closed);
        }
        reply.ok();
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        reply::data(self.browser.read(ino.0, offset, size), reply)
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_opendir {
            return reply.error(Errno::ENOSYS);
        }
        reply.opened(
            FileHandle(0),
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
        )
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listed = self.browser.readdir(ino.0, offset, false, &mut |item| {
            reply.add(
                INodeNo(item.ino),
                item.offset,
                file_type(item.kind),
                item.name,
            )
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let dir = ino.0;
        let listed = self.browser.readdir(dir, offset, true, &mut |item| {
            let Some(attr) = item.attr else {
                return true;
            };
            reply.add(
                INodeNo(item.ino),
                item.offset,
                item.name,
                &entry_ttl(dir, item.ino),
                &attr.to_fuser(),
                Generation(0),
            )
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply::statfs(self.browser.statfs(), true, reply)
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply::xattr(self.browser.getxattr(ino.0, name), size, reply)
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let names = self.browser.listxattr(ino.0);
        reply::xattr(
            names.map(|n| crate::live::visible_xattr_names(n, req.pid())),
            size,
            reply,
        )
    }

    /// A close has nothing to write back in a read-only set.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: fuser::ReplyEmpty,
    ) {
        reply.ok();
    }

    /// SEEK_DATA and SEEK_HOLE: a tree image's file reports its own
    /// holes; a copy-on-write set's file mixes stored pre-images and live
    /// blocks, so it has none to report and is data throughout (answered
    /// here, not by ENOSYS, which would end lseek for tree files too).
    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        match self.browser.lseek(ino.0, offset, whence) {
            Ok(at) => reply.offset(at),
            Err(e) => reply.error(errno(&e)),
        }
    }

    reply::unsupported_quietly!();
}
