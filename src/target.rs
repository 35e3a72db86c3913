//! Which file of which volume a PATH on the command line of `umbra
//! restore`, `diff` or `versions` names, by its spelling alone: a path inside a volume's live mount
//! (absolute, or relative to the working directory, which may itself be in
//! a live mount or in a set under the snapshots mount), else `VOLUME/path`.
//! `..` that would leave the volume is refused, as is a path outside every
//! volume. Nothing here touches the disk: symlinks are refused later, by
//! whoever walks the path (restore walks the set with O_NOFOLLOW; the
//! daemon's diff and versions walk by descriptor).

use std::ffi::OsString;
use std::path::{Component, Path};

/// A path inside one volume.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub volume: String,
    /// The steps from the volume's root; empty for the root itself.
    pub steps: Vec<OsString>,
}

impl Target {
    /// `VOLUME/steps...`, for messages.
    pub fn display(&self) -> String {
        let mut out = self.volume.clone();
        for step in &self.steps {
            out.push('/');
            out.push_str(&step.to_string_lossy());
        }
        out
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("{path}: `..` leads out of volume {volume:?}; name a path inside it")]
    Escapes { path: String, volume: String },
    #[error("{path}: not inside any volume's live mount or the snapshots mount{hint}")]
    Outside { path: String, hint: String },
    #[error("{path}: an empty path names nothing")]
    Empty { path: String },
}

/// A volume as the client sees it: its name and live mountpoint.
pub struct Mount<'a> {
    pub name: &'a str,
    pub mount: &'a Path,
}

/// Resolves `path` (as typed) against `cwd`, the volumes' live mounts and
/// the snapshots mount.
pub fn resolve(
    path: &Path,
    cwd: &Path,
    mounts: &[Mount<'_>],
    snapshots: &Path,
) -> Result<Target, TargetError> {
    let shown = path.display().to_string();
    if path.as_os_str().is_empty() {
        return Err(TargetError::Empty { path: shown });
    }
    let absolute = cwd.join(path);
    if let Some(target) = in_a_mount(&absolute, mounts, snapshots, &shown)? {
        return Ok(target);
    }
    // `VOLUME/path`, relative only: an absolute path outside the mounts is
    // outside, whatever its first step is called.
    let first = path
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    if path.is_relative()
        && let Some(volume) = mounts.iter().find(|m| m.name == first)
    {
        let rest: Vec<Component<'_>> = path.components().skip(1).collect();
        let steps = walk(&rest).ok_or_else(|| TargetError::Escapes {
            path: shown.clone(),
            volume: volume.name.to_string(),
        })?;
        return Ok(Target {
            volume: volume.name.to_string(),
            steps,
        });
    }
    let hint = if path.is_relative() {
        format!(", and {first:?} is not a volume name")
    } else {
        String::new()
    };
    Err(TargetError::Outside { path: shown, hint })
}

/// The target if `absolute` lies in a live mount or in
/// `<snapshots>/<set>/<volume>`.
fn in_a_mount(
    absolute: &Path,
    mounts: &[Mount<'_>],
    snapshots: &Path,
    shown: &str,
) -> Result<Option<Target>, TargetError> {
    // The longest mount that holds the path wins (a mount inside another
    // volume's tree is refused at `up`, but be exact anyway).
    let mut best: Option<(&Mount<'_>, usize)> = None;
    for m in mounts {
        if let Some(n) = prefix_len(absolute, m.mount)
            && best.is_none_or(|(_, b)| n > b)
        {
            best = Some((m, n));
        }
    }
    if let Some((m, n)) = best {
        return steps_after(absolute, n, m.name, shown).map(Some);
    }
    if let Some(n) = prefix_len(absolute, snapshots) {
        let rest: Vec<Component<'_>> = absolute.components().skip(n).collect();
        // <set>/<volume>/...: the set in the path is only where the user
        // stands; SET on the command line says which set is restored.
        if let [Component::Normal(_set), Component::Normal(volume), ..] = rest.as_slice()
            && let Some(m) = mounts
                .iter()
                .find(|m| std::ffi::OsStr::new(m.name) == *volume)
        {
            return steps_after(absolute, n + 2, m.name, shown).map(Some);
        }
    }
    Ok(None)
}

fn steps_after(
    absolute: &Path,
    skip: usize,
    volume: &str,
    shown: &str,
) -> Result<Target, TargetError> {
    let rest: Vec<Component<'_>> = absolute.components().skip(skip).collect();
    let steps = walk(&rest).ok_or_else(|| TargetError::Escapes {
        path: shown.to_string(),
        volume: volume.to_string(),
    })?;
    Ok(Target {
        volume: volume.to_string(),
        steps,
    })
}

/// The steps left after `.` and `..` are applied; `None` if a `..` climbs
/// above the start.
fn walk(components: &[Component<'_>]) -> Option<Vec<OsString>> {
    let mut steps = Vec::new();
    for c in components {
        match c {
            Component::Normal(name) => steps.push(name.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                steps.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(steps)
}

/// How many components of `path` make `base`, if `path` starts with
/// `base` (whole components: `/a/bc` is not under `/a/b`). A `..` after
/// the prefix is left to `walk`, which refuses it if it climbs out.
fn prefix_len(path: &Path, base: &Path) -> Option<usize> {
    let base: Vec<Component<'_>> = base.components().collect();
    let path: Vec<Component<'_>> = path.components().collect();
    if path.len() < base.len() || path[..base.len()] != base[..] {
        return None;
    }
    Some(base.len())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn mounts() -> Vec<(String, PathBuf)> {
        vec![
            ("data".into(), PathBuf::from("/srv/live/data")),
            ("logs".into(), PathBuf::from("/srv/live/logs")),
        ]
    }

    fn resolve_in(path: &str, cwd: &str) -> Result<Target, TargetError> {
        let owned = mounts();
        let mounts: Vec<Mount<'_>> = owned
            .iter()
            .map(|(n, m)| Mount { name: n, mount: m })
            .collect();
        resolve(
            Path::new(path),
            Path::new(cwd),
            &mounts,
            Path::new("/srv/snapshots"),
        )
    }

    fn target(volume: &str, steps: &[&str]) -> Target {
        Target {
            volume: volume.into(),
            steps: steps.iter().map(OsString::from).collect(),
        }
    }

    #[test]
    fn paths_in_live_mounts_snapshots_and_by_volume_name() {
        assert_eq!(
            resolve_in("/srv/live/data/a/b", "/"),
            Ok(target("data", &["a", "b"]))
        );
        assert_eq!(
            resolve_in("b/./c", "/srv/live/logs/a"),
            Ok(target("logs", &["a", "b", "c"]))
        );
        assert_eq!(
            resolve_in("f", "/srv/snapshots/2026-11-25T084250Z/data/sub"),
            Ok(target("data", &["sub", "f"]))
        );
        assert_eq!(
            resolve_in("data/x/../y", "/home/u"),
            Ok(target("data", &["y"]))
        );
        assert_eq!(resolve_in("/srv/live/data", "/"), Ok(target("data", &[])));
        assert_eq!(
            resolve_in("..", "/srv/live/data/a"),
            Ok(target("data", &[]))
        );
    }

    #[test]
    fn escapes_and_outsiders_are_refused() {
        assert!(matches!(
            resolve_in("../../etc/passwd", "/srv/live/data/a"),
            Err(TargetError::Escapes { .. })
        ));
        assert!(matches!(
            resolve_in("data/../../x", "/home/u"),
            Err(TargetError::Escapes { .. })
        ));
        assert!(matches!(
            resolve_in("/etc/passwd", "/srv/live/data"),
            Err(TargetError::Outside { .. })
        ));
        assert!(matches!(
            resolve_in("/data/x", "/"),
            Err(TargetError::Outside { .. })
        ));
        assert!(matches!(
            resolve_in("nope/x", "/home/u"),
            Err(TargetError::Outside { .. })
        ));
        assert!(matches!(
            resolve_in("", "/home/u"),
            Err(TargetError::Empty { .. })
        ));
        // A sibling whose name only starts like a mount is not in it.
        assert!(matches!(
            resolve_in("/srv/live/database/x", "/"),
            Err(TargetError::Outside { .. })
        ));
    }
}
