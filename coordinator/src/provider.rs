//! The Provider trait: what makes the copy once every writer froze. The
//! copy-on-write provider (umbra-fs) implements it over the live volumes;
//! a native one (btrfs) can come later behind the same trait. This file
//! never knows how a provider holds or commits anything.

use std::time::{Duration, Instant};

use umbra_ids::SetId;

use crate::state::SetWriter;

/// The set being made, as the writers are told about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetPlan {
    /// The snapshot set id every writer sees (a GUID, as VSS's).
    pub id: String,
    /// The name the set will have.
    pub name: String,
    pub label: Option<String>,
    pub volumes: Vec<String>,
}

/// A set the provider committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The set's id in the catalog.
    pub id: SetId,
    pub name: String,
    /// How long mutations of the set's volumes were held: the longest of
    /// `holds`, which ran side by side.
    pub hold: Duration,
    /// Each provider's hold, for a set that mixes providers.
    pub holds: Vec<ProviderHold>,
}

/// One provider's part of a set's hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderHold {
    /// Which provider ("cow", "btrfs").
    pub provider: String,
    pub volumes: Vec<String>,
    pub hold: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("the provider could not hold the volumes within {0:?}; the hold was released")]
    HoldTimeout(Duration),
    #[error("{0}")]
    Failed(String),
}

pub trait Provider: Sync {
    /// Once every writer prepared for the snapshot, before Freeze, while
    /// the writers still run: a provider that waits for others (a cluster
    /// set's other hosts) waits here, so that the writers' freeze is not
    /// spent waiting. An error aborts the set.
    fn before_freeze(&self, _plan: &SetPlan) -> Result<(), ProviderError> {
        Ok(())
    }
    /// Once every writer froze: flushes what the kernel still holds for
    /// the volumes, so that everything written before Freeze is in the set.
    /// Always followed by `release`.
    fn prepare(&self, plan: &SetPlan) -> Result<(), ProviderError>;
    /// Holds every mutation of the plan's volumes, commits the set at one
    /// instant and lets mutations go, all before `deadline`; past it, the
    /// hold is released and nothing is committed.
    fn hold_and_commit(
        &self,
        plan: &SetPlan,
        deadline: Instant,
    ) -> Result<Committed, ProviderError>;
    /// Records which writers took part and how they fared: once after
    /// PostSnapshot, which makes the set whole (a set committed but never
    /// recorded was interrupted, and the provider drops it when it next
    /// starts), and again after BackupComplete.
    fn record(&self, set: &Committed, writers: &[SetWriter]) -> Result<(), ProviderError>;
    /// Deletes a committed set whose writers failed after the commit.
    fn discard(&self, set: &Committed) -> Result<(), ProviderError>;
    /// Undoes `prepare`, whatever happened since.
    fn release(&self, plan: &SetPlan);
}

impl<P: Provider + ?Sized> Provider for &P {
    fn before_freeze(&self, plan: &SetPlan) -> Result<(), ProviderError> {
        (**self).before_freeze(plan)
    }

    fn prepare(&self, plan: &SetPlan) -> Result<(), ProviderError> {
        (**self).prepare(plan)
    }

    fn hold_and_commit(
        &self,
        plan: &SetPlan,
        deadline: Instant,
    ) -> Result<Committed, ProviderError> {
        (**self).hold_and_commit(plan, deadline)
    }

    fn record(&self, set: &Committed, writers: &[SetWriter]) -> Result<(), ProviderError> {
        (**self).record(set, writers)
    }

    fn discard(&self, set: &Committed) -> Result<(), ProviderError> {
        (**self).discard(set)
    }

    fn release(&self, plan: &SetPlan) {
        (**self).release(plan)
    }
}
