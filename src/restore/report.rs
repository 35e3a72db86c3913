//! What `umbra restore` prints: one line per path (`restored PATH`,
//! `skipped PATH (unchanged)`, `kept PATH (newer live)`, with `would` in a
//! dry run) and a summary, or with --json one document with every action
//! and the totals. Paths are escaped as every name umbra prints as text.

use serde::Serialize;

use super::plan::{Kind, Node};
use umbra_coordinator::SetWriter;

use crate::protocol::SetView;
use crate::render;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Done {
    Restored,
    Skipped,
    Kept,
}

#[derive(Debug, Serialize)]
pub struct Entry {
    pub action: Done,
    pub path: String,
    pub kind: &'static str,
}

#[derive(Debug, Default, Serialize)]
pub struct Totals {
    pub restored: u64,
    pub skipped: u64,
    pub kept: u64,
    /// Bytes of the regular files restored.
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub set: SetView,
    pub dry_run: bool,
    pub actions: Vec<Entry>,
    pub totals: Totals,
    /// The writers that heard PreRestore and PostRestore.
    pub writers: Vec<SetWriter>,
}

impl Report {
    pub fn new(set: SetView, dry_run: bool) -> Report {
        Report {
            set,
            dry_run,
            actions: Vec::new(),
            totals: Totals::default(),
            writers: Vec::new(),
        }
    }

    pub fn add(&mut self, action: Done, node: &Node) {
        match action {
            Done::Restored => {
                self.totals.restored += 1;
                if node.kind == Kind::File {
                    self.totals.bytes += u64::try_from(node.st.st_size).unwrap_or(0);
                }
            }
            Done::Skipped => self.totals.skipped += 1,
            Done::Kept => self.totals.kept += 1,
        }
        self.actions.push(Entry {
            action,
            path: node.shown.display().to_string(),
            kind: node.kind.as_str(),
        });
    }

    /// The text form.
    pub fn text(&self) -> String {
        let would = if self.dry_run { "would be " } else { "" };
        let mut out = String::new();
        for entry in &self.actions {
            let path = render::printable(&entry.path);
            let line = match (entry.action, self.dry_run) {
                (Done::Restored, false) => format!("restored {path}"),
                (Done::Restored, true) => format!("would restore {path}"),
                (Done::Skipped, _) => format!("skipped {path} (unchanged)"),
                (Done::Kept, _) => format!("kept {path} (newer live)"),
            };
            out.push_str(&line);
            out.push('\n');
        }
        let t = &self.totals;
        out.push_str(&format!(
            "{} from {}: {} {would}restored ({} bytes), {} skipped (unchanged), {} kept (newer live){}\n",
            if self.dry_run { "dry run" } else { "restore" },
            render::printable(&self.set.name),
            t.restored,
            t.bytes,
            t.skipped,
            t.kept,
            if self.dry_run { "; nothing was changed" } else { "" },
        ));
        out
    }
}
