//! Writers and the event sequence through the real binary and its real
//! FUSE mounts: every event in order with one set id for three kinds of
//! writers, and each fault (a failure at each event, a hang, a disconnect,
//! a malformed reply, exec exit codes, a second create) ending with no set
//! left, nothing held, the right writer state, a one-line error and the
//! daemon still serving.

mod coord_common;

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use coord_common::{Act, CREATE, Daemon, events, eventually, raw_writer, script};
use serde_json::{Value, json};
use umbra_coordinator::client::WriterClient;
use umbra_coordinator::{Event, Registration};

fn exec_writer(name: &str, hook: &std::path::Path, required: bool, timeout: u64) -> String {
    format!(
        "[[writer]]\nname = \"{name}\"\nvolumes = [\"data\"]\nexec = \"{}\"\n\
         timeout_secs = {timeout}\nrequired = {required}\n",
        hook.display()
    )
}

#[test]
fn three_writers_see_every_event_in_order_with_one_set_id() {
    let hooks = tempfile::tempdir().expect("tempdir");
    let hook = hooks.path().join("hook");
    let seen_by_exec = hooks.path().join("seen");
    script(
        &hook,
        &format!(
            "[ \"$1\" = \"$UMBRA_EVENT\" ] || exit 9\necho \"$1 $UMBRA_SET_ID $UMBRA_SET_NAME $UMBRA_VOLUMES\" >> {}",
            seen_by_exec.display()
        ),
    );
    let daemon = Daemon::start(&exec_writer("hook", &hook, true, 5));

    // The Rust library.
    let library: Arc<Mutex<Vec<(Event, String)>>> = Arc::default();
    let client = WriterClient::connect(&daemon.socket(), &Registration::new("library", &["data"]))
        .expect("registers");
    {
        let library = library.clone();
        thread::spawn(move || {
            let _ = client.serve(|event| {
                library
                    .lock()
                    .expect("log")
                    .push((event.event, event.set_id.clone()));
                Ok(())
            });
        });
    }
    // A raw socket client, on every volume.
    let (raw, _raw_thread) = raw_writer(&daemon.socket(), json!({"name": "raw"}), |_| Act::Ok);

    std::fs::write(daemon.path("data/file"), b"before").expect("live write");
    let created = daemon.json(&["create", "data", "logs"]);
    let guid = created["set_guid"].as_str().expect("set_guid").to_string();
    let name = created["name"].as_str().expect("name").to_string();
    assert!(created["hold_ms"].as_f64().expect("hold_ms") >= 0.0);
    assert!(
        created["total_ms"].as_f64().expect("total_ms")
            >= created["hold_ms"].as_f64().unwrap_or(0.0)
    );

    let exec_lines: Vec<String> = std::fs::read_to_string(&seen_by_exec)
        .expect("the hook ran")
        .lines()
        .map(str::to_string)
        .collect();
    let expected: Vec<String> = CREATE
        .iter()
        .map(|e| format!("{e} {guid} {name} data logs"))
        .collect();
    assert_eq!(exec_lines, expected);

    let library = library.lock().expect("log").clone();
    assert_eq!(
        library.iter().map(|e| e.0).collect::<Vec<_>>(),
        Event::CREATE
    );
    assert!(library.iter().all(|e| e.1 == guid));
    assert_eq!(events(&raw), CREATE);
    assert!(raw.lock().expect("log").iter().all(|e| e.1 == guid));

    let sets = daemon.sets();
    assert_eq!(sets.len(), 1);
    let writers: Vec<&str> = sets[0]["writers"]
        .as_array()
        .expect("writers")
        .iter()
        .map(|w| w["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(writers, ["hook", "library", "raw"]);
    assert!(
        sets[0]["writers"]
            .as_array()
            .expect("writers")
            .iter()
            .all(|w| w["status"] == "ok")
    );
    for w in ["hook", "library", "raw"] {
        assert_eq!(daemon.writer(w)["state"], "stable", "{w}");
    }
    assert_eq!(
        std::fs::read(daemon.path(&format!("snapshots/{name}/data/file"))).expect("in the set"),
        b"before"
    );
}

#[test]
fn a_writer_failing_at_each_event_aborts_the_set() {
    let daemon = Daemon::start("");
    for event in [
        "prepare-backup",
        "prepare-snapshot",
        "freeze",
        "thaw",
        "post-snapshot",
    ] {
        let name = format!("fails-{event}");
        let wanted = event.to_string();
        let (seen, thread) = raw_writer(
            &daemon.socket(),
            json!({"name": name, "volumes": ["data"]}),
            move |e| match e {
                e if e == wanted => Act::Fail {
                    retryable: false,
                    message: "cannot".into(),
                },
                "abort" => Act::Close,
                _ => Act::Ok,
            },
        );
        let err = daemon.create_fails();
        assert_eq!(
            err,
            format!(
                "umbra: writer {name} failed at {event}: cannot (not retryable); the set was aborted"
            )
        );
        thread.join().expect("writer thread");
        let seen = events(&seen);
        assert_eq!(
            seen.last().map(String::as_str),
            Some("abort"),
            "{event}: {seen:?}"
        );
        assert!(daemon.sets().is_empty(), "{event}: no set is left");
        daemon.live_write_flows();
        let state = daemon.writer(&name);
        assert_eq!(state["state"], format!("failed-at-{event}"));
        assert_eq!(state["last_error"], "cannot");
        assert_eq!(state["retryable"], false);
    }
    // A writer failing Identify drops out; the set goes on without it.
    let (_seen, _t) = raw_writer(
        &daemon.socket(),
        json!({"name": "fails-identify"}),
        |e| match e {
            "identify" => Act::Fail {
                retryable: true,
                message: "not now".into(),
            },
            _ => Act::Ok,
        },
    );
    let created = daemon.json(&["create"]);
    assert_eq!(created["writers"], json!([]));
    assert_eq!(
        daemon.writer("fails-identify")["state"],
        "failed-at-identify"
    );
    assert_eq!(daemon.sets().len(), 1);
}

#[test]
fn a_hung_writer_past_its_deadline_aborts_the_set_and_nothing_stays_held() {
    let daemon = Daemon::start("");
    let (_seen, _t) = raw_writer(
        &daemon.socket(),
        json!({"name": "hung", "timeout_secs": 1}),
        |e| match e {
            "freeze" => Act::Hang(Duration::from_secs(30)),
            _ => Act::Ok,
        },
    );
    let started = Instant::now();
    let err = daemon.create_fails();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.starts_with("umbra: writer hung failed at freeze: no answer within 1s (retryable)"),
        "{err}"
    );
    assert!(daemon.sets().is_empty());
    daemon.live_write_flows();
    let hung = daemon.writer("hung");
    assert_eq!(hung["state"], "failed-at-freeze");
    assert_eq!(hung["connected"], false);
    // The daemon goes on: without the hung writer, a set is made.
    daemon.json(&["create"]);
    assert_eq!(daemon.sets().len(), 1);
}

#[test]
fn a_disconnect_mid_sequence_aborts_the_set() {
    let daemon = Daemon::start("");
    let (_seen, _t) = raw_writer(&daemon.socket(), json!({"name": "leaver"}), |e| match e {
        "prepare-snapshot" => Act::Close,
        _ => Act::Ok,
    });
    let (others, _t2) = raw_writer(&daemon.socket(), json!({"name": "stayer"}), |_| Act::Ok);
    let err = daemon.create_fails();
    assert_eq!(
        err,
        "umbra: writer leaver failed at prepare-snapshot: disconnected (not retryable); the set was aborted"
    );
    assert_eq!(
        events(&others),
        ["identify", "prepare-backup", "prepare-snapshot", "abort"]
    );
    assert!(daemon.sets().is_empty());
    assert_eq!(daemon.writer("stayer")["state"], "stable");
    daemon.live_write_flows();
    daemon.json(&["create"]);
}

#[test]
fn a_malformed_reply_drops_the_writer_and_aborts_the_set() {
    let daemon = Daemon::start("");
    let (_seen, _t) = raw_writer(&daemon.socket(), json!({"name": "babbler"}), |e| match e {
        "freeze" => Act::Garbage,
        _ => Act::Ok,
    });
    let err = daemon.create_fails();
    assert!(
        err.starts_with("umbra: writer babbler failed at freeze: malformed reply:"),
        "{err}"
    );
    assert!(daemon.sets().is_empty());
    assert_eq!(daemon.writer("babbler")["connected"], false);
    daemon.live_write_flows();

    // A registration that does not parse is refused with one line, and a
    // registration of an unknown volume too; the daemon goes on.
    let (_s, _r, ack) = coord_common::connect(&daemon.socket(), json!({"name": "x", "colour": 1}));
    assert!(
        ack["error"]
            .as_str()
            .expect("error")
            .starts_with("malformed request"),
        "{ack}"
    );
    let (_s, _r, ack) =
        coord_common::connect(&daemon.socket(), json!({"name": "x", "volumes": ["nope"]}));
    assert_eq!(ack, json!({"error": "no volume named \"nope\""}));
    daemon.json(&["create"]);
}

#[test]
fn the_exec_writers_exit_codes_decide() {
    let hooks = tempfile::tempdir().expect("tempdir");
    let hook = hooks.path().join("hook");
    let fail_at = hooks.path().join("fail-at");
    let code = hooks.path().join("code");
    script(
        &hook,
        &format!(
            "if [ \"$1\" = \"$(cat {fail})\" ]; then echo \"hook says no at $1\" >&2; exit $(cat {code}); fi",
            fail = fail_at.display(),
            code = code.display()
        ),
    );
    let optional = hooks.path().join("optional");
    script(&optional, "[ \"$1\" = freeze ] && exit 1; exit 0");
    let mut extra = exec_writer("hook", &hook, true, 5);
    extra.push_str(&exec_writer("optional", &optional, false, 5));
    let daemon = Daemon::start(&extra);

    std::fs::write(&fail_at, "freeze").expect("write");
    std::fs::write(&code, "75").expect("write");
    let err = daemon.create_fails();
    assert_eq!(
        err,
        "umbra: writer hook failed at freeze: hook says no at freeze (retryable); the set was aborted"
    );
    let state = daemon.writer("hook");
    assert_eq!(state["state"], "failed-at-freeze");
    assert_eq!(state["retryable"], true);
    assert_eq!(state["kind"], "exec");

    std::fs::write(&fail_at, "prepare-backup").expect("write");
    std::fs::write(&code, "3").expect("write");
    let err = daemon.create_fails();
    assert!(
        err.contains("failed at prepare-backup: hook says no at prepare-backup (not retryable)"),
        "{err}"
    );
    assert_eq!(daemon.writer("hook")["retryable"], false);
    assert!(daemon.sets().is_empty());
    daemon.live_write_flows();

    // Success: the optional writer's failure is recorded, the set is made.
    std::fs::write(&fail_at, "none").expect("write");
    let created = daemon.json(&["create"]);
    let writers = created["writers"].as_array().expect("writers").clone();
    let status = |name: &str| -> Value {
        writers
            .iter()
            .find(|w| w["name"] == name)
            .map(|w| w["status"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(status("hook"), "ok");
    assert_eq!(status("optional"), "failed-at-freeze");
    assert_eq!(daemon.writer("hook")["state"], "stable");
    assert_eq!(daemon.sets().len(), 1);
}

/// Regression: `umbra writers` kept a writer's old error after it came
/// through a later set without failing.
#[test]
fn writers_shows_no_stale_error_after_a_later_success() {
    let hooks = tempfile::tempdir().expect("tempdir");
    let hook = hooks.path().join("hook");
    let failed_once = hooks.path().join("failed-once");
    script(
        &hook,
        &format!(
            "if [ \"$1\" = freeze ] && [ ! -e {once} ]; then : > {once}; echo \"not now\" >&2; exit 75; fi; exit 0",
            once = failed_once.display()
        ),
    );
    let daemon = Daemon::start(&exec_writer("hook", &hook, true, 5));

    let err = daemon.create_fails();
    assert!(err.contains("failed at freeze: not now"), "{err}");
    let failed = daemon.writer("hook");
    assert_eq!(failed["state"], "failed-at-freeze");
    assert_eq!(failed["last_error"], "not now");
    assert_eq!(failed["retryable"], true);

    let created = daemon.json(&["create"]);
    assert_eq!(created["writers"][0]["status"], "ok", "{created}");
    let after = daemon.writer("hook");
    assert_eq!(after["state"], "stable", "{after}");
    assert_eq!(after["last_error"], Value::Null, "{after}");
    assert_eq!(after["retryable"], Value::Null, "{after}");
    assert_eq!(daemon.sets().len(), 1);
}

#[test]
fn a_second_create_while_one_runs_gets_a_clear_error() {
    let daemon = Arc::new(Daemon::start(""));
    let (seen, _t) = raw_writer(&daemon.socket(), json!({"name": "slow"}), |e| match e {
        "freeze" => Act::Hang(Duration::from_millis(1500)),
        _ => Act::Ok,
    });
    let first = {
        let daemon = daemon.clone();
        thread::spawn(move || daemon.umbra(&["create"]))
    };
    eventually("the first create to reach freeze", || {
        events(&seen).contains(&"freeze".to_string())
    });
    let err = daemon.create_fails();
    assert_eq!(
        err,
        "umbra: a shadow copy set is already being created; try again when it is done"
    );
    let first = first.join().expect("first create");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(daemon.sets().len(), 1);
}

/// A shared writable mapping of `len` bytes of `path`; the file itself is
/// closed at once (the mapping keeps it open).
fn map(path: &std::path::Path, len: usize) -> *mut u8 {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    // SAFETY: a fresh shared mapping of an open file; checked below.
    let at = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        )
    };
    assert_ne!(at, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
    at.cast()
}

#[test]
fn an_mmap_store_before_freeze_is_in_the_set() {
    let daemon = Daemon::start("");
    const LEN: usize = 256 * 1024;
    let path = daemon.path("data/mapped");
    std::fs::write(&path, vec![0u8; LEN]).expect("live write");
    let at = map(&path, LEN);
    // SAFETY: within the mapping.
    let page = |offset: usize, text: &[u8]| unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), at.add(offset), text.len());
    };
    page(0, b"HELLO");
    page(200_000, b"THERE");
    let created = daemon.json(&["create"]);
    let name = created["name"].as_str().expect("name").to_string();
    page(0, b"LATER");
    page(200_000, b"LATER");
    // SAFETY: the mapping made above, flushed and unmapped once.
    unsafe {
        assert_eq!(libc::msync(at.cast(), LEN, libc::MS_SYNC), 0);
        assert_eq!(libc::munmap(at.cast(), LEN), 0);
    }
    let live = std::fs::read(&path).expect("live read");
    assert_eq!(&live[..5], b"LATER");
    let set = std::fs::read(daemon.path(&format!("snapshots/{name}/data/mapped"))).expect("in set");
    assert_eq!(&set[..5], b"HELLO");
    assert_eq!(&set[200_000..200_005], b"THERE");
}

/// An application whose transactions each write one file on `data` and one
/// on `logs` under its own lock, and a writer that takes that lock from
/// Freeze to Thaw: in every one of 50 sets both files show the same
/// transaction.
#[test]
fn every_set_holds_whole_transactions_across_two_volumes() {
    use std::sync::Condvar;
    use std::sync::atomic::{AtomicBool, Ordering};

    let daemon = Daemon::start("");
    // The application's lock: `true` while a writer holds it frozen.
    let lock = Arc::new((Mutex::new(false), Condvar::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let app = {
        let (lock, stop) = (lock.clone(), stop.clone());
        let (a, b) = (daemon.path("data/txn"), daemon.path("logs/txn"));
        thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (m, cv) = &*lock;
                let mut frozen = m.lock().expect("lock");
                while *frozen {
                    frozen = cv.wait(frozen).expect("wait");
                }
                n += 1;
                std::fs::write(&a, n.to_string()).expect("write a");
                std::fs::write(&b, n.to_string()).expect("write b");
            }
            n
        })
    };
    let client =
        WriterClient::connect(&daemon.socket(), &Registration::new("app", &[])).expect("registers");
    {
        let lock = lock.clone();
        thread::spawn(move || {
            let _ = client.serve(|event| {
                let (m, cv) = &*lock;
                match event.event {
                    Event::Freeze => *m.lock().expect("lock") = true,
                    Event::Thaw | Event::Abort => {
                        *m.lock().expect("lock") = false;
                        cv.notify_all();
                    }
                    _ => {}
                }
                Ok(())
            });
        });
    }
    let mut names = Vec::new();
    for _ in 0..50 {
        let created = daemon.json(&["create", "data", "logs"]);
        names.push(created["name"].as_str().expect("name").to_string());
    }
    stop.store(true, Ordering::Relaxed);
    let transactions = app.join().expect("app");
    assert!(transactions > 0);
    for name in &names {
        let a = std::fs::read_to_string(daemon.path(&format!("snapshots/{name}/data/txn")));
        let b = std::fs::read_to_string(daemon.path(&format!("snapshots/{name}/logs/txn")));
        match (a, b) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "set {name}"),
            (Err(_), Err(_)) => {} // before the first transaction
            (a, b) => panic!("set {name} has half a transaction: {a:?} {b:?}"),
        }
    }
}

/// The Python writer printed in umbra-writer(7) works as printed.
#[test]
fn the_man_pages_python_writer_takes_part() {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/man/umbra-writer.7"))
        .expect("man page");
    let start = page
        .find(".SH EXAMPLE IN PYTHON\n.EX\n")
        .expect("the example section")
        + ".SH EXAMPLE IN PYTHON\n.EX\n".len();
    let end = start + page[start..].find("\n.EE").expect("end of example");
    let daemon = Daemon::start("");
    let program = page[start..end].replace("\\e", "\\").replace(
        ".umbra/control.sock",
        &daemon.socket().display().to_string(),
    );
    let path = daemon.path("writer.py");
    std::fs::write(&path, program).expect("write");
    let mut python = std::process::Command::new("python3")
        .arg(&path)
        .spawn()
        .expect("python3 runs (the CI installs it)");
    eventually("the Python writer to register", || {
        daemon.writer("app")["state"] == "stable"
    });
    let created = daemon.json(&["create"]);
    assert_eq!(
        created["writers"],
        json!([{"name": "app", "required": true, "status": "ok", "components": []}])
    );
    let _ = python.kill();
    let _ = python.wait();
}

/// A hook that logs `EVENT [UMBRA_BACKUP_SUCCEEDED]` to `log`.
fn logging_hook(dir: &std::path::Path, log: &std::path::Path) -> String {
    let hook = dir.join("hook");
    script(
        &hook,
        &format!(
            "echo \"$1${{UMBRA_BACKUP_SUCCEEDED:+ $UMBRA_BACKUP_SUCCEEDED}}\" >> {}",
            log.display()
        ),
    );
    exec_writer("hook", &hook, true, 5)
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn backup_runs_the_command_over_the_set_then_reports_and_deletes_it() {
    let hooks = tempfile::tempdir().expect("tempdir");
    let log = hooks.path().join("log");
    let daemon = Daemon::start(&logging_hook(hooks.path(), &log));
    std::fs::write(daemon.path("data/f"), b"in the set").expect("live write");
    let copy = hooks.path().join("copy");
    let out = daemon.umbra(&[
        "backup",
        "data",
        "--",
        "sh",
        "-c",
        &format!(
            "cat \"$UMBRA_SNAPSHOT/data/f\" > {copy}; echo command >> {log}; exit 3",
            copy = copy.display(),
            log = log.display()
        ),
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&copy).expect("copied"), b"in the set");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("the command exited with 3; the set was deleted"),
        "{said}"
    );
    assert_eq!(
        lines(&log),
        [
            "identify",
            "prepare-backup",
            "prepare-snapshot",
            "freeze",
            "thaw",
            "post-snapshot",
            "command",
            "backup-complete 0"
        ]
    );
    assert!(
        daemon.sets().is_empty(),
        "the set is deleted after the command"
    );

    std::fs::remove_file(&log).expect("rm");
    let out = daemon.umbra(&["backup", "--keep", "--", "true"]);
    assert_eq!(out.status.code(), Some(0));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("the command exited with 0; the set was kept"),
        "{said}"
    );
    assert!(out.stdout.is_empty(), "stdout is the command's alone");
    assert_eq!(
        lines(&log).last().map(String::as_str),
        Some("backup-complete 1")
    );
    let sets = daemon.sets();
    assert_eq!(sets.len(), 1, "--keep keeps the set");
    assert_eq!(sets[0]["writers"][0]["status"], "ok");
    assert_eq!(daemon.writer("hook")["state"], "stable");

    // --json: the command's output, then one document on stdout, nothing on stderr.
    let out = daemon.umbra(&[
        "backup",
        "--json",
        "--",
        "sh",
        "-c",
        "echo from-the-command; kill -TERM $$",
    ]);
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (said, doc) = stdout.split_once('\n').expect("two parts");
    assert_eq!(said, "from-the-command");
    let report: serde_json::Value = serde_json::from_str(doc).expect(doc);
    assert_eq!(report["signal"], libc::SIGTERM);
    assert_eq!(report["exit_code"], serde_json::Value::Null);
    assert_eq!(report["kept"], false);
    assert_eq!(report["command"][0], "sh");
    assert_eq!(report["set"]["writers"][0]["name"], "hook");
    assert!(report["set"]["name"].is_string(), "{doc}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(daemon.sets().len(), 1, "the --json backup's set is deleted");
}

#[test]
fn a_requester_that_goes_away_mid_backup_is_cleaned_up_after() {
    let hooks = tempfile::tempdir().expect("tempdir");
    let log = hooks.path().join("log");
    let daemon = Daemon::start(&logging_hook(hooks.path(), &log));
    let mut requester = std::process::Command::new(env!("CARGO_BIN_EXE_umbra"))
        .args(["backup", "--config"])
        .arg(daemon.path("umbra.toml"))
        .args(["--", "sleep", "5"])
        .spawn()
        .expect("umbra backup runs");
    eventually("the set to be made", || {
        lines(&log).contains(&"post-snapshot".to_string())
    });
    // The hook logs before it exits; the daemon moves the writer on only
    // once it has its exit status.
    eventually("the writer to wait for backup-complete", || {
        daemon.writer("hook")["state"] == "waiting-for-backup-complete"
    });
    let err = daemon.create_fails();
    assert!(err.contains("already being created"), "{err}");
    requester.kill().expect("kill the requester");
    requester.wait().expect("reaped");
    eventually("BackupComplete after the requester went away", || {
        lines(&log).last().map(String::as_str) == Some("backup-complete 0")
    });
    eventually("the set to be deleted", || daemon.sets().is_empty());
    assert_eq!(daemon.writer("hook")["state"], "stable");
    daemon.json(&["create"]);
}

/// A program built from examples/ (cargo test builds them).
fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    dir.join("examples").join(name)
}

#[test]
fn the_sqlite_example_keeps_every_set_whole() {
    let daemon = Daemon::start("");
    let db = daemon.path("data/bank.db");
    let mut app = Reaped(Some(
        std::process::Command::new(example("sqlite_writer"))
            .arg(daemon.socket())
            .arg(&db)
            .args(["data", "120"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the example runs"),
    ));
    eventually("the example to register", || {
        daemon.writer("sqlite")["state"] == "stable"
    });
    let mut names = Vec::new();
    for _ in 0..15 {
        let created = daemon.json(&["create", "data"]);
        assert_eq!(created["writers"][0]["status"], "ok");
        names.push(created["name"].as_str().expect("name").to_string());
        thread::sleep(Duration::from_millis(50));
    }
    let app = app.0.take().expect("the example is running");
    // SAFETY: signalling a child we spawned and have not reaped.
    unsafe { libc::kill(app.id() as libc::pid_t, libc::SIGTERM) };
    let out = app.wait_with_output().expect("the example ends");
    assert!(out.status.success());
    let transfers: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("transfers");
    assert!(transfers > 0);
    for name in &names {
        let copy = tempfile::tempdir().expect("tempdir");
        for file in ["bank.db", "bank.db-wal"] {
            let from = daemon.path(&format!("snapshots/{name}/data/{file}"));
            if from.exists() {
                std::fs::copy(&from, copy.path().join(file)).expect("copy out");
            }
        }
        let conn = rusqlite::Connection::open(copy.path().join("bank.db")).expect("opens");
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(check, "ok", "set {name}");
        let (total, moved, logged): (i64, i64, i64) = conn
            .query_row(
                "SELECT (SELECT sum(balance) FROM account),
                        (SELECT balance FROM account WHERE id = 2),
                        (SELECT count(*) FROM transfer)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("query");
        assert_eq!(total, 1000, "set {name}");
        assert_eq!(moved, logged, "set {name}: only whole transactions");
    }
}

/// A child process killed and reaped if the test fails while it runs, so
/// that a failed test leaves no process behind.
struct Reaped(Option<std::process::Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn the_exec_writer_example_logs_every_event() {
    let hooks = tempfile::tempdir().expect("tempdir");
    let log = hooks.path().join("log");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/exec-writer.sh");
    // The daemon passes its environment on to the hook.
    let daemon = Daemon::start_with_env(
        &exec_writer("example", &script, true, 5),
        &[("UMBRA_EXAMPLE_LOG", &log)],
    );
    let created = daemon.json(&["create", "data"]);
    let guid = created["set_guid"].as_str().expect("guid");
    let events: Vec<String> = lines(&log)
        .iter()
        .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect();
    let expected: Vec<String> = CREATE.iter().map(|e| format!("{e} {guid}")).collect();
    assert_eq!(events, expected);
}
