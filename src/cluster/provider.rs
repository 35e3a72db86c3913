//! The provider of this host's part of a cluster set: it wraps the local
//! provider (`SetMaker`) and puts the cluster's barriers where the writer
//! sequence needs them, so that every host's writers are frozen before any
//! host captures, every host captured before any thaws, and the set is
//! kept only where the cluster's one outcome says commit.
//!
//! - `before_freeze` (writers prepared, not yet frozen): `prepared`, then
//!   wait for every member's, so that the members freeze together and no
//!   writer's freeze is spent waiting for another host's preparation.
//! - `prepare`: local flush, then `frozen`, then wait for every member's.
//! - `hold_and_commit`: the local hold and pending commit (the hold stays
//!   one host's), the part tagged with the cluster set id and made
//!   durable, then `captured`, then wait: writers stay frozen meanwhile.
//! - `record` (after Thaw and PostSnapshot): `ready`, then wait for the
//!   outcome; commit records the part, anything else fails the sequence,
//!   which discards it.
//!
//! Why the local commit comes before the outcome, pending: the outcome can
//! only be commit once every host holds its part, so no host can be told
//! commit and lack the data. A crash after the outcome and before the
//! record leaves a pending part tagged with the cluster set id, which the
//! store keeps at open and the daemon resolves against etcd (`resolve`).
//! A part whose outcome this host cannot learn (etcd away after `ready`)
//! is in doubt: it is neither kept nor dropped here but left pending for
//! the same repair.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use umbra_coordinator::{Committed, Provider, ProviderError, SetPlan, SetWriter};
use umbra_store::Store;

use super::barrier::{Outcome, Phase, Stop};
use super::{Cluster, Plan};

/// What this host's part saw of the cluster, for `create --cluster`'s view.
#[derive(Clone, Debug, Default)]
pub struct PartReport {
    /// Each member's hold, milliseconds, as it reported it at `captured`.
    pub holds: Vec<(String, f64)>,
    /// How long this host's writers waited at the two barriers of the
    /// freeze (frozen, captured).
    pub barrier: Duration,
    /// How long this host waited, before Freeze, for every member to
    /// prepare.
    pub prepared: Duration,
    /// The outcome, once known.
    pub outcome: Option<Outcome>,
    /// The outcome could not be learned: the part stays pending.
    pub in_doubt: bool,
}

pub struct ClusterProvider {
    cluster: Arc<Cluster>,
    plan: Plan,
    deadline: Instant,
    inner: Box<dyn Provider + Send>,
    store: Arc<Store>,
    report: Arc<Mutex<PartReport>>,
    /// `record` ran once after PostSnapshot: later calls only record.
    recorded: AtomicBool,
}

impl ClusterProvider {
    pub fn new(
        cluster: Arc<Cluster>,
        plan: Plan,
        deadline: Instant,
        inner: Box<dyn Provider + Send>,
        store: Arc<Store>,
        report: Arc<Mutex<PartReport>>,
    ) -> ClusterProvider {
        ClusterProvider {
            cluster,
            plan,
            deadline,
            inner,
            store,
            report,
            recorded: AtomicBool::new(false),
        }
    }

    fn report(&self) -> std::sync::MutexGuard<'_, PartReport> {
        self.report.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Aborts the cluster set and makes the local error of it.
    fn fail(&self, why: String) -> ProviderError {
        let outcome = self.cluster.abort(&self.plan.id, &why);
        if let Some(outcome) = outcome {
            self.report().outcome = Some(outcome);
        }
        ProviderError::Failed(format!("cluster set {}: {why}", self.plan.id))
    }

    /// What a stopped wait means locally (before `ready`: never commit).
    fn stopped(&self, stop: Stop) -> ProviderError {
        let why = match stop {
            Stop::Decided(Outcome::Abort(why)) => format!("aborted: {why}"),
            Stop::Decided(Outcome::Commit) => "committed without this host".into(),
            Stop::Unreachable(why) => why,
        };
        self.fail(why)
    }

    fn barrier(&self, phase: Phase, value: String) -> Result<Vec<(String, String)>, ProviderError> {
        if let Err(e) = self.cluster.arrive(&self.plan, phase, value) {
            return Err(self.fail(format!("etcd: {e}")));
        }
        match self.cluster.wait(&self.plan, phase, self.deadline) {
            Ok(marks) => Ok(marks.into_iter().collect()),
            Err(stop) => Err(self.stopped(stop)),
        }
    }
}

impl Provider for ClusterProvider {
    fn before_freeze(&self, plan: &SetPlan) -> Result<(), ProviderError> {
        self.inner.before_freeze(plan)?;
        let started = Instant::now();
        let passed = self.barrier(Phase::Prepared, String::new());
        // Not the writers' freeze: they still run while this waits.
        self.report().prepared += started.elapsed();
        passed.map(|_| ())
    }

    fn prepare(&self, plan: &SetPlan) -> Result<(), ProviderError> {
        self.inner.prepare(plan)?;
        let started = Instant::now();
        let passed = self.barrier(Phase::Frozen, String::new());
        self.report().barrier += started.elapsed();
        passed.map(|_| ())
    }

    fn hold_and_commit(
        &self,
        plan: &SetPlan,
        deadline: Instant,
    ) -> Result<Committed, ProviderError> {
        let set = match self.inner.hold_and_commit(plan, deadline) {
            Ok(set) => set,
            Err(e) => return Err(self.fail(e.to_string())),
        };
        let captured = self
            .store
            .tag_cluster_set(set.id, &self.plan.id)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                let hold = format!("{:.3}", set.hold.as_secs_f64() * 1000.0);
                let started = Instant::now();
                let passed = self.barrier(Phase::Captured, hold);
                self.report().barrier += started.elapsed();
                passed.map_err(|e| e.to_string())
            });
        match captured {
            Ok(marks) => {
                self.report().holds = marks
                    .into_iter()
                    .map(|(m, v)| (m, v.parse().unwrap_or(f64::NAN)))
                    .collect();
                Ok(set)
            }
            Err(why) => {
                if let Err(e) = self.inner.discard(&set) {
                    tracing::error!(set = %set.name, "discarding this host's part: {e}");
                }
                Err(self.fail(why))
            }
        }
    }

    fn record(&self, set: &Committed, writers: &[SetWriter]) -> Result<(), ProviderError> {
        if self.recorded.swap(true, Ordering::AcqRel) {
            return self.inner.record(set, writers);
        }
        let outcome = match self.cluster.arrive(&self.plan, Phase::Ready, String::new()) {
            // Not sure it arrived: the others may have seen it.
            Err(e) => Err(Stop::Unreachable(e.to_string())),
            Ok(()) => self
                .cluster
                .wait(&self.plan, Phase::Ready, self.deadline)
                .map(|_| Outcome::Commit),
        };
        let outcome = match outcome {
            Ok(outcome) | Err(Stop::Decided(outcome)) => outcome,
            Err(Stop::Unreachable(why)) => {
                // Past `ready` the others may have committed: only the
                // cluster's record may decide, later.
                self.report().in_doubt = true;
                return Err(ProviderError::Failed(format!(
                    "cluster set {}: in doubt, kept pending until etcd answers ({why})",
                    self.plan.id
                )));
            }
        };
        self.report().outcome = Some(outcome.clone());
        match outcome {
            Outcome::Commit => {
                self.inner.record(set, writers)?;
                if let Err(e) = self.cluster.held(&self.plan.id) {
                    tracing::warn!(cluster_set = %self.plan.id, "recording that this host holds its part: {e}");
                }
                self.cluster.tidy(&self.plan);
                Ok(())
            }
            Outcome::Abort(why) => Err(ProviderError::Failed(format!(
                "cluster set {}: aborted: {why}",
                self.plan.id
            ))),
        }
    }

    fn discard(&self, set: &Committed) -> Result<(), ProviderError> {
        let (in_doubt, committed) = {
            let report = self.report();
            (report.in_doubt, report.outcome == Some(Outcome::Commit))
        };
        if in_doubt || committed {
            // The others may hold theirs: only the repair at start (or
            // the next pass of it) settles this part, from etcd's record.
            tracing::warn!(set = %set.name, cluster_set = %self.plan.id, "this host's part is kept pending until the cluster's outcome is recorded");
            self.report().in_doubt = true;
            return Ok(());
        }
        self.cluster
            .abort(&self.plan.id, "this host's part was discarded");
        self.cluster.tidy(&self.plan);
        self.inner.discard(set)
    }

    fn release(&self, plan: &SetPlan) {
        self.inner.release(plan)
    }
}
