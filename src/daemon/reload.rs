//! SIGHUP (`systemctl reload umbra`): the config file is read again and its
//! `[schedule]` (times, volumes, label, time zone, retention) put in force
//! without remounting anything: the scheduler restarts on the new times, and
//! `umbra prune` and `umbra status` use the new table. Every other key needs
//! a restart; a reload that finds one changed says which and applies only
//! the schedule. A config that does not read or parse, or whose schedule
//! names a volume the daemon does not serve, changes nothing and is logged
//! in one line. systemd hears RELOADING=1 before and READY=1 after.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, Origin};
use crate::schedule::Schedule;
use crate::schedule::timer::Timer;

use super::service::Service;
use super::systemd;

/// Re-reads the config and replaces `timer` by one on the new schedule;
/// the timer to keep running either way.
pub(super) fn reload(service: &Arc<Service>, timer: Option<Timer>, stamp: &Path) -> Option<Timer> {
    systemd::reloading();
    let timer = match read(service.config()) {
        Err(why) => {
            tracing::error!("reload: {why}; the configuration in force stays");
            timer
        }
        Ok(new) => apply(service, timer, new, stamp),
    };
    systemd::ready("serving; configuration reloaded");
    timer
}

/// The new config, or why it cannot be used.
fn read(old: &Config) -> Result<Config, String> {
    let Origin::File(path) = &old.origin else {
        return Err(
            "the daemon runs on the embedded default config: there is no file to re-read".into(),
        );
    };
    // The path is absolute: the daemon normalized it at start.
    let mut new = Config::load(path, Path::new("/")).map_err(|e| e.to_string())?;
    // As at start: an `auto` volume compares as what it was decided to be.
    new.decide_providers();
    if let Some(schedule) = &new.schedule
        && let Some(unknown) = schedule
            .volumes
            .iter()
            .find(|v| !old.volumes.iter().any(|known| known.name == **v))
    {
        return Err(format!(
            "{}: [schedule] volumes names {unknown:?}, which this daemon does not serve (new volumes need a restart)",
            path.display()
        ));
    }
    Ok(new)
}

fn apply(service: &Arc<Service>, timer: Option<Timer>, new: Config, stamp: &Path) -> Option<Timer> {
    let old = service.config();
    let ignored = needs_restart(old, &new);
    if !ignored.is_empty() {
        tracing::warn!(
            "reload: {} changed, which only a restart applies; they stay as they were",
            ignored.join(", ")
        );
    }
    let in_force = service.schedule();
    if new.schedule == in_force {
        tracing::info!("reload: the schedule is unchanged");
        return timer;
    }
    // The old timer finishes a set it is making before the new one starts.
    if let Some(timer) = timer {
        timer.stop();
    }
    service.replace_schedule(new.schedule.clone());
    match &new.schedule {
        None => tracing::info!(
            "reload: no [schedule] any more: no sets are scheduled, and umbra prune has no rules"
        ),
        Some(s) => tracing::info!(
            times = %s.times.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            "reload: the new schedule is in force"
        ),
    }
    match start_timer(service, new.schedule, stamp.to_path_buf(), None) {
        Ok(timer) => timer,
        Err(e) => {
            tracing::error!(
                "reload: starting the scheduler: {e}; no sets are scheduled until a restart"
            );
            None
        }
    }
}

/// The keys, other than `[schedule]`, that differ between the running
/// config and the one read, as umbra.toml(5) names them.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut differs = |key: &'static str, different: bool| {
        if different {
            changed.push(key);
        }
    };
    differs("state_dir", old.state_dir != new.state_dir);
    // `socket` is not compared: `umbra up --socket` overrides the file's,
    // and which of the two is in force is not kept.
    differs("snapshots", old.snapshots != new.snapshots);
    differs("name_format", old.name_format != new.name_format);
    differs("threads", old.threads != new.threads);
    differs(
        "writeback_cache",
        old.writeback_cache != new.writeback_cache,
    );
    differs("max_clients", old.max_clients != new.max_clients);
    differs("socket_group", old.socket_group != new.socket_group);
    differs("client_timeout", old.client_timeout != new.client_timeout);
    differs("[[volume]]", old.volumes != new.volumes);
    differs(
        "writer_timeout_secs",
        old.writer_timeout != new.writer_timeout,
    );
    differs("hold_timeout_secs", old.hold_timeout != new.hold_timeout);
    differs("[[writer]]", old.writers != new.writers);
    differs("[cluster]", old.cluster != new.cluster);
    differs("[[replica]]", old.replicas != new.replicas);
    differs(
        "max_diff_size, max_sets, on_full or durability",
        old.storage != new.storage,
    );
    changed
}

/// The scheduler over `schedule`, or none when it has no times. Its job is
/// the service's scheduled set then retention.
pub(super) fn start_timer(
    service: &Arc<Service>,
    schedule: Option<Schedule>,
    stamp: PathBuf,
    last_set: Option<chrono::DateTime<chrono::Utc>>,
) -> std::io::Result<Option<Timer>> {
    let Some(schedule) = schedule.filter(|s| !s.times.is_empty()) else {
        return Ok(None);
    };
    let theirs = service.clone();
    let job_schedule = schedule.clone();
    let timer = Timer::start(schedule, stamp, last_set, move |_| {
        theirs.take_scheduled(&job_schedule)
    })?;
    Ok(Some(timer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str, schedule: &str) -> Config {
        let text = format!(
            "state_dir = \"state\"\nsnapshots = \"snaps\"\n{extra}\n\
             [[volume]]\nname = \"data\"\nbacking = \"b\"\nmount = \"m\"\n\
             [schedule]\n{schedule}\n"
        );
        Config::parse(&text, Origin::Embedded, Path::new("/srv")).expect("config")
    }

    #[test]
    fn a_new_schedule_alone_needs_no_restart_and_other_keys_are_named() {
        let old = config("", "times = \"hourly\"");
        assert!(needs_restart(&old, &config("", "times = \"daily\"\nkeep_daily = 3")).is_empty());
        let new = config("threads = 3\nhold_timeout_secs = 9", "times = \"daily\"");
        assert_eq!(needs_restart(&old, &new), ["threads", "hold_timeout_secs"]);
    }

    #[test]
    fn the_embedded_config_has_nothing_to_re_read() {
        let err = read(&config("", "times = \"hourly\"")).expect_err("embedded");
        assert!(err.contains("embedded default config"), "{err}");
    }
}
