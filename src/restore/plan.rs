//! The check before the copy: the set's tree under each PATH, walked by
//! descriptor with O_NOFOLLOW, each entry against what the destination
//! holds now: restore it, skip it (equal in size, mtime and content), keep
//! it (the destination is newer, with --keep-newer) or descend (a directory
//! both have). Every file to restore is opened for reading once here, and
//! every existing directory to write into is checked for write access, so
//! that a permission error and every conflict surface before anything is
//! written.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::RestoreError;
use super::sys::{self, Stat};

/// What to do with a destination that exists and differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Refuse the whole restore, listing the conflicts.
    Refuse,
    Overwrite,
    /// Replace what is older than the set's copy, keep what is newer.
    KeepNewer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Other,
}

impl Kind {
    pub fn of(st: &Stat) -> Kind {
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            _ => Kind::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::Other => "special file",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create it, or replace what is there.
    Restore,
    /// Equal to the set's version.
    Skip,
    /// The destination is newer (--keep-newer).
    Keep,
    /// A directory both have: its entries are planned one by one.
    Merge,
}

/// One entry of the set and what happens to it.
pub struct Node {
    /// Its name in the set.
    pub name: CString,
    /// Its name at the destination: the same, but for a PATH restored
    /// beside the live one (`NAME.restored-SET`).
    pub dst_name: CString,
    /// The destination path, for the report.
    pub shown: PathBuf,
    /// The entry in the set.
    pub st: Stat,
    pub kind: Kind,
    pub action: Action,
    /// The destination has an entry of this name that a restore replaces.
    pub replaces: bool,
    pub children: Vec<Node>,
}

/// What the plan gathers beside the tree.
#[derive(Default)]
pub struct Findings {
    /// Destinations that differ and that the policy does not settle.
    pub conflicts: Vec<String>,
    /// Bytes of the regular files to copy.
    pub bytes: u64,
}

pub struct Planner {
    pub policy: Policy,
    pub findings: Findings,
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> RestoreError {
    let path = path.display().to_string();
    move |source| RestoreError::Io { path, op, source }
}

impl Planner {
    /// Plans the entry `name` of the set's directory `src` into the
    /// destination directory `dst` (`None` when that directory does not
    /// exist yet) as `dst_name`. `shown` is the destination path.
    pub fn entry(
        &mut self,
        src: BorrowedFd<'_>,
        name: &CStr,
        dst: Option<BorrowedFd<'_>>,
        dst_name: &CStr,
        shown: &Path,
        src_shown: &Path,
    ) -> Result<Node, RestoreError> {
        let st = sys::lstatat(src, name).map_err(io_err(src_shown, "in the set"))?;
        let kind = Kind::of(&st);
        let existing = match dst {
            Some(dst) => sys::lstatat_opt(dst, dst_name).map_err(io_err(shown, "looking at"))?,
            None => None,
        };
        let mut node = Node {
            name: name.to_owned(),
            dst_name: dst_name.to_owned(),
            shown: shown.to_path_buf(),
            st,
            kind,
            action: Action::Restore,
            replaces: existing.is_some(),
            children: Vec::new(),
        };
        match kind {
            Kind::Other => {
                return Err(RestoreError::Unsupported {
                    path: src_shown.display().to_string(),
                });
            }
            Kind::File => {
                // Readable as this user, at the set's instant: checked now,
                // before anything is written.
                let fd = sys::openat(src, name, libc::O_RDONLY | libc::O_NOFOLLOW, 0)
                    .map_err(io_err(src_shown, "reading in the set"))?;
                if let (Some(dst), Some(old)) = (dst, &existing)
                    && Kind::of(old) == Kind::File
                    && same_file(fd.as_fd(), &st, dst, dst_name, old)
                        .map_err(io_err(shown, "comparing with the set"))?
                {
                    node.action = Action::Skip;
                }
            }
            Kind::Symlink => {
                if let (Some(dst), Some(old)) = (dst, &existing)
                    && Kind::of(old) == Kind::Symlink
                {
                    let ours =
                        sys::readlinkat(src, name).map_err(io_err(src_shown, "in the set"))?;
                    let theirs =
                        sys::readlinkat(dst, dst_name).map_err(io_err(shown, "looking at"))?;
                    if ours == theirs {
                        node.action = Action::Skip;
                    }
                }
            }
            Kind::Fifo => {
                if existing
                    .as_ref()
                    .is_some_and(|old| Kind::of(old) == Kind::Fifo)
                {
                    node.action = Action::Skip;
                }
            }
            Kind::Dir => {
                let merging = existing
                    .as_ref()
                    .is_some_and(|old| Kind::of(old) == Kind::Dir);
                let src_dir = open_dir(src, name).map_err(io_err(src_shown, "in the set"))?;
                let dst_dir = match (merging, dst) {
                    (true, Some(dst)) => {
                        Some(open_dir(dst, dst_name).map_err(io_err(shown, "opening"))?)
                    }
                    _ => None,
                };
                if merging {
                    node.action = Action::Merge;
                    node.replaces = false;
                }
                let names = sys::list_dir(src_dir.as_fd())
                    .map_err(io_err(src_shown, "listing in the set"))?;
                let mut writes = false;
                for child in names {
                    let cname = sys::cname(&child).map_err(io_err(src_shown, "in the set"))?;
                    let planned = self.entry(
                        src_dir.as_fd(),
                        &cname,
                        dst_dir.as_ref().map(AsFd::as_fd),
                        &cname,
                        &shown.join(&child),
                        &src_shown.join(&child),
                    )?;
                    writes |= planned.action == Action::Restore;
                    node.children.push(planned);
                }
                if let Some(dir) = &dst_dir
                    && writes
                {
                    sys::can_write_dir(dir.as_fd()).map_err(io_err(shown, "writing into"))?;
                }
            }
        }
        if let Some(old) = &existing
            && matches!(node.action, Action::Restore)
        {
            self.settle(&mut node, old);
        }
        if node.action == Action::Restore && kind == Kind::File {
            self.findings.bytes += u64::try_from(st.st_size).unwrap_or(0);
        }
        Ok(node)
    }

    /// An existing destination that differs: the policy decides.
    fn settle(&mut self, node: &mut Node, old: &Stat) {
        let shown = node.shown.display().to_string();
        if Kind::of(old) == Kind::Dir {
            // Replacing a directory by a file would delete a tree that is
            // not in the set: never done, whatever the policy.
            self.findings.conflicts.push(format!(
                "{shown} (a directory live, a {} in the set)",
                node.kind.as_str()
            ));
            return;
        }
        match self.policy {
            Policy::Overwrite => {}
            Policy::KeepNewer if newer(old, &node.st) => node.action = Action::Keep,
            Policy::KeepNewer => {}
            Policy::Refuse => self.findings.conflicts.push(shown),
        }
    }
}

/// Whether `a`'s mtime is after `b`'s.
fn newer(a: &Stat, b: &Stat) -> bool {
    (a.st_mtime, a.st_mtime_nsec) > (b.st_mtime, b.st_mtime_nsec)
}

pub fn open_dir(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    sys::openat(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

/// Whether the destination file equals the set's: size, mtime and bytes.
fn same_file(
    src: BorrowedFd<'_>,
    st: &Stat,
    dst_dir: BorrowedFd<'_>,
    name: &CStr,
    old: &Stat,
) -> io::Result<bool> {
    if old.st_size != st.st_size
        || (old.st_mtime, old.st_mtime_nsec) != (st.st_mtime, st.st_mtime_nsec)
    {
        return Ok(false);
    }
    let dst = match sys::openat(dst_dir, name, libc::O_RDONLY | libc::O_NOFOLLOW, 0) {
        Ok(fd) => fd,
        // Not readable by this user: not known to be equal.
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut a = vec![0u8; super::BLOCK];
    let mut b = vec![0u8; super::BLOCK];
    let mut at = 0i64;
    loop {
        let n = sys::pread(src, &mut a, at)?;
        let m = sys::pread(dst.as_fd(), &mut b, at)?;
        if n != m || a[..n] != b[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
        at += n as i64;
    }
}

/// `name` as a C string for a step that came from a path.
pub fn step(name: &OsStr) -> Result<CString, RestoreError> {
    CString::new(name.as_bytes()).map_err(|_| RestoreError::Io {
        path: name.to_string_lossy().into_owned(),
        op: "naming",
        source: io::Error::from_raw_os_error(libc::EINVAL),
    })
}
