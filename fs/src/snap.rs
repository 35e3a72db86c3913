//! The shadow copy browser: `/<set>/<volume>/...` read-only, plus `latest`.
//! `core` resolves every object of a set from its pre-image records or from
//! the unchanged live object; `fuse` is the thin adapter.

mod core;
mod fuse;
mod inodes;

pub use self::core::Browser;
pub(crate) use self::core::Stale;
pub(crate) use self::fuse::SnapAdapter;
