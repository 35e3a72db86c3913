//! The restore sequence: PreRestore to every writer of the volumes a
//! restore writes into, the requester's copy, then PostRestore saying
//! whether the copy worked. A required writer's failure at PreRestore
//! cancels the restore before anything is written (the writers that did
//! prepare hear PostRestore with failure, so that they resume). A restore
//! holds the coordinator as a set does: no set is made while files are
//! put back, and no restore starts while a set is being made. A requester
//! that goes away mid-restore is reported to the writers as a failed
//! restore. This file never touches a volume: the copy is the requester's.

use std::sync::MutexGuard;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Coordinator, Part, SequenceError, SetWriter, TryLockError, broadcast, guid};
use crate::protocol::{Event, EventMessage, Failure};

/// What a requester restores from: a set (by name) into some volumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreRequest {
    /// The set whose files are put back.
    pub set_name: String,
    /// The volumes written into; their writers take part.
    pub volumes: Vec<String>,
}

/// A restore whose writers have all prepared: the requester copies, then
/// reports with [`Restoring::complete`]. Dropping it without that tells
/// the writers the restore failed.
pub struct Restoring<'a> {
    coordinator: &'a Coordinator,
    parts: Vec<Part>,
    message: EventMessage,
    started: Instant,
    done: bool,
    _running: MutexGuard<'a, ()>,
}

impl Coordinator {
    /// Sends PreRestore to every writer of `request.volumes` and waits for
    /// their answers. A required writer's failure ends the restore here:
    /// nothing may be written, and the error names the writer.
    pub fn restore(&self, request: RestoreRequest) -> Result<Restoring<'_>, SequenceError> {
        let running = match self.running.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(self.busy()),
        };
        self.restoring.store(true, Ordering::Release);
        let mut parts = self.take_parts(&request.volumes);
        for part in parts.iter_mut() {
            part.identified = true;
        }
        let message = EventMessage {
            event: Event::PreRestore,
            set_id: guid(),
            set_name: request.set_name,
            volumes: request.volumes,
            backup_succeeded: None,
        };
        tracing::info!(set = %message.set_name, restore_id = %message.set_id, "starting a restore");
        broadcast(&mut parts, &message);
        let mut restoring = Restoring {
            coordinator: self,
            parts,
            message,
            started: Instant::now(),
            done: false,
            _running: running,
        };
        if let Some((writer, failure)) = restoring.refusal() {
            tracing::warn!(%writer, "a required writer refused the restore");
            restoring.finish(false);
            return Err(SequenceError::RestoreRefused { writer, failure });
        }
        Ok(restoring)
    }
}

impl Restoring<'_> {
    /// The id the writers saw for this restore.
    pub fn restore_id(&self) -> &str {
        &self.message.set_id
    }

    /// Sends PostRestore with whether the copy worked; the writers that
    /// took part, and how they fared.
    pub fn complete(mut self, succeeded: bool) -> Vec<SetWriter> {
        self.finish(succeeded)
    }

    /// The first required writer that failed PreRestore.
    fn refusal(&self) -> Option<(String, Failure)> {
        self.parts.iter().find_map(|p| match &p.failed {
            Some((Event::PreRestore, failure)) if p.slot.reg.required => {
                Some((p.slot.reg.name.clone(), failure.clone()))
            }
            _ => None,
        })
    }

    fn finish(&mut self, succeeded: bool) -> Vec<SetWriter> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        let message = EventMessage {
            event: Event::PostRestore,
            backup_succeeded: Some(succeeded),
            ..self.message.clone()
        };
        broadcast(&mut self.parts, &message);
        tracing::info!(
            set = %message.set_name,
            restore_id = %message.set_id,
            succeeded,
            took = ?self.started.elapsed(),
            "restore finished"
        );
        let writers = self.parts.iter().map(Part::outcome).collect();
        self.coordinator.put_back(std::mem::take(&mut self.parts));
        self.coordinator.restoring.store(false, Ordering::Release);
        writers
    }
}

impl Drop for Restoring<'_> {
    fn drop(&mut self) {
        if !self.done {
            tracing::warn!(set = %self.message.set_name, "the requester went away before the restore completed");
            self.finish(false);
        }
    }
}
