//! POSIX ACLs and the caller's identity through umbra, each answer compared
//! with the same operation by the same user on a native directory of the
//! backing filesystem: a real unprivileged user (nobody, no supplementary
//! groups) is refused or allowed by ACL entries as natively, on the live
//! mount and in a set taken before the ACLs changed; what nobody creates
//! gets its owner, group, mode and ACL as natively (umask, default ACL,
//! set-group-ID directory); and nobody's writes stop at the blocks ext4
//! reserves for root where they stop natively.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Config, Daemon, NOBODY, open_the_way};

fn run(cmd: &str, args: &[&str], path: &Path) -> String {
    let out = Command::new(cmd).args(args).arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn setfacl(args: &[&str], path: &Path) {
    run("setfacl", args, path);
}

/// The ACL as getfacl prints it, without the name, owner and group lines.
fn getfacl(path: &Path) -> String {
    run("getfacl", &["--omit-header", "--physical"], path)
}

fn gid_of(group: &str) -> u32 {
    let out = Command::new("getent")
        .args(["group", group])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    line.split(':').nth(2).unwrap().trim().parse().unwrap()
}

/// One system call as nobody.
#[derive(Clone, Copy, Debug)]
enum Op {
    Read,
    Write,
    List,
    Create(u32),
    Mkdir(u32),
    Fifo(u32),
    Symlink,
    /// Create, then write 4 KiB at a time until a write fails.
    Fill,
}

/// What nobody gets from `op` on `path` with `umask`: 0 or the errno. The
/// child of a fork switches to nobody with no supplementary groups and
/// makes only raw system calls until it exits with the answer.
fn as_nobody(op: Op, path: &Path, umask: u32) -> i32 {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let target = c"target";
    // SAFETY: the child makes only async-signal-safe system calls on
    // memory prepared before the fork, then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: as above; the raw syscalls change only the child.
        unsafe {
            let id = NOBODY as libc::c_long;
            if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                || libc::syscall(libc::SYS_setresgid, id, id, id) != 0
                || libc::syscall(libc::SYS_setresuid, id, id, id) != 0
            {
                libc::_exit(255);
            }
            libc::umask(umask);
            let ret = match op {
                Op::Read | Op::Write | Op::List => {
                    let flags = match op {
                        Op::Read => libc::O_RDONLY,
                        Op::Write => libc::O_WRONLY,
                        _ => libc::O_RDONLY | libc::O_DIRECTORY,
                    };
                    let fd = libc::open(c.as_ptr(), flags);
                    if fd >= 0 {
                        let mut buf = [0u8; 4096];
                        let n = match op {
                            Op::List => {
                                libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len())
                                    as isize
                            }
                            Op::Read => libc::read(fd, buf.as_mut_ptr().cast(), buf.len()),
                            _ => 0,
                        };
                        if n < 0 { -1 } else { 0 }
                    } else {
                        -1
                    }
                }
                Op::Create(mode) => libc::open(
                    c.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                    mode,
                )
                .min(0),
                Op::Mkdir(mode) => libc::mkdir(c.as_ptr(), mode),
                Op::Fifo(mode) => libc::mknod(c.as_ptr(), libc::S_IFIFO | mode, 0),
                Op::Symlink => libc::symlink(target.as_ptr(), c.as_ptr()),
                Op::Fill => {
                    let fd = libc::open(c.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
                    let block = [0x5au8; 4096];
                    if fd < 0 {
                        -1
                    } else {
                        while libc::write(fd, block.as_ptr().cast(), block.len()) >= 0 {}
                        -1
                    }
                }
            };
            libc::_exit(if ret < 0 {
                *libc::__errno_location()
            } else {
                0
            });
        }
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status));
    let code = libc::WEXITSTATUS(status);
    assert_ne!(code, 255, "the child could not become nobody");
    code
}

/// Files and a directory with ACL entries for nobody, under `dir`.
fn build_acl_tree(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("denied"), "denied").unwrap();
    fs::set_permissions(dir.join("denied"), fs::Permissions::from_mode(0o644)).unwrap();
    setfacl(&["-m", "u:nobody:---"], &dir.join("denied"));
    fs::create_dir(dir.join("denied_dir")).unwrap();
    fs::write(dir.join("denied_dir/inside"), "inside").unwrap();
    fs::set_permissions(dir.join("denied_dir"), fs::Permissions::from_mode(0o755)).unwrap();
    setfacl(&["-m", "u:nobody:---"], &dir.join("denied_dir"));
    fs::write(dir.join("allowed"), "allowed").unwrap();
    fs::set_permissions(dir.join("allowed"), fs::Permissions::from_mode(0o600)).unwrap();
    setfacl(&["-m", "u:nobody:r"], &dir.join("allowed"));
    fs::write(dir.join("masked"), "masked").unwrap();
    fs::set_permissions(dir.join("masked"), fs::Permissions::from_mode(0o600)).unwrap();
    setfacl(&["-m", "u:nobody:rw,m::r"], &dir.join("masked"));
}

/// After the set: the denials lifted, the grant turned into a denial, the
/// mask widened.
fn change_acl_tree(dir: &Path) {
    setfacl(&["-x", "u:nobody"], &dir.join("denied"));
    setfacl(&["-x", "u:nobody"], &dir.join("denied_dir"));
    setfacl(&["-m", "u:nobody:---"], &dir.join("allowed"));
    setfacl(&["-m", "m::rw"], &dir.join("masked"));
}

const READS: &[(Op, &str)] = &[
    (Op::Read, "denied"),
    (Op::List, "denied_dir"),
    (Op::Read, "denied_dir/inside"),
    (Op::Read, "allowed"),
    (Op::Read, "masked"),
];
const WRITES: &[(Op, &str)] = &[(Op::Write, "allowed"), (Op::Write, "masked")];

fn probe(dir: &Path, ops: &[(Op, &str)]) -> Vec<(String, i32)> {
    ops.iter()
        .map(|(op, name)| {
            (
                format!("{op:?} {name}"),
                as_nobody(*op, &dir.join(name), 0o022),
            )
        })
        .collect()
}

fn acls(dir: &Path) -> Vec<String> {
    ["denied", "denied_dir", "allowed", "masked"]
        .iter()
        .map(|n| getfacl(&dir.join(n)))
        .collect()
}

/// The filed defect: a 0644 file with `u:nobody:---` was readable by
/// nobody through the live mount and in a set, and a directory denied the
/// same way could be listed.
#[test]
fn acl_entries_refuse_and_allow_nobody_live_and_in_sets_as_natively() {
    let d = Daemon::start(Config::default());
    let native = d.scratch("native");
    let live = d.live("data").join("tree");
    for dir in [d.root(), &d.live("data"), d.snapshots(), &native] {
        open_the_way(dir);
    }
    build_acl_tree(&native);
    build_acl_tree(&live);
    let reads = probe(&native, READS);
    let writes = probe(&native, WRITES);
    let eacces = libc::EACCES;
    assert_eq!(
        reads.iter().map(|r| r.1).collect::<Vec<_>>(),
        [eacces, eacces, eacces, 0, 0],
        "natively: {reads:?}"
    );
    assert_eq!(
        writes.iter().map(|r| r.1).collect::<Vec<_>>(),
        [eacces, eacces],
        "natively: {writes:?}"
    );
    assert_eq!(probe(&live, READS), reads, "live, before the set");
    assert_eq!(probe(&live, WRITES), writes, "live, before the set");
    assert_eq!(acls(&live), acls(&native));

    let set = d.create_set();
    change_acl_tree(&native);
    change_acl_tree(&live);
    let reads_after = probe(&native, READS);
    let writes_after = probe(&native, WRITES);
    assert_eq!(
        reads_after.iter().map(|r| r.1).collect::<Vec<_>>(),
        [0, 0, 0, eacces, 0],
        "natively, after: {reads_after:?}"
    );
    assert_eq!(
        writes_after.iter().map(|r| r.1).collect::<Vec<_>>(),
        [eacces, 0],
        "natively, after: {writes_after:?}"
    );
    assert_eq!(probe(&live, READS), reads_after, "live, after the change");
    assert_eq!(probe(&live, WRITES), writes_after, "live, after the change");
    assert_eq!(acls(&live), acls(&native));

    // The set keeps the ACLs, and so the verdicts, of its instant.
    let snap = d.browse(&set, "data").join("tree");
    assert_eq!(probe(&snap, READS), reads, "in the set taken before");
    let latest = d.snapshots().join("latest/data/tree");
    assert_eq!(probe(&latest, READS), reads, "through latest");
}

/// What a creation made: its type and mode, owner, group and ACL.
fn made(path: &Path) -> (u32, u32, u32, String) {
    let meta = fs::symlink_metadata(path).unwrap();
    let acl = if meta.file_type().is_symlink() {
        String::new()
    } else {
        getfacl(path)
    };
    (meta.mode(), meta.uid(), meta.gid(), acl)
}

/// Parent directories for nobody's creations: one with a default ACL with
/// a named entry (so the mode's group bits are the mask and `group::`
/// stands apart), one plain, one set-group-ID of the group `tests`.
fn build_parents(dir: &Path, tests_gid: u32) {
    for name in ["acl", "plain", "sgid"] {
        fs::create_dir_all(dir.join(name)).unwrap();
        fs::set_permissions(dir.join(name), fs::Permissions::from_mode(0o777)).unwrap();
    }
    setfacl(
        &["-d", "-m", "u::rwx,g::r-x,o::---,u:tests:rw,m::rwx"],
        &dir.join("acl"),
    );
    std::os::unix::fs::chown(dir.join("sgid"), None, Some(tests_gid)).unwrap();
    fs::set_permissions(dir.join("sgid"), fs::Permissions::from_mode(0o2777)).unwrap();
}

/// The filed defect: with umask 0722, a file created in a directory with
/// a default ACL came out `----r-----` through umbra where natively the
/// ACL's bits stand in for the umask; `group::` of the default ACL and the
/// set-group-ID directory's group must come out as natively too.
#[test]
fn what_nobody_creates_gets_owner_group_mode_and_acl_as_natively() {
    let d = Daemon::start(Config::default());
    let tests_gid = gid_of("tests");
    let native = d.scratch("native");
    let live = d.live("data").join("made");
    for dir in [d.root(), &d.live("data"), &native] {
        open_the_way(dir);
    }
    build_parents(&native, tests_gid);
    build_parents(&live, tests_gid);
    let ops = [
        (Op::Create(0o666), "file", 0o722),
        (Op::Create(0o2775), "sgidfile", 0o022),
        (Op::Mkdir(0o777), "dir", 0o722),
        (Op::Fifo(0o666), "fifo", 0o027),
        (Op::Symlink, "link", 0o022),
    ];
    for parent in ["acl", "plain", "sgid"] {
        for (op, name, umask) in ops {
            let what = format!("{op:?} {parent}/{name} with umask {umask:o}");
            let native_path = native.join(parent).join(name);
            let live_path = live.join(parent).join(name);
            assert_eq!(as_nobody(op, &native_path, umask), 0, "natively: {what}");
            assert_eq!(as_nobody(op, &live_path, umask), 0, "live: {what}");
            let expected = made(&native_path);
            assert_eq!(made(&live_path), expected, "{what}");
            assert_eq!(
                made(&d.backing("data").join("made").join(parent).join(name)),
                expected
            );
            assert_eq!(expected.1, NOBODY, "{what}");
        }
    }
    // What the rules are, natively and so through umbra.
    let (mode, _, _, acl) = made(&live.join("acl/file"));
    assert_eq!(
        mode & 0o777,
        0o660,
        "the default ACL's mask, not the umask 0722"
    );
    assert!(acl.contains("group::r-x"), "{acl}");
    assert_eq!(made(&live.join("plain/file")).0 & 0o777, 0o044);
    assert_eq!(made(&live.join("plain/fifo")).0 & 0o777, 0o640);
    assert_eq!(made(&live.join("sgid/file")).2, tests_gid);
    assert_eq!(made(&live.join("sgid/dir")).0 & 0o2000, 0o2000);
    // nobody is outside `tests`: the set-group-ID bit it asked for goes.
    assert_eq!(made(&live.join("sgid/sgidfile")).0 & 0o7777, 0o0755);
}

/// A daemon whose volume's backing directory lies on a small ext4 of its
/// own, made with 20% of its blocks reserved for root; a native directory
/// sits beside the volume on the same filesystem. Unmounted after the
/// daemon stopped.
struct OnSmallExt4 {
    d: Daemon,
    mnt: PathBuf,
}

impl OnSmallExt4 {
    fn start() -> OnSmallExt4 {
        let d = Daemon::prepare(Config::default());
        let mnt = d.backing("data").parent().unwrap().to_path_buf();
        let image = d.root().join("small.ext4");
        fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
        run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-m",
                "20",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
            ],
            &image,
        );
        let status = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(status.success(), "mounting the small ext4");
        let mut guard = OnSmallExt4 { d, mnt };
        fs::create_dir_all(guard.d.backing("data")).unwrap();
        guard.d.launch();
        guard
    }
}

impl Drop for OnSmallExt4 {
    fn drop(&mut self) {
        let _ = self.d.try_stop();
        let umounted = Command::new("umount")
            .arg(&self.mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !umounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// How many bytes nobody writes into `dir/fill` before a write fails, and
/// the errno; the file is then removed and its blocks given back.
fn fill_as_nobody(dir: &Path) -> (u64, i32) {
    let file = dir.join("fill");
    let before = available(dir);
    let errno = as_nobody(Op::Fill, &file, 0o022);
    let size = fs::metadata(&file).unwrap().len();
    fs::remove_file(&file).unwrap();
    // Freed blocks count as free once the journal committed, and through
    // FUSE only once the kernel's RELEASE and FORGET of the file arrived,
    // which they do after unlink returned.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = Command::new("sync").arg("-f").arg(dir).status().unwrap();
        assert!(status.success());
        if available(dir) + 2 * 4096 >= before || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (size, errno)
}

/// The bytes an unprivileged user may still write on `dir`'s filesystem.
fn available(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: zeroed statvfs is a valid out-buffer; c is a valid path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail * st.f_frsize
}

/// The filed defect: writes through umbra landed as root and used the
/// blocks ext4 reserves for root (`mkfs -m`): 54 MiB written by nobody
/// where natively 40 MiB. Writes now allocate as the writer, without
/// CAP_SYS_RESOURCE, and stop where they stop natively.
#[test]
fn nobody_stops_at_the_blocks_reserved_for_root_as_natively() {
    let small = OnSmallExt4::start();
    let native = small.mnt.join("native");
    let live = small.d.live("data").join("fill");
    fs::create_dir_all(&native).unwrap();
    fs::create_dir_all(&live).unwrap();
    for dir in [&native, &live] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).unwrap();
        open_the_way(dir);
    }
    let (native_bytes, native_errno) = fill_as_nobody(&native);
    let (umbra_bytes, umbra_errno) = fill_as_nobody(&live);
    let (again_bytes, _) = fill_as_nobody(&native);
    eprintln!(
        "nobody filled {native_bytes} bytes natively ({again_bytes} again after), \
         {umbra_bytes} through umbra"
    );
    assert_eq!(native_errno, libc::ENOSPC);
    assert_eq!(umbra_errno, libc::ENOSPC);
    assert!(
        native_bytes < 48 << 20,
        "the reserve held natively: {native_bytes}"
    );
    let two_blocks = 2 * 4096;
    assert!(
        umbra_bytes.abs_diff(native_bytes) <= two_blocks
            && umbra_bytes.abs_diff(again_bytes) <= two_blocks,
        "nobody wrote {umbra_bytes} bytes through umbra, {native_bytes} natively"
    );
}

/// Runs `setfacl ARGS path` as nobody; whether it succeeded.
fn setfacl_as_nobody(args: &[&str], path: &Path) -> bool {
    use std::os::unix::process::CommandExt;
    Command::new("setfacl")
        .args(args)
        .arg(path)
        .uid(NOBODY)
        .gid(NOBODY)
        .status()
        .unwrap()
        .success()
}

/// Natively, an owner outside a file's group who sets its access ACL
/// loses the set-group-ID bit (`posix_acl_update_mode`); the kernel asks a
/// FUSE filesystem for it with a flag fuser cannot carry, and the backing
/// file, changed by root, kept the bit.
#[test]
fn an_acl_set_by_an_owner_outside_the_group_drops_set_group_id_as_natively() {
    let d = Daemon::start(Config::default());
    let tests_gid = gid_of("tests");
    let native = d.scratch("native");
    let live = d.live("data").join("sgid");
    fs::create_dir_all(&live).unwrap();
    for dir in [d.root(), &d.live("data"), &native, &live] {
        open_the_way(dir);
    }
    let mut modes = Vec::new();
    for dir in [&native, &live] {
        for (name, gid) in [("outside", tests_gid), ("inside", NOBODY)] {
            let file = dir.join(name);
            fs::write(&file, "x").unwrap();
            std::os::unix::fs::chown(&file, Some(NOBODY), Some(gid)).unwrap();
            fs::set_permissions(&file, fs::Permissions::from_mode(0o2775)).unwrap();
            assert!(setfacl_as_nobody(&["-m", "u:tests:r"], &file));
        }
        modes.push(
            ["outside", "inside"].map(|n| fs::metadata(dir.join(n)).unwrap().mode() & 0o7777),
        );
    }
    assert_eq!(modes[0], [0o0775, 0o2775], "natively");
    assert_eq!(modes[1], modes[0], "through umbra");
}
