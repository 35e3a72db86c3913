//! The copy-on-write rule, in one place: before a mutation of the live
//! volume takes effect, preserve whatever the newest shadow copy still needs
//! and no record of this epoch already holds.
//!
//! A `Mutation` holds the volume's epoch gate shared (so a set commit waits
//! for it) and the write locks of the objects it touches (so a snapshot
//! reader of those objects sees either the old live state or the record,
//! never the new live state without the record). It gathers pre-images,
//! stores them in one catalog transaction (`preserve`), and only then may the
//! caller apply the change. It never applies a change itself.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use umbra_store::{
    AttrRecord, BLOCK_SIZE, DirEntry, Epoch, FileKind, ObjectId, Place, PreImages, Store, Swap,
    VolumeId,
};

mod memory;

use memory::{Known, Preserved};

use crate::backing::{self, cstr};
use crate::{FsError, HIDDEN_DIR, Result};

const STRIPES: usize = 1024;
/// Pre-images gathered past this size are stored before gathering more.
const FLUSH_BYTES: usize = 16 * 1024 * 1024;
/// How far past a sequential first overwrite its file's next blocks are
/// preserved in the same store, so that the writes that follow find their
/// pre-images durable already: one sync for this many bytes instead of one
/// per write. Below `FLUSH_BYTES`, so that a batch is one store.
const AHEAD_BYTES: u64 = 8 * 1024 * 1024;

/// The volume's position in time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    /// The open epoch.
    pub current: Epoch,
    /// Whether the open epoch began in this process: then every record of
    /// it was written by this process and the in-memory state is complete.
    pub began_here: bool,
}

/// A first overwrite in a region of a file (`REGION_BYTES`, aligned)
/// where `REGION_AFTER` blocks were kept already in the epoch has the rest
/// of the region kept by a background thread, as a sequential stream's
/// next window is: random writes that cover a file densely pay a sync per
/// region rather than per block, and the write that found the region
/// dense waits for its own block only (a fsync'd random 4 KiB write ran at
/// 0.35× of no set when it waited for the MiB, 0.39-0.41× since), while
/// sparse writes (a large database's few pages) keep only what they
/// overwrite. The diff area grows at most
/// `REGION_BYTES / BLOCK_SIZE / REGION_AFTER`-fold.
const REGION_BYTES: u64 = 1024 * 1024;
const REGION_AFTER: usize = 2;

/// A directory of at most this many entries has all of them kept at its
/// first departure: cheaper than a sync of its own for a second one.
const SMALL_DIR: usize = 32;

/// Below a directory whose entries are all kept, its subdirectories'
/// entries (and theirs) are kept in the same store, up to this many in all:
/// `rm -rf` of a tree of small directories waits for one sync, not one per
/// directory. The bound caps what one departure may pay.
const SUBTREE_ENTRIES: usize = 1024;

/// A directory of more entries than this never has them all kept at once:
/// one departure would pay for all of them while the volume's namespace
/// lock is held (a million-entry directory: tens of seconds). Its entries
/// keep paying a sync each as they leave.
const CHILDREN_MAX: usize = 4096;

/// A directory's entries that left their names one by one this many
/// times in the open epoch have the metadata and handles of all its
/// entries kept at once (`children`): a directory being emptied or renamed
/// through then pays one sync, not one per entry. A first few do not, so
/// that one unlink in a large directory does not pay for all of it.
const CHILDREN_AFTER: u32 = 4;

/// A file written sequentially in the open epoch.
#[derive(Clone, Copy, Debug, Default)]
struct Stream {
    /// Where its last write ended: a write that starts there continues it.
    end: u64,
    /// How far its blocks are kept, or being kept, ahead of the writes.
    upto: u64,
    /// The windows background threads keep (`keep_ahead`), at most
    /// `AHEAD_JOBS`, and whether each thread is running (it holds the gate,
    /// so a write may wait for it without holding off a set's commit).
    jobs: [Option<Job>; AHEAD_JOBS],
}

/// Files the open epoch remembers as written, at most: every file written
/// gets an entry, and a forgotten one is found sequential again by its next
/// write.
const STREAMS_MAX: usize = 4096;

/// Windows of one stream in flight: while one syncs, the next read and
/// hash. Four, not two: with two, the writes caught up with a window still
/// syncing every 8 MiB (a sequential first overwrite ran at 0.45-0.55× of
/// no set, half the CPU idle); with four, 0.55-0.65×.
const AHEAD_JOBS: usize = 4;

/// How far ahead of a sequential stream's writes its next window starts.
const AHEAD_LEAD: u64 = AHEAD_BYTES * (AHEAD_JOBS as u64 - 1);

/// Windows in flight in all of a volume's streams, at most: each holds
/// `AHEAD_BYTES` in memory and a thread, and a user writing many files at
/// once must not turn that into gigabytes. Past it the writes keep their
/// blocks themselves, as they do with no stream.
pub(crate) const AHEAD_WINDOWS_MAX: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Job {
    from: u64,
    to: u64,
    running: bool,
}

impl Stream {
    fn job(&mut self, w: &Window) -> Option<&mut Job> {
        self.jobs
            .iter_mut()
            .flatten()
            .find(|j| j.from == w.from && j.to == w.to)
    }
}

/// A window of a sequential stream to keep in the background: the next
/// `AHEAD_BYTES` once the writes are within a window of what is kept, so
/// that they find it durable already and the reading, hashing, appending
/// and syncing of pre-images runs beside them rather than between them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    object: ObjectId,
    epoch: Epoch,
    from: u64,
    to: u64,
}

pub(crate) struct Cow {
    store: Arc<Store>,
    volume: VolumeId,
    root: ObjectId,
    gate: RwLock<Clock>,
    /// Whether any set of this volume exists: if none, nothing is preserved.
    any_set: AtomicBool,
    stripes: Box<[RwLock<()>]>,
    preserved: Mutex<Known>,
    births: Mutex<HashSet<ObjectId>>,
    /// The files written sequentially in the open epoch.
    streams: Mutex<HashMap<ObjectId, Stream>>,
    /// Windows handed out and not ended yet (`AHEAD_WINDOWS_MAX`).
    ahead_windows: AtomicUsize,
    /// Signalled when a background window is kept (or given up).
    kept_ahead: Condvar,
    /// How many entries left each directory by name in the open epoch.
    departures: Mutex<HashMap<ObjectId, u32>>,
    /// Counts the stores of pre-images: a snapshot reader that saw no
    /// record of an object, and sees this unchanged under the object's read
    /// lock, knows none has appeared since.
    stores: AtomicU64,
    /// Keeps the diff area within its limits before pre-images are stored.
    guard: OnceLock<Arc<dyn StorageGuard>>,
    /// Says where a changed object was reached, for its place in the store.
    namer: OnceLock<Arc<dyn Namer>>,
    /// Entries each map of the open epoch holds at most (`memory`).
    memory: AtomicUsize,
}

/// Where the live mount last reached an object: kept with its first
/// pre-image of an epoch, so that `umbra diff` can name a changed file by
/// its number alone. A hint: the live mount's memory of names.
pub(crate) trait Namer: Send + Sync {
    fn place(&self, object: ObjectId) -> Option<Place>;
}

/// The diff area's limit, checked before every store of pre-images.
pub(crate) trait StorageGuard: Send + Sync {
    /// Makes room for `bytes` more (deleting old sets if the policy says
    /// so), or fails with ENOSPC. Called while the mutation holds its locks.
    fn make_room(&self, bytes: u64) -> Result<()>;

    /// The store's disk is full: frees something (true) so that the caller
    /// retries, or says there is nothing to free (false), or fails.
    fn disk_full(&self) -> Result<bool>;
}

impl Cow {
    pub fn new(
        store: Arc<Store>,
        volume: VolumeId,
        root: ObjectId,
        clock: Clock,
        any_set: bool,
    ) -> Cow {
        Cow {
            store,
            volume,
            root,
            gate: RwLock::new(clock),
            any_set: AtomicBool::new(any_set),
            guard: OnceLock::new(),
            namer: OnceLock::new(),
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
            preserved: Mutex::new(Known::default()),
            births: Mutex::new(HashSet::new()),
            streams: Mutex::new(HashMap::new()),
            ahead_windows: AtomicUsize::new(0),
            kept_ahead: Condvar::new(),
            departures: Mutex::new(HashMap::new()),
            stores: AtomicU64::new(0),
            memory: AtomicUsize::new(memory::EPOCH_MEMORY),
        }
    }

    /// Bounds what the open epoch remembers (`memory`) at `entries` per
    /// map, so that a test can make it forget.
    #[cfg(test)]
    pub fn remember_at_most(&self, entries: usize) {
        self.memory.store(entries.max(1), Ordering::Relaxed);
    }

    /// How many entries each map of the open epoch holds: preserved
    /// (objects and blocks), births, departures, streams.
    #[cfg(test)]
    pub fn remembered(&self) -> [usize; 4] {
        [
            lock(&self.preserved).entries(),
            lock(&self.births).len(),
            lock(&self.departures).len(),
            lock(&self.streams).len(),
        ]
    }

    fn memory(&self) -> usize {
        self.memory.load(Ordering::Relaxed)
    }

    /// How many times pre-images were stored (see `stores`).
    pub fn stores(&self) -> u64 {
        self.stores.load(Ordering::Acquire)
    }

    pub fn set_guard(&self, guard: Arc<dyn StorageGuard>) {
        let _ = self.guard.set(guard);
    }

    pub fn set_namer(&self, namer: Arc<dyn Namer>) {
        let _ = self.namer.set(namer);
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn clock(&self) -> Clock {
        *self.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a mutation of `objects`: the gate shared, their locks held.
    pub fn begin(&self, objects: &[ObjectId]) -> Mutation<'_> {
        let gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let mut stripes: Vec<usize> = objects.iter().map(|o| stripe_of(*o)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let locks = stripes
            .into_iter()
            .map(|s| self.stripes[s].write().unwrap_or_else(|p| p.into_inner()))
            .collect();
        let hi = if self.any_set.load(Ordering::Acquire) && gate.current.0 > 1 {
            Some(Epoch(gate.current.0 - 1))
        } else {
            None
        };
        Mutation {
            cow: self,
            gate,
            _locks: locks,
            hi,
            attrs: Vec::new(),
            dirs: Vec::new(),
            blocks: Vec::new(),
            pending: HashSet::new(),
            pending_bytes: 0,
            handles: Vec::new(),
            places: Vec::new(),
            aside: Vec::new(),
            swaps: Vec::new(),
            children: Vec::new(),
            speculative: usize::MAX,
        }
    }

    /// Keeps `w` (from a write's `write_blocks`) in the background: the
    /// gate held shared like any mutation, but no object lock, so that the
    /// writes go on meanwhile. A block they overwrite first is kept by
    /// them (they find it not kept yet), and the store keeps the first
    /// record of an epoch, so a block read here after such a write is
    /// never stored. Best effort: what is not kept here, the writes keep.
    pub fn keep_ahead(&self, w: Window, file: &File) {
        let mut m = self.begin(&[]);
        {
            let mut streams = lock(&self.streams);
            match streams.get_mut(&w.object).and_then(|s| s.job(&w)) {
                Some(job) if m.gate.current.0 == w.epoch.0 => job.running = true,
                _ => {
                    drop(streams);
                    drop(m);
                    self.end_ahead(w);
                    return;
                }
            }
        }
        m.speculative = 0;
        let kept = m
            .blocks(w.object, file.as_fd(), file, w.from, w.to)
            .and_then(|()| m.preserve());
        drop(m);
        self.end_ahead(w);
        if let Err(e) = kept {
            tracing::debug!(
                object = w.object.0,
                "keeping blocks ahead of the writes: {e}"
            );
        }
    }

    /// Windows handed out and not ended yet.
    #[cfg(test)]
    pub(crate) fn ahead_windows(&self) -> usize {
        self.ahead_windows.load(Ordering::Acquire)
    }

    /// `w` is kept, failed or will not run: writes wait for it no longer.
    /// Called once for every window `write_blocks` handed out.
    pub fn end_ahead(&self, w: Window) {
        self.ahead_windows.fetch_sub(1, Ordering::AcqRel);
        let mut streams = lock(&self.streams);
        if let Some(s) = streams.get_mut(&w.object) {
            for slot in &mut s.jobs {
                if slot.is_some_and(|j| j.from == w.from && j.to == w.to) {
                    *slot = None;
                }
            }
        }
        self.kept_ahead.notify_all();
    }

    /// Holds `object` still for a snapshot read: no mutation of it can be
    /// between "no record" and "read the live object".
    pub fn read_lock(&self, object: ObjectId) -> RwLockReadGuard<'_, ()> {
        self.stripes[stripe_of(object)]
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Holds every mutation of the volume off: the commit of a set.
    pub fn freeze(&self) -> RwLockWriteGuard<'_, Clock> {
        self.gate.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Called with the gate held exclusive once the set is committed.
    pub fn advance(&self, clock: &mut Clock, closed: Epoch) {
        clock.current = Epoch(closed.0 + 1);
        self.any_set.store(true, Ordering::Release);
        clock.began_here = true;
        *lock(&self.preserved) = Known::default();
        *lock(&self.births) = HashSet::new();
        *lock(&self.streams) = HashMap::new();
        *lock(&self.departures) = HashMap::new();
    }

    /// After a deletion: whether any set of the volume is left.
    /// Lock-free, so that a mutation deleting sets to make room (while it
    /// holds the gate shared) can call it.
    pub fn set_any_set(&self, any: bool) {
        self.any_set.store(any, Ordering::Release);
    }

    /// Runs `f` on what `object` has had preserved in the open epoch, loading
    /// it from the catalog first if the epoch began before this process.
    fn with_known<T>(
        &self,
        object: ObjectId,
        hi: Epoch,
        began_here: bool,
        f: impl FnOnce(&Preserved) -> T,
    ) -> Result<T> {
        let mut map = lock(&self.preserved);
        if !map.remembers(object) && !map.complete(began_here) {
            drop(map);
            let stored = self.store.preserved(self.volume, object, hi)?;
            let loaded = Preserved {
                attr_size: stored.attr.map(|a| a.size),
                dir: stored.dir,
                blocks: stored.blocks.into_iter().collect(),
                ..Preserved::default()
            };
            map = lock(&self.preserved);
            map.load(object, loaded);
            map.bound(self.memory());
        }
        Ok(match map.get(object) {
            Some(p) => f(p),
            None => f(&Preserved::default()),
        })
    }
}

fn stripe_of(object: ObjectId) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    object.hash(&mut h);
    (h.finish() as usize) % STRIPES
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One mutation's pre-images, gathered and then stored before the change.
pub(crate) struct Mutation<'a> {
    cow: &'a Cow,
    gate: RwLockReadGuard<'a, Clock>,
    _locks: Vec<RwLockWriteGuard<'a, ()>>,
    /// The epoch records are tagged with, or None when no set needs them.
    hi: Option<Epoch>,
    attrs: Vec<(ObjectId, AttrRecord)>,
    dirs: Vec<(ObjectId, Vec<DirEntry>)>,
    blocks: Vec<(ObjectId, u64, Vec<u8>)>,
    /// The (object, block) pairs gathered by this mutation.
    pending: HashSet<(ObjectId, u64)>,
    pending_bytes: usize,
    handles: Vec<(ObjectId, Vec<u8>)>,
    places: Vec<(ObjectId, Place)>,
    aside: Vec<ObjectId>,
    swaps: Vec<(ObjectId, Swap)>,
    /// Directories whose entries' metadata and handles this mutation keeps.
    children: Vec<ObjectId>,
    /// Where the blocks kept ahead of the writes begin in `blocks` (MAX:
    /// none): what is dropped first when room is short.
    speculative: usize,
}

impl Mutation<'_> {
    /// Whether `object` existed at the newest snapshot as far as we know:
    /// objects born in the open epoch need nothing preserved.
    pub fn needs(&self, object: ObjectId) -> bool {
        self.hi.is_some() && !lock(&self.cow.births).contains(&object)
    }

    fn known<T>(&self, object: ObjectId, f: impl FnOnce(&Preserved) -> T) -> Result<T> {
        match self.hi {
            Some(hi) => self.cow.with_known(object, hi, self.gate.began_here, f),
            None => Ok(f(&Preserved::default())),
        }
    }

    /// Keeps the metadata of `object` (behind `fd`, O_PATH is enough) as it
    /// is now, if this is its first change in the epoch. Returns the size at
    /// the start of the epoch.
    pub fn attr(&mut self, object: ObjectId, fd: BorrowedFd<'_>) -> Result<Option<u64>> {
        if !self.needs(object) {
            return Ok(None);
        }
        if let Some(size) = self.known(object, |p| p.attr_size)? {
            return Ok(Some(size));
        }
        if let Some((_, a)) = self.attrs.iter().find(|(o, _)| *o == object) {
            return Ok(Some(a.size));
        }
        let st = backing::fstat(fd)?;
        let xattrs = backing::all_xattrs(fd)?;
        let record = backing::attr_record(&st, xattrs);
        let size = record.size;
        self.attrs.push((object, record));
        if let Some(place) = self.cow.namer.get().and_then(|n| n.place(object)) {
            self.places.push((object, place));
        }
        Ok(Some(size))
    }

    /// Keeps a directory's entries (and its metadata) as they are now.
    pub fn dir(&mut self, object: ObjectId, fd: BorrowedFd<'_>) -> Result<()> {
        if !self.needs(object) {
            return Ok(());
        }
        self.attr(object, fd)?;
        if self.known(object, |p| p.dir)? || self.dirs.iter().any(|(o, _)| *o == object) {
            return Ok(());
        }
        let hidden = (object == self.cow.root).then_some(OsStr::new(HIDDEN_DIR));
        let entries = backing::dir_record(fd, hidden)?;
        self.dirs.push((object, entries));
        Ok(())
    }

    /// Keeps the blocks of `[start, end)` that existed at the start of the
    /// epoch and are not kept yet, read from `file`; and the metadata.
    pub fn blocks(
        &mut self,
        object: ObjectId,
        fd: BorrowedFd<'_>,
        file: &File,
        start: u64,
        end: u64,
    ) -> Result<()> {
        let Some(size_at_start) = self.attr(object, fd)? else {
            return Ok(());
        };
        let end = end.min(size_at_start);
        if start >= end {
            return Ok(());
        }
        let first = start / BLOCK_SIZE;
        let wanted: Vec<u64> = self.known(object, |p| {
            (first..end.div_ceil(BLOCK_SIZE))
                .filter(|b| !p.blocks.contains(b))
                .collect()
        })?;
        for block in wanted {
            if !self.pending.insert((object, block)) {
                continue;
            }
            let mut data = vec![0u8; BLOCK_SIZE as usize];
            let n = backing::pread_full(file, &mut data, block * BLOCK_SIZE)?;
            data.truncate(n);
            self.pending_bytes += data.len();
            self.blocks.push((object, block, data));
            if self.pending_bytes >= FLUSH_BYTES {
                // A large truncation or punch must not hold gigabytes in
                // memory: store what is gathered; the change still waits.
                self.preserve()?;
            }
        }
        Ok(())
    }

    /// Keeps what a write of `[start, end)` overwrites, like `blocks`; and
    /// when that write had to keep something, also what the next writes
    /// will likely overwrite: the next `AHEAD_BYTES` of the file if it
    /// continues the previous write, or else the rest of its region if
    /// that is being covered (`REGION_AFTER`), handed back as a window for
    /// a background thread (`Cow::keep_ahead`) when one is free. Only what existed at the
    /// start of the epoch, counted in the diff area like any pre-image;
    /// those blocks are still as the set saw them, since any change of
    /// them would have kept them first.
    pub fn write_blocks(
        &mut self,
        object: ObjectId,
        fd: BorrowedFd<'_>,
        file: &File,
        start: u64,
        end: u64,
    ) -> Result<Option<Window>> {
        if self.hi.is_some() {
            self.wait_ahead(object, start, end);
        }
        let before = self.blocks.len();
        self.blocks(object, fd, file, start, end)?;
        if self.hi.is_none() {
            return Ok(None);
        }
        let stream = {
            let mut streams = lock(&self.cow.streams);
            if streams.len() >= STREAMS_MAX.min(self.cow.memory()) && !streams.contains_key(&object)
            {
                // Only a stream with a window in flight must be remembered.
                streams.retain(|_, s| s.jobs.iter().any(Option::is_some));
            }
            let s = streams.entry(object).or_default();
            let sequential = start > 0 && s.end == start;
            s.end = end;
            sequential.then_some(*s)
        };
        if let Some(s) = stream
            && self.blocks.len() == before
        {
            return self.next_window(object, s, end);
        }
        if self.blocks.len() <= before {
            return Ok(None);
        }
        self.speculative = self.speculative.min(self.blocks.len());
        if stream.is_some() {
            let upto = end.saturating_add(AHEAD_BYTES);
            self.blocks(object, fd, file, end, upto)?;
            if let Some(s) = lock(&self.cow.streams).get_mut(&object) {
                s.upto = s.upto.max(upto);
            }
            return Ok(None);
        }
        let region = start / REGION_BYTES * REGION_BYTES;
        let blocks = region / BLOCK_SIZE..(region + REGION_BYTES) / BLOCK_SIZE;
        let kept = self.known(object, |p| {
            blocks.clone().filter(|b| p.blocks.contains(b)).count()
        })?;
        if kept >= REGION_AFTER {
            let to = region + REGION_BYTES;
            // The rest of the region is kept beside the writes, as a
            // sequential stream's next window is: a fsync'd random write
            // waits for its own block's sync, not for a MiB's.
            if self.window_over(object, region, to) {
                return Ok(None);
            }
            if let Some(w) = self.claim_window(object, region, to) {
                return Ok(Some(w));
            }
            self.blocks(object, fd, file, region, to)?;
        }
        Ok(None)
    }

    /// Whether a window of `object` handed out and not ended overlaps
    /// `[from, to)`.
    fn window_over(&self, object: ObjectId, from: u64, to: u64) -> bool {
        lock(&self.cow.streams)
            .get(&object)
            .is_some_and(|s| s.jobs.iter().flatten().any(|j| from < j.to && to > j.from))
    }

    /// Hands `[from, to)` of `object` to a background thread, if its
    /// stream has a free slot and the volume is under
    /// `AHEAD_WINDOWS_MAX`. Its caller holds the object's lock, so the
    /// slot stays free until taken here.
    fn claim_window(&self, object: ObjectId, from: u64, to: u64) -> Option<Window> {
        let mut streams = lock(&self.cow.streams);
        let s = streams.get_mut(&object)?;
        let free = s.jobs.iter().position(Option::is_none)?;
        self.cow
            .ahead_windows
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < AHEAD_WINDOWS_MAX).then_some(n + 1)
            })
            .ok()?;
        s.jobs[free] = Some(Job {
            from,
            to,
            running: false,
        });
        Some(Window {
            object,
            epoch: self.gate.current,
            from,
            to,
        })
    }

    /// A write that found its blocks kept, in sequential stream `s`: once
    /// it is within `AHEAD_BYTES` of what is kept, the next window is the
    /// caller's to hand to a background thread (`Cow::keep_ahead`).
    fn next_window(&mut self, object: ObjectId, s: Stream, end: u64) -> Result<Option<Window>> {
        let size = self.known(object, |p| p.attr_size)?.unwrap_or(0);
        if s.upto == 0 || s.upto >= size || s.upto - end.min(s.upto) > AHEAD_LEAD {
            return Ok(None);
        }
        let w = self.claim_window(object, s.upto, s.upto.saturating_add(AHEAD_BYTES));
        if let Some(w) = &w
            && let Some(s) = lock(&self.cow.streams).get_mut(&object)
        {
            s.upto = w.to;
        }
        Ok(w)
    }

    /// Waits while a background thread keeps blocks of `[start, end)`:
    /// this write finds them kept then, instead of keeping them again.
    /// Only for a running thread, which holds the gate already and needs
    /// no object lock, so that it finishes whatever this write holds.
    fn wait_ahead(&self, object: ObjectId, start: u64, end: u64) {
        let mut streams = lock(&self.cow.streams);
        while streams.get(&object).is_some_and(|s| {
            s.jobs
                .iter()
                .flatten()
                .any(|j| j.running && start < j.to && end > j.from)
        }) {
            streams = self
                .cow
                .kept_ahead
                .wait(streams)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Keeps what a snapshot needs of `object` (behind `fd`) before it
    /// leaves `name` in directory `parent` (behind `parent_fd`, whose
    /// entries `dir` keeps first): its metadata and its handle. Once
    /// entries left `parent` `CHILDREN_AFTER` times in the epoch, every
    /// entry's are kept at once, so that the next departures need no sync
    /// of their own.
    pub fn leaving(
        &mut self,
        parent: ObjectId,
        parent_fd: BorrowedFd<'_>,
        object: ObjectId,
        fd: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<()> {
        if !self.needs(object) {
            return Ok(());
        }
        if self.needs(parent) {
            let departures = {
                let mut counts = lock(&self.cow.departures);
                memory::bound_departures(&mut counts, self.cow.memory());
                let n = counts.entry(parent).or_insert(0);
                *n += 1;
                *n
            };
            let small = self
                .dirs
                .iter()
                .any(|(o, entries)| *o == parent && entries.len() <= SMALL_DIR);
            if departures >= CHILDREN_AFTER || small {
                self.children(parent, parent_fd, &mut SUBTREE_ENTRIES.clone())?;
            }
        }
        self.attr(object, fd)?;
        self.handle(object, parent_fd, name)
    }

    /// Keeps the metadata and handle of every entry of directory `dir`
    /// that has none kept in the epoch, then, while `budget` (entries) lasts,
    /// the entries of its subdirectories and theirs. An entry is not
    /// locked: one that changes meanwhile had its own pre-image stored
    /// before the change, and the store keeps the first record of an
    /// epoch, never a later one. A directory's entries cannot change
    /// meanwhile: the caller holds the volume's namespace lock.
    fn children(
        &mut self,
        dir: ObjectId,
        dir_fd: BorrowedFd<'_>,
        budget: &mut usize,
    ) -> Result<()> {
        if self.known(dir, |p| p.children)? || self.children.contains(&dir) {
            return Ok(());
        }
        let hidden = (dir == self.cow.root).then_some(OsStr::new(HIDDEN_DIR));
        let entries = backing::list_dir(dir_fd)?;
        if entries.len() > CHILDREN_MAX {
            // Marked as if kept, so that the next departures do not list
            // it again: each keeps its own entry.
            self.children.push(dir);
            return Ok(());
        }
        let mut subdirs = Vec::new();
        for (name, ino, kind) in entries {
            let object = ObjectId(ino);
            if Some(name.as_os_str()) == hidden || name == "." || name == ".." {
                continue;
            }
            if !self.needs(object) {
                continue;
            }
            let cname = cstr(&name)?;
            let fd = match backing::open_path(dir_fd, &cname) {
                Ok(fd) => fd,
                // Gone meanwhile: whatever removed it kept what it needed.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            self.attr(object, fd.as_fd())?;
            self.handle(object, dir_fd, &name)?;
            *budget = budget.saturating_sub(1);
            if kind == FileKind::Directory && subdirs.len() < *budget {
                subdirs.push((object, cname));
            }
        }
        self.children.push(dir);
        // Reopened by name, so that a wide directory holds no descriptor
        // per subdirectory meanwhile.
        for (object, cname) in subdirs {
            if *budget == 0 {
                break;
            }
            let fd = match backing::open_path(dir_fd, &cname) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            self.dir(object, fd.as_fd())?;
            self.children(object, fd.as_fd(), budget)?;
        }
        Ok(())
    }

    /// Records the file handle of `object`, reached as `name` in `dir`,
    /// before it leaves that name: snapshots find it by handle afterwards.
    pub fn handle(&mut self, object: ObjectId, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        if !self.needs(object)
            || self.known(object, |p| p.handle)?
            || self.handles.iter().any(|(o, _)| *o == object)
        {
            return Ok(());
        }
        let handle = backing::name_to_handle(dir, &cstr(name)?)?;
        self.handles.push((object, handle));
        Ok(())
    }

    /// Says that `object` is about to be reached as `place` (a rename), if
    /// this mutation stores anything anyway: a place alone is not worth a
    /// sync, and a stale one costs `umbra diff` a search, not an error.
    /// `place` is only asked for then, so a rename that stores nothing
    /// pays nothing for it.
    pub fn place(&mut self, object: ObjectId, place: impl FnOnce() -> Option<Place>) {
        if !self.needs(object) || self.all_stored() {
            return;
        }
        if let Some(place) = place() {
            self.places.retain(|(o, _)| *o != object);
            self.places.push((object, place));
        }
    }

    /// Notes that `object`'s inode is being moved into the hidden folder.
    pub fn aside(&mut self, object: ObjectId) {
        if self.needs(object) {
            self.aside.push(object);
        }
    }

    /// Notes that directory `object` goes into the hidden folder in two
    /// steps (`PreImages::swaps`); the note is durable before the first
    /// step, and `Volume::swapped` ends it.
    pub fn swap(&mut self, object: ObjectId, swap: Swap) {
        if self.needs(object) {
            self.swaps.push((object, swap));
        }
    }

    /// Stores every gathered pre-image in one transaction. The change may
    /// be applied only after this returns Ok.
    pub fn preserve(&mut self) -> Result<()> {
        let Some(hi) = self.hi else {
            return Ok(());
        };
        let mut pre = PreImages {
            blocks: self
                .blocks
                .iter()
                .map(|(o, b, d)| (*o, *b, d.as_slice()))
                .collect(),
            attrs: std::mem::take(&mut self.attrs),
            dirs: std::mem::take(&mut self.dirs),
            handles: std::mem::take(&mut self.handles),
            places: std::mem::take(&mut self.places),
            aside: std::mem::take(&mut self.aside),
            swaps: std::mem::take(&mut self.swaps),
        };
        if pre.is_empty() {
            let mut preserved = lock(&self.cow.preserved);
            for object in self.children.drain(..) {
                preserved.entry(object).children = true;
            }
            preserved.bound(self.cow.memory());
            return Ok(());
        }
        // Blocks kept ahead are a guess at the next writes: they must never
        // turn a write that fits into ENOSPC, so they go first when room
        // is short.
        let needed = std::mem::replace(&mut self.speculative, usize::MAX).min(pre.blocks.len());
        let bytes = |pre: &PreImages<'_>| pre.blocks.iter().map(|(_, _, d)| d.len() as u64).sum();
        let guard = self.cow.guard.get();
        if let Some(guard) = guard
            && let Err(e) = guard.make_room(bytes(&pre))
        {
            if needed == pre.blocks.len() {
                return Err(e);
            }
            pre.blocks.truncate(needed);
            guard.make_room(bytes(&pre))?;
        }
        loop {
            match self.cow.store.preserve(self.cow.volume, hi, &pre) {
                Ok(()) => {
                    // Before the change is applied and the object's lock
                    // released.
                    self.cow.stores.fetch_add(1, Ordering::Release);
                    break;
                }
                Err(e) if e.is_disk_full() && pre.blocks.len() > needed => {
                    pre.blocks.truncate(needed);
                }
                Err(e) if e.is_disk_full() => match guard {
                    Some(guard) if room_made(guard.as_ref())? => continue,
                    // Every set is gone: nothing needs keeping any more.
                    Some(_) if !self.cow.any_set.load(Ordering::Acquire) => {
                        self.blocks.clear();
                        self.pending_bytes = 0;
                        return Ok(());
                    }
                    _ => return Err(e.into()),
                },
                Err(e) => return Err(e.into()),
            }
        }
        let mut preserved = lock(&self.cow.preserved);
        for (object, a) in &pre.attrs {
            // Another mutation's record of the object, stored first, is
            // the one the store keeps (and an unlocked entry of
            // `children` may have been read after that one's change).
            preserved.entry(*object).attr_size.get_or_insert(a.size);
        }
        for (object, _) in &pre.dirs {
            preserved.entry(*object).dir = true;
        }
        for (object, _) in &pre.handles {
            preserved.entry(*object).handle = true;
        }
        for object in self.children.drain(..) {
            preserved.entry(object).children = true;
        }
        let stored = pre.blocks.len();
        drop(pre);
        for (object, block, _) in self.blocks.drain(stored..) {
            self.pending.remove(&(object, block));
        }
        for (object, block, _) in self.blocks.drain(..) {
            preserved.add_block(object, block);
        }
        preserved.bound(self.cow.memory());
        self.pending_bytes = 0;
        Ok(())
    }

    /// Whether everything gathered has been stored, so that the change may
    /// be applied. The live operations assert it (debug builds) right
    /// before they touch the volume: a pre-image gathered after `preserve`
    /// must not go unstored.
    pub fn all_stored(&self) -> bool {
        self.blocks.is_empty()
            && self.attrs.is_empty()
            && self.dirs.is_empty()
            && self.handles.is_empty()
            && self.places.is_empty()
            && self.aside.is_empty()
            && self.swaps.is_empty()
            && self.children.is_empty()
    }

    /// Registers an object the mutation created: nothing of it is needed by
    /// any existing snapshot.
    pub fn born(&self, object: ObjectId) {
        if self.hi.is_some() {
            let mut births = lock(&self.cow.births);
            memory::bound_births(&mut births, self.cow.memory());
            births.insert(object);
        }
    }
}

/// Asks the diff area's policy for room on a full disk. A deletion that
/// the full disk itself stops stays a full disk (ENOSPC at the boundary).
fn room_made(guard: &dyn StorageGuard) -> Result<bool> {
    let made = guard.disk_full();
    if let Err(FsError::Store(e)) = &made
        && e.is_disk_full()
    {
        tracing::warn!("diff area: no room even to delete a set: {e}");
    }
    made
}
