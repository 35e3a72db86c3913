//! What the open epoch remembers of the volume's objects, so that a
//! mutation need not ask the store: what each object had preserved, which
//! objects were born, how often each directory was left by name. Every
//! one of these is a hint that the store can answer or that only saves
//! work, so each is bounded (`EPOCH_MEMORY` entries): a user writing ten
//! million files between two sets must not grow the daemon by gigabytes.
//! Past the bound a map is forgotten; what it knew is then asked of the
//! store (preserved) or costs a record or a listing more (births,
//! departures), never a wrong snapshot. This file never decides what to
//! preserve.

use std::collections::{HashMap, HashSet};

use umbra_store::ObjectId;

/// Entries each map of the open epoch holds at most. A million objects
/// (or blocks) cost tens of MiB; the store answers for the rest.
pub(crate) const EPOCH_MEMORY: usize = 1 << 20;

/// What one object has already had preserved in the open epoch.
#[derive(Clone, Debug, Default)]
pub(super) struct Preserved {
    /// The size at the start of the epoch, once the attributes are kept.
    pub attr_size: Option<u64>,
    pub dir: bool,
    /// Its handle is durable (this process stored it).
    pub handle: bool,
    /// A directory: the metadata and handles of every entry are kept (or
    /// it is too large for that, `CHILDREN_MAX`): none is to be kept at once.
    pub children: bool,
    pub blocks: HashSet<u64>,
}

/// What the objects of the open epoch had preserved, as far as this
/// process remembers.
#[derive(Debug, Default)]
pub(super) struct Known {
    objects: HashMap<ObjectId, Preserved>,
    /// Objects and blocks remembered: what `objects` costs.
    entries: usize,
    /// Something was forgotten in this epoch: an object not remembered
    /// may have records, which the store holds.
    forgot: bool,
}

impl Known {
    #[cfg(test)]
    pub fn entries(&self) -> usize {
        self.entries
    }

    pub fn get(&self, object: ObjectId) -> Option<&Preserved> {
        self.objects.get(&object)
    }

    /// Whether an object not remembered has had nothing preserved: only
    /// if every record of the epoch was written by this process and none
    /// forgotten since.
    pub fn complete(&self, began_here: bool) -> bool {
        began_here && !self.forgot
    }

    pub fn remembers(&self, object: ObjectId) -> bool {
        self.objects.contains_key(&object)
    }

    /// `object`'s entry, made empty if it is not remembered.
    pub fn entry(&mut self, object: ObjectId) -> &mut Preserved {
        let entries = &mut self.entries;
        self.objects.entry(object).or_insert_with(|| {
            *entries += 1;
            Preserved::default()
        })
    }

    pub fn add_block(&mut self, object: ObjectId, block: u64) {
        if self.entry(object).blocks.insert(block) {
            self.entries += 1;
        }
    }

    /// Remembers what the store said of `object`, unless a mutation
    /// remembered it meanwhile (what it stored is newer).
    pub fn load(&mut self, object: ObjectId, stored: Preserved) {
        if !self.objects.contains_key(&object) {
            self.entries += 1 + stored.blocks.len();
            self.objects.insert(object, stored);
        }
    }

    /// Forgets everything once past `limit` entries.
    pub fn bound(&mut self, limit: usize) {
        if self.entries > limit {
            tracing::debug!(
                entries = self.entries,
                "forgetting what the epoch preserved; the store remembers"
            );
            *self = Known {
                forgot: true,
                ..Known::default()
            };
        }
    }
}

/// Forgets all of `set` once it holds `limit` objects: an object born in
/// the open epoch and forgotten is then treated as one a set has, and a
/// change of it keeps a record no set reaches (freed with the set).
pub(super) fn bound_births(set: &mut HashSet<ObjectId>, limit: usize) {
    if set.len() >= limit {
        *set = HashSet::new();
    }
}

/// Forgets all of `counts` once it holds `limit` directories: a directory
/// forgotten counts its departures from zero again.
pub(super) fn bound_departures(counts: &mut HashMap<ObjectId, u32>, limit: usize) {
    if counts.len() >= limit {
        *counts = HashMap::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_forgets_past_its_bound_and_then_says_the_store_must_answer() {
        let mut known = Known::default();
        assert!(known.complete(true));
        for b in 0..5 {
            known.add_block(ObjectId(1), b);
        }
        known.add_block(ObjectId(1), 0);
        known.entry(ObjectId(2)).dir = true;
        assert_eq!(known.entries, 1 + 5 + 1);
        known.bound(7);
        assert!(known.remembers(ObjectId(1)) && known.complete(true));
        known.add_block(ObjectId(3), 0);
        known.bound(7);
        assert!(!known.remembers(ObjectId(1)) && !known.remembers(ObjectId(2)));
        assert!(!known.complete(true), "a miss must now ask the store");
        assert_eq!(known.entries, 0);
        known.load(ObjectId(1), Preserved::default());
        assert_eq!(known.entries, 1);
    }
}
