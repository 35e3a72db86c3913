//! Mounting the two filesystems and unmounting them cleanly. Both mounts
//! are multithreaded, allow other users (the kernel checks permissions
//! against the attributes: default_permissions). No auto_unmount: its
//! fusermount3 watcher proved unreliable with two mounts in one process; a
//! mount left by a killed daemon is cleaned up when the next one starts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{BackgroundSession, Config, INodeNo, MountOption, SessionACL};

use crate::error::Context;
use crate::live::{LiveAdapter, LiveFs};
use crate::snap::{Kernel, SnapAdapter};
use crate::{Browser, Result, Volume};

#[derive(Clone, Debug)]
pub struct MountOptions {
    /// FUSE worker threads.
    pub threads: usize,
    /// The kernel's writeback cache on the live mount: write() returns once
    /// its bytes are in the page cache, and the kernel sends them in large
    /// requests later (or when a set is flushed, a file closed or synced).
    /// Off by default: a daemon killed meanwhile loses what it was not sent.
    pub writeback_cache: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            threads: 4,
            writeback_cache: false,
        }
    }
}

/// A mounted filesystem; unmounted by `unmount` or on drop.
pub struct MountHandle {
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
}

impl MountHandle {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and waits for the filesystem's threads to end.
    pub fn unmount(mut self) -> Result<()> {
        match self.session.take() {
            Some(session) => session
                .umount_and_join()
                .context(|| format!("unmounting {}", self.mountpoint.display())),
            None => Ok(()),
        }
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if let Some(session) = self.session.take()
            && let Err(e) = session.umount_and_join()
        {
            tracing::warn!("unmounting {}: {e}", self.mountpoint.display());
        }
    }
}

fn config(fsname: String, read_only: bool, threads: usize) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(fsname),
        MountOption::Subtype("umbra".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    if read_only {
        config.mount_options.push(MountOption::RO);
        config.mount_options.push(MountOption::NoDev);
        config.mount_options.push(MountOption::NoSuid);
    } else {
        config.mount_options.push(MountOption::Dev);
        config.mount_options.push(MountOption::Suid);
    }
    config.acl = SessionACL::All;
    config.n_threads = Some(threads.max(1));
    config.clone_fd = true;
    config
}

/// Mounts `volume` read-write at `mountpoint`.
pub fn mount_live(
    volume: Arc<Volume>,
    mountpoint: &Path,
    options: &MountOptions,
) -> Result<MountHandle> {
    let name = format!("umbra:{}", volume.name());
    let fs = LiveAdapter {
        fs: LiveFs::new(volume)?,
        writeback_cache: options.writeback_cache,
        caller_umask: false,
    };
    let session = fuser::spawn_mount(fs, mountpoint, &config(name, false, options.threads))
        .context(|| format!("mounting {}", mountpoint.display()))?;
    Ok(MountHandle {
        mountpoint: mountpoint.to_path_buf(),
        session: Some(session),
    })
}

/// Mounts the shadow copy browser read-only at `mountpoint`.
pub fn mount_snapshots(
    browser: Arc<Browser>,
    mountpoint: &Path,
    options: &MountOptions,
) -> Result<MountHandle> {
    let fs = SnapAdapter::new(browser.clone());
    let session = fuser::spawn_mount(
        fs,
        mountpoint,
        &config("umbra:snapshots".into(), true, options.threads),
    )
    .context(|| format!("mounting {}", mountpoint.display()))?;
    let notifier = session.notifier();
    browser.connect(Box::new(move |what| {
        // The kernel may not know the name or inode at all; that is not an
        // error.
        let _ = match what {
            Kernel::ForgetEntry(parent, name) => notifier.inval_entry(INodeNo(parent), name),
            Kernel::ForgetInode(ino) => notifier.inval_inode(INodeNo(ino), 0, 0),
        };
    }));
    Ok(MountHandle {
        mountpoint: mountpoint.to_path_buf(),
        session: Some(session),
    })
}
