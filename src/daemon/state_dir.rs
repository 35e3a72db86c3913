//! The state directory is the daemon's alone: the diff area, the lock and
//! by default the control socket live there. A new one is made with mode
//! 0700. An existing one is checked before anything is put in it: one that
//! belongs to another user, or is reached through a symlink that belongs to
//! another user (who could point it elsewhere at any time), is refused; one
//! of the daemon's own that is open to others is tightened to 0700 (0750
//! when `socket_group` shares a socket kept inside it, so that the group
//! can reach the socket), and the change is logged. It never looks above
//! the state directory itself.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;

use crate::config::{Config, shown};

#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("creating state_dir {}: {source}", shown(.path))]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "state_dir {} belongs to uid {owner}, not to the daemon's user (uid {me}): refusing to keep the diff area there",
        shown(.path)
    )]
    NotOurs { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "state_dir {} is a symlink that belongs to uid {owner} (not to uid {me} or root): refusing to follow it",
        shown(.path)
    )]
    ForeignSymlink { path: PathBuf, owner: u32, me: u32 },
    #[error("state_dir {} is not a directory", shown(.0))]
    NotADirectory(PathBuf),
    #[error("tightening the mode of state_dir {}: {source}", shown(.path))]
    Chmod {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Makes or checks the state directory of `config` (see the top of this
/// file).
pub fn prepare(config: &Config) -> Result<(), StateDirError> {
    let path = config.state_dir.as_path();
    let err = |source| StateDirError::Create {
        path: path.to_path_buf(),
        source,
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    match fs::symlink_metadata(path) {
        Ok(link) if link.file_type().is_symlink() && link.uid() != me && link.uid() != 0 => {
            return Err(StateDirError::ForeignSymlink {
                path: path.to_path_buf(),
                owner: link.uid(),
                me,
            });
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(err)?;
    // One open directory from here on: what is checked is what is changed.
    let dir = fs::File::open(path).map_err(err)?;
    let meta = dir.metadata().map_err(err)?;
    if !meta.is_dir() {
        return Err(StateDirError::NotADirectory(path.to_path_buf()));
    }
    if meta.uid() != me {
        return Err(StateDirError::NotOurs {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    let allowed = if shares_a_socket_inside(config) {
        0o750
    } else {
        0o700
    };
    // A socket the group shares inside: the group must be able to reach
    // it, whether the directory is new (made 0700 by root's group) or old.
    let mut mode = mode;
    if shares_a_socket_inside(config)
        && let Some(gid) = config.socket_group
    {
        if meta.gid() != gid {
            std::os::unix::fs::fchown(&dir, None, Some(gid)).map_err(|source| {
                StateDirError::Chmod {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        }
        if mode & 0o010 == 0 {
            mode |= 0o010;
            dir.set_permissions(fs::Permissions::from_mode(mode & allowed))
                .map_err(|source| StateDirError::Chmod {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
    }
    if mode & !allowed != 0 {
        let tightened = mode & allowed;
        dir.set_permissions(fs::Permissions::from_mode(tightened))
            .map_err(|source| StateDirError::Chmod {
                path: path.to_path_buf(),
                source,
            })?;
        tracing::warn!(
            "state_dir {} was open to others (mode {mode:o}): tightened it to {tightened:o}",
            shown(path)
        );
    }
    Ok(())
}

/// Whether `socket_group` members must reach a socket inside the state dir.
fn shares_a_socket_inside(config: &Config) -> bool {
    config.socket_group.is_some() && config.socket.starts_with(&config.state_dir)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(state_dir: &Path) -> Config {
        let mut config = Config::embedded(Path::new("/nonexistent/clone")).expect("default");
        config.socket = state_dir.join("control.sock");
        config.state_dir = state_dir.to_path_buf();
        config
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_state_dir_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("a/state");
        prepare(&config(&state)).expect("made");
        assert_eq!(mode(&state), 0o700);
    }

    #[test]
    fn an_existing_state_dir_open_to_others_is_tightened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        fs::create_dir(&state).expect("mkdir");
        fs::set_permissions(&state, fs::Permissions::from_mode(0o1777)).expect("chmod");
        prepare(&config(&state)).expect("tightened");
        assert_eq!(mode(&state), 0o700);
        // With a shared socket inside, the group keeps its way in.
        fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).expect("chmod");
        let mut shared = config(&state);
        shared.socket_group = Some(0);
        prepare(&shared).expect("tightened");
        assert_eq!(mode(&state), 0o750);
    }

    #[test]
    fn a_new_state_dir_with_a_shared_socket_inside_lets_the_group_reach_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let mut shared = config(&state);
        shared.socket_group = Some(65534);
        prepare(&shared).expect("made");
        assert_eq!(mode(&state), 0o710);
        assert_eq!(fs::metadata(&state).expect("stat").gid(), 65534);
    }

    #[test]
    fn a_file_is_not_a_state_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        fs::write(&state, "").expect("write");
        assert!(prepare(&config(&state)).is_err());
    }
}
