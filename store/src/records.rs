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

#[cfg(test)]
mod tests {
    //! The encoding is part of the on-disk contract (FORMAT.md): these bytes
    //! are written out by hand from postcard's rules and must never change
    //! under format version 1.

    use super::*;
    use crate::Timestamp;

    fn sample_attr() -> AttrRecord {
        AttrRecord {
            mode: 0o100644,
            uid: 1000,
            gid: 100,
            size: 300,
            blocks: 8,
            nlink: 1,
            rdev: 0,
            atime: Timestamp { secs: 1, nanos: 0 },
            mtime: Timestamp { secs: -1, nanos: 5 },
            ctime: Timestamp {
                secs: 64,
                nanos: 128,
            },
            xattrs: vec![(b"user.a".to_vec(), b"x".to_vec())],
        }
    }

    #[test]
    fn attr_record_bytes_are_the_documented_ones() {
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x01,             // record format 1
            0xA4, 0x83, 0x02, // mode 0o100644 = 33188, varint
            0xE8, 0x07,       // uid 1000
            0x64,             // gid 100
            0xAC, 0x02,       // size 300
            0x08,             // blocks 8
            0x01,             // nlink 1
            0x00,             // rdev 0
            0x02, 0x00,       // atime: secs 1 (zigzag 2), nanos 0
            0x01, 0x05,       // mtime: secs -1 (zigzag 1), nanos 5
            0x80, 0x01,       // ctime: secs 64 (zigzag 128)
            0x80, 0x01,       //        nanos 128
            0x01,             // one xattr
            0x06, b'u', b's', b'e', b'r', b'.', b'a', // name: length, bytes
            0x01, b'x',       // value: length, bytes
        ];
        let bytes = encode(&sample_attr()).expect("encode");
        assert_eq!(bytes, expected);
        assert_eq!(
            decode::<AttrRecord>(expected).expect("decode"),
            sample_attr()
        );
    }

    #[test]
    fn dir_entries_bytes_are_the_documented_ones() {
        let entries = vec![
            DirEntry {
                name: b"a".to_vec(),
                object: ObjectId(300),
                kind: FileKind::Directory,
            },
            DirEntry {
                name: Vec::new(),
                object: ObjectId(0),
                kind: FileKind::Symlink,
            },
        ];
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x01,             // record format 1
            0x02,             // two entries
            0x01, b'a',       // name
            0xAC, 0x02,       // object 300
            0x01,             // kind: Directory is variant 1
            0x00,             // empty name
            0x00,             // object 0
            0x02,             // kind: Symlink is variant 2
        ];
        assert_eq!(encode(&entries).expect("encode"), expected);
        assert_eq!(decode::<Vec<DirEntry>>(expected).expect("decode"), entries);
        // An empty directory: the format byte and a zero length.
        assert_eq!(encode(&Vec::<DirEntry>::new()).expect("encode"), [1, 0]);
    }

    #[test]
    fn file_kinds_are_numbered_in_declaration_order() {
        let kinds = [
            FileKind::Regular,
            FileKind::Directory,
            FileKind::Symlink,
            FileKind::Fifo,
            FileKind::Socket,
            FileKind::CharDevice,
            FileKind::BlockDevice,
        ];
        for (i, kind) in kinds.into_iter().enumerate() {
            assert_eq!(postcard::to_stdvec(&kind).expect("encode"), [i as u8]);
        }
    }

    #[test]
    fn a_record_of_another_format_or_a_truncated_one_is_refused() {
        let mut bytes = encode(&sample_attr()).expect("encode");
        assert!(decode::<AttrRecord>(&[]).is_err());
        bytes[0] = 2;
        assert!(decode::<AttrRecord>(&bytes).is_err());
        bytes[0] = 1;
        bytes.pop();
        assert!(decode::<AttrRecord>(&bytes).is_err());
    }
}
