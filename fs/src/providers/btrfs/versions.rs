//! `umbra versions` of a btrfs volume: the distinct contents of the file
//! at a path, live and in every set's snapshot, newest first, as for a
//! copy-on-write volume (changes/versions.rs). A set holds the live file
//! if its snapshot has the same inode (number and generation), under
//! whatever name its INODE_REF items give (renames are followed); else
//! whatever is at the path in the snapshot (a file an editor replaced).
//! A snapshot whose inode item was last written in the same transaction
//! as the newer snapshot's holds the same bytes and is not read again;
//! nor is the newest set's file if its change time, size and mtime are
//! still the live file's.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use umbra_store::{Epoch, FileKind, SetId, Timestamp};

use super::BtrfsVolume;
use super::tree::Tree;
use crate::backing;
use crate::changes::versions::{components, file_at, version_of};
use crate::{FsError, Result, Version};

/// FS_IOC_GETVERSION: an inode's generation, as its file handle has it.
const GET_VERSION: u64 = 0x8008_7601;

/// The live file, as a set's inode is matched against it.
struct LiveFile {
    ino: u64,
    /// Its generation (low 32 bits), when it could be asked (a regular
    /// file; a symlink cannot be opened to ask).
    generation: Option<u32>,
    ctime: Timestamp,
    size: u64,
    mtime: Timestamp,
}

/// Which version the next older set may share without a read.
enum Newer {
    Nothing,
    Live,
    Set {
        ino: u64,
        generation: u64,
        transid: u64,
        index: usize,
    },
}

/// The versions of the file at `path` (relative to the volume root) live
/// and in `sets` (newest first).
pub(crate) fn versions(
    vol: &BtrfsVolume,
    sets: &[(SetId, Epoch)],
    path: &Path,
) -> Result<Vec<Version>> {
    let parts = components(path)?;
    if parts.is_empty() {
        return Err(FsError::from_errno(libc::EISDIR));
    }
    let mut out: Vec<Version> = Vec::new();
    let live = match file_at(vol.root(), &parts)? {
        Some((fd, st)) => {
            let (hash, generation) = live_content(fd.as_fd(), &st)?;
            let file = LiveFile {
                ino: st.st_ino,
                generation,
                ctime: backing::timestamp(st.st_ctime, st.st_ctime_nsec),
                size: st.st_size as u64,
                mtime: backing::timestamp(st.st_mtime, st.st_mtime_nsec),
            };
            out.push(Version {
                hash,
                size: file.size,
                mtime: file.mtime,
                live: true,
                sets: Vec::new(),
            });
            Some(file)
        }
        None => None,
    };
    let mut newer = if live.is_some() {
        Newer::Live
    } else {
        Newer::Nothing
    };
    for (id, _) in sets {
        let Some(root) = vol.image(*id)? else {
            continue;
        };
        let mut tree = Tree::open(root)?;
        let followed = match &live {
            Some(file) => follow(&mut tree, file)?,
            None => None,
        };
        let found = match followed {
            Some(found) => Some(found),
            None => at_path(&tree, &parts)?.map(|ino| (ino, path.to_path_buf())),
        };
        let Some((ino, in_set)) = found else {
            continue;
        };
        let Some(inode) = tree.inode(ino)? else {
            continue;
        };
        if !matches!(inode.kind(), FileKind::Regular | FileKind::Symlink) {
            continue;
        }
        let item = &inode.item;
        let unchanged = match (&newer, &live) {
            (Newer::Live, Some(file)) => (file.ino == ino
                && file.generation.is_none_or(|g| g == item.generation as u32)
                && (file.ctime, file.size, file.mtime) == (item.ctime, item.size, item.mtime))
                .then_some(0),
            (
                Newer::Set {
                    ino: o,
                    generation,
                    transid,
                    index,
                },
                _,
            ) => (*o == ino && *generation == item.generation && *transid == item.transid)
                .then_some(*index),
            _ => None,
        };
        let index = match unchanged {
            Some(index) => index,
            None => {
                let hash = set_content(&tree, ino, item.generation, inode.kind())?;
                version_of(&mut out, hash, item.size, item.mtime)
            }
        };
        out[index].sets.push((*id, in_set));
        newer = Newer::Set {
            ino,
            generation: item.generation,
            transid: item.transid,
            index,
        };
    }
    Ok(out)
}

/// The live file's inode in the snapshot, and its path there.
fn follow(tree: &mut Tree, file: &LiveFile) -> Result<Option<(u64, PathBuf)>> {
    let Some(inode) = tree.inode(file.ino)? else {
        return Ok(None);
    };
    if file
        .generation
        .is_some_and(|g| g != inode.item.generation as u32)
    {
        return Ok(None);
    }
    Ok(tree.path(file.ino)?.map(|p| (file.ino, p)))
}

/// The inode at `parts` in the snapshot, None if nothing is there.
fn at_path(tree: &Tree, parts: &[&OsStr]) -> Result<Option<u64>> {
    match file_at(tree.root(), parts) {
        Ok(found) => Ok(found.map(|(_, st)| st.st_ino)),
        Err(e) if matches!(e.errno(), libc::ENOTDIR | libc::EISDIR) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The blake3 of the live file's bytes (a symlink's target) and its
/// generation when it can be asked.
fn live_content(fd: BorrowedFd<'_>, st: &libc::stat64) -> Result<([u8; 32], Option<u32>)> {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => {
            let file = backing::reopen(fd, libc::O_RDONLY)?;
            let mut generation: libc::c_int = 0;
            // SAFETY: FS_IOC_GETVERSION writes one int through the pointer.
            let ret = unsafe {
                libc::ioctl(
                    file.as_raw_fd(),
                    GET_VERSION as _,
                    &mut generation as *mut libc::c_int,
                )
            };
            let generation = (ret == 0).then_some(generation as u32);
            Ok((hash_file(file)?, generation))
        }
        libc::S_IFLNK => Ok((
            *blake3::hash(&backing::readlinkat(fd, c"")?).as_bytes(),
            None,
        )),
        // A FIFO or a device has no bytes of its own to compare.
        _ => Ok((*blake3::hash(&[]).as_bytes(), None)),
    }
}

/// The blake3 of an inode's bytes (a symlink's target) in the snapshot.
fn set_content(tree: &Tree, ino: u64, generation: u64, kind: FileKind) -> Result<[u8; 32]> {
    if kind == FileKind::Symlink {
        let fd = tree.open_inode(ino, generation, libc::O_PATH | libc::O_NOFOLLOW)?;
        return Ok(*blake3::hash(&backing::readlinkat(fd.as_fd(), c"")?).as_bytes());
    }
    hash_file(tree.open_inode(ino, generation, libc::O_RDONLY | libc::O_NOFOLLOW)?)
}

fn hash_file(fd: OwnedFd) -> Result<[u8; 32]> {
    let mut file = backing::as_file(fd);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        hasher.update(&buf[..n]);
    }
    Ok(*hasher.finalize().as_bytes())
}
