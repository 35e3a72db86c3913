//! Helpers shared by the store's integration tests: a store in a temporary
//! directory, and small deterministic contents for blocks, attributes and
//! directories, so that a test names a state by a number.

#![allow(dead_code)] // each test binary uses its own subset

pub mod recorder;

use std::path::Path;

use tempfile::TempDir;
use umbra_store::{
    AttrRecord, DirEntry, Epoch, FileKind, NewSet, ObjectId, SetInfo, Store, StoreOptions,
    Timestamp, VolumeId,
};

/// Bytes of a test block: smaller than `BLOCK_SIZE` so tests stay fast; the
/// store does not care about the length.
pub const TEST_BLOCK: usize = 4096;

pub fn open(dir: &Path) -> Store {
    Store::open(dir, StoreOptions::default()).expect("open store")
}

pub fn open_with_cache(dir: &Path, cache_bytes: usize) -> Store {
    Store::open(
        dir,
        StoreOptions {
            cache_bytes,
            ..StoreOptions::default()
        },
    )
    .expect("open store")
}

pub fn temp_store() -> (TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    (dir, store)
}

/// Block content number `v`: `0` is a block of zeros, every other value a
/// distinct non-zero pattern.
pub fn block(v: u8) -> Vec<u8> {
    if v == 0 {
        return vec![0; TEST_BLOCK];
    }
    // The first byte tells values apart; the rest is a non-zero pattern.
    (0..TEST_BLOCK)
        .map(|i| {
            if i == 0 {
                v
            } else {
                (v.wrapping_mul(31) ^ i as u8) | 1
            }
        })
        .collect()
}

/// Attribute state number `v`: every field differs between values, times
/// include negative seconds, some states carry xattrs.
pub fn attr(v: u8) -> AttrRecord {
    let n = u32::from(v);
    AttrRecord {
        mode: 0o100000 | (0o600 + n),
        uid: 1000 + n,
        gid: 100 + n,
        size: u64::from(v) * 70_000,
        blocks: u64::from(v) * 8,
        nlink: 1 + n % 3,
        rdev: 0,
        atime: Timestamp {
            secs: 1_700_000_000 + i64::from(v),
            nanos: n * 1000,
        },
        mtime: Timestamp {
            secs: -i64::from(v),
            nanos: 999_999_999 - n,
        },
        ctime: Timestamp {
            secs: i64::from(v) << 33,
            nanos: 0,
        },
        xattrs: (0..v % 3)
            .map(|i| (format!("user.k{i}").into_bytes(), vec![v; usize::from(i)]))
            .collect(),
    }
}

/// Directory state number `v`: `v % 4` entries (an empty directory included).
pub fn dir(v: u8) -> Vec<DirEntry> {
    (0..v % 4)
        .map(|i| DirEntry {
            name: format!("f{v}-{i}").into_bytes(),
            object: ObjectId(u64::from(v) * 1000 + u64::from(i)),
            kind: if i % 2 == 0 {
                FileKind::Regular
            } else {
                FileKind::Directory
            },
        })
        .collect()
}

pub fn commit(store: &Store, name: &str, volumes: &[VolumeId]) -> SetInfo {
    store
        .commit_set(&NewSet {
            name: name.to_string(),
            label: None,
            origin: umbra_store::SetOrigin::Manual,
            created: Timestamp {
                secs: 1_764_060_170,
                nanos: 0,
            },
            volumes: volumes.to_vec(),
        })
        .expect("commit set")
}

/// The epoch `set` closed for `volume`.
pub fn epoch_of(set: &SetInfo, volume: VolumeId) -> Epoch {
    set.volumes
        .iter()
        .find(|v| v.volume == volume)
        .expect("volume in set")
        .epoch
}

/// The current (open) epoch of `volume`.
pub fn current_epoch(store: &Store, volume: VolumeId) -> Epoch {
    store
        .volumes()
        .expect("volumes")
        .into_iter()
        .find(|v| v.id == volume)
        .expect("known volume")
        .epoch
}

/// `hi` for a pre-image taken now: the end of the previous epoch.
pub fn hi_now(store: &Store, volume: VolumeId) -> Epoch {
    Epoch(current_epoch(store, volume).0 - 1)
}

pub fn pack_path(dir: &Path, n: u32) -> std::path::PathBuf {
    dir.join("packs").join(format!("{n:08}.pack"))
}
