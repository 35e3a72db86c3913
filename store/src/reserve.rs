//! The reserve: a file of zeros kept in the store directory so that, when
//! the store's disk is really full, there is room to delete sets (which
//! needs a catalog transaction) and recover. Owns only that file and the
//! question "how big is this filesystem"; it never touches packs or the
//! catalog.

use std::path::Path;

use crate::io::{OpenMode, StoreIo};

const RESERVE: &str = "reserve";
const MIN_BYTES: u64 = 256 * 1024;
const MAX_BYTES: u64 = 2 * 1024 * 1024;

pub(crate) fn release(io: &dyn StoreIo, store_dir: &Path) {
    let _ = io.remove(&store_dir.join(RESERVE));
}

pub(crate) fn restore(io: &dyn StoreIo, store_dir: &Path) {
    let path = store_dir.join(RESERVE);
    if io.open(&path, OpenMode::Read).is_ok() {
        return;
    }
    // A 64th of the disk, at least 256 KiB and at most 2 MiB: room for a
    // few catalog transactions without taking a small disk's room for
    // pre-images.
    let bytes = filesystem_bytes(store_dir)
        .map_or(MAX_BYTES, |total| (total / 64).clamp(MIN_BYTES, MAX_BYTES));
    let made = io.open(&path, OpenMode::Create).and_then(|f| {
        f.write_all_at(&vec![0u8; bytes as usize], 0)?;
        f.sync_data()
    });
    if let Err(e) = made {
        let _ = io.remove(&path);
        tracing::debug!("setting the store's reserve aside: {e}");
    }
}

/// The size of the filesystem holding `dir`, in bytes.
pub fn filesystem_bytes(dir: &Path) -> std::io::Result<u64> {
    statvfs(dir).map(|st| st.f_blocks * st.f_frsize)
}

/// The bytes an unprivileged writer could still put on `dir`'s filesystem.
pub(crate) fn filesystem_free(dir: &Path) -> std::io::Result<u64> {
    statvfs(dir).map(|st| st.f_bavail * st.f_frsize)
}

fn statvfs(dir: &Path) -> std::io::Result<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: zeroed statvfs is a valid out-buffer; c is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}
