//! Providers: what makes the copy of a volume once its writers froze, and
//! everything a set's copy is later asked for. A set may mix providers and
//! is still one set: one catalog row, one id and name, every writer frozen
//! around every provider's capture (sets.rs runs them side by side, so a
//! set's hold is its slowest provider's, not their sum).
//!
//! - `cow`: the copy-on-write provider. The live volume is a FUSE mount over
//!   a backing directory on any local filesystem; a set is an epoch closed
//!   in the catalog, and pre-images are kept as they are overwritten.
//! - `btrfs`: the live volume is a btrfs subvolume used directly; a set is a
//!   read-only snapshot the kernel makes.
//!
//! A third provider (XFS reflinks, LVM thin snapshots) is a new file here
//! implementing [`VolumeProvider`], a `provider = "..."` value in the
//! config, and, if its copies are whole trees the kernel keeps, the
//! [`TreeImages`] the browser serves by passthrough. The daemon knows
//! providers only through these traits and [`Sets`].

pub mod btrfs;
pub mod cow;
mod sets;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant as Clock};

use umbra_coordinator::ProviderError;
use umbra_store::{Epoch, NewSet, SetId, SetInfo, Store, VolumeId};

use crate::{Changes, Instant, Result, Version};

pub use sets::{SetMaker, Sets};

/// Which provider serves a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    Cow,
    Btrfs,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Cow => "cow",
            ProviderKind::Btrfs => "btrfs",
        }
    }
}

/// A volume as the daemon knows it, whatever serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeRef {
    pub id: VolumeId,
    pub name: String,
    pub kind: ProviderKind,
}

/// What a provider made of its volumes inside one set's freeze: kept once
/// the set is committed, undone if the set is abandoned.
pub trait Capture: Send {
    /// How long the provider held its volumes (cow: mutations waited;
    /// btrfs: the snapshot ioctls, side by side).
    fn hold(&self) -> Duration;
    /// The set is committed: the copies become the set's.
    fn keep(self: Box<Self>, set: &SetInfo) -> Result<()>;
    /// The set is abandoned: whatever was made goes.
    fn undo(self: Box<Self>);
}

/// Whatever a provider holds while a set's catalog row is removed.
pub trait Retiring {}
impl<T> Retiring for T {}

pub trait VolumeProvider: Send + Sync {
    fn kind(&self) -> ProviderKind;
    /// The volumes it serves.
    fn volumes(&self) -> Vec<VolumeRef>;
    /// Once the writers froze: makes what the applications wrote reach
    /// what the capture will copy (cow: the kernel's writeback cache).
    fn prepare(&self, volumes: &[VolumeId]) -> Result<(), ProviderError>;
    /// Copies `volumes` at one instant before `deadline`. A provider
    /// whose copy is the catalog itself (cow) calls `set.commit()` inside
    /// its hold; the others never call it.
    fn capture(
        &self,
        volumes: &[VolumeId],
        set: &Arc<SetCommit>,
        deadline: Clock,
    ) -> Result<Box<dyn Capture>, ProviderError>;
    /// Held while the set's catalog row is removed: no read of the set
    /// resolves against half-removed records.
    fn retire<'a>(&'a self, set: &SetInfo) -> Vec<Box<dyn Retiring + 'a>>;
    /// After the set's row is gone: frees what only it needed.
    fn reclaim(&self, set: &SetInfo) -> Result<()>;
    /// At start: frees copies of sets the catalog does not hold (a crash
    /// between a copy and its record, or during a deletion).
    fn sweep(&self, sets: &[SetInfo]) -> Result<()>;
    /// What changed in `volume` between two instants (`umbra diff`).
    fn changes(
        &self,
        volume: VolumeId,
        from: Instant,
        to: Instant,
        under: Option<&Path>,
    ) -> Result<Changes>;
    /// The versions of the file at `path` live and in `sets`, newest first.
    fn versions(
        &self,
        volume: VolumeId,
        sets: &[(SetId, Epoch)],
        path: &Path,
    ) -> Result<Vec<Version>>;
}

/// A provider whose copies are whole read-only trees the kernel keeps:
/// the browser serves them by passthrough.
pub trait TreeImages: Send + Sync {
    fn volume(&self) -> VolumeId;
    fn name(&self) -> &str;
    /// The root directory of the copy of `set`, None if it has none.
    fn image(&self, set: SetId) -> Result<Option<OwnedFd>>;
}

/// The catalog row of the set being made, committed once (pending its
/// writers) by whichever provider needs it inside its hold, or after every
/// capture when none does.
pub struct SetCommit {
    store: Arc<Store>,
    new: NewSet,
    guid: String,
    done: Mutex<Option<SetInfo>>,
}

impl SetCommit {
    pub(crate) fn new(store: Arc<Store>, new: NewSet, guid: String) -> SetCommit {
        SetCommit {
            store,
            new,
            guid,
            done: Mutex::new(None),
        }
    }

    /// The set's GUID, as its writers know it.
    pub fn guid(&self) -> &str {
        &self.guid
    }

    /// Commits the row (the first call) or returns it.
    pub fn commit(&self) -> Result<SetInfo> {
        let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(set) = &*done {
            return Ok(set.clone());
        }
        let set = self.store.commit_pending_set(&self.new)?;
        *done = Some(set.clone());
        Ok(set)
    }

    /// The row, if committed.
    pub fn committed(&self) -> Option<SetInfo> {
        self.done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
