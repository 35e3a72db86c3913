//! What bad input gets: a clear one-line error and nothing lost. Unknown
//! sets, malformed configs, writes into the snapshot browser (EROFS), a
//! second daemon on a state dir already served, a client with no daemon,
//! control clients that stall or come one too many.

#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

mod common;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::manifest::{self, Manifest};
use common::{
    Config, Daemon, SetJson, assert_one_line_error, run_with_timeout, sys, toml_str, umbra_cmd,
};

#[test]
fn deleting_an_unknown_set_is_a_one_line_error_and_deletes_nothing() {
    let d = Daemon::start(Config::default());
    fs::write(d.live("data").join("f"), "one").unwrap();
    let s1 = d.create_set();
    fs::write(d.live("data").join("f"), "two").unwrap();
    let s2 = d.create_set();
    let before = d.list_sets();
    assert_eq!(before.len(), 2);

    let line = assert_one_line_error(
        &d.umbra(&["delete", "no-such-set"]),
        "delete of an unknown set",
    );
    assert!(
        line.contains("no-such-set"),
        "the error names the set: {line}"
    );
    assert_eq!(d.list_sets(), before);

    // A known set named beside an unknown one is not deleted either.
    assert_one_line_error(
        &d.umbra(&["delete", &s1.name, "no-such-set"]),
        "delete of a known and an unknown set",
    );
    assert_eq!(d.list_sets(), before, "a failed delete deletes nothing");
    assert_eq!(fs::read(d.browse(&s1, "data").join("f")).unwrap(), b"one");

    d.umbra_ok(&["delete", &s1.name]);
    assert_eq!(d.list_sets(), std::slice::from_ref(&s2));
    assert!(
        !d.snapshots().join(&s1.name).exists(),
        "a deleted set leaves the browser"
    );
    assert_one_line_error(&d.umbra(&["delete", &s1.name]), "deleting a set twice");
    assert_eq!(fs::read(d.browse(&s2, "data").join("f")).unwrap(), b"two");
}

#[test]
fn an_unknown_config_key_is_named_in_a_one_line_error() {
    let d = Daemon::prepare(Config::default());
    let good = fs::read_to_string(&d.layout.config_path).unwrap();
    let cases = [
        ("colour", format!("colour = \"blue\"\n{good}")),
        ("bakcing", format!("{good}bakcing = \"/tmp\"\n")), // inside the last [[volume]]
    ];
    for (key, text) in cases {
        let path = d.root().join(format!("bad-{key}.toml"));
        fs::write(&path, &text).unwrap();
        let out = d.run_up(&path);
        let line = assert_one_line_error(&out, &format!("config with unknown key {key}"));
        assert!(line.contains(key), "the error names the key {key}: {line}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("umbra: ready"));
        d.assert_nothing_mounted(key);
    }
}

#[test]
fn a_malformed_config_is_a_one_line_error() {
    let d = Daemon::prepare(Config::default());
    let l = &d.layout;
    let head = format!(
        "state_dir = {}\nsocket = {}\nsnapshots = {}\n",
        toml_str(&l.state_dir.to_string_lossy()),
        toml_str(&l.socket.to_string_lossy()),
        toml_str(&l.snapshots.to_string_lossy())
    );
    let (backing, mount) = (
        l.volumes[0].1.to_string_lossy(),
        l.volumes[0].2.to_string_lossy(),
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "an unterminated string",
            format!("state_dir = \"{}\n", l.state_dir.display()).into(),
        ),
        (
            "a broken table header",
            format!("{head}[[volume]\nname = \"data\"\n").into(),
        ),
        (
            "a key with no value",
            format!("{head}[[volume]]\nname =\n").into(),
        ),
        (
            "a string where a table belongs",
            format!("{head}volume = \"data\"\n").into(),
        ),
        (
            "a volume without a backing",
            format!(
                "{head}[[volume]]\nname = \"data\"\nmount = {}\n",
                toml_str(&mount)
            )
            .into(),
        ),
        (
            "a number where a path belongs",
            format!(
                "{head}[[volume]]\nname = \"data\"\nbacking = 7\nmount = {}\n",
                toml_str(&mount)
            )
            .into(),
        ),
        ("bytes that are not UTF-8", {
            let mut b = format!("{head}[[volume]]\nname = \"").into_bytes();
            b.extend_from_slice(b"\xff\xfe\"\n");
            b.extend_from_slice(
                format!(
                    "backing = {}\nmount = {}\n",
                    toml_str(&backing),
                    toml_str(&mount)
                )
                .as_bytes(),
            );
            b
        }),
    ];
    for (what, text) in cases {
        let path = d.root().join("bad.toml");
        fs::write(&path, text).unwrap();
        let out = d.run_up(&path);
        assert_one_line_error(&out, &format!("a config with {what}"));
        d.assert_nothing_mounted(what);
    }
    // A config file that is not there at all.
    let out = d.run_up(&d.root().join("missing.toml"));
    assert_one_line_error(&out, "a missing config file");
}

#[test]
fn every_change_in_the_snapshot_browser_gives_erofs() {
    let d = Daemon::start(Config::default());
    let live = d.live("data");
    fs::write(live.join("f"), "frozen").unwrap();
    fs::create_dir(live.join("empty")).unwrap();
    fs::create_dir(live.join("dir")).unwrap();
    fs::write(live.join("dir/g"), "g").unwrap();
    symlink("f", live.join("sym")).unwrap();
    let set = d.create_set();
    let snap = d.snapshots().to_path_buf();
    let root = d.browse(&set, "data");
    let before = Manifest::capture(&root);

    let at = |rel: &str| root.join(rel);
    let io = |r: std::io::Result<()>| r.map_err(|e| sys::errno_of(&e));
    let open = |path: &Path, write: bool, create: bool| {
        io(fs::OpenOptions::new()
            .read(!write)
            .write(write)
            .create(create)
            .truncate(false)
            .open(path)
            .map(drop))
    };
    let attempts: Vec<(&str, Result<(), i32>)> = vec![
        ("open f for writing", open(&at("f"), true, false)),
        ("create a new file", open(&at("new"), true, true)),
        ("mkdir", io(fs::create_dir(at("newdir")))),
        ("unlink", io(fs::remove_file(at("f")))),
        ("rmdir of an empty dir", io(fs::remove_dir(at("empty")))),
        (
            "chmod",
            io(fs::set_permissions(
                at("f"),
                std::os::unix::fs::PermissionsExt::from_mode(0o777),
            )),
        ),
        ("chown", sys::lchown(&at("f"), 1234, 1234)),
        ("utimens", sys::set_mtime(&at("f"), 5, 5)),
        ("truncate", {
            let c = sys::cstr(&at("f"));
            // SAFETY: valid path.
            if unsafe { libc::truncate(c.as_ptr(), 0) } == 0 {
                Ok(())
            } else {
                Err(sys::last_errno())
            }
        }),
        ("setxattr", sys::lsetxattr(&at("f"), "user.x", b"1")),
        ("removexattr", sys::lremovexattr(&at("f"), "user.x")),
        ("rename", sys::renameat2(&at("f"), &at("f2"), 0)),
        (
            "rename out of a dir",
            sys::renameat2(&at("dir/g"), &at("g"), 0),
        ),
        ("link", io(fs::hard_link(at("f"), at("f3")))),
        ("symlink", io(symlink("f", at("s2")))),
        ("mknod fifo", sys::mknod_fifo(&at("p"), 0o644)),
        (
            "mkdir in a set",
            io(fs::create_dir(snap.join(&set.name).join("vol2"))),
        ),
        (
            "mkdir at the browser root",
            io(fs::create_dir(snap.join("x"))),
        ),
        (
            "rename a set",
            sys::renameat2(&snap.join(&set.name), &snap.join("renamed"), 0),
        ),
        ("unlink latest", io(fs::remove_file(snap.join("latest")))),
        ("rmdir a set", io(fs::remove_dir(snap.join(&set.name)))),
    ];
    let wrong: Vec<String> = attempts
        .iter()
        .filter(|(_, r)| *r != Err(libc::EROFS))
        .map(|(what, r)| format!("{what}: {:?}", r.map_err(sys::errno_name)))
        .collect();
    assert!(
        wrong.is_empty(),
        "expected EROFS from each of:\n  {}",
        wrong.join("\n  ")
    );
    manifest::assert_same(
        &before,
        &Manifest::capture(&root),
        "the set after the refused changes",
    );
    assert_eq!(fs::read(live.join("f")).unwrap(), b"frozen");
    assert_eq!(d.list_sets(), [set]);
}

/// The first daemon still answers, serves its live mount and takes sets.
fn assert_still_serving(d: &Daemon, sets_before: usize, context: &str) {
    assert_eq!(d.list_sets().len(), sets_before, "{context}: list");
    for mp in d.layout.mountpoints() {
        assert_eq!(
            sys::mount_count(&mp),
            1,
            "{context}: {} should be mounted exactly once",
            mp.display()
        );
    }
    let f = d.live("data").join(format!("still-{sets_before}"));
    fs::write(&f, context).unwrap();
    assert_eq!(fs::read_to_string(&f).unwrap(), context);
    let set = d.create_set();
    assert_eq!(
        fs::read_to_string(d.browse(&set, "data").join(f.file_name().unwrap())).unwrap(),
        context
    );
}

#[test]
fn a_second_daemon_on_the_same_state_dir_is_refused() {
    let d = Daemon::start(Config::default());
    fs::write(d.live("data").join("f"), "first").unwrap();
    d.create_set();

    // The same config again: the natural mistake.
    let out = d.run_up(&d.layout.config_path);
    assert_one_line_error(&out, "a second `umbra up` with the same config");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("umbra: ready"));
    assert_still_serving(&d, 1, "after a second daemon with the same config");

    // Another socket, browser and mounts, but the same state dir.
    let other = Daemon::prepare(Config::default());
    let text = fs::read_to_string(&other.layout.config_path)
        .unwrap()
        .replace(
            &toml_str(&other.layout.state_dir.to_string_lossy()),
            &toml_str(&d.layout.state_dir.to_string_lossy()),
        );
    let config = other.root().join("same-state.toml");
    fs::write(&config, text).unwrap();
    let out = other.run_up(&config);
    assert_one_line_error(&out, "a second `umbra up` on the same state dir");
    other.assert_nothing_mounted("the refused daemon");
    assert_still_serving(&d, 2, "after a second daemon on the same state dir");
}

#[test]
fn a_client_with_no_daemon_is_a_one_line_error() {
    let d = Daemon::prepare(Config::default());
    for args in [
        ["list", "--json"],
        ["status", "--json"],
        ["create", "--json"],
    ] {
        let mut cmd = umbra_cmd();
        cmd.arg(args[0])
            .arg("--socket")
            .arg(&d.layout.socket)
            .arg(args[1])
            .current_dir(d.root());
        let out = run_with_timeout(&mut cmd, Duration::from_secs(20));
        assert_one_line_error(&out, &format!("`umbra {}` with no daemon", args[0]));
        assert!(
            out.stdout.is_empty(),
            "a failed --json command prints nothing on stdout"
        );
    }
}

/// A raw connection to the daemon's control socket.
fn raw_client(d: &Daemon) -> UnixStream {
    UnixStream::connect(&d.layout.socket).unwrap()
}

/// Everything the daemon sends on `stream` until it hangs up, which must
/// be within `within`.
fn read_until_hangup(stream: &mut UnixStream, within: Duration) -> String {
    let started = Instant::now();
    stream.set_read_timeout(Some(within)).unwrap();
    let mut out = Vec::new();
    if let Err(e) = stream.read_to_end(&mut out) {
        panic!(
            "the daemon did not hang up within {within:?} ({e}); got {:?}",
            String::from_utf8_lossy(&out)
        );
    }
    assert!(started.elapsed() < within);
    String::from_utf8(out).unwrap()
}

#[test]
fn stalled_control_clients_hold_no_one_up_and_are_dropped() {
    let d = Daemon::start(Config::default().line("client_timeout = 3"));
    let mut silent = raw_client(&d);
    let mut half = raw_client(&d);
    half.write_all(b"{\"op\":\"li").unwrap();

    // Another client is served beside them, at once.
    d.create_set();
    assert_eq!(d.list_sets().len(), 1);
    silent.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        silent.read(&mut byte).map_err(|e| e.kind()).err(),
        Some(ErrorKind::WouldBlock),
        "the silent client is still connected and unanswered"
    );
    silent.set_nonblocking(false).unwrap();

    // Each staller gets one error line when its time is up, then a hang-up.
    for (what, stream) in [("silent", &mut silent), ("half a line", &mut half)] {
        let answer = read_until_hangup(stream, Duration::from_secs(15));
        assert_eq!(
            answer.lines().collect::<Vec<_>>(),
            ["{\"error\":\"no whole request line within 3s; closing\"}"],
            "{what}"
        );
    }
    assert_eq!(d.list_sets().len(), 1);
}

#[test]
fn a_client_over_the_cap_gets_a_one_line_error_until_a_seat_frees() {
    let d = Daemon::start(
        Config::default()
            .line("max_clients = 2")
            .line("client_timeout = 2"),
    );
    let mut a = raw_client(&d);
    let mut b = raw_client(&d);
    // Once the daemon has seated both (under load that can take a moment;
    // until then `list` still gets a seat), the cap is reached.
    let mut out = d.umbra(&["list"]);
    for _ in 0..100 {
        if !out.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        out = d.umbra(&["list"]);
    }
    let line = assert_one_line_error(&out, "a third client with a cap of two");
    assert!(
        line.contains("serving 2 control clients already; try again"),
        "{line}"
    );
    // The stallers time out and give their seats back.
    for stream in [&mut a, &mut b] {
        let answer = read_until_hangup(stream, Duration::from_secs(15));
        assert!(answer.contains("no whole request line"), "{answer}");
    }
    d.umbra_ok(&["list"]);
}

#[test]
fn delete_selectors_pick_the_oldest_the_old_or_all() {
    let d = Daemon::start(Config::default());
    let sets: Vec<_> = (0..4).map(|_| d.create_set()).collect();
    d.umbra_ok(&["delete", "--oldest", "2"]);
    assert_eq!(d.list_sets(), sets[2..]);
    // Nothing was created a day ago: nothing goes.
    d.umbra_ok(&["delete", "--older-than", "1d"]);
    assert_eq!(d.list_sets(), sets[2..]);
    let out = d.umbra(&["delete", "--older-than", "soon"]);
    assert!(!out.status.success());
    assert_eq!(d.list_sets(), sets[2..]);
    d.umbra_ok(&["delete", "--all"]);
    assert!(d.list_sets().is_empty());
}

/// `umbra delete --json` prints one JSON document: the sets it deleted,
/// each as `umbra list --json` shows a set; an unknown set deletes none and
/// prints nothing on stdout.
#[test]
fn delete_json_prints_exactly_the_deleted_sets() {
    let d = Daemon::start(Config::default());
    let first = d.create_set();
    let second = d.create_set();
    let kept = d.create_set();
    let out = d.umbra_ok(&["delete", "--json", &first.name, &second.id.to_string()]);
    let deleted: Vec<SetJson> = serde_json::from_str(&out).expect("one JSON document");
    let names: Vec<&str> = deleted.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, [first.name.as_str(), second.name.as_str()]);
    for set in &deleted {
        set.assert_well_formed();
    }
    let left: Vec<String> = d.list_sets().into_iter().map(|s| s.name).collect();
    assert_eq!(left, std::slice::from_ref(&kept.name));
    let refused = d.umbra(&["delete", "--json", &kept.name, "no-such-set"]);
    assert!(!refused.status.success());
    assert!(refused.stdout.is_empty(), "a failed --json prints nothing");
    assert_eq!(d.list_sets().len(), 1, "all or none");
}
