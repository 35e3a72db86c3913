//! The diff area as it is on disk, read from outside the daemon: the
//! catalog opened read-only with SQLite (the schema of store/FORMAT.md) and
//! the pack files, for tests that recompute what the store should hold
//! without asking the store. Nothing here writes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

pub type Hash = [u8; 32];
/// Bytes in front of a chunk's data in its pack: length and hash.
pub const CHUNK_HEADER: u64 = 36;
/// Bytes of magic at the start of every pack.
pub const PACK_MAGIC: u64 = 8;

/// Where a chunk's data lies: pack, offset of the data, length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub pack: u32,
    pub offset: u64,
    pub len: u64,
}

/// Every row that says what the diff area holds, at one instant.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// volume name -> id
    pub volumes: BTreeMap<String, i64>,
    /// set id -> name
    pub sets: BTreeMap<i64, String>,
    /// (set, volume) -> epoch the set closed
    pub set_volumes: BTreeMap<(i64, i64), u64>,
    /// set ids named by `set_writers` rows
    pub set_writers: BTreeSet<i64>,
    /// (volume, object, block, hi) -> chunk hash
    pub blocks: BTreeMap<(i64, u64, u64, u64), Hash>,
    /// (volume, object, hi)
    pub attrs: BTreeSet<(i64, u64, u64)>,
    /// (volume, object, hi) -> chunk hash
    pub dirs: BTreeMap<(i64, u64, u64), Hash>,
    pub chunks: BTreeMap<Hash, Location>,
    /// (volume, object)
    pub handles: BTreeSet<(i64, u64)>,
    /// (volume, live object) -> presented inode number
    pub aliases: BTreeMap<(i64, u64), u64>,
    /// (volume, object) -> since_epoch
    pub aside: BTreeMap<(i64, u64), u64>,
}

impl Catalog {
    /// Reads `<store>/catalog.db` in one read transaction.
    pub fn read(store: &Path) -> Catalog {
        let path = store.join("catalog.db");
        let mut conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("opening {} read-only: {e}", path.display()));
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .expect("busy timeout");
        let tx = conn.transaction().expect("a read transaction");
        let mut c = Catalog::default();
        let rows = |sql: &str, f: &mut dyn FnMut(&rusqlite::Row<'_>)| {
            let mut stmt = tx.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            let mut rows = stmt.query([]).expect("query");
            while let Some(r) = rows.next().expect("row") {
                f(r);
            }
        };
        let u = |r: &rusqlite::Row<'_>, i: usize| r.get::<_, i64>(i).expect("an integer") as u64;
        let i = |r: &rusqlite::Row<'_>, i: usize| r.get::<_, i64>(i).expect("an integer");
        let h = |r: &rusqlite::Row<'_>, i: usize| -> Hash {
            let b: Vec<u8> = r.get(i).expect("a blob");
            b.try_into().expect("a 32-byte hash")
        };
        rows("SELECT id, name FROM volumes", &mut |r| {
            c.volumes.insert(r.get(1).expect("name"), i(r, 0));
        });
        rows("SELECT id, name FROM sets", &mut |r| {
            c.sets.insert(i(r, 0), r.get(1).expect("name"));
        });
        rows(
            "SELECT set_id, volume_id, epoch FROM set_volumes",
            &mut |r| {
                c.set_volumes.insert((i(r, 0), i(r, 1)), u(r, 2));
            },
        );
        rows("SELECT set_id FROM set_writers", &mut |r| {
            c.set_writers.insert(i(r, 0));
        });
        rows(
            "SELECT volume_id, object, block, hi, hash FROM block_records",
            &mut |r| {
                c.blocks
                    .insert((i(r, 0), u(r, 1), u(r, 2), u(r, 3)), h(r, 4));
            },
        );
        rows("SELECT volume_id, object, hi FROM attr_records", &mut |r| {
            c.attrs.insert((i(r, 0), u(r, 1), u(r, 2)));
        });
        rows(
            "SELECT volume_id, object, hi, entries FROM dir_records",
            &mut |r| {
                c.dirs.insert((i(r, 0), u(r, 1), u(r, 2)), h(r, 3));
            },
        );
        rows("SELECT hash, pack, offset, len FROM chunks", &mut |r| {
            c.chunks.insert(
                h(r, 0),
                Location {
                    pack: u(r, 1) as u32,
                    offset: u(r, 2),
                    len: u(r, 3),
                },
            );
        });
        rows("SELECT volume_id, object FROM handles", &mut |r| {
            c.handles.insert((i(r, 0), u(r, 1)));
        });
        rows(
            "SELECT volume_id, object, presented FROM aliases",
            &mut |r| {
                c.aliases.insert((i(r, 0), u(r, 1)), u(r, 2));
            },
        );
        rows(
            "SELECT volume_id, object, since_epoch FROM aside",
            &mut |r| {
                c.aside.insert((i(r, 0), u(r, 1)), u(r, 2));
            },
        );
        drop(tx);
        c
    }

    /// The epochs of the sets of each volume.
    pub fn epochs(&self) -> BTreeMap<i64, Vec<u64>> {
        let mut out: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
        for ((_, volume), epoch) in &self.set_volumes {
            out.entry(*volume).or_default().push(*epoch);
        }
        out
    }

    /// Every object that has a record of any kind or an aside row.
    pub fn objects_with_state(&self) -> BTreeSet<(i64, u64)> {
        let mut out: BTreeSet<(i64, u64)> = self.aside.keys().copied().collect();
        out.extend(self.blocks.keys().map(|(v, o, _, _)| (*v, *o)));
        out.extend(self.attrs.iter().map(|(v, o, _)| (*v, *o)));
        out.extend(self.dirs.keys().map(|(v, o, _)| (*v, *o)));
        out
    }

    pub fn record_count(&self) -> usize {
        self.blocks.len() + self.attrs.len() + self.dirs.len()
    }
}

/// One pack file: its number and the bytes the filesystem has allocated
/// for it (holes punched out do not count).
#[derive(Clone, Debug)]
pub struct Pack {
    pub number: u32,
    pub path: PathBuf,
    pub allocated: u64,
}

/// The pack files of a store, by number.
pub fn packs(store: &Path) -> Vec<Pack> {
    let dir = store.join("packs");
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let entry = entry.expect("a pack entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(number) = name.strip_suffix(".pack").and_then(|n| n.parse().ok()) else {
            continue;
        };
        let meta = entry.metadata().expect("pack metadata");
        out.push(Pack {
            number,
            path: entry.path(),
            allocated: meta.blocks() * 512,
        });
    }
    out.sort_by_key(|p| p.number);
    out
}

/// The data of the chunk at `loc`, if the pack has it all.
pub fn read_chunk(store: &Path, loc: Location) -> std::io::Result<Vec<u8>> {
    let path = store.join("packs").join(format!("{:08}.pack", loc.pack));
    let file = fs::File::open(path)?;
    let mut buf = vec![0u8; loc.len as usize];
    file.read_exact_at(&mut buf, loc.offset)?;
    Ok(buf)
}

/// The 4 KiB pages a pack must keep allocated: its magic and every byte of
/// each chunk the catalog names in it, header included.
pub fn needed_pages(chunks: impl Iterator<Item = Location>) -> BTreeSet<u64> {
    const PAGE: u64 = 4096;
    let mut pages: BTreeSet<u64> = BTreeSet::from([0]);
    for loc in chunks {
        let start = loc.offset - CHUNK_HEADER;
        let end = loc.offset + loc.len;
        pages.extend(start / PAGE..end.div_ceil(PAGE));
    }
    pages
}
