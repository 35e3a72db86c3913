//! The scheduler thread: sleeps until the schedule's next firing and runs
//! the job (the daemon's: a scheduled set, then retention). It owns the
//! stamp file that remembers the last firing across restarts, so that the
//! firings missed while the daemon was down are made up by one set at
//! start, not one each. It never makes a set itself.
//!
//! The schedule is wall-clock time. The thread naps at most `MAX_NAP` at a
//! time and looks at the clock again, so a clock set forward is noticed
//! within that: the firings it jumped over make one set, as at start. A
//! clock set back is noticed the same way and the next firing is computed
//! again from the new time.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Schedule;

/// The longest the thread sleeps without looking at the wall clock.
const MAX_NAP: Duration = Duration::from_secs(15);
/// How soon a firing that found another set being made tries again.
const RETRY_SECS: i64 = 10;

/// The running scheduler; stopped (and joined) by `stop` or on drop.
pub struct Timer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Timer {
    /// Starts the thread. `last_set` is when the newest scheduled set was
    /// made, used when the stamp file is missing. `job` runs at each
    /// firing, with the firing's time, and answers false if it could not
    /// start (another set was being made): it is tried again `RETRY_SECS`
    /// later, until the next firing.
    pub fn start(
        schedule: Schedule,
        stamp: PathBuf,
        last_set: Option<DateTime<Utc>>,
        job: impl FnMut(DateTime<Utc>) -> bool + Send + 'static,
    ) -> io::Result<Timer> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("schedule".into())
            .spawn(move || {
                let nap =
                    |d: Duration| matches!(rx.recv_timeout(d), Err(RecvTimeoutError::Timeout));
                run(&schedule, &stamp, last_set, Utc::now, job, nap);
            })?;
        Ok(Timer {
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// Stops the thread after the job it may be running.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the scheduler thread panicked");
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The thread's loop, with its clock and its nap given so that tests can
/// drive it; `nap` answers false when the thread is to stop.
fn run(
    schedule: &Schedule,
    stamp: &Path,
    last_set: Option<DateTime<Utc>>,
    clock: impl Fn() -> DateTime<Utc>,
    mut job: impl FnMut(DateTime<Utc>) -> bool,
    mut nap: impl FnMut(Duration) -> bool,
) {
    // The stamp moves only when the job ran: a firing still waiting for
    // its retry when the daemon stops is made up at the next start.
    let mut fire = |now: DateTime<Utc>| {
        let ran = job(now);
        if ran {
            write_stamp(stamp, now);
        }
        ran
    };
    let retry = |at: DateTime<Utc>, following: Option<DateTime<Utc>>| {
        let soon = at + chrono::Duration::seconds(RETRY_SECS);
        Some(following.map_or(soon, |f| f.min(soon)))
    };
    let now = clock();
    let last = read_stamp(stamp).max(last_set);
    let mut caught_up = true;
    if schedule.missed(last, now) {
        tracing::info!(
            last = %last.map(|l| l.to_rfc3339()).unwrap_or_default(),
            "a scheduled set was missed while the daemon was down: taking one now"
        );
        caught_up = fire(now);
    } else if last.is_none() {
        // From now on a stop across a firing is noticed at the next start.
        write_stamp(stamp, now);
    }
    let mut seen = clock();
    let mut next = schedule.next_after(seen);
    if !caught_up {
        next = retry(seen, next);
    }
    match next {
        Some(due) => tracing::info!(next = %due.to_rfc3339(), "schedule started"),
        None => tracing::warn!("the schedule never fires again"),
    }
    loop {
        let now = clock();
        if now < seen {
            tracing::info!(
                from = %seen.to_rfc3339(),
                to = %now.to_rfc3339(),
                "the clock went back: the next scheduled set is computed again"
            );
            next = schedule.next_after(now);
        }
        seen = now;
        let wait = match next {
            Some(due) if due <= now => {
                if now - due > chrono::Duration::seconds(MAX_NAP.as_secs() as i64 + 5) {
                    tracing::info!(due = %due.to_rfc3339(), "the clock jumped over scheduled times: taking one set for them");
                }
                let ran = fire(now);
                seen = clock();
                next = schedule.next_after(seen.max(due));
                if !ran {
                    next = retry(seen, next);
                }
                continue;
            }
            Some(due) => (due - now).to_std().unwrap_or(Duration::ZERO).min(MAX_NAP),
            None => MAX_NAP,
        };
        if !nap(wait) {
            return;
        }
    }
}

fn read_stamp(path: &Path) -> Option<DateTime<Utc>> {
    let text = std::fs::read_to_string(path).ok()?;
    match DateTime::parse_from_rfc3339(text.trim()) {
        Ok(t) => Some(t.with_timezone(&Utc)),
        Err(e) => {
            tracing::warn!("ignoring the schedule stamp {}: {e}", path.display());
            None
        }
    }
}

/// Replaces the stamp whole (a new file renamed over it): a crash leaves
/// the old stamp or the new one.
fn write_stamp(path: &Path, at: DateTime<Utc>) {
    let tmp = path.with_extension("tmp");
    let result = std::fs::write(&tmp, format!("{}\n", at.to_rfc3339()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        tracing::warn!("writing the schedule stamp {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::schedule::{Calendar, Rules, Zone};

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("an RFC 3339 time")
            .with_timezone(&Utc)
    }

    fn hourly() -> Schedule {
        Schedule {
            times: vec![Calendar::parse("hourly").expect("parses")],
            volumes: Vec::new(),
            label: None,
            zone: Zone::Utc,
            retention: Rules::default(),
            cluster: false,
        }
    }

    #[test]
    fn missed_firings_are_made_up_once() {
        let schedule = hourly();
        let last = Some(at("2026-12-04T10:00:00Z"));
        assert!(!schedule.missed(last, at("2026-12-04T10:59:59Z")));
        assert!(schedule.missed(last, at("2026-12-04T11:00:00Z")));
        assert!(schedule.missed(last, at("2026-12-04T15:30:00Z")));
        assert!(!schedule.missed(None, at("2026-12-04T15:30:00Z")));
    }

    /// Runs the loop on a fake clock that answers `times` in turn; once
    /// they are used up the clock stands still and the loop stops at its
    /// next nap. Naps take no real time.
    fn drive(
        schedule: &Schedule,
        stamp: &Path,
        last_set: Option<DateTime<Utc>>,
        times: Vec<DateTime<Utc>>,
    ) -> Vec<DateTime<Utc>> {
        drive_busy(schedule, stamp, last_set, times, 0)
    }

    /// `drive`, with a job that cannot start its first `busy` times.
    fn drive_busy(
        schedule: &Schedule,
        stamp: &Path,
        last_set: Option<DateTime<Utc>>,
        times: Vec<DateTime<Utc>>,
        busy: usize,
    ) -> Vec<DateTime<Utc>> {
        let fired = Arc::new(Mutex::new(Vec::new()));
        let last = *times.last().expect("some times");
        let clock_times = Mutex::new(times.into_iter());
        let done = std::sync::atomic::AtomicBool::new(false);
        let clock = || {
            let next = clock_times.lock().expect("clock").next();
            next.unwrap_or_else(|| {
                done.store(true, std::sync::atomic::Ordering::SeqCst);
                last
            })
        };
        let theirs = fired.clone();
        run(
            schedule,
            stamp,
            last_set,
            clock,
            move |t| {
                let mut fired = theirs.lock().expect("fired");
                fired.push(t);
                // Busy for the first `busy` tries.
                fired.len() > busy
            },
            |_| !done.load(std::sync::atomic::Ordering::SeqCst),
        );
        fired.lock().expect("fired").clone()
    }

    #[test]
    fn a_restart_after_missed_firings_takes_one_set_then_keeps_time() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let stamp = tmp.path().join("schedule.stamp");
        write_stamp(&stamp, at("2026-12-04T10:00:00Z"));
        // Down from 10:00 to 15:30: five firings missed.
        let fired = drive(
            &hourly(),
            &stamp,
            None,
            vec![
                at("2026-12-04T15:30:00Z"),
                at("2026-12-04T15:30:01Z"),
                at("2026-12-04T15:30:02Z"),
                at("2026-12-04T16:00:00Z"),
                at("2026-12-04T16:00:01Z"),
            ],
        );
        assert_eq!(
            fired,
            [at("2026-12-04T15:30:00Z"), at("2026-12-04T16:00:00Z")]
        );
        assert_eq!(read_stamp(&stamp), Some(at("2026-12-04T16:00:00Z")));
    }

    #[test]
    fn without_a_stamp_the_newest_scheduled_set_counts_and_a_first_start_takes_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let stamp = tmp.path().join("schedule.stamp");
        let fired = drive(
            &hourly(),
            &stamp,
            None,
            vec![at("2026-12-04T15:30:00Z"), at("2026-12-04T15:30:01Z")],
        );
        assert!(fired.is_empty(), "{fired:?}");
        assert_eq!(read_stamp(&stamp), Some(at("2026-12-04T15:30:00Z")));
        std::fs::remove_file(&stamp).expect("remove stamp");
        let fired = drive(
            &hourly(),
            &stamp,
            Some(at("2026-12-04T13:00:00Z")),
            vec![at("2026-12-04T15:30:00Z"), at("2026-12-04T15:30:01Z")],
        );
        assert_eq!(fired, [at("2026-12-04T15:30:00Z")]);
    }

    #[test]
    fn a_clock_set_forward_makes_one_set_and_set_back_recomputes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let stamp = tmp.path().join("schedule.stamp");
        let fired = drive(
            &hourly(),
            &stamp,
            None,
            vec![
                at("2026-12-04T10:30:00Z"),
                at("2026-12-04T10:30:01Z"),
                // Forward by a day: one set.
                at("2026-12-05T10:30:00Z"),
                at("2026-12-05T10:30:01Z"),
                // Back to the day before: the next is 06:00, not 11:00.
                at("2026-12-04T05:30:00Z"),
                at("2026-12-04T06:00:00Z"),
                at("2026-12-04T06:00:01Z"),
            ],
        );
        assert_eq!(
            fired,
            [at("2026-12-05T10:30:00Z"), at("2026-12-04T06:00:00Z")]
        );
    }

    #[test]
    fn a_firing_that_finds_another_set_being_made_tries_again_until_the_next() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let stamp = tmp.path().join("schedule.stamp");
        write_stamp(&stamp, at("2026-12-04T10:00:00Z"));
        let fired = drive_busy(
            &hourly(),
            &stamp,
            None,
            vec![
                at("2026-12-04T10:30:00Z"),
                at("2026-12-04T10:30:01Z"),
                at("2026-12-04T11:00:00Z"), // busy
                at("2026-12-04T11:00:01Z"),
                at("2026-12-04T11:00:05Z"),
                at("2026-12-04T11:00:11Z"), // busy again
                at("2026-12-04T11:00:12Z"),
                at("2026-12-04T11:00:21Z"),
                at("2026-12-04T11:00:22Z"), // taken
                at("2026-12-04T11:00:23Z"),
                at("2026-12-04T11:00:40Z"),
            ],
            2,
        );
        assert_eq!(
            fired,
            [
                at("2026-12-04T11:00:00Z"),
                at("2026-12-04T11:00:11Z"),
                at("2026-12-04T11:00:22Z")
            ]
        );
        assert_eq!(read_stamp(&stamp), Some(at("2026-12-04T11:00:22Z")));
    }
}
