//! What changed in a volume between two instants (`umbra diff`) and the
//! distinct versions of one file across the sets (`umbra versions`). The
//! comparison itself (`diff.rs`) is every provider's: a provider names
//! what may have changed and reads the two ends through its `Ends`. For a
//! copy-on-write volume (here) both are read from the catalog's records
//! rather than by walking trees: the records say which objects and
//! directories changed (store's `changed_objects`), and only those are
//! resolved at the two instants and compared. So the cost follows the
//! number of changes, not the number of files. (A btrfs volume reads its
//! snapshots' trees the same way: providers/btrfs/changes.rs.)
//!
//! An object is known to the catalog by its number; its name comes from
//! the listings of the directories that changed (the records), else from
//! where it is live, which the store's `places` remember for every changed
//! object (a hint, checked before use). Only when that fails (an object
//! renamed after its last change, or preserved before places existed) is
//! the live tree searched, once for all the objects still unnamed; the
//! answer says so.
//!
//! This module only reads: it never changes the volume or the catalog.

mod compare;
pub(crate) mod diff;
mod instant;
mod live;
pub(crate) mod versions;

use std::path::PathBuf;

use umbra_store::{FileKind, SetId, Timestamp};

pub use compare::changes;
pub use versions::versions;

/// The kind of object a mode says (a mode the store does not know is
/// taken as a file).
fn kind_of(mode: u32) -> FileKind {
    FileKind::from_mode(mode).unwrap_or(FileKind::Regular)
}

/// One end of a comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instant {
    /// A set's shadow copy of the volume, at the end of its epoch.
    Set {
        id: SetId,
        epoch: umbra_store::Epoch,
    },
    /// The live volume, now.
    Live,
}

/// How an entry changed, as `zfs diff` says it. The order is the order of
/// lines for one path: a name that went before the one that came in its
/// place (a file replaced by a rename over it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Removed,
    Added,
    Modified,
    Renamed,
}

impl Op {
    /// `zfs diff`'s mark.
    pub fn mark(self) -> char {
        match self {
            Op::Added => '+',
            Op::Removed => '-',
            Op::Modified => 'M',
            Op::Renamed => 'R',
        }
    }
}

/// What of a modified object differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Aspect {
    /// Its bytes (a file's data, its size).
    Content,
    /// Permission bits.
    Mode,
    /// Owner or group.
    Owner,
    /// Modification time.
    Times,
    /// Extended attributes (POSIX ACLs included).
    Xattrs,
    /// The number of hard links.
    Links,
}

impl Aspect {
    pub fn as_str(self) -> &'static str {
        match self {
            Aspect::Content => "content",
            Aspect::Mode => "mode",
            Aspect::Owner => "owner",
            Aspect::Times => "times",
            Aspect::Xattrs => "xattrs",
            Aspect::Links => "links",
        }
    }
}

/// One line of a diff. Paths are relative to the volume's root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub op: Op,
    pub kind: FileKind,
    pub path: PathBuf,
    /// The new path of a rename.
    pub to: Option<PathBuf>,
    /// What differs, for `Modified`.
    pub what: Vec<Aspect>,
}

/// A diff and how it was found.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    pub changes: Vec<Change>,
    /// Objects the catalog said may have changed (what the cost follows).
    pub examined: usize,
    /// Whether naming an object needed a walk of the live tree.
    pub searched: bool,
}

/// One distinct content of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// blake3 of the bytes (of the target, for a symlink).
    pub hash: [u8; 32],
    pub size: u64,
    pub mtime: Timestamp,
    /// Whether the live file has it.
    pub live: bool,
    /// The sets that hold it, newest first, with the path it has in each.
    pub sets: Vec<(SetId, PathBuf)>,
}
