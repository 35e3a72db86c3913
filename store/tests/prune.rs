//! Deleting a set frees exactly what no other set needs: a record with
//! `hi = h` whose predecessor has `hi = p` serves the epochs `(p, h]` and is
//! kept iff a remaining set of its volume closed one of them.

mod common;

use umbra_store::{Epoch, Error, ObjectId, PreImages, SetId};

use common::{attr, block, commit, epoch_of, hi_now, temp_store};

const FILE: ObjectId = ObjectId(7);

#[test]
fn deleting_sets_keeps_exactly_the_records_the_others_resolve_to() {
    let (_dir, store) = temp_store();
    let vol = store.ensure_volume("data").expect("volume").id;

    // Block 0 holds value 1 through epoch 1, then changes once in each of
    // epochs 2, 3 and 4: records hi = 1, 2, 3 with values 1, 2, 3.
    let mut sets = Vec::new();
    for v in 1..=4u8 {
        sets.push(commit(&store, "s", &[vol])); // closes epoch v
        let data = block(v);
        let pre = PreImages {
            blocks: vec![(FILE, 0, &data[..])],
            attrs: vec![(FILE, attr(v))],
            ..PreImages::default()
        };
        store
            .preserve(vol, hi_now(&store, vol), &pre)
            .expect("preserve");
    }
    // Live now holds value 5. Sets at epochs 1..=4 see values 1..=4.
    let names: Vec<&str> = sets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["s", "s-1", "s-2", "s-3"]);
    let e: Vec<Epoch> = sets.iter().map(|s| epoch_of(s, vol)).collect();
    assert_eq!(e, [Epoch(1), Epoch(2), Epoch(3), Epoch(4)]);
    let sees = |at: Epoch| {
        store
            .resolve_block(vol, FILE, 0, at)
            .expect("resolve")
            .map(|b| b[0])
    };
    assert_eq!(
        [sees(e[0]), sees(e[1]), sees(e[2]), sees(e[3])],
        [Some(1), Some(2), Some(3), Some(4)]
    );
    assert_eq!(store.stats().expect("stats").block_records, 4);

    // Set 2 (epoch 2) goes: the record hi = 2 served only (1, 2].
    assert_eq!(store.delete_set(sets[1].id).expect("delete"), 2); // block + attr
    let stats = store.stats().expect("stats");
    assert_eq!((stats.block_records, stats.attr_records), (3, 3));
    assert_eq!(stats.chunks, 3, "the chunk of value 2 is gone too");
    assert_eq!(
        [sees(e[0]), sees(e[2]), sees(e[3])],
        [Some(1), Some(3), Some(4)]
    );

    // Set 3 (epoch 3) goes: the record hi = 3 now serves (1, 3], no set there.
    assert_eq!(store.delete_set(sets[2].id).expect("delete"), 2);
    assert_eq!([sees(e[0]), sees(e[3])], [Some(1), Some(4)]);

    // Set 1 goes: the record hi = 1 served (-, 1]. The record hi = 4 stays
    // and now serves (-, 4], still the newest set's value.
    assert_eq!(store.delete_set(sets[0].id).expect("delete"), 2);
    assert_eq!(sees(e[3]), Some(4));
    assert_eq!(
        store.resolve_attr(vol, FILE, e[3]).expect("resolve"),
        Some(attr(4))
    );
    let stats = store.stats().expect("stats");
    assert_eq!(
        (stats.block_records, stats.attr_records, stats.chunks),
        (1, 1, 1)
    );

    // The last set goes: nothing is left to serve.
    assert_eq!(store.delete_set(sets[3].id).expect("delete"), 2);
    let stats = store.stats().expect("stats");
    assert_eq!(
        (
            stats.block_records,
            stats.attr_records,
            stats.chunks,
            stats.chunk_bytes
        ),
        (0, 0, 0, 0)
    );
}

#[test]
fn deleting_a_set_of_one_volume_leaves_the_other_volume_alone() {
    let (_dir, store) = temp_store();
    let a = store.ensure_volume("a").expect("volume").id;
    let b = store.ensure_volume("b").expect("volume").id;
    let both = commit(&store, "both", &[a, b]);
    let only_a = commit(&store, "only-a", &[a]);
    // Epochs are per volume: a is at 3, b at 2.
    assert_eq!(epoch_of(&both, a), Epoch(1));
    assert_eq!(epoch_of(&both, b), Epoch(1));
    assert_eq!(epoch_of(&only_a, a), Epoch(2));
    assert_eq!(hi_now(&store, a), Epoch(2));
    assert_eq!(hi_now(&store, b), Epoch(1));
    let one = block(1);
    for vol in [a, b] {
        let pre = PreImages {
            blocks: vec![(FILE, 0, &one[..])],
            ..PreImages::default()
        };
        store
            .preserve(vol, hi_now(&store, vol), &pre)
            .expect("preserve");
    }
    // Deleting `only-a` keeps a's record (it serves `both` at epoch 1) and
    // b's (b is not in the deleted set).
    assert_eq!(store.delete_set(only_a.id).expect("delete"), 0);
    for vol in [a, b] {
        let got = store
            .resolve_block(vol, FILE, 0, Epoch(1))
            .expect("resolve");
        assert_eq!(got.as_deref(), Some(&one[..]));
    }
    assert_eq!(
        store.stats().expect("stats").chunks,
        1,
        "shared across volumes"
    );
}

#[test]
fn deleting_an_unknown_set_is_an_error_and_changes_nothing() {
    let (_dir, store) = temp_store();
    let vol = store.ensure_volume("data").expect("volume").id;
    let set = commit(&store, "s", &[vol]);
    match store.delete_set(SetId(set.id.0 + 1)) {
        Err(Error::UnknownSet(key)) => assert_eq!(key, (set.id.0 + 1).to_string()),
        other => panic!("expected UnknownSet, got {other:?}"),
    }
    assert_eq!(store.sets().expect("sets").len(), 1);
    store.delete_set(set.id).expect("delete");
    assert!(matches!(
        store.delete_set(set.id),
        Err(Error::UnknownSet(_))
    ));
}
