//! umbra-fs: the two FUSE filesystems of umbra.
//!
//! - `live`: a volume served read-write over its backing directory, which
//!   preserves, before each mutation, whatever the newest shadow copy still
//!   needs (the copy-on-write provider).
//! - `snap`: the read-only browser of every shadow copy set.
//!
//! Each is a core that tests drive without the kernel and a thin fuser
//! adapter. `provider` is the coordinator's copy-on-write provider over
//! the live volumes. `fusectl` finds and aborts FUSE connections, for a
//! daemon recovering from a predecessor stuck on its own mount. This crate
//! knows the store and the coordinator's Provider trait; it never opens
//! the control socket, never talks to a writer and never parses
//! configuration. A binary that mounts live
//! volumes must run `flush_child_main` when its first argument is
//! `FLUSH_COMMAND`: a set's flush re-executes the binary so (flusher.rs).

mod attr;
mod backing;
mod changes;
#[cfg(test)]
mod core_tests;
mod cow;
mod crash_point;
mod error;
mod fds;
mod flusher;
pub mod fusectl;
mod live;
mod mount;
mod providers;
mod reply;
mod shadow;
mod snap;
mod storage;
mod volume;

pub use changes::{Aspect, Change, Changes, Instant, Op, Version, changes, versions};
pub use error::{FsError, Result};
pub use flusher::{FLUSH_COMMAND, flush_child_main};
pub use mount::{MountHandle, MountOptions, mount_live, mount_snapshots};
pub use providers::btrfs::{BtrfsProvider, BtrfsVolume};
pub use providers::cow::CowProvider;
pub use providers::{
    Capture, ProviderKind, SetCommit, SetMaker, Sets, TreeImages, VolumeProvider, VolumeRef,
};
pub use shadow::{commit_set, delete_set};
pub use snap::Browser;
pub use storage::{OnFull, ShadowStorage, StorageLimits};
pub use volume::Volume;

/// The hidden folder the daemon owns at the root of every backing
/// directory: moved-aside inodes live there. Never shown by the live mount.
pub const HIDDEN_DIR: &str = ".umbra";
