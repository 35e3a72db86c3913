//! Cluster sets: several hosts, each with its own daemon, volumes and
//! writers, take one set at one instant, meeting in etcd (`[cluster]`).
//! This file owns the daemon's link to etcd: a tokio runtime of its own
//! behind a blocking facade (the daemon is threads, not tasks), this
//! host's membership under a lease kept alive, the watch that hears other
//! members' plans, and the repair at start of a part whose outcome this
//! host never recorded. The protocol of one set is `barrier.rs`; the
//! provider that runs it inside the writer sequence is `provider.rs`.
//!
//! Keys, under `/<prefix>/<cluster>/`:
//! - `members/<member>` (leased): this host runs with a `[cluster]` table;
//! - `running` (the planner's lease): the cluster set being made;
//! - `sets/<id>/plan`: the cluster set, written once by its initiator;
//! - `sets/<id>/{prepared,frozen,captured,ready}/<member>` (leased): the
//!   barriers;
//! - `sets/<id>/outcome`: `commit` or `abort ...`, created once (a CAS);
//! - `sets/<id>/held/<member>`: this host recorded its part.
//!
//! It never touches a volume and never talks to a writer.

mod barrier;
mod provider;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};

pub use barrier::{Outcome, Plan};
pub use provider::{ClusterProvider, PartReport};

use crate::config::ClusterConfig;

/// How long one etcd request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the daemon waits before it tries etcd again.
const RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cluster: {0}")]
    Runtime(std::io::Error),
    #[error("this host ({0}) is not a member of the cluster now (is etcd reachable?)")]
    NotAMember(String),
    #[error("{0}")]
    Malformed(String),
    #[error("cluster set {0} is being made; try again when it is done")]
    Busy(String),
}

pub type Result<T> = std::result::Result<T, ClusterError>;

/// The daemon's link to its cluster.
pub struct Cluster {
    config: ClusterConfig,
    runtime: tokio::runtime::Runtime,
    client: Client,
    /// The member lease in force, once granted; None while etcd is away.
    lease: Arc<Mutex<Option<i64>>>,
    /// The daemon stops: no new lease is taken.
    leaving: Arc<AtomicBool>,
}

impl Cluster {
    /// Connects (lazily: etcd may come later). Membership begins with
    /// `on_plans`, once this host can hear plans.
    pub fn start(config: ClusterConfig) -> Result<Arc<Cluster>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("umbra-cluster")
            .enable_all()
            .build()
            .map_err(ClusterError::Runtime)?;
        let options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        let endpoints: Vec<String> = config
            .endpoints
            .iter()
            .map(|e| e.trim_start_matches("http://").to_string())
            .collect();
        let client = runtime.block_on(Client::connect(endpoints, Some(options)))?;
        Ok(Arc::new(Cluster {
            config,
            runtime,
            client,
            lease: Arc::new(Mutex::new(None)),
            leaving: Arc::new(AtomicBool::new(false)),
        }))
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn member(&self) -> &str {
        &self.config.member
    }

    /// The full key of `rest` in this cluster.
    fn key(&self, rest: &str) -> String {
        format!("/{}/{}/{}", self.config.prefix, self.config.name, rest)
    }

    fn set_key(&self, id: &str, rest: &str) -> String {
        self.key(&format!("sets/{id}/{rest}"))
    }

    /// The member lease in force.
    fn lease(&self) -> Option<i64> {
        *self.lease.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs one etcd request to its end or REQUEST_TIMEOUT.
    fn run<T>(
        &self,
        request: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        self.run_within(REQUEST_TIMEOUT, request)
    }

    /// Runs one etcd request to its end or `limit`.
    fn run_within<T>(
        &self,
        limit: Duration,
        request: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        self.runtime.block_on(async {
            match tokio::time::timeout(limit, request).await {
                Ok(answer) => Ok(answer?),
                Err(_) => Err(ClusterError::Timeout(limit)),
            }
        })
    }

    /// Every key under `rest` and its value.
    fn scan(&self, rest: &str) -> Result<BTreeMap<String, String>> {
        let prefix = self.key(rest);
        let mut client = self.client.clone();
        let answer = self.run(client.get(prefix.clone(), Some(GetOptions::new().with_prefix())))?;
        Ok(answer
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let key = key.strip_prefix(&prefix).unwrap_or(&key).to_string();
                (key, String::from_utf8_lossy(kv.value()).into_owned())
            })
            .collect())
    }

    /// The members whose lease is alive now.
    pub fn members(&self) -> Result<Vec<String>> {
        Ok(self.scan("members/")?.into_keys().collect())
    }

    /// Puts `key` = `value`, under this member's lease when `leased`.
    fn put(&self, key: String, value: String, leased: bool) -> Result<()> {
        let options = if leased {
            let lease = self
                .lease()
                .ok_or_else(|| ClusterError::NotAMember(self.config.member.clone()))?;
            Some(PutOptions::new().with_lease(lease))
        } else {
            None
        };
        let mut client = self.client.clone();
        self.run(client.put(key, value, options))?;
        Ok(())
    }

    fn delete(&self, key: String, prefix: bool) -> Result<()> {
        let options = prefix.then(|| etcd_client::DeleteOptions::new().with_prefix());
        let mut client = self.client.clone();
        self.run(client.delete(key, options))?;
        Ok(())
    }

    /// Which members hold cluster set `id` (wrote `held/<member>`).
    pub fn holders(&self, id: &str) -> Result<Vec<String>> {
        Ok(self
            .scan(&format!("sets/{id}/held/"))?
            .into_keys()
            .collect())
    }

    /// Leaves the cluster at once (the daemon stops): the lease is revoked,
    /// so a cluster set planned meanwhile does not wait for this host's
    /// lease to expire.
    pub fn leave(&self) {
        self.leaving.store(true, Ordering::Release);
        let Some(lease) = self
            .lease
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let mut client = self.client.clone();
        match self.run(client.lease_revoke(lease)) {
            Ok(_) => tracing::info!("left the cluster"),
            Err(e) => tracing::warn!("leaving the cluster: {e}"),
        }
    }

    /// The cluster sets etcd says this host holds.
    pub fn held_here(&self) -> Result<Vec<String>> {
        let mark = format!("/held/{}", self.config.member);
        Ok(self
            .scan("sets/")?
            .into_keys()
            .filter_map(|k| k.strip_suffix(&mark).map(str::to_string))
            .collect())
    }

    /// This host no longer holds cluster set `id` (its part was deleted).
    /// The plan and the outcome stay, even once no member holds the set: a
    /// member whose part is still in doubt (etcd was away) may yet need
    /// the outcome, and without it would abort a committed part.
    pub fn forget(&self, id: &str) -> Result<()> {
        self.delete(
            self.set_key(id, &format!("held/{}", self.config.member)),
            false,
        )
    }

    /// Calls `heard` (on a thread of its own) with every plan another
    /// member writes that names this host, for as long as the daemon runs.
    /// This host becomes a member once the watch of plans is in place, so
    /// that no plan names a member that cannot hear it.
    pub fn on_plans(self: &Arc<Self>, heard: impl Fn(Plan) + Send + Sync + 'static) {
        let heard = Arc::new(heard);
        let cluster = self.clone();
        self.runtime.spawn(async move {
            let prefix = cluster.key("sets/");
            let mut member = false;
            loop {
                let mut client = cluster.client.clone();
                let watched = client
                    .watch(prefix.clone(), Some(WatchOptions::new().with_prefix()))
                    .await;
                let mut stream = match watched {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::debug!("watching cluster plans: {e}");
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                };
                while let Ok(Some(answer)) = stream.message().await {
                    if answer.canceled() {
                        break;
                    }
                    if answer.created() && !member {
                        member = true;
                        tokio::spawn(keep_membership(
                            cluster.client.clone(),
                            cluster.key(&format!("members/{}", cluster.config.member)),
                            cluster.config.lease_ttl,
                            cluster.lease.clone(),
                            cluster.leaving.clone(),
                        ));
                    }
                    for event in answer.events() {
                        let Some(kv) = event.kv() else { continue };
                        // Only a plan's first version is news.
                        if event.event_type() != EventType::Put
                            || kv.version() != 1
                            || !kv.key().ends_with(b"/plan")
                        {
                            continue;
                        }
                        let plan = match Plan::parse(kv.value()) {
                            Ok(plan) => plan,
                            Err(e) => {
                                tracing::warn!("a cluster plan that does not parse: {e}");
                                continue;
                            }
                        };
                        if plan.initiator == cluster.config.member
                            || !plan.members.contains(&cluster.config.member)
                        {
                            continue;
                        }
                        let heard = heard.clone();
                        let spawned = std::thread::Builder::new()
                            .name("umbra-cluster-part".into())
                            .spawn(move || heard(plan));
                        if let Err(e) = spawned {
                            tracing::error!("starting this host's part of a cluster set: {e}");
                        }
                    }
                }
                tracing::debug!("the watch of cluster plans ended; watching again");
                tokio::time::sleep(RETRY).await;
            }
        });
    }
}

/// Keeps `/…/members/<member>` under a lease of `ttl`, granting a new one
/// whenever etcd lost the last (it was away longer than `ttl`).
async fn keep_membership(
    client: Client,
    key: String,
    ttl: Duration,
    lease: Arc<Mutex<Option<i64>>>,
    leaving: Arc<AtomicBool>,
) {
    let set = |id: Option<i64>| *lease.lock().unwrap_or_else(PoisonError::into_inner) = id;
    let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1);
    let beat = ttl / 3;
    while !leaving.load(Ordering::Acquire) {
        let mut c = client.clone();
        let granted = async {
            let id = c.lease_grant(ttl_secs, None).await?.id();
            c.put(key.clone(), "", Some(PutOptions::new().with_lease(id)))
                .await?;
            let (keeper, stream) = c.lease_keep_alive(id).await?;
            Ok::<_, etcd_client::Error>((id, keeper, stream))
        };
        let (id, mut keeper, mut stream) =
            match tokio::time::timeout(REQUEST_TIMEOUT, granted).await {
                Ok(Ok(kept)) => kept,
                Ok(Err(e)) => {
                    tracing::debug!("cluster membership: {e}");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
                Err(_) => {
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
        if leaving.load(Ordering::Acquire) {
            let _ = c.lease_revoke(id).await;
            return;
        }
        set(Some(id));
        tracing::info!(lease = id, "joined the cluster");
        loop {
            tokio::time::sleep(beat).await;
            let renewed = async {
                keeper.keep_alive().await?;
                stream.message().await
            };
            match tokio::time::timeout(beat.max(Duration::from_millis(500)), renewed).await {
                Ok(Ok(Some(answer))) if answer.ttl() > 0 => {}
                _ => break,
            }
        }
        set(None);
        if leaving.load(Ordering::Acquire) {
            return;
        }
        tracing::warn!("lost the cluster membership lease; joining again");
    }
}
