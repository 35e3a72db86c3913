//! The client commands `create`, `list`, `delete`, `status`, `writers`, `diff` and `versions`:
//! each sends one request to the daemon and prints its answer, as text or as
//! one JSON document on stdout; and `backup`, which runs the requester's
//! command between its set and its report. It never touches the store or a
//! mount itself.

pub mod connection;
mod discover;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use connection::ClientError;
pub use discover::DiscoverError;
use discover::socket_path;

use crate::protocol::{
    ClientPath, CreatedView, DiffView, PruneView, Request, SetView, StatusView, VersionsView,
    WriterInfo,
};
use crate::render;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("writing to stdout: {0}")]
    Stdout(#[source] io::Error),
    #[error("running {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
}

/// A client of the daemon at one control socket.
pub struct Client {
    pub socket: PathBuf,
}

impl Client {
    /// The client of the daemon found through `socket`, else the socket
    /// of the config file `config`, else the embedded default's socket in
    /// `cwd` or the nearest directory above it.
    pub fn find(
        socket: Option<&Path>,
        config: Option<&Path>,
        cwd: &Path,
    ) -> Result<Client, DiscoverError> {
        Ok(Client {
            socket: socket_path(socket, config, cwd)?,
        })
    }

    pub fn create(
        &self,
        volumes: Vec<String>,
        label: Option<String>,
        cluster: bool,
        json: bool,
    ) -> Result<(), CommandError> {
        let created: CreatedView = self.call(&Request::Create {
            volumes,
            label,
            cluster,
        })?;
        print(json, &created, render::created_view)
    }

    pub fn list(&self, cluster: bool, json: bool) -> Result<(), CommandError> {
        let sets: Vec<SetView> = self.call(&Request::List { cluster })?;
        print(json, &sets, |sets| render::list(sets))
    }

    /// Sends a `Request::Delete` and prints what it deleted.
    pub fn delete(&self, request: Request, json: bool) -> Result<(), CommandError> {
        let deleted: Vec<SetView> = self.call(&request)?;
        print(json, &deleted, |sets| render::deleted(sets))
    }

    pub fn prune(&self, dry_run: bool, json: bool) -> Result<(), CommandError> {
        let pruned: PruneView = self.call(&Request::Prune { dry_run })?;
        print(json, &pruned, render::pruned)
    }

    pub fn status(&self, json: bool) -> Result<(), CommandError> {
        let status: StatusView = self.call(&Request::Status {})?;
        print(json, &status, render::status)
    }

    /// Makes a set, runs `command` over it, reports the backup and returns
    /// the command's exit status (the set is deleted by the daemon unless
    /// `keep`).
    pub fn backup(
        &self,
        volumes: Vec<String>,
        label: Option<String>,
        keep: bool,
        command: &[String],
        json: bool,
    ) -> Result<u8, CommandError> {
        let mut session = connection::Session::open(&self.socket)?;
        let set: CreatedView = session.call(&Request::Backup {
            volumes,
            label,
            keep,
        })?;
        let (program, args) = command.split_first().ok_or_else(|| CommandError::Spawn {
            program: String::new(),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        })?;
        let status = std::process::Command::new(program)
            .args(args)
            .env("UMBRA_SNAPSHOT", &set.path)
            .env("UMBRA_SET_NAME", &set.set.name)
            .status();
        let succeeded = status.as_ref().is_ok_and(|s| s.success());
        let done: CreatedView = session.call(&Request::BackupComplete { succeeded })?;
        let status = status.map_err(|source| CommandError::Spawn {
            program: program.clone(),
            source,
        })?;
        if json {
            use std::os::unix::process::ExitStatusExt;
            let report = BackupReport {
                set: done,
                command: command.to_vec(),
                exit_code: status.code(),
                signal: status.signal(),
                kept: keep,
            };
            print(true, &report, |_| String::new())?;
        } else {
            // On stderr: stdout is the command's (`umbra backup -- tar c ... > x`).
            eprintln!("{}", render::backed_up(&set.set, status, keep));
        }
        Ok(exit_code(status))
    }

    /// `umbra diff FROM [TO] [PATH]`: a lone second argument is TO if it
    /// names a set (a name, an id or `latest`), else PATH.
    pub fn diff(
        &self,
        from: String,
        rest: Vec<String>,
        cwd: &Path,
        json: bool,
    ) -> Result<(), CommandError> {
        let (to, path) = match <[String; 2]>::try_from(rest) {
            Ok([to, path]) => (Some(to), Some(path)),
            Err(rest) => match rest.into_iter().next() {
                None => (None, None),
                Some(one) => {
                    let sets: Vec<SetView> = self.call(&Request::List { cluster: false })?;
                    let is_set = one == "latest"
                        || sets
                            .iter()
                            .any(|s| s.name == one || s.id.to_string() == one);
                    if is_set {
                        (Some(one), None)
                    } else {
                        (None, Some(one))
                    }
                }
            },
        };
        let diff: DiffView = self.call(&Request::Diff {
            from,
            to,
            path: path.map(|p| client_path(&p, cwd)),
        })?;
        print(json, &diff, render::diff)
    }

    pub fn versions(&self, path: String, cwd: &Path, json: bool) -> Result<(), CommandError> {
        let versions: VersionsView = self.call(&Request::Versions {
            path: client_path(&path, cwd),
        })?;
        print(json, &versions, render::versions)
    }

    pub fn writers(&self, json: bool) -> Result<(), CommandError> {
        let writers: Vec<WriterInfo> = self.call(&Request::Writers {})?;
        print(json, &writers, |w| render::writers(w))
    }

    fn call<T: DeserializeOwned>(&self, request: &Request) -> Result<T, ClientError> {
        connection::call(&self.socket, request)
    }
}

/// A path as the daemon can place it: absolute, with the symlinks of its
/// directory resolved (a shell's `cd` through a link, a volume reached by
/// a link), its last part not followed (the versions of a symlink are the
/// link's). A path that names nothing here (`VOLUME/path`, a deleted file's
/// directory) goes as given, with the working directory.
fn client_path(path: &str, cwd: &Path) -> ClientPath {
    let given = Path::new(path);
    let absolute = cwd.join(given);
    let resolved = match (absolute.parent(), absolute.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir).ok().map(|d| d.join(name)),
        _ => std::fs::canonicalize(&absolute).ok(),
    };
    ClientPath {
        path: resolved.map_or_else(|| path.to_string(), |p| p.display().to_string()),
        cwd: Some(cwd.display().to_string()),
    }
}

/// What `umbra backup --json` prints once the command ended.
#[derive(Serialize)]
struct BackupReport {
    set: CreatedView,
    command: Vec<String>,
    /// The command's exit code, if it exited.
    exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    signal: Option<i32>,
    /// Whether the set was kept (`--keep`) rather than deleted.
    kept: bool,
}

/// A child's exit status as ours: its code, or 128 + the signal that ended it.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(signal)) => u8::try_from((128 + signal) & 0xff).unwrap_or(1),
        (None, None) => 1,
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
