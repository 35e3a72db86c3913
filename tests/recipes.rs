//! The recipes for real servers, run as the README and umbra-writer(7) show
//! them: restic backs up a set through examples/restic-requester.sh and
//! `restic restore` gives back the set's tree exactly; PostgreSQL under a
//! load of concurrent inserts, with examples/postgres-writer.sh as its exec
//! writer, gives sets from which a second server starts and holds every row
//! committed before the freeze, with intact heap and index (amcheck); with
//! the server down the writer refuses the set as retryable.

#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::manifest::{Compare, Manifest, assert_same_with};
use common::servers::ensure_installed;
use common::{Config, Daemon, restic_tree, run_with_timeout, umbra_bin};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// PATH with the umbra under test first, as an installed umbra would be.
fn path_with_umbra() -> String {
    let dir = umbra_bin().parent().unwrap().to_path_buf();
    let rest = std::env::var("PATH").unwrap_or_default();
    format!("{}:{rest}", dir.display())
}

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

#[test]
fn restic_restores_the_set_it_backed_up_exactly() {
    ensure_installed(&[("restic", "restic")]);
    let d = Daemon::start(Config::default());
    let live = d.live("data");
    restic_tree(&live);

    let scratch = d.scratch("restic");
    let repo = scratch.join("repo");
    let password = scratch.join("password");
    fs::write(&password, "umbra-test\n").unwrap();
    let restic = |args: &[&str]| -> Output {
        run_with_timeout(
            Command::new("restic")
                .args(args)
                .env("RESTIC_REPOSITORY", &repo)
                .env("RESTIC_PASSWORD_FILE", &password)
                .env("RESTIC_CACHE_DIR", scratch.join("cache")),
            Duration::from_secs(60),
        )
    };
    ok(restic(&["init"]), "restic init");

    // The README's command, kept (--keep) so that the restore can be
    // compared with the set itself.
    let out = run_with_timeout(
        Command::new(example("restic-requester.sh"))
            .arg("--keep")
            .env("PATH", path_with_umbra())
            .env("UMBRA_SOCKET", &d.layout.socket)
            .env("RESTIC_REPOSITORY", &repo)
            .env("RESTIC_PASSWORD_FILE", &password)
            .env("RESTIC_CACHE_DIR", scratch.join("cache")),
        Duration::from_secs(60),
    );
    ok(out, "examples/restic-requester.sh --keep");
    let sets = d.list_sets();
    assert_eq!(sets.len(), 1, "{sets:?}");
    let set = &sets[0];
    assert_eq!(set.origin, "backup");
    // The live volume moves on; the backup is of the set.
    fs::write(live.join("docs/a.txt"), "changed after the set\n").unwrap();

    let target = scratch.join("restore");
    ok(
        restic(&["restore", "latest", "--target", target.to_str().unwrap()]),
        "restic restore",
    );
    let set_dir = d.snapshots().join(&set.name);
    let restored = target.join(set_dir.strip_prefix("/").unwrap());
    assert_same_with(
        &Manifest::capture(&set_dir),
        &Manifest::capture(&restored),
        Compare::EXACT,
        "restic restore against the set",
    );
    assert_eq!(
        fs::read_to_string(restored.join("data/docs/a.txt")).unwrap(),
        "alpha\n"
    );
}

/// The newest PostgreSQL's bin directory (Debian keeps each major apart).
fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .map(|e| e.unwrap().path().join("bin"))
        .filter(|p| p.join("pg_ctl").is_file())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions
        .pop()
        .expect("a PostgreSQL under /usr/lib/postgresql")
}

/// `PROGRAM ARGS` as the postgres user.
fn as_postgres(bin: &Path, program: &str, args: &[&str]) -> Output {
    run_with_timeout(
        Command::new("setpriv")
            .args(["--reuid=postgres", "--regid=postgres", "--clear-groups"])
            .arg(bin.join(program))
            .args(args),
        Duration::from_secs(60),
    )
}

/// A running PostgreSQL over `data`, listening on 127.0.0.1:`port` and in
/// `socket_dir`, logging to `log`; stopped (immediately) when dropped.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    socket_dir: PathBuf,
}

impl Postgres {
    fn start(bin: &Path, data: &Path, socket_dir: &Path, port: u16, log: &Path) -> Postgres {
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            socket_dir.display()
        );
        ok(
            as_postgres(
                bin,
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-l",
                    log.to_str().unwrap(),
                    "-o",
                    &options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            ),
            &format!("pg_ctl start {}; see {}", data.display(), log.display()),
        );
        Postgres {
            bin: bin.to_path_buf(),
            data: data.to_path_buf(),
            port,
            socket_dir: socket_dir.to_path_buf(),
        }
    }

    /// The environment that points psql, pgbench and the writer here.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PGHOST", self.socket_dir.display().to_string()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", "postgres".into()),
            ("PGDATABASE", "postgres".into()),
        ]
    }

    fn psql(&self, sql: &str) -> String {
        let out = run_with_timeout(
            Command::new(self.bin.join("psql"))
                .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
                .envs(self.env()),
            Duration::from_secs(60),
        );
        ok(out, &format!("psql -c {sql:?}")).trim().to_string()
    }

    fn count(&self, sql: &str) -> u64 {
        let out = self.psql(sql);
        out.parse()
            .unwrap_or_else(|e| panic!("{sql}: {out:?} is not a count: {e}"))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

fn chown_to_postgres(path: &Path) {
    ok(
        run_with_timeout(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(path),
            Duration::from_secs(30),
        ),
        "chown postgres",
    );
}

#[test]
fn postgres_started_from_a_set_holds_every_row_committed_before_the_freeze() {
    ensure_installed(&[("pg_ctlcluster", "postgresql")]);
    let bin = pg_bin();
    // A place of our own the postgres user can reach: sockets, copies, logs.
    let outside = tempfile::Builder::new()
        .prefix("umbra-pg-")
        .tempdir()
        .unwrap();
    fs::set_permissions(outside.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let sockets = outside.path().join("sockets");
    let logs = outside.path().join("logs");
    for dir in [&sockets, &logs] {
        fs::create_dir_all(dir).unwrap();
        chown_to_postgres(dir);
    }

    // The writer is the recipe's script as written; the test's own hook
    // runs it, then (at freeze) notes which rows are committed by then.
    let hooks = tempfile::tempdir().unwrap();
    let hook = hooks.path().join("hook");
    let frozen = outside.path().join("frozen");
    fs::create_dir_all(&frozen).unwrap();
    fs::write(
        &hook,
        format!(
            "#!/bin/sh\n{example} \"$@\" || exit $?\n\
             if [ \"$1\" = freeze ]; then\n\
             \x20 {psql} -X -q -At -v ON_ERROR_STOP=1 -c 'COPY (SELECT id FROM t) TO STDOUT' > {frozen}/\"$UMBRA_SET_NAME\" || exit 1\n\
             fi\n",
            example = example("postgres-writer.sh").display(),
            psql = bin.join("psql").display(),
            frozen = frozen.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
    let config = Config::default()
        .line("[[writer]]")
        .line("name = \"postgres\"")
        .line("volumes = [\"data\"]")
        .line(&format!(
            "exec = {}",
            common::toml_str(&hook.to_string_lossy())
        ))
        .line("timeout_secs = 30");
    let mut d = Daemon::prepare(config);
    // The postgres user walks to its data directory on the live mount.
    let live = d.live("data");
    for dir in live
        .ancestors()
        .skip(1)
        .take_while(|p| p.starts_with(&d.layout.root))
    {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let port = common::servers::free_port();
    // The server's address, for the writer, in the daemon's environment.
    d.env("PGHOST", sockets.to_str().unwrap());
    d.env("PGPORT", &port.to_string());
    d.env("PGUSER", "postgres");
    d.env(
        "PATH",
        &format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    d.launch();

    let data = live.join("pg");
    fs::create_dir(&data).unwrap();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).unwrap();
    chown_to_postgres(&data);
    ok(
        as_postgres(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-N",
            ],
        ),
        "initdb",
    );
    let primary = Postgres::start(&bin, &data, &sockets, port, &logs.join("primary.log"));
    primary.psql(
        "CREATE TABLE t (id bigserial PRIMARY KEY, v double precision NOT NULL, pad text NOT NULL)",
    );

    // A pgbench load of single-row inserts from four clients while two
    // sets are made.
    let script = outside.path().join("insert.sql");
    fs::write(
        &script,
        "INSERT INTO t (v, pad) VALUES (random(), repeat('x', 200));\n",
    )
    .unwrap();
    let load = Command::new(bin.join("pgbench"))
        .args(["-n", "-c", "4", "-T", "8", "-f"])
        .arg(&script)
        .envs(primary.env())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut sets = Vec::new();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs(2));
        let set = d.create_set();
        sets.push(set);
    }
    ok(load.wait_with_output().unwrap(), "pgbench");
    let total = primary.count("SELECT count(*) FROM t");
    // The recipe's CHECKPOINT ran once per set (log_checkpoints is on).
    let log = fs::read_to_string(logs.join("primary.log")).unwrap();
    let checkpoints = log
        .matches("checkpoint starting: immediate force wait")
        .count();
    assert!(
        checkpoints >= sets.len(),
        "{checkpoints} checkpoints:\n{log}"
    );

    for (i, set) in sets.iter().enumerate() {
        let ids = frozen.join(&set.name);
        let committed = fs::read_to_string(&ids)
            .unwrap_or_else(|e| panic!("the rows committed at freeze of {}: {e}", set.name))
            .lines()
            .count() as u64;
        assert!(committed > 0, "the load ran before set {}", set.name);
        // The recipe's restore: a copy of the set's data directory without
        // the running server's postmaster.pid.
        let copy = outside.path().join(format!("restore-{i}"));
        ok(
            run_with_timeout(
                Command::new("cp")
                    .arg("-a")
                    .arg(d.browse(set, "data").join("pg"))
                    .arg(&copy),
                Duration::from_secs(60),
            ),
            "cp -a",
        );
        fs::remove_file(copy.join("postmaster.pid")).unwrap();
        let restored = Postgres::start(
            &bin,
            &copy,
            &sockets,
            common::servers::free_port(),
            &logs.join(format!("restore-{i}.log")),
        );
        restored.psql("CREATE TABLE frozen (id bigint PRIMARY KEY)");
        restored.psql(&format!("COPY frozen FROM '{}'", ids.display()));
        assert_eq!(restored.count("SELECT count(*) FROM frozen"), committed);
        let lost = restored.count(
            "SELECT count(*) FROM frozen f WHERE NOT EXISTS (SELECT 1 FROM t WHERE t.id = f.id)",
        );
        assert_eq!(
            lost, 0,
            "rows committed before the freeze of {} are missing",
            set.name
        );
        let held = restored.count("SELECT count(*) FROM t");
        assert!(
            (committed..=total).contains(&held),
            "set {}: {held} rows, {committed} committed at freeze, {total} in the end",
            set.name
        );
        eprintln!(
            "set {}: {committed} rows committed at freeze, {held} in the set, {total} at the end",
            set.name
        );
        // Heap and index intact, every heap tuple in the index.
        restored.psql("CREATE EXTENSION amcheck");
        restored.psql("SELECT bt_index_parent_check('t_pkey', true)");
        assert_eq!(restored.count("SELECT count(*) FROM verify_heapam('t')"), 0);
    }
    // With the server down the writer refuses, retryably, and no set is made.
    drop(primary);
    let err = d.try_create_set().expect_err("the writer refuses");
    assert!(
        err.contains("writer postgres failed at prepare-snapshot: CHECKPOINT failed")
            && err.contains("(retryable); the set was aborted"),
        "{err}"
    );
    assert_eq!(d.list_sets().len(), sets.len());
}
