//! Sets across providers: the one place a set is made, deleted, swept at
//! start, diffed and versioned, whatever provider serves each volume.
//! `SetMaker` is the coordinator's provider for one set: it runs every
//! provider's capture side by side inside the writers' freeze, commits the
//! one catalog row, and undoes everything if any part fails, so that a set
//! is whole on every volume or absent. It never talks to a writer.

use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant as Clock};

use umbra_coordinator::{Committed, Provider, ProviderError, ProviderHold, SetPlan, SetWriter};
use umbra_store::{
    Epoch, NewSet, SetId, SetInfo, SetOrigin, SetWriterRecord, Store, Timestamp, VolumeId,
};

use super::{Capture, SetCommit, VolumeProvider, VolumeRef};
use crate::{Changes, FsError, Instant, Result, Version};

/// Every provider of the daemon, over one catalog.
pub struct Sets {
    store: Arc<Store>,
    providers: Vec<Arc<dyn VolumeProvider>>,
}

impl Sets {
    pub fn new(store: Arc<Store>, providers: Vec<Arc<dyn VolumeProvider>>) -> Arc<Sets> {
        Arc::new(Sets { store, providers })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Every volume, in the providers' order.
    pub fn volumes(&self) -> Vec<VolumeRef> {
        self.providers.iter().flat_map(|p| p.volumes()).collect()
    }

    pub fn volume(&self, name: &str) -> Option<VolumeRef> {
        self.volumes().into_iter().find(|v| v.name == name)
    }

    fn provider_of(&self, volume: VolumeId) -> Result<&Arc<dyn VolumeProvider>> {
        self.providers
            .iter()
            .find(|p| p.volumes().iter().any(|v| v.id == volume))
            .ok_or_else(|| FsError::Refused(format!("no provider serves volume #{}", volume.0)))
    }

    /// The providers that serve a volume of `set`.
    fn involved(&self, set: &SetInfo) -> Vec<&Arc<dyn VolumeProvider>> {
        self.providers
            .iter()
            .filter(|p| {
                let ours = p.volumes();
                set.volumes
                    .iter()
                    .any(|sv| ours.iter().any(|v| v.id == sv.volume))
            })
            .collect()
    }

    /// At start: every provider frees the copies of sets the catalog lacks.
    pub fn sweep(&self) -> Result<()> {
        let sets = self.store.sets()?;
        for provider in &self.providers {
            provider.sweep(&sets)?;
        }
        Ok(())
    }

    /// Deletes a set on every volume: its row first (while each provider
    /// keeps readers of the set out), then what only it needed. A crash
    /// between the two leaves copies no set owns, which `sweep` frees.
    pub fn delete(&self, set: SetId) -> Result<()> {
        let Some(info) = self.store.sets()?.into_iter().find(|s| s.id == set) else {
            return Ok(());
        };
        let involved = self.involved(&info);
        {
            let _retiring: Vec<_> = involved.iter().flat_map(|p| p.retire(&info)).collect();
            self.store.remove_set(set)?;
        }
        let mut first_error = None;
        for provider in involved {
            if let Err(e) = provider.reclaim(&info) {
                tracing::warn!(set = %info.name, provider = provider.kind().as_str(), "freeing a deleted set's copies: {e}");
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub fn changes(
        &self,
        volume: VolumeId,
        from: Instant,
        to: Instant,
        under: Option<&Path>,
    ) -> Result<Changes> {
        self.provider_of(volume)?.changes(volume, from, to, under)
    }

    pub fn versions(
        &self,
        volume: VolumeId,
        sets: &[(SetId, Epoch)],
        path: &Path,
    ) -> Result<Vec<Version>> {
        self.provider_of(volume)?.versions(volume, sets, path)
    }

    /// The coordinator's provider for one set stamped `created`, asked for
    /// by `origin`.
    pub fn maker(self: &Arc<Self>, created: Timestamp, origin: SetOrigin) -> SetMaker {
        SetMaker {
            sets: self.clone(),
            created,
            origin,
        }
    }
}

/// Makes one set through every provider its volumes need.
pub struct SetMaker {
    sets: Arc<Sets>,
    created: Timestamp,
    origin: SetOrigin,
}

type Group<'a> = (&'a Arc<dyn VolumeProvider>, Vec<VolumeRef>);

impl SetMaker {
    /// The plan's volumes, grouped by provider.
    fn groups(&self, plan: &SetPlan) -> Result<Vec<Group<'_>>, ProviderError> {
        let mut groups: Vec<Group<'_>> = Vec::new();
        for name in &plan.volumes {
            let (provider, volume) = self
                .sets
                .providers
                .iter()
                .find_map(|p| {
                    p.volumes()
                        .into_iter()
                        .find(|v| &v.name == name)
                        .map(|v| (p, v))
                })
                .ok_or_else(|| ProviderError::Failed(format!("no volume named {name:?}")))?;
            match groups.iter_mut().find(|(p, _)| Arc::ptr_eq(p, provider)) {
                Some((_, volumes)) => volumes.push(volume),
                None => groups.push((provider, vec![volume])),
            }
        }
        Ok(groups)
    }

    /// Deletes a row committed for a set that then failed.
    fn abandon(&self, commit: &SetCommit) {
        if let Some(set) = commit.committed()
            && let Err(e) = self.sets.delete(set.id)
        {
            tracing::error!(set = %set.name, "removing a set that failed while it was made: {e}");
        }
    }
}

fn ids(volumes: &[VolumeRef]) -> Vec<VolumeId> {
    volumes.iter().map(|v| v.id).collect()
}

fn failed(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Failed(e.to_string())
}

impl Provider for SetMaker {
    fn prepare(&self, plan: &SetPlan) -> Result<(), ProviderError> {
        for (provider, volumes) in self.groups(plan)? {
            provider.prepare(&ids(&volumes))?;
        }
        Ok(())
    }

    fn hold_and_commit(&self, plan: &SetPlan, deadline: Clock) -> Result<Committed, ProviderError> {
        let groups = self.groups(plan)?;
        let new = NewSet {
            name: plan.name.clone(),
            label: plan.label.clone(),
            origin: self.origin,
            created: self.created,
            volumes: groups.iter().flat_map(|(_, v)| ids(v)).collect(),
        };
        let commit = Arc::new(SetCommit::new(
            self.sets.store.clone(),
            new,
            plan.id.clone(),
        ));
        // Side by side: the set's hold is its slowest provider's.
        let results: Vec<Result<Box<dyn Capture>, ProviderError>> = thread::scope(|scope| {
            let running: Vec<_> = groups
                .iter()
                .map(|(provider, volumes)| {
                    let commit = &commit;
                    scope.spawn(move || provider.capture(&ids(volumes), commit, deadline))
                })
                .collect();
            running
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err(failed("a provider's capture panicked")))
                })
                .collect()
        });
        let mut captures = Vec::with_capacity(results.len());
        let mut error: Option<ProviderError> = None;
        for result in results {
            match result {
                Ok(capture) => captures.push(capture),
                // A timeout says more than what failed because of it.
                Err(e @ ProviderError::HoldTimeout(_)) => error = Some(e),
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        let set = match error {
            Some(e) => Err(e),
            None => commit.commit().map_err(failed),
        };
        let set = match set {
            Ok(set) => set,
            Err(e) => {
                captures.into_iter().for_each(|c| c.undo());
                self.abandon(&commit);
                return Err(e);
            }
        };
        let holds: Vec<ProviderHold> = groups
            .iter()
            .zip(&captures)
            .map(|((provider, volumes), capture)| ProviderHold {
                provider: provider.kind().as_str().to_string(),
                volumes: volumes.iter().map(|v| v.name.clone()).collect(),
                hold: capture.hold(),
            })
            .collect();
        let mut kept = Ok(());
        for capture in captures {
            if kept.is_ok() {
                kept = capture.keep(&set);
            } else {
                capture.undo();
            }
        }
        if let Err(e) = kept {
            self.abandon(&commit);
            return Err(failed(e));
        }
        Ok(Committed {
            id: set.id,
            name: set.name,
            hold: holds.iter().map(|h| h.hold).max().unwrap_or(Duration::ZERO),
            holds,
        })
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
        self.sets
            .store
            .record_set_writers(set.id, &records)
            .map_err(failed)
    }

    fn discard(&self, set: &Committed) -> Result<(), ProviderError> {
        self.sets.delete(set.id).map_err(failed)
    }

    fn release(&self, _plan: &SetPlan) {}
}
