//! `umbra replicate`: the request and answers on the wire, and the client,
//! which reads the repository password (and S3 keys) with the caller's own
//! rights, sends them, shows progress on a terminal and prints the
//! summary. The daemon writes the snapshots (daemon/service/replicate.rs).

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::client::connection::Session;
use crate::protocol::Request;

/// What `replicate` asks: the sets (the newest when empty) and volumes
/// (all the set holds when empty) to write into the repository `to`, or
/// into the configured `[[replica]]` named `replica` (with its password
/// and keys, and its volumes when none are named).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicateRequest {
    #[serde(default)]
    pub sets: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub password: String,
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_secret_access_key: Option<String>,
}

/// Requests are logged: the password and keys are not.
impl std::fmt::Debug for ReplicateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicateRequest")
            .field("sets", &self.sets)
            .field("to", &self.to)
            .field("replica", &self.replica)
            .field("volumes", &self.volumes)
            .finish_non_exhaustive()
    }
}

/// The daemon's lines on a replicate connection: progress, then the end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicateMessage {
    Progress(ReplicateProgress),
    Done(ReplicateView),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicateProgress {
    pub set: String,
    pub volume: String,
    pub entries: u64,
    pub opened: u64,
    pub bytes_read: u64,
}

/// What `replicate` did, one line per volume of each set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicateView {
    pub repository: String,
    /// The repository's config id.
    pub repository_id: String,
    pub snapshots: Vec<ReplicatedVolume>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicatedVolume {
    pub set: String,
    pub set_id: i64,
    pub volume: String,
    /// The repository held it already: nothing was written.
    pub already: bool,
    /// The snapshot and what writing it took (all zero when `already`).
    #[serde(flatten)]
    pub outcome: umbra_replicate::Outcome,
}

/// The password as restic finds it: `--password-file`, else
/// `RESTIC_PASSWORD_FILE`, else `RESTIC_PASSWORD`; read as the caller.
pub fn password(file: Option<&Path>) -> anyhow::Result<String> {
    let file = file.map(Path::to_path_buf).or_else(|| {
        std::env::var_os("RESTIC_PASSWORD_FILE")
            .filter(|f| !f.is_empty())
            .map(PathBuf::from)
    });
    if let Some(file) = file {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| anyhow::anyhow!("the password file {}: {e}", file.display()))?;
        // As restic: the first line, without its newline.
        return Ok(text.lines().next().unwrap_or_default().to_string());
    }
    // Empty counts as unset, as restic has it (it then asks).
    std::env::var("RESTIC_PASSWORD").ok().filter(|p| !p.is_empty()).ok_or_else(|| {
        anyhow::anyhow!(
            "no repository password: give --password-file, RESTIC_PASSWORD_FILE or RESTIC_PASSWORD"
        )
    })
}

/// The repository part of a request: `to` with the caller's password and
/// AWS keys, or a configured replica (whose secrets the daemon reads,
/// unless the caller gives a password).
pub fn request(
    to: Option<String>,
    replica: Option<String>,
    password_file: Option<&Path>,
) -> anyhow::Result<ReplicateRequest> {
    let password = if replica.is_some() && password_file.is_none() {
        String::new()
    } else {
        password(password_file)?
    };
    Ok(ReplicateRequest {
        to: to.unwrap_or_default(),
        replica,
        password,
        aws_access_key_id: std::env::var("AWS_ACCESS_KEY_ID").ok(),
        aws_secret_access_key: std::env::var("AWS_SECRET_ACCESS_KEY").ok(),
        ..ReplicateRequest::default()
    })
}

/// Sends the request and follows it to the end.
pub fn run(socket: &Path, request: ReplicateRequest, json: bool) -> anyhow::Result<()> {
    let mut session = Session::open(socket)?;
    let bar = (!json && io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar
    });
    let mut message: ReplicateMessage = session.call(&Request::Replicate(request))?;
    let view = loop {
        match message {
            ReplicateMessage::Done(view) => break view,
            ReplicateMessage::Progress(p) => {
                if let Some(bar) = &bar {
                    bar.set_message(format!(
                        "{} {}: {}, {} read, {}",
                        p.set,
                        p.volume,
                        counted(p.entries, "entry", "entries"),
                        counted(p.opened, "file", "files"),
                        bytes(p.bytes_read)
                    ));
                }
                message = session.next::<ReplicateMessage>()?;
            }
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let mut out = io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &view)?;
        writeln!(out)?;
        return Ok(());
    }
    for s in &view.snapshots {
        if s.already {
            writeln!(
                out,
                "{} {}: already in {} as {}",
                s.set, s.volume, view.repository, s.outcome.snapshot
            )?;
            continue;
        }
        let how = match &s.outcome.parent_set {
            Some(parent) => format!("incremental from {parent}"),
            None => "full".to_string(),
        };
        writeln!(
            out,
            "{} {}: snapshot {} ({how}): {}, {} read ({}), {} added, {:.1}s",
            s.set,
            s.volume,
            short(&s.outcome.snapshot),
            counted(s.outcome.entries, "entry", "entries"),
            counted(s.outcome.opened, "file", "files"),
            bytes(s.outcome.bytes_read),
            bytes(s.outcome.bytes_added),
            s.outcome.seconds
        )?;
    }
    Ok(())
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// What `replicas` asks: every configured replica, or only the repository
/// `to` (with its password and keys, as for `replicate`).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicasRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<ReplicateRequest>,
}

impl std::fmt::Debug for ReplicasRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicasRequest")
            .field("to", &self.to)
            .finish()
    }
}

/// What one repository holds of umbra's sets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaView {
    /// The `[[replica]]` name; empty for `--to`.
    pub name: String,
    pub repository: String,
    /// The repository's config id; empty if it could not be opened.
    pub repository_id: String,
    /// `asked`, `every set` or the calendar time.
    pub after: String,
    pub snapshots: Vec<HeldView>,
    /// Why the repository could not be read.
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldView {
    pub snapshot: String,
    pub set: String,
    pub set_id: u64,
    pub volume: String,
    /// RFC 3339: the set's instant.
    pub time: String,
    pub parent: Option<String>,
    /// Whether the set still exists here.
    pub set_exists: bool,
}

/// Sends a `replicas` request and prints what each repository holds.
pub fn list(socket: &Path, request: ReplicasRequest, json: bool) -> anyhow::Result<()> {
    let views: Vec<ReplicaView> =
        crate::client::connection::call(socket, &Request::Replicas(request))?;
    let mut out = io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &views)?;
        writeln!(out)?;
        return Ok(());
    }
    if views.is_empty() {
        writeln!(out, "no [[replica]] in the config; name one with --to")?;
    }
    for view in &views {
        let name = if view.name.is_empty() {
            String::new()
        } else {
            format!("{} ", view.name)
        };
        writeln!(out, "{name}{} (after: {})", view.repository, view.after)?;
        if let Some(error) = &view.error {
            writeln!(out, "  cannot read it: {error}")?;
            continue;
        }
        if view.snapshots.is_empty() {
            writeln!(out, "  no set replicated yet")?;
        }
        for held in &view.snapshots {
            writeln!(
                out,
                "  {} {:<10} {} {}{}",
                short(&held.snapshot),
                held.volume,
                held.set,
                held.time,
                if held.set_exists {
                    ""
                } else {
                    " (set deleted here)"
                }
            )?;
        }
    }
    Ok(())
}

/// `n` and the noun it counts, singular for one.
fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
