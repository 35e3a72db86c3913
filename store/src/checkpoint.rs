//! Checkpoints of the catalog's WAL, off the writer. SQLite's automatic
//! checkpoint runs inside whichever commit takes the WAL past 1,000 pages:
//! a live write's pre-image transaction, or a collection step that every
//! live write waits for, paid for copying 4 MB into the database and two
//! fsyncs while holding the catalog's writer. Measured (BENCHMARKS.md,
//! "Issue 13 on 2026-12-06, fourth"), taking those checkpoints out of the
//! commits cut the first overwrites' p99 by a third, and by a quarter
//! while a deleted set is collected.
//!
//! Here the writer's commits only count pages (a WAL hook), and a thread
//! with a connection of its own checkpoints PASSIVE once 1,000 pages are
//! not yet in the database: it neither waits for the writer nor holds it
//! off, and SQLite's crash safety is the same, since a checkpoint is the
//! same whoever runs it. Two bounds keep it from costing more than it
//! saves. It rests `PACE` between two checkpoints, so a steady writer
//! never gets them back to back, each with its own fsyncs. The first
//! version of this thread (reverted in bc9edb4) had no such pause. And when
//! the WAL reaches `WRITER_CHECKPOINTS_AT` pages, the writer checkpoints
//! in its commit as SQLite would. A PASSIVE checkpoint beside a steady
//! writer may never catch up with the last commit, so the WAL is never
//! restarted. The writer's own checkpoint, run with nothing committing
//! meanwhile, does catch up, so the WAL stays bounded.
//!
//! This file owns only when and where checkpoints run; it never decides
//! what is durable (the store syncs the WAL itself, preserve.rs).

use std::ffi::c_int;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;

use crate::Result;

/// WAL pages not yet in the database at which the thread checkpoints:
/// SQLite's default for its own.
const CHECKPOINT_PAGES: c_int = 1000;
/// The WAL's pages at which the writer checkpoints itself.
const WRITER_CHECKPOINTS_AT: c_int = 16 * CHECKPOINT_PAGES;
/// The thread's rest between two checkpoints.
const PACE: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Shared {
    /// `CHECKPOINT_PAGES` were committed since the last checkpoint.
    due: bool,
    stop: bool,
}

struct Signal {
    shared: Mutex<Shared>,
    changed: Condvar,
    /// A checkpoint was asked for and has not started yet: the commits
    /// after the one that asked neither lock `shared` nor wake the thread
    /// (it rests between checkpoints on `changed`, and every wake-up would
    /// be a context switch inside a commit holding the catalog's writer).
    asked: AtomicBool,
    /// The WAL's pages the last checkpoint copied into the database; 0
    /// again once a commit finds the WAL restarted.
    copied: AtomicI32,
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
            asked: AtomicBool::new(false),
            copied: AtomicI32::new(0),
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
                match wal.checkpoint_v2(CheckpointMode::PASSIVE) {
                    Ok((_, copied)) => hook.copied.store(copied, Ordering::Release),
                    Err(e) => tracing::debug!("checkpointing the catalog in the writer: {e}"),
                }
                return Ok(());
            }
            let mut copied = hook.copied.load(Ordering::Acquire);
            if pages < copied {
                // Fewer pages than the last checkpoint copied: the WAL was
                // restarted since, and none of these is copied yet.
                hook.copied.store(0, Ordering::Release);
                copied = 0;
            }
            if pages - copied >= CHECKPOINT_PAGES && !hook.asked.swap(true, Ordering::AcqRel) {
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
        if s.stop {
            return;
        }
        if s.due {
            s.due = false;
            drop(s);
            // Commits from here on may ask again (for what this
            // checkpoint does not copy).
            signal.asked.store(false, Ordering::Release);
            match conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
                Ok((_, copied)) => signal.copied.store(copied, Ordering::Release),
                Err(e) => tracing::debug!("checkpointing the catalog: {e}"),
            }
            s = signal.lock();
            // The rest, unless the daemon stops meanwhile.
            let (rested, _) = signal
                .changed
                .wait_timeout_while(s, PACE, |s| !s.stop)
                .unwrap_or_else(|p| p.into_inner());
            s = rested;
            continue;
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

    fn wal_pages(conn: &Connection) -> (i64, i64) {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(1)?, r.get(2)?))
        })
        .expect("checkpoint")
    }

    fn catalog(dir: &Path) -> (std::path::PathBuf, Connection) {
        let path = dir.join("catalog.db");
        let writer = Connection::open(&path).expect("open");
        writer
            .pragma_update(None, "journal_mode", "WAL")
            .expect("wal");
        writer
            .execute_batch("CREATE TABLE t (b BLOB)")
            .expect("table");
        (path, writer)
    }

    #[test]
    fn the_thread_checkpoints_what_the_writer_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, mut writer) = catalog(dir.path());
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

    #[test]
    fn a_steady_writer_keeps_the_wal_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, mut writer) = catalog(dir.path());
        let checkpointer = Checkpointer::start(&path, &mut writer).expect("start");
        // 60,000 pages, one commit after the other, with no pause left for
        // the thread: the WAL must not keep them all (the reverted thread
        // let it grow beside a steady writer).
        for _ in 0..4000 {
            writer
                .execute("INSERT INTO t VALUES (zeroblob(60000))", [])
                .expect("insert");
            writer.execute("DELETE FROM t", []).expect("delete");
        }
        let wal = std::fs::metadata(dir.path().join("catalog.db-wal"))
            .expect("wal")
            .len();
        let page = 4096 + 24;
        assert!(
            wal <= (i64::from(WRITER_CHECKPOINTS_AT) + 200) as u64 * page,
            "the WAL grew to {wal} bytes"
        );
        drop(checkpointer);
        let (log, copied) = wal_pages(&writer);
        assert_eq!(log, copied, "a last checkpoint copies everything");
    }
}
