//! What deleting frees, and how without stalling live writes: a deleted
//! set's records that no remaining set needs, the handles, places and chunks they
//! leave unnamed, the pack bytes of those chunks, the records of freed
//! aside objects, and whole packs. Every step is a short transaction (live
//! writes need the catalog's writer for their pre-images and wait for one
//! step at most) and the punching happens outside the catalog's lock, a
//! bounded range at a time. Never drops anything a remaining set resolves
//! to: a record no remaining set's epoch falls in the range of is never the
//! smallest `hi >= e` of a remaining set at `e`, so removing such records in
//! any order and any number of steps keeps every resolution as it was.

use std::collections::HashSet;

use rusqlite::{OptionalExtension, params, params_from_iter};

use super::{Store, to_hash};
use crate::durable::Ticket;
use crate::pack::{CHUNK_HEADER, ChunkLocation, MAGIC};
use crate::reserve;
use crate::{ChunkHash, Error, ObjectId, Result, SetId, VolumeId};

/// Rows of a table one pruning step looks at.
const PRUNE_BATCH: usize = 2048;
/// Chunks one step drops. A step deletes from two B-trees (by hash, by
/// location) whose orders differ, so it dirties about a page of one of them
/// per chunk unless its chunks share pages; every dirty page is WAL a live
/// write's sync may have to flush. Dropping 16384 of 20480 chunks wrote
/// 37 MiB with 512 a step, 23 MiB with 1024, 10 MiB with 4096, while a step
/// holds the writer about 1 ms per 512 chunks.
const CHUNK_BATCH: usize = 1024;
/// Chunks dropped between two syncs (and punches): a GiB of 64 KiB blocks.
const PUNCH_AFTER: usize = 16384;
/// Chunks one compaction step copies.
const COPY_BATCH: i64 = 64;

/// SQL: the object `?2` of volume `?1` has a record or an aside row.
pub(super) const HAS_STATE: &str =
    "(EXISTS (SELECT 1 FROM attr_records WHERE volume_id = ?1 AND object = ?2)
     OR EXISTS (SELECT 1 FROM block_records WHERE volume_id = ?1 AND object = ?2)
     OR EXISTS (SELECT 1 FROM dir_records WHERE volume_id = ?1 AND object = ?2)
     OR EXISTS (SELECT 1 FROM aside WHERE volume_id = ?1 AND object = ?2))";

/// The `meta` key marking a volume whose records a deletion left to prune.
fn prune_key(volume: i64) -> String {
    format!("prune:{volume}")
}

impl Store {
    /// Deletes a set and everything no remaining set needs any more:
    /// `remove_set`, then `collect`. Returns the number of records dropped.
    pub fn delete_set(&self, id: SetId) -> Result<u64> {
        self.remove_set(id)?;
        self.collect()
    }

    /// Deletes a set in one short transaction: from its commit nothing
    /// resolves to what only this set needed, and its name is free. Its
    /// volumes are marked in `meta` for `collect`, which a crash leaves
    /// for the next `open`.
    pub fn remove_set(&self, id: SetId) -> Result<()> {
        let mut conn = self.catalog.writer();
        let tx = conn.transaction()?;
        let volumes: Vec<i64> = {
            let mut stmt = tx.prepare("SELECT volume_id FROM set_volumes WHERE set_id = ?1")?;
            stmt.query_map([id.0], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        if tx.execute("DELETE FROM sets WHERE id = ?1", [id.0])? == 0 {
            return Err(Error::UnknownSet(id.to_string()));
        }
        for volume in volumes {
            // A count, so that a collection already running (which saw the
            // mark before this deletion) does not clear it.
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, 1)
                 ON CONFLICT(key) DO UPDATE SET value = value + 1",
                [prune_key(volume)],
            )?;
        }
        let ticket = self.commit(tx)?;
        drop(conn);
        self.make_durable(ticket)
    }

    /// Drops, a short step at a time, what the deletions marked in `meta`
    /// left unneeded: the records of those volumes no remaining set needs,
    /// the handles of objects left with neither record nor aside row, and
    /// the chunks no record names, whose pack bytes are then punched out.
    /// Returns the number of records dropped.
    pub fn collect(&self) -> Result<u64> {
        let _one = lock(&self.collecting);
        let marks: Vec<(String, i64)> = {
            let conn = self.catalog.reader();
            let mut stmt =
                conn.prepare_cached("SELECT key, value FROM meta WHERE key LIKE 'prune:%'")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?
        };
        let mut dropped = 0;
        for (key, _) in &marks {
            let Some(volume) = key.strip_prefix("prune:").and_then(|v| v.parse().ok()) else {
                continue;
            };
            dropped += self.prune_volume(volume)?;
        }
        if !marks.is_empty() {
            self.drop_unnamed_chunks()?;
            let conn = self.catalog.writer();
            for (key, count) in &marks {
                conn.prepare_cached("DELETE FROM meta WHERE key = ?1 AND value = ?2")?
                    .execute(params![key, count])?;
            }
        }
        self.recount()?;
        Ok(dropped)
    }

    /// Drops the records of `volume` that serve no remaining set, and then
    /// the handles of objects left with none. A record with `hi = h` whose
    /// predecessor (same object and key) has `hi = p` serves the epochs
    /// `(p, h]`; it stays only if a set of the volume has such an epoch.
    fn prune_volume(&self, volume: i64) -> Result<u64> {
        let mut dropped = 0;
        for (table, key) in [
            ("block_records", &["object", "block"][..]),
            ("attr_records", &["object"][..]),
            ("dir_records", &["object"][..]),
        ] {
            let cols = key.join(", ");
            let sql = format!(
                "DELETE FROM {table} WHERE volume_id = ?1 AND ({cols}, hi) IN (
                    SELECT {cols}, hi FROM (
                        SELECT {cols}, hi, lag(hi) OVER (PARTITION BY {cols} ORDER BY hi) AS prev
                        FROM {table} WHERE volume_id = ?1 {{range}})
                    WHERE NOT EXISTS (
                        SELECT 1 FROM set_volumes sv
                        WHERE sv.volume_id = ?1 AND sv.epoch <= hi AND (prev IS NULL OR sv.epoch > prev)))"
            );
            dropped += self.in_batches(table, key, volume, &sql)?;
        }
        // An object left with no record and no aside row is never looked
        // up by handle or named by its place again.
        for table in ["handles", "places"] {
            self.in_batches(
                table,
                &["object"],
                volume,
                &format!(
                    "DELETE FROM {table} AS h WHERE h.volume_id = ?1
                       AND h.object IN (SELECT object FROM {table} WHERE volume_id = ?1 {{range}})
                       AND NOT {}",
                    HAS_STATE.replace("?2", "h.object")
                ),
            )?;
        }
        Ok(dropped)
    }

    /// Runs `sql` over the rows of `table` of `volume` a range of keys at a
    /// time (about `PRUNE_BATCH` rows, every row of a key in the same
    /// range), each range in its own transaction. `sql` names the volume
    /// `?1` and says `{range}` where the range's condition goes. Returns the
    /// rows changed.
    fn in_batches(&self, table: &str, key: &[&str], volume: i64, sql: &str) -> Result<u64> {
        let cols = key.join(", ");
        let n = key.len();
        let marks = |from: usize| -> String {
            (from..from + n)
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut changed = 0;
        let mut after: Option<Vec<i64>> = None;
        loop {
            let lower = match after {
                Some(_) => format!("AND ({cols}) > ({})", marks(2)),
                None => String::new(),
            };
            let mut args: Vec<i64> = vec![volume];
            args.extend(after.iter().flatten());
            let mut conn = self.catalog.writer();
            let tx = conn.transaction()?;
            // The key of the range's last row, or none: to the end.
            let last: Option<Vec<i64>> = tx
                .prepare_cached(&format!(
                    "SELECT {cols} FROM {table} WHERE volume_id = ?1 {lower}
                     ORDER BY {cols} LIMIT 1 OFFSET {}",
                    PRUNE_BATCH - 1
                ))?
                .query_row(params_from_iter(&args), |r| {
                    (0..n).map(|i| r.get::<_, i64>(i)).collect()
                })
                .optional()?;
            let upper = match last {
                Some(_) => format!("AND ({cols}) <= ({})", marks(args.len() + 1)),
                None => String::new(),
            };
            args.extend(last.iter().flatten());
            let range = format!("{lower} {upper}");
            changed += tx
                .prepare_cached(&sql.replace("{range}", &range))?
                .execute(params_from_iter(&args))? as u64;
            self.commit(tx)?;
            drop(conn);
            self.catalog.let_writers_in();
            match last {
                Some(key) => after = Some(key),
                None => return Ok(changed),
            }
        }
    }

    /// Drops the chunks no record names, a batch per transaction, and
    /// punches them out of the packs once that is durable: one sync for up
    /// to `PUNCH_AFTER` chunks, not one per batch, since every sync of the
    /// catalog is one a live write's own sync may have to wait behind. The
    /// chunks are found on a read snapshot, without holding the catalog's
    /// writer; one that `preserve` names again meanwhile (a new pre-image
    /// with the same content) is noted in `renamed` and kept.
    fn drop_unnamed_chunks(&self) -> Result<()> {
        self.note_renamed(true);
        let result = self.unnamed_chunks().and_then(|candidates| {
            for group in candidates.chunks(PUNCH_AFTER) {
                let mut dropped = Vec::with_capacity(group.len());
                let mut ticket = None;
                for batch in group.chunks(CHUNK_BATCH) {
                    ticket = Some(self.drop_chunks(batch, &mut dropped)?);
                    self.catalog.let_writers_in();
                }
                if let Some(ticket) = ticket {
                    self.punch_when_durable(ticket, &dropped)?;
                }
            }
            Ok(())
        });
        self.note_renamed(false);
        result
    }

    /// Starts or stops noting the chunks transactions name again. Under the
    /// writer, so that every transaction committing after a snapshot taken
    /// once this returns is noted.
    fn note_renamed(&self, on: bool) {
        let _writer = self.catalog.writer();
        *lock(&self.renamed) = on.then(HashSet::new);
    }

    /// The chunks no record names, as a read snapshot sees them.
    fn unnamed_chunks(&self) -> Result<Vec<ChunkHash>> {
        let conn = self.catalog.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT hash FROM chunks WHERE hash NOT IN (SELECT hash FROM block_records)
                                       AND hash NOT IN (SELECT entries FROM dir_records)",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        Ok(rows
            .map(|h| h.map(|h| to_hash(&h)))
            .collect::<rusqlite::Result<_>>()?)
    }

    /// Drops the chunks of `batch` that were not named again since they
    /// were found unnamed, in one transaction; adds where they lay to
    /// `dropped`. Returns the transaction's ticket: punch only once it is
    /// durable.
    fn drop_chunks(&self, batch: &[ChunkHash], dropped: &mut Vec<ChunkLocation>) -> Result<Ticket> {
        let mut conn = self.catalog.writer();
        let tx = conn.transaction()?;
        {
            let renamed = lock(&self.renamed);
            for hash in batch {
                if renamed.as_ref().is_some_and(|r| r.contains(hash)) {
                    continue;
                }
                let at = tx
                    .prepare_cached(
                        "DELETE FROM chunks WHERE hash = ?1 RETURNING pack, offset, len",
                    )?
                    .query_row([&hash.0[..]], location)
                    .optional()?;
                dropped.extend(at);
            }
        }
        self.commit(tx)
    }

    /// Notes that a transaction now names `hash` again, for a collection
    /// looking for unnamed chunks. Called under the catalog's writer.
    pub(super) fn named_again(&self, hash: ChunkHash) {
        if let Some(renamed) = lock(&self.renamed).as_mut() {
            renamed.insert(hash);
        }
    }

    /// Waits until the transaction behind `ticket`, which dropped the
    /// chunks at `dropped`, is durable; then punches their bytes out of the
    /// packs, with the dead bytes around them. Only then: a crash before
    /// leaves dead bytes for compaction, never a hole under a chunk a
    /// durable row names.
    fn punch_when_durable(&self, ticket: Ticket, dropped: &[ChunkLocation]) -> Result<()> {
        self.make_durable(ticket)?;
        if self.punch_holes && !dropped.is_empty() {
            let _reclaiming = lock(&self.reclaim);
            let gaps = self.dead_gaps(dropped)?;
            self.packs.punch(&gaps);
        }
        Ok(())
    }

    /// The byte ranges around the dropped chunks that no chunk names: from
    /// the end of the named chunk before each to the start of the named
    /// chunk after it. Punching the whole gap frees the pages a chunk
    /// shared with a neighbour dropped earlier, which punching the chunk
    /// alone leaves allocated for good. Past the last named chunk of a pack
    /// an append may be in flight, so a gap there ends with the dropped
    /// chunk. Called with `reclaim` held: the only appends the catalog does
    /// not name yet are then a `preserve`'s, at the end of the active pack.
    fn dead_gaps(&self, dropped: &[ChunkLocation]) -> Result<Vec<(u32, u64, u64)>> {
        let mut dropped = dropped.to_vec();
        dropped.sort_unstable_by_key(|l| (l.pack, l.offset));
        let conn = self.catalog.reader();
        let mut gaps: Vec<(u32, u64, u64)> = Vec::new();
        for loc in dropped {
            let start = loc.offset.saturating_sub(CHUNK_HEADER);
            let end = loc.offset + u64::from(loc.len);
            if let Some(gap) = gaps.last_mut()
                && gap.0 == loc.pack
                && start <= gap.2
            {
                gap.2 = gap.2.max(end);
                continue;
            }
            let before: Option<i64> = conn
                .prepare_cached(
                    "SELECT offset + len FROM chunks WHERE pack = ?1 AND offset < ?2 ORDER BY offset DESC LIMIT 1",
                )?
                .query_row(params![loc.pack, loc.offset as i64], |r| r.get(0))
                .optional()?;
            let after: Option<i64> = conn
                .prepare_cached(
                    "SELECT offset FROM chunks WHERE pack = ?1 AND offset > ?2 ORDER BY offset LIMIT 1",
                )?
                .query_row(params![loc.pack, loc.offset as i64], |r| r.get(0))
                .optional()?;
            let from = before.map_or(MAGIC.len() as u64, |b| b as u64).min(start);
            let to = after.map_or(end, |a| (a as u64).saturating_sub(CHUNK_HEADER).max(end));
            gaps.push((loc.pack, from, to));
        }
        Ok(gaps)
    }

    /// Forgets freed aside objects: every record of them, their handles
    /// and aside rows (last, so that a crash midway leaves the row for the
    /// next attempt), and the chunks no record names any more.
    pub fn forget_objects(&self, volume: VolumeId, objects: &[ObjectId]) -> Result<()> {
        if objects.is_empty() {
            return Ok(());
        }
        let _one = lock(&self.collecting);
        for object in objects {
            let args = params![volume.0, object.0 as i64];
            // A large file has many block records: a batch at a time.
            loop {
                let conn = self.catalog.writer();
                let n = conn
                    .prepare_cached(&format!(
                        "DELETE FROM block_records WHERE volume_id = ?1 AND object = ?2 AND block IN (
                             SELECT block FROM block_records WHERE volume_id = ?1 AND object = ?2
                             ORDER BY block LIMIT {PRUNE_BATCH})"
                    ))?
                    .execute(args)?;
                drop(conn);
                self.catalog.let_writers_in();
                if n == 0 {
                    break;
                }
            }
            let mut conn = self.catalog.writer();
            let tx = conn.transaction()?;
            for table in ["attr_records", "dir_records", "handles", "places", "aside"] {
                tx.prepare_cached(&format!(
                    "DELETE FROM {table} WHERE volume_id = ?1 AND object = ?2"
                ))?
                .execute(args)?;
            }
            self.commit(tx)?;
        }
        self.drop_unnamed_chunks()?;
        self.recount()
    }

    /// Reclaims pack space, one pack at a time, until no pack is more than
    /// half dead. Returns the bytes given back to the filesystem.
    pub fn compact(&self) -> Result<u64> {
        let mut freed = 0;
        loop {
            let step = self.compact_step()?;
            if step == 0 {
                return Ok(freed);
            }
            freed += step;
        }
    }

    /// One step of reclaiming pack space. Deletions already punch dropped
    /// chunks out of their packs, so on a filesystem that can punch holes
    /// this only removes packs left with no live chunk; elsewhere (and for
    /// bytes a crash left unpunched) the pack taking the most dead bytes
    /// (if more than half of it is dead) has its live chunks copied to the
    /// active pack in small batches, each its own short transaction made
    /// durable before the old pack is removed, so live writes (which need
    /// the catalog's writer) wait for one batch at most. Returns the bytes
    /// freed, 0 when there is nothing worth doing.
    pub fn compact_step(&self) -> Result<u64> {
        let _reclaiming = lock(&self.reclaim);
        let mut best: Option<(u32, u64)> = None;
        // Copying needs room for the live chunks first: on a (nearly) full
        // disk it would only fill it with copies it cannot commit.
        let room = reserve::filesystem_free(&self.dir).unwrap_or(u64::MAX);
        for (pack, allocated) in self.packs.list()? {
            let live: i64 = self.catalog.reader().query_row(
                "SELECT coalesce(sum(len), 0) + count(*) * ?2 FROM chunks WHERE pack = ?1",
                params![pack, CHUNK_HEADER as i64],
                |r| r.get(0),
            )?;
            let dead = allocated.saturating_sub(live as u64);
            // An emptied pack that takes no more appends costs nothing to
            // remove; otherwise copying must win back at least a block,
            // or a fresh active pack would be rolled over and over.
            let emptied = live == 0 && pack != self.packs.active();
            let worth_copying = dead >= crate::BLOCK_SIZE
                && dead * 2 >= allocated
                && (live as u64).saturating_mul(2) < room;
            if (emptied || worth_copying) && best.is_none_or(|(_, d)| dead > d) {
                best = Some((pack, dead));
            }
        }
        let Some((pack, dead)) = best else {
            return Ok(0);
        };
        if pack == self.packs.active() {
            self.packs.roll()?;
        }
        loop {
            let batch: Vec<(Vec<u8>, ChunkLocation)> = {
                let conn = self.catalog.reader();
                let mut stmt = conn.prepare_cached(
                    "SELECT hash, pack, offset, len FROM chunks WHERE pack = ?1 LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![pack, COPY_BATCH], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, location_at(r, 1)?))
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            if batch.is_empty() {
                break;
            }
            let mut moved = Vec::with_capacity(batch.len());
            for (hash, old) in batch {
                let hash = to_hash(&hash);
                let data = self.packs.read(&hash, old)?;
                moved.push((hash, old, self.packs.append(&hash, &data)?));
            }
            // The copies are durable before a row points at them: open
            // would drop a lost copy's records, which returned preserves
            // made (`recover`), not repoint them at the old bytes.
            self.make_durable(self.group.ticket())?;
            let mut conn = self.catalog.writer();
            let tx = conn.transaction()?;
            // A chunk deleted meanwhile matches no row: its copy is dead bytes.
            for (hash, old, new) in &moved {
                tx.prepare_cached(
                    "UPDATE chunks SET pack = ?2, offset = ?3 WHERE hash = ?1 AND pack = ?4 AND offset = ?5",
                )?
                .execute(params![&hash.0[..], new.pack, new.offset as i64, old.pack, old.offset as i64])?;
            }
            let ticket = self.commit(tx)?;
            drop(conn);
            self.make_durable(ticket)?;
            self.catalog.let_writers_in();
        }
        self.packs.remove(pack)?;
        tracing::info!(pack, freed = dead, "reclaimed a pack");
        Ok(dead)
    }
}

/// A `chunks` row's location from columns `pack, offset, len`.
fn location(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChunkLocation> {
    location_at(r, 0)
}

fn location_at(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<ChunkLocation> {
    Ok(ChunkLocation {
        pack: r.get(first)?,
        offset: r.get::<_, i64>(first + 1)? as u64,
        len: r.get(first + 2)?,
    })
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use crate::{Epoch, NewSet, ObjectId, PreImages, Store, StoreOptions, Timestamp};

    #[test]
    fn a_chunk_named_again_while_a_collection_runs_is_kept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path(), StoreOptions::default()).expect("open");
        let vol = store.ensure_volume("data").expect("volume").id;
        let commit = || {
            store
                .commit_set(&NewSet {
                    name: "s".into(),
                    label: None,
                    origin: crate::SetOrigin::Manual,
                    created: Timestamp::default(),
                    volumes: vec![vol],
                })
                .expect("commit")
        };
        let data = vec![7u8; 4096];
        let keep = |object, at: Epoch| {
            let pre = PreImages {
                blocks: vec![(ObjectId(object), 0, &data[..])],
                ..PreImages::default()
            };
            store.preserve(vol, at, &pre).expect("preserve");
        };
        let first = commit();
        keep(1, first.volumes[0].epoch);
        store.remove_set(first.id).expect("remove");
        store.prune_volume(vol.0).expect("prune");
        // The collection finds the chunk unnamed...
        store.note_renamed(true);
        let found = store.unnamed_chunks().expect("unnamed");
        assert_eq!(found.len(), 1);
        // ...a new set's pre-image with the same bytes names it again...
        let second = commit();
        keep(2, second.volumes[0].epoch);
        // ...and the collection's step keeps it.
        let mut dropped = Vec::new();
        store.drop_chunks(&found, &mut dropped).expect("drop");
        assert!(dropped.is_empty(), "nothing dropped");
        store.note_renamed(false);
        let got = store
            .resolve_block(vol, ObjectId(2), 0, second.volumes[0].epoch)
            .expect("the chunk is there")
            .expect("a record");
        assert_eq!(&got[..], &data[..]);
    }
}
