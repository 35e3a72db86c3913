//! What changed between two instants of a volume, read from the records
//! alone: the cost follows the number of records in the range, never the
//! size of the tree. A key's first change in epoch `k` leaves a record with
//! `hi = k - 1`, and the record a remaining set at `from` resolves to is
//! never pruned (FORMAT.md, sections 5 and 6), so a key changed after the
//! end of epoch `from` and by the end of epoch `to` has a record with `hi`
//! in `[from, to)`, and a key without one did not change in between. A
//! record says "may have changed": the caller compares the two states.
//! Every change of an object preserves its metadata first, so the metadata
//! records alone name every changed object.
//!
//! This file only reads; it never writes the catalog.

use rusqlite::{OptionalExtension, params};

use super::Store;
use crate::{Epoch, ObjectId, Place, Result, VolumeId};

/// `to`: an epoch's end, or `None` for the live volume.
fn upper(to: Option<Epoch>) -> i64 {
    to.map_or(i64::MAX, |e| e.0 as i64)
}

impl Store {
    /// The objects whose metadata (and so possibly anything of them)
    /// changed after the end of epoch `from` and by the end of `to`.
    pub fn changed_objects(
        &self,
        volume: VolumeId,
        from: Epoch,
        to: Option<Epoch>,
    ) -> Result<Vec<ObjectId>> {
        self.objects_in_range("attr_records", volume, from, to)
    }

    /// The directories whose entries changed in that range.
    pub fn changed_dirs(
        &self,
        volume: VolumeId,
        from: Epoch,
        to: Option<Epoch>,
    ) -> Result<Vec<ObjectId>> {
        self.objects_in_range("dir_records", volume, from, to)
    }

    fn objects_in_range(
        &self,
        table: &str,
        volume: VolumeId,
        from: Epoch,
        to: Option<Epoch>,
    ) -> Result<Vec<ObjectId>> {
        let conn = self.catalog.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT DISTINCT object FROM {table}
             WHERE volume_id = ?1 AND hi >= ?2 AND hi < ?3 ORDER BY object"
        ))?;
        let rows = stmt.query_map(params![volume.0, from.0 as i64, upper(to)], |r| {
            r.get::<_, i64>(0)
        })?;
        let mut out = Vec::new();
        for row in rows {
            out.push(ObjectId(row? as u64));
        }
        Ok(out)
    }

    /// The blocks of `object` that may have changed in that range.
    pub fn changed_blocks(
        &self,
        volume: VolumeId,
        object: ObjectId,
        from: Epoch,
        to: Option<Epoch>,
    ) -> Result<Vec<u64>> {
        let conn = self.catalog.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT DISTINCT block FROM block_records
             WHERE volume_id = ?1 AND object = ?2 AND hi >= ?3 AND hi < ?4 ORDER BY block",
        )?;
        let rows = stmt.query_map(
            params![volume.0, object.0 as i64, from.0 as i64, upper(to)],
            |r| r.get::<_, i64>(0),
        )?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row? as u64);
        }
        Ok(out)
    }

    /// Whether `object`'s metadata changed in that range.
    pub fn changed_between(
        &self,
        volume: VolumeId,
        object: ObjectId,
        from: Epoch,
        to: Option<Epoch>,
    ) -> Result<bool> {
        let conn = self.catalog.reader();
        Ok(conn
            .prepare_cached(
                "SELECT 1 FROM attr_records
                 WHERE volume_id = ?1 AND object = ?2 AND hi >= ?3 AND hi < ?4 LIMIT 1",
            )?
            .exists(params![volume.0, object.0 as i64, from.0 as i64, upper(to)])?)
    }

    /// Where `object` was last reached when something of it was preserved.
    pub fn place(&self, volume: VolumeId, object: ObjectId) -> Result<Option<Place>> {
        let conn = self.catalog.reader();
        Ok(conn
            .prepare_cached("SELECT parent, name FROM places WHERE volume_id = ?1 AND object = ?2")?
            .query_row(params![volume.0, object.0 as i64], |r| {
                Ok(Place {
                    parent: r.get(0)?,
                    name: r.get(1)?,
                })
            })
            .optional()?)
    }
}
