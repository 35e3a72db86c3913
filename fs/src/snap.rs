//! The shadow copy browser: `/snapshots/<set>/<volume>/...`, read-only.

use std::sync::Arc;

use umbra_store::Store;

use crate::{Result, Volume};

pub struct Browser {
    _store: Arc<Store>,
}

impl Browser {
    pub fn new(store: Arc<Store>, _volumes: Vec<Arc<Volume>>) -> Result<Arc<Browser>> {
        Ok(Arc::new(Browser { _store: store }))
    }

    /// Re-reads the list of sets after a create or delete, and tells the
    /// kernel to forget what it cached of the ones that changed.
    pub fn refresh(&self) -> Result<()> {
        todo!()
    }
}
