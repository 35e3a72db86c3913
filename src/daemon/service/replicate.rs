//! What the daemon does for `umbra replicate`: it resolves the sets and
//! volumes, opens the repository (one replication per repository at a
//! time), picks each volume's parent among the snapshots the repository
//! already holds of sets that still exist, turns umbra's diff between the
//! two sets into the plan of what to read, and has umbra-replicate write
//! one snapshot per volume, read through the browser mount. Progress goes
//! to `progress` while a volume is written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Local, Utc};

use umbra_fs::Instant;
use umbra_replicate::{Counters, Job, Plan, Repo, Target};
use umbra_store::SetInfo;

use super::{Service, ServiceError};
use crate::config::replica::{After, Password, ReplicaConfig};
use crate::replicate::{
    HeldView, ReplicaView, ReplicasRequest, ReplicateProgress, ReplicateRequest, ReplicateView,
    ReplicatedVolume,
};
use crate::schedule::Zone;

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
        let (target, only) = self.destination(request, caller)?;
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
        for volume in &only {
            if !self.volumes.iter().any(|v| v.name == *volume) {
                return Err(ServiceError::UnknownVolume(volume.clone()));
            }
        }
        let _busy = Busy::take(&target.repository)?;
        let mut repo = Repo::open(&target).map_err(refused)?;
        let host = host_name();
        let mut view = ReplicateView {
            repository: target.repository.clone(),
            repository_id: repo.id.clone(),
            snapshots: Vec::new(),
        };
        let existing: Vec<SetInfo> = self.store.sets()?;
        for set in &sets {
            for held in &set.volumes {
                if !only.is_empty() && !only.contains(&held.name) {
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
                        already: true,
                        outcome: umbra_replicate::Outcome {
                            snapshot: already.snapshot,
                            parent: already.parent,
                            ..Default::default()
                        },
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
                    already: false,
                    outcome,
                });
            }
        }
        Ok(view)
    }
}

impl Service {
    /// The repository a request names, with its password and keys, and
    /// the volumes to write (empty: all). A local repository is a path the
    /// daemon would write as root: only root may name one (`caller` is the
    /// client's uid; None: the daemon itself). A configured replica is the
    /// administrator's choice, its secrets read from root's files.
    fn destination(
        &self,
        request: &ReplicateRequest,
        caller: Option<u32>,
    ) -> Result<(Target, Vec<String>), ServiceError> {
        let cache_dir = self.config.state_dir.join("replica-cache");
        if let Some(name) = &request.replica {
            let replica = self.replica_named(name)?;
            let mut target = configured_target(replica, cache_dir)?;
            if !request.password.is_empty() {
                target.password = request.password.clone();
            }
            let only = if request.volumes.is_empty() {
                replica.volumes.clone()
            } else {
                request.volumes.clone()
            };
            return Ok((target, only));
        }
        if request.to.is_empty() {
            return Err(ServiceError::Refused(
                "name a repository (--to) or a configured replica (--replica)".into(),
            ));
        }
        let local = !request.to.starts_with("s3:");
        if local && caller.is_some_and(|uid| uid != 0) {
            return Err(ServiceError::Refused(format!(
                "only root may replicate to a local repository ({}): the daemon writes it as root; use an s3: repository or a configured [[replica]]",
                request.to
            )));
        }
        Ok((
            Target {
                repository: request.to.clone(),
                password: request.password.clone(),
                cache_dir,
                s3_keys: request
                    .aws_access_key_id
                    .clone()
                    .zip(request.aws_secret_access_key.clone()),
            },
            request.volumes.clone(),
        ))
    }

    fn replica_named(&self, name: &str) -> Result<&ReplicaConfig, ServiceError> {
        self.config
            .replicas
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| ServiceError::Refused(format!("no [[replica]] named {name:?}")))
    }

    /// What each configured replica (or the one repository asked for)
    /// holds of umbra's sets.
    pub fn replicas(
        &self,
        request: &ReplicasRequest,
        caller: Option<u32>,
    ) -> Result<Vec<ReplicaView>, ServiceError> {
        let cache_dir = self.config.state_dir.join("replica-cache");
        let mut wanted: Vec<(String, String, Result<Target, ServiceError>)> = Vec::new();
        match &request.to {
            Some(to) => {
                let target = self.destination(to, caller).map(|(t, _)| t);
                let after = match &to.replica {
                    Some(name) => after_text(&self.replica_named(name)?.after),
                    None => "asked".into(),
                };
                let name = to.replica.clone().unwrap_or_default();
                let repository = match &target {
                    Ok(t) => t.repository.clone(),
                    Err(_) => to.to.clone(),
                };
                wanted.push((name, after, target.map(|t| Target { repository, ..t })));
            }
            None => {
                for replica in &self.config.replicas {
                    wanted.push((
                        replica.name.clone(),
                        after_text(&replica.after),
                        configured_target(replica, cache_dir.clone()),
                    ));
                }
            }
        }
        let existing: Vec<SetInfo> = self.store.sets()?;
        let mut views = Vec::with_capacity(wanted.len());
        for (name, after, target) in wanted {
            let mut view = ReplicaView {
                name,
                repository: String::new(),
                repository_id: String::new(),
                after,
                snapshots: Vec::new(),
                error: None,
            };
            let target = match target {
                Ok(target) => target,
                Err(e) => {
                    view.error = Some(e.to_string());
                    views.push(view);
                    continue;
                }
            };
            view.repository = target.repository.clone();
            match Repo::open_existing(&target).and_then(|repo| Ok((repo.id.clone(), repo.held()?)))
            {
                Ok((id, held)) => {
                    view.repository_id = id;
                    view.snapshots = held
                        .into_iter()
                        .map(|h| HeldView {
                            set_exists: existing.iter().any(|s| s.id.0 as u64 == h.set_id),
                            snapshot: h.snapshot,
                            set: h.set_name,
                            set_id: h.set_id,
                            volume: h.volume,
                            time: h.time.to_string(),
                            parent: h.parent,
                        })
                        .collect();
                }
                Err(e) => view.error = Some(e.to_string()),
            }
            views.push(view);
        }
        Ok(views)
    }

    /// Writes into each replica `pick` chooses the sets made since this
    /// thread last wrote it (the newest set, the first time), logging the
    /// outcome: the daemon's own replications have no client.
    fn replicate_configured(&self, pick: impl Fn(&ReplicaConfig) -> bool) {
        let sets = match self.store.sets() {
            Ok(sets) => sets,
            Err(e) => {
                tracing::error!("replicas: listing the sets: {e}");
                return;
            }
        };
        let Some(newest) = sets.last() else {
            return;
        };
        for replica in self.config.replicas.iter().filter(|r| pick(r)) {
            let mut written = WRITTEN.lock().unwrap_or_else(|p| p.into_inner());
            let since = written.get(&replica.name).copied();
            let wanted: Vec<String> = match since {
                Some(last) => sets
                    .iter()
                    .filter(|s| s.id.0 > last)
                    .map(|s| s.id.to_string())
                    .collect(),
                None => vec![newest.id.to_string()],
            };
            if wanted.is_empty() {
                continue;
            }
            let request = ReplicateRequest {
                replica: Some(replica.name.clone()),
                sets: wanted,
                ..ReplicateRequest::default()
            };
            let done = self.replicate(&request, None, &mut |_| {});
            if done.is_ok() {
                written.insert(replica.name.clone(), newest.id.0);
            }
            drop(written);
            match done {
                Ok(view) => {
                    for s in &view.snapshots {
                        tracing::info!(
                            replica = %replica.name,
                            set = %s.set,
                            volume = %s.volume,
                            snapshot = %s.outcome.snapshot,
                            already = s.already,
                            "replica written"
                        );
                    }
                }
                Err(e) => tracing::error!(replica = %replica.name, "replication failed: {e}"),
            }
        }
    }

    /// Tells the replicas' thread a set was made (`after = "every set"`).
    pub(super) fn set_made(&self) {
        if let Some(tx) = SET_MADE.get() {
            let _ = tx.try_send(());
        }
    }
}

/// The newest set each configured replica got from this daemon: the next
/// run writes every set made since (two sets made during one replication
/// are both written).
static WRITTEN: Mutex<BTreeMap<String, i64>> = Mutex::new(BTreeMap::new());

/// Wakes the replicas' thread after each set; one pending wake is enough.
static SET_MADE: OnceLock<SyncSender<()>> = OnceLock::new();

/// Starts the thread that writes the configured replicas after each set
/// and at their calendar times. One per process.
pub fn start_replicas(service: &Arc<Service>) {
    if service
        .config
        .replicas
        .iter()
        .all(|r| r.after == After::Asked)
    {
        return;
    }
    let (tx, rx) = sync_channel(1);
    if SET_MADE.set(tx).is_err() {
        return;
    }
    let service = Arc::downgrade(service);
    let spawned = std::thread::Builder::new()
        .name("replicas".into())
        .spawn(move || {
            // Firings after `since` and up to now are due.
            let mut since = Utc::now();
            loop {
                let due = service
                    .upgrade()
                    .and_then(|s| next_due(&s.config.replicas, since));
                let wait = due
                    .map(|d| (d - Utc::now()).to_std().unwrap_or_default())
                    .unwrap_or(Duration::from_secs(3600));
                let woke = rx.recv_timeout(wait);
                let Some(service) = service.upgrade() else {
                    return;
                };
                match woke {
                    Ok(()) => service.replicate_configured(|r| r.after == After::EverySet),
                    Err(RecvTimeoutError::Timeout) => {
                        let now = Utc::now();
                        service
                            .replicate_configured(|r| next_of(r, since).is_some_and(|n| n <= now));
                        since = now;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the replicas' thread: {e}");
    }
}

/// The next firing of a replica's calendar time after `after`.
fn next_of(replica: &ReplicaConfig, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match &replica.after {
        After::Times(calendar, Zone::Local) => calendar.next_after(after, &Local),
        After::Times(calendar, Zone::Utc) => calendar.next_after(after, &Utc),
        _ => None,
    }
}

fn next_due(replicas: &[ReplicaConfig], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    replicas.iter().filter_map(|r| next_of(r, now)).min()
}

fn after_text(after: &After) -> String {
    match after {
        After::Asked => "asked".into(),
        After::EverySet => "every set".into(),
        After::Times(calendar, _) => calendar.to_string(),
    }
}

/// A configured replica's repository, password and keys, read now (a
/// rotated password file is read at the next replication).
fn configured_target(replica: &ReplicaConfig, cache_dir: PathBuf) -> Result<Target, ServiceError> {
    let problem =
        |what: String| ServiceError::Refused(format!("replica {:?}: {what}", replica.name));
    let password = match &replica.password {
        Password::File(file) => std::fs::read_to_string(file)
            .map_err(|e| problem(format!("password_file {}: {e}", file.display())))?,
        Password::Command(command) => {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(command)
                .stderr(std::process::Stdio::inherit())
                .output()
                .map_err(|e| problem(format!("password_command: {e}")))?;
            if !out.status.success() {
                return Err(problem(format!("password_command failed: {}", out.status)));
            }
            String::from_utf8(out.stdout)
                .map_err(|_| problem("password_command printed no UTF-8".into()))?
        }
    };
    let password = password.lines().next().unwrap_or_default().to_string();
    let mut key = std::env::var("AWS_ACCESS_KEY_ID").ok();
    let mut secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok();
    if let Some(file) = &replica.credentials_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| problem(format!("credentials_file {}: {e}", file.display())))?;
        for line in text.lines() {
            let line = line.trim();
            let line = line.strip_prefix("export ").unwrap_or(line);
            match line.split_once('=') {
                Some(("AWS_ACCESS_KEY_ID", v)) => key = Some(unquote(v)),
                Some(("AWS_SECRET_ACCESS_KEY", v)) => secret = Some(unquote(v)),
                _ => {}
            }
        }
    }
    Ok(Target {
        repository: replica.repository.clone(),
        password,
        cache_dir,
        s3_keys: key.zip(secret),
    })
}

fn unquote(value: &str) -> String {
    let v = value.trim();
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(v)
        .to_string()
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
