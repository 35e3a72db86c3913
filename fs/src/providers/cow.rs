//! The copy-on-write provider: the coordinator's `Provider` over the live
//! volumes. Hold-and-commit is `commit_set` run on a thread of its own so
//! that the coordinator's deadline holds even while mutations in flight are
//! awaited: past it, the commit is called off (the gates are released
//! untouched as soon as they are had) and the set is aborted. It never
//! talks to a writer.
//!
//! Flushing (`prepare`, after the writers froze): every file the live
//! mounts have open for writing (a mapping keeps its file open) is flushed
//! through its mount by `flusher`, so that the kernel's writeback cache
//! has handed the daemon every write() that returned, with its size and
//! mtime, before the hold.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use umbra_coordinator::{Committed, Provider, ProviderError, SetPlan, SetWriter};
use umbra_store::{NewSet, SetId, SetOrigin, SetWriterRecord, Store, Timestamp};

use crate::Volume;
use crate::flusher;
use crate::shadow::{Pending, commit_held, delete_set};

pub struct CowProvider {
    store: Arc<Store>,
    volumes: Vec<Arc<Volume>>,
    created: Timestamp,
    origin: SetOrigin,
    /// Where each volume is mounted live, by name: flushed through there.
    mounts: HashMap<String, PathBuf>,
    flush_timeout: Duration,
}

impl CowProvider {
    /// The provider of sets over `volumes`, stamped `created`.
    pub fn new(store: Arc<Store>, volumes: Vec<Arc<Volume>>, created: Timestamp) -> CowProvider {
        CowProvider {
            store,
            volumes,
            created,
            origin: SetOrigin::Manual,
            mounts: HashMap::new(),
            flush_timeout: Duration::from_secs(10),
        }
    }

    /// Flushes the files open for writing through `mounts` (volume name →
    /// live mountpoint) before each hold, within `timeout`.
    pub fn flushing_through(mut self, mounts: HashMap<String, PathBuf>, timeout: Duration) -> Self {
        self.mounts = mounts;
        self.flush_timeout = timeout;
        self
    }

    /// Records who asked for the sets (a schedule, a backup); manual
    /// unless told.
    pub fn asked_by(mut self, origin: SetOrigin) -> Self {
        self.origin = origin;
        self
    }

    fn picked(&self, plan: &SetPlan) -> Result<Vec<Arc<Volume>>, ProviderError> {
        plan.volumes
            .iter()
            .map(|name| {
                self.volumes
                    .iter()
                    .find(|v| v.name() == name)
                    .cloned()
                    .ok_or_else(|| ProviderError::Failed(format!("no volume named {name:?}")))
            })
            .collect()
    }
}

/// Who decides first: the commit thread (it has the gates) or the
/// coordinator (its deadline passed).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Race {
    Waiting,
    Committing,
    CalledOff,
}

impl Provider for CowProvider {
    fn prepare(&self, plan: &SetPlan) -> Result<(), ProviderError> {
        let mut targets = Vec::new();
        for volume in self.picked(plan)? {
            if let Some(mount) = self.mounts.get(volume.name()) {
                targets.push((mount.clone(), volume.files_open_for_writing()));
            }
        }
        flusher::flush(targets, self.flush_timeout)
            .map_err(|e| ProviderError::Failed(e.to_string()))
    }

    fn hold_and_commit(
        &self,
        plan: &SetPlan,
        deadline: Instant,
    ) -> Result<Committed, ProviderError> {
        let volumes = self.picked(plan)?;
        let race = Arc::new(Mutex::new(Race::Waiting));
        let (tx, rx) = mpsc::channel();
        let store = self.store.clone();
        let (name, label, created) = (plan.name.clone(), plan.label.clone(), self.created);
        let origin = self.origin;
        let theirs = race.clone();
        thread::Builder::new()
            .name("commit".into())
            .spawn(move || {
                let admit = || {
                    let mut race = theirs.lock().unwrap_or_else(|p| p.into_inner());
                    if *race == Race::Waiting {
                        *race = Race::Committing;
                        true
                    } else {
                        false
                    }
                };
                let new = NewSet {
                    name,
                    label,
                    origin,
                    created,
                    volumes: Vec::new(),
                };
                let result = commit_held(&store, &volumes, new, Pending::UntilRecorded, admit);
                // The coordinator may have stopped waiting: nothing to tell.
                let _ = tx.send(result);
            })
            .map_err(|e| ProviderError::Failed(format!("starting the commit: {e}")))?;
        let wait = deadline.saturating_duration_since(Instant::now());
        let result = match rx.recv_timeout(wait) {
            Ok(result) => result,
            Err(_) => {
                let mut state = race.lock().unwrap_or_else(|p| p.into_inner());
                if *state == Race::Waiting {
                    *state = Race::CalledOff;
                    return Err(ProviderError::HoldTimeout(
                        deadline.saturating_duration_since(Instant::now()),
                    ));
                }
                drop(state);
                // The commit has begun: it is one transaction; wait for it.
                rx.recv()
                    .map_err(|_| ProviderError::Failed("the commit thread died".into()))?
            }
        };
        match result {
            Ok(Some((set, hold))) => Ok(Committed {
                id: set.id.0,
                name: set.name,
                hold,
            }),
            Ok(None) => Err(ProviderError::Failed("the commit was called off".into())),
            Err(e) => Err(ProviderError::Failed(e.to_string())),
        }
    }

    fn record(&self, set: &Committed, writers: &[SetWriter]) -> Result<(), ProviderError> {
        let records: Vec<SetWriterRecord> = writers
            .iter()
            .map(|w| SetWriterRecord {
                name: w.name.clone(),
                required: w.required,
                status: w.status.clone(),
                error: w.error.clone(),
                components: serde_json::to_string(&w.components).unwrap_or_else(|_| "[]".into()),
            })
            .collect();
        self.store
            .record_set_writers(SetId(set.id), &records)
            .map_err(|e| ProviderError::Failed(e.to_string()))
    }

    fn discard(&self, set: &Committed) -> Result<(), ProviderError> {
        delete_set(&self.store, &self.volumes, SetId(set.id))
            .map_err(|e| ProviderError::Failed(e.to_string()))
    }

    fn release(&self, _plan: &SetPlan) {}
}

#[cfg(test)]
mod tests {
    use umbra_store::StoreOptions;

    use super::*;

    fn plan(name: &str) -> SetPlan {
        SetPlan {
            id: "guid".into(),
            name: name.into(),
            label: None,
            volumes: vec!["data".into()],
        }
    }

    fn provider(dir: &std::path::Path) -> (Arc<Store>, Arc<Volume>, CowProvider) {
        let store =
            Arc::new(Store::open(&dir.join("store"), StoreOptions::default()).expect("store"));
        std::fs::create_dir(dir.join("data")).expect("mkdir");
        let volume = Volume::open(store.clone(), "data", &dir.join("data")).expect("volume");
        let created = Timestamp { secs: 1, nanos: 0 };
        let p = CowProvider::new(store.clone(), vec![volume.clone()], created);
        (store, volume, p)
    }

    #[test]
    fn commits_records_and_discards() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _volume, p) = provider(dir.path());
        p.prepare(&plan("one")).expect("prepare");
        let set = p
            .hold_and_commit(&plan("one"), Instant::now() + Duration::from_secs(5))
            .expect("commit");
        assert_eq!(set.name, "one");
        let writer = SetWriter {
            name: "w".into(),
            required: true,
            status: "ok".into(),
            error: None,
            components: vec![],
        };
        p.record(&set, &[writer]).expect("record");
        assert_eq!(store.set_writers().expect("writers").len(), 1);
        p.discard(&set).expect("discard");
        assert!(store.sets().expect("sets").is_empty());
        assert!(p.prepare(&plan("x")).is_ok());
        let mut bad = plan("x");
        bad.volumes = vec!["nope".into()];
        assert!(p.prepare(&bad).is_err());
    }

    #[test]
    fn a_mutation_in_flight_past_the_deadline_calls_the_commit_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, volume, p) = provider(dir.path());
        let (go, hold) = mpsc::channel::<()>();
        let (held, wait_held) = mpsc::channel::<()>();
        let holder = {
            let volume = volume.clone();
            thread::spawn(move || {
                let _mutation = volume.cow.begin(&[]);
                let _ = held.send(());
                let _ = hold.recv();
            })
        };
        wait_held.recv().expect("mutation begun");
        let err = p
            .hold_and_commit(&plan("late"), Instant::now() + Duration::from_millis(100))
            .expect_err("deadline");
        assert!(matches!(err, ProviderError::HoldTimeout(_)), "{err}");
        go.send(()).expect("end the mutation");
        holder.join().expect("joins");
        // The called-off commit left nothing, and the gate is free again.
        thread::sleep(Duration::from_millis(50));
        assert!(store.sets().expect("sets").is_empty());
        drop(volume.cow.begin(&[]));
        p.hold_and_commit(&plan("next"), Instant::now() + Duration::from_secs(5))
            .expect("commits");
        assert_eq!(store.sets().expect("sets").len(), 1);
    }
}
