//! The control socket: binding it (mode 0600, replacing a stale socket file
//! left by a crash), accepting clients, one thread each, and framing
//! their requests and answers. A malformed or oversized line gets an error
//! answer and its connection is dropped; the daemon goes on. So does a
//! client that does not send a whole line in time (the client timeout) and
//! one over the cap on clients served at once: neither can hold the daemon
//! or other clients up. When the daemon runs out of descriptors, accepting
//! goes on: a spare descriptor, given up for the moment, lets each waiting
//! client be told so. A connection that opens with `register` is a
//! writer's: after the answer it belongs to the coordinator. What a request
//! does is the service's business, not this file's.

use std::fs;
use std::io::{self, BufRead, BufReader, ErrorKind, Read};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use umbra_coordinator::protocol::Registered;
use umbra_coordinator::{Registration, SocketLink};

use super::service::{Answer, Service};

mod restore;
use crate::protocol::{self, LineError, MAX_REQUEST_LINE, Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another daemon is serving the control socket {}", .0.display())]
    InUse(PathBuf),
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    #[error("control socket {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What one client may hold of the daemon.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Clients served at once; one more is answered with an error and
    /// dropped at once.
    pub max_clients: usize,
    /// How long a client may take to send one whole request line, counted
    /// from when the daemon starts waiting for it, and to take each write
    /// of an answer. A client past it gets an error and is dropped.
    pub timeout: Duration,
}

/// The bound control socket; its file is removed when this is dropped.
pub struct ControlSocket {
    listener: UnixListener,
    file: SocketFile,
}

impl ControlSocket {
    /// Opens the socket to the members of group `gid` (mode 0660): they may
    /// then create and delete sets; everyone else still cannot connect.
    pub fn share_with_group(&self, gid: u32) -> Result<(), ControlError> {
        let path = &self.file.path;
        let io_err = |source| ControlError::Io {
            path: path.clone(),
            source,
        };
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(io_err)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(io_err)
    }

    /// Binds `path` with mode 0600. A socket file nobody answers on is a
    /// leftover of a crash and is replaced.
    pub fn bind(path: &Path) -> Result<ControlSocket, ControlError> {
        refuse_live_socket(path)?;
        let listener = bind_private(path).map_err(|source| ControlError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ControlSocket {
            listener,
            file: SocketFile {
                path: path.to_path_buf(),
            },
        })
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// Serves clients on a thread of its own for as long as the process
    /// lives. The returned guard removes the socket file when dropped.
    pub fn serve(self, service: Arc<Service>, limits: Limits) -> Result<SocketFile, ControlError> {
        let ControlSocket { listener, file } = self;
        thread::Builder::new()
            .name("control".into())
            .spawn(move || accept_loop(&listener, &service, limits))
            .map_err(|source| ControlError::Io {
                path: file.path.clone(),
                source,
            })?;
        Ok(file)
    }
}

/// Removes the socket file when dropped.
pub struct SocketFile {
    path: PathBuf,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path)
            && e.kind() != ErrorKind::NotFound
        {
            tracing::warn!("removing {}: {e}", self.path.display());
        }
    }
}

/// Refuses a path that is not a socket, or a socket someone answers on; a
/// dead socket file is left for the rename in `bind_private` to replace.
fn refuse_live_socket(path: &Path) -> Result<(), ControlError> {
    let io_err = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(e)),
        Ok(meta) if !meta.file_type().is_socket() => {
            Err(ControlError::NotASocket(path.to_path_buf()))
        }
        Ok(_) if UnixStream::connect(path).is_ok() => Err(ControlError::InUse(path.to_path_buf())),
        Ok(_) => {
            tracing::info!("replacing the stale control socket {}", path.display());
            Ok(())
        }
    }
}

/// Binds the socket in a fresh directory of mode 0700, makes it 0600 and
/// only then renames it to `path`: nobody else can reach it at any instant,
/// whatever the umask, and without touching the process-wide umask.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let parent = path.parent().unwrap_or(Path::new("/"));
    let private = parent.join(format!(
        ".umbra-bind-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    fs::DirBuilder::new().mode(0o700).create(&private)?;
    let inner = private.join("control.sock");
    let bound = UnixListener::bind(&inner).and_then(|listener| {
        fs::set_permissions(&inner, fs::Permissions::from_mode(0o600))?;
        fs::rename(&inner, path)?;
        Ok(listener)
    });
    if bound.is_err()
        && let Err(e) = fs::remove_file(&inner)
    {
        tracing::debug!("removing {}: {e}", inner.display());
    }
    fs::remove_dir(&private)?;
    bound
}

/// Counts a client as served until dropped.
struct Seat(Arc<AtomicUsize>);

impl Seat {
    /// A seat, if fewer than `max` clients hold one.
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Seat> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Seat(count.clone()))
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn accept_loop(listener: &UnixListener, service: &Arc<Service>, limits: Limits) {
    let clients = Arc::new(AtomicUsize::new(0));
    let mut spare = spare_descriptor();
    // Whether the last accept failed for want of descriptors (logged once
    // per shortage, not once per try).
    let mut starved = false;
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                starved = false;
                if spare.is_none() {
                    spare = spare_descriptor();
                }
                let Some(seat) = Seat::take(&clients, limits.max_clients) else {
                    // The answer fits the empty socket buffer: this write
                    // does not wait for the client.
                    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
                    refuse(
                        &mut &stream,
                        format!(
                            "the daemon is serving {} control clients already; try again",
                            limits.max_clients
                        ),
                    );
                    continue;
                };
                let service = service.clone();
                let spawned =
                    thread::Builder::new()
                        .name("control-client".into())
                        .spawn(move || {
                            let _seat = seat;
                            serve_client(&stream, &service, limits.timeout);
                        });
                if let Err(e) = spawned {
                    tracing::error!("cannot start a thread for a control client: {e}");
                }
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                if !starved {
                    tracing::error!("accepting a control client: {e}");
                    starved = true;
                }
                // The spare descriptor makes room for the waiting client,
                // which learns why instead of waiting in the backlog.
                drop(spare.take());
                if let Ok((stream, _)) = listener.accept() {
                    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
                    refuse(
                        &mut &stream,
                        format!("the daemon is out of file descriptors ({e}); try again"),
                    );
                }
                spare = spare_descriptor();
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                tracing::error!("accepting a control client: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A descriptor held only to be given up when accept runs out of them.
fn spare_descriptor() -> Option<fs::File> {
    fs::File::open("/dev/null").ok()
}

/// A whole-line deadline over a client's buffered reader: each blocking
/// read waits at most for what is left of it and fails with TimedOut once it
/// has passed, so trickling bytes cannot stretch it. The reader stays a
/// plain `BufReader<UnixStream>`, which a writer's link takes over.
struct Deadline<'a> {
    reader: &'a mut BufReader<UnixStream>,
    at: Instant,
}

impl Deadline<'_> {
    fn arm(&self) -> io::Result<()> {
        let left = self.at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        self.reader.get_ref().set_read_timeout(Some(left))
    }
}

fn timed_out(e: io::Error) -> io::Error {
    if e.kind() == ErrorKind::WouldBlock {
        ErrorKind::TimedOut.into()
    } else {
        e
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        self.reader.read(buf).map_err(timed_out)
    }
}

impl BufRead for Deadline<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.arm()?;
        self.reader.fill_buf().map_err(timed_out)
    }

    fn consume(&mut self, n: usize) {
        self.reader.consume(n);
    }
}

/// Answers the requests of one client, one line each, until it hangs up,
/// sends a line that does not parse, or takes longer than `timeout` to send
/// a line. A connection whose first line is a registration becomes a
/// writer's: it is answered, handed to the coordinator (which lets it idle
/// between events) and kept open after this returns.
fn serve_client(stream: &UnixStream, service: &Service, timeout: Duration) {
    if let Err(e) = stream.set_write_timeout(Some(timeout)) {
        tracing::debug!("control client: {e}");
        return;
    }
    let owned = match stream.try_clone() {
        Ok(owned) => owned,
        Err(e) => {
            refuse(
                &mut &*stream,
                format!("the daemon cannot serve a client now: {e}"),
            );
            return;
        }
    };
    let mut reader = BufReader::new(owned);
    let mut writer = stream;
    let mut first = true;
    loop {
        let mut timed = Deadline {
            reader: &mut reader,
            at: Instant::now() + timeout,
        };
        let line = match protocol::read_line(&mut timed, MAX_REQUEST_LINE) {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(LineError::Io(e)) if e.kind() == ErrorKind::TimedOut => {
                refuse(
                    &mut writer,
                    format!("no whole request line within {timeout:?}; closing"),
                );
                return;
            }
            Err(LineError::Io(e)) => {
                tracing::debug!("control client went away: {e}");
                return;
            }
            Err(e @ LineError::TooLong { .. }) => {
                refuse(&mut writer, format!("request {e}"));
                return;
            }
        };
        // Between lines (a writer idling, a backup running) there is no
        // deadline; the next request line gets its own.
        if let Err(e) = reader.get_ref().set_read_timeout(None) {
            tracing::debug!("control client: {e}");
            return;
        }
        let request = match protocol::parse_request(&line) {
            Ok(request) => request,
            Err(e) => {
                refuse(&mut writer, format!("malformed request: {e}"));
                return;
            }
        };
        tracing::debug!(?request, "control request");
        let request = match request {
            Request::Register(registration) if first => {
                register(reader, &mut writer, service, registration);
                return;
            }
            Request::Backup {
                volumes,
                label,
                keep,
            } => {
                first = false;
                if backup(&mut reader, &mut writer, service, &volumes, label, keep) {
                    continue;
                }
                return;
            }
            Request::Restore {
                set,
                volumes,
                dry_run,
            } => {
                first = false;
                if restore::serve(&mut reader, &mut writer, service, &set, &volumes, dry_run) {
                    continue;
                }
                return;
            }
            Request::Replicas(request) => {
                first = false;
                let sent = match service.replicas(&request, peer_uid(writer).or(Some(u32::MAX))) {
                    Ok(views) => protocol::write_message(&mut writer, &Response::Ok(views)),
                    Err(e) => protocol::write_message(&mut writer, &Response::<Answer>::error(e)),
                };
                if sent.is_ok() {
                    continue;
                }
                return;
            }
            Request::Replicate(request) => {
                first = false;
                if replicate(&mut writer, service, &request) {
                    continue;
                }
                return;
            }
            other => other,
        };
        first = false;
        let sent = match service.handle(request) {
            Ok(answer) => protocol::write_message(&mut writer, &Response::Ok(answer)),
            Err(e) => {
                tracing::info!("request refused: {e}");
                protocol::write_message(&mut writer, &Response::<Answer>::error(e))
            }
        };
        if let Err(e) = sent {
            tracing::debug!("control client went away: {e}");
            return;
        }
    }
}

/// Serves a requester's backup: the set, made up to PostSnapshot, is
/// answered; then its `backup_complete` is awaited on this connection.
/// Anything else, or a hang-up, counts as a failed backup (BackupShutdown).
/// Returns whether the connection goes on.
fn backup(
    reader: &mut BufReader<UnixStream>,
    writer: &mut &UnixStream,
    service: &Service,
    volumes: &[String],
    label: Option<String>,
    keep: bool,
) -> bool {
    let backup = match service.backup(volumes, label, keep) {
        Ok(backup) => backup,
        Err(e) => {
            tracing::info!("backup refused: {e}");
            return protocol::write_message(writer, &Response::<Answer>::error(e)).is_ok();
        }
    };
    let made = Answer::Created(Box::new(backup.view().clone()));
    if let Err(e) = protocol::write_message(writer, &Response::Ok(made)) {
        tracing::warn!("the requester of a backup went away: {e}");
        return false;
    }
    let line = match protocol::read_line(reader, MAX_REQUEST_LINE) {
        Ok(Some(line)) => line,
        Ok(None) | Err(_) => {
            tracing::warn!("the requester of a backup went away before reporting it");
            return false;
        }
    };
    match protocol::parse_request(&line) {
        Ok(Request::BackupComplete { succeeded }) => {
            let sent = match backup.complete(succeeded) {
                Ok(view) => {
                    protocol::write_message(writer, &Response::Ok(Answer::Created(Box::new(view))))
                }
                Err(e) => protocol::write_message(writer, &Response::<Answer>::error(e)),
            };
            sent.is_ok()
        }
        Ok(_) => {
            drop(backup);
            refuse(
                writer,
                "a backup's next request must be backup_complete".into(),
            );
            false
        }
        Err(e) => {
            drop(backup);
            refuse(writer, format!("malformed request: {e}"));
            false
        }
    }
}

/// Serves a replication: progress lines while it runs, then its view.
/// Returns whether the connection goes on.
fn replicate(
    writer: &mut &UnixStream,
    service: &Service,
    request: &crate::replicate::ReplicateRequest,
) -> bool {
    use crate::replicate::ReplicateMessage;
    // A replication outlives slow clients: progress that cannot be sent
    // is dropped, and the replication goes on without its client.
    let mut listening = true;
    let caller = peer_uid(writer);
    let mut progress = |p| {
        if listening {
            listening =
                protocol::write_message(writer, &Response::Ok(ReplicateMessage::Progress(p)))
                    .is_ok();
        }
    };
    let answer = service.replicate(request, caller.or(Some(u32::MAX)), &mut progress);
    let sent = match answer {
        Ok(view) => protocol::write_message(writer, &Response::Ok(ReplicateMessage::Done(view))),
        Err(e) => {
            tracing::info!("replicate refused: {e}");
            protocol::write_message(writer, &Response::<Answer>::error(e))
        }
    };
    sent.is_ok()
}

/// The uid of the process at the other end of `stream`.
fn peer_uid(stream: &UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given, and
    // the descriptor is the stream's own, open for the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

/// Answers a registration and hands the connection to the coordinator; a
/// refused one is answered with the reason and dropped. The answer is
/// written before any set can send the writer an event.
fn register(
    reader: BufReader<UnixStream>,
    writer: &mut &UnixStream,
    service: &Service,
    registration: Registration,
) {
    let name = registration.name.clone();
    if let Err(e) = service.can_register(&registration) {
        refuse(writer, e.to_string());
        return;
    }
    let link = match SocketLink::new(reader) {
        Ok(link) => link,
        Err(e) => {
            tracing::error!("writer {name}: {e}");
            return;
        }
    };
    let ack = Registered {
        registered: name.clone(),
    };
    let mut out = *writer;
    let accepted =
        move || protocol::write_message(&mut out, &Response::Ok(ack)).map_err(|e| e.to_string());
    if let Err(e) = service.register(registration, Box::new(link), accepted) {
        // A writer of the same name may have won the race since the check.
        tracing::warn!("writer {name} refused: {e}");
        refuse(writer, e.to_string());
    }
}

fn refuse(writer: &mut &UnixStream, message: String) {
    tracing::warn!("dropping a control client: {message}");
    if let Err(e) = protocol::write_message(writer, &Response::<Answer>::error(message)) {
        tracing::debug!("control client went away: {e}");
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, Write};

    use super::*;
    use crate::daemon::service::tests::fixture;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn answers(stream: &UnixStream) -> Vec<String> {
        BufReader::new(stream)
            .lines()
            .map(|l| l.expect("reads"))
            .collect()
    }

    /// Sends `request` (whole lines) on a fresh connection, closes its
    /// writing side, serves it to the end and returns the answers.
    fn exchange(service: &Service, request: &[u8]) -> Vec<String> {
        let (mut client, server) = UnixStream::pair().expect("pair");
        client.write_all(request).expect("writes");
        client
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        serve_client(&server, service, TIMEOUT);
        drop(server);
        answers(&client)
    }

    #[test]
    fn requests_are_answered_line_by_line() {
        let f = fixture();
        assert_eq!(
            exchange(
                &f.service,
                b"{\"op\":\"list\"}\n{\"op\":\"delete\",\"sets\":[\"x\"]}\n"
            ),
            [
                "{\"ok\":[]}",
                "{\"error\":\"no shadow copy set named \\\"x\\\"\"}"
            ]
        );
    }

    #[test]
    fn a_malformed_line_is_answered_and_the_connection_dropped() {
        let f = fixture();
        let answers = exchange(&f.service, b"{\"op\":\"launch\"}\n{\"op\":\"list\"}\n");
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert!(
            answers[0].starts_with("{\"error\":\"malformed request: unknown variant `launch`"),
            "{answers:?}"
        );
    }

    #[test]
    fn register_is_only_a_first_message_and_names_known_volumes() {
        let f = fixture();
        assert_eq!(
            exchange(
                &f.service,
                b"{\"op\":\"list\"}\n{\"op\":\"register\",\"name\":\"w\"}\n"
            ),
            [
                "{\"ok\":[]}",
                "{\"error\":\"register must be the first message of a connection\"}"
            ]
        );

        assert_eq!(
            exchange(
                &f.service,
                b"{\"op\":\"register\",\"name\":\"w\",\"volumes\":[\"nope\"]}\n"
            ),
            ["{\"error\":\"no volume named \\\"nope\\\"\"}"]
        );

        // Accepted: answered, then kept by the coordinator.
        let (mut client, server) = UnixStream::pair().expect("pair");
        client
            .write_all(b"{\"op\":\"register\",\"name\":\"w\",\"volumes\":[\"data\"]}\n")
            .expect("writes");
        serve_client(&server, &f.service, TIMEOUT);
        drop(server);
        let mut line = String::new();
        BufReader::new(&client).read_line(&mut line).expect("ack");
        assert_eq!(line, "{\"ok\":{\"registered\":\"w\"}}\n");
        let writers = f.service.writers();
        assert_eq!(writers.len(), 1);
        assert_eq!(writers[0].state, "stable");
        assert!(writers[0].connected);
    }

    #[test]
    fn an_oversized_line_is_refused() {
        let f = fixture();
        let (client, server) = UnixStream::pair().expect("pair");
        let writer = thread::spawn(move || {
            let mut client = client;
            // The daemon stops reading after the cap, so this write may fail.
            let _ = client.write_all(&vec![b'x'; MAX_REQUEST_LINE + 2]);
            client
        });
        serve_client(&server, &f.service, TIMEOUT);
        drop(server);
        let client = writer.join().expect("writer");
        let answers = answers(&client);
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert!(
            answers[0].contains("request line longer than 1048576 bytes"),
            "{answers:?}"
        );
    }

    /// Serves `client` with a short timeout after `feed` ran on the
    /// client's end; returns the answers and how long serving took.
    fn stalled(feed: impl FnOnce(&mut UnixStream) + Send + 'static) -> (Vec<String>, Duration) {
        let f = fixture();
        let (client, server) = UnixStream::pair().expect("pair");
        let feeder = thread::spawn(move || {
            let mut client = client;
            feed(&mut client);
            client
        });
        let started = Instant::now();
        serve_client(&server, &f.service, Duration::from_millis(300));
        let took = started.elapsed();
        drop(server);
        let client = feeder.join().expect("feeder");
        (answers(&client), took)
    }

    #[test]
    fn a_silent_client_is_dropped_after_the_timeout() {
        let (answers, took) = stalled(|_| {});
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert!(
            answers[0].starts_with("{\"error\":\"no whole request line within"),
            "{answers:?}"
        );
    }

    #[test]
    fn half_a_line_is_dropped_after_the_timeout() {
        let (answers, took) = stalled(|c| c.write_all(b"{\"op\":\"li").expect("writes"));
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert!(answers[0].contains("no whole request line"), "{answers:?}");
    }

    #[test]
    fn a_trickling_client_cannot_stretch_the_timeout() {
        // One byte every 50 ms: every read returns in time, the line never
        // ends; the deadline is for the whole line.
        let (answers, took) = stalled(|c| {
            for _ in 0..60 {
                if c.write_all(b" ").is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert!(answers[0].contains("no whole request line"), "{answers:?}");
    }

    #[test]
    fn each_line_gets_its_own_timeout() {
        // Two requests 200 ms apart, with a 300 ms timeout: both answered.
        let (answers, _) = stalled(|c| {
            for _ in 0..2 {
                c.write_all(b"{\"op\":\"list\"}\n").expect("writes");
                thread::sleep(Duration::from_millis(200));
            }
            c.shutdown(std::net::Shutdown::Write).expect("shutdown");
        });
        assert_eq!(answers, ["{\"ok\":[]}", "{\"ok\":[]}"]);
    }

    #[test]
    fn seats_are_capped_and_given_back() {
        let count = Arc::new(AtomicUsize::new(0));
        let a = Seat::take(&count, 2).expect("first");
        let b = Seat::take(&count, 2).expect("second");
        assert!(Seat::take(&count, 2).is_none(), "a third is over the cap");
        drop(a);
        let c = Seat::take(&count, 2).expect("a seat given back is free again");
        drop((b, c));
        assert_eq!(count.load(Ordering::Acquire), 0);
    }

    #[test]
    fn the_socket_is_private_and_a_stale_one_is_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        // A crashed daemon's socket: bound, then abandoned.
        drop(UnixListener::bind(&path).expect("bind"));
        assert!(path.exists());
        let socket = ControlSocket::bind(&path).expect("replaces a stale socket");
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            ControlSocket::bind(&path),
            Err(ControlError::InUse(_))
        ));
        drop(socket);
        assert!(!path.exists(), "the socket file goes with the daemon");

        fs::write(&path, "not a socket").expect("write");
        assert!(matches!(
            ControlSocket::bind(&path),
            Err(ControlError::NotASocket(_))
        ));
    }
}
