//! The writer wire format: one JSON object per line each way over the
//! daemon's control socket. A writer's first line is a [`Registration`]
//! (`{"op":"register",...}`), answered `{"ok":{"registered":NAME}}` or
//! `{"error":MESSAGE}`; then the daemon sends [`EventMessage`]s and the
//! writer answers each with one [`Reply`] naming the same event and set id.
//! This module owns the message shapes and their validation; it never opens
//! a socket and never decides what an event means.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest line either side reads on a writer connection.
pub const MAX_LINE: usize = 1024 * 1024;

/// The events of a shadow copy set, in the order the coordinator sends
/// them (Abort at any point before Thaw; the restore pair for restores).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    Identify,
    #[serde(rename = "prepare-backup")]
    PrepareForBackup,
    #[serde(rename = "prepare-snapshot")]
    PrepareForSnapshot,
    Freeze,
    Thaw,
    PostSnapshot,
    BackupComplete,
    Abort,
    PreRestore,
    PostRestore,
}

impl Event {
    /// The wire name, also the exec writer's EVENT argument.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Identify => "identify",
            Event::PrepareForBackup => "prepare-backup",
            Event::PrepareForSnapshot => "prepare-snapshot",
            Event::Freeze => "freeze",
            Event::Thaw => "thaw",
            Event::PostSnapshot => "post-snapshot",
            Event::BackupComplete => "backup-complete",
            Event::Abort => "abort",
            Event::PreRestore => "pre-restore",
            Event::PostRestore => "post-restore",
        }
    }

    /// The events of `umbra create`, in order.
    pub const CREATE: [Event; 7] = [
        Event::Identify,
        Event::PrepareForBackup,
        Event::PrepareForSnapshot,
        Event::Freeze,
        Event::Thaw,
        Event::PostSnapshot,
        Event::BackupComplete,
    ];
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named group of paths of a writer (relative to its volumes), with
/// paths inside them that do not belong to it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    pub name: String,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub excludes: Vec<String>,
}

fn yes() -> bool {
    true
}

/// A writer's first message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub name: String,
    /// The volumes the writer's files live on; empty means every volume.
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub components: Vec<Component>,
    /// A required writer's failure aborts the set; an optional one's
    /// failure is recorded and the set goes on without it.
    #[serde(default = "yes")]
    pub required: bool,
    /// How long the writer may take to answer one event, and to stay
    /// frozen from Freeze to Thaw. The coordinator's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// The longest deadline a writer or a config may ask for: a day. Far
/// beyond any freeze a volume can bear, and far below what an `Instant`
/// can be moved by.
pub const MAX_TIMEOUT_SECS: u64 = 86_400;

impl Registration {
    /// A required writer named `name` on `volumes`, with no components.
    pub fn new(name: impl Into<String>, volumes: &[&str]) -> Registration {
        Registration {
            name: name.into(),
            volumes: volumes.iter().map(|v| v.to_string()).collect(),
            components: Vec::new(),
            required: true,
            timeout_secs: None,
        }
    }

    /// Whether the writer takes part in a set of `volumes`.
    pub fn concerns(&self, volumes: &[String]) -> bool {
        self.volumes.is_empty() || self.volumes.iter().any(|v| volumes.contains(v))
    }

    /// Checks what the wire types cannot say.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = |n: &str| {
            !n.is_empty() && n.len() <= 128 && !n.chars().any(|c| c.is_control() || c == '/')
        };
        if !name_ok(&self.name) {
            return Err(format!(
                "writer name {:?} must be 1 to 128 characters, without '/' or control characters",
                self.name
            ));
        }
        if let Some(c) = self.components.iter().find(|c| !name_ok(&c.name)) {
            return Err(format!("component name {:?} is not usable", c.name));
        }
        for c in &self.components {
            if let Some(p) = c
                .paths
                .iter()
                .chain(&c.excludes)
                .find(|p| !inside_a_volume(p))
            {
                return Err(format!(
                    "component {:?}: path {p:?} must be relative to its volume, without '..' or control characters",
                    c.name
                ));
            }
        }
        match self.timeout_secs {
            Some(0) => return Err("timeout_secs must be at least 1".into()),
            Some(secs) if secs > MAX_TIMEOUT_SECS => {
                return Err(format!(
                    "timeout_secs must be at most {MAX_TIMEOUT_SECS} (a day), not {secs}"
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

/// A path a client names stays inside its volume by its spelling alone:
/// relative, no `..` step, no control character, at most PATH_MAX. The
/// daemon never resolves component paths on disk, so a symlink inside a
/// volume cannot lead one out either.
fn inside_a_volume(path: &str) -> bool {
    !path.is_empty()
        && path.len() < 4096
        && !path.starts_with('/')
        && !path.chars().any(char::is_control)
        && path.split('/').all(|step| step != "..")
}

/// What the coordinator sends a writer: one event of one set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventMessage {
    pub event: Event,
    /// The same for every event of one set, and for every writer.
    pub set_id: String,
    pub set_name: String,
    pub volumes: Vec<String>,
    /// Only with backup-complete and post-restore: whether the requester's
    /// backup (or the restore's copy) worked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_succeeded: Option<bool>,
}

/// Why a writer could not do what an event asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    /// Trying again later may succeed (VSS's retryable writer error).
    pub retryable: bool,
    pub message: String,
}

impl Failure {
    pub fn retryable(message: impl Into<String>) -> Failure {
        Failure {
            retryable: true,
            message: message.into(),
        }
    }

    pub fn fatal(message: impl Into<String>) -> Failure {
        Failure {
            retryable: false,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.retryable {
            "retryable"
        } else {
            "not retryable"
        };
        write!(f, "{} ({kind})", self.message)
    }
}

/// A writer's answer to one event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    Ok {
        event: Event,
        set_id: String,
    },
    Failure {
        event: Event,
        set_id: String,
        retryable: bool,
        message: String,
    },
}

impl Reply {
    /// The reply to `to` that carries `result`.
    pub fn to(to: &EventMessage, result: Result<(), Failure>) -> Reply {
        match result {
            Ok(()) => Reply::Ok {
                event: to.event,
                set_id: to.set_id.clone(),
            },
            Err(f) => Reply::Failure {
                event: to.event,
                set_id: to.set_id.clone(),
                retryable: f.retryable,
                message: f.message,
            },
        }
    }

    /// The outcome, if this answers `to`; an error naming what was wrong
    /// if it answers something else.
    pub fn answering(self, to: &EventMessage) -> Result<Result<(), Failure>, String> {
        let (event, set_id) = match &self {
            Reply::Ok { event, set_id } | Reply::Failure { event, set_id, .. } => (event, set_id),
        };
        if *event != to.event || *set_id != to.set_id {
            return Err(format!(
                "a reply to {event} of set {set_id} came while {} of set {} was asked",
                to.event, to.set_id
            ));
        }
        Ok(match self {
            Reply::Ok { .. } => Ok(()),
            Reply::Failure {
                retryable, message, ..
            } => Err(Failure { retryable, message }),
        })
    }
}

/// The daemon's answer to a registration: `{"ok":{"registered":NAME}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub registered: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn events_have_their_wire_names() {
        for event in
            Event::CREATE
                .into_iter()
                .chain([Event::Abort, Event::PreRestore, Event::PostRestore])
        {
            let wire = serde_json::to_value(event).expect("serializes");
            assert_eq!(wire, json!(event.as_str()));
        }
    }

    #[test]
    fn registration_defaults_to_required() {
        let reg: Registration = serde_json::from_value(json!({"name": "pg"})).expect("parses");
        assert!(reg.required);
        assert!(reg.volumes.is_empty());
        assert!(reg.concerns(&["data".into()]));
        let reg: Registration = serde_json::from_value(json!({
            "name": "pg", "volumes": ["logs"], "required": false,
            "components": [{"name": "db", "paths": ["pg"], "excludes": ["pg/tmp"]}]
        }))
        .expect("parses");
        assert!(!reg.required);
        assert!(!reg.concerns(&["data".into()]));
        assert_eq!(reg.components[0].excludes, ["pg/tmp"]);
        assert!(serde_json::from_value::<Registration>(json!({"name": "x", "nmae": 1})).is_err());
        assert!(Registration::new("", &[]).validate().is_err());
        assert!(Registration::new("a/b", &[]).validate().is_err());
    }

    #[test]
    fn component_paths_never_leave_their_volume() {
        let with = |paths: &[&str], excludes: &[&str]| {
            let mut reg = Registration::new("pg", &["data"]);
            reg.components.push(Component {
                name: "db".into(),
                paths: paths.iter().map(|p| p.to_string()).collect(),
                excludes: excludes.iter().map(|p| p.to_string()).collect(),
            });
            reg.validate()
        };
        assert!(with(&["pg", "pg/wal", "./x", "a..b"], &["pg/tmp"]).is_ok());
        for bad in [
            "/etc/passwd",
            "..",
            "../x",
            "pg/../../x",
            "pg/..",
            "",
            "a\nb",
            "a\0b",
        ] {
            let err = with(&[bad], &[]).expect_err(bad);
            assert!(err.contains("relative to its volume"), "{err}");
            assert!(with(&["pg"], &[bad]).is_err(), "exclude {bad:?}");
        }
    }

    #[test]
    fn replies_name_the_event_they_answer() {
        let asked = EventMessage {
            event: Event::Freeze,
            set_id: "s1".into(),
            set_name: "n".into(),
            volumes: vec!["data".into()],
            backup_succeeded: None,
        };
        let ok: Reply =
            serde_json::from_value(json!({"ok": {"event": "freeze", "set_id": "s1"}})).expect("ok");
        assert_eq!(ok.answering(&asked), Ok(Ok(())));
        let failed: Reply = serde_json::from_value(json!({"failure": {"event": "freeze",
            "set_id": "s1", "retryable": true, "message": "busy"}}))
        .expect("failure");
        assert_eq!(
            failed.answering(&asked),
            Ok(Err(Failure::retryable("busy")))
        );
        let stale: Reply =
            serde_json::from_value(json!({"ok": {"event": "thaw", "set_id": "s1"}})).expect("ok");
        assert!(stale.answering(&asked).is_err());
        let round = Reply::to(&asked, Err(Failure::fatal("x")));
        let wire = serde_json::to_value(&round).expect("serializes");
        assert_eq!(
            wire,
            json!({"failure": {"event": "freeze", "set_id": "s1", "retryable": false, "message": "x"}})
        );
    }
}
