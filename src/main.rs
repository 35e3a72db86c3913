//! The `umbra` binary: parses the command line, sets up logging, runs the
//! daemon or a client command, and turns any error into one line,
//! `umbra: <message>`, with a non-zero exit status. Run by the daemon with
//! umbra_fs's hidden `FLUSH_COMMAND`, it is the daemon's flush child
//! instead. Nothing else lives here.

mod cli;
mod client;
mod cluster;
mod config;
mod daemon;
mod naming;
mod protocol;
mod render;
mod replicate;
mod restore;
mod schedule;
mod target;

#[cfg(test)]
mod man;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command};
use client::Client;
use config::Config;

fn main() -> ExitCode {
    // The daemon's flush child (umbra_fs's flusher): no CLI, no logging,
    // hidden from --help.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == umbra_fs::FLUSH_COMMAND)
    {
        return umbra_fs::flush_child_main();
    }
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!(
                "umbra: {}",
                render::printable(&protocol::one_line(&err.to_string()))
            );
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cwd = std::env::current_dir().map_err(|e| anyhow::anyhow!("the current directory: {e}"))?;
    let Cli {
        socket,
        config,
        command,
    } = cli;
    let client = || Client::find(socket.as_deref(), config.as_deref(), &cwd);
    match command {
        Command::Up => daemon::up(daemon_config(socket.as_deref(), config.as_deref(), &cwd)?)?,
        Command::Create {
            volumes,
            label,
            cluster,
            output,
        } => client()?.create(volumes, label, cluster, output.json)?,
        Command::List { cluster, output } => client()?.list(cluster, output.json)?,
        Command::Delete {
            sets,
            oldest,
            older_than,
            all,
            output,
        } => client()?.delete(
            protocol::Request::Delete {
                sets,
                oldest,
                older_than_secs: older_than.map(|d| d.as_secs()),
                all,
            },
            output.json,
        )?,
        Command::Status { output } => client()?.status(output.json)?,
        Command::Prune { dry_run, output } => client()?.prune(dry_run, output.json)?,
        Command::Writers { output } => client()?.writers(output.json)?,
        Command::Diff { from, rest, output } => client()?.diff(from, rest, &cwd, output.json)?,
        Command::Versions { path, output } => client()?.versions(path, &cwd, output.json)?,
        Command::Replicate {
            sets,
            to,
            replica,
            password_file,
            volumes,
            output,
        } => {
            let request = replicate::ReplicateRequest {
                sets,
                volumes,
                ..replicate::request(to, replica, password_file.as_deref())?
            };
            replicate::run(&client()?.socket, request, output.json)?;
        }
        Command::Replicas {
            to,
            replica,
            password_file,
            output,
        } => {
            let to = match (to, replica) {
                (None, None) => None,
                (to, replica) => Some(replicate::request(to, replica, password_file.as_deref())?),
            };
            replicate::list(
                &client()?.socket,
                replicate::ReplicasRequest { to },
                output.json,
            )?;
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "umbra", &mut std::io::stdout());
        }
        Command::Restore {
            set,
            paths,
            to,
            overwrite,
            keep_newer,
            dry_run,
            output,
        } => {
            let policy = match (overwrite, keep_newer) {
                (true, _) => restore::Policy::Overwrite,
                (false, true) => restore::Policy::KeepNewer,
                (false, false) => restore::Policy::Refuse,
            };
            let beside = to.is_none() && !overwrite && !keep_newer;
            let options = restore::Options {
                set,
                paths,
                to,
                policy,
                beside,
                dry_run,
                json: output.json,
            };
            restore::run(&client()?.socket, &cwd, options)?;
        }
        Command::Backup {
            volumes,
            keep,
            label,
            json,
            command,
        } => {
            let code = client()?.backup(volumes, label, keep, &command, json)?;
            return Ok(ExitCode::from(code));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The daemon's config: `--config` or the embedded default, its socket
/// replaced by `--socket` (or `UMBRA_SOCKET`) when given.
fn daemon_config(
    socket: Option<&Path>,
    file: Option<&Path>,
    cwd: &Path,
) -> Result<Config, config::ConfigError> {
    let mut config = match file {
        Some(file) => Config::load(file, cwd)?,
        None => Config::embedded(cwd)?,
    };
    if let Some(socket) = socket {
        config.socket = config::normalize(&cwd.join(socket));
    }
    Ok(config)
}

/// Logs go to stderr, filtered by `UMBRA_LOG` (e.g. `debug`,
/// `umbra=debug,umbra_fs=trace`); `info` when it is unset or unreadable.
fn init_logging() {
    let filter = EnvFilter::try_from_env("UMBRA_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // journald stamps every line itself: a second time would only be noise.
    if stderr_is_the_journal() {
        logs.without_time().init();
    } else {
        logs.init();
    }
}

/// Whether stderr is the stream systemd connected to the journal: the
/// device and inode JOURNAL_STREAM names (a child that inherits the
/// variable but not the stream must not drop its timestamps).
fn stderr_is_the_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // SAFETY: zeroed stat is a valid out-buffer; fd 2 is only looked at.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    st.st_dev == dev && st.st_ino == ino
}
