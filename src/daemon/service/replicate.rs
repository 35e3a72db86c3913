//! What the daemon does for `umbra replicate`: it resolves the sets and
//! volumes, opens the repository (one replication per repository at a
//! time), picks each volume's parent among the snapshots the repository
//! already holds of sets that still exist, turns umbra's diff between the
//! two sets into the plan of what to read, and has umbra-replicate write
//! one snapshot per volume, read through the browser mount. Progress goes
//! to `progress` while a volume is written.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use umbra_fs::Instant;
use umbra_replicate::{Counters, Job, Plan, Repo, Target};
use umbra_store::SetInfo;

use super::{Service, ServiceError};
use crate::replicate::{ReplicateProgress, ReplicateRequest, ReplicateView, ReplicatedVolume};

/// Repositories a replication is writing to now.
static BUSY: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Holds a repository for one replication.
struct Busy(String);

impl Busy {
    fn take(repository: &str) -> Result<Busy, ServiceError> {
        let mut busy = BUSY.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(repository.to_string()) {
            return Err(ServiceError::Refused(format!(
                "a replication to {repository} is running; try again when it is done"
            )));
        }
        Ok(Busy(repository.to_string()))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.0);
    }
}

impl Service {
    /// Writes the sets of `request` into its repository. `caller` is the
    /// uid of the client (None: the daemon itself): a local repository is
    /// a path the daemon would write as root, so only root may name one.
    pub fn replicate(
        &self,
        request: &ReplicateRequest,
        caller: Option<u32>,
        progress: &mut dyn FnMut(ReplicateProgress),
    ) -> Result<ReplicateView, ServiceError> {
        let local = !request.to.starts_with("s3:");
        if local && caller.is_some_and(|uid| uid != 0) {
            return Err(ServiceError::Refused(format!(
                "only root may replicate to a local repository ({}): the daemon writes it as root; use an s3: repository",
                request.to
            )));
        }
        let mut sets = if request.sets.is_empty() {
            vec![self.set_named("latest")?]
        } else {
            request
                .sets
                .iter()
                .map(|key| self.set_named(key))
                .collect::<Result<Vec<_>, _>>()?
        };
        sets.sort_by_key(|s| s.id);
        sets.dedup_by_key(|s| s.id);
        for volume in &request.volumes {
            if !self.volumes.iter().any(|v| v.name == *volume) {
                return Err(ServiceError::UnknownVolume(volume.clone()));
            }
        }
        let _busy = Busy::take(&request.to)?;
        let target = Target {
            repository: request.to.clone(),
            password: request.password.clone(),
            cache_dir: self.config.state_dir.join("replica-cache"),
            s3_keys: request
                .aws_access_key_id
                .clone()
                .zip(request.aws_secret_access_key.clone()),
        };
        let mut repo = Repo::open(&target).map_err(refused)?;
        let host = host_name();
        let mut view = ReplicateView {
            repository: request.to.clone(),
            repository_id: repo.id.clone(),
            snapshots: Vec::new(),
        };
        let existing: Vec<SetInfo> = self.store.sets()?;
        for set in &sets {
            for held in &set.volumes {
                if !request.volumes.is_empty() && !request.volumes.contains(&held.name) {
                    continue;
                }
                let Some(volume) = self.volumes.iter().find(|v| v.id == held.volume) else {
                    continue;
                };
                let job = Job {
                    volume: &volume.name,
                    root: self.config.snapshots.join(&set.name).join(&volume.name),
                    device_id: volume.id.0 as u64,
                    set_name: &set.name,
                    set_id: set.id.0 as u64,
                    instant: timestamp(set),
                    host: &host,
                };
                if let Some(already) = repo.already(&job).map_err(refused)? {
                    view.snapshots.push(ReplicatedVolume {
                        set: set.name.clone(),
                        set_id: set.id.0,
                        volume: volume.name.clone(),
                        snapshot: already.snapshot,
                        already: true,
                        parent: already.parent,
                        parent_set: None,
                        entries: 0,
                        files: 0,
                        stats: 0,
                        opened: 0,
                        bytes_read: 0,
                        bytes_added: 0,
                        seconds: 0.0,
                    });
                    continue;
                }
                let holds = |id: u64| {
                    existing.iter().any(|s| {
                        s.id.0 as u64 == id && s.volumes.iter().any(|v| v.volume == volume.id)
                    })
                };
                let parent = repo.parent_for(&job, holds).map_err(refused)?;
                let parent = parent.and_then(|p| {
                    let from = existing.iter().find(|s| s.id.0 as u64 == p.set_id)?;
                    let start = instant(from, volume.id)?;
                    let end = instant(set, volume.id)?;
                    match self.sets.changes(volume.id, start, end, None) {
                        Ok(found) => Some((p, Plan::new(&found.changes))),
                        Err(e) => {
                            tracing::warn!(
                                "replicate: the diff from {} to {} of {}: {e}; reading the whole set",
                                from.name,
                                set.name,
                                volume.name
                            );
                            None
                        }
                    }
                });
                let counters = Arc::new(Counters::default());
                let outcome = std::thread::scope(|s| {
                    let run = s.spawn(|| {
                        repo.replicate(
                            &job,
                            parent.as_ref().map(|(h, p)| (h, p.clone())),
                            counters.clone(),
                        )
                    });
                    while !run.is_finished() {
                        std::thread::sleep(Duration::from_millis(250));
                        progress(ReplicateProgress {
                            set: set.name.clone(),
                            volume: volume.name.clone(),
                            entries: counters.entries.load(Ordering::Relaxed),
                            opened: counters.opened.load(Ordering::Relaxed),
                            bytes_read: counters.bytes_read.load(Ordering::Relaxed),
                        });
                    }
                    run.join()
                })
                .map_err(|_| ServiceError::Refused("the replication thread panicked".into()))?
                .map_err(refused)?;
                // The next job may build on this snapshot: its trees must
                // be in the index rustic reads.
                repo = repo.reopen().map_err(refused)?;
                tracing::info!(
                    set = %set.name,
                    volume = %volume.name,
                    snapshot = %outcome.snapshot,
                    opened = outcome.opened,
                    "replicated"
                );
                view.snapshots.push(ReplicatedVolume {
                    set: set.name.clone(),
                    set_id: set.id.0,
                    volume: volume.name.clone(),
                    snapshot: outcome.snapshot,
                    already: false,
                    parent: outcome.parent,
                    parent_set: outcome.parent_set,
                    entries: outcome.entries,
                    files: outcome.files,
                    stats: outcome.stats,
                    opened: outcome.opened,
                    bytes_read: outcome.bytes_read,
                    bytes_added: outcome.bytes_added,
                    seconds: outcome.seconds,
                });
            }
        }
        Ok(view)
    }
}

fn refused(e: umbra_replicate::ReplicateError) -> ServiceError {
    ServiceError::Refused(e.to_string())
}

fn instant(set: &SetInfo, volume: umbra_store::VolumeId) -> Option<Instant> {
    set.volumes
        .iter()
        .find(|v| v.volume == volume)
        .map(|v| Instant::Set {
            id: set.id,
            epoch: v.epoch,
        })
}

fn timestamp(set: &SetInfo) -> umbra_replicate::Timestamp {
    umbra_replicate::Timestamp::new(set.created.secs, set.created.nanos as i32)
        .unwrap_or(umbra_replicate::Timestamp::UNIX_EPOCH)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
