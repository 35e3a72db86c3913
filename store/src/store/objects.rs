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
}
