//! Real servers for the recipe tests (smbd, PostgreSQL, restic): the Debian
//! packages they need, installed with apt-get when missing (as .ci/run
//! does, so a test run by hand on a fresh machine works too), a free
//! loopback port, and a child process killed by its pid when dropped.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One apt-get at a time within a test binary; other processes wait on
/// dpkg's own lock.
static APT: Mutex<()> = Mutex::new(());

/// Installs each `(program, package)` whose program is not on PATH (or,
/// if absolute, not there). Panics with apt-get's output if that fails.
pub fn ensure_installed(needs: &[(&str, &str)]) {
    let _one = APT.lock().unwrap_or_else(|p| p.into_inner());
    let missing: Vec<&str> = needs
        .iter()
        .filter(|(program, _)| !installed(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return;
    }
    let apt = |args: &[&str]| {
        let out = Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=300"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .unwrap_or_else(|e| panic!("running apt-get: {e}"));
        assert!(
            out.status.success(),
            "apt-get {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    apt(&["update", "-qq"]);
    let mut install = vec!["install", "-y", "-qq"];
    install.extend(&missing);
    apt(&install);
}

fn installed(program: &str) -> bool {
    if program.starts_with('/') {
        return Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    listener.local_addr().expect("its address").port()
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} listens on {port} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A server process of the test: SIGTERM, then SIGKILL, by its pid when
/// dropped (panics included), and reaped.
pub struct Server {
    child: Child,
    /// Spawned as the leader of its own process group: its helpers (smbd's
    /// notifyd and cleanupd) are signalled with it.
    group: bool,
}

impl Server {
    pub fn new(child: Child) -> Server {
        Server {
            child,
            group: false,
        }
    }

    /// A server spawned with `process_group(0)`; the group goes with it.
    pub fn leading_its_group(child: Child) -> Server {
        Server { child, group: true }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        let target = if self.group { -pid } else { pid };
        // SAFETY: kill signals our own child (or the group it leads), which
        // is not reaped yet, so the pid is still ours.
        unsafe { libc::kill(target, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.group {
            // SAFETY: the group's id is the leader's pid, reaped just now by
            // us; what is left of its group are its own helpers.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    }
}
