//! The diff itself, whatever keeps the volume's instants: the directories
//! whose entries changed give the names that came, went or moved (paired
//! by object into renames); a directory that came or went brings its whole
//! subtree; the objects whose metadata changed and that exist at both
//! ends are compared attribute by attribute, and their bytes where the
//! provider cannot tell they are the same. A provider says, through
//! [`Ends`], what may have changed and how to read either end; the cost
//! follows what it names, not the size of the volume.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use umbra_store::{AttrRecord, DirEntry, FileKind, ObjectId};

use super::{Aspect, Change, Changes, Op, kind_of};
use crate::Result;

/// Which end of a diff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    Old,
    New,
}

/// Two instants of one volume as a provider reads them for a diff.
pub(crate) trait Ends {
    /// Whether a directory removed in between is among `changed_dirs`
    /// (its entries went one by one, so its old listing differs); if not,
    /// the diff lists the subtree of each removed directory at `Old`.
    const NAMES_REMOVED_DIRS: bool;
    /// Objects whose metadata or bytes may differ (more is only slower).
    fn changed_objects(&mut self) -> Result<Vec<ObjectId>>;
    /// Directories whose entries may differ (more is only slower).
    fn changed_dirs(&mut self) -> Result<Vec<ObjectId>>;
    /// A directory's entries at `end`, where it is known to be there.
    fn entries(&mut self, end: End, dir: ObjectId) -> Result<Vec<DirEntry>>;
    /// A directory's entries at `end`, none if it was not there.
    fn listing(&mut self, end: End, dir: ObjectId) -> Result<Vec<DirEntry>> {
        if self.path(end, dir)?.is_none() {
            return Ok(Vec::new());
        }
        self.entries(end, dir)
    }
    /// The path of `object` at `end`, relative to the volume root; None if
    /// it was not in the volume then.
    fn path(&mut self, end: End, object: ObjectId) -> Result<Option<PathBuf>>;
    /// Its metadata at `end`; None if it cannot be read there.
    fn attrs(&mut self, end: End, object: ObjectId) -> Result<Option<AttrRecord>>;
    /// Whether a regular file of the same size at both ends holds other
    /// bytes.
    fn content_differs(&mut self, object: ObjectId) -> Result<bool>;
    /// Objects looked at so far: what the cost followed.
    fn examined(&self) -> usize;
    /// Whether naming an object needed a walk of a whole tree.
    fn searched(&self) -> bool;
}

/// An entry that came or went: in `dir`, as `name`.
struct Entry {
    dir: ObjectId,
    name: OsString,
    object: ObjectId,
    kind: FileKind,
}

/// The changes between the two ends, only those at or under `under`
/// (relative to the volume root) when given, sorted by path.
pub(crate) fn diff<E: Ends>(ends: &mut E, under: Option<&Path>) -> Result<Changes> {
    let objects = ends.changed_objects()?;
    let dirs = ends.changed_dirs()?;

    // Names that came and went, directory by directory.
    let mut gone: Vec<Entry> = Vec::new();
    let mut came: Vec<Entry> = Vec::new();
    for dir in &dirs {
        let before = ends.listing(End::Old, *dir)?;
        let after = ends.listing(End::New, *dir)?;
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
    if !E::NAMES_REMOVED_DIRS {
        removed_subtrees(ends, &dirs, &came, &mut gone)?;
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
            None => match entry_path(ends, End::New, &e)? {
                Some(path) => path,
                None => continue,
            },
        };
        arrived.insert(e.object);
        if let Some(i) = departures.get_mut(&e.object).and_then(|list| list.pop()) {
            departed[i] = true;
            if let Some(old_path) = entry_path(ends, End::Old, &gone[i])? {
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
            for child in ends.entries(End::New, e.object)? {
                queue.push_back((entry(e.object, &child), Some(new_path.clone())));
            }
        }
    }
    // Names that went and came nowhere.
    let mut lost: HashMap<ObjectId, (u32, bool)> = HashMap::new();
    for (e, _) in gone.iter().zip(&departed).filter(|(_, d)| !**d) {
        if let Some(old_path) = entry_path(ends, End::Old, e)? {
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
            let links = ends.attrs(End::Old, *object)?.map_or(1, |a| a.nlink);
            if *is_dir || links <= *names {
                continue;
            }
        }
        let Some(before) = ends.attrs(End::Old, *object)? else {
            continue;
        };
        if ends.path(End::Old, *object)?.is_none() {
            continue;
        }
        let Some(new_path) = ends.path(End::New, *object)? else {
            continue;
        };
        let Some(after) = ends.attrs(End::New, *object)? else {
            continue;
        };
        let what = differences(ends, *object, &before, &after)?;
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
        examined: ends.examined(),
        searched: ends.searched(),
    })
}

/// Adds to `gone` what the directories that went (and came nowhere)
/// held at `Old`, down their subtrees, where `changed_dirs` did not list
/// them.
fn removed_subtrees<E: Ends>(
    ends: &mut E,
    dirs: &[ObjectId],
    came: &[Entry],
    gone: &mut Vec<Entry>,
) -> Result<()> {
    let listed: HashSet<ObjectId> = dirs.iter().copied().collect();
    let moved: HashSet<ObjectId> = came.iter().map(|e| e.object).collect();
    let mut i = 0;
    while i < gone.len() {
        let (object, kind) = (gone[i].object, gone[i].kind);
        i += 1;
        if kind != FileKind::Directory || moved.contains(&object) || listed.contains(&object) {
            continue;
        }
        for child in ends.entries(End::Old, object)? {
            gone.push(entry(object, &child));
        }
    }
    Ok(())
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

fn entry_path<E: Ends>(ends: &mut E, end: End, e: &Entry) -> Result<Option<PathBuf>> {
    Ok(ends.path(end, e.dir)?.map(|p| p.join(&e.name)))
}

/// What differs between two states of one object. Access and change
/// times are not reported: reading changes the one, every other change
/// the other.
fn differences<E: Ends>(
    ends: &mut E,
    object: ObjectId,
    before: &AttrRecord,
    after: &AttrRecord,
) -> Result<Vec<Aspect>> {
    let mut what = Vec::new();
    if kind_of(before.mode) == FileKind::Regular
        && (before.size != after.size || ends.content_differs(object)?)
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
