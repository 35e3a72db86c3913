//! umbra as a systemd service: the shipped unit passes `systemd-analyze
//! verify`, the daemon tells NOTIFY_SOCKET when it is ready, reloading
//! (SIGHUP) and stopping (Type=notify), and its log drops its own timestamps when stderr is
//! the journal's stream.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Config, Daemon};

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/umbra.service");
const MAN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/man");

/// The datagrams `socket` receives within `wait`, as text.
fn received(socket: &UnixDatagram, wait: Duration) -> Vec<String> {
    socket.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
    }
    got
}

#[test]
fn the_daemon_tells_systemd_when_it_is_ready_reloading_and_stopping() {
    let mut d = Daemon::prepare(Config::default());
    let path = d.scratch("notify").join("socket");
    let socket = UnixDatagram::bind(&path).unwrap();
    d.env("NOTIFY_SOCKET", path.to_str().unwrap());
    d.launch();
    let ready = received(&socket, Duration::from_secs(5));
    assert!(
        ready.iter().any(|m| m.lines().any(|l| l == "READY=1")),
        "{ready:?}"
    );
    assert!(
        ready.iter().any(|m| m.contains("STATUS=serving ")),
        "{ready:?}"
    );
    // SIGHUP (systemctl reload): RELOADING=1 with its monotonic time, then
    // READY=1 again.
    let pid = d.pid().unwrap() as libc::pid_t;
    // SAFETY: kill sends a signal to our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let reload = received(&socket, Duration::from_secs(5));
    let reloading = reload
        .iter()
        .position(|m| m.lines().any(|l| l == "RELOADING=1"))
        .unwrap_or_else(|| panic!("no RELOADING=1: {reload:?}"));
    assert!(
        reload[reloading]
            .lines()
            .any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reload:?}"
    );
    assert!(
        reload[reloading..]
            .iter()
            .any(|m| m.lines().any(|l| l == "READY=1")),
        "{reload:?}"
    );
    d.stop();
    let stopping = received(&socket, Duration::from_secs(5));
    assert!(
        stopping
            .iter()
            .any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "{stopping:?}"
    );
}

#[test]
fn under_the_journal_the_log_carries_no_timestamps_of_its_own() {
    let mut d = Daemon::prepare(Config::default());
    // The harness opens this same file (same inode) as the daemon's stderr.
    let stderr = d.next_stderr_path();
    fs::write(&stderr, "").unwrap();
    let meta = fs::metadata(&stderr).unwrap();
    d.env("JOURNAL_STREAM", &format!("{}:{}", meta.dev(), meta.ino()));
    d.launch();
    d.create_set();
    let log = d.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("INFO")).collect();
    assert!(!lines.is_empty(), "{log}");
    for line in lines {
        assert!(line.trim_start().starts_with("INFO"), "a timestamp: {line}");
    }
    // Elsewhere each line starts with its time.
    let plain = Daemon::start(Config::default());
    let first = plain.stderr();
    assert!(first.starts_with("20"), "{first}");
}

/// The unit file as shipped, but for the binary's path (verify checks the
/// executable exists) and the man pages it names, found in this tree.
#[test]
fn the_shipped_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = fs::read_to_string(UNIT).unwrap().replace(
        "/usr/local/bin/umbra",
        common::umbra_bin().to_str().unwrap(),
    );
    let path = dir.path().join("umbra.service");
    fs::write(&path, unit).unwrap();
    let man = dir.path().join("man");
    for (page, section) in [("umbra.1", 1), ("umbra.toml.5", 5), ("umbra-writer.7", 7)] {
        let to = man.join(format!("man{section}"));
        fs::create_dir_all(&to).unwrap();
        fs::copy(Path::new(MAN).join(page), to.join(page)).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("MANPATH", &man)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
