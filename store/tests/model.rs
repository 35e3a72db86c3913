//! The store against a reference model, over many epochs.
//!
//! Random sequences of live mutations, set commits, set deletions and
//! restarts run against a real store and against an in-memory model of two
//! volumes. The model mutates the way the filesystem will: on the *first*
//! change of a key (a block, an inode's attributes, a directory's entries) in
//! epoch `c`, if a set of the volume exists, it preserves the old content with
//! `hi = c - 1`; then it changes the live content. Each set remembers the
//! live content at its instant.
//!
//! Checked: every remaining set resolves every key to exactly its content at
//! the set's instant (`Some(x)` is that content, `None` means the live
//! content still equals it); a delete leaves every other set resolving as
//! before and drops exactly the records that serve no remaining set, and a
//! record that would serve none (its newer sets deleted) is never stored; the
//! record and chunk counts match the model; set names get `-N` suffixes;
//! `preserved()` rebuilds the write side's memory after a restart.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use proptest::prelude::*;
use tempfile::TempDir;
use umbra_store::{
    AttrRecord, DirEntry, Epoch, ObjectId, PreImages, SetInfo, Store, StoreStats, VolumeId,
};

use common::{attr, block, dir};

const VOLUMES: usize = 2;
const OBJECTS: u64 = 3;
const BLOCKS: u64 = 3;
const VALUES: u8 = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    Block(u64, u64),
    Attr(u64),
    Dir(u64),
}

impl Key {
    fn object(self) -> ObjectId {
        match self {
            Key::Block(o, _) | Key::Attr(o) | Key::Dir(o) => ObjectId(100 + o),
        }
    }

    fn all() -> Vec<Key> {
        let mut keys = Vec::new();
        for o in 0..OBJECTS {
            for b in 0..BLOCKS {
                keys.push(Key::Block(o, b));
            }
            keys.push(Key::Attr(o));
            keys.push(Key::Dir(o));
        }
        keys
    }
}

/// What a key resolves to, in a form that compares across kinds.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Content {
    Block(Vec<u8>),
    Attr(AttrRecord),
    Dir(Vec<DirEntry>),
}

fn content(key: Key, v: u8) -> Content {
    match key {
        Key::Block(..) => Content::Block(block(v)),
        Key::Attr(_) => Content::Attr(attr(v)),
        Key::Dir(_) => Content::Dir(dir(v)),
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Change `key` of volume `vol` to value `value` in the current epoch.
    Mutate { vol: usize, key: Key, value: u8 },
    /// Commit a set of the volumes whose bit is set in `mask`.
    Commit { mask: u8 },
    /// Delete the remaining set at index `pick % len`.
    Delete { pick: usize },
    /// Drop the store and open it again.
    Restart,
}

fn key_strategy() -> impl Strategy<Value = Key> {
    prop_oneof![
        3 => (0..OBJECTS, 0..BLOCKS).prop_map(|(o, b)| Key::Block(o, b)),
        1 => (0..OBJECTS).prop_map(Key::Attr),
        1 => (0..OBJECTS).prop_map(Key::Dir),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0..VOLUMES, key_strategy(), 0..VALUES)
            .prop_map(|(vol, key, value)| Op::Mutate { vol, key, value }),
        3 => (1u8..(1 << VOLUMES)).prop_map(|mask| Op::Commit { mask }),
        2 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
        1 => Just(Op::Restart),
    ]
}

struct ModelSet {
    info: SetInfo,
    /// Per volume of the set: the epoch it closed and the live state then.
    states: BTreeMap<usize, (u64, BTreeMap<Key, u8>)>,
}

struct Harness {
    dir: TempDir,
    store: Option<Store>,
    vols: Vec<VolumeId>,
    live: Vec<BTreeMap<Key, u8>>,
    /// The current (open) epoch of each volume.
    epoch: Vec<u64>,
    /// Keys already preserved in the current epoch (the write side's memory).
    preserved: Vec<HashSet<Key>>,
    sets: Vec<ModelSet>,
    /// The records the store must hold: `(key, hi) -> preserved value`.
    records: Vec<BTreeMap<(Key, u64), u8>>,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        // A small cache, so that reads also go through eviction.
        let store = common::open_with_cache(dir.path(), 3 * common::TEST_BLOCK);
        let vols = (0..VOLUMES)
            .map(|v| store.ensure_volume(&format!("vol{v}")).expect("volume").id)
            .collect();
        let initial: BTreeMap<Key, u8> = Key::all().into_iter().map(|k| (k, 0)).collect();
        Harness {
            dir,
            store: Some(store),
            vols,
            live: vec![initial; VOLUMES],
            epoch: vec![1; VOLUMES],
            preserved: vec![HashSet::new(); VOLUMES],
            sets: Vec::new(),
            records: vec![BTreeMap::new(); VOLUMES],
        }
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("store is open")
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Mutate { vol, key, value } => self.mutate(vol, key, value),
            Op::Commit { mask } => self.commit(mask),
            Op::Delete { pick } => self.delete(pick),
            Op::Restart => self.restart(),
        }
    }

    fn mutate(&mut self, vol: usize, key: Key, value: u8) {
        let c = self.epoch[vol];
        let a_set_exists = self.sets.iter().any(|s| s.states.contains_key(&vol));
        if a_set_exists && !self.preserved[vol].contains(&key) {
            let old = self.live[vol][&key];
            let data = block(old);
            let mut pre = PreImages::default();
            match key {
                Key::Block(_, b) => pre.blocks.push((key.object(), b, &data)),
                Key::Attr(_) => pre.attrs.push((key.object(), attr(old))),
                Key::Dir(_) => pre.dirs.push((key.object(), dir(old))),
            }
            self.store()
                .preserve(self.vols[vol], Epoch(c - 1), &pre)
                .expect("preserve");
            // The newest set is older than c - 1 when newer ones were
            // deleted; then a record of the key with a hi in [newest, c - 1)
            // serves every remaining set, and the store adds none.
            let newest = self
                .sets
                .iter()
                .filter_map(|s| s.states.get(&vol).map(|(e, _)| *e))
                .max()
                .expect("a set of the volume exists");
            let covered = self.records[vol]
                .range((key, newest)..(key, c - 1))
                .next()
                .is_some();
            if !covered {
                self.records[vol].insert((key, c - 1), old);
            }
            self.preserved[vol].insert(key);
        }
        self.live[vol].insert(key, value);
    }

    fn commit(&mut self, mask: u8) {
        let vols: Vec<usize> = (0..VOLUMES).filter(|v| mask & (1 << v) != 0).collect();
        let ids: Vec<VolumeId> = vols.iter().map(|&v| self.vols[v]).collect();
        let info = common::commit(self.store(), "s", &ids);
        assert_eq!(info.name, self.expected_name("s"), "set name suffixing");
        let mut states = BTreeMap::new();
        for &v in &vols {
            assert_eq!(common::epoch_of(&info, self.vols[v]).0, self.epoch[v]);
            states.insert(v, (self.epoch[v], self.live[v].clone()));
            self.epoch[v] += 1;
            self.preserved[v].clear();
        }
        self.sets.push(ModelSet { info, states });
    }

    fn expected_name(&self, wanted: &str) -> String {
        let taken: HashSet<&str> = self.sets.iter().map(|s| s.info.name.as_str()).collect();
        if !taken.contains(wanted) {
            return wanted.to_string();
        }
        (1..)
            .map(|n| format!("{wanted}-{n}"))
            .find(|n| !taken.contains(n.as_str()))
            .expect("a free name")
    }

    fn delete(&mut self, pick: usize) {
        if self.sets.is_empty() {
            return;
        }
        let gone = self.sets.remove(pick % self.sets.len());
        let before = self.resolve_all();
        // The model's pruning: for each volume of the deleted set, a record
        // stays iff it is what some remaining set of the volume resolves to.
        let mut expected_drops = 0;
        for &v in gone.states.keys() {
            let epochs: Vec<u64> = self
                .sets
                .iter()
                .filter_map(|s| s.states.get(&v).map(|(e, _)| *e))
                .collect();
            let records = &self.records[v];
            let needed: BTreeSet<(Key, u64)> = epochs
                .iter()
                .flat_map(|&e| {
                    Key::all().into_iter().filter_map(move |k| {
                        records
                            .range((k, e)..=(k, u64::MAX))
                            .next()
                            .map(|(&kh, _)| kh)
                    })
                })
                .collect();
            let n = records.len();
            self.records[v].retain(|kh, _| needed.contains(kh));
            expected_drops += n - self.records[v].len();
        }
        let dropped = self.store().delete_set(gone.info.id).expect("delete set");
        assert_eq!(dropped as usize, expected_drops, "records dropped");
        assert_eq!(
            self.resolve_all(),
            before,
            "the remaining sets resolve as before"
        );
        self.check_stats();
    }

    fn restart(&mut self) {
        drop(self.store.take());
        let store = common::open_with_cache(self.dir.path(), 3 * common::TEST_BLOCK);
        // The catalog kept the volumes' epochs and the sets.
        for (v, id) in self.vols.iter().enumerate() {
            assert_eq!(common::current_epoch(&store, *id).0, self.epoch[v]);
        }
        let listed = store.sets().expect("sets");
        let model: Vec<&SetInfo> = self.sets.iter().map(|s| &s.info).collect();
        assert_eq!(listed.iter().collect::<Vec<_>>(), model);
        // The write side forgets what it preserved in this epoch and asks.
        for v in 0..VOLUMES {
            let hi = self.epoch[v] - 1;
            self.preserved[v].clear();
            for key in Key::all() {
                let p = store
                    .preserved(self.vols[v], key.object(), Epoch(hi))
                    .expect("preserved");
                let recorded = self.records[v].get(&(key, hi)).copied();
                let there = match key {
                    Key::Block(_, b) => p.blocks.contains(&b),
                    Key::Attr(_) => {
                        assert_eq!(p.attr, recorded.map(attr), "preserved attr of {key:?}");
                        p.attr.is_some()
                    }
                    Key::Dir(_) => p.dir,
                };
                assert_eq!(there, recorded.is_some(), "preserved {key:?} at hi {hi}");
                if there {
                    self.preserved[v].insert(key);
                }
            }
        }
        self.store = Some(store);
    }

    fn resolve(&self, vol: usize, key: Key, e: u64) -> Option<Content> {
        let store = self.store();
        let (volume, object, at) = (self.vols[vol], key.object(), Epoch(e));
        match key {
            Key::Block(_, b) => {
                let one = store
                    .resolve_block(volume, object, b, at)
                    .expect("resolve block")
                    .map(|x| Content::Block(x.to_vec()));
                // The browser resolves a whole read's blocks in one query.
                let run = store
                    .resolve_blocks(volume, object, b.saturating_sub(1), b + 1, at)
                    .expect("resolve blocks");
                assert!(run.windows(2).all(|w| w[0].0 < w[1].0), "in block order");
                let in_run = run
                    .iter()
                    .find(|(x, _)| *x == b)
                    .map(|(_, d)| Content::Block(d.to_vec()));
                assert_eq!(one, in_run, "block {b} alone and in a run");
                one
            }
            Key::Attr(_) => {
                let one = store
                    .resolve_attr(volume, object, at)
                    .expect("resolve attr");
                // The browser resolves a directory's attributes at once.
                let others: Vec<ObjectId> =
                    (0..70).map(|i| ObjectId(object.0 + 1000 + i)).collect();
                let batch = store
                    .resolve_attrs(volume, &[&others[..], &[object]].concat(), at)
                    .expect("resolve attrs");
                assert_eq!(
                    one.as_ref(),
                    batch.get(&object),
                    "attr of {object:?} alone and in a batch"
                );
                one.map(Content::Attr)
            }
            Key::Dir(_) => store
                .resolve_dir(volume, object, at)
                .expect("resolve dir")
                .map(Content::Dir),
        }
    }

    /// What every remaining set resolves every key to, as the store says.
    fn resolve_all(&self) -> Vec<Option<Content>> {
        let mut out = Vec::new();
        for s in &self.sets {
            for (&v, (e, _)) in &s.states {
                for key in Key::all() {
                    out.push(self.resolve(v, key, *e));
                }
            }
        }
        out
    }

    /// Every remaining set shows every key exactly as it was at its instant.
    fn check_sets(&self) {
        for s in &self.sets {
            for (&v, (e, state)) in &s.states {
                for key in Key::all() {
                    let then = content(key, state[&key]);
                    match self.resolve(v, key, *e) {
                        Some(got) => assert_eq!(
                            got, then,
                            "set {} vol {v} epoch {e} {key:?}: a record, but the wrong one",
                            s.info.name
                        ),
                        None => assert_eq!(
                            content(key, self.live[v][&key]),
                            then,
                            "set {} vol {v} epoch {e} {key:?}: None, but live has changed",
                            s.info.name
                        ),
                    }
                }
            }
        }
    }

    fn check_stats(&self) {
        let stats: StoreStats = self.store().stats().expect("stats");
        let count = |pred: fn(&Key) -> bool| -> u64 {
            self.records
                .iter()
                .map(|r| r.keys().filter(|(k, _)| pred(k)).count() as u64)
                .sum()
        };
        assert_eq!(stats.block_records, count(|k| matches!(k, Key::Block(..))));
        assert_eq!(stats.attr_records, count(|k| matches!(k, Key::Attr(_))));
        assert_eq!(stats.dir_records, count(|k| matches!(k, Key::Dir(_))));
        // One chunk per distinct block content and per distinct entry list
        // that a record names.
        let mut blocks = BTreeSet::new();
        let mut dirs: Vec<Vec<DirEntry>> = Vec::new();
        for ((k, _), &v) in self.records.iter().flatten() {
            match k {
                Key::Block(..) => {
                    blocks.insert(v);
                }
                Key::Dir(_) if !dirs.contains(&dir(v)) => dirs.push(dir(v)),
                _ => {}
            }
        }
        assert_eq!(stats.chunks, (blocks.len() + dirs.len()) as u64, "chunks");
    }
}

proptest! {
    // 128 cases keep the run to seconds; PROPTEST_CASES=5000 soaks.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(128),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_set_resolves_to_its_instant(ops in prop::collection::vec(op_strategy(), 1..80)) {
        let mut h = Harness::new();
        for op in &ops {
            h.apply(op);
        }
        h.check_sets();
        h.check_stats();
        h.restart();
        h.check_sets();
    }
}

/// The model test's own sanity: a plain story it must get right.
#[test]
fn a_block_changed_in_three_epochs_resolves_per_set() {
    let mut h = Harness::new();
    h.apply(&Op::Mutate {
        vol: 0,
        key: Key::Block(0, 0),
        value: 1,
    });
    h.apply(&Op::Commit { mask: 1 }); // set at epoch 1 sees value 1
    h.apply(&Op::Mutate {
        vol: 0,
        key: Key::Block(0, 0),
        value: 2,
    });
    h.apply(&Op::Mutate {
        vol: 0,
        key: Key::Block(0, 0),
        value: 3,
    });
    h.apply(&Op::Commit { mask: 1 }); // set at epoch 2 sees value 3
    h.apply(&Op::Mutate {
        vol: 0,
        key: Key::Block(0, 0),
        value: 4,
    });
    assert_eq!(
        h.records[0].len(),
        2,
        "one record per epoch, the first change only"
    );
    h.check_sets();
    h.check_stats();
}
