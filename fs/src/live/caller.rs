//! What a request runs as. The daemon is root; a backing syscall that
//! creates or allocates must run as the caller instead, so that the backing
//! filesystem itself decides what it decides natively: the new inode's
//! owner and group (set-group-ID directories), its mode (the umask, or a
//! default ACL in its place, with `group::` as natively), quotas, and the
//! blocks reserved for root (`mkfs -m`). `AsCaller::enter` switches the
//! calling worker thread, and only it, to the caller's fsuid, fsgid,
//! supplementary groups and umask, without CAP_SYS_RESOURCE; dropping the
//! guard gives root back on every path.
//!
//! Everything here is per thread on purpose: glibc's setgroups/setuid
//! change every thread of the process, so the raw syscalls are used; the
//! umask lives in the fs_struct, which each worker unshares once. The
//! copy-on-write preservation (old blocks, the store) never runs under a
//! guard: only the one mutating backing syscall does.

use std::cell::Cell;
use std::fs;
use std::io;

/// CAP_SYS_RESOURCE: reserved blocks and quota limits do not apply to it.
const CAP_SYS_RESOURCE: u32 = 24;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The capabilities that follow the fsuid: the kernel drops them from the
/// effective set when the fsuid leaves 0 and raises them when it returns
/// (`cap_emulate_setxuid`): CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER,
/// FSETID, LINUX_IMMUTABLE, MKNOD, MAC_OVERRIDE.
const CAP_FS_MASK: u32 = 0x1f | 1 << 9 | 1 << 27;

thread_local! {
    /// Whether this thread has its own fs_struct, so its umask is its own.
    static OWN_UMASK: Cell<bool> = const { Cell::new(false) };
    /// This thread's own capabilities and groups, as root, read once:
    /// nothing but a guard changes them, and it puts them back.
    static ROOT: Cell<Option<&'static Root>> = const { Cell::new(None) };
}

/// Who asks: what they create is made as them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// The calling thread, whose supplementary groups /proc knows.
    pub pid: u32,
    /// The umask a creation applies: the caller's when the kernel left it
    /// to umbra (FUSE_DONT_MASK), else 0, the kernel having applied it.
    pub umask: u32,
}

/// The calling thread acts as a caller until this is dropped.
pub(crate) struct AsCaller {
    /// The thread's umask before, when it was changed.
    umask: Option<u32>,
    /// Whether the fs ids and capabilities were changed.
    switched: bool,
    /// Whether the supplementary groups were changed.
    grouped: bool,
}

struct Root {
    caps: [CapData; 2],
    /// What a caller other than root runs with: no file capabilities (as
    /// the fsuid would leave it) and no CAP_SYS_RESOURCE.
    unprivileged: [CapData; 2],
    groups: Vec<libc::gid_t>,
}

/// This thread's root credentials, read on its first guard (one small
/// leak per FUSE worker thread, which lives as long as its mount).
fn root() -> io::Result<&'static Root> {
    if let Some(root) = ROOT.get() {
        return Ok(root);
    }
    let caps = capget()?;
    let mut unprivileged = caps;
    unprivileged[0].effective &= !(CAP_FS_MASK | 1 << CAP_SYS_RESOURCE);
    let root: &'static Root = Box::leak(Box::new(Root {
        caps,
        unprivileged,
        groups: getgroups()?,
    }));
    ROOT.set(Some(root));
    Ok(root)
}

fn check(ret: libc::c_long) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn capget() -> io::Result<[CapData; 2]> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and two data structs as capget(2) v3 expects; pid 0
    // is the calling thread.
    check(unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    })?;
    Ok(data)
}

fn capset(data: &[CapData; 2]) -> io::Result<()> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: as capget; the raw syscall changes this thread only.
    check(unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    })
}

fn getgroups() -> io::Result<Vec<libc::gid_t>> {
    // SAFETY: a zero size only counts.
    let n = unsafe { libc::syscall(libc::SYS_getgroups, 0, std::ptr::null_mut::<libc::gid_t>()) };
    check(n)?;
    let mut groups = vec![0; n as usize];
    // SAFETY: the buffer holds n gids.
    let n = unsafe { libc::syscall(libc::SYS_getgroups, n, groups.as_mut_ptr()) };
    check(n)?;
    groups.truncate(n as usize);
    Ok(groups)
}

/// The raw syscall: this thread only (glibc's wrapper signals every thread).
fn setgroups(groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: the pointer and length describe `groups`.
    check(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })
}

/// setfsuid/setfsgid answer the previous id whatever happens; asking again
/// with an invalid id tells whether the change took.
fn setfsid(call: libc::c_long, id: u32) -> io::Result<()> {
    // SAFETY: plain per-thread syscalls taking an id.
    unsafe { libc::syscall(call, id) };
    // SAFETY: as above; u32::MAX (-1) changes nothing and answers the current id.
    let now = unsafe { libc::syscall(call, u32::MAX) } as u32;
    if now == id {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::EPERM))
    }
}

/// Gives this thread its own fs_struct once, so that its umask changes no
/// other thread.
fn own_umask() -> io::Result<()> {
    if OWN_UMASK.get() {
        return Ok(());
    }
    // SAFETY: unsharing CLONE_FS copies this thread's root, cwd and umask.
    check(unsafe { libc::unshare(libc::CLONE_FS) }.into())?;
    OWN_UMASK.set(true);
    Ok(())
}

/// Whether `caller` is someone other than root. A request the kernel sends
/// without credentials (writeback, or an idmapped mount's
/// FUSE_INVALID_UIDGID, -1) has none to act as and runs as root.
fn acts_as_other(caller: Caller) -> bool {
    (caller.uid != 0 || caller.gid != 0) && caller.uid != u32::MAX && caller.gid != u32::MAX
}

impl AsCaller {
    /// Switches this thread to `caller` for a creation: its groups (from
    /// /proc) and its umask too. A root caller in group root keeps root's
    /// identity and only gets its umask.
    pub fn enter(caller: Caller) -> io::Result<AsCaller> {
        own_umask()?;
        let mut guard = AsCaller {
            umask: None,
            switched: false,
            grouped: false,
        };
        // SAFETY: umask only swaps this thread's (now private) mask.
        guard.umask = Some(unsafe { libc::umask(caller.umask & 0o777) });
        if acts_as_other(caller) {
            root()?;
            guard.grouped = true;
            setgroups(&supplementary_groups(caller.pid))?;
            guard.become_(caller)?;
        }
        Ok(guard)
    }

    /// Switches this thread to `caller` for a write or an allocation into
    /// an open file, where what counts is who allocates: the fsuid and
    /// fsgid (ext4's `resuid`/`resgid`) and CAP_SYS_RESOURCE (root's
    /// reserved blocks, quota limits). The supplementary groups stay
    /// root's: reading the caller's from /proc would cost more than the
    /// write, and ext4 never grants the reserve to group root by
    /// membership; a reserve given to another group (`mkfs -g`) that the
    /// caller has only as a supplementary group is not granted through
    /// umbra. Nothing changes for a root caller.
    pub fn writing(caller: Caller) -> io::Result<AsCaller> {
        let mut guard = AsCaller {
            umask: None,
            switched: false,
            grouped: false,
        };
        if acts_as_other(caller) {
            guard.become_(caller)?;
        }
        Ok(guard)
    }

    fn become_(&mut self, caller: Caller) -> io::Result<()> {
        let root = root()?;
        self.switched = true;
        setfsid(libc::SYS_setfsgid, caller.gid)?;
        if caller.uid != 0 {
            setfsid(libc::SYS_setfsuid, caller.uid)?;
            capset(&root.unprivileged)?;
        }
        Ok(())
    }
}

impl Drop for AsCaller {
    fn drop(&mut self) {
        if self.switched || self.grouped {
            let restored = root().and_then(|root| {
                if self.switched {
                    setfsid(libc::SYS_setfsuid, 0)?;
                    setfsid(libc::SYS_setfsgid, 0)?;
                    capset(&root.caps)?;
                }
                if self.grouped {
                    setgroups(&root.groups)?;
                }
                Ok(())
            });
            if let Err(e) = restored {
                // A worker that cannot be root again would fail every
                // later request in odd ways; nothing sane is left to do.
                tracing::error!("a FUSE worker cannot return to root: {e}");
                std::process::abort();
            }
        }
        if let Some(mask) = self.umask {
            // SAFETY: as in enter.
            unsafe { libc::umask(mask) };
        }
    }
}

/// The `Groups:` line of /proc/<pid>/status (a thread id works as well);
/// none when the caller is gone.
pub(crate) fn supplementary_groups(pid: u32) -> Vec<u32> {
    proc_status_field(pid, "Groups:")
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The rest of the line of /proc/<pid>/status that starts with `field`;
/// None when the caller is gone.
pub(crate) fn proc_status_field(pid: u32, field: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(str::to_owned)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn nobody(umask: u32) -> Caller {
        Caller {
            uid: 65534,
            gid: 65534,
            pid: u32::MAX,
            umask,
        }
    }

    /// Each check runs on a thread of its own: the guard must leave that
    /// thread as root, and no other thread is touched meanwhile.
    #[test]
    fn a_file_made_as_the_caller_is_theirs_and_root_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let path = dir.path().join("f");
        let before = capget().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                own_umask().unwrap();
                // SAFETY: this thread's own mask, as the daemon sets it.
                unsafe { libc::umask(0) };
                {
                    let _as = AsCaller::enter(nobody(0o027)).unwrap();
                    std::fs::write(&path, b"x").unwrap();
                    // The file capabilities (CAP_DAC_OVERRIDE is 1) went with the fsuid and
                    // CAP_SYS_RESOURCE was dropped by hand.
                    let caps = capget().unwrap();
                    assert_eq!(caps[0].effective & (1 << CAP_SYS_RESOURCE), 0);
                    assert_eq!(caps[0].effective & (1 << 1), 0);
                }
                assert_eq!(capget().unwrap()[0].effective, before[0].effective);
                {
                    let _as = AsCaller::writing(nobody(0o777)).unwrap();
                    // SAFETY: u32::MAX only asks.
                    assert_eq!(
                        unsafe { libc::syscall(libc::SYS_setfsuid, u32::MAX) },
                        65534
                    );
                    assert_eq!(capget().unwrap()[0].effective & (1 << CAP_SYS_RESOURCE), 0);
                }
                assert_eq!(capget().unwrap()[0].effective, before[0].effective);
                assert_eq!(getgroups().unwrap(), root().unwrap().groups);
                {
                    let unknown = Caller {
                        uid: u32::MAX,
                        gid: u32::MAX,
                        pid: 0,
                        umask: 0,
                    };
                    let _as = AsCaller::writing(unknown).unwrap();
                    // SAFETY: u32::MAX only asks.
                    assert_eq!(unsafe { libc::syscall(libc::SYS_setfsuid, u32::MAX) }, 0);
                }
                // SAFETY: u32::MAX only asks.
                assert_eq!(unsafe { libc::syscall(libc::SYS_setfsuid, u32::MAX) }, 0);
                // SAFETY: as above.
                let mask = unsafe { libc::umask(0) };
                assert_eq!(mask, 0, "the worker's umask came back");
            })
            .join()
            .unwrap();
        });
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
        assert_eq!(meta.mode() & 0o777, 0o640);
    }

    #[test]
    fn supplementary_groups_come_from_proc() {
        let mine = getgroups().unwrap();
        let listed = supplementary_groups(std::process::id());
        for g in mine {
            assert!(listed.contains(&g));
        }
        assert!(supplementary_groups(u32::MAX).is_empty());
    }
}
