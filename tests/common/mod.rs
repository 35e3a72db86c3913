//! The end-to-end harness: a `Daemon` runs the real `umbra up` binary in a
//! temp dir of its own (state, socket, snapshot browser, backing and mount
//! dirs), and runs client commands against it. Every daemon it starts is
//! stopped, and every mountpoint it configured is lazily unmounted, when the
//! `Daemon` drops, panics included, so no test leaves a mount or a process
//! behind and tests run in parallel.
//!
//! Set `UMBRA_BIN` to run the suite against another build of umbra; by
//! default it is the binary cargo built for this test.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod btrfs;
pub mod catalog;
pub mod history;
pub mod manifest;
pub mod ops;
pub mod servers;
pub mod shrink;
pub mod sys;

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// How long `umbra up` may take to print `umbra: ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the daemon may take to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client command may run.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The umbra binary under test.
pub fn umbra_bin() -> PathBuf {
    match std::env::var_os("UMBRA_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => PathBuf::from(env!("CARGO_BIN_EXE_umbra")),
    }
}

/// A command running the umbra binary, with no UMBRA_SOCKET inherited.
pub fn umbra_cmd() -> Command {
    let mut cmd = Command::new(umbra_bin());
    cmd.env_remove("UMBRA_SOCKET");
    cmd
}

/// Runs `cmd` to completion, killing it (and panicking) after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let out_reader = thread::spawn(move || read_all(stdout));
    let err_reader = thread::spawn(move || read_all(stderr));
    let pid = child.id();
    let waiter = thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send(());
        status
    });
    if rx.recv_timeout(timeout).is_err() {
        // SAFETY: plain kill(2) of the child we spawned.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        let _ = waiter.join();
        panic!("{cmd:?} did not finish within {timeout:?}; killed it");
    }
    let status = waiter
        .join()
        .expect("waiter thread")
        .expect("waiting for a client");
    Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

fn read_all(mut r: impl std::io::Read) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf);
    buf
}

/// Asserts that `out` is a failed command that printed exactly one line
/// `umbra: ...` on stderr; returns that line.
#[track_caller]
pub fn assert_one_line_error(out: &Output, context: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{context}: expected a failure, got {}\nstdout: {}\nstderr: {stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{context}: expected exactly one line on stderr, got:\n{stderr}"
    );
    assert!(
        lines[0].starts_with("umbra: "),
        "{context}: the error line should start with `umbra: `: {:?}",
        lines[0]
    );
    lines[0].to_string()
}

/// One shadow copy set as `--json` prints it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct SetJson {
    pub id: u64,
    pub name: String,
    pub created: String,
    pub label: Option<String>,
    /// `manual`, `scheduled` or `backup`.
    #[serde(default)]
    pub origin: String,
    pub volumes: Vec<String>,
}

impl SetJson {
    /// Checks the contract's default naming: the UTC creation time to the
    /// second without colons, maybe with a `-N` suffix, and `created` in
    /// RFC 3339 naming the same second.
    #[track_caller]
    pub fn assert_well_formed(&self) {
        let created = chrono::DateTime::parse_from_rfc3339(&self.created)
            .unwrap_or_else(|e| panic!("set {self:?}: `created` is not RFC 3339: {e}"));
        let stem = created
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%dT%H%M%SZ")
            .to_string();
        let suffix_ok = match self.name.strip_prefix(&stem) {
            Some("") => true,
            Some(rest) => rest
                .strip_prefix('-')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
            None => false,
        };
        assert!(
            suffix_ok,
            "set {self:?}: name should be {stem} or {stem}-N (the UTC creation time)"
        );
        assert!(
            !self.name.contains(':'),
            "set names never contain colons: {self:?}"
        );
    }
}

/// Where a volume lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Backing and mount are separate directories.
    Separate,
    /// The live mount is stacked over the backing directory.
    InPlace,
    /// `provider = "btrfs"`: a subvolume of the daemon's own loop-mounted
    /// btrfs, used directly (no live mount).
    Btrfs,
}

#[derive(Clone, Debug)]
pub struct VolumeSpec {
    pub name: String,
    pub placement: Placement,
}

/// The configuration a `Daemon` writes; paths are filled in by the harness.
#[derive(Clone, Debug)]
pub struct Config {
    pub volumes: Vec<VolumeSpec>,
    pub name_format: Option<String>,
    pub threads: Option<u32>,
    /// More top-level lines, as written (`max_clients = 2`).
    pub extra: Vec<String>,
}

impl Default for Config {
    /// One volume `data`, separate backing and mount.
    fn default() -> Self {
        Config::empty().volume("data")
    }
}

impl Config {
    pub fn empty() -> Config {
        Config {
            volumes: Vec::new(),
            name_format: None,
            threads: None,
            extra: Vec::new(),
        }
    }

    /// Adds a volume with separate backing and mount directories.
    pub fn volume(mut self, name: &str) -> Config {
        self.volumes.push(VolumeSpec {
            name: name.to_string(),
            placement: Placement::Separate,
        });
        self
    }

    /// Adds a btrfs volume: a subvolume of a loop-mounted btrfs the
    /// harness makes, used directly.
    pub fn btrfs(mut self, name: &str) -> Config {
        self.volumes.push(VolumeSpec {
            name: name.to_string(),
            placement: Placement::Btrfs,
        });
        self
    }

    /// Adds a volume mounted in place over its backing directory.
    pub fn in_place(mut self, name: &str) -> Config {
        self.volumes.push(VolumeSpec {
            name: name.to_string(),
            placement: Placement::InPlace,
        });
        self
    }

    pub fn volumes(names: &[&str]) -> Config {
        names.iter().fold(Config::empty(), |c, n| c.volume(n))
    }

    pub fn name_format(mut self, format: &str) -> Config {
        self.name_format = Some(format.to_string());
        self
    }

    pub fn threads(mut self, n: u32) -> Config {
        self.threads = Some(n);
        self
    }

    /// Adds a top-level line to the config file, e.g. `client_timeout = 1`.
    pub fn line(mut self, line: &str) -> Config {
        self.extra.push(line.to_string());
        self
    }
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The directories of one daemon, all inside its temp dir.
#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub snapshots: PathBuf,
    /// (name, backing, mount)
    pub volumes: Vec<(String, PathBuf, PathBuf)>,
    /// The names of the btrfs volumes (their mount is their backing).
    pub btrfs: Vec<String>,
}

impl Layout {
    fn new(root: &Path, config: &Config) -> Layout {
        let volumes = config
            .volumes
            .iter()
            .map(|v| {
                let backing = match v.placement {
                    Placement::Btrfs => root.join("btrfs").join("mnt").join(&v.name),
                    _ => root.join("backing").join(&v.name),
                };
                let mount = match v.placement {
                    Placement::Separate => root.join("live").join(&v.name),
                    Placement::InPlace | Placement::Btrfs => backing.clone(),
                };
                (v.name.clone(), backing, mount)
            })
            .collect();
        Layout {
            root: root.to_path_buf(),
            config_path: root.join("umbra.toml"),
            state_dir: root.join("state"),
            socket: root.join("umbra.sock"),
            snapshots: root.join("snapshots"),
            volumes,
            btrfs: config
                .volumes
                .iter()
                .filter(|v| v.placement == Placement::Btrfs)
                .map(|v| v.name.clone())
                .collect(),
        }
    }

    /// The config file text.
    pub fn toml(&self, config: &Config) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "state_dir = {}",
            toml_str(&self.state_dir.to_string_lossy())
        );
        let _ = writeln!(t, "socket = {}", toml_str(&self.socket.to_string_lossy()));
        let _ = writeln!(
            t,
            "snapshots = {}",
            toml_str(&self.snapshots.to_string_lossy())
        );
        if let Some(f) = &config.name_format {
            let _ = writeln!(t, "name_format = {}", toml_str(f));
        }
        if let Some(n) = config.threads {
            let _ = writeln!(t, "threads = {n}");
        }
        for line in &config.extra {
            let _ = writeln!(t, "{line}");
        }
        for (name, backing, mount) in &self.volumes {
            let _ = writeln!(t, "\n[[volume]]");
            let _ = writeln!(t, "name = {}", toml_str(name));
            let _ = writeln!(t, "backing = {}", toml_str(&backing.to_string_lossy()));
            if self.btrfs.contains(name) {
                let _ = writeln!(t, "provider = \"btrfs\"");
            } else {
                let _ = writeln!(t, "mount = {}", toml_str(&mount.to_string_lossy()));
            }
        }
        t
    }

    /// Every mountpoint the config names: each live mount and the browser.
    pub fn mountpoints(&self) -> Vec<PathBuf> {
        let mut m: Vec<PathBuf> = self
            .volumes
            .iter()
            .filter(|v| !self.btrfs.contains(&v.0))
            .map(|v| v.2.clone())
            .collect();
        m.push(self.snapshots.clone());
        m
    }
}

/// Stops a leftover process and unmounts every path in `mounts`, quietly.
fn teardown(child: Option<&mut Child>, mounts: &[PathBuf]) {
    if let Some(child) = child
        && matches!(child.try_wait(), Ok(None))
    {
        signal(child, libc::SIGTERM);
        if wait_timeout(child, STOP_TIMEOUT).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    for mp in mounts {
        // Stacked mounts (in place) may need more than one pass.
        for _ in 0..4 {
            if !sys::is_mounted(mp) {
                break;
            }
            let _ = sys::lazy_unmount(mp);
        }
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: plain kill(2) of a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// A set of every volume, asked for on the control socket `socket` by this
/// very process (see `Daemon::try_create_set_in_process`).
pub fn create_set_in_process(socket: &Path) -> Result<SetJson, String> {
    request_in_process(socket, "{\"op\":\"create\"}", "create")
}

/// One request on the control socket `socket` from this very process, and
/// its answer's value.
fn request_in_process<T: serde::de::DeserializeOwned>(
    socket: &Path,
    request: &str,
    what: &str,
) -> Result<T, String> {
    use std::io::Write as _;
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .map_err(|e| format!("sending {what}: {e}"))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| format!("reading the answer to {what}: {e}"))?;
    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Answer<T> {
        Ok(T),
        Error(String),
    }
    match serde_json::from_str(&line) {
        Ok(Answer::Ok(value)) => Ok(value),
        Ok(Answer::Error(e)) => Err(format!("{what}: {e}")),
        Err(e) => Err(format!("{what} answered {line:?}: {e}")),
    }
}

/// A running `umbra up` in its own temp dir.
pub struct Daemon {
    pub config: Config,
    pub layout: Layout,
    child: Option<Child>,
    /// Every stdout line of the current run.
    stdout: Arc<Mutex<Vec<String>>>,
    stderr_path: PathBuf,
    runs: u32,
    /// RLIMIT_NOFILE (soft and hard) the daemon starts under, if set.
    nofile: Option<u64>,
    /// Variables set in the daemon's environment.
    env: Vec<(String, String)>,
    /// The loop-mounted btrfs of the btrfs volumes; unmounted after the
    /// daemon stopped.
    pub btrfs: Option<btrfs::LoopBtrfs>,
    // Dropped last, after Drop has unmounted everything.
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Writes the config and the directories, but starts nothing: a test may
    /// fill backing directories first, then call `launch`.
    pub fn prepare(config: Config) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("umbra-e2e-")
            .tempdir()
            .expect("creating a temp dir");
        let root = fs::canonicalize(dir.path()).expect("canonicalizing the temp dir");
        let layout = Layout::new(&root, &config);
        let btrfs = (!layout.btrfs.is_empty()).then(|| btrfs::LoopBtrfs::new(&root.join("btrfs")));
        for (name, backing, mount) in &layout.volumes {
            if let Some(btrfs) = btrfs.as_ref().filter(|_| layout.btrfs.contains(name)) {
                btrfs.subvolume(name);
                continue;
            }
            fs::create_dir_all(backing).expect("creating a backing dir");
            fs::create_dir_all(mount).expect("creating a mount dir");
        }
        fs::create_dir_all(&layout.snapshots).expect("creating the snapshots dir");
        fs::write(&layout.config_path, layout.toml(&config)).expect("writing the config");
        Daemon {
            config,
            layout,
            child: None,
            stdout: Arc::new(Mutex::new(Vec::new())),
            stderr_path: root.join("daemon-0.stderr"),
            runs: 0,
            nofile: None,
            env: Vec::new(),
            btrfs,
            _dir: dir,
        }
    }

    /// Prepares and launches; panics with the daemon's stderr if it is not
    /// ready within READY_TIMEOUT.
    #[track_caller]
    pub fn start(config: Config) -> Daemon {
        let mut d = Daemon::prepare(config);
        d.launch();
        d
    }

    pub fn try_start(config: Config) -> Result<Daemon, String> {
        let mut d = Daemon::prepare(config);
        d.try_launch()?;
        Ok(d)
    }

    #[track_caller]
    pub fn launch(&mut self) {
        if let Err(e) = self.try_launch() {
            panic!("{e}");
        }
    }

    /// Starts the daemon under RLIMIT_NOFILE `n` (soft and hard), as
    /// `prlimit --nofile=N:N umbra up` would; call before `launch`.
    pub fn limit_descriptors(&mut self, n: u64) {
        self.nofile = Some(n);
    }

    /// `umbra up --config FILE` in this daemon's dir, for a start that
    /// must give up by itself (a bad config, a refused state dir).
    pub fn run_up(&self, config: &Path) -> Output {
        let mut cmd = umbra_cmd();
        cmd.arg("up")
            .arg("--config")
            .arg(config)
            .current_dir(self.root());
        run_with_timeout(&mut cmd, Duration::from_secs(20))
    }

    /// Panics unless no mountpoint of this daemon is mounted.
    #[track_caller]
    pub fn assert_nothing_mounted(&self, context: &str) {
        for mp in self.layout.mountpoints() {
            assert!(
                !sys::is_mounted(&mp),
                "{context}: {} was left mounted",
                mp.display()
            );
        }
    }

    /// Sets `key` in the environment of every later `launch`.
    pub fn env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Takes `key` out of the environment of later launches.
    pub fn unset_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    /// The stderr file the next `launch` writes the daemon's log to.
    pub fn next_stderr_path(&self) -> PathBuf {
        self.layout
            .root
            .join(format!("daemon-{}.stderr", self.runs + 1))
    }

    /// Spawns `umbra up --config FILE` and waits for `umbra: ready`.
    pub fn try_launch(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "the daemon is already running");
        self.runs += 1;
        self.stderr_path = self
            .layout
            .root
            .join(format!("daemon-{}.stderr", self.runs));
        let stderr = fs::File::create(&self.stderr_path)
            .map_err(|e| format!("creating the stderr file: {e}"))?;
        let mut cmd = umbra_cmd();
        if let Some(n) = self.nofile {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit is async-signal-safe and touches only the
            // child's own limits, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd
            .arg("up")
            .arg("--config")
            .arg(&self.layout.config_path)
            .current_dir(&self.layout.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", umbra_bin().display()))?;
        let stdout = child.stdout.take().expect("piped");
        self.child = Some(child);
        let lines = Arc::new(Mutex::new(Vec::new()));
        self.stdout = lines.clone();
        let (tx, rx) = mpsc::channel();
        // Keeps draining stdout for the daemon's whole life, so it never
        // blocks on a full pipe.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let ready = line == "umbra: ready";
                lines.lock().expect("stdout lines").push(line);
                if ready {
                    let _ = tx.send(());
                }
            }
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(()) => break,
                Err(mpsc::RecvTimeoutError::Timeout)
                | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let child = self.child.as_mut().expect("spawned");
                    if let Ok(Some(status)) = child.try_wait() {
                        self.child = None;
                        return Err(self.failure(&format!(
                            "umbra up exited with {status} before `umbra: ready`"
                        )));
                    }
                    if Instant::now() >= deadline {
                        teardown(self.child.as_mut(), &self.layout.mountpoints());
                        self.child = None;
                        return Err(self.failure(&format!(
                            "umbra up printed no `umbra: ready` within {READY_TIMEOUT:?}"
                        )));
                    }
                }
            }
        }
        // Ready means everything is mounted.
        for mp in self.layout.mountpoints() {
            if !sys::is_mounted(&mp) {
                return Err(self.failure(&format!(
                    "after `umbra: ready`, {} is not a mountpoint",
                    mp.display()
                )));
            }
        }
        Ok(())
    }

    /// A message naming what happened, with the daemon's stdout and stderr.
    pub fn failure(&self, what: &str) -> String {
        let stderr = fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let stdout = self.stdout_lines().join("\n");
        format!(
            "{what}\nconfig {}:\n{}\n--- daemon stdout ---\n{stdout}\n--- daemon stderr ---\n{stderr}",
            self.layout.config_path.display(),
            fs::read_to_string(&self.layout.config_path).unwrap_or_default()
        )
    }

    /// What the current run wrote to stderr (its log) so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Whether the current run is still alive (or how it ended) and the last
    /// `lines` lines of its stderr: what a long run's failure needs to say,
    /// since the temp dir with the whole log goes when the test ends.
    pub fn last_words(&mut self, lines: usize) -> String {
        let state = match self.child.as_mut().map(Child::try_wait) {
            None => "not running".to_string(),
            Some(Ok(None)) => "still running".to_string(),
            Some(Ok(Some(status))) => format!("exited: {status}"),
            Some(Err(e)) => format!("unknown ({e})"),
        };
        let stderr = fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let all: Vec<&str> = stderr.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!("the daemon is {state}; the end of its stderr:\n{tail}")
    }

    /// The stdout lines of the current run so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().expect("stdout lines").clone()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM and checks the contract: exit 0, nothing left mounted.
    #[track_caller]
    pub fn stop(&mut self) {
        if let Err(e) = self.try_stop_with(libc::SIGTERM) {
            panic!("{e}");
        }
    }

    pub fn try_stop(&mut self) -> Result<(), String> {
        self.try_stop_with(libc::SIGTERM)
    }

    /// Sends `sig` (SIGTERM or SIGINT); the daemon must unmount everything
    /// and exit 0 within STOP_TIMEOUT.
    pub fn try_stop_with(&mut self, sig: libc::c_int) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Err("the daemon is not running".to_string());
        };
        signal(&child, sig);
        let status = wait_timeout(&mut child, STOP_TIMEOUT);
        let still_mounted: Vec<PathBuf> = self
            .layout
            .mountpoints()
            .into_iter()
            .filter(|m| sys::is_mounted(m))
            .collect();
        teardown(Some(&mut child), &self.layout.mountpoints());
        match status {
            None => Err(self.failure(&format!(
                "the daemon did not exit within {STOP_TIMEOUT:?} of signal {sig}"
            ))),
            Some(s) if !s.success() => {
                Err(self.failure(&format!("the daemon exited with {s} on signal {sig}")))
            }
            Some(_) if !still_mounted.is_empty() => Err(self.failure(&format!(
                "after the daemon exited, still mounted: {still_mounted:?}"
            ))),
            Some(_) => Ok(()),
        }
    }

    /// SIGKILLs the daemon and reaps it, leaving its mounts behind as a
    /// crash does (the next `launch` must recover them).
    pub fn kill(&mut self) {
        self.kill_reporting_abort();
    }

    /// `kill`, returning whether the daemon could die only once its FUSE
    /// connections were aborted (a product bug: see `abort_fuse_connections`).
    pub fn kill_reporting_abort(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            panic!("the daemon is not running");
        };
        signal(&child, libc::SIGKILL);
        let mut aborted = false;
        if wait_timeout(&mut child, Duration::from_secs(2)).is_none() {
            // A daemon thread waiting on a request to the daemon's own
            // mount cannot die until that request ends, and nobody is left
            // to answer it: abort the connections, as an administrator
            // would. The flush before a hold runs in a child process so
            // that this never happens; it stays as the suite's safety net.
            self.abort_fuse_connections();
            aborted = true;
        }
        if wait_timeout(&mut child, STOP_TIMEOUT).is_none() {
            panic!("{}", self.failure("the daemon survived SIGKILL"));
        }
        aborted
    }

    /// Aborts the FUSE connection of every mountpoint of this daemon,
    /// found in /proc/self/mountinfo (no syscall reaches the mounts).
    fn abort_fuse_connections(&self) {
        let Ok(mounts) = umbra_fs::fusectl::read_fuse_mounts() else {
            return;
        };
        let ours = self.layout.mountpoints();
        for mount in mounts.iter().filter(|m| ours.contains(&m.mountpoint)) {
            let _ = umbra_fs::fusectl::abort(mount.connection);
        }
    }

    #[track_caller]
    pub fn restart(&mut self) {
        if let Err(e) = self.try_restart() {
            panic!("{e}");
        }
    }

    pub fn try_restart(&mut self) -> Result<(), String> {
        self.try_stop()?;
        self.try_launch()
    }

    pub fn root(&self) -> &Path {
        &self.layout.root
    }

    /// A fresh directory in this daemon's temp dir (same filesystem as the
    /// backing directories), e.g. for a native reference tree.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.layout.root.join("scratch").join(name);
        fs::create_dir_all(&p).expect("creating a scratch dir");
        p
    }

    fn volume(&self, name: &str) -> &(String, PathBuf, PathBuf) {
        self.layout
            .volumes
            .iter()
            .find(|v| v.0 == name)
            .unwrap_or_else(|| panic!("no volume {name} in this config"))
    }

    /// The live mount of `volume`.
    pub fn live(&self, volume: &str) -> PathBuf {
        self.volume(volume).2.clone()
    }

    /// The backing directory of `volume` (under the mount when in place).
    pub fn backing(&self, volume: &str) -> PathBuf {
        self.volume(volume).1.clone()
    }

    pub fn snapshots(&self) -> &Path {
        &self.layout.snapshots
    }

    /// `<snapshots>/<set>/<volume>`.
    pub fn browse(&self, set: &SetJson, volume: &str) -> PathBuf {
        self.layout.snapshots.join(&set.name).join(volume)
    }

    /// Runs `umbra ARGS` with `--socket` added after the subcommand.
    pub fn umbra(&self, args: &[&str]) -> Output {
        let mut cmd = umbra_cmd();
        cmd.current_dir(&self.layout.root);
        if let Some((sub, rest)) = args.split_first() {
            cmd.arg(sub)
                .arg("--socket")
                .arg(&self.layout.socket)
                .args(rest);
        }
        run_with_timeout(&mut cmd, CLIENT_TIMEOUT)
    }

    /// Runs a client command that must succeed; returns its stdout.
    pub fn try_umbra_ok(&self, args: &[&str]) -> Result<String, String> {
        let out = self.umbra(args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(self.failure(&format!(
                "`umbra {}` failed with {}\nstdout: {}\nstderr: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    #[track_caller]
    pub fn umbra_ok(&self, args: &[&str]) -> String {
        self.try_umbra_ok(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `umbra create [ARGS] --json`, parsed and checked.
    pub fn try_create_set_with(&self, args: &[&str]) -> Result<SetJson, String> {
        let mut all = vec!["create"];
        all.extend_from_slice(args);
        all.push("--json");
        let stdout = self.try_umbra_ok(&all)?;
        serde_json::from_str(&stdout)
            .map_err(|e| format!("`umbra create --json` printed no set ({e}): {stdout:?}"))
    }

    #[track_caller]
    pub fn create_set_with(&self, args: &[&str]) -> SetJson {
        let set = self
            .try_create_set_with(args)
            .unwrap_or_else(|e| panic!("{e}"));
        if self.config.name_format.is_none() {
            set.assert_well_formed();
        }
        set
    }

    /// A set of every volume.
    #[track_caller]
    pub fn create_set(&self) -> SetJson {
        self.create_set_with(&[])
    }

    pub fn try_create_set(&self) -> Result<SetJson, String> {
        self.try_create_set_with(&[])
    }

    /// A set of every volume, asked for on the control socket by this very
    /// process. Running the CLI would fork, and the child closing its copies
    /// of this process's descriptors flushes their files on a live mount
    /// with the writeback cache: a test of the flush before the hold must
    /// not fork between its writes and its set.
    pub fn try_create_set_in_process(&self) -> Result<SetJson, String> {
        create_set_in_process(&self.layout.socket)
    }

    /// Every set, oldest first, asked for on the control socket by this
    /// very process: no fork (see `try_create_set_in_process`).
    pub fn try_list_sets_in_process(&self) -> Result<Vec<SetJson>, String> {
        request_in_process(&self.layout.socket, "{\"op\":\"list\"}", "list")
    }

    pub fn try_list_sets(&self) -> Result<Vec<SetJson>, String> {
        let stdout = self.try_umbra_ok(&["list", "--json"])?;
        serde_json::from_str(&stdout)
            .map_err(|e| format!("`umbra list --json` printed no array of sets ({e}): {stdout:?}"))
    }

    #[track_caller]
    pub fn list_sets(&self) -> Vec<SetJson> {
        self.try_list_sets().unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_delete_set(&self, name: &str) -> Result<(), String> {
        self.try_umbra_ok(&["delete", name]).map(|_| ())
    }

    #[track_caller]
    pub fn status(&self) -> serde_json::Value {
        let stdout = self.umbra_ok(&["status", "--json"]);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("`umbra status --json` printed no JSON ({e}): {stdout:?}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        teardown(self.child.as_mut(), &self.layout.mountpoints());
        self.child = None;
    }
}

/// The unprivileged user the tests act as.
pub const NOBODY: u32 = 65534;

/// Makes `dir` and every directory above it searchable by nobody, so that
/// a test can compare what nobody may do through umbra and natively.
pub fn open_the_way(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut p = dir;
    while p != Path::new("/") {
        let mode = fs::metadata(p)
            .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
            .permissions()
            .mode();
        if mode & 0o005 != 0o005 {
            fs::set_permissions(p, fs::Permissions::from_mode(mode | 0o755))
                .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
        }
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
}

/// A tree under `live` with every kind of entry restic keeps: nested
/// directories with their modes, a file of several MiB, a script, a
/// symlink, an empty file, an empty directory and a hard link.
pub fn restic_tree(live: &Path) {
    use std::os::unix::fs::{PermissionsExt, symlink};
    fs::create_dir_all(live.join("docs/deep")).expect("laying the restic tree");
    fs::write(live.join("docs/a.txt"), "alpha\n").expect("laying the restic tree");
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(live.join("docs/deep/big.bin"), &big).expect("laying the restic tree");
    fs::write(live.join("script.sh"), "#!/bin/sh\n").expect("laying the restic tree");
    fs::set_permissions(live.join("script.sh"), fs::Permissions::from_mode(0o750))
        .expect("laying the restic tree");
    fs::set_permissions(live.join("docs/deep"), fs::Permissions::from_mode(0o711))
        .expect("laying the restic tree");
    symlink("docs/a.txt", live.join("link")).expect("laying the restic tree");
    fs::write(live.join("empty"), "").expect("laying the restic tree");
    fs::create_dir(live.join("empty-dir")).expect("laying the restic tree");
    fs::write(live.join("linked"), "two names\n").expect("laying the restic tree");
    fs::hard_link(live.join("linked"), live.join("docs/linked-too"))
        .expect("laying the restic tree");
    fs::write(live.join("owned"), "nobody's\n").expect("laying the restic tree");
    std::os::unix::fs::chown(live.join("owned"), Some(65534), Some(65534))
        .expect("laying the restic tree");
}
