//! Cluster sets through a real etcd on loopback: three real daemons, each
//! with its own state, socket and volumes, take one set at one instant with
//! `umbra create --cluster`. A test application writes paired records to
//! two of them and acknowledges Freeze only between pairs; every cluster
//! set must hold the same pairs on both. Killing a member's daemon or its
//! writer mid-freeze, or stopping etcd mid-sequence, must abort the set on
//! every member within the deadline and leave no set anywhere.

mod coord_common;

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use coord_common::{Act, Daemon, Seen, events, raw_writer};
use serde_json::{Value, json};

/// The members' lease and the cluster set's deadline in these tests.
const LEASE_TTL: Duration = Duration::from_secs(1);
const DEADLINE: Duration = Duration::from_secs(4);

/// One etcd server on free loopback ports, in its own temp dir; killed by
/// pid when dropped.
struct Etcd {
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Etcd {
    fn start() -> Etcd {
        let mut etcd = Etcd {
            dir: tempfile::tempdir().expect("tempdir"),
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
        };
        etcd.launch();
        etcd
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Starts (or starts again, over the same data) and waits for health.
    fn launch(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).expect("log");
        let child = Command::new("etcd")
            .arg("--name=t")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={}", self.url()))
            .arg(format!("--advertise-client-urls={}", self.url()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=t={peer}"))
            .arg("--initial-cluster-state=new")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd starts (apt install etcd-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.healthy() {
            assert!(Instant::now() < deadline, "etcd did not get healthy");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Puts `key` while etcd listens on a port no member knows (over the
    /// same data), and leaves it stopped.
    fn put_unseen(&mut self, key: &str, value: &str) {
        let members_port = std::mem::replace(&mut self.client_port, free_port());
        self.launch();
        etcd_put(self, key, value);
        self.kill();
        self.client_port = members_port;
    }

    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.contains("\"health\":\"true\"")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A daemon that is member `member` of cluster `name` in `etcd`.
fn member(etcd: &Etcd, name: &str, member: &str, extra: &str) -> Daemon {
    Daemon::start(&format!(
        "[cluster]\nendpoints = [\"{}\"]\nname = \"{name}\"\nmember = \"{member}\"\n\
         lease_ttl = \"{}s\"\ndeadline = \"{}s\"\n{extra}",
        etcd.url(),
        LEASE_TTL.as_secs(),
        DEADLINE.as_secs()
    ))
}

/// Starts three members of one cluster and waits until each sees all.
fn three(etcd: &Etcd) -> Vec<Daemon> {
    let cluster = format!("c{}", free_port());
    let daemons: Vec<Daemon> = ["a", "b", "c"]
        .iter()
        .map(|m| member(etcd, &cluster, m, ""))
        .collect();
    // A member is in once its lease is granted: a cluster set then plans it.
    let deadline = Instant::now() + Duration::from_secs(10);
    for d in &daemons {
        while !d.log().contains("joined the cluster") {
            assert!(Instant::now() < deadline, "never joined: {}", d.log());
            thread::sleep(Duration::from_millis(20));
        }
    }
    daemons
}

/// The sets of `daemon` that are parts of cluster set `id`.
fn parts(daemon: &Daemon, id: &str) -> Vec<Value> {
    daemon
        .sets()
        .into_iter()
        .filter(|s| s["cluster_id"] == id)
        .collect()
}

fn cluster_sets(daemon: &Daemon) -> Vec<Value> {
    daemon
        .sets()
        .into_iter()
        .filter(|s| s.get("cluster_id").is_some())
        .collect()
}

/// The test application: one process writing record k to host B, then
/// record k to host A, through the live mounts. Each host's writer
/// acknowledges Freeze only between two of its host's writes and stops
/// only its host's writes while frozen (the other host's go on until the
/// application needs the frozen one). So at any one instant A holds
/// 0..a and B holds 0..b with a <= b <= a + 1 (a record on A implies its
/// pair on B); two sets taken at different instants break that.
struct Pairs {
    state: Arc<(Mutex<[bool; 2]>, Condvar)>,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    seen: Vec<Seen>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Pairs {
    fn start(hosts: [&Daemon; 2]) -> Pairs {
        let state = Arc::new((Mutex::new([false; 2]), Condvar::new()));
        let mut seen = Vec::new();
        for (i, host) in hosts.iter().enumerate() {
            let s = state.clone();
            let (log, _) = raw_writer(
                &host.socket(),
                json!({"name": "pairs", "volumes": ["data"]}),
                move |event| {
                    let (lock, cv) = &*s;
                    // Taking the lock waits for the write in progress.
                    let mut frozen = lock.lock().expect("state");
                    match event {
                        "freeze" => frozen[i] = true,
                        "thaw" | "abort" => {
                            frozen[i] = false;
                            cv.notify_all();
                        }
                        _ => {}
                    }
                    Act::Ok
                },
            );
            seen.push(log);
        }
        let files: Vec<PathBuf> = hosts.iter().map(|h| h.path("data/pairs")).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let thread = {
            let (state, stop, written) = (state.clone(), stop.clone(), written.clone());
            thread::spawn(move || {
                let mut out: Vec<std::fs::File> = files
                    .iter()
                    .map(|f| {
                        OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(f)
                            .expect("pairs file")
                    })
                    .collect();
                let mut k = 0u64;
                while !stop.load(Ordering::Acquire) {
                    // B first, then A: each waits only for its own host.
                    for host in [1, 0] {
                        let (lock, cv) = &*state;
                        let mut frozen = lock.lock().expect("state");
                        while frozen[host] && !stop.load(Ordering::Acquire) {
                            frozen = cv
                                .wait_timeout(frozen, Duration::from_millis(50))
                                .expect("state")
                                .0;
                        }
                        writeln!(out[host], "{k}").expect("a record");
                    }
                    k += 1;
                    written.store(k, Ordering::Release);
                    thread::sleep(Duration::from_micros(200));
                }
            })
        };
        Pairs {
            state,
            stop,
            written,
            seen,
            thread: Some(thread),
        }
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Whether either host's writer is frozen now.
    fn frozen(&self) -> bool {
        self.state.0.lock().expect("state").iter().any(|f| *f)
    }
}

impl Drop for Pairs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.state.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The records of a set's `data/pairs`.
fn records(daemon: &Daemon, set: &Value) -> Vec<u64> {
    let name = set["name"].as_str().expect("name");
    let text = std::fs::read_to_string(daemon.path(&format!("snapshots/{name}/data/pairs")))
        .expect("pairs in the set");
    text.lines()
        .map(|l| l.parse().expect("a whole record"))
        .collect()
}

#[test]
fn a_cluster_set_is_one_instant_on_three_hosts() {
    let etcd = Etcd::start();
    let d = three(&etcd);
    let pairs = Pairs::start([&d[0], &d[1]]);
    // Another writer on B takes 50 ms to prepare: without the barriers, B
    // would freeze well after A thawed, and its set hold later records.
    let _slow = raw_writer(
        &d[1].socket(),
        json!({"name": "slow-prepare", "volumes": ["logs"]}),
        |event| match event {
            "prepare-snapshot" => Act::Hang(Duration::from_millis(50)),
            _ => Act::Ok,
        },
    );
    while pairs.written() < 50 {
        thread::sleep(Duration::from_millis(5));
    }
    // Every member may initiate.
    let mut ids = Vec::new();
    for initiator in [0, 1, 2, 0, 1, 2, 0, 1, 2, 0] {
        let created = d[initiator].json(&["create", "--cluster"]);
        let cluster = &created["cluster"];
        let id = cluster["id"]
            .as_str()
            .expect("a cluster set id")
            .to_string();
        let mut members: Vec<&str> = cluster["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        members.sort_unstable();
        assert_eq!(members, ["a", "b", "c"]);
        assert_eq!(created["cluster_id"], id.as_str());
        assert_eq!(cluster["holds"].as_array().map(Vec::len), Some(3));
        assert!(cluster["hold_ms"].as_f64().expect("hold") >= 0.0);
        eprintln!(
            "cluster set from {initiator}: hold {} ms here, cluster hold {} ms, barriers {} ms, total {} ms",
            created["hold_ms"], cluster["hold_ms"], cluster["barrier_ms"], cluster["total_ms"]
        );
        assert!(!pairs.frozen(), "thawed once create answers");
        ids.push(id);
        // Pairs go on between sets.
        let before = pairs.written();
        while pairs.written() < before + 20 {
            thread::sleep(Duration::from_millis(5));
        }
    }
    for id in &ids {
        let mut got = Vec::new();
        for daemon in &d {
            // A non-initiator's part is recorded a moment after the outcome.
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut part = parts(daemon, id);
            while part.len() != 1 && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
                part = parts(daemon, id);
            }
            assert_eq!(part.len(), 1, "one part of {id} on each host: {part:?}");
            got.push(part.remove(0));
        }
        let a = records(&d[0], &got[0]);
        let b = records(&d[1], &got[1]);
        assert!(!a.is_empty(), "the set holds records");
        assert_eq!(
            a,
            (0..a.len() as u64).collect::<Vec<_>>(),
            "whole, in order"
        );
        assert_eq!(
            b,
            (0..b.len() as u64).collect::<Vec<_>>(),
            "whole, in order"
        );
        assert!(
            a.len() <= b.len() && b.len() <= a.len() + 1,
            "one instant on both hosts in {id}: A holds {} records, B {}",
            a.len(),
            b.len()
        );
    }
    // Each set came later than the last: the sets are different instants.
    let counts: Vec<usize> = ids
        .iter()
        .map(|id| records(&d[0], &parts(&d[0], id)[0]).len())
        .collect();
    assert!(counts.windows(2).all(|w| w[0] < w[1]), "{counts:?}");
    for seen in &pairs.seen {
        let e = events(seen);
        assert_eq!(
            e.iter().filter(|e| *e == "freeze").count(),
            ids.len(),
            "{e:?}"
        );
        assert!(!e.contains(&"abort".to_string()), "{e:?}");
    }

    // list --cluster: every member holds every cluster set.
    let listed = d[2].json(&["list", "--cluster"]);
    for set in listed.as_array().expect("sets") {
        let mut holders: Vec<&str> = set["cluster_members"]
            .as_array()
            .expect("cluster_members")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        holders.sort_unstable();
        assert_eq!(holders, ["a", "b", "c"], "{set}");
    }
    // A part deleted on C is no longer C's in etcd's record.
    let gone = &parts(&d[2], &ids[0])[0];
    d[2].json(&["delete", gone["name"].as_str().expect("name")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = d[0].json(&["list", "--cluster"]);
        let first = listed
            .as_array()
            .and_then(|sets| sets.iter().find(|s| s["cluster_id"] == ids[0].as_str()))
            .expect("A's part");
        let mut holders: Vec<&str> = first["cluster_members"]
            .as_array()
            .expect("cluster_members")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        holders.sort_unstable();
        if holders == ["a", "b"] {
            break;
        }
        assert!(Instant::now() < deadline, "still {holders:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// A writer that answers every event at once, on `daemon`.
fn plain_writer(daemon: &Daemon) -> Seen {
    raw_writer(
        &daemon.socket(),
        json!({"name": "plain", "volumes": ["data"]}),
        |_| Act::Ok,
    )
    .0
}

/// A writer on `daemon` that answers `event` with `act` and every other
/// event at once.
fn writer_acting(daemon: &Daemon, name: &str, event: &'static str, act: Act) -> Seen {
    raw_writer(
        &daemon.socket(),
        json!({"name": name, "volumes": ["data"]}),
        move |e| if e == event { act.clone() } else { Act::Ok },
    )
    .0
}

/// Every writer of `seen` was told Abort and never PostSnapshot.
fn assert_told_abort(seen: &[&Seen]) {
    for seen in seen {
        wait_for_event(seen, "abort");
        assert!(!events(seen).contains(&"post-snapshot".to_string()));
    }
}

/// Runs `create --cluster` on `daemon` on a thread: its output and when
/// it ended.
fn create_in_background(daemon: &Daemon) -> thread::JoinHandle<(std::process::Output, Instant)> {
    let config = daemon.path("umbra.toml");
    thread::spawn(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_umbra"))
            .arg("--config")
            .arg(config)
            .args(["create", "--cluster", "--json"])
            .env_remove("UMBRA_SOCKET")
            .output()
            .expect("umbra runs");
        (out, Instant::now())
    })
}

fn wait_for_event(seen: &Seen, event: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !events(seen).iter().any(|e| e == event) {
        assert!(
            Instant::now() < deadline,
            "never saw {event}: {:?}",
            events(seen)
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// No host keeps any part of an aborted cluster set (a part may be
/// deleted a moment after the outcome).
fn assert_no_cluster_set(daemons: &[&Daemon]) {
    for daemon in daemons {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cluster_sets(daemon).is_empty() {
            assert!(
                Instant::now() < deadline,
                "a part stayed: {:?}\n{}",
                cluster_sets(daemon),
                daemon.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(daemon.sets(), Vec::<Value>::new(), "no set at all");
    }
}

#[test]
fn a_member_killed_mid_freeze_aborts_the_set_everywhere_by_its_lease() {
    let etcd = Etcd::start();
    let mut d = three(&etcd);
    let a = plain_writer(&d[0]);
    let b = plain_writer(&d[1]);
    // C's writer takes its time at Freeze: C dies while A and B wait frozen.
    let c = writer_acting(&d[2], "slow", "freeze", Act::Hang(Duration::from_secs(3)));
    let create = create_in_background(&d[0]);
    wait_for_event(&c, "freeze");
    wait_for_event(&b, "freeze");
    let killed = Instant::now();
    d[2].kill();
    let (out, ended) = create.join().expect("create thread");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "create succeeded without C");
    assert!(err.contains("member c left the cluster"), "{err}");
    // etcd's shortest lease is 2 s; the deadline (4 s) never came into it.
    let took = ended - killed;
    assert!(took < DEADLINE, "aborted {took:?} after the kill");
    assert_told_abort(&[&a, &b]);
    assert_no_cluster_set(&[&d[0], &d[1]]);
}

#[test]
fn a_writer_dying_mid_freeze_aborts_the_set_everywhere() {
    let etcd = Etcd::start();
    let d = three(&etcd);
    let a = plain_writer(&d[0]);
    let c = plain_writer(&d[2]);
    // B's writer goes away when told to freeze.
    let b = writer_acting(&d[1], "dying", "freeze", Act::Close);
    let started = Instant::now();
    let out = d[0].umbra(&["create", "--cluster"]);
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "create succeeded");
    assert!(err.contains("aborted: b:"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(took < DEADLINE, "took {took:?}");
    assert!(events(&b).contains(&"freeze".to_string()));
    assert_told_abort(&[&a, &c]);
    assert_no_cluster_set(&[&d[0], &d[1], &d[2]]);
}

#[test]
fn etcd_stopping_mid_sequence_aborts_cleanly() {
    let mut etcd = Etcd::start();
    let d = three(&etcd);
    let a = plain_writer(&d[0]);
    let b = plain_writer(&d[1]);
    let c = writer_acting(&d[2], "slow", "freeze", Act::Hang(Duration::from_secs(1)));
    let create = create_in_background(&d[0]);
    wait_for_event(&c, "freeze");
    wait_for_event(&b, "freeze");
    let stopped = Instant::now();
    etcd.kill();
    let (out, ended) = create.join().expect("create thread");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "create succeeded without etcd");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    // Every host's writers are thawed (told Abort) by the deadline.
    let took = ended - stopped;
    assert!(
        took < DEADLINE + Duration::from_secs(3),
        "took {took:?}: {err}"
    );
    assert_told_abort(&[&a, &b, &c]);
    assert_no_cluster_set(&[&d[0], &d[1], &d[2]]);
    // etcd back: nothing to repair, and the next cluster set works.
    etcd.launch();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = d[1].umbra(&["create", "--cluster", "--json"]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no cluster set after etcd came back: {}\nthe daemon's log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            d[1].log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    for daemon in &d {
        let deadline = Instant::now() + Duration::from_secs(5);
        while cluster_sets(daemon).len() != 1 {
            assert!(Instant::now() < deadline, "{:?}", daemon.sets());
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Puts `key` = `value` in etcd through its HTTP gateway, as a member's
/// transaction would.
fn etcd_put(etcd: &Etcd, key: &str, value: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut client = etcd_client::Client::connect([etcd.url()], None)
            .await
            .expect("etcd");
        client.put(key, value, None).await.expect("put");
    });
}

/// The cluster name the members of `three` share (from the config).
fn cluster_name(daemon: &Daemon) -> String {
    let config = std::fs::read_to_string(daemon.path("umbra.toml")).expect("config");
    config
        .lines()
        .find_map(|l| l.strip_prefix("name = \"c"))
        .map(|rest| format!("c{}", rest.trim_end_matches('"')))
        .expect("a cluster name")
}

/// C's part waits in PostSnapshot (captured, pending) when C dies.
fn kill_c_after_its_capture(
    etcd: &Etcd,
    d: &mut [Daemon],
    decide: Option<&str>,
) -> (std::process::Output, String) {
    let c = writer_acting(
        &d[2],
        "slow",
        "post-snapshot",
        Act::Hang(Duration::from_secs(4)),
    );
    let create = create_in_background(&d[0]);
    wait_for_event(&c, "post-snapshot");
    let part = cluster_sets(&d[2]);
    assert_eq!(part.len(), 1, "C's part is there, pending: {part:?}");
    let id = part[0]["cluster_id"].as_str().expect("id").to_string();
    if let Some(outcome) = decide {
        let key = format!("/umbra/{}/sets/{id}/outcome", cluster_name(&d[2]));
        etcd_put(etcd, &key, outcome);
    }
    d[2].kill();
    let (out, _) = create.join().expect("create thread");
    (out, id)
}

#[test]
fn a_part_cut_off_before_an_abort_is_deleted_at_restart() {
    let etcd = Etcd::start();
    let mut d = three(&etcd);
    let (out, id) = kill_c_after_its_capture(&etcd, &mut d, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "create succeeded without C");
    assert!(err.contains("member c left the cluster"), "{err}");
    assert_no_cluster_set(&[&d[0], &d[1]]);
    // C's pending part outlived the crash; the repair at start deletes it.
    d[2].launch(&[]);
    assert_no_cluster_set(&[&d[2]]);
    // The log line follows the deletion.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !d[2].log().contains("deleted this host's part") {
        assert!(Instant::now() < deadline, "{id}: {}", d[2].log());
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_part_cut_off_after_a_commit_is_kept_at_restart() {
    let etcd = Etcd::start();
    let mut d = three(&etcd);
    // The outcome is commit (as if every member had been ready) when C
    // dies before recording its part.
    let (out, id) = kill_c_after_its_capture(&etcd, &mut d, Some("commit"));
    assert!(
        out.status.success(),
        "the committed set is kept: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    d[2].launch(&[]);
    for daemon in &d {
        let deadline = Instant::now() + Duration::from_secs(10);
        while parts(daemon, &id).len() != 1 {
            assert!(
                Instant::now() < deadline,
                "{:?}\n{}",
                daemon.sets(),
                daemon.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
    let listed = d[0].json(&["list", "--cluster"]);
    let mut holders: Vec<&str> = listed[0]["cluster_members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    holders.sort_unstable();
    assert_eq!(holders, ["a", "b", "c"]);
}

#[test]
fn a_cluster_schedule_makes_one_cluster_set_per_firing_on_every_member() {
    let etcd = Etcd::start();
    let cluster = format!("c{}", free_port());
    let schedule = "[schedule]\ntimes = \"*:*:0/2\"\ncluster = true\nlabel = \"tick\"\n";
    let d: Vec<Daemon> = ["a", "b", "c"]
        .iter()
        .map(|m| member(&etcd, &cluster, m, schedule))
        .collect();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(20);
    while cluster_sets(&d[2]).len() < 3 {
        assert!(Instant::now() < deadline, "{}", d[2].log());
        thread::sleep(Duration::from_millis(100));
    }
    let elapsed = started.elapsed();
    let made: Vec<Value> = cluster_sets(&d[2]);
    // One cluster set per firing, not one per member.
    assert!(
        made.len() as u64 <= elapsed.as_secs() / 2 + 2,
        "{} sets in {elapsed:?}",
        made.len()
    );
    for set in &made {
        assert_eq!(set["origin"], "scheduled", "{set}");
        assert_eq!(set["label"], "tick", "{set}");
        let id = set["cluster_id"].as_str().expect("id");
        for daemon in &d[..2] {
            let deadline = Instant::now() + Duration::from_secs(5);
            while parts(daemon, id).len() != 1 {
                assert!(
                    Instant::now() < deadline,
                    "{id} missing: {:?}",
                    daemon.sets()
                );
                thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(parts(daemon, id)[0]["origin"], "scheduled");
        }
    }
    // No member made a set of its own.
    for daemon in &d {
        assert!(daemon.sets().iter().all(|s| s.get("cluster_id").is_some()));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The same writers, the same host: ten sets on host A alone, then ten
/// cluster sets of all three. Prints the medians (the closing note of
/// issue 14 quotes them); asserts only what does not depend on the
/// machine's load: the other hosts' time is spent by the frozen writers,
/// outside the hold.
#[test]
fn a_cluster_sets_hold_is_one_hosts_and_the_wait_is_the_writers() {
    let etcd = Etcd::start();
    let d = three(&etcd);
    let pairs = Pairs::start([&d[0], &d[1]]);
    while pairs.written() < 50 {
        thread::sleep(Duration::from_millis(5));
    }
    let field = |v: &Value, k: &str| v[k].as_f64().expect(k);
    let mut single = (Vec::new(), Vec::new());
    let mut cluster = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..10 {
        let one = d[0].json(&["create"]);
        single.0.push(field(&one, "hold_ms"));
        single.1.push(field(&one, "total_ms"));
        let all = d[0].json(&["create", "--cluster"]);
        cluster.0.push(field(&all, "hold_ms"));
        cluster.1.push(field(&all["cluster"], "hold_ms"));
        cluster.2.push(field(&all["cluster"], "barrier_ms"));
        cluster.3.push(field(&all["cluster"], "total_ms"));
    }
    let (hold, total) = (median(single.0), median(single.1));
    let (here, longest, barrier, cluster_total) = (
        median(cluster.0),
        median(cluster.1),
        median(cluster.2),
        median(cluster.3),
    );
    eprintln!(
        "single host: hold {hold:.3} ms, total {total:.1} ms; cluster of 3: hold here {here:.3} ms, \
         longest member hold {longest:.3} ms, writers waited {barrier:.1} ms at the barriers, \
         total {cluster_total:.1} ms (medians of 10)"
    );
    assert!(here < barrier, "the barriers are outside the hold");
    assert!(cluster_total > total, "a cluster set costs the round trips");
}

/// etcd goes away while the members wait for the outcome (A and B ready,
/// C still in PostSnapshot): nobody knows the outcome, so every part
/// stays pending, in doubt, until etcd is back; then etcd's record
/// settles every member the same way.
fn in_doubt(decide: Option<&str>) -> (Etcd, Vec<Daemon>, String) {
    let mut etcd = Etcd::start();
    let d = three(&etcd);
    let a = plain_writer(&d[0]);
    let c = writer_acting(
        &d[2],
        "slow",
        "post-snapshot",
        Act::Hang(Duration::from_secs(1)),
    );
    let create = create_in_background(&d[0]);
    wait_for_event(&c, "post-snapshot");
    wait_for_event(&a, "post-snapshot");
    let id = cluster_sets(&d[2])[0]["cluster_id"]
        .as_str()
        .expect("id")
        .to_string();
    etcd.kill();
    let (out, _) = create.join().expect("create thread");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "made without etcd");
    assert!(err.contains("in doubt"), "{err}");
    for daemon in &d {
        // Kept pending, listed with its cluster id, until etcd answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !daemon
            .log()
            .contains("kept pending until the cluster's outcome")
        {
            assert!(Instant::now() < deadline, "{}", daemon.log());
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(parts(daemon, &id).len(), 1, "{:?}", daemon.sets());
    }
    if let Some(outcome) = decide {
        // Recorded before any member can reach etcd again: a member that
        // found no outcome past the plan's deadline would rightly abort.
        let key = format!("/umbra/{}/sets/{id}/outcome", cluster_name(&d[0]));
        etcd.put_unseen(&key, outcome);
    }
    etcd.launch();
    (etcd, d, id)
}

#[test]
fn parts_in_doubt_are_kept_everywhere_when_etcd_comes_back_with_a_commit() {
    let (_etcd, d, id) = in_doubt(Some("commit"));
    for daemon in &d {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !daemon.log().contains("kept this host's part") {
            assert!(Instant::now() < deadline, "{}", daemon.log());
            thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(parts(daemon, &id).len(), 1, "{:?}", daemon.sets());
    }
}

#[test]
fn parts_in_doubt_are_deleted_everywhere_when_etcd_comes_back_undecided() {
    let (_etcd, d, _) = in_doubt(None);
    // Undecided past the plan's deadline: aborted, and deleted everywhere.
    for daemon in &d {
        let deadline = Instant::now() + DEADLINE + Duration::from_secs(10);
        while !cluster_sets(daemon).is_empty() {
            assert!(Instant::now() < deadline, "{}", daemon.log());
            thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_member_that_stops_leaves_at_once_and_the_others_go_on() {
    let etcd = Etcd::start();
    let mut d = three(&etcd);
    // SIGTERM: C's daemon revokes its lease as it stops.
    drop(d.pop());
    let created = d[0].json(&["create", "--cluster"]);
    let mut members: Vec<&str> = created["cluster"]["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    members.sort_unstable();
    assert_eq!(members, ["a", "b"]);
    let id = created["cluster_id"].as_str().expect("id");
    let deadline = Instant::now() + Duration::from_secs(5);
    while parts(&d[1], id).len() != 1 {
        assert!(Instant::now() < deadline, "{:?}", d[1].sets());
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_planner_is_told_a_cluster_set_is_being_made() {
    let etcd = Etcd::start();
    let d = three(&etcd);
    let c = writer_acting(
        &d[2],
        "slow",
        "freeze",
        Act::Hang(Duration::from_millis(1500)),
    );
    let first = create_in_background(&d[0]);
    wait_for_event(&c, "freeze");
    let out = d[1].umbra(&["create", "--cluster"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second cluster set at once");
    assert!(err.contains("is being made; try again"), "{err}");
    let (out, _) = first.join().expect("create thread");
    assert!(
        out.status.success(),
        "the first goes on: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Done: the next one may be planned by anyone.
    d[1].json(&["create", "--cluster"]);
}

#[test]
fn a_member_starts_without_etcd_and_joins_when_it_comes() {
    let mut etcd = Etcd {
        dir: tempfile::tempdir().expect("tempdir"),
        client_port: free_port(),
        peer_port: free_port(),
        child: None,
    };
    let lone = member(&etcd, &format!("c{}", free_port()), "a", "");
    // Local sets go on without etcd; a cluster set says why it cannot.
    lone.json(&["create"]);
    let out = lone.umbra(&["create", "--cluster"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    etcd.launch();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !lone.log().contains("joined the cluster") {
        assert!(Instant::now() < deadline, "{}", lone.log());
        thread::sleep(Duration::from_millis(50));
    }
    let created = lone.json(&["create", "--cluster"]);
    assert_eq!(created["cluster"]["members"], json!(["a"]));
}
