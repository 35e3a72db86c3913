//! Recovering mountpoints from a crashed daemon. A FUSE mount whose daemon
//! died answers every access with ENOTCONN until it is unmounted; before the
//! daemon mounts anything, each of its mountpoints that is such a dead mount
//! (or any FUSE mount listed in /proc/self/mountinfo: the state dir's lock
//! says no live umbra owns it) is detached: `umount2(MNT_DETACH)`, else
//! `fusermount3 -uz`. It never unmounts anything but the given mountpoints.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const MOUNTINFO: &str = "/proc/self/mountinfo";
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
}

/// Detaches whatever stale FUSE mount sits at `mountpoint`. Returns whether
/// there was one.
pub fn recover(mountpoint: &Path) -> Result<bool, StaleError> {
    let target = kernel_path(mountpoint);
    let mut recovered = false;
    for _ in 0..MAX_STACKED {
        if !is_stale(&target)? {
            return Ok(recovered);
        }
        tracing::warn!(
            "unmounting the stale mount at {} left by a crashed daemon",
            target.display()
        );
        detach(&target)?;
        recovered = true;
    }
    Err(StaleError::Stuck(target))
}

/// Mountinfo is read first: a stat of a FUSE mount whose daemon is stopped
/// but not dead would hang.
fn is_stale(path: &Path) -> Result<bool, StaleError> {
    let mountinfo = std::fs::read_to_string(MOUNTINFO).map_err(StaleError::Mountinfo)?;
    if fuse_mountpoints(&mountinfo).any(|m| m == path) {
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

/// The mountpoints of FUSE filesystems in a mountinfo text (proc(5)):
/// field 5 is the mountpoint, and the filesystem type follows the ` - `
/// separator. `fuseblk` (block-device FUSE, e.g. ntfs-3g) is not ours.
fn fuse_mountpoints(mountinfo: &str) -> impl Iterator<Item = PathBuf> + '_ {
    mountinfo.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let mountpoint = fields.get(4)?;
        let separator = fields.iter().position(|f| *f == "-")?;
        let fstype = fields.get(separator + 1)?;
        (*fstype == "fuse" || fstype.starts_with("fuse.")).then(|| unescape(mountpoint))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\134` for `\`).
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let value = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
36 22 0:32 / /home/u/clone/data rw,nosuid,nodev,relatime shared:20 - fuse.umbra umbra rw,user_id=0,group_id=0
37 22 0:33 / /home/u/my\\040snaps rw,nosuid,nodev - fuse umbra rw,user_id=0
38 22 8:17 / /media/usb rw,relatime shared:5 master:3 - fuseblk /dev/sdb1 rw
39 22 0:34 / /proc rw,nosuid shared:12 - proc proc rw
";

    #[test]
    fn fuse_mounts_are_found_in_mountinfo() {
        let found: Vec<PathBuf> = fuse_mountpoints(SAMPLE).collect();
        assert_eq!(
            found,
            [
                PathBuf::from("/home/u/clone/data"),
                PathBuf::from("/home/u/my snaps")
            ]
        );
    }

    #[test]
    fn escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b\134c\011d"), PathBuf::from("/a b\\c\td"));
        assert_eq!(unescape(r"/trailing\04"), PathBuf::from(r"/trailing\04"));
    }

    #[test]
    fn a_plain_directory_is_not_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!recover(dir.path()).expect("checks"));
        assert!(!recover(&dir.path().join("not-yet-created")).expect("checks"));
    }
}
