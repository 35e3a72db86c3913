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

use common::{Config, Daemon};

const NOBODY: u32 = 65534;

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
    for dir in [
        d.root().to_path_buf(),
        d.live("data"),
        d.snapshots().to_path_buf(),
    ] {
        let mut p = dir.as_path();
        // Every directory on the way must be searchable by nobody.
        while p != Path::new("/") {
            let mode = fs::metadata(p).unwrap().permissions().mode();
            if mode & 0o005 != 0o005 {
                fs::set_permissions(p, fs::Permissions::from_mode(mode | 0o755))
                    .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
            }
            p = p.parent().unwrap();
        }
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
        let mut p = d.root();
        while p != Path::new("/") {
            let mode = fs::metadata(p).unwrap().permissions().mode();
            if mode & 0o005 != 0o005 {
                fs::set_permissions(p, fs::Permissions::from_mode(mode | 0o755)).unwrap();
            }
            p = p.parent().unwrap();
        }
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
