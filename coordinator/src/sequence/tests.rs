//! The sequence driven by fake writers and a fake provider: order, one set
//! id for all, and every failure mode of the VSS rules.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::protocol::{Component, Reply};

type Log = Arc<Mutex<Vec<(String, Event, String)>>>;

/// What each writer was told with backup-complete and post-restore.
type Outcomes = Arc<Mutex<Vec<(String, Event, Option<bool>)>>>;

#[derive(Clone)]
enum Behave {
    Fail(Failure),
    Hang,
    Disconnect,
    Garbage,
}

struct FakeLink {
    name: String,
    log: Log,
    outcomes: Outcomes,
    behave: HashMap<Event, Behave>,
    last: Option<EventMessage>,
    gone: bool,
}

impl WriterLink for FakeLink {
    fn send(&mut self, event: &EventMessage) -> Result<(), LinkError> {
        if self.gone {
            return Err(LinkError::Disconnected);
        }
        lock(&self.log).push((self.name.clone(), event.event, event.set_id.clone()));
        lock(&self.outcomes).push((self.name.clone(), event.event, event.backup_succeeded));
        self.last = Some(event.clone());
        Ok(())
    }

    fn recv(&mut self, deadline: Instant) -> Result<Reply, LinkError> {
        let Some(asked) = self.last.take() else {
            return Err(LinkError::Disconnected);
        };
        match self.behave.get(&asked.event).cloned() {
            None => Ok(Reply::to(&asked, Ok(()))),
            Some(Behave::Fail(f)) => Ok(Reply::to(&asked, Err(f))),
            Some(Behave::Hang) => {
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                Err(LinkError::Timeout(Duration::ZERO))
            }
            Some(Behave::Disconnect) => {
                self.gone = true;
                Err(LinkError::Disconnected)
            }
            Some(Behave::Garbage) => Err(LinkError::Malformed("not json".into())),
        }
    }

    fn alive(&mut self) -> bool {
        !self.gone
    }

    fn kind(&self) -> &'static str {
        "socket"
    }
}

#[derive(Default)]
struct FakeProvider {
    calls: Mutex<Vec<String>>,
    sets: Mutex<Vec<i64>>,
    fail_hold: bool,
    fail_before_freeze: bool,
    fail_first_record: bool,
    hold_for: Duration,
    recorded: Mutex<Vec<SetWriter>>,
}

impl Provider for FakeProvider {
    fn before_freeze(&self, _plan: &SetPlan) -> Result<(), ProviderError> {
        if self.fail_before_freeze {
            lock(&self.calls).push("before freeze".into());
            return Err(ProviderError::Failed("another host went away".into()));
        }
        Ok(())
    }

    fn prepare(&self, plan: &SetPlan) -> Result<(), ProviderError> {
        lock(&self.calls).push(format!("prepare {}", plan.name));
        Ok(())
    }

    fn hold_and_commit(
        &self,
        plan: &SetPlan,
        deadline: Instant,
    ) -> Result<Committed, ProviderError> {
        lock(&self.calls).push("hold".into());
        std::thread::sleep(self.hold_for);
        if self.fail_hold || Instant::now() > deadline {
            return Err(ProviderError::HoldTimeout(self.hold_for));
        }
        let mut sets = lock(&self.sets);
        let id = sets.len() as i64 + 1;
        sets.push(id);
        Ok(Committed {
            id: umbra_ids::SetId(id),
            name: plan.name.clone(),
            hold: Duration::from_millis(1),
            holds: Vec::new(),
        })
    }

    fn record(&self, _set: &Committed, writers: &[SetWriter]) -> Result<(), ProviderError> {
        let mut calls = lock(&self.calls);
        let first = !calls.iter().any(|c| c == "record");
        calls.push("record".into());
        if self.fail_first_record && first {
            return Err(ProviderError::Failed("disk full".into()));
        }
        *lock(&self.recorded) = writers.to_vec();
        Ok(())
    }

    fn discard(&self, set: &Committed) -> Result<(), ProviderError> {
        lock(&self.calls).push("discard".into());
        lock(&self.sets).retain(|s| *s != set.id.0);
        Ok(())
    }

    fn release(&self, _plan: &SetPlan) {
        lock(&self.calls).push("release".into());
    }
}

struct Rig {
    coordinator: Coordinator,
    log: Log,
    outcomes: Outcomes,
}

fn rig() -> Rig {
    Rig {
        coordinator: Coordinator::new(Options {
            event_timeout: Duration::from_millis(200),
            freeze_timeout: Duration::from_secs(5),
            hold_timeout: Duration::from_secs(5),
        }),
        log: Log::default(),
        outcomes: Outcomes::default(),
    }
}

impl Rig {
    fn writer(&self, name: &str, required: bool, behave: &[(Event, Behave)]) {
        let mut reg = Registration::new(name, &["data"]);
        reg.required = required;
        reg.components = vec![Component {
            name: "db".into(),
            paths: vec!["db".into()],
            excludes: vec![],
        }];
        let link = FakeLink {
            name: name.into(),
            log: self.log.clone(),
            outcomes: self.outcomes.clone(),
            behave: behave.iter().cloned().collect(),
            last: None,
            gone: false,
        };
        self.coordinator
            .register(reg, Box::new(link))
            .expect("registers");
    }

    fn create(&self, provider: &FakeProvider) -> Result<Created, SequenceError> {
        self.coordinator.create(
            SetRequest {
                name: "2026-11-25T084250Z".into(),
                label: None,
                volumes: vec!["data".into()],
            },
            provider,
        )
    }

    fn events_of(&self, name: &str) -> Vec<Event> {
        lock(&self.log)
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, e, _)| *e)
            .collect()
    }

    fn state_of(&self, name: &str) -> String {
        self.coordinator
            .writers()
            .into_iter()
            .find(|w| w.name == name)
            .map(|w| w.state.to_string())
            .unwrap_or_else(|| "gone".into())
    }
}

const ABORTED_AT_FREEZE: [Event; 5] = [
    Event::Identify,
    Event::PrepareForBackup,
    Event::PrepareForSnapshot,
    Event::Freeze,
    Event::Abort,
];

#[test]
fn every_writer_sees_every_event_in_order_with_one_set_id() {
    let r = rig();
    r.writer("a", true, &[]);
    r.writer("b", true, &[]);
    r.writer("c", false, &[]);
    let provider = FakeProvider::default();
    let created = r.create(&provider).expect("created");
    for name in ["a", "b", "c"] {
        assert_eq!(r.events_of(name), Event::CREATE, "{name}");
        assert_eq!(r.state_of(name), "stable");
    }
    let ids: std::collections::HashSet<_> = lock(&r.log).iter().map(|e| e.2.clone()).collect();
    assert_eq!(ids.len(), 1);
    assert!(ids.contains(&created.set_guid));
    assert_eq!(
        *lock(&provider.calls),
        // After PostSnapshot (the set is whole), after BackupComplete.
        [
            "prepare 2026-11-25T084250Z",
            "hold",
            "release",
            "record",
            "record"
        ]
    );
    // Every writer heard Freeze before the hold, and Thaw after it: the
    // log is in time order.
    let log = lock(&r.log);
    let last_freeze = log.iter().rposition(|e| e.1 == Event::Freeze);
    let first_thaw = log.iter().position(|e| e.1 == Event::Thaw);
    assert!(last_freeze < first_thaw);
    assert_eq!(created.writers.len(), 3);
    assert!(created.writers.iter().all(|w| w.status == "ok"));
    assert_eq!(created.writers[0].components[0].name, "db");
}

#[test]
fn a_writer_failing_identify_drops_out_and_the_set_goes_on() {
    let r = rig();
    r.writer(
        "a",
        true,
        &[(Event::Identify, Behave::Fail(Failure::fatal("no")))],
    );
    r.writer("b", true, &[]);
    let provider = FakeProvider::default();
    let created = r.create(&provider).expect("created");
    assert_eq!(r.events_of("a"), [Event::Identify]);
    assert_eq!(r.events_of("b"), Event::CREATE);
    assert_eq!(r.state_of("a"), "failed-at-identify");
    assert_eq!(created.writers.len(), 1);
    assert_eq!(lock(&provider.sets).len(), 1);
}

#[test]
fn a_required_writer_failing_any_event_aborts_the_set() {
    for (at, event) in [
        Event::PrepareForBackup,
        Event::PrepareForSnapshot,
        Event::Freeze,
        Event::Thaw,
        Event::PostSnapshot,
    ]
    .into_iter()
    .enumerate()
    {
        let r = rig();
        r.writer(
            "bad",
            true,
            &[(event, Behave::Fail(Failure::retryable("busy")))],
        );
        r.writer("good", true, &[]);
        let provider = FakeProvider::default();
        let err = r.create(&provider).expect_err("aborted");
        assert_eq!(
            err.to_string(),
            format!("writer bad failed at {event}: busy (retryable); the set was aborted")
        );
        let mut expected = Event::CREATE[..at + 2].to_vec();
        expected.push(Event::Abort);
        assert_eq!(r.events_of("bad"), expected, "{event}");
        assert_eq!(r.events_of("good"), expected, "{event}");
        assert_eq!(r.state_of("bad"), format!("failed-at-{event}"));
        assert_eq!(r.state_of("good"), "stable");
        assert!(lock(&provider.sets).is_empty(), "{event}: no set left");
        let calls = lock(&provider.calls);
        // The hold is released whenever it was prepared.
        assert_eq!(
            calls.iter().any(|c| c.starts_with("prepare")),
            calls.iter().any(|c| c == "release")
        );
        let view = r
            .coordinator
            .writers()
            .into_iter()
            .find(|w| w.name == "bad")
            .expect("listed");
        assert_eq!(view.last_error.as_deref(), Some("busy"));
        assert_eq!(view.retryable, Some(true));
    }
}

#[test]
fn a_failure_at_backup_complete_is_recorded_and_the_set_stays() {
    let r = rig();
    r.writer(
        "late",
        true,
        &[(Event::BackupComplete, Behave::Fail(Failure::fatal("log")))],
    );
    let provider = FakeProvider::default();
    let created = r.create(&provider).expect("created");
    assert_eq!(created.writers[0].status, "failed-at-backup-complete");
    assert_eq!(r.state_of("late"), "failed-at-backup-complete");
    assert_eq!(
        lock(&provider.recorded)[0].status,
        "failed-at-backup-complete"
    );
}

#[test]
fn an_optional_writer_fails_alone() {
    let r = rig();
    r.writer(
        "maybe",
        false,
        &[(Event::Freeze, Behave::Fail(Failure::fatal("cannot lock")))],
    );
    r.writer("sure", true, &[]);
    let provider = FakeProvider::default();
    let created = r.create(&provider).expect("created");
    assert_eq!(r.events_of("maybe"), Event::CREATE[..4]);
    assert_eq!(r.events_of("sure"), Event::CREATE);
    let maybe = created
        .writers
        .iter()
        .find(|w| w.name == "maybe")
        .expect("recorded");
    assert_eq!(maybe.status, "failed-at-freeze");
    assert_eq!(maybe.error.as_deref(), Some("cannot lock (not retryable)"));
}

#[test]
fn a_hung_writer_misses_its_deadline_and_the_set_is_aborted() {
    let r = rig();
    r.writer("hung", true, &[(Event::Freeze, Behave::Hang)]);
    let provider = FakeProvider::default();
    let started = Instant::now();
    let err = r.create(&provider).expect_err("aborted");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        err.to_string()
            .starts_with("writer hung failed at freeze: no answer within"),
        "{err}"
    );
    assert!(lock(&provider.sets).is_empty());
    // The connection is dropped: it hears no Abort and stays listed failed.
    assert_eq!(r.events_of("hung"), ABORTED_AT_FREEZE[..4]);
    let view = r.coordinator.writers();
    assert_eq!(view[0].state.to_string(), "failed-at-freeze");
    assert!(!view[0].connected);
}

#[test]
fn a_disconnect_or_a_malformed_reply_aborts_the_set() {
    for behave in [Behave::Disconnect, Behave::Garbage] {
        let r = rig();
        r.writer("flaky", true, &[(Event::PrepareForSnapshot, behave)]);
        r.writer("other", true, &[]);
        let provider = FakeProvider::default();
        let err = r.create(&provider).expect_err("aborted");
        assert!(
            err.to_string()
                .starts_with("writer flaky failed at prepare-snapshot"),
            "{err}"
        );
        assert_eq!(r.events_of("other").last(), Some(&Event::Abort));
        assert!(lock(&provider.sets).is_empty());
        // The writer may register again under its name.
        r.writer("flaky", true, &[]);
        r.create(&provider).expect("created with the writer back");
    }
}

#[test]
fn a_provider_that_cannot_hold_aborts_the_set() {
    let r = rig();
    r.writer("a", true, &[]);
    let provider = FakeProvider {
        fail_hold: true,
        ..FakeProvider::default()
    };
    let err = r.create(&provider).expect_err("aborted");
    assert!(err.to_string().contains("could not hold"), "{err}");
    assert_eq!(r.events_of("a"), ABORTED_AT_FREEZE);
    assert_eq!(
        *lock(&provider.calls),
        ["prepare 2026-11-25T084250Z", "hold", "release"]
    );
    assert_eq!(r.state_of("a"), "stable");
}

/// A provider that waits for others before Freeze (a cluster set) and
/// fails there: the writers were never frozen, and hear Abort.
#[test]
fn a_provider_failing_before_freeze_aborts_before_any_writer_freezes() {
    let r = rig();
    r.writer("a", true, &[]);
    let provider = FakeProvider {
        fail_before_freeze: true,
        ..FakeProvider::default()
    };
    let err = r.create(&provider).expect_err("aborted");
    assert!(err.to_string().contains("another host went away"), "{err}");
    assert_eq!(
        r.events_of("a"),
        [
            Event::Identify,
            Event::PrepareForBackup,
            Event::PrepareForSnapshot,
            Event::Abort
        ]
    );
    assert_eq!(*lock(&provider.calls), ["before freeze"]);
    assert_eq!(r.state_of("a"), "stable");
}

#[test]
fn a_set_that_cannot_be_recorded_whole_is_aborted_and_discarded() {
    let r = rig();
    r.writer("a", true, &[]);
    let provider = FakeProvider {
        fail_first_record: true,
        ..FakeProvider::default()
    };
    let err = r.create(&provider).expect_err("aborted");
    assert!(err.to_string().contains("disk full"), "{err}");
    assert_eq!(
        *lock(&provider.calls),
        [
            "prepare 2026-11-25T084250Z",
            "hold",
            "release",
            "record",
            "discard"
        ]
    );
    assert!(lock(&provider.sets).is_empty(), "no set is left");
    assert!(r.events_of("a").contains(&Event::Abort));
    assert_eq!(r.state_of("a"), "stable");
}

#[test]
fn a_writer_frozen_past_its_window_fails_the_set() {
    let r = Rig {
        coordinator: Coordinator::new(Options {
            event_timeout: Duration::from_secs(1),
            freeze_timeout: Duration::from_millis(50),
            hold_timeout: Duration::from_secs(5),
        }),
        log: Log::default(),
        outcomes: Outcomes::default(),
    };
    r.writer("a", true, &[]);
    let provider = FakeProvider {
        hold_for: Duration::from_millis(100),
        ..FakeProvider::default()
    };
    let err = r.create(&provider).expect_err("aborted");
    assert!(err.to_string().contains("could not hold"), "{err}");
    assert!(lock(&provider.sets).is_empty());
}

#[test]
fn writers_of_other_volumes_are_not_asked() {
    let r = rig();
    let link = FakeLink {
        name: "logs-only".into(),
        log: r.log.clone(),
        outcomes: Outcomes::default(),
        behave: HashMap::new(),
        last: None,
        gone: false,
    };
    r.coordinator
        .register(Registration::new("logs-only", &["logs"]), Box::new(link))
        .expect("registers");
    r.create(&FakeProvider::default()).expect("created");
    assert!(r.events_of("logs-only").is_empty());
}

#[test]
fn a_second_create_while_one_runs_is_refused() {
    let r = Arc::new(rig());
    r.writer("slow", true, &[(Event::Freeze, Behave::Hang)]);
    let first = {
        let r = r.clone();
        std::thread::spawn(move || r.create(&FakeProvider::default()).is_err())
    };
    std::thread::sleep(Duration::from_millis(50));
    let err = r.create(&FakeProvider::default()).expect_err("busy");
    assert!(matches!(err, SequenceError::Busy));
    assert!(first.join().expect("joins"));
}

#[test]
fn names_are_unique_among_connected_writers() {
    let r = rig();
    r.writer("a", true, &[]);
    let link = FakeLink {
        name: "a".into(),
        log: r.log.clone(),
        outcomes: Outcomes::default(),
        behave: HashMap::new(),
        last: None,
        gone: false,
    };
    let err = r
        .coordinator
        .register(Registration::new("a", &[]), Box::new(link))
        .expect_err("duplicate");
    assert_eq!(
        err.to_string(),
        "a writer named \"a\" is already registered"
    );
}

#[test]
fn set_ids_differ() {
    assert_ne!(guid(), guid());
    assert_eq!(guid().len(), 36);
}

#[test]
fn a_pending_set_waits_for_the_requester_and_a_dropped_one_completes_as_failed() {
    let r = rig();
    r.writer("a", true, &[]);
    let provider = FakeProvider::default();
    let request = SetRequest {
        name: "pending".into(),
        label: None,
        volumes: vec!["data".into()],
    };
    let pending = r
        .coordinator
        .snapshot(request, Box::new(&provider))
        .expect("snapshot");
    assert_eq!(pending.set().name, "pending");
    assert_eq!(r.events_of("a"), Event::CREATE[..6]);
    assert_eq!(r.state_of("a"), "waiting-for-backup-complete");
    assert!(matches!(
        r.create(&FakeProvider::default()),
        Err(SequenceError::Busy)
    ));
    drop(pending);
    assert_eq!(r.events_of("a"), Event::CREATE);
    assert_eq!(r.state_of("a"), "stable");
    assert_eq!(lock(&provider.recorded).len(), 1);
    // The next set goes through as usual.
    r.create(&FakeProvider::default()).expect("created");
}

#[test]
fn a_writer_registering_with_timeout_secs_u64_max_is_refused_and_create_does_not_panic() {
    let r = rig();
    let link = |name: &str| FakeLink {
        name: name.into(),
        log: r.log.clone(),
        outcomes: Outcomes::default(),
        behave: HashMap::new(),
        last: None,
        gone: false,
    };
    let mut reg = Registration::new("huge", &["data"]);
    reg.timeout_secs = Some(u64::MAX);
    let err = r
        .coordinator
        .register(reg, Box::new(link("huge")))
        .expect_err("a deadline beyond a day");
    assert_eq!(
        err.to_string(),
        format!(
            "timeout_secs must be at most 86400 (a day), not {}",
            u64::MAX
        )
    );
    let mut reg = Registration::new("day", &["data"]);
    reg.timeout_secs = Some(crate::protocol::MAX_TIMEOUT_SECS);
    r.coordinator
        .register(reg, Box::new(link("day")))
        .expect("a day is allowed");
    r.create(&FakeProvider::default()).expect("the set is made");
}

#[test]
fn deadlines_beyond_the_clock_are_clamped_not_a_panic() {
    // What a coordinator built with absurd options (or an old config)
    // does: every deadline is far away, none overflows.
    let coordinator = Coordinator::new(Options {
        event_timeout: Duration::MAX,
        freeze_timeout: Duration::MAX,
        hold_timeout: Duration::MAX,
    });
    let r = Rig {
        coordinator,
        log: Log::default(),
        outcomes: Outcomes::default(),
    };
    r.writer("w", true, &[]);
    let created = r.create(&FakeProvider::default()).expect("the set is made");
    assert_eq!(created.set.name, "2026-11-25T084250Z");
    assert!(crate::link::deadline_in(Duration::MAX) > Instant::now());
}

fn restore_request() -> RestoreRequest {
    RestoreRequest {
        set_name: "2026-11-25T084250Z".into(),
        volumes: vec!["data".into()],
    }
}

impl Rig {
    /// The backup_succeeded each writer got with post-restore.
    fn post_restore_of(&self, name: &str) -> Vec<Option<bool>> {
        lock(&self.outcomes)
            .iter()
            .filter(|(n, e, _)| n == name && *e == Event::PostRestore)
            .map(|(_, _, ok)| *ok)
            .collect()
    }
}

#[test]
fn a_restore_sends_pre_restore_then_post_restore_with_its_outcome() {
    let r = rig();
    r.writer("a", true, &[]);
    r.writer("b", false, &[]);
    let restoring = r.coordinator.restore(restore_request()).expect("prepared");
    assert_eq!(r.events_of("a"), [Event::PreRestore]);
    assert!(
        matches!(
            r.create(&FakeProvider::default()),
            Err(SequenceError::Restoring)
        ),
        "no set while files are put back"
    );
    assert!(matches!(
        r.coordinator.restore(restore_request()),
        Err(SequenceError::Restoring)
    ));
    let id = restoring.restore_id().to_string();
    let writers = restoring.complete(true);
    assert_eq!(writers.len(), 2);
    assert!(writers.iter().all(|w| w.status == "ok"), "{writers:?}");
    for name in ["a", "b"] {
        assert_eq!(r.events_of(name), [Event::PreRestore, Event::PostRestore]);
        assert_eq!(r.post_restore_of(name), [Some(true)]);
        assert_eq!(r.state_of(name), "stable");
    }
    assert!(lock(&r.log).iter().all(|(_, _, set)| *set == id), "one id");
    // Dropped without a report: the writers hear that it failed.
    drop(r.coordinator.restore(restore_request()).expect("prepared"));
    assert_eq!(r.post_restore_of("a"), [Some(true), Some(false)]);
    r.create(&FakeProvider::default()).expect("sets go on");
}

#[test]
fn a_required_writer_refusing_pre_restore_cancels_the_restore() {
    let r = rig();
    r.writer("ready", true, &[]);
    r.writer(
        "refuses",
        true,
        &[(Event::PreRestore, Behave::Fail(Failure::fatal("busy")))],
    );
    let err = r
        .coordinator
        .restore(restore_request())
        .err()
        .expect("refused");
    assert!(
        matches!(&err, SequenceError::RestoreRefused { writer, .. } if writer == "refuses"),
        "{err}"
    );
    assert!(err.to_string().contains("nothing was restored"), "{err}");
    // The writer that prepared is told the restore is off.
    assert_eq!(r.post_restore_of("ready"), [Some(false)]);
    assert_eq!(r.events_of("refuses"), [Event::PreRestore]);
    assert_eq!(r.state_of("refuses"), "failed-at-pre-restore");
    // An optional writer's refusal is its own failure only.
    let r = rig();
    r.writer(
        "optional",
        false,
        &[(Event::PreRestore, Behave::Fail(Failure::fatal("busy")))],
    );
    let writers = r
        .coordinator
        .restore(restore_request())
        .expect("goes on")
        .complete(true);
    assert_eq!(writers[0].status, "failed-at-pre-restore");
}
