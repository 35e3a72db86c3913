//! Reading a volume at one instant, object by object: a set's shadow copy
//! (the record with the smallest `hi >= e`, else the live object, under
//! the object's read lock and the deletion gate, as the browser reads) or
//! the live volume. And the path an object had at that instant: from the
//! listings, at the instant, of the directories changed since (which name
//! whatever moved or went), else where it is live, which is where it was if
//! its directory's entries did not change since.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::Arc;

use umbra_store::{AttrRecord, BLOCK_SIZE, DirEntry, Epoch, ObjectId, SetId, Store};

use super::Instant;
use super::live::Live;
use crate::backing;
use crate::{FsError, Result, Volume};

/// Paths deeper than this are a loop in what was read.
const MAX_DEPTH: usize = 4096;

/// Where things were at the end of one epoch, as far as the directories
/// changed since then say.
struct Past {
    /// Directories whose entries changed after the end of the epoch.
    changed: HashSet<ObjectId>,
    /// The names each object had in those directories then.
    parents: HashMap<ObjectId, Vec<(ObjectId, OsString)>>,
    paths: HashMap<ObjectId, Option<PathBuf>>,
}

pub(super) struct Reader<'v> {
    vol: &'v Volume,
    store: Arc<Store>,
    pub live: Live<'v>,
    pasts: HashMap<Epoch, Past>,
}

impl<'v> Reader<'v> {
    pub fn new(vol: &'v Volume) -> Reader<'v> {
        Reader {
            vol,
            store: vol.store().clone(),
            live: Live::new(vol),
            pasts: HashMap::new(),
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn volume(&self) -> &'v Volume {
        self.vol
    }

    /// Runs `read` with `object` held still and the set's records kept:
    /// no mutation between "no record" and reading the live object, no
    /// deletion under the resolution.
    fn holding<T>(
        &self,
        set: SetId,
        object: ObjectId,
        read: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        // Object lock first, then the deletion gate (see snap/core.rs).
        let _still = self.vol.cow.read_lock(object);
        let _reading = self.vol.reading();
        if self.vol.is_retired(set) {
            return Err(FsError::from_errno(libc::ESTALE));
        }
        read()
    }

    /// A directory's entries at `at`; None if the live directory is gone
    /// (the caller has checked that it existed at `at`).
    pub fn entries(&mut self, at: Instant, dir: ObjectId) -> Result<Option<Vec<DirEntry>>> {
        let (set, epoch) = match at {
            Instant::Live => return self.live.entries(dir),
            Instant::Set { id, epoch } => (id, epoch),
        };
        let live_fd = self.live.inode(dir)?;
        let hidden =
            (dir == self.vol.root_object()).then_some(std::ffi::OsStr::new(crate::HIDDEN_DIR));
        self.holding(set, dir, || {
            if let Some(entries) = self.store.resolve_dir(self.vol.id(), dir, epoch)? {
                return Ok(Some(entries));
            }
            let Some(fd) = live_fd else {
                // Unchanged since and gone live: it was empty (rmdir).
                return Ok(Some(Vec::new()));
            };
            match backing::reopen(fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
                .and_then(|d| backing::dir_record(d.as_fd(), hidden))
            {
                Ok(entries) => Ok(Some(entries)),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Some(Vec::new())),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// A directory's entries at `at` (none if it is gone), noting where
    /// each one is for the live lookups that follow: for certain when the
    /// listing is live, as a first guess when it is a set's.
    pub fn listed(&mut self, at: Instant, dir: ObjectId) -> Result<Vec<DirEntry>> {
        let entries = self.entries(at, dir)?.unwrap_or_default();
        for e in &entries {
            let name = std::ffi::OsStr::from_bytes(&e.name);
            match at {
                Instant::Live => self.live.note(e.object, dir, name),
                Instant::Set { .. } => self.live.guess(e.object, dir, name),
            }
        }
        Ok(entries)
    }

    /// An object's metadata at `at`; None if it cannot be read live.
    pub fn attrs(&mut self, at: Instant, object: ObjectId) -> Result<Option<AttrRecord>> {
        let live_fd = match at {
            Instant::Live => self.live.fd(object)?,
            Instant::Set { .. } => self.live.inode(object)?,
        };
        let live = move || -> Result<Option<AttrRecord>> {
            let Some(fd) = live_fd else {
                return Ok(None);
            };
            let st = backing::fstat(fd.as_fd())?;
            let xattrs = backing::all_xattrs(fd.as_fd())?;
            Ok(Some(backing::attr_record(&st, xattrs)))
        };
        match at {
            Instant::Live => live(),
            Instant::Set { id, epoch } => self.holding(id, object, || {
                match self.store.resolve_attr(self.vol.id(), object, epoch)? {
                    Some(record) => Ok(Some(record)),
                    None => live(),
                }
            }),
        }
    }

    /// The file of `object` that `at` reads where it has no record, open
    /// for reading: live, or for a set also a file kept aside for it.
    fn live_file(&mut self, at: Instant, object: ObjectId) -> Result<Option<File>> {
        let fd = match at {
            Instant::Live => self.live.fd(object)?,
            Instant::Set { .. } => self.live.inode(object)?,
        };
        let Some(fd) = fd else {
            return Ok(None);
        };
        Ok(Some(backing::as_file(backing::reopen(
            fd.as_fd(),
            libc::O_RDONLY,
        )?)))
    }

    /// The bytes of blocks `blocks` of a file at `at`, one callback per
    /// block in order; a block past the end of the file is empty.
    pub fn read_blocks(
        &mut self,
        at: Instant,
        object: ObjectId,
        blocks: impl Iterator<Item = u64>,
        mut each: impl FnMut(u64, &[u8]),
    ) -> Result<()> {
        let file = self.live_file(at, object)?;
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        let live_block = |block: u64, buf: &mut Vec<u8>| -> Result<usize> {
            match &file {
                Some(f) => Ok(backing::pread_full(f, buf, block * BLOCK_SIZE)?),
                None => Err(FsError::from_errno(libc::ENOENT)),
            }
        };
        for block in blocks {
            match at {
                Instant::Live => {
                    let n = live_block(block, &mut buf)?;
                    each(block, &buf[..n]);
                }
                Instant::Set { id, epoch } => {
                    let recorded = self.holding(id, object, || {
                        match self
                            .store
                            .resolve_block(self.vol.id(), object, block, epoch)?
                        {
                            Some(data) => Ok(Some(data)),
                            None => {
                                let n = live_block(block, &mut buf)?;
                                each(block, &buf[..n]);
                                Ok(None)
                            }
                        }
                    })?;
                    if let Some(data) = recorded {
                        each(block, &data);
                    }
                }
            }
        }
        Ok(())
    }

    /// The symlink's target at `at` (symlinks never change in place: the
    /// live target is the target at every instant the object existed).
    pub fn link_target(&mut self, object: ObjectId) -> Result<Vec<u8>> {
        let Some(fd) = self.live.inode(object)? else {
            return Err(FsError::from_errno(libc::ENOENT));
        };
        Ok(backing::readlinkat(fd.as_fd(), c"")?)
    }

    /// The path `object` had at `at`, relative to the volume root; None if
    /// it was not in the volume then.
    pub fn path(&mut self, at: Instant, object: ObjectId) -> Result<Option<PathBuf>> {
        match at {
            Instant::Live => self.live.path(object),
            Instant::Set { id, epoch } => {
                self.load_past(id, epoch)?;
                self.past_path(epoch, object)
            }
        }
    }

    fn load_past(&mut self, set: SetId, epoch: Epoch) -> Result<()> {
        if self.pasts.contains_key(&epoch) {
            return Ok(());
        }
        let changed: HashSet<ObjectId> = self
            .store
            .changed_dirs(self.vol.id(), epoch, None)?
            .into_iter()
            .collect();
        let mut parents: HashMap<ObjectId, Vec<(ObjectId, OsString)>> = HashMap::new();
        for dir in &changed {
            let entries = self.holding(set, *dir, || {
                Ok(self.store.resolve_dir(self.vol.id(), *dir, epoch)?)
            })?;
            for entry in entries.unwrap_or_default() {
                parents
                    .entry(entry.object)
                    .or_default()
                    .push((*dir, OsString::from_vec(entry.name)));
            }
        }
        self.pasts.insert(
            epoch,
            Past {
                changed,
                parents,
                paths: HashMap::new(),
            },
        );
        Ok(())
    }

    fn past_path(&mut self, epoch: Epoch, object: ObjectId) -> Result<Option<PathBuf>> {
        let mut visiting = HashSet::new();
        Ok(self.past_path_within(epoch, object, &mut visiting)?.0)
    }

    /// The path of `object` at `epoch`, and whether the answer passed
    /// through an object whose own answer was still being found (a loop
    /// of listings from different times): such a None is not remembered.
    fn past_path_within(
        &mut self,
        epoch: Epoch,
        object: ObjectId,
        visiting: &mut HashSet<ObjectId>,
    ) -> Result<(Option<PathBuf>, bool)> {
        if object == self.vol.root_object() {
            return Ok((Some(PathBuf::new()), false));
        }
        if visiting.len() > MAX_DEPTH || !visiting.insert(object) {
            return Ok((None, true));
        }
        let Some(past) = self.pasts.get(&epoch) else {
            return Ok((None, false));
        };
        if let Some(known) = past.paths.get(&object) {
            visiting.remove(&object);
            return Ok((known.clone(), false));
        }
        let candidates = past.parents.get(&object).cloned().unwrap_or_default();
        let (mut found, mut tainted) = (None, false);
        // A changed directory born after the epoch lists what it held
        // later: a name counts only if its directory was there then.
        for (dir, name) in candidates {
            let (dir_path, loop_seen) = self.past_path_within(epoch, dir, visiting)?;
            tainted |= loop_seen;
            if let Some(dir_path) = dir_path {
                found = Some(dir_path.join(name));
                break;
            }
        }
        // A directory whose entries did not change since listed the object
        // under the same name then; one that changed and does not list it
        // did not hold it. A file with several links: any of its names.
        let mut looked_everywhere = false;
        while found.is_none() {
            for (dir, name) in self.live.names(object)? {
                let unchanged = self
                    .pasts
                    .get(&epoch)
                    .is_some_and(|p| !p.changed.contains(&dir));
                if unchanged {
                    let (dir_path, loop_seen) = self.past_path_within(epoch, dir, visiting)?;
                    tainted |= loop_seen;
                    if let Some(dir_path) = dir_path {
                        found = Some(dir_path.join(name));
                        break;
                    }
                }
            }
            if found.is_some() || looked_everywhere {
                break;
            }
            self.live.find_links(object)?;
            looked_everywhere = true;
        }
        visiting.remove(&object);
        let tainted = tainted && found.is_none();
        if !tainted && let Some(past) = self.pasts.get_mut(&epoch) {
            past.paths.insert(object, found.clone());
        }
        Ok((found, tainted))
    }
}
