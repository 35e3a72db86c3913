//! What the daemon does for `umbra restore`: it resolves the set (a name,
//! an id or `latest`) and checks the volumes, then walks the writers of
//! those volumes through PreRestore, and PostRestore once the client says
//! how its copy went. The daemon copies nothing: the client reads the set
//! through the snapshot mount and writes through the live mount as the
//! user who ran it, so each side checks that user's access.

use umbra_coordinator::{RestoreRequest, Restoring};
use umbra_store::SetInfo;

use super::{Service, ServiceError, view};
use crate::protocol::RestoreView;

/// A restore in progress: the writers prepared (none for a dry run) and
/// wait for PostRestore. Dropping it reports a failed restore.
pub struct Restore<'a> {
    view: RestoreView,
    restoring: Option<Restoring<'a>>,
}

impl Restore<'_> {
    pub fn view(&self) -> &RestoreView {
        &self.view
    }

    /// PostRestore to the writers, saying whether the copy worked.
    pub fn complete(mut self, succeeded: bool) -> RestoreView {
        if let Some(restoring) = self.restoring.take() {
            self.view.writers = restoring.complete(succeeded);
        }
        self.view
    }
}

impl Service {
    /// Starts a restore out of the set `key` into `volumes` (which the set
    /// must hold). Unless `dry_run`, every writer of those volumes hears
    /// PreRestore first; a required writer's refusal is the error.
    pub fn restore(
        &self,
        key: &str,
        volumes: &[String],
        dry_run: bool,
    ) -> Result<Restore<'_>, ServiceError> {
        let set = self.find_set_or_latest(key)?;
        for volume in volumes {
            if !self.volumes.iter().any(|v| v.name == *volume) {
                return Err(ServiceError::UnknownVolume(volume.clone()));
            }
            if !set.volumes.iter().any(|v| v.name == *volume) {
                return Err(ServiceError::VolumeNotInSet {
                    set: set.name.clone(),
                    volume: volume.clone(),
                });
            }
        }
        let mut view = RestoreView {
            set: view(&set),
            path: self.config.snapshots.join(&set.name).display().to_string(),
            restore_id: String::new(),
            writers: Vec::new(),
        };
        // Nothing is written into a volume (a dry run, or --to a directory
        // outside every volume): no writer need hear of it.
        if dry_run || volumes.is_empty() {
            return Ok(Restore {
                view,
                restoring: None,
            });
        }
        let restoring = self.coordinator.restore(RestoreRequest {
            set_name: set.name.clone(),
            volumes: volumes.to_vec(),
        })?;
        view.restore_id = restoring.restore_id().to_string();
        tracing::info!(set = %set.name, volumes = ?volumes, "restore started");
        Ok(Restore {
            view,
            restoring: Some(restoring),
        })
    }

    /// The set named `key` (a name or an id), or the newest for `latest`.
    fn find_set_or_latest(&self, key: &str) -> Result<SetInfo, ServiceError> {
        let found = if key == "latest" {
            self.store.sets()?.into_iter().next_back()
        } else {
            match self.store.find_set(key) {
                Ok(set) => Some(set),
                Err(umbra_store::Error::UnknownSet(_)) => None,
                Err(other) => return Err(other.into()),
            }
        };
        found.ok_or_else(|| ServiceError::UnknownSet(key.to_string()))
    }
}
