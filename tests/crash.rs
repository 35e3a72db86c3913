//! Invariant 4 under process crashes: the daemon is SIGKILLed at random
//! points while random live operations and set creations run through its
//! mount; after each kill it is started again (recovering its stale mounts,
//! a torn pack tail, an unfinished set) and every set must still equal the
//! tree it was taken of, and a set whose `create` was cut short must be
//! either absent or whole. `UMBRA_CRASH_KILLS` sets the number of kills
//! (default 30), `UMBRA_CRASH_SEED` replays a run.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::thread;
use std::time::Duration;

use common::manifest::{Manifest, assert_same};
use common::ops::{GenConfig, Generator, Op, Rng, Slots, apply};
use common::{Config, Daemon, SetJson};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn sigkill_at_random_points_loses_no_set_and_no_live_data() {
    let kills = env_u64("UMBRA_CRASH_KILLS").unwrap_or(30);
    let seed = env_u64("UMBRA_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7)
    });
    println!("crash: UMBRA_CRASH_SEED={seed} UMBRA_CRASH_KILLS={kills}");
    let mut rng = Rng::new(seed);
    let mut generator = Generator::new(
        seed ^ 0x9e37_79b9_7f4a_7c15,
        GenConfig {
            set_every: 12,
            restart_every: 0,
            delete_every: 0,
            max_file: 2 << 20,
            max_total: 6 << 20,
        },
    );
    let mut d = Daemon::start(Config::default());
    let live = d.live("data");
    let mut sets: Vec<(SetJson, Manifest)> = Vec::new();

    for kill in 0..kills {
        let pid = d.pid().unwrap() as libc::pid_t;
        let delay = Duration::from_millis(rng.range(5, 150));
        let killer = thread::spawn(move || {
            thread::sleep(delay);
            // SAFETY: plain signal to the daemon's pid, which we still own
            // (not reaped), so it cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        let mut slots = Slots::default();
        // A set whose `create` the kill may have cut short: the tree it
        // would show, captured just before (no op runs in between).
        let mut in_doubt: Option<Manifest> = None;
        while !killer.is_finished() {
            match generator.next(&live, slots.open()) {
                Op::CreateSet => {
                    let Ok(before) = Manifest::try_capture(&live, &[]) else {
                        break;
                    };
                    match d.try_create_set() {
                        Ok(set) => sets.push((set, before)),
                        Err(_) => {
                            in_doubt = Some(before);
                            break;
                        }
                    }
                }
                op if op.is_daemon_op() => {}
                op => {
                    // Errors are part of the workload (and every op fails once the
                    // daemon is dead); only the sets are checked.
                    let _ = apply(&op, &live, &mut slots);
                }
            }
        }
        killer.join().unwrap();
        slots.close_all();
        d.kill();
        d.launch();

        let context = format!("seed {seed}, after kill {}", kill + 1);
        let mut listed = d.list_sets();
        listed.sort_by_key(|s| s.id);
        let known: Vec<SetJson> = sets.iter().map(|(s, _)| s.clone()).collect();
        let extra: Vec<SetJson> = listed
            .iter()
            .filter(|s| !known.contains(s))
            .cloned()
            .collect();
        assert!(
            known.iter().all(|s| listed.contains(s)),
            "{context}: a committed set vanished; listed {listed:?}"
        );
        match (extra.as_slice(), in_doubt) {
            ([], _) => {}
            ([set], Some(before)) => sets.push((set.clone(), before)),
            (extra, _) => panic!("{context}: sets nobody created: {extra:?}"),
        }
        for (set, image) in &sets {
            let shown = Manifest::try_capture(&d.browse(set, "data"), &[]).unwrap();
            assert_same(image, &shown, &format!("{context}: set {}", set.name));
        }
    }
    println!(
        "crash: {kills} kills, {} sets checked after each",
        sets.len()
    );
}

/// A set is committed before its writers thaw and hear PostSnapshot; a
/// daemon killed in between leaves a set whose writers may not have been
/// consistent, so the next start deletes it: whole or absent.
#[test]
fn a_set_cut_off_before_its_writers_finished_is_gone_after_a_restart() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;

    let mut d = Daemon::start(Config::default());
    std::fs::write(d.live("data").join("f"), b"kept").unwrap();
    let whole = d.create_set();

    // A writer that answers every event but PostSnapshot, and says when it
    // got there.
    let mut stream = UnixStream::connect(&d.layout.socket).unwrap();
    writeln!(
        stream,
        r#"{{"op": "register", "name": "slow", "volumes": ["data"]}}"#
    )
    .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut ack = String::new();
    reader.read_line(&mut ack).unwrap();
    assert!(ack.contains("ok"), "registered: {ack}");
    let (at_post, reached) = std::sync::mpsc::channel();
    let writer = thread::spawn(move || {
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            let event: serde_json::Value = serde_json::from_str(&line).unwrap();
            let name = event["event"].as_str().unwrap_or_default().to_string();
            let set_id = event["set_id"].as_str().unwrap_or_default().to_string();
            line.clear();
            if name == "post-snapshot" {
                let _ = at_post.send(());
                continue; // never answers: the daemon is killed meanwhile
            }
            let reply = serde_json::json!({"ok": {"event": name, "set_id": set_id}});
            if writeln!(stream, "{reply}").is_err() {
                return;
            }
        }
    });
    let mut create = common::umbra_cmd()
        .args(["create", "--socket"])
        .arg(&d.layout.socket)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    reached
        .recv_timeout(Duration::from_secs(30))
        .expect("the writer heard PostSnapshot");
    let during: Vec<String> = d.list_sets().into_iter().map(|s| s.name).collect();
    assert_eq!(during.len(), 2, "the committed set is listed: {during:?}");
    d.kill();
    let _ = create.wait();
    let _ = writer.join();

    d.launch();
    let after: Vec<String> = d.list_sets().into_iter().map(|s| s.name).collect();
    assert_eq!(
        after,
        std::slice::from_ref(&whole.name),
        "the cut-off set is gone"
    );
    assert_eq!(
        std::fs::read(d.browse(&whole, "data").join("f")).unwrap(),
        b"kept"
    );
    assert!(
        d.failure("").contains("creation was interrupted"),
        "the deletion is logged"
    );
    d.stop();
}

/// Invariant 4's live data: with the default write-through mount, bytes
/// whose write() returned are in the backing file, so a SIGKILL of the
/// daemon loses none of them, even from a file still open. (The writeback
/// cache, off by default, gives this up: see umbra.toml(5).)
#[test]
fn sigkill_loses_no_returned_write_of_a_file_still_open() {
    use std::io::Write;

    let mut d = Daemon::start(Config::default());
    let data = common::ops::fill(4, 300_001);
    let mut f = std::fs::File::create(d.live("data").join("open")).unwrap();
    f.write_all(&data).unwrap();
    d.kill();
    drop(f);
    assert_eq!(std::fs::read(d.backing("data").join("open")).unwrap(), data);
    d.launch();
    assert_eq!(std::fs::read(d.live("data").join("open")).unwrap(), data);
}

/// A daemon whose first run kills itself at `point` (`UMBRA_CRASH_AT`,
/// debug builds), after `setup` laid its volume and took a set.
fn crashing_at(point: &str, setup: impl FnOnce(&Path)) -> (Daemon, SetJson) {
    let mut d = Daemon::prepare(Config::default());
    d.env("UMBRA_CRASH_AT", point);
    d.launch();
    setup(&d.live("data"));
    let set = d.create_set();
    (d, set)
}

/// `cut` was the operation the daemon died in; it starts again, without
/// the crash point.
fn restart_after(d: &mut Daemon, cut: std::io::Result<()>) {
    assert!(
        cut.is_err(),
        "the daemon died inside the operation: {cut:?}"
    );
    d.kill();
    d.unset_env("UMBRA_CRASH_AT");
    d.launch();
}

/// A rename over an empty directory a set needs is two steps on the backing
/// filesystem (an exchange, then the replaced directory into the hidden
/// folder). The daemon is killed at a point between or before them
/// (`UMBRA_CRASH_AT`, debug builds), and the next start must show the
/// rename whole or not at all, never the replaced directory under the
/// source's name; the set shows the tree as it was either way.
fn rename_over_a_directory_cut_at(point: &str) -> Daemon {
    use std::os::unix::fs::PermissionsExt;

    let (mut d, set) = crashing_at(point, |live| {
        std::fs::create_dir(live.join("src")).unwrap();
        std::fs::write(live.join("src/f"), b"moved").unwrap();
        std::fs::create_dir(live.join("dst")).unwrap();
        std::fs::set_permissions(live.join("dst"), std::fs::Permissions::from_mode(0o750)).unwrap();
    });
    let live = d.live("data");
    let cut = std::fs::rename(live.join("src"), live.join("dst"));
    restart_after(&mut d, cut);
    let view = d.browse(&set, "data");
    assert_eq!(std::fs::read(view.join("src/f")).unwrap(), b"moved");
    let dst = std::fs::symlink_metadata(view.join("dst")).unwrap();
    assert!(dst.is_dir());
    assert_eq!(dst.permissions().mode() & 0o7777, 0o750);
    assert_eq!(std::fs::read_dir(view.join("dst")).unwrap().count(), 0);
    d
}

#[test]
fn a_rename_over_a_directory_cut_between_its_steps_is_finished_at_start() {
    let mut d = rename_over_a_directory_cut_at("rename-swapped");
    let live = d.live("data");
    // Whole: the source is gone and its tree is at the destination.
    assert_eq!(
        std::fs::symlink_metadata(live.join("src"))
            .map_err(|e| e.kind())
            .err(),
        Some(std::io::ErrorKind::NotFound),
        "the replaced directory is not left under the source's name"
    );
    assert_eq!(std::fs::read(live.join("dst/f")).unwrap(), b"moved");
    assert!(!d.backing("data").join("src").exists());
    assert!(
        d.failure("").contains("finished a rename over a directory"),
        "the repair is logged"
    );
    // Finished once: a second start finds nothing left to do.
    d.restart();
    assert!(!d.failure("").contains("finished a rename over a directory"));
    assert_eq!(std::fs::read(live.join("dst/f")).unwrap(), b"moved");
    d.stop();
}

#[test]
fn a_rename_over_a_directory_cut_before_its_exchange_did_not_happen() {
    let mut d = rename_over_a_directory_cut_at("rename-noted");
    let live = d.live("data");
    // Not at all: both names as they were, the destination untouched.
    assert_eq!(std::fs::read(live.join("src/f")).unwrap(), b"moved");
    let dst = std::fs::symlink_metadata(live.join("dst")).unwrap();
    assert!(dst.is_dir());
    assert_eq!(std::fs::read_dir(live.join("dst")).unwrap().count(), 0);
    assert!(!d.failure("").contains("finished a rename over a directory"));
    // The rename can be made again, whole.
    std::fs::rename(live.join("src"), live.join("dst")).unwrap();
    assert_eq!(std::fs::read(live.join("dst/f")).unwrap(), b"moved");
    assert!(!live.join("src").exists());
    d.stop();
}

/// A rename over a file a set needs first gives the replaced file a second
/// name in the hidden folder. Killed right after that, the rename did not
/// happen: the next start shows both files as they were, the replaced one
/// an ordinary live file again (one link, linkable), and the set whole.
#[test]
fn a_rename_over_a_file_cut_after_its_hidden_link_did_not_happen() {
    use std::os::unix::fs::MetadataExt;

    let (mut d, set) = crashing_at("replace-linked", |live| {
        std::fs::write(live.join("src"), b"new").unwrap();
        std::fs::write(live.join("dst"), b"old").unwrap();
    });
    let live = d.live("data");
    let cut = std::fs::rename(live.join("src"), live.join("dst"));
    restart_after(&mut d, cut);
    assert_eq!(std::fs::read(live.join("src")).unwrap(), b"new");
    assert_eq!(std::fs::read(live.join("dst")).unwrap(), b"old");
    assert_eq!(std::fs::metadata(live.join("dst")).unwrap().nlink(), 1);
    std::fs::hard_link(live.join("dst"), live.join("again")).unwrap();
    assert_eq!(std::fs::metadata(live.join("dst")).unwrap().nlink(), 2);
    let view = d.browse(&set, "data");
    assert_eq!(std::fs::read(view.join("src")).unwrap(), b"new");
    assert_eq!(std::fs::read(view.join("dst")).unwrap(), b"old");
    assert!(!view.join("again").exists());
    // The rename can be made again, whole.
    std::fs::rename(live.join("src"), live.join("dst")).unwrap();
    assert_eq!(std::fs::read(live.join("dst")).unwrap(), b"new");
    assert_eq!(std::fs::read(view.join("dst")).unwrap(), b"old");
    d.stop();
}

/// A set of a file `f` large enough to be moved aside whole when
/// truncated (rather than copied), and a truncation of it to zero that
/// kills the daemon at `point`; the daemon has started again. Returns the
/// bytes the set keeps.
fn truncation_cut_at(point: &str) -> (Daemon, SetJson, Vec<u8>) {
    let kept = common::ops::fill(7, 300_001);
    let (mut d, set) = crashing_at(point, |live| {
        std::fs::write(live.join("f"), &kept).unwrap();
    });
    let cut = std::fs::OpenOptions::new()
        .write(true)
        .open(d.live("data").join("f"))
        .and_then(|f| f.set_len(0));
    restart_after(&mut d, cut);
    (d, set, kept)
}

/// A truncation of a file a set needs builds its successor in the hidden
/// folder first. Killed then, the successor is removed at the next start;
/// its inode number, free again, must not be taken for a hidden inode when
/// a new file gets it (the live mount showed such a file with nlink 0).
#[test]
fn a_truncation_cut_after_building_its_successor_leaves_no_hidden_number() {
    use std::os::unix::fs::MetadataExt;

    let (mut d, set, kept) = truncation_cut_at("truncate-built");
    let live = d.live("data");
    assert_eq!(std::fs::read(live.join("f")).unwrap(), kept);
    assert_eq!(
        std::fs::read(d.browse(&set, "data").join("f")).unwrap(),
        kept
    );
    // New files take free inode numbers, the successor's among them.
    for i in 0..64 {
        let path = live.join(format!("new{i}"));
        std::fs::write(&path, b"x").unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().nlink(),
            1,
            "{} (inode {})",
            path.display(),
            std::fs::metadata(d.backing("data").join(format!("new{i}")))
                .unwrap()
                .ino()
        );
    }
    d.stop();
}

/// Killed after the swap itself (the kept file renamed aside, the empty
/// successor under its name) and before the daemon recorded the successor
/// as the file's alias: the truncation happened, the set still reads the
/// bytes it kept, the kept file has its hidden name only, and the live
/// file is an ordinary one that takes writes, links and truncations again.
#[test]
fn a_truncation_cut_after_its_swap_is_whole_and_the_set_keeps_the_bytes() {
    use std::os::unix::fs::MetadataExt;

    let (mut d, set, kept) = truncation_cut_at("truncate-swapped");
    let live = d.live("data");
    let view = d.browse(&set, "data");
    assert_eq!(std::fs::read(live.join("f")).unwrap(), b"");
    assert_eq!(std::fs::metadata(live.join("f")).unwrap().nlink(), 1);
    assert_eq!(std::fs::read(view.join("f")).unwrap(), kept);
    let aside = d.backing("data").join(".umbra/aside");
    let hidden: Vec<_> = std::fs::read_dir(&aside)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(hidden.len(), 1, "only the kept file is aside: {hidden:?}");
    assert_eq!(hidden[0].metadata().unwrap().nlink(), 1);
    assert_eq!(std::fs::read(hidden[0].path()).unwrap(), kept);
    // The successor is live like any file.
    std::fs::write(live.join("f"), b"after").unwrap();
    std::fs::hard_link(live.join("f"), live.join("g")).unwrap();
    assert_eq!(std::fs::metadata(live.join("f")).unwrap().nlink(), 2);
    assert_eq!(std::fs::read(live.join("g")).unwrap(), b"after");
    assert_eq!(std::fs::read(view.join("f")).unwrap(), kept);
    assert!(!view.join("g").exists());
    // A second set and a truncation in it keep what this one needs.
    let second = d.create_set();
    std::fs::write(live.join("f"), b"").unwrap();
    assert_eq!(
        std::fs::read(d.browse(&second, "data").join("f")).unwrap(),
        b"after"
    );
    assert_eq!(std::fs::read(view.join("f")).unwrap(), kept);
    d.stop();
}
