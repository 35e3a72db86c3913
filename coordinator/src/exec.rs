//! The exec writer: an unmodified application takes part through a
//! program run once per event as `PROGRAM EVENT`, with UMBRA_EVENT,
//! UMBRA_SET_ID, UMBRA_SET_NAME and UMBRA_VOLUMES in its environment (the
//! `fsfreeze-hook` habit), and with backup-complete UMBRA_BACKUP_SUCCEEDED
//! (1 or 0). Exit 0 is success, 75 (EX_TEMPFAIL) a retryable
//! failure, anything else a failure that is not; the last line the program
//! wrote to stderr is the message. It never runs a shell.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use crate::link::{LinkError, WriterLink};
use crate::protocol::{EventMessage, Registration, Reply};

/// EX_TEMPFAIL from sysexits.h: try again later.
pub const EXIT_RETRYABLE: i32 = 75;

/// A `[[writer]]` table of the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecWriter {
    pub name: String,
    pub volumes: Vec<String>,
    pub exec: PathBuf,
    pub timeout: Duration,
    pub required: bool,
}

impl ExecWriter {
    pub fn registration(&self) -> Registration {
        Registration {
            name: self.name.clone(),
            volumes: self.volumes.clone(),
            components: Vec::new(),
            required: self.required,
            timeout_secs: Some(self.timeout.as_secs().max(1)),
        }
    }

    pub fn link(&self) -> ExecLink {
        ExecLink {
            program: self.exec.clone(),
            running: None,
        }
    }
}

struct Running {
    event: EventMessage,
    child: Child,
    stderr: Stderr,
}

/// What the program writes to stderr, read on a thread of its own.
struct Stderr {
    text: Arc<Mutex<Vec<u8>>>,
    finished: mpsc::Receiver<()>,
}

impl Stderr {
    /// The text once the program exited. A process it left in the
    /// background may hold the pipe open: wait for the end only briefly.
    fn collect(&self) -> String {
        let _ = self.finished.recv_timeout(Duration::from_millis(100));
        let text = self.text.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&text).into_owned()
    }
}

/// Runs the program for each event sent.
pub struct ExecLink {
    program: PathBuf,
    running: Option<Running>,
}

/// Spawns `command`, retrying briefly on ETXTBSY: a program that was just
/// written (a hook installed a moment ago) can still be held open for
/// writing by a process forked meanwhile, until that one execs.
fn spawn_retrying_busy(command: &mut Command) -> std::io::Result<std::process::Child> {
    let mut tries = 0;
    loop {
        match command.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 20 => {
                tries += 1;
                thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

impl WriterLink for ExecLink {
    fn send(&mut self, event: &EventMessage) -> Result<(), LinkError> {
        self.reap();
        let mut command = Command::new(&self.program);
        if let Some(succeeded) = event.backup_succeeded {
            command.env("UMBRA_BACKUP_SUCCEEDED", if succeeded { "1" } else { "0" });
        }
        command
            .arg(event.event.as_str())
            .env("UMBRA_EVENT", event.event.as_str())
            .env("UMBRA_SET_ID", &event.set_id)
            .env("UMBRA_SET_NAME", &event.set_name)
            .env("UMBRA_VOLUMES", event.volumes.join(" "))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = spawn_retrying_busy(&mut command).map_err(|e| {
            LinkError::Io(std::io::Error::new(
                e.kind(),
                format!("running {}: {e}", self.program.display()),
            ))
        })?;
        let text = Arc::new(Mutex::new(Vec::new()));
        let (done, finished) = mpsc::channel();
        if let Some(mut pipe) = child.stderr.take() {
            let text = text.clone();
            thread::spawn(move || {
                // A program may write a lot; keep reading so it never blocks.
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut text = text.lock().unwrap_or_else(|p| p.into_inner());
                    text.extend_from_slice(&buf[..n]);
                    if text.len() > 64 * 1024 {
                        let cut = text.len() - 8 * 1024;
                        text.drain(..cut);
                    }
                }
                let _ = done.send(());
            });
        }
        let stderr = Stderr { text, finished };
        self.running = Some(Running {
            event: event.clone(),
            child,
            stderr,
        });
        Ok(())
    }

    fn recv(&mut self, deadline: Instant) -> Result<Reply, LinkError> {
        let Some(mut run) = self.running.take() else {
            return Err(LinkError::Disconnected);
        };
        let started = Instant::now();
        let status = loop {
            if let Some(status) = run.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                kill(&mut run.child);
                return Err(LinkError::Timeout(started.elapsed()));
            }
            thread::sleep(Duration::from_millis(5));
        };
        let stderr = run.stderr.collect();
        let last = stderr
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string);
        let result = match status.code() {
            Some(0) => Ok(()),
            Some(code) => Err(crate::Failure {
                retryable: code == EXIT_RETRYABLE,
                message: last.unwrap_or_else(|| format!("exited with status {code}")),
            }),
            None => Err(crate::Failure::fatal(format!(
                "killed by a signal{}",
                last.map(|l| format!(": {l}")).unwrap_or_default()
            ))),
        };
        Ok(Reply::to(&run.event, result))
    }

    fn alive(&mut self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "exec"
    }

    fn survives_errors(&self) -> bool {
        true
    }
}

impl ExecLink {
    /// Kills a program whose answer nobody waited for.
    fn reap(&mut self) {
        if let Some(mut run) = self.running.take() {
            kill(&mut run.child);
        }
    }
}

/// Kills the program and whatever it started (it leads its own process
/// group), and reaps it.
fn kill(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: signals the process group the child leads.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for ExecLink {
    fn drop(&mut self) {
        self.reap();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::protocol::Event;

    fn script(dir: &std::path::Path, body: &str) -> PathBuf {
        let path = dir.join("hook");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    fn run(program: PathBuf, timeout: Duration) -> Result<Result<(), crate::Failure>, LinkError> {
        let writer = ExecWriter {
            name: "hook".into(),
            volumes: vec!["data".into()],
            exec: program,
            timeout,
            required: true,
        };
        let mut link = writer.link();
        let event = EventMessage {
            event: Event::Freeze,
            set_id: "s1".into(),
            set_name: "n1".into(),
            volumes: vec!["data".into(), "logs".into()],
            backup_succeeded: None,
        };
        link.send(&event)?;
        let reply = link.recv(Instant::now() + timeout)?;
        Ok(reply.answering(&event).expect("answers the event"))
    }

    #[test]
    fn exit_codes_are_answers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("seen");
        let ok = script(
            dir.path(),
            &format!(
                "echo \"$1 $UMBRA_EVENT $UMBRA_SET_ID $UMBRA_SET_NAME $UMBRA_VOLUMES\" > {}",
                out.display()
            ),
        );
        assert!(matches!(run(ok, Duration::from_secs(5)), Ok(Ok(()))));
        let seen = std::fs::read_to_string(&out).expect("ran");
        assert_eq!(seen.trim(), "freeze freeze s1 n1 data logs");

        let dir = tempfile::tempdir().expect("tempdir");
        let retry = script(dir.path(), "echo 'database busy' >&2; exit 75");
        let failure = run(retry, Duration::from_secs(5))
            .expect("ran")
            .expect_err("fails");
        assert_eq!(failure, crate::Failure::retryable("database busy"));

        let dir = tempfile::tempdir().expect("tempdir");
        let fatal = script(dir.path(), "exit 3");
        let failure = run(fatal, Duration::from_secs(5))
            .expect("ran")
            .expect_err("fails");
        assert_eq!(failure, crate::Failure::fatal("exited with status 3"));
    }

    #[test]
    fn a_program_that_leaves_a_helper_behind_answers_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let helper = script(dir.path(), "sleep 5 &\necho started >&2");
        let started = Instant::now();
        assert!(matches!(run(helper, Duration::from_secs(5)), Ok(Ok(()))));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_hung_program_is_killed_at_its_deadline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hung = script(dir.path(), "sleep 30");
        let started = Instant::now();
        let result = run(hung, Duration::from_millis(200));
        assert!(matches!(result, Err(LinkError::Timeout(_))), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_missing_program_is_an_error() {
        let result = run("/nonexistent/hook".into(), Duration::from_secs(1));
        assert!(matches!(result, Err(LinkError::Io(_))), "{result:?}");
    }
}
