//! What a write or a truncation takes away from a file when the kernel
//! leaves it to umbra (FUSE_HANDLE_KILLPRIV_V2): the rules of the VFS's
//! `file_remove_privs`, computed from the caller the kernel names. Pure
//! logic plus one read of /proc; it never touches a file.

use super::caller::{Caller, proc_status_field, supplementary_groups};

/// The mode a regular file keeps after a write or truncation by `caller`,
/// which the kernel found without CAP_FSETID: no set-user-ID bit, and no
/// set-group-ID bit if the file is group-executable or the caller is
/// outside the file's group (`setattr_should_drop_sgid`).
pub(crate) fn mode_after_change(mode: u32, file_gid: u32, caller: Caller) -> u32 {
    let mut kept = mode & !libc::S_ISUID;
    if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || !in_group(caller, file_gid)) {
        kept &= !libc::S_ISGID;
    }
    kept
}

/// Whether `gid` is the caller's group or one of its supplementary groups.
/// A caller whose groups cannot be read (it exited) counts as outside.
pub(crate) fn in_group(caller: Caller, gid: u32) -> bool {
    caller.gid == gid || supplementary_groups(caller.pid).contains(&gid)
}

/// Whether the caller lacks CAP_FSETID in its effective set, as the VFS
/// asks before it keeps set-id bits through a change of the file's data.
/// The kernel says so itself for writes (FUSE_WRITE_KILL_SUIDGID) but not
/// for truncations (fuser drops FATTR_KILL_SUIDGID) or fallocate. A
/// caller whose status cannot be read (it exited) counts as lacking it:
/// dropping a set-id bit is the safe mistake.
pub(crate) fn lacks_fsetid(caller: Caller) -> bool {
    const CAP_FSETID: u32 = 4;
    !has_capability(caller.pid, CAP_FSETID)
}

/// Whether thread `pid` has capability `cap` in its effective set; false
/// when its status cannot be read (it exited).
fn has_capability(pid: u32, cap: u32) -> bool {
    proc_status_field(pid, "CapEff:")
        .and_then(|caps| u64::from_str_radix(caps.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << cap) != 0)
}

/// The xattr names (a NUL-separated list, as listxattr returns it) that
/// thread `pid` may see: natively a filesystem lists `trusted.*` names only
/// to a caller with CAP_SYS_ADMIN, and umbra lists them as root. Its
/// status is read only when there is such a name to hide.
pub(crate) fn visible_xattr_names(names: Vec<u8>, pid: u32) -> Vec<u8> {
    const CAP_SYS_ADMIN: u32 = 21;
    let trusted = |name: &&[u8]| name.starts_with(b"trusted.");
    let mut listed = names.split(|b| *b == 0).filter(|n| !n.is_empty());
    if !listed.any(|n| trusted(&n)) || has_capability(pid, CAP_SYS_ADMIN) {
        return names;
    }
    let mut visible = Vec::with_capacity(names.len());
    for name in names
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty() && !trusted(n))
    {
        visible.extend_from_slice(name);
        visible.push(0);
    }
    visible
}

impl Caller {
    /// This caller when a change of a file's data by it must clear set-id
    /// bits (it lacks CAP_FSETID), else None.
    pub fn without_fsetid(self) -> Option<Caller> {
        lacks_fsetid(self).then_some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OTHER: Caller = Caller {
        uid: 1000,
        gid: 1000,
        pid: u32::MAX,
        umask: 0,
    };

    #[test]
    fn set_id_bits_go_as_the_vfs_drops_them() {
        assert_eq!(mode_after_change(0o6777, 0, OTHER), 0o777);
        assert_eq!(mode_after_change(0o4755, 0, OTHER), 0o755);
        // Set-group-ID without group execute is mandatory-locking's mark: it
        // stays for a member of the file's group only.
        assert_eq!(mode_after_change(0o2766, 1000, OTHER), 0o2766);
        assert_eq!(mode_after_change(0o2766, 0, OTHER), 0o766);
        assert_eq!(mode_after_change(0o0644, 0, OTHER), 0o644);
    }

    #[test]
    fn supplementary_groups_come_from_proc() {
        let me = Caller {
            uid: 0,
            gid: u32::MAX,
            pid: std::process::id(),
            umask: 0,
        };
        // SAFETY: getgroups with a zero size only counts.
        let count = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        let mut groups = vec![0; count.max(0) as usize];
        // SAFETY: the buffer holds `count` gids.
        unsafe { libc::getgroups(count, groups.as_mut_ptr()) };
        for g in groups {
            assert!(in_group(me, g));
        }
        assert!(!in_group(OTHER, 4242));
    }

    #[test]
    fn capabilities_come_from_proc() {
        let me = Caller {
            uid: 0,
            gid: 0,
            pid: std::process::id(),
            umask: 0,
        };
        // The tests run as root with a full effective set.
        assert!(!lacks_fsetid(me));
        assert!(lacks_fsetid(OTHER), "a caller gone from /proc lacks it");
    }

    #[test]
    fn trusted_xattr_names_are_listed_only_to_an_administrator() {
        let names = b"user.a\0trusted.b\0security.c\0".to_vec();
        assert_eq!(
            visible_xattr_names(names.clone(), u32::MAX),
            b"user.a\0security.c\0"
        );
        assert_eq!(
            visible_xattr_names(names.clone(), std::process::id()),
            names
        );
    }
}
