//! The catalog's schema and connections: one writer connection and a small
//! pool of readers over the same SQLite database in WAL mode, so snapshot
//! reads never wait for a pre-image transaction. Migrations from older
//! schema versions live here too. Queries live with their callers in
//! store.rs; this file owns only the database's shape.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use crate::checkpoint::Checkpointer;
use crate::{Error, Result};

/// The schema this build writes: version 1 and then every step of `STEPS`.
pub(crate) const SCHEMA_VERSION: i64 = 1 + STEPS.len() as i64;

/// Step `i` takes a catalog from version `i + 1` to `i + 2`; it runs in one
/// transaction with the version's bump. Steps are only ever appended.
const STEPS: &[&str] = &[
    // 2: a set stays pending from its commit until its writers thawed and
    // it was recorded; a set still pending at open was interrupted.
    "ALTER TABLE sets ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;",
    // 3: who asked for a set, for retention; every older set was asked for
    // by hand (`umbra create`, or a kept backup before origins existed).
    "ALTER TABLE sets ADD COLUMN origin TEXT NOT NULL DEFAULT 'manual'
         CHECK (origin IN ('manual', 'scheduled', 'backup'));",
    // 4: where each changed object was last reached, so that `umbra diff`
    // and `umbra versions` name a changed file without walking the tree.
    "CREATE TABLE places (
         volume_id INTEGER NOT NULL,
         object INTEGER NOT NULL,
         parent BLOB NOT NULL,
         name BLOB NOT NULL,
         PRIMARY KEY (volume_id, object)
     ) STRICT, WITHOUT ROWID;",
    // 5: the cluster set a set belongs to (`umbra create --cluster`): a
    // pending set with a cluster id is resolved against the cluster at
    // start, not dropped, since the other hosts may have kept it.
    "CREATE TABLE set_clusters (
         set_id INTEGER PRIMARY KEY REFERENCES sets(id) ON DELETE CASCADE,
         cluster_id TEXT NOT NULL
     ) STRICT;",
    // 6: a replaced directory a rename swapped to the source's name, on its
    // way into the hidden folder: a crash between the two steps is finished
    // at the next start (`Store::swaps`).
    "CREATE TABLE swaps (
         volume_id INTEGER NOT NULL,
         object INTEGER NOT NULL,
         handle BLOB NOT NULL,
         parent BLOB NOT NULL,
         name BLOB NOT NULL,
         PRIMARY KEY (volume_id, object)
     ) STRICT, WITHOUT ROWID;",
];

const SCHEMA_V1: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value ANY) STRICT;
CREATE TABLE volumes (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    epoch INTEGER NOT NULL
) STRICT;
CREATE TABLE sets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    created_secs INTEGER NOT NULL,
    created_nanos INTEGER NOT NULL,
    label TEXT
) STRICT;
CREATE TABLE set_volumes (
    set_id INTEGER NOT NULL REFERENCES sets(id) ON DELETE CASCADE,
    volume_id INTEGER NOT NULL REFERENCES volumes(id),
    epoch INTEGER NOT NULL,
    PRIMARY KEY (set_id, volume_id)
) STRICT;
CREATE INDEX set_volumes_by_epoch ON set_volumes(volume_id, epoch);
CREATE TABLE set_writers (
    set_id INTEGER NOT NULL REFERENCES sets(id) ON DELETE CASCADE,
    writer TEXT NOT NULL,
    required INTEGER NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    components TEXT NOT NULL,
    PRIMARY KEY (set_id, writer)
) STRICT;
CREATE TABLE chunks (
    hash BLOB PRIMARY KEY,
    pack INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    len INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX chunks_by_pack ON chunks(pack, offset);
CREATE TABLE block_records (
    volume_id INTEGER NOT NULL,
    object INTEGER NOT NULL,
    block INTEGER NOT NULL,
    hi INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (volume_id, object, block, hi)
) STRICT, WITHOUT ROWID;
CREATE TABLE attr_records (
    volume_id INTEGER NOT NULL,
    object INTEGER NOT NULL,
    hi INTEGER NOT NULL,
    attrs BLOB NOT NULL,
    PRIMARY KEY (volume_id, object, hi)
) STRICT, WITHOUT ROWID;
CREATE TABLE dir_records (
    volume_id INTEGER NOT NULL,
    object INTEGER NOT NULL,
    hi INTEGER NOT NULL,
    entries BLOB NOT NULL,
    PRIMARY KEY (volume_id, object, hi)
) STRICT, WITHOUT ROWID;
CREATE TABLE handles (
    volume_id INTEGER NOT NULL,
    object INTEGER NOT NULL,
    handle BLOB NOT NULL,
    PRIMARY KEY (volume_id, object)
) STRICT, WITHOUT ROWID;
CREATE TABLE aliases (
    volume_id INTEGER NOT NULL,
    object INTEGER NOT NULL,
    presented INTEGER NOT NULL,
    PRIMARY KEY (volume_id, object)
) STRICT, WITHOUT ROWID;
CREATE TABLE aside (
    volume_id INTEGER NOT NULL,
    object INTEGER NOT NULL,
    since_epoch INTEGER NOT NULL,
    PRIMARY KEY (volume_id, object)
) STRICT, WITHOUT ROWID;
";

const READERS: usize = 4;
/// The longest rest background work takes between two steps.
const PACE_MAX: Duration = Duration::from_millis(20);
/// Two yields further apart than this are not one run of steps.
const PACE_WINDOW: Duration = Duration::from_secs(1);
const STATEMENTS: usize = 64;

pub(crate) struct Catalog {
    writer: Mutex<Connection>,
    /// Runs the WAL's checkpoints outside the writer's commits.
    _checkpointer: Checkpointer,
    /// Threads waiting for the writer right now.
    waiting: AtomicUsize,
    /// When background work last yielded the writer (`let_writers_in`).
    yielded: Mutex<Option<Instant>>,
    readers: Mutex<Vec<Connection>>,
    reader_returned: Condvar,
}

/// A reader connection borrowed from the pool; returned on drop.
pub(crate) struct Reader<'a> {
    conn: Option<Connection>,
    catalog: &'a Catalog,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
            .as_ref()
            .expect("a reader holds its connection until dropped")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            lock(&self.catalog.readers).push(conn);
            self.catalog.reader_returned.notify_one();
        }
    }
}

impl Catalog {
    pub fn open(path: &Path) -> Result<Catalog> {
        let mut writer = Connection::open(path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL in WAL mode: a commit survives a process crash without an
        // fsync per transaction.
        writer.pragma_update(None, "synchronous", "NORMAL")?;
        writer.pragma_update(None, "foreign_keys", "ON")?;
        writer.busy_timeout(std::time::Duration::from_secs(30))?;
        // Every query the store runs stays prepared (rusqlite keeps 16).
        writer.set_prepared_statement_cache_capacity(STATEMENTS);
        stable_plans(&writer)?;
        migrate(&writer)?;
        let checkpointer = Checkpointer::start(path, &mut writer)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            r.busy_timeout(std::time::Duration::from_secs(30))?;
            r.set_prepared_statement_cache_capacity(STATEMENTS);
            stable_plans(&r)?;
            readers.push(r);
        }
        Ok(Catalog {
            writer: Mutex::new(writer),
            _checkpointer: checkpointer,
            waiting: AtomicUsize::new(0),
            yielded: Mutex::new(None),
            readers: Mutex::new(readers),
            reader_returned: Condvar::new(),
        })
    }

    pub fn writer(&self) -> MutexGuard<'_, Connection> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let conn = lock(&self.writer);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        conn
    }

    /// For background work (collection, compaction) between two of its
    /// transactions: lets whoever waits for the writer (a live write's
    /// pre-images) take it first. The mutex is not fair: a thread that
    /// unlocks and locks again at once can keep a waiter out for as long as
    /// it loops. Gives up after a few milliseconds, so a steady stream of
    /// writers cannot hold the background work off for good.
    ///
    /// When writers were waiting, the background work then also rests as
    /// long as its last step took (at most `PACE_MAX`): while live writes
    /// go on it gets about half of the time, and their syncs and
    /// transactions are not queued behind step after step. With nobody
    /// waiting it goes on at once.
    pub fn let_writers_in(&self) {
        let contended = self.waiting.load(Ordering::SeqCst) > 0;
        self.let_writers_in_within(Duration::from_millis(10));
        let mut yielded = lock(&self.yielded);
        if contended && let Some(since) = *yielded {
            let worked = since.elapsed();
            if worked < PACE_WINDOW {
                std::thread::sleep(worked.min(PACE_MAX));
            }
        }
        *yielded = Some(Instant::now());
    }

    fn let_writers_in_within(&self, patience: Duration) {
        let deadline = Instant::now() + patience;
        while self.waiting.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    pub fn reader(&self) -> Reader<'_> {
        let mut pool = lock(&self.readers);
        loop {
            if let Some(conn) = pool.pop() {
                return Reader {
                    conn: Some(conn),
                    catalog: self,
                };
            }
            pool = self
                .reader_returned
                .wait(pool)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A cached statement keeps its plan whatever is bound to it. Without
/// this, SQLite (built with STAT4) re-prepares a statement whenever a
/// bound value of a range condition changes: the browser's block query
/// was parsed and planned again on every read.
fn stable_plans(conn: &Connection) -> Result<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(())
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn migrate(conn: &Connection) -> Result<()> {
    let has_meta: bool = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_meta {
        // A new store's packs hold nothing but pack 0's magic: its first
        // mark (`recover`) comes with the schema, not in a commit of its own.
        let (pack_key, end_key) = crate::recover::MARK_KEYS;
        conn.execute_batch(&format!(
            "BEGIN; {SCHEMA_V1} INSERT INTO meta VALUES ('schema_version', 1),
                ('{pack_key}', 0), ('{end_key}', {});
             COMMIT;",
            crate::pack::MAGIC.len()
        ))?;
    }
    let found: i64 = conn.query_row(
        "SELECT value FROM meta WHERE key = 'schema_version'",
        [],
        |r| r.get(0),
    )?;
    if found > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (version, step) in (found + 1..).zip(&STEPS[(found - 1).max(0) as usize..]) {
        conn.execute_batch(&format!(
            "BEGIN; {step} UPDATE meta SET value = {version} WHERE key = 'schema_version'; COMMIT;"
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_work_lets_a_waiting_writer_in_first() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let catalog = Catalog::open(&tmp.path().join("catalog.db")).expect("open");
        let order = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            let held = catalog.writer();
            let waiter = s.spawn(|| {
                let _conn = catalog.writer();
                lock(&order).push("live write");
            });
            while catalog.waiting.load(Ordering::SeqCst) == 0 {
                std::thread::yield_now();
            }
            // A batch ends and the next one starts at once.
            drop(held);
            catalog.let_writers_in_within(Duration::from_secs(10));
            let _next = catalog.writer();
            lock(&order).push("next batch");
            drop(_next);
            waiter.join().expect("waiter");
        });
        assert_eq!(*lock(&order), ["live write", "next batch"]);
    }
}
