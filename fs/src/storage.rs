//! The diff area (VSS's shadow copy storage, hence the name) and its
//! limits: what happens when a pre-image would pass
//! them: VSS's two policies. `DeleteOldest` (the default) deletes the oldest
//! sets until the pre-image fits and logs which, so live writes never fail
//! because of the diff area; `Protect` keeps every set and fails the live
//! write with ENOSPC instead. A disk that is full for an unprivileged
//! user (no f_bavail left: pre-images never take the blocks reserved for
//! root) or really full (ENOSPC from the store's own filesystem) is handled
//! by the same policy. `max_sets` caps
//! the number of sets: the oldest is deleted before a new one is taken.
//!
//! The check runs inside a mutation, which holds its volume's epoch gate
//! shared and its objects' locks: deleting a set from here takes only the
//! sets' deletion gates (snapshot readers take those after object locks)
//! and refreshes the browser from another thread, never from this request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use umbra_store::{SetInfo, Store};

use crate::cow::StorageGuard;
use crate::{Browser, FsError, Result, Sets, Volume};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnFull {
    #[default]
    DeleteOldest,
    Protect,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageLimits {
    /// Bytes of pre-image data the diff area may hold.
    pub max_bytes: Option<u64>,
    /// How many sets may exist at once.
    pub max_sets: Option<usize>,
    pub on_full: OnFull,
}

pub struct ShadowStorage {
    store: Arc<Store>,
    /// Deletes the oldest set on every volume, whatever its provider.
    sets: Weak<Sets>,
    browser: Weak<Browser>,
    limits: StorageLimits,
    warned: AtomicBool,
    deleting: Mutex<()>,
}

impl ShadowStorage {
    /// Puts the limits in force on every copy-on-write volume; `max_sets`
    /// counts the sets of every provider.
    pub fn install(
        sets: &Arc<Sets>,
        volumes: &[Arc<Volume>],
        browser: &Arc<Browser>,
        limits: StorageLimits,
    ) -> Arc<ShadowStorage> {
        let area = Arc::new(ShadowStorage {
            store: sets.store().clone(),
            sets: Arc::downgrade(sets),
            browser: Arc::downgrade(browser),
            limits,
            warned: AtomicBool::new(false),
            deleting: Mutex::new(()),
        });
        for vol in volumes {
            vol.cow.set_guard(area.clone());
        }
        area
    }

    pub fn limits(&self) -> StorageLimits {
        self.limits
    }

    /// Before a set is taken: deletes the oldest sets while `max_sets` are
    /// there already.
    pub fn before_new_set(&self) -> Result<Vec<SetInfo>> {
        let mut deleted = Vec::new();
        let Some(max) = self.limits.max_sets else {
            return Ok(deleted);
        };
        while self.store.sets()?.len() >= max.max(1) {
            match self.delete_oldest("max_sets reached")? {
                Some(set) => deleted.push(set),
                None => break,
            }
        }
        Ok(deleted)
    }

    /// Deletes the oldest set, and says which; None if there is none.
    fn delete_oldest(&self, why: &str) -> Result<Option<SetInfo>> {
        let _one_at_a_time = self.deleting.lock().unwrap_or_else(|p| p.into_inner());
        let Some(oldest) = self.store.sets()?.into_iter().next() else {
            return Ok(None);
        };
        let Some(sets) = self.sets.upgrade() else {
            return Ok(None);
        };
        sets.delete(oldest.id)?;
        tracing::warn!(set = %oldest.name, id = %oldest.id, "diff area: {why}; deleted the oldest shadow copy set");
        if let Some(browser) = self.browser.upgrade() {
            // Not from this thread: it may be serving a request of a mount.
            std::thread::spawn(move || {
                if let Err(e) = browser.refresh() {
                    tracing::warn!("refreshing the browser: {e}");
                }
            });
        }
        Ok(Some(oldest))
    }

    fn full(&self, why: &str) -> Result<bool> {
        match self.limits.on_full {
            OnFull::Protect => {
                tracing::warn!(
                    "diff area: {why}; on_full = protect keeps the sets and fails the write"
                );
                Err(FsError::NoRoom(format!(
                    "{why}; on_full = protect keeps the sets"
                )))
            }
            OnFull::DeleteOldest => self.delete_oldest(why).map(|d| d.is_some()),
        }
    }
}

impl StorageGuard for ShadowStorage {
    fn make_room(&self, bytes: u64) -> Result<()> {
        // The disk counts as full where an unprivileged user's would be
        // (Store::free_bytes); room made there comes back as free space.
        while bytes > 0 && self.store.free_bytes() < bytes {
            if !self.disk_full()? {
                break;
            }
        }
        let Some(max) = self.limits.max_bytes else {
            return Ok(());
        };
        loop {
            let used = self.store.diff_bytes();
            if used.saturating_add(bytes) <= max {
                if used.saturating_add(bytes) > max / 10 * 8
                    && !self.warned.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(used, max, "diff area is over 80 % of max_diff_size");
                }
                return Ok(());
            }
            // With no set left nothing needs keeping: let this one through.
            if !self.full("max_diff_size reached")? {
                return Ok(());
            }
        }
    }

    fn disk_full(&self) -> Result<bool> {
        if self.limits.on_full == OnFull::Protect {
            return self.full("the diff area's disk is full");
        }
        // Deleting needs a little room itself: the store's reserve makes it.
        self.store.release_reserve();
        let deleted = self.full("the diff area's disk is full");
        self.store.restore_reserve();
        deleted
    }
}
