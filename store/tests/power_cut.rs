//! Power-loss ordering (DESIGN.md, invariant 4): a live block may be
//! overwritten only after the sync that makes its pre-image and catalog
//! row durable, and concurrent writers share those syncs.
//!
//! A workload of concurrent preserves, set commits, deletions and a
//! compaction runs on a store whose files are a recording backend
//! (`common/recorder.rs`). Then, at every point of the recorded log, the
//! store a cut there would leave is rebuilt, opened, and must
//! (a) open and recover by itself;
//! (b) resolve every record its catalog names to exactly the bytes that
//!     were preserved for it (hash-checked reads: no damaged or missing
//!     chunk), also after a new preserve appended to its packs;
//! (c) hold every preserve that had returned before the cut (the caller
//!     overwrote the live block right after) and every set whose commit had
//!     returned, and none whose deletion had: each set it holds resolves
//!     every key as the workload's model says at that point.
//!
//! Points whose cut leaves the same files and catalog share one rebuilt
//! store; each point's own requirements are checked against it.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use umbra_store::{
    AttrRecord, DirEntry, Durability, Epoch, FileKind, NewSet, ObjectId, PreImages, SetId, Store,
    StoreOptions, Timestamp, VolumeId,
};

use common::recorder::{Op, Recorder, Replay};
use common::{attr, block};

const THREADS: u64 = 3;
const ROUNDS: u64 = 5;
const STEPS: u64 = 5;
const BLOCKS: u64 = 3;
/// A fresh object the checker preserves into every rebuilt store.
const FRESH: u64 = 999_999;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    Block(u64, u64),
    Attr(u64),
    Dir(u64),
}

/// What the workload did, in the order it allocated ids; the log marks
/// when each started and returned.
#[derive(Clone, Debug)]
enum Step {
    Preserve { hi: u64, items: Vec<(Key, u8)> },
    Commit { name: String, epoch: u64 },
    Delete { name: String },
}

fn started(id: usize) -> u64 {
    (id as u64) << 1
}

fn returned(id: usize) -> u64 {
    ((id as u64) << 1) | 1
}

/// Directory content number `v`: distinct for every `v`.
fn listing(v: u8) -> Vec<DirEntry> {
    (0..=u64::from(v % 3))
        .map(|i| DirEntry {
            name: format!("f{v}-{i}").into_bytes(),
            object: ObjectId(u64::from(v) * 10 + i),
            kind: FileKind::Regular,
        })
        .collect()
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn options() -> StoreOptions {
    StoreOptions {
        cache_bytes: 0,
        durability: Durability::Power,
        punch_holes: true,
    }
}

fn new_set(name: &str, vol: VolumeId) -> NewSet {
    NewSet {
        name: name.to_string(),
        label: None,
        origin: umbra_store::SetOrigin::Manual,
        created: Timestamp::default(),
        volumes: vec![vol],
    }
}

/// The live volume as the write side sees it: each object's keys and their
/// current content number, behind the object's lock, and the epoch gate.
struct Workload {
    /// None while the store restarts.
    store: RwLock<Option<Arc<Store>>>,
    dir: PathBuf,
    rec: Arc<Recorder>,
    vol: VolumeId,
    /// The open epoch.
    gate: RwLock<u64>,
    /// Keys preserved in the open epoch.
    preserved: Mutex<HashSet<Key>>,
    objects: BTreeMap<u64, Mutex<BTreeMap<Key, u8>>>,
    steps: Mutex<Vec<Step>>,
    sets: Mutex<BTreeMap<String, SetId>>,
}

fn own_files(t: u64) -> Vec<u64> {
    (1..=3).map(|i| t * 10 + i).collect()
}

const SHARED_FILES: [u64; 2] = [900, 901];
const SHARED_DIR: u64 = 1000;

impl Workload {
    fn new(dir: &Path, rec: Arc<Recorder>) -> Workload {
        let store = Store::open_with_io(dir, options(), rec.clone()).expect("open");
        let vol = store.ensure_volume("data").expect("volume").id;
        let mut objects = BTreeMap::new();
        let files = (0..THREADS).flat_map(own_files).chain(SHARED_FILES);
        for o in files {
            let mut keys: BTreeMap<Key, u8> = (0..BLOCKS)
                // Block 2 starts as zeros everywhere: one chunk for all.
                .map(|b| (Key::Block(o, b), if b == 2 { 0 } else { (o * 7 + b) as u8 }))
                .collect();
            keys.insert(Key::Attr(o), o as u8);
            objects.insert(o, Mutex::new(keys));
        }
        for o in (0..THREADS).map(|t| 2000 + t).chain([SHARED_DIR]) {
            let keys = BTreeMap::from([(Key::Dir(o), o as u8), (Key::Attr(o), o as u8)]);
            objects.insert(o, Mutex::new(keys));
        }
        Workload {
            store: RwLock::new(Some(Arc::new(store))),
            dir: dir.to_path_buf(),
            rec,
            vol,
            gate: RwLock::new(1),
            preserved: Mutex::new(HashSet::new()),
            objects,
            steps: Mutex::new(Vec::new()),
            sets: Mutex::new(BTreeMap::new()),
        }
    }

    fn store(&self) -> Arc<Store> {
        self.store
            .read()
            .expect("store")
            .clone()
            .expect("the store is open")
    }

    fn step_id(&self, step: Step) -> usize {
        let mut steps = self.steps.lock().expect("steps");
        steps.push(step);
        steps.len() - 1
    }

    /// One live change, as the filesystem makes it: under the gate and the
    /// object's lock, the first change of each key in the epoch preserves
    /// its content first, and the change is applied once that returned.
    fn change(&self, t: u64, rng: &mut Rng) {
        let gate = self.gate.read().expect("gate");
        let object = match rng.below(10) {
            0 | 1 => SHARED_FILES[rng.below(2) as usize],
            2 => SHARED_DIR,
            3 => 2000 + t,
            _ => own_files(t)[rng.below(3) as usize],
        };
        let mut values = self.objects[&object].lock().expect("object");
        let keys: Vec<Key> = if values.contains_key(&Key::Dir(object)) {
            vec![Key::Dir(object), Key::Attr(object)]
        } else {
            let first = rng.below(BLOCKS);
            let mut keys = vec![Key::Block(object, first), Key::Attr(object)];
            if rng.below(2) == 0 {
                keys.push(Key::Block(object, (first + 1) % BLOCKS));
            }
            keys
        };
        if *gate > 1 {
            let hi = *gate - 1;
            let items: Vec<(Key, u8)> = {
                let preserved = self.preserved.lock().expect("preserved");
                keys.iter()
                    .filter(|k| !preserved.contains(k))
                    .map(|k| (*k, values[k]))
                    .collect()
            };
            if !items.is_empty() {
                let id = self.step_id(Step::Preserve {
                    hi,
                    items: items.clone(),
                });
                let datas: Vec<(u64, u64, Vec<u8>)> = items
                    .iter()
                    .filter_map(|(k, v)| match k {
                        Key::Block(o, b) => Some((*o, *b, block(*v))),
                        _ => None,
                    })
                    .collect();
                let pre = PreImages {
                    blocks: datas
                        .iter()
                        .map(|(o, b, d)| (ObjectId(*o), *b, &d[..]))
                        .collect(),
                    attrs: items
                        .iter()
                        .filter_map(|(k, v)| match k {
                            Key::Attr(o) => Some((ObjectId(*o), attr(*v))),
                            _ => None,
                        })
                        .collect(),
                    dirs: items
                        .iter()
                        .filter_map(|(k, v)| match k {
                            Key::Dir(o) => Some((ObjectId(*o), listing(*v))),
                            _ => None,
                        })
                        .collect(),
                    ..PreImages::default()
                };
                self.rec.mark(started(id));
                self.store()
                    .preserve(self.vol, Epoch(hi), &pre)
                    .expect("preserve");
                self.rec.mark(returned(id));
                let mut preserved = self.preserved.lock().expect("preserved");
                preserved.extend(items.iter().map(|(k, _)| *k));
            }
        }
        // The live change: new contents, some of them shared with other
        // keys (dedup) and some zeros.
        for k in keys {
            values.insert(k, rng.below(40) as u8 * 5);
        }
    }

    fn commit(&self, name: &str) {
        let mut gate = self.gate.write().expect("gate");
        let id = self.step_id(Step::Commit {
            name: name.to_string(),
            epoch: *gate,
        });
        self.rec.mark(started(id));
        // As the daemon does: the set is committed pending during the hold
        // (no sync), changes go on, and it ends pending, durably, once its
        // writers thawed. Only then has its creation returned.
        let set = self
            .store()
            .commit_pending_set(&new_set(name, self.vol))
            .expect("commit");
        assert_eq!(set.volumes[0].epoch, Epoch(*gate));
        self.sets
            .lock()
            .expect("sets")
            .insert(name.to_string(), set.id);
        *gate += 1;
        self.preserved.lock().expect("preserved").clear();
        drop(gate);
        self.store()
            .record_set_writers(set.id, &[])
            .expect("record writers");
        self.rec.mark(returned(id));
    }

    fn delete(&self, name: &str) {
        let set = self.sets.lock().expect("sets")[name];
        let id = self.step_id(Step::Delete {
            name: name.to_string(),
        });
        self.rec.mark(started(id));
        self.store().delete_set(set).expect("delete");
        self.rec.mark(returned(id));
    }

    /// Rounds of concurrent changes; between rounds a set is committed;
    /// during a round the main thread deletes the set two rounds back. The
    /// last two rounds run on a disk that cannot punch holes, and in the
    /// last one the main thread compacts after its deletion: chunks are
    /// copied to a new pack and the old one removed while the changes go
    /// on. Then every set is deleted (so open cuts the pack back to its
    /// magic, below what was synced before), the store restarts, and
    /// rounds of changes follow, a new set between them.
    fn run(&self) {
        for round in 0..=ROUNDS {
            if round + 1 == ROUNDS {
                self.rec.set_punch_supported(false);
            }
            self.round(round, || {
                if round >= 2 {
                    self.delete(&format!("s{}", round - 2));
                }
                if round == ROUNDS {
                    self.store().compact().expect("compact");
                }
            });
            if round < ROUNDS {
                self.commit(&format!("s{round}"));
            }
        }
        self.delete(&format!("s{}", ROUNDS - 1));
        self.rec.set_punch_supported(true);
        let mut store = self.store.write().expect("store");
        // The old store lets go of the catalog before the new one opens it.
        *store = None;
        *store = Some(Arc::new(
            Store::open_with_io(&self.dir, options(), self.rec.clone()).expect("reopen"),
        ));
        drop(store);
        // Changes come first, before any sync after the restart has
        // recorded how far the packs are durable.
        self.round(ROUNDS + 1, || {});
        self.commit("after-restart");
        self.round(ROUNDS + 2, || {});
    }

    /// `THREADS` writers make `STEPS` changes each while `main` runs.
    fn round(&self, round: u64, main: impl FnOnce()) {
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                scope.spawn(move || {
                    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (round * 131 + t + 1));
                    for _ in 0..STEPS {
                        self.change(t, &mut rng);
                    }
                });
            }
            main();
        });
    }
}

/// The kinds of cut. The WAL may reach the disk before the store syncs it
/// (SQLite syncs it at checkpoints, the kernel writes pages back when it
/// likes), and pack writes may too: so beyond the plain power cut, the
/// newest catalog with only durable packs, durable catalog with every pack
/// write, and a crash of the process alone (everything the kernel had).
#[derive(Clone, Copy, Debug)]
enum Cut {
    Power,
    WalAhead,
    PacksAhead,
    Process,
}

impl Cut {
    fn live_files(self) -> bool {
        matches!(self, Cut::PacksAhead | Cut::Process)
    }

    fn newest_catalog(self) -> bool {
        matches!(self, Cut::WalAhead | Cut::Process)
    }

    /// Whether `op` changes what this cut leaves.
    fn changed_by(self, op: &Op) -> bool {
        let files = if self.live_files() {
            op.changes_live_files()
        } else {
            matches!(op, Op::Sync { .. } | Op::SyncDir { .. })
        };
        let catalog = if self.newest_catalog() {
            matches!(op, Op::CatalogCommit { .. })
        } else {
            matches!(op, Op::CatalogSync { .. })
        };
        files || catalog
    }
}

/// Every key's preserve attempts, by `hi`: (hi, content, step id).
type Attempts = BTreeMap<Key, Vec<(u64, u8, usize)>>;

/// What a rebuilt store holds: its sets (name → epoch) and what each of
/// them resolves every key to (a content number, or None: the live object).
#[derive(Debug)]
struct Rebuilt {
    sets: BTreeMap<String, u64>,
    resolved: BTreeMap<(String, Key), Option<u8>>,
}

/// Maps resolved contents back to their numbers.
struct Contents {
    blocks: HashMap<Vec<u8>, u8>,
    attrs: Vec<AttrRecord>,
    dirs: Vec<Vec<DirEntry>>,
}

impl Contents {
    fn new() -> Contents {
        Contents {
            blocks: (0..=255u8).map(|v| (block(v), v)).collect(),
            attrs: (0..=255u8).map(attr).collect(),
            dirs: (0..=255u8).map(listing).collect(),
        }
    }

    fn block(&self, bytes: &[u8]) -> Result<u8, String> {
        self.blocks
            .get(bytes)
            .copied()
            .ok_or_else(|| format!("a block of {} bytes nobody preserved", bytes.len()))
    }

    fn attr(&self, a: &AttrRecord) -> Result<u8, String> {
        let v = self.attrs.iter().position(|x| x == a);
        v.map(|v| v as u8)
            .ok_or_else(|| format!("attributes nobody preserved: {a:?}"))
    }

    fn dir(&self, d: &[DirEntry]) -> Result<u8, String> {
        let v = self.dirs.iter().position(|x| x == d);
        v.map(|v| v as u8)
            .ok_or_else(|| format!("a listing nobody preserved: {d:?}"))
    }
}

fn resolve(
    store: &Store,
    vol: VolumeId,
    key: Key,
    at: u64,
    c: &Contents,
) -> Result<Option<u8>, String> {
    let at = Epoch(at);
    let err = |e: umbra_store::Error| format!("{key:?} at {at}: {e}");
    Ok(match key {
        Key::Block(o, b) => match store.resolve_block(vol, ObjectId(o), b, at).map_err(err)? {
            Some(bytes) => Some(c.block(&bytes)?),
            None => None,
        },
        Key::Attr(o) => match store.resolve_attr(vol, ObjectId(o), at).map_err(err)? {
            Some(a) => Some(c.attr(&a)?),
            None => None,
        },
        Key::Dir(o) => match store.resolve_dir(vol, ObjectId(o), at).map_err(err)? {
            Some(d) => Some(c.dir(&d)?),
            None => None,
        },
    })
}

/// (b): every record the catalog names resolves, at its own `hi`, to the
/// content preserved for it.
fn check_records(
    store: &Store,
    dir: &Path,
    vol: VolumeId,
    attempts: &Attempts,
    c: &Contents,
) -> Result<(), String> {
    let db = rusqlite::Connection::open_with_flags(
        dir.join("catalog.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .map_err(|e| e.to_string())?;
    let mut records: Vec<(Key, u64)> = Vec::new();
    for (sql, kind) in [
        ("SELECT object, block, hi FROM block_records", 0),
        ("SELECT object, 0, hi FROM attr_records", 1),
        ("SELECT object, 0, hi FROM dir_records", 2),
    ] {
        let mut stmt = db.prepare(sql).map_err(|e| e.to_string())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            })
            .map_err(|e| e.to_string())?;
        for row in rows {
            let (o, b, hi) = row.map_err(|e| e.to_string())?;
            let key = match kind {
                0 => Key::Block(o, b),
                1 => Key::Attr(o),
                _ => Key::Dir(o),
            };
            records.push((key, hi));
        }
    }
    for (key, hi) in records {
        let want = if key == Key::Block(FRESH, 0) {
            Some(FRESH as u8)
        } else {
            attempts
                .get(&key)
                .and_then(|a| a.iter().find(|(h, _, _)| *h == hi))
                .map(|(_, v, _)| *v)
        };
        let Some(want) = want else {
            return Err(format!(
                "the catalog has a record {key:?} hi {hi} nobody preserved"
            ));
        };
        let got = resolve(store, vol, key, hi, c)?;
        if got != Some(want) {
            return Err(format!(
                "record {key:?} hi {hi} resolves to {got:?}, preserved {want}"
            ));
        }
    }
    Ok(())
}

/// Builds the store a cut leaves and reads everything the checks need.
fn rebuild(
    rec: &Recorder,
    replay: &Replay,
    cut: Cut,
    attempts: &Attempts,
    c: &Contents,
) -> Result<Rebuilt, String> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let files: BTreeMap<PathBuf, Vec<u8>> = if cut.live_files() {
        replay.disk.live_files()
    } else {
        replay.disk.durable_files()
    };
    let catalog = if cut.newest_catalog() {
        replay.newest_catalog
    } else {
        replay.durable_catalog
    };
    if let Some(copy) = catalog {
        rec.catalog_copy(copy).write_to(dir);
    }
    // (a)
    let store = Store::open_with_io(dir, options(), Recorder::with_files(dir, &files))
        .map_err(|e| format!("open: {e}"))?;
    let sets: BTreeMap<String, u64> = store
        .sets()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|s| (s.name, s.volumes.first().map_or(0, |v| v.epoch.0)))
        .collect();
    let vol = store.ensure_volume("data").map_err(|e| e.to_string())?.id;
    let mut resolved = BTreeMap::new();
    for (name, &e) in &sets {
        for &key in attempts.keys() {
            resolved.insert((name.clone(), key), resolve(&store, vol, key, e, c)?);
        }
    }
    // Appends after recovery must not land on a chunk the catalog names.
    let fresh = block(FRESH as u8);
    store
        .preserve(
            vol,
            Epoch(10_000),
            &PreImages {
                blocks: vec![(ObjectId(FRESH), 0, &fresh[..])],
                ..PreImages::default()
            },
        )
        .map_err(|e| format!("preserve after recovery: {e}"))?;
    // (b)
    check_records(&store, dir, vol, attempts, c)?;
    Ok(Rebuilt { sets, resolved })
}

/// (c): what the rebuilt store must hold after the first `k` ops, given
/// which steps had started and returned by then.
fn check_point(
    rebuilt: &Rebuilt,
    steps: &[Step],
    attempts: &Attempts,
    is_started: &[bool],
    is_returned: &[bool],
) -> Result<(), String> {
    let deleting: HashSet<&str> = steps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Step::Delete { name } if is_started[i] => Some(name.as_str()),
            _ => None,
        })
        .collect();
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Commit { name, epoch } => {
                let have = rebuilt.sets.get(name);
                if is_returned[i] && !deleting.contains(name.as_str()) && have != Some(epoch) {
                    return Err(format!(
                        "set {name} (epoch {epoch}) had been committed; found {have:?}"
                    ));
                }
                if !is_started[i] && have.is_some() {
                    return Err(format!("set {name} exists before its commit began"));
                }
            }
            Step::Delete { name } if is_returned[i] && rebuilt.sets.contains_key(name) => {
                return Err(format!("set {name} had been deleted and is back"));
            }
            _ => {}
        }
    }
    for (name, &e) in &rebuilt.sets {
        for (key, list) in attempts {
            let got = rebuilt.resolved[&(name.clone(), *key)];
            // The record the set resolves to: the smallest hi >= e among
            // the preserves begun so far.
            let nearest = list
                .iter()
                .filter(|(hi, _, id)| *hi >= e && is_started[*id])
                .min_by_key(|(hi, _, _)| *hi);
            let ok = match nearest {
                None => got.is_none(),
                Some((_, v, id)) if is_returned[*id] => got == Some(*v),
                // In flight: the live block is still the pre-image.
                Some((_, v, _)) => got.is_none() || got == Some(*v),
            };
            if !ok {
                return Err(format!(
                    "set {name} (epoch {e}) resolves {key:?} to {got:?}; the model says {nearest:?}"
                ));
            }
        }
    }
    Ok(())
}

fn describe(log: &[Op], k: usize) -> String {
    let from = k.saturating_sub(8);
    let mut out = format!("ops {from}..{k} before the cut:\n");
    for (i, op) in log.iter().enumerate().take(k).skip(from) {
        let op = match op {
            Op::Write {
                inode,
                offset,
                data,
            } => format!(
                "Write {{ inode: {inode}, offset: {offset}, len: {} }}",
                data.len()
            ),
            other => format!("{other:?}"),
        };
        out.push_str(&format!("  {i}: {op}\n"));
    }
    out
}

#[test]
fn a_power_cut_at_any_point_keeps_every_preserve_that_returned() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rec = Recorder::new(tmp.path());
    // A sync takes a while, as a disk flush does, so that other writers
    // commit and append while one runs.
    rec.set_sync_hook(|_: &Recorder| std::thread::sleep(std::time::Duration::from_millis(1)));
    let work = Workload::new(tmp.path(), rec.clone());
    work.run();
    drop(work.store);
    let log = rec.log();
    let steps = work.steps.into_inner().expect("steps");

    let mut attempts: Attempts = BTreeMap::new();
    for (id, step) in steps.iter().enumerate() {
        if let Step::Preserve { hi, items } = step {
            for (key, v) in items {
                attempts.entry(*key).or_default().push((*hi, *v, id));
            }
        }
    }
    let count = |f: fn(&Op) -> bool| log.iter().filter(|op| f(op)).count();
    let preserves = steps
        .iter()
        .filter(|s| matches!(s, Step::Preserve { .. }))
        .count();
    println!(
        "{} ops: {preserves} preserves, {} pack writes, {} file syncs, {} dir syncs, {} catalog commits, {} WAL syncs, {} punches, {} removals",
        log.len(),
        count(|op| matches!(op, Op::Write { .. })),
        count(|op| matches!(op, Op::Sync { .. })),
        count(|op| matches!(op, Op::SyncDir { .. })),
        count(|op| matches!(op, Op::CatalogCommit { .. })),
        count(|op| matches!(op, Op::CatalogSync { .. })),
        count(|op| matches!(op, Op::Punch { .. })),
        count(|op| matches!(op, Op::Remove { .. })),
    );
    // The workload must reach what it is meant to test.
    assert!(preserves >= 20, "only {preserves} preserves");
    assert!(
        count(|op| matches!(op, Op::Punch { .. })) > 0,
        "no deletion punched"
    );

    let c = Contents::new();
    for cut in [Cut::Power, Cut::WalAhead, Cut::PacksAhead, Cut::Process] {
        let mut replay = Replay::default();
        let mut is_started = vec![false; steps.len()];
        let mut is_returned = vec![false; steps.len()];
        let mut rebuilt: Option<Rebuilt> = None;
        let mut opens = 0;
        for k in 0..=log.len() {
            if k > 0 {
                let op = &log[k - 1];
                replay.apply(op);
                if let Op::Mark(tag) = op {
                    let id = (tag >> 1) as usize;
                    if tag & 1 == 0 {
                        is_started[id] = true;
                    } else {
                        is_returned[id] = true;
                    }
                }
                if cut.changed_by(op) {
                    rebuilt = None;
                }
            }
            if rebuilt.is_none() {
                opens += 1;
                match rebuild(&rec, &replay, cut, &attempts, &c) {
                    Ok(r) => rebuilt = Some(r),
                    Err(e) => panic!("{cut:?} cut after op {k}: {e}\n{}", describe(&log, k)),
                }
            }
            let r = rebuilt.as_ref().expect("rebuilt above");
            if let Err(e) = check_point(r, &steps, &attempts, &is_started, &is_returned) {
                panic!("{cut:?} cut after op {k}: {e}\n{}", describe(&log, k));
            }
        }
        println!(
            "{cut:?}: {} points, {opens} distinct stores opened",
            log.len() + 1
        );
    }
}

/// Group commit, counted by the recorder: writers preserving at the same
/// time share their syncs instead of paying one each. Every sync lasts
/// until the others have had time to queue behind it (the log has been
/// still for a moment), as on a disk much slower than the CPU.
#[test]
fn concurrent_preserves_share_their_syncs() {
    const WRITERS: u64 = 16;
    const EACH: u64 = 4;
    let tmp = tempfile::tempdir().expect("tempdir");
    let rec = Recorder::new(tmp.path());
    let store = Store::open_with_io(tmp.path(), options(), rec.clone()).expect("open");
    let vol = store.ensure_volume("data").expect("volume").id;
    let hi = store
        .commit_set(&new_set("s", vol))
        .expect("commit")
        .volumes[0]
        .epoch;
    rec.set_sync_hook(|rec| {
        let mut seen = rec.count(|_| true);
        for _ in 0..50 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let now = rec.count(|_| true);
            if now == seen {
                return;
            }
            seen = now;
        }
    });
    let before = rec.log().len();
    std::thread::scope(|scope| {
        for w in 0..WRITERS {
            let store = &store;
            scope.spawn(move || {
                for i in 0..EACH {
                    let data = block((w * EACH + i + 1) as u8);
                    let pre = PreImages {
                        blocks: vec![(ObjectId(w), i, &data[..])],
                        ..PreImages::default()
                    };
                    store.preserve(vol, hi, &pre).expect("preserve");
                }
            });
        }
    });
    let log = rec.log();
    let after = &log[before..];
    let writes = after
        .iter()
        .filter(|op| matches!(op, Op::Write { .. }))
        .count();
    let pack_syncs = after
        .iter()
        .filter(|op| matches!(op, Op::Sync { .. }))
        .count();
    let wal_syncs = after
        .iter()
        .filter(|op| matches!(op, Op::CatalogSync { .. }))
        .count();
    let preserves = (WRITERS * EACH) as usize;
    println!(
        "{preserves} preserves, {writes} chunks appended: {pack_syncs} pack syncs, {wal_syncs} WAL syncs"
    );
    assert_eq!(writes, preserves, "every preserve appends its chunk");
    assert!(
        pack_syncs * 4 <= preserves && wal_syncs * 4 <= preserves,
        "{preserves} concurrent preserves took {pack_syncs} pack syncs and {wal_syncs} WAL syncs"
    );
    for w in 0..WRITERS {
        for i in 0..EACH {
            let got = store
                .resolve_block(vol, ObjectId(w), i, hi)
                .expect("resolve");
            assert_eq!(got.as_deref(), Some(&block((w * EACH + i + 1) as u8)[..]));
        }
    }
}

/// An unlink after a set stores its object's aside row alone, committed
/// but not synced (`PreImages::aside`): the object's attributes and handle
/// were preserved, and synced, by an earlier preserve of the same epoch,
/// and the live mount moves the inode aside as soon as the row returns. At
/// a cut anywhere, every object whose row had returned (so its inode may
/// be in the hidden folder) has, once `restore_aside` ran over it as the
/// live mount runs it over that folder, its row with the epoch it was
/// moved in: the sets before that epoch still reach it.
#[test]
fn an_aside_row_that_was_not_synced_is_rebuilt_after_any_cut() {
    const PER_SET: u64 = 3;
    let tmp = tempfile::tempdir().expect("tempdir");
    let rec = Recorder::new(tmp.path());
    let store = Store::open_with_io(tmp.path(), options(), rec.clone()).expect("open");
    let vol = store.ensure_volume("data").expect("volume").id;
    // The epoch each object's set was taken at: the row says "since the next".
    let mut moved_after: Vec<u64> = Vec::new();
    for name in ["a", "b"] {
        let hi = store
            .commit_set(&new_set(name, vol))
            .expect("commit")
            .volumes[0]
            .epoch;
        for _ in 0..PER_SET {
            let o = moved_after.len() as u64;
            moved_after.push(hi.0);
            let first = PreImages {
                attrs: vec![(ObjectId(o), attr(o as u8))],
                handles: vec![(ObjectId(o), vec![o as u8; 8])],
                ..PreImages::default()
            };
            store.preserve(vol, hi, &first).expect("attributes");
            let syncs = rec.count(|op| matches!(op, Op::CatalogSync { .. } | Op::Sync { .. }));
            let row = PreImages {
                aside: vec![ObjectId(o)],
                ..PreImages::default()
            };
            store.preserve(vol, hi, &row).expect("aside row");
            assert_eq!(
                rec.count(|op| matches!(op, Op::CatalogSync { .. } | Op::Sync { .. })),
                syncs,
                "an aside row alone waited for a sync"
            );
            // From here on the live mount may move the inode aside.
            rec.mark(returned(o as usize));
        }
    }
    drop(store);
    let log = rec.log();
    for cut in [Cut::Power, Cut::WalAhead, Cut::PacksAhead, Cut::Process] {
        let mut replay = Replay::default();
        let mut moved: Vec<u64> = Vec::new();
        for k in 0..=log.len() {
            if k > 0 {
                let op = &log[k - 1];
                replay.apply(op);
                if let Op::Mark(tag) = op {
                    moved.push(tag >> 1);
                }
            }
            let at = |e: String| format!("{cut:?} cut after op {k}: {e}\n{}", describe(&log, k));
            let dir = tempfile::tempdir().expect("tempdir");
            let files = if cut.live_files() {
                replay.disk.live_files()
            } else {
                replay.disk.durable_files()
            };
            let catalog = if cut.newest_catalog() {
                replay.newest_catalog
            } else {
                replay.durable_catalog
            };
            if let Some(copy) = catalog {
                rec.catalog_copy(copy).write_to(dir.path());
            }
            let store = Store::open_with_io(
                dir.path(),
                options(),
                Recorder::with_files(dir.path(), &files),
            )
            .unwrap_or_else(|e| panic!("{}", at(format!("open: {e}"))));
            let vol = store.ensure_volume("data").expect("volume").id;
            let found: Vec<ObjectId> = moved.iter().map(|o| ObjectId(*o)).collect();
            store
                .restore_aside(vol, &found)
                .unwrap_or_else(|e| panic!("{}", at(format!("restore_aside: {e}"))));
            let db = rusqlite::Connection::open(dir.path().join("catalog.db")).expect("catalog");
            let unreachable = store.unreachable_aside(vol).expect("unreachable");
            for o in &moved {
                let since: Option<i64> = db
                    .query_row(
                        "SELECT since_epoch FROM aside WHERE object = ?1",
                        [*o as i64],
                        |r| r.get(0),
                    )
                    .ok();
                let want = moved_after[*o as usize] as i64 + 1;
                if since != Some(want) {
                    panic!(
                        "{}",
                        at(format!(
                            "object {o} moved aside: row since {since:?}, want {want}"
                        ))
                    );
                }
                if unreachable.contains(&ObjectId(*o)) {
                    panic!(
                        "{}",
                        at(format!(
                            "object {o} moved aside is unreachable with its sets"
                        ))
                    );
                }
            }
        }
    }
}
