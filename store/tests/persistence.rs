//! What survives closing and reopening the store: sets, epochs, records and
//! chunks; how open() treats a torn pack tail; set names and lookups; a
//! catalog from a newer umbra.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use umbra_store::{
    AttrRecord, DirEntry, Epoch, Error, NewSet, ObjectId, PreImages, SetInfo, Store, Timestamp,
    VolumeId,
};

use common::{attr, block, commit, dir, hi_now, open, pack_path};

/// Everything a set at each of `epochs` resolves to, for objects 1..=3.
type Seen = Vec<(Option<Vec<u8>>, Option<AttrRecord>, Option<Vec<DirEntry>>)>;

fn seen(store: &Store, vol: VolumeId, epochs: &[Epoch]) -> Seen {
    let mut out = Vec::new();
    for &at in epochs {
        for o in 1..=3 {
            let object = ObjectId(o);
            out.push((
                store
                    .resolve_block(vol, object, 0, at)
                    .expect("resolve block")
                    .map(|b| b.to_vec()),
                store.resolve_attr(vol, object, at).expect("resolve attr"),
                store.resolve_dir(vol, object, at).expect("resolve dir"),
            ));
        }
    }
    out
}

/// Three sets; between them objects 1..=3 change blocks, attributes and
/// entries. Returns the volume and the sets.
fn populate(store: &Store) -> (VolumeId, Vec<SetInfo>) {
    let vol = store.ensure_volume("data").expect("volume").id;
    let mut sets = Vec::new();
    for round in 1..=3u8 {
        sets.push(commit(store, "2026-11-25T084250Z", &[vol]));
        let blocks: Vec<Vec<u8>> = (1..=3).map(|o| block(round * 10 + o)).collect();
        let pre = PreImages {
            blocks: (0..3)
                .filter(|o| (o + round) % 3 != 0) // not every object every time
                .map(|o| (ObjectId(u64::from(o) + 1), 0, &blocks[usize::from(o)][..]))
                .collect(),
            attrs: vec![(ObjectId(u64::from(round)), attr(round))],
            dirs: vec![(ObjectId(u64::from(4 - round)), dir(round + 4))],
            ..PreImages::default()
        };
        store
            .preserve(vol, hi_now(store, vol), &pre)
            .expect("preserve");
    }
    (vol, sets)
}

#[test]
fn everything_resolves_the_same_after_a_reopen() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    let (vol, sets) = populate(&store);
    let epochs: Vec<Epoch> = sets.iter().map(|s| s.volumes[0].epoch).collect();
    let before = seen(&store, vol, &epochs);
    let stats_before = store.stats().expect("stats");
    assert!(before.iter().any(|s| s.0.is_some() && s.1.is_some()));
    drop(store);

    let store = open(tmp.path());
    assert_eq!(store.sets().expect("sets"), sets);
    let volumes = store.volumes().expect("volumes");
    assert_eq!(volumes.len(), 1);
    assert_eq!((volumes[0].id, volumes[0].epoch), (vol, Epoch(4)));
    assert_eq!(seen(&store, vol, &epochs), before);
    let stats = store.stats().expect("stats");
    assert_eq!(
        (
            stats.chunks,
            stats.chunk_bytes,
            stats.block_records,
            stats.attr_records,
            stats.dir_records
        ),
        (
            stats_before.chunks,
            stats_before.chunk_bytes,
            stats_before.block_records,
            stats_before.attr_records,
            stats_before.dir_records
        )
    );
    // ensure_volume of a known volume keeps its id and epoch.
    let again = store.ensure_volume("data").expect("volume");
    assert_eq!((again.id, again.epoch), (vol, Epoch(4)));
}

#[test]
fn set_names_get_suffixes_and_sets_are_found_by_name_and_id() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    let (vol, sets) = populate(&store);
    let names: Vec<&str> = sets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "2026-11-25T084250Z",
            "2026-11-25T084250Z-1",
            "2026-11-25T084250Z-2"
        ]
    );
    drop(store);
    let store = open(tmp.path());
    // Suffixing continues after a reopen, and fills the first free name.
    let fourth = commit(&store, "2026-11-25T084250Z", &[vol]);
    assert_eq!(fourth.name, "2026-11-25T084250Z-3");
    store.delete_set(sets[1].id).expect("delete");
    let fifth = commit(&store, "2026-11-25T084250Z", &[vol]);
    assert_eq!(fifth.name, "2026-11-25T084250Z-1");
    assert!(fifth.id.0 > fourth.id.0, "set ids are never reused");

    let by_name = store.find_set("2026-11-25T084250Z-3").expect("by name");
    assert_eq!(by_name, fourth);
    let by_id = store.find_set(&fourth.id.to_string()).expect("by id");
    assert_eq!(by_id, fourth);
    for missing in ["2026-11-25T084250Z-9", "nope", "", "999"] {
        match store.find_set(missing) {
            Err(Error::UnknownSet(key)) => assert_eq!(key, missing),
            other => panic!("find_set({missing:?}): expected UnknownSet, got {other:?}"),
        }
    }
}

#[test]
fn a_set_keeps_its_label_and_creation_time() {
    let (_tmp, store) = common::temp_store();
    let a = store.ensure_volume("a").expect("volume").id;
    let b = store.ensure_volume("b").expect("volume").id;
    let created = Timestamp {
        secs: 1_764_060_170,
        nanos: 123_456_789,
    };
    let set = store
        .commit_set(&NewSet {
            name: "x".into(),
            label: Some("before upgrade".into()),
            origin: umbra_store::SetOrigin::Manual,
            created,
            volumes: vec![b, a],
        })
        .expect("commit");
    let found = store.find_set("x").expect("find");
    assert_eq!(found.label.as_deref(), Some("before upgrade"));
    assert_eq!(found.created, created);
    // Listed volumes come back ordered by name.
    let names: Vec<&str> = found.volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(set.volumes.len(), 2);
}

#[test]
fn committing_a_set_of_an_unknown_volume_fails_and_leaves_nothing() {
    let (_tmp, store) = common::temp_store();
    let vol = store.ensure_volume("data").expect("volume").id;
    let err = store
        .commit_set(&NewSet {
            name: "x".into(),
            label: None,
            origin: umbra_store::SetOrigin::Manual,
            created: Timestamp::default(),
            volumes: vec![vol, VolumeId(vol.0 + 10)],
        })
        .expect_err("unknown volume");
    assert!(matches!(err, Error::UnknownVolume(_)), "{err:?}");
    assert!(store.sets().expect("sets").is_empty());
    assert_eq!(
        common::current_epoch(&store, vol),
        Epoch(1),
        "epoch not bumped"
    );
    assert_eq!(commit(&store, "x", &[vol]).name, "x", "name not taken");
}

fn append_garbage(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open pack");
    f.write_all(bytes).expect("append");
}

#[test]
fn a_torn_pack_tail_is_cut_at_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    let (vol, sets) = populate(&store);
    let epochs: Vec<Epoch> = sets.iter().map(|s| s.volumes[0].epoch).collect();
    let before = seen(&store, vol, &epochs);
    drop(store);

    // An append the catalog never committed: a chunk header announcing 4 KiB
    // and half of it.
    let pack = pack_path(tmp.path(), 0);
    let good_len = fs::metadata(&pack).expect("pack").len();
    let mut torn = 4096u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&[0xEE; 32 + 2048]);
    append_garbage(&pack, &torn);

    let store = open(tmp.path());
    assert_eq!(
        fs::metadata(&pack).expect("pack").len(),
        good_len,
        "tail cut"
    );
    assert_eq!(seen(&store, vol, &epochs), before);

    // New chunks go where the torn tail was, and everything still resolves.
    commit(&store, "after", &[vol]);
    let fresh = block(200);
    let pre = PreImages {
        blocks: vec![(ObjectId(9), 0, &fresh[..])],
        ..PreImages::default()
    };
    store
        .preserve(vol, hi_now(&store, vol), &pre)
        .expect("preserve");
    assert_eq!(
        fs::metadata(&pack).expect("pack").len(),
        good_len + 36 + fresh.len() as u64
    );
    let at = store.find_set("after").expect("set").volumes[0].epoch;
    let got = store
        .resolve_block(vol, ObjectId(9), 0, at)
        .expect("resolve");
    assert_eq!(got.as_deref(), Some(&fresh[..]));
    assert_eq!(seen(&store, vol, &epochs), before);
    drop(store);

    let store = open(tmp.path());
    let got = store
        .resolve_block(vol, ObjectId(9), 0, at)
        .expect("resolve");
    assert_eq!(got.as_deref(), Some(&fresh[..]));
    assert_eq!(seen(&store, vol, &epochs), before);
}

#[test]
fn a_torn_tail_in_an_empty_store_is_cut_to_the_magic() {
    let tmp = tempfile::tempdir().expect("tempdir");
    drop(open(tmp.path()));
    let pack = pack_path(tmp.path(), 0);
    assert_eq!(fs::read(&pack).expect("pack"), b"UMBRAPK1");
    append_garbage(&pack, &[1, 2, 3]);
    drop(open(tmp.path()));
    assert_eq!(fs::read(&pack).expect("pack"), b"UMBRAPK1");
}

#[test]
fn a_catalog_from_a_newer_umbra_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    drop(open(tmp.path()));
    let db = rusqlite::Connection::open(tmp.path().join("catalog.db")).expect("catalog");
    let v: i64 = db
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .expect("schema_version");
    assert_eq!(v, 6);
    db.execute(
        "UPDATE meta SET value = 99 WHERE key = 'schema_version'",
        [],
    )
    .expect("update");
    drop(db);
    match Store::open(tmp.path(), Default::default()) {
        Err(Error::SchemaTooNew { found, supported }) => {
            assert_eq!((found, supported), (99, 6));
        }
        Err(other) => panic!("expected SchemaTooNew, got {other:?}"),
        Ok(_) => panic!("expected SchemaTooNew, the store opened"),
    }
}

#[test]
fn a_pack_with_bad_magic_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    drop(open(tmp.path()));
    fs::write(pack_path(tmp.path(), 0), b"NOTAPACK").expect("write");
    match Store::open(tmp.path(), Default::default()) {
        Err(Error::CorruptPack {
            pack: 0, offset: 0, ..
        }) => {}
        Err(other) => panic!("expected CorruptPack, got {other:?}"),
        Ok(_) => panic!("expected CorruptPack, the store opened"),
    }
}

#[test]
fn a_set_still_pending_at_open_was_interrupted_and_is_deleted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (whole, recorded, interrupted) = {
        let store = open(tmp.path());
        let vol = store.ensure_volume("data").expect("volume").id;
        let new = |name: &str| NewSet {
            name: name.into(),
            label: None,
            origin: umbra_store::SetOrigin::Manual,
            created: Timestamp {
                secs: 1_764_060_170,
                nanos: 0,
            },
            volumes: vec![vol],
        };
        let whole = store.commit_set(&new("whole")).expect("commit");
        let recorded = store.commit_pending_set(&new("recorded")).expect("commit");
        store
            .record_set_writers(recorded.id, &[])
            .expect("recorded whole");
        let interrupted = store.commit_pending_set(&new("cut")).expect("commit");
        assert_eq!(
            store.sets().expect("sets").len(),
            3,
            "pending sets are listed"
        );
        (whole, recorded, interrupted)
    };
    let store = open(tmp.path());
    let ids: Vec<_> = store.sets().expect("sets").iter().map(|s| s.id).collect();
    assert_eq!(ids, [whole.id, recorded.id], "{} is gone", interrupted.name);
    assert!(matches!(
        store.record_set_writers(interrupted.id, &[]),
        Err(Error::UnknownSet(_))
    ));
}
