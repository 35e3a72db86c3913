//! The btrfs provider end to end: a daemon with a copy-on-write volume on
//! the test's own filesystem and a btrfs volume on a loop-mounted btrfs the
//! test makes, taking sets of both at once.

mod common;
mod coord_common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use common::{Config, Daemon};
use coord_common::{Act, raw_writer};
use serde_json::{Value, json};

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

/// `umbra create --json`, parsed.
fn create_json(d: &Daemon, args: &[&str]) -> Value {
    let mut all = vec!["create", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&d.umbra_ok(&all)).expect("create --json")
}

#[test]
fn create_reports_each_providers_hold_and_the_set_hold_is_the_longest() {
    let d = mixed();
    let created = create_json(&d, &[]);
    let holds = created["holds"].as_array().expect("holds");
    let by: Vec<(&str, Vec<&str>)> = holds
        .iter()
        .map(|h| {
            let volumes = h["volumes"].as_array().expect("volumes");
            (
                h["provider"].as_str().expect("provider"),
                volumes.iter().filter_map(Value::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(by, [("cow", vec!["data"]), ("btrfs", vec!["vault"])]);
    let longest = holds
        .iter()
        .filter_map(|h| h["hold_ms"].as_f64())
        .fold(0.0, f64::max);
    assert_eq!(created["hold_ms"].as_f64(), Some(longest));
    // A set of the btrfs volume alone has one hold, and no cow volume
    // moved to a new epoch for it.
    let only = create_json(&d, &["vault"]);
    assert_eq!(only["volumes"], json!(["vault"]));
    assert_eq!(only["holds"].as_array().map(Vec::len), Some(1));
    assert_eq!(only["holds"][0]["provider"], "btrfs");
    let status: Value =
        serde_json::from_str(&d.umbra_ok(&["status", "--json"])).expect("status --json");
    let providers: Vec<(&str, &str)> = status["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap_or(""),
                v["provider"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(providers, [("data", "cow"), ("vault", "btrfs")]);
    assert!(d.umbra_ok(&["status"]).contains("btrfs"));
}

/// An application that appends record N to a file on each volume as one
/// step, and a writer whose Freeze waits for the step in progress and
/// holds the next until Thaw: every set must hold the same records on both.
#[test]
fn every_set_of_a_mixed_pair_holds_the_same_records_on_both_volumes() {
    let d = mixed();
    let data = d.live("data").join("pairs");
    let vault = d.live("vault").join("pairs");
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let app = {
        let (gate, stop) = (gate.clone(), stop.clone());
        let (data, vault) = (data.clone(), vault.clone());
        thread::spawn(move || {
            let open = |p: &Path| {
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .expect("open")
            };
            let (mut a, mut b) = (open(&data), open(&vault));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (lock, thawed) = &*gate;
                let mut frozen = lock.lock().expect("gate");
                while *frozen {
                    frozen = thawed.wait(frozen).expect("gate");
                }
                writeln!(a, "{n}").expect("append data");
                thread::sleep(Duration::from_micros(200));
                writeln!(b, "{n}").expect("append vault");
                drop(frozen);
                n += 1;
            }
            n
        })
    };
    let freezer = gate.clone();
    let (_seen, _writer) = raw_writer(
        &d.layout.socket,
        json!({"name": "pairs", "volumes": ["data", "vault"]}),
        move |event| {
            let (lock, thawed) = &*freezer;
            match event {
                "freeze" => *lock.lock().expect("gate") = true,
                "thaw" | "abort" => {
                    *lock.lock().expect("gate") = false;
                    thawed.notify_all();
                }
                _ => {}
            }
            Act::Ok
        },
    );
    let mut sets = Vec::new();
    for _ in 0..5 {
        thread::sleep(Duration::from_millis(50));
        sets.push(d.create_set());
    }
    stop.store(true, Ordering::Relaxed);
    let written = app.join().expect("app");
    assert!(written > 5, "the application ran ({written} records)");
    for set in &sets {
        let cow = fs::read_to_string(d.browse(set, "data").join("pairs")).expect("cow copy");
        let image = d.live("vault").join(".umbra").join(set.id.to_string());
        let btrfs = fs::read_to_string(image.join("pairs")).expect("btrfs copy");
        assert_eq!(
            cow, btrfs,
            "set {} holds one instant on both volumes",
            set.name
        );
    }
}

#[test]
fn max_sets_evicts_a_btrfs_snapshot_with_its_set() {
    let d = Daemon::start(
        Config::empty()
            .volume("data")
            .btrfs("vault")
            .line("max_sets = 2"),
    );
    let first = d.create_set();
    let second = d.create_set();
    let third = create_json(&d, &[]);
    assert_eq!(third["evicted"][0]["id"], json!(first.id));
    let third_id = third["id"].as_u64().expect("id");
    assert_eq!(snapshots(&d), [second.id.to_string(), third_id.to_string()]);
}

#[test]
fn auto_picks_btrfs_for_a_subvolume_and_cow_elsewhere() {
    let mut d = Daemon::prepare(Config::empty().volume("data").btrfs("vault"));
    let text = fs::read_to_string(&d.layout.config_path).expect("config");
    let text = text
        .replace("provider = \"btrfs\"", "provider = \"auto\"")
        .replace(
            "[[volume]]\nname = \"data\"",
            "[[volume]]\nprovider = \"auto\"\nname = \"data\"",
        );
    fs::write(&d.layout.config_path, text).expect("config");
    d.launch();
    let status: Value =
        serde_json::from_str(&d.umbra_ok(&["status", "--json"])).expect("status --json");
    assert_eq!(status["volumes"][0]["provider"], "cow");
    assert_eq!(status["volumes"][1]["provider"], "btrfs");
}

#[test]
fn a_btrfs_volume_with_a_mount_elsewhere_is_a_config_error() {
    let d = Daemon::prepare(Config::empty().btrfs("vault"));
    let text = fs::read_to_string(&d.layout.config_path).expect("config");
    let text = text.replace(
        "provider = \"btrfs\"",
        "provider = \"btrfs\"\nmount = \"/mnt/elsewhere\"",
    );
    let config = d.layout.root.join("elsewhere.toml");
    fs::write(&config, text).expect("config");
    let out = d.run_up(&config);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mount must be left out or equal backing"),
        "{err}"
    );
}

#[test]
fn a_daemon_killed_before_its_writers_thawed_leaves_neither_set_nor_snapshot() {
    let mut d = mixed();
    let (_seen, _writer) = raw_writer(
        &d.layout.socket,
        json!({"name": "slow", "volumes": ["vault"]}),
        |event| match event {
            "post-snapshot" => Act::Hang(Duration::from_secs(30)),
            _ => Act::Ok,
        },
    );
    let socket = d.layout.socket.clone();
    let creating = thread::spawn(move || common::create_set_in_process(&socket));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while snapshots(&d).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot was taken"
        );
        thread::sleep(Duration::from_millis(20));
    }
    d.kill();
    assert!(creating.join().expect("joins").is_err());
    d.launch();
    assert!(d.list_sets().is_empty(), "the interrupted set is gone");
    assert!(snapshots(&d).is_empty(), "and so is its snapshot");
}

#[test]
fn a_dot_umbra_a_user_made_first_is_refused_not_used() {
    let mut d = Daemon::prepare(Config::empty().btrfs("vault"));
    let vault = d.live("vault");
    // nobody got there first, with a directory of their own.
    fs::create_dir(vault.join(".umbra")).expect("mkdir");
    std::os::unix::fs::chown(
        vault.join(".umbra"),
        Some(common::NOBODY),
        Some(common::NOBODY),
    )
    .expect("chown");
    let out = d.run_up(&d.layout.config_path.clone());
    assert!(!out.status.success(), "started over a user's .umbra");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not umbra's snapshot folder"), "{err}");
    assert!(err.lines().count() <= 2, "one line: {err}");
    // Moved away, the daemon makes its own.
    fs::rename(vault.join(".umbra"), vault.join("theirs")).expect("mv");
    d.launch();
    let set = d.create_set();
    assert_eq!(snapshots(&d), [set.id.to_string()]);
    let meta = fs::metadata(vault.join("theirs")).expect("theirs");
    assert_eq!(
        meta.uid(),
        common::NOBODY,
        "the user's folder is left alone"
    );
}

#[test]
fn a_snapshot_destroyed_by_hand_leaves_its_set_browsable_without_that_volume() {
    let d = mixed();
    fs::write(d.live("data").join("notes"), b"uno").expect("write live");
    let set = d.create_set();
    let image = d.live("vault").join(".umbra").join(set.id.to_string());
    let out = std::process::Command::new("btrfs")
        .args(["-q", "subvolume", "delete"])
        .arg(&image)
        .output()
        .expect("btrfs subvolume delete");
    assert!(out.status.success(), "{out:?}");
    let dir = d.snapshots().join(&set.name);
    let mut names: Vec<String> = fs::read_dir(&dir)
        .expect("the set still lists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["data"]);
    assert_eq!(fs::read(dir.join("data/notes")).expect("read"), b"uno");
    let err = fs::metadata(dir.join("vault")).expect_err("vault is gone");
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    d.umbra_ok(&["delete", &set.name]);
}

/// The issue's whole story on one daemon: a writer-consistent set of a cow
/// volume and a btrfs volume, browsable side by side, diffable, restorable
/// and deletable.
#[test]
fn a_mixed_set_is_browsable_side_by_side_diffable_restorable_and_deletable() {
    let d = mixed();
    let (data, vault) = (d.live("data"), d.live("vault"));
    let (_seen, _writer) = raw_writer(
        &d.layout.socket,
        json!({"name": "app", "volumes": ["data", "vault"]}),
        |_| Act::Ok,
    );
    fs::write(data.join("notes"), b"uno").expect("write");
    fs::create_dir(vault.join("dir")).expect("mkdir");
    fs::write(vault.join("dir/sub"), b"sub").expect("write");
    fs::write(vault.join("ledger"), b"one").expect("write");
    let first = create_json(&d, &[]);
    let statuses: Vec<&str> = first["writers"]
        .as_array()
        .expect("writers")
        .iter()
        .filter_map(|w| w["status"].as_str())
        .collect();
    assert_eq!(statuses, ["ok"], "{first}");
    let first_name = first["name"].as_str().expect("name").to_string();

    fs::write(data.join("notes"), b"dos").expect("write");
    fs::write(vault.join("ledger"), b"two").expect("write");
    fs::remove_dir_all(vault.join("dir")).expect("rm -r");
    fs::write(vault.join("new"), b"new").expect("write");
    let second = d.create_set();

    // Side by side, each set as it was.
    let at = |set: &str, rel: &str| fs::read(d.snapshots().join(set).join(rel));
    assert_eq!(at(&first_name, "data/notes").expect("read"), b"uno");
    assert_eq!(at(&first_name, "vault/ledger").expect("read"), b"one");
    assert_eq!(at(&first_name, "vault/dir/sub").expect("read"), b"sub");
    assert_eq!(at(&second.name, "data/notes").expect("read"), b"dos");
    assert_eq!(at(&second.name, "vault/new").expect("read"), b"new");

    // One diff over both providers.
    let diff: Value =
        serde_json::from_str(&d.umbra_ok(&["diff", &first_name, &second.name, "--json"]))
            .expect("diff --json");
    let mut lines: Vec<(String, String, String)> = diff["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            let path = c["path"].as_str().unwrap_or_default();
            let volume = c["volume"].as_str().unwrap_or_default().to_string();
            let root = d.live(&volume);
            let rel = Path::new(path)
                .strip_prefix(&root)
                .unwrap_or(Path::new(path));
            (
                c["change"].as_str().unwrap_or_default().to_string(),
                volume,
                rel.display().to_string(),
            )
        })
        .collect();
    lines.sort();
    let want = [
        ("+", "vault", "new"),
        ("-", "vault", "dir"),
        ("-", "vault", "dir/sub"),
        ("M", "data", "notes"),
        ("M", "vault", ""),
        ("M", "vault", "ledger"),
    ];
    let mut want: Vec<(String, String, String)> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    want.sort();
    // A volume's root directory changed too (its entries); the cow
    // provider says so the same way, so both roots may appear.
    lines.retain(|l| !(l.0 == "M" && l.2.is_empty() && l.1 == "data"));
    assert_eq!(lines, want, "{diff}");

    // Restored in place from the first set, through the browser.
    d.umbra_ok(&[
        "restore",
        &first_name,
        &vault.join("ledger").to_string_lossy(),
        "--overwrite",
    ]);
    assert_eq!(fs::read(vault.join("ledger")).expect("read"), b"one");
    d.umbra_ok(&[
        "restore",
        &first_name,
        &vault.join("dir").to_string_lossy(),
        "--to",
        &d.scratch("out").to_string_lossy(),
    ]);
    assert_eq!(
        fs::read(d.scratch("out").join("dir/sub")).expect("read"),
        b"sub"
    );

    // Deleted: gone from the browser and from btrfs.
    d.umbra_ok(&["delete", "--all"]);
    assert!(snapshots(&d).is_empty());
    let left: Vec<_> = fs::read_dir(d.snapshots()).expect("ls").collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn backup_reads_a_btrfs_volume_through_the_browser_and_deletes_its_snapshot() {
    let d = mixed();
    fs::write(d.live("vault").join("ledger"), b"one").expect("write");
    let out = d.umbra_ok(&[
        "backup",
        "vault",
        "--",
        "sh",
        "-c",
        "cat \"$UMBRA_SNAPSHOT/vault/ledger\" && ls -A \"$UMBRA_SNAPSHOT/vault\"",
    ]);
    assert!(out.starts_with("one"), "{out}");
    assert!(
        !out.contains(".umbra"),
        "the snapshot folder is hidden: {out}"
    );
    assert!(d.list_sets().is_empty(), "the backup's set went");
    assert!(snapshots(&d).is_empty(), "and so did its snapshot");
}
