//! What a write or a truncation takes away from a file when the kernel
//! leaves it to umbra (FUSE_HANDLE_KILLPRIV_V2): the rules of the VFS's
//! `file_remove_privs`, computed from the caller the kernel names. Pure
//! logic plus one read of /proc; it never touches a file.

use super::caller::supplementary_groups;
use super::core::Caller;

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
}
