//! Taking and deleting shadow copy sets: the copy-on-write provider's
//! commit, under every volume's epoch gate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use umbra_store::{NewSet, SetId, SetInfo, SetOrigin, Store, Timestamp, VolumeId};

use crate::{Result, Volume};

/// Commits a set of `volumes` at one instant: waits for the mutations in
/// flight, closes every volume's epoch in one catalog transaction, and lets
/// mutations go on. `name` is the wanted name (a suffix is added if taken).
/// Nothing is walked and nothing is copied: the cost does not depend on the
/// number of files or bytes.
pub fn commit_set(
    store: &Store,
    volumes: &[Arc<Volume>],
    name: String,
    label: Option<String>,
    created: Timestamp,
) -> Result<SetInfo> {
    let mut new = NewSet {
        name,
        label,
        origin: SetOrigin::Manual,
        created,
        volumes: Vec::new(),
    };
    let commit = |ids: &[VolumeId]| {
        new.volumes = ids.to_vec();
        Ok(store.commit_set(&new)?)
    };
    match commit_held_ids(volumes, || true, commit)? {
        Some((set, _)) => Ok(set),
        None => Err(crate::FsError::from_errno(libc::EAGAIN)),
    }
}

/// Holds every mutation of `volumes`, asks `admit` once every gate is held
/// whether to go on (`false` releases the gates and commits nothing: the
/// provider's deadline passed while mutations in flight were awaited), then
/// `commit`s the set's row and advances each volume to the epoch after it.
/// Returns the set and how long mutations were held.
pub(crate) fn commit_held(
    volumes: &[Arc<Volume>],
    admit: impl FnOnce() -> bool,
    commit: impl FnOnce() -> Result<SetInfo>,
) -> Result<Option<(SetInfo, Duration)>> {
    commit_held_ids(volumes, admit, |_| commit())
}

fn commit_held_ids(
    volumes: &[Arc<Volume>],
    admit: impl FnOnce() -> bool,
    commit: impl FnOnce(&[VolumeId]) -> Result<SetInfo>,
) -> Result<Option<(SetInfo, Duration)>> {
    let mut ordered: Vec<&Arc<Volume>> = volumes.iter().collect();
    ordered.sort_by_key(|v| v.id());
    ordered.dedup_by_key(|v| v.id());
    // Gates are taken in volume-id order, so two commits cannot deadlock.
    let held = Instant::now();
    let mut gates: Vec<_> = ordered.iter().map(|v| v.cow.freeze()).collect();
    if !admit() {
        return Ok(None);
    }
    let ids: Vec<VolumeId> = ordered.iter().map(|v| v.id()).collect();
    let set = commit(&ids)?;
    for (vol, gate) in ordered.iter().zip(gates.iter_mut()) {
        if let Some(sv) = set.volumes.iter().find(|sv| sv.volume == vol.id()) {
            vol.cow.advance(gate, sv.epoch);
        }
    }
    drop(gates);
    Ok(Some((set, held.elapsed())))
}

/// Deletes a set and everything no other set needs. Snapshot reads of the
/// set's volumes wait only while the set itself goes: what no remaining set
/// needs is then collected in short steps, which neither they nor live
/// writes resolve to or wait for long.
pub fn delete_set(store: &Store, volumes: &[Arc<Volume>], set: SetId) -> Result<()> {
    let Some(info) = store.sets()?.into_iter().find(|s| s.id == set) else {
        return Ok(());
    };
    {
        let _retiring: Vec<_> = volumes
            .iter()
            .filter(|v| info.volumes.iter().any(|sv| sv.volume == v.id()))
            .map(|v| v.retiring(set))
            .collect();
        store.remove_set(set)?;
    }
    reclaim(store, volumes, &info)
}

/// After `set`'s row is gone: collects the records and chunks no set needs,
/// frees the moved-aside inodes of its volumes no set needs, and gives pack
/// space back.
pub(crate) fn reclaim(store: &Store, volumes: &[Arc<Volume>], set: &SetInfo) -> Result<()> {
    store.collect()?;
    let remaining = store.sets()?;
    for vol in volumes
        .iter()
        .filter(|v| set.volumes.iter().any(|sv| sv.volume == v.id()))
    {
        let any = remaining
            .iter()
            .any(|s| s.volumes.iter().any(|sv| sv.volume == vol.id()));
        vol.cow.set_any_set(any);
        vol.free_unreachable_aside()?;
    }
    // Give the freed pack space back, a batch at a time. The set is gone
    // whatever happens here; a disk too full to copy into waits for later.
    if let Err(e) = store.compact() {
        tracing::warn!("reclaiming pack space after a deletion: {e}");
    }
    Ok(())
}
