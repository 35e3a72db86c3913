//! Recovering mountpoints from a crashed daemon. A FUSE mount whose daemon
//! died answers every access with ENOTCONN until it is unmounted; before the
//! daemon mounts anything, each of its mountpoints that is such a dead mount
//! (or any FUSE mount listed in /proc/self/mountinfo: the state dir's lock
//! says no live umbra owns it) is detached: `umount2(MNT_DETACH)`, else
//! `fusermount3 -uz`. It never unmounts anything but the given mountpoints.
//!
//! A daemon SIGKILLed while one of its threads waited on a request to its
//! own mount, one a FUSE worker had already read, cannot finish exiting: the
//! kernel waits for that answer uninterruptibly, and the dying process keeps
//! /dev/fuse (and the state dir's lock) open, so nobody ever answers. Such a
//! predecessor (`is_dying`) is freed by aborting the FUSE connections of
//! the configured mountpoints (`abort_connections`), as is a mount that
//! unmounting alone does not remove. Connections are aborted only then:
//! an abort also fails the requests of whoever still uses a detached mount.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use umbra_fs::fusectl::{self, FuseMount, MOUNTINFO};
/// Mounts stacked at one mountpoint that a recovery undoes, at most.
const MAX_STACKED: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum StaleError {
    #[error("reading {MOUNTINFO}: {0}")]
    Mountinfo(#[source] io::Error),
    #[error("cannot unmount the stale mount at {}: umount2: {umount}; fusermount3: {fusermount}", .path.display())]
    Unmount {
        path: PathBuf,
        umount: io::Error,
        fusermount: String,
    },
    #[error("the stale mount at {} is still there after {MAX_STACKED} unmounts", .0.display())]
    Stuck(PathBuf),
    #[error("aborting the FUSE connection {connection} of {}: {source}", .path.display())]
    Abort {
        path: PathBuf,
        connection: u64,
        #[source]
        source: io::Error,
    },
}

/// Detaches whatever stale FUSE mount sits at `mountpoint`. Returns whether
/// there was one.
pub fn recover(mountpoint: &Path) -> Result<bool, StaleError> {
    let target = kernel_path(mountpoint);
    match detach_all(&target) {
        Ok(recovered) => Ok(recovered),
        Err(e) => {
            // A mount whose server is stuck may refuse to go until its
            // connection is aborted.
            if abort_connections([target.as_path()])? == 0 {
                return Err(e);
            }
            detach_all(&target).map(|_| true)
        }
    }
}

fn detach_all(target: &Path) -> Result<bool, StaleError> {
    let mut recovered = false;
    for _ in 0..MAX_STACKED {
        if !is_stale(target)? {
            return Ok(recovered);
        }
        tracing::warn!(
            "unmounting the stale mount at {} left by a crashed daemon",
            target.display()
        );
        detach(target)?;
        recovered = true;
    }
    Err(StaleError::Stuck(target.to_path_buf()))
}

/// Aborts the FUSE connection of every mount at these mountpoints; returns
/// how many it aborted.
pub fn abort_connections<'a>(
    mountpoints: impl IntoIterator<Item = &'a Path>,
) -> Result<usize, StaleError> {
    let mounts = fusectl::read_fuse_mounts().map_err(StaleError::Mountinfo)?;
    let mut aborted = 0;
    for path in mountpoints.into_iter().map(kernel_path) {
        for FuseMount { connection, .. } in mounts.iter().filter(|m| m.mountpoint == path) {
            tracing::warn!(
                "aborting the FUSE connection {connection} of the stuck mount at {}",
                path.display()
            );
            match fusectl::abort(*connection) {
                Ok(()) => aborted += 1,
                // Gone since mountinfo was read: nothing left to free.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StaleError::Abort {
                        path: path.clone(),
                        connection: *connection,
                        source,
                    });
                }
            }
        }
    }
    Ok(aborted)
}

/// Whether process `pid` was killed but has not finished exiting: its main
/// thread is a zombie while the process lives on, or one of its threads
/// has SIGKILL pending, which a thread stuck uninterruptibly never takes.
/// A running daemon's main thread outlives its other threads, and nobody
/// leaves SIGKILL pending on one for long.
pub fn is_dying(pid: u32) -> bool {
    const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let zombie = std::fs::read_to_string(proc.join("stat"))
        .ok()
        .and_then(|stat| Some(stat.get(stat.rfind(')')? + 2..)?.starts_with('Z')))
        .unwrap_or(false);
    if zombie {
        return true;
    }
    let Ok(tasks) = std::fs::read_dir(proc.join("task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        status.lines().any(|line| {
            let pending = line
                .strip_prefix("SigPnd:")
                .or_else(|| line.strip_prefix("ShdPnd:"));
            pending
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
                .is_some_and(|mask| mask & SIGKILL_BIT != 0)
        })
    })
}

/// Mountinfo is read first: a stat of a FUSE mount whose daemon is stopped
/// but not dead would hang.
fn is_stale(path: &Path) -> Result<bool, StaleError> {
    let mounts = fusectl::read_fuse_mounts().map_err(StaleError::Mountinfo)?;
    if mounts.iter().any(|m| m.mountpoint == path) {
        return Ok(true);
    }
    Ok(matches!(std::fs::metadata(path), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN)))
}

/// `path` as the kernel names it in mountinfo: symlinks in its parent
/// resolved (the path itself may be a dead mount that cannot be resolved).
fn kernel_path(path: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(path) {
        return real;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            std::fs::canonicalize(parent).map_or_else(|_| path.to_path_buf(), |p| p.join(name))
        }
        _ => path.to_path_buf(),
    }
}

fn detach(path: &Path) -> Result<(), StaleError> {
    let umount = match umount_detach(path) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let fusermount = match Command::new("fusermount3").arg("-uz").arg(path).output() {
        Ok(out) if out.status.success() => return Ok(()),
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            format!("{} ({})", out.status, stderr.trim().replace('\n', " "))
        }
        Err(e) => e.to_string(),
    };
    Err(StaleError::Unmount {
        path: path.to_path_buf(),
        umount,
        fusermount,
    })
}

fn umount_detach(path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_process_is_not_dying_and_a_killed_one_is() {
        assert!(!is_dying(std::process::id()));
        let mut child = Command::new("sleep").arg("60").spawn().expect("sleep");
        assert!(!is_dying(child.id()));
        child.kill().expect("kill");
        // Killed, not reaped: a zombie, as a stuck daemon's main thread is.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !is_dying(child.id()) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(is_dying(child.id()));
        child.wait().expect("reap");
    }

    #[test]
    fn a_plain_directory_is_not_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!recover(dir.path()).expect("checks"));
        assert!(!recover(&dir.path().join("not-yet-created")).expect("checks"));
    }
}
