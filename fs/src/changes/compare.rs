//! `umbra diff`: the changes between two instants of a volume, as `zfs
//! diff` prints them. The directories whose entries changed give the names
//! that came, went or moved (paired by object into renames); a directory
//! that came or went brings its whole subtree; the objects whose metadata
//! changed and that exist at both instants are compared attribute by
//! attribute, and block by block where the records say blocks changed.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use umbra_store::{AttrRecord, DirEntry, FileKind, ObjectId};

use super::instant::Reader;
use super::{Aspect, Change, Changes, Instant, Op, kind_of};
use crate::{FsError, Result, Volume};

/// An entry that came or went: in `dir`, as `name`.
struct Entry {
    dir: ObjectId,
    name: OsString,
    object: ObjectId,
    kind: FileKind,
}

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
    let mut reader = Reader::new(vol);
    let store = reader.store().clone();
    let objects = store.changed_objects(vol.id(), from_epoch, to_epoch)?;
    let dirs = store.changed_dirs(vol.id(), from_epoch, to_epoch)?;

    // Names that came and went, directory by directory.
    let mut gone: Vec<Entry> = Vec::new();
    let mut came: Vec<Entry> = Vec::new();
    for dir in &dirs {
        let before = listing(&mut reader, from, *dir)?;
        let after = listing(&mut reader, to, *dir)?;
        let old: HashMap<&[u8], &DirEntry> = before.iter().map(|e| (&e.name[..], e)).collect();
        let new: HashMap<&[u8], &DirEntry> = after.iter().map(|e| (&e.name[..], e)).collect();
        for e in &before {
            if new.get(&e.name[..]).is_none_or(|n| n.object != e.object) {
                gone.push(entry(*dir, e));
            }
        }
        for e in &after {
            if old.get(&e.name[..]).is_none_or(|o| o.object != e.object) {
                came.push(entry(*dir, e));
            }
        }
    }

    let mut out: Vec<Change> = Vec::new();
    // A name that went and one that came for the same object: a rename.
    let mut departures: HashMap<ObjectId, Vec<usize>> = HashMap::new();
    for (i, e) in gone.iter().enumerate() {
        departures.entry(e.object).or_default().push(i);
    }
    let mut departed = vec![false; gone.len()];
    let mut arrived: HashSet<ObjectId> = HashSet::new();
    // Names that came, with their directory's path when known; a directory
    // born in between has no record, so its entries are listed here.
    let mut queue: VecDeque<(Entry, Option<PathBuf>)> =
        came.into_iter().map(|e| (e, None)).collect();
    while let Some((e, dir_path)) = queue.pop_front() {
        let new_path = match dir_path {
            Some(dir_path) => dir_path.join(&e.name),
            None => match entry_path(&mut reader, to, &e)? {
                Some(path) => path,
                None => continue,
            },
        };
        arrived.insert(e.object);
        if let Some(i) = departures.get_mut(&e.object).and_then(|list| list.pop()) {
            departed[i] = true;
            if let Some(old_path) = entry_path(&mut reader, from, &gone[i])? {
                out.push(Change {
                    op: Op::Renamed,
                    kind: e.kind,
                    path: old_path,
                    to: Some(new_path),
                    what: Vec::new(),
                });
            }
            continue;
        }
        out.push(change(Op::Added, e.kind, new_path.clone()));
        if e.kind == FileKind::Directory {
            for child in reader.listed(to, e.object)? {
                queue.push_back((entry(e.object, &child), Some(new_path.clone())));
            }
        }
    }
    // Names that went and came nowhere. A directory removed was emptied
    // first, and every name it lost is among these already.
    let mut lost: HashMap<ObjectId, (u32, bool)> = HashMap::new();
    for (e, _) in gone.iter().zip(&departed).filter(|(_, d)| !**d) {
        if let Some(old_path) = entry_path(&mut reader, from, e)? {
            out.push(change(Op::Removed, e.kind, old_path));
        }
        if !arrived.contains(&e.object) {
            let lost = lost
                .entry(e.object)
                .or_insert((0, e.kind == FileKind::Directory));
            lost.0 += 1;
        }
    }

    // Objects whose metadata changed, there at both ends (an object that
    // lost names is gone unless it had more links than that).
    for object in &objects {
        if let Some((names, is_dir)) = lost.get(object) {
            let links = reader.attrs(from, *object)?.map_or(1, |a| a.nlink);
            if *is_dir || links <= *names {
                continue;
            }
        }
        let Some(before) = reader.attrs(from, *object)? else {
            continue;
        };
        if reader.path(from, *object)?.is_none() {
            continue;
        }
        let Some(new_path) = reader.path(to, *object)? else {
            continue;
        };
        let Some(after) = reader.attrs(to, *object)? else {
            continue;
        };
        let what = differences(&mut reader, from, to, *object, &before, &after)?;
        if what.is_empty() {
            continue;
        }
        out.push(Change {
            op: Op::Modified,
            kind: kind_of(before.mode),
            path: new_path,
            to: None,
            what,
        });
    }

    if let Some(under) = under.filter(|u| !u.as_os_str().is_empty()) {
        out.retain(|c| {
            c.path.starts_with(under) || c.to.as_ref().is_some_and(|t| t.starts_with(under))
        });
    }
    // One line per path and mark, in path order (a subtree's walk and a
    // directory's own changes may both name an entry).
    let mut unique: BTreeMap<(PathBuf, Op, Option<PathBuf>), Change> = BTreeMap::new();
    for c in out {
        unique
            .entry((c.path.clone(), c.op, c.to.clone()))
            .or_insert(c);
    }
    Ok(Changes {
        changes: unique.into_values().collect(),
        examined: objects.len() + dirs.len(),
        searched: reader.live.searched,
    })
}

fn entry(dir: ObjectId, e: &DirEntry) -> Entry {
    Entry {
        dir,
        name: OsString::from_vec(e.name.clone()),
        object: e.object,
        kind: e.kind,
    }
}

fn change(op: Op, kind: FileKind, path: PathBuf) -> Change {
    Change {
        op,
        kind,
        path,
        to: None,
        what: Vec::new(),
    }
}

/// A directory's entries at `at`, empty if it was not there then.
fn listing(reader: &mut Reader<'_>, at: Instant, dir: ObjectId) -> Result<Vec<DirEntry>> {
    if reader.path(at, dir)?.is_none() {
        return Ok(Vec::new());
    }
    reader.listed(at, dir)
}

fn entry_path(reader: &mut Reader<'_>, at: Instant, e: &Entry) -> Result<Option<PathBuf>> {
    Ok(reader.path(at, e.dir)?.map(|p| p.join(&e.name)))
}

/// What differs between two states of one object. Access and change
/// times are not reported: reading changes the one, every other change
/// the other.
fn differences(
    reader: &mut Reader<'_>,
    from: Instant,
    to: Instant,
    object: ObjectId,
    before: &AttrRecord,
    after: &AttrRecord,
) -> Result<Vec<Aspect>> {
    let mut what = Vec::new();
    if kind_of(before.mode) == FileKind::Regular
        && (before.size != after.size || blocks_differ(reader, from, to, object)?)
    {
        what.push(Aspect::Content);
    }
    if before.mode & 0o7777 != after.mode & 0o7777 {
        what.push(Aspect::Mode);
    }
    if (before.uid, before.gid) != (after.uid, after.gid) {
        what.push(Aspect::Owner);
    }
    if before.mtime != after.mtime {
        what.push(Aspect::Times);
    }
    if before.xattrs != after.xattrs {
        what.push(Aspect::Xattrs);
    }
    if kind_of(before.mode) != FileKind::Directory && before.nlink != after.nlink {
        what.push(Aspect::Links);
    }
    Ok(what)
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
