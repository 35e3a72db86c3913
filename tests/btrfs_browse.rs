//! The snapshot browser over btrfs volumes (issue 12): a set's btrfs
//! snapshot shows at `/snapshots/<set>/<volume>/` beside the copy-on-write
//! volumes, read-only, equal to the snapshot read natively at
//! `<backing>/.umbra/<id>` (bytes, modes, owners, times to the nanosecond,
//! xattrs and ACLs, symlink targets, link counts, holes), with nobody seeing
//! only what nobody may see natively, and the daemon's descriptors bounded.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::sys::{self, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER, ACL_USER, ACL_USER_OBJ};
use common::{Config, Daemon, NOBODY, SetJson, open_the_way};

fn mixed() -> Daemon {
    Daemon::start(Config::empty().volume("data").btrfs("vault"))
}

/// The set's snapshot as btrfs shows it natively.
fn image(d: &Daemon, set: &SetJson) -> PathBuf {
    d.live("vault").join(".umbra").join(set.id.to_string())
}

fn chown(path: &Path, uid: u32, gid: u32) {
    sys::lchown(path, uid, gid).unwrap_or_else(|e| panic!("chown {}: {e:?}", path.display()));
}

fn set_times(path: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    let c = sys::cstr(path);
    let times = [
        libc::timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ];
    // SAFETY: a valid path and two timespecs.
    let ret = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(ret, 0, "utimensat {}", path.display());
}

/// Where data and holes alternate in `path`: every SEEK_DATA / SEEK_HOLE
/// answer from the start to the end.
fn extents(path: &Path) -> Vec<(i64, i64)> {
    let file = File::open(path).expect("open for seeks");
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        // SAFETY: lseek on a descriptor we hold.
        let data = unsafe { libc::lseek64(file.as_raw_fd(), at, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek64(file.as_raw_fd(), data, libc::SEEK_HOLE) };
        assert!(hole > data, "SEEK_HOLE after {data} in {}", path.display());
        out.push((data, hole));
        at = hole;
    }
    out
}

/// Everything the browser promises about one path, from lstat and the
/// path itself (never following a symlink); the inode number only as the
/// first path that shares it (numbers differ, links must not).
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    blocks: u64,
    nlink: u64,
    rdev: u64,
    atime: (i64, i64),
    mtime: (i64, i64),
    ctime: (i64, i64),
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    target: Option<PathBuf>,
    bytes: Option<blake3::Hash>,
    extents: Option<Vec<(i64, i64)>>,
    entries: Option<Vec<String>>,
    same_inode_as: PathBuf,
}

/// Walks `root` (skipping `skip` at its top) into path -> what it shows.
fn walk(root: &Path, skip: &[&str]) -> BTreeMap<PathBuf, Seen> {
    let mut out = BTreeMap::new();
    let mut first_of: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let path = root.join(&rel);
        let md = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {path:?}: {e}"));
        let same_inode_as = first_of.entry(md.ino()).or_insert(rel.clone()).clone();
        let mut xattrs = BTreeMap::new();
        for name in sys::llistxattr(&path).unwrap_or_else(|e| panic!("{path:?}: {e:?}")) {
            let value = sys::lgetxattr(&path, &name).expect("lgetxattr");
            xattrs.insert(name, value);
        }
        let ft = md.file_type();
        let mut entries = None;
        if ft.is_dir() {
            let mut names: Vec<String> = fs::read_dir(&path)
                .expect("read_dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .filter(|n| !(rel.as_os_str().is_empty() && skip.contains(&n.as_str())))
                .collect();
            names.sort();
            for n in &names {
                todo.push(rel.join(n));
            }
            entries = Some(names);
        }
        let (bytes, extents) = if ft.is_file() {
            let mut all = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut all))
                .unwrap_or_else(|e| panic!("read {path:?}: {e}"));
            (Some(blake3::hash(&all)), Some(self::extents(&path)))
        } else {
            (None, None)
        };
        out.insert(
            rel,
            Seen {
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                size: md.size(),
                blocks: md.blocks(),
                nlink: md.nlink(),
                rdev: md.rdev(),
                atime: (md.atime(), md.atime_nsec()),
                mtime: (md.mtime(), md.mtime_nsec()),
                ctime: (md.ctime(), md.ctime_nsec()),
                xattrs,
                target: ft
                    .is_symlink()
                    .then(|| fs::read_link(&path).expect("readlink")),
                bytes,
                extents,
                entries,
                same_inode_as,
            },
        );
    }
    out
}

fn assert_same_tree(native: &Path, browsed: &Path) {
    let expected = walk(native, &[".umbra"]);
    let actual = walk(browsed, &[]);
    let names: Vec<_> = expected.keys().collect();
    assert_eq!(names, actual.keys().collect::<Vec<_>>(), "the same paths");
    for (rel, want) in &expected {
        assert_eq!(Some(want), actual.get(rel), "{}", rel.display());
    }
}

/// A tree with something of everything a snapshot must keep.
fn populate(vault: &Path) {
    fs::write(vault.join("plain"), b"plain bytes").expect("write");
    let big: Vec<u8> = (0..3 << 20)
        .map(|i: u32| (i * 7 + i / 4096) as u8)
        .collect();
    fs::write(vault.join("big"), &big).expect("write big");
    File::create(vault.join("empty")).expect("create empty");
    fs::create_dir_all(vault.join("dir/deeper")).expect("mkdir");
    fs::write(vault.join("dir/deeper/leaf"), b"leaf").expect("write leaf");
    fs::set_permissions(vault.join("dir"), fs::Permissions::from_mode(0o750)).expect("chmod");
    chown(&vault.join("dir"), 1234, 5678);
    fs::write(vault.join("dir/owned"), b"owned").expect("write");
    chown(&vault.join("dir/owned"), 4321, 8765);
    fs::set_permissions(vault.join("dir/owned"), fs::Permissions::from_mode(0o4640))
        .expect("chmod setuid");
    fs::hard_link(vault.join("plain"), vault.join("dir/link to plain")).expect("link");
    symlink("../plain", vault.join("dir/to plain")).expect("symlink");
    symlink("/nowhere/at/all", vault.join("dangling")).expect("symlink");
    chown(&vault.join("dangling"), 77, 88);
    sys::mknod_fifo(&vault.join("fifo"), 0o640).expect("mkfifo");
    sys::lsetxattr(&vault.join("plain"), "user.colour", b"blue").expect("xattr");
    sys::lsetxattr(&vault.join("dir"), "user.empty", b"").expect("xattr");
    let acl = sys::posix_acl(&[
        (ACL_USER_OBJ, 6, 0),
        (ACL_USER, 4, 1000),
        (ACL_GROUP_OBJ, 4, 0),
        (ACL_MASK, 4, 0),
        (ACL_OTHER, 0, 0),
    ]);
    sys::lsetxattr(&vault.join("big"), "system.posix_acl_access", &acl).expect("acl");
    // A sparse file: holes at both ends and between two runs of data.
    let sparse = File::create(vault.join("sparse")).expect("create sparse");
    sparse.set_len(64 << 20).expect("size sparse");
    use std::os::unix::fs::FileExt;
    sparse.write_all_at(&[1u8; 8192], 16 << 20).expect("write");
    sparse.write_all_at(&[2u8; 4096], 40 << 20).expect("write");
    sparse.sync_all().expect("sync");
    set_times(
        &vault.join("dir/deeper/leaf"),
        (1_234_567_890, 123_456_789),
        (987_654_321, 987_654_321),
    );
    set_times(
        &vault.join("dir/to plain"),
        (1_000_000_001, 1),
        (1_000_000_002, 999_999_999),
    );
}

#[test]
fn a_btrfs_set_browsed_equals_its_snapshot_natively_beside_the_cow_volume() {
    let d = mixed();
    let vault = d.live("vault");
    populate(&vault);
    fs::write(d.live("data").join("notes"), b"cow").expect("write live");
    let set = d.create_set();
    let set_dir = d.snapshots().join(&set.name);
    let mut shown: Vec<_> = fs::read_dir(&set_dir)
        .expect("ls set")
        .map(|e| e.expect("entry").file_name())
        .collect();
    shown.sort();
    assert_eq!(shown, ["data", "vault"], "both volumes beside each other");
    assert_eq!(
        fs::read(d.browse(&set, "data").join("notes")).expect("cow read"),
        b"cow"
    );

    let browsed = d.browse(&set, "vault");
    assert_same_tree(&image(&d, &set), &browsed);
    // The nested subvolume's placeholder is hidden, by lookup too.
    let err = fs::symlink_metadata(browsed.join(".umbra")).expect_err(".umbra hidden");
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    // Hard links share a number within the set; the sparse file kept its
    // holes (two runs of data in 64 MiB).
    let plain = fs::metadata(browsed.join("plain")).expect("stat");
    let link = fs::metadata(browsed.join("dir/link to plain")).expect("stat");
    assert_eq!((plain.ino(), plain.nlink()), (link.ino(), 2));
    let holes = extents(&browsed.join("sparse"));
    assert_eq!(holes.len(), 2, "{holes:?}");
    assert!(fs::metadata(browsed.join("sparse")).expect("stat").blocks() < 1024);

    // `latest` reaches the same tree; a second set has its own numbers.
    let via_latest = d.snapshots().join("latest").join("vault");
    assert_eq!(
        fs::read(via_latest.join("dir/deeper/leaf")).expect("read"),
        b"leaf"
    );
    let second = d.create_set();
    let again = fs::metadata(d.browse(&second, "vault").join("plain")).expect("stat");
    assert_ne!(again.ino(), plain.ino(), "no false hard links across sets");
    assert_eq!(
        fs::read(d.snapshots().join("latest/vault/plain")).expect("read"),
        b"plain bytes"
    );
    assert_same_tree(&image(&d, &second), &d.browse(&second, "vault"));
    // Every file above was read by the kernel from the snapshot itself.
    let log = d.stderr();
    assert!(
        log.contains("read by FUSE passthrough") && !log.contains("through the daemon"),
        "{log}"
    );
}

#[test]
fn every_write_to_a_btrfs_set_is_erofs() {
    let d = mixed();
    let vault = d.live("vault");
    fs::write(vault.join("file"), b"old").expect("write");
    fs::create_dir(vault.join("dir")).expect("mkdir");
    let set = d.create_set();
    let browsed = d.browse(&set, "vault");
    let erofs = |what: &str, r: std::io::Result<()>| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs(
        "open for writing",
        fs::OpenOptions::new()
            .write(true)
            .open(browsed.join("file"))
            .map(drop),
    );
    erofs("create", File::create(browsed.join("new")).map(drop));
    erofs("mkdir", fs::create_dir(browsed.join("newdir")));
    erofs("unlink", fs::remove_file(browsed.join("file")));
    erofs("rmdir", fs::remove_dir(browsed.join("dir")));
    erofs(
        "rename",
        fs::rename(browsed.join("file"), browsed.join("moved")),
    );
    erofs(
        "chmod",
        fs::set_permissions(browsed.join("file"), fs::Permissions::from_mode(0o600)),
    );
    erofs("symlink", symlink("file", browsed.join("link")));
    erofs(
        "setxattr",
        sys::lsetxattr(&browsed.join("file"), "user.x", b"1")
            .map_err(std::io::Error::from_raw_os_error),
    );
    assert_eq!(fs::read(browsed.join("file")).expect("read"), b"old");
}

#[test]
fn a_btrfs_file_changed_after_the_set_still_reads_its_old_bytes() {
    let d = mixed();
    let vault = d.live("vault");
    let old: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    fs::write(vault.join("ledger"), &old).expect("write");
    fs::write(vault.join("doomed"), b"doomed").expect("write");
    let set = d.create_set();
    let browsed = d.browse(&set, "vault");
    // Read once before the change, so cached pages could lie afterwards.
    assert_eq!(fs::read(browsed.join("ledger")).expect("read"), old);
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new()
            .write(true)
            .open(vault.join("ledger"))
            .expect("open live");
        f.write_all_at(b"NEW BYTES", 4096)
            .expect("overwrite in place");
        f.set_len(100).expect("truncate");
    }
    fs::remove_file(vault.join("doomed")).expect("rm");
    assert_eq!(fs::read(browsed.join("ledger")).expect("read"), old);
    assert_eq!(
        mapped(&browsed.join("ledger")),
        old,
        "mmap passes through too"
    );
    assert_eq!(fs::read(browsed.join("doomed")).expect("read"), b"doomed");
    let later = d.create_set();
    let now = d.browse(&later, "vault");
    assert_eq!(fs::metadata(now.join("ledger")).expect("stat").len(), 100);
    assert!(!now.join("doomed").exists());
}

/// The bytes of `path` read through a shared read-only mapping.
fn mapped(path: &Path) -> Vec<u8> {
    let file = File::open(path).expect("open to map");
    let len = file.metadata().expect("stat").len() as usize;
    // SAFETY: a fresh read-only mapping of a file we hold open, copied out
    // and unmapped before it goes.
    unsafe {
        let at = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(at, libc::MAP_FAILED, "mmap {}", path.display());
        let bytes = std::slice::from_raw_parts(at.cast::<u8>(), len).to_vec();
        libc::munmap(at, len);
        bytes
    }
}

/// Whether nobody's `cmd ARGS... path` succeeds (setpriv, no groups).
fn nobody_can(cmd: &str, args: &[&str], path: &Path) -> bool {
    Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            cmd,
        ])
        .args(args)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("setpriv {cmd}: {e}"))
        .status
        .success()
}

#[test]
fn nobody_sees_in_a_btrfs_set_what_nobody_may_see_natively() {
    let d = mixed();
    let vault = d.live("vault");
    open_the_way(&vault);
    open_the_way(d.snapshots());
    let mode = |p: &str, m: u32| {
        fs::set_permissions(vault.join(p), fs::Permissions::from_mode(m)).expect("chmod")
    };
    fs::create_dir(vault.join("private")).expect("mkdir");
    fs::write(vault.join("private/secret"), b"s").expect("write");
    mode("private/secret", 0o644);
    mode("private", 0o700);
    fs::create_dir(vault.join("blind")).expect("mkdir");
    fs::write(vault.join("blind/known"), b"k").expect("write");
    mode("blind/known", 0o644);
    mode("blind", 0o711);
    fs::write(vault.join("open"), b"o").expect("write");
    mode("open", 0o644);
    fs::write(vault.join("closed"), b"c").expect("write");
    mode("closed", 0o600);
    // Mode 0640 and a named entry for nobody: the ACL lets nobody read.
    fs::write(vault.join("granted"), b"g").expect("write");
    mode("granted", 0o640);
    let grant = sys::posix_acl(&[
        (ACL_USER_OBJ, 6, 0),
        (ACL_USER, 4, NOBODY),
        (ACL_GROUP_OBJ, 4, 0),
        (ACL_MASK, 4, 0),
        (ACL_OTHER, 0, 0),
    ]);
    sys::lsetxattr(&vault.join("granted"), "system.posix_acl_access", &grant).expect("acl");
    // Mode 0644 but a named entry for nobody with nothing: refused.
    fs::write(vault.join("denied"), b"d").expect("write");
    let deny = sys::posix_acl(&[
        (ACL_USER_OBJ, 6, 0),
        (ACL_USER, 0, NOBODY),
        (ACL_GROUP_OBJ, 4, 0),
        (ACL_MASK, 4, 0),
        (ACL_OTHER, 4, 0),
    ]);
    sys::lsetxattr(&vault.join("denied"), "system.posix_acl_access", &deny).expect("acl");

    let probes: &[(&str, &[&str], &str)] = &[
        ("cat", &[], "open"),
        ("cat", &[], "closed"),
        ("cat", &[], "granted"),
        ("cat", &[], "denied"),
        ("ls", &[], "private"),
        ("stat", &[], "private/secret"),
        ("cat", &[], "private/secret"),
        ("ls", &[], "blind"),
        ("cat", &[], "blind/known"),
        ("stat", &[], "blind/known"),
    ];
    // Natively, on the subvolume as the set takes it.
    let native: Vec<bool> = probes
        .iter()
        .map(|(cmd, args, p)| nobody_can(cmd, args, &vault.join(p)))
        .collect();
    assert_eq!(
        native,
        [
            true, false, true, false, false, false, false, false, true, true
        ],
        "the native answers this test expects"
    );
    let set = d.create_set();
    let browsed = d.browse(&set, "vault");
    for ((cmd, args, p), want) in probes.iter().zip(&native) {
        assert_eq!(
            nobody_can(cmd, args, &browsed.join(p)),
            *want,
            "nobody: {cmd} {p} in the set"
        );
    }
    // And the snapshot itself is root's alone natively.
    assert!(!nobody_can("ls", &[], &image(&d, &set)));
}

/// A child process killed and reaped when the test ends, failed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `f` on a thread of its own and fails if it takes longer than
/// `limit`: what is looked at after a deletion must not hang.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).expect("no hang")
}

fn errno_at(dir: &File, name: &str) -> i32 {
    let c = CString::new(name).expect("name");
    // SAFETY: zeroed stat is a valid out-buffer; a valid fd and name.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let ret = unsafe {
        libc::fstatat64(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if ret == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }
}

#[test]
fn a_deleted_btrfs_set_disappears_while_a_shell_sits_inside_it() {
    let d = mixed();
    let vault = d.live("vault");
    fs::create_dir(vault.join("dir")).expect("mkdir");
    for name in ["seen", "unseen", "open"] {
        fs::write(vault.join("dir").join(name), name).expect("write");
    }
    let set = d.create_set();
    let inside = d.browse(&set, "vault").join("dir");
    // A shell inside, and what it had already looked at and opened.
    let shell = Killed(
        Command::new("sh")
            .arg("-c")
            .arg("sleep 30")
            .current_dir(&inside)
            .spawn()
            .expect("shell inside"),
    );
    let cwd = File::open(&inside).expect("open the dir");
    assert_eq!(errno_at(&cwd, "seen"), 0);
    let mut open = File::open(inside.join("open")).expect("open a file");

    d.umbra_ok(&["delete", &set.name]);
    assert!(!d.snapshots().join(&set.name).exists(), "the set is gone");
    let gone = within(Duration::from_secs(10), move || {
        let unseen = errno_at(&cwd, "unseen");
        let seen = errno_at(&cwd, "seen");
        (unseen, seen)
    });
    assert!(
        [libc::ENOENT, libc::ESTALE].contains(&gone.0),
        "a new lookup: {}",
        gone.0
    );
    assert!(
        [0, libc::ENOENT, libc::ESTALE].contains(&gone.1),
        "a cached name: {}",
        gone.1
    );
    // A file opened before: its old bytes (btrfs keeps the snapshot's
    // file until it is closed) or a clean error; never a hang.
    let read = within(Duration::from_secs(10), move || {
        let mut s = String::new();
        open.read_to_string(&mut s).map(|_| s)
    });
    match read {
        Ok(s) => assert_eq!(s, "open"),
        Err(e) => assert!(
            [Some(libc::ESTALE), Some(libc::ENOENT)].contains(&e.raw_os_error()),
            "{e}"
        ),
    }
    drop(shell);
    // The subvolume is destroyed (its space freed lazily), and the daemon
    // serves on.
    let btrfs = d.btrfs.as_ref().expect("btrfs");
    assert!(
        !btrfs
            .subvolumes()
            .iter()
            .any(|p| p == &format!("vault/.umbra/{}", set.id)),
        "{:?}",
        btrfs.subvolumes()
    );
    let next = d.create_set();
    assert_eq!(
        fs::read(d.browse(&next, "vault").join("dir/seen")).expect("read"),
        b"seen"
    );
}

/// Descriptors the process `pid` has open now.
fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

#[test]
fn more_btrfs_files_open_at_once_than_the_daemon_has_descriptors() {
    const LIMIT: u64 = 256;
    const FILES: usize = 600;
    let mut d = Daemon::prepare(Config::empty().volume("data").btrfs("vault"));
    d.limit_descriptors(LIMIT);
    d.launch();
    // This test's own limit must hold every file it opens.
    // SAFETY: zeroed rlimit is a valid out-buffer; get then set our own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max.max(lim.rlim_cur);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let vault = d.live("vault");
    fs::create_dir(vault.join("many")).expect("mkdir");
    for i in 0..FILES {
        fs::write(vault.join(format!("many/{i:04}")), format!("file {i}")).expect("write");
    }
    let set = d.create_set();
    let many = d.browse(&set, "vault").join("many");
    let files: Vec<File> = (0..FILES)
        .map(|i| {
            File::open(many.join(format!("{i:04}")))
                .unwrap_or_else(|e| panic!("open {i} of {FILES}: {e}"))
        })
        .collect();
    let pid = d.pid().expect("daemon pid");
    let held = open_fds(pid);
    assert!(
        (held as u64) < LIMIT,
        "the daemon holds {held} descriptors under a limit of {LIMIT}"
    );
    for (i, mut f) in files.into_iter().enumerate().rev() {
        let mut s = String::new();
        f.read_to_string(&mut s)
            .unwrap_or_else(|e| panic!("read {i}: {e}"));
        assert_eq!(s, format!("file {i}"));
    }
    // Looking every file up again once the caches turned over.
    let listed = fs::read_dir(&many).expect("ls").count();
    assert_eq!(listed, FILES);
    assert_eq!(
        fs::read(many.join("0000")).expect("read the first again"),
        b"file 0"
    );
    assert!((open_fds(pid) as u64) < LIMIT);
}

#[test]
fn nested_subvolumes_show_as_distinct_empty_directories_in_a_btrfs_set() {
    let d = mixed();
    let vault = d.live("vault");
    for name in ["one", "two"] {
        let out = Command::new("btrfs")
            .args(["-q", "subvolume", "create"])
            .arg(vault.join(name))
            .output()
            .expect("btrfs subvolume create");
        assert!(out.status.success(), "{out:?}");
        fs::write(vault.join(name).join("inside"), name).expect("write");
    }
    let set = d.create_set();
    let browsed = d.browse(&set, "vault");
    // Natively both placeholders carry the one number btrfs gives them.
    let native = image(&d, &set);
    let (a, b) = (
        fs::metadata(native.join("one")).expect("stat"),
        fs::metadata(native.join("two")).expect("stat"),
    );
    assert_eq!((a.ino(), b.ino()), (2, 2));
    let (one, two) = (
        fs::metadata(browsed.join("one")).expect("stat"),
        fs::metadata(browsed.join("two")).expect("stat"),
    );
    assert!(one.is_dir() && two.is_dir());
    assert_ne!(
        one.ino(),
        two.ino(),
        "two directories, not one linked twice"
    );
    assert_eq!((one.mode(), one.mtime()), (a.mode(), a.mtime()));
    for name in ["one", "two"] {
        assert_eq!(fs::read_dir(browsed.join(name)).expect("ls").count(), 0);
    }
    let mut top: Vec<_> = fs::read_dir(&browsed)
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    top.sort();
    assert_eq!(top, ["one", "two"]);
}
