//! The store's access to the files it writes itself (packs, the reserve)
//! and to the durability barriers of its catalog. Everything the store
//! writes, syncs, removes or punches goes through a `StoreIo`, so that a
//! test backend can record the order of those operations and rebuild what
//! a power cut at any point would leave on disk (`tests/power_cut.rs`).
//! The catalog's own reads and writes are SQLite's and do not pass here;
//! the store reports each commit and makes the WAL durable through it.
//!
//! This file only carries operations to the operating system; it never
//! decides what is written or when a sync is due.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

/// Parts one `pwritev` takes at most (Linux's UIO_MAXIOV).
const IOV_MAX: usize = 1024;

/// How `StoreIo::open` opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Read an existing file.
    Read,
    /// Read and write an existing file.
    Write,
    /// Read and write; a missing file is created empty.
    Create,
}

/// The store's file system, for its own files. `OsIo` is the real one;
/// `Store::open_with_io` takes another, for tests and tooling.
///
/// What the store relies on, and what a recording backend models: a write
/// is visible to every later read at once (it is in the kernel); it
/// survives a power cut only once `StoreFile::sync_data` of its file has
/// returned. A file created or removed survives a power cut only once
/// `sync_dir` of its directory has returned.
pub trait StoreIo: Send + Sync {
    /// Creates `dir` and its missing parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StoreFile>>;

    fn remove(&self, path: &Path) -> io::Result<()>;

    /// The files in `dir`, each with the bytes it takes on disk
    /// (allocated: punched holes do not count), in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<(OsString, u64)>>;

    /// Makes the entries of `dir` (the files created in it or removed from
    /// it) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// The catalog at `db` has just committed a transaction: SQLite has
    /// written it to the WAL. Called while the store still holds the
    /// catalog's writer, so no other write to the catalog's files is under
    /// way. Only a recording backend does anything here.
    fn catalog_committed(&self, db: &Path);

    /// Makes every committed catalog transaction durable; `wal` is SQLite's
    /// write-ahead log of the catalog.
    fn sync_catalog(&self, wal: &File) -> io::Result<()>;
}

/// An open file of a `StoreIo`. Positioned reads and writes only, so that
/// one handle serves several threads.
pub trait StoreFile: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset`; fewer is an error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()>;

    /// Writes `parts` one after another from `offset`, as one
    /// `write_all_at` of their concatenation would. The operating system's
    /// files do it with `pwritev`: no copy of the parts, one call for many.
    fn write_all_vectored_at(&self, parts: &[&[u8]], offset: u64) -> io::Result<()> {
        self.write_all_at(&parts.concat(), offset)
    }

    /// The file's length.
    fn size(&self) -> io::Result<u64>;

    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Makes every write to the file (and its length) durable.
    fn sync_data(&self) -> io::Result<()>;

    /// Frees `[offset, offset + len)`: it reads as zeros afterwards and the
    /// file keeps its length. A filesystem that cannot punch fails.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
}

/// The operating system's files: what `Store::open` uses.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsIo;

impl StoreIo for OsIo {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StoreFile>> {
        let file = match mode {
            OpenMode::Read => File::open(path)?,
            OpenMode::Write => OpenOptions::new().read(true).write(true).open(path)?,
            OpenMode::Create => OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?,
        };
        Ok(Box::new(OsFile(file)))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<(OsString, u64)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            out.push((entry.file_name(), entry.metadata()?.blocks() * 512));
        }
        Ok(out)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn catalog_committed(&self, _db: &Path) {}

    fn sync_catalog(&self, wal: &File) -> io::Result<()> {
        wal.sync_data()
    }
}

struct OsFile(File);

impl StoreFile for OsFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }

    fn write_all_vectored_at(&self, parts: &[&[u8]], offset: u64) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = parts
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| IoSlice::new(p))
            .collect();
        let mut rest = &mut slices[..];
        let mut at = offset;
        while !rest.is_empty() {
            let count = rest.len().min(IOV_MAX);
            let Ok(pos) = libc::off_t::try_from(at) else {
                return Err(io::ErrorKind::InvalidInput.into());
            };
            // SAFETY: IoSlice is ABI-compatible with iovec on Unix (std
            // guarantees it), and `count` of them are live in `rest`.
            let n = unsafe {
                libc::pwritev(
                    self.0.as_raw_fd(),
                    rest.as_ptr().cast::<libc::iovec>(),
                    count as libc::c_int,
                    pos,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            at += n as u64;
            IoSlice::advance_slices(&mut rest, n as usize);
        }
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        // SAFETY: fallocate on a descriptor we own; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                self.0.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
