//! Chunks are stored once by their blake3 hash, and the chunk cache is only
//! ever a shortcut: reads after eviction return the same bytes.

mod common;

use std::fs;

use umbra_store::{BLOCK_SIZE, ObjectId, PreImages};

use common::{block, commit, dir, hi_now, open_with_cache, pack_path, temp_store};

/// A pack's size: the magic, then per chunk a 36-byte header and the data.
fn pack_len(chunks: &[usize]) -> u64 {
    8 + chunks.iter().map(|&len| 36 + len as u64).sum::<u64>()
}

#[test]
fn the_same_block_for_two_objects_or_twice_costs_one_chunk() {
    let (tmp, store) = temp_store();
    let vol = store.ensure_volume("data").expect("volume").id;
    commit(&store, "s", &[vol]);
    let data = block(9);
    // Twice in one transaction, for two objects.
    let pre = PreImages {
        blocks: vec![(ObjectId(1), 0, &data[..]), (ObjectId(2), 5, &data[..])],
        ..PreImages::default()
    };
    store
        .preserve(vol, hi_now(&store, vol), &pre)
        .expect("preserve");
    // Again in a later epoch, for a third object.
    commit(&store, "s", &[vol]);
    let pre = PreImages {
        blocks: vec![(ObjectId(3), 1, &data[..])],
        ..PreImages::default()
    };
    store
        .preserve(vol, hi_now(&store, vol), &pre)
        .expect("preserve");

    let stats = store.stats().expect("stats");
    assert_eq!(stats.block_records, 3);
    assert_eq!(stats.chunks, 1);
    assert_eq!(stats.chunk_bytes, data.len() as u64);
    let on_disk = fs::metadata(pack_path(tmp.path(), 0)).expect("pack").len();
    assert_eq!(on_disk, pack_len(&[data.len()]), "appended once");
}

#[test]
fn zero_blocks_cost_one_chunk() {
    let (_tmp, store) = temp_store();
    let vol = store.ensure_volume("data").expect("volume").id;
    let set = commit(&store, "s", &[vol]);
    let zeros = vec![0u8; BLOCK_SIZE as usize];
    let pre = PreImages {
        blocks: (0..16)
            .map(|b| (ObjectId(1 + b % 4), b, &zeros[..]))
            .collect(),
        ..PreImages::default()
    };
    store
        .preserve(vol, hi_now(&store, vol), &pre)
        .expect("preserve");
    let stats = store.stats().expect("stats");
    assert_eq!((stats.block_records, stats.chunks), (16, 1));
    assert_eq!(stats.chunk_bytes, BLOCK_SIZE);
    let at = set.volumes[0].epoch;
    for b in 0..16 {
        let got = store
            .resolve_block(vol, ObjectId(1 + b % 4), b, at)
            .expect("resolve")
            .expect("a record");
        assert_eq!(&got[..], &zeros[..]);
    }
}

#[test]
fn equal_directory_listings_share_a_chunk() {
    let (_tmp, store) = temp_store();
    let vol = store.ensure_volume("data").expect("volume").id;
    commit(&store, "s", &[vol]);
    let pre = PreImages {
        dirs: vec![(ObjectId(1), dir(3)), (ObjectId(2), dir(3))],
        ..PreImages::default()
    };
    store
        .preserve(vol, hi_now(&store, vol), &pre)
        .expect("preserve");
    let stats = store.stats().expect("stats");
    assert_eq!((stats.dir_records, stats.chunks), (2, 1));
}

#[test]
fn reads_after_eviction_return_the_right_bytes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Room for two test blocks: reading ten in turn evicts all the time.
    let store = open_with_cache(tmp.path(), 2 * common::TEST_BLOCK + 100);
    let vol = store.ensure_volume("data").expect("volume").id;
    let set = commit(&store, "s", &[vol]);
    let blocks: Vec<Vec<u8>> = (1..=10).map(block).collect();
    let pre = PreImages {
        blocks: blocks
            .iter()
            .enumerate()
            .map(|(i, data)| (ObjectId(i as u64), 0, &data[..]))
            .collect(),
        dirs: (1..=10)
            .map(|v| (ObjectId(100 + v as u64), dir(v)))
            .collect(),
        ..PreImages::default()
    };
    store
        .preserve(vol, hi_now(&store, vol), &pre)
        .expect("preserve");
    let at = set.volumes[0].epoch;
    for round in 0..3 {
        // Forwards, backwards, and a stride, so that every read misses once.
        let order: Vec<usize> = match round {
            0 => (0..10).collect(),
            1 => (0..10).rev().collect(),
            _ => (0..10).map(|i| (i * 3) % 10).collect(),
        };
        for i in order {
            let got = store
                .resolve_block(vol, ObjectId(i as u64), 0, at)
                .expect("resolve")
                .expect("a record");
            assert_eq!(&got[..], &blocks[i][..], "block {i} in round {round}");
            let v = i as u8 + 1;
            let entries = store
                .resolve_dir(vol, ObjectId(100 + u64::from(v)), at)
                .expect("resolve");
            assert_eq!(entries, Some(dir(v)), "dir {v} in round {round}");
        }
    }
}

#[test]
fn a_cache_of_zero_bytes_still_reads() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open_with_cache(tmp.path(), 0);
    let vol = store.ensure_volume("data").expect("volume").id;
    let set = commit(&store, "s", &[vol]);
    let data = block(4);
    let pre = PreImages {
        blocks: vec![(ObjectId(1), 0, &data[..])],
        ..PreImages::default()
    };
    store
        .preserve(vol, hi_now(&store, vol), &pre)
        .expect("preserve");
    for _ in 0..2 {
        let got = store.resolve_block(vol, ObjectId(1), 0, set.volumes[0].epoch);
        assert_eq!(got.expect("resolve").as_deref(), Some(&data[..]));
    }
}
