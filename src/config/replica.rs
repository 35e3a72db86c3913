//! The `[[replica]]` tables: restic repositories the daemon writes sets
//! into, with where their password and S3 keys are, which volumes, and
//! when (`after`). Every problem is one line that names the replica.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::schedule::{Calendar, Zone};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplica {
    name: String,
    repository: String,
    password_file: Option<PathBuf>,
    password_command: Option<String>,
    /// `KEY=VALUE` lines: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
    credentials_file: Option<PathBuf>,
    #[serde(default)]
    volumes: Vec<String>,
    after: Option<String>,
    timezone: Option<String>,
}

/// When a replica is written without being asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum After {
    /// Only by `umbra replicate --replica NAME`.
    Asked,
    /// After each set the daemon makes (not a backup's, which goes).
    EverySet,
    /// The newest set, at these calendar times.
    Times(Calendar, Zone),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Password {
    File(PathBuf),
    /// Run with `sh -c`; its first line of output.
    Command(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaConfig {
    pub name: String,
    pub repository: String,
    pub password: Password,
    pub credentials_file: Option<PathBuf>,
    /// Empty: every volume a set holds.
    pub volumes: Vec<String>,
    pub after: After,
}

impl RawReplica {
    /// The checked replica; relative paths resolve against `base`.
    pub fn resolve(&self, known: &[&str], base: &Path) -> Result<ReplicaConfig, String> {
        let name = &self.name;
        let problem = |what: String| format!("replica {name:?}: {what}");
        if name.is_empty() || name.contains(['/', '\0', ',']) {
            return Err(problem("a name is not empty and has no '/' or ','".into()));
        }
        if !(self.repository.starts_with('/') || self.repository.starts_with("s3:")) {
            return Err(problem(format!(
                "repository {:?}: an absolute path or s3:http(s)://host[:port]/bucket[/prefix]",
                self.repository
            )));
        }
        let password = match (&self.password_file, &self.password_command) {
            (Some(file), None) => Password::File(base.join(file)),
            (None, Some(command)) => Password::Command(command.clone()),
            _ => {
                return Err(problem(
                    "give one of password_file and password_command".into(),
                ));
            }
        };
        for volume in &self.volumes {
            if !known.contains(&volume.as_str()) {
                return Err(problem(format!("volumes: no volume named {volume:?}")));
            }
        }
        let zone = match self.timezone.as_deref() {
            None => Zone::Local,
            Some(z) if z.eq_ignore_ascii_case("local") => Zone::Local,
            Some(z) if z.eq_ignore_ascii_case("utc") => Zone::Utc,
            Some(z) => return Err(problem(format!("timezone {z:?}: \"local\" or \"UTC\""))),
        };
        let after = match self.after.as_deref() {
            None => After::Asked,
            Some("every set") => After::EverySet,
            Some(text) => After::Times(
                Calendar::parse(text).map_err(|e| {
                    problem(format!(
                        "after {text:?}: \"every set\" or a calendar time: {e}"
                    ))
                })?,
                zone,
            ),
        };
        Ok(ReplicaConfig {
            name: name.clone(),
            repository: self.repository.clone(),
            password,
            credentials_file: self.credentials_file.as_ref().map(|f| base.join(f)),
            volumes: self.volumes.clone(),
            after,
        })
    }
}
