//! Providers: what makes the copy of a volume once its writers froze.
//! `cow` is the copy-on-write provider over a FUSE live mount, for any
//! local filesystem.
pub mod cow;
