//! The writers recorded with a set: kept as given, replaced on a second
//! record, and gone with their set.

use umbra_store::{NewSet, SetWriterRecord, Store, StoreOptions, Timestamp};

#[test]
fn a_sets_writers_are_kept_and_go_with_the_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreOptions::default()).expect("store");
    let volume = store.ensure_volume("data").expect("volume");
    let new = NewSet {
        name: "2026-11-25T084250Z".into(),
        label: None,
        origin: umbra_store::SetOrigin::Manual,
        created: Timestamp { secs: 1, nanos: 0 },
        volumes: vec![volume.id],
    };
    assert_eq!(store.free_set_name(&new.name).expect("free"), new.name);
    let set = store.commit_set(&new).expect("commit");
    assert_eq!(
        store.free_set_name(&new.name).expect("free"),
        "2026-11-25T084250Z-1"
    );
    let writers = vec![
        SetWriterRecord {
            name: "pg".into(),
            required: true,
            status: "ok".into(),
            error: None,
            components: r#"[{"name":"db"}]"#.into(),
        },
        SetWriterRecord {
            name: "cache".into(),
            required: false,
            status: "failed-at-freeze".into(),
            error: Some("busy (retryable)".into()),
            components: "[]".into(),
        },
    ];
    store.record_set_writers(set.id, &writers).expect("record");
    store
        .record_set_writers(set.id, &writers)
        .expect("record twice");
    let kept = store.set_writers().expect("read");
    assert_eq!(kept.len(), 2);
    assert!(kept.iter().all(|(id, _)| *id == set.id));
    assert_eq!(kept[0].1, writers[0]);
    assert_eq!(kept[1].1, writers[1]);
    store.delete_set(set.id).expect("delete");
    assert!(store.set_writers().expect("read").is_empty());
}
