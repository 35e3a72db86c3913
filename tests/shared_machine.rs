//! umbra runs as root and serves other users' files: nothing a user does
//! through it may end differently from the same thing on the backing
//! filesystem. Each test pins a defect found by probing as an unprivileged
//! user (`nobody`), against a native directory of the same filesystem.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::{Config, Daemon, NOBODY, open_the_way};

/// Runs `sh -c script` with `$1` = `file` as nobody; whether it succeeded.
fn sh_as_nobody(script: &str, file: &Path) -> bool {
    Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(file)
        .uid(NOBODY)
        .gid(NOBODY)
        .status()
        .unwrap()
        .success()
}

/// The effective uid a copy of `id` runs with when nobody executes it.
fn euid_when_nobody_runs(program: &Path) -> String {
    let out = Command::new(program)
        .arg("-u")
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(out.status.success(), "{} -u as nobody", program.display());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn mode_of(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Regression: a set-user-ID bit survived a non-owner's append through the
/// live mount. umbra dropped it on the backing file, but the kernel kept
/// answering, and exec'ing with, the cached 4777 for the attribute TTL, so
/// nobody ran a root-owned copy of `id` as root. fallocate by a non-owner
/// did not drop it at all. Each case runs on a native directory and through
/// the live mount; the mode and what exec gives must be the same.
#[test]
fn set_id_bits_dropped_by_an_unprivileged_change_of_data_are_gone_for_exec_at_once() {
    let d = Daemon::start(Config::default());
    let live = d.live("data").join("shared");
    let native = d.scratch("native").join("shared");
    for dir in [&live, &native] {
        fs::create_dir(dir).unwrap();
        fs::set_permissions(dir, fs::Permissions::from_mode(0o1777)).unwrap();
        open_the_way(dir);
    }
    // Trailing bytes past the program's end, so that writes into them
    // keep it runnable.
    let pad = 128 * 1024;
    let end = fs::metadata("/usr/bin/id").unwrap().len();
    let tail = format!("{}", end + 4096);
    let cases: Vec<(&str, u32, u32, String)> = vec![
        ("append", 0o4777, 0, "echo >> \"$1\"".into()),
        (
            "append-group-member",
            0o4775,
            NOBODY,
            "echo >> \"$1\"".into(),
        ),
        ("sgid-append", 0o6777, 0, "echo >> \"$1\"".into()),
        (
            "pwrite",
            0o4777,
            0,
            format!("printf x | dd of=\"$1\" bs=1 seek={tail} conv=notrunc status=none"),
        ),
        (
            "o-direct",
            0o4777,
            0,
            format!(
                "dd if=/dev/zero of=\"$1\" bs=4096 count=1 seek={} oflag=direct conv=notrunc status=none",
                (end + 8191) / 4096
            ),
        ),
        ("truncate-longer", 0o4777, 0, "truncate -s +1 \"$1\"".into()),
        ("fallocate", 0o6777, 0, "fallocate -l 1M \"$1\"".into()),
        (
            "punch-hole",
            0o4777,
            0,
            format!("fallocate -p -o {tail} -l 4096 \"$1\""),
        ),
        (
            "zero-range",
            0o4777,
            0,
            format!("fallocate -z -o {tail} -l 4096 \"$1\""),
        ),
    ];
    for dir in [&native, &live] {
        for (name, mode, gid, _) in &cases {
            let f = dir.join(name);
            let mut bytes = fs::read("/usr/bin/id").unwrap();
            bytes.resize(bytes.len() + pad, 0);
            fs::write(&f, bytes).unwrap();
            chown(&f, Some(0), Some(*gid)).unwrap();
            fs::set_permissions(&f, fs::Permissions::from_mode(*mode)).unwrap();
            // The kernel caches the attributes now, as a user's `ls` would.
            assert_eq!(mode_of(&f), *mode);
            assert_eq!(
                euid_when_nobody_runs(&f),
                "0",
                "{name}: set-user-ID to start with"
            );
        }
    }
    for (name, _, _, script) in &cases {
        let (n, l) = (native.join(name), live.join(name));
        let native_ok = sh_as_nobody(script, &n);
        assert_eq!(
            sh_as_nobody(script, &l),
            native_ok,
            "{name}: the change itself"
        );
        // exec first: it must not be able to use a stale cached mode.
        let native_euid = euid_when_nobody_runs(&n);
        assert_eq!(
            euid_when_nobody_runs(&l),
            native_euid,
            "{name}: exec after the change"
        );
        assert_eq!(
            mode_of(&l),
            mode_of(&n),
            "{name}: the mode after the change"
        );
        if native_ok {
            assert_eq!(
                native_euid,
                NOBODY.to_string(),
                "{name}: natively the bit goes"
            );
        }
    }
}

/// atime as the backing directory has it, read outside umbra.
fn atime_of(p: &Path) -> (i64, i64) {
    let m = fs::metadata(p).unwrap();
    (m.atime(), m.atime_nsec())
}

fn set_atime(p: &Path, secs: i64) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let times = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    ];
    // SAFETY: c is a valid path; times points at two timespecs.
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) },
        0
    );
}

/// Regression: listing a directory through the live mount or a set moved
/// the backing directory's atime (the listing reopened it by path, without
/// O_NOATIME), and a set that still rests on the live directory then showed
/// an atime later than its own instant, after a restart too.
#[test]
fn listing_a_directory_leaves_its_atime_as_it_was_live_and_in_sets() {
    let mut d = Daemon::start(Config::default());
    let live = d.live("data");
    let dir = live.join("dir");
    fs::create_dir(&dir).unwrap();
    for i in 0..20 {
        fs::write(dir.join(format!("f{i}")), "x").unwrap();
    }
    // An atime older than the mtime: relatime would move it on any read.
    set_atime(&dir, 1_000_000_000);
    let backing = d.backing("data").join("dir");
    let before = atime_of(&backing);
    assert_eq!(before.0, 1_000_000_000);
    let set = d.create_set();
    let snap = d.browse(&set, "data").join("dir");
    for _ in 0..3 {
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 20);
        assert_eq!(fs::read_dir(&snap).unwrap().count(), 20);
    }
    assert_eq!(atime_of(&backing), before, "the backing directory's atime");
    assert_eq!(atime_of(&snap), before, "the set's atime");
    d.restart();
    assert_eq!(fs::read_dir(&snap).unwrap().count(), 20);
    assert_eq!(atime_of(&snap), before, "the set's atime after a restart");
    assert_eq!(atime_of(&backing), before);
}

/// The names a directory stream yields from where it stands to its end.
fn drain(dir: *mut libc::DIR) -> Vec<Vec<u8>> {
    let mut names = Vec::new();
    loop {
        // SAFETY: dir is an open stream.
        let entry = unsafe { libc::readdir64(dir) };
        if entry.is_null() {
            return names;
        }
        // SAFETY: a non-null entry has a NUL-terminated name.
        let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) };
        let name = name.to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
        }
    }
}

/// Regression: the live listing was taken once at opendir and served from
/// memory, so a `rewinddir` (or lseek to 0) did not see entries created
/// since, where POSIX and the backing filesystem do.
#[test]
fn a_rewound_listing_sees_the_entries_created_since_it_was_opened() {
    let d = Daemon::start(Config::default());
    let dir = d.live("data").join("dir");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("first"), "").unwrap();
    let native = d.scratch("native");
    for at in [&dir, &native] {
        let c = CString::new(at.as_os_str().as_bytes()).unwrap();
        // SAFETY: c is a valid path.
        let stream = unsafe { libc::opendir(c.as_ptr()) };
        assert!(!stream.is_null());
        let opened = drain(stream);
        for i in 0..2000 {
            fs::write(at.join(format!("later-{i}")), "").unwrap();
        }
        // SAFETY: the stream is open.
        unsafe { libc::rewinddir(stream) };
        let rewound = drain(stream);
        // SAFETY: closed once.
        unsafe { libc::closedir(stream) };
        let expected = fs::read_dir(at).unwrap().count();
        assert_eq!(rewound.len(), expected, "{}: after rewinddir", at.display());
        assert!(opened.len() < expected);
    }
}

/// Regression: the first read of a set's file logged fuser's three-line
/// "[Not Implemented] flush" warning, and SEEK_DATA/SEEK_HOLE, ioctls and
/// poll did the same. They are answered now, quietly, and a hole in a live
/// sparse file is where the backing filesystem has it.
#[test]
fn requests_umbra_does_not_serve_are_answered_without_a_warning() {
    let d = Daemon::start(Config::default());
    let live = d.live("data");
    let sparse = live.join("sparse");
    let file = fs::File::create(&sparse).unwrap();
    file.set_len(8 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(b"data", 4 << 20).unwrap();
    drop(file);
    let set = d.create_set();
    let in_set = d.browse(&set, "data").join("sparse");
    assert_eq!(fs::read(&in_set).unwrap().len(), 8 << 20);
    let seek = |p: &Path, whence: i32| {
        let f = fs::File::open(p).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscall on an open descriptor.
        unsafe { libc::lseek64(f.as_raw_fd(), 0, whence) }
    };
    let backing = d.backing("data").join("sparse");
    assert_eq!(
        seek(&sparse, libc::SEEK_DATA),
        seek(&backing, libc::SEEK_DATA)
    );
    assert_eq!(
        seek(&sparse, libc::SEEK_HOLE),
        seek(&backing, libc::SEEK_HOLE)
    );
    // A set's file is data throughout.
    assert_eq!(seek(&in_set, libc::SEEK_DATA), 0);
    assert_eq!(seek(&in_set, libc::SEEK_HOLE), 8 << 20);
    for p in [&sparse, &in_set] {
        // An ioctl the filesystem does not know, as lsattr asks.
        let out = Command::new("lsattr").arg(p).output().unwrap();
        assert!(!out.status.success(), "lsattr {}", p.display());
    }
    let copy = d.scratch("copy").join("sparse");
    assert!(
        Command::new("cp")
            .arg(&in_set)
            .arg(&copy)
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(fs::read(&copy).unwrap(), fs::read(&sparse).unwrap());
    let stderr = d.stderr();
    assert!(
        !stderr.contains("Not Implemented"),
        "the daemon's log:\n{stderr}"
    );
}

/// The xattr names `getfattr` lists for `path` as nobody.
fn xattr_names_as_nobody(path: &Path) -> Vec<String> {
    let out = Command::new("getfattr")
        .args(["--absolute-names", "-m", "-"])
        .arg(path)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// Regression: umbra lists xattrs as root, so nobody saw the names of
/// `trusted.*` attributes, which a filesystem lists only to a caller with
/// CAP_SYS_ADMIN; in the live mount and in sets.
#[test]
fn trusted_xattr_names_stay_hidden_from_an_unprivileged_user() {
    let d = Daemon::start(Config::default());
    let live = d.live("data");
    let native = d.scratch("native");
    open_the_way(&native);
    open_the_way(d.snapshots());
    open_the_way(&live);
    for dir in [&live, &native] {
        let f = dir.join("f");
        fs::write(&f, "x").unwrap();
        common::sys::lsetxattr(&f, "trusted.secret", b"1").unwrap();
        common::sys::lsetxattr(&f, "user.plain", b"1").unwrap();
    }
    let set = d.create_set();
    let native_names = xattr_names_as_nobody(&native.join("f"));
    assert_eq!(native_names, ["user.plain"]);
    assert_eq!(xattr_names_as_nobody(&live.join("f")), native_names);
    assert_eq!(
        xattr_names_as_nobody(&d.browse(&set, "data").join("f")),
        native_names
    );
    // Root still lists them.
    let all = common::sys::llistxattr(&d.browse(&set, "data").join("f")).unwrap();
    assert!(all.iter().any(|n| n == b"trusted.secret"));
}

/// The daemon's resident memory and open descriptors.
fn daemon_usage(pid: u32) -> (u64, usize) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    (rss_kib * 1024, fds)
}

/// Regression: each open handle of a live directory held the whole
/// listing in the daemon's memory, so a user opening a large directory
/// many times (and reading one entry of each) could make the daemon, and
/// every mount with it, run out of memory. A handle now streams from a
/// backing directory stream of its own: a descriptor, no copy of the
/// entries, and the descriptor goes with the handle.
#[test]
fn open_handles_of_a_large_directory_cost_the_daemon_no_memory_per_entry() {
    let d = Daemon::prepare(Config::default());
    let big = d.backing("data").join("big");
    fs::create_dir(&big).unwrap();
    for i in 0..20_000 {
        fs::write(big.join(format!("a-rather-long-file-name-{i:06}")), "").unwrap();
    }
    let mut d = d;
    d.launch();
    let pid = d.pid().unwrap();
    let live = d.live("data").join("big");
    let c = CString::new(live.as_os_str().as_bytes()).unwrap();
    let (rss_before, fds_before) = daemon_usage(pid);
    let mut streams = Vec::new();
    for _ in 0..200 {
        // SAFETY: c is a valid path.
        let stream = unsafe { libc::opendir(c.as_ptr()) };
        assert!(!stream.is_null());
        // SAFETY: the stream is open.
        assert!(!unsafe { libc::readdir64(stream) }.is_null());
        streams.push(stream);
    }
    let (rss_open, fds_open) = daemon_usage(pid);
    // 200 copies of 20,000 entries were ~300 MB; a stream is a few KiB.
    assert!(
        rss_open < rss_before + (64 << 20),
        "the daemon grew from {rss_before} to {rss_open} bytes"
    );
    // A handle still reads the whole directory.
    // SAFETY: the stream is open.
    unsafe { libc::rewinddir(streams[7]) };
    assert_eq!(drain(streams[7]).len(), 20_000);
    for stream in streams {
        // SAFETY: closed once.
        unsafe { libc::closedir(stream) };
    }
    // One descriptor a handle, gone with it (what else is open is the
    // inodes the listings looked up, which the kernel still knows).
    // The kernel sends RELEASEDIR after close returned.
    let mut fds_closed = daemon_usage(pid).1;
    for _ in 0..100 {
        if fds_closed + 200 <= fds_open + 4 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        fds_closed = daemon_usage(pid).1;
    }
    assert!(
        fds_closed + 200 <= fds_open + 4,
        "{fds_before} -> {fds_open} open -> {fds_closed} closed"
    );
}
