//! Read-ahead across files. When the kernel reads a small file of a set,
//! the live files of the small entries that follow it in its directory are
//! opened and read in by the backing filesystem ahead of the reader, many
//! at once, so a walk that reads every file (tar, rsync, cp -r) does not
//! wait for the disk once per file as well as for the daemon. Listing or
//! stat-ing a tree (ls, find) reads nothing ahead. This file owns the
//! bookkeeping (what is queued, how far the reader got); the opening runs
//! on one thread of its own, off the FUSE workers.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use lru::LruCache;

/// Files up to this size are read ahead.
pub(crate) const SMALL: u64 = 64 * 1024;
/// How many entries one read queues ahead of itself.
const FILES: u32 = 64;
/// At most this many bytes are read ahead for one job.
pub(crate) const JOB_BYTES: u64 = 16 << 20;
/// Directories whose progress is remembered.
const DIRS: usize = 64;

/// Read ahead the small files among entries `from..to` of directory `dir`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Job {
    pub dir: u64,
    pub from: u32,
    pub to: u32,
}

#[derive(Clone, Copy, Debug)]
struct Progress {
    /// The furthest entry the kernel asked to read.
    read: u32,
    /// Entries before this one are queued already.
    queued: u32,
}

pub(crate) struct Ahead {
    jobs: SyncSender<Job>,
    dirs: Mutex<LruCache<u64, Progress>>,
}

impl Ahead {
    pub fn new() -> (Ahead, Receiver<Job>) {
        let (jobs, rx) = sync_channel(64);
        let dirs = Mutex::new(LruCache::new(
            NonZeroUsize::new(DIRS).unwrap_or(NonZeroUsize::MIN),
        ));
        (Ahead { jobs, dirs }, rx)
    }

    fn dirs(&self) -> std::sync::MutexGuard<'_, LruCache<u64, Progress>> {
        self.dirs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The kernel read entry `index` of `dir` (a small file, from its
    /// start): queues what follows, unless enough is queued already.
    pub fn read(&self, dir: u64, index: u32) {
        let mut dirs = self.dirs();
        let p = dirs.get_or_insert_mut(dir, || Progress {
            read: index,
            queued: index.saturating_add(1),
        });
        if index < p.read {
            // A new pass over the directory (or another reader): what was
            // queued for the last one is no help now.
            p.queued = index.saturating_add(1);
        }
        p.read = index;
        let from = p.queued.max(index.saturating_add(1));
        let to = index.saturating_add(1).saturating_add(FILES);
        if from.saturating_add(FILES / 2) >= to {
            return;
        }
        // A full queue drops the job: the reader then simply asks.
        if self.jobs.try_send(Job { dir, from, to }).is_ok() {
            p.queued = to;
        }
    }

    /// Whether entry `index` of `dir` is still ahead of the reader: what it
    /// passed is not worth pushing any more.
    pub fn ahead(&self, dir: u64, index: u32) -> bool {
        self.dirs().peek(&dir).is_none_or(|p| index > p.read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_queues_what_follows_once() {
        let (ahead, rx) = Ahead::new();
        ahead.read(7, 0);
        assert_eq!(
            rx.try_recv(),
            Ok(Job {
                dir: 7,
                from: 1,
                to: 65
            })
        );
        ahead.read(7, 3);
        assert!(rx.try_recv().is_err(), "most of the window is queued");
        ahead.read(7, 40);
        assert_eq!(
            rx.try_recv(),
            Ok(Job {
                dir: 7,
                from: 65,
                to: 105
            })
        );
        assert!(!ahead.ahead(7, 40) && ahead.ahead(7, 41));
        assert!(ahead.ahead(8, 0), "nothing known of another directory");
        ahead.read(7, 0);
        assert_eq!(
            rx.try_recv(),
            Ok(Job {
                dir: 7,
                from: 1,
                to: 65
            }),
            "a second pass reads ahead again"
        );
    }
}
