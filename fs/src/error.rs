//! The one error type at the FUSE boundary: every failure carries the errno
//! the kernel is answered with.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("diff area: {0}")]
    Store(#[from] umbra_store::Error),
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
            FsError::Store(_) => libc::EIO,
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
