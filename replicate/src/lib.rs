//! Replication of umbra's sets into restic-format repositories, through
//! rustic_core: opening (or initialising) a repository from a restic
//! repository string, finding what it already holds of umbra's sets, and
//! writing one volume of one set as one snapshot, incrementally from the
//! previous replicated set when there is one. It knows nothing of the
//! daemon: the caller passes the set's browser path and umbra's diff.

mod gate;
pub mod node;
pub mod source;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rustic_backend::BackendOptions;
use rustic_core::jiff::tz::TimeZone;
use rustic_core::repofile::SnapshotFile;
use rustic_core::{
    BackupOptions, ConfigOptions, Credentials, IndexedIdsStatus, KeyOptions, ParentOptions,
    Repository, RepositoryOptions, SnapshotGroupCriterion, SnapshotOptions,
};

pub use rustic_core::jiff::Timestamp;
pub use source::{Counters, Plan};

/// Tags every snapshot umbra writes carries; `umbra-set:`, `umbra-set-id:`
/// and `umbra-volume:` tags say which set and volume it holds.
pub const TAG: &str = "umbra";
const TAG_SET: &str = "umbra-set:";
const TAG_SET_ID: &str = "umbra-set-id:";
const TAG_VOLUME: &str = "umbra-volume:";

#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    #[error("repository {repository}: {message}")]
    Repository { repository: String, message: String },
    #[error("{0}")]
    BadUrl(String),
    #[error(
        "replicating {volume} of set {set}: {errors} entries could not be read (first: {first}); no snapshot kept"
    )]
    Unreadable {
        volume: String,
        set: String,
        errors: u64,
        first: String,
    },
    #[error("replicating {volume} of set {set}: {message}; no snapshot kept")]
    Inconsistent {
        volume: String,
        set: String,
        message: String,
    },
}

type Result<T> = std::result::Result<T, ReplicateError>;

/// Where to replicate to.
#[derive(Clone)]
pub struct Target {
    /// A restic repository string: a local path, or
    /// `s3:http(s)://host[:port]/bucket[/prefix]`.
    pub repository: String,
    pub password: String,
    /// rustic's cache of the repository's trees and index.
    pub cache_dir: PathBuf,
    /// S3 credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
    pub s3_keys: Option<(String, String)>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("repository", &self.repository)
            .finish_non_exhaustive()
    }
}

/// A repository opened for replication.
pub struct Repo {
    repo: Repository<IndexedIdsStatus>,
    name: String,
    target: Target,
    gate: Arc<gate::Gate>,
    /// The repository's config id: the same repository under another URL
    /// is the same repository.
    pub id: String,
}

/// A snapshot umbra wrote, as the repository holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub snapshot: String,
    pub volume: String,
    pub set_name: String,
    pub set_id: u64,
    pub time: Timestamp,
    pub parent: Option<String>,
    tree: rustic_core::TreeId,
}

/// One volume of one set, to be written as one snapshot.
pub struct Job<'a> {
    pub volume: &'a str,
    /// The volume in the browser: `<snapshots>/<set>/<volume>`.
    pub root: PathBuf,
    /// Stands for the volume in hard-link identities: fixed per volume.
    pub device_id: u64,
    pub set_name: &'a str,
    pub set_id: u64,
    /// The set's instant: the snapshot's time.
    pub instant: Timestamp,
    pub host: &'a str,
}

/// What one volume's replication did (also the daemon's answer for it,
/// flattened into `umbra replicate --json`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub snapshot: String,
    pub parent: Option<String>,
    /// The parent's set, when incremental.
    pub parent_set: Option<String>,
    /// Entries (files, directories, ...) in the snapshot.
    pub entries: u64,
    pub files: u64,
    /// Entries stat'ed in the set: the rest came from the parent.
    pub stats: u64,
    /// Files opened and bytes read from the set.
    pub opened: u64,
    pub bytes_read: u64,
    /// Bytes the repository grew by (packed).
    pub bytes_added: u64,
    pub seconds: f64,
}

/// The path of a volume inside its snapshots: stable, so that restic's
/// own grouping puts a volume's snapshots together.
pub fn snapshot_path(volume: &str) -> PathBuf {
    Path::new("/umbra").join(volume)
}

impl Repo {
    /// Opens the repository, initialising it when it has no config yet.
    pub fn open(target: &Target) -> Result<Repo> {
        Repo::open_or_init(target, true)
    }

    /// Opens the repository, which must exist.
    pub fn open_existing(target: &Target) -> Result<Repo> {
        Repo::open_or_init(target, false)
    }

    fn open_or_init(target: &Target, init: bool) -> Result<Repo> {
        let name = target.repository.clone();
        let err = |e: Box<rustic_core::RusticError>| ReplicateError::Repository {
            repository: name.clone(),
            message: unreachable_first(one_line(&e.display_log())),
        };
        let backends = backend_options(target)?.to_backends().map_err(err)?;
        let gate = Arc::new(gate::Gate::default());
        let backends = rustic_core::RepositoryBackends::new(
            Arc::new(gate::GatedBackend {
                inner: backends.repository(),
                gate: gate.clone(),
            }),
            None,
        );
        let opts = RepositoryOptions::default().cache_dir(target.cache_dir.clone());
        let repo = Repository::new(&opts, &backends).map_err(err)?;
        let credentials = Credentials::password(&target.password);
        let repo = if repo.config_id().map_err(err)?.is_none() {
            if !init {
                return Err(ReplicateError::Repository {
                    repository: name.clone(),
                    message: "no repository there yet".into(),
                });
            }
            repo.init(
                &credentials,
                &KeyOptions::default(),
                &ConfigOptions::default(),
            )
            .map_err(err)?
        } else {
            repo.open(&credentials).map_err(err)?
        };
        let id = repo.config().id.to_hex().to_string();
        let repo = repo.to_indexed_ids().map_err(err)?;
        Ok(Repo {
            repo,
            name,
            id,
            target: target.clone(),
            gate,
        })
    }

    /// The repository opened again: its index read anew, with what this
    /// process wrote since it was opened (the next set's parent).
    pub fn reopen(self) -> Result<Repo> {
        Repo::open(&self.target)
    }

    #[allow(clippy::boxed_local)] // rustic hands its errors boxed
    fn err(&self, e: Box<rustic_core::RusticError>) -> ReplicateError {
        ReplicateError::Repository {
            repository: self.name.clone(),
            message: one_line(&e.display_log()),
        }
    }

    /// Every snapshot umbra wrote into the repository, oldest first.
    pub fn held(&self) -> Result<Vec<Held>> {
        let snaps = self
            .repo
            .get_matching_snapshots(|s| s.tags.contains(TAG))
            .map_err(|e| self.err(e))?;
        let mut held: Vec<Held> = snaps.iter().filter_map(held_of).collect();
        held.sort_by(|a, b| (a.set_id, &a.volume).cmp(&(b.set_id, &b.volume)));
        Ok(held)
    }

    /// The snapshot to build `job` on: the newest of its volume whose set
    /// is older than the job's and still exists (`exists`), as umbra's
    /// diff needs both sets.
    pub fn parent_for(&self, job: &Job<'_>, exists: impl Fn(u64) -> bool) -> Result<Option<Held>> {
        Ok(self
            .held()?
            .into_iter()
            .filter(|h| h.volume == job.volume && h.set_id < job.set_id && exists(h.set_id))
            .max_by_key(|h| h.set_id))
    }

    /// The snapshot of `job`'s volume and set already in the repository.
    pub fn already(&self, job: &Job<'_>) -> Result<Option<Held>> {
        Ok(self
            .held()?
            .into_iter()
            .find(|h| h.volume == job.volume && h.set_id == job.set_id))
    }

    /// Writes `job` as one snapshot, on `parent` with `plan` (umbra's diff
    /// from the parent's set) when given. A run that could not read
    /// everything it should hold keeps no snapshot.
    pub fn replicate(
        &self,
        job: &Job<'_>,
        parent: Option<(&Held, Plan)>,
        counters: Arc<Counters>,
    ) -> Result<Outcome> {
        let started = std::time::Instant::now();
        let inconsistent = |message: String| ReplicateError::Inconsistent {
            volume: job.volume.to_string(),
            set: job.set_name.to_string(),
            message,
        };
        let tags = [
            TAG.to_string(),
            format!("{TAG_SET}{}", job.set_name),
            format!("{TAG_SET_ID}{}", job.set_id),
            format!("{TAG_VOLUME}{}", job.volume),
        ];
        let mut opts = SnapshotOptions::default()
            .time(job.instant.to_zoned(TimeZone::UTC))
            .host(job.host.to_string())
            .command("umbra replicate".to_string());
        for tag in &tags {
            if tag.contains(',') {
                return Err(inconsistent(format!("the tag {tag:?} cannot hold a comma")));
            }
            opts = opts.add_tags(tag).map_err(|e| self.err(e))?;
        }
        let snap = opts.to_snapshot().map_err(|e| self.err(e))?;
        let mut parent_opts = ParentOptions::default()
            .group_by(SnapshotGroupCriterion::new())
            .force(parent.is_none());
        if let Some((held, _)) = &parent {
            parent_opts = parent_opts.parents(vec![held.snapshot.clone()]);
        }
        let backup = BackupOptions::default().parent_opts(parent_opts);
        let parent_used = parent.as_ref().map(|(h, _)| (*h).clone());
        let path = snapshot_path(job.volume);
        let (src, tx) = source::channel();
        let walk = source::Walk {
            repo: &self.repo,
            root: job.root.clone(),
            snapshot_path: path.clone(),
            device_id: job.device_id,
            counters: counters.clone(),
            parent: parent
                .as_ref()
                .map(|(h, _)| h.tree)
                .zip(parent.map(|(_, p)| p)),
        };
        self.gate.watch(Some(counters.clone()));
        let saved = std::thread::scope(|s| {
            s.spawn(move || walk.run(&tx));
            self.repo.archive(&backup, &src, snap, &[path])
        });
        self.gate.watch(None);
        let saved = match saved {
            Ok(saved) => saved,
            Err(e) => {
                let errors = counters.errors.load(Ordering::Relaxed);
                if errors > 0 {
                    return Err(ReplicateError::Unreadable {
                        volume: job.volume.to_string(),
                        set: job.set_name.to_string(),
                        errors,
                        first: first_error(&counters),
                    });
                }
                return Err(self.err(e));
            }
        };
        let snapshot = saved.id.to_hex().to_string();
        let errors = counters.errors.load(Ordering::Relaxed);
        let files = counters.files.load(Ordering::Relaxed);
        let processed = saved
            .summary
            .as_ref()
            .map(|s| s.total_files_processed)
            .unwrap_or_default();
        // The gate kept rustic from saving a snapshot with holes; a
        // failure counted after the save, or a count that disagrees, is
        // still not kept.
        let check = if errors > 0 {
            Err(ReplicateError::Unreadable {
                volume: job.volume.to_string(),
                set: job.set_name.to_string(),
                errors,
                first: first_error(&counters),
            })
        } else if processed != counters.leaves.load(Ordering::Relaxed) {
            Err(inconsistent(format!(
                "rustic stored {processed} of {} entries",
                counters.leaves.load(Ordering::Relaxed)
            )))
        } else {
            Ok(())
        };
        let used = saved.parent.map(|p| p.to_hex().to_string());
        if let Some(held) = &parent_used
            && used.as_deref() != Some(held.snapshot.as_str())
        {
            // Still whole (the parent's nodes carry their content), but
            // every file was read: say so.
            tracing::warn!(
                "rustic did not use {} as the parent of {snapshot}",
                held.snapshot
            );
        }
        if let Err(e) = check {
            self.repo
                .delete_snapshots(&[saved.id])
                .map_err(|e| self.err(e))?;
            return Err(e);
        }
        Ok(Outcome {
            snapshot,
            parent: used,
            parent_set: parent_used.map(|h| h.set_name.clone()),
            entries: counters.entries.load(Ordering::Relaxed),
            files,
            stats: counters.stats.load(Ordering::Relaxed),
            opened: counters.opened.load(Ordering::Relaxed),
            bytes_read: counters.bytes_read.load(Ordering::Relaxed),
            bytes_added: saved
                .summary
                .as_ref()
                .map(|s| s.data_added_packed)
                .unwrap_or_default(),
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

fn first_error(counters: &Counters) -> String {
    counters
        .first_error
        .lock()
        .ok()
        .and_then(|f| f.clone())
        .unwrap_or_default()
}

fn held_of(snap: &SnapshotFile) -> Option<Held> {
    let tag = |prefix: &str| {
        snap.tags
            .iter()
            .find_map(|t| t.strip_prefix(prefix))
            .map(str::to_string)
    };
    Some(Held {
        snapshot: snap.id.to_hex().to_string(),
        volume: tag(TAG_VOLUME)?,
        set_name: tag(TAG_SET)?,
        set_id: tag(TAG_SET_ID)?.parse().ok()?,
        time: snap.time.timestamp(),
        parent: snap.parent.map(|p| p.to_hex().to_string()),
        tree: snap.tree,
    })
}

/// rustic's backend options for a restic repository string: a local path,
/// or `s3:http(s)://host[:port]/bucket[/prefix]` through opendal.
fn backend_options(target: &Target) -> Result<BackendOptions> {
    let Some(url) = target.repository.strip_prefix("s3:") else {
        if target.repository.contains(':') && !target.repository.starts_with('/') {
            return Err(ReplicateError::BadUrl(format!(
                "{}: a repository is a local absolute path or s3:http(s)://host/bucket/prefix",
                target.repository
            )));
        }
        return Ok(BackendOptions::default().repository(target.repository.clone()));
    };
    let bad = || {
        ReplicateError::BadUrl(format!(
            "{}: an S3 repository is s3:http(s)://host[:port]/bucket[/prefix]",
            target.repository
        ))
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let (host, path) = rest.split_once('/').ok_or_else(bad)?;
    let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
    if bucket.is_empty() || host.is_empty() {
        return Err(bad());
    }
    let (key, secret) = target.s3_keys.clone().ok_or_else(|| {
        ReplicateError::BadUrl(format!(
            "{}: S3 needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            target.repository
        ))
    })?;
    let options: BTreeMap<String, String> = [
        ("bucket", bucket.to_string()),
        ("root", format!("/{prefix}")),
        ("endpoint", format!("{scheme}://{host}")),
        ("region", "us-east-1".to_string()),
        ("access_key_id", key),
        ("secret_access_key", secret),
        ("disable_config_load", "true".to_string()),
        ("disable_ec2_metadata", "true".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Ok(BackendOptions::default()
        .repository("opendal:s3".to_string())
        .options(options))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An S3 server that cannot be reached makes rustic say first that the
/// repository's `config` "does not exist" (its stat failed); the cause is
/// at the end of the chain. Says that first, then the rest.
fn unreachable_first(message: String) -> String {
    const SENDING: &str = "error sending request for url (";
    match message.find(SENDING) {
        Some(at) => {
            let url = &message[at + SENDING.len()..];
            let url = url.split(')').next().unwrap_or(url);
            format!("cannot reach {url} (is the server up?); {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod unreachable_tests {
    use super::unreachable_first;

    #[test]
    fn an_unreachable_server_is_named_first() {
        let said = unreachable_first(
            "Error: Path `config` does not exist. caused by: send http request, source: error sending request for url (http://127.0.0.1:1/bucket/config)".into(),
        );
        assert!(
            said.starts_with("cannot reach http://127.0.0.1:1/bucket/config (is the server up?); "),
            "{said}"
        );
        assert_eq!(unreachable_first("wrong password".into()), "wrong password");
    }
}
