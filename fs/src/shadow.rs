//! Taking and deleting shadow copy sets: the copy-on-write provider's
//! commit, under every volume's epoch gate.

use std::sync::Arc;

use umbra_store::{SetId, SetInfo, Store, Timestamp};

use crate::{Result, Volume};

/// Commits a set of `volumes` at one instant: waits for the mutations in
/// flight, closes every volume's epoch in one catalog transaction, and lets
/// mutations go on. `name` is the wanted name (a suffix is added if taken).
pub fn commit_set(
    _store: &Store,
    _volumes: &[Arc<Volume>],
    _name: String,
    _label: Option<String>,
    _created: Timestamp,
) -> Result<SetInfo> {
    todo!()
}

/// Deletes a set and whatever no other set needs.
pub fn delete_set(_store: &Store, _set: SetId) -> Result<()> {
    todo!()
}
