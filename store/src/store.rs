//! The `Store` facade: what the filesystem and the daemon ask of the diff
//! area. Preservation (the write side) stores chunks and records in one
//! catalog transaction; resolution (the read side) finds the record with the
//! smallest `hi >= e`, or says "unchanged: read the live object". This file
//! owns the types, opening and the sizes; each concern lives in a file of
//! its name below store/: sets, preserve, resolve, objects (aside and
//! aliases), changes (what changed between two epochs) and collect (what a
//! deletion frees).

mod changes;
mod collect;
mod objects;
mod preserve;
mod resolve;
mod sets;

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use rusqlite::{OptionalExtension, Transaction};

use crate::cache::ChunkCache;
use crate::catalog::Catalog;
use crate::durable::{GroupSync, Ticket};
use crate::error::io_err;
use crate::io::{OsIo, StoreIo};
use crate::pack::{ChunkLocation, Packs};
use crate::records::{decode, encode};
use crate::syncer::PackSyncer;
use crate::{
    AttrRecord, ChunkHash, DirEntry, Epoch, Error, ObjectId, Result, SetId, Timestamp, VolumeId,
};
use crate::{recover, reserve};

#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Bytes of hot chunks kept in memory.
    pub cache_bytes: usize,
    pub durability: Durability,
    /// Punch the bytes of dropped chunks out of their packs as soon as a
    /// deletion is durable, giving the space back at once. Off, dead bytes
    /// wait for compaction's copying, as on a filesystem that cannot punch.
    pub punch_holes: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 64 * 1024 * 1024,
            durability: Durability::Power,
            punch_holes: true,
        }
    }
}

/// What a committed change survives before the store says it is done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// A power cut: packs and the catalog's WAL are synced (group commit)
    /// before a pre-image counts as kept, so no live block is overwritten
    /// before its pre-image is on disk.
    #[default]
    Power,
    /// A crash of the process only: the kernel holds the data, no syncs.
    Process,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    pub id: VolumeId,
    pub name: String,
    /// The current (open) epoch.
    pub epoch: Epoch,
}

/// One volume of a set: the epoch the set closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetVolume {
    pub volume: VolumeId,
    pub name: String,
    pub epoch: Epoch,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetInfo {
    pub id: SetId,
    pub name: String,
    pub created: Timestamp,
    pub label: Option<String>,
    pub origin: SetOrigin,
    pub volumes: Vec<SetVolume>,
}

/// Who asked for a set: kept with it so that retention can tell the sets a
/// schedule made (which it may thin out) from those a person or a backup
/// asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SetOrigin {
    /// `umbra create` (and every set made before origins were recorded).
    #[default]
    Manual,
    /// The daemon's `[schedule]`.
    Scheduled,
    /// `umbra backup --keep`.
    Backup,
}

impl SetOrigin {
    /// The word stored in the catalog and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            SetOrigin::Manual => "manual",
            SetOrigin::Scheduled => "scheduled",
            SetOrigin::Backup => "backup",
        }
    }

    fn parse(word: &str) -> Option<SetOrigin> {
        [SetOrigin::Manual, SetOrigin::Scheduled, SetOrigin::Backup]
            .into_iter()
            .find(|o| o.as_str() == word)
    }
}

impl std::fmt::Display for SetOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A writer that took part in a set, as the coordinator reported it. The
/// store keeps `components` as the text it is given (JSON) and never reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetWriterRecord {
    pub name: String,
    pub required: bool,
    /// `ok` or the `failed-at-EVENT` state the writer ended in.
    pub status: String,
    pub error: Option<String>,
    pub components: String,
}

/// A set that belongs to a cluster set (`umbra create --cluster`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSet {
    pub set: SetId,
    /// The cluster set id every member's part carries.
    pub cluster_id: String,
    /// The cluster's outcome is not yet recorded here.
    pub pending: bool,
}

/// A set to commit. `name` is the wanted name; if a set already has it, the
/// first free of `name-1`, `name-2`, ... is taken.
#[derive(Clone, Debug)]
pub struct NewSet {
    pub name: String,
    pub label: Option<String>,
    pub origin: SetOrigin,
    pub created: Timestamp,
    pub volumes: Vec<VolumeId>,
}

/// Everything one live mutation must preserve before it is applied, for one
/// volume, tagged with `hi` (the newest snapshot's epoch, `current - 1`).
#[derive(Debug, Default)]
pub struct PreImages<'a> {
    pub blocks: Vec<(ObjectId, u64, &'a [u8])>,
    pub attrs: Vec<(ObjectId, AttrRecord)>,
    pub dirs: Vec<(ObjectId, Vec<DirEntry>)>,
    pub handles: Vec<(ObjectId, Vec<u8>)>,
    /// Where an object was last reached: its parent directory's file handle
    /// (empty for the volume's root) and its name there. A hint for naming
    /// changed objects, replaced by every newer one.
    pub places: Vec<(ObjectId, Place)>,
    /// Objects whose backing inode was moved into the volume's hidden folder.
    /// Alone in a `PreImages`, they are committed but not synced: the
    /// caller has made each one's attributes at `hi` durable before, and
    /// `restore_aside` rebuilds a row a power cut lost from that record and
    /// the inode found in the hidden folder.
    pub aside: Vec<ObjectId>,
    /// Directories about to be swapped by a rename to `Place` (the
    /// source's name) and then moved into the hidden folder: two steps, so
    /// that the destination name never disappears. Synced, so that a crash
    /// between them is finished at the next start (`Store::swaps`).
    pub swaps: Vec<(ObjectId, Swap)>,
}

impl PreImages<'_> {
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
            && self.attrs.is_empty()
            && self.dirs.is_empty()
            && self.handles.is_empty()
            && self.places.is_empty()
            && self.aside.is_empty()
            && self.swaps.is_empty()
    }
}

/// A name an object had: `name` in the directory whose file handle is
/// `parent` (empty: the volume's root). Checked before use: the object may
/// have moved since.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Place {
    pub parent: Vec<u8>,
    pub name: Vec<u8>,
}

/// A directory between the two steps of a rename that replaces it
/// (`PreImages::swaps`): its own file handle, which tells it from a later
/// inode of the same number, and where it sits between the steps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Swap {
    pub handle: Vec<u8>,
    pub at: Place,
}

/// What the diff area holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes of distinct chunk data the catalog names.
    pub chunk_bytes: u64,
    pub chunks: u64,
    /// Bytes on disk: packs plus catalog.
    pub disk_bytes: u64,
    pub block_records: u64,
    pub attr_records: u64,
    pub dir_records: u64,
}

/// What one object has had preserved in one epoch, for rebuilding the write
/// side's memory after a restart.
#[derive(Clone, Debug, Default)]
pub struct Preserved {
    pub attr: Option<AttrRecord>,
    pub dir: bool,
    pub blocks: Vec<u64>,
}

pub struct Store {
    dir: PathBuf,
    io: Arc<dyn StoreIo>,
    /// `dir/catalog.db`, for the I/O backend's commit events.
    db: PathBuf,
    catalog: Catalog,
    packs: Arc<Packs>,
    /// Syncs the packs beside the WAL's sync (`make_durable`).
    syncer: PackSyncer,
    cache: ChunkCache,
    durability: Durability,
    punch_holes: bool,
    group: GroupSync,
    /// Catalog commits made so far, so that a sync of the WAL with
    /// nothing new in it is skipped.
    commits: AtomicU64,
    wal: Mutex<WalSync>,
    /// The pack position the last commit recorded as durable (`recover`).
    mark: Mutex<Option<(u32, u64)>>,
    /// Bytes of chunk data the catalog names: the diff area's size for its
    /// limit, kept without a query per write.
    chunk_bytes: AtomicU64,
    /// Held by a compaction step (whose copies are appended before the
    /// catalog names them) and by whoever punches dead bytes: no punch
    /// ever reaches a copy in flight.
    reclaim: Mutex<()>,
    /// One collection (pruning, dropping unnamed chunks) at a time.
    collecting: Mutex<()>,
    /// While a collection looks for unnamed chunks: those `preserve` named
    /// again meanwhile, which it must keep.
    renamed: Mutex<Option<HashSet<ChunkHash>>>,
}

impl Store {
    /// Opens (or creates) the store under `dir`: `dir/catalog.db` and
    /// `dir/packs/`.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store> {
        Store::open_with_io(dir, options, Arc::new(OsIo))
    }

    /// Opens the store with its packs and reserve behind `io` instead of
    /// the operating system's files, for tests and tooling: a recording
    /// backend sees every write, sync and catalog commit in order. The
    /// catalog itself is always SQLite's files under `dir`.
    pub fn open_with_io(dir: &Path, options: StoreOptions, io: Arc<dyn StoreIo>) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let db = dir.join("catalog.db");
        let catalog = Catalog::open(&db)?;
        // A process crash loses nothing; only a power cut can, and with
        // `Process` durability that is no promise to keep.
        if options.durability == Durability::Power {
            recover::drop_lost_chunks(&mut catalog.writer(), &*io, &dir.join("packs"))?;
        }
        // Whatever opening created, migrated or repaired is the first
        // state a recording backend knows of the catalog.
        io.catalog_committed(&db);
        let newest: Option<(u32, u64)> = catalog
            .writer()
            .query_row(
                "SELECT pack, offset + len FROM chunks ORDER BY pack DESC, offset DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .optional()?;
        let packs = Arc::new(Packs::open(io.clone(), &dir.join("packs"), newest)?);
        let syncer = PackSyncer::start(packs.clone());
        let store = Store {
            dir: dir.to_path_buf(),
            io,
            db,
            catalog,
            packs,
            syncer,
            cache: ChunkCache::new(options.cache_bytes),
            chunk_bytes: AtomicU64::new(0),
            durability: options.durability,
            punch_holes: options.punch_holes,
            group: GroupSync::default(),
            commits: AtomicU64::new(0),
            wal: Mutex::new(WalSync::default()),
            mark: Mutex::new(None),
            reclaim: Mutex::new(()),
            collecting: Mutex::new(()),
            renamed: Mutex::new(None),
        };
        if store.durability == Durability::Power {
            // Open may have cut a pack below the mark an earlier run left;
            // what is appended there now is not durable yet.
            *store.mark.lock().unwrap_or_else(|p| p.into_inner()) =
                recover::read_mark(&store.catalog.writer())?;
            store.record_synced(false);
            // The write side takes the records it finds as durable (an
            // aside row leans on them): what an earlier run committed and
            // a crash left unsynced is made so before anything leans on it.
            store.commits.fetch_add(1, Ordering::SeqCst);
            store.sync_wal()?;
        }
        // Finishes what a deletion cut short by a crash left to collect.
        store.collect()?;
        store.restore_reserve();
        store.drop_interrupted_sets()?;
        Ok(store)
    }

    /// Gives the reserve's space back to the filesystem: on a full disk,
    /// deleting a set still needs room for its catalog transaction.
    pub fn release_reserve(&self) {
        reserve::release(&*self.io, &self.dir);
    }

    /// Sets the reserve aside again (best effort: on a full disk it waits
    /// for the next deletion).
    pub fn restore_reserve(&self) {
        reserve::restore(&*self.io, &self.dir);
    }

    /// The bytes an unprivileged writer could still put on the store's
    /// filesystem (statvfs's f_bavail): the diff area treats its disk as
    /// full there, so that pre-images, written as root, never take the
    /// blocks the filesystem keeps for root (`mkfs -m`) on behalf of users
    /// who could not have taken them. Unknown counts as plenty.
    pub fn free_bytes(&self) -> u64 {
        reserve::filesystem_free(&self.dir).unwrap_or(u64::MAX)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> Result<StoreStats> {
        let conn = self.catalog.reader();
        let count = |table: &str| -> Result<u64> {
            Ok(
                conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
                    r.get::<_, i64>(0)
                })? as u64,
            )
        };
        let (chunks, chunk_bytes): (i64, i64) = conn.query_row(
            "SELECT count(*), coalesce(sum(len), 0) FROM chunks",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut catalog_bytes = 0;
        for suffix in ["catalog.db", "catalog.db-wal"] {
            if let Ok(m) = std::fs::metadata(self.dir.join(suffix)) {
                catalog_bytes += m.len();
            }
        }
        Ok(StoreStats {
            chunk_bytes: chunk_bytes as u64,
            chunks: chunks as u64,
            disk_bytes: self.packs.disk_bytes()? + catalog_bytes,
            block_records: count("block_records")?,
            attr_records: count("attr_records")?,
            dir_records: count("dir_records")?,
        })
    }

    /// Bytes of chunk data in the diff area (what its limit counts).
    pub fn diff_bytes(&self) -> u64 {
        self.chunk_bytes.load(Ordering::Relaxed)
    }

    /// Recounts the diff area after chunks were dropped (or a transaction
    /// that added some rolled back).
    fn recount(&self) -> Result<()> {
        let conn = self.catalog.reader();
        let bytes: i64 =
            conn.query_row("SELECT coalesce(sum(len), 0) FROM chunks", [], |r| r.get(0))?;
        self.chunk_bytes.store(bytes as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// How far the packs' durable end moves before the catalog records it.
const MARK_STRIDE: u64 = 16 * 1024 * 1024;

impl Drop for Store {
    /// A store closed in order records exactly how far its packs are
    /// durable: open then takes no chunk of it for a power cut's loss.
    fn drop(&mut self) {
        if self.durability != Durability::Power {
            return;
        }
        let flushed = self.packs.sync().and_then(|()| {
            self.record_synced(true);
            self.sync_wal()
        });
        if let Err(e) = flushed {
            tracing::warn!("flushing the store as it closes: {e}");
        }
    }
}

/// The catalog's WAL and how many commits its last sync covered.
#[derive(Default)]
struct WalSync {
    file: Option<File>,
    synced: u64,
}

fn to_hash(bytes: &[u8]) -> ChunkHash {
    let mut h = [0u8; 32];
    let n = bytes.len().min(32);
    h[..n].copy_from_slice(&bytes[..n]);
    ChunkHash(h)
}

fn origin(word: &str) -> Result<SetOrigin> {
    SetOrigin::parse(word).ok_or_else(|| Error::UnknownOrigin(word.to_string()))
}

fn free_name(tx: &Transaction<'_>, wanted: &str) -> Result<String> {
    let taken = |name: &str| -> Result<bool> {
        Ok(tx
            .prepare_cached("SELECT 1 FROM sets WHERE name = ?1")?
            .exists([name])?)
    };
    if !taken(wanted)? {
        return Ok(wanted.to_string());
    }
    let mut n = 1;
    loop {
        let candidate = format!("{wanted}-{n}");
        if !taken(&candidate)? {
            return Ok(candidate);
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_cache_capacity_evict_and_stay_right() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let capacity = 10_000;
        let store = Store::open(
            tmp.path(),
            StoreOptions {
                cache_bytes: capacity,
                ..StoreOptions::default()
            },
        )
        .expect("open");
        let vol = store.ensure_volume("data").expect("volume").id;
        let set = store
            .commit_set(&NewSet {
                name: "s".into(),
                label: None,
                origin: SetOrigin::Manual,
                created: Timestamp::default(),
                volumes: vec![vol],
            })
            .expect("commit");
        let at = set.volumes[0].epoch;
        let blocks: Vec<Vec<u8>> = (1..=8u8).map(|v| vec![v; 4096]).collect();
        let pre = PreImages {
            blocks: blocks
                .iter()
                .enumerate()
                .map(|(i, b)| (ObjectId(i as u64), 0, &b[..]))
                .collect(),
            ..PreImages::default()
        };
        store.preserve(vol, at, &pre).expect("preserve");
        for round in 0..2 {
            for (i, b) in blocks.iter().enumerate() {
                let got = store
                    .resolve_block(vol, ObjectId(i as u64), 0, at)
                    .expect("resolve")
                    .expect("a record");
                assert_eq!(&got[..], &b[..], "block {i}, round {round}");
                assert!(store.cache.bytes() <= capacity);
            }
        }
        assert_eq!(store.cache.len(), 2, "two 4 KiB chunks fit in 10 000 bytes");
    }
}
