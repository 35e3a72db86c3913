//! Step (1) of flush-and-hold: making the kernel hand the daemon what its
//! writeback cache still holds for the live mounts, from a thread that
//! serves no FUSE request. It owns that thread and knows its id, so that the
//! live mount can tell the daemon's own FSYNCs from an application's. It
//! never holds a gate and never opens a backing file.
//!
//! With the writeback cache a write() returns once its bytes are in the
//! kernel's page cache, and the kernel owns the file's size and mtime until
//! it sends them (WRITE, then SETATTR from `write_inode`). close() and the
//! last munmap write a file back whole before they return (`fuse_flush`,
//! `fuse_release`), so what can still be dirty belongs to files the kernel
//! has open for writing. `fsync` through the mount is the one call that
//! writes their pages back, waits for the daemon's replies and then sends
//! the times; `sync_file_range` sends no times, and `syncfs` is no barrier
//! on FUSE. The FSYNC that ends it needs no backing fsync: a set promises
//! what was written, not durability the application never asked for.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

/// Thread ids of the flushes running in this process.
static FLUSHERS: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

fn flushers() -> MutexGuard<'static, Option<HashSet<u32>>> {
    FLUSHERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a request comes from one of the daemon's own flushes (`pid` is
/// the FUSE request's, which the kernel fills with the calling thread's id).
pub(crate) fn is_flusher(pid: u32) -> bool {
    flushers().as_ref().is_some_and(|set| set.contains(&pid))
}

/// Keeps the current thread listed as a flusher while alive.
struct Listed(u32);

impl Listed {
    fn me() -> Listed {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        flushers().get_or_insert_with(HashSet::new).insert(tid);
        Listed(tid)
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        if let Some(set) = flushers().as_mut() {
            set.remove(&self.0);
        }
    }
}

/// Why a flush failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FlushError {
    #[error("flushing {path}: {source}")]
    File { path: PathBuf, source: io::Error },
    #[error("flushing the files open for writing took longer than {0:?}")]
    Timeout(Duration),
    #[error("starting the flush: {0}")]
    Spawn(io::Error),
}

/// Flushes `paths` (files on live mounts) on a thread of its own, waiting
/// at most `timeout`. A file renamed or removed meanwhile is skipped: its
/// close wrote it back, or another name of it is among `paths`.
pub(crate) fn flush(paths: Vec<PathBuf>, timeout: Duration) -> Result<(), FlushError> {
    if paths.is_empty() {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("flush".into())
        .spawn(move || {
            let _listed = Listed::me();
            let result = paths.iter().try_for_each(|path| match flush_one(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(FlushError::File {
                    path: path.clone(),
                    source: e,
                }),
                _ => Ok(()),
            });
            let _ = tx.send(result);
        })
        .map_err(FlushError::Spawn)?;
    rx.recv_timeout(timeout)
        .unwrap_or(Err(FlushError::Timeout(timeout)))
}

fn flush_one(path: &std::path::Path) -> io::Result<()> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?
        .sync_all()
}
