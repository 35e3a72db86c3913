//! The daemon's answers to `umbra diff` and `umbra versions`: places the
//! client's path in a volume, picks the sets, and turns umbra-fs's changes
//! and versions into their views. It reads; it never changes a set.

use std::path::{Path, PathBuf};

use umbra_fs::{Change, Instant, VolumeRef};
use umbra_store::{FileKind, SetInfo};

use super::{Service, ServiceError, view};
use crate::naming;
use crate::protocol::{ChangeView, ClientPath, DiffView, VersionSet, VersionView, VersionsView};
use crate::target::{self, Mount, TargetError};

impl Service {
    /// A set by name, id or `latest`.
    pub(super) fn set_named(&self, key: &str) -> Result<SetInfo, ServiceError> {
        if key == "latest" {
            return self
                .store
                .sets()?
                .pop()
                .ok_or_else(|| ServiceError::UnknownSet(key.to_string()));
        }
        self.store.find_set(key).map_err(|e| match e {
            umbra_store::Error::UnknownSet(_) => ServiceError::UnknownSet(key.to_string()),
            other => ServiceError::Store(other),
        })
    }

    pub fn diff(
        &self,
        from: &str,
        to: Option<&str>,
        path: Option<&ClientPath>,
    ) -> Result<DiffView, ServiceError> {
        let from_set = self.set_named(from)?;
        let to_set = to.map(|k| self.set_named(k)).transpose()?;
        if let Some(to_set) = &to_set
            && to_set.id < from_set.id
        {
            return Err(ServiceError::Refused(format!(
                "set {} is newer than {}: give the older set first",
                from_set.name, to_set.name
            )));
        }
        let place = path.map(|p| self.locate(p)).transpose()?;
        let mut changes = Vec::new();
        let (mut examined, mut searched) = (0, false);
        for volume in &self.volumes {
            if let Some((only, _)) = &place
                && only != volume
            {
                continue;
            }
            let Some(start) = instant(&from_set, volume) else {
                if place.is_some() {
                    return Err(ServiceError::Refused(format!(
                        "set {} does not hold volume {}",
                        from_set.name, volume.name
                    )));
                }
                continue;
            };
            let end = match &to_set {
                None => Instant::Live,
                Some(set) => match instant(set, volume) {
                    Some(end) => end,
                    None if place.is_some() => {
                        return Err(ServiceError::Refused(format!(
                            "set {} does not hold volume {}",
                            set.name, volume.name
                        )));
                    }
                    None => continue,
                },
            };
            let under = place.as_ref().map(|(_, rel)| rel.as_path());
            let found = self.sets.changes(volume.id, start, end, under)?;
            examined += found.examined as u64;
            searched |= found.searched;
            let mount = self.mount_of(volume);
            changes.extend(
                found
                    .changes
                    .iter()
                    .map(|c| change_view(c, &volume.name, &mount)),
            );
        }
        Ok(DiffView {
            from: view(&from_set),
            to: to_set.as_ref().map(view),
            changes,
            examined,
            searched,
        })
    }

    pub fn versions(&self, path: &ClientPath) -> Result<VersionsView, ServiceError> {
        let (volume, rel) = self.locate(path)?;
        if rel.as_os_str().is_empty() {
            return Err(ServiceError::Refused(
                "versions needs a file, not a volume's root".into(),
            ));
        }
        let mut sets = self.store.sets()?;
        sets.reverse();
        let held: Vec<(SetInfo, umbra_store::SetId, umbra_store::Epoch)> = sets
            .into_iter()
            .filter_map(|s| {
                let Instant::Set { id, epoch } = instant(&s, &volume)? else {
                    return None;
                };
                Some((s, id, epoch))
            })
            .collect();
        let ids: Vec<_> = held.iter().map(|(_, id, e)| (*id, *e)).collect();
        let found = self.sets.versions(volume.id, &ids, &rel)?;
        if found.is_empty() {
            return Err(ServiceError::Refused(format!(
                "{}: no such file, live or in any set",
                self.mount_of(&volume).join(&rel).display()
            )));
        }
        let snapshots = &self.config.snapshots;
        let versions = found
            .into_iter()
            .map(|v| VersionView {
                blake3: hex(&v.hash),
                size: v.size,
                mtime: naming::rfc3339(v.mtime),
                live: v.live,
                sets: v
                    .sets
                    .iter()
                    .filter_map(|(id, in_set)| {
                        let (set, _, _) = held.iter().find(|(_, i, _)| i == id)?;
                        Some(VersionSet {
                            id: set.id,
                            name: set.name.clone(),
                            created: naming::rfc3339(set.created),
                            path: snapshots
                                .join(&set.name)
                                .join(&volume.name)
                                .join(in_set)
                                .display()
                                .to_string(),
                        })
                    })
                    .collect(),
            })
            .collect();
        Ok(VersionsView {
            volume: volume.name.clone(),
            path: self.mount_of(&volume).join(&rel).display().to_string(),
            versions,
        })
    }

    fn mount_of(&self, volume: &VolumeRef) -> PathBuf {
        self.config
            .volumes
            .iter()
            .find(|v| v.name == volume.name)
            .map(|v| v.mount.clone())
            .unwrap_or_default()
    }

    /// The volume a client's path is in and the path relative to its root,
    /// placed as restore places its paths (target.rs), from the client's
    /// working directory; umbra's own folder is not part of a volume.
    fn locate(&self, given: &ClientPath) -> Result<(VolumeRef, PathBuf), ServiceError> {
        let mounts: Vec<Mount<'_>> = self
            .config
            .volumes
            .iter()
            .map(|v| Mount {
                name: &v.name,
                mount: &v.mount,
            })
            .collect();
        let cwd = Path::new(given.cwd.as_deref().unwrap_or("/"));
        let found = target::resolve(Path::new(&given.path), cwd, &mounts, &self.config.snapshots)
            .map_err(|e| match e {
            TargetError::Outside { .. } => ServiceError::Refused(format!(
                "{e} (volumes: {})",
                self.config
                    .volumes
                    .iter()
                    .map(|v| format!("{} at {}", v.name, v.mount.display()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            other => ServiceError::Refused(other.to_string()),
        })?;
        let volume = self
            .volumes
            .iter()
            .find(|v| v.name == found.volume)
            .cloned()
            .ok_or_else(|| ServiceError::UnknownVolume(found.volume.clone()))?;
        if found.steps.first().map(|s| s.as_os_str()) == Some(umbra_fs::HIDDEN_DIR.as_ref()) {
            return Err(ServiceError::Refused(format!(
                "{} is umbra's own folder, not part of the volume",
                given.path
            )));
        }
        Ok((volume, found.steps.iter().collect()))
    }
}

fn instant(set: &SetInfo, volume: &VolumeRef) -> Option<Instant> {
    set.volumes
        .iter()
        .find(|v| v.volume == volume.id)
        .map(|v| Instant::Set {
            id: set.id,
            epoch: v.epoch,
        })
}

/// `rel` under `mount`, the root itself without a trailing slash.
fn under(mount: &Path, rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        return mount.display().to_string();
    }
    mount.join(rel).display().to_string()
}

fn change_view(change: &Change, volume: &str, mount: &Path) -> ChangeView {
    ChangeView {
        change: change.op.mark().to_string(),
        kind: kind_name(change.kind).to_string(),
        volume: volume.to_string(),
        path: under(mount, &change.path),
        to: change.to.as_ref().map(|t| under(mount, t)),
        what: change.what.iter().map(|a| a.as_str().to_string()).collect(),
    }
}

pub(crate) fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Regular => "file",
        FileKind::Directory => "directory",
        FileKind::Symlink => "symlink",
        FileKind::Fifo => "fifo",
        FileKind::Socket => "socket",
        FileKind::CharDevice => "char-device",
        FileKind::BlockDevice => "block-device",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
