//! Hostile input at the daemon's edges (issue 10): numbers that would
//! overflow a deadline or a timestamp, volumes that meet through symlinks,
//! a shutdown while processes sit inside the mounts, control characters in
//! what `umbra` prints, a state dir open to others, and a client run from
//! inside the daemon's own volumes. Each test is named after the defect it
//! pins.

#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{Config, Daemon, assert_one_line_error, run_with_timeout, umbra_cmd};

/// Sends one line on a fresh control connection and returns the answer line.
fn control_line(socket: &Path, line: &str) -> String {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(line.as_bytes()).unwrap();
    stream.write_all(b"\n").unwrap();
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).unwrap();
    answer
}

#[test]
fn a_writer_registering_with_timeout_secs_2_pow_64_minus_1_cannot_make_create_panic() {
    let d = Daemon::start(Config::default());
    let answer = control_line(
        &d.layout.socket,
        &format!(
            r#"{{"op":"register","name":"huge","volumes":["data"],"timeout_secs":{}}}"#,
            u64::MAX
        ),
    );
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("timeout_secs must be at most 86400"),
        "the registration is refused: {answer}"
    );
    // The daemon is still there, and a set is still made.
    fs::write(d.live("data").join("f"), "kept").unwrap();
    let set = d.create_set();
    assert_eq!(fs::read(d.browse(&set, "data").join("f")).unwrap(), b"kept");
    let writers = d.umbra_ok(&["writers", "--json"]);
    assert!(!writers.contains("huge"), "{writers}");
}

#[test]
fn hold_and_writer_timeouts_near_i64_max_are_refused_at_up() {
    let d = Daemon::prepare(Config::default());
    let good = fs::read_to_string(&d.layout.config_path).unwrap();
    for key in ["hold_timeout_secs", "writer_timeout_secs"] {
        let path = d.root().join(format!("{key}.toml"));
        fs::write(&path, format!("{key} = {}\n{good}", i64::MAX)).unwrap();
        let out = d.run_up(&path);
        let line = assert_one_line_error(&out, key);
        assert!(
            line.contains(&format!("{key} must be at most 86400")),
            "{key}: {line}"
        );
        d.assert_nothing_mounted(key);
    }
    let path = d.root().join("writer.toml");
    fs::write(
        &path,
        format!(
            "{good}\n[[writer]]\nname = \"w\"\nexec = \"/bin/true\"\ntimeout_secs = {}\n",
            i64::MAX - 1
        ),
    )
    .unwrap();
    let line = assert_one_line_error(&d.run_up(&path), "a [[writer]] timeout_secs");
    assert!(line.contains("writer \"w\": timeout_secs"), "{line}");
    d.assert_nothing_mounted("a [[writer]] timeout_secs");
}

#[test]
fn delete_older_than_300000000000y_deletes_no_set() {
    let d = Daemon::start(Config::default());
    fs::write(d.live("data").join("f"), "one").unwrap();
    let first = d.create_set();
    let second = d.create_set();
    let out = d.umbra_ok(&["delete", "--older-than", "300000000000y"]);
    assert_eq!(out, "", "nothing is that old");
    assert_eq!(d.list_sets(), vec![first.clone(), second]);
    // The wire's own maximum means the same.
    let answer = control_line(
        &d.layout.socket,
        &format!(r#"{{"op":"delete","older_than_secs":{}}}"#, u64::MAX),
    );
    assert_eq!(answer.trim(), r#"{"ok":[]}"#);
    assert_eq!(
        fs::read(d.browse(&first, "data").join("f")).unwrap(),
        b"one"
    );
}

#[test]
fn control_characters_in_a_label_are_escaped_by_umbra_list_and_exact_in_json() {
    let d = Daemon::start(Config::default());
    let label = "ok\n2099-01-01T000000Z  99  forged\x1b]0;owned\x07\r\u{202e}";
    let set = d.create_set_with(&["--label", label]);
    assert_eq!(
        set.label.as_deref(),
        Some(label),
        "--json keeps the label exact"
    );

    let text = d.umbra_ok(&["list"]);
    assert_eq!(text.lines().count(), 2, "one header, one set: {text:?}");
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "no control character reaches the terminal: {text:?}"
    );
    assert!(
        text.contains(r"ok\n2099-01-01T000000Z  99  forged\u{1b}]0;owned\u{7}\r\u{202e}"),
        "{text:?}"
    );
    let json: serde_json::Value = serde_json::from_str(&d.umbra_ok(&["list", "--json"])).unwrap();
    assert_eq!(json[0]["label"], label);

    // An error that carries a name a user typed is one printable line too.
    let out = d.umbra(&["create", "no\x1b[2Jsuch"]);
    let line = assert_one_line_error(&out, "create of an unknown volume");
    assert!(!line.contains('\x1b'), "{line:?}");
}

/// `umbra up` with no config in a temp dir of its own: the embedded
/// default, its state in `./.umbra`, `data` live in place at `./data`, the
/// browser at `./snapshots`. Stopped and unmounted when dropped.
struct Embedded {
    root: std::path::PathBuf,
    child: Option<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl Embedded {
    fn start() -> Embedded {
        let dir = tempfile::Builder::new()
            .prefix("umbra-embedded-")
            .tempdir()
            .unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        let mut child = umbra_cmd()
            .arg("up")
            .current_dir(&root)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "umbra: ready" {
                    let _ = tx.send(());
                }
            }
        });
        let mut embedded = Embedded {
            root,
            child: Some(child),
            _dir: dir,
        };
        if rx.recv_timeout(common::READY_TIMEOUT).is_err() {
            embedded.stop();
            panic!("umbra up (embedded default) was not ready");
        }
        embedded
    }

    /// `umbra ARGS` run in `cwd`, told nothing of where the daemon is.
    fn umbra_in(&self, cwd: &Path, args: &[&str]) -> Output {
        let mut cmd = umbra_cmd();
        cmd.args(args).current_dir(cwd);
        run_with_timeout(&mut cmd, common::CLIENT_TIMEOUT)
    }

    /// SIGTERMs the daemon; returns its exit status.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) of the child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + common::STOP_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        for mp in [self.root.join("snapshots"), self.root.join("data")] {
            for _ in 0..4 {
                if !common::sys::is_mounted(&mp) {
                    break;
                }
                let _ = common::sys::lazy_unmount(&mp);
            }
        }
        status
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stdout_of(out: &Output, context: &str) -> String {
    assert!(
        out.status.success(),
        "{context}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn a_client_run_inside_data_finds_the_embedded_defaults_socket() {
    let mut e = Embedded::start();
    let deep = e.root.join("data/sub/dir");
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("f"), "from deep").unwrap();

    let created = stdout_of(
        &e.umbra_in(&deep, &["create", "--json", "--label", "deep"]),
        "create from data/sub/dir",
    );
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let name = created["name"].as_str().unwrap().to_string();

    // From inside the snapshot browser too.
    let inside_set = e.root.join("snapshots").join(&name).join("data/sub/dir");
    assert_eq!(fs::read(inside_set.join("f")).unwrap(), b"from deep");
    for cwd in [&inside_set, &e.root.join("snapshots"), &e.root] {
        let list = stdout_of(&e.umbra_in(cwd, &["list", "--json"]), "list");
        let list: serde_json::Value = serde_json::from_str(&list).unwrap();
        assert_eq!(list[0]["name"], name.as_str(), "from {}", cwd.display());
    }
    assert_eq!(e.stop().map(|s| s.success()), Some(true));

    // With the daemon gone (its socket with it), the error says where it
    // looked: data/ is the plain backing directory again, its own hidden
    // .umbra holds no socket.
    let out = e.umbra_in(&deep, &["list"]);
    let line = assert_one_line_error(&out, "list with the daemon stopped");
    assert!(
        line.contains(&format!(
            "no .umbra/control.sock in {} or any directory above it",
            deep.display()
        )),
        "{line}"
    );
}

#[test]
fn a_client_with_no_socket_anywhere_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = fs::canonicalize(dir.path()).unwrap().join("some/where");
    fs::create_dir_all(&cwd).unwrap();
    let mut cmd = umbra_cmd();
    cmd.args(["status"]).current_dir(&cwd);
    let out = run_with_timeout(&mut cmd, common::CLIENT_TIMEOUT);
    let line = assert_one_line_error(&out, "status with no daemon anywhere");
    assert!(
        line.contains(&format!(
            "no .umbra/control.sock in {} or any directory above it",
            cwd.display()
        )),
        "{line}"
    );
    assert!(line.contains("--socket"), "{line}");
}

/// `sleep 300` with its working directory at `cwd`; killed when dropped.
struct Sitter(std::process::Child);

impl Sitter {
    fn inside(cwd: &Path) -> Sitter {
        Sitter(
            std::process::Command::new("sleep")
                .arg("300")
                .current_dir(cwd)
                .spawn()
                .unwrap(),
        )
    }

    /// Lists the working directory through /proc: whatever the answer, it
    /// must come (no hang on a dead connection).
    fn look_around(&self) -> Output {
        let mut ls = std::process::Command::new("ls");
        ls.arg(format!("/proc/{}/cwd/", self.0.id()));
        run_with_timeout(&mut ls, Duration::from_secs(10))
    }
}

impl Drop for Sitter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigterm_or_sigint_with_a_shell_inside_data_or_snapshots_leaves_no_dead_mount() {
    for (sig, writeback) in [(libc::SIGTERM, true), (libc::SIGINT, false)] {
        let context = format!("signal {sig}, writeback_cache = {writeback}");
        let mut d = Daemon::start(
            Config::empty()
                .in_place("data")
                .volume("logs")
                .line(&format!("writeback_cache = {writeback}")),
        );
        fs::create_dir(d.live("data").join("sub")).unwrap();
        fs::write(d.live("data").join("sub/f"), "before").unwrap();
        let set = d.create_set();
        let in_live = Sitter::inside(&d.live("data").join("sub"));
        let in_browser = Sitter::inside(&d.browse(&set, "data").join("sub"));
        // A file held open for writing across the shutdown, its last
        // bytes neither synced nor closed.
        let mut held = fs::File::create(d.live("logs").join("held")).unwrap();
        held.write_all(b"held open").unwrap();

        d.try_stop_with(sig)
            .unwrap_or_else(|e| panic!("{context}: {e}"));
        let root = d.root().to_string_lossy().into_owned();
        let left: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&root))
            .map(str::to_string)
            .collect();
        assert!(left.is_empty(), "{context}: still mounted: {left:#?}");
        // What was written through the mount before it went is in the
        // backing files, the held file's unsynced bytes included.
        assert_eq!(
            fs::read(d.backing("logs").join("held")).unwrap(),
            b"held open",
            "{context}"
        );
        assert_eq!(
            fs::read(d.backing("data").join("sub/f")).unwrap(),
            b"before"
        );
        // Those still inside get an answer, not a hang.
        in_live.look_around();
        in_browser.look_around();
        let late = held.write_all(b" more").and_then(|()| held.sync_all());
        assert!(late.is_err(), "{context}: a write after the shutdown");

        // The next daemon starts cleanly over the same directories.
        d.launch();
        assert_eq!(
            fs::read(d.live("data").join("sub/f")).unwrap(),
            b"before",
            "{context}"
        );
        assert_eq!(
            fs::read(d.browse(&set, "data").join("sub/f")).unwrap(),
            b"before",
            "{context}"
        );
        drop((in_live, in_browser, held));
        d.stop();
    }
}

#[test]
fn two_volumes_on_one_backing_through_a_symlink_are_refused_at_up() {
    let d = Daemon::prepare(Config::empty());
    let root = d.root().to_path_buf();
    fs::create_dir(root.join("b")).unwrap();
    std::os::unix::fs::symlink("b", root.join("b2")).unwrap();
    fs::create_dir(root.join("data")).unwrap();
    std::os::unix::fs::symlink("data", root.join("data-alias")).unwrap();
    let head = "socket = \"ctl.sock\"\nsnapshots = \"snaps\"\n";
    let volume = |name: &str, backing: &str, mount: &str| {
        format!("[[volume]]\nname = \"{name}\"\nbacking = \"{backing}\"\nmount = \"{mount}\"\n")
    };
    let cases = [
        (
            "one backing through a symlink",
            format!(
                "state_dir = \"st\"\n{head}{}{}",
                volume("one", "b", "m1"),
                volume("two", "b2", "m2")
            ),
            ["b2", "is the same directory as", "b"],
        ),
        (
            "a backing nested through a symlink",
            format!(
                "state_dir = \"st\"\n{head}{}{}",
                volume("one", "b", "m1"),
                volume("two", "b2/inner", "m2")
            ),
            ["b2/inner", "is inside", "b"],
        ),
        (
            "a state_dir inside a backing through a symlink",
            format!(
                "state_dir = \"data-alias/.state\"\n{head}{}",
                volume("data", "data", "data")
            ),
            ["data-alias/.state", "is inside", "data"],
        ),
        (
            "a snapshots mountpoint inside a backing through a symlink",
            format!(
                "state_dir = \"st\"\nsocket = \"ctl.sock\"\nsnapshots = \"data-alias/snaps\"\n{}",
                volume("data", "data", "data")
            ),
            ["data-alias/snaps", "is inside", "data"],
        ),
    ];
    for (what, text, [inner, relation, outer]) in cases {
        let path = root.join("overlap.toml");
        fs::write(&path, text).unwrap();
        let out = d.run_up(&path);
        let line = assert_one_line_error(&out, what);
        let inner = root.join(inner);
        let outer = root.join(outer);
        assert!(
            line.contains(&format!("{} {relation} ", inner.display()))
                && line.contains(&format!(" {}", outer.display())),
            "{what}: the error names both paths: {line}"
        );
        // Refused before anything was made or mounted.
        for made in [
            "st",
            "data/.state",
            "data/snaps",
            "m1",
            "m2",
            "snaps",
            "b/inner",
        ] {
            assert!(!root.join(made).exists(), "{what}: {made} was created");
        }
        for mp in ["m1", "m2", "data", "snaps"] {
            assert!(
                !common::sys::is_mounted(&root.join(mp)),
                "{what}: {mp} mounted"
            );
        }
    }
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_state_dir_open_to_others_is_tightened_and_one_of_another_user_refused() {
    use std::os::unix::fs::PermissionsExt;
    const NOBODY: u32 = 65534;
    // Ours and open to everyone: tightened to 0700, and said so.
    let mut d = Daemon::prepare(Config::default());
    let state = d.layout.state_dir.clone();
    fs::create_dir_all(&state).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
    d.launch();
    assert_eq!(mode_of(&state), 0o700);
    let log = d.failure("");
    assert!(log.contains("tightened it to 700"), "{log}");
    d.stop();

    // Another user's: refused, left as it was.
    common::sys::lchown(&state, NOBODY, NOBODY).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
    let line = assert_one_line_error(&d.run_up(&d.layout.config_path), "nobody's state dir");
    assert!(
        line.contains(&format!(
            "belongs to uid {NOBODY}, not to the daemon's user"
        )),
        "{line}"
    );
    assert_eq!(mode_of(&state), 0o777);
    d.assert_nothing_mounted("nobody's state dir");

    // A symlink another user owns, even to a directory of ours: refused.
    common::sys::lchown(&state, 0, 0).unwrap();
    let real = d.root().join("real-state");
    fs::rename(&state, &real).unwrap();
    std::os::unix::fs::symlink(&real, &state).unwrap();
    common::sys::lchown(&state, NOBODY, NOBODY).unwrap();
    let line = assert_one_line_error(&d.run_up(&d.layout.config_path), "nobody's symlink");
    assert!(
        line.contains("is a symlink that belongs to uid 65534"),
        "{line}"
    );
    d.assert_nothing_mounted("nobody's symlink");
    // The same symlink, ours: followed.
    common::sys::lchown(&state, 0, 0).unwrap();
    d.launch();
    assert!(real.join("store").is_dir());
    d.stop();
}
