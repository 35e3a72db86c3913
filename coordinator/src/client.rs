//! A small library for writers written in Rust: connect to the daemon's
//! control socket, register, then answer events one by one (or hand a
//! closure to [`WriterClient::serve`]). Abort may come at any point, even
//! twice, and when nothing is frozen: a handler must treat it as harmless.
//! This file only speaks the protocol; what a writer does on an event is
//! the writer's own business.

use std::io::{self, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::link::{read_line, write_line};
use crate::protocol::{EventMessage, Failure, Registration, Reply};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {}: {source}", .socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talking to the daemon: {0}")]
    Io(#[from] io::Error),
    #[error("the daemon refused the registration: {0}")]
    Refused(String),
    #[error("the daemon sent something that does not parse: {0}")]
    BadMessage(String),
    #[error("the daemon hung up")]
    HungUp,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Ok(serde::de::IgnoredAny),
    Error(String),
}

/// A registered writer's connection.
pub struct WriterClient {
    reader: BufReader<UnixStream>,
    stream: UnixStream,
}

impl WriterClient {
    /// Connects to the daemon at `socket` and registers `registration`.
    pub fn connect(
        socket: &Path,
        registration: &Registration,
    ) -> Result<WriterClient, ClientError> {
        let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
        let mut message = serde_json::to_value(registration)
            .map_err(|e| ClientError::BadMessage(e.to_string()))?;
        if let Some(object) = message.as_object_mut() {
            object.insert("op".into(), "register".into());
        }
        let mut writer = stream.try_clone()?;
        write_line(&mut writer, &message)?;
        let mut client = WriterClient {
            reader: BufReader::new(stream),
            stream: writer,
        };
        let line = client.line()?.ok_or(ClientError::HungUp)?;
        match serde_json::from_slice(&line).map_err(|e| ClientError::BadMessage(e.to_string()))? {
            Answer::Ok(_) => Ok(client),
            Answer::Error(message) => Err(ClientError::Refused(message)),
        }
    }

    fn line(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        Ok(read_line(&mut self.reader)?)
    }

    /// The next event, or `None` when the daemon hangs up.
    pub fn next_event(&mut self) -> Result<Option<EventMessage>, ClientError> {
        let Some(line) = self.line()? else {
            return Ok(None);
        };
        serde_json::from_slice(&line)
            .map(Some)
            .map_err(|e| ClientError::BadMessage(e.to_string()))
    }

    /// Answers `to`.
    pub fn reply(
        &mut self,
        to: &EventMessage,
        result: Result<(), Failure>,
    ) -> Result<(), ClientError> {
        Ok(write_line(&mut self.stream, &Reply::to(to, result))?)
    }

    /// Answers every event with what `handler` returns, until the daemon
    /// hangs up.
    pub fn serve(
        mut self,
        mut handler: impl FnMut(&EventMessage) -> Result<(), Failure>,
    ) -> Result<(), ClientError> {
        while let Some(event) = self.next_event()? {
            let result = handler(&event);
            self.reply(&event, result)?;
        }
        Ok(())
    }
}
