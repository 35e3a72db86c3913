//! The daemon's descriptor budget: how many backing descriptors the caches
//! of this process may keep open, sized once from the soft RLIMIT_NOFILE,
//! and the one cache of the live mounts' O_PATH descriptors.
//!
//! Nothing in umbra holds a descriptor per object of a tree: a live inode
//! keeps a file handle and gets its descriptor from `LiveFds`, the browser
//! keeps its live descriptors and files in LRUs sized here. What is left
//! grows only with what users do (the files and directories they hold open
//! through the live mount, the control clients they connect), plus a fixed
//! few (the store's catalog, its packs open for reading, an LRU of 32, the
//! FUSE devices, the control socket). Half of the limit is kept for those.

use std::io;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, OnceLock};

use lru::LruCache;

/// How many descriptors each cache may keep open.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    /// O_PATH descriptors of live inodes, for every live mount together.
    pub live: usize,
    /// O_PATH descriptors of live objects the browser reads through.
    pub snap_fds: usize,
    /// Live files the browser (and its read-ahead) keeps open for reading.
    pub snap_files: usize,
}

impl Budget {
    /// Half of the soft limit goes to the caches, the live mounts taking
    /// half of that; each share is capped (past that, more open descriptors
    /// only pin more kernel inodes) and has a floor (a tiny limit still
    /// lets a walk make progress).
    pub(crate) fn for_limit(soft: u64) -> Budget {
        let caches = usize::try_from(soft / 2).unwrap_or(usize::MAX);
        Budget {
            live: (caches / 2).clamp(16, 16 * 1024),
            snap_fds: (caches / 4).clamp(8, 1024),
            snap_files: (caches / 8).clamp(4, 256),
        }
    }
}

/// The soft RLIMIT_NOFILE of this process (unlimited counts as a million).
fn soft_limit() -> io::Result<u64> {
    // SAFETY: zeroed rlimit is a valid out-buffer.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit writes a plain struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(if limit.rlim_cur == libc::RLIM_INFINITY {
        1 << 20
    } else {
        limit.rlim_cur
    })
}

/// The budget of this process, from its limit when first asked (the daemon
/// raises the limit before it mounts anything).
pub(crate) fn budget() -> Budget {
    static BUDGET: OnceLock<Budget> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let soft = soft_limit().unwrap_or_else(|e| {
            tracing::warn!("reading RLIMIT_NOFILE: {e}; assuming 1024");
            1024
        });
        let budget = Budget::for_limit(soft);
        tracing::debug!(soft, ?budget, "descriptor budget");
        budget
    })
}

/// Shards of the live cache: FUSE workers that hit different inodes rarely
/// wait for each other.
const SHARDS: usize = 8;

/// The O_PATH descriptors of live inodes, most recently used kept, keyed
/// by a number each node takes once (`LiveFds::serial`). A descriptor
/// handed out is an `Arc`: eviction only closes it once the operation
/// using it has let go.
pub(crate) struct LiveFds {
    shards: Vec<Mutex<LruCache<u64, Arc<OwnedFd>>>>,
    next: std::sync::atomic::AtomicU64,
}

impl LiveFds {
    fn new(capacity: usize) -> LiveFds {
        let per = NonZeroUsize::new(capacity.div_ceil(SHARDS)).unwrap_or(NonZeroUsize::MIN);
        LiveFds {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per)))
                .collect(),
            next: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// The one cache of the process, sized by `budget().live`.
    pub(crate) fn shared() -> &'static LiveFds {
        static LIVE: OnceLock<LiveFds> = OnceLock::new();
        LIVE.get_or_init(|| LiveFds::new(budget().live))
    }

    /// A key no other node of this process has.
    pub(crate) fn serial(&self) -> u64 {
        self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, LruCache<u64, Arc<OwnedFd>>> {
        self.shards[(key as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, key: u64) -> Option<Arc<OwnedFd>> {
        self.shard(key).get(&key).cloned()
    }

    /// Keeps `fd` for `key`; the least recently used descriptor of the
    /// shard goes (it closes outside the lock, once nobody uses it).
    pub(crate) fn put(&self, key: u64, fd: Arc<OwnedFd>) {
        let evicted = self.shard(key).push(key, fd);
        drop(evicted);
    }

    /// Keeps `fd` for `key` unless a descriptor is cached for it already.
    pub(crate) fn offer(&self, key: u64, fd: OwnedFd) {
        let mut shard = self.shard(key);
        if !shard.contains(&key) {
            let evicted = shard.push(key, Arc::new(fd));
            drop(shard);
            drop(evicted);
        }
    }

    pub(crate) fn remove(&self, key: u64) {
        let removed = self.shard(key).pop(&key);
        drop(removed);
    }

    /// Descriptors held now (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_stays_within_half_of_a_small_limit() {
        let b = Budget::for_limit(1024);
        assert!(b.live + b.snap_fds + b.snap_files <= 512, "{b:?}");
        assert_eq!(b.live, 256);
        let big = Budget::for_limit(1 << 20);
        assert_eq!((big.live, big.snap_fds, big.snap_files), (16384, 1024, 256));
    }

    #[test]
    fn live_cache_is_bounded_and_keeps_handed_out_descriptors_open() {
        let cache = LiveFds::new(16);
        let first = Arc::new(OwnedFd::from(std::fs::File::open("/").expect("open /")));
        cache.put(0, first.clone());
        for key in 1..100 {
            let fd = OwnedFd::from(std::fs::File::open("/").expect("open /"));
            cache.put(key, Arc::new(fd));
        }
        assert!(cache.len() <= 16, "{} cached", cache.len());
        assert!(cache.get(0).is_none(), "the oldest was evicted");
        // Evicted while held: still open.
        crate::backing::fstat(std::os::fd::AsFd::as_fd(&*first)).expect("still open");
    }
}
