//! The text a person reads: the answers of `create`, `delete`, `list`, `prune`, `writers`,
//! `status`, `diff` and `versions` laid out as lines and tables, every string a user or a writer
//! chose made printable first (`printable`: no control character reaches
//! the terminal raw). Pure functions from protocol views to strings; it
//! never writes anywhere and never shapes `--json` output (that is the
//! protocol views themselves, exact).

use std::fmt::Write as _;

use crate::protocol::{
    CreatedView, DiffView, PruneView, SetView, StatusView, VersionsView, WriterInfo,
};

/// `text` safe to print on a terminal: every control character (a
/// newline, ESC, BEL, DEL, the C1 set) and every bidirectional override is
/// written as a Rust escape (`\n`, `\u{1b}`), so that a label, a writer's
/// message or a path can neither forge a line nor reach the terminal as a
/// command. Everything else is kept as it is.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The names joined by `sep`, each printable.
fn joined(names: &[String], sep: &str) -> String {
    names
        .iter()
        .map(|n| printable(n))
        .collect::<Vec<_>>()
        .join(sep)
}

/// `2026-11-25T084250Z (id 3): data, logs`
pub fn created(set: &SetView) -> String {
    format!(
        "{} (id {}): {}\n",
        printable(&set.name),
        set.id,
        joined(&set.volumes, ", ")
    )
}

/// The new set's line, after one line per set `max_sets` deleted for it.
pub fn created_view(view: &CreatedView) -> String {
    let mut out = String::new();
    for gone in &view.evicted {
        let _ = writeln!(
            out,
            "deleted {} (id {}): the oldest set, to stay within max_sets",
            printable(&gone.name),
            gone.id
        );
    }
    out += &created(&view.set);
    if let Some(cluster) = &view.cluster {
        let _ = writeln!(
            out,
            "cluster set {} on {}: hold {:.3} ms (longest member; here {:.3} ms), writers waited {:.3} ms for the others while frozen, {:.1} ms in all",
            printable(&cluster.id),
            joined(&cluster.members, ","),
            cluster.hold_ms,
            view.hold_ms,
            cluster.barrier_ms,
            cluster.total_ms
        );
    }
    out
}

/// One `deleted <name> (id <id>)` line per set.
pub fn deleted(sets: &[SetView]) -> String {
    let mut out = String::new();
    for set in sets {
        let _ = writeln!(out, "deleted {} (id {})", printable(&set.name), set.id);
    }
    out
}

/// What `umbra backup` says once its command ended: the set it made, how
/// the command ended, and whether the set was deleted.
pub fn backed_up(set: &SetView, status: std::process::ExitStatus, kept: bool) -> String {
    use std::os::unix::process::ExitStatusExt;
    let ended = match (status.code(), status.signal()) {
        (Some(code), _) => format!("the command exited with {code}"),
        (None, Some(signal)) => format!("the command was killed by signal {signal}"),
        (None, None) => "the command ended".to_string(),
    };
    let fate = if kept { "kept" } else { "deleted" };
    format!(
        "umbra backup: set {} (id {}): {ended}; the set was {fate}",
        printable(&set.name),
        set.id
    )
}

/// A table of the sets: name, id, created, origin, volumes, label.
pub fn list(sets: &[SetView]) -> String {
    // The cluster column only where some set is a cluster set's part.
    let clustered = sets.iter().any(|s| s.cluster_id.is_some());
    let rows = sets.iter().map(|set| {
        let mut row = vec![
            printable(&set.name),
            set.id.to_string(),
            printable(&set.created),
            printable(&set.origin),
            joined(&set.volumes, ","),
            printable(set.label.as_deref().unwrap_or_default()),
        ];
        if clustered {
            let id = printable(set.cluster_id.as_deref().unwrap_or_default());
            row.push(match &set.cluster_members {
                Some(members) => format!("{id} ({})", joined(members, ",")),
                None => id,
            });
        }
        row
    });
    let mut header = vec!["NAME", "ID", "CREATED", "ORIGIN", "VOLUMES", "LABEL"];
    if clustered {
        header.push("CLUSTER");
    }
    table(&header, rows)
}

/// What retention did (or, dry, would do): a table of every set with its
/// action and the rules that keep it, then a count.
pub fn pruned(view: &PruneView) -> String {
    let (keep, delete) = if view.dry_run {
        ("keep", "delete")
    } else {
        ("kept", "deleted")
    };
    let rows = view.sets.iter().map(|p| {
        let action = if p.action == "delete" { delete } else { keep };
        vec![
            action.to_string(),
            printable(&p.set.name),
            p.set.id.to_string(),
            printable(&p.set.origin),
            joined(&p.kept_by, ","),
        ]
    });
    let mut out = table(&["ACTION", "NAME", "ID", "ORIGIN", "KEPT BY"], rows);
    let gone = view.sets.iter().filter(|p| p.action == "delete").count();
    let verb = if view.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    let _ = writeln!(out, "{verb} {gone} of {} sets", view.sets.len());
    out
}

/// `zfs diff -F`'s lines: mark, kind, path (`OLD -> NEW` for a rename),
/// and for a modification what changed; tab-separated, paths printable.
pub fn diff(view: &DiffView) -> String {
    let mut out = String::new();
    for c in &view.changes {
        let kind = match c.kind.as_str() {
            "directory" => "/",
            "symlink" => "@",
            "fifo" => "|",
            "socket" => "=",
            "block-device" => "B",
            "char-device" => "C",
            _ => "F",
        };
        let _ = write!(out, "{}\t{kind}\t{}", c.change, printable(&c.path));
        if let Some(to) = &c.to {
            let _ = write!(out, " -> {}", printable(to));
        }
        if !c.what.is_empty() {
            let _ = write!(out, "\t{}", c.what.join(","));
        }
        out.push('\n');
    }
    out
}

/// A table of a file's versions, newest first: which, when modified, the
/// size, the start of the hash and where each set shows it.
pub fn versions(view: &VersionsView) -> String {
    let mut rows = Vec::new();
    for v in &view.versions {
        let first = if v.live {
            "live".to_string()
        } else {
            String::new()
        };
        let mut holders: Vec<(String, String)> = v
            .sets
            .iter()
            .map(|s| (printable(&s.name), printable(&s.path)))
            .collect();
        if holders.is_empty() {
            holders.push((first.clone(), printable(&view.path)));
        } else if v.live {
            holders.insert(0, ("live".into(), printable(&view.path)));
        }
        for (i, (set, path)) in holders.into_iter().enumerate() {
            let head = i == 0;
            rows.push(vec![
                if head {
                    printable(&v.mtime)
                } else {
                    String::new()
                },
                if head {
                    v.size.to_string()
                } else {
                    String::new()
                },
                if head {
                    v.blake3.chars().take(12).collect()
                } else {
                    String::new()
                },
                set,
                path,
            ]);
        }
    }
    let mut out = table(
        &["MODIFIED", "SIZE", "BLAKE3", "SET", "PATH"],
        rows.into_iter(),
    );
    let _ = writeln!(
        out,
        "{} version{} of {}",
        view.versions.len(),
        if view.versions.len() == 1 { "" } else { "s" },
        printable(&view.path)
    );
    out
}

/// A table of the writers: name, kind, state, volumes, last error.
pub fn writers(writers: &[WriterInfo]) -> String {
    let rows = writers.iter().map(|w| {
        let mut state = printable(&w.state);
        if !w.connected {
            state.push_str(" (gone)");
        }
        let volumes = if w.volumes.is_empty() {
            "*".to_string()
        } else {
            joined(&w.volumes, ",")
        };
        let error = match (&w.last_error, w.retryable) {
            (Some(e), Some(true)) => format!("{} (retryable)", printable(e)),
            (Some(e), _) => printable(e),
            (None, _) => String::new(),
        };
        vec![
            printable(&w.name),
            printable(&w.kind),
            state,
            volumes,
            error,
        ]
    });
    table(&["WRITER", "KIND", "STATE", "VOLUMES", "LAST ERROR"], rows)
}

/// The volumes as a table (a mount equal to its backing is in place), then the snapshots, the diff area and the sets.
pub fn status(status: &StatusView) -> String {
    let rows = status.volumes.iter().map(|v| {
        let epoch = v.epoch.to_string();
        vec![
            printable(&v.name),
            printable(&v.provider),
            printable(&v.backing),
            printable(&v.mount),
            epoch,
        ]
    });
    let mut out = table(&["VOLUME", "PROVIDER", "BACKING", "MOUNT", "EPOCH"], rows);
    out.push('\n');
    let lines = [
        ("snapshots", printable(&status.snapshots)),
        (
            "diff area",
            format!(
                "{} in {} chunks, {} on disk{}{}",
                bytes(status.diff_area.chunk_bytes),
                status.diff_area.chunks,
                bytes(status.diff_area.disk_bytes),
                match status.diff_area.limit_bytes {
                    Some(limit) => format!("; limit {}", bytes(limit)),
                    None => String::new(),
                },
                match status.diff_area.max_sets {
                    Some(max) => format!("; at most {max} sets"),
                    None => String::new(),
                },
            ),
        ),
        ("sets", status.sets.to_string()),
        ("state dir", printable(&status.state_dir)),
        ("socket", printable(&status.socket)),
    ];
    for (key, value) in lines {
        let _ = writeln!(out, "{:<10} {value}", format!("{key}:"));
    }
    if let Some(schedule) = &status.schedule {
        let next = schedule.next.as_deref().unwrap_or("never");
        let _ = writeln!(
            out,
            "schedule:  next {} ({})",
            printable(next),
            joined(&schedule.times, "; ")
        );
    }
    out
}

/// Columns padded to their widest cell, two spaces apart; the last column
/// is not padded.
fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(ToString::to_string).collect()];
    cells.extend(rows);
    let mut widths = vec![0; header.len()];
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &cells {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `1234567` → `1.2 MiB (1234567 bytes)`; small sizes stay in bytes.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64;
    let mut unit = "bytes";
    for next in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit} ({n} bytes)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DiffAreaView, VolumeView};

    fn set(id: i64, name: &str, label: Option<&str>, volumes: &[&str]) -> SetView {
        SetView {
            id: umbra_ids::SetId(id),
            name: name.into(),
            created: "2026-11-25T08:42:50Z".into(),
            label: label.map(Into::into),
            origin: "manual".into(),
            volumes: volumes.iter().map(ToString::to_string).collect(),
            writers: vec![],
            cluster_id: None,
            cluster_members: None,
        }
    }

    #[test]
    fn writers_show_state_volumes_and_last_error() {
        let w =
            |name: &str, state: &str, error: Option<&str>, retryable: Option<bool>| WriterInfo {
                name: name.into(),
                kind: "socket".into(),
                state: state.into(),
                last_error: error.map(Into::into),
                retryable,
                volumes: vec!["data".into()],
                required: true,
                connected: true,
            };
        let mut gone = w("pg", "failed-at-freeze", Some("lock timeout"), Some(true));
        gone.connected = false;
        gone.volumes.clear();
        let out = writers(&[w("app", "stable", None, None), gone]);
        assert_eq!(
            out,
            "WRITER  KIND    STATE                    VOLUMES  LAST ERROR\n\
             app     socket  stable                   data\n\
             pg      socket  failed-at-freeze (gone)  *        lock timeout (retryable)\n"
        );
    }

    #[test]
    fn control_characters_in_a_label_are_escaped_not_printed_raw() {
        let forged = "nightly\n2099-01-01T000000Z    99  forged\x1b]0;owned\x07\r\u{202e}";
        let text = list(&[set(1, "2026-11-25T084250Z", Some(forged), &["da\tta"])]);
        assert_eq!(text.lines().count(), 2, "{text:?}");
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(
            text.ends_with(
                "da\\tta   nightly\\n2099-01-01T000000Z    99  forged\\u{1b}]0;owned\\u{7}\\r\\u{202e}\n"
            ),
            "{text:?}"
        );
    }

    #[test]
    fn writer_names_errors_and_paths_are_printable() {
        let w = WriterInfo {
            name: "w\x1b[2J".into(),
            kind: "socket".into(),
            state: "failed-at-freeze".into(),
            last_error: Some("line one\nline two\x07".into()),
            retryable: Some(false),
            volumes: vec!["v\x1b".into()],
            required: true,
            connected: true,
        };
        let text = writers(&[w]);
        assert_eq!(text.lines().count(), 2, "{text:?}");
        assert!(text.contains("w\\u{1b}[2J"), "{text:?}");
        assert!(text.contains("line one\\nline two\\u{7}"), "{text:?}");
        assert_eq!(printable("plain été ✓"), "plain été ✓");
        assert_eq!(printable("\u{85}\u{9b}\u{7f}"), "\\u{85}\\u{9b}\\u{7f}");
    }

    #[test]
    fn created_names_the_set_and_its_id() {
        let text = created(&set(3, "2026-11-25T084250Z", None, &["data"]));
        assert_eq!(text, "2026-11-25T084250Z (id 3): data\n");
    }

    #[test]
    fn a_cluster_sets_part_names_the_cluster_set_and_its_times() {
        let mut part = set(3, "2026-11-25T084250Z", None, &["data"]);
        part.cluster_id = Some("1764060170000000000-a".into());
        let view = CreatedView {
            set: part.clone(),
            set_guid: String::new(),
            path: String::new(),
            hold_ms: 0.4,
            holds: Vec::new(),
            total_ms: 80.0,
            evicted: Vec::new(),
            cluster: Some(crate::protocol::ClusterView {
                id: "1764060170000000000-a".into(),
                members: vec!["a".into(), "b".into()],
                hold_ms: 0.5,
                holds: Vec::new(),
                barrier_ms: 2.0,
                prepared_ms: 10.0,
                total_ms: 90.0,
            }),
        };
        assert_eq!(
            created_view(&view).lines().nth(1),
            Some(
                "cluster set 1764060170000000000-a on a,b: hold 0.500 ms (longest member; here \
                 0.400 ms), writers waited 2.000 ms for the others while frozen, 90.0 ms in all"
            )
        );
        part.cluster_members = Some(vec!["a".into(), "b".into()]);
        let table = list(&[part, set(4, "plain", None, &["data"])]);
        assert!(
            table.lines().next().is_some_and(|h| h.ends_with("CLUSTER")),
            "{table}"
        );
        assert!(table.contains("1764060170000000000-a (a,b)"), "{table}");
    }

    #[test]
    fn diff_lines_are_zfs_diff_f_lines_with_paths_escaped() {
        let change = |change: &str, kind: &str, path: &str, to: Option<&str>, what: &[&str]| {
            crate::protocol::ChangeView {
                change: change.into(),
                kind: kind.into(),
                volume: "data".into(),
                path: path.into(),
                to: to.map(Into::into),
                what: what.iter().map(|w| w.to_string()).collect(),
            }
        };
        let view = DiffView {
            from: set(1, "a", None, &["data"]),
            to: None,
            changes: vec![
                change("R", "directory", "/v/old", Some("/v/new"), &[]),
                change("M", "file", "/v/f\nake", None, &["content", "times"]),
                change("+", "symlink", "/v/l", None, &[]),
            ],
            examined: 3,
            searched: false,
        };
        assert_eq!(
            diff(&view),
            "R\t/\t/v/old -> /v/new\nM\tF\t/v/f\\nake\tcontent,times\n+\t@\t/v/l\n"
        );
    }

    #[test]
    fn list_is_a_table() {
        let sets = [
            set(
                1,
                "2026-11-25T084250Z",
                Some("before upgrade"),
                &["data", "logs"],
            ),
            set(12, "2026-11-25T084250Z-1", None, &["data"]),
        ];
        assert_eq!(
            list(&sets),
            "NAME                  ID  CREATED               ORIGIN  VOLUMES    LABEL\n\
             2026-11-25T084250Z    1   2026-11-25T08:42:50Z  manual  data,logs  before upgrade\n\
             2026-11-25T084250Z-1  12  2026-11-25T08:42:50Z  manual  data\n"
        );
    }

    #[test]
    fn prune_shows_each_sets_action_and_rules() {
        let entry = |id: i64, action: &str, kept_by: &[&str]| crate::protocol::PrunedSet {
            set: SetView {
                origin: "scheduled".into(),
                ..set(id, &format!("s{id}\u{1b}"), None, &["data"])
            },
            action: action.into(),
            kept_by: kept_by.iter().map(ToString::to_string).collect(),
        };
        let mut view = PruneView {
            dry_run: true,
            sets: vec![
                entry(1, "delete", &[]),
                entry(2, "keep", &["daily", "monthly"]),
            ],
        };
        assert_eq!(
            pruned(&view),
            "ACTION  NAME      ID  ORIGIN     KEPT BY\n\
             delete  s1\\u{1b}  1   scheduled\n\
             keep    s2\\u{1b}  2   scheduled  daily,monthly\n\
             would delete 1 of 2 sets\n"
        );
        view.dry_run = false;
        assert!(pruned(&view).starts_with("ACTION   NAME"));
        assert!(pruned(&view).contains("\ndeleted  s1"));
        assert!(pruned(&view).ends_with("deleted 1 of 2 sets\n"));
    }

    #[test]
    fn status_shows_volumes_and_the_diff_area() {
        let view = StatusView {
            state_dir: "/s".into(),
            socket: "/s/control.sock".into(),
            snapshots: "/snapshots".into(),
            volumes: vec![
                VolumeView {
                    name: "data".into(),
                    provider: "cow".into(),
                    backing: "/srv/data".into(),
                    mount: "/srv/data".into(),
                    epoch: 4,
                },
                VolumeView {
                    name: "logs".into(),
                    provider: "btrfs".into(),
                    backing: "/b/logs".into(),
                    mount: "/mnt/logs".into(),
                    epoch: 1,
                },
            ],
            diff_area: DiffAreaView {
                chunk_bytes: 3 * 1024 * 1024,
                chunks: 48,
                disk_bytes: 500,
                limit_bytes: None,
                max_sets: None,
            },
            sets: 3,
            schedule: Some(crate::protocol::ScheduleView {
                times: vec!["hourly".into(), "Mon 07:00".into()],
                next: Some("2026-11-25T09:00:00Z".into()),
            }),
        };
        let text = status(&view);
        assert!(
            text.ends_with("schedule:  next 2026-11-25T09:00:00Z (hourly; Mon 07:00)\n"),
            "{text}"
        );
        assert!(text.starts_with(
            "VOLUME  PROVIDER  BACKING    MOUNT      EPOCH\n\
             data    cow       /srv/data  /srv/data  4\n\
             logs    btrfs     /b/logs    /mnt/logs  1\n\n"
        ));
        assert!(
            text.contains("diff area: 3.0 MiB (3145728 bytes) in 48 chunks, 500 bytes on disk\n"),
            "{text}"
        );
        assert!(text.contains("sets:      3\n"), "{text}");
    }
}
