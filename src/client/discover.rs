//! Where a client finds the daemon: `--socket` (or `UMBRA_SOCKET`, which
//! clap folds into it), else the socket of `--config`, else the embedded
//! default's `./.umbra/control.sock`. It reads a config file if told to and
//! never connects.

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, normalize};

/// The control socket to use; relative paths resolve against `cwd`.
pub fn socket_path(
    socket: Option<&Path>,
    config: Option<&Path>,
    cwd: &Path,
) -> Result<PathBuf, ConfigError> {
    match (socket, config) {
        (Some(socket), _) => Ok(normalize(&cwd.join(socket))),
        (None, Some(file)) => Ok(Config::load(file, cwd)?.socket),
        (None, None) => Ok(Config::embedded(cwd)?.socket),
    }
}

#[cfg(test)]
mod tests {
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
    fn then_the_embedded_default_under_the_current_directory() {
        let found = socket_path(None, None, Path::new("/home/u/clone"));
        assert_eq!(
            found.expect("found"),
            Path::new("/home/u/clone/.umbra/control.sock")
        );
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
