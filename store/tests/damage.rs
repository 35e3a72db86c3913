//! Damage the store did not cause itself must never turn into wrong bytes in
//! a shadow copy: a flipped bit or a lost pack tail is an error on read,
//! bytes nobody names are cut at open, and the catalog never names a chunk
//! that no record uses.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;

use umbra_store::{Epoch, Error, ObjectId, PreImages, Store, VolumeId};

use common::{block, commit, hi_now, open, pack_path};

/// A store with one set and blocks `values` preserved for objects 1, 2, ...
/// in that order (so chunk `i` is the `i`-th record of pack 0).
fn store_with_blocks(dir: &std::path::Path, values: &[u8]) -> (Store, VolumeId, Epoch) {
    let store = open(dir);
    let vol = store.ensure_volume("data").expect("volume").id;
    let at = commit(&store, "s", &[vol]).volumes[0].epoch;
    let blocks: Vec<Vec<u8>> = values.iter().map(|&v| block(v)).collect();
    for (i, data) in blocks.iter().enumerate() {
        let pre = PreImages {
            blocks: vec![(ObjectId(i as u64 + 1), 0, &data[..])],
            ..PreImages::default()
        };
        store
            .preserve(vol, hi_now(&store, vol), &pre)
            .expect("preserve");
    }
    (store, vol, at)
}

/// Where chunk `i` (0-based) of pack 0 has its data, for test blocks.
fn data_offset(i: usize) -> u64 {
    8 + (i as u64) * (36 + common::TEST_BLOCK as u64) + 36
}

fn assert_corrupt(result: umbra_store::Result<Option<std::sync::Arc<[u8]>>>) {
    match result {
        Err(Error::CorruptPack { pack: 0, .. }) => {}
        Err(other) => panic!("expected CorruptPack, got {other:?}"),
        Ok(got) => panic!(
            "expected CorruptPack, read {} bytes",
            got.map_or(0, |b| b.len())
        ),
    }
}

#[test]
fn a_flipped_byte_in_a_chunk_is_an_error_not_wrong_bytes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (store, vol, at) = store_with_blocks(tmp.path(), &[1, 2]);
    drop(store);
    let pack = pack_path(tmp.path(), 0);
    let mut bytes = fs::read(&pack).expect("pack");
    bytes[data_offset(0) as usize + 100] ^= 0x40;
    fs::write(&pack, &bytes).expect("write");

    let store = open(tmp.path());
    assert_corrupt(store.resolve_block(vol, ObjectId(1), 0, at));
    let good = store
        .resolve_block(vol, ObjectId(2), 0, at)
        .expect("resolve");
    assert_eq!(good.as_deref(), Some(&block(2)[..]));
}

#[test]
fn a_pack_shorter_than_the_catalog_says_is_an_error_not_zeros() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (store, vol, at) = store_with_blocks(tmp.path(), &[1, 2]);
    drop(store);
    // Lose the second half of the second chunk (say, a pack write that had
    // not reached the disk when the power went).
    let pack = pack_path(tmp.path(), 0);
    let cut = data_offset(1) + common::TEST_BLOCK as u64 / 2;
    OpenOptions::new()
        .write(true)
        .open(&pack)
        .expect("pack")
        .set_len(cut)
        .expect("truncate");

    let store = open(tmp.path());
    let first = store
        .resolve_block(vol, ObjectId(1), 0, at)
        .expect("resolve");
    assert_eq!(first.as_deref(), Some(&block(1)[..]));
    assert_corrupt(store.resolve_block(vol, ObjectId(2), 0, at));

    // New chunks never take the place of the lost one.
    let fresh = block(3);
    let pre = PreImages {
        blocks: vec![(ObjectId(3), 0, &fresh[..])],
        ..PreImages::default()
    };
    store
        .preserve(vol, hi_now(&store, vol), &pre)
        .expect("preserve");
    let got = store
        .resolve_block(vol, ObjectId(3), 0, at)
        .expect("resolve");
    assert_eq!(got.as_deref(), Some(&fresh[..]));
    assert_corrupt(store.resolve_block(vol, ObjectId(2), 0, at));
}

#[test]
fn packs_after_the_newest_named_chunk_are_cut_at_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (store, vol, at) = store_with_blocks(tmp.path(), &[1]);
    drop(store);
    // A pack the catalog names nothing in: the append that opened it never
    // committed (a crash right after a pack rolled over).
    let next = pack_path(tmp.path(), 1);
    let mut f = fs::File::create(&next).expect("create");
    f.write_all(b"UMBRAPK1").expect("magic");
    f.write_all(&[0xAB; 500]).expect("garbage");
    drop(f);

    let store = open(tmp.path());
    assert_eq!(
        fs::read(&next).expect("pack 1"),
        b"UMBRAPK1",
        "pack 1 cut to its magic"
    );
    let got = store
        .resolve_block(vol, ObjectId(1), 0, at)
        .expect("resolve");
    assert_eq!(got.as_deref(), Some(&block(1)[..]));
}

#[test]
fn preserving_a_key_twice_in_one_epoch_keeps_the_first_and_no_stray_chunk() {
    let (_tmp, store) = common::temp_store();
    let vol = store.ensure_volume("data").expect("volume").id;
    let at = commit(&store, "s", &[vol]).volumes[0].epoch;
    let hi = hi_now(&store, vol);
    let (first, second) = (block(1), block(2));
    for data in [&first, &second] {
        let pre = PreImages {
            blocks: vec![(ObjectId(1), 0, &data[..])],
            dirs: vec![(ObjectId(2), common::dir(data[0] + 4))],
            ..PreImages::default()
        };
        store.preserve(vol, hi, &pre).expect("preserve");
    }
    let got = store
        .resolve_block(vol, ObjectId(1), 0, at)
        .expect("resolve");
    assert_eq!(got.as_deref(), Some(&first[..]), "the first pre-image wins");
    let entries = store.resolve_dir(vol, ObjectId(2), at).expect("resolve");
    assert_eq!(entries, Some(common::dir(5)));
    let stats = store.stats().expect("stats");
    assert_eq!((stats.block_records, stats.dir_records), (1, 1));
    assert_eq!(
        stats.chunks, 2,
        "one chunk per record, none for the ignored ones"
    );
}

#[test]
fn a_set_of_no_volumes_is_still_listed_and_found() {
    let (_tmp, store) = common::temp_store();
    let set = commit(&store, "empty", &[]);
    assert_eq!(store.sets().expect("sets"), vec![set.clone()]);
    assert_eq!(store.find_set("empty").expect("find"), set);
    store.delete_set(set.id).expect("delete");
    assert!(store.sets().expect("sets").is_empty());
}

/// A commit whose rows reached the disk before the pack bytes they name
/// (the WAL flushed, then the power went before the pack's sync) names
/// chunks past the catalog's mark: open checks those and drops a lost one
/// with its records, so its key reads the live object again and the write
/// side preserves it anew. Damage below the mark is not a power cut's
/// doing: it stays an error.
#[test]
fn a_chunk_lost_past_the_synced_mark_is_dropped_at_open_and_damage_below_it_is_not() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (store, vol, at) = store_with_blocks(tmp.path(), &[1, 2, 3]);
    drop(store);
    let third = data_offset(2) - 36;
    let db = rusqlite::Connection::open(tmp.path().join("catalog.db")).expect("catalog");
    db.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'packs_synced_end'",
        [third as i64],
    )
    .expect("move the mark back");
    drop(db);
    let pack = pack_path(tmp.path(), 0);
    let mut bytes = fs::read(&pack).expect("pack");
    bytes.truncate(third as usize + 100);
    bytes[data_offset(0) as usize + 7] ^= 0x01;
    fs::write(&pack, &bytes).expect("write");

    let store = open(tmp.path());
    assert!(
        store
            .resolve_block(vol, ObjectId(3), 0, at)
            .expect("resolve")
            .is_none(),
        "the lost pre-image's record is gone: read the live object"
    );
    let kept = store.preserved(vol, ObjectId(3), at).expect("preserved");
    assert!(
        kept.blocks.is_empty(),
        "the write side must preserve it anew"
    );
    let second = store
        .resolve_block(vol, ObjectId(2), 0, at)
        .expect("resolve");
    assert_eq!(second.as_deref(), Some(&block(2)[..]));
    assert_corrupt(store.resolve_block(vol, ObjectId(1), 0, at));
    assert_eq!(store.stats().expect("stats").chunks, 2);
}
