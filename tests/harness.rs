//! Tests of the harness's pure parts on plain directories, no daemon: the
//! manifest and its diff, the op applier that serves as the oracle's
//! reference model, the op generator and its text form, and the shrinker.
//! If these are wrong, every end-to-end verdict is.

#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::time::Duration;

use common::manifest::{self, Compare, Kind, Manifest};
use common::ops::{self, GenConfig, Generator, Op, Outcome, RenameFlags, Slots};
use common::shrink::{self, Verdict};
use common::sys;

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("umbra-harness-")
        .tempdir()
        .expect("temp dir")
}

/// A small tree with one of everything a manifest records.
fn build_tree(root: &Path) {
    fs::create_dir_all(root.join("d/e")).unwrap();
    fs::write(root.join("f"), b"hello").unwrap();
    fs::write(root.join("d/big"), vec![7u8; 200_000]).unwrap();
    fs::hard_link(root.join("d/big"), root.join("d/e/big2")).unwrap();
    symlink("d/big", root.join("sym")).unwrap();
    sys::mknod_fifo(&root.join("fifo"), 0o640).unwrap();
    sys::lsetxattr(&root.join("f"), "user.color", b"blue").unwrap();
    fs::set_permissions(root.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
    sys::lchown(&root.join("d/e"), 1234, 5678).unwrap();
    sys::set_mtime(&root.join("d"), 1_000_000_000, 123_456_789).unwrap();
}

#[test]
fn manifest_records_every_attribute_without_following_symlinks() {
    let dir = tempdir();
    let root = dir.path().join("tree");
    build_tree(&root);
    // A symlink to a directory outside the tree must not be walked.
    fs::create_dir(dir.path().join("outside")).unwrap();
    fs::write(dir.path().join("outside/secret"), b"x").unwrap();
    symlink(dir.path().join("outside"), root.join("out")).unwrap();

    let m = Manifest::capture(&root);
    let paths: Vec<String> = m.entries.keys().map(|p| p.display().to_string()).collect();
    assert_eq!(
        paths,
        [
            ".", "d", "d/big", "d/e", "d/e/big2", "f", "fifo", "out", "sym"
        ]
    );

    let f = m.get("f").unwrap();
    assert_eq!(f.kind, Kind::File);
    assert_eq!(f.mode, 0o100600);
    assert_eq!(f.size, Some(5));
    assert_eq!(f.content.as_ref().unwrap().hash, blake3::hash(b"hello"));
    assert_eq!(
        f.xattrs.get(b"user.color".as_slice()).map(Vec::as_slice),
        Some(b"blue".as_slice())
    );
    assert!(f.links.is_empty());

    let big = m.get("d/big").unwrap();
    assert_eq!(big.links, [Path::new("d/e/big2")]);
    assert_eq!(big.nlink, Some(2));
    assert_eq!(
        big.content.as_ref().unwrap().blocks.len(),
        4,
        "200000 bytes are four 64 KiB blocks"
    );
    assert_eq!(m.get("d/e/big2").unwrap().links, [Path::new("d/big")]);

    let d = m.get("d").unwrap();
    assert_eq!(d.mtime, (1_000_000_000, 123_456_789));
    assert_eq!(d.entries.as_ref().unwrap(), &["big", "e"]);
    assert_eq!(d.size, None);
    assert_eq!(d.nlink, None);
    let e = m.get("d/e").unwrap();
    assert_eq!((e.uid, e.gid), (1234, 5678));

    let sym = m.get("sym").unwrap();
    assert_eq!(sym.kind, Kind::Symlink);
    assert_eq!(sym.target.as_deref(), Some(std::ffi::OsStr::new("d/big")));
    assert_eq!(m.get("fifo").unwrap().kind, Kind::Fifo);
    assert_eq!(m.get("fifo").unwrap().mode, 0o010640);
    assert_eq!(m.get("out").unwrap().kind, Kind::Symlink);

    // Excluding a root-level name drops it and everything under it.
    let without = Manifest::capture_excluding(&root, &["d"]);
    assert!(without.entries.keys().all(|p| !p.starts_with("d")));
    assert!(
        !without
            .get(".")
            .unwrap()
            .entries
            .as_ref()
            .unwrap()
            .iter()
            .any(|n| n == "d")
    );
}

#[test]
fn manifest_diff_names_each_difference() {
    let dir = tempdir();
    let a = dir.path().join("a");
    build_tree(&a);
    let expected = Manifest::capture(&a);
    assert!(manifest::diff(&expected, &Manifest::capture(&a)).is_empty());

    let b = dir.path().join("b");
    build_tree(&b);
    // Same tree built at another instant: only times differ.
    sys::set_mtime(&b.join("f"), 5, 0).unwrap();
    let built_later = Manifest::capture(&b);
    let d = manifest::diff(&expected, &built_later);
    assert!(d.iter().all(|l| l.contains("mtime")), "{d:?}");
    assert!(
        d.iter().any(|l| l.starts_with("f: mtime 5.000000000")),
        "{d:?}"
    );
    assert!(manifest::diff_with(&expected, &built_later, Compare::IGNORE_TIMES).is_empty());

    fs::set_permissions(b.join("f"), fs::Permissions::from_mode(0o644)).unwrap();
    sys::lchown(&b.join("d/e"), 0, 0).unwrap();
    let mut big = fs::read(b.join("d/big")).unwrap();
    big[70_000] = 8;
    big[199_999] = 8;
    fs::write(b.join("d/big"), &big).unwrap();
    fs::remove_file(b.join("sym")).unwrap();
    symlink("elsewhere", b.join("sym")).unwrap();
    sys::lsetxattr(&b.join("f"), "user.color", b"red").unwrap();
    sys::lsetxattr(&b.join("f"), "user.extra", b"1").unwrap();
    fs::remove_file(b.join("d/e/big2")).unwrap();
    fs::write(b.join("d/e/big2"), &big).unwrap();
    fs::remove_file(b.join("fifo")).unwrap();
    fs::write(b.join("new"), b"").unwrap();
    let actual = Manifest::capture(&b);
    let d = manifest::diff_with(&expected, &actual, Compare::IGNORE_TIMES);
    let has = |needle: &str| {
        assert!(
            d.iter().any(|l| l.contains(needle)),
            "no line with {needle:?} in {d:#?}"
        )
    };
    has("f: mode 100644 expected 100600");
    has("d/e: owner 0:0 expected 1234:5678");
    has("d/big: content differs in 2 of 4 64 KiB blocks: [1, 3]");
    has("sym: symlink target");
    has("f: xattr \"user.color\" is \"red\" expected \"blue\"");
    has("f: unexpected xattr \"user.extra\"");
    has("d/big: hard-linked with [] expected with [\"d/e/big2\"]");
    has("d/big: nlink Some(1) expected Some(2)");
    has("fifo: missing");
    has("new: unexpected File");
    has(".: directory entries differ: missing [fifo], unexpected [new]");
}

/// Applies `op` to two trees and checks both gave the same result.
fn apply_both(op: &Op, a: &Path, b: &Path, sa: &mut Slots, sb: &mut Slots) -> ops::OpResult {
    let ra = ops::apply(op, a, sa);
    let rb = ops::apply(op, b, sb);
    assert_eq!(
        ra,
        rb,
        "{op}: {} vs {}",
        ops::show_result(&ra),
        ops::show_result(&rb)
    );
    ra
}

#[test]
fn the_reference_model_is_deterministic_and_covers_every_op() {
    // The oracle's premise: the same op list on two native trees gives the
    // same results and the same trees. Also checks the generator reaches
    // every kind of op and a fair share of errors.
    let dir = tempdir();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let cfg = GenConfig {
        max_total: 4 << 20,
        ..GenConfig::default()
    };
    let mut generator = Generator::new(42, cfg.clone());
    let (mut sa, mut sb) = (Slots::default(), Slots::default());
    let mut list = Vec::new();
    let mut kinds = BTreeSet::new();
    let mut errnos = BTreeSet::new();
    let mut flags = BTreeSet::new();
    for _ in 0..3000 {
        let op = generator.next(&a, sa.open());
        kinds.insert(
            format!("{op}")
                .split_whitespace()
                .next()
                .unwrap()
                .to_string(),
        );
        if let Op::Rename { flags: f, .. } = &op {
            flags.insert(format!("{f:?}"));
        }
        if op == Op::Restart {
            sa.close_all();
            sb.close_all();
        }
        if let Err(e) = apply_both(&op, &a, &b, &mut sa, &mut sb) {
            errnos.insert(sys::errno_name(e));
        }
        list.push(op);
    }
    sa.close_all();
    sb.close_all();
    manifest::assert_same_with(
        &Manifest::capture(&a),
        &Manifest::capture(&b),
        Compare::IGNORE_TIMES,
        "a vs b",
    );
    for k in [
        "create",
        "write",
        "append",
        "overwrite",
        "read",
        "truncate",
        "chmod",
        "chown",
        "mtime",
        "setxattr",
        "rmxattr",
        "mkdir",
        "rmdir",
        "unlink",
        "rename",
        "link",
        "symlink",
        "mkfifo",
        "open",
        "fdwrite",
        "fdread",
        "fdtruncate",
        "close",
        "set",
        "restart",
        "delete-set",
    ] {
        assert!(
            kinds.contains(k),
            "the generator never made a `{k}` op in 3000: {kinds:?}"
        );
    }
    assert_eq!(flags.len(), 3, "renames: {flags:?}");
    for e in ["ENOENT", "EEXIST", "ENOTEMPTY", "ENOTDIR"] {
        assert!(errnos.contains(e), "no {e} in 3000 ops: {errnos:?}");
    }

    // The same seed on a fresh tree gives the same list.
    let c = dir.path().join("c");
    fs::create_dir(&c).unwrap();
    let mut again = Generator::new(42, cfg);
    let mut sc = Slots::default();
    for (i, op) in list.iter().enumerate() {
        let regenerated = again.next(&c, sc.open());
        assert_eq!(
            &regenerated, op,
            "op #{i} differs on a second run with the same seed"
        );
        if *op == Op::Restart {
            sc.close_all();
        }
        let _ = ops::apply(op, &c, &mut sc);
    }
}

#[test]
fn the_op_text_form_round_trips() {
    let dir = tempdir();
    let root = dir.path().join("t");
    fs::create_dir(&root).unwrap();
    let mut generator = Generator::new(
        7,
        GenConfig {
            max_total: 2 << 20,
            ..GenConfig::default()
        },
    );
    let mut slots = Slots::default();
    let mut list = Vec::new();
    for _ in 0..1500 {
        let op = generator.next(&root, slots.open());
        let _ = ops::apply(&op, &root, &mut slots);
        list.push(op);
    }
    let text = ops::format_ops(&list);
    assert_eq!(ops::parse_ops(&text).unwrap(), list);
    assert_eq!(
        ops::parse_ops("# comment\n\n  rename a d0/b exchange\nset\n").unwrap(),
        [
            Op::Rename {
                from: "a".into(),
                to: "d0/b".into(),
                flags: RenameFlags::Exchange
            },
            Op::CreateSet
        ]
    );
    assert!(
        ops::parse_op("write a off=1 len=2").is_err(),
        "a missing key is an error"
    );
    assert!(ops::parse_op("frobnicate a").is_err());
}

#[test]
fn ops_behave_as_posix_says_on_a_plain_directory() {
    let dir = tempdir();
    let r = dir.path();
    let mut s = Slots::default();
    let mut run = |line: &str| ops::apply(&ops::parse_op(line).unwrap(), r, &mut s);

    assert_eq!(run("create a mode=640"), Ok(Outcome::Done));
    assert_eq!(run("create a mode=640"), Err(libc::EEXIST));
    assert_eq!(
        fs::metadata(r.join("a")).unwrap().mode() & 0o7777,
        0o640 & !umask()
    );
    // A sparse, unaligned write: zeros before it.
    assert_eq!(run("write a off=70001 len=3 seed=9"), Ok(Outcome::Wrote(3)));
    let data = fs::read(r.join("a")).unwrap();
    assert_eq!(data.len(), 70_004);
    assert!(data[..70_001].iter().all(|b| *b == 0));
    assert_eq!(&data[70_001..], &ops::fill(9, 3)[..]);
    assert_eq!(
        run("read a off=70001 len=100"),
        Ok(read_outcome(&ops::fill(9, 3)))
    );
    assert_eq!(run("append a len=5 seed=1"), Ok(Outcome::Wrote(5)));
    assert_eq!(fs::read(r.join("a")).unwrap()[70_004..], [0x41; 5]);
    assert_eq!(run("write nope off=0 len=1 seed=5"), Err(libc::ENOENT));
    assert_eq!(run("overwrite a len=10 seed=0"), Ok(Outcome::Wrote(10)));
    assert_eq!(fs::read(r.join("a")).unwrap(), [0; 10]);

    assert_eq!(run("mkdir d mode=755"), Ok(Outcome::Done));
    assert_eq!(run("create d/x mode=644"), Ok(Outcome::Done));
    assert_eq!(run("rmdir d"), Err(libc::ENOTEMPTY));
    assert_eq!(run("unlink d"), Err(libc::EISDIR));
    assert_eq!(run("rmdir a"), Err(libc::ENOTDIR));
    assert_eq!(run("rename a d/x noreplace"), Err(libc::EEXIST));
    assert_eq!(run("rename a d/x exchange"), Ok(Outcome::Done));
    assert_eq!(fs::metadata(r.join("d/x")).unwrap().len(), 10);
    assert_eq!(fs::metadata(r.join("a")).unwrap().len(), 0);
    assert_eq!(run("rename d d/y"), Err(libc::EINVAL));
    assert_eq!(run("link d e"), Err(libc::EPERM));
    assert_eq!(run("link a e"), Ok(Outcome::Done));
    assert_eq!(fs::metadata(r.join("a")).unwrap().nlink(), 2);

    // A fifo never blocks an op.
    assert_eq!(run("mkfifo p mode=644"), Ok(Outcome::Done));
    assert_eq!(run("write p off=0 len=3 seed=5"), Err(libc::ENXIO));
    assert_eq!(run("read p off=0 len=3"), Ok(Outcome::NotRegular));
    assert_eq!(run("open 0 p"), Ok(Outcome::Done));
    assert_eq!(run("fdwrite 0 off=0 len=3 seed=5"), Ok(Outcome::NotRegular));
    assert_eq!(run("truncate p size=0"), Err(libc::EINVAL));
    assert_eq!(run("setxattr p name=a len=1 seed=5"), Err(libc::EPERM));

    // An open file outlives its name.
    assert_eq!(run("open 1 e"), Ok(Outcome::Done));
    assert_eq!(run("unlink e"), Ok(Outcome::Done));
    assert_eq!(run("unlink a"), Ok(Outcome::Done));
    assert_eq!(run("fdwrite 1 off=2 len=2 seed=2"), Ok(Outcome::Wrote(2)));
    assert_eq!(
        run("fdread 1 off=0 len=10"),
        Ok(read_outcome(&[0, 0, 0x82, 0x82]))
    );
    assert_eq!(run("close 1"), Ok(Outcome::Done));
    assert_eq!(run("close 1"), Err(libc::EBADF));
    assert_eq!(run("fdread 2 off=0 len=1"), Err(libc::EBADF));

    assert_eq!(run("symlink missing l"), Ok(Outcome::Done));
    assert_eq!(run("setxattr l name=a len=1 seed=5"), Err(libc::EPERM));
    assert_eq!(run("chown l uid=1234 gid=5678"), Ok(Outcome::Done));
    assert_eq!(fs::symlink_metadata(r.join("l")).unwrap().uid(), 1234);
    assert_eq!(run("mtime l sec=77 nsec=5"), Ok(Outcome::Done));
    assert_eq!(fs::symlink_metadata(r.join("l")).unwrap().mtime(), 77);
    assert_eq!(run("rmxattr d/x name=a"), Err(libc::ENODATA));
}

fn umask() -> u32 {
    // Read, not set: umask(2) would change it under the tests running beside.
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
}

fn read_outcome(bytes: &[u8]) -> Outcome {
    Outcome::Data {
        len: bytes.len() as u64,
        hash: blake3::hash(bytes).to_hex()[..16].to_string(),
    }
}

#[test]
fn fill_is_a_pure_function_of_its_seed() {
    assert_eq!(ops::fill(0, 5), [0; 5]);
    assert_eq!(ops::fill(2, 3), [0x82; 3]);
    assert_eq!(ops::fill(99, 1000), ops::fill(99, 1000));
    assert_eq!(ops::fill(99, 1000)[..10], ops::fill(99, 10)[..]);
    assert_ne!(ops::fill(99, 64), ops::fill(100, 64));
}

/// A failure that needs item 3 somewhere before item 7, and is seen at 7.
fn needs_3_then_7(items: &[u32]) -> Verdict {
    let three = items.iter().position(|x| *x == 3);
    let seven = items.iter().position(|x| *x == 7);
    match (three, seven) {
        (Some(t), Some(s)) if t < s => Verdict::Fail {
            at: s,
            message: format!("3 at {t}, 7 at {s}"),
        },
        _ => Verdict::Pass,
    }
}

#[test]
fn the_shrinker_finds_a_one_minimal_list() {
    let items: Vec<u32> = (0..200).map(|i| (i * 37 + 3) % 200).collect();
    let Verdict::Fail { at, message } = needs_3_then_7(&items) else {
        panic!("the input must fail")
    };
    let shrunk = shrink::ddmin(items, at, message, Duration::from_secs(30), needs_3_then_7);
    assert_eq!(shrunk.items, [3, 7]);
    assert!(shrunk.minimal);
    assert_eq!(shrunk.message, "3 at 0, 7 at 1");
    assert!(shrunk.trials < 200, "took {} trials", shrunk.trials);
}

#[test]
fn the_shrinker_finds_a_failure_at_the_end_of_a_long_list_replaying_little() {
    // A soak's shape: a million items, the failure needs two near the end.
    let mut items: Vec<u32> = vec![9; 1_000_000];
    items[999_900] = 3;
    items[999_950] = 7;
    let Verdict::Fail { at, message } = needs_3_then_7(&items) else {
        panic!("the input must fail")
    };
    let mut replayed = 0usize;
    let shrunk = shrink::ddmin(items, at, message, Duration::from_secs(60), |c| {
        replayed += c.len();
        needs_3_then_7(c)
    });
    assert_eq!(shrunk.items, [3, 7]);
    assert!(shrunk.minimal);
    // Bisection alone replays half a million items on its first cut.
    assert!(
        replayed < 2_000,
        "replayed {replayed} items in {} trials",
        shrunk.trials
    );
}

#[test]
fn the_shrinker_stops_at_its_budget_with_the_failure_point_cut() {
    let items: Vec<u32> = vec![3, 1, 7, 9, 9, 9];
    let shrunk = shrink::ddmin(items, 2, "m".into(), Duration::ZERO, needs_3_then_7);
    assert_eq!(
        shrunk.items,
        [3, 1, 7],
        "items after the failure point go even with no budget"
    );
    assert!(!shrunk.minimal);
    assert_eq!(shrunk.trials, 0);
}

#[test]
fn mountinfo_lookup_sees_a_bind_mount() {
    // The harness's "nothing left mounted" checks rest on this; bind mounts
    // need root, which the suite has (it mounts FUSE filesystems).
    let dir = tempdir();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    fs::create_dir(&src).unwrap();
    fs::create_dir(&dst).unwrap();
    let dst = fs::canonicalize(&dst).unwrap();
    assert!(!sys::is_mounted(&dst));
    let (s, d) = (sys::cstr(&src), sys::cstr(&dst));
    // SAFETY: valid paths; a plain bind mount.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "bind mount: errno {}", sys::last_errno());
    assert!(sys::is_mounted(&dst));
    sys::lazy_unmount(&dst).unwrap();
    assert!(!sys::is_mounted(&dst));
}
