//! The `[cluster]` table: which etcd the daemon meets its cluster in, the
//! cluster's and this host's names, the member lease and the deadline of a
//! cluster set. Every problem is one line that names the key.

use std::time::Duration;

use serde::Deserialize;

/// The default member lease: a dead host drops out within this.
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(3);
/// The default deadline of a whole cluster set, plan to outcome.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd's client URLs, such as `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// The cluster: every member of it names the same.
    pub name: String,
    /// This host, unique in the cluster.
    pub member: String,
    /// The first part of every key umbra writes in etcd.
    pub prefix: String,
    pub lease_ttl: Duration,
    pub deadline: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    endpoints: Vec<String>,
    name: String,
    member: String,
    prefix: Option<String>,
    lease_ttl: Option<String>,
    deadline: Option<String>,
}

impl RawCluster {
    pub fn resolve(&self) -> Result<ClusterConfig, String> {
        if self.endpoints.is_empty() {
            return Err("endpoints: name at least one etcd endpoint".into());
        }
        if let Some(e) = self.endpoints.iter().find(|e| !e.starts_with("http://")) {
            return Err(format!(
                "endpoints: {e:?} must be an http:// URL (TLS to etcd is not supported yet)"
            ));
        }
        for (key, value) in [("name", &self.name), ("member", &self.member)] {
            if value.is_empty()
                || !value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(format!(
                    "{key}: {value:?} must be letters, digits, '-', '_' or '.'"
                ));
            }
        }
        let duration = |key: &str, text: &Option<String>, default: Duration| match text {
            None => Ok(default),
            Some(t) => humantime::parse_duration(t)
                .map_err(|e| format!("{key}: {t:?} is not a duration ({e})")),
        };
        let lease_ttl = duration("lease_ttl", &self.lease_ttl, DEFAULT_LEASE_TTL)?;
        if lease_ttl < Duration::from_secs(1) {
            return Err("lease_ttl: etcd's leases are whole seconds, at least 1s".into());
        }
        let deadline = duration("deadline", &self.deadline, DEFAULT_DEADLINE)?;
        if deadline.is_zero() {
            return Err("deadline: must be more than 0".into());
        }
        Ok(ClusterConfig {
            endpoints: self.endpoints.clone(),
            name: self.name.clone(),
            member: self.member.clone(),
            prefix: self.prefix.clone().unwrap_or_else(|| "umbra".into()),
            lease_ttl,
            deadline,
        })
    }
}
