//! Step (1) of flush-and-hold: making the kernel hand the daemon what its
//! writeback cache still holds for the live mounts, from a thread that
//! serves no FUSE request. It owns that thread and knows its id, so that the
//! live mount can tell the daemon's own FSYNCs from an application's. It
//! never holds a gate and never opens a backing file (it only borrows the
//! handle syscall wrapper of backing.rs, for files on the live mount).
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
//!
//! Files are opened by FUSE file handle, not by path: a file open for
//! writing may have been renamed, or may only be reachable through a link
//! other than the one it was opened by. The kernel resolves a FUSE handle
//! from its inode cache, where every open file's inode is.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use crate::backing;

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
    #[error("flushing inode {ino} of {}: {source}", mount.display())]
    File {
        mount: PathBuf,
        ino: u64,
        source: io::Error,
    },
    #[error("flushing the files open for writing took longer than {0:?}")]
    Timeout(Duration),
    #[error("starting the flush: {0}")]
    Spawn(io::Error),
    #[error("the flush thread died")]
    Died,
}

/// Flushes, for each live mountpoint, the files of those inode numbers, on a
/// thread of its own, waiting at most `timeout`. An inode the kernel has
/// forgotten meanwhile was closed, and so written back.
pub(crate) fn flush(
    targets: Vec<(PathBuf, Vec<u64>)>,
    timeout: Duration,
) -> Result<(), FlushError> {
    if targets.iter().all(|(_, inos)| inos.is_empty()) {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("flush".into())
        .spawn(move || {
            let _listed = Listed::me();
            let _ = tx.send(flush_all(&targets));
        })
        .map_err(FlushError::Spawn)?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(FlushError::Timeout(timeout)),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(FlushError::Died),
    }
}

fn flush_all(targets: &[(PathBuf, Vec<u64>)]) -> Result<(), FlushError> {
    for (mount, inos) in targets.iter().filter(|(_, inos)| !inos.is_empty()) {
        let failed = |ino, source| FlushError::File {
            mount: mount.clone(),
            ino,
            source,
        };
        // Not O_PATH: open_by_handle_at refuses an O_PATH descriptor.
        let root = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(mount)
            .map_err(|e| failed(1, e))?;
        for &ino in inos {
            match flush_one(&root, ino) {
                Err(e) if !matches!(e.raw_os_error(), Some(libc::ESTALE | libc::ENOENT)) => {
                    return Err(failed(ino, e));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// FUSE's file handle (fuse_encode_fh, type 0x81): the node id in two
/// 32-bit halves, then the generation, which the live mount always gives
/// as 0.
fn fuse_handle(ino: u64) -> Vec<u8> {
    const FILEID_FUSE_WITHOUT_PARENT: i32 = 0x81;
    let mut handle = Vec::with_capacity(20);
    handle.extend_from_slice(&12u32.to_ne_bytes());
    handle.extend_from_slice(&FILEID_FUSE_WITHOUT_PARENT.to_ne_bytes());
    handle.extend_from_slice(&((ino >> 32) as u32).to_ne_bytes());
    handle.extend_from_slice(&(ino as u32).to_ne_bytes());
    handle.extend_from_slice(&0u32.to_ne_bytes());
    handle
}

fn flush_one(root: &File, ino: u64) -> io::Result<()> {
    let fd = backing::open_by_handle(
        root.as_fd(),
        &fuse_handle(ino),
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
    )?;
    File::from(fd).sync_all()
}
