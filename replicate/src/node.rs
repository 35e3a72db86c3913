//! restic nodes for entries read from a set: the file type, Go's mode
//! bits, times at nanosecond precision, owners, and a hard-link identity
//! that stays the same across replications (restic restores hard links by
//! `(inode, device_id)` when `links > 1`, and an incremental snapshot mixes
//! nodes copied from its parent with nodes built now).

use std::ffi::OsStr;
use std::fs::Metadata as FsMetadata;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use rustic_core::jiff::Timestamp;
use rustic_core::repofile::{Metadata, Node, NodeType};

/// The browser composes its inode numbers from a per-run view number in
/// the high bits and the object's backing inode number in the low 40 bits
/// (fs/src/snap/inodes.rs): the low bits are what stays stable.
const OBJECT_BITS: u32 = 40;
const OBJECT_MASK: u64 = (1 << OBJECT_BITS) - 1;

/// A stable identity for hard links within one volume.
pub fn stable_inode(ino: u64) -> u64 {
    ino & OBJECT_MASK
}

/// The node of `path` (not followed), as named `name`, with `device_id`
/// standing for its volume.
pub fn node_of(path: &Path, name: &OsStr, meta: &FsMetadata, device_id: u64) -> io::Result<Node> {
    let file_type = meta.file_type();
    let node_type = if file_type.is_dir() {
        NodeType::Dir
    } else if file_type.is_symlink() {
        NodeType::from_link(&std::fs::read_link(path)?)
    } else if file_type.is_block_device() {
        NodeType::Dev {
            device: meta.rdev(),
        }
    } else if file_type.is_char_device() {
        NodeType::Chardev {
            device: meta.rdev(),
        }
    } else if file_type.is_fifo() {
        NodeType::Fifo
    } else if file_type.is_socket() {
        NodeType::Socket
    } else {
        NodeType::File
    };
    let is_dir = file_type.is_dir();
    let mtime = timestamp(meta.mtime(), meta.mtime_nsec());
    let meta = Metadata {
        mode: Some(map_mode_to_go(meta.mode())),
        mtime,
        // As rustic does by default: atime is not part of a set's contract.
        atime: mtime,
        ctime: timestamp(meta.ctime(), meta.ctime_nsec()),
        uid: Some(meta.uid()),
        gid: Some(meta.gid()),
        user: None,
        group: None,
        inode: stable_inode(meta.ino()),
        device_id,
        size: if is_dir { 0 } else { meta.size() },
        links: if is_dir { 0 } else { meta.nlink() },
        extended_attributes: Vec::new(),
    };
    Ok(Node::new_node(name, node_type, meta))
}

fn timestamp(secs: i64, nanos: i64) -> Option<Timestamp> {
    Timestamp::new(secs, i32::try_from(nanos).ok()?).ok()
}

// Go's os.FileMode bits (https://pkg.go.dev/io/fs#ModeType), as restic
// stores modes; rustic's own mapper is not public.
const GO_MODE_DIR: u32 = 1 << 31;
const GO_MODE_SYMLINK: u32 = 1 << 27;
const GO_MODE_DEVICE: u32 = 1 << 26;
const GO_MODE_FIFO: u32 = 1 << 25;
const GO_MODE_SOCKET: u32 = 1 << 24;
const GO_MODE_SETUID: u32 = 1 << 23;
const GO_MODE_SETGID: u32 = 1 << 22;
const GO_MODE_CHARDEV: u32 = 1 << 21;
const GO_MODE_STICKY: u32 = 1 << 20;
const GO_MODE_IRREG: u32 = 1 << 19;

/// A Unix mode as Go's os.FileMode.
pub const fn map_mode_to_go(mode: u32) -> u32 {
    let mut go = mode & 0o777;
    go |= match mode & libc::S_IFMT {
        libc::S_IFSOCK => GO_MODE_SOCKET,
        libc::S_IFLNK => GO_MODE_SYMLINK,
        libc::S_IFBLK => GO_MODE_DEVICE,
        libc::S_IFDIR => GO_MODE_DIR,
        libc::S_IFCHR => GO_MODE_CHARDEV | GO_MODE_DEVICE,
        libc::S_IFIFO => GO_MODE_FIFO,
        libc::S_IFREG => 0,
        _ => GO_MODE_IRREG,
    };
    if mode & libc::S_ISUID != 0 {
        go |= GO_MODE_SETUID;
    }
    if mode & libc::S_ISGID != 0 {
        go |= GO_MODE_SETGID;
    }
    if mode & libc::S_ISVTX != 0 {
        go |= GO_MODE_STICKY;
    }
    go
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_modes_match_restic() {
        assert_eq!(map_mode_to_go(libc::S_IFREG | 0o644), 0o644);
        assert_eq!(map_mode_to_go(libc::S_IFDIR | 0o755), GO_MODE_DIR | 0o755);
        assert_eq!(
            map_mode_to_go(libc::S_IFREG | libc::S_ISUID | 0o4755 & 0o777),
            GO_MODE_SETUID | 0o755
        );
        assert_eq!(
            map_mode_to_go(libc::S_IFCHR | 0o600),
            GO_MODE_CHARDEV | GO_MODE_DEVICE | 0o600
        );
    }

    #[test]
    fn stable_inode_drops_the_view_bits() {
        assert_eq!(stable_inode((7 << OBJECT_BITS) | 1234), 1234);
    }
}
