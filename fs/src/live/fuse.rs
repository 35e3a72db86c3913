//! The thin fuser adapter of the live filesystem: unpacks requests, calls
//! the core, packs replies. No filesystem logic lives here.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use umbra_store::Timestamp;

use super::caller::Caller;
use super::core::{LiveFs, SetAttrs, TimeSet};
use crate::flusher;
use crate::reply::{self, errno};
use crate::reply::{ToFuser, file_type};

/// Only umbra changes the backing directory while it is mounted, so the
/// kernel may keep what it learned for long.
const TTL: Duration = Duration::from_secs(60);

pub(crate) struct LiveAdapter {
    pub fs: LiveFs,
    pub writeback_cache: bool,
    /// The kernel checks POSIX ACLs and leaves the umask of a creation to
    /// umbra (FUSE_POSIX_ACL with FUSE_DONT_MASK): it sends the mode
    /// unmasked and the caller's umask beside it, and the backing
    /// filesystem, creating as the caller, applies the umask or, in a
    /// directory with a default ACL, the ACL instead.
    pub caller_umask: bool,
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        umask: 0,
    }
}

impl LiveAdapter {
    /// The caller of a creation, with the umask the creation must apply.
    fn creator(&self, req: &Request, umask: u32) -> Caller {
        Caller {
            umask: if self.caller_umask { umask } else { 0 },
            ..caller(req)
        }
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let (secs, nanos) = if d.subsec_nanos() == 0 {
                    (-(d.as_secs() as i64), 0)
                } else {
                    (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
                };
                Timestamp { secs, nanos }
            }
        }),
    }
}

macro_rules! entry {
    ($reply:expr, $result:expr) => {
        match $result {
            Ok(attr) => $reply.entry(&TTL, &attr.to_fuser(), Generation(0)),
            Err(e) => $reply.error(errno(&e)),
        }
    };
}

macro_rules! empty {
    ($reply:expr, $result:expr) => {
        match $result {
            Ok(()) => $reply.ok(),
            Err(e) => $reply.error(errno(&e)),
        }
    };
}

impl Filesystem for LiveAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1024 * 1024);
        let _ = config.set_max_readahead(1024 * 1024);
        // The kernel asks READDIRPLUS while a directory's entries are being
        // looked up (`ls -l`, tree walks) and plain READDIR otherwise, which
        // pins no inode.
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        // Lookups and listings of one directory may run side by side, as
        // they do natively and with libfuse's default: the kernel still
        // holds the directory exclusively for every change of its entries,
        // and the daemon already serves lookups of one inode from several
        // directories at once (hard links). Four threads looking up 20,000
        // names of one directory cold: 44k/s without, 84-92k/s with.
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // The kernel checks ACLs only if asked; without FUSE_DONT_MASK it
        // would still apply the umask itself, before a default ACL could
        // stand in for it. It caches each inode's ACL until it next
        // refreshes the inode's attributes, except the root's: the root
        // inode was made before this INIT reply, uncacheable, so every path
        // walk through the mount root by a caller other than its owner
        // costs one GETXATTR(system.posix_acl_access) of the root (measured
        // with Linux 6.18).
        match config.add_capabilities(InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK) {
            Ok(()) => self.caller_umask = true,
            Err(_) => tracing::warn!(
                "the kernel offers no FUSE_POSIX_ACL: ACL entries other than the \
                 mode's are not enforced on the live mount"
            ),
        }
        match config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2) {
            Ok(()) => self.fs.kill_privileges(),
            Err(_) => tracing::info!(
                "the kernel offers no FUSE_HANDLE_KILLPRIV_V2: it asks for \
                 security.capability before every write"
            ),
        }
        if self.writeback_cache {
            match config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE) {
                Ok(()) => self.fs.kernel_owns_mtime(),
                Err(_) => {
                    tracing::warn!("the kernel offers no FUSE writeback cache: write-through")
                }
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        entry!(reply, self.fs.lookup(parent.0, name))
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr.to_fuser()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttrs {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            fh: fh.map(|f| f.0),
            // fuser does not pass FATTR_KILL_SUIDGID, which the kernel sets
            // for a caller without CAP_FSETID; root stands for having it.
            kill_suidgid: size.and_then(|_| caller(req).without_fsetid()),
        };
        match self.fs.setattr(ino.0, set) {
            Ok(attr) => reply.attr(&TTL, &attr.to_fuser()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        reply::data(self.fs.readlink(ino.0), reply)
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let caller = self.creator(req, umask);
        entry!(
            reply,
            self.fs.mknod(parent.0, name, mode, u64::from(rdev), caller)
        )
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let caller = self.creator(req, umask);
        entry!(reply, self.fs.mkdir(parent.0, name, mode, caller))
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty!(reply, self.fs.unlink(parent.0, name))
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty!(reply, self.fs.rmdir(parent.0, name))
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        entry!(
            reply,
            self.fs
                .symlink(parent.0, link_name, target.as_os_str(), caller(req))
        )
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        empty!(
            reply,
            self.fs
                .rename(parent.0, name, newparent.0, newname, flags.bits())
        )
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        entry!(reply, self.fs.link(ino.0, newparent.0, newname))
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        // Only umbra changes a volume while it is mounted and every change goes
        // through this mount, so the kernel's cached pages stay true.
        reply::opened(
            self.fs.open(ino.0, flags.0),
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
        reply::data(self.fs.read(fh.0, offset, size), reply)
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill_suidgid = write_flags
            .contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            .then(|| caller(req));
        match self.fs.write(fh.0, offset, data, kill_suidgid, caller(req)) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
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
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        // The kernel sent every dirty page and the times before this request;
        // a set's flush needs nothing more (see flusher.rs).
        if flusher::is_flusher(req.pid()) {
            return reply.ok();
        }
        empty!(reply, self.fs.fsync(fh.0, datasync))
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply::opened(self.fs.opendir(ino.0), FopenFlags::empty(), reply)
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listed = self.fs.readdir(fh.0, offset, &mut |entry, next| {
            reply.add(INodeNo(entry.ino), next, file_type(entry.kind), &entry.name)
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Entries with their attributes, so that `ls -l` or a tree walk needs
    /// no LOOKUP per entry. Each entry but `.` and `..` counts as a kernel
    /// lookup; one that no longer fits is given back at once.
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let mut dir_attr = None;
        let listed = self.fs.readdir(fh.0, offset, &mut |entry, next| {
            if entry.name == "." || entry.name == ".." {
                // The kernel takes neither a reference nor the attributes,
                // only the inode number (fuser sends the attributes' one).
                let Ok(attr) = dir_attr.get_or_insert_with(|| self.fs.getattr(ino.0)) else {
                    return false;
                };
                let mut attr = attr.to_fuser();
                attr.ino = INodeNo(entry.ino);
                return reply.add(
                    INodeNo(entry.ino),
                    next,
                    &entry.name,
                    &TTL,
                    &attr,
                    Generation(0),
                );
            }
            // Gone since it was listed: as readdir would have listed it,
            // the later LOOKUP tells.
            let Ok(attr) = self.fs.lookup(ino.0, &entry.name) else {
                return false;
            };
            let full = reply.add(
                INodeNo(attr.ino),
                next,
                &entry.name,
                &TTL,
                &attr.to_fuser(),
                Generation(0),
            );
            if full {
                self.fs.forget(attr.ino, 1);
            }
            full
        });
        match (listed, dir_attr) {
            (Err(e), _) | (_, Some(Err(e))) => reply.error(errno(&e)),
            _ => reply.ok(),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty!(reply, self.fs.fsyncdir(ino.0))
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply::statfs(self.fs.statfs(), false, reply)
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        empty!(
            reply,
            self.fs.setxattr(ino.0, name, value, flags, caller(req))
        )
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply::xattr(self.fs.getxattr(ino.0, name), size, reply)
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let names = self.fs.listxattr(ino.0);
        reply::xattr(
            names.map(|n| super::visible_xattr_names(n, req.pid())),
            size,
            reply,
        )
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty!(reply, self.fs.removexattr(ino.0, name))
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let caller = self.creator(req, umask);
        match self.fs.create(parent.0, name, mode, flags, caller) {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr.to_fuser(),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        empty!(
            reply,
            self.fs.fallocate(fh.0, offset, length, mode, caller(req))
        )
    }

    /// SEEK_DATA and SEEK_HOLE (the kernel answers the others itself): the
    /// backing file's own, so sparse files stay sparse when copied out.
    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.fs.lseek(fh.0, offset, whence) {
            Ok(offset) => reply.offset(offset),
            Err(e) => reply.error(errno(&e)),
        }
    }

    reply::unsupported_quietly!();
}
