//! What a power cut can leave behind and `Store::open` repairs: catalog
//! rows naming pack bytes that never reached the disk.
//!
//! A commit's rows may become durable before the pack bytes they name: the
//! group sync flushes the packs, then the WAL, and a commit made between
//! the two is in the WAL it flushes; SQLite syncs the WAL itself when it
//! checkpoints; the kernel writes WAL pages back when it likes. None of
//! those commits has returned (its caller still waits for a pack sync
//! begun after it), so no live block was overwritten on their account:
//! dropping such a record makes its key read the live object again, which
//! still holds exactly that content.
//!
//! To find them without reading every pack, the catalog holds a *mark*
//! (`meta.packs_synced_pack`, `meta.packs_synced_end`): a point below which
//! the packs were durable when it was written. Only chunks past the
//! durable mark can be lost; they are hash-checked at open and a damaged
//! one is dropped with every record naming it. The mark may lag (chunks
//! past it that reached the disk pass the check). Damage below the mark is
//! not a power cut's doing: it stays, and reads of it fail.
//!
//! This file only reads and writes the mark and drops lost chunks; when
//! the mark is written is the caller's business.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::io::StoreIo;
use crate::pack::{self, ChunkLocation};
use crate::{ChunkHash, Result};

/// The `meta` keys of the mark: its pack, its offset.
pub(crate) const MARK_KEYS: (&str, &str) = ("packs_synced_pack", "packs_synced_end");

/// Records in `tx` that the packs are durable up to `mark` (every pack
/// before `mark.0`, and `mark.0` up to the offset `mark.1`).
pub(crate) fn write_mark(tx: &Transaction<'_>, mark: (u32, u64)) -> Result<()> {
    tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2), (?3, ?4)")?
        .execute(params![MARK_KEYS.0, mark.0, MARK_KEYS.1, mark.1 as i64])?;
    Ok(())
}

/// The mark the catalog holds, if any.
pub(crate) fn read_mark(conn: &Connection) -> Result<Option<(u32, u64)>> {
    let get = |key: &str| -> Result<Option<i64>> {
        Ok(conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    };
    Ok(match (get(MARK_KEYS.0)?, get(MARK_KEYS.1)?) {
        (Some(pack), Some(end)) => Some((pack as u32, end as u64)),
        // A catalog from before marks: nothing to go by, nothing dropped.
        _ => None,
    })
}

/// Drops every chunk past the mark whose bytes the packs under `packs`
/// lack, with the records naming it. Returns how many chunks went.
pub(crate) fn drop_lost_chunks(
    conn: &mut Connection,
    io: &dyn StoreIo,
    packs: &Path,
) -> Result<usize> {
    let Some((pack, end)) = read_mark(conn)? else {
        return Ok(0);
    };
    // `offset` is where a chunk's data starts, after its header: a chunk
    // that starts at or past `end` has its data past `end`.
    let suspects: Vec<(ChunkHash, ChunkLocation)> = {
        let mut stmt = conn.prepare(
            "SELECT hash, pack, offset, len FROM chunks WHERE pack > ?1 OR (pack = ?1 AND offset > ?2)",
        )?;
        let rows = stmt.query_map(params![pack, end as i64], |r| {
            let bytes: Vec<u8> = r.get(0)?;
            let mut hash = [0u8; 32];
            let n = bytes.len().min(32);
            hash[..n].copy_from_slice(&bytes[..n]);
            Ok((
                ChunkHash(hash),
                ChunkLocation {
                    pack: r.get(1)?,
                    offset: r.get::<_, i64>(2)? as u64,
                    len: r.get(3)?,
                },
            ))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let lost = pack::damaged(io, packs, &suspects);
    if lost.is_empty() {
        return Ok(0);
    }
    let tx = conn.transaction()?;
    for hash in &lost {
        let h = &hash.0[..];
        tx.execute("DELETE FROM block_records WHERE hash = ?1", [h])?;
        tx.execute("DELETE FROM dir_records WHERE entries = ?1", [h])?;
        tx.execute("DELETE FROM chunks WHERE hash = ?1", [h])?;
    }
    tx.commit()?;
    tracing::warn!(
        chunks = lost.len(),
        "dropped pre-images whose pack bytes a crash lost before they were synced; \
         their preserves had not returned, so the live objects still hold them"
    );
    Ok(lost.len())
}
