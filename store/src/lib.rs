//! umbra-store: the diff area (VSS "shadow storage").
//!
//! Owns everything umbra keeps on disk besides the live volumes: pre-image
//! chunks addressed by their blake3 hash and appended to pack files, and a
//! SQLite catalog (WAL) of volumes, shadow copy sets, per-volume epochs and
//! pre-image records. It answers "what was object O of volume V like at epoch
//! e" with a record, or with `None` meaning "unchanged since: read the live
//! object". It never touches a live volume, never mounts anything and never
//! opens a socket. The on-disk format is a contract written down in
//! `store/FORMAT.md`.

mod cache;
mod catalog;
mod checkpoint;
mod durable;
mod error;
mod ids;
mod io;
mod pack;
mod records;
mod recover;
mod reserve;
mod store;
mod syncer;

pub use error::{Error, Result};
pub use ids::{ChunkHash, Epoch, ObjectId, SetId, VolumeId};
pub use io::{OpenMode, OsIo, StoreFile, StoreIo};
pub use records::{AttrRecord, DirEntry, FileKind, Timestamp};
pub use reserve::filesystem_bytes;
pub use store::{
    ClusterSet, Durability, NewSet, Place, PreImages, Preserved, SetInfo, SetOrigin, SetVolume,
    SetWriterRecord, Store, StoreOptions, StoreStats, Swap, VolumeInfo,
};

/// Size of a data block: the unit of copy-on-write for file contents.
pub const BLOCK_SIZE: u64 = 64 * 1024;
