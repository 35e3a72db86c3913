//! A user reads in a shadow copy only what their uid and groups could read
//! at the set's instant: the browser keeps owners and modes and the kernel
//! checks them (default_permissions), for a real unprivileged user.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::{Config, Daemon, NOBODY, open_the_way};

/// `cat path` as the user nobody: its stdout, or None if it was refused.
fn cat_as_nobody(path: &Path) -> Option<String> {
    let out = Command::new("cat")
        .arg(path)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn an_unprivileged_user_reads_in_a_set_only_what_they_could_read_at_its_instant() {
    let d = Daemon::start(Config::default());
    for dir in [d.root(), &d.live("data"), d.snapshots()] {
        open_the_way(dir);
    }
    let live = d.live("data");
    fs::write(live.join("secret"), "root only").unwrap();
    fs::set_permissions(live.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(live.join("public"), "anyone").unwrap();
    fs::set_permissions(live.join("public"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(live.join("mine"), "nobody's own").unwrap();
    chown(live.join("mine"), Some(NOBODY), Some(NOBODY)).unwrap();
    fs::set_permissions(live.join("mine"), fs::Permissions::from_mode(0o600)).unwrap();
    let set = d.create_set();
    // After the set the secret is opened up and the public file closed.
    fs::set_permissions(live.join("secret"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(live.join("public"), fs::Permissions::from_mode(0o600)).unwrap();

    let snap = d.browse(&set, "data");
    assert_eq!(
        cat_as_nobody(&snap.join("secret")),
        None,
        "the set keeps the secret's 0600"
    );
    assert_eq!(
        cat_as_nobody(&snap.join("public")).as_deref(),
        Some("anyone")
    );
    assert_eq!(
        cat_as_nobody(&snap.join("mine")).as_deref(),
        Some("nobody's own")
    );
    assert_eq!(
        cat_as_nobody(&live.join("secret")).as_deref(),
        Some("root only")
    );
    assert_eq!(cat_as_nobody(&live.join("public")), None);
    // Nobody cannot write into the live volume's root (0755 root) either.
    let touch = Command::new("touch")
        .arg(live.join("new"))
        .uid(NOBODY)
        .gid(NOBODY)
        .status()
        .unwrap();
    assert!(!touch.success());
    assert!(!live.join("new").exists());
}

/// `umbra list` as nobody against `d`'s socket.
fn list_as_nobody(d: &Daemon, gid: u32) -> std::process::Output {
    Command::new(common::umbra_bin())
        .args(["list", "--socket"])
        .arg(d.root().join("umbra.sock"))
        .uid(NOBODY)
        .gid(gid)
        .output()
        .unwrap()
}

#[test]
fn only_the_daemons_user_or_its_socket_group_may_use_the_control_socket() {
    for (config, allowed) in [
        (Config::default(), false),
        (Config::default().line("socket_group = \"nogroup\""), true),
    ] {
        let d = Daemon::start(config);
        open_the_way(d.root());
        d.create_set();
        let out = list_as_nobody(&d, NOBODY);
        if allowed {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            common::assert_one_line_error(&out, "a user outside the socket's group");
            assert_eq!(d.list_sets().len(), 1, "nothing changed");
        }
    }
}

/// Runs `sh -c script` with `$1` = `file`, as `uid` (and its group).
fn sh_as(uid: u32, script: &str, file: &Path) {
    let status = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(file)
        .uid(uid)
        .gid(uid)
        .status()
        .unwrap();
    assert!(status.success(), "{script} on {} as {uid}", file.display());
}

/// A valid `security.capability` (VFS_CAP_REVISION_2, CAP_NET_RAW permitted).
const NET_RAW: [u8; 20] = [
    0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn capability(path: &Path) -> Option<Vec<u8>> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os,sys\ntry: sys.stdout.write(os.getxattr(sys.argv[1], 'security.capability').hex())\nexcept OSError: pass",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let hex = String::from_utf8(out.stdout).unwrap();
    (!hex.is_empty()).then(|| {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    })
}

fn set_capability(path: &Path) {
    let hex: String = NET_RAW.iter().map(|b| format!("{b:02x}")).collect();
    let status = Command::new("python3")
        .args([
            "-c",
            "import os,sys; os.setxattr(sys.argv[1], 'security.capability', bytes.fromhex(sys.argv[2]))",
        ])
        .arg(path)
        .arg(hex)
        .status()
        .unwrap();
    assert!(status.success());
}

/// The kernel leaves clearing set-id bits and file capabilities to umbra
/// (FUSE_HANDLE_KILLPRIV_V2, so that it need not ask for the capability
/// before every write): each case ends with the mode and capability it has
/// on the native filesystem, and a set taken before keeps the old ones.
#[test]
fn writes_and_truncations_drop_set_id_bits_and_capabilities_as_natively() {
    let d = Daemon::start(Config::default());
    let live = d.live("data");
    let native = d.scratch("native");
    open_the_way(&live);
    open_the_way(&native);
    let append = "echo more >> \"$1\"";
    let truncate = "truncate -s 1 \"$1\"";
    // (name, mode, writer, what it does)
    let cases: [(&str, u32, u32, &str); 6] = [
        ("suid-sgid-gx", 0o6777, NOBODY, append),
        ("sgid-no-gx", 0o2766, NOBODY, append),
        ("suid-root-writes", 0o4777, 0, append),
        ("suid-truncated", 0o4777, NOBODY, truncate),
        ("capability", 0o755, 0, append),
        ("capability-truncated", 0o755, 0, truncate),
    ];
    for dir in [&native, &live] {
        for (name, mode, _, _) in cases {
            let f = dir.join(name);
            fs::write(&f, "start").unwrap();
            fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
            if name.starts_with("capability") {
                set_capability(&f);
            }
        }
    }
    let set = d.create_set();
    let snap = d.browse(&set, "data");
    let mode_of = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    for (name, mode, uid, script) in cases {
        sh_as(uid, script, &native.join(name));
        sh_as(uid, script, &live.join(name));
        let (n, l) = (native.join(name), live.join(name));
        assert_eq!(
            mode_of(&l),
            mode_of(&n),
            "{name}: mode through umbra vs native"
        );
        assert_eq!(
            capability(&l),
            capability(&n),
            "{name}: capability vs native"
        );
        assert_eq!(
            mode_of(&snap.join(name)),
            mode,
            "{name}: the set keeps the mode"
        );
        let kept = name.starts_with("capability").then(|| NET_RAW.to_vec());
        assert_eq!(
            capability(&snap.join(name)),
            kept,
            "{name}: the set keeps it"
        );
    }
    // The cases above do change something natively.
    assert_eq!(mode_of(&native.join("suid-sgid-gx")), 0o777);
    assert_eq!(mode_of(&native.join("suid-truncated")), 0o777);
    assert_eq!(capability(&native.join("capability")), None);
}
