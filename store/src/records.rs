//! The pre-image records' payloads: an inode's metadata and a directory's
//! entry list, as they were at the end of an epoch. They are encoded with
//! postcard (a stable, documented wire format) behind a version byte; see
//! FORMAT.md.

use serde::{Deserialize, Serialize};

use crate::ObjectId;

/// Seconds and nanoseconds since the Unix epoch, as stat(2) gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

/// The kind of a file, as the directory entry and the mode's type bits say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    /// The kind named by the `S_IFMT` bits of a mode.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & 0o170000 {
            0o100000 => FileKind::Regular,
            0o040000 => FileKind::Directory,
            0o120000 => FileKind::Symlink,
            0o010000 => FileKind::Fifo,
            0o140000 => FileKind::Socket,
            0o020000 => FileKind::CharDevice,
            0o060000 => FileKind::BlockDevice,
            _ => return None,
        })
    }
}

/// An inode's metadata pre-image: everything stat(2) and the xattr calls
/// show. `mode` includes the type bits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttrRecord {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub blocks: u64,
    pub nlink: u32,
    pub rdev: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One entry of a directory's pre-image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub object: ObjectId,
    pub kind: FileKind,
}

const RECORD_FORMAT: u8 = 1;

pub(crate) fn encode<T: Serialize>(value: &T) -> crate::Result<Vec<u8>> {
    let mut out = vec![RECORD_FORMAT];
    out.extend(postcard::to_stdvec(value)?);
    Ok(out)
}

pub(crate) fn decode<T: for<'a> Deserialize<'a>>(bytes: &[u8]) -> crate::Result<T> {
    match bytes.split_first() {
        Some((&RECORD_FORMAT, rest)) => Ok(postcard::from_bytes(rest)?),
        _ => Err(crate::Error::Encoding(
            postcard::Error::DeserializeBadEncoding,
        )),
    }
}
