//! `umbra up`: the daemon's life from start to exit. It checks where the
//! configured paths really lead, makes or checks the state dir, creates the
//! missing directories, takes the state dir's lock (freeing a predecessor stuck
//! dying on its own mount first), recovers stale mounts, opens the
//! store and every volume before it mounts anything, mounts the volumes and
//! the browser, serves the control socket, starts the schedule, re-reads
//! the config's schedule on SIGHUP (reload.rs), and on SIGINT or SIGTERM stops the schedule, unmounts the browser, then the
//! volumes, and returns. The pieces live in the files
//! under `daemon/`; this file only puts them in order.

mod control;
mod lock;
mod mounts;
mod reload;
mod service;
mod stale;
mod state_dir;
mod systemd;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use umbra_coordinator::{Coordinator, Options as CoordinatorOptions, RegisterError};
use umbra_fs::{
    Browser, BtrfsProvider, BtrfsVolume, CowProvider, FsError, MountOptions, Sets, ShadowStorage,
    Volume, VolumeProvider,
};
use umbra_store::{Store, StoreOptions};

use crate::config::Config;
use crate::schedule::timer::Timer;
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
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Cluster(crate::cluster::ClusterError),
    #[error(transparent)]
    StateDir(#[from] state_dir::StateDirError),
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
    StorageLimits {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("writer {0}: {1}")]
    Writer(String, #[source] RegisterError),
    #[error("listening for SIGINT, SIGTERM and SIGHUP: {0}")]
    Signals(#[source] io::Error),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("starting the scheduler: {0}")]
    Scheduler(#[source] io::Error),
}

/// The last firing of the schedule, in the state dir, so that a firing
/// missed while the daemon was down is made up once at start.
const SCHEDULE_STAMP: &str = "schedule.stamp";

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
pub fn up(mut config: Config) -> Result<(), DaemonError> {
    tracing::debug!(config = %config.origin, "starting");
    // Before anything is created: a state dir reached through a symlink
    // into a backing must not be made there.
    config.check_on_disk()?;
    config.decide_providers();
    state_dir::prepare(&config)?;
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
        durability: config.storage.durability.into(),
        ..StoreOptions::default()
    };
    let store = Store::open(&store_dir, store_options).map_err(|source| DaemonError::Store {
        path: store_dir.clone(),
        source,
    })?;
    let store = Arc::new(store);
    // Every backing is opened before anything is mounted: an in-place mount
    // hides its backing directory from everyone, the daemon included.
    let opened = open_volumes(&config, &store)?;
    let control = ControlSocket::bind(&config.socket)?;
    if let Some(gid) = config.socket_group {
        control.share_with_group(gid)?;
    }
    // From here on a signal waits for us instead of killing us mid-mount.
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(DaemonError::Signals)?;

    // The live filesystems create files with the modes their callers ask
    // for: a FUSE worker sets each caller's umask on its own fs_struct for
    // the one creating syscall (fs/src/live/caller.rs), or the kernel has
    // already applied it; everything else the daemon makes keeps its mode.
    // SAFETY: umask only swaps the process's file mode creation mask.
    unsafe { libc::umask(0) };
    raise_descriptor_limit();

    let mut mounts = Mounts::default();
    let config_stamp = config.state_dir.join(SCHEDULE_STAMP);
    let started = start(config, store, opened, control, &mut mounts);
    let stamp = config_stamp.clone();
    let (service, socket_file, mut timer) = match started {
        Ok(running) => running,
        Err(e) => {
            if let Err(undo) = mounts.unmount_all() {
                tracing::error!("{undo}");
            }
            return Err(e);
        }
    };

    // SIGHUP re-reads the config's [schedule]; the others stop the daemon.
    let signal = loop {
        match signals.forever().next() {
            Some(SIGHUP) => {
                tracing::info!("received SIGHUP, reloading the configuration");
                timer = reload::reload(&service, timer, &stamp);
            }
            other => break other,
        }
    };
    tracing::info!("received {}, shutting down", signal_name(signal));
    systemd::stopping();
    std::thread::spawn(move || {
        if signals.forever().any(|s| s != SIGHUP) {
            tracing::warn!("second signal: exiting without unmounting (the next start recovers)");
            std::process::exit(1);
        }
    });
    // No scheduled set starts from here on (one under way is finished).
    if let Some(timer) = timer {
        timer.stop();
    }
    // No create or delete may be half done when the mounts go.
    let _quiet = service.quiesce();
    service.leave_cluster();
    drop(socket_file);
    mounts.unmount_all()?;
    tracing::info!("stopped");
    Ok(())
}

/// What `start` leaves running.
type Running = (Arc<Service>, control::SocketFile, Option<Timer>);

/// Mounts the volumes, then the browser, then serves the control socket,
/// starts the schedule and says `umbra: ready`.
fn start(
    config: Config,
    store: Arc<Store>,
    opened: Opened,
    control: ControlSocket,
    mounts: &mut Mounts,
) -> Result<Running, DaemonError> {
    let options = MountOptions {
        threads: config.threads,
        writeback_cache: config.writeback_cache,
    };
    let volumes = opened.cow;
    for volume in &volumes {
        if let Some(conf) = config.volumes.iter().find(|c| c.name == volume.name()) {
            mounts.mount_live(volume, conf, &options)?;
        }
    }
    for volume in &opened.btrfs {
        announce(&format!(
            "umbra: volume {} live at {} (a btrfs subvolume, used directly)",
            crate::render::printable(volume.name()),
            crate::config::shown(volume.backing_path())
        ))?;
    }
    let live_mounts = config
        .volumes
        .iter()
        .map(|v| (v.name.clone(), v.mount.clone()))
        .collect();
    let cow = CowProvider::new(store.clone(), volumes.clone())
        .flushing_through(live_mounts, config.hold_timeout);
    let providers: Vec<Arc<dyn VolumeProvider>> = vec![
        Arc::new(cow),
        Arc::new(BtrfsProvider::new(opened.btrfs.clone())),
    ];
    let sets = Sets::new(store.clone(), providers);
    // What a crash left half made or half deleted (btrfs snapshots no set
    // owns) goes before any set is shown.
    if let Err(e) = sets.sweep() {
        tracing::warn!("freeing copies no set owns: {e}");
    }
    let trees: Vec<Arc<dyn umbra_fs::TreeImages>> = opened
        .btrfs
        .iter()
        .map(|v| v.clone() as Arc<dyn umbra_fs::TreeImages>)
        .collect();
    let browser =
        Browser::new(store.clone(), volumes.clone(), trees).map_err(DaemonError::Browser)?;
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
    let storage_limits =
        config
            .storage
            .limits(store.dir())
            .map_err(|source| DaemonError::StorageLimits {
                path: store.dir().to_path_buf(),
                source,
            })?;
    let storage = ShadowStorage::install(&sets, &volumes, &browser, storage_limits);
    let schedule = config.schedule.clone();
    let stamp = config.state_dir.join(SCHEDULE_STAMP);
    let last_set = newest_scheduled(&store);
    let cluster = match config.cluster.clone() {
        Some(conf) => Some(crate::cluster::Cluster::start(conf).map_err(DaemonError::Cluster)?),
        None => None,
    };
    let mut service = Service::new(sets, browser, config, coordinator).with_storage(storage);
    if let Some(cluster) = &cluster {
        service = service.with_cluster(cluster.clone());
    }
    let service = Arc::new(service);
    if let Some(cluster) = cluster {
        let member = service.clone();
        cluster.on_plans(move |plan| member.heard_plan(plan));
        service.clone().repair_forever();
    }
    let socket = crate::config::shown(control.path());
    let socket_file = control.serve(service.clone(), limits)?;
    service::start_replicas(&service);
    let timer =
        reload::start_timer(&service, schedule, stamp, last_set).map_err(DaemonError::Scheduler)?;
    announce(&format!("umbra: control socket at {socket}"))?;
    announce("umbra: ready")?;
    systemd::ready(&format!("serving {socket}"));
    Ok((service, socket_file, timer))
}

/// The volumes of every provider, opened.
struct Opened {
    cow: Vec<Arc<Volume>>,
    btrfs: Vec<Arc<BtrfsVolume>>,
}

fn open_volumes(config: &Config, store: &Arc<Store>) -> Result<Opened, DaemonError> {
    let mut opened = Opened {
        cow: Vec::new(),
        btrfs: Vec::new(),
    };
    for conf in &config.volumes {
        let failed = |source| DaemonError::Volume {
            name: conf.name.clone(),
            backing: conf.backing.clone(),
            source,
        };
        if conf.mounted() {
            opened
                .cow
                .push(Volume::open(store.clone(), &conf.name, &conf.backing).map_err(failed)?);
        } else {
            opened
                .btrfs
                .push(BtrfsVolume::open(store, &conf.name, &conf.backing).map_err(failed)?);
        }
    }
    Ok(opened)
}

/// When the newest scheduled set was made: the last firing, when the
/// stamp file is gone.
fn newest_scheduled(store: &Store) -> Option<chrono::DateTime<chrono::Utc>> {
    let sets = match store.sets() {
        Ok(sets) => sets,
        Err(e) => {
            tracing::warn!("reading the sets for the schedule: {e}");
            return None;
        }
    };
    sets.iter()
        .filter(|s| s.origin == umbra_store::SetOrigin::Scheduled)
        .filter_map(|s| chrono::DateTime::from_timestamp(s.created.secs, s.created.nanos))
        .max()
}

fn signal_name(signal: Option<i32>) -> &'static str {
    match signal {
        Some(SIGINT) => "SIGINT",
        Some(SIGTERM) => "SIGTERM",
        _ => "a signal",
    }
}

/// Creates the backing and mount directories, the snapshots mountpoint and
/// the socket's directory, where missing.
fn create_dirs(config: &Config) -> Result<(), DaemonError> {
    let mut dirs: Vec<(String, &Path)> = Vec::new();
    // A btrfs volume's backing must be a subvolume already: a directory
    // made here would only be refused.
    for volume in config.volumes.iter().filter(|v| v.mounted()) {
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

/// Raises the soft descriptor limit to the hard one: more room for the
/// files users hold open through the live mounts, and for the caches, which
/// size themselves from the soft limit (umbra-fs `fds.rs`). The hard limit
/// is the administrator's (`prlimit`, `LimitNOFILE=`) and stays as it is:
/// no cache grows with the tree, so umbra needs no more than it allows.
fn raise_descriptor_limit() {
    // SAFETY: getrlimit/setrlimit read and write a plain struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max
        {
            return;
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            tracing::warn!(
                "cannot raise the descriptor limit: {}",
                std::io::Error::last_os_error()
            );
        } else {
            tracing::debug!(limit = limit.rlim_cur, "raised the soft descriptor limit");
        }
    }
}
