//! The btrfs provider end to end: a daemon with a copy-on-write volume on
//! the test's own filesystem and a btrfs volume on a loop-mounted btrfs the
//! test makes, taking sets of both at once.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{Config, Daemon};

fn mixed() -> Daemon {
    Daemon::start(Config::empty().volume("data").btrfs("vault"))
}

/// The subvolumes of the daemon's btrfs under `vault/.umbra`.
fn snapshots(d: &Daemon) -> Vec<String> {
    let btrfs = d.btrfs.as_ref().expect("a btrfs");
    let mut found: Vec<String> = btrfs
        .subvolumes()
        .into_iter()
        .filter_map(|p| p.strip_prefix("vault/.umbra/").map(str::to_string))
        .collect();
    found.sort();
    found
}

#[test]
fn a_set_of_a_cow_and_a_btrfs_volume_holds_both_and_deleting_it_destroys_the_snapshot() {
    let d = mixed();
    let vault = d.live("vault");
    assert_eq!(vault, d.btrfs.as_ref().expect("btrfs").mount.join("vault"));
    fs::write(vault.join("ledger"), b"one").expect("write to the subvolume");
    fs::write(d.live("data").join("notes"), b"uno").expect("write live");
    let set = d.create_set();
    assert_eq!(set.volumes, ["data", "vault"]);
    assert_eq!(snapshots(&d), [set.id.to_string()]);
    // The snapshot is read-only, root's, and holds the instant's bytes.
    let image = vault.join(".umbra").join(set.id.to_string());
    assert_eq!(fs::read(image.join("ledger")).expect("read"), b"one");
    let err = fs::write(image.join("ledger"), b"x").expect_err("read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let folder = fs::metadata(vault.join(".umbra")).expect("stat .umbra");
    assert_eq!((folder.uid(), folder.mode() & 0o777), (0, 0o700));
    fs::write(vault.join("ledger"), b"two").expect("write after the set");
    assert_eq!(fs::read(image.join("ledger")).expect("read"), b"one");

    d.umbra_ok(&["delete", &set.name]);
    assert!(snapshots(&d).is_empty(), "the snapshot went with the set");
    assert!(!image.exists());
}

#[test]
fn a_snapshot_no_set_owns_is_destroyed_at_start() {
    let mut d = mixed();
    let kept = d.create_set();
    let vault = d.live("vault");
    // What a crash between the snapshot and its record leaves.
    let out = std::process::Command::new("btrfs")
        .args(["-q", "subvolume", "snapshot", "-r"])
        .arg(&vault)
        .arg(vault.join(".umbra/pending-0c7e1d1e"))
        .output()
        .expect("btrfs subvolume snapshot");
    assert!(out.status.success(), "{out:?}");
    d.restart();
    assert_eq!(snapshots(&d), [kept.id.to_string()]);
}

#[test]
fn a_btrfs_volume_that_is_not_a_subvolume_is_refused_with_the_way_out() {
    let d = Daemon::prepare(Config::empty().btrfs("vault"));
    let plain = d.layout.root.join("plain");
    fs::create_dir(&plain).expect("mkdir");
    let text = fs::read_to_string(&d.layout.config_path).expect("config");
    let vault = d.live("vault");
    let text = text.replace(&*vault.to_string_lossy(), &plain.to_string_lossy());
    let config = d.layout.root.join("plain.toml");
    fs::write(&config, text).expect("write config");
    let out = d.run_up(&config);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not the root of a btrfs subvolume")
            && err.contains("btrfs subvolume create"),
        "{err}"
    );
    assert!(Path::new(&plain).read_dir().expect("ls").next().is_none());
}
