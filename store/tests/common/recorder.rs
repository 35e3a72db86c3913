//! A recording `StoreIo` for power-cut tests, after redb's
//! `tests/crash_consistency.rs`: every file keeps a *live* image (every
//! write, what the kernel holds) and a *durable* image (its content as of
//! its last `sync_data`); every directory keeps the entries a `sync_dir`
//! made durable. Each operation is appended to one log, in the order the
//! store issued it, together with the test's own marks ("preserve 7
//! returned"). The catalog is SQLite's real files: at every commit the
//! recorder copies them (the store holds the catalog's writer then, so the
//! copy is a consistent state), and a WAL sync makes the newest copy taken
//! before it durable.
//!
//! `Replay` walks a log and says, after any prefix of it, what a power cut
//! there would leave: the durable files and the last durable catalog copy
//! (or, for harsher cuts, the live files and the newest catalog copy).
//! Nothing here syncs a real disk.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use umbra_store::{OpenMode, StoreFile, StoreIo};

/// One operation, in the order the store issued it. Files are named by
/// inode (a handle keeps its inode when its name is removed); names are
/// relative to the store's directory.
#[derive(Clone, Debug)]
pub enum Op {
    /// `path` names the new, empty inode `inode`.
    Create {
        path: PathBuf,
        inode: usize,
    },
    Write {
        inode: usize,
        offset: u64,
        data: Vec<u8>,
    },
    SetLen {
        inode: usize,
        len: u64,
    },
    Punch {
        inode: usize,
        offset: u64,
        len: u64,
    },
    /// The inode's live image becomes its durable image.
    Sync {
        inode: usize,
    },
    Remove {
        path: PathBuf,
    },
    /// The live entries of `dir` become its durable entries.
    SyncDir {
        dir: PathBuf,
    },
    /// The catalog committed; `copy` is its state right after.
    CatalogCommit {
        copy: usize,
    },
    /// The WAL was synced: catalog copy `copy` (the newest taken before
    /// the sync began) is durable.
    CatalogSync {
        copy: usize,
    },
    /// A test's mark, meaningful to the test only.
    Mark(u64),
}

impl Op {
    /// Whether the op changes the live files.
    pub fn changes_live_files(&self) -> bool {
        matches!(
            self,
            Op::Create { .. }
                | Op::Write { .. }
                | Op::SetLen { .. }
                | Op::Punch { .. }
                | Op::Remove { .. }
        )
    }
}

/// The catalog's files at one commit. The WAL is kept as segments so that
/// a copy shares the frames it has in common with the one before.
#[derive(Clone, Debug)]
pub struct CatalogCopy {
    pub db: Arc<Vec<u8>>,
    wal: Vec<Arc<Vec<u8>>>,
}

impl CatalogCopy {
    pub fn wal(&self) -> Vec<u8> {
        self.wal.iter().flat_map(|s| s.iter().copied()).collect()
    }

    fn wal_len(&self) -> usize {
        self.wal.iter().map(|s| s.len()).sum()
    }

    /// Writes `catalog.db` (and `catalog.db-wal`, if any) into `dir`.
    pub fn write_to(&self, dir: &Path) {
        std::fs::write(dir.join("catalog.db"), &*self.db).expect("write catalog copy");
        if self.wal_len() > 0 {
            std::fs::write(dir.join("catalog.db-wal"), self.wal()).expect("write WAL copy");
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
}

/// Files as a power cut sees them: inodes with a live and a durable image,
/// and the live and durable name of each.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    inodes: Vec<Inode>,
    live: BTreeMap<PathBuf, usize>,
    durable: BTreeMap<PathBuf, usize>,
}

impl Disk {
    /// A disk holding `files`, every one of them durable.
    pub fn with_files(files: &BTreeMap<PathBuf, Vec<u8>>) -> Disk {
        let mut disk = Disk::default();
        for (path, content) in files {
            disk.inodes.push(Inode {
                live: content.clone(),
                durable: content.clone(),
            });
            disk.live.insert(path.clone(), disk.inodes.len() - 1);
        }
        disk.durable = disk.live.clone();
        disk
    }

    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Create { path, inode } => {
                if *inode >= self.inodes.len() {
                    self.inodes.resize(inode + 1, Inode::default());
                }
                self.live.insert(path.clone(), *inode);
            }
            Op::Write {
                inode,
                offset,
                data,
            } => {
                let image = &mut self.inodes[*inode].live;
                let (start, end) = (*offset as usize, *offset as usize + data.len());
                if image.len() < end {
                    image.resize(end, 0);
                }
                image[start..end].copy_from_slice(data);
            }
            Op::SetLen { inode, len } => self.inodes[*inode].live.resize(*len as usize, 0),
            Op::Punch { inode, offset, len } => {
                let image = &mut self.inodes[*inode].live;
                let start = (*offset as usize).min(image.len());
                let end = (offset + len).min(image.len() as u64) as usize;
                image[start..end].fill(0);
            }
            Op::Sync { inode } => {
                let inode = &mut self.inodes[*inode];
                inode.durable = inode.live.clone();
            }
            Op::Remove { path } => {
                self.live.remove(path);
            }
            Op::SyncDir { dir } => {
                let in_dir = |p: &PathBuf| p.parent() == Some(dir.as_path());
                self.durable.retain(|p, _| !in_dir(p));
                for (p, inode) in &self.live {
                    if in_dir(p) {
                        self.durable.insert(p.clone(), *inode);
                    }
                }
            }
            Op::CatalogCommit { .. } | Op::CatalogSync { .. } | Op::Mark(_) => {}
        }
    }

    /// What a power cut leaves: the durable names with their durable images.
    pub fn durable_files(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        self.durable
            .iter()
            .map(|(p, &i)| (p.clone(), self.inodes[i].durable.clone()))
            .collect()
    }

    /// What a crash of the process alone leaves: everything the kernel has.
    pub fn live_files(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        self.live
            .iter()
            .map(|(p, &i)| (p.clone(), self.inodes[i].live.clone()))
            .collect()
    }
}

/// Walks a log; after each op, says what a cut there leaves.
#[derive(Default)]
pub struct Replay {
    pub disk: Disk,
    /// The durable catalog copy, if the WAL was ever synced.
    pub durable_catalog: Option<usize>,
    /// The newest catalog copy.
    pub newest_catalog: Option<usize>,
}

impl Replay {
    pub fn apply(&mut self, op: &Op) {
        self.disk.apply(op);
        match op {
            Op::CatalogCommit { copy } => self.newest_catalog = Some(*copy),
            Op::CatalogSync { copy } => {
                self.durable_catalog = Some(self.durable_catalog.map_or(*copy, |d| d.max(*copy)))
            }
            _ => {}
        }
    }
}

type SyncHook = Arc<dyn Fn(&Recorder) + Send + Sync>;

struct State {
    disk: Disk,
    log: Vec<Op>,
    copies: Vec<CatalogCopy>,
    /// The WAL header of the newest copy: while it is unchanged, SQLite
    /// only appended frames.
    wal_header: Vec<u8>,
}

/// The recording backend. Paths the store passes are absolute; the log
/// names them relative to `root`, the store's directory.
pub struct Recorder {
    /// Open files hold the recorder.
    me: Weak<Recorder>,
    root: PathBuf,
    state: Mutex<State>,
    /// Runs before every file or WAL sync is recorded, outside the lock: a
    /// test can hold syncs back, as a slow disk would.
    on_sync: Mutex<Option<SyncHook>>,
    /// Whether catalog commits are copied and logged: not for a store
    /// rebuilt from a cut, which only needs its files served.
    records_catalog: bool,
    /// Whether `punch_hole` works, or fails as on a filesystem without it.
    punches: std::sync::atomic::AtomicBool,
}

impl Recorder {
    pub fn new(root: &Path) -> Arc<Recorder> {
        Recorder::build(root, &BTreeMap::new(), true)
    }

    /// A backend whose disk starts as `files` (names relative to `root`),
    /// all durable: the store a cut left. Its catalog is not recorded.
    pub fn with_files(root: &Path, files: &BTreeMap<PathBuf, Vec<u8>>) -> Arc<Recorder> {
        Recorder::build(root, files, false)
    }

    fn build(
        root: &Path,
        files: &BTreeMap<PathBuf, Vec<u8>>,
        records_catalog: bool,
    ) -> Arc<Recorder> {
        Arc::new_cyclic(|me| Recorder {
            records_catalog,
            punches: std::sync::atomic::AtomicBool::new(true),
            me: me.clone(),
            root: root.to_path_buf(),
            state: Mutex::new(State {
                disk: Disk::with_files(files),
                log: Vec::new(),
                copies: Vec::new(),
                wal_header: Vec::new(),
            }),
            on_sync: Mutex::new(None),
        })
    }

    pub fn set_sync_hook(&self, hook: impl Fn(&Recorder) + Send + Sync + 'static) {
        *self.on_sync.lock().expect("hook") = Some(Arc::new(hook));
    }

    /// From now on, punching holes fails (or works again).
    pub fn set_punch_supported(&self, yes: bool) {
        self.punches.store(yes, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn mark(&self, tag: u64) {
        self.lock().log.push(Op::Mark(tag));
    }

    pub fn log(&self) -> Vec<Op> {
        self.lock().log.clone()
    }

    pub fn count(&self, f: impl Fn(&Op) -> bool) -> usize {
        self.lock().log.iter().filter(|op| f(op)).count()
    }

    pub fn catalog_copy(&self, copy: usize) -> CatalogCopy {
        self.lock().copies[copy].clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn relative(&self, path: &Path) -> PathBuf {
        path.strip_prefix(&self.root)
            .expect("the store only touches files under its directory")
            .to_path_buf()
    }

    fn before_sync(&self) {
        let hook = self.on_sync.lock().expect("hook").clone();
        if let Some(hook) = hook {
            hook(self);
        }
    }

    fn record(&self, op: Op) {
        let mut s = self.lock();
        s.disk.apply(&op);
        s.log.push(op);
    }
}

fn not_found() -> io::Error {
    io::ErrorKind::NotFound.into()
}

impl StoreIo for Recorder {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        // Directories are not modelled: they exist, and so do their
        // entries once synced.
        Ok(())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StoreFile>> {
        let rel = self.relative(path);
        let mut s = self.lock();
        let inode = match (s.disk.live.get(&rel), mode) {
            (Some(&inode), _) => inode,
            (None, OpenMode::Create) => {
                let inode = s.disk.inodes.len();
                let op = Op::Create { path: rel, inode };
                s.disk.apply(&op);
                s.log.push(op);
                inode
            }
            (None, _) => return Err(not_found()),
        };
        drop(s);
        Ok(Box::new(RecordedFile {
            recorder: self.me.upgrade().expect("the recorder is alive while used"),
            inode,
        }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let rel = self.relative(path);
        let mut s = self.lock();
        if !s.disk.live.contains_key(&rel) {
            return Err(not_found());
        }
        let op = Op::Remove { path: rel };
        s.disk.apply(&op);
        s.log.push(op);
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<(OsString, u64)>> {
        let rel = self.relative(dir);
        let s = self.lock();
        Ok(s.disk
            .live
            .iter()
            .filter(|(p, _)| p.parent() == Some(rel.as_path()))
            .map(|(p, &i)| {
                let name = p.file_name().expect("a file name").to_os_string();
                (name, allocated(&s.disk.inodes[i].live))
            })
            .collect())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let dir = self.relative(dir);
        self.before_sync();
        self.record(Op::SyncDir { dir });
        Ok(())
    }

    fn catalog_committed(&self, db: &Path) {
        if !self.records_catalog {
            return;
        }
        let mut s = self.lock();
        let db_bytes = std::fs::read(db).expect("read the catalog");
        let wal_path = PathBuf::from(format!("{}-wal", db.display()));
        let previous = s.copies.last().cloned();
        let db = match &previous {
            Some(p) if *p.db == db_bytes => p.db.clone(),
            _ => Arc::new(db_bytes),
        };
        let wal = read_wal(&wal_path, previous.as_ref(), &mut s.wal_header);
        s.copies.push(CatalogCopy { db, wal });
        let copy = s.copies.len() - 1;
        s.log.push(Op::CatalogCommit { copy });
    }

    fn sync_catalog(&self, _wal: &File) -> io::Result<()> {
        if !self.records_catalog {
            return Ok(());
        }
        // Every commit before the sync began is covered; one that commits
        // while it runs may or may not be, and is not counted.
        let covered = self.lock().copies.len().checked_sub(1);
        self.before_sync();
        if let Some(copy) = covered {
            self.lock().log.push(Op::CatalogSync { copy });
        }
        Ok(())
    }
}

/// The WAL's bytes now, sharing the segments of `previous` while SQLite
/// only appended to it (same header: no restart since).
fn read_wal(
    path: &Path,
    previous: Option<&CatalogCopy>,
    header: &mut Vec<u8>,
) -> Vec<Arc<Vec<u8>>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("reading the WAL: {e}"),
    };
    let head = bytes[..bytes.len().min(32)].to_vec();
    let wal = match previous {
        Some(p) if head == *header && p.wal_len() > 0 && bytes.len() >= p.wal_len() => {
            let mut segments = p.wal.clone();
            if bytes.len() > p.wal_len() {
                segments.push(Arc::new(bytes[p.wal_len()..].to_vec()));
            }
            segments
        }
        _ if bytes.is_empty() => Vec::new(),
        _ => vec![Arc::new(bytes)],
    };
    *header = head;
    wal
}

/// Bytes on disk of an image: its pages that are not all zeros (a hole
/// reads as zeros; a written page of zeros is counted as a hole too, which
/// only makes compaction see a little more dead space).
fn allocated(image: &[u8]) -> u64 {
    image
        .chunks(4096)
        .filter(|page| page.iter().any(|&b| b != 0))
        .count() as u64
        * 4096
}

struct RecordedFile {
    recorder: Arc<Recorder>,
    inode: usize,
}

impl StoreFile for RecordedFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let s = self.recorder.lock();
        let image = &s.disk.inodes[self.inode].live;
        let end = offset as usize + buf.len();
        if end > image.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.copy_from_slice(&image[offset as usize..end]);
        Ok(())
    }

    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.recorder.record(Op::Write {
            inode: self.inode,
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.recorder.lock().disk.inodes[self.inode].live.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.recorder.record(Op::SetLen {
            inode: self.inode,
            len,
        });
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.recorder.before_sync();
        self.recorder.record(Op::Sync { inode: self.inode });
        Ok(())
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self
            .recorder
            .punches
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(io::ErrorKind::Unsupported.into());
        }
        self.recorder.record(Op::Punch {
            inode: self.inode,
            offset,
            len,
        });
        Ok(())
    }
}
