//! The client commands `create`, `list`, `delete`, `status` and `writers`: each sends
//! one request to the daemon and prints its answer, as text or as one JSON
//! document on stdout. It never touches the store or a mount itself.

mod connection;
mod discover;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use connection::ClientError;
use discover::socket_path;

use crate::config::ConfigError;
use crate::protocol::{CreatedView, Request, SetView, StatusView, WriterInfo};
use crate::render;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("writing to stdout: {0}")]
    Stdout(#[source] io::Error),
}

/// A client of the daemon at one control socket.
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// The client of the daemon found through `socket`, else the socket
    /// of the config file `config`, else the embedded default's socket.
    pub fn find(
        socket: Option<&Path>,
        config: Option<&Path>,
        cwd: &Path,
    ) -> Result<Client, ConfigError> {
        Ok(Client {
            socket: socket_path(socket, config, cwd)?,
        })
    }

    pub fn create(
        &self,
        volumes: Vec<String>,
        label: Option<String>,
        json: bool,
    ) -> Result<(), CommandError> {
        let created: CreatedView = self.call(&Request::Create { volumes, label })?;
        print(json, &created, |c| render::created(&c.set))
    }

    pub fn list(&self, json: bool) -> Result<(), CommandError> {
        let sets: Vec<SetView> = self.call(&Request::List {})?;
        print(json, &sets, |sets| render::list(sets))
    }

    pub fn delete(&self, sets: Vec<String>) -> Result<(), CommandError> {
        let deleted: Vec<SetView> = self.call(&Request::Delete { sets })?;
        print(false, &deleted, |sets| render::deleted(sets))
    }

    pub fn status(&self, json: bool) -> Result<(), CommandError> {
        let status: StatusView = self.call(&Request::Status {})?;
        print(json, &status, render::status)
    }

    pub fn writers(&self, json: bool) -> Result<(), CommandError> {
        let writers: Vec<WriterInfo> = self.call(&Request::Writers {})?;
        print(json, &writers, |w| render::writers(w))
    }

    fn call<T: DeserializeOwned>(&self, request: &Request) -> Result<T, ClientError> {
        connection::call(&self.socket, request)
    }
}

fn print<T: Serialize>(
    json: bool,
    answer: &T,
    text: impl FnOnce(&T) -> String,
) -> Result<(), CommandError> {
    let out = if json {
        let mut doc =
            serde_json::to_string_pretty(answer).map_err(|e| CommandError::Stdout(e.into()))?;
        doc.push('\n');
        doc
    } else {
        text(answer)
    };
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(CommandError::Stdout)
}
