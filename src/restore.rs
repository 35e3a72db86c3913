//! `umbra restore SET PATH...`: puts files and trees back from a shadow
//! copy set. The daemon resolves the set and tells the writers of the
//! volumes written into (PreRestore, then PostRestore with the outcome);
//! the copy itself is done here, by the user who ran the command, reading
//! the set through the snapshot mount (which checks their access as of the
//! set's instant) and writing through the live mount (which checks it as
//! the backing file system does), so that nobody restores what they could
//! not read then or writes where they cannot write now.
//!
//! Every PATH is checked after the writers prepared and before anything is
//! written (the plan): a destination that exists and differs is a conflict
//! unless --overwrite or --keep-newer settles it, and then nothing is
//! restored at all. SIGINT, SIGTERM and SIGHUP stop the copy between two
//! entries: each file is whole (old or new), and the writers hear that the
//! restore failed.

mod copy;
mod plan;
mod report;
mod sys;

use std::ffi::{CString, OsStr, OsString};
use std::io::{self, IsTerminal, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};

use crate::client::ClientError;
use crate::client::connection::Session;
use crate::protocol::{Request, RestoreView, StatusView};
use crate::target::{self, Mount, Target, TargetError};
pub use plan::Policy;
use plan::{Action, Node, Planner};
use report::{Done, Report};

/// The unit of reading and of hole detection: a block of zeros this long
/// is left as a hole.
const BLOCK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("{path}: {op}: {source}")]
    Io {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not in shadow copy set {set}")]
    NotInSet { path: String, set: String },
    #[error(
        "{path}: {step} is a symlink in shadow copy set {set}; restore does not follow symlinks"
    )]
    SymlinkInSet {
        path: String,
        step: String,
        set: String,
    },
    #[error(
        "{path}: {step} is a symlink or not a directory live; restore does not follow symlinks"
    )]
    NotADirectory { path: String, step: String },
    #[error("{path}: a device or socket; restore puts back files, directories, symlinks and FIFOs")]
    Unsupported { path: String },
    #[error(
        "{count} path(s) exist and differ from the set, nothing was restored (--overwrite replaces them, --keep-newer keeps the newer): {list}"
    )]
    Conflicts { count: usize, list: String },
    #[error("--to {0}: {1}")]
    To(String, #[source] io::Error),
    #[error("writing to stdout: {0}")]
    Stdout(#[source] io::Error),
    #[error("interrupted: what was restored so far is whole, the rest is as it was")]
    Interrupted,
    #[error("cannot catch signals: {0}")]
    Signals(#[source] io::Error),
}

/// What the command line asks.
pub struct Options {
    pub set: String,
    pub paths: Vec<PathBuf>,
    pub to: Option<PathBuf>,
    pub policy: Policy,
    /// Restore each PATH beside the live one, as `NAME.restored-SET`
    /// (neither --overwrite nor --keep-newer nor --to).
    pub beside: bool,
    pub dry_run: bool,
    pub json: bool,
}

/// The name a PATH restored beside its live self gets.
fn beside_name(name: &OsStr, set: &str) -> OsString {
    let mut out = name.to_os_string();
    out.push(".restored-");
    out.push(set);
    out
}

/// One PATH, resolved and planned.
struct Item {
    /// The set's directory that holds the entry.
    src_parent: OwnedFd,
    /// Where it goes.
    dst: Dest,
    node: Node,
}

/// The destination directory of an item: open, or to be created below
/// an open one (the live parents a restore brings back).
struct Dest {
    /// The deepest directory that exists.
    base: Arc<OwnedFd>,
    /// The directories to create under `base`, with the set's directory
    /// each is made like (its descriptor in the set, its attributes, its
    /// destination path).
    missing: Vec<(CString, OwnedFd, sys::Stat, PathBuf)>,
}

/// Runs `umbra restore` against the daemon at `socket`, from `cwd`.
pub fn run(socket: &Path, cwd: &Path, options: Options) -> Result<(), RestoreError> {
    let status: StatusView = crate::client::connection::call(socket, &Request::Status {})?;
    // The working directory is a real path (getcwd): a mountpoint named
    // through a symlink is matched by its real path too.
    let real: Vec<(String, PathBuf)> = status
        .volumes
        .iter()
        .filter_map(|v| Some((v.name.clone(), std::fs::canonicalize(&v.mount).ok()?)))
        .collect();
    let mounts: Vec<Mount<'_>> = status
        .volumes
        .iter()
        .map(|v| Mount {
            name: &v.name,
            mount: Path::new(&v.mount),
        })
        .chain(real.iter().map(|(name, mount)| Mount { name, mount }))
        .collect();
    let snapshots = Path::new(&status.snapshots);
    let real_snapshots = std::fs::canonicalize(snapshots).unwrap_or_else(|_| snapshots.into());
    let targets = options
        .paths
        .iter()
        .map(|p| {
            target::resolve(p, cwd, &mounts, snapshots)
                .or_else(|e| target::resolve(p, cwd, &mounts, &real_snapshots).map_err(|_| e))
        })
        .collect::<Result<Vec<Target>, TargetError>>()?;
    // The same PATH twice is restored once.
    let mut targets = targets;
    let mut seen = std::collections::HashSet::new();
    targets.retain(|t| seen.insert(t.clone()));
    // The volumes written into: each target's own, or --to's if it is in
    // one (a directory elsewhere concerns no writer).
    // DIR is opened as the kernel resolves it; its spelling without `..`
    // only says which volume, if any, it is in.
    let to = options.to.as_ref().map(|dir| cwd.join(dir));
    let mut volumes: Vec<String> = match &to {
        Some(dir) => {
            let dir = crate::config::normalize(dir);
            target::resolve(&dir, cwd, &mounts, snapshots)
                .ok()
                .filter(|t| dir.starts_with(mount_of(&mounts, &t.volume)))
                .map(|t| vec![t.volume])
                .unwrap_or_default()
        }
        None => targets.iter().map(|t| t.volume.clone()).collect(),
    };
    volumes.sort();
    volumes.dedup();

    let mut session = Session::open(socket)?;
    let started: RestoreView = session.call(&Request::Restore {
        set: options.set.clone(),
        volumes,
        dry_run: options.dry_run,
    })?;
    let mut report = Report::new(started.set.clone(), options.dry_run);
    let outcome = restore(
        &started,
        &targets,
        &mounts,
        to.as_deref(),
        &options,
        &mut report,
    );
    let finished: Result<RestoreView, ClientError> = session.call(&Request::RestoreComplete {
        succeeded: outcome.is_ok(),
    });
    outcome?;
    report.writers = finished?.writers;
    let out = if options.json {
        let mut doc =
            serde_json::to_string_pretty(&report).map_err(|e| RestoreError::Stdout(e.into()))?;
        doc.push('\n');
        doc
    } else {
        report.text()
    };
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(RestoreError::Stdout)
}

fn mount_of<'a>(mounts: &'a [Mount<'_>], volume: &str) -> &'a Path {
    mounts
        .iter()
        .find(|m| m.name == volume)
        .map_or(Path::new("/"), |m| m.mount)
}

/// Plans every target, then (unless a dry run) copies them all.
fn restore(
    started: &RestoreView,
    targets: &[Target],
    mounts: &[Mount<'_>],
    to: Option<&Path>,
    options: &Options,
    report: &mut Report,
) -> Result<(), RestoreError> {
    let set_dir = sys::open(
        &path_c(Path::new(&started.path))?,
        libc::O_RDONLY | libc::O_DIRECTORY,
    )
    .map_err(|source| RestoreError::Io {
        path: started.path.clone(),
        op: "opening the set",
        source,
    })?;
    let to_dir = match to {
        Some(dir) => Some(Arc::new(
            sys::open(&path_c(dir)?, libc::O_RDONLY | libc::O_DIRECTORY)
                .map_err(|e| RestoreError::To(dir.display().to_string(), e))?,
        )),
        None => None,
    };
    let mut planner = Planner {
        policy: options.policy,
        findings: plan::Findings::default(),
    };
    let mut items = Vec::new();
    for target in targets {
        let dst_root = match (&to_dir, to) {
            (Some(fd), Some(dir)) => (fd.clone(), dir.to_path_buf()),
            _ => {
                let mount = mount_of(mounts, &target.volume);
                let fd = sys::open(&path_c(mount)?, libc::O_RDONLY | libc::O_DIRECTORY).map_err(
                    |source| RestoreError::Io {
                        path: mount.display().to_string(),
                        op: "opening the live volume",
                        source,
                    },
                )?;
                (Arc::new(fd), mount.to_path_buf())
            }
        };
        items.extend(plan_target(
            &set_dir,
            &started.set.name,
            target,
            dst_root,
            to.is_some(),
            options.beside,
            &mut planner,
        )?);
    }
    let findings = planner.findings;
    if !findings.conflicts.is_empty() {
        let count = findings.conflicts.len();
        let list = findings.conflicts.join(", ");
        return Err(RestoreError::Conflicts { count, list });
    }
    if options.dry_run {
        for item in &items {
            report_plan(report, &item.node);
        }
        return Ok(());
    }
    let progress = progress_bar(findings.bytes, options.json);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        signal_hook::flag::register(signal, stop.clone()).map_err(RestoreError::Signals)?;
    }
    let mut copier = copy::Copier::new(
        report,
        progress.as_ref(),
        options.policy == Policy::Overwrite,
    )
    .stopping_on(stop);
    for item in &items {
        let parent = make_parents(&item.dst)?;
        copier.node(item.src_parent.as_fd(), &parent.0, &item.node)?;
        // The parents a restore created get their modes and times after
        // their contents, deepest first.
        for (dir, src, st, shown) in parent.1.iter().rev() {
            copier.dir_metadata(src.as_fd(), dir.as_fd(), st, shown)?;
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    Ok(())
}

type Parents<'a> = (
    Arc<OwnedFd>,
    Vec<(Arc<OwnedFd>, &'a OwnedFd, &'a sys::Stat, &'a PathBuf)>,
);

/// Creates the missing live parents of an item (private until their
/// metadata is applied); the item's directory and the ones created.
fn make_parents(dest: &Dest) -> Result<Parents<'_>, RestoreError> {
    let mut dir = dest.base.clone();
    let mut made = Vec::new();
    for (name, src, st, shown) in &dest.missing {
        match sys::mkdirat(dir.as_fd(), name, 0o700) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(source) => {
                return Err(RestoreError::Io {
                    path: shown.display().to_string(),
                    op: "creating",
                    source,
                });
            }
        }
        let next =
            Arc::new(
                plan::open_dir(dir.as_fd(), name).map_err(|source| RestoreError::Io {
                    path: shown.display().to_string(),
                    op: "opening",
                    source,
                })?,
            );
        made.push((next.clone(), src, st, shown));
        dir = next;
    }
    Ok((dir, made))
}

/// A dry run's report: what the copy would do, in the copy's order.
fn report_plan(report: &mut Report, node: &Node) {
    for child in &node.children {
        report_plan(report, child);
    }
    match node.action {
        Action::Restore => report.add(Done::Restored, node),
        Action::Skip => report.add(Done::Skipped, node),
        Action::Keep => report.add(Done::Kept, node),
        Action::Merge => {}
    }
}

/// A bar on stderr for a terminal (never with --json or into a pipe).
fn progress_bar(bytes: u64, json: bool) -> Option<ProgressBar> {
    if json || !io::stderr().is_terminal() || bytes < 16 * 1024 * 1024 {
        return None;
    }
    let bar = ProgressBar::new(bytes);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
    {
        bar.set_style(style);
    }
    Some(bar)
}

fn path_c(path: &Path) -> Result<CString, RestoreError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| RestoreError::Io {
        path: path.display().to_string(),
        op: "naming",
        source: io::Error::from_raw_os_error(libc::EINVAL),
    })
}

/// Walks the set to the target's parent (no symlink allowed on the way),
/// the destination to its parent (the same, creating nothing yet), and
/// plans the entry. The root of a volume is planned entry by entry.
fn plan_target(
    set_dir: &OwnedFd,
    set_name: &str,
    target: &Target,
    (dst_root, dst_root_shown): (Arc<OwnedFd>, PathBuf),
    into_to: bool,
    beside: bool,
    planner: &mut Planner,
) -> Result<Vec<Item>, RestoreError> {
    // Where an entry of the set lands: its own name, or beside it.
    let landing = |name: &OsStr| -> Result<(CString, OsString), RestoreError> {
        let dst = if beside {
            beside_name(name, set_name)
        } else {
            name.to_os_string()
        };
        Ok((plan::step(&dst)?, dst))
    };
    let shown = target.display();
    let in_set = |source: io::Error| RestoreError::Io {
        path: shown.clone(),
        op: "in the set",
        source,
    };
    let volume = plan::step(OsStr::new(&target.volume))?;
    let mut src = plan::open_dir(set_dir.as_fd(), &volume).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => RestoreError::NotInSet {
            path: shown.clone(),
            set: set_name.to_string(),
        },
        _ => in_set(e),
    })?;
    let Some((last, parents)) = target.steps.split_last() else {
        // The whole volume: each of its entries, into the root (or --to).
        let mut items = Vec::new();
        for name in sys::list_dir(src.as_fd()).map_err(in_set)? {
            let step = plan::step(&name)?;
            let (dst_step, dst_name) = landing(&name)?;
            let dst_shown = dst_root_shown.join(&dst_name);
            let node = planner.entry(
                src.as_fd(),
                &step,
                Some(dst_root.as_fd()),
                &dst_step,
                &dst_shown,
                &Path::new(&target.volume).join(&name),
            )?;
            let item = Item {
                src_parent: plan::open_dir(set_dir.as_fd(), &volume).map_err(in_set)?,
                dst: Dest {
                    base: dst_root.clone(),
                    missing: Vec::new(),
                },
                node,
            };
            check_writable(&item)?;
            items.push(item);
        }
        return Ok(items);
    };
    let mut src_shown = PathBuf::from(&target.volume);
    let mut dst_shown = dst_root_shown;
    let mut dst = Dest {
        base: dst_root,
        missing: Vec::new(),
    };
    for step_name in parents {
        let step = plan::step(step_name)?;
        src_shown.push(step_name);
        let st = match sys::lstatat(src.as_fd(), &step) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(RestoreError::NotInSet {
                    path: shown,
                    set: set_name.to_string(),
                });
            }
            Err(e) => return Err(in_set(e)),
        };
        match plan::Kind::of(&st) {
            plan::Kind::Dir => {}
            plan::Kind::Symlink => {
                return Err(RestoreError::SymlinkInSet {
                    path: shown,
                    step: src_shown.display().to_string(),
                    set: set_name.to_string(),
                });
            }
            _ => return Err(in_set(io::Error::from_raw_os_error(libc::ENOTDIR))),
        }
        let next = plan::open_dir(src.as_fd(), &step).map_err(in_set)?;
        // --to DIR takes the entry itself, not the path to it.
        if !into_to {
            dst_shown.push(step_name);
            if dst.missing.is_empty() {
                match sys::lstatat_opt(dst.base.as_fd(), &step).map_err(|source| {
                    RestoreError::Io {
                        path: dst_shown.display().to_string(),
                        op: "looking at",
                        source,
                    }
                })? {
                    None => {
                        let again = plan::open_dir(src.as_fd(), &step).map_err(in_set)?;
                        dst.missing
                            .push((step.clone(), again, st, dst_shown.clone()));
                    }
                    Some(live) if plan::Kind::of(&live) == plan::Kind::Dir => {
                        let fd = plan::open_dir(dst.base.as_fd(), &step).map_err(|source| {
                            RestoreError::Io {
                                path: dst_shown.display().to_string(),
                                op: "opening",
                                source,
                            }
                        })?;
                        dst.base = Arc::new(fd);
                    }
                    Some(_) => {
                        return Err(RestoreError::NotADirectory {
                            path: shown,
                            step: dst_shown.display().to_string(),
                        });
                    }
                }
            } else {
                let again = plan::open_dir(src.as_fd(), &step).map_err(in_set)?;
                dst.missing
                    .push((step.clone(), again, st, dst_shown.clone()));
            }
        }
        src = next;
    }
    let step = plan::step(last)?;
    let (dst_step, dst_name) = landing(last)?;
    src_shown.push(last);
    dst_shown.push(&dst_name);
    if sys::lstatat_opt(src.as_fd(), &step)
        .map_err(in_set)?
        .is_none()
    {
        return Err(RestoreError::NotInSet {
            path: shown,
            set: set_name.to_string(),
        });
    }
    let existing_dst = if dst.missing.is_empty() {
        Some(dst.base.as_fd())
    } else {
        None
    };
    let node = planner.entry(
        src.as_fd(),
        &step,
        existing_dst,
        &dst_step,
        &dst_shown,
        &src_shown,
    )?;
    let item = Item {
        src_parent: src,
        dst,
        node,
    };
    check_writable(&item)?;
    Ok(vec![item])
}

/// The live directory an item creates something in must be writable by
/// this user: checked in the plan, before anything is written.
fn check_writable(item: &Item) -> Result<(), RestoreError> {
    if item.node.action != Action::Restore && item.dst.missing.is_empty() {
        return Ok(());
    }
    sys::can_write_dir(item.dst.base.as_fd()).map_err(|source| RestoreError::Io {
        path: item
            .node
            .shown
            .ancestors()
            .nth(item.dst.missing.len() + 1)
            .unwrap_or(Path::new("/"))
            .display()
            .to_string(),
        op: "writing into",
        source,
    })
}
