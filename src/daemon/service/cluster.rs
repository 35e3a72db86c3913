//! The service's side of cluster sets: `create --cluster` (this host plans
//! the set and takes its own part), a part heard from another member's
//! plan, `list --cluster`, and the repair of parts whose outcome was never
//! recorded here (a crash, or etcd away at the end). The protocol itself
//! is crate::cluster's; this file only runs the local sequence around it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use umbra_store::SetOrigin;

use super::{Service, ServiceError, millis};
use crate::cluster::{Cluster, ClusterProvider, Outcome, PartReport, Plan};
use crate::protocol::{ClusterView, CreatedView, MemberHold, SetView};

/// How often the repair tries again while a part stays unresolved.
const REPAIR_EVERY: Duration = Duration::from_secs(1);

impl Service {
    pub fn with_cluster(mut self, cluster: Arc<Cluster>) -> Service {
        self.cluster = Some(cluster);
        self
    }

    fn cluster(&self) -> Result<&Arc<Cluster>, ServiceError> {
        self.cluster.as_ref().ok_or_else(|| {
            ServiceError::Refused("the daemon's config has no [cluster] table".into())
        })
    }

    /// Plans a cluster set of every member alive now and takes this
    /// host's part; answers when this host's part is recorded or aborted.
    pub fn create_cluster(
        &self,
        label: Option<String>,
        origin: SetOrigin,
    ) -> Result<CreatedView, ServiceError> {
        let started = Instant::now();
        let cluster = self.cluster()?.clone();
        let members = cluster.members()?;
        if !members.iter().any(|m| m == cluster.member()) {
            return Err(crate::cluster::ClusterError::NotAMember(cluster.member().into()).into());
        }
        let plan = Plan {
            id: cluster_set_id(cluster.member()),
            initiator: cluster.member().to_string(),
            members,
            label,
            deadline_ms: u64::try_from(cluster.config().deadline.as_millis()).unwrap_or(u64::MAX),
            planned_unix_ms: unix_ms(),
            scheduled: origin == SetOrigin::Scheduled,
        };
        cluster.write_plan(&plan)?;
        tracing::info!(cluster_set = %plan.id, members = ?plan.members, "planned a cluster set");
        let made = self.take_part(&cluster, &plan, origin);
        cluster.done(&plan.id);
        let mut view = made?;
        if let Some(part) = view.cluster.as_mut() {
            part.total_ms = millis(started.elapsed());
        }
        Ok(view)
    }

    /// A firing of a `cluster = true` schedule. Every member fires at the
    /// same times: the first member alive by name plans the cluster set,
    /// and the others take part when they hear its plan.
    pub fn plan_scheduled(&self, schedule: &crate::schedule::Schedule) -> Result<(), ServiceError> {
        let cluster = self.cluster()?.clone();
        let members = cluster.members()?;
        match members.first() {
            Some(first) if first == cluster.member() => self
                .create_cluster(schedule.label.clone(), SetOrigin::Scheduled)
                .map(|_| ()),
            Some(first) => {
                tracing::info!(planner = %first, "scheduled cluster set: another member plans it");
                Ok(())
            }
            None => Err(crate::cluster::ClusterError::NotAMember(cluster.member().into()).into()),
        }
    }

    /// The daemon stops: other members stop counting on this host now.
    pub fn leave_cluster(&self) {
        if let Some(cluster) = &self.cluster {
            cluster.leave();
        }
    }

    /// This host's part of another member's plan.
    pub fn heard_plan(&self, plan: Plan) {
        let Ok(cluster) = self.cluster().cloned() else {
            return;
        };
        tracing::info!(cluster_set = %plan.id, initiator = %plan.initiator, "taking part in a cluster set");
        let origin = if plan.scheduled {
            SetOrigin::Scheduled
        } else {
            SetOrigin::Manual
        };
        match self.take_part(&cluster, &plan, origin) {
            Ok(view) => {
                tracing::info!(cluster_set = %plan.id, set = %view.set.name, "cluster set made")
            }
            Err(e) => tracing::warn!(cluster_set = %plan.id, "cluster set not made here: {e}"),
        }
    }

    fn take_part(
        &self,
        cluster: &Arc<Cluster>,
        plan: &Plan,
        origin: SetOrigin,
    ) -> Result<CreatedView, ServiceError> {
        let started = Instant::now();
        let deadline = started + plan.deadline();
        let report = Arc::new(Mutex::new(PartReport::default()));
        let wrap = |maker: umbra_fs::SetMaker| -> Box<dyn umbra_coordinator::Provider> {
            Box::new(ClusterProvider::new(
                cluster.clone(),
                plan.clone(),
                deadline,
                Box::new(maker),
                self.store.clone(),
                report.clone(),
            ))
        };
        let made = self
            .start(&[], plan.label.clone(), origin, Some(&wrap))
            .and_then(|(_creating, pending)| self.created_view(pending.complete(true)));
        let report = report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut view = match made {
            Ok(view) => view,
            Err(e) => {
                // A writer that failed before the provider heard of the
                // set (Identify to Freeze) aborts it here.
                if !report.in_doubt {
                    cluster.abort(&plan.id, &e.to_string());
                    cluster.tidy(plan);
                }
                if report.in_doubt {
                    self.repair_later();
                }
                return Err(e);
            }
        };
        let holds: Vec<MemberHold> = report
            .holds
            .iter()
            .map(|(member, hold_ms)| MemberHold {
                member: member.clone(),
                hold_ms: *hold_ms,
            })
            .collect();
        view.set.cluster_id = Some(plan.id.clone());
        view.cluster = Some(ClusterView {
            id: plan.id.clone(),
            members: plan.members.clone(),
            hold_ms: holds.iter().map(|h| h.hold_ms).fold(0.0, f64::max),
            holds,
            barrier_ms: millis(report.barrier),
            prepared_ms: millis(report.prepared),
            total_ms: millis(started.elapsed()),
        });
        Ok(view)
    }

    /// Every set; a cluster set's part carries its cluster set id and,
    /// with `members`, which members hold the cluster set.
    pub fn list_cluster(&self, members: bool) -> Result<Vec<SetView>, ServiceError> {
        let mut sets = self.list()?;
        let ids: HashMap<_, _> = self
            .store
            .cluster_sets()?
            .into_iter()
            .map(|c| (c.set, c.cluster_id))
            .collect();
        let cluster = if members { Some(self.cluster()?) } else { None };
        for set in &mut sets {
            set.cluster_id = ids.get(&set.id).cloned();
            if let (Some(cluster), Some(id)) = (cluster, &set.cluster_id) {
                set.cluster_members = Some(cluster.holders(id)?);
            }
        }
        Ok(sets)
    }

    /// Settles every part whose outcome this host never recorded, from
    /// etcd's record: commit keeps it, abort (or no outcome past the
    /// plan's deadline, which this aborts) deletes it. True when none is
    /// left unsettled.
    pub fn repair_cluster_parts(&self) -> bool {
        let Ok(cluster) = self.cluster().cloned() else {
            return true;
        };
        // Not while a part is being made: its own sequence settles it.
        let Ok(_creating) = self.creating.try_lock() else {
            return false;
        };
        let _changing = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let parts = match self.store.cluster_sets() {
            Ok(parts) => parts,
            Err(e) => {
                tracing::warn!("reading the cluster sets: {e}");
                return false;
            }
        };
        let mut settled = true;
        let mut changed = false;
        for part in parts.into_iter().filter(|p| p.pending) {
            let id = &part.cluster_id;
            let outcome = match cluster.outcome(id) {
                Ok(Some(outcome)) => outcome,
                Ok(None) => match cluster.read_plan(id) {
                    Ok(Some(plan))
                        if unix_ms()
                            < plan
                                .planned_unix_ms
                                .saturating_add(plan.deadline_ms)
                                .saturating_add(1000) =>
                    {
                        settled = false;
                        continue;
                    }
                    Ok(_) => match cluster.abort(id, "not decided by the plan's deadline") {
                        Some(outcome) => outcome,
                        None => {
                            settled = false;
                            continue;
                        }
                    },
                    Err(_) => {
                        settled = false;
                        continue;
                    }
                },
                Err(e) => {
                    tracing::debug!(cluster_set = %id, "the cluster's outcome is not readable yet: {e}");
                    settled = false;
                    continue;
                }
            };
            changed = true;
            match outcome {
                Outcome::Commit => match self.store.record_set_writers(part.set, &[]) {
                    Ok(()) => {
                        tracing::info!(cluster_set = %id, set = %part.set, "kept this host's part: the cluster committed it");
                        if let Err(e) = cluster.held(id) {
                            tracing::warn!(cluster_set = %id, "recording that this host holds its part: {e}");
                        }
                    }
                    Err(e) => {
                        tracing::error!(cluster_set = %id, "recording this host's part: {e}");
                        settled = false;
                    }
                },
                Outcome::Abort(why) => match self.sets.delete(part.set) {
                    Ok(()) => {
                        tracing::info!(cluster_set = %id, set = %part.set, "deleted this host's part: the cluster aborted it ({why})")
                    }
                    Err(e) => {
                        tracing::error!(cluster_set = %id, "deleting this host's aborted part: {e}");
                        settled = false;
                    }
                },
            }
        }
        if changed {
            self.refresh();
        }
        // A part deleted here (by hand, retention, max_sets) is no longer
        // held: `list --cluster` must not name this host for it.
        let ours: Vec<String> = match self.store.cluster_sets() {
            Ok(parts) => parts.into_iter().map(|p| p.cluster_id).collect(),
            Err(_) => return false,
        };
        match cluster.held_here() {
            Ok(held) => {
                for id in held.iter().filter(|id| !ours.contains(id)) {
                    if let Err(e) = cluster.forget(id) {
                        tracing::debug!(cluster_set = %id, "forgetting a deleted part: {e}");
                        settled = false;
                    }
                }
            }
            Err(_) => settled = false,
        }
        settled
    }

    /// Asks the repair thread (`repair_forever`) for another pass.
    pub fn repair_later(&self) {
        self.cluster_unsettled.store(true, Ordering::Release);
    }

    /// The daemon's repair thread: a pass at start, then one whenever a
    /// part was left unsettled, until each pass settles everything.
    pub fn repair_forever(self: Arc<Self>) {
        let spawned = std::thread::Builder::new()
            .name("umbra-cluster-repair".into())
            .spawn(move || {
                for pass in 0u64.. {
                    // Deletions the service does not see (max_sets, a full
                    // diff area) are caught by a pass now and then.
                    if pass % 30 == 0 {
                        self.repair_later();
                    }
                    if self.cluster_unsettled.swap(false, Ordering::AcqRel)
                        && !self.repair_cluster_parts()
                    {
                        self.repair_later();
                    }
                    std::thread::sleep(REPAIR_EVERY);
                }
            });
        if let Err(e) = spawned {
            tracing::error!("starting the repair of cluster parts: {e}");
        }
    }
}

/// A cluster set id: when, and who planned it (unique while a member
/// plans one set at a time; the plan's creation is a CAS anyway).
fn cluster_set_id(member: &str) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}{:09}-{member}", now.as_secs(), now.subsec_nanos())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}
