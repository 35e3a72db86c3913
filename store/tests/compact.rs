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
