//! Live objects the catalog keeps track of beyond records: inodes moved
//! aside for the sets, and numbers a truncated file's successor presents.

use rusqlite::params;

use super::*;

impl Store {
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

    /// The directories of `volume` a rename swapped to a source's name and
    /// had not yet moved into the hidden folder when it was last noted:
    /// each with the place it was swapped to (`PreImages::swaps`).
    pub fn swaps(&self, volume: VolumeId) -> Result<Vec<(ObjectId, Swap)>> {
        let conn = self.catalog.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT object, handle, parent, name FROM swaps WHERE volume_id = ?1",
        )?;
        let rows = stmt.query_map([volume.0], |r| {
            Ok((
                ObjectId(r.get::<_, i64>(0)? as u64),
                Swap {
                    handle: r.get(1)?,
                    at: Place {
                        parent: r.get(2)?,
                        name: r.get(3)?,
                    },
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// `object`'s swap is finished (it is in the hidden folder, or was
    /// never swapped). Not synced: a row that outlives a crash is checked
    /// against the volume before anything is moved.
    pub fn swap_done(&self, volume: VolumeId, object: ObjectId) -> Result<()> {
        self.delete_row("swaps", volume, object)
    }

    /// `object` is not aside after all: the replacement that was to move it
    /// never happened (a crash came first), and it is live. Not synced: a
    /// row that outlives a crash names an inode the aside folder does not
    /// hold, which the volume ignores and frees with its set.
    pub fn drop_aside(&self, volume: VolumeId, object: ObjectId) -> Result<()> {
        self.delete_row("aside", volume, object)
    }

    /// Deletes `object`'s row of `table` (keyed by volume and object), in a
    /// commit of its own, not synced.
    fn delete_row(&self, table: &str, volume: VolumeId, object: ObjectId) -> Result<()> {
        let mut conn = self.catalog.writer();
        let tx = conn.transaction()?;
        tx.prepare_cached(&format!(
            "DELETE FROM {table} WHERE volume_id = ?1 AND object = ?2"
        ))?
        .execute(params![volume.0, object.0 as i64])?;
        self.commit(tx)?;
        Ok(())
    }

    /// Every object of `volume` with an aside row.
    pub fn aside_objects(&self, volume: VolumeId) -> Result<Vec<ObjectId>> {
        let conn = self.catalog.reader();
        let mut stmt = conn.prepare_cached("SELECT object FROM aside WHERE volume_id = ?1")?;
        let rows = stmt.query_map([volume.0], |r| Ok(ObjectId(r.get::<_, i64>(0)? as u64)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Rebuilds the aside rows a power cut lost: of `found` (inodes in the
    /// volume's hidden folder without a row), each one with an attribute
    /// record was moved aside in the epoch after its newest record (an
    /// inode is moved only after its record of that epoch is durable, and
    /// an aside inode never changes again). Returns those given a row; the
    /// others have no record, so no set needs them.
    pub fn restore_aside(&self, volume: VolumeId, found: &[ObjectId]) -> Result<Vec<ObjectId>> {
        if found.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.catalog.writer();
        let tx = conn.transaction()?;
        let mut restored = Vec::new();
        for object in found {
            let newest: Option<i64> = tx
                .prepare_cached(
                    "SELECT max(hi) FROM attr_records WHERE volume_id = ?1 AND object = ?2",
                )?
                .query_row(params![volume.0, object.0 as i64], |r| r.get(0))?;
            let Some(hi) = newest else { continue };
            let added = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO aside (volume_id, object, since_epoch) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![volume.0, object.0 as i64, hi + 1])?;
            if added > 0 {
                restored.push(*object);
            }
        }
        // Not synced: lost again, it is rebuilt again from the same record.
        self.commit(tx)?;
        Ok(restored)
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
}
