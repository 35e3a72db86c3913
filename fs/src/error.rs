//! The one error type at the FUSE boundary, and the one place a failure
//! becomes the errno the kernel is answered with (`errno`): the cores say
//! what went wrong (no room for a pre-image, a store error), never which
//! errno that is.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("diff area: {0}")]
    Store(#[from] umbra_store::Error),
    /// The diff area has no room for a pre-image the write needs, and its
    /// policy (on_full = protect) keeps the sets: the write cannot go on.
    #[error("diff area full: {0}")]
    NoRoom(String),
    /// A configuration the provider cannot serve; the text says why.
    #[error("{0}")]
    Refused(String),
    #[error("{what}: {source}")]
    Context {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Io(e) | FsError::Context { source: e, .. } => {
                e.raw_os_error().unwrap_or(libc::EIO)
            }
            // No room for a pre-image, by the policy or on the store's
            // own disk: the write fails as on a full disk.
            FsError::NoRoom(_) => libc::ENOSPC,
            FsError::Store(e) if e.is_disk_full() => libc::ENOSPC,
            FsError::Store(_) => libc::EIO,
            FsError::Refused(_) => libc::EINVAL,
        }
    }

    pub fn from_errno(errno: i32) -> FsError {
        FsError::Io(io::Error::from_raw_os_error(errno))
    }
}

pub type Result<T, E = FsError> = std::result::Result<T, E>;

pub(crate) trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| FsError::Context {
            what: what(),
            source,
        })
    }
}
