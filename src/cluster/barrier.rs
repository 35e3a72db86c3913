//! One cluster set's protocol in etcd: the plan, the barriers every
//! planned member passes (frozen, captured, ready), and the one outcome,
//! created once by a compare-and-swap so that no host can keep a set that
//! another drops. Not etcd's double-barrier recipe: there, a member whose
//! lease expires simply leaves and releases the others; here it aborts
//! the set everywhere.
//!
//! Who decides: any member that sees every planned member `ready` (all
//! leases alive) creates `outcome = commit`; any member that sees a failure
//! (its own, a planned member's lease gone, the deadline) creates
//! `outcome = abort ...`. The first creation wins and everyone obeys it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::{Cluster, ClusterError, Result};

/// How often a member looks at the barrier it waits at: often at first
/// (the writers may be frozen meanwhile), less once the wait is long
/// (a slow writer elsewhere), to spare etcd.
const POLL: Duration = Duration::from_millis(2);
const POLL_LONG: Duration = Duration::from_millis(20);
const LONG_WAIT: Duration = Duration::from_millis(500);
/// The least time one look at a barrier is given, even at the deadline.
const MIN_LOOK: Duration = Duration::from_millis(100);

/// A cluster set, as its initiator wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The cluster set id every member's part carries.
    pub id: String,
    pub initiator: String,
    /// The members alive when it was planned: each must take part.
    pub members: Vec<String>,
    pub label: Option<String>,
    /// How long, from when a member hears of it, until it is aborted.
    pub deadline_ms: u64,
    /// When it was planned, Unix milliseconds (for the repair at start).
    pub planned_unix_ms: u64,
    /// A firing of a `cluster = true` schedule: every part is recorded as
    /// scheduled, for retention.
    #[serde(default)]
    pub scheduled: bool,
}

impl Plan {
    pub fn parse(bytes: &[u8]) -> Result<Plan> {
        serde_json::from_slice(bytes).map_err(|e| ClusterError::Malformed(format!("plan: {e}")))
    }

    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }
}

/// What the cluster decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Commit,
    Abort(String),
}

impl Outcome {
    fn parse(text: &str) -> Outcome {
        match text {
            "commit" => Outcome::Commit,
            other => Outcome::Abort(other.strip_prefix("abort ").unwrap_or(other).to_string()),
        }
    }
}

/// A barrier a member passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Its writers prepared for the snapshot (not yet frozen): every
    /// member then freezes at about the same time.
    Prepared,
    /// Its writers froze and its provider flushed.
    Frozen,
    /// Its part is captured and committed pending (the hold is over).
    Captured,
    /// Its writers thawed and answered PostSnapshot.
    Ready,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Prepared => "prepared",
            Phase::Frozen => "frozen",
            Phase::Captured => "captured",
            Phase::Ready => "ready",
        }
    }
}

/// Why a member stops waiting.
#[derive(Debug)]
pub enum Stop {
    /// The cluster decided.
    Decided(Outcome),
    /// Etcd did not answer before the deadline: the outcome is unknown.
    Unreachable(String),
}

impl Cluster {
    /// Writes `plan` once (a second plan of the same id is refused).
    /// Also takes the cluster's one `running` mark (under the
    /// initiator's lease, so that a dead initiator frees it): one cluster
    /// set at a time, and a second planner is told so rather than both
    /// sets aborting each other on busy members.
    pub fn write_plan(&self, plan: &Plan) -> Result<()> {
        let key = self.set_key(&plan.id, "plan");
        let running = self.key("running");
        let lease = self
            .lease()
            .ok_or_else(|| ClusterError::NotAMember(self.member().to_string()))?;
        let value =
            serde_json::to_string(plan).map_err(|e| ClusterError::Malformed(e.to_string()))?;
        let txn = Txn::new()
            .when([
                Compare::version(key.clone(), CompareOp::Equal, 0),
                Compare::version(running.clone(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(key, value, None),
                TxnOp::put(
                    running.clone(),
                    plan.id.clone(),
                    Some(etcd_client::PutOptions::new().with_lease(lease)),
                ),
            ])
            .or_else([TxnOp::get(running, None)]);
        let mut client = self.client.clone();
        let answer = self.run(client.txn(txn))?;
        if answer.succeeded() {
            return Ok(());
        }
        let other = answer
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(get) => get
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                _ => None,
            })
            .unwrap_or_else(|| plan.id.clone());
        Err(ClusterError::Busy(other))
    }

    /// Frees the `running` mark of cluster set `id` (if still its own).
    pub fn done(&self, id: &str) {
        let running = self.key("running");
        let txn = Txn::new()
            .when([Compare::value(running.clone(), CompareOp::Equal, id)])
            .and_then([TxnOp::delete(running, None)]);
        let mut client = self.client.clone();
        if let Err(e) = self.run(client.txn(txn)) {
            tracing::warn!(cluster_set = %id, "freeing the cluster's running mark: {e}");
        }
    }

    /// Reads the plan of cluster set `id`, if it is still there.
    pub fn read_plan(&self, id: &str) -> Result<Option<Plan>> {
        let mut client = self.client.clone();
        let answer = self.run(client.get(self.set_key(id, "plan"), None))?;
        answer
            .kvs()
            .first()
            .map(|kv| Plan::parse(kv.value()))
            .transpose()
    }

    /// This member passed `phase` (under its lease: a dead member's marks
    /// go with it). `value` is what the others may read of it.
    pub fn arrive(&self, plan: &Plan, phase: Phase, value: String) -> Result<()> {
        let key = self.set_key(&plan.id, &format!("{}/{}", phase.as_str(), self.member()));
        self.put(key, value, true)
    }

    /// Creates the outcome unless one exists; answers the outcome in force.
    pub fn decide(&self, id: &str, outcome: &Outcome) -> Result<Outcome> {
        let key = self.set_key(id, "outcome");
        let value = match outcome {
            Outcome::Commit => "commit".to_string(),
            Outcome::Abort(why) => format!("abort {why}"),
        };
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key, None)]);
        let mut client = self.client.clone();
        let answer = self.run(client.txn(txn))?;
        if answer.succeeded() {
            if let Outcome::Abort(why) = outcome {
                tracing::warn!(cluster_set = %id, "aborted the cluster set: {why}");
            }
            return Ok(outcome.clone());
        }
        for op in answer.op_responses() {
            if let etcd_client::TxnOpResponse::Get(get) = op
                && let Some(kv) = get.kvs().first()
            {
                return Ok(Outcome::parse(&String::from_utf8_lossy(kv.value())));
            }
        }
        Err(ClusterError::Malformed(format!(
            "cluster set {id}: the outcome vanished"
        )))
    }

    /// The outcome of cluster set `id`, if decided.
    pub fn outcome(&self, id: &str) -> Result<Option<Outcome>> {
        let mut client = self.client.clone();
        let answer = self.run(client.get(self.set_key(id, "outcome"), None))?;
        Ok(answer
            .kvs()
            .first()
            .map(|kv| Outcome::parse(&String::from_utf8_lossy(kv.value()))))
    }

    /// Aborts the set unless decided; what is in force, if etcd answered.
    pub fn abort(&self, id: &str, why: &str) -> Option<Outcome> {
        let why = format!("{}: {why}", self.member());
        match self.decide(id, &Outcome::Abort(why)) {
            Ok(outcome) => Some(outcome),
            Err(e) => {
                tracing::warn!(cluster_set = %id, "could not abort the cluster set: {e}");
                None
            }
        }
    }

    /// Waits until every planned member passed `phase`, answering what
    /// they wrote there, by member. Stops on an outcome, a planned
    /// member's lease gone (then aborts), or `deadline` (then aborts).
    /// At `Phase::Ready` it also decides: all ready means commit.
    pub fn wait(
        &self,
        plan: &Plan,
        phase: Phase,
        deadline: Instant,
    ) -> std::result::Result<BTreeMap<String, String>, Stop> {
        let mut last_error = None;
        let started = Instant::now();
        loop {
            match self.look(plan, phase, deadline) {
                Ok(Look::Decided(outcome)) => return Err(Stop::Decided(outcome)),
                Ok(Look::Lost(member)) => {
                    let why = format!("member {member} left the cluster");
                    return Err(self.stop(plan, &why));
                }
                Ok(Look::All(marks)) => {
                    if phase != Phase::Ready {
                        return Ok(marks);
                    }
                    return match self.decide(&plan.id, &Outcome::Commit) {
                        Ok(Outcome::Commit) => Ok(marks),
                        Ok(outcome) => Err(Stop::Decided(outcome)),
                        Err(e) => Err(Stop::Unreachable(e.to_string())),
                    };
                }
                Ok(Look::Waiting) => {}
                Err(e) => last_error = Some(e.to_string()),
            }
            if Instant::now() >= deadline {
                let why = match last_error {
                    Some(e) => format!("deadline passed at {}, etcd: {e}", phase.as_str()),
                    None => format!("deadline passed at {}", phase.as_str()),
                };
                return Err(self.stop(plan, &why));
            }
            std::thread::sleep(if started.elapsed() < LONG_WAIT {
                POLL
            } else {
                POLL_LONG
            });
        }
    }

    /// Aborts, and says what stopped the wait.
    fn stop(&self, plan: &Plan, why: &str) -> Stop {
        match self.abort(&plan.id, why) {
            Some(outcome) => Stop::Decided(outcome),
            None => Stop::Unreachable(why.to_string()),
        }
    }

    /// One look at the set's keys and the members, in one transaction (one
    /// round trip, one revision), given no longer than the deadline leaves.
    fn look(&self, plan: &Plan, phase: Phase, deadline: Instant) -> Result<Look> {
        let set = self.set_key(&plan.id, "");
        let members = self.key("members/");
        let prefix = || Some(etcd_client::GetOptions::new().with_prefix());
        let txn = Txn::new().and_then([
            TxnOp::get(set.clone(), prefix()),
            TxnOp::get(members.clone(), prefix()),
        ]);
        let limit = deadline
            .saturating_duration_since(Instant::now())
            .clamp(MIN_LOOK, super::REQUEST_TIMEOUT);
        let mut client = self.client.clone();
        let answer = self.run_within(limit, client.txn(txn))?;
        let mut gets = answer.op_responses().into_iter().filter_map(|op| match op {
            etcd_client::TxnOpResponse::Get(get) => Some(get),
            _ => None,
        });
        let under =
            |get: Option<etcd_client::GetResponse>, prefix: &str| -> BTreeMap<String, String> {
                get.map(|g| {
                    g.kvs()
                        .iter()
                        .map(|kv| {
                            let key = String::from_utf8_lossy(kv.key());
                            let key = key.strip_prefix(prefix).unwrap_or(&key).to_string();
                            (key, String::from_utf8_lossy(kv.value()).into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default()
            };
        let keys = under(gets.next(), &set);
        let alive: Vec<String> = under(gets.next(), &members).into_keys().collect();
        if let Some(outcome) = keys.get("outcome") {
            return Ok(Look::Decided(Outcome::parse(outcome)));
        }
        if let Some(lost) = plan.members.iter().find(|m| !alive.contains(m)) {
            return Ok(Look::Lost(lost.clone()));
        }
        let mut marks = BTreeMap::new();
        for member in &plan.members {
            match keys.get(&format!("{}/{member}", phase.as_str())) {
                Some(value) => marks.insert(member.clone(), value.clone()),
                None => return Ok(Look::Waiting),
            };
        }
        Ok(Look::All(marks))
    }

    /// Takes this member's barrier marks of a finished set away (the held
    /// mark stays: `umbra list --cluster` reads it).
    pub fn tidy(&self, plan: &Plan) {
        for phase in [
            Phase::Prepared,
            Phase::Frozen,
            Phase::Captured,
            Phase::Ready,
        ] {
            let key = self.set_key(&plan.id, &format!("{}/{}", phase.as_str(), self.member()));
            if let Err(e) = self.delete(key, false) {
                tracing::debug!(cluster_set = %plan.id, "tidying the barrier marks: {e}");
            }
        }
    }

    /// This host recorded its part of cluster set `id`.
    pub fn held(&self, id: &str) -> Result<()> {
        self.put(
            self.set_key(id, &format!("held/{}", self.member())),
            String::new(),
            false,
        )
    }
}

enum Look {
    Decided(Outcome),
    Lost(String),
    All(BTreeMap<String, String>),
    Waiting,
}
