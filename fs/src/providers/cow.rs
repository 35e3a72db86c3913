//! The copy-on-write provider over the live volumes. Its capture is
//! `commit_held` run on a thread of its own so
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
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant as Clock};

use umbra_coordinator::ProviderError;
use umbra_store::{Epoch, SetId, SetInfo, Store, VolumeId};

use super::{Capture, ProviderKind, Retiring, SetCommit, VolumeProvider, VolumeRef};
use crate::flusher;
use crate::shadow::{commit_held, reclaim};
use crate::{Changes, FsError, Instant, Result, Version, Volume};

pub struct CowProvider {
    store: Arc<Store>,
    volumes: Vec<Arc<Volume>>,
    /// Where each volume is mounted live, by name: flushed through there.
    mounts: HashMap<String, PathBuf>,
    flush_timeout: Duration,
}

impl CowProvider {
    /// The provider of `volumes`' copies.
    pub fn new(store: Arc<Store>, volumes: Vec<Arc<Volume>>) -> CowProvider {
        CowProvider {
            store,
            volumes,
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

    fn picked(&self, ids: &[VolumeId]) -> Result<Vec<Arc<Volume>>, ProviderError> {
        ids.iter()
            .map(|id| {
                self.volumes
                    .iter()
                    .find(|v| v.id() == *id)
                    .cloned()
                    .ok_or_else(|| {
                        ProviderError::Failed(format!("no copy-on-write volume #{}", id.0))
                    })
            })
            .collect()
    }

    fn volume(&self, id: VolumeId) -> Result<&Arc<Volume>> {
        self.volumes
            .iter()
            .find(|v| v.id() == id)
            .ok_or_else(|| FsError::Refused(format!("no copy-on-write volume #{}", id.0)))
    }

    /// Whether `set` has a volume of this provider.
    fn holds_any(&self, set: &SetInfo) -> bool {
        set.volumes
            .iter()
            .any(|sv| self.volumes.iter().any(|v| v.id() == sv.volume))
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

/// The copy is the catalog's closed epoch: nothing to keep or undo apart
/// from the row, which the set's maker owns.
struct Closed {
    hold: Duration,
}

impl Capture for Closed {
    fn hold(&self) -> Duration {
        self.hold
    }

    fn keep(self: Box<Self>, _set: &SetInfo) -> Result<()> {
        Ok(())
    }

    fn undo(self: Box<Self>) {}
}

impl VolumeProvider for CowProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Cow
    }

    fn volumes(&self) -> Vec<VolumeRef> {
        self.volumes
            .iter()
            .map(|v| VolumeRef {
                id: v.id(),
                name: v.name().to_string(),
                kind: ProviderKind::Cow,
            })
            .collect()
    }

    fn prepare(&self, ids: &[VolumeId]) -> Result<(), ProviderError> {
        let mut targets = Vec::new();
        for volume in self.picked(ids)? {
            if let Some(mount) = self.mounts.get(volume.name()) {
                targets.push((mount.clone(), volume.files_open_for_writing()));
            }
        }
        flusher::flush(targets, self.flush_timeout)
            .map_err(|e| ProviderError::Failed(e.to_string()))
    }

    fn capture(
        &self,
        ids: &[VolumeId],
        set: &Arc<SetCommit>,
        deadline: Clock,
    ) -> Result<Box<dyn Capture>, ProviderError> {
        let volumes = self.picked(ids)?;
        let race = Arc::new(Mutex::new(Race::Waiting));
        let (tx, rx) = mpsc::channel();
        let commit = set.clone();
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
                let result = commit_held(&volumes, admit, || commit.commit());
                // The coordinator may have stopped waiting: nothing to tell.
                let _ = tx.send(result);
            })
            .map_err(|e| ProviderError::Failed(format!("starting the commit: {e}")))?;
        let wait = deadline.saturating_duration_since(Clock::now());
        let result = match rx.recv_timeout(wait) {
            Ok(result) => result,
            Err(_) => {
                let mut state = race.lock().unwrap_or_else(|p| p.into_inner());
                if *state == Race::Waiting {
                    *state = Race::CalledOff;
                    return Err(ProviderError::HoldTimeout(
                        deadline.saturating_duration_since(Clock::now()),
                    ));
                }
                drop(state);
                // The commit has begun: it is one transaction; wait for it.
                rx.recv()
                    .map_err(|_| ProviderError::Failed("the commit thread died".into()))?
            }
        };
        match result {
            Ok(Some((_, hold))) => Ok(Box::new(Closed { hold })),
            Ok(None) => Err(ProviderError::Failed("the commit was called off".into())),
            Err(e) => Err(ProviderError::Failed(e.to_string())),
        }
    }

    fn retire<'a>(&'a self, set: &SetInfo) -> Vec<Box<dyn Retiring + 'a>> {
        self.volumes
            .iter()
            .filter(|v| set.volumes.iter().any(|sv| sv.volume == v.id()))
            .map(|v| Box::new(v.retiring(set.id)) as Box<dyn Retiring + 'a>)
            .collect()
    }

    fn reclaim(&self, set: &SetInfo) -> Result<()> {
        if !self.holds_any(set) {
            return Ok(());
        }
        reclaim(&self.store, &self.volumes, set)
    }

    fn sweep(&self, _sets: &[SetInfo]) -> Result<()> {
        // Opening the store dropped interrupted sets and each volume freed
        // the aside inodes no set needs (Volume::open).
        Ok(())
    }

    fn changes(
        &self,
        volume: VolumeId,
        from: Instant,
        to: Instant,
        under: Option<&Path>,
    ) -> Result<Changes> {
        crate::changes(self.volume(volume)?, from, to, under)
    }

    fn versions(
        &self,
        volume: VolumeId,
        sets: &[(SetId, Epoch)],
        path: &Path,
    ) -> Result<Vec<Version>> {
        crate::versions(self.volume(volume)?, sets, path)
    }
}

#[cfg(test)]
mod tests {
    use umbra_coordinator::{Provider, SetPlan, SetWriter};
    use umbra_store::{SetOrigin, StoreOptions, Timestamp};

    use super::*;
    use crate::Sets;

    fn plan(name: &str) -> SetPlan {
        SetPlan {
            id: "guid".into(),
            name: name.into(),
            label: None,
            volumes: vec!["data".into()],
        }
    }

    fn provider(dir: &std::path::Path) -> (Arc<Store>, Arc<Volume>, crate::SetMaker) {
        let store =
            Arc::new(Store::open(&dir.join("store"), StoreOptions::default()).expect("store"));
        std::fs::create_dir(dir.join("data")).expect("mkdir");
        let volume = Volume::open(store.clone(), "data", &dir.join("data")).expect("volume");
        let created = Timestamp { secs: 1, nanos: 0 };
        let cow = CowProvider::new(store.clone(), vec![volume.clone()]);
        let sets = Sets::new(store.clone(), vec![Arc::new(cow)]);
        (store, volume, sets.maker(created, SetOrigin::Manual))
    }

    #[test]
    fn commits_records_and_discards() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _volume, p) = provider(dir.path());
        p.prepare(&plan("one")).expect("prepare");
        let set = p
            .hold_and_commit(&plan("one"), Clock::now() + Duration::from_secs(5))
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
            .hold_and_commit(&plan("late"), Clock::now() + Duration::from_millis(100))
            .expect_err("deadline");
        assert!(matches!(err, ProviderError::HoldTimeout(_)), "{err}");
        go.send(()).expect("end the mutation");
        holder.join().expect("joins");
        // The called-off commit left nothing, and the gate is free again.
        thread::sleep(Duration::from_millis(50));
        assert!(store.sets().expect("sets").is_empty());
        drop(volume.cow.begin(&[]));
        p.hold_and_commit(&plan("next"), Clock::now() + Duration::from_secs(5))
            .expect("commits");
        assert_eq!(store.sets().expect("sets").len(), 1);
    }
}
