//! A live volume: its backing directory, opened before anything is mounted
//! over it, its place in the store, and its copy-on-write state.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use umbra_store::{Epoch, Store, VolumeId};

use crate::Result;

pub struct Volume {
    id: VolumeId,
    name: String,
    backing_path: PathBuf,
    pub(crate) store: Arc<Store>,
}

impl Volume {
    /// Opens the backing directory of volume `name` and registers the volume
    /// in the store. Call it before mounting over an in-place backing.
    pub fn open(store: Arc<Store>, name: &str, backing: &Path) -> Result<Arc<Volume>> {
        let info = store.ensure_volume(name)?;
        Ok(Arc::new(Volume {
            id: info.id,
            name: name.to_string(),
            backing_path: backing.to_path_buf(),
            store,
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> VolumeId {
        self.id
    }

    pub fn backing_path(&self) -> &Path {
        &self.backing_path
    }

    /// The current (open) epoch.
    pub fn epoch(&self) -> Epoch {
        todo!()
    }
}
