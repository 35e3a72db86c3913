//! The daemon's configuration: the TOML text (a file, or the embedded default
//! in `default.toml`), every path in it made absolute, and the checks that
//! keep volumes, mountpoints and the state directory apart: on the paths as
//! written when it is parsed, and on where they really lead when the daemon
//! asks (`check_on_disk`, in places.rs). It reads the config file and,
//! asked, looks at the disk; it never creates a directory and never talks
//! to the daemon.

mod cluster;
mod places;
pub mod replica;
mod schedule;
mod storage;

pub use cluster::ClusterConfig;
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;
pub use storage::StorageConfig;
use storage::{DEFAULT_MAX_SETS, DiffSize, RawDurability, RawOnFull};

use umbra_coordinator::ExecWriter;
use umbra_coordinator::protocol::MAX_TIMEOUT_SECS;

use serde::{Deserialize, Deserializer};

use crate::naming::{DEFAULT_NAME_FORMAT, LATEST, NameFormat, NameFormatError};

/// The embedded default: `umbra up` without `--config` runs it, and a client
/// told nothing looks for the daemon at its socket. It is documentation too.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

const DEFAULT_THREADS: usize = 4;
/// Control clients served at once.
pub const DEFAULT_MAX_CLIENTS: usize = 64;
/// How long a control client may take to send one request line.
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `client_timeout` accepted: a day.
const MAX_CLIENT_TIMEOUT_SECS: f64 = 86_400.0;
const DEFAULT_WRITER_TIMEOUT_SECS: u64 = 60;
const DEFAULT_HOLD_TIMEOUT_SECS: u64 = 10;
const SOCKET_FILE: &str = "control.sock";
/// FUSE worker threads per mount, at most: each is a real thread.
const MAX_THREADS: usize = 1024;

/// A checked configuration whose paths are all absolute and normalized.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub origin: Origin,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// The mountpoint of the shadow copy browser.
    pub snapshots: PathBuf,
    pub name_format: NameFormat,
    /// FUSE worker threads per mount.
    pub threads: usize,
    /// The kernel's writeback cache on the live mounts.
    pub writeback_cache: bool,
    /// Control clients served at once; one more is refused.
    pub max_clients: usize,
    /// The group whose members may use the control socket (mode 0660);
    /// without it only the daemon's user can (0600).
    pub socket_group: Option<u32>,
    /// How long a control client may take to send a whole request line
    /// (or to take an answer) before it is dropped.
    pub client_timeout: Duration,
    pub volumes: Vec<VolumeConfig>,
    /// How long a writer may take to answer an event, and to stay frozen
    /// from Freeze to Thaw, unless it says otherwise.
    pub writer_timeout: Duration,
    /// How long the provider may hold the volumes' mutations.
    pub hold_timeout: Duration,
    /// The exec writers (`[[writer]]` tables).
    pub writers: Vec<ExecWriter>,
    /// The diff area's limits and durability.
    pub storage: StorageConfig,
    /// When sets are taken and which retention keeps (`[schedule]`).
    pub schedule: Option<crate::schedule::Schedule>,
    /// The cluster this host takes cluster sets with (`[cluster]`).
    pub cluster: Option<ClusterConfig>,
    /// Restic repositories sets are written into (`[[replica]]` tables).
    pub replicas: Vec<replica::ReplicaConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeConfig {
    pub name: String,
    pub backing: PathBuf,
    /// Where applications use the volume: the live FUSE mount of a `cow`
    /// volume, the subvolume itself (`backing`) for `btrfs`.
    pub mount: PathBuf,
    pub provider: ProviderChoice,
}

impl VolumeConfig {
    /// The live mount is stacked over the backing directory itself.
    pub fn in_place(&self) -> bool {
        self.backing == self.mount
    }

    /// Whether umbra mounts the volume live (every provider but btrfs).
    pub fn mounted(&self) -> bool {
        self.provider != ProviderChoice::Btrfs
    }
}

/// The `provider` of a volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderChoice {
    /// Copy-on-write over a FUSE live mount, on any local filesystem.
    #[default]
    Cow,
    /// Read-only btrfs snapshots of a subvolume used directly.
    Btrfs,
    /// btrfs where the backing is the root of a btrfs subvolume, else cow;
    /// decided when the daemon starts (`Config::decide_providers`).
    Auto,
}

/// Where a configuration came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    Embedded,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", shown(path)),
            Origin::Embedded => f.write_str("embedded default config"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {}: {source}", shown(.path))]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{origin}: {}{message}", line_prefix(*.line))]
    Syntax {
        origin: Origin,
        line: Option<usize>,
        message: String,
    },
    #[error("{origin}: {problem}")]
    Invalid {
        origin: Origin,
        problem: Box<Problem>,
    },
}

/// A path in an error message: as it is, but with control characters (a
/// newline in a name, say) escaped, so that every error stays one line.
pub fn shown(path: &Path) -> String {
    crate::render::printable(&path.to_string_lossy())
}

fn line_prefix(line: Option<usize>) -> String {
    line.map(|n| format!("line {n}: ")).unwrap_or_default()
}

/// What makes a well-formed configuration unusable.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("max_sets must be at least 1")]
    ZeroSets,
    #[error("socket_group {0:?}: no such group")]
    NoSuchGroup(String),
    #[error("no [[volume]] table: at least one volume is needed")]
    NoVolumes,
    #[error("a volume has an empty name")]
    EmptyVolumeName,
    #[error("volume name {0:?} contains '/' or NUL")]
    BadVolumeName(String),
    #[error("volume name {0:?} is reserved")]
    ReservedVolumeName(String),
    #[error("two volumes are named {0:?}")]
    DuplicateVolume(String),
    #[error("{0} is empty")]
    EmptyPath(String),
    #[error("{first} and {second} have the same mountpoint {}", shown(.path))]
    SameMountpoint {
        first: String,
        second: String,
        path: PathBuf,
    },
    #[error("the mountpoint of {inner} ({}) is inside the mountpoint of {outer} ({})", shown(.inner_path), shown(.outer_path))]
    NestedMountpoint {
        inner: String,
        inner_path: PathBuf,
        outer: String,
        outer_path: PathBuf,
    },
    #[error("{first} and {second} have the same backing directory {}", shown(.path))]
    SameBacking {
        first: String,
        second: String,
        path: PathBuf,
    },
    #[error("{key} {} is inside {what} {}", shown(.path), shown(.place))]
    InsideVolume {
        key: String,
        path: PathBuf,
        what: String,
        place: PathBuf,
    },
    #[error(
        "{inner} {} is {} {outer} {}{resolved}",
        shown(.inner_path),
        if *.same { "the same directory as" } else { "inside" },
        shown(.outer_path)
    )]
    Overlap {
        inner: String,
        inner_path: PathBuf,
        outer: String,
        outer_path: PathBuf,
        same: bool,
        /// Where the paths really lead, when the disk says more than
        /// their words.
        resolved: String,
    },
    #[error(
        "volume {volume:?} has provider = \"btrfs\": applications use its subvolume directly, so mount must be left out or equal backing, not {}",
        shown(.mount)
    )]
    BtrfsMount { volume: String, mount: PathBuf },
    #[error("threads must be at least 1")]
    ZeroThreads,
    #[error("max_clients must be at least 1")]
    ZeroClients,
    #[error(
        "client_timeout must be a number of seconds above 0 and at most {MAX_CLIENT_TIMEOUT_SECS}, not {0}"
    )]
    ClientTimeout(String),
    #[error("{0} must be at least 1")]
    ZeroTimeout(String),
    #[error("{key} must be at most {MAX_TIMEOUT_SECS} (a day), not {secs}")]
    LongTimeout { key: String, secs: u64 },
    #[error("threads must be at most {MAX_THREADS}, not {0}")]
    ManyThreads(usize),
    #[error("writer {writer:?}: {problem}")]
    Writer { writer: String, problem: String },
    #[error("name_format: {0}")]
    NameFormat(#[from] NameFormatError),
    #[error("schedule: {0}")]
    Schedule(String),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("{0}")]
    Replica(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: PathBuf,
    socket: Option<PathBuf>,
    snapshots: PathBuf,
    name_format: Option<String>,
    threads: Option<usize>,
    writeback_cache: Option<bool>,
    max_clients: Option<usize>,
    socket_group: Option<String>,
    #[serde(default, deserialize_with = "seconds")]
    client_timeout: Option<f64>,
    writer_timeout_secs: Option<u64>,
    hold_timeout_secs: Option<u64>,
    #[serde(default, deserialize_with = "storage::size")]
    max_diff_size: Option<DiffSize>,
    max_sets: Option<usize>,
    on_full: Option<RawOnFull>,
    durability: Option<RawDurability>,
    #[serde(default, rename = "volume")]
    volumes: Vec<RawVolume>,
    #[serde(default, rename = "writer")]
    writers: Vec<RawWriter>,
    schedule: Option<schedule::RawSchedule>,
    cluster: Option<cluster::RawCluster>,
    #[serde(default, rename = "replica")]
    replicas: Vec<replica::RawReplica>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWriter {
    name: String,
    #[serde(default)]
    volumes: Vec<String>,
    exec: PathBuf,
    timeout_secs: Option<u64>,
    required: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVolume {
    name: String,
    backing: PathBuf,
    mount: Option<PathBuf>,
    #[serde(default)]
    provider: ProviderChoice,
}

impl Config {
    /// Reads the config file `file`; relative paths in it resolve against
    /// its directory (and `file` itself, if relative, against `cwd`).
    pub fn load(file: &Path, cwd: &Path) -> Result<Config, ConfigError> {
        let path = normalize(&cwd.join(file));
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        Config::parse(&text, Origin::File(path), &base)
    }

    /// The embedded default, its relative paths resolved against `cwd`.
    pub fn embedded(cwd: &Path) -> Result<Config, ConfigError> {
        Config::parse(DEFAULT_CONFIG, Origin::Embedded, cwd)
    }

    /// Parses and checks `text`; relative paths resolve against `base`.
    pub fn parse(text: &str, origin: Origin, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            origin: origin.clone(),
            line: e.span().map(|span| line_of(text, span.start)),
            message: e.message().trim().replace(['\n', '\r'], " "),
        })?;
        raw.resolve(base, origin.clone())
            .map_err(|problem| ConfigError::Invalid {
                origin,
                problem: Box::new(problem),
            })
    }

    /// Decides each `provider = "auto"`: btrfs where the backing is the root
    /// of a btrfs subvolume and the volume is used where it is (no other
    /// mount), else cow. Called once the backings can be looked at.
    pub fn decide_providers(&mut self) {
        for volume in &mut self.volumes {
            if volume.provider == ProviderChoice::Auto {
                volume.provider =
                    if volume.in_place() && umbra_fs::BtrfsVolume::is_subvolume(&volume.backing) {
                        ProviderChoice::Btrfs
                    } else {
                        ProviderChoice::Cow
                    };
            }
        }
    }

    /// Every mountpoint with what is mounted there: the volumes in order,
    /// then the snapshot browser.
    pub fn mountpoints(&self) -> impl Iterator<Item = (String, &Path)> {
        self.volumes
            .iter()
            .filter(|v| v.mounted())
            .map(|v| (format!("volume {:?}", v.name), v.mount.as_path()))
            .chain(std::iter::once((
                "snapshots".to_string(),
                self.snapshots.as_path(),
            )))
    }

    fn check(&self) -> Result<(), Problem> {
        if self.volumes.is_empty() {
            return Err(Problem::NoVolumes);
        }
        if self.threads == 0 {
            return Err(Problem::ZeroThreads);
        }
        if self.threads > MAX_THREADS {
            return Err(Problem::ManyThreads(self.threads));
        }
        if self.max_clients == 0 {
            return Err(Problem::ZeroClients);
        }
        for (key, timeout) in [
            ("writer_timeout_secs", self.writer_timeout),
            ("hold_timeout_secs", self.hold_timeout),
        ] {
            if timeout.is_zero() {
                return Err(Problem::ZeroTimeout(key.into()));
            }
            if timeout.as_secs() > MAX_TIMEOUT_SECS {
                return Err(Problem::LongTimeout {
                    key: key.into(),
                    secs: timeout.as_secs(),
                });
            }
        }
        for (i, writer) in self.writers.iter().enumerate() {
            let problem = |problem: String| Problem::Writer {
                writer: writer.name.clone(),
                problem,
            };
            writer.registration().validate().map_err(problem)?;
            if self.writers[..i].iter().any(|w| w.name == writer.name) {
                return Err(problem("two writers have this name".into()));
            }
            if let Some(v) = writer
                .volumes
                .iter()
                .find(|v| !self.volumes.iter().any(|c| &c.name == *v))
            {
                return Err(problem(format!("no volume named {v:?}")));
            }
            if writer.timeout.is_zero() {
                return Err(problem("timeout_secs must be at least 1".into()));
            }
        }
        for (i, volume) in self.volumes.iter().enumerate() {
            check_volume_name(&volume.name)?;
            if self.volumes[..i].iter().any(|v| v.name == volume.name) {
                return Err(Problem::DuplicateVolume(volume.name.clone()));
            }
            if let Some(other) = self.volumes[..i]
                .iter()
                .find(|v| v.backing == volume.backing)
            {
                return Err(Problem::SameBacking {
                    first: format!("volume {:?}", other.name),
                    second: format!("volume {:?}", volume.name),
                    path: volume.backing.clone(),
                });
            }
        }
        let mountpoints: Vec<_> = self.mountpoints().collect();
        for (i, (inner, inner_path)) in mountpoints.iter().enumerate() {
            for (j, (outer, outer_path)) in mountpoints.iter().enumerate() {
                if i == j {
                    continue;
                }
                if inner_path == outer_path && j < i {
                    return Err(Problem::SameMountpoint {
                        first: outer.clone(),
                        second: inner.clone(),
                        path: inner_path.to_path_buf(),
                    });
                }
                if inner_path != outer_path && inner_path.starts_with(outer_path) {
                    return Err(Problem::NestedMountpoint {
                        inner: inner.clone(),
                        inner_path: inner_path.to_path_buf(),
                        outer: outer.clone(),
                        outer_path: outer_path.to_path_buf(),
                    });
                }
            }
        }
        // The diff area must not record its own writes, and neither it nor
        // the control socket may be hidden by a mount made after them.
        let mut places: Vec<(String, &Path)> = mountpoints;
        for volume in &self.volumes {
            places.push((
                format!("the backing of volume {:?}", volume.name),
                &volume.backing,
            ));
        }
        for (key, path) in [("state_dir", &self.state_dir), ("socket", &self.socket)] {
            if let Some((what, place)) = places.iter().find(|(_, place)| path.starts_with(place)) {
                return Err(Problem::InsideVolume {
                    key: key.to_string(),
                    path: path.clone(),
                    what: what.clone(),
                    place: place.to_path_buf(),
                });
            }
        }
        // The rest of the rule: backings apart and not nested, nothing
        // inside a backing but its own volume's mount in place.
        let places = places::places(self);
        let overlap = places::first_overlap(&places, |i, j| {
            places::lexical(&places[i].path, &places[j].path)
        });
        if let Some((i, j, relation)) = overlap {
            let (inner, outer) = (&places[i], &places[j]);
            return Err(Problem::Overlap {
                inner: inner.what.clone(),
                inner_path: inner.path.clone(),
                outer: outer.what.clone(),
                outer_path: outer.path.clone(),
                same: relation == places::Relation::Same,
                resolved: String::new(),
            });
        }
        Ok(())
    }

    /// The rule of `check` again, on where the paths really lead: symlinks
    /// resolved and directories compared by (dev, ino), so that `b2 -> b`
    /// or a bind mount cannot make two volumes share a backing, or put the
    /// state dir or a mountpoint inside a backing. It looks at the disk
    /// (and /proc/self/mountinfo); the daemon runs it before it creates or
    /// mounts anything.
    pub fn check_on_disk(&self) -> Result<(), ConfigError> {
        places::check_on_disk(self).map_err(|problem| ConfigError::Invalid {
            origin: self.origin.clone(),
            problem: Box::new(problem),
        })
    }
}

impl RawConfig {
    fn resolve(self, base: &Path, origin: Origin) -> Result<Config, Problem> {
        let path = |key: &str, p: &Path| -> Result<PathBuf, Problem> {
            if p.as_os_str().is_empty() {
                return Err(Problem::EmptyPath(key.to_string()));
            }
            Ok(normalize(&base.join(p)))
        };
        let state_dir = path("state_dir", &self.state_dir)?;
        let socket = match &self.socket {
            Some(socket) => path("socket", socket)?,
            None => state_dir.join(SOCKET_FILE),
        };
        let mut volumes = Vec::with_capacity(self.volumes.len());
        for raw in &self.volumes {
            let key = |k: &str| format!("{k} of volume {:?}", raw.name);
            let backing = path(&key("backing"), &raw.backing)?;
            // Without a mount, a cow volume is mounted in place and a btrfs
            // one is used where it is.
            let mount = match &raw.mount {
                Some(mount) => path(&key("mount"), mount)?,
                None => backing.clone(),
            };
            if raw.provider == ProviderChoice::Btrfs && mount != backing {
                return Err(Problem::BtrfsMount {
                    volume: raw.name.clone(),
                    mount,
                });
            }
            volumes.push(VolumeConfig {
                name: raw.name.clone(),
                backing,
                mount,
                provider: raw.provider,
            });
        }
        let mut writers = Vec::with_capacity(self.writers.len());
        for raw in &self.writers {
            writers.push(ExecWriter {
                name: raw.name.clone(),
                volumes: raw.volumes.clone(),
                exec: path(&format!("exec of writer {:?}", raw.name), &raw.exec)?,
                timeout: Duration::from_secs(
                    raw.timeout_secs
                        .or(self.writer_timeout_secs)
                        .unwrap_or(DEFAULT_WRITER_TIMEOUT_SECS),
                ),
                required: raw.required.unwrap_or(true),
            });
        }
        let config = Config {
            origin,
            socket,
            snapshots: path("snapshots", &self.snapshots)?,
            name_format: NameFormat::new(
                self.name_format.as_deref().unwrap_or(DEFAULT_NAME_FORMAT),
            )?,
            threads: self.threads.unwrap_or(DEFAULT_THREADS),
            writeback_cache: self.writeback_cache.unwrap_or(false),
            max_clients: self.max_clients.unwrap_or(DEFAULT_MAX_CLIENTS),
            socket_group: match &self.socket_group {
                None => None,
                Some(name) => {
                    Some(group_id(name).ok_or_else(|| Problem::NoSuchGroup(name.clone()))?)
                }
            },
            client_timeout: match self.client_timeout {
                None => DEFAULT_CLIENT_TIMEOUT,
                Some(secs) => client_timeout(secs)?,
            },
            writer_timeout: Duration::from_secs(
                self.writer_timeout_secs
                    .unwrap_or(DEFAULT_WRITER_TIMEOUT_SECS),
            ),
            hold_timeout: Duration::from_secs(
                self.hold_timeout_secs.unwrap_or(DEFAULT_HOLD_TIMEOUT_SECS),
            ),
            writers,
            storage: StorageConfig {
                max_size: self.max_diff_size,
                max_sets: match self.max_sets {
                    Some(0) => return Err(Problem::ZeroSets),
                    Some(n) => n,
                    None => DEFAULT_MAX_SETS,
                },
                on_full: self.on_full.unwrap_or_default(),
                durability: self.durability.unwrap_or_default(),
            },
            schedule: match &self.schedule {
                None => None,
                Some(raw) => {
                    let known: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
                    Some(raw.resolve(&known).map_err(Problem::Schedule)?)
                }
            },
            cluster: match &self.cluster {
                None => None,
                Some(raw) => Some(raw.resolve().map_err(Problem::Cluster)?),
            },
            replicas: {
                let known: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
                let mut replicas: Vec<replica::ReplicaConfig> = Vec::new();
                for raw in &self.replicas {
                    let replica = raw.resolve(&known, base).map_err(Problem::Replica)?;
                    if replicas.iter().any(|r| r.name == replica.name) {
                        return Err(Problem::Replica(format!(
                            "replica {:?}: a second replica of that name",
                            replica.name
                        )));
                    }
                    replicas.push(replica);
                }
                replicas
            },
            state_dir,
            volumes,
        };
        if let Some(cluster) = &config.cluster
            && cluster.deadline >= config.writer_timeout
        {
            // Past the writers' freeze window the coordinator aborts first,
            // and a cluster set could never use its whole deadline.
            return Err(Problem::Cluster(format!(
                "deadline ({}) must be shorter than writer_timeout_secs ({})",
                humantime::format_duration(cluster.deadline),
                humantime::format_duration(config.writer_timeout)
            )));
        }
        if config.schedule.as_ref().is_some_and(|s| s.cluster) && config.cluster.is_none() {
            return Err(Problem::Schedule(
                "cluster = true needs a [cluster] table".into(),
            ));
        }
        config.check()?;
        Ok(config)
    }
}

/// The id of the group `name` (or a number), from the system's group
/// database.
fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam returns NULL or a pointer to a static record, read
    // at once (the daemon resolves its config before starting threads).
    let group = unsafe { libc::getgrnam(c.as_ptr()) };
    // SAFETY: a non-null result points at a valid struct group.
    (!group.is_null()).then(|| unsafe { (*group).gr_gid })
}

/// A number of seconds, written as an integer or a float.
fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a number of seconds")]
    enum Number {
        Int(i64),
        Float(f64),
    }
    Ok(Option::<Number>::deserialize(d)?.map(|n| match n {
        Number::Int(i) => i as f64,
        Number::Float(f) => f,
    }))
}

fn client_timeout(secs: f64) -> Result<Duration, Problem> {
    if !(secs > 0.0 && secs <= MAX_CLIENT_TIMEOUT_SECS) {
        return Err(Problem::ClientTimeout(secs.to_string()));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| Problem::ClientTimeout(secs.to_string()))
}

fn check_volume_name(name: &str) -> Result<(), Problem> {
    if name.is_empty() {
        return Err(Problem::EmptyVolumeName);
    }
    if name.contains(['/', '\0']) {
        return Err(Problem::BadVolumeName(name.to_string()));
    }
    if [LATEST, ".", ".."].contains(&name) {
        return Err(Problem::ReservedVolumeName(name.to_string()));
    }
    Ok(())
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// `path` without `.` components and with each `..` taking away the
/// component before it (lexically, as a config file's reader expects).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(
            text,
            Origin::File("/etc/umbra/umbra.toml".into()),
            Path::new("/etc/umbra"),
        )
    }

    fn problem(text: &str) -> Problem {
        match parse(text) {
            Err(ConfigError::Invalid { problem, .. }) => *problem,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    const MINIMAL: &str = r#"
state_dir = "/var/lib/umbra"
snapshots = "/snapshots"
[[volume]]
name = "data"
backing = "/srv/data"
mount = "/srv/data"
"#;

    #[test]
    fn writers_are_exec_hooks_with_timeouts() {
        let config = parse(&format!(
            "writer_timeout_secs = 30\nhold_timeout_secs = 5\n{MINIMAL}\
             [[writer]]\nname = \"pg\"\nvolumes = [\"data\"]\nexec = \"hooks/pg\"\n\
             [[writer]]\nname = \"cache\"\nexec = \"/bin/cache-hook\"\ntimeout_secs = 2\nrequired = false\n"
        ))
        .expect("parses");
        assert_eq!(config.writer_timeout, Duration::from_secs(30));
        assert_eq!(config.hold_timeout, Duration::from_secs(5));
        assert_eq!(
            config.writers,
            [
                ExecWriter {
                    name: "pg".into(),
                    volumes: vec!["data".into()],
                    exec: "/etc/umbra/hooks/pg".into(),
                    timeout: Duration::from_secs(30),
                    required: true,
                },
                ExecWriter {
                    name: "cache".into(),
                    volumes: vec![],
                    exec: "/bin/cache-hook".into(),
                    timeout: Duration::from_secs(2),
                    required: false,
                }
            ]
        );
        let defaults = parse(MINIMAL).expect("parses");
        assert_eq!(defaults.writer_timeout, Duration::from_secs(60));
        assert_eq!(defaults.hold_timeout, Duration::from_secs(10));
        assert!(defaults.writers.is_empty());
    }

    #[test]
    fn a_writer_must_name_known_volumes_and_be_unique() {
        let writer = |extra: &str| {
            format!("{MINIMAL}[[writer]]\nname = \"w\"\nexec = \"/bin/true\"\n{extra}")
        };
        assert_eq!(
            problem(&writer("volumes = [\"nope\"]\n")).to_string(),
            "writer \"w\": no volume named \"nope\""
        );
        assert_eq!(
            problem(&writer("[[writer]]\nname = \"w\"\nexec = \"/bin/true\"\n")).to_string(),
            "writer \"w\": two writers have this name"
        );
        assert_eq!(
            problem(&writer("timeout_secs = 0\n")).to_string(),
            "writer \"w\": timeout_secs must be at least 1"
        );
        assert!(matches!(
            parse(&writer("bogus = 1\n")),
            Err(ConfigError::Syntax { .. })
        ));
        assert_eq!(
            problem(&format!("hold_timeout_secs = 0\n{MINIMAL}")).to_string(),
            "hold_timeout_secs must be at least 1"
        );
    }

    #[test]
    fn a_schedule_has_times_volumes_a_label_and_timeline_retention() {
        let config = parse(&format!(
            "{MINIMAL}[schedule]\ntimes = [\"Mon..Fri 07:00,12:00\", \"hourly\"]\n\
             volumes = [\"data\", \"data\"]\nlabel = \"timeline\"\ntimezone = \"UTC\"\n\
             keep_hourly = 24\nkeep_daily = 7\nkeep_weekly = 4\nkeep_monthly = 0\nkeep_quarterly = 3\n\
             min_age = \"1h\"\nkeep_manual = 5\nkeep_backup = \"all\"\n"
        ))
        .expect("parses");
        let schedule = config.schedule.expect("a schedule");
        assert_eq!(schedule.times.len(), 2);
        assert_eq!(schedule.times[0].to_string(), "Mon..Fri 07:00,12:00");
        assert_eq!(schedule.volumes, ["data"]);
        assert_eq!(schedule.label.as_deref(), Some("timeline"));
        assert_eq!(schedule.zone, crate::schedule::Zone::Utc);
        let rules = schedule.retention;
        assert_eq!(
            (
                rules.hourly,
                rules.daily,
                rules.weekly,
                rules.monthly,
                rules.quarterly,
                rules.yearly
            ),
            (24, 7, 4, 0, 3, 10)
        );
        assert_eq!(rules.min_age, Duration::from_secs(3600));
        assert_eq!(rules.keep_manual, Some(5));
        assert_eq!(rules.keep_backup, None);

        let one = parse(&format!("{MINIMAL}[schedule]\ntimes = \"daily\"\n")).expect("parses");
        let one = one.schedule.expect("a schedule");
        assert_eq!(one.zone, crate::schedule::Zone::Local);
        assert_eq!(one.retention, crate::schedule::Rules::default());
        assert!(parse(MINIMAL).expect("parses").schedule.is_none());
    }

    #[test]
    fn a_bad_schedule_is_a_one_line_error_that_names_the_key() {
        let error = |table: &str| {
            let text = format!("{MINIMAL}[schedule]\n{table}\n");
            let message = parse(&text).expect_err(table).to_string();
            assert!(!message.contains('\n'), "{message}");
            message
        };
        let prefix = "/etc/umbra/umbra.toml: schedule: ";
        assert_eq!(
            error("times = \"Mon..Fry 07:00\""),
            format!(
                "{prefix}times: \"Mon..Fry 07:00\": unknown weekday \"Fry\" (Mon, Tue, Wed, Thu, Fri, Sat, Sun)"
            )
        );
        assert_eq!(
            error("times = [\"hourly\", \"25:00\"]"),
            format!(
                "{prefix}times: \"25:00\": hour \"25\": expected a number from 0 to 23, *, a range a..b or a repetition a/n"
            )
        );
        assert_eq!(
            error("times = \"2020-01-01\""),
            format!("{prefix}times: \"2020-01-01\" never fires again")
        );
        assert_eq!(
            error("times = \"hourly\"\nvolumes = [\"nope\"]"),
            format!("{prefix}volumes: no volume named \"nope\"")
        );
        assert_eq!(
            error("keep_hourly = -1"),
            format!("{prefix}keep_hourly must be from 0 to 100000, not -1")
        );
        assert_eq!(
            error("keep_daily = 99999999999"),
            format!("{prefix}keep_daily must be from 0 to 100000, not 99999999999")
        );
        assert_eq!(
            error("keep_manual = \"some\""),
            format!("{prefix}keep_manual must be \"all\" or a number of sets, not \"some\"")
        );
        assert_eq!(
            error("keep_backup = -3"),
            format!("{prefix}keep_backup must be from 0 to 100000, not -3")
        );
        assert_eq!(
            error("min_age = -5"),
            format!("{prefix}min_age must not be negative, not -5")
        );
        assert!(error("min_age = \"soon\"").starts_with(&format!("{prefix}min_age \"soon\": ")));
        assert_eq!(
            error("timezone = \"Europe/Berlin\""),
            format!(
                "{prefix}timezone \"Europe/Berlin\": expected \"local\" or \"UTC\" (other zones: set TZ for the daemon)"
            )
        );
        let unknown = error("keep_hourli = 3");
        assert!(unknown.contains("keep_hourli"), "{unknown}");
        assert!(
            unknown.starts_with("/etc/umbra/umbra.toml: line "),
            "{unknown}"
        );
        let wrong_type = error("times = 5");
        assert!(
            wrong_type.contains("a calendar time or a list of them"),
            "{wrong_type}"
        );
    }

    #[test]
    fn embedded_default_resolves_against_the_current_directory() {
        let config = Config::embedded(Path::new("/home/u/clone")).expect("default parses");
        assert_eq!(config.origin, Origin::Embedded);
        assert_eq!(config.state_dir, Path::new("/home/u/clone/.umbra"));
        assert_eq!(
            config.socket,
            Path::new("/home/u/clone/.umbra/control.sock")
        );
        assert_eq!(config.snapshots, Path::new("/home/u/clone/snapshots"));
        assert_eq!(config.name_format, NameFormat::default());
        assert_eq!(config.threads, 4);
        assert_eq!(
            config.volumes,
            vec![VolumeConfig {
                name: "data".into(),
                backing: "/home/u/clone/data".into(),
                mount: "/home/u/clone/data".into(),
                provider: ProviderChoice::Cow,
            }]
        );
        assert!(config.volumes[0].in_place());
    }

    #[test]
    fn defaults_fill_what_a_file_leaves_out() {
        let config = parse(MINIMAL).expect("valid");
        assert_eq!(config.socket, Path::new("/var/lib/umbra/control.sock"));
        assert_eq!(config.threads, 4);
        assert_eq!(config.name_format, NameFormat::default());
    }

    #[test]
    fn the_writeback_cache_is_off_unless_asked_for() {
        assert!(!parse(MINIMAL).expect("valid").writeback_cache);
        for (line, want) in [("true", true), ("false", false)] {
            let text = format!("writeback_cache = {line}\n{MINIMAL}");
            assert_eq!(parse(&text).expect("valid").writeback_cache, want);
        }
    }

    #[test]
    fn relative_paths_resolve_against_the_config_files_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("conf/umbra.toml");
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(
            &file,
            r#"
state_dir = "state"
socket = "../run/umbra.sock"
snapshots = "./snaps"
name_format = "@GMT-%Y.%m.%d-%H.%M.%S"
threads = 2
[[volume]]
name = "logs"
backing = "backing/logs"
mount = "/mnt/logs"
"#,
        )
        .expect("write");
        // The file is named relative to the current directory.
        let config = Config::load(Path::new("conf/umbra.toml"), dir.path()).expect("valid");
        let conf = dir.path().join("conf");
        assert_eq!(config.origin, Origin::File(file.clone()));
        assert_eq!(config.state_dir, conf.join("state"));
        assert_eq!(config.socket, dir.path().join("run/umbra.sock"));
        assert_eq!(config.snapshots, conf.join("snaps"));
        assert_eq!(config.threads, 2);
        assert_eq!(config.volumes[0].backing, conf.join("backing/logs"));
        assert_eq!(config.volumes[0].mount, Path::new("/mnt/logs"));
        assert!(!config.volumes[0].in_place());
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let err =
            parse(&format!("# umbra\ncolour = \"blue\"\n{MINIMAL}")).expect_err("unknown key");
        let text = err.to_string();
        assert!(
            text.starts_with("/etc/umbra/umbra.toml: line 2: unknown field `colour`"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn an_unknown_key_in_a_volume_is_named() {
        let err = parse(&MINIMAL.replace("mount = ", "mountpoint = ")).expect_err("unknown key");
        assert!(
            err.to_string().contains("unknown field `mountpoint`"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_key_is_named() {
        let err =
            parse(&MINIMAL.replace("snapshots = \"/snapshots\"", "")).expect_err("missing key");
        assert!(
            err.to_string().contains("missing field `snapshots`"),
            "{err}"
        );
    }

    #[test]
    fn a_syntax_error_is_one_line() {
        let err = parse("state_dir = \n").expect_err("bad toml");
        assert!(
            err.to_string()
                .starts_with("/etc/umbra/umbra.toml: line 1: "),
            "{err}"
        );
        assert!(!err.to_string().contains('\n'), "{err}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = Config::load(Path::new("/nonexistent/umbra.toml"), Path::new("/"))
            .expect_err("missing");
        assert!(
            err.to_string()
                .starts_with("reading config /nonexistent/umbra.toml: "),
            "{err}"
        );
    }

    #[test]
    fn volume_names_are_checked() {
        assert_eq!(
            problem(&MINIMAL.replace("\"data\"", "\"\"")),
            Problem::EmptyVolumeName
        );
        assert_eq!(
            problem(&MINIMAL.replace("\"data\"", "\"a/b\"")),
            Problem::BadVolumeName("a/b".into())
        );
        assert_eq!(
            problem(&MINIMAL.replace("\"data\"", "\"latest\"")),
            Problem::ReservedVolumeName("latest".into())
        );
        let twice = format!(
            "{MINIMAL}[[volume]]\nname = \"data\"\nbacking = \"/srv/other\"\nmount = \"/srv/other\"\n"
        );
        assert_eq!(problem(&twice), Problem::DuplicateVolume("data".into()));
    }

    #[test]
    fn at_least_one_volume_is_needed() {
        let none = "state_dir = \"/var/lib/umbra\"\nsnapshots = \"/snapshots\"\n";
        assert_eq!(problem(none), Problem::NoVolumes);
    }

    #[test]
    fn mountpoints_are_distinct_and_not_nested() {
        let same = format!(
            "{MINIMAL}[[volume]]\nname = \"b\"\nbacking = \"/srv/b\"\nmount = \"/srv/./data/\"\n"
        );
        assert!(matches!(problem(&same), Problem::SameMountpoint { .. }));
        let snaps = MINIMAL.replace("snapshots = \"/snapshots\"", "snapshots = \"/srv/data\"");
        assert_eq!(
            problem(&snaps),
            Problem::SameMountpoint {
                first: "volume \"data\"".into(),
                second: "snapshots".into(),
                path: "/srv/data".into(),
            }
        );
        let nested = MINIMAL.replace(
            "snapshots = \"/snapshots\"",
            "snapshots = \"/srv/data/snaps\"",
        );
        assert!(matches!(problem(&nested), Problem::NestedMountpoint { .. }));
        let backing = format!(
            "{MINIMAL}[[volume]]\nname = \"b\"\nbacking = \"/srv/data\"\nmount = \"/mnt/b\"\n"
        );
        assert!(matches!(problem(&backing), Problem::SameBacking { .. }));
    }

    #[test]
    fn nested_backings_and_a_snapshots_mount_inside_a_backing_are_overlaps() {
        let nested = format!(
            "{MINIMAL}[[volume]]\nname = \"b\"\nbacking = \"/srv/data/b\"\nmount = \"/mnt/b\"\n"
        );
        assert_eq!(
            problem(&nested).to_string(),
            "the backing of volume \"b\" /srv/data/b is inside the backing of volume \"data\" /srv/data"
        );
        let separate = MINIMAL.replace("mount = \"/srv/data\"", "mount = \"/mnt/data\"");
        let snaps = separate.replace("/snapshots", "/srv/data/.snaps");
        assert_eq!(
            problem(&snaps).to_string(),
            "the snapshots mountpoint /srv/data/.snaps is inside the backing of volume \"data\" /srv/data"
        );
        let own = separate.replace("mount = \"/mnt/data\"", "mount = \"/srv/data/live\"");
        assert!(matches!(problem(&own), Problem::Overlap { .. }), "{own}");
        // In place is the one overlap allowed.
        assert!(parse(MINIMAL).is_ok());
    }

    fn on_disk(root: &Path, body: &str) -> Result<Config, ConfigError> {
        let config = Config::parse(body, Origin::File(root.join("umbra.toml")), root)?;
        config.check_on_disk()?;
        Ok(config)
    }

    #[test]
    fn two_volumes_on_one_backing_through_a_symlink_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("real");
        std::fs::create_dir(root.join("b")).expect("mkdir");
        std::os::unix::fs::symlink("b", root.join("b2")).expect("symlink");
        let text = "state_dir = \"st\"\nsnapshots = \"snaps\"\n\
            [[volume]]\nname = \"one\"\nbacking = \"b\"\nmount = \"m1\"\n\
            [[volume]]\nname = \"two\"\nbacking = \"b2\"\nmount = \"m2\"\n";
        let err = on_disk(&root, text).expect_err("one backing twice");
        assert_eq!(
            err.to_string(),
            format!(
                "{}: the backing of volume \"two\" {} is the same directory as the backing of volume \"one\" {} (they lead to {} and {})",
                root.join("umbra.toml").display(),
                root.join("b2").display(),
                root.join("b").display(),
                root.join("b").display(),
                root.join("b").display(),
            )
        );
        // Nested through the symlink, and not yet existing.
        let nested = text.replace("backing = \"b2\"", "backing = \"b2/inner\"");
        let err = on_disk(&root, &nested).expect_err("nested");
        assert!(
            err.to_string()
                .contains("is inside the backing of volume \"one\""),
            "{err}"
        );
    }

    #[test]
    fn a_state_dir_or_snapshots_inside_a_backing_through_a_symlink_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("real");
        std::fs::create_dir(root.join("data")).expect("mkdir");
        std::os::unix::fs::symlink("data", root.join("alias")).expect("symlink");
        let body = |state: &str, snaps: &str| {
            format!(
                "state_dir = \"{state}\"\nsnapshots = \"{snaps}\"\n\
                 [[volume]]\nname = \"data\"\nbacking = \"data\"\nmount = \"data\"\n"
            )
        };
        let err = on_disk(&root, &body("alias/.state", "snaps")).expect_err("state inside");
        assert!(
            err.to_string().contains(&format!(
                "state_dir {} is inside the backing of volume \"data\" {}",
                root.join("alias/.state").display(),
                root.join("data").display()
            )),
            "{err}"
        );
        let err = on_disk(&root, &body(".umbra", "alias/snaps")).expect_err("snapshots inside");
        assert!(
            err.to_string().contains("the snapshots mountpoint"),
            "{err}"
        );
        // The embedded default's shape, in place, with nothing existing yet.
        on_disk(&root, &body(".umbra", "snapshots")).expect("in place is fine");
        on_disk(&root.join("fresh/clone"), &body(".umbra", "snapshots")).expect("not there yet");
    }

    #[test]
    fn state_and_socket_stay_out_of_volumes_and_mounts() {
        let inside = MINIMAL.replace("/var/lib/umbra", "/srv/data/.state");
        assert!(
            matches!(problem(&inside), Problem::InsideVolume { key, .. } if key == "state_dir")
        );
        let socket = format!("socket = \"/snapshots/ctl.sock\"\n{MINIMAL}");
        assert_eq!(
            problem(&socket),
            Problem::InsideVolume {
                key: "socket".into(),
                path: "/snapshots/ctl.sock".into(),
                what: "snapshots".into(),
                place: "/snapshots".into(),
            }
        );
    }

    #[test]
    fn threads_and_name_format_are_checked() {
        assert_eq!(
            problem(&format!("threads = 0\n{MINIMAL}")),
            Problem::ZeroThreads
        );
        let err = parse(&format!("name_format = \"%Y/%m\"\n{MINIMAL}")).expect_err("slash");
        assert!(err.to_string().contains("name_format: "), "{err}");
    }

    #[test]
    fn control_client_limits_have_defaults_and_are_checked() {
        let config = parse(MINIMAL).expect("valid");
        assert_eq!(config.max_clients, DEFAULT_MAX_CLIENTS);
        assert_eq!(config.client_timeout, DEFAULT_CLIENT_TIMEOUT);
        let config =
            parse(&format!("max_clients = 3\nclient_timeout = 2\n{MINIMAL}")).expect("valid");
        assert_eq!(config.max_clients, 3);
        assert_eq!(config.client_timeout, Duration::from_secs(2));
        let config = parse(&format!("client_timeout = 0.25\n{MINIMAL}")).expect("valid");
        assert_eq!(config.client_timeout, Duration::from_millis(250));
        assert_eq!(
            problem(&format!("max_clients = 0\n{MINIMAL}")),
            Problem::ZeroClients
        );
        for bad in ["0", "-1", "nan", "inf", "1e300", "86401"] {
            let text = format!("client_timeout = {bad}\n{MINIMAL}");
            assert!(
                matches!(problem(&text), Problem::ClientTimeout(_)),
                "client_timeout = {bad}"
            );
        }
        let err = parse(&format!("client_timeout = \"10s\"\n{MINIMAL}")).expect_err("a string");
        assert!(err.to_string().contains("a number of seconds"), "{err}");
        let err = parse(&format!("max_clients = -1\n{MINIMAL}")).expect_err("negative");
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("/a/./b/../c/")), Path::new("/a/c"));
        assert_eq!(normalize(Path::new("/../a")), Path::new("/a"));
    }

    /// What a user sees of a config error: one line, not empty.
    fn assert_one_line(err: &ConfigError) -> Result<(), proptest::test_runner::TestCaseError> {
        let text = err.to_string();
        proptest::prop_assert!(!text.trim().is_empty(), "empty error");
        proptest::prop_assert!(
            !text.contains(['\n', '\r']),
            "the error is not one line: {text:?}"
        );
        Ok(())
    }

    /// A path as a TOML string: near the others, some with control
    /// characters in them.
    fn tomlish_path() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        (
            prop::sample::select(vec!["/srv", "/srv/data", "/snapshots", "/base", "rel", ""]),
            prop::sample::select(vec!["", "", "/x", "/a\\nb", "/\\r", "/\\u001b[1m", "/.."]),
        )
            .prop_map(|(p, tail)| format!("\"{p}{tail}\""))
    }

    /// A TOML value a config might hold, awkward ones included.
    fn tomlish_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            4 => prop::sample::select(vec![
                r#""/srv""#,
                r#""""#,
                r#""rel/x""#,
                r#""/a\nb""#,
                r#""/a\rb""#,
                r#""latest""#,
                r#""..""#,
                r#""a/b""#,
                r#""%Y/%m""#,
                r#""%""#,
                r#""@GMT-%Y""#,
                r#""\u0000""#,
                r#""/snapshots""#,
                r#""/srv/data""#,
                r#""/srv/data/x""#,
                "0",
                "-1",
                "1",
                "1.5",
                "1e300",
                "nan",
                "-inf",
                "inf",
                "99999999999999999999",
                "true",
                "[]",
                r#"[1, "a"]"#,
                "{}",
                "{ a = 1 }",
                "1979-05-27T07:32:00Z",
                "'''x\ny'''",
                "\"\"\"x\ny\"\"\"",
            ])
            .prop_map(str::to_string),
            3 => tomlish_path(),
            1 => "[ -~]{0,12}".prop_map(|s| format!("{s:?}")),
            1 => any::<i64>().prop_map(|n| n.to_string()),
            1 => any::<f64>().prop_map(|f| f.to_string()),
        ]
    }

    /// A whole config: each key absent or with some value, zero to two
    /// volumes, and stray lines at the top and in the volumes.
    fn tomlish_config() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        // Mostly well-typed, so that the checks after the syntax run too.
        let path =
            || prop::option::weighted(0.9, prop_oneof![8 => tomlish_path(), 1 => tomlish_value()]);
        let rare = || prop::option::weighted(0.15, tomlish_value());
        let top = (path(), rare(), path(), rare(), rare(), rare(), rare())
            .prop_map(|(a, b, c, d, e, f, g)| vec![a, b, c, d, e, f, g]);
        let name = prop::option::weighted(
            0.9,
            prop_oneof![
                4 => prop::sample::select(vec!["\"data\"", "\"logs\"", "\"a\\nb\""]).prop_map(str::to_string),
                1 => tomlish_value(),
            ],
        );
        let volume = (
            (name, path(), path()).prop_map(|(a, b, c)| vec![a, b, c]),
            prop::collection::vec(tomlish_line(), 0..2),
        );
        (
            top,
            prop::collection::vec(tomlish_line(), 0..2),
            prop::collection::vec(volume, 0..3),
        )
            .prop_map(|(top, stray, volumes)| {
                let mut text = String::new();
                let keys = [
                    "state_dir",
                    "socket",
                    "snapshots",
                    "name_format",
                    "threads",
                    "max_clients",
                    "client_timeout",
                ];
                for (key, value) in keys.iter().zip(&top) {
                    if let Some(value) = value {
                        text += &format!("{key} = {value}\n");
                    }
                }
                for line in stray {
                    text += &format!("{line}\n");
                }
                for (fields, stray) in volumes {
                    text += "[[volume]]\n";
                    for (key, value) in ["name", "backing", "mount"].iter().zip(&fields) {
                        if let Some(value) = value {
                            text += &format!("{key} = {value}\n");
                        }
                    }
                    for line in stray {
                        text += &format!("{line}\n");
                    }
                }
                text
            })
    }

    /// A line of TOML-ish text built from umbra's keys and awkward values.
    fn tomlish_line() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let key = prop::sample::select(vec![
            "state_dir",
            "socket",
            "snapshots",
            "name_format",
            "threads",
            "max_clients",
            "client_timeout",
            "name",
            "backing",
            "mount",
            "volume",
            "colour",
            "\"a b\"",
            "a.b",
        ]);
        let value = tomlish_value();
        prop_oneof![
            6 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
            2 => Just("[[volume]]".to_string()),
            1 => prop::sample::select(vec!["[volume]", "[[volume", "[x]", "=", "# c", ""])
                .prop_map(str::to_string),
            1 => "\\PC{0,20}",
        ]
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_a_config_or_a_one_line_error(text in "(?s).{0,400}") {
            if let Err(e) = Config::parse(&text, Origin::Embedded, Path::new("/base")) {
                assert_one_line(&e)?;
            }
        }

        #[test]
        fn tomlish_text_is_a_config_or_a_one_line_error(text in tomlish_config()) {
            if let Err(e) = Config::parse(&text, Origin::Embedded, Path::new("/base")) {
                assert_one_line(&e)?;
            }
        }
    }

    /// A number a config might hold where umbra wants a count, a size or
    /// seconds: the edges of TOML's i64 and of what a clock can add.
    fn numberish() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            2 => prop::sample::select(vec![
                "0", "1", "-1", "86400", "86401", "4294967296",
                "9223372036854775807", "-9223372036854775808", "9223372036854775806",
                "1.5", "1e300", "nan", "inf",
                "\"1e30G\"", "\"99999999999999999999T\"", "\"18446744073709551615\"",
                "\"100%\"", "\"0.0000001%\"", "\"1e-300%\"", "\"0.5\"", "\"1.0e400K\"",
            ])
            .prop_map(str::to_string),
            1 => any::<i64>().prop_map(|n| n.to_string()),
            1 => any::<u64>().prop_map(|n| format!("\"{n}G\"")),
        ]
    }

    proptest::proptest! {
        #[test]
        fn any_number_is_a_config_or_a_one_line_error(
            numbers in proptest::collection::vec(
                (proptest::sample::select(vec![
                    "threads", "max_clients", "client_timeout", "writer_timeout_secs",
                    "hold_timeout_secs", "max_diff_size", "max_sets",
                ]), numberish()),
                0..4,
            ),
            writer_timeout in proptest::option::of(numberish()),
        ) {
            let mut text = String::new();
            for (key, value) in &numbers {
                text += &format!("{key} = {value}\n");
            }
            text += MINIMAL;
            if let Some(t) = &writer_timeout {
                text += &format!("[[writer]]\nname = \"w\"\nexec = \"/bin/true\"\ntimeout_secs = {t}\n");
            }
            match Config::parse(&text, Origin::Embedded, Path::new("/base")) {
                Err(e) => assert_one_line(&e)?,
                Ok(config) => {
                    // What the daemon does with them must be safe.
                    for timeout in std::iter::once(config.writer_timeout)
                        .chain([config.hold_timeout])
                        .chain(config.writers.iter().map(|w| w.timeout))
                    {
                        proptest::prop_assert!(timeout.as_secs() <= MAX_TIMEOUT_SECS);
                        proptest::prop_assert!(std::time::Instant::now().checked_add(timeout).is_some());
                    }
                    proptest::prop_assert!(config.threads <= MAX_THREADS);
                    if let Some(size) = config.storage.max_size {
                        let _ = size.bytes(u64::MAX);
                    }
                }
            }
        }
    }

    #[test]
    fn timeouts_near_i64_max_are_refused_so_create_cannot_overflow() {
        for key in ["writer_timeout_secs", "hold_timeout_secs"] {
            for secs in [i64::MAX, i64::MAX - 1, 86_401] {
                assert_eq!(
                    problem(&format!("{key} = {secs}\n{MINIMAL}")),
                    Problem::LongTimeout {
                        key: key.into(),
                        secs: secs as u64,
                    },
                    "{key} = {secs}"
                );
            }
            assert!(parse(&format!("{key} = 86400\n{MINIMAL}")).is_ok());
        }
        let writer = format!(
            "{MINIMAL}[[writer]]\nname = \"w\"\nexec = \"/bin/true\"\ntimeout_secs = {}\n",
            i64::MAX
        );
        assert_eq!(
            problem(&writer).to_string(),
            format!(
                "writer \"w\": timeout_secs must be at most 86400 (a day), not {}",
                i64::MAX
            )
        );
        assert_eq!(
            problem(&format!("threads = {}\n{MINIMAL}", i64::MAX)),
            Problem::ManyThreads(i64::MAX as usize)
        );
    }

    #[test]
    fn a_path_with_a_newline_gives_a_one_line_error() {
        let text = MINIMAL.replace("/var/lib/umbra", "/srv/data/x\\ny");
        let err = parse(&text).expect_err("state_dir inside the volume");
        assert_eq!(
            err.to_string(),
            "/etc/umbra/umbra.toml: state_dir /srv/data/x\\ny is inside volume \"data\" /srv/data"
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        for depth in [1_000, 100_000] {
            let text = format!("a = {}{}\n{MINIMAL}", "[".repeat(depth), "]".repeat(depth));
            let err = parse(&text).expect_err("nested arrays");
            assert!(!err.to_string().contains('\n'), "{err}");
            let text = format!(
                "a = {}1{}\n{MINIMAL}",
                "{ b = ".repeat(depth),
                "}".repeat(depth)
            );
            assert!(parse(&text).is_err());
        }
    }

    #[test]
    fn a_cluster_table_names_etcd_the_cluster_and_this_member() {
        let config = parse(&format!(
            "{MINIMAL}[cluster]\nendpoints = [\"http://127.0.0.1:2379\"]\nname = \"shop\"\n\
             member = \"db1\"\nlease_ttl = \"2s\"\n[schedule]\ntimes = \"hourly\"\ncluster = true\n"
        ))
        .expect("parses");
        let cluster = config.cluster.expect("a cluster");
        assert_eq!(cluster.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(
            (cluster.name.as_str(), cluster.member.as_str()),
            ("shop", "db1")
        );
        assert_eq!(cluster.lease_ttl, Duration::from_secs(2));
        assert_eq!(cluster.deadline, Duration::from_secs(30));
        assert_eq!(cluster.prefix, "umbra");
        assert!(config.schedule.expect("a schedule").cluster);
        for (bad, says) in [
            ("endpoints = []\nname = \"s\"\nmember = \"m\"", "endpoints"),
            (
                "endpoints = [\"https://e:2379\"]\nname = \"s\"\nmember = \"m\"",
                "endpoints",
            ),
            (
                "endpoints = [\"http://e:2379\"]\nname = \"a/b\"\nmember = \"m\"",
                "name",
            ),
            (
                "endpoints = [\"http://e:2379\"]\nname = \"s\"\nmember = \"m\"\nlease_ttl = \"100ms\"",
                "lease_ttl",
            ),
        ] {
            let text = format!("{MINIMAL}[cluster]\n{bad}\n");
            let message = problem(&text).to_string();
            assert!(
                message.starts_with(&format!("cluster: {says}")),
                "{message}"
            );
        }
        let message = problem(&format!(
            "{MINIMAL}[schedule]\ntimes = \"hourly\"\ncluster = true\n"
        ))
        .to_string();
        assert_eq!(message, "schedule: cluster = true needs a [cluster] table");
        let message = problem(&format!(
            "writer_timeout_secs = 20\n{MINIMAL}[cluster]\nendpoints = [\"http://e:2379\"]\n\
             name = \"s\"\nmember = \"m\"\n"
        ))
        .to_string();
        assert_eq!(
            message,
            "cluster: deadline (30s) must be shorter than writer_timeout_secs (20s)"
        );
    }
}
