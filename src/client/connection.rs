//! One connection to the daemon's control socket: send a request line, read
//! the response line, turn `{"error": ...}` into an error. It never prints.

use std::io::{BufReader, ErrorKind};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::protocol::{self, LineError, MAX_RESPONSE_LINE, Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no umbra daemon is listening at {} (is `umbra up` running?)", .socket.display())]
    NoDaemon { socket: PathBuf },
    #[error("connecting to {}: {source}", .socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the daemon at {}: {source}", .socket.display())]
    Io {
        socket: PathBuf,
        #[source]
        source: LineError,
    },
    #[error("the daemon closed the connection without answering")]
    NoAnswer,
    #[error("the daemon's answer does not parse: {0}")]
    BadAnswer(#[source] serde_json::Error),
    /// The daemon refused the request; its message is the error.
    #[error("{0}")]
    Refused(String),
}

/// Sends `request` to the daemon at `socket` and returns its answer.
pub fn call<T: DeserializeOwned>(socket: &Path, request: &Request) -> Result<T, ClientError> {
    Session::open(socket)?.call(request)
}

/// One connection for several requests in turn (a backup and its report).
pub struct Session {
    socket: PathBuf,
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Session {
    pub fn open(socket: &Path) -> Result<Session, ClientError> {
        let stream = UnixStream::connect(socket).map_err(|source| match source.kind() {
            ErrorKind::NotFound | ErrorKind::ConnectionRefused => ClientError::NoDaemon {
                socket: socket.to_path_buf(),
            },
            _ => ClientError::Connect {
                socket: socket.to_path_buf(),
                source,
            },
        })?;
        let reader =
            stream
                .try_clone()
                .map(BufReader::new)
                .map_err(|source| ClientError::Connect {
                    socket: socket.to_path_buf(),
                    source,
                })?;
        Ok(Session {
            socket: socket.to_path_buf(),
            stream,
            reader,
        })
    }

    pub fn call<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T, ClientError> {
        let io_err = |source: LineError| ClientError::Io {
            socket: self.socket.clone(),
            source,
        };
        // A daemon that refuses the connection (too many clients) answers
        // and hangs up before reading: its answer still waits to be read
        // even when sending the request fails.
        let sent = protocol::write_message(&mut &self.stream, request);
        let line = match (
            protocol::read_line(&mut self.reader, MAX_RESPONSE_LINE),
            sent,
        ) {
            (Ok(Some(line)), _) => line,
            (_, Err(e)) => return Err(io_err(e.into())),
            (Ok(None), Ok(())) => return Err(ClientError::NoAnswer),
            (Err(e), Ok(())) => return Err(io_err(e)),
        };
        match serde_json::from_slice(&line).map_err(ClientError::BadAnswer)? {
            Response::Ok(answer) => Ok(answer),
            Response::Error(message) => Err(ClientError::Refused(message)),
        }
    }

    /// The next answer on the connection, for a request answered in
    /// several lines (a replication's progress).
    pub fn next<T: DeserializeOwned>(&mut self) -> Result<T, ClientError> {
        let line = match protocol::read_line(&mut self.reader, MAX_RESPONSE_LINE) {
            Ok(Some(line)) => line,
            Ok(None) => return Err(ClientError::NoAnswer),
            Err(source) => {
                return Err(ClientError::Io {
                    socket: self.socket.clone(),
                    source,
                });
            }
        };
        match serde_json::from_slice(&line).map_err(ClientError::BadAnswer)? {
            Response::Ok(answer) => Ok(answer),
            Response::Error(message) => Err(ClientError::Refused(message)),
        }
    }
}
