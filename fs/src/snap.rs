//! The shadow copy browser: `/<set>/<volume>/...` read-only, plus `latest`.
//! `core` resolves every object of a set from its pre-image records or from
//! the unchanged live object; `inodes` numbers them, `ahead` reads small
//! files ahead into the kernel's cache, `trees` serves the volumes whose sets
//! are whole read-only trees (btrfs snapshots), `fuse` is the thin adapter.

mod ahead;
mod core;
mod fuse;
mod inodes;
mod trees;

pub use self::core::Browser;
pub(crate) use self::core::Kernel;
pub(crate) use self::fuse::SnapAdapter;
