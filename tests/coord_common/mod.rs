//! A small harness for the coordination tests: a real `umbra up` in a
//! temporary directory (volumes `data` and `logs`, real FUSE mounts), the
//! client commands run through the real binary, and a raw socket writer
//! scripted per event. It only drives the binary; it never reaches into
//! the daemon.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub struct Daemon {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Daemon {
    /// Starts `umbra up` with `extra` appended to the config (e.g.
    /// `[[writer]]` tables) and waits for `umbra: ready`.
    pub fn start(extra: &str) -> Daemon {
        Daemon::start_with_env(extra, &[])
    }

    /// [`start`](Self::start), with `env` added to the daemon's environment
    /// (which its exec writers inherit).
    pub fn start_with_env(extra: &str, env: &[(&str, &Path)]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display();
        let config = format!(
            "state_dir = \"{d}/state\"\nsnapshots = \"{d}/snapshots\"\nwriter_timeout_secs = 5\n\
             [[volume]]\nname = \"data\"\nbacking = \"{d}/data\"\nmount = \"{d}/data\"\n\
             [[volume]]\nname = \"logs\"\nbacking = \"{d}/logs\"\nmount = \"{d}/logs\"\n{extra}"
        );
        std::fs::write(dir.path().join("umbra.toml"), config).expect("config");
        let mut daemon = Daemon { dir, child: None };
        daemon.launch(env);
        daemon
    }

    /// Runs `umbra up` over this daemon's config and state (again, after
    /// `kill`) and waits for `umbra: ready`.
    pub fn launch(&mut self, env: &[(&str, &Path)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("daemon.log"))
            .expect("log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_umbra"))
            .arg("up")
            .arg("--config")
            .arg(self.path("umbra.toml"))
            .env("UMBRA_LOG", "debug")
            .env_remove("UMBRA_SOCKET")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("umbra up starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "umbra: ready" {
                    let _ = tx.send(());
                }
            }
        });
        self.child = Some(child);
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            panic!("umbra up did not get ready: {}", self.log());
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("state/control.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    /// Runs a client command against this daemon.
    pub fn umbra(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_umbra"))
            .arg("--config")
            .arg(self.path("umbra.toml"))
            .args(args)
            .env_remove("UMBRA_SOCKET")
            .output()
            .expect("umbra runs")
    }

    /// A command that must succeed; its stdout as JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.umbra(&all);
        assert!(
            out.status.success(),
            "umbra {args:?}: {}\nthe daemon's log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }

    /// `umbra create` that must fail: its one-line error.
    pub fn create_fails(&self) -> String {
        let out = self.umbra(&["create"]);
        assert!(
            !out.status.success(),
            "create succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(err.lines().count(), 1, "one line: {err:?}");
        err.trim().to_string()
    }

    pub fn sets(&self) -> Vec<Value> {
        self.json(&["list"]).as_array().cloned().unwrap_or_default()
    }

    pub fn writer(&self, name: &str) -> Value {
        self.json(&["writers"])
            .as_array()
            .and_then(|w| w.iter().find(|w| w["name"] == name).cloned())
            .unwrap_or(Value::Null)
    }

    /// A write through the live mount completes promptly: nothing is held.
    pub fn live_write_flows(&self) {
        let started = Instant::now();
        std::fs::write(self.path("data/probe"), b"probe").expect("live write");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "live write was held"
        );
    }
}

impl Daemon {
    /// Kills the daemon with SIGKILL (no unmount, no goodbye to etcd) and
    /// detaches what it left mounted.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = child.kill();
        let _ = child.wait();
        for m in ["data", "logs", "snapshots"] {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(self.path(m))
                .status();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: signals the daemon this harness started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        for m in ["data", "logs", "snapshots"] {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(self.path(m))
                .status();
        }
    }
}

/// What a raw writer does when it receives an event.
#[derive(Clone, Debug)]
pub enum Act {
    Ok,
    Fail { retryable: bool, message: String },
    Hang(Duration),
    Close,
    Garbage,
}

pub type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// Connects to `socket`, sends `registration` (a JSON object without "op")
/// and returns the daemon's acknowledgement with the connection.
pub fn connect(socket: &Path, registration: Value) -> (UnixStream, BufReader<UnixStream>, Value) {
    let mut message = registration;
    message["op"] = json!("register");
    let mut stream = UnixStream::connect(socket).expect("connects");
    writeln!(stream, "{message}").expect("registers");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("ack");
    let ack = serde_json::from_str(&line).expect("ack parses");
    (stream, reader, ack)
}

/// A writer speaking the wire protocol by hand, on a thread: `act` says what
/// to do for each event (by wire name). Returns the events seen, as
/// (event, set_id), once registered.
pub fn raw_writer(
    socket: &Path,
    registration: Value,
    act: impl Fn(&str) -> Act + Send + 'static,
) -> (Seen, JoinHandle<()>) {
    let (mut stream, mut reader, ack) = connect(socket, registration);
    assert!(ack.get("ok").is_some(), "registered: {ack}");
    let seen = Seen::default();
    let log = seen.clone();
    let handle = thread::spawn(move || {
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                return;
            };
            let name = event["event"].as_str().unwrap_or_default().to_string();
            let set_id = event["set_id"].as_str().unwrap_or_default().to_string();
            log.lock()
                .expect("log")
                .push((name.clone(), set_id.clone()));
            let reply = match act(&name) {
                Act::Ok => json!({"ok": {"event": name, "set_id": set_id}}).to_string(),
                Act::Fail { retryable, message } => json!({"failure": {"event": name,
                    "set_id": set_id, "retryable": retryable, "message": message}})
                .to_string(),
                Act::Hang(d) => {
                    thread::sleep(d);
                    json!({"ok": {"event": name, "set_id": set_id}}).to_string()
                }
                Act::Close => return,
                Act::Garbage => "this is not json".to_string(),
            };
            if writeln!(stream, "{reply}").is_err() {
                return;
            }
        }
    });
    (seen, handle)
}

pub fn events(seen: &Seen) -> Vec<String> {
    seen.lock()
        .expect("log")
        .iter()
        .map(|e| e.0.clone())
        .collect()
}

pub const CREATE: [&str; 7] = [
    "identify",
    "prepare-backup",
    "prepare-snapshot",
    "freeze",
    "thaw",
    "post-snapshot",
    "backup-complete",
];

/// Writes an executable shell script.
pub fn script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Waits until `cond` holds, up to 5 s.
pub fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}
