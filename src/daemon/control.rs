//! The control socket: binding it (mode 0600, replacing a stale socket file
//! left by a crash), accepting clients, one thread each, and framing
//! their requests and answers. A malformed or oversized line gets an error
//! answer and its connection is dropped; the daemon goes on. A connection
//! that opens with `register` is a writer's: after the answer it belongs to
//! the coordinator. What a request
//! does is the service's business, not this file's.

use std::fs;
use std::io::{self, BufReader, ErrorKind};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use umbra_coordinator::protocol::Registered;
use umbra_coordinator::{Registration, SocketLink};

use super::service::{Answer, Service};
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

/// The bound control socket; its file is removed when this is dropped.
pub struct ControlSocket {
    listener: UnixListener,
    file: SocketFile,
}

impl ControlSocket {
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
    pub fn serve(self, service: Arc<Service>) -> Result<SocketFile, ControlError> {
        let ControlSocket { listener, file } = self;
        thread::Builder::new()
            .name("control".into())
            .spawn(move || accept_loop(&listener, &service))
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

fn accept_loop(listener: &UnixListener, service: &Arc<Service>) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let service = service.clone();
                let spawned = thread::Builder::new()
                    .name("control-client".into())
                    .spawn(move || serve_client(&stream, &service));
                if let Err(e) = spawned {
                    tracing::error!("cannot start a thread for a control client: {e}");
                }
            }
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::error!("accepting a control client: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Answers the requests of one client, one line each, until it hangs up or
/// sends a line that does not parse. A connection whose first line is a
/// registration becomes a writer's: it is answered, handed to the
/// coordinator and kept open after this returns.
fn serve_client(stream: &UnixStream, service: &Service) {
    let owned = match stream.try_clone() {
        Ok(owned) => owned,
        Err(e) => {
            tracing::error!("control client: {e}");
            return;
        }
    };
    let mut reader = BufReader::new(owned);
    let mut writer = stream;
    let mut first = true;
    loop {
        let line = match protocol::read_line(&mut reader, MAX_REQUEST_LINE) {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(LineError::Io(e)) => {
                tracing::debug!("control client went away: {e}");
                return;
            }
            Err(e @ LineError::TooLong { .. }) => {
                refuse(&mut writer, format!("request {e}"));
                return;
            }
        };
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

    fn answers(stream: &UnixStream) -> Vec<String> {
        BufReader::new(stream)
            .lines()
            .map(|l| l.expect("reads"))
            .collect()
    }

    #[test]
    fn requests_are_answered_line_by_line() {
        let f = fixture();
        let (mut client, server) = UnixStream::pair().expect("pair");
        client
            .write_all(b"{\"op\":\"list\"}\n{\"op\":\"delete\",\"sets\":[\"x\"]}\n")
            .expect("writes");
        client
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        serve_client(&server, &f.service);
        drop(server);
        assert_eq!(
            answers(&client),
            [
                "{\"ok\":[]}",
                "{\"error\":\"no shadow copy set named \\\"x\\\"\"}"
            ]
        );
    }

    #[test]
    fn a_malformed_line_is_answered_and_the_connection_dropped() {
        let f = fixture();
        let (mut client, server) = UnixStream::pair().expect("pair");
        client
            .write_all(b"{\"op\":\"launch\"}\n{\"op\":\"list\"}\n")
            .expect("writes");
        serve_client(&server, &f.service);
        drop(server);
        let answers = answers(&client);
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert!(
            answers[0].starts_with("{\"error\":\"malformed request: unknown variant `launch`"),
            "{answers:?}"
        );
    }

    #[test]
    fn register_is_only_a_first_message_and_names_known_volumes() {
        let f = fixture();
        let (mut client, server) = UnixStream::pair().expect("pair");
        client
            .write_all(b"{\"op\":\"list\"}\n{\"op\":\"register\",\"name\":\"w\"}\n")
            .expect("writes");
        client
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        serve_client(&server, &f.service);
        drop(server);
        assert_eq!(
            answers(&client),
            [
                "{\"ok\":[]}",
                "{\"error\":\"register must be the first message of a connection\"}"
            ]
        );

        let (mut client, server) = UnixStream::pair().expect("pair");
        client
            .write_all(b"{\"op\":\"register\",\"name\":\"w\",\"volumes\":[\"nope\"]}\n")
            .expect("writes");
        serve_client(&server, &f.service);
        drop(server);
        assert_eq!(
            answers(&client),
            ["{\"error\":\"no volume named \\\"nope\\\"\"}"]
        );

        // Accepted: answered, then kept by the coordinator.
        let (mut client, server) = UnixStream::pair().expect("pair");
        client
            .write_all(b"{\"op\":\"register\",\"name\":\"w\",\"volumes\":[\"data\"]}\n")
            .expect("writes");
        serve_client(&server, &f.service);
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
        serve_client(&server, &f.service);
        drop(server);
        let client = writer.join().expect("writer");
        let answers = answers(&client);
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert!(
            answers[0].contains("request line longer than 1048576 bytes"),
            "{answers:?}"
        );
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
