//! The coordinator: the registry of writers, their VSS states, and the
//! event sequence of one shadow copy set with its deadlines and abort rules.
//!
//! Identify → PrepareForBackup → PrepareForSnapshot → (provider: before
//! freeze) → Freeze → (provider: flush, hold and commit) → Thaw →
//! PostSnapshot → BackupComplete. Each event goes
//! to every taking-part writer at once, then every answer is awaited until
//! that writer's deadline. A writer that fails Identify drops out. A
//! required writer's failure, disconnection or missed deadline from
//! PrepareForBackup to PostSnapshot aborts the set: Abort goes to every
//! writer, the provider's hold is released, and a set already committed is
//! discarded. An optional writer (`required = false`) fails alone and the
//! set records it. A failure at BackupComplete is recorded; the set stays.
//! One set is made at a time. This file never touches a volume.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::link::{LinkError, WriterLink, after, deadline_in};
use crate::protocol::{Event, EventMessage, Failure, Registration};
use crate::provider::{Committed, Provider, ProviderError, SetPlan};
use crate::state::{SetWriter, WriterState};

/// The coordinator's deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// How long a writer may take to answer one event, unless its
    /// registration says otherwise.
    pub event_timeout: Duration,
    /// How long a writer stays frozen, from Freeze to Thaw, unless its
    /// registration says otherwise.
    pub freeze_timeout: Duration,
    /// How long the provider may hold the volumes.
    pub hold_timeout: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            event_timeout: Duration::from_secs(60),
            freeze_timeout: Duration::from_secs(60),
            hold_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("a writer named {0:?} is already registered")]
    Duplicate(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the writer went away while it registered: {0}")]
    Gone(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SequenceError {
    #[error("a shadow copy set is already being created; try again when it is done")]
    Busy,
    #[error("a restore is running; try again when it is done")]
    Restoring,
    #[error("writer {writer} failed at {event}: {failure}; the set was aborted")]
    Writer {
        writer: String,
        event: Event,
        failure: Failure,
    },
    #[error("{0}; the set was aborted")]
    Provider(ProviderError),
    #[error("writer {writer} refused the restore at pre-restore: {failure}; nothing was restored")]
    RestoreRefused { writer: String, failure: Failure },
}

/// What the requester asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetRequest {
    pub name: String,
    pub label: Option<String>,
    pub volumes: Vec<String>,
}

/// A set made through the whole sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Created {
    pub set: Committed,
    /// The snapshot set id the writers saw.
    pub set_guid: String,
    pub writers: Vec<SetWriter>,
    pub total: Duration,
}

/// A writer as `umbra writers` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WriterView {
    pub name: String,
    /// `socket` or `exec`.
    pub kind: String,
    pub state: WriterState,
    pub last_error: Option<String>,
    pub retryable: Option<bool>,
    pub volumes: Vec<String>,
    pub required: bool,
    pub connected: bool,
}

struct Status {
    state: WriterState,
    last_error: Option<Failure>,
    connected: bool,
}

struct Slot {
    reg: Registration,
    kind: &'static str,
    link: Mutex<Option<Box<dyn WriterLink>>>,
    status: Mutex<Status>,
}

impl Slot {
    fn status(&self) -> MutexGuard<'_, Status> {
        lock(&self.status)
    }

    fn set_state(&self, state: WriterState, failure: Option<Failure>) {
        let mut status = self.status();
        status.state = state;
        if failure.is_some() {
            status.last_error = failure;
        }
    }

    /// The writer went through a whole sequence without failing: as VSS's
    /// writer status, it is stable with no error, so an old failure no
    /// longer shows.
    fn came_through(&self) {
        let mut status = self.status();
        status.state = WriterState::Stable;
        status.last_error = None;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A writer taking part in the set being made.
struct Part {
    slot: Arc<Slot>,
    link: Option<Box<dyn WriterLink>>,
    /// Passed Identify: it hears Abort if the set is aborted.
    identified: bool,
    failed: Option<(Event, Failure)>,
    event_timeout: Duration,
    freeze_timeout: Duration,
}

impl Part {
    /// How this writer fared, as a set (or a restore) records it.
    fn outcome(&self) -> SetWriter {
        SetWriter {
            name: self.slot.reg.name.clone(),
            required: self.slot.reg.required,
            status: match &self.failed {
                None => "ok".into(),
                Some((event, _)) => WriterState::FailedAt(*event).to_string(),
            },
            error: self.failed.as_ref().map(|(_, f)| f.to_string()),
            components: self.slot.reg.components.clone(),
        }
    }
}

impl Part {
    fn active(&self) -> bool {
        self.identified && self.failed.is_none() && self.link.is_some()
    }

    fn fail(&mut self, event: Event, failure: Failure) {
        // The message is the writer's own text: quoted, so that a newline
        // in it cannot forge a log line.
        tracing::warn!(
            writer = %self.slot.reg.name,
            %event,
            message = ?failure.message,
            retryable = failure.retryable,
            "writer failed"
        );
        self.slot
            .set_state(WriterState::FailedAt(event), Some(failure.clone()));
        self.failed = Some((event, failure));
    }
}

pub struct Coordinator {
    options: Options,
    writers: Mutex<Vec<Arc<Slot>>>,
    running: Mutex<()>,
    /// Whether what holds `running` is a restore (for the refusal's words).
    restoring: std::sync::atomic::AtomicBool,
}

impl Coordinator {
    pub fn new(options: Options) -> Coordinator {
        Coordinator {
            options,
            writers: Mutex::new(Vec::new()),
            running: Mutex::new(()),
            restoring: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn options(&self) -> Options {
        self.options
    }

    /// Adds a writer. A name already taken by a connected writer is refused;
    /// a disconnected writer of that name is replaced.
    pub fn register(
        &self,
        reg: Registration,
        link: Box<dyn WriterLink>,
    ) -> Result<(), RegisterError> {
        self.register_then(reg, link, || Ok(()))
    }

    /// [`register`](Self::register), calling `accepted` once the writer is
    /// accepted and before any set can reach it (so that a connection is
    /// acknowledged before its first event). If `accepted` fails, the
    /// writer is not added.
    pub fn register_then(
        &self,
        reg: Registration,
        link: Box<dyn WriterLink>,
        accepted: impl FnOnce() -> Result<(), String>,
    ) -> Result<(), RegisterError> {
        let mut writers = lock(&self.writers);
        let vacancy = Self::vacancy(&reg, &writers)?;
        accepted().map_err(RegisterError::Gone)?;
        if let Some(at) = vacancy {
            writers.remove(at);
        }
        tracing::info!(writer = %reg.name, kind = link.kind(), "writer registered");
        writers.push(Arc::new(Slot {
            kind: link.kind(),
            reg,
            link: Mutex::new(Some(link)),
            status: Mutex::new(Status {
                state: WriterState::Stable,
                last_error: None,
                connected: true,
            }),
        }));
        Ok(())
    }

    /// Whether `reg` would be accepted now (its name free, its fields
    /// sound), so that a connection can be told before it is registered.
    pub fn can_register(&self, reg: &Registration) -> Result<(), RegisterError> {
        Self::vacancy(reg, &lock(&self.writers)).map(|_| ())
    }

    /// Checks `reg`; the index of a gone writer of the same name, if any.
    fn vacancy(reg: &Registration, writers: &[Arc<Slot>]) -> Result<Option<usize>, RegisterError> {
        reg.validate().map_err(RegisterError::Invalid)?;
        let Some(at) = writers.iter().position(|s| s.reg.name == reg.name) else {
            return Ok(None);
        };
        let old = &writers[at];
        let connected = old.status().connected;
        let in_use_or_alive = match lock(&old.link).as_mut() {
            None => connected,
            Some(link) => link.alive(),
        };
        if in_use_or_alive {
            return Err(RegisterError::Duplicate(reg.name.clone()));
        }
        Ok(Some(at))
    }

    /// Every writer, in the order they registered. Writers that went away
    /// in a stable state are forgotten; failed ones stay, disconnected, so
    /// their state can be read.
    pub fn writers(&self) -> Vec<WriterView> {
        let mut writers = lock(&self.writers);
        for slot in writers.iter() {
            let mut link = lock(&slot.link);
            if link.as_mut().is_some_and(|l| !l.alive()) {
                *link = None;
                slot.status().connected = false;
            }
        }
        writers.retain(|s| {
            let status = s.status();
            status.connected || status.state.is_failed()
        });
        writers
            .iter()
            .map(|s| {
                let status = s.status();
                WriterView {
                    name: s.reg.name.clone(),
                    kind: s.kind.to_string(),
                    state: status.state,
                    last_error: status.last_error.as_ref().map(|f| f.message.clone()),
                    retryable: status.last_error.as_ref().map(|f| f.retryable),
                    volumes: s.reg.volumes.clone(),
                    required: s.reg.required,
                    connected: status.connected,
                }
            })
            .collect()
    }

    /// Makes one set through the whole sequence. A second call while one
    /// runs is refused at once.
    pub fn create(
        &self,
        request: SetRequest,
        provider: &dyn Provider,
    ) -> Result<Created, SequenceError> {
        Ok(self.snapshot(request, Box::new(provider))?.complete(true))
    }

    /// Makes one set up to PostSnapshot and returns it pending: the
    /// requester backs it up, then reports with [`Pending::complete`] (or
    /// drops it: the writers then hear that the backup did not succeed, as
    /// VSS's BackupShutdown). No other set is made meanwhile.
    pub fn snapshot<'a>(
        &'a self,
        request: SetRequest,
        provider: Box<dyn Provider + 'a>,
    ) -> Result<Pending<'a>, SequenceError> {
        let running = match self.running.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(self.busy()),
        };
        let started = Instant::now();
        let plan = SetPlan {
            id: guid(),
            name: request.name,
            label: request.label,
            volumes: request.volumes,
        };
        tracing::info!(set = %plan.name, set_id = %plan.id, "starting the writer sequence");
        let parts = self.take_parts(&plan.volumes);
        let mut sequence = Sequence {
            plan,
            parts,
            provider,
            options: self.options,
        };
        match sequence.run() {
            Ok(committed) => Ok(Pending {
                coordinator: self,
                sequence: Some(sequence),
                committed,
                started,
                _running: running,
            }),
            Err(e) => {
                self.put_back(sequence.parts);
                Err(e)
            }
        }
    }

    /// Why the coordinator cannot start a sequence now.
    fn busy(&self) -> SequenceError {
        if self.restoring.load(Ordering::Acquire) {
            SequenceError::Restoring
        } else {
            SequenceError::Busy
        }
    }

    fn take_parts(&self, volumes: &[String]) -> Vec<Part> {
        let writers = lock(&self.writers);
        let mut parts = Vec::new();
        for slot in writers.iter() {
            if !slot.reg.concerns(volumes) {
                continue;
            }
            let Some(mut link) = lock(&slot.link).take() else {
                continue;
            };
            if !link.alive() {
                // Gone while idle: not a failure of this set.
                slot.status().connected = false;
                continue;
            }
            let timeout = slot.reg.timeout_secs.map(Duration::from_secs);
            parts.push(Part {
                slot: slot.clone(),
                link: Some(link),
                identified: false,
                failed: None,
                event_timeout: timeout.unwrap_or(self.options.event_timeout),
                freeze_timeout: timeout.unwrap_or(self.options.freeze_timeout),
            });
        }
        parts
    }

    fn put_back(&self, parts: Vec<Part>) {
        for part in parts {
            match part.link {
                Some(link) => *lock(&part.slot.link) = Some(link),
                None => part.slot.status().connected = false,
            }
        }
    }
}

/// A set made up to PostSnapshot, waiting for the requester to finish its
/// backup. Dropping it without `complete` completes it as failed.
pub struct Pending<'a> {
    coordinator: &'a Coordinator,
    sequence: Option<Sequence<'a>>,
    committed: Committed,
    started: Instant,
    _running: MutexGuard<'a, ()>,
}

impl Pending<'_> {
    pub fn set(&self) -> &Committed {
        &self.committed
    }

    /// Since the sequence began.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The snapshot set id the writers saw.
    pub fn set_guid(&self) -> &str {
        self.sequence.as_ref().map_or("", |s| s.plan.id.as_str())
    }

    /// Sends BackupComplete (saying whether the backup succeeded), records
    /// the writers with the set and returns it.
    pub fn complete(mut self, succeeded: bool) -> Created {
        self.finish(succeeded)
    }

    fn finish(&mut self, succeeded: bool) -> Created {
        let Some(mut sequence) = self.sequence.take() else {
            return Created {
                set: self.committed.clone(),
                set_guid: String::new(),
                writers: Vec::new(),
                total: self.started.elapsed(),
            };
        };
        let writers = sequence.complete(&self.committed, succeeded);
        let set_guid = sequence.plan.id.clone();
        self.coordinator.put_back(sequence.parts);
        Created {
            set: self.committed.clone(),
            set_guid,
            writers,
            total: self.started.elapsed(),
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.sequence.is_some() {
            tracing::warn!(set = %self.committed.name, "the requester went away before the backup completed");
            self.finish(false);
        }
    }
}

struct Sequence<'a> {
    plan: SetPlan,
    parts: Vec<Part>,
    provider: Box<dyn Provider + 'a>,
    options: Options,
}

/// Why the sequence stops before the set is made.
struct Abort(SequenceError);

impl Sequence<'_> {
    /// Identify to PostSnapshot: the committed set, or the set aborted.
    fn run(&mut self) -> Result<Committed, SequenceError> {
        for part in self.parts.iter_mut() {
            part.identified = true;
        }
        self.broadcast(Event::Identify, None);
        for part in self.parts.iter_mut() {
            if part.failed.is_some() {
                part.identified = false;
            }
        }
        if let Err(Abort(e)) = self.before_commit() {
            self.abort();
            return Err(e);
        }
        let committed = match self.commit() {
            Ok(c) => c,
            Err(Abort(e)) => {
                self.abort();
                return Err(e);
            }
        };
        let made = self.after_commit().and_then(|()| {
            // Thawed and told: the set is whole from here on.
            self.provider
                .record(&committed, &self.outcomes())
                .map_err(|e| Abort(SequenceError::Provider(e)))
        });
        if let Err(Abort(e)) = made {
            self.abort();
            if let Err(de) = self.provider.discard(&committed) {
                tracing::error!(set = %committed.name, "discarding the aborted set: {de}");
            }
            return Err(e);
        }
        tracing::info!(set = %committed.name, hold = ?committed.hold, "set made");
        Ok(committed)
    }

    /// BackupComplete, then the writers recorded with the set.
    fn complete(&mut self, committed: &Committed, succeeded: bool) -> Vec<SetWriter> {
        self.broadcast(Event::BackupComplete, Some(succeeded));
        for part in self.parts.iter().filter(|p| p.active()) {
            part.slot.came_through();
        }
        let writers = self.outcomes();
        if let Err(e) = self.provider.record(committed, &writers) {
            tracing::error!(set = %committed.name, "recording the set's writers: {e}");
        }
        writers
    }

    fn before_commit(&mut self) -> Result<(), Abort> {
        self.step(Event::PrepareForBackup)?;
        self.step(Event::PrepareForSnapshot)?;
        self.provider
            .before_freeze(&self.plan)
            .map_err(|e| Abort(SequenceError::Provider(e)))
    }

    /// Freeze, then the provider's flush, hold and commit, within the
    /// writers' freeze windows.
    fn commit(&mut self) -> Result<Committed, Abort> {
        let frozen_at = Instant::now();
        self.step(Event::Freeze)?;
        if let Err(e) = self.provider.prepare(&self.plan) {
            self.provider.release(&self.plan);
            return Err(Abort(SequenceError::Provider(e)));
        }
        let result = self.hold_and_commit(frozen_at);
        self.provider.release(&self.plan);
        result
    }

    fn hold_and_commit(&mut self, frozen_at: Instant) -> Result<Committed, Abort> {
        // A writer that went away while frozen fails before the commit.
        for part in self.parts.iter_mut().filter(|p| p.active()) {
            if part.link.as_mut().is_some_and(|l| !l.alive()) {
                part.link = None;
                part.fail(Event::Thaw, Failure::fatal("disconnected while frozen"));
            }
        }
        self.check_required()?;
        let window = self
            .parts
            .iter()
            .filter(|p| p.active() && p.slot.reg.required)
            .map(|p| p.freeze_timeout)
            .min()
            .unwrap_or(self.options.hold_timeout);
        let deadline = deadline_in(self.options.hold_timeout).min(after(frozen_at, window));
        let committed = self
            .provider
            .hold_and_commit(&self.plan, deadline)
            .map_err(|e| Abort(SequenceError::Provider(e)))?;
        for part in self.parts.iter_mut().filter(|p| p.active()) {
            if frozen_at.elapsed() > part.freeze_timeout {
                let failure = Failure::retryable(format!(
                    "frozen longer than its {:?} deadline",
                    part.freeze_timeout
                ));
                part.fail(Event::Thaw, failure);
            }
        }
        if let Err(e) = self.check_required() {
            if let Err(de) = self.provider.discard(&committed) {
                tracing::error!(set = %committed.name, "discarding the aborted set: {de}");
            }
            return Err(e);
        }
        Ok(committed)
    }

    fn after_commit(&mut self) -> Result<(), Abort> {
        self.step(Event::Thaw)?;
        self.step(Event::PostSnapshot)?;
        Ok(())
    }

    /// Sends `event` to every active writer and aborts if a required one
    /// failed.
    fn step(&mut self, event: Event) -> Result<(), Abort> {
        self.broadcast(event, None);
        self.check_required()
    }

    fn check_required(&self) -> Result<(), Abort> {
        match self
            .parts
            .iter()
            .find(|p| p.identified && p.slot.reg.required && p.failed.is_some())
        {
            Some(part) => {
                let (event, failure) = part
                    .failed
                    .clone()
                    .unwrap_or((Event::Abort, Failure::fatal("failed")));
                Err(Abort(SequenceError::Writer {
                    writer: part.slot.reg.name.clone(),
                    event,
                    failure,
                }))
            }
            None => Ok(()),
        }
    }

    fn message(&self, event: Event, backup_succeeded: Option<bool>) -> EventMessage {
        EventMessage {
            event,
            set_id: self.plan.id.clone(),
            set_name: self.plan.name.clone(),
            volumes: self.plan.volumes.clone(),
            backup_succeeded,
        }
    }

    /// Sends `event` to every active writer at once, then waits for each
    /// answer until that writer's deadline. Failures are marked.
    fn broadcast(&mut self, event: Event, backup_succeeded: Option<bool>) {
        let message = self.message(event, backup_succeeded);
        broadcast(&mut self.parts, &message);
    }

    /// Abort to every writer that passed Identify; answers are awaited (a
    /// writer may still be undoing its freeze) but change nothing.
    fn abort(&mut self) {
        tracing::warn!(set = %self.plan.name, "aborting the set");
        let message = self.message(Event::Abort, None);
        let mut asked = Vec::new();
        for (i, part) in self.parts.iter_mut().enumerate() {
            if !part.identified {
                continue;
            }
            if part.failed.is_none() {
                part.slot.set_state(WriterState::Stable, None);
            }
            let deadline = deadline_in(part.event_timeout);
            if let Some(link) = part.link.as_mut() {
                match link.send(&message) {
                    Ok(()) => asked.push((i, deadline)),
                    Err(e) => {
                        tracing::debug!(writer = %part.slot.reg.name, "abort not sent: {e}");
                        if !link.survives_errors() {
                            part.link = None;
                        }
                    }
                }
            }
        }
        for (i, deadline) in asked {
            let part = &mut self.parts[i];
            if let Some(link) = part.link.as_mut()
                && let Err(e) = link.recv(deadline)
            {
                tracing::debug!(writer = %part.slot.reg.name, "abort not answered: {e}");
                if !link.survives_errors() {
                    part.link = None;
                }
            }
        }
    }

    fn outcomes(&self) -> Vec<SetWriter> {
        self.parts
            .iter()
            .filter(|p| p.identified)
            .map(Part::outcome)
            .collect()
    }
}

/// Sends `message` to every active writer of `parts` at once, then waits
/// for each answer until that writer's deadline. Failures are marked.
fn broadcast(parts: &mut [Part], message: &EventMessage) {
    let event = message.event;
    let mut asked = Vec::new();
    for (i, part) in parts.iter_mut().enumerate() {
        if !part.active() {
            continue;
        }
        let deadline = deadline_in(part.event_timeout);
        let Some(link) = part.link.as_mut() else {
            continue;
        };
        match link.send(message) {
            Ok(()) => asked.push((i, deadline)),
            Err(e) => link_failed(part, event, e),
        }
    }
    for (i, deadline) in asked {
        let part = &mut parts[i];
        let Some(link) = part.link.as_mut() else {
            continue;
        };
        let answer = link
            .recv(deadline)
            .and_then(|reply| reply.answering(message).map_err(LinkError::Malformed));
        match answer {
            Ok(Ok(())) => part.slot.set_state(WriterState::after(event), None),
            Ok(Err(failure)) => part.fail(event, failure),
            Err(e) => link_failed(part, event, e),
        }
    }
}

fn link_failed(part: &mut Part, event: Event, error: LinkError) {
    let failure = match &error {
        LinkError::Timeout(_) => {
            Failure::retryable(format!("no answer within {:?}", part.event_timeout))
        }
        other => Failure::fatal(other.to_string()),
    };
    if part.link.as_ref().is_some_and(|l| !l.survives_errors()) {
        part.link = None;
    }
    part.fail(event, failure);
}

/// A new snapshot set id: 128 bits as a GUID.
fn guid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut words = [0u64; 2];
    for (i, word) in words.iter_mut().enumerate() {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(now);
        h.write_u64(n);
        h.write_u32(std::process::id());
        h.write_usize(i);
        *word = h.finish();
    }
    let hex = format!("{:016x}{:016x}", words[0], words[1]);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

mod restore;

pub use restore::{RestoreRequest, Restoring};

#[cfg(test)]
mod tests;
