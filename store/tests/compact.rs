//! Reclaiming pack space after deletions: what no set needs leaves the
//! disk, what a set needs stays readable, and the work happens in small
//! batches a reader can race.

mod common;

use common::{commit, epoch_of, temp_store};
use umbra_store::{ObjectId, PreImages, Store, StoreOptions};

/// A block of `len` bytes that no other seed repeats.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A store holding an old set whose 200 blocks only it needs and a young
/// set that needs 3 blocks of its own.
struct TwoSets {
    store: Store,
    vol: umbra_store::VolumeId,
    old: umbra_store::SetInfo,
    young: umbra_store::SetInfo,
    kept: Vec<Vec<u8>>,
}

fn two_sets(store: Store) -> TwoSets {
    let vol = store.ensure_volume("data").expect("volume").id;
    let old = commit(&store, "old", &[vol]);
    let blocks: Vec<Vec<u8>> = (0..200).map(|i| noise(i, 64 * 1024)).collect();
    let pre = PreImages {
        blocks: blocks
            .iter()
            .enumerate()
            .map(|(i, b)| (ObjectId(7), i as u64, b.as_slice()))
            .collect(),
        ..Default::default()
    };
    store
        .preserve(vol, epoch_of(&old, vol), &pre)
        .expect("preserve");
    let young = commit(&store, "young", &[vol]);
    let kept: Vec<Vec<u8>> = (1000..1003).map(|i| noise(i, 64 * 1024)).collect();
    let pre = PreImages {
        blocks: kept
            .iter()
            .enumerate()
            .map(|(i, b)| (ObjectId(8), i as u64, b.as_slice()))
            .collect(),
        ..Default::default()
    };
    store
        .preserve(vol, epoch_of(&young, vol), &pre)
        .expect("preserve");
    TwoSets {
        store,
        vol,
        old,
        young,
        kept,
    }
}

impl TwoSets {
    fn assert_young_still_reads(&self) {
        for (i, data) in self.kept.iter().enumerate() {
            let got = self
                .store
                .resolve_block(
                    self.vol,
                    ObjectId(8),
                    i as u64,
                    epoch_of(&self.young, self.vol),
                )
                .expect("resolve")
                .expect("the young set's block");
            assert_eq!(&got[..], &data[..]);
        }
    }
}

#[test]
fn deleting_a_set_punches_its_chunks_out_at_once() {
    let (_dir, store) = temp_store();
    let t = two_sets(store);
    let before = t.store.stats().expect("stats").disk_bytes;
    t.store.delete_set(t.old.id).expect("delete");
    let after = t.store.stats().expect("stats").disk_bytes;
    assert!(
        before - after >= 180 * 64 * 1024,
        "disk went from {before} to {after} bytes without compacting (the catalog's WAL grows a little)"
    );
    t.assert_young_still_reads();
    assert!(
        t.store.compact().expect("compact") < 64 * 1024,
        "compaction finds little left to do"
    );
    t.assert_young_still_reads();
}

#[test]
fn without_hole_punching_compaction_copies_and_gives_the_space_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(
        dir.path(),
        StoreOptions {
            punch_holes: false,
            ..StoreOptions::default()
        },
    )
    .expect("open");
    let t = two_sets(store);
    let before = t.store.stats().expect("stats").disk_bytes;
    t.store.delete_set(t.old.id).expect("delete");
    let freed = t.store.compact().expect("compact");
    let after = t.store.stats().expect("stats").disk_bytes;
    assert!(freed >= 200 * 64 * 1024, "freed only {freed} bytes");
    assert!(
        before - after >= 190 * 64 * 1024,
        "disk went from {before} to {after} bytes"
    );
    t.assert_young_still_reads();
    assert_eq!(
        t.store.compact().expect("compact again"),
        0,
        "nothing left to reclaim"
    );
}

#[test]
fn forgetting_a_freed_aside_object_punches_its_chunks_out_at_once() {
    let (_dir, store) = temp_store();
    let vol = store.ensure_volume("data").expect("volume").id;
    let moved = ObjectId(9);
    let first = commit(&store, "first", &[vol]);
    // Epoch 2: the object loses its last name and moves aside.
    let pre = PreImages {
        attrs: vec![(moved, common::attr(1))],
        aside: vec![moved],
        ..Default::default()
    };
    store
        .preserve(vol, epoch_of(&first, vol), &pre)
        .expect("preserve");
    let second = commit(&store, "second", &[vol]);
    // Epoch 3: a descriptor still open writes to it. The records serve
    // `second` as far as their epochs go, but no set can reach the object.
    let blocks: Vec<Vec<u8>> = (0..100).map(|i| noise(i, 64 * 1024)).collect();
    let pre = PreImages {
        blocks: blocks
            .iter()
            .enumerate()
            .map(|(i, b)| (moved, i as u64, b.as_slice()))
            .collect(),
        ..Default::default()
    };
    store
        .preserve(vol, epoch_of(&second, vol), &pre)
        .expect("preserve");
    store.delete_set(first.id).expect("delete");
    assert_eq!(store.unreachable_aside(vol).expect("aside"), vec![moved]);
    let before = store.stats().expect("stats");
    assert_eq!(before.block_records, 100);
    store.forget_objects(vol, &[moved]).expect("forget");
    let after = store.stats().expect("stats");
    assert_eq!((after.block_records, after.chunks), (0, 0));
    assert!(
        before.disk_bytes - after.disk_bytes >= 90 * 64 * 1024,
        "disk went from {} to {} bytes without compacting",
        before.disk_bytes,
        after.disk_bytes
    );
}

#[test]
fn a_page_two_chunks_shared_is_freed_once_both_are_dropped() {
    use std::os::unix::fs::MetadataExt;
    let (dir, store) = temp_store();
    let vol = store.ensure_volume("data").expect("volume").id;
    let (x, z) = (ObjectId(1), ObjectId(2));
    // Three chunks back to back, none page-aligned: A and B share a page,
    // B and C share a page. A serves only the first set, B only the
    // second, C the third.
    let a = noise(1, 3 * 4096 + 100);
    let b = noise(2, 3 * 4096 + 100);
    let c = noise(3, 100);
    let mut sets = Vec::new();
    for (object, data) in [(x, &a), (x, &b), (z, &c)] {
        let set = commit(&store, "s", &[vol]);
        let pre = PreImages {
            blocks: vec![(object, 0, data.as_slice())],
            ..Default::default()
        };
        store
            .preserve(vol, epoch_of(&set, vol), &pre)
            .expect("preserve");
        sets.push(set);
    }
    let allocated = || {
        std::fs::metadata(common::pack_path(dir.path(), 0))
            .expect("pack")
            .blocks()
            * 512
    };
    store.delete_set(sets[0].id).expect("delete");
    store.delete_set(sets[1].id).expect("delete");
    // Left: the page of the magic and the page C lies in (it starts in the
    // page B ended in). The page A and B shared went with B.
    assert!(
        allocated() <= 2 * 4096,
        "{} bytes still allocated",
        allocated()
    );
    let got = store
        .resolve_block(vol, z, 0, epoch_of(&sets[2], vol))
        .expect("resolve")
        .expect("C");
    assert_eq!(&got[..], &c[..]);
}
