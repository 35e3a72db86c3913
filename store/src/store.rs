//! The `Store` facade: what the filesystem and the daemon ask of the diff
//! area. Preservation (the write side) stores chunks and records in one
//! catalog transaction; resolution (the read side) finds the record with the
//! smallest `hi >= e`, or says "unchanged: read the live object".

mod changes;
mod collect;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use rusqlite::{OptionalExtension, Transaction, params};

use crate::cache::ChunkCache;
use crate::catalog::Catalog;
use crate::durable::{GroupSync, Ticket};
use crate::error::io_err;
use crate::io::{OsIo, StoreIo};
use crate::pack::{ChunkLocation, Packs};
use crate::records::{decode, encode};
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
    pub aside: Vec<ObjectId>,
}

impl PreImages<'_> {
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
            && self.attrs.is_empty()
            && self.dirs.is_empty()
            && self.handles.is_empty()
            && self.places.is_empty()
            && self.aside.is_empty()
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
    packs: Packs,
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
        let packs = Packs::open(io.clone(), &dir.join("packs"), newest)?;
        let store = Store {
            dir: dir.to_path_buf(),
            io,
            db,
            catalog,
            packs,
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
        }
        // Finishes what a deletion cut short by a crash left to collect.
        store.collect()?;
        store.restore_reserve();
        store.drop_interrupted_sets()?;
        Ok(store)
    }

    /// Deletes the sets whose creation was cut off between their commit
    /// and their writers' thaw (see `commit_pending_set`).
    fn drop_interrupted_sets(&self) -> Result<()> {
        let interrupted: Vec<(i64, String)> = {
            let conn = self.catalog.reader();
            let mut stmt = conn.prepare("SELECT id, name FROM sets WHERE pending = 1")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?
        };
        for (id, name) in interrupted {
            self.delete_set(SetId(id))?;
            tracing::warn!(set = %name, id, "deleted a set whose creation was interrupted before its writers thawed");
        }
        Ok(())
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

    /// The volume named `name`, registered at epoch 1 if it is new.
    pub fn ensure_volume(&self, name: &str) -> Result<VolumeInfo> {
        let conn = self.catalog.writer();
        conn.execute(
            "INSERT INTO volumes (name, epoch) VALUES (?1, 1) ON CONFLICT(name) DO NOTHING",
            [name],
        )?;
        self.io.catalog_committed(&self.db);
        let (id, epoch) = conn.query_row(
            "SELECT id, epoch FROM volumes WHERE name = ?1",
            [name],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )?;
        Ok(VolumeInfo {
            id: VolumeId(id),
            name: name.to_string(),
            epoch: Epoch(epoch as u64),
        })
    }

    pub fn volumes(&self) -> Result<Vec<VolumeInfo>> {
        let conn = self.catalog.reader();
        let mut stmt = conn.prepare_cached("SELECT id, name, epoch FROM volumes ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok(VolumeInfo {
                id: VolumeId(r.get(0)?),
                name: r.get(1)?,
                epoch: Epoch(r.get::<_, i64>(2)? as u64),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Closes the current epoch of every volume of the set in one
    /// transaction: the whole cost of a shadow copy set.
    pub fn commit_set(&self, new: &NewSet) -> Result<SetInfo> {
        let (set, ticket) = self.commit_new_set(new, false)?;
        self.make_durable(ticket)?;
        Ok(set)
    }

    /// Like `commit_set`, but the set stays pending until
    /// `record_set_writers` says its writers thawed: a set still pending
    /// when the store is next opened was interrupted and is deleted then,
    /// so that an interrupted set is whole or absent.
    ///
    /// It returns without waiting for a sync: this is the whole of the hold
    /// of live writes, and a pending set need not survive a power cut, since
    /// the next open would delete it anyway. `record_set_writers` makes it
    /// durable. A pre-image kept for it meanwhile is durable only with the
    /// set's row before it in the WAL, so no record outlives its set.
    pub fn commit_pending_set(&self, new: &NewSet) -> Result<SetInfo> {
        Ok(self.commit_new_set(new, true)?.0)
    }

    fn commit_new_set(&self, new: &NewSet, pending: bool) -> Result<(SetInfo, Ticket)> {
        let mut conn = self.catalog.writer();
        let tx = conn.transaction()?;
        let name = free_name(&tx, &new.name)?;
        tx.execute(
            "INSERT INTO sets (name, created_secs, created_nanos, label, pending, origin)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                name,
                new.created.secs,
                new.created.nanos,
                new.label,
                pending,
                new.origin.as_str()
            ],
        )?;
        let id = SetId(tx.last_insert_rowid());
        let mut volumes = Vec::with_capacity(new.volumes.len());
        for volume in &new.volumes {
            let (vname, epoch): (String, i64) = tx
                .query_row(
                    "SELECT name, epoch FROM volumes WHERE id = ?1",
                    [volume.0],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?
                .ok_or_else(|| Error::UnknownVolume(format!("#{}", volume.0)))?;
            tx.execute(
                "INSERT INTO set_volumes (set_id, volume_id, epoch) VALUES (?1, ?2, ?3)",
                params![id.0, volume.0, epoch],
            )?;
            tx.execute(
                "UPDATE volumes SET epoch = epoch + 1 WHERE id = ?1",
                [volume.0],
            )?;
            volumes.push(SetVolume {
                volume: *volume,
                name: vname,
                epoch: Epoch(epoch as u64),
            });
        }
        let ticket = self.commit(tx)?;
        drop(conn);
        let set = SetInfo {
            id,
            name,
            created: new.created,
            label: new.label.clone(),
            origin: new.origin,
            volumes,
        };
        Ok((set, ticket))
    }

    /// Every set, oldest first; a set's volumes in registration order.
    pub fn sets(&self) -> Result<Vec<SetInfo>> {
        let conn = self.catalog.reader();
        // LEFT JOIN: a set of no volumes is still a set, and holds its name.
        let mut stmt = conn.prepare_cached(
            "SELECT s.id, s.name, s.created_secs, s.created_nanos, s.label, v.id, v.name, sv.epoch,
                    s.origin
             FROM sets s LEFT JOIN set_volumes sv ON sv.set_id = s.id
                         LEFT JOIN volumes v ON v.id = sv.volume_id
             ORDER BY s.id, v.id",
        )?;
        let mut rows = stmt.query([])?;
        let mut sets: Vec<SetInfo> = Vec::new();
        while let Some(r) = rows.next()? {
            let id = SetId(r.get(0)?);
            if sets.last().is_none_or(|last| last.id != id) {
                sets.push(SetInfo {
                    id,
                    name: r.get(1)?,
                    created: Timestamp {
                        secs: r.get(2)?,
                        nanos: r.get::<_, i64>(3)? as u32,
                    },
                    label: r.get(4)?,
                    origin: origin(&r.get::<_, String>(8)?)?,
                    volumes: Vec::new(),
                });
            }
            if let Some(volume) = r.get::<_, Option<i64>>(5)? {
                let set = sets.last_mut().expect("pushed above");
                set.volumes.push(SetVolume {
                    volume: VolumeId(volume),
                    name: r.get(6)?,
                    epoch: Epoch(r.get::<_, i64>(7)? as u64),
                });
            }
        }
        Ok(sets)
    }

    /// The name a set wanting `wanted` would get now.
    pub fn free_set_name(&self, wanted: &str) -> Result<String> {
        let mut conn = self.catalog.writer();
        let tx = conn.transaction()?;
        free_name(&tx, wanted)
    }

    /// Records which writers took part in `set` (replacing what was
    /// recorded) and ends its pending state, in one transaction.
    pub fn record_set_writers(&self, set: SetId, writers: &[SetWriterRecord]) -> Result<()> {
        let mut conn = self.catalog.writer();
        let tx = conn.transaction()?;
        if tx.execute("UPDATE sets SET pending = 0 WHERE id = ?1", [set.0])? == 0 {
            return Err(Error::UnknownSet(set.to_string()));
        }
        tx.execute("DELETE FROM set_writers WHERE set_id = ?1", [set.0])?;
        for w in writers {
            tx.execute(
                "INSERT INTO set_writers (set_id, writer, required, status, error, components)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![set.0, w.name, w.required, w.status, w.error, w.components],
            )?;
        }
        // Durable like the commit: a set reported made survives a power cut.
        let ticket = self.commit(tx)?;
        drop(conn);
        self.make_durable(ticket)
    }

    /// The writers of every set, in the order they were recorded.
    pub fn set_writers(&self) -> Result<Vec<(SetId, SetWriterRecord)>> {
        let conn = self.catalog.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT set_id, writer, required, status, error, components
             FROM set_writers ORDER BY set_id, rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                SetId(r.get(0)?),
                SetWriterRecord {
                    name: r.get(1)?,
                    required: r.get(2)?,
                    status: r.get(3)?,
                    error: r.get(4)?,
                    components: r.get(5)?,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The set whose name or id is `key`.
    pub fn find_set(&self, key: &str) -> Result<SetInfo> {
        self.sets()?
            .into_iter()
            .find(|s| s.name == key || s.id.0.to_string() == key)
            .ok_or_else(|| Error::UnknownSet(key.to_string()))
    }

    /// Stores `pre` as the state at the end of epoch `hi`, in one
    /// transaction: whatever of it a remaining set of the volume needs, so
    /// nothing when the volume has no set left. When this returns, a later
    /// read of a snapshot at an epoch `<= hi` resolves to these records (or
    /// to an older record of the same state), and they survive what the
    /// store's `Durability` says (by default a power cut: the caller may
    /// overwrite the live blocks now).
    pub fn preserve(&self, volume: VolumeId, hi: Epoch, pre: &PreImages<'_>) -> Result<()> {
        if pre.is_empty() {
            return Ok(());
        }
        let mut conn = self.catalog.writer();
        let tx = conn.transaction()?;
        let v = volume.0;
        let hi = hi.0 as i64;
        let newest: Option<i64> = tx
            .prepare_cached("SELECT max(epoch) FROM set_volumes WHERE volume_id = ?1")?
            .query_row([v], |r| r.get(0))?;
        // The last set of the volume went while the caller gathered: no
        // set needs anything (what it moved aside is freed later).
        let Some(newest) = newest else {
            return Ok(());
        };
        // A record serves the epochs after its key's previous record, up to
        // its hi. A key already recorded with a hi in [newest, hi) (the
        // newer sets were deleted) serves every remaining set with that
        // record; one more would serve none and only wait for pruning. With
        // the newest set at hi this is the plain "first in this epoch" check.
        let from = newest.min(hi);
        for (object, block, data) in &pre.blocks {
            if tx
                .prepare_cached(
                    "SELECT 1 FROM block_records WHERE volume_id = ?1 AND object = ?2 AND block = ?3 AND hi BETWEEN ?4 AND ?5",
                )?
                .exists(params![v, object.0 as i64, *block as i64, from, hi])?
            {
                continue;
            }
            let hash = self.put_chunk(&tx, data)?;
            tx.prepare_cached(
                "INSERT OR IGNORE INTO block_records (volume_id, object, block, hi, hash) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![v, object.0 as i64, *block as i64, hi, &hash.0[..]])?;
        }
        for (object, attrs) in &pre.attrs {
            if tx
                .prepare_cached(
                    "SELECT 1 FROM attr_records WHERE volume_id = ?1 AND object = ?2 AND hi BETWEEN ?3 AND ?4",
                )?
                .exists(params![v, object.0 as i64, from, hi])?
            {
                continue;
            }
            tx.prepare_cached(
                "INSERT OR IGNORE INTO attr_records (volume_id, object, hi, attrs) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![v, object.0 as i64, hi, encode(attrs)?])?;
        }
        for (object, entries) in &pre.dirs {
            if tx
                .prepare_cached(
                    "SELECT 1 FROM dir_records WHERE volume_id = ?1 AND object = ?2 AND hi BETWEEN ?3 AND ?4",
                )?
                .exists(params![v, object.0 as i64, from, hi])?
            {
                continue;
            }
            let hash = self.put_chunk(&tx, &encode(entries)?)?;
            tx.prepare_cached(
                "INSERT OR IGNORE INTO dir_records (volume_id, object, hi, entries) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![v, object.0 as i64, hi, &hash.0[..]])?;
        }
        for object in &pre.aside {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO aside (volume_id, object, since_epoch) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![v, object.0 as i64, hi + 1])?;
        }
        // A handle finds an object a set shows under a name it no longer
        // has; only an object with a record or an aside row can be one.
        for (object, handle) in &pre.handles {
            tx.prepare_cached(&format!(
                "INSERT OR IGNORE INTO handles (volume_id, object, handle)
                 SELECT ?1, ?2, ?3 WHERE {}",
                collect::HAS_STATE
            ))?
            .execute(params![v, object.0 as i64, handle])?;
        }
        // Like a handle, a place is only asked for about an object that has
        // a record; the newest place wins.
        for (object, place) in &pre.places {
            tx.prepare_cached(&format!(
                "INSERT OR REPLACE INTO places (volume_id, object, parent, name)
                 SELECT ?1, ?2, ?3, ?4 WHERE {}",
                collect::HAS_STATE
            ))?
            .execute(params![v, object.0 as i64, place.parent, place.name])?;
        }
        let ticket = self.commit(tx)?;
        drop(conn);
        self.make_durable(ticket)
    }

    /// Commits `tx` and tells the I/O backend, while the caller still
    /// holds the writer; the ticket makes the commit durable.
    fn commit(&self, tx: Transaction<'_>) -> Result<Ticket> {
        tx.commit()?;
        self.io.catalog_committed(&self.db);
        self.commits.fetch_add(1, Ordering::SeqCst);
        Ok(self.group.ticket())
    }

    /// Waits until a sync begun after the change behind `ticket` (appends,
    /// a commit) has completed; concurrent writers share one. A sync
    /// flushes the packs and the catalog's WAL at the same time (a write
    /// that keeps a pre-image waits for the slower of the two, not for
    /// both in turn), then records how far the packs are durable when that
    /// moved far enough; the next sync makes that record durable.
    ///
    /// The WAL may thus reach the disk before the pack bytes its rows name,
    /// as it may anyway when the kernel writes it back early: open checks
    /// every chunk past the recorded mark (recover.rs), which never runs
    /// ahead of the packs.
    fn make_durable(&self, ticket: Ticket) -> Result<()> {
        if self.durability == Durability::Process {
            return Ok(());
        }
        self.group.wait(ticket, || {
            let (packs, wal) = std::thread::scope(|scope| {
                let packs = scope.spawn(|| self.packs.sync());
                let wal = self.sync_wal();
                (packs.join(), wal)
            });
            packs.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
            wal?;
            self.record_synced(false);
            Ok(())
        })
    }

    /// Writes how far the packs are durable into the catalog (`recover`),
    /// once that moved `MARK_STRIDE` past the mark, to another pack or
    /// below it (or `always`). A mark that lags is still right, open just
    /// checks more chunks after a crash; one per sync would cost a WAL page
    /// per sync, which a small full disk feels. Best effort for the same
    /// reason.
    fn record_synced(&self, always: bool) {
        let synced = self.packs.synced();
        let mut mark = self.mark.lock().unwrap_or_else(|p| p.into_inner());
        let near = mark.is_some_and(|(pack, end)| {
            pack == synced.0 && end <= synced.1 && synced.1 - end < MARK_STRIDE
        });
        if !always && near {
            return;
        }
        let mut conn = self.catalog.writer();
        let written = conn.transaction().map_err(Error::from).and_then(|tx| {
            recover::write_mark(&tx, synced)?;
            tx.commit()?;
            Ok(())
        });
        match written {
            Ok(()) => {
                *mark = Some(synced);
                self.io.catalog_committed(&self.db);
                self.commits.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => tracing::debug!("recording how far the packs are synced: {e}"),
        }
    }

    /// Makes every catalog commit made so far durable.
    fn sync_wal(&self) -> Result<()> {
        let made = self.commits.load(Ordering::SeqCst);
        let mut wal = self.wal.lock().unwrap_or_else(|p| p.into_inner());
        if made <= wal.synced {
            return Ok(());
        }
        if wal.file.is_none() {
            // SQLite creates the WAL with its first write and keeps the
            // same file while connections are open. Its name must be
            // durable too, and SQLite syncs the directory only when it
            // syncs the WAL itself (at a checkpoint).
            wal.file = File::open(self.dir.join("catalog.db-wal")).ok();
            if wal.file.is_some() {
                self.io
                    .sync_dir(&self.dir)
                    .map_err(io_err(format!("syncing {}", self.dir.display())))?;
            }
        }
        if let Some(f) = &wal.file {
            self.io
                .sync_catalog(f)
                .map_err(io_err("syncing the catalog's WAL"))?;
        }
        wal.synced = made;
        Ok(())
    }

    /// What `object` had preserved with exactly `hi`: the write side's
    /// "already preserved in this epoch" after a restart.
    pub fn preserved(&self, volume: VolumeId, object: ObjectId, hi: Epoch) -> Result<Preserved> {
        let conn = self.catalog.reader();
        let args = params![volume.0, object.0 as i64, hi.0 as i64];
        let attr = conn
            .prepare_cached(
                "SELECT attrs FROM attr_records WHERE volume_id = ?1 AND object = ?2 AND hi = ?3",
            )?
            .query_row(args, |r| r.get::<_, Vec<u8>>(0))
            .optional()?
            .map(|b| decode(&b))
            .transpose()?;
        let dir = conn
            .prepare_cached(
                "SELECT 1 FROM dir_records WHERE volume_id = ?1 AND object = ?2 AND hi = ?3",
            )?
            .exists(args)?;
        let blocks = conn
            .prepare_cached(
                "SELECT block FROM block_records WHERE volume_id = ?1 AND object = ?2 AND hi = ?3",
            )?
            .query_map(args, |r| r.get::<_, i64>(0).map(|b| b as u64))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Preserved { attr, dir, blocks })
    }

    /// Block `block` of `object` as of epoch `at`, or `None`: unchanged
    /// since, read the live object.
    pub fn resolve_block(
        &self,
        volume: VolumeId,
        object: ObjectId,
        block: u64,
        at: Epoch,
    ) -> Result<Option<Arc<[u8]>>> {
        let hash: Option<Vec<u8>> = {
            let conn = self.catalog.reader();
            conn.prepare_cached(
                "SELECT hash FROM block_records WHERE volume_id = ?1 AND object = ?2 AND block = ?3 AND hi >= ?4
                 ORDER BY hi LIMIT 1",
            )?
            .query_row(params![volume.0, object.0 as i64, block as i64, at.0 as i64], |r| r.get(0))
            .optional()?
        };
        hash.map(|h| self.chunk(&to_hash(&h))).transpose()
    }

    /// The blocks `first..=last` of `object` as of epoch `at` that have a
    /// pre-image, in block order; the others are unchanged since: read the
    /// live object. One query for a whole read request.
    pub fn resolve_blocks(
        &self,
        volume: VolumeId,
        object: ObjectId,
        first: u64,
        last: u64,
        at: Epoch,
    ) -> Result<Vec<(u64, Arc<[u8]>)>> {
        let hashes: Vec<(u64, Vec<u8>)> = {
            let conn = self.catalog.reader();
            let mut stmt = conn.prepare_cached(
                "SELECT block, hash FROM block_records
                 WHERE volume_id = ?1 AND object = ?2 AND block >= ?3 AND block <= ?4 AND hi >= ?5
                 ORDER BY block, hi",
            )?;
            let rows = stmt.query_map(
                params![
                    volume.0,
                    object.0 as i64,
                    first as i64,
                    last as i64,
                    at.0 as i64
                ],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )?;
            let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
            for row in rows {
                let (block, hash) = row?;
                // The smallest `hi` of each block comes first.
                if out.last().is_none_or(|(b, _)| *b != block) {
                    out.push((block, hash));
                }
            }
            out
        };
        hashes
            .into_iter()
            .map(|(block, h)| Ok((block, self.chunk(&to_hash(&h))?)))
            .collect()
    }

    /// `object`'s metadata as of epoch `at`, or `None`: unchanged since.
    pub fn resolve_attr(
        &self,
        volume: VolumeId,
        object: ObjectId,
        at: Epoch,
    ) -> Result<Option<AttrRecord>> {
        let conn = self.catalog.reader();
        let bytes: Option<Vec<u8>> = conn
            .prepare_cached(
                "SELECT attrs FROM attr_records WHERE volume_id = ?1 AND object = ?2 AND hi >= ?3 ORDER BY hi LIMIT 1",
            )?
            .query_row(params![volume.0, object.0 as i64, at.0 as i64], |r| r.get(0))
            .optional()?;
        bytes.map(|b| decode(&b)).transpose()
    }

    /// The metadata as of epoch `at` of those of `objects` that have a
    /// pre-image; the others are unchanged since. A few queries for a whole
    /// directory listing instead of one per entry.
    pub fn resolve_attrs(
        &self,
        volume: VolumeId,
        objects: &[ObjectId],
        at: Epoch,
    ) -> Result<HashMap<ObjectId, AttrRecord>> {
        // One statement of a fixed width stays in the statement cache; a
        // short last batch repeats its last object.
        const WIDTH: usize = 64;
        static SQL: LazyLock<String> = LazyLock::new(|| {
            let marks: Vec<String> = (0..WIDTH).map(|i| format!("?{}", i + 3)).collect();
            format!(
                "SELECT object, attrs FROM attr_records
                 WHERE volume_id = ?1 AND hi >= ?2 AND object IN ({})
                 ORDER BY object, hi",
                marks.join(", ")
            )
        });
        let mut found: HashMap<ObjectId, Vec<u8>> = HashMap::new();
        {
            let conn = self.catalog.reader();
            let mut stmt = conn.prepare_cached(&SQL)?;
            for batch in objects.chunks(WIDTH) {
                let mut args: Vec<i64> = vec![volume.0, at.0 as i64];
                args.extend((0..WIDTH).map(|i| batch[i.min(batch.len() - 1)].0 as i64));
                let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
                    Ok((ObjectId(r.get::<_, i64>(0)? as u64), r.get(1)?))
                })?;
                for row in rows {
                    let (object, bytes) = row?;
                    // The smallest `hi` of each object comes first.
                    found.entry(object).or_insert(bytes);
                }
            }
        }
        found
            .into_iter()
            .map(|(object, bytes)| Ok((object, decode(&bytes)?)))
            .collect()
    }

    /// The directory `object`'s entries as of epoch `at`, or `None`:
    /// unchanged since.
    pub fn resolve_dir(
        &self,
        volume: VolumeId,
        object: ObjectId,
        at: Epoch,
    ) -> Result<Option<Vec<DirEntry>>> {
        let hash: Option<Vec<u8>> = {
            let conn = self.catalog.reader();
            conn.prepare_cached(
                "SELECT entries FROM dir_records WHERE volume_id = ?1 AND object = ?2 AND hi >= ?3 ORDER BY hi LIMIT 1",
            )?
            .query_row(params![volume.0, object.0 as i64, at.0 as i64], |r| r.get(0))
            .optional()?
        };
        match hash {
            Some(h) => Ok(Some(decode(&self.chunk(&to_hash(&h))?)?)),
            None => Ok(None),
        }
    }

    /// The file handle recorded for `object`, if any.
    pub fn handle(&self, volume: VolumeId, object: ObjectId) -> Result<Option<Vec<u8>>> {
        let conn = self.catalog.reader();
        Ok(conn
            .prepare_cached("SELECT handle FROM handles WHERE volume_id = ?1 AND object = ?2")?
            .query_row(params![volume.0, object.0 as i64], |r| r.get(0))
            .optional()?)
    }

    /// Aside objects of `volume` that no remaining set can reach: every set
    /// of the volume is younger than the epoch the object was moved in (or
    /// there is none). Their inodes may be freed.
    pub fn unreachable_aside(&self, volume: VolumeId) -> Result<Vec<ObjectId>> {
        let conn = self.catalog.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT a.object FROM aside a WHERE a.volume_id = ?1 AND NOT EXISTS (
                 SELECT 1 FROM set_volumes sv WHERE sv.volume_id = ?1 AND sv.epoch < a.since_epoch)",
        )?;
        let rows = stmt.query_map([volume.0], |r| Ok(ObjectId(r.get::<_, i64>(0)? as u64)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every object of `volume` with an aside row.
    pub fn aside_objects(&self, volume: VolumeId) -> Result<Vec<ObjectId>> {
        let conn = self.catalog.reader();
        let mut stmt = conn.prepare_cached("SELECT object FROM aside WHERE volume_id = ?1")?;
        let rows = stmt.query_map([volume.0], |r| Ok(ObjectId(r.get::<_, i64>(0)? as u64)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Whether `object` has an aside row: a set may need its inode.
    pub fn is_aside(&self, volume: VolumeId, object: ObjectId) -> Result<bool> {
        let conn = self.catalog.reader();
        Ok(conn
            .prepare_cached("SELECT 1 FROM aside WHERE volume_id = ?1 AND object = ?2")?
            .exists(params![volume.0, object.0 as i64])?)
    }

    /// The inode numbers live inodes present in place of aside ones: those
    /// aside inodes must keep existing, or the number could be handed out
    /// twice.
    pub fn presented(&self, volume: VolumeId) -> Result<Vec<u64>> {
        Ok(self.aliases(volume)?.into_iter().map(|(_, p)| p).collect())
    }

    /// Records that the live inode `object` presents itself with the inode
    /// number `presented`: it took the place of an inode moved aside.
    pub fn set_alias(&self, volume: VolumeId, object: ObjectId, presented: u64) -> Result<()> {
        let conn = self.catalog.writer();
        conn.execute(
            "INSERT OR REPLACE INTO aliases (volume_id, object, presented) VALUES (?1, ?2, ?3)",
            params![volume.0, object.0 as i64, presented as i64],
        )?;
        self.io.catalog_committed(&self.db);
        Ok(())
    }

    pub fn drop_alias(&self, volume: VolumeId, object: ObjectId) -> Result<()> {
        let conn = self.catalog.writer();
        conn.execute(
            "DELETE FROM aliases WHERE volume_id = ?1 AND object = ?2",
            params![volume.0, object.0 as i64],
        )?;
        self.io.catalog_committed(&self.db);
        Ok(())
    }

    /// Every alias of a volume: (live inode, presented inode number).
    pub fn aliases(&self, volume: VolumeId) -> Result<Vec<(ObjectId, u64)>> {
        let conn = self.catalog.reader();
        let mut stmt =
            conn.prepare_cached("SELECT object, presented FROM aliases WHERE volume_id = ?1")?;
        let rows = stmt.query_map([volume.0], |r| {
            Ok((
                ObjectId(r.get::<_, i64>(0)? as u64),
                r.get::<_, i64>(1)? as u64,
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
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

    fn put_chunk(&self, tx: &Transaction<'_>, data: &[u8]) -> Result<ChunkHash> {
        let hash = ChunkHash::of(data);
        let known = tx
            .prepare_cached("SELECT 1 FROM chunks WHERE hash = ?1")?
            .exists([&hash.0[..]])?;
        if !known {
            let loc = self.packs.append(&hash, data)?;
            tx.prepare_cached(
                "INSERT INTO chunks (hash, pack, offset, len) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![&hash.0[..], loc.pack, loc.offset as i64, loc.len])?;
            self.chunk_bytes
                .fetch_add(u64::from(loc.len), Ordering::Relaxed);
        } else {
            self.named_again(hash);
        }
        Ok(hash)
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

    fn chunk(&self, hash: &ChunkHash) -> Result<Arc<[u8]>> {
        if let Some(data) = self.cache.get(hash) {
            return Ok(data);
        }
        let loc = {
            let conn = self.catalog.reader();
            conn.prepare_cached("SELECT pack, offset, len FROM chunks WHERE hash = ?1")?
                .query_row([&hash.0[..]], |r| {
                    Ok(ChunkLocation {
                        pack: r.get(0)?,
                        offset: r.get::<_, i64>(1)? as u64,
                        len: r.get(2)?,
                    })
                })
                .optional()?
                .ok_or(Error::MissingChunk(*hash))?
        };
        let data = match self.packs.read(hash, loc) {
            Ok(data) => data,
            // Compaction may have moved the chunk (and removed its old pack)
            // between the look-up and the read: look it up once more.
            Err(first) => match self.locate(hash)? {
                Some(now) if now != loc => self.packs.read(hash, now)?,
                _ => return Err(first),
            },
        };
        let data: Arc<[u8]> = Arc::from(data);
        self.cache.insert(*hash, data.clone());
        Ok(data)
    }

    fn locate(&self, hash: &ChunkHash) -> Result<Option<ChunkLocation>> {
        let conn = self.catalog.reader();
        Ok(conn
            .prepare_cached("SELECT pack, offset, len FROM chunks WHERE hash = ?1")?
            .query_row([&hash.0[..]], |r| {
                Ok(ChunkLocation {
                    pack: r.get(0)?,
                    offset: r.get::<_, i64>(1)? as u64,
                    len: r.get(2)?,
                })
            })
            .optional()?)
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
