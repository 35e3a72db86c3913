//! The write side: storing a mutation's pre-images (chunks, then records
//! in one catalog transaction) and making them as durable as the store's
//! `Durability` says before the caller may apply its change; and telling
//! the write side what an epoch already holds after a restart.

use std::sync::atomic::Ordering;

use rusqlite::{OptionalExtension, Transaction, params};

use super::*;

impl Store {
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
        // Hashed before the catalog's writer is taken: the other writers'
        // pre-images wait for the transaction, not for this one's hashing.
        let hashes: Vec<ChunkHash> = pre
            .blocks
            .iter()
            .map(|(_, _, data)| ChunkHash::of(data))
            .collect();
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
        // The chunks new to the catalog, appended together after the loop:
        // a window of a sequential overwrite is one write to the pack.
        let mut fresh: Vec<(ChunkHash, &[u8])> = Vec::new();
        let mut fresh_hashes = HashSet::new();
        for ((object, block, data), hash) in pre.blocks.iter().zip(&hashes) {
            if tx
                .prepare_cached(
                    "SELECT 1 FROM block_records WHERE volume_id = ?1 AND object = ?2 AND block = ?3 AND hi BETWEEN ?4 AND ?5",
                )?
                .exists(params![v, object.0 as i64, *block as i64, from, hi])?
            {
                continue;
            }
            if !fresh_hashes.contains(hash) {
                if self.chunk_known(&tx, hash)? {
                    self.named_again(*hash);
                } else {
                    fresh_hashes.insert(*hash);
                    fresh.push((*hash, data));
                }
            }
            tx.prepare_cached(
                "INSERT OR IGNORE INTO block_records (volume_id, object, block, hi, hash) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![v, object.0 as i64, *block as i64, hi, &hash.0[..]])?;
        }
        self.put_new_chunks(&tx, &fresh)?;
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
        for (object, swap) in &pre.swaps {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO swaps (volume_id, object, handle, parent, name) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![v, object.0 as i64, swap.handle, swap.at.parent, swap.at.name])?;
        }
        let ticket = self.commit(tx)?;
        drop(conn);
        if aside_only(pre) {
            // Rebuilt after a power cut from what is durable already (see
            // `PreImages::aside`): an unlink after a set waits for no sync.
            return Ok(());
        }
        self.make_durable(ticket)
    }

    /// Commits `tx` and tells the I/O backend, while the caller still
    /// holds the writer; the ticket makes the commit durable.
    pub(super) fn commit(&self, tx: Transaction<'_>) -> Result<Ticket> {
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
    pub(super) fn make_durable(&self, ticket: Ticket) -> Result<()> {
        if self.durability == Durability::Process {
            return Ok(());
        }
        self.group.wait(ticket, || {
            let packs = self.syncer.begin();
            let wal = self.sync_wal();
            packs.finish()?;
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
    pub(super) fn record_synced(&self, always: bool) {
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
    pub(super) fn sync_wal(&self) -> Result<()> {
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

    pub(super) fn put_chunk(&self, tx: &Transaction<'_>, data: &[u8]) -> Result<ChunkHash> {
        let hash = ChunkHash::of(data);
        if self.chunk_known(tx, &hash)? {
            self.named_again(hash);
        } else {
            self.put_new_chunks(tx, &[(hash, data)])?;
        }
        Ok(hash)
    }

    fn chunk_known(&self, tx: &Transaction<'_>, hash: &ChunkHash) -> Result<bool> {
        Ok(tx
            .prepare_cached("SELECT 1 FROM chunks WHERE hash = ?1")?
            .exists([&hash.0[..]])?)
    }

    /// Appends chunks the catalog does not name yet (distinct) in one go,
    /// and names them in `tx`.
    fn put_new_chunks(&self, tx: &Transaction<'_>, chunks: &[(ChunkHash, &[u8])]) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        let locations = self.packs.append_all(chunks)?;
        for ((hash, _), loc) in chunks.iter().zip(locations) {
            tx.prepare_cached(
                "INSERT INTO chunks (hash, pack, offset, len) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![&hash.0[..], loc.pack, loc.offset as i64, loc.len])?;
            self.chunk_bytes
                .fetch_add(u64::from(loc.len), Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Whether `pre` holds nothing but aside rows.
fn aside_only(pre: &PreImages<'_>) -> bool {
    !pre.aside.is_empty()
        && pre.blocks.is_empty()
        && pre.attrs.is_empty()
        && pre.dirs.is_empty()
        && pre.handles.is_empty()
        && pre.places.is_empty()
        && pre.swaps.is_empty()
}
