//! Pack files: append-only files of chunks, so that a million pre-images are
//! a few large files, not a million small ones.
//!
//! A pack is `packs/NNNNNNNN.pack`: the 8-byte magic `UMBRAPK1`, then chunks,
//! each `len: u32 LE`, `blake3: [u8; 32]`, `data: [u8; len]`. The catalog's
//! `chunks` table names where each chunk's data starts. Bytes past the last
//! chunk the catalog names are an unfinished append and are cut off at open.
//! Every read checks the chunk's data against the hash it was asked for.
//! This file never decides whether a chunk is needed; the catalog does.
//! Packs open for reading are kept in an LRU of `READERS`, so the store's
//! descriptors do not grow with the diff area (one per 256 MiB of it).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::error::io_err;
use crate::io::{OpenMode, StoreFile, StoreIo};
use crate::{ChunkHash, Error, Result};

pub(crate) const MAGIC: &[u8; 8] = b"UMBRAPK1";
pub(crate) const CHUNK_HEADER: u64 = 4 + 32;
/// Bytes one hole-punching call frees at most.
const PUNCH_STEP: u64 = 8 << 20;
/// A pack is closed for appends once it passes this size.
const PACK_TARGET_SIZE: u64 = 256 * 1024 * 1024;

/// Packs kept open for reading at most; a reader already handed out stays
/// open until its user lets go.
const READERS: usize = 32;

/// Where a chunk's data lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChunkLocation {
    pub pack: u32,
    pub offset: u64,
    pub len: u32,
}

struct Appender {
    pack: u32,
    file: Arc<dyn StoreFile>,
    end: u64,
    /// How much of the pack the last completed sync covered.
    synced: u64,
}

pub(crate) struct Packs {
    io: Arc<dyn StoreIo>,
    dir: PathBuf,
    appender: Mutex<Appender>,
    readers: Mutex<LruCache<u32, Arc<dyn StoreFile>>>,
}

impl Packs {
    /// Opens the pack directory. `newest` is the pack and end of the last
    /// chunk the catalog names; anything after it is cut. A pack shorter
    /// than that is damaged: it is left as it is (reads of the lost chunks
    /// fail their hash check) and new chunks still go after `end`, so that
    /// no location the catalog names is ever reused.
    pub fn open(io: Arc<dyn StoreIo>, dir: &Path, newest: Option<(u32, u64)>) -> Result<Packs> {
        io.create_dir_all(dir)
            .map_err(io_err(format!("creating {}", dir.display())))?;
        let (pack, end) = match newest {
            Some((pack, end)) => (pack, end.max(MAGIC.len() as u64)),
            None => (
                packs_on_disk(&*io, dir)?.into_iter().max().unwrap_or(0),
                MAGIC.len() as u64,
            ),
        };
        // Packs after the newest named chunk hold only unfinished appends
        // (a crash right after a roll-over) or chunks the catalog dropped:
        // empty them, so that nothing on disk outlives its catalog row at
        // the tail.
        for later in packs_on_disk(&*io, dir)?.into_iter().filter(|&n| n > pack) {
            reset_pack(&*io, dir, later)?;
        }
        let file = open_pack_for_append(&*io, dir, pack)?;
        // A chunk is only as durable as its pack's name, and the pack may
        // have been created by a run that crashed before syncing it.
        sync_dir(&*io, dir)?;
        let len = file.size().map_err(io_err(format!("sizing pack {pack}")))?;
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
        // Whatever an earlier run left unsynced is made durable now, so
        // that the first catalog commit can say so (`synced`).
        file.sync_data()
            .map_err(io_err(format!("syncing pack {pack}")))?;
        Ok(Packs {
            io,
            dir: dir.to_path_buf(),
            appender: Mutex::new(Appender {
                pack,
                file,
                end,
                synced: end,
            }),
            readers: Mutex::new(LruCache::new(
                NonZeroUsize::new(READERS).unwrap_or(NonZeroUsize::MIN),
            )),
        })
    }

    /// Appends one chunk and returns where its data lies. The data reaches
    /// the kernel before this returns, so a process crash keeps it.
    pub fn append(&self, hash: &ChunkHash, data: &[u8]) -> Result<ChunkLocation> {
        let mut at = self.append_all(&[(*hash, data)])?;
        at.pop().ok_or_else(|| Error::CorruptPack {
            pack: self.active(),
            offset: 0,
            why: "an append returned no location".into(),
        })
    }

    /// Appends `chunks` in order, in as few writes as the pack size allows
    /// (a window of a sequential first overwrite is a hundred chunks: one
    /// call, and no copy of them into a buffer first), and returns where
    /// each one's data lies, like `append`.
    pub fn append_all(&self, chunks: &[(ChunkHash, &[u8])]) -> Result<Vec<ChunkLocation>> {
        let mut app = self.appender.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(chunks.len());
        let mut rest = chunks;
        while !rest.is_empty() {
            if app.end >= PACK_TARGET_SIZE {
                // The closed pack's chunks must stay as durable as the
                // catalog rows naming them: sync it before moving on.
                self.start_next(&mut app)?;
            }
            let mut headers = Vec::new();
            let mut end = app.end;
            let mut taken = 0;
            for (hash, data) in rest {
                let len = u32::try_from(data.len()).map_err(|_| Error::CorruptPack {
                    pack: app.pack,
                    offset: end,
                    why: "chunk larger than 4 GiB".into(),
                })?;
                let mut header = [0u8; CHUNK_HEADER as usize];
                header[..4].copy_from_slice(&len.to_le_bytes());
                header[4..].copy_from_slice(&hash.0);
                headers.push(header);
                out.push(ChunkLocation {
                    pack: app.pack,
                    offset: end + CHUNK_HEADER,
                    len,
                });
                end += CHUNK_HEADER + u64::from(len);
                taken += 1;
                if end >= PACK_TARGET_SIZE {
                    break;
                }
            }
            let parts: Vec<&[u8]> = headers
                .iter()
                .zip(&rest[..taken])
                .flat_map(|(header, (_, data))| [&header[..], data])
                .collect();
            app.file
                .write_all_vectored_at(&parts, app.end)
                .map_err(io_err(format!("appending to pack {}", app.pack)))?;
            app.end = end;
            rest = &rest[taken..];
        }
        Ok(out)
    }

    /// Makes every chunk appended so far durable (a pack closed for
    /// appends was synced when it was closed). Appends go on meanwhile.
    pub fn sync(&self) -> Result<()> {
        let (pack, file, end) = {
            let app = self.appender.lock().unwrap_or_else(|p| p.into_inner());
            if app.synced >= app.end {
                return Ok(());
            }
            (app.pack, app.file.clone(), app.end)
        };
        file.sync_data()
            .map_err(io_err(format!("syncing pack {pack}")))?;
        let mut app = self.appender.lock().unwrap_or_else(|p| p.into_inner());
        if app.pack == pack {
            app.synced = app.synced.max(end);
        }
        Ok(())
    }

    /// How far the packs are known durable: every pack before the first
    /// number, and the first up to the offset.
    pub fn synced(&self) -> (u32, u64) {
        let app = self.appender.lock().unwrap_or_else(|p| p.into_inner());
        (app.pack, app.synced)
    }

    /// Reads the chunk `hash` at `loc` and checks its data against the hash,
    /// so that a damaged or lost pack region is an error, never wrong bytes.
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
        self.start_next(&mut app)
    }

    fn start_next(&self, app: &mut Appender) -> Result<()> {
        app.file
            .sync_data()
            .map_err(io_err(format!("syncing pack {}", app.pack)))?;
        let next = app.pack + 1;
        let file = open_pack_for_append(&*self.io, &self.dir, next)?;
        // Before any chunk in it can be named by a durable catalog row.
        sync_dir(&*self.io, &self.dir)?;
        *app = Appender {
            pack: next,
            file,
            end: MAGIC.len() as u64,
            synced: 0,
        };
        Ok(())
    }

    /// Every pack on disk with the bytes it takes (allocated: punched holes
    /// are not counted).
    pub fn list(&self) -> Result<Vec<(u32, u64)>> {
        let mut out: Vec<(u32, u64)> = self
            .io
            .list(&self.dir)
            .map_err(io_err("listing packs"))?
            .into_iter()
            .filter_map(|(name, bytes)| Some((pack_number(&name)?, bytes)))
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Deletes a pack no chunk row names any more. Readers that already
    /// hold it open finish their reads.
    pub fn remove(&self, pack: u32) -> Result<()> {
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop(&pack);
        let path = pack_path(&self.dir, pack);
        self.io
            .remove(&path)
            .map_err(io_err(format!("removing {}", path.display())))
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
        let mut open: Option<(u32, Box<dyn StoreFile>)> = None;
        for (pack, start, end) in runs {
            if open.as_ref().is_none_or(|(p, _)| *p != pack) {
                let path = pack_path(&self.dir, pack);
                match self.io.open(&path, OpenMode::Write) {
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
                if let Err(e) = file.punch_hole(at, len) {
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
        Ok(self
            .io
            .list(&self.dir)
            .map_err(io_err("listing packs"))?
            .iter()
            .map(|(_, bytes)| bytes)
            .sum())
    }

    fn reader(&self, pack: u32) -> Result<Arc<dyn StoreFile>> {
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = readers.get(&pack) {
            return Ok(f.clone());
        }
        let path = pack_path(&self.dir, pack);
        let file: Arc<dyn StoreFile> = Arc::from(
            self.io
                .open(&path, OpenMode::Read)
                .map_err(io_err(format!("opening {}", path.display())))?,
        );
        readers.put(pack, file.clone());
        Ok(file)
    }
}

/// The chunks among `chunks` whose data in the packs under `dir` is
/// missing or does not match its hash.
pub(crate) fn damaged(
    io: &dyn StoreIo,
    dir: &Path,
    chunks: &[(ChunkHash, ChunkLocation)],
) -> Vec<ChunkHash> {
    let mut open: HashMap<u32, Option<Box<dyn StoreFile>>> = HashMap::new();
    let mut damaged = Vec::new();
    for (hash, loc) in chunks {
        let file = open
            .entry(loc.pack)
            .or_insert_with(|| io.open(&pack_path(dir, loc.pack), OpenMode::Read).ok());
        let mut buf = vec![0u8; loc.len as usize];
        let intact = file
            .as_ref()
            .is_some_and(|f| f.read_exact_at(&mut buf, loc.offset).is_ok())
            && ChunkHash::of(&buf) == *hash;
        if !intact {
            damaged.push(*hash);
        }
    }
    damaged
}

fn sync_dir(io: &dyn StoreIo, dir: &Path) -> Result<()> {
    io.sync_dir(dir)
        .map_err(io_err(format!("syncing {}", dir.display())))
}

fn pack_path(dir: &Path, pack: u32) -> PathBuf {
    dir.join(format!("{pack:08}.pack"))
}

fn pack_number(name: &std::ffi::OsStr) -> Option<u32> {
    name.to_str()?.strip_suffix(".pack")?.parse().ok()
}

fn open_pack_for_append(io: &dyn StoreIo, dir: &Path, pack: u32) -> Result<Arc<dyn StoreFile>> {
    let path = pack_path(dir, pack);
    let file: Arc<dyn StoreFile> = Arc::from(
        io.open(&path, OpenMode::Create)
            .map_err(io_err(format!("opening {}", path.display())))?,
    );
    let len = file
        .size()
        .map_err(io_err(format!("sizing {}", path.display())))?;
    if len < MAGIC.len() as u64 {
        file.set_len(0).map_err(io_err("resetting a new pack"))?;
        file.write_all_at(MAGIC, 0)
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
fn reset_pack(io: &dyn StoreIo, dir: &Path, n: u32) -> Result<()> {
    let path = pack_path(dir, n);
    let file = io
        .open(&path, OpenMode::Write)
        .map_err(io_err(format!("opening {}", path.display())))?;
    file.set_len(0)
        .map_err(io_err(format!("emptying {}", path.display())))?;
    file.write_all_at(MAGIC, 0)
        .map_err(io_err(format!("writing the header of {}", path.display())))
}

/// The numbers of the pack files in `dir`, in no particular order.
fn packs_on_disk(io: &dyn StoreIo, dir: &Path) -> Result<Vec<u32>> {
    Ok(io
        .list(dir)
        .map_err(io_err("listing packs"))?
        .into_iter()
        .filter_map(|(name, _)| pack_number(&name))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::fs::{self, File, OpenOptions};
    use std::io::Write;

    use super::*;
    use crate::io::OsIo;

    fn open(dir: &Path, newest: Option<(u32, u64)>) -> Result<Packs> {
        Packs::open(Arc::new(OsIo), dir, newest)
    }

    fn chunk(v: u8) -> (ChunkHash, Vec<u8>) {
        let data = vec![v; 1000 + usize::from(v)];
        (ChunkHash::of(&data), data)
    }

    #[test]
    fn a_batch_of_more_chunks_than_one_pwritev_takes_lands_as_single_appends_would() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let packs = open(tmp.path(), None).expect("open");
        let (first_hash, first) = chunk(0);
        let first_loc = packs.append(&first_hash, &first).expect("append");
        // 1,500 chunks are 3,000 parts: three pwritev calls.
        let chunks: Vec<(ChunkHash, Vec<u8>)> = (0..1500u32)
            .map(|i| {
                let data = format!("chunk {i} ")
                    .repeat(1 + (i % 7) as usize)
                    .into_bytes();
                (ChunkHash::of(&data), data)
            })
            .collect();
        let batch: Vec<(ChunkHash, &[u8])> = chunks.iter().map(|(h, d)| (*h, &d[..])).collect();
        let locs = packs.append_all(&batch).expect("append_all");
        let mut expected = first_loc.offset + u64::from(first_loc.len);
        for ((hash, data), loc) in chunks.iter().zip(&locs) {
            assert_eq!(
                loc.offset,
                expected + CHUNK_HEADER,
                "chunks follow each other"
            );
            assert_eq!(&packs.read(hash, *loc).expect("read")[..], &data[..]);
            expected = loc.offset + u64::from(loc.len);
        }
        let on_disk = fs::metadata(pack_path(tmp.path(), 0)).expect("pack").len();
        assert_eq!(on_disk, expected, "nothing after the last chunk");
        assert_eq!(
            &packs.read(&first_hash, first_loc).expect("read")[..],
            &first[..]
        );
    }

    #[test]
    fn a_chunk_is_its_length_its_hash_and_its_data() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let packs = open(tmp.path(), None).expect("open");
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
            let packs = open(tmp.path(), None).expect("open");
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
        let packs = open(tmp.path(), Some((0, full))).expect("open");
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
        let packs = open(tmp.path(), Some((1, b_end))).expect("open");
        let len = |n| fs::metadata(pack_path(tmp.path(), n)).expect("pack").len();
        assert_eq!((len(0), len(1)), (full, b_end));
        let (c, c_data) = chunk(3);
        let c_loc = packs.append(&c, &c_data).expect("append");
        assert_eq!((c_loc.pack, c_loc.offset), (1, b_end + 36));
        assert_eq!(packs.read(&b, b_loc).expect("read b"), b_data);
    }
}
