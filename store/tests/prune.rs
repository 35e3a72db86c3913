//! Deleting a set frees exactly what no other set needs: a record with
//! `hi = h` whose predecessor has `hi = p` serves the epochs `(p, h]` and is
//! kept iff a remaining set of its volume closed one of them.

mod common;

use umbra_store::{Epoch, Error, ObjectId, Place, PreImages, SetId, Swap};

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

#[test]
fn a_record_no_remaining_set_would_need_is_never_stored() {
    let (_dir, store) = temp_store();
    let vol = store.ensure_volume("data").expect("volume").id;
    let (one, two, three) = (block(1), block(2), block(3));
    fn keep(data: &[u8]) -> PreImages<'_> {
        PreImages {
            blocks: vec![(FILE, 0, data)],
            attrs: vec![(FILE, attr(data[0]))],
            ..PreImages::default()
        }
    }
    let first = commit(&store, "first", &[vol]); // epoch 1 sees 1
    store
        .preserve(vol, hi_now(&store, vol), &keep(&one))
        .expect("preserve"); // hi = 1
    let newer = commit(&store, "newer", &[vol]); // epoch 2 sees 2
    store
        .preserve(vol, hi_now(&store, vol), &keep(&two))
        .expect("preserve"); // hi = 2
    store.delete_set(newer.id).expect("delete");
    // The record hi = 2 went with `newer`. In epoch 3 the key changes again:
    // a record hi = 2 would serve (1, 2], where no set is left.
    let stats = store.stats().expect("stats");
    assert_eq!((stats.block_records, stats.attr_records), (1, 1));
    let late = ObjectId(8);
    let pre = PreImages {
        blocks: vec![(FILE, 0, &three[..]), (late, 0, &three[..])],
        attrs: vec![(FILE, attr(3)), (late, attr(3))],
        ..PreImages::default()
    };
    store
        .preserve(vol, hi_now(&store, vol), &pre)
        .expect("preserve");
    // `late` had no record: its state at the end of epoch 2 is what `first`
    // (epoch 1) shows, so it is kept; FILE's would serve nobody.
    let stats = store.stats().expect("stats");
    assert_eq!((stats.block_records, stats.attr_records), (2, 2));
    assert_eq!(stats.chunks, 2);
    let at = epoch_of(&first, vol);
    let got = |object| store.resolve_block(vol, object, 0, at).expect("resolve");
    assert_eq!(got(FILE).as_deref(), Some(&one[..]));
    assert_eq!(got(late).as_deref(), Some(&three[..]));
    assert_eq!(
        store
            .preserved(vol, FILE, hi_now(&store, vol))
            .expect("preserved")
            .blocks,
        Vec::<u64>::new(),
        "nothing stored, so nothing preserved in this epoch as far as a restart knows"
    );
}

#[test]
fn with_no_set_left_preserving_stores_nothing() {
    let (_dir, store) = temp_store();
    let vol = store.ensure_volume("data").expect("volume").id;
    let set = commit(&store, "s", &[vol]);
    let hi = hi_now(&store, vol);
    // The set is deleted while a mutation gathers its pre-images.
    store.delete_set(set.id).expect("delete");
    let data = block(1);
    let pre = PreImages {
        blocks: vec![(FILE, 0, &data[..])],
        attrs: vec![(FILE, attr(1))],
        dirs: vec![(ObjectId(9), common::dir(1))],
        handles: vec![(FILE, vec![1, 2, 3])],
        places: vec![(FILE, place(b"f"))],
        aside: vec![FILE],
        swaps: vec![(
            FILE,
            Swap {
                handle: vec![4, 5, 6],
                at: place(b"src"),
            },
        )],
    };
    store.preserve(vol, hi, &pre).expect("preserve");
    assert_eq!(store.swaps(vol).expect("swaps"), []);
    let stats = store.stats().expect("stats");
    assert_eq!(
        (
            stats.block_records,
            stats.attr_records,
            stats.dir_records,
            stats.chunks
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(store.handle(vol, FILE).expect("handle"), None);
    assert_eq!(store.place(vol, FILE).expect("place"), None);
    assert!(store.unreachable_aside(vol).expect("aside").is_empty());
}

#[test]
fn a_handle_and_a_place_live_as_long_as_their_object_has_a_record_or_an_aside_row() {
    let (_dir, store) = temp_store();
    let vol = store.ensure_volume("data").expect("volume").id;
    let (moved, renamed, bare) = (ObjectId(20), ObjectId(21), ObjectId(22));
    let set = commit(&store, "s", &[vol]);
    let pre = PreImages {
        attrs: vec![(renamed, attr(1))],
        handles: vec![
            (moved, vec![1]),
            (renamed, vec![2]),
            // A handle alone: no set can need it.
            (bare, vec![3]),
        ],
        places: vec![(renamed, place(b"r")), (bare, place(b"b"))],
        aside: vec![moved],
        ..PreImages::default()
    };
    store
        .preserve(vol, hi_now(&store, vol), &pre)
        .expect("preserve");
    let handle = |o| store.handle(vol, o).expect("handle");
    assert_eq!(
        [handle(moved), handle(renamed), handle(bare)],
        [Some(vec![1]), Some(vec![2]), None]
    );
    assert_eq!(store.place(vol, renamed).expect("place"), Some(place(b"r")));
    assert_eq!(store.place(vol, bare).expect("place"), None);
    store.delete_set(set.id).expect("delete");
    // The record went with the set; the aside row waits for the filesystem
    // to free the inode (forget_objects), and its handle with it.
    assert_eq!([handle(moved), handle(renamed)], [Some(vec![1]), None]);
    assert_eq!(store.place(vol, renamed).expect("place"), None);
    assert_eq!(store.unreachable_aside(vol).expect("aside"), vec![moved]);
    store.forget_objects(vol, &[moved]).expect("forget");
    assert_eq!(handle(moved), None);
}

#[test]
fn pruning_in_many_steps_drops_exactly_what_one_pass_would() {
    let (_dir, store) = temp_store();
    let vol = store.ensure_volume("data").expect("volume").id;
    // 3000 blocks change in epoch 2 and again in epoch 3: 6000 records,
    // more than one pruning step takes.
    let data: Vec<Vec<u8>> = (0..3000u32).map(|i| i.to_le_bytes().repeat(16)).collect();
    let mut sets = Vec::new();
    for _ in 0..2 {
        let set = commit(&store, "s", &[vol]);
        let pre = PreImages {
            blocks: data
                .iter()
                .enumerate()
                .map(|(i, d)| (ObjectId(i as u64 / 7), i as u64, &d[..]))
                .collect(),
            ..PreImages::default()
        };
        store
            .preserve(vol, hi_now(&store, vol), &pre)
            .expect("preserve");
        sets.push(set);
    }
    assert_eq!(store.stats().expect("stats").block_records, 6000);
    // The first set's records (hi = 1) serve only it.
    assert_eq!(store.delete_set(sets[0].id).expect("delete"), 3000);
    let stats = store.stats().expect("stats");
    assert_eq!((stats.block_records, stats.chunks), (3000, 3000));
    let at = epoch_of(&sets[1], vol);
    for (i, d) in data.iter().enumerate() {
        let got = store
            .resolve_block(vol, ObjectId(i as u64 / 7), i as u64, at)
            .expect("resolve")
            .expect("a record");
        assert_eq!(&got[..], &d[..]);
    }
}

#[test]
fn a_deletion_cut_short_is_finished_by_the_next_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = common::open(dir.path());
    let vol = store.ensure_volume("data").expect("volume").id;
    let set = commit(&store, "s", &[vol]);
    let data = block(1);
    let pre = PreImages {
        blocks: vec![(FILE, 0, &data[..])],
        attrs: vec![(FILE, attr(1))],
        handles: vec![(FILE, vec![1])],
        ..PreImages::default()
    };
    store
        .preserve(vol, hi_now(&store, vol), &pre)
        .expect("preserve");
    // The set is gone, and then the process: nothing was collected yet.
    store.remove_set(set.id).expect("remove");
    assert_eq!(store.stats().expect("stats").block_records, 1);
    drop(store);
    let store = common::open(dir.path());
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
    assert_eq!(store.handle(vol, FILE).expect("handle"), None);
}

fn place(name: &[u8]) -> Place {
    Place {
        parent: Vec::new(),
        name: name.to_vec(),
    }
}
