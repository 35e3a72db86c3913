//! Samba Previous Versions over umbra, with the real smbd and smbclient:
//! smbd serves a volume's live mount with `vfs_shadow_copy2` pointed at the
//! snapshot browser (the README's "Samba Previous Versions" snippet, as
//! written there), and `smbclient allinfo` lists one `@GMT-` token per set,
//! newest first, while `get @GMT-.../FILE` returns each set's bytes. Sets
//! made within one second (`-1` names) share a token, and Samba serves the
//! first of them for it; `latest` is not a set and is not listed.

#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

mod common;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{NaiveDateTime, Timelike, Utc};

use common::servers::{Server, ensure_installed, free_port, wait_for_port};
use common::{Config, Daemon, SetJson};

/// The share's lines as README.md shows them, with the two paths filled in.
fn share(live: &Path, snapshots: &Path) -> String {
    format!(
        "[data]\n\
         \x20  path = {live}\n\
         \x20  read only = no\n\
         \x20  vfs objects = shadow_copy2\n\
         \x20  shadow:snapdir = {snapshots}\n\
         \x20  shadow:snapsharepath = data\n\
         \x20  shadow:format = %Y-%m-%dT%H%M%SZ\n\
         \x20  shadow:localtime = no\n\
         \x20  shadow:sort = desc\n",
        live = live.display(),
        snapshots = snapshots.display()
    )
}

/// smbd's own state, all under `dir`, listening on loopback `port` only.
fn global(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "[global]\n\
         \x20  server role = standalone server\n\
         \x20  smb ports = {port}\n\
         \x20  interfaces = lo\n\
         \x20  bind interfaces only = yes\n\
         \x20  private dir = {d}/private\n\
         \x20  lock directory = {d}/lock\n\
         \x20  state directory = {d}/state\n\
         \x20  cache directory = {d}/cache\n\
         \x20  pid directory = {d}/pid\n\
         \x20  ncalrpc dir = {d}/ncalrpc\n\
         \x20  log file = {d}/smbd.log\n\
         \x20  passdb backend = tdbsam:{d}/private/passdb.tdb\n\
         \x20  load printers = no\n\
         \x20  printcap name = /dev/null\n\
         \x20  disable spoolss = yes\n\n"
    )
}

struct Smb {
    conf: String,
    port: u16,
    _smbd: Server,
}

const PASSWORD: &str = "umbra-test";

impl Smb {
    fn start(dir: &Path, live: &Path, snapshots: &Path) -> Smb {
        for sub in ["private", "lock", "state", "cache", "pid", "ncalrpc"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let port = free_port();
        let conf = dir.join("smb.conf");
        fs::write(&conf, global(dir, port) + &share(live, snapshots)).unwrap();
        let conf = conf.to_str().unwrap().to_string();
        // A Samba password for root, in this test's own passdb.
        let mut add = Command::new("smbpasswd")
            .args(["-c", &conf, "-a", "-s", "root"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        write!(add.stdin.take().unwrap(), "{PASSWORD}\n{PASSWORD}\n").unwrap();
        assert!(add.wait().unwrap().success(), "smbpasswd -a root");
        // A process group of its own: smbd's parent signals its whole group
        // (kill(0, SIGTERM)) when it exits, which must not reach cargo.
        let smbd = Command::new("smbd")
            .args(["--foreground", "--no-process-group", "-s", &conf])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut smbd = Server::leading_its_group(smbd);
        wait_for_port(port, Duration::from_secs(20), "smbd");
        assert!(smbd.alive(), "smbd exited; see {}/smbd.log", dir.display());
        Smb {
            conf,
            port,
            _smbd: smbd,
        }
    }

    /// `smbclient -c COMMANDS` on the share; its stdout.
    fn client(&self, commands: &str) -> String {
        let out = common::run_with_timeout(
            Command::new("smbclient")
                .args(["-s", &self.conf, "-p", &self.port.to_string()])
                .args(["-U", &format!("root%{PASSWORD}")])
                .arg("//127.0.0.1/data")
                .args(["-c", commands]),
            Duration::from_secs(30),
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "smbclient -c {commands:?}: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// The contents of `path` on the share, through `get`.
    fn get(&self, path: &str, scratch: &Path) -> String {
        let to = scratch.join("got");
        let _ = fs::remove_file(&to);
        self.client(&format!("get \"{path}\" \"{}\"", to.display()));
        fs::read_to_string(&to).unwrap_or_else(|e| panic!("get {path}: {e}"))
    }
}

/// The `@GMT-` token Samba shows for a set: its name without a `-N`
/// suffix, read with `shadow:format`, written as `@GMT-%Y.%m.%d-%H.%M.%S`.
fn token(set: &SetJson) -> String {
    let second = set.name.split('-').take(3).collect::<Vec<_>>().join("-");
    let at = NaiveDateTime::parse_from_str(&second, "%Y-%m-%dT%H%M%SZ")
        .unwrap_or_else(|e| panic!("set name {:?}: {e}", set.name));
    at.format("@GMT-%Y.%m.%d-%H.%M.%S").to_string()
}

/// Two sets in one second: the second gets a `-1` name. Retries a few
/// times, starting each try just after a second begins.
fn two_in_one_second(d: &Daemon, file: &Path) -> (SetJson, SetJson) {
    for attempt in 0..10 {
        let ns = Utc::now().nanosecond() % 1_000_000_000;
        std::thread::sleep(Duration::from_nanos(
            u64::from(1_000_000_000 - ns) + 5_000_000,
        ));
        fs::write(file, format!("version 2 (try {attempt})")).unwrap();
        let first = d.create_set();
        fs::write(file, "version 3").unwrap();
        let second = d.create_set();
        if second.name == format!("{}-1", first.name) {
            return (first, second);
        }
    }
    panic!("no two sets within one second in ten tries");
}

#[test]
fn smbclient_lists_each_set_as_a_previous_version_and_gets_its_bytes() {
    ensure_installed(&[("smbd", "samba"), ("smbclient", "smbclient")]);
    let d = Daemon::start(Config::default());
    let file = d.live("data").join("report.txt");
    fs::write(&file, "version 1").unwrap();
    let first = d.create_set();
    std::thread::sleep(Duration::from_millis(1100));
    let (second, same_second) = two_in_one_second(&d, &file);
    fs::write(&file, "live").unwrap();
    assert!(d.snapshots().join("latest").is_symlink());

    let smb = Smb::start(&d.scratch("samba"), &d.live("data"), d.snapshots());
    let allinfo = smb.client("allinfo report.txt");
    let listed: Vec<&str> = allinfo.lines().filter(|l| l.starts_with("@GMT-")).collect();
    // Newest first (shadow:sort = desc); the -1 set shows under its
    // second's token, like the set it shares the second with.
    let mut sets = [&first, &second, &same_second];
    sets.sort_by(|a, b| b.name.cmp(&a.name));
    let expected: Vec<String> = sets.iter().map(|s| token(s)).collect();
    assert_eq!(listed, expected, "allinfo:\n{allinfo}");
    assert_eq!(token(&second), token(&same_second));

    let scratch = d.scratch("got");
    assert_eq!(
        smb.get(&format!("{}/report.txt", token(&first)), &scratch),
        "version 1"
    );
    // The token of a shared second reaches the first set of that second.
    let shared = smb.get(&format!("{}/report.txt", token(&second)), &scratch);
    assert!(shared.starts_with("version 2 (try "), "{shared}");
    assert_eq!(
        shared,
        fs::read_to_string(d.browse(&second, "data").join("report.txt")).unwrap()
    );
    assert_eq!(smb.get("report.txt", &scratch), "live");
}
