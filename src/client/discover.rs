//! Where a client finds the daemon: `--socket` (or `UMBRA_SOCKET`, which
//! clap folds into it), else the socket of `--config`, else the embedded
//! default's socket, `.umbra/control.sock`, looked for in the working
//! directory and then in each directory above it, as git looks for `.git`.
//! The walk is what lets `umbra create` work from `data/sub/dir` of the
//! embedded default: the live mount at `./data` hides its own `.umbra` and
//! the snapshot browser shows none, so the walk goes on up to the clone's
//! real `./.umbra`. It reads a config file if told to, looks at directory
//! entries, and never connects.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, normalize, shown};

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "no umbra daemon found: no {} in {} or any directory above it{}{} (run `umbra up` there, or give --socket, UMBRA_SOCKET or --config)",
        shown(.wanted), shown(.cwd), passed_over(.skipped), could_not_look(.unreadable)
    )]
    NotFound {
        wanted: PathBuf,
        cwd: PathBuf,
        /// Sockets passed over because another user owns their directory.
        skipped: Vec<PathBuf>,
        /// The first place that could not be looked at, and why (a state
        /// dir of mode 0700 that belongs to another user, say).
        unreadable: Option<(PathBuf, String)>,
    },
}

fn could_not_look(place: &Option<(PathBuf, String)>) -> String {
    match place {
        None => String::new(),
        Some((path, why)) => format!("; could not look at {}: {why}", shown(path)),
    }
}

fn passed_over(paths: &[PathBuf]) -> String {
    match paths.first() {
        None => String::new(),
        Some(first) => format!(
            " owned by you or root (passed over {}, owned by another user)",
            shown(first)
        ),
    }
}

/// The control socket to use; relative paths resolve against `cwd`.
pub fn socket_path(
    socket: Option<&Path>,
    config: Option<&Path>,
    cwd: &Path,
) -> Result<PathBuf, DiscoverError> {
    match (socket, config) {
        (Some(socket), _) => Ok(normalize(&cwd.join(socket))),
        (None, Some(file)) => Ok(Config::load(file, cwd)?.socket),
        (None, None) => find_upwards(&Config::embedded(cwd)?, cwd),
    }
}

/// The embedded default's socket as if `umbra up` had been run in `cwd` or
/// in the nearest directory above it that has one.
fn find_upwards(embedded: &Config, cwd: &Path) -> Result<PathBuf, DiscoverError> {
    // The socket relative to the directory `umbra up` ran in.
    let wanted = embedded
        .socket
        .strip_prefix(cwd)
        .map_or_else(|_| PathBuf::from(".umbra/control.sock"), Path::to_path_buf);
    let mut skipped = Vec::new();
    let mut unreadable = None;
    for dir in cwd.ancestors() {
        let candidate = dir.join(&wanted);
        match trusted_socket(&candidate) {
            Ok(Found::Usable) => return Ok(candidate),
            Ok(Found::Foreign) => skipped.push(candidate),
            Ok(Found::Nothing) => {}
            // A directory we may not look into, or a mount whose daemon
            // is gone (ENOTCONN): nothing there for us, but worth saying.
            Err(e) => {
                unreadable.get_or_insert((candidate, e.to_string()));
            }
        }
    }
    Err(DiscoverError::NotFound {
        wanted,
        cwd: cwd.to_path_buf(),
        skipped,
        unreadable,
    })
}

enum Found {
    Usable,
    /// A socket whose directory belongs to another user (not root): a
    /// client that wandered into someone else's tree must not hand its
    /// requests to whoever put a socket there.
    Foreign,
    Nothing,
}

fn trusted_socket(candidate: &Path) -> io::Result<Found> {
    let socket = match std::fs::symlink_metadata(candidate) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Nothing),
        Err(e) => return Err(e),
    };
    if !socket.file_type().is_socket() {
        return Ok(Found::Nothing);
    }
    let dir = candidate.parent().unwrap_or(Path::new("/"));
    let owner = std::fs::metadata(dir)?.uid();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if owner == me || owner == 0 {
        Ok(Found::Usable)
    } else {
        Ok(Found::Foreign)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    fn write_config(dir: &Path) -> PathBuf {
        let file = dir.join("umbra.toml");
        std::fs::write(
            &file,
            "state_dir = \"st\"\nsocket = \"run/ctl.sock\"\nsnapshots = \"snaps\"\n\
             [[volume]]\nname = \"data\"\nbacking = \"data\"\nmount = \"data\"\n",
        )
        .expect("write config");
        file
    }

    #[test]
    fn the_socket_flag_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = write_config(dir.path());
        let found = socket_path(
            Some(Path::new("my.sock")),
            Some(&config),
            Path::new("/work"),
        );
        assert_eq!(found.expect("found"), Path::new("/work/my.sock"));
    }

    #[test]
    fn then_the_config_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = write_config(dir.path());
        let found = socket_path(None, Some(&config), Path::new("/elsewhere"));
        assert_eq!(found.expect("found"), dir.path().join("run/ctl.sock"));
    }

    #[test]
    fn then_the_embedded_default_in_the_current_directory_or_above() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clone = dir.path().canonicalize().expect("real path");
        std::fs::create_dir_all(clone.join(".umbra")).expect("mkdir");
        let _listener = UnixListener::bind(clone.join(".umbra/control.sock")).expect("bind");
        let deep = clone.join("data/sub/dir");
        std::fs::create_dir_all(&deep).expect("mkdir");
        // The backing's own hidden folder (no socket in it) is passed by.
        std::fs::create_dir_all(clone.join("data/.umbra/aside")).expect("mkdir");
        for cwd in [clone.clone(), clone.join("data"), deep] {
            let found = socket_path(None, None, &cwd).expect("found");
            assert_eq!(found, clone.join(".umbra/control.sock"), "from {cwd:?}");
        }
    }

    #[test]
    fn no_socket_anywhere_says_where_it_looked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cwd = dir.path().canonicalize().expect("real path").join("a\nb");
        std::fs::create_dir_all(&cwd).expect("mkdir");
        let err = socket_path(None, None, &cwd).expect_err("nothing there");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "no umbra daemon found: no .umbra/control.sock in {} or any directory above it",
                shown(&cwd)
            )),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_passed_by() {
        let dir = tempfile::tempdir().expect("tempdir");
        let top = dir.path().canonicalize().expect("real path");
        std::fs::create_dir_all(top.join(".umbra")).expect("mkdir");
        let _listener = UnixListener::bind(top.join(".umbra/control.sock")).expect("bind");
        std::fs::create_dir_all(top.join("in/.umbra")).expect("mkdir");
        std::fs::write(top.join("in/.umbra/control.sock"), "").expect("write");
        let found = socket_path(None, None, &top.join("in")).expect("found");
        assert_eq!(found, top.join(".umbra/control.sock"));
    }

    #[test]
    fn a_bad_config_is_an_error_not_a_guess() {
        let found = socket_path(
            None,
            Some(Path::new("/nonexistent/umbra.toml")),
            Path::new("/"),
        );
        assert!(found.is_err());
    }
}
