//! Volumes and sets in the catalog: registering a volume, committing a
//! set (whole or pending its writers), listing and finding sets, and the
//! writers recorded with them. Deleting a set is collect.rs's.

use rusqlite::{OptionalExtension, params};

use super::*;

impl Store {
    /// Deletes the sets whose creation was cut off between their commit
    /// and their writers' thaw (see `commit_pending_set`).
    pub(super) fn drop_interrupted_sets(&self) -> Result<()> {
        let interrupted: Vec<(i64, String)> = {
            let conn = self.catalog.reader();
            // A cluster set's fate is the cluster's: the daemon resolves it.
            let mut stmt = conn.prepare(
                "SELECT id, name FROM sets WHERE pending = 1
                 AND id NOT IN (SELECT set_id FROM set_clusters)",
            )?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?
        };
        for (id, name) in interrupted {
            self.delete_set(SetId(id))?;
            tracing::warn!(set = %name, id, "deleted a set whose creation was interrupted before its writers thawed");
        }
        Ok(())
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

    pub(super) fn commit_new_set(&self, new: &NewSet, pending: bool) -> Result<(SetInfo, Ticket)> {
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

    /// Marks the pending `set` as part of cluster set `cluster_id` and makes
    /// it durable, row and mark, before the caller tells the cluster it
    /// holds its part: a set the cluster then keeps survives a power cut.
    pub fn tag_cluster_set(&self, set: SetId, cluster_id: &str) -> Result<()> {
        let mut conn = self.catalog.writer();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO set_clusters (set_id, cluster_id) VALUES (?1, ?2)",
            params![set.0, cluster_id],
        )?;
        let ticket = self.commit(tx)?;
        drop(conn);
        self.make_durable(ticket)
    }

    /// The cluster set id of every set that has one, with whether the set
    /// is still pending (its cluster's outcome not yet recorded here).
    pub fn cluster_sets(&self) -> Result<Vec<ClusterSet>> {
        let conn = self.catalog.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT c.set_id, c.cluster_id, s.pending FROM set_clusters c
             JOIN sets s ON s.id = c.set_id ORDER BY c.set_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ClusterSet {
                set: SetId(r.get(0)?),
                cluster_id: r.get(1)?,
                pending: r.get::<_, i64>(2)? != 0,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
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
}
