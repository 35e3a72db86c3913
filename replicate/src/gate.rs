//! A backend in front of the repository's that refuses to write a
//! snapshot file while the run that is saving it has counted a failure:
//! rustic skips what it cannot read with a warning and saves the snapshot
//! anyway, and a snapshot written and deleted afterwards would survive a
//! crash in between. With the gate, a snapshot that would claim more than
//! it holds is never written at all.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rustic_core::{ErrorKind, FileType, Id, ReadBackend, RusticError, RusticResult, WriteBackend};

use crate::source::Counters;

/// The run whose counters decide, if one is under way.
#[derive(Default)]
pub struct Gate {
    run: Mutex<Option<Arc<Counters>>>,
}

impl Gate {
    pub fn watch(&self, counters: Option<Arc<Counters>>) {
        *self.run.lock().unwrap_or_else(|p| p.into_inner()) = counters;
    }

    fn failures(&self) -> u64 {
        self.run
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |c| c.errors.load(Ordering::Relaxed))
    }
}

pub struct GatedBackend {
    pub inner: Arc<dyn WriteBackend>,
    pub gate: Arc<Gate>,
}

impl ReadBackend for GatedBackend {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        self.inner.list_with_size(tpe)
    }

    fn list(&self, tpe: FileType) -> RusticResult<Vec<Id>> {
        self.inner.list(tpe)
    }

    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        self.inner.read_full(tpe, id)
    }

    fn read_partial(
        &self,
        tpe: FileType,
        id: &Id,
        cacheable: bool,
        offset: u32,
        length: u32,
    ) -> RusticResult<Bytes> {
        self.inner.read_partial(tpe, id, cacheable, offset, length)
    }

    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        self.inner.warmup_path(tpe, id)
    }

    fn needs_warm_up(&self) -> bool {
        self.inner.needs_warm_up()
    }

    fn warm_up(&self, tpe: FileType, id: &Id) -> RusticResult<()> {
        self.inner.warm_up(tpe, id)
    }
}

impl WriteBackend for GatedBackend {
    fn create(&self) -> RusticResult<()> {
        self.inner.create()
    }

    fn write_bytes(&self, tpe: FileType, id: &Id, cacheable: bool, buf: Bytes) -> RusticResult<()> {
        if tpe == FileType::Snapshot {
            let failures = self.gate.failures();
            if failures > 0 {
                return Err(RusticError::new(
                    ErrorKind::InputOutput,
                    "{failures} entries could not be read: the snapshot is not written",
                )
                .attach_context("failures", failures.to_string()));
            }
        }
        self.inner.write_bytes(tpe, id, cacheable, buf)
    }

    fn remove(&self, tpe: FileType, id: &Id, cacheable: bool) -> RusticResult<()> {
        self.inner.remove(tpe, id, cacheable)
    }
}
