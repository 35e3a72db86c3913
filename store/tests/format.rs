//! The on-disk contract of FORMAT.md, checked from the outside: the files a
//! store makes, the catalog schema v1 table by table, and the rows and pack
//! bytes one preservation writes. A change here is a format change: bump
//! the schema version and add a migration.

mod common;

use std::fs;

use rusqlite::Connection;
use umbra_store::{
    ChunkHash, Epoch, NewSet, ObjectId, Place, PreImages, SetOrigin, Swap, Timestamp,
};

use common::{attr, block, commit, dir, hi_now, open, pack_path};

/// `(column, declared type, not null, position in the primary key)`.
type Columns = Vec<(String, String, bool, i64)>;

fn columns(db: &Connection, table: &str) -> Columns {
    let mut stmt = db
        .prepare(&format!("PRAGMA table_info({table})"))
        .expect("table_info");
    stmt.query_map([], |r| Ok((r.get(1)?, r.get(2)?, r.get(3)?, r.get(5)?)))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows")
}

fn cols(spec: &[(&str, &str, bool, i64)]) -> Columns {
    spec.iter()
        .map(|&(n, t, nn, pk)| (n.to_string(), t.to_string(), nn, pk))
        .collect()
}

#[test]
fn a_new_store_is_a_catalog_a_pack_directory_and_a_reserve() {
    let tmp = tempfile::tempdir().expect("tempdir");
    drop(open(tmp.path()));
    let mut names: Vec<String> = fs::read_dir(tmp.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("catalog.db-")) // WAL and shared memory
        .collect();
    names.sort();
    assert_eq!(names, ["catalog.db", "packs", "reserve"]);
    let reserve = fs::read(tmp.path().join("reserve")).expect("reserve");
    assert!(!reserve.is_empty() && reserve.iter().all(|&b| b == 0));
    assert_eq!(
        fs::read(pack_path(tmp.path(), 0)).expect("pack"),
        b"UMBRAPK1"
    );
}

#[test]
fn the_catalog_schema_is_version_6() {
    let tmp = tempfile::tempdir().expect("tempdir");
    drop(open(tmp.path()));
    let db = Connection::open(tmp.path().join("catalog.db")).expect("catalog");
    let mode: String = db
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");
    let meta: Vec<(String, i64)> = db
        .prepare("SELECT key, value FROM meta ORDER BY key")
        .expect("meta")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows");
    // A new store's packs are durable up to the end of pack 0's magic.
    assert_eq!(
        meta,
        [
            ("packs_synced_end".to_string(), 8),
            ("packs_synced_pack".to_string(), 0),
            ("schema_version".to_string(), 6)
        ]
    );

    let objects: Vec<(String, String)> = db
        .prepare(
            "SELECT type, name FROM sqlite_master
             WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name",
        )
        .expect("sqlite_master")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows");
    let expected: Vec<(String, String)> = [
        ("index", "chunks_by_pack"),
        ("index", "set_volumes_by_epoch"),
        ("table", "aliases"),
        ("table", "aside"),
        ("table", "attr_records"),
        ("table", "block_records"),
        ("table", "chunks"),
        ("table", "dir_records"),
        ("table", "handles"),
        ("table", "meta"),
        ("table", "places"),
        ("table", "set_clusters"),
        ("table", "set_volumes"),
        ("table", "set_writers"),
        ("table", "sets"),
        ("table", "swaps"),
        ("table", "volumes"),
    ]
    .iter()
    .map(|&(t, n)| (t.to_string(), n.to_string()))
    .collect();
    assert_eq!(objects, expected);

    let int = "INTEGER";
    assert_eq!(
        columns(&db, "meta"),
        cols(&[("key", "TEXT", true, 1), ("value", "ANY", false, 0)])
    );
    assert_eq!(
        columns(&db, "volumes"),
        cols(&[
            ("id", int, false, 1),
            ("name", "TEXT", true, 0),
            ("epoch", int, true, 0)
        ])
    );
    assert_eq!(
        columns(&db, "sets"),
        cols(&[
            ("id", int, false, 1),
            ("name", "TEXT", true, 0),
            ("created_secs", int, true, 0),
            ("created_nanos", int, true, 0),
            ("label", "TEXT", false, 0),
            ("pending", int, true, 0),
            ("origin", "TEXT", true, 0),
        ])
    );
    assert_eq!(
        columns(&db, "set_volumes"),
        cols(&[
            ("set_id", int, true, 1),
            ("volume_id", int, true, 2),
            ("epoch", int, true, 0)
        ])
    );
    assert_eq!(
        columns(&db, "set_writers"),
        cols(&[
            ("set_id", int, true, 1),
            ("writer", "TEXT", true, 2),
            ("required", int, true, 0),
            ("status", "TEXT", true, 0),
            ("error", "TEXT", false, 0),
            ("components", "TEXT", true, 0)
        ])
    );
    assert_eq!(
        columns(&db, "chunks"),
        cols(&[
            ("hash", "BLOB", true, 1),
            ("pack", int, true, 0),
            ("offset", int, true, 0),
            ("len", int, true, 0),
        ])
    );
    assert_eq!(
        columns(&db, "block_records"),
        cols(&[
            ("volume_id", int, true, 1),
            ("object", int, true, 2),
            ("block", int, true, 3),
            ("hi", int, true, 4),
            ("hash", "BLOB", true, 0),
        ])
    );
    for (table, payload) in [("attr_records", "attrs"), ("dir_records", "entries")] {
        assert_eq!(
            columns(&db, table),
            cols(&[
                ("volume_id", int, true, 1),
                ("object", int, true, 2),
                ("hi", int, true, 3),
                (payload, "BLOB", true, 0),
            ]),
            "{table}"
        );
    }
    assert_eq!(
        columns(&db, "handles"),
        cols(&[
            ("volume_id", int, true, 1),
            ("object", int, true, 2),
            ("handle", "BLOB", true, 0)
        ])
    );
    assert_eq!(
        columns(&db, "places"),
        cols(&[
            ("volume_id", int, true, 1),
            ("object", int, true, 2),
            ("parent", "BLOB", true, 0),
            ("name", "BLOB", true, 0)
        ])
    );
    assert_eq!(
        columns(&db, "aside"),
        cols(&[
            ("volume_id", int, true, 1),
            ("object", int, true, 2),
            ("since_epoch", int, true, 0)
        ])
    );
    assert_eq!(
        columns(&db, "aliases"),
        cols(&[
            ("volume_id", int, true, 1),
            ("object", int, true, 2),
            ("presented", int, true, 0)
        ])
    );
}

#[test]
fn one_preservation_writes_the_documented_rows_and_bytes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    let vol = store.ensure_volume("data").expect("volume").id;
    let set = commit(&store, "2026-11-25T084250Z", &[vol]);
    let hi = hi_now(&store, vol);
    assert_eq!(hi, Epoch(1));
    let data = block(5);
    let pre = PreImages {
        swaps: vec![(
            ObjectId(9),
            Swap {
                handle: b"h9".to_vec(),
                at: Place {
                    parent: b"src-dir".to_vec(),
                    name: b"src".to_vec(),
                },
            },
        )],
        blocks: vec![(ObjectId(42), 3, &data[..])],
        attrs: vec![(ObjectId(42), attr(1))],
        dirs: vec![(ObjectId(2), dir(1))],
        handles: vec![(ObjectId(42), b"handle".to_vec())],
        places: vec![
            (
                ObjectId(42),
                Place {
                    parent: b"dir".to_vec(),
                    name: b"f".to_vec(),
                },
            ),
            // No record of 7: never asked about, so not kept.
            (
                ObjectId(7),
                Place {
                    parent: Vec::new(),
                    name: b"g".to_vec(),
                },
            ),
        ],
        aside: vec![ObjectId(42)],
    };
    store.preserve(vol, hi, &pre).expect("preserve");
    assert_eq!(
        store.handle(vol, ObjectId(42)).expect("handle"),
        Some(b"handle".to_vec())
    );
    assert_eq!(
        store.place(vol, ObjectId(42)).expect("place"),
        Some(Place {
            parent: b"dir".to_vec(),
            name: b"f".to_vec()
        })
    );
    assert_eq!(store.place(vol, ObjectId(7)).expect("place"), None);
    drop(store);

    let db = Connection::open(tmp.path().join("catalog.db")).expect("catalog");
    let volume: (i64, String, i64) = db
        .query_row("SELECT id, name, epoch FROM volumes", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("volume");
    assert_eq!(volume, (vol.0, "data".to_string(), 2));
    let set_row: (i64, String, i64, i64, Option<String>) = db
        .query_row("SELECT * FROM sets", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .expect("set");
    assert_eq!(
        set_row,
        (
            set.id.0,
            "2026-11-25T084250Z".to_string(),
            1_764_060_170,
            0,
            None
        )
    );
    let sv: (i64, i64, i64) = db
        .query_row("SELECT * FROM set_volumes", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("set_volumes");
    assert_eq!(sv, (set.id.0, vol.0, 1));

    let hash = ChunkHash::of(&data);
    let br: (i64, i64, i64, i64, Vec<u8>) = db
        .query_row("SELECT * FROM block_records", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .expect("block record");
    assert_eq!(br, (vol.0, 42, 3, 1, hash.0.to_vec()));
    // The block's chunk comes first in pack 0, right after the magic and
    // its 36-byte header.
    let chunk: (i64, i64, i64) = db
        .query_row(
            "SELECT pack, offset, len FROM chunks WHERE hash = ?1",
            [&hash.0[..]],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("chunk");
    assert_eq!(chunk, (0, 44, data.len() as i64));
    let pack = fs::read(pack_path(tmp.path(), 0)).expect("pack");
    assert_eq!(&pack[..8], b"UMBRAPK1");
    assert_eq!(&pack[8..12], &(data.len() as u32).to_le_bytes());
    assert_eq!(&pack[12..44], &hash.0);
    assert_eq!(&pack[44..44 + data.len()], &data[..]);

    // Attributes are inline; an entry list is a chunk named by its hash.
    let attrs: Vec<u8> = db
        .query_row(
            "SELECT attrs FROM attr_records WHERE object = 42 AND hi = 1",
            [],
            |r| r.get(0),
        )
        .expect("attr record");
    assert_eq!(attrs[0], 1, "record format byte");
    let entries: Vec<u8> = db
        .query_row(
            "SELECT entries FROM dir_records WHERE object = 2 AND hi = 1",
            [],
            |r| r.get(0),
        )
        .expect("dir record");
    let (dpack, doff, dlen): (i64, i64, i64) = db
        .query_row(
            "SELECT pack, offset, len FROM chunks WHERE hash = ?1",
            [&entries],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("dir chunk");
    assert_eq!((dpack, doff), (0, 44 + data.len() as i64 + 36));
    let encoded = &pack[doff as usize..(doff + dlen) as usize];
    assert_eq!(encoded[0], 1, "record format byte");
    assert_eq!(ChunkHash::of(encoded).0.to_vec(), entries);

    let aside: (i64, i64) = db
        .query_row("SELECT object, since_epoch FROM aside", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("aside");
    assert_eq!(aside, (42, 2), "moved aside in epoch hi + 1");
}

/// A version 1 catalog (a store made before sets could be pending) as the
/// first umbra left it: every set in it is whole.
#[test]
fn a_version_1_catalog_is_migrated_and_keeps_its_sets() {
    let tmp = tempfile::tempdir().expect("tempdir");
    {
        let store = open(tmp.path());
        let vol = store.ensure_volume("data").expect("volume").id;
        commit(&store, "old", &[vol]);
    }
    {
        let db = Connection::open(tmp.path().join("catalog.db")).expect("catalog");
        db.execute_batch(
            "DROP TABLE swaps; DROP TABLE set_clusters; DROP TABLE places;
             ALTER TABLE sets DROP COLUMN origin;
             ALTER TABLE sets DROP COLUMN pending;
             UPDATE meta SET value = 1 WHERE key = 'schema_version';",
        )
        .expect("back to version 1");
    }
    let store = open(tmp.path());
    let names: Vec<String> = store
        .sets()
        .expect("sets")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["old"]);
    drop(store);
    let db = Connection::open(tmp.path().join("catalog.db")).expect("catalog");
    let version: i64 = db
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .expect("version");
    assert_eq!(version, 6);
}

/// A version 2 catalog (a store made before sets recorded who asked for
/// them): its sets read as manual, so retention keeps them, and new sets
/// record their origin.
#[test]
fn a_version_2_catalog_is_migrated_and_its_sets_read_as_manual() {
    let tmp = tempfile::tempdir().expect("tempdir");
    {
        let store = open(tmp.path());
        let vol = store.ensure_volume("data").expect("volume").id;
        commit(&store, "old", &[vol]);
    }
    {
        let db = Connection::open(tmp.path().join("catalog.db")).expect("catalog");
        db.execute_batch(
            "DROP TABLE swaps; DROP TABLE set_clusters; DROP TABLE places;
             ALTER TABLE sets DROP COLUMN origin;
             UPDATE meta SET value = 2 WHERE key = 'schema_version';",
        )
        .expect("back to version 2");
    }
    let store = open(tmp.path());
    let vol = store.volumes().expect("volumes")[0].id;
    store
        .commit_set(&NewSet {
            name: "new".into(),
            label: None,
            origin: SetOrigin::Scheduled,
            created: Timestamp::default(),
            volumes: vec![vol],
        })
        .expect("commit");
    let origins: Vec<(String, SetOrigin)> = store
        .sets()
        .expect("sets")
        .into_iter()
        .map(|s| (s.name, s.origin))
        .collect();
    assert_eq!(
        origins,
        [
            ("old".to_string(), SetOrigin::Manual),
            ("new".to_string(), SetOrigin::Scheduled)
        ]
    );
    drop(store);
    let db = Connection::open(tmp.path().join("catalog.db")).expect("catalog");
    let stored: Vec<String> = db
        .prepare("SELECT origin FROM sets ORDER BY id")
        .expect("origins")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows");
    assert_eq!(stored, ["manual", "scheduled"]);
    let refused = db.execute("UPDATE sets SET origin = 'cron'", []);
    assert!(refused.is_err(), "the catalog refuses an unknown origin");
}

/// A version 3 catalog (a store made before changed objects had places):
/// it gains the empty `places` table and keeps its records; `umbra diff`
/// names the objects preserved before the migration by searching.
#[test]
fn a_version_3_catalog_is_migrated_and_gains_places() {
    let tmp = tempfile::tempdir().expect("tempdir");
    {
        let store = open(tmp.path());
        let vol = store.ensure_volume("data").expect("volume").id;
        commit(&store, "old", &[vol]);
        let hi = hi_now(&store, vol);
        let pre = PreImages {
            attrs: vec![(ObjectId(42), attr(1))],
            ..Default::default()
        };
        store.preserve(vol, hi, &pre).expect("preserve");
    }
    {
        let db = Connection::open(tmp.path().join("catalog.db")).expect("catalog");
        db.execute_batch(
            "DROP TABLE swaps; DROP TABLE set_clusters; DROP TABLE places;
             UPDATE meta SET value = 3 WHERE key = 'schema_version';",
        )
        .expect("back to version 3");
    }
    let store = open(tmp.path());
    let vol = store.volumes().expect("volumes")[0].id;
    assert_eq!(
        store.changed_objects(vol, Epoch(1), None).expect("changed"),
        [ObjectId(42)]
    );
    assert_eq!(store.place(vol, ObjectId(42)).expect("place"), None);
    let hi = hi_now(&store, vol);
    let pre = PreImages {
        attrs: vec![(ObjectId(42), attr(2))],
        places: vec![(
            ObjectId(42),
            Place {
                parent: Vec::new(),
                name: b"f".to_vec(),
            },
        )],
        ..Default::default()
    };
    store.preserve(vol, hi, &pre).expect("preserve");
    assert_eq!(
        store
            .place(vol, ObjectId(42))
            .expect("place")
            .map(|p| p.name),
        Some(b"f".to_vec())
    );
}

/// A pending set tagged with a cluster set id outlives the next open (the
/// daemon asks the cluster whether to keep it); an untagged pending set
/// does not. A version 4 catalog gains the empty `set_clusters` table.
#[test]
fn a_pending_cluster_set_outlives_open_and_a_version_4_catalog_gains_set_clusters() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let new = |name: &str, vol| NewSet {
        name: name.to_string(),
        label: None,
        origin: SetOrigin::Manual,
        created: Timestamp {
            secs: 1_764_060_170,
            nanos: 0,
        },
        volumes: vec![vol],
    };
    {
        let store = open(tmp.path());
        let vol = store.ensure_volume("data").expect("volume").id;
        commit(&store, "old", &[vol]);
    }
    {
        let db = Connection::open(tmp.path().join("catalog.db")).expect("catalog");
        db.execute_batch(
            "DROP TABLE swaps; DROP TABLE set_clusters;
             UPDATE meta SET value = 4 WHERE key = 'schema_version';",
        )
        .expect("back to version 4");
    }
    {
        let store = open(tmp.path());
        assert_eq!(store.cluster_sets().expect("cluster sets"), []);
        let vol = store.volumes().expect("volumes")[0].id;
        let tagged = store
            .commit_pending_set(&new("tagged", vol))
            .expect("pending");
        store
            .commit_pending_set(&new("untagged", vol))
            .expect("pending");
        store
            .tag_cluster_set(tagged.id, "c-1")
            .expect("tag the cluster set");
    }
    let store = open(tmp.path());
    let names: Vec<String> = store
        .sets()
        .expect("sets")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["old", "tagged"]);
    let clusters = store.cluster_sets().expect("cluster sets");
    assert_eq!(clusters.len(), 1);
    assert_eq!(clusters[0].cluster_id, "c-1");
    assert!(clusters[0].pending);
    store
        .record_set_writers(clusters[0].set, &[])
        .expect("record");
    assert!(!store.cluster_sets().expect("cluster sets")[0].pending);
    store.delete_set(clusters[0].set).expect("delete");
    assert_eq!(store.cluster_sets().expect("cluster sets"), []);
}

/// A version 5 catalog (before renames noted their swaps) gains an empty
/// `swaps` table; a swap noted then is listed until it is done.
#[test]
fn a_version_5_catalog_is_migrated_and_notes_swaps() {
    let tmp = tempfile::tempdir().expect("tempdir");
    {
        let store = open(tmp.path());
        store.ensure_volume("data").expect("volume");
    }
    {
        let db = Connection::open(tmp.path().join("catalog.db")).expect("catalog");
        db.execute_batch(
            "DROP TABLE swaps;
             UPDATE meta SET value = 5 WHERE key = 'schema_version';",
        )
        .expect("back to version 5");
    }
    let store = open(tmp.path());
    let vol = store.volumes().expect("volumes")[0].id;
    assert_eq!(store.swaps(vol).expect("swaps"), []);
    commit(&store, "one", &[vol]);
    let hi = hi_now(&store, vol);
    let swap = Swap {
        handle: b"h9".to_vec(),
        at: Place {
            parent: b"p".to_vec(),
            name: b"src".to_vec(),
        },
    };
    let pre = PreImages {
        attrs: vec![(ObjectId(9), attr(1))],
        swaps: vec![(ObjectId(9), swap.clone())],
        ..Default::default()
    };
    store.preserve(vol, hi, &pre).expect("preserve");
    assert_eq!(store.swaps(vol).expect("swaps"), [(ObjectId(9), swap)]);
    store.swap_done(vol, ObjectId(9)).expect("done");
    assert_eq!(store.swaps(vol).expect("swaps"), []);
}
