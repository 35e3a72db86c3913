//! The daemon's mounts: every live volume, then the snapshot browser, each
//! announced on stdout as it comes up; and taking them down in the reverse
//! order (the browser first, then the volumes). It never decides where
//! things are mounted: the configuration does.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use umbra_fs::{Browser, FsError, MountHandle, MountOptions, Volume};

use crate::config::{VolumeConfig, shown};
use crate::render::printable;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mounting {what} at {}: {source}", .path.display())]
    Mount {
        what: String,
        path: PathBuf,
        #[source]
        source: FsError,
    },
    #[error("unmounting {what} at {}: {source}", .path.display())]
    Unmount {
        what: String,
        path: PathBuf,
        #[source]
        source: FsError,
    },
    #[error("writing to stdout: {0}")]
    Stdout(#[source] io::Error),
}

struct Mounted {
    what: String,
    handle: MountHandle,
}

/// What is mounted, in mounting order.
#[derive(Default)]
pub struct Mounts {
    mounted: Vec<Mounted>,
}

impl Mounts {
    /// Mounts `volume` live at its configured mountpoint and says so.
    pub fn mount_live(
        &mut self,
        volume: &Arc<Volume>,
        conf: &VolumeConfig,
        options: &MountOptions,
    ) -> Result<(), MountError> {
        let what = format!("volume {}", conf.name);
        let handle = umbra_fs::mount_live(volume.clone(), &conf.mount, options)
            .map_err(|source| mount_error(&what, &conf.mount, source))?;
        self.mounted.push(Mounted { what, handle });
        let place = if conf.in_place() {
            "in place".to_string()
        } else {
            format!("backed by {}", shown(&conf.backing))
        };
        announce(&format!(
            "umbra: volume {} live at {} ({place})",
            printable(&conf.name),
            shown(&conf.mount)
        ))
    }

    /// Mounts the shadow copy browser read-only at `path` and says so.
    pub fn mount_snapshots(
        &mut self,
        browser: &Arc<Browser>,
        path: &Path,
        options: &MountOptions,
    ) -> Result<(), MountError> {
        let what = "snapshots".to_string();
        let handle = umbra_fs::mount_snapshots(browser.clone(), path, options)
            .map_err(|source| mount_error(&what, path, source))?;
        self.mounted.push(Mounted { what, handle });
        announce(&format!(
            "umbra: shadow copies browsable at {} (read-only)",
            shown(path)
        ))
    }

    /// Unmounts everything, the last mounted first; tries every mount and
    /// reports the first failure.
    pub fn unmount_all(self) -> Result<(), MountError> {
        let mut first_error = None;
        for Mounted { what, handle } in self.mounted.into_iter().rev() {
            let path = handle.mountpoint().to_path_buf();
            match handle.unmount() {
                Ok(()) => tracing::info!("unmounted {what} at {}", path.display()),
                Err(source) => {
                    let e = MountError::Unmount { what, path, source };
                    tracing::error!("{e}");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn mount_error(what: &str, path: &Path, source: FsError) -> MountError {
    MountError::Mount {
        what: what.to_string(),
        path: path.to_path_buf(),
        source,
    }
}

/// Prints one line on stdout, flushed at once: scripts wait for these lines.
pub fn announce(line: &str) -> Result<(), MountError> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(MountError::Stdout)
}
