//! `umbra versions`: the distinct contents a file had, live and in every
//! set, newest first: Windows' Previous Versions tab. A set holds the file
//! that is at the path live if that object was in the volume then (under
//! whatever name: renames are followed), else whatever was at the path
//! then (an editor that saves by writing a new file and renaming it over
//! the old one makes a new object each time). Contents are compared by
//! blake3; a set where the catalog says the object did not change since
//! the next newer one is not read again.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use umbra_store::{AttrRecord, BLOCK_SIZE, FileKind, ObjectId, SetId};

use super::instant::Reader;
use super::{Instant, Version, kind_of};
use crate::backing::{self, cstr};
use crate::{FsError, Result, Volume};

/// The versions of the file at `path` (relative to the volume root) live
/// and in `sets` (given newest first, each with its epoch of this volume).
pub fn versions(
    vol: &Volume,
    sets: &[(SetId, umbra_store::Epoch)],
    path: &Path,
) -> Result<Vec<Version>> {
    let parts = components(path)?;
    if parts.is_empty() {
        return Err(FsError::from_errno(libc::EISDIR));
    }
    let mut reader = Reader::new(vol);
    let mut out: Vec<Version> = Vec::new();
    let live = live_object(vol, &parts)?;
    if let Some(object) = live {
        let (hash, attrs) = content(&mut reader, Instant::Live, object)?;
        out.push(Version {
            hash,
            size: attrs.size,
            mtime: attrs.mtime,
            live: true,
            sets: Vec::new(),
        });
    }
    // The newer set's object and version, to skip an unchanged object.
    let mut newer: Option<(ObjectId, Option<umbra_store::Epoch>, usize)> =
        live.map(|o| (o, None, 0));
    for (id, epoch) in sets {
        let at = Instant::Set {
            id: *id,
            epoch: *epoch,
        };
        let found = match live {
            Some(object) => reader.path(at, object)?.map(|p| (object, p)),
            None => None,
        };
        let found = match found {
            Some(found) => Some(found),
            None => lookup(&mut reader, at, &parts)?.map(|o| (o, path.to_path_buf())),
        };
        let Some((object, in_set)) = found else {
            continue;
        };
        if let Some((o, newer_epoch, index)) = newer
            && o == object
            && !reader
                .store()
                .changed_between(vol.id(), object, *epoch, newer_epoch)?
        {
            out[index].sets.push((*id, in_set));
            newer = Some((object, Some(*epoch), index));
            continue;
        }
        let Some(attrs) = reader.attrs(at, object)? else {
            continue;
        };
        if !matches!(kind_of(attrs.mode), FileKind::Regular | FileKind::Symlink) {
            continue;
        }
        let (hash, attrs) = content(&mut reader, at, object)?;
        let index = version_of(&mut out, hash, attrs.size, attrs.mtime);
        out[index].sets.push((*id, in_set));
        newer = Some((object, Some(*epoch), index));
    }
    Ok(out)
}

/// A relative path's names; `..`, `.` and absolute parts are refused.
pub(crate) fn components(path: &Path) -> Result<Vec<&OsStr>> {
    path.components()
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(FsError::from_errno(libc::EINVAL)),
        })
        .collect()
}

/// The live object at `parts`, following no symlink; None if absent.
fn live_object(vol: &Volume, parts: &[&OsStr]) -> Result<Option<ObjectId>> {
    Ok(file_at(vol.root_fd(), parts)?.map(|(_, st)| ObjectId(st.st_ino)))
}

/// The file at `parts` under the directory `root` (a volume's root, or a
/// copy's), following no symlink: an O_PATH descriptor and its stat; None
/// if absent or in umbra's own folder. A directory there is EISDIR, a
/// file on the way ENOTDIR.
pub(crate) fn file_at(
    root: BorrowedFd<'_>,
    parts: &[&OsStr],
) -> Result<Option<(OwnedFd, libc::stat64)>> {
    let mut dir = backing::reopen_path(root)?;
    for (i, name) in parts.iter().enumerate() {
        if i == 0 && *name == OsStr::new(crate::HIDDEN_DIR) {
            return Ok(None);
        }
        match backing::open_path(dir.as_fd(), &cstr(name)?) {
            Ok(fd) => dir = fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let st = backing::fstat(dir.as_fd())?;
        let last = i + 1 == parts.len();
        if !last && st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(FsError::from_errno(libc::ENOTDIR));
        }
        if last {
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                return Err(FsError::from_errno(libc::EISDIR));
            }
            return Ok(Some((dir, st)));
        }
    }
    Ok(None)
}

/// The version with content `hash` in `out`, added if it is new: its index.
pub(crate) fn version_of(
    out: &mut Vec<Version>,
    hash: [u8; 32],
    size: u64,
    mtime: umbra_store::Timestamp,
) -> usize {
    match out.iter().position(|v| v.hash == hash) {
        Some(i) => i,
        None => {
            out.push(Version {
                hash,
                size,
                mtime,
                live: false,
                sets: Vec::new(),
            });
            out.len() - 1
        }
    }
}

/// The object at `parts` at `at`, by names from the root; None if absent.
fn lookup(reader: &mut Reader<'_>, at: Instant, parts: &[&OsStr]) -> Result<Option<ObjectId>> {
    let mut object = reader.volume().root_object();
    for name in parts {
        let entries = reader.listed(at, object)?;
        match entries.iter().find(|e| e.name == name.as_bytes()) {
            Some(e) => object = e.object,
            None => return Ok(None),
        }
    }
    Ok(Some(object))
}

/// The blake3 of a file's bytes (a symlink's target) at `at`.
fn content(
    reader: &mut Reader<'_>,
    at: Instant,
    object: ObjectId,
) -> Result<([u8; 32], AttrRecord)> {
    let attrs = reader
        .attrs(at, object)?
        .ok_or_else(|| FsError::from_errno(libc::ENOENT))?;
    if kind_of(attrs.mode) == FileKind::Symlink {
        let target = reader.link_target(object)?;
        return Ok((*blake3::hash(&target).as_bytes(), attrs));
    }
    let size = attrs.size;
    let mut hasher = blake3::Hasher::new();
    reader.read_blocks(at, object, 0..size.div_ceil(BLOCK_SIZE), |b, data| {
        // The live file may have grown since: only the set's size counts.
        let keep = (size - b * BLOCK_SIZE).min(data.len() as u64) as usize;
        hasher.update(&data[..keep]);
    })?;
    Ok((*hasher.finalize().as_bytes(), attrs))
}
