//! `umbra up`: the daemon's life from start to exit. It creates the missing
//! directories, takes the state dir's lock (freeing a predecessor stuck
//! dying on its own mount first), recovers stale mounts, opens the
//! store and every volume before it mounts anything, mounts the volumes and
//! the browser, serves the control socket, and on SIGINT or SIGTERM unmounts
//! the browser, then the volumes, and returns. The pieces live in the files
//! under `daemon/`; this file only puts them in order.

mod control;
mod lock;
mod mounts;
mod service;
mod stale;

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use umbra_coordinator::{Coordinator, Options as CoordinatorOptions, RegisterError};
use umbra_fs::{Browser, DiffArea, FsError, MountOptions, Volume};
use umbra_store::{Store, StoreOptions};

use crate::config::Config;
use control::{ControlError, ControlSocket};
use lock::{LockError, StateLock};
use mounts::{MountError, Mounts, announce};
use service::Service;
use stale::StaleError;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("creating {what} {}: {source}", .path.display())]
    CreateDir {
        what: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Stale(#[from] StaleError),
    #[error("opening the diff area in {}: {source}", .path.display())]
    Store {
        path: PathBuf,
        #[source]
        source: umbra_store::Error,
    },
    #[error("opening volume {name} over {}: {source}", .backing.display())]
    Volume {
        name: String,
        backing: PathBuf,
        #[source]
        source: FsError,
    },
    #[error("starting the shadow copy browser: {0}")]
    Browser(#[source] FsError),
    #[error("sizing the filesystem of the diff area {}: {source}", path.display())]
    DiffLimits {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("writer {0}: {1}")]
    Writer(String, #[source] RegisterError),
    #[error("listening for SIGINT and SIGTERM: {0}")]
    Signals(#[source] io::Error),
    #[error(transparent)]
    Mount(#[from] MountError),
}

/// How long a stuck predecessor may take to exit once its connections are
/// aborted.
const DYING_TIMEOUT: Duration = Duration::from_secs(5);

/// The state dir's lock. A predecessor killed while stuck on a request to
/// its own mount still holds it, and only aborting its FUSE connections
/// lets it finish exiting (stale.rs).
fn lock_state_dir(config: &Config) -> Result<StateLock, DaemonError> {
    let held_by = match StateLock::acquire(&config.state_dir) {
        Err(LockError::Held { pid: Some(pid), .. }) if stale::is_dying(pid) => pid,
        other => return Ok(other?),
    };
    tracing::warn!("the previous daemon (pid {held_by}) was killed but cannot finish exiting");
    stale::abort_connections(config.mountpoints().map(|(_, path)| path))?;
    let deadline = Instant::now() + DYING_TIMEOUT;
    loop {
        match StateLock::acquire(&config.state_dir) {
            Err(LockError::Held { .. }) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

/// Runs the daemon of `config` until SIGINT or SIGTERM.
pub fn up(config: Config) -> Result<(), DaemonError> {
    tracing::debug!(config = %config.origin, "starting");
    create_private_dir(&config.state_dir)?;
    let _lock = lock_state_dir(&config)?;
    // A dead mount answers ENOTCONN even to mkdir: recover before creating.
    for (what, path) in config.mountpoints() {
        if stale::recover(path)? {
            tracing::info!("recovered the mountpoint of {what} at {}", path.display());
        }
    }
    create_dirs(&config)?;

    let store_dir = config.state_dir.join("store");
    let store_options = StoreOptions {
        durability: config.diff.durability.into(),
        ..StoreOptions::default()
    };
    let store = Store::open(&store_dir, store_options).map_err(|source| DaemonError::Store {
        path: store_dir.clone(),
        source,
    })?;
    let store = Arc::new(store);
    // Every backing is opened before anything is mounted: an in-place mount
    // hides its backing directory from everyone, the daemon included.
    let mut volumes = Vec::with_capacity(config.volumes.len());
    for conf in &config.volumes {
        let volume = Volume::open(store.clone(), &conf.name, &conf.backing).map_err(|source| {
            DaemonError::Volume {
                name: conf.name.clone(),
                backing: conf.backing.clone(),
                source,
            }
        })?;
        volumes.push(volume);
    }
    let control = ControlSocket::bind(&config.socket)?;
    if let Some(gid) = config.socket_group {
        control.share_with_group(gid)?;
    }
    // From here on a signal waits for us instead of killing us mid-mount.
    let mut signals = Signals::new([SIGINT, SIGTERM]).map_err(DaemonError::Signals)?;

    // The live filesystems create files with the modes their callers ask
    // for: a FUSE worker sets each caller's umask on its own fs_struct for
    // the one creating syscall (fs/src/live/caller.rs), or the kernel has
    // already applied it; everything else the daemon makes keeps its mode.
    // SAFETY: umask only swaps the process's file mode creation mask.
    unsafe { libc::umask(0) };
    raise_descriptor_limit();

    let mut mounts = Mounts::default();
    let started = start(config, store, volumes, control, &mut mounts);
    let (service, socket_file) = match started {
        Ok(running) => running,
        Err(e) => {
            if let Err(undo) = mounts.unmount_all() {
                tracing::error!("{undo}");
            }
            return Err(e);
        }
    };

    let signal = signals.forever().next();
    tracing::info!("received {}, shutting down", signal_name(signal));
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            tracing::warn!("second signal: exiting without unmounting (the next start recovers)");
            std::process::exit(1);
        }
    });
    // No create or delete may be half done when the mounts go.
    let _quiet = service.quiesce();
    drop(socket_file);
    mounts.unmount_all()?;
    tracing::info!("stopped");
    Ok(())
}

/// Mounts the volumes, then the browser, then serves the control socket
/// and says `umbra: ready`.
fn start(
    config: Config,
    store: Arc<Store>,
    volumes: Vec<Arc<Volume>>,
    control: ControlSocket,
    mounts: &mut Mounts,
) -> Result<(Arc<Service>, control::SocketFile), DaemonError> {
    let options = MountOptions {
        threads: config.threads,
        writeback_cache: config.writeback_cache,
    };
    for (volume, conf) in volumes.iter().zip(&config.volumes) {
        mounts.mount_live(volume, conf, &options)?;
    }
    let browser = Browser::new(store.clone(), volumes.clone()).map_err(DaemonError::Browser)?;
    mounts.mount_snapshots(&browser, &config.snapshots, &options)?;
    let limits = control::Limits {
        max_clients: config.max_clients,
        timeout: config.client_timeout,
    };
    let coordinator = Arc::new(Coordinator::new(CoordinatorOptions {
        event_timeout: config.writer_timeout,
        freeze_timeout: config.writer_timeout,
        hold_timeout: config.hold_timeout,
    }));
    for writer in &config.writers {
        coordinator
            .register(writer.registration(), Box::new(writer.link()))
            .map_err(|e| DaemonError::Writer(writer.name.clone(), e))?;
    }
    let diff_limits =
        config
            .diff
            .limits(store.dir())
            .map_err(|source| DaemonError::DiffLimits {
                path: store.dir().to_path_buf(),
                source,
            })?;
    let diff_area = DiffArea::install(store.clone(), &volumes, &browser, diff_limits);
    let service = Arc::new(
        Service::new(store, volumes, browser, config, coordinator).with_diff_area(diff_area),
    );
    let socket = control.path().display().to_string();
    let socket_file = control.serve(service.clone(), limits)?;
    announce(&format!("umbra: control socket at {socket}"))?;
    announce("umbra: ready")?;
    Ok((service, socket_file))
}

fn signal_name(signal: Option<i32>) -> &'static str {
    match signal {
        Some(SIGINT) => "SIGINT",
        Some(SIGTERM) => "SIGTERM",
        _ => "a signal",
    }
}

/// The state dir is the daemon's alone: mode 0700 when it creates it, and a
/// warning when an existing one is open to others.
fn create_private_dir(path: &Path) -> Result<(), DaemonError> {
    let create_err = |source| DaemonError::CreateDir {
        what: "state_dir".into(),
        path: path.to_path_buf(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(create_err)?;
    let mode = fs::metadata(path).map_err(create_err)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            "state_dir {} is open to others (mode {:o})",
            path.display(),
            mode & 0o7777
        );
    }
    Ok(())
}

/// Creates the backing and mount directories, the snapshots mountpoint and
/// the socket's directory, where missing.
fn create_dirs(config: &Config) -> Result<(), DaemonError> {
    let mut dirs: Vec<(String, &Path)> = Vec::new();
    for volume in &config.volumes {
        dirs.push((
            format!("the backing of volume {}", volume.name),
            &volume.backing,
        ));
        dirs.push((
            format!("the mountpoint of volume {}", volume.name),
            &volume.mount,
        ));
    }
    dirs.push(("the snapshots mountpoint".into(), &config.snapshots));
    if let Some(parent) = config.socket.parent() {
        dirs.push(("the socket's directory".into(), parent));
    }
    for (what, path) in dirs {
        fs::create_dir_all(path).map_err(|source| DaemonError::CreateDir {
            what,
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// The live mounts hold a descriptor for every inode the kernel keeps
/// looked up, so the default limit (often 1,024) would make lookups fail
/// with EMFILE on a busy volume: raise it as far as the system allows
/// (`fs.nr_open` as root, else the hard limit).
fn raise_descriptor_limit() {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok());
    // SAFETY: getrlimit/setrlimit read and write a plain struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if let Some(max) = nr_open.filter(|&m| m > limit.rlim_max) {
            let wanted = libc::rlimit {
                rlim_cur: max,
                rlim_max: max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                tracing::debug!(limit = max, "raised the descriptor limit");
                return;
            }
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            tracing::warn!(
                "cannot raise the descriptor limit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
