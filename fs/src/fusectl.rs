//! FUSE connections as the kernel's fusectl filesystem shows them
//! (/sys/fs/fuse/connections/N): finding a mount's connection in mountinfo
//! and aborting it. Aborting ends every request of the connection with
//! ENOTCONN, those its server has already read included, which nothing
//! else does: it is the way out for a process stuck uninterruptibly on a
//! request to a mount whose server will never answer (a killed daemon
//! whose own thread waits on its own mount cannot finish exiting, so it
//! never closes /dev/fuse). It never unmounts anything and never stats a
//! FUSE mount (that could hang): everything comes from mountinfo.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

pub const MOUNTINFO: &str = "/proc/self/mountinfo";
const CONNECTIONS: &str = "/sys/fs/fuse/connections";

/// A FUSE mount listed in mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuseMount {
    /// Where it is mounted, as the kernel names it (symlinks resolved).
    pub mountpoint: PathBuf,
    /// Its connection's number under /sys/fs/fuse/connections: the
    /// superblock's device number as the kernel encodes it.
    pub connection: u64,
}

/// One line of mountinfo (proc(5)): field 3 is the device (`major:minor`),
/// field 5 the mountpoint, and the filesystem type follows the ` - `
/// separator. Returns the device, the mountpoint and the type.
fn parse_line(line: &str) -> Option<((u64, u64), PathBuf, &str)> {
    let fields: Vec<&str> = line.split(' ').collect();
    let (major, minor) = fields.get(2)?.split_once(':')?;
    let device = (major.parse().ok()?, minor.parse().ok()?);
    let mountpoint = unescape(fields.get(4)?);
    let separator = fields.iter().position(|f| *f == "-")?;
    Some((device, mountpoint, fields.get(separator + 1)?))
}

/// The FUSE mounts of a mountinfo text. `fuseblk` (block-device FUSE, e.g.
/// ntfs-3g) is not umbra's and has no connection of this kind.
pub fn fuse_mounts(mountinfo: &str) -> impl Iterator<Item = FuseMount> + '_ {
    mountinfo.lines().filter_map(|line| {
        let ((major, minor), mountpoint, fstype) = parse_line(line)?;
        (fstype == "fuse" || fstype.starts_with("fuse.")).then_some(FuseMount {
            mountpoint,
            // The kernel's dev_t (MKDEV): 12 bits of major above 20 of minor.
            connection: (major << 20) | minor,
        })
    })
}

/// The FUSE mounts of this mount namespace.
pub fn read_fuse_mounts() -> io::Result<Vec<FuseMount>> {
    Ok(fuse_mounts(&std::fs::read_to_string(MOUNTINFO)?).collect())
}

/// Aborts FUSE connection `connection`, mounting fusectl at
/// /sys/fs/fuse/connections first if it is not mounted.
pub fn abort(connection: u64) -> io::Result<()> {
    let dir = Path::new(CONNECTIONS).join(connection.to_string());
    if !dir.exists() && !fusectl_mounted()? {
        mount_fusectl()?;
    }
    std::fs::write(dir.join("abort"), "1")
}

fn fusectl_mounted() -> io::Result<bool> {
    let mountinfo = std::fs::read_to_string(MOUNTINFO)?;
    Ok(mountinfo
        .lines()
        .filter_map(parse_line)
        .any(|(_, at, fstype)| fstype == "fusectl" && at == Path::new(CONNECTIONS)))
}

fn mount_fusectl() -> io::Result<()> {
    let (source, target, fstype) = (c"fusectl", CString::new(CONNECTIONS)?, c"fusectl");
    // SAFETY: every pointer is a valid NUL-terminated string that outlives
    // the call; fusectl takes no data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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
40 22 0:1048577 / /far rw - fuse.umbra umbra rw
";

    #[test]
    fn fuse_mounts_and_their_connections_are_found_in_mountinfo() {
        let found: Vec<(PathBuf, u64)> = fuse_mounts(SAMPLE)
            .map(|m| (m.mountpoint, m.connection))
            .collect();
        assert_eq!(
            found,
            [
                (PathBuf::from("/home/u/clone/data"), 32),
                (PathBuf::from("/home/u/my snaps"), 33),
                (PathBuf::from("/far"), 1_048_577),
            ]
        );
    }

    #[test]
    fn escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b\134c\011d"), PathBuf::from("/a b\\c\td"));
        assert_eq!(unescape(r"/trailing\04"), PathBuf::from(r"/trailing\04"));
    }
}
