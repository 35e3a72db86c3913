//! The btrfs ioctls the btrfs provider needs, by descriptor: make a
//! subvolume, take a read-only snapshot, destroy one, read a subvolume's
//! identity and generations, and open an inode of any subvolume by its
//! number (a btrfs file handle). Thin checked wrappers over the
//! kernel's structs (linux/btrfs.h); no policy of when or where lives here.

use std::ffi::OsStr;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

/// statfs(2)'s f_type of a btrfs filesystem.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
/// The inode number of every subvolume's root directory.
pub(crate) const SUBVOLUME_ROOT_INO: u64 = 256;
const IOCTL_MAGIC: u64 = 0x94;
/// BTRFS_SUBVOL_NAME_MAX: a name fills the rest of the 4096-byte args.
const SUBVOL_NAME_MAX: usize = 4039;
const SUBVOL_RDONLY: u64 = 1 << 1;

#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; SUBVOL_NAME_MAX + 1],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Timespec {
    sec: u64,
    nsec: u32,
}

#[repr(C)]
struct GetSubvolInfoArgs {
    treeid: u64,
    name: [u8; 256],
    parent_id: u64,
    dirid: u64,
    generation: u64,
    flags: u64,
    uuid: [u8; 16],
    parent_uuid: [u8; 16],
    received_uuid: [u8; 16],
    ctransid: u64,
    otransid: u64,
    stransid: u64,
    rtransid: u64,
    ctime: Timespec,
    otime: Timespec,
    stime: Timespec,
    rtime: Timespec,
    reserved: [u64; 8],
}

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (IOCTL_MAGIC << 8) | nr
}

const WRITE: u64 = 1;
const READ: u64 = 2;
const SNAP_CREATE_V2: u64 = ioc(WRITE, 23, size_of::<VolArgsV2>());
const SUBVOL_CREATE_V2: u64 = ioc(WRITE, 24, size_of::<VolArgsV2>());
const SNAP_DESTROY_V2: u64 = ioc(WRITE, 63, size_of::<VolArgsV2>());
const GET_SUBVOL_INFO: u64 = ioc(READ, 60, size_of::<GetSubvolInfoArgs>());

/// What the kernel says of a subvolume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SubvolInfo {
    /// Its tree's id (the subvolume id).
    pub tree_id: u64,
    /// The transaction that last changed it.
    pub generation: u64,
    /// The transaction that created it: for a snapshot, its instant.
    pub otransid: u64,
    pub read_only: bool,
    pub uuid: [u8; 16],
    /// For a snapshot, the uuid of the subvolume it was taken of.
    pub parent_uuid: [u8; 16],
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn vol_args(name: &OsStr) -> io::Result<Box<VolArgsV2>> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > SUBVOL_NAME_MAX || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut args = Box::new(VolArgsV2 {
        fd: 0,
        transid: 0,
        flags: 0,
        unused: [0; 4],
        name: [0; SUBVOL_NAME_MAX + 1],
    });
    args.name[..bytes.len()].copy_from_slice(bytes);
    Ok(args)
}

fn vol_ioctl(dir: BorrowedFd<'_>, request: u64, args: &mut VolArgsV2) -> io::Result<()> {
    // SAFETY: `args` is a live VolArgsV2 of the size the request number
    // encodes; the kernel reads (and may write) only within it.
    check(unsafe { libc::ioctl(dir.as_raw_fd(), request as _, args as *mut VolArgsV2) })
}

/// Whether `fd` is on a btrfs filesystem.
pub(crate) fn is_btrfs(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: fstatfs fills a plain struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid out pointer for fstatfs.
    check(unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) })?;
    Ok(st.f_type as i64 == BTRFS_SUPER_MAGIC)
}

/// A new, empty subvolume `name` in the directory `dir`.
pub(crate) fn create_subvolume(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let mut args = vol_args(name)?;
    vol_ioctl(dir, SUBVOL_CREATE_V2, &mut args)
}

/// A read-only snapshot of the subvolume whose root is `source`, made as
/// `name` in the directory `dir` (on the same filesystem). The kernel
/// flushes the source's dirty data into it first.
pub(crate) fn snapshot_read_only(
    source: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    name: &OsStr,
) -> io::Result<()> {
    let mut args = vol_args(name)?;
    args.fd = i64::from(source.as_raw_fd());
    args.flags = SUBVOL_RDONLY;
    vol_ioctl(dir, SNAP_CREATE_V2, &mut args)
}

/// Destroys the subvolume (or snapshot) `name` in the directory `dir`,
/// read-only or not, even while it holds files.
pub(crate) fn destroy(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let mut args = vol_args(name)?;
    vol_ioctl(dir, SNAP_DESTROY_V2, &mut args)
}

/// The subvolume that `fd` (any file in it) belongs to.
pub(crate) fn subvolume_info(fd: BorrowedFd<'_>) -> io::Result<SubvolInfo> {
    // SAFETY: all-zero is a valid GetSubvolInfoArgs (integers and arrays).
    let mut args: Box<GetSubvolInfoArgs> = Box::new(unsafe { std::mem::zeroed() });
    // SAFETY: args has the size GET_SUBVOL_INFO encodes; the kernel fills it.
    check(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            GET_SUBVOL_INFO as _,
            &mut *args as *mut GetSubvolInfoArgs,
        )
    })?;
    Ok(SubvolInfo {
        tree_id: args.treeid,
        generation: args.generation,
        otransid: args.otransid,
        read_only: args.flags & SUBVOL_RDONLY != 0,
        uuid: args.uuid,
        parent_uuid: args.parent_uuid,
    })
}

/// FILEID_BTRFS_WITHOUT_PARENT: a handle of (inode, tree, generation).
const FILEID_BTRFS_WITHOUT_PARENT: i32 = 0x4d;

/// Opens inode `ino` of the subvolume `tree` (on the filesystem of
/// `mount`) with `flags`, if its generation is still `generation`
/// (ESTALE if the number now names another inode, or none).
pub(crate) fn open_inode(
    mount: BorrowedFd<'_>,
    tree: u64,
    ino: u64,
    generation: u64,
    flags: i32,
) -> io::Result<std::os::fd::OwnedFd> {
    // struct file_handle { u32 handle_bytes; i32 handle_type; } followed by
    // struct btrfs_fid's first 20 bytes (packed): objectid, root, gen.
    let mut handle = Vec::with_capacity(28);
    handle.extend_from_slice(&20u32.to_ne_bytes());
    handle.extend_from_slice(&FILEID_BTRFS_WITHOUT_PARENT.to_ne_bytes());
    handle.extend_from_slice(&ino.to_ne_bytes());
    handle.extend_from_slice(&tree.to_ne_bytes());
    // The kernel keeps an inode's generation in 32 bits of its handle.
    handle.extend_from_slice(&(generation as u32).to_ne_bytes());
    crate::backing::open_by_handle(mount, &handle, flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_are_the_kernels() {
        // The values of linux/btrfs.h, as `strace` prints them.
        assert_eq!(size_of::<VolArgsV2>(), 4096);
        assert_eq!(SNAP_CREATE_V2, 0x5000_9417);
        assert_eq!(SUBVOL_CREATE_V2, 0x5000_9418);
        assert_eq!(SNAP_DESTROY_V2, 0x5000_943f);
        assert_eq!(size_of::<GetSubvolInfoArgs>(), 504);
        assert_eq!(GET_SUBVOL_INFO, 0x81f8_943c);
    }

    #[test]
    fn names_too_long_or_empty_are_refused_before_the_kernel() {
        assert!(vol_args(OsStr::new("")).is_err());
        assert!(vol_args(OsStr::new(&"x".repeat(SUBVOL_NAME_MAX + 1))).is_err());
        assert!(vol_args(OsStr::new(&"x".repeat(SUBVOL_NAME_MAX))).is_ok());
    }
}
