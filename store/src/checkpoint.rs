//! Checkpoints of the catalog's WAL, off the writer. SQLite's automatic
//! checkpoint runs inside whichever commit takes the WAL past 1,000 pages:
//! a live write's pre-image transaction, or a collection step that every
//! live write waits for, paid for copying 4 MB into the database and two
//! fsyncs while holding the catalog's writer. That was the long tail of
//! live write latency while a deleted set is collected (issue 13). Here
//! the writer's commits only count pages (a WAL hook) and a thread with a
//! connection of its own checkpoints PASSIVE once there are 1,000: it
//! neither waits for the writer nor holds it off, and SQLite's crash
//! safety is the same, since a checkpoint is the same whoever runs it.
//! Should the thread fall far behind (16,000 pages), the writer
//! checkpoints in its commit as SQLite would.
//!
//! This file owns only when and where checkpoints run; it never decides
//! what is durable (the store syncs the WAL itself, preserve.rs).

use std::ffi::c_int;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;

use crate::Result;

/// The WAL's pages at which the thread checkpoints: SQLite's default.
const CHECKPOINT_PAGES: c_int = 1000;
/// The WAL's pages at which the writer checkpoints itself.
const WRITER_CHECKPOINTS_AT: c_int = 16 * CHECKPOINT_PAGES;

#[derive(Default)]
struct Shared {
    /// The WAL reached `CHECKPOINT_PAGES` since the last checkpoint.
    due: bool,
    stop: bool,
}

struct Signal {
    shared: Mutex<Shared>,
    changed: Condvar,
}

impl Signal {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) struct Checkpointer {
    signal: Arc<Signal>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Takes the checkpoints of `writer` (the database at `path`) over.
    /// If the thread cannot start, the writer keeps SQLite's own.
    pub fn start(path: &Path, writer: &mut Connection) -> Result<Checkpointer> {
        let signal = Arc::new(Signal {
            shared: Mutex::new(Shared::default()),
            changed: Condvar::new(),
        });
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(30))?;
        // A connection learns that the database is in WAL mode when it
        // first reads it; until then a checkpoint does nothing.
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        if mode != "wal" {
            tracing::debug!("the catalog is in {mode} mode; the writer checkpoints");
            return Ok(Checkpointer {
                signal,
                thread: None,
            });
        }
        let thread = {
            let signal = signal.clone();
            std::thread::Builder::new()
                .name("umbra-checkpoint".into())
                .spawn(move || serve(&conn, &signal))
        };
        let thread = match thread {
            Ok(thread) => thread,
            Err(e) => {
                tracing::debug!("starting the catalog's checkpointer: {e}; the writer checkpoints");
                return Ok(Checkpointer {
                    signal,
                    thread: None,
                });
            }
        };
        let hook = signal.clone();
        writer.wal_hook(Some(move |wal: &mut Wal, pages: c_int| {
            if pages >= WRITER_CHECKPOINTS_AT {
                if let Err(e) = wal.checkpoint_v2(CheckpointMode::PASSIVE) {
                    tracing::debug!("checkpointing the catalog in the writer: {e}");
                }
            } else if pages >= CHECKPOINT_PAGES {
                hook.lock().due = true;
                hook.changed.notify_one();
            }
            Ok(())
        }))?;
        Ok(Checkpointer {
            signal,
            thread: Some(thread),
        })
    }
}

fn serve(conn: &Connection, signal: &Signal) {
    let mut s = signal.lock();
    loop {
        if s.due {
            s.due = false;
            drop(s);
            if let Err(e) = conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
                tracing::debug!("checkpointing the catalog: {e}");
            }
            s = signal.lock();
            continue;
        }
        if s.stop {
            return;
        }
        s = signal.changed.wait(s).unwrap_or_else(|p| p.into_inner());
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.signal.lock().stop = true;
        self.signal.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_checkpoints_what_the_writer_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.db");
        let mut writer = Connection::open(&path).expect("open");
        writer
            .pragma_update(None, "journal_mode", "WAL")
            .expect("wal");
        writer
            .execute_batch("CREATE TABLE t (b BLOB)")
            .expect("table");
        let checkpointer = Checkpointer::start(&path, &mut writer).expect("start");
        assert!(checkpointer.thread.is_some());
        let before = std::fs::metadata(&path).expect("db").len();
        // About 1,500 pages of 4 KiB in 100 commits: past one checkpoint's
        // worth, far below the writer's own.
        for _ in 0..100 {
            writer
                .execute("INSERT INTO t VALUES (zeroblob(60000))", [])
                .expect("insert");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&path).expect("db").len() < before + (4 << 20) {
            assert!(
                std::time::Instant::now() < deadline,
                "nothing was checkpointed into the database"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(checkpointer);
    }
}
