//! The attributes both filesystems answer with, built from a live stat or
//! from a preserved record. Free of fuser: their conversion to fuser's type
//! is the FUSE boundary's (reply.rs).

use umbra_store::{AttrRecord, FileKind, Timestamp};

use crate::backing::timestamp;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Attr {
    pub ino: u64,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
}

impl Attr {
    pub fn from_stat(st: &libc::stat64, ino: u64) -> Attr {
        Attr {
            ino,
            mode: st.st_mode,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: timestamp(st.st_atime, st.st_atime_nsec),
            mtime: timestamp(st.st_mtime, st.st_mtime_nsec),
            ctime: timestamp(st.st_ctime, st.st_ctime_nsec),
        }
    }

    pub fn from_record(r: &AttrRecord, ino: u64) -> Attr {
        Attr {
            ino,
            mode: r.mode,
            nlink: r.nlink,
            uid: r.uid,
            gid: r.gid,
            rdev: r.rdev,
            size: r.size,
            blocks: r.blocks,
            atime: r.atime,
            mtime: r.mtime,
            ctime: r.ctime,
        }
    }

    pub fn kind(&self) -> FileKind {
        FileKind::from_mode(self.mode).unwrap_or(FileKind::Regular)
    }
}
