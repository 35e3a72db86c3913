//! The live read-write filesystem of one volume: a passthrough over the
//! backing directory that runs every mutation through the copy-on-write
//! rule first. `core` is the filesystem (driven by tests without FUSE);
//! `fuse` is the thin fuser adapter.

mod caller;
mod core;
mod fuse;
mod nodes;
mod privileges;

#[cfg(test)]
pub(crate) use self::caller::Caller;
pub(crate) use self::core::LiveFs;
#[cfg(test)]
pub(crate) use self::core::SetAttrs;
pub(crate) use self::fuse::LiveAdapter;
pub(crate) use self::privileges::visible_xattr_names;
