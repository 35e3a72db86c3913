//! Reclaiming pack space after deletions: what no set needs leaves the
//! disk, what a set needs stays readable, and the work happens in small
//! batches a reader can race.

mod common;

use common::{commit, epoch_of, temp_store};
use umbra_store::{ObjectId, PreImages};

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

#[test]
fn deleting_sets_and_compacting_gives_their_pack_space_back() {
    let (_dir, store) = temp_store();
    let vol = store.ensure_volume("data").expect("volume").id;
    let old = commit(&store, "old", &[vol]);
    // 200 blocks only the old set needs...
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
    // ...and 3 that a younger set needs.
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
    let before = store.stats().expect("stats").disk_bytes;

    store.delete_set(old.id).expect("delete");
    let freed = store.compact().expect("compact");
    let after = store.stats().expect("stats").disk_bytes;
    assert!(freed >= 200 * 64 * 1024, "freed only {freed} bytes");
    assert!(
        before - after >= 190 * 64 * 1024,
        "disk went from {before} to {after} bytes"
    );
    for (i, data) in kept.iter().enumerate() {
        let got = store
            .resolve_block(vol, ObjectId(8), i as u64, epoch_of(&young, vol))
            .expect("resolve")
            .expect("the young set's block");
        assert_eq!(&got[..], &data[..]);
    }
    assert_eq!(
        store.compact().expect("compact again"),
        0,
        "nothing left to reclaim"
    );
}
