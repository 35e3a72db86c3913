//! The read side: the record a set at epoch `e` resolves to (the smallest
//! `hi >= e`), or None for "unchanged since, read the live object"; and
//! the chunks behind records, read and hash-checked through the cache.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{OptionalExtension, params};

use super::*;

impl Store {
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

    pub(super) fn chunk(&self, hash: &ChunkHash) -> Result<Arc<[u8]>> {
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

    pub(super) fn locate(&self, hash: &ChunkHash) -> Result<Option<ChunkLocation>> {
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
