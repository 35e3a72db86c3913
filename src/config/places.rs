//! Where the configured directories really are, and the rule that keeps
//! them apart: nothing may be inside (or be) a volume's backing directory,
//! a volume's mountpoint or the snapshots mountpoint, except a volume's
//! own mount over its own backing (in place). `Config::check` applies the
//! rule to the paths as written; `Config::check_on_disk` applies it again
//! to where they lead: symlinks resolved, and directories compared by
//! (dev, ino) so that a bind mount or a second name cannot hide an overlap.
//! A path that does not exist yet is its longest existing ancestor,
//! resolved, with the rest appended. It only looks (stat, readlink,
//! /proc/self/mountinfo); it never creates anything, and it never stats a
//! FUSE mountpoint (a stuck one could hang the caller).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{Config, Problem, shown};

/// What a configured path is, for the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Backing(usize),
    Mount(usize),
    Snapshots,
    StateDir,
    Socket,
}

impl Kind {
    /// Whether nothing else may be inside it.
    fn is_territory(self) -> bool {
        matches!(self, Kind::Backing(_) | Kind::Mount(_) | Kind::Snapshots)
    }

    fn volume(self) -> Option<usize> {
        match self {
            Kind::Backing(i) | Kind::Mount(i) => Some(i),
            _ => None,
        }
    }
}

/// One configured path: what it is called in errors, where it is written.
pub(super) struct Place {
    pub what: String,
    pub kind: Kind,
    pub path: PathBuf,
}

/// How place `x` stands to place `y`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Relation {
    Same,
    Inside,
    Apart,
}

/// Every place of `config`: the volumes' backings and mounts, the
/// snapshots mountpoint, the state dir and the socket.
pub(super) fn places(config: &Config) -> Vec<Place> {
    let mut places = Vec::new();
    for (i, volume) in config.volumes.iter().enumerate() {
        places.push(Place {
            what: format!("the backing of volume {:?}", volume.name),
            kind: Kind::Backing(i),
            path: volume.backing.clone(),
        });
        places.push(Place {
            what: format!("the mountpoint of volume {:?}", volume.name),
            kind: Kind::Mount(i),
            path: volume.mount.clone(),
        });
    }
    places.push(Place {
        what: "the snapshots mountpoint".into(),
        kind: Kind::Snapshots,
        path: config.snapshots.clone(),
    });
    places.push(Place {
        what: "state_dir".into(),
        kind: Kind::StateDir,
        path: config.state_dir.clone(),
    });
    places.push(Place {
        what: "socket".into(),
        kind: Kind::Socket,
        path: config.socket.clone(),
    });
    places
}

/// The first pair of places that break the rule, under `relation` (of
/// the places at two indexes), as `(inner, outer, relation)`.
pub(super) fn first_overlap(
    places: &[Place],
    relation: impl Fn(usize, usize) -> Relation,
) -> Option<(usize, usize, Relation)> {
    for (j, outer) in places.iter().enumerate() {
        if !outer.kind.is_territory() {
            continue;
        }
        for (i, inner) in places.iter().enumerate() {
            if i == j {
                continue;
            }
            let rel = relation(i, j);
            if rel == Relation::Apart {
                continue;
            }
            let same_volume =
                inner.kind.volume().is_some() && inner.kind.volume() == outer.kind.volume();
            // A volume mounted in place over its own backing.
            if same_volume && rel == Relation::Same {
                continue;
            }
            // Two equal territories are reported once, the later one first.
            if rel == Relation::Same && inner.kind.is_territory() && i < j {
                continue;
            }
            return Some((i, j, rel));
        }
    }
    None
}

/// The lexical relation of two normalized absolute paths.
pub(super) fn lexical(x: &Path, y: &Path) -> Relation {
    if x == y {
        Relation::Same
    } else if x.starts_with(y) {
        Relation::Inside
    } else {
        Relation::Apart
    }
}

/// A place as found on disk.
#[derive(Debug)]
pub(super) struct Resolved {
    /// The path with every symlink of its existing part resolved.
    pub real: PathBuf,
    /// (dev, ino) of the place itself, when it exists and may be looked at.
    own: Option<(u64, u64)>,
    /// (dev, ino) of every existing directory on the way to it, itself
    /// included.
    chain: HashSet<(u64, u64)>,
}

impl Resolved {
    /// Resolves `path`, never looking at a path in `fuse_mounts` itself.
    pub fn new(path: &Path, fuse_mounts: &[PathBuf]) -> Resolved {
        let mut existing = path.to_path_buf();
        let mut rest = Vec::new();
        let real = loop {
            if !fuse_mounts.iter().any(|m| m == &existing)
                && let Ok(real) = std::fs::canonicalize(&existing)
            {
                break real;
            }
            match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_os_string());
                    existing = parent.to_path_buf();
                }
                _ => break existing,
            }
        };
        let mut chain = HashSet::new();
        let mut own = None;
        for dir in real.ancestors() {
            if let Ok(meta) = std::fs::metadata(dir) {
                chain.insert((meta.dev(), meta.ino()));
                if dir == real && rest.is_empty() {
                    own = Some((meta.dev(), meta.ino()));
                }
            }
        }
        let real = rest.iter().rev().fold(real, |p, name| p.join(name));
        Resolved { real, own, chain }
    }

    /// How `self` stands to `other`.
    pub fn relation(&self, other: &Resolved) -> Relation {
        match (self.own, other.own) {
            (Some(a), Some(b)) if a == b => return Relation::Same,
            _ => {}
        }
        match lexical(&self.real, &other.real) {
            Relation::Apart => {}
            found => return found,
        }
        match other.own {
            Some(outer) if self.chain.contains(&outer) => Relation::Inside,
            _ => Relation::Apart,
        }
    }
}

/// The on-disk check: every place resolved, then the rule.
pub(super) fn check_on_disk(config: &Config) -> Result<(), Problem> {
    let fuse_mounts: Vec<PathBuf> = umbra_fs::fusectl::read_fuse_mounts()
        .map(|mounts| mounts.into_iter().map(|m| m.mountpoint).collect())
        .unwrap_or_default();
    let places = places(config);
    let resolved: Vec<Resolved> = places
        .iter()
        .map(|p| Resolved::new(&p.path, &fuse_mounts))
        .collect();
    let (i, j, rel) = match first_overlap(&places, |i, j| resolved[i].relation(&resolved[j])) {
        None => return Ok(()),
        Some(found) => found,
    };
    let (inner, outer) = (&places[i], &places[j]);
    Err(Problem::Overlap {
        inner: inner.what.clone(),
        inner_path: inner.path.clone(),
        outer: outer.what.clone(),
        outer_path: outer.path.clone(),
        same: rel == Relation::Same,
        resolved: resolution(
            &inner.path,
            &resolved[i].real,
            &outer.path,
            &resolved[j].real,
        ),
    })
}

/// Where the two paths really lead, if that is not what they say.
fn resolution(inner: &Path, inner_real: &Path, outer: &Path, outer_real: &Path) -> String {
    if inner == inner_real && outer == outer_real {
        // Same words, different names: a bind mount or a hard-linked name.
        return if lexical(inner, outer) == Relation::Apart {
            " (the same directory under another name)".into()
        } else {
            String::new()
        };
    }
    format!(
        " (they lead to {} and {})",
        shown(inner_real),
        shown(outer_real)
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn resolved(path: &Path) -> Resolved {
        Resolved::new(path, &[])
    }

    #[test]
    fn a_symlink_leads_to_the_same_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("real");
        std::fs::create_dir(root.join("b")).expect("mkdir");
        symlink("b", root.join("b2")).expect("symlink");
        let (b, b2) = (resolved(&root.join("b")), resolved(&root.join("b2")));
        assert_eq!(b2.relation(&b), Relation::Same);
        assert_eq!(b2.real, root.join("b"));
        // Not yet there, under a symlink: inside.
        let under = resolved(&root.join("b2/not/yet"));
        assert_eq!(under.real, root.join("b/not/yet"));
        assert_eq!(under.relation(&b), Relation::Inside);
        assert_eq!(b.relation(&under), Relation::Apart);
        let sibling = resolved(&root.join("c"));
        assert_eq!(sibling.relation(&b), Relation::Apart);
    }

    #[test]
    fn a_second_name_of_a_directory_is_found_by_its_inode() {
        // A bind mount gives a directory a second path that no symlink
        // explains; (dev, ino) still matches.
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("real");
        std::fs::create_dir_all(root.join("b/sub")).expect("mkdir");
        std::fs::create_dir(root.join("alias")).expect("mkdir");
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("c");
        let (from, to) = (c(&root.join("b")), c(&root.join("alias")));
        // SAFETY: both are valid NUL-terminated strings; a bind mount takes no data.
        let rc = unsafe {
            libc::mount(
                from.as_ptr(),
                to.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "bind mount: {}", std::io::Error::last_os_error());
        let relations = (
            resolved(&root.join("alias")).relation(&resolved(&root.join("b"))),
            resolved(&root.join("alias/sub/x")).relation(&resolved(&root.join("b"))),
        );
        // SAFETY: as above; undoes the bind mount made here.
        unsafe { libc::umount2(to.as_ptr(), libc::MNT_DETACH) };
        assert_eq!(relations, (Relation::Same, Relation::Inside));
    }
}
