//! The control socket protocol, shared by the daemon and its clients: one
//! JSON object per line each way. A request is tagged by `"op"`; a response
//! is `{"ok": <payload>}` or `{"error": "<one line>"}`. This module owns the
//! message shapes and the line framing (with the 1 MiB cap on a request); it
//! never decides what a request does and never opens a socket.

use std::io::{self, BufRead, Read, Write};
use umbra_ids::SetId;

use serde::{Deserialize, Serialize};
use umbra_coordinator::{Registration, SetWriter};

/// The longest request line the daemon reads; a longer one is an error and
/// the connection is dropped.
pub const MAX_REQUEST_LINE: usize = 1024 * 1024;

/// The longest response line a client reads (a list of many sets is long).
pub const MAX_RESPONSE_LINE: usize = 256 * 1024 * 1024;

/// What a client asks of the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Make a set of the named volumes (all when empty). Answer: a [`SetView`].
    Create {
        #[serde(default)]
        volumes: Vec<String>,
        #[serde(default)]
        label: Option<String>,
        /// One set on every member of the daemon's `[cluster]` at one
        /// instant, every volume of each (`volumes` must be empty).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cluster: bool,
    },
    /// Answer: every set, oldest first, as `[SetView]`. (A struct variant,
    /// if empty, so that unknown fields are refused as for the others.)
    /// With `cluster`, each cluster set's part says which members hold the
    /// cluster set (etcd's record).
    List {
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cluster: bool,
    },
    /// Delete the named sets (by name or id), all or none if one is
    /// unknown, and those the selectors pick: the `oldest` N, those created
    /// more than `older_than_secs` ago, or `all`. Answer: the deleted sets,
    /// as `[SetView]`.
    Delete {
        #[serde(default)]
        sets: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        oldest: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        older_than_secs: Option<u64>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        all: bool,
    },
    /// Answer: a [`StatusView`].
    Status {},
    /// Answer: every writer, as `[WriterInfo]`.
    Writers {},
    /// Make a set up to PostSnapshot and answer a [`CreatedView`]; the
    /// connection then owes a `backup_complete` (hanging up counts as a
    /// failed backup). Unless `keep`, the set is deleted once reported.
    Backup {
        #[serde(default)]
        volumes: Vec<String>,
        #[serde(default)]
        label: Option<String>,
        #[serde(default)]
        keep: bool,
    },
    /// After `backup`, on the same connection: whether the backup worked.
    /// Answer: the final [`CreatedView`], with its writers.
    BackupComplete { succeeded: bool },
    /// Apply the `[schedule]`'s retention rules now: delete the sets no
    /// rule keeps (unless `dry_run`). Answer: a [`PruneView`].
    Prune {
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        dry_run: bool,
    },
    /// The changes from set `from` to set `to` (the live volumes when
    /// absent), of every volume `from` holds, or only at and under `path`.
    /// Answer: a [`DiffView`].
    Diff {
        from: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<ClientPath>,
    },
    /// Every distinct version of one file, live and in the sets. Answer: a
    /// [`VersionsView`].
    Versions { path: ClientPath },
    /// Start a restore out of `set` (a name, an id or `latest`) into
    /// `volumes`: unless `dry_run`, their writers hear PreRestore. Answer:
    /// a [`RestoreView`]; the connection then owes a `restore_complete`
    /// (hanging up counts as a failed restore). The copy is the client's.
    Restore {
        set: String,
        #[serde(default)]
        volumes: Vec<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        dry_run: bool,
    },
    /// After `restore`, on the same connection: whether the copy worked;
    /// the writers hear PostRestore. Answer: the final [`RestoreView`].
    RestoreComplete { succeeded: bool },
    /// Write sets into a restic repository (daemon/service/replicate.rs).
    /// Answers: `{"progress": ...}` lines, then `{"done": ...}`.
    Replicate(crate::replicate::ReplicateRequest),
    /// What each repository holds. Answer: `[ReplicaView]`.
    Replicas(crate::replicate::ReplicasRequest),
    /// Only as a connection's first line: the connection becomes a
    /// writer's (umbra-writer(7)). Answer: `{"registered": NAME}`, then
    /// events.
    Register(Registration),
}

/// A path as a client gave it: absolute, or relative to `cwd` (the
/// client's working directory, its symlinks already resolved), or
/// `VOLUME/path`. The daemon places it in a volume by its mountpoints, or
/// by the snapshots mountpoint (`<snapshots>/<set>/<volume>/...`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientPath {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// What `umbra diff` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffView {
    pub from: SetView,
    /// `None`: the live volumes.
    pub to: Option<SetView>,
    pub changes: Vec<ChangeView>,
    /// Objects the catalog said may have changed: what the diff's cost
    /// follows (not the number of files).
    pub examined: u64,
    /// Whether naming a changed object needed a walk of a live tree.
    pub searched: bool,
}

/// One line of `umbra diff`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeView {
    /// `+`, `-`, `M` or `R`, as `zfs diff`.
    pub change: String,
    /// `file`, `directory`, `symlink`, `fifo`, `socket`, `char-device` or
    /// `block-device`.
    pub kind: String,
    pub volume: String,
    /// Where the entry is (was, for `-` and the old name of `R`) under the
    /// volume's live mount.
    pub path: String,
    /// The new name of an `R`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// For `M`: `content`, `mode`, `owner`, `times`, `xattrs`, `links`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub what: Vec<String>,
}

/// What `umbra versions` answers: newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionsView {
    pub volume: String,
    /// The file's path under the volume's live mount.
    pub path: String,
    pub versions: Vec<VersionView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionView {
    /// blake3 of the content, hex.
    pub blake3: String,
    pub size: u64,
    /// RFC 3339, UTC.
    pub mtime: String,
    /// Whether the live file is this version.
    pub live: bool,
    /// The sets that hold it, newest first.
    pub sets: Vec<VersionSet>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionSet {
    pub id: SetId,
    pub name: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// Where the set shows this version: `<snapshots>/<set>/<volume>/...`.
    pub path: String,
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Response<T> {
    Ok(T),
    Error(String),
}

impl<T> Response<T> {
    /// An error response; the message is made one line.
    pub fn error(message: impl std::fmt::Display) -> Response<T> {
        Response::Error(one_line(&message.to_string()))
    }
}

/// A shadow copy set as clients see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetView {
    pub id: SetId,
    pub name: String,
    /// RFC 3339, UTC.
    pub created: String,
    pub label: Option<String>,
    /// Who asked for it: `manual`, `scheduled` or `backup`.
    #[serde(default = "manual")]
    pub origin: String,
    /// The names of the set's volumes.
    pub volumes: Vec<String>,
    /// The writers that took part, and how they fared.
    #[serde(default)]
    pub writers: Vec<SetWriter>,
    /// The cluster set this set is this host's part of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// `list --cluster`: the members that hold the cluster set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_members: Option<Vec<String>>,
}

fn manual() -> String {
    "manual".into()
}

/// What `umbra prune` answers: every set, oldest first, with what
/// retention did or would do to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneView {
    /// Nothing was deleted: `action` says what would be.
    pub dry_run: bool,
    pub sets: Vec<PrunedSet>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunedSet {
    #[serde(flatten)]
    pub set: SetView,
    /// `keep` or `delete` (done, or with `dry_run` to be done).
    pub action: String,
    /// The rules that keep it (`newest`, `in_use`, `min_age`, `hourly`,
    /// `daily`, `weekly`, `monthly`, `quarterly`, `yearly`, `manual`,
    /// `backup`); empty
    /// for a set that goes.
    pub kept_by: Vec<String>,
}

/// What `umbra create` answers: the set, the id its writers saw, and how
/// long mutations were held and the whole sequence took.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreatedView {
    #[serde(flatten)]
    pub set: SetView,
    pub set_guid: String,
    /// Where the set is browsable: `<snapshots>/<name>`.
    pub path: String,
    /// How long mutations were held: the longest of `holds`.
    pub hold_ms: f64,
    /// Each provider's hold (they run side by side within the freeze).
    #[serde(default)]
    pub holds: Vec<HoldView>,
    pub total_ms: f64,
    /// The oldest sets deleted first to stay within `max_sets`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evicted: Vec<SetView>,
    /// `create --cluster`: the cluster set this set is a part of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterView>,
}

/// What `create --cluster` saw of the whole cluster set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    pub id: String,
    /// Every member that took part (each holds its part).
    pub members: Vec<String>,
    /// The longest member's hold: the cluster set's hold.
    pub hold_ms: f64,
    /// Each member's hold, as it reported it.
    pub holds: Vec<MemberHold>,
    /// How long this host's writers stayed frozen waiting for the others
    /// (the two barriers inside the freeze).
    pub barrier_ms: f64,
    /// How long this host's writers, prepared but not yet frozen, waited
    /// for every member to prepare.
    #[serde(default)]
    pub prepared_ms: f64,
    /// From the plan to this host's part recorded.
    pub total_ms: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberHold {
    pub member: String,
    pub hold_ms: f64,
}

/// One provider's part of a set's hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HoldView {
    /// `cow` or `btrfs`.
    pub provider: String,
    pub volumes: Vec<String>,
    pub hold_ms: f64,
}

/// What `restore` answers: the set files come from and where it is
/// browsable, and once complete, the writers that heard the restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreView {
    pub set: SetView,
    /// `<snapshots>/<name>`.
    pub path: String,
    /// The id the writers saw (empty for a dry run: no writer heard of it).
    pub restore_id: String,
    #[serde(default)]
    pub writers: Vec<SetWriter>,
}

/// A writer as `umbra writers` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterInfo {
    pub name: String,
    /// `socket` or `exec`.
    pub kind: String,
    /// stable, waiting-for-freeze, waiting-for-thaw,
    /// waiting-for-post-snapshot, waiting-for-backup-complete or
    /// failed-at-EVENT.
    pub state: String,
    pub last_error: Option<String>,
    pub retryable: Option<bool>,
    pub volumes: Vec<String>,
    pub required: bool,
    pub connected: bool,
}

/// What `umbra status` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    pub state_dir: String,
    pub socket: String,
    /// The mountpoint of the shadow copy browser.
    pub snapshots: String,
    pub volumes: Vec<VolumeView>,
    pub diff_area: DiffAreaView,
    /// How many sets exist.
    pub sets: u64,
    /// The `[schedule]`'s times and next firing; `None` without times.
    #[serde(default)]
    pub schedule: Option<ScheduleView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleView {
    /// The calendar times as configured.
    pub times: Vec<String>,
    /// RFC 3339, UTC; `None` if no time fires again.
    pub next: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeView {
    pub name: String,
    /// `cow` or `btrfs`.
    #[serde(default)]
    pub provider: String,
    pub backing: String,
    pub mount: String,
    /// The current (open) epoch.
    pub epoch: u64,
}

/// The size of the diff area.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffAreaView {
    /// Bytes of distinct pre-image chunks.
    pub chunk_bytes: u64,
    pub chunks: u64,
    /// Bytes on disk: packs plus catalog.
    pub disk_bytes: u64,
    /// `max_diff_size` in bytes, if set: `chunk_bytes` is held under it.
    #[serde(default)]
    pub limit_bytes: Option<u64>,
    /// `max_sets`.
    #[serde(default)]
    pub max_sets: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("line longer than {limit} bytes")]
    TooLong { limit: usize },
}

/// Reads one line of at most `limit` bytes (the newline not counted), or
/// `None` at the end of the stream. A last line without a newline counts.
pub fn read_line(reader: &mut impl BufRead, limit: usize) -> Result<Option<Vec<u8>>, LineError> {
    let mut line = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    if Read::take(&mut *reader, cap).read_until(b'\n', &mut line)? == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > limit {
        return Err(LineError::TooLong { limit });
    }
    Ok(Some(line))
}

/// Parses a request line.
pub fn parse_request(line: &[u8]) -> Result<Request, serde_json::Error> {
    serde_json::from_slice(line)
}

/// Writes `message` as one JSON line and flushes.
pub fn write_message(writer: &mut impl Write, message: &impl Serialize) -> io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line)?;
    writer.flush()
}

/// `text` with line breaks turned into spaces.
pub fn one_line(text: &str) -> String {
    text.trim().replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use serde_json::json;

    use super::*;

    fn round_trip(request: Request, wire: serde_json::Value) {
        assert_eq!(serde_json::to_value(&request).expect("serializes"), wire);
        let parsed = parse_request(wire.to_string().as_bytes()).expect("parses");
        assert_eq!(parsed, request);
    }

    #[test]
    fn requests_round_trip() {
        round_trip(
            Request::Create {
                volumes: vec!["data".into(), "logs".into()],
                label: Some("nightly".into()),
                cluster: false,
            },
            json!({"op": "create", "volumes": ["data", "logs"], "label": "nightly"}),
        );
        round_trip(Request::List { cluster: false }, json!({"op": "list"}));
        round_trip(
            Request::List { cluster: true },
            json!({"op": "list", "cluster": true}),
        );
        round_trip(
            Request::Create {
                volumes: vec![],
                label: None,
                cluster: true,
            },
            json!({"op": "create", "volumes": [], "label": null, "cluster": true}),
        );
        round_trip(
            Request::Delete {
                sets: vec!["2026-11-25T084250Z".into(), "3".into()],
                oldest: None,
                older_than_secs: None,
                all: false,
            },
            json!({"op": "delete", "sets": ["2026-11-25T084250Z", "3"]}),
        );
        round_trip(Request::Status {}, json!({"op": "status"}));
        round_trip(Request::Writers {}, json!({"op": "writers"}));
        round_trip(
            Request::Register(Registration {
                name: "pg".into(),
                volumes: vec!["data".into()],
                components: vec![],
                required: false,
                timeout_secs: Some(5),
            }),
            json!({"op": "register", "name": "pg", "volumes": ["data"], "components": [],
                "required": false, "timeout_secs": 5}),
        );
        round_trip(
            Request::Diff {
                from: "1".into(),
                to: None,
                path: Some(ClientPath {
                    path: "data/x".into(),
                    cwd: Some("/srv".into()),
                }),
            },
            json!({"op": "diff", "from": "1", "path": {"path": "data/x", "cwd": "/srv"}}),
        );
        round_trip(
            Request::Versions {
                path: ClientPath {
                    path: "/srv/data/x".into(),
                    cwd: None,
                },
            },
            json!({"op": "versions", "path": {"path": "/srv/data/x"}}),
        );
        let minimal = parse_request(br#"{"op":"register","name":"pg"}"#).expect("parses");
        assert!(matches!(minimal, Request::Register(r) if r.required && r.volumes.is_empty()));
        assert!(parse_request(br#"{"op":"register","name":"pg","typo":1}"#).is_err());
    }

    #[test]
    fn restore_requests_round_trip() {
        round_trip(
            Request::Restore {
                set: "latest".into(),
                volumes: vec!["data".into()],
                dry_run: true,
            },
            json!({"op": "restore", "set": "latest", "volumes": ["data"], "dry_run": true}),
        );
        round_trip(
            Request::RestoreComplete { succeeded: false },
            json!({"op": "restore_complete", "succeeded": false}),
        );
        assert_eq!(
            parse_request(br#"{"op":"restore","set":"3"}"#).expect("parses"),
            Request::Restore {
                set: "3".into(),
                volumes: vec![],
                dry_run: false
            }
        );
        assert!(
            parse_request(br#"{"op":"restore"}"#).is_err(),
            "a set is needed"
        );
    }

    #[test]
    fn create_fields_are_optional() {
        let parsed = parse_request(br#"{"op":"create"}"#).expect("parses");
        assert_eq!(
            parsed,
            Request::Create {
                volumes: vec![],
                label: None,
                cluster: false,
            }
        );
    }

    #[test]
    fn malformed_requests_are_errors() {
        for line in [
            &b"not json"[..],
            b"",
            b"{}",
            br#"{"op":"explode"}"#,
            br#"{"op":"delete","sets":"x"}"#,
            br#"{"op":"list","extra":1}"#,
            br#"{"op":"create","volumes":["a"],"lable":"typo"}"#,
            b"\xff\xfe",
        ] {
            assert!(
                parse_request(line).is_err(),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn responses_are_ok_or_error() {
        let set = SetView {
            id: SetId(3),
            name: "2026-11-25T084250Z".into(),
            created: "2026-11-25T08:42:50Z".into(),
            label: None,
            origin: "scheduled".into(),
            volumes: vec!["data".into()],
            writers: vec![],
            cluster_id: None,
            cluster_members: None,
        };
        let ok = Response::Ok(set.clone());
        let wire = json!({"ok": {"id": 3, "name": "2026-11-25T084250Z",
            "created": "2026-11-25T08:42:50Z", "label": null, "origin": "scheduled",
            "volumes": ["data"], "writers": []}});
        assert_eq!(serde_json::to_value(&ok).expect("serializes"), wire);
        let back: Response<SetView> = serde_json::from_value(wire).expect("parses");
        assert_eq!(back, ok);
        // A daemon from before origins answers without one: manual.
        let old: SetView = serde_json::from_value(json!({"id": 3, "name": "n",
            "created": "2026-11-25T08:42:50Z", "label": null, "volumes": []}))
        .expect("parses");
        assert_eq!(old.origin, "manual");
        assert_eq!(
            parse_request(br#"{"op":"prune","dry_run":true}"#).expect("parses"),
            Request::Prune { dry_run: true }
        );
        assert_eq!(
            parse_request(br#"{"op":"prune"}"#).expect("parses"),
            Request::Prune { dry_run: false }
        );

        let err: Response<SetView> = Response::error("no volume named \"x\"\nsecond line");
        let wire = json!({"error": "no volume named \"x\" second line"});
        assert_eq!(serde_json::to_value(&err).expect("serializes"), wire);
        let back: Response<Vec<SetView>> = serde_json::from_value(wire).expect("parses");
        assert_eq!(
            back,
            Response::Error("no volume named \"x\" second line".into())
        );
    }

    #[test]
    fn lines_are_framed_and_capped() {
        let mut input = Cursor::new(b"one\n\nthree\n\n".to_vec());
        assert_eq!(
            read_line(&mut input, 16).expect("line"),
            Some(b"one".to_vec())
        );
        assert_eq!(read_line(&mut input, 16).expect("line"), Some(Vec::new()));
        assert_eq!(
            read_line(&mut input, 16).expect("line"),
            Some(b"three".to_vec())
        );
        assert_eq!(read_line(&mut input, 16).expect("line"), Some(Vec::new()));
        assert_eq!(read_line(&mut input, 16).expect("end"), None);
        let mut unterminated = Cursor::new(b"last".to_vec());
        assert_eq!(
            read_line(&mut unterminated, 16).expect("line"),
            Some(b"last".to_vec())
        );
        assert_eq!(read_line(&mut unterminated, 16).expect("end"), None);

        let mut exact = Cursor::new(b"12345678\n".to_vec());
        assert_eq!(
            read_line(&mut exact, 8).expect("fits"),
            Some(b"12345678".to_vec())
        );
        let mut long = Cursor::new(b"123456789\n".to_vec());
        assert!(matches!(
            read_line(&mut long, 8),
            Err(LineError::TooLong { limit: 8 })
        ));
    }

    #[test]
    fn a_request_over_one_mebibyte_is_refused() {
        let mut big = format!(
            r#"{{"op":"create","label":"{}"}}"#,
            "x".repeat(MAX_REQUEST_LINE)
        )
        .into_bytes();
        big.push(b'\n');
        let result = read_line(&mut Cursor::new(big), MAX_REQUEST_LINE);
        assert!(matches!(result, Err(LineError::TooLong { .. })));
    }

    #[test]
    fn messages_are_one_line() {
        let mut out = Vec::new();
        write_message(
            &mut out,
            &Request::Create {
                volumes: vec![],
                label: Some("a\nb".into()),
                cluster: false,
            },
        )
        .expect("writes");
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(out.last(), Some(&b'\n'));
    }

    /// A JSON-ish request line: umbra's ops and fields with awkward values.
    fn jsonish_line() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let key = prop::sample::select(vec![
            "op",
            "volumes",
            "label",
            "sets",
            "extra",
            "",
            "oldest",
            "older_than_secs",
            "all",
            "name",
            "timeout_secs",
            "required",
            "components",
        ]);
        let value = prop::sample::select(vec![
            r#""create""#,
            r#""list""#,
            r#""delete""#,
            r#""register""#,
            r#""backup""#,
            "18446744073709551615",
            "18446744073709551616",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775809",
            "0",
            "86401",
            r#"[{"name":"db","paths":["a"]}]"#,
            r#""\u001b]0;x\u0007""#,
            r#""status""#,
            r#""launch""#,
            "null",
            "[]",
            r#"["data"]"#,
            r#"["a\nb"]"#,
            "[1]",
            "{}",
            "1",
            "-1e999",
            "true",
            r#""\ud800""#,
            r#""x""#,
            "[[[[[[[[[[[[[[[[[[[[",
            r#""\u0000""#,
        ]);
        let field = (key, value).prop_map(|(k, v)| format!("\"{k}\":{v}"));
        (
            prop::collection::vec(field, 0..4),
            any::<bool>(),
            "\\PC{0,4}",
        )
            .prop_map(|(fields, close, tail)| {
                let mut line = format!("{{{}", fields.join(","));
                if close {
                    line.push('}');
                }
                line.push_str(&tail);
                line.into_bytes()
            })
    }

    /// What a client is told of a parse error: one line, not empty.
    fn assert_one_line_error(line: &[u8]) -> Result<(), proptest::test_runner::TestCaseError> {
        let parsed = parse_request(line);
        // What the daemon does next with a request's numbers must not panic
        // either: a registration is validated, and its deadline is set.
        if let Ok(Request::Register(reg)) = &parsed
            && reg.validate().is_ok()
        {
            let timeout = std::time::Duration::from_secs(reg.timeout_secs.unwrap_or(1));
            proptest::prop_assert!(
                std::time::Instant::now().checked_add(timeout).is_some(),
                "accepted timeout_secs {:?}",
                reg.timeout_secs
            );
        }
        if let Err(e) = parsed {
            let text = e.to_string();
            proptest::prop_assert!(!text.trim().is_empty(), "empty error");
            proptest::prop_assert!(!text.contains(['\n', '\r']), "not one line: {text:?}");
            let wire =
                serde_json::to_vec(&Response::<()>::error(format!("malformed request: {e}")))
                    .map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            proptest::prop_assert!(!wire.contains(&b'\n'));
        }
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_a_request_or_a_one_line_error(
            line in proptest::collection::vec(proptest::num::u8::ANY, 0..512)
        ) {
            assert_one_line_error(&line)?;
        }

        #[test]
        fn jsonish_lines_are_a_request_or_a_one_line_error(line in jsonish_line()) {
            assert_one_line_error(&line)?;
        }

        #[test]
        fn read_line_frames_any_bytes_within_its_limit(
            input in proptest::collection::vec(
                proptest::prop_oneof![proptest::num::u8::ANY, proptest::strategy::Just(b'\n')],
                0..300,
            ),
            limit in 0usize..40,
        ) {
            let mut reader = Cursor::new(input.clone());
            let mut lines = Vec::new();
            loop {
                match read_line(&mut reader, limit) {
                    Ok(Some(line)) => {
                        proptest::prop_assert!(line.len() <= limit);
                        proptest::prop_assert!(!line.contains(&b'\n'));
                        lines.push(line);
                    }
                    Ok(None) => {
                        // Every byte came back, in order, framed by newlines.
                        let mut joined = lines.join(&b'\n');
                        if input.last() == Some(&b'\n') {
                            joined.push(b'\n');
                        }
                        proptest::prop_assert_eq!(joined, input);
                        break;
                    }
                    Err(LineError::TooLong { .. }) => {
                        proptest::prop_assert!(input.split(|b| *b == b'\n').any(|l| l.len() > limit));
                        break;
                    }
                    Err(LineError::Io(e)) => proptest::prop_assert!(false, "{e}"),
                }
            }
        }
    }

    #[test]
    fn a_writer_registering_with_timeout_secs_2_pow_64_minus_1_is_refused() {
        let line = br#"{"op":"register","name":"w","timeout_secs":18446744073709551615}"#;
        let Ok(Request::Register(reg)) = parse_request(line) else {
            panic!("a registration");
        };
        let err = reg.validate().expect_err("too long a deadline");
        assert!(err.contains("at most 86400"), "{err}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        // Before the tag (buffered by serde) and after it.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        for line in [
            deep.clone(),
            format!(r#"{{"x":{deep},"op":"list"}}"#),
            format!(r#"{{"op":"create","volumes":{deep}}}"#),
        ] {
            let err = parse_request(line.as_bytes()).expect_err("nesting");
            assert!(!err.to_string().contains('\n'), "{err}");
        }
    }
}
