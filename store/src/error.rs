//! The store's error type. Every failure names what it was doing; callers
//! (the filesystem, the daemon) map it to an errno or a one-line message.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("store I/O on {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("catalog: {0}")]
    Catalog(#[from] rusqlite::Error),
    #[error("catalog schema version {found} is newer than this umbra understands ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("pack {pack} is damaged at offset {offset}: {why}")]
    CorruptPack { pack: u32, offset: u64, why: String },
    #[error("chunk {0:?} is named by the catalog but missing from the packs")]
    MissingChunk(crate::ChunkHash),
    #[error("record encoding: {0}")]
    Encoding(#[from] postcard::Error),
    #[error("no shadow copy set named {0:?}")]
    UnknownSet(String),
    #[error("no volume named {0:?}")]
    UnknownVolume(String),
    #[error("set origin {0:?} in the catalog is unknown to this umbra")]
    UnknownOrigin(String),
}

impl Error {
    /// The disk under the store is full (ENOSPC, EDQUOT, or SQLite's
    /// SQLITE_FULL): the diff area's full policy decides what happens.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::Io { source, .. } => {
                matches!(
                    source.kind(),
                    io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
                )
            }
            Error::Catalog(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
