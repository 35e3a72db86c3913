//! `umbra restore` through the real binary and real FUSE mounts: a file
//! edited after the set comes back with its bytes, mode, owner, times,
//! xattrs and ACL; a deleted tree with a hard link pair, a symlink, a
//! sparse file and a FIFO come back as they were; a conflict without
//! --overwrite, a --dry-run and a refused path change nothing; --keep-newer
//! keeps the newer file; --to writes elsewhere; as nobody, what nobody
//! could not read in the set or cannot write live is refused (as natively)
//! while nobody's own file restores; an exec writer hears pre-restore and
//! post-restore in order, and one that refuses pre-restore stops the
//! restore before anything is written.

#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Config, Daemon, NOBODY, open_the_way, sys};
use serde_json::Value;

/// Every attribute a restore puts back, for comparing a live file with
/// its copy in a set.
#[derive(Debug, PartialEq, Eq)]
struct Attrs {
    kind: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    atime: (i64, i64),
    link: Option<PathBuf>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn attrs(path: &Path) -> Attrs {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut names = sys::llistxattr(path).unwrap_or_default();
    names.sort();
    let xattrs = names
        .into_iter()
        .map(|n| {
            let v = sys::lgetxattr(path, &n).expect("getxattr");
            (n, v)
        })
        .collect();
    Attrs {
        kind: m.mode() & libc::S_IFMT,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        size: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        atime: (m.atime(), m.atime_nsec()),
        link: fs::read_link(path).ok(),
        xattrs,
    }
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().expect(program);
    assert!(status.success(), "{program} {args:?}");
}

/// The stdout of a restore that must succeed.
#[track_caller]
fn restore_ok(d: &Daemon, args: &[&str]) -> String {
    let mut all = vec!["restore"];
    all.extend_from_slice(args);
    d.umbra_ok(&all)
}

/// The one-line error of a restore that must fail.
#[track_caller]
fn restore_fails(d: &Daemon, args: &[&str], context: &str) -> String {
    let mut all = vec!["restore"];
    all.extend_from_slice(args);
    common::assert_one_line_error(&d.umbra(&all), context)
}

/// Every path under `dir` with its bytes (files) or link target, and mode.
fn tree(dir: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).expect("stat");
        let body = if m.is_file() {
            fs::read(&p).expect("read")
        } else if m.file_type().is_symlink() {
            fs::read_link(&p)
                .expect("readlink")
                .into_os_string()
                .into_encoded_bytes()
        } else {
            Vec::new()
        };
        if m.is_dir() {
            for e in fs::read_dir(&p).expect("readdir") {
                stack.push(e.expect("entry").path());
            }
        }
        out.push((
            p.strip_prefix(dir).expect("under").to_path_buf(),
            m.mode(),
            body,
        ));
    }
    out.sort();
    out
}

#[test]
fn a_file_edited_after_the_set_comes_back_with_bytes_mode_owner_times_xattr_and_acl() {
    let d = Daemon::start(Config::default());
    let live = d.live("data");
    let file = live.join("report.txt");
    fs::write(&file, b"the set's words\n").unwrap();
    sys::lchown(&file, 1234, 2345).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
    sys::lsetxattr(&file, "user.origin", b"set").unwrap();
    sys::lsetxattr(&file, "trusted.note", b"root only").unwrap();
    run("setfacl", &["-m", "u:nobody:r", file.to_str().unwrap()]);
    sys::set_mtime(&file, 1_700_000_000, 123_456_789).unwrap();
    let set = d.create_set();
    let in_set = d.browse(&set, "data").join("report.txt");
    let before = attrs(&in_set);
    assert!(
        before
            .xattrs
            .iter()
            .any(|(n, _)| n == b"system.posix_acl_access"),
        "the set holds the ACL: {before:?}"
    );

    fs::write(&file, b"edited later, and longer\n").unwrap();
    sys::lchown(&file, 0, 0).unwrap();
    run("setfacl", &["-b", file.to_str().unwrap()]);
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    sys::lsetxattr(&file, "user.origin", b"live").unwrap();
    sys::lremovexattr(&file, "trusted.note").unwrap();

    // By default the set's copy comes back beside the live file.
    let beside = live.join(format!("report.txt.restored-{}", set.name));
    let out = restore_ok(&d, &[&set.name, "data/report.txt"]);
    assert!(
        out.contains(&format!("restored {}", beside.display())),
        "{out}"
    );
    assert_eq!(attrs(&beside), before, "beside, as the set has it");
    assert_eq!(fs::read(&file).unwrap(), b"edited later, and longer\n");
    fs::remove_file(&beside).unwrap();

    // In place without --overwrite (--to its own directory): a conflict.
    let here = live.to_str().unwrap();
    let err = restore_fails(
        &d,
        &[&set.name, "data/report.txt", "--to", here],
        "a conflict",
    );
    assert!(err.contains("report.txt"), "{err}");
    assert_eq!(fs::read(&file).unwrap(), b"edited later, and longer\n");

    let out = restore_ok(&d, &[&set.name, "data/report.txt", "--overwrite"]);
    assert!(
        out.contains(&format!("restored {}", file.display())),
        "{out}"
    );
    // Attributes first: reading the file could move its atime.
    assert_eq!(attrs(&file), before, "live after the restore vs the set");
    assert_eq!(attrs(&d.backing("data").join("report.txt")), before);
    assert_eq!(fs::read(&file).unwrap(), b"the set's words\n");
    // No temporary file is left beside it.
    let names: Vec<_> = fs::read_dir(&live)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["report.txt"]);

    // Equal now: a second restore skips it.
    let out = restore_ok(&d, &[&set.name, "data/report.txt", "--to", here]);
    assert!(out.contains("skipped"), "{out}");
    assert_eq!(attrs(&file), before);
}

#[test]
fn a_deleted_tree_with_a_hard_link_pair_a_symlink_a_sparse_file_and_a_fifo_comes_back() {
    let d = Daemon::start(Config::default());
    let live = d.live("data");
    let top = live.join("project");
    fs::create_dir_all(top.join("src/deep")).unwrap();
    fs::write(top.join("src/main.rs"), b"fn main() {}\n").unwrap();
    fs::write(top.join("src/deep/a"), b"linked").unwrap();
    fs::hard_link(top.join("src/deep/a"), top.join("b")).unwrap();
    symlink("/etc/passwd", top.join("outside")).unwrap();
    symlink("src/main.rs", top.join("inside")).unwrap();
    sys::mknod_fifo(&top.join("pipe"), 0o640).unwrap();
    let sparse = fs::File::create(top.join("sparse")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    {
        use std::os::unix::fs::FileExt;
        sparse.write_all_at(b"middle", 32 << 20).unwrap();
    }
    drop(sparse);
    fs::set_permissions(top.join("src"), fs::Permissions::from_mode(0o750)).unwrap();
    run(
        "setfacl",
        &["-d", "-m", "u:nobody:rx", top.join("src").to_str().unwrap()],
    );
    sys::set_mtime(&top.join("src"), 1_600_000_000, 0).unwrap();
    let set = d.create_set();
    let in_set = d.browse(&set, "data").join("project");
    let want = tree(&in_set);
    let want_src = attrs(&in_set.join("src"));
    assert!(
        want_src
            .xattrs
            .iter()
            .any(|(n, _)| n == b"system.posix_acl_default"),
        "the set holds the default ACL: {want_src:?}"
    );

    fs::remove_dir_all(&top).unwrap();
    let out = restore_ok(&d, &["latest", top.to_str().unwrap(), "--overwrite"]);
    assert!(out.contains("restored"), "{out}");
    assert_eq!(
        attrs(&top.join("src")),
        want_src,
        "directory mode and times after its entries"
    );
    assert_eq!(tree(&top), want);
    let a = fs::metadata(top.join("src/deep/a")).unwrap();
    let b = fs::metadata(top.join("b")).unwrap();
    assert_eq!(
        (a.ino(), a.nlink()),
        (b.ino(), 2),
        "one inode, linked twice"
    );
    assert_eq!(
        fs::read_link(top.join("outside")).unwrap(),
        Path::new("/etc/passwd"),
        "the link itself, not what it points at"
    );
    assert!(
        fs::symlink_metadata(top.join("pipe"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let sparse = fs::metadata(top.join("sparse")).unwrap();
    assert_eq!(sparse.len(), 64 << 20);
    assert!(
        sparse.blocks() * 512 < 1 << 20,
        "holes stay holes: {} blocks",
        sparse.blocks()
    );
    let bytes = fs::read(top.join("sparse")).unwrap();
    assert_eq!(&bytes[32 << 20..(32 << 20) + 6], b"middle");
}

#[test]
fn a_conflict_without_overwrite_and_a_dry_run_change_nothing() {
    let d = Daemon::start(Config::default());
    let dir = d.live("data").join("dir");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("same"), b"same").unwrap();
    fs::write(dir.join("differs"), b"old").unwrap();
    fs::write(dir.join("gone"), b"deleted later").unwrap();
    let set = d.create_set();
    fs::write(dir.join("differs"), b"new").unwrap();
    fs::remove_file(dir.join("gone")).unwrap();
    fs::write(dir.join("only-live"), b"born after the set").unwrap();
    let before = tree(&dir);

    let root = d.live("data");
    let err = restore_fails(
        &d,
        &[&set.name, "data/dir", "--to", root.to_str().unwrap()],
        "a conflict",
    );
    assert!(
        err.contains(&dir.join("differs").display().to_string()),
        "{err}"
    );
    assert!(!err.contains("same"), "{err}");
    assert_eq!(
        tree(&dir),
        before,
        "nothing restored, not even the missing file"
    );

    let out = restore_ok(&d, &[&set.name, "data/dir", "--overwrite", "--dry-run"]);
    assert!(
        out.contains(&format!("would restore {}", dir.join("differs").display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("would restore {}", dir.join("gone").display())),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "skipped {} (unchanged)",
            dir.join("same").display()
        )),
        "{out}"
    );
    assert_eq!(tree(&dir), before, "a dry run changes nothing");

    let json: Value = serde_json::from_str(&restore_ok(
        &d,
        &[&set.name, "data/dir", "--overwrite", "--json"],
    ))
    .unwrap();
    assert_eq!(json["totals"]["restored"], 2, "{json}");
    assert_eq!(json["totals"]["skipped"], 1, "{json}");
    assert_eq!(json["set"]["name"], set.name.as_str());
    assert_eq!(fs::read(dir.join("differs")).unwrap(), b"old");
    assert_eq!(fs::read(dir.join("gone")).unwrap(), b"deleted later");
    assert_eq!(
        fs::read(dir.join("only-live")).unwrap(),
        b"born after the set",
        "restore is not a rollback"
    );
}

#[test]
fn keep_newer_keeps_the_newer_live_file_and_replaces_the_older() {
    let d = Daemon::start(Config::default());
    let dir = d.live("data").join("k");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("newer"), b"set").unwrap();
    fs::write(dir.join("older"), b"set").unwrap();
    sys::set_mtime(&dir.join("newer"), 1_700_000_000, 0).unwrap();
    sys::set_mtime(&dir.join("older"), 1_700_000_000, 0).unwrap();
    let set = d.create_set();
    fs::write(dir.join("newer"), b"live, newer").unwrap();
    sys::set_mtime(&dir.join("newer"), 1_800_000_000, 0).unwrap();
    fs::write(dir.join("older"), b"live, older").unwrap();
    sys::set_mtime(&dir.join("older"), 1_600_000_000, 0).unwrap();
    let out = restore_ok(&d, &[&set.name, "data/k", "--keep-newer"]);
    assert!(
        out.contains(&format!(
            "kept {} (newer live)",
            dir.join("newer").display()
        )),
        "{out}"
    );
    assert_eq!(fs::read(dir.join("newer")).unwrap(), b"live, newer");
    assert_eq!(fs::read(dir.join("older")).unwrap(), b"set");
    assert!(
        d.umbra(&["restore", &set.name, "x", "--keep-newer", "--overwrite"])
            .status
            .code()
            == Some(2),
        "the two policies exclude each other"
    );
}

#[test]
fn to_dir_restores_outside_the_volume_and_missing_parents_come_back() {
    let d = Daemon::start(Config::default());
    let live = d.live("data");
    fs::create_dir_all(live.join("a/b")).unwrap();
    fs::set_permissions(live.join("a"), fs::Permissions::from_mode(0o711)).unwrap();
    fs::write(live.join("a/b/file"), b"content").unwrap();
    let set = d.create_set();
    let out_dir = d.scratch("out");
    restore_ok(
        &d,
        &[&set.name, "data/a/b", "--to", out_dir.to_str().unwrap()],
    );
    assert_eq!(fs::read(out_dir.join("b/file")).unwrap(), b"content");
    assert!(live.join("a/b/file").exists(), "the live file is untouched");

    fs::remove_dir_all(live.join("a")).unwrap();
    // Named from inside the set, relative to the working directory there.
    let mut cmd = common::umbra_cmd();
    cmd.current_dir(d.browse(&set, "data").join("a"))
        .args(["restore", "--socket"])
        .arg(d.root().join("umbra.sock"))
        .args([&set.name, "b/file", "--overwrite"]);
    let out = common::run_with_timeout(&mut cmd, common::CLIENT_TIMEOUT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(live.join("a/b/file")).unwrap(), b"content");
    assert_eq!(
        fs::metadata(live.join("a")).unwrap().mode() & 0o7777,
        0o711,
        "a missing parent is created with the set's mode"
    );
    // Two spellings of one path: restored once.
    fs::remove_file(live.join("a/b/file")).unwrap();
    let abs = live.join("a/b/file");
    let out = restore_ok(
        &d,
        &[
            &set.name,
            "data/a/b/file",
            abs.to_str().unwrap(),
            "--overwrite",
        ],
    );
    assert_eq!(
        out.lines().filter(|l| l.starts_with("restored ")).count(),
        1,
        "{out}"
    );
}

#[test]
fn paths_that_escape_the_volume_are_refused_and_nothing_is_written() {
    let d = Daemon::start(Config::volumes(&["data", "logs"]));
    let live = d.live("data");
    fs::create_dir(live.join("dir")).unwrap();
    fs::write(live.join("dir/f"), b"f").unwrap();
    symlink("/etc", live.join("etc-link")).unwrap();
    symlink("../logs", live.join("logs-link")).unwrap();
    let set = d.create_set();
    fs::remove_dir_all(live.join("dir")).unwrap();
    let before = tree(&live);
    let escapes: [(&str, &str); 6] = [
        ("data/../logs/x", "`..`"),
        ("data/dir/../../../etc/passwd", "`..`"),
        ("/etc/passwd", "an absolute path outside"),
        ("data/etc-link/passwd", "a symlink in the set"),
        ("data/logs-link/x", "a symlink in the set"),
        ("nosuchvolume/f", "an unknown volume"),
    ];
    for (path, why) in escapes {
        let err = restore_fails(&d, &[&set.name, path], why);
        assert!(!err.is_empty(), "{path}");
        if why == "a symlink in the set" {
            assert!(err.contains("symlink"), "{path}: {err}");
        }
    }
    assert!(fs::read_dir(d.live("logs")).unwrap().next().is_none());
    assert_eq!(tree(&live), before, "nothing written");
    let err = restore_fails(&d, &["no-such-set", "data/dir"], "an unknown set");
    assert!(err.contains("no-such-set"), "{err}");
    let err = restore_fails(&d, &[&set.name, "data/not-there"], "a path not in the set");
    assert!(err.contains("not in shadow copy set"), "{err}");
    // Nor is a symlink live: a parent that became one is refused, and
    // one inside a restored tree is replaced (--overwrite), not followed.
    let outside = d.scratch("outside");
    symlink(&outside, live.join("dir")).unwrap();
    let err = restore_fails(&d, &[&set.name, "data/dir/f"], "a symlink live");
    assert!(err.contains("symlink"), "{err}");
    restore_fails(
        &d,
        &[&set.name, "data/dir", "--to", live.to_str().unwrap()],
        "a symlink live where the set has a directory",
    );
    assert!(
        fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing written through it"
    );
    restore_ok(&d, &[&set.name, "data/dir", "--overwrite"]);
    assert_eq!(fs::read(live.join("dir/f")).unwrap(), b"f");
    assert!(fs::symlink_metadata(live.join("dir")).unwrap().is_dir());
    assert!(
        fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing written through it"
    );
    // The link itself may be restored: it is not followed.
    fs::remove_file(live.join("etc-link")).unwrap();
    restore_ok(&d, &[&set.name, "data/etc-link", "--overwrite"]);
    assert_eq!(
        fs::read_link(live.join("etc-link")).unwrap(),
        Path::new("/etc")
    );
}

/// `umbra restore ARGS` as nobody (with the socket's group).
fn restore_as_nobody(d: &Daemon, args: &[&str]) -> Output {
    let mut cmd = Command::new(common::umbra_bin());
    cmd.current_dir(d.root())
        .arg("restore")
        .arg("--socket")
        .arg(d.root().join("umbra.sock"))
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY);
    common::run_with_timeout(&mut cmd, common::CLIENT_TIMEOUT)
}

/// Whether nobody may read `path` natively (the same test through `cat`).
fn nobody_reads_natively(path: &Path) -> bool {
    Command::new("cat")
        .arg(path)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("cat")
        .status
        .success()
}

#[test]
fn as_nobody_what_nobody_could_not_read_or_cannot_write_is_refused_and_its_own_file_restores() {
    let d = Daemon::start(Config::default().line("socket_group = \"nogroup\""));
    open_the_way(d.root());
    let live = d.live("data");
    fs::set_permissions(&live, fs::Permissions::from_mode(0o755)).unwrap();
    let secret = live.join("secret");
    fs::write(&secret, b"root's").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let mine = live.join("mine");
    fs::create_dir(&mine).unwrap();
    fs::write(mine.join("notes"), b"nobody's notes").unwrap();
    sys::lchown(&mine, NOBODY, NOBODY).unwrap();
    sys::lchown(&mine.join("notes"), NOBODY, NOBODY).unwrap();
    fs::write(live.join("public"), b"readable by all").unwrap();
    let set = d.create_set();
    fs::remove_file(&secret).unwrap();
    fs::remove_file(live.join("public")).unwrap();
    fs::write(mine.join("notes"), b"edited").unwrap();

    // Natively, nobody could not read it either.
    let native = d.scratch("native");
    fs::write(native.join("secret"), b"x").unwrap();
    fs::set_permissions(native.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    open_the_way(&native);
    assert!(!nobody_reads_natively(&native.join("secret")));

    let out = restore_as_nobody(&d, &[&set.name, "data/secret"]);
    let err = common::assert_one_line_error(&out, "nobody restores root's 0600 file");
    assert!(
        err.contains("reading in the set") && err.contains("Permission denied"),
        "{err}"
    );
    assert!(!secret.exists(), "nothing written");

    // Readable, but the live directory (root's, 0755) is not nobody's to write in.
    let out = restore_as_nobody(&d, &[&set.name, "data/public"]);
    let err = common::assert_one_line_error(&out, "nobody writes into root's directory");
    assert!(
        err.contains("writing into") && err.contains("Permission denied"),
        "{err}"
    );
    assert!(!live.join("public").exists(), "nothing written");
    let native_dir = native.join("roots");
    fs::create_dir(&native_dir).unwrap();
    let native_write = Command::new("touch")
        .arg(native_dir.join("x"))
        .uid(NOBODY)
        .gid(NOBODY)
        .status()
        .unwrap();
    assert!(!native_write.success(), "natively refused as well");

    let out = restore_as_nobody(&d, &[&set.name, "data/mine/notes", "--overwrite"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        attrs(&mine.join("notes")),
        attrs(&d.browse(&set, "data").join("mine/notes"))
    );
    let m = fs::metadata(mine.join("notes")).unwrap();
    assert_eq!((m.uid(), m.gid()), (NOBODY, NOBODY));
    assert_eq!(fs::read(mine.join("notes")).unwrap(), b"nobody's notes");
}

/// An exec writer on `data` that logs `EVENT SUCCEEDED` and exits `code`
/// at pre-restore.
fn exec_writer(d_root: &Path, log: &Path, pre_restore_exit: i32) -> String {
    let hook = d_root.join("hook.sh");
    fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$1 ${{UMBRA_BACKUP_SUCCEEDED:--}} $UMBRA_SET_NAME\" >> {}\n\
             [ \"$1\" = pre-restore ] && exit {pre_restore_exit}\nexit 0\n",
            log.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "[[writer]]\nname = \"hook\"\nvolumes = [\"data\"]\nexec = \"{}\"\ntimeout_secs = 10\nrequired = true",
        hook.display()
    )
}

fn restore_events(log: &Path) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("restore"))
        .map(str::to_string)
        .collect()
}

#[test]
fn an_exec_writer_hears_pre_and_post_restore_and_its_refusal_stops_the_restore() {
    for (exit, ok) in [(0, true), (1, false)] {
        let hooks = tempfile::tempdir().unwrap();
        let log = hooks.path().join("log");
        let d = Daemon::start(Config::default().line(&exec_writer(hooks.path(), &log, exit)));
        let file = d.live("data").join("f");
        fs::write(&file, b"set").unwrap();
        let set = d.create_set();
        fs::remove_file(&file).unwrap();
        let out = d.umbra(&["restore", &set.name, "data/f", "--overwrite"]);
        if ok {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(fs::read(&file).unwrap(), b"set");
            assert_eq!(
                restore_events(&log),
                [
                    format!("pre-restore - {}", set.name),
                    format!("post-restore 1 {}", set.name)
                ]
            );
        } else {
            let err = common::assert_one_line_error(&out, "a writer refuses pre-restore");
            assert!(err.contains("hook") && err.contains("pre-restore"), "{err}");
            assert!(!file.exists(), "nothing written");
            assert_eq!(
                restore_events(&log),
                [format!("pre-restore - {}", set.name)]
            );
        }
        // A restore that fails after pre-restore tells the writer so.
        if ok {
            let err = restore_fails(&d, &[&set.name, "data/nope"], "a path not in the set");
            assert!(err.contains("nope"), "{err}");
            let events = restore_events(&log);
            assert_eq!(
                events[2..],
                [
                    format!("pre-restore - {}", set.name),
                    format!("post-restore 0 {}", set.name)
                ]
            );
            // --to outside every volume concerns no writer; --to inside
            // one concerns its writers.
            let outside = d.scratch("elsewhere");
            restore_ok(
                &d,
                &[&set.name, "data/f", "--to", outside.to_str().unwrap()],
            );
            assert_eq!(fs::read(outside.join("f")).unwrap(), b"set");
            assert_eq!(restore_events(&log).len(), 4);
            let inside = d.live("data").join("copies");
            fs::create_dir(&inside).unwrap();
            restore_ok(&d, &[&set.name, "data/f", "--to", inside.to_str().unwrap()]);
            assert_eq!(fs::read(inside.join("f")).unwrap(), b"set");
            assert_eq!(restore_events(&log).len(), 6);
        }
    }
}

#[test]
fn a_client_that_hangs_up_mid_restore_is_a_failed_restore_for_the_writers() {
    use std::io::{BufRead, BufReader, Write};
    let hooks = tempfile::tempdir().unwrap();
    let log = hooks.path().join("log");
    let d = Daemon::start(Config::default().line(&exec_writer(hooks.path(), &log, 0)));
    let set = d.create_set();
    let mut stream = std::os::unix::net::UnixStream::connect(d.root().join("umbra.sock")).unwrap();
    writeln!(
        stream,
        "{{\"op\":\"restore\",\"set\":\"{}\",\"volumes\":[\"data\"]}}",
        set.name
    )
    .unwrap();
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).unwrap();
    assert!(answer.starts_with("{\"ok\""), "{answer}");
    assert_eq!(
        restore_events(&log),
        [format!("pre-restore - {}", set.name)]
    );
    let err = common::assert_one_line_error(&d.umbra(&["create"]), "a set during a restore");
    assert!(err.contains("a restore is running"), "{err}");
    drop(stream);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while restore_events(&log).len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        restore_events(&log),
        [
            format!("pre-restore - {}", set.name),
            format!("post-restore 0 {}", set.name)
        ]
    );
    // And sets are made again, once the daemon has put its writers back
    // (just after the hook's last line).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while let Err(e) = d.try_create_set() {
        assert!(std::time::Instant::now() < deadline, "{e}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn an_interrupted_restore_leaves_whole_files_no_temporary_ones_and_tells_the_writers() {
    let hooks = tempfile::tempdir().unwrap();
    let log = hooks.path().join("log");
    let d = Daemon::start(Config::default().line(&exec_writer(hooks.path(), &log, 0)));
    let many = d.live("data").join("many");
    fs::create_dir(&many).unwrap();
    let body = |i: usize| format!("file {i} ").repeat(100 + i % 50);
    for i in 0..3000 {
        fs::write(many.join(format!("f{i:04}")), body(i)).unwrap();
    }
    let set = d.create_set();
    fs::remove_dir_all(&many).unwrap();
    let mut cmd = common::umbra_cmd();
    cmd.current_dir(d.root())
        .args(["restore", "--socket"])
        .arg(d.root().join("umbra.sock"))
        .args([&set.name, "data/many", "--overwrite"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while fs::read_dir(&many).map_or(0, |r| r.count()) < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "the restore never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SAFETY: the child's pid, which this test has not reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = common::assert_one_line_error(&out, "an interrupted restore");
    assert!(err.contains("interrupted"), "{err}");
    let names: Vec<String> = fs::read_dir(&many)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.len() < 3000,
        "stopped before the end: {}",
        names.len()
    );
    for name in &names {
        assert!(name.starts_with('f'), "a temporary file was left: {name}");
        let i: usize = name[1..].parse().unwrap();
        assert_eq!(
            fs::read_to_string(many.join(name)).unwrap(),
            body(i),
            "{name} is whole"
        );
    }
    assert_eq!(
        restore_events(&log),
        [
            format!("pre-restore - {}", set.name),
            format!("post-restore 0 {}", set.name)
        ]
    );
}

#[test]
fn a_file_restored_into_a_directory_with_a_default_acl_gets_the_sets_acl_not_the_inherited_one() {
    let d = Daemon::start(Config::default());
    let dir = d.live("data").join("shared");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("plain"), b"no acl of its own").unwrap();
    fs::set_permissions(dir.join("plain"), fs::Permissions::from_mode(0o600)).unwrap();
    sys::mknod_fifo(&dir.join("pipe"), 0o600).unwrap();
    // The default ACL comes after them: they have none.
    run(
        "setfacl",
        &["-d", "-m", "u:nobody:rwx", dir.to_str().unwrap()],
    );
    let set = d.create_set();
    let browse = d.browse(&set, "data").join("shared");
    let (plain, pipe) = (attrs(&browse.join("plain")), attrs(&browse.join("pipe")));
    assert!(
        plain.xattrs.is_empty() && pipe.xattrs.is_empty(),
        "{plain:?} {pipe:?}"
    );
    fs::remove_file(dir.join("plain")).unwrap();
    fs::remove_file(dir.join("pipe")).unwrap();
    restore_ok(
        &d,
        &[
            &set.name,
            "data/shared/plain",
            "data/shared/pipe",
            "--overwrite",
        ],
    );
    assert_eq!(
        attrs(&dir.join("plain")),
        plain,
        "nobody gets no access the set's file did not give"
    );
    assert_eq!(attrs(&dir.join("pipe")), pipe);
}

#[test]
fn a_hard_link_whose_other_name_is_unchanged_live_is_linked_to_it() {
    let d = Daemon::start(Config::default());
    let dir = d.live("data").join("pair");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("a"), b"one inode").unwrap();
    fs::hard_link(dir.join("a"), dir.join("b")).unwrap();
    let set = d.create_set();
    fs::remove_file(dir.join("b")).unwrap();
    let out = restore_ok(&d, &[&set.name, "data/pair", "--overwrite"]);
    assert!(
        out.contains(&format!("skipped {} (unchanged)", dir.join("a").display())),
        "{out}"
    );
    let (a, b) = (
        fs::metadata(dir.join("a")).unwrap(),
        fs::metadata(dir.join("b")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
}

#[test]
fn by_default_a_tree_comes_back_beside_the_live_one_which_is_untouched() {
    let d = Daemon::start(Config::default());
    let dir = d.live("data").join("dir");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("a"), b"old a").unwrap();
    fs::write(dir.join("b"), b"old b").unwrap();
    let set = d.create_set();
    fs::write(dir.join("a"), b"new a").unwrap();
    fs::remove_file(dir.join("b")).unwrap();
    let live_before = tree(&dir);

    let out = restore_ok(&d, &[&set.name, "data/dir"]);
    let beside = d.live("data").join(format!("dir.restored-{}", set.name));
    assert!(
        out.contains(&format!("restored {}", beside.join("a").display())),
        "{out}"
    );
    assert_eq!(tree(&dir), live_before, "the live tree is untouched");
    assert_eq!(fs::read(beside.join("a")).unwrap(), b"old a");
    assert_eq!(fs::read(beside.join("b")).unwrap(), b"old b");
    // Again: the copy beside is equal, nothing to do.
    let out = restore_ok(&d, &[&set.name, "data/dir"]);
    assert!(!out.lines().any(|l| l.starts_with("restored ")), "{out}");
    // Changed since: a conflict, nothing written.
    fs::write(beside.join("a"), b"edited copy").unwrap();
    let err = restore_fails(&d, &[&set.name, "data/dir"], "a changed copy beside");
    assert!(err.contains("dir.restored-"), "{err}");
    assert_eq!(fs::read(beside.join("a")).unwrap(), b"edited copy");
}

#[test]
fn a_long_restore_shows_progress_on_a_terminal_and_nothing_in_a_pipe() {
    let d = Daemon::start(Config::default());
    let big = d.live("data").join("big");
    fs::write(&big, vec![7u8; 64 << 20]).unwrap();
    let set = d.create_set();
    fs::remove_file(&big).unwrap();
    // script(1) gives the command a terminal: the bar is drawn on it.
    let line = format!(
        "{} restore --socket {} {} data/big --overwrite",
        common::umbra_bin().display(),
        d.layout.socket.display(),
        set.name
    );
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .current_dir(d.root())
        .output()
        .unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{seen}");
    assert!(seen.contains("64.00 MiB"), "no progress bar: {seen:?}");
    assert_eq!(fs::metadata(&big).unwrap().len(), 64 << 20);
    // In a pipe: the lines only, no bar on stderr.
    fs::remove_file(&big).unwrap();
    let out = d.umbra(&["restore", &set.name, "data/big", "--overwrite"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("MiB"), "a bar in a pipe: {err:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("restored "));
}
