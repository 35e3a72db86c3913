//! Mounting the two filesystems and unmounting them cleanly.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{Browser, Result, Volume};

#[derive(Clone, Debug)]
pub struct MountOptions {
    /// FUSE worker threads.
    pub threads: usize,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions { threads: 4 }
    }
}

/// A mounted filesystem; unmounted by `unmount` or on drop.
pub struct MountHandle {
    mountpoint: PathBuf,
}

impl MountHandle {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    pub fn unmount(self) -> Result<()> {
        todo!()
    }
}

/// Mounts `volume` read-write at `mountpoint`.
pub fn mount_live(_volume: Arc<Volume>, _mountpoint: &Path, _options: &MountOptions) -> Result<MountHandle> {
    todo!()
}

/// Mounts the shadow copy browser read-only at `mountpoint`.
pub fn mount_snapshots(_browser: Arc<Browser>, _mountpoint: &Path, _options: &MountOptions) -> Result<MountHandle> {
    todo!()
}
