//! Pack files: append-only files of chunks, so that a million pre-images are
//! a few large files, not a million small ones.
//!
//! A pack is `packs/NNNNNNNN.pack`: the 8-byte magic `UMBRAPK1`, then chunks,
//! each `len: u32 LE`, `blake3: [u8; 32]`, `data: [u8; len]`. The catalog's
//! `chunks` table names where each chunk's data starts. Bytes past the last
//! chunk the catalog names are an unfinished append and are cut off at open.
//! Every read checks the chunk's data against the hash it was asked for.
//! This file never decides whether a chunk is needed; the catalog does.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::io_err;
use crate::{ChunkHash, Error, Result};

pub(crate) const MAGIC: &[u8; 8] = b"UMBRAPK1";
pub(crate) const CHUNK_HEADER: u64 = 4 + 32;
/// Bytes one hole-punching call frees at most.
const PUNCH_STEP: u64 = 8 << 20;
/// A pack is closed for appends once it passes this size.
const PACK_TARGET_SIZE: u64 = 256 * 1024 * 1024;

/// Where a chunk's data lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChunkLocation {
    pub pack: u32,
    pub offset: u64,
    pub len: u32,
}

struct Appender {
    pack: u32,
    file: File,
    end: u64,
}

pub(crate) struct Packs {
    dir: PathBuf,
    appender: Mutex<Appender>,
    readers: Mutex<HashMap<u32, Arc<File>>>,
}

impl Packs {
    /// Opens the pack directory. `newest` is the pack and end of the last
    /// chunk the catalog names; anything after it is cut. A pack shorter
    /// than that is damaged: it is left as it is (reads of the lost chunks
    /// fail their hash check) and new chunks still go after `end`, so that
    /// no location the catalog names is ever reused.
    pub fn open(dir: &Path, newest: Option<(u32, u64)>) -> Result<Packs> {
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let (pack, end) = match newest {
            Some((pack, end)) => (pack, end.max(MAGIC.len() as u64)),
            None => (newest_pack_on_disk(dir)?.unwrap_or(0), MAGIC.len() as u64),
        };
        // Packs after the newest named chunk hold only unfinished appends
        // (a crash right after a roll-over) or chunks the catalog dropped:
        // empty them, so that nothing on disk outlives its catalog row at
        // the tail.
        for later in packs_on_disk(dir)?.into_iter().filter(|&n| n > pack) {
            reset_pack(dir, later)?;
        }
        let file = open_pack_for_append(dir, pack)?;
        let len = file
            .metadata()
            .map_err(io_err(format!("sizing pack {pack}")))?
            .len();
        if len > end {
            file.set_len(end)
                .map_err(io_err(format!("cutting the tail of pack {pack}")))?;
        } else if len < end {
            tracing::warn!(
                pack,
                len,
                end,
                "pack is shorter than the catalog says; the chunks past its end are lost"
            );
        }
        Ok(Packs {
            dir: dir.to_path_buf(),
            appender: Mutex::new(Appender { pack, file, end }),
            readers: Mutex::new(HashMap::new()),
        })
    }

    /// Appends one chunk and returns where its data lies. The data reaches
    /// the kernel before this returns, so a process crash keeps it.
    pub fn append(&self, hash: &ChunkHash, data: &[u8]) -> Result<ChunkLocation> {
        let mut app = self.appender.lock().unwrap_or_else(|p| p.into_inner());
        if app.end >= PACK_TARGET_SIZE {
            // The closed pack's chunks must stay as durable as the catalog
            // rows naming them: sync it before moving on.
            app.file
                .sync_data()
                .map_err(io_err(format!("syncing pack {}", app.pack)))?;
            let next = app.pack + 1;
            let file = open_pack_for_append(&self.dir, next)?;
            *app = Appender {
                pack: next,
                file,
                end: MAGIC.len() as u64,
            };
        }
        let len = u32::try_from(data.len()).map_err(|_| Error::CorruptPack {
            pack: app.pack,
            offset: app.end,
            why: "chunk larger than 4 GiB".into(),
        })?;
        let mut record = Vec::with_capacity(CHUNK_HEADER as usize + data.len());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&hash.0);
        record.extend_from_slice(data);
        let at = app.end;
        app.file
            .write_all_at(&record, at)
            .map_err(io_err(format!("appending to pack {}", app.pack)))?;
        app.end += record.len() as u64;
        Ok(ChunkLocation {
            pack: app.pack,
            offset: at + CHUNK_HEADER,
            len,
        })
    }

    /// Reads the chunk `hash` at `loc` and checks its data against the hash,
    /// so that a damaged or lost pack region is an error, never wrong bytes.
    /// Makes every appended chunk durable.
    pub fn sync(&self) -> Result<()> {
        let app = self.appender.lock().unwrap_or_else(|p| p.into_inner());
        app.file
            .sync_data()
            .map_err(io_err(format!("syncing pack {}", app.pack)))
    }

    pub fn read(&self, hash: &ChunkHash, loc: ChunkLocation) -> Result<Vec<u8>> {
        let file = self.reader(loc.pack)?;
        let mut buf = vec![0u8; loc.len as usize];
        let corrupt = |why: String| Error::CorruptPack {
            pack: loc.pack,
            offset: loc.offset,
            why,
        };
        file.read_exact_at(&mut buf, loc.offset)
            .map_err(|e| corrupt(e.to_string()))?;
        if ChunkHash::of(&buf) != *hash {
            return Err(corrupt(format!("chunk {hash:?} does not match its hash")));
        }
        Ok(buf)
    }

    /// The pack appends go to.
    pub fn active(&self) -> u32 {
        self.appender.lock().unwrap_or_else(|p| p.into_inner()).pack
    }

    /// Closes the active pack for appends (synced) and opens the next one,
    /// so that the closed one can be compacted.
    pub fn roll(&self) -> Result<()> {
        let mut app = self.appender.lock().unwrap_or_else(|p| p.into_inner());
        app.file
            .sync_data()
            .map_err(io_err(format!("syncing pack {}", app.pack)))?;
        let next = app.pack + 1;
        let file = open_pack_for_append(&self.dir, next)?;
        *app = Appender {
            pack: next,
            file,
            end: MAGIC.len() as u64,
        };
        Ok(())
    }

    /// Every pack on disk with the bytes it takes (allocated: punched holes
    /// are not counted).
    pub fn list(&self) -> Result<Vec<(u32, u64)>> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err("listing packs"))? {
            let entry = entry.map_err(io_err("listing packs"))?;
            let name = entry.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|s| s.strip_suffix(".pack"))
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let meta = entry.metadata().map_err(io_err("sizing a pack"))?;
            out.push((n, meta.blocks() * 512));
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Deletes a pack no chunk row names any more. Readers that already
    /// hold it open finish their reads.
    pub fn remove(&self, pack: u32) -> Result<()> {
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pack);
        let path = pack_path(&self.dir, pack);
        fs::remove_file(&path).map_err(io_err(format!("removing {}", path.display())))
    }

    /// Gives the disk space of `ranges` back to the filesystem: `(pack,
    /// start, end)` byte ranges that no chunk the catalog names overlaps.
    /// Overlapping and touching ranges are punched as one, so the pages
    /// they share go too. The file keeps its length; the ranges read as
    /// zeros. Best effort: a filesystem that cannot punch leaves the bytes
    /// for compaction.
    pub fn punch(&self, ranges: &[(u32, u64, u64)]) {
        let mut ranges = ranges.to_vec();
        ranges.sort_unstable();
        let mut runs: Vec<(u32, u64, u64)> = Vec::new();
        for (pack, start, end) in ranges {
            match runs.last_mut() {
                Some(run) if run.0 == pack && run.2 >= start => run.2 = run.2.max(end),
                _ => runs.push((pack, start, end)),
            }
        }
        let mut open: Option<(u32, File)> = None;
        for (pack, start, end) in runs {
            if open.as_ref().is_none_or(|(p, _)| *p != pack) {
                let path = pack_path(&self.dir, pack);
                match OpenOptions::new().write(true).open(&path) {
                    Ok(f) => open = Some((pack, f)),
                    Err(e) => {
                        tracing::debug!("opening {} to punch dead bytes: {e}", path.display());
                        open = None;
                        continue;
                    }
                }
            }
            let Some((_, file)) = &open else { continue };
            // A bounded range per call: the kernel holds the pack's inode
            // lock (which appends to the active pack need) while it drops a
            // range's pages and extents.
            let mut at = start;
            while at < end {
                let len = (end - at).min(PUNCH_STEP);
                if let Err(e) = punch_hole(file, at, len) {
                    tracing::debug!("punching dead bytes out of pack {pack}: {e}");
                    return;
                }
                at += len;
            }
        }
    }

    /// Bytes the packs take on disk (allocated, so punched holes do not
    /// count).
    pub fn disk_bytes(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let mut total = 0;
        for entry in fs::read_dir(&self.dir).map_err(io_err("listing packs"))? {
            let entry = entry.map_err(io_err("listing packs"))?;
            total += entry.metadata().map_err(io_err("sizing a pack"))?.blocks() * 512;
        }
        Ok(total)
    }

    fn reader(&self, pack: u32) -> Result<Arc<File>> {
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = readers.get(&pack) {
            return Ok(f.clone());
        }
        let path = pack_path(&self.dir, pack);
        let file =
            Arc::new(File::open(&path).map_err(io_err(format!("opening {}", path.display())))?);
        readers.insert(pack, file.clone());
        Ok(file)
    }
}

fn punch_hole(file: &File, start: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(start), Ok(len)) = (i64::try_from(start), i64::try_from(len)) else {
        return Err(std::io::ErrorKind::InvalidInput.into());
    };
    // SAFETY: fallocate on an fd we own; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            start,
            len,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn pack_path(dir: &Path, pack: u32) -> PathBuf {
    dir.join(format!("{pack:08}.pack"))
}

fn open_pack_for_append(dir: &Path, pack: u32) -> Result<File> {
    let path = pack_path(dir, pack);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    let len = file
        .metadata()
        .map_err(io_err(format!("sizing {}", path.display())))?
        .len();
    if len < MAGIC.len() as u64 {
        file.set_len(0).map_err(io_err("resetting a new pack"))?;
        file.write_all(MAGIC)
            .map_err(io_err("writing a pack header"))?;
    } else {
        let mut magic = [0u8; 8];
        file.read_exact_at(&mut magic, 0)
            .map_err(io_err("reading a pack header"))?;
        if &magic != MAGIC {
            return Err(Error::CorruptPack {
                pack,
                offset: 0,
                why: "not an umbra pack (bad magic)".into(),
            });
        }
    }
    Ok(file)
}

/// Makes pack `n` an empty pack: just the magic.
fn reset_pack(dir: &Path, n: u32) -> Result<()> {
    let path = pack_path(dir, n);
    let mut file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    file.set_len(0)
        .map_err(io_err(format!("emptying {}", path.display())))?;
    file.write_all(MAGIC)
        .map_err(io_err(format!("writing the header of {}", path.display())))
}

/// The numbers of the pack files in `dir`, in no particular order.
fn packs_on_disk(dir: &Path) -> Result<Vec<u32>> {
    let mut packs = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("listing packs"))? {
        let entry = entry.map_err(io_err("listing packs"))?;
        let name = entry.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|s| s.strip_suffix(".pack"))
            .and_then(|s| s.parse::<u32>().ok())
        {
            packs.push(n);
        }
    }
    Ok(packs)
}

fn newest_pack_on_disk(dir: &Path) -> Result<Option<u32>> {
    Ok(packs_on_disk(dir)?.into_iter().max())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(v: u8) -> (ChunkHash, Vec<u8>) {
        let data = vec![v; 1000 + usize::from(v)];
        (ChunkHash::of(&data), data)
    }

    #[test]
    fn a_chunk_is_its_length_its_hash_and_its_data() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let packs = Packs::open(tmp.path(), None).expect("open");
        let (hash, data) = chunk(1);
        let loc = packs.append(&hash, &data).expect("append");
        assert_eq!(
            loc,
            ChunkLocation {
                pack: 0,
                offset: 8 + 36,
                len: data.len() as u32
            }
        );
        let bytes = fs::read(pack_path(tmp.path(), 0)).expect("read");
        assert_eq!(&bytes[..8], b"UMBRAPK1");
        assert_eq!(&bytes[8..12], &(data.len() as u32).to_le_bytes());
        assert_eq!(&bytes[12..44], &hash.0);
        assert_eq!(&bytes[44..], &data[..]);
        assert_eq!(packs.read(&hash, loc).expect("read"), data);
        let (other, _) = chunk(2);
        assert!(matches!(
            packs.read(&other, loc),
            Err(Error::CorruptPack { pack: 0, .. })
        ));
    }

    #[test]
    fn a_full_pack_rolls_over_to_the_next() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (a, a_data) = chunk(1);
        let a_loc = {
            let packs = Packs::open(tmp.path(), None).expect("open");
            packs.append(&a, &a_data).expect("append")
        };
        // Make pack 0 full without writing 256 MiB: a sparse tail, as if
        // the catalog named a chunk ending there.
        let full = PACK_TARGET_SIZE;
        File::options()
            .write(true)
            .open(pack_path(tmp.path(), 0))
            .expect("pack 0")
            .set_len(full)
            .expect("extend");
        let packs = Packs::open(tmp.path(), Some((0, full))).expect("open");
        let (b, b_data) = chunk(2);
        let b_loc = packs.append(&b, &b_data).expect("append");
        assert_eq!((b_loc.pack, b_loc.offset), (1, 8 + 36));
        assert_eq!(packs.read(&a, a_loc).expect("read a"), a_data);
        assert_eq!(packs.read(&b, b_loc).expect("read b"), b_data);
        drop(packs);

        // Reopened at the end of b, with a torn append after it: cut.
        let b_end = b_loc.offset + u64::from(b_loc.len);
        let mut f = OpenOptions::new()
            .append(true)
            .open(pack_path(tmp.path(), 1))
            .expect("pack 1");
        f.write_all(&[7; 100]).expect("garbage");
        drop(f);
        let packs = Packs::open(tmp.path(), Some((1, b_end))).expect("open");
        let len = |n| fs::metadata(pack_path(tmp.path(), n)).expect("pack").len();
        assert_eq!((len(0), len(1)), (full, b_end));
        let (c, c_data) = chunk(3);
        let c_loc = packs.append(&c, &c_data).expect("append");
        assert_eq!((c_loc.pack, c_loc.offset), (1, b_end + 36));
        assert_eq!(packs.read(&b, b_loc).expect("read b"), b_data);
    }
}
