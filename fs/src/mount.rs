//! Mounting the two filesystems and unmounting them cleanly. Both mounts
//! are multithreaded, allow other users (the kernel checks permissions
//! against the attributes: default_permissions). No auto_unmount: its
//! fusermount3 watcher proved unreliable with two mounts in one process; a
//! mount left by a killed daemon is cleaned up when the next one starts.
//!
//! A mount that is busy when the daemon stops (a shell's working directory
//! inside it, a file held open) refuses a plain unmount with EBUSY. Leaving
//! it would leave a dead mount behind the exiting daemon ("Transport
//! endpoint is not connected" until the next start), so it is detached
//! instead: the files a live mount has open for writing are written back
//! first (the writeback cache's dirty pages), then the mount is lazily
//! unmounted (gone from the namespace at once) and its FUSE connection
//! aborted, so that whoever still holds it gets ENOTCONN rather than a hang,
//! and the daemon's FUSE threads end. Only the mount this handle made is
//! ever detached: its connection is recorded when it is mounted.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{BackgroundSession, Config, INodeNo, MountOption, SessionACL};

use crate::error::Context;
use crate::fusectl;
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

/// How long the write-back of a busy live mount's open files may take.
const BUSY_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// A mounted filesystem; unmounted by `unmount` or on drop.
pub struct MountHandle {
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
    /// The mountpoint as mountinfo names it (symlinks resolved).
    kernel_path: PathBuf,
    /// The FUSE connection of this mount, from mountinfo right after it
    /// was made: what a busy mount's detach checks and aborts.
    connection: Option<u64>,
    /// A live mount's volume: its files open for writing are written back
    /// before a busy mount is detached.
    volume: Option<Arc<Volume>>,
}

impl MountHandle {
    fn new(
        mountpoint: &Path,
        kernel_path: PathBuf,
        session: BackgroundSession,
        volume: Option<Arc<Volume>>,
    ) -> MountHandle {
        // The newest FUSE mount listed at the path is the one just made.
        let connection = fusectl::read_fuse_mounts()
            .ok()
            .and_then(|mounts| {
                mounts
                    .into_iter()
                    .rev()
                    .find(|m| m.mountpoint == kernel_path)
            })
            .map(|m| m.connection);
        if connection.is_none() {
            tracing::warn!(
                "{} is not in {}: a busy unmount cannot be detached",
                mountpoint.display(),
                fusectl::MOUNTINFO
            );
        }
        MountHandle {
            mountpoint: mountpoint.to_path_buf(),
            session: Some(session),
            kernel_path,
            connection,
            volume,
        }
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and waits for the filesystem's threads to end; a busy mount
    /// is detached instead (see the top of this file). Either way nothing
    /// is left mounted when it returns `Ok`.
    pub fn unmount(mut self) -> Result<()> {
        self.take_down()
    }

    fn take_down(&mut self) -> Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        match session.umount_and_join() {
            Ok(()) => Ok(()),
            // fuser gave the mount up with its session: the threads serve
            // on, detached, until the connection is aborted below.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => self.detach_busy(),
            Err(e) => Err(e).context(|| format!("unmounting {}", self.mountpoint.display())),
        }
    }

    fn detach_busy(&self) -> Result<()> {
        let what = || format!("detaching the busy mount {}", self.mountpoint.display());
        let Some(connection) = self.connection else {
            return Err(io::Error::from_raw_os_error(libc::EBUSY)).context(what);
        };
        tracing::warn!(
            "{} is busy (a working directory or an open file in it): detaching it",
            self.mountpoint.display()
        );
        if let Some(volume) = &self.volume {
            let open = volume.files_open_for_writing();
            if let Err(e) =
                crate::flusher::flush(vec![(self.mountpoint.clone(), open)], BUSY_FLUSH_TIMEOUT)
            {
                tracing::error!(
                    "writing back the open files of {}: {e}",
                    self.mountpoint.display()
                );
            }
        }
        // Detach only while the topmost mount there is still this one.
        let ours_on_top = fusectl::read_fuse_mounts()
            .context(what)?
            .iter()
            .rev()
            .find(|m| m.mountpoint == self.kernel_path)
            .is_some_and(|m| m.connection == connection);
        if ours_on_top {
            lazy_unmount(&self.kernel_path).context(what)?;
        }
        match fusectl::abort(connection) {
            Ok(()) => {}
            // Already gone: its last user let go meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                "aborting the FUSE connection {connection} of {}: {e} (it ends when the daemon exits)",
                self.mountpoint.display()
            ),
        }
        tracing::info!(
            "detached {}; processes still inside it get ENOTCONN",
            self.mountpoint.display()
        );
        Ok(())
    }
}

/// `umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW)`.
fn lazy_unmount(path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if let Err(e) = self.take_down() {
            tracing::warn!("{e}");
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
    let kernel_path = kernel_path(mountpoint)?;
    let live = LiveFs::new(volume.clone())?;
    let kernel = live.kernel_link();
    let fs = LiveAdapter {
        fs: live,
        writeback_cache: options.writeback_cache,
        caller_umask: false,
    };
    let session = fuser::spawn_mount(fs, mountpoint, &config(name, false, options.threads))
        .context(|| format!("mounting {}", mountpoint.display()))?;
    let notifier = session.notifier();
    // A negative offset invalidates the attributes only: invalidating the
    // pages of a file whose write is in flight would wait on the pages that
    // write holds locked until umbra replies.
    let _ = kernel.set(Box::new(move |ino| {
        let _ = notifier.inval_inode(INodeNo(ino), -1, 0);
    }));
    Ok(MountHandle::new(
        mountpoint,
        kernel_path,
        session,
        Some(volume),
    ))
}

/// Mounts the shadow copy browser read-only at `mountpoint`.
pub fn mount_snapshots(
    browser: Arc<Browser>,
    mountpoint: &Path,
    options: &MountOptions,
) -> Result<MountHandle> {
    let kernel_path = kernel_path(mountpoint)?;
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
    Ok(MountHandle::new(mountpoint, kernel_path, session, None))
}

/// The mountpoint as the kernel will name it, resolved before anything is
/// mounted there (as fuser itself does).
fn kernel_path(mountpoint: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(mountpoint).context(|| format!("resolving {}", mountpoint.display()))
}
