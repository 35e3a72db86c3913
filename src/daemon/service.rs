//! What the daemon does for each control request: create (through the
//! coordinator's writer sequence and the copy-on-write provider), list,
//! delete, status and writers over the store, the live volumes and the
//! snapshot browser. Creates and deletes run one at a time (a second create
//! while one runs is refused at once), and every change is followed by a
//! refresh of the browser. It never reads a socket and never mounts anything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, TryLockError};
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use umbra_coordinator::{
    Coordinator, Created, Pending, Provider, RegisterError, Registration, SequenceError,
    SetRequest, SetWriter, WriterLink,
};
use umbra_fs::{Browser, FsError, Sets, ShadowStorage, VolumeRef};
use umbra_store::{SetId, SetInfo, SetOrigin, Store};

use crate::config::Config;
use crate::naming::{self, NameFormat};
use crate::protocol::{
    CreatedView, DiffAreaView, DiffView, HoldView, PruneView, PrunedSet, Request, ScheduleView,
    SetView, StatusView, VersionsView, VolumeView, WriterInfo,
};
use crate::schedule::{Candidate, Schedule};

mod cluster;
mod history;
mod replicate;
pub use replicate::start_replicas;
mod restore;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("no volume named {0:?}")]
    UnknownVolume(String),
    #[error("no shadow copy set named {0:?}")]
    UnknownSet(String),
    #[error("name at least one set to delete")]
    NothingToDelete,
    #[error("diff area: {0}")]
    Store(#[from] umbra_store::Error),
    #[error("{0}")]
    Fs(#[from] FsError),
    #[error(transparent)]
    Sequence(#[from] SequenceError),
    #[error(transparent)]
    Register(#[from] RegisterError),
    #[error("register must be the first message of a connection")]
    LateRegister,
    #[error("backup and backup_complete are a pair on one connection")]
    NotABackup,
    #[error("restore and restore_complete are a pair on one connection")]
    NotARestore,
    #[error("shadow copy set {set:?} has no volume {volume:?}")]
    VolumeNotInSet { set: String, volume: String },
    #[error("the daemon's config has no [schedule]: no retention rules say what to prune")]
    NoSchedule,
    /// A request that cannot be answered as asked; the text says why.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("deleted {deleted} of {wanted} sets, then: {source}")]
    PartialDelete {
        deleted: usize,
        wanted: usize,
        #[source]
        source: FsError,
    },
}

/// An answer to a request, serialized as the `ok` payload.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Created(Box<CreatedView>),
    Writers(Vec<WriterInfo>),
    Sets(Vec<SetView>),
    Status(StatusView),
    Pruned(PruneView),
    Diff(Box<DiffView>),
    Versions(VersionsView),
    Restore(Box<crate::protocol::RestoreView>),
}

/// Which sets a delete picks besides the named ones.
#[derive(Clone, Copy, Debug, Default)]
pub struct Selectors {
    pub oldest: Option<usize>,
    pub older_than: Option<Duration>,
    pub all: bool,
}

impl Selectors {
    fn any(&self) -> bool {
        self.all || self.oldest.is_some() || self.older_than.is_some()
    }

    /// The sets picked from `sets` (oldest first), at `now` (Unix seconds).
    fn pick(&self, sets: Vec<SetInfo>, now: i64) -> Vec<SetInfo> {
        let oldest = self.oldest.unwrap_or(0);
        sets.into_iter()
            .enumerate()
            .filter(|(i, set)| {
                self.all
                    || *i < oldest
                    || self
                        .older_than
                        .is_some_and(|d| set.created.secs < cutoff(now, d))
            })
            .map(|(_, set)| set)
            .collect()
    }
}

/// The Unix second before which a set is older than `age` at `now`. An
/// age beyond what i64 seconds hold (`--older-than 300000000000y`) reaches
/// back before every set, not around to the future.
fn cutoff(now: i64, age: Duration) -> i64 {
    let exact = i128::from(now) - i128::from(age.as_secs());
    i64::try_from(exact).unwrap_or(i64::MIN)
}

pub struct Service {
    store: Arc<Store>,
    /// Every volume's provider: the service knows them only through it.
    sets: Arc<Sets>,
    volumes: Vec<VolumeRef>,
    browser: Arc<Browser>,
    config: Config,
    coordinator: Arc<Coordinator>,
    /// Held by create and delete: one change of the set list at a time, and
    /// none while the daemon shuts down.
    changes: Mutex<()>,
    /// Held for a whole create: a second one is refused rather than queued.
    creating: Mutex<()>,
    /// The diff area's limits: `max_sets` is made room for before a set.
    storage: Option<Arc<ShadowStorage>>,
    /// The set a running `umbra backup` is reading: retention keeps it.
    in_backup: Mutex<Option<SetId>>,
    /// The sets `max_sets` deleted before the set being made, for its view.
    evicted: Mutex<Vec<SetInfo>>,
    /// The `[schedule]` in force: the config's at start, then the last one
    /// a reload (SIGHUP) read. `umbra prune` and `status` use this copy.
    schedule: RwLock<Option<Schedule>>,
    /// The cluster this host takes cluster sets with (`[cluster]`).
    cluster: Option<Arc<crate::cluster::Cluster>>,
    /// A cluster set's part here may wait for its outcome (see cluster.rs).
    cluster_unsettled: std::sync::atomic::AtomicBool,
}

impl Service {
    pub fn with_storage(mut self, area: Arc<ShadowStorage>) -> Service {
        self.storage = Some(area);
        self
    }

    pub fn new(
        sets: Arc<Sets>,
        browser: Arc<Browser>,
        config: Config,
        coordinator: Arc<Coordinator>,
    ) -> Service {
        Service {
            store: sets.store().clone(),
            volumes: sets.volumes(),
            sets,
            browser,
            schedule: RwLock::new(config.schedule.clone()),
            config,
            coordinator,
            changes: Mutex::new(()),
            creating: Mutex::new(()),
            storage: None,
            in_backup: Mutex::new(None),
            evicted: Mutex::new(Vec::new()),
            cluster: None,
            cluster_unsettled: std::sync::atomic::AtomicBool::new(true),
        }
    }

    pub fn handle(&self, request: Request) -> Result<Answer, ServiceError> {
        match request {
            Request::Create {
                volumes,
                label,
                cluster: false,
            } => self
                .create(&volumes, label)
                .map(|c| Answer::Created(Box::new(c))),
            Request::Create {
                volumes,
                label,
                cluster: true,
            } => {
                if !volumes.is_empty() {
                    return Err(ServiceError::Refused(
                        "a cluster set takes every volume of every member: name none".into(),
                    ));
                }
                self.create_cluster(label, SetOrigin::Manual)
                    .map(|c| Answer::Created(Box::new(c)))
            }
            Request::List { cluster } => self.list_cluster(cluster).map(Answer::Sets),
            Request::Delete {
                sets,
                oldest,
                older_than_secs,
                all,
            } => {
                let selectors = Selectors {
                    oldest,
                    older_than: older_than_secs.map(Duration::from_secs),
                    all,
                };
                self.delete(&sets, selectors).map(Answer::Sets)
            }
            Request::Status {} => self.status().map(Answer::Status),
            Request::Prune { dry_run } => self.prune(dry_run).map(Answer::Pruned),
            Request::Writers {} => Ok(Answer::Writers(self.writers())),
            Request::Diff { from, to, path } => self
                .diff(&from, to.as_deref(), path.as_ref())
                .map(|d| Answer::Diff(Box::new(d))),
            Request::Versions { path } => self.versions(&path).map(Answer::Versions),
            Request::Register(_) => Err(ServiceError::LateRegister),
            Request::Backup { .. } | Request::BackupComplete { .. } => {
                Err(ServiceError::NotABackup)
            }
            Request::Restore { .. } | Request::RestoreComplete { .. } => {
                Err(ServiceError::NotARestore)
            }
            Request::Replicate(_) | Request::Replicas(_) => Err(ServiceError::Refused(
                "replicate and replicas are answered with the caller's uid".into(),
            )),
        }
    }

    /// Makes a set of the named volumes (all when `names` is empty) through
    /// the writers' whole sequence. An unknown name is an error before any
    /// writer hears of the set.
    pub fn create(
        &self,
        names: &[String],
        label: Option<String>,
    ) -> Result<CreatedView, ServiceError> {
        self.create_as(names, label, SetOrigin::Manual)
    }

    fn create_as(
        &self,
        names: &[String],
        label: Option<String>,
        origin: SetOrigin,
    ) -> Result<CreatedView, ServiceError> {
        let (_creating, pending) = self.start(names, label, origin, None)?;
        let made = self.created_view(pending.complete(true));
        if made.is_ok() {
            self.set_made();
        }
        made
    }

    /// One firing of the schedule: a set through the same writer sequence
    /// as `umbra create`, recorded as scheduled, then retention. Both are
    /// logged; a failure of either is logged and waits for the next firing.
    /// False if another set (a backup) is being made: nothing was done and
    /// the scheduler tries again.
    pub fn take_scheduled(&self, schedule: &Schedule) -> bool {
        let made = if schedule.cluster {
            self.plan_scheduled(schedule)
        } else {
            self.create_as(
                &schedule.volumes,
                schedule.label.clone(),
                SetOrigin::Scheduled,
            )
            .map(|_| ())
        };
        match made {
            Ok(_) => {}
            Err(ServiceError::Sequence(SequenceError::Busy | SequenceError::Restoring)) => {
                tracing::warn!(
                    "scheduled set waits: another set (a backup?) or a restore is running"
                );
                return false;
            }
            Err(e) => tracing::error!("scheduled set failed: {e}"),
        }
        if let Err(e) = self.prune(false) {
            tracing::error!("retention after the scheduled set failed: {e}");
        }
        true
    }

    /// Applies the schedule's retention rules at this instant: every set
    /// with the rules that keep it, the others deleted unless `dry_run`.
    pub fn prune(&self, dry_run: bool) -> Result<PruneView, ServiceError> {
        let schedule = self.schedule().ok_or(ServiceError::NoSchedule)?;
        let _changing = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let sets = self.store.sets()?;
        let in_use = *self
            .in_backup
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let candidates: Vec<Candidate> = sets
            .iter()
            .map(|set| Candidate {
                created: chrono::DateTime::from_timestamp(set.created.secs, set.created.nanos)
                    .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC),
                origin: set.origin,
                in_use: in_use == Some(set.id),
            })
            .collect();
        let verdicts = schedule.judge(&candidates, Utc::now());
        let doomed = verdicts.iter().filter(|k| k.is_empty()).count();
        let mut done = 0;
        let mut out = Vec::with_capacity(sets.len());
        for (set, kept) in sets.iter().zip(verdicts) {
            if kept.is_empty() && !dry_run {
                if let Err(source) = self.sets.delete(set.id) {
                    self.refresh();
                    return Err(ServiceError::PartialDelete {
                        deleted: done,
                        wanted: doomed,
                        source,
                    });
                }
                done += 1;
                tracing::info!(set = %set.name, id = %set.id, origin = %set.origin, "retention deleted shadow copy set");
            }
            out.push(PrunedSet {
                set: view(set),
                action: if kept.is_empty() { "delete" } else { "keep" }.into(),
                kept_by: kept.iter().map(|k| k.as_str().to_string()).collect(),
            });
        }
        if done > 0 {
            self.refresh();
            self.repair_later();
        }
        Ok(PruneView { dry_run, sets: out })
    }

    /// Makes a set up to PostSnapshot for a requester that backs it up and
    /// then reports (see [`Backup`]). No other set is made meanwhile.
    pub fn backup(
        &self,
        names: &[String],
        label: Option<String>,
        keep: bool,
    ) -> Result<Backup<'_>, ServiceError> {
        let (creating, pending) = self.start(names, label, SetOrigin::Backup, None)?;
        let set = self.store.find_set(&pending.set().id.to_string())?;
        *self
            .in_backup
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(set.id);
        let view = CreatedView {
            path: self.config.snapshots.join(&set.name).display().to_string(),
            set: view(&set),
            set_guid: pending.set_guid().to_string(),
            hold_ms: millis(pending.set().hold),
            holds: holds(pending.set()),
            total_ms: millis(pending.elapsed()),
            evicted: self.take_evicted(),
            cluster: None,
        };
        Ok(Backup {
            service: self,
            pending: Some(pending),
            view,
            keep,
            _creating: creating,
        })
    }

    /// Runs the sequence up to PostSnapshot, through the local provider
    /// or what `wrap` makes of it (a cluster set's part).
    fn start(
        &self,
        names: &[String],
        label: Option<String>,
        origin: SetOrigin,
        wrap: Option<&dyn Fn(umbra_fs::SetMaker) -> Box<dyn Provider>>,
    ) -> Result<(MutexGuard<'_, ()>, Pending<'_>), ServiceError> {
        let volumes = self.pick_volumes(names)?;
        let creating = match self.creating.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(SequenceError::Busy.into()),
        };
        let _changing = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(area) = &self.storage {
            *self.evicted.lock().unwrap_or_else(PoisonError::into_inner) = area.before_new_set()?;
        }
        let now = Utc::now();
        let name = self.store.free_set_name(&self.name_format().name(now))?;
        let maker = self.sets.maker(naming::timestamp(now), origin);
        let provider: Box<dyn Provider> = match wrap {
            Some(wrap) => wrap(maker),
            None => Box::new(maker),
        };
        let request = SetRequest {
            name,
            label,
            volumes: volumes.iter().map(|v| v.name.clone()).collect(),
        };
        let result = self.coordinator.snapshot(request, provider);
        self.refresh();
        Ok((creating, result?))
    }

    fn created_view(&self, created: Created) -> Result<CreatedView, ServiceError> {
        let set = self.store.find_set(&created.set.id.to_string())?;
        tracing::info!(set = %set.name, id = %set.id, origin = %set.origin, hold = ?created.set.hold, "created shadow copy set");
        let path = self.config.snapshots.join(&set.name).display().to_string();
        let mut set = view(&set);
        set.writers = created.writers;
        Ok(CreatedView {
            set,
            set_guid: created.set_guid,
            path,
            hold_ms: millis(created.set.hold),
            holds: holds(&created.set),
            total_ms: millis(created.total),
            evicted: self.take_evicted(),
            cluster: None,
        })
    }

    /// The sets `max_sets` deleted for the set just made (once).
    fn take_evicted(&self) -> Vec<SetView> {
        std::mem::take(&mut *self.evicted.lock().unwrap_or_else(PoisonError::into_inner))
            .iter()
            .map(view)
            .collect()
    }

    pub fn list(&self) -> Result<Vec<SetView>, ServiceError> {
        let mut writers: HashMap<SetId, Vec<SetWriter>> = HashMap::new();
        for (set, record) in self.store.set_writers()? {
            writers.entry(set).or_default().push(SetWriter {
                name: record.name,
                required: record.required,
                status: record.status,
                error: record.error,
                components: serde_json::from_str(&record.components).unwrap_or_default(),
            });
        }
        Ok(self
            .store
            .sets()?
            .iter()
            .map(|set| SetView {
                writers: writers.remove(&set.id).unwrap_or_default(),
                ..view(set)
            })
            .collect())
    }

    /// Whether `registration` would be accepted: its volumes exist and its
    /// name is free.
    pub fn can_register(&self, registration: &Registration) -> Result<(), ServiceError> {
        if let Some(unknown) = registration
            .volumes
            .iter()
            .find(|v| !self.volumes.iter().any(|known| known.name == **v))
        {
            return Err(ServiceError::UnknownVolume(unknown.clone()));
        }
        Ok(self.coordinator.can_register(registration)?)
    }

    /// Adds a writer (see `can_register`), calling `accepted` before any
    /// set can reach it.
    pub fn register(
        &self,
        registration: Registration,
        link: Box<dyn WriterLink>,
        accepted: impl FnOnce() -> Result<(), String>,
    ) -> Result<(), ServiceError> {
        self.can_register(&registration)?;
        Ok(self
            .coordinator
            .register_then(registration, link, accepted)?)
    }

    pub fn writers(&self) -> Vec<WriterInfo> {
        self.coordinator
            .writers()
            .into_iter()
            .map(|w| WriterInfo {
                name: w.name,
                kind: w.kind,
                state: w.state.to_string(),
                last_error: w.last_error,
                retryable: w.retryable,
                volumes: w.volumes,
                required: w.required,
                connected: w.connected,
            })
            .collect()
    }

    /// Deletes the named sets (by name or id). Every name is checked first:
    /// if one is unknown, none is deleted.
    pub fn delete(
        &self,
        keys: &[String],
        selectors: Selectors,
    ) -> Result<Vec<SetView>, ServiceError> {
        if keys.is_empty() && !selectors.any() {
            return Err(ServiceError::NothingToDelete);
        }
        let _changing = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let mut doomed: Vec<SetInfo> = Vec::with_capacity(keys.len());
        for key in keys {
            let set = self.store.find_set(key).map_err(|e| match e {
                umbra_store::Error::UnknownSet(_) => ServiceError::UnknownSet(key.clone()),
                other => ServiceError::Store(other),
            })?;
            if !doomed.iter().any(|d| d.id == set.id) {
                doomed.push(set);
            }
        }
        for set in selectors.pick(self.store.sets()?, Utc::now().timestamp()) {
            if !doomed.iter().any(|d| d.id == set.id) {
                doomed.push(set);
            }
        }
        for (done, set) in doomed.iter().enumerate() {
            if let Err(source) = self.sets.delete(set.id) {
                self.refresh();
                return Err(ServiceError::PartialDelete {
                    deleted: done,
                    wanted: doomed.len(),
                    source,
                });
            }
            tracing::info!(set = %set.name, id = %set.id, "deleted shadow copy set");
        }
        self.refresh();
        self.repair_later();
        Ok(doomed.iter().map(view).collect())
    }

    pub fn status(&self) -> Result<StatusView, ServiceError> {
        let known = self.store.volumes()?;
        let volumes = self
            .config
            .volumes
            .iter()
            .map(|v| VolumeView {
                name: v.name.clone(),
                provider: self
                    .volumes
                    .iter()
                    .find(|known| known.name == v.name)
                    .map_or("", |known| known.kind.as_str())
                    .to_string(),
                backing: v.backing.display().to_string(),
                mount: v.mount.display().to_string(),
                epoch: known
                    .iter()
                    .find(|k| k.name == v.name)
                    .map_or(0, |k| k.epoch.0),
            })
            .collect();
        let stats = self.store.stats()?;
        Ok(StatusView {
            state_dir: self.config.state_dir.display().to_string(),
            socket: self.config.socket.display().to_string(),
            snapshots: self.config.snapshots.display().to_string(),
            volumes,
            diff_area: DiffAreaView {
                chunk_bytes: stats.chunk_bytes,
                chunks: stats.chunks,
                disk_bytes: stats.disk_bytes,
                limit_bytes: self.storage.as_ref().and_then(|a| a.limits().max_bytes),
                max_sets: self.storage.as_ref().and_then(|a| a.limits().max_sets),
            },
            sets: self.store.sets()?.len() as u64,
            schedule: self
                .schedule()
                .filter(|s| !s.times.is_empty())
                .map(|s| ScheduleView {
                    times: s.times.iter().map(ToString::to_string).collect(),
                    next: s
                        .next_after(Utc::now())
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                }),
        })
    }

    /// Waits for a create or delete in progress, and keeps new ones out for
    /// as long as the guard lives.
    pub fn quiesce(&self) -> std::sync::MutexGuard<'_, ()> {
        self.changes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The configuration the daemon started with (its `[schedule]` may
    /// since have been replaced: see [`schedule`](Self::schedule)).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The `[schedule]` in force.
    pub fn schedule(&self) -> Option<Schedule> {
        self.schedule
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts a reloaded `[schedule]` in force for prune and status.
    pub fn replace_schedule(&self, schedule: Option<Schedule>) {
        *self
            .schedule
            .write()
            .unwrap_or_else(PoisonError::into_inner) = schedule;
    }

    fn name_format(&self) -> &NameFormat {
        &self.config.name_format
    }

    fn pick_volumes(&self, names: &[String]) -> Result<Vec<VolumeRef>, ServiceError> {
        if names.is_empty() {
            return Ok(self.volumes.clone());
        }
        let mut picked: Vec<VolumeRef> = Vec::with_capacity(names.len());
        for name in names {
            let volume = self
                .volumes
                .iter()
                .find(|v| v.name == *name)
                .ok_or_else(|| ServiceError::UnknownVolume(name.clone()))?;
            if !picked.contains(volume) {
                picked.push(volume.clone());
            }
        }
        Ok(picked)
    }

    fn refresh(&self) {
        if let Err(e) = self.browser.refresh() {
            tracing::warn!("the snapshot browser did not refresh: {e}");
        }
    }
}

/// A set made for a requester's backup, waiting for its report. Dropped
/// without one (the requester went away), the backup counts as failed;
/// either way the set is deleted afterwards unless it was to be kept.
pub struct Backup<'a> {
    service: &'a Service,
    pending: Option<Pending<'a>>,
    view: CreatedView,
    keep: bool,
    _creating: MutexGuard<'a, ()>,
}

impl Backup<'_> {
    pub fn view(&self) -> &CreatedView {
        &self.view
    }

    /// BackupComplete to the writers, then the set deleted unless kept.
    pub fn complete(mut self, succeeded: bool) -> Result<CreatedView, ServiceError> {
        self.finish(succeeded)
    }

    fn finish(&mut self, succeeded: bool) -> Result<CreatedView, ServiceError> {
        let Some(pending) = self.pending.take() else {
            return Ok(self.view.clone());
        };
        let completed = self.service.created_view(pending.complete(succeeded));
        *self
            .service
            .in_backup
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        let view = completed?;
        if !self.keep {
            self.service
                .delete(&[view.set.id.to_string()], Selectors::default())?;
        }
        Ok(view)
    }
}

impl Drop for Backup<'_> {
    fn drop(&mut self) {
        if self.pending.is_some()
            && let Err(e) = self.finish(false)
        {
            tracing::error!(set = %self.view.set.name, "finishing a backup its requester left: {e}");
        }
    }
}

/// Each provider's hold, as clients see it.
fn holds(set: &umbra_coordinator::Committed) -> Vec<HoldView> {
    set.holds
        .iter()
        .map(|h| HoldView {
            provider: h.provider.clone(),
            volumes: h.volumes.clone(),
            hold_ms: millis(h.hold),
        })
        .collect()
}

/// Milliseconds, to the microsecond.
fn millis(d: std::time::Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// A set as clients see it (without its writers).
fn view(set: &SetInfo) -> SetView {
    SetView {
        id: set.id,
        name: set.name.clone(),
        created: naming::rfc3339(set.created),
        label: set.label.clone(),
        origin: set.origin.as_str().into(),
        volumes: set.volumes.iter().map(|v| v.name.clone()).collect(),
        writers: Vec::new(),
        cluster_id: None,
        cluster_members: None,
    }
}

#[cfg(test)]
pub(super) mod tests {

    #[test]
    fn selectors_pick_the_oldest_the_old_and_all() {
        let set = |id: i64, secs: i64| SetInfo {
            id: umbra_store::SetId(id),
            name: format!("s{id}"),
            created: umbra_store::Timestamp { secs, nanos: 0 },
            label: None,
            origin: umbra_store::SetOrigin::Manual,
            volumes: Vec::new(),
        };
        let sets = vec![set(1, 100), set(2, 200), set(3, 300)];
        let ids = |sel: Selectors| -> Vec<i64> {
            sel.pick(sets.clone(), 400).iter().map(|s| s.id.0).collect()
        };
        assert_eq!(
            ids(Selectors {
                oldest: Some(2),
                ..Default::default()
            }),
            [1, 2]
        );
        assert_eq!(
            ids(Selectors {
                older_than: Some(Duration::from_secs(150)),
                ..Default::default()
            }),
            [1, 2]
        );
        assert_eq!(
            ids(Selectors {
                all: true,
                ..Default::default()
            }),
            [1, 2, 3]
        );
        assert!(
            ids(Selectors {
                oldest: Some(0),
                ..Default::default()
            })
            .is_empty()
        );
        assert!(!Selectors::default().any());
    }

    #[test]
    fn delete_older_than_300000000000y_deletes_nothing() {
        let set = |id: i64, secs: i64| SetInfo {
            id: umbra_store::SetId(id),
            name: format!("s{id}"),
            created: umbra_store::Timestamp { secs, nanos: 0 },
            label: None,
            origin: umbra_store::SetOrigin::Manual,
            volumes: Vec::new(),
        };
        let sets = vec![set(1, 0), set(2, 1_800_000_000)];
        // What humantime makes of `300000000000y`, and the wire's maximum.
        let ages = [
            humantime::parse_duration("300000000000y").expect("parses"),
            Duration::from_secs(u64::MAX),
            Duration::from_secs(i64::MAX as u64 + 1),
        ];
        for age in ages {
            let picked = Selectors {
                older_than: Some(age),
                ..Default::default()
            }
            .pick(sets.clone(), 1_900_000_000);
            assert!(picked.is_empty(), "--older-than {age:?} picked {picked:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_selector_numbers_pick_without_panicking(
            oldest in proptest::option::of(proptest::num::usize::ANY),
            older_than in proptest::option::of(proptest::num::u64::ANY),
            now in proptest::num::i64::ANY,
            created in proptest::collection::vec(proptest::num::i64::ANY, 0..5),
        ) {
            let sets: Vec<SetInfo> = created
                .iter()
                .enumerate()
                .map(|(i, &secs)| SetInfo {
                    id: umbra_store::SetId(i as i64),
                    name: format!("s{i}"),
                    created: umbra_store::Timestamp { secs, nanos: 0 },
                    label: None,
                    origin: umbra_store::SetOrigin::Manual,
                    volumes: Vec::new(),
                })
                .collect();
            let selectors = Selectors {
                oldest,
                older_than: older_than.map(Duration::from_secs),
                all: false,
            };
            for set in selectors.pick(sets, now) {
                let by_age = older_than.is_some_and(|age| {
                    i128::from(set.created.secs) < i128::from(now) - i128::from(age)
                });
                let by_rank = oldest.is_some_and(|n| (set.id.0 as usize) < n);
                proptest::prop_assert!(by_age || by_rank, "picked {set:?}");
            }
        }
    }
    use std::path::Path;

    use umbra_store::{NewSet, StoreOptions, Timestamp};

    use super::*;
    use crate::config::Origin;

    pub(crate) struct Fixture {
        _dir: tempfile::TempDir,
        pub store: Arc<Store>,
        pub service: Service,
    }

    /// A service over a fresh store with volumes `data` (in place) and `logs`.
    pub(crate) fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = "state_dir = \"state\"\nsnapshots = \"snaps\"\n\
            [[volume]]\nname = \"data\"\nbacking = \"data\"\nmount = \"data\"\n\
            [[volume]]\nname = \"logs\"\nbacking = \"b/logs\"\nmount = \"m/logs\"\n";
        let config = Config::parse(text, Origin::Embedded, dir.path()).expect("config");
        let store = Arc::new(
            Store::open(&config.state_dir.join("store"), StoreOptions::default()).expect("store"),
        );
        for v in &config.volumes {
            std::fs::create_dir_all(&v.backing).expect("backing dir");
        }
        let volumes = config
            .volumes
            .iter()
            .map(|v| {
                std::fs::create_dir_all(&v.backing).expect("backing dir");
                umbra_fs::Volume::open(store.clone(), &v.name, &v.backing).expect("volume")
            })
            .collect::<Vec<_>>();
        let browser = Browser::new(store.clone(), volumes.clone(), Vec::new()).expect("browser");
        let coordinator = Arc::new(Coordinator::new(umbra_coordinator::Options::default()));
        let cow = umbra_fs::CowProvider::new(store.clone(), volumes);
        let sets = Sets::new(store.clone(), vec![Arc::new(cow)]);
        let service = Service::new(sets, browser, config, coordinator);
        Fixture {
            _dir: dir,
            store,
            service,
        }
    }

    /// A set committed straight through the store (the fs provider is not
    /// needed to test what the service checks before it).
    fn commit(store: &Store, name: &str, label: Option<&str>) -> SetInfo {
        let volumes = store
            .volumes()
            .expect("volumes")
            .iter()
            .map(|v| v.id)
            .collect();
        store
            .commit_set(&NewSet {
                name: name.into(),
                label: label.map(Into::into),
                origin: umbra_store::SetOrigin::Manual,
                created: Timestamp {
                    secs: 1_795_596_170,
                    nanos: 0,
                },
                volumes,
            })
            .expect("commit")
    }

    #[test]
    fn list_shows_sets_as_clients_see_them() {
        let f = fixture();
        assert!(f.service.list().expect("list").is_empty());
        let set = commit(&f.store, "2026-11-25T084250Z", Some("nightly"));
        let sets = f.service.list().expect("list");
        assert_eq!(
            sets,
            vec![SetView {
                id: set.id,
                name: "2026-11-25T084250Z".into(),
                created: "2026-11-25T08:42:50Z".into(),
                label: Some("nightly".into()),
                origin: "manual".into(),
                volumes: vec!["data".into(), "logs".into()],
                writers: vec![],
                cluster_id: None,
                cluster_members: None,
            }]
        );
    }

    #[test]
    fn create_with_an_unknown_volume_creates_nothing() {
        let f = fixture();
        let err = f
            .service
            .create(&["data".into(), "nope".into()], None)
            .expect_err("unknown volume");
        assert_eq!(err.to_string(), "no volume named \"nope\"");
        assert!(f.store.sets().expect("sets").is_empty());
    }

    #[test]
    fn delete_checks_every_set_before_deleting_any() {
        let f = fixture();
        let set = commit(&f.store, "2026-11-25T084250Z", None);
        let err = f
            .service
            .delete(&[set.name.clone(), "x".into()], Selectors::default())
            .expect_err("unknown set");
        assert_eq!(err.to_string(), "no shadow copy set named \"x\"");
        assert_eq!(f.store.sets().expect("sets").len(), 1);
        assert!(matches!(
            f.service.delete(&[], Selectors::default()),
            Err(ServiceError::NothingToDelete)
        ));
    }

    #[test]
    fn status_reports_volumes_epochs_and_sets() {
        let f = fixture();
        commit(&f.store, "first", None);
        let status = f.service.status().expect("status");
        assert_eq!(status.sets, 1);
        assert_eq!(status.volumes.len(), 2);
        assert_eq!(status.volumes[0].name, "data");
        assert_eq!(status.volumes[0].epoch, 2);
        assert_eq!(status.volumes[0].backing, status.volumes[0].mount);
        assert!(Path::new(&status.volumes[1].mount).ends_with("m/logs"));
        assert!(Path::new(&status.socket).ends_with("state/control.sock"));
        assert_eq!(status.diff_area.chunks, 0);
    }
}
