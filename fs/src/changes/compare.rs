//! `umbra diff` of a copy-on-write volume: the catalog's records say which
//! objects and directories changed between two epochs (store's
//! `changed_objects`, `changed_dirs`), and [`Reader`] reads each end,
//! a set's shadow copy or the live volume; `diff.rs` compares them. Bytes
//! are compared block by block, only where the records say blocks changed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use umbra_store::{AttrRecord, DirEntry, ObjectId};

use super::diff::{self, End, Ends};
use super::instant::Reader;
use super::{Changes, Instant};
use crate::{FsError, Result, Volume};

/// The changes in `vol` from `from` to `to`, only those at or under
/// `under` (relative to the volume root) when given, sorted by path.
pub fn changes(vol: &Volume, from: Instant, to: Instant, under: Option<&Path>) -> Result<Changes> {
    let Instant::Set {
        epoch: from_epoch, ..
    } = from
    else {
        return Err(FsError::from_errno(libc::EINVAL));
    };
    let to_epoch = match to {
        Instant::Set { epoch, .. } if epoch < from_epoch => {
            return Err(FsError::from_errno(libc::EINVAL));
        }
        Instant::Set { epoch, .. } => Some(epoch),
        Instant::Live => None,
    };
    let reader = Reader::new(vol);
    let store = reader.store().clone();
    let objects = store.changed_objects(vol.id(), from_epoch, to_epoch)?;
    let dirs = store.changed_dirs(vol.id(), from_epoch, to_epoch)?;
    let mut ends = CowEnds {
        reader,
        from,
        to,
        examined: objects.len() + dirs.len(),
        objects,
        dirs,
    };
    diff::diff(&mut ends, under)
}

/// Two instants of a copy-on-write volume and what the records say
/// changed between them.
struct CowEnds<'v> {
    reader: Reader<'v>,
    from: Instant,
    to: Instant,
    objects: Vec<ObjectId>,
    dirs: Vec<ObjectId>,
    examined: usize,
}

impl CowEnds<'_> {
    fn at(&self, end: End) -> Instant {
        match end {
            End::Old => self.from,
            End::New => self.to,
        }
    }
}

impl Ends for CowEnds<'_> {
    // A directory is emptied before it goes: its records list every name.
    const NAMES_REMOVED_DIRS: bool = true;

    fn changed_objects(&mut self) -> Result<Vec<ObjectId>> {
        Ok(std::mem::take(&mut self.objects))
    }

    fn changed_dirs(&mut self) -> Result<Vec<ObjectId>> {
        Ok(std::mem::take(&mut self.dirs))
    }

    fn entries(&mut self, end: End, dir: ObjectId) -> Result<Vec<DirEntry>> {
        let at = self.at(end);
        self.reader.listed(at, dir)
    }

    fn path(&mut self, end: End, object: ObjectId) -> Result<Option<PathBuf>> {
        let at = self.at(end);
        self.reader.path(at, object)
    }

    fn attrs(&mut self, end: End, object: ObjectId) -> Result<Option<AttrRecord>> {
        let at = self.at(end);
        self.reader.attrs(at, object)
    }

    fn content_differs(&mut self, object: ObjectId) -> Result<bool> {
        blocks_differ(&mut self.reader, self.from, self.to, object)
    }

    fn examined(&self) -> usize {
        self.examined
    }

    fn searched(&self) -> bool {
        self.reader.live.searched
    }
}

/// Whether any block the records say may have changed holds other bytes.
fn blocks_differ(
    reader: &mut Reader<'_>,
    from: Instant,
    to: Instant,
    object: ObjectId,
) -> Result<bool> {
    let Instant::Set { epoch, .. } = from else {
        return Ok(false);
    };
    let to_epoch = match to {
        Instant::Set { epoch, .. } => Some(epoch),
        Instant::Live => None,
    };
    let blocks = reader
        .store()
        .changed_blocks(reader.volume().id(), object, epoch, to_epoch)?;
    let mut old: HashMap<u64, blake3::Hash> = HashMap::new();
    reader.read_blocks(from, object, blocks.iter().copied(), |b, data| {
        old.insert(b, blake3::hash(data));
    })?;
    let mut differ = false;
    reader.read_blocks(to, object, blocks.iter().copied(), |b, data| {
        differ |= old.get(&b) != Some(&blake3::hash(data));
    })?;
    Ok(differ)
}
