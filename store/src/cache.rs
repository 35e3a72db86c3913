//! An LRU cache of hot chunks, bounded in bytes, so that re-reading a
//! preserved block or directory does not go back to the pack.

use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::ChunkHash;

pub(crate) struct ChunkCache {
    inner: Mutex<Inner>,
}

struct Inner {
    lru: LruCache<ChunkHash, Arc<[u8]>>,
    bytes: usize,
    capacity: usize,
}

impl ChunkCache {
    pub fn new(capacity_bytes: usize) -> ChunkCache {
        ChunkCache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
                capacity: capacity_bytes,
            }),
        }
    }

    pub fn get(&self, hash: &ChunkHash) -> Option<Arc<[u8]>> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.lru.get(hash).cloned()
    }

    pub fn insert(&self, hash: ChunkHash, data: Arc<[u8]>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if data.len() > inner.capacity {
            return;
        }
        inner.bytes += data.len();
        if let Some(old) = inner.lru.put(hash, data) {
            inner.bytes -= old.len();
        }
        while inner.bytes > inner.capacity {
            match inner.lru.pop_lru() {
                Some((_, evicted)) => inner.bytes -= evicted.len(),
                None => break,
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lru
            .len()
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_past_capacity() {
        let cache = ChunkCache::new(10);
        let a = ChunkHash::of(b"a");
        let b = ChunkHash::of(b"b");
        let c = ChunkHash::of(b"c");
        cache.insert(a, Arc::from(&[1u8; 4][..]));
        cache.insert(b, Arc::from(&[2u8; 4][..]));
        assert!(cache.get(&a).is_some()); // a is now more recent than b
        cache.insert(c, Arc::from(&[3u8; 4][..]));
        assert!(cache.get(&b).is_none());
        assert!(cache.get(&a).is_some());
        assert!(cache.get(&c).is_some());
        assert_eq!(cache.bytes(), 8);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn refuses_a_chunk_larger_than_the_cache() {
        let cache = ChunkCache::new(3);
        cache.insert(ChunkHash::of(b"x"), Arc::from(&[0u8; 4][..]));
        assert_eq!(cache.len(), 0);
    }
}
