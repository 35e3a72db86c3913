//! Invariant 5, deletion: a deleted set frees exactly what no remaining set
//! needs. Seeded random live operations (the oracle's generator) run on two
//! volumes, with sets of one or both taken in between and a restart now
//! and then; after every round of deletions (by name, `--oldest N`,
//! `--older-than D`, and at the end `--all`):
//!
//! - every remaining set still equals the trees it was taken of;
//! - what the remaining sets need is recomputed from scratch, from the
//!   catalog read just before the deletion (opened read-only, bypassing the
//!   store) and the sets left after it. An aside row is needed iff a
//!   remaining set of its volume is older than the epoch the inode moved
//!   in; an inode no set can reach is forgotten with everything of it. A
//!   record with `hi = h` whose predecessor has `hi = p` is needed iff a
//!   remaining set of its volume closed an epoch in `(p, h]` and its object
//!   was not forgotten; a chunk iff a needed record names it; a handle iff
//!   its object still has a record or an aside row. The store must hold
//!   exactly that: nothing left over, nothing needed missing;
//! - the aside folder of every volume holds exactly the needed aside inodes
//!   and the pins of numbers a live inode presents (a truncation's alias),
//!   those emptied; every alias is of a live inode;
//! - every chunk reads back with its hash, and no pack keeps more allocated
//!   than the 4 KiB pages its live chunks touch, plus a little slack for
//!   the filesystem's own blocks.
//!
//! After `--all`: no record, chunk, aside row or handle is left, pack space
//! is back to the packs' magic, and the aside folders hold only pins.
//!
//! Knobs: UMBRA_GC_SEED (printed on every run), UMBRA_GC_OPS (default 360).
//! The other tests pin the fixes this one found.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::catalog::{self, Catalog, Location};
use common::manifest::{self, Manifest};
use common::ops::{self, GenConfig, Generator, Op, Rng, Slots};
use common::{Config, Daemon, SetJson};

const VOLUMES: [&str; 2] = ["a", "b"];
const DEFAULT_OPS: u64 = 360;
const OPS_PER_ROUND: u64 = 40;
/// A restart every this many rounds.
const RESTART_EVERY: u64 = 4;
/// Bytes a pack may have allocated beyond the 4 KiB pages its live chunks
/// touch: the filesystem's extent blocks.
const PACK_SLACK: u64 = 64 * 1024;
/// How long a pin may outlive the last descriptor of its inode: the
/// kernel's FORGET reaches the daemon asynchronously.
const PIN_WAIT: Duration = Duration::from_secs(10);

struct Taken {
    set: SetJson,
    images: BTreeMap<&'static str, Manifest>,
}

struct Run {
    // Dropped before the daemon: no descriptor stays open on its mounts.
    slots: Vec<Slots>,
    gens: Vec<Generator>,
    taken: Vec<Taken>,
    rng: Rng,
    seed: u64,
    d: Daemon,
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?}: {e}")),
    )
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn created_secs(set: &SetJson) -> i64 {
    chrono::DateTime::parse_from_rfc3339(&set.created)
        .unwrap_or_else(|e| panic!("set {set:?}: {e}"))
        .timestamp()
}

#[test]
fn deletions_free_exactly_what_no_remaining_set_needs() {
    let seed = env_u64("UMBRA_GC_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(11)
    });
    let total = env_u64("UMBRA_GC_OPS").unwrap_or(DEFAULT_OPS);
    println!("gc_accounting: UMBRA_GC_SEED={seed} UMBRA_GC_OPS={total}");
    let gen_config = GenConfig {
        set_every: 15,
        restart_every: 0,
        delete_every: 0,
        max_file: 1 << 20,
        max_total: 3 << 20,
    };
    let mut run = Run {
        slots: VOLUMES.iter().map(|_| Slots::default()).collect(),
        gens: (0..VOLUMES.len() as u64)
            .map(|i| Generator::new(seed ^ (i + 1).wrapping_mul(0x9e37_79b9), gen_config.clone()))
            .collect(),
        taken: Vec::new(),
        rng: Rng::new(seed),
        seed,
        d: Daemon::start(Config::volumes(&VOLUMES)),
    };
    let mut done = 0;
    let mut round = 0;
    while done < total {
        let n = OPS_PER_ROUND.min(total - done);
        run.live_ops(n, true);
        done += n;
        round += 1;
        if round % RESTART_EVERY == 0 {
            run.close_slots();
            run.d.restart();
        }
        run.delete_round(round);
    }

    let context = format!("seed {seed}, --all");
    let before = run.catalog();
    run.d.umbra_ok(&["delete", "--all"]);
    run.close_slots();
    run.taken.clear();
    assert!(run.d.list_sets().is_empty(), "{context}: sets left");
    let after = run.catalog();
    run.check_accounting(&before, &after, &context);
    run.assert_empty(&after, &context);

    // With no set left nothing is kept, and an inode presenting an old
    // number that leaves the live volume frees the pin.
    run.live_ops(OPS_PER_ROUND, false);
    run.close_slots();
    let context = format!("seed {seed}, live work after --all");
    let now = run.catalog();
    run.check_accounting(&now, &now, &context);
    run.assert_empty(&now, &context);
    run.d.stop();
}

impl Run {
    fn store(&self) -> PathBuf {
        self.d.layout.state_dir.join("store")
    }

    fn catalog(&self) -> Catalog {
        Catalog::read(&self.store())
    }

    fn close_slots(&mut self) {
        for s in &mut self.slots {
            s.close_all();
        }
    }

    /// `n` generated ops, on a random volume each; the generator's sets
    /// become sets of that volume alone or of both (when `sets`).
    fn live_ops(&mut self, n: u64, sets: bool) {
        for _ in 0..n {
            let v = self.rng.below(VOLUMES.len() as u64) as usize;
            let live = self.d.live(VOLUMES[v]);
            match self.gens[v].next(&live, self.slots[v].open()) {
                Op::CreateSet if sets => self.take(v),
                op if op.is_daemon_op() => {}
                // Errors are part of the workload; the sets are checked.
                op => drop(ops::apply(&op, &live, &mut self.slots[v])),
            }
        }
    }

    fn take(&mut self, v: usize) {
        let names: Vec<&'static str> = if self.rng.chance(1, 2) {
            VOLUMES.to_vec()
        } else {
            vec![VOLUMES[v]]
        };
        let set = self.d.create_set_with(&names);
        let images = names
            .iter()
            .map(|name| (*name, Manifest::capture(&self.d.live(name))))
            .collect();
        self.taken.push(Taken { set, images });
    }

    /// Deletes some sets one of three ways, then checks what is left.
    fn delete_round(&mut self, round: u64) {
        let context = format!("seed {}, round {round}", self.seed);
        let mut listed = self.d.list_sets();
        listed.sort_by_key(|s| s.id);
        let ids: Vec<u64> = self.taken.iter().map(|t| t.set.id).collect();
        assert_eq!(
            listed.iter().map(|s| s.id).collect::<Vec<_>>(),
            ids,
            "{context}: `umbra list` against the sets taken"
        );
        let before = self.catalog();
        if !listed.is_empty() {
            let (args, expect, how) = match self.rng.below(4) {
                0 | 1 => {
                    let mut picked: Vec<&SetJson> = Vec::new();
                    for _ in 0..self.rng.range(1, 2) {
                        let s = self.rng.pick(&listed);
                        if !picked.iter().any(|p| p.id == s.id) {
                            picked.push(s);
                        }
                    }
                    let args: Vec<String> = picked.iter().map(|s| s.name.clone()).collect();
                    let expect: BTreeSet<u64> = picked.iter().map(|s| s.id).collect();
                    (args, Some(expect), "by name")
                }
                2 => {
                    let n = self.rng.range(1, 2) as usize;
                    let expect = listed.iter().take(n).map(|s| s.id).collect();
                    (
                        vec!["--oldest".to_string(), n.to_string()],
                        Some(expect),
                        "--oldest",
                    )
                }
                _ => (
                    vec!["--older-than".to_string(), "2s".to_string()],
                    None,
                    "--older-than",
                ),
            };
            let mut cmd = vec!["delete"];
            cmd.extend(args.iter().map(String::as_str));
            let t0 = now_secs();
            self.d.umbra_ok(&cmd);
            let t1 = now_secs();
            let left: BTreeSet<u64> = self.d.list_sets().iter().map(|s| s.id).collect();
            let deleted: BTreeSet<u64> = listed
                .iter()
                .map(|s| s.id)
                .filter(|id| !left.contains(id))
                .collect();
            match expect {
                Some(want) => assert_eq!(deleted, want, "{context}: `umbra {cmd:?}` deleted"),
                None => {
                    for s in &listed {
                        let c = created_secs(s);
                        if deleted.contains(&s.id) {
                            assert!(c < t1 - 2, "{context}: {} is not 2 s old", s.name);
                        } else {
                            assert!(c >= t0 - 2, "{context}: {} is older than 2 s", s.name);
                        }
                    }
                }
            }
            self.taken.retain(|t| !deleted.contains(&t.set.id));
            println!(
                "gc_accounting: round {round}: deleted {} set(s) {how}, {} left",
                deleted.len(),
                self.taken.len()
            );
        }
        // Files held open across the deletion are closed before the
        // checks: an inode that left the live volume keeps its number's
        // pin while the kernel may still use it.
        self.close_slots();
        self.check_images(&context);
        let after = self.catalog();
        self.check_accounting(&before, &after, &context);
    }

    /// Every remaining set shows the trees it was taken of.
    fn check_images(&self, context: &str) {
        for t in &self.taken {
            for (volume, image) in &t.images {
                let shown = Manifest::capture(&self.d.browse(&t.set, volume));
                let diffs = manifest::diff(image, &shown);
                assert!(
                    diffs.is_empty(),
                    "{context}: set {} no longer shows volume {volume} as taken (image vs set):\n{}",
                    t.set.name,
                    manifest::explain(&diffs)
                );
            }
        }
    }

    /// The store against what the sets of `after` need of what `before`
    /// held (the catalog just before a deletion, nothing live in between).
    fn check_accounting(&self, before: &Catalog, after: &Catalog, context: &str) {
        let listed: BTreeSet<String> = self.d.list_sets().into_iter().map(|s| s.name).collect();
        let in_catalog: BTreeSet<String> = after.sets.values().cloned().collect();
        assert_eq!(
            in_catalog, listed,
            "{context}: catalog sets against `umbra list`"
        );
        for id in &after.set_writers {
            assert!(
                after.sets.contains_key(id),
                "{context}: writers of deleted set {id}"
            );
        }
        let epochs = after.epochs();

        // Aside rows: needed while a set older than the move remains.
        let want: BTreeMap<(i64, u64), u64> = before
            .aside
            .iter()
            .filter(|((v, _), since)| epochs.get(v).is_some_and(|es| es.iter().any(|e| e < since)))
            .map(|(k, s)| (*k, *s))
            .collect();
        same_keys("aside rows", &want, &after.aside, context);

        // An aside inode no set can reach is freed with everything of it,
        // also records the range rule alone would keep (written through a
        // descriptor still open after the move, which no set can see).
        let forgotten: BTreeSet<(i64, u64)> = before
            .aside
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();

        // Records: each serves (its predecessor's hi, its hi], unless its
        // object was forgotten.
        let block_keys = before
            .blocks
            .keys()
            .map(|(v, o, b, hi)| ((*v, *o, *b), *hi));
        let kept = serving(block_keys, &epochs);
        let want: BTreeMap<_, _> = before
            .blocks
            .iter()
            .filter(|((v, o, b, hi), _)| {
                kept.contains(&((*v, *o, *b), *hi)) && !forgotten.contains(&(*v, *o))
            })
            .map(|(k, h)| (*k, *h))
            .collect();
        same_keys("block records", &want, &after.blocks, context);
        let kept = serving(
            before.attrs.iter().map(|(v, o, hi)| ((*v, *o, 0), *hi)),
            &epochs,
        );
        let want: BTreeSet<_> = before
            .attrs
            .iter()
            .filter(|(v, o, hi)| {
                kept.contains(&((*v, *o, 0), *hi)) && !forgotten.contains(&(*v, *o))
            })
            .copied()
            .collect();
        same_sets("attribute records", &want, &after.attrs, context);
        let kept = serving(
            before.dirs.keys().map(|(v, o, hi)| ((*v, *o, 0), *hi)),
            &epochs,
        );
        let want: BTreeMap<_, _> = before
            .dirs
            .iter()
            .filter(|((v, o, hi), _)| {
                kept.contains(&((*v, *o, 0), *hi)) && !forgotten.contains(&(*v, *o))
            })
            .map(|(k, h)| (*k, *h))
            .collect();
        same_keys("directory records", &want, &after.dirs, context);

        // Chunks: exactly those the records left name.
        let named: BTreeSet<catalog::Hash> = after
            .blocks
            .values()
            .chain(after.dirs.values())
            .copied()
            .collect();
        let held: BTreeSet<catalog::Hash> = after.chunks.keys().copied().collect();
        same_sets("chunks", &named, &held, context);

        // Handles: needed while their object has a record or an aside row.
        let with_state = after.objects_with_state();
        let want: BTreeSet<(i64, u64)> = before
            .handles
            .iter()
            .filter(|k| with_state.contains(k))
            .copied()
            .collect();
        same_sets("handles", &want, &after.handles, context);

        self.check_aside_folders(after, context);
        self.check_packs(after, context);
    }

    /// Each volume's aside folder holds its needed aside inodes and the
    /// pins of presented numbers, nothing else; every alias is of a live
    /// inode and presents a number no live inode has.
    fn check_aside_folders(&self, after: &Catalog, context: &str) {
        for name in VOLUMES {
            let volume = after.volumes[name];
            let backing = self.d.backing(name);
            let live: BTreeSet<u64> = manifest::inode_map(&backing)
                .unwrap_or_else(|e| panic!("{context}: walking {}: {e}", backing.display()))
                .into_iter()
                .filter(|(p, _)| !p.starts_with(".umbra"))
                .map(|(_, ino)| ino)
                .collect();
            let mut presented: BTreeSet<u64> = BTreeSet::new();
            for ((v, object), number) in &after.aliases {
                if *v != volume {
                    continue;
                }
                assert!(
                    live.contains(object),
                    "{context}: volume {name}: alias of inode {object}, which is not in the live volume"
                );
                assert!(
                    !live.contains(number),
                    "{context}: volume {name}: inode {object} presents {number}, a live inode's number"
                );
                assert!(
                    presented.insert(*number),
                    "{context}: volume {name}: two live inodes present {number}"
                );
            }
            let folder = backing.join(".umbra/aside");
            let rows: BTreeSet<u64> = after
                .aside
                .keys()
                .filter(|(v, _)| *v == volume)
                .map(|(_, o)| *o)
                .collect();
            let want: BTreeSet<u64> = rows.union(&presented).copied().collect();
            // A pin whose number left the live volume stays until the
            // kernel forgets that inode, which it tells the daemon
            // asynchronously after the last descriptor closed: wait for it.
            let deadline = Instant::now() + PIN_WAIT;
            let files = loop {
                let files = aside_files(&folder, name, context);
                let waiting = files
                    .iter()
                    .any(|(n, m)| !want.contains(n) && m.is_file() && m.len() == 0);
                if !waiting || Instant::now() >= deadline {
                    break files;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let have: BTreeSet<u64> = files.keys().copied().collect();
            let stray: Vec<String> = files
                .iter()
                .filter(|(n, _)| !want.contains(n))
                .map(|(n, m)| {
                    format!(
                        "{n}: mode {:o}, {} bytes, {} links",
                        m.mode(),
                        m.len(),
                        m.nlink()
                    )
                })
                .collect();
            same_sets(
                &format!("volume {name}: aside inodes (rows and pins; stray: {stray:?})"),
                &want,
                &have,
                context,
            );
            for (number, meta) in &files {
                assert_eq!(
                    meta.ino(),
                    *number,
                    "{context}: volume {name}: aside file {number} is inode {}",
                    meta.ino()
                );
                if !rows.contains(number) {
                    // (Its xattrs may keep a block of their own.)
                    assert!(
                        meta.is_file() && meta.len() == 0,
                        "{context}: volume {name}: pin {number}, which no set needs, still holds {} bytes",
                        meta.len()
                    );
                }
            }
        }
    }

    /// Every chunk reads back with its hash; no pack keeps more allocated
    /// than the pages its live chunks touch (plus slack), and only the
    /// newest pack may hold no live chunk.
    fn check_packs(&self, after: &Catalog, context: &str) {
        let store = self.store();
        let mut by_pack: BTreeMap<u32, Vec<Location>> = BTreeMap::new();
        for (hash, loc) in &after.chunks {
            let data = catalog::read_chunk(&store, *loc)
                .unwrap_or_else(|e| panic!("{context}: reading chunk at {loc:?}: {e}"));
            assert_eq!(
                blake3::hash(&data).as_bytes(),
                hash,
                "{context}: the chunk at {loc:?} does not hash to its name"
            );
            by_pack.entry(loc.pack).or_default().push(*loc);
        }
        let packs = catalog::packs(&store);
        let newest = packs.last().map(|p| p.number);
        for loc in after.chunks.values() {
            assert!(
                packs.iter().any(|p| p.number == loc.pack),
                "{context}: a chunk lies in pack {}, which is gone",
                loc.pack
            );
        }
        for pack in &packs {
            let live = by_pack.get(&pack.number).cloned().unwrap_or_default();
            assert!(
                !live.is_empty() || Some(pack.number) == newest,
                "{context}: pack {} holds no live chunk but was kept",
                pack.path.display()
            );
            let pages = catalog::needed_pages(live.iter().copied()).len() as u64;
            assert!(
                pack.allocated <= pages * 4096 + PACK_SLACK,
                "{context}: pack {} has {} bytes allocated, its {} live chunk(s) need {} pages ({} bytes)",
                pack.path.display(),
                pack.allocated,
                live.len(),
                pages,
                pages * 4096
            );
        }
        let allocated: u64 = packs.iter().map(|p| p.allocated).sum();
        let live: u64 = after.chunks.values().map(|l| l.len).sum();
        println!(
            "gc_accounting: {context}: {} set(s), {} records, {} chunks ({live} bytes), {} handles, {} aside rows, {} aliases, {} pack(s) with {allocated} bytes allocated",
            after.sets.len(),
            after.record_count(),
            after.chunks.len(),
            after.handles.len(),
            after.aside.len(),
            after.aliases.len(),
            packs.len()
        );
    }

    /// With no set left: no record, chunk, aside row or handle; packs hold
    /// their magic and little else.
    fn assert_empty(&self, after: &Catalog, context: &str) {
        assert!(after.sets.is_empty(), "{context}: sets left");
        assert_eq!(after.record_count(), 0, "{context}: records left");
        assert_eq!(after.chunks.len(), 0, "{context}: chunks left");
        assert_eq!(after.aside.len(), 0, "{context}: aside rows left");
        assert_eq!(after.handles.len(), 0, "{context}: handles left");
        for pack in catalog::packs(&self.store()) {
            assert!(
                pack.allocated <= 4096 + PACK_SLACK,
                "{context}: pack {} keeps {} bytes allocated with nothing in it",
                pack.path.display(),
                pack.allocated
            );
        }
    }
}

/// The files of an aside folder by inode number (their names).
fn aside_files(folder: &Path, volume: &str, context: &str) -> BTreeMap<u64, fs::Metadata> {
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(folder).unwrap_or_else(|e| panic!("{folder:?}: {e}")) {
        let entry = entry.unwrap();
        let file = entry.file_name().to_string_lossy().into_owned();
        let number: u64 = file.parse().unwrap_or_else(|_| {
            panic!("{context}: volume {volume}: a stray file {file:?} in the aside folder")
        });
        // The daemon frees aside files while this lists them: one gone
        // between the listing and its stat is not in the folder.
        match fs::symlink_metadata(entry.path()) {
            Ok(meta) => {
                files.insert(number, meta);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("{context}: volume {volume}: {file}: {e}"),
        }
    }
    files
}

/// The records (key, hi) some epoch of `epochs` resolves to: with `p` the
/// hi of the key's previous record, a record serves `(p, hi]` (every epoch
/// up to hi when there is none).
fn serving<K: Ord + Copy>(
    records: impl Iterator<Item = ((i64, u64, K), u64)>,
    epochs: &BTreeMap<i64, Vec<u64>>,
) -> BTreeSet<((i64, u64, K), u64)> {
    let mut by_key: BTreeMap<(i64, u64, K), Vec<u64>> = BTreeMap::new();
    for (key, hi) in records {
        by_key.entry(key).or_default().push(hi);
    }
    let mut out = BTreeSet::new();
    for (key, mut his) in by_key {
        his.sort_unstable();
        let sets = epochs.get(&key.0).map(Vec::as_slice).unwrap_or_default();
        let mut prev: Option<u64> = None;
        for hi in his {
            if sets.iter().any(|e| *e <= hi && prev.is_none_or(|p| *e > p)) {
                out.insert((key, hi));
            }
            prev = Some(hi);
        }
    }
    out
}

#[track_caller]
fn same_sets<T: Ord + Debug>(what: &str, want: &BTreeSet<T>, have: &BTreeSet<T>, context: &str) {
    let leaked: Vec<&T> = have.difference(want).collect();
    let missing: Vec<&T> = want.difference(have).collect();
    assert!(
        leaked.is_empty() && missing.is_empty(),
        "{context}: {what}: {} held that no remaining set needs {:?}{}, {} needed but missing {:?}{}",
        leaked.len(),
        &leaked[..leaked.len().min(8)],
        if leaked.len() > 8 { " ..." } else { "" },
        missing.len(),
        &missing[..missing.len().min(8)],
        if missing.len() > 8 { " ..." } else { "" },
    );
}

#[track_caller]
fn same_keys<K: Ord + Debug + Clone, V: PartialEq + Debug>(
    what: &str,
    want: &BTreeMap<K, V>,
    have: &BTreeMap<K, V>,
    context: &str,
) {
    let w: BTreeSet<K> = want.keys().cloned().collect();
    let h: BTreeSet<K> = have.keys().cloned().collect();
    same_sets(what, &w, &h, context);
    for (k, v) in want {
        assert_eq!(Some(v), have.get(k), "{context}: {what}: {k:?} changed");
    }
}

/// The numbers in a volume's aside folder once the pins the kernel may
/// still use are gone (bounded wait, as in `check_aside_folders`).
fn settled_aside(d: &Daemon, volume: &str, keep: &BTreeSet<u64>) -> BTreeSet<u64> {
    let folder = d.backing(volume).join(".umbra/aside");
    let deadline = Instant::now() + PIN_WAIT;
    loop {
        let now: BTreeSet<u64> = aside_files(&folder, volume, "settling")
            .into_keys()
            .collect();
        if now.is_subset(keep) || Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_truncated_files_old_number_is_freed_when_its_successor_goes() {
    let d = Daemon::start(Config::default());
    let live = d.live("data");
    let store = d.layout.state_dir.join("store");
    let f = live.join("f");
    fs::write(&f, ops::fill(7, 300_000)).unwrap();
    let number = fs::metadata(&f).unwrap().ino();
    let first = d.create_set();
    // Truncating to zero moves the inode aside whole; a new inode takes
    // the name and shows the old number. Twice: the second successor
    // replaces the first, which moves aside in turn.
    fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(0)
        .unwrap();
    fs::write(&f, ops::fill(8, 300_000)).unwrap();
    let second = d.create_set();
    fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(0)
        .unwrap();
    assert_eq!(
        fs::metadata(&f).unwrap().ino(),
        number,
        "st_ino never changes"
    );
    let c = Catalog::read(&store);
    assert_eq!(
        c.aliases.len(),
        1,
        "only the live successor presents: {:?}",
        c.aliases
    );
    assert_eq!(c.aliases.values().copied().collect::<Vec<_>>(), [number]);
    assert_eq!(
        fs::read(d.browse(&first, "data").join("f")).unwrap(),
        ops::fill(7, 300_000)
    );
    assert_eq!(
        fs::read(d.browse(&second, "data").join("f")).unwrap(),
        ops::fill(8, 300_000)
    );

    // With the sets gone the old inode is emptied but kept: its number is
    // still shown. The first successor goes altogether.
    d.umbra_ok(&["delete", "--all"]);
    let pins = BTreeSet::from([number]);
    assert_eq!(settled_aside(&d, "data", &pins), pins);
    let pin = d.backing("data").join(format!(".umbra/aside/{number}"));
    assert_eq!(fs::metadata(&pin).unwrap().len(), 0, "the pin is emptied");

    // The successor leaves the live volume (replaced by a rename): nothing
    // shows the number any more, so its pin goes.
    fs::write(live.join("g"), "g").unwrap();
    fs::rename(live.join("g"), &f).unwrap();
    assert_eq!(settled_aside(&d, "data", &BTreeSet::new()), BTreeSet::new());
    let c = Catalog::read(&store);
    assert!(c.aliases.is_empty(), "aliases left: {:?}", c.aliases);
}

#[test]
fn a_start_clears_the_aside_folder_of_what_no_row_accounts_for() {
    let mut d = Daemon::start(Config::default());
    let live = d.live("data");
    fs::write(live.join("kept"), "kept").unwrap();
    let set = d.create_set();
    fs::remove_file(live.join("kept")).unwrap();
    let folder = d.backing("data").join(".umbra/aside");
    let needed: BTreeSet<u64> = aside_files(&folder, "data", "after unlink")
        .into_keys()
        .collect();
    assert_eq!(needed.len(), 1, "the unlinked file waits aside for the set");
    d.stop();
    // What a crash can leave: an inode moved aside whose row never
    // committed, and a truncation's half-built successor.
    fs::write(folder.join("4000000001"), "orphan").unwrap();
    fs::write(folder.join("new-12"), "half-built").unwrap();
    d.launch();
    let left: BTreeSet<String> = fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let want: BTreeSet<String> = needed.iter().map(u64::to_string).collect();
    assert_eq!(left, want);
    assert_eq!(
        fs::read(d.browse(&set, "data").join("kept")).unwrap(),
        b"kept"
    );
}
