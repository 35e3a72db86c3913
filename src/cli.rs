//! The command line: every command, flag and help text, in one clap
//! definition that `--help` and the man page umbra(1) are both made from.
//! It only describes; it never reads a config, opens a socket or prints.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const ABOUT: &str =
    "Volume Shadow Copy for Linux: consistent point-in-time shadow copies of live directory trees";

const LONG_ABOUT: &str = "\
Volume Shadow Copy for Linux: consistent point-in-time shadow copies of live directory trees.

`umbra up` runs the daemon: it serves each configured volume live through a FUSE mount and keeps, \
in a copy-on-write diff area, whatever a shadow copy still needs before a change overwrites it. \
Every shadow copy set is browsable read-only under the snapshots mountpoint as \
<snapshots>/<set name>/<volume>/..., with <snapshots>/latest pointing at the newest set.

The other commands are clients: they talk to the running daemon through its control socket, \
found through --socket, then $UMBRA_SOCKET, then the socket of --config, then the embedded \
default's .umbra/control.sock in the current directory or the nearest directory above it (as git \
finds .git; only one in a directory owned by the user or root counts), so that `umbra create` \
works next to `umbra up` without set-up, and from anywhere inside its volumes and snapshots. \
When none is found, the error names the directory the search started from.";

const AFTER_HELP: &str = "\
Errors are printed as one line, `umbra: <message>`, and the exit status is then non-zero. \
The configuration file is described in umbra.toml(5).";

#[derive(Debug, Parser)]
#[command(
    name = "umbra",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_HELP,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// The daemon's control socket [default: the socket of --config, else .umbra/control.sock here or above]
    ///
    /// For `umbra up`, serve the control socket here instead of at the configuration's `socket`.
    #[arg(long, global = true, env = "UMBRA_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Configuration file (TOML, see umbra.toml(5)) [default: the embedded default]
    ///
    /// `umbra up` runs it; a client reads it only to find the daemon's socket. Relative paths in
    /// the file resolve against the file's directory. Without it, the embedded default keeps its
    /// state under ./.umbra, serves one volume `data` in place at ./data and the shadow copies at
    /// ./snapshots.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground
    ///
    /// Mounts every volume of the configuration live and the shadow copy browser read-only,
    /// prints one line per mount and then `umbra: ready`, and serves the control socket until
    /// SIGINT or SIGTERM, when it unmounts everything and exits 0. A mount still in use then (a
    /// shell's working directory or an open file inside it) is not left behind: the files open for
    /// writing through it are written back, it is detached lazily and its FUSE connection aborted,
    /// so that whoever is still inside gets ENOTCONN ("Transport endpoint is not connected")
    /// instead of a hang, and the next `umbra up` starts cleanly. Mounts left by a crashed daemon
    /// are cleaned up first; a second daemon on the same state directory is refused, unless the
    /// first was killed but cannot finish exiting: then the FUSE connections of its mountpoints
    /// are aborted (mounting fusectl at /sys/fs/fuse/connections if needed) so that it can.
    ///
    /// SIGHUP (`systemctl reload umbra`) re-reads the --config file and applies its [schedule]
    /// (times, volumes, label, timezone, retention) without remounting; `umbra status --json`
    /// shows the times in force. Every other key needs a restart: a reload that finds one changed
    /// logs one line naming it, and a file that does not parse changes nothing and is logged in
    /// one line (umbra.toml(5), RELOAD).
    ///
    /// Both mounts check access as the backing filesystem would, POSIX ACLs included; a set
    /// answers with the modes and ACLs of its instant. On the live mount, what a user creates is
    /// created as that user, with their umask (or a directory's default ACL in its place), so
    /// owner, group, mode and ACL come out as natively, and what they write is allocated as
    /// them: the blocks reserved for root and quota limits hold. Writes that the kernel's
    /// writeback cache (`writeback_cache = true`) sends later arrive without their writer and
    /// are allocated as root.
    Up,

    /// Make a shadow copy set of some or all volumes
    ///
    /// All named volumes are copied at one instant, after every registered writer of those volumes
    /// went through Identify, PrepareForBackup, PrepareForSnapshot and Freeze; then Thaw,
    /// PostSnapshot and BackupComplete follow. A required writer's failure aborts the set and
    /// nothing is created; a second create while one runs is refused. The set stays pending from
    /// its commit until its writers have thawed and heard PostSnapshot (it is listed and browsable
    /// meanwhile); a set interrupted by a daemon crash in that window is deleted at the daemon's
    /// next start, so that a set is whole or absent. --json prints the set (id, name, created,
    /// label, origin, volumes, writers with their status) with set_guid (the id the writers saw),
    /// path (where it is browsable), hold_ms (how long the volumes were held: the longest of
    /// holds), holds ([{provider, volumes, hold_ms}]: each provider's hold; cow and btrfs volumes
    /// of one set are held side by side within the writers' freeze), total_ms and evicted. The set
    /// is named after its UTC creation time
    /// (name_format; e.g. 2026-11-25T084250Z, with a suffix -1, -2, ... if that name is taken) and
    /// prints as `<name> (id <id>): <volumes>`. When `max_sets` makes room first, a line
    /// `deleted <name> (id <id>): the oldest set, to stay within max_sets` comes before it for each
    /// set deleted (in --json, `evicted`). An unknown volume is an error, and then nothing is
    /// created.
    ///
    /// With --cluster, one set is taken on every member of the daemon's [cluster] (see
    /// umbra.toml(5)) alive now, every volume of each, at one instant: every member's writers
    /// are frozen before any member captures, and every member captured before any thaws. The
    /// set is kept on every member or on none: a member's failure, its daemon's death (its etcd
    /// lease expires), etcd out of reach or the deadline aborts it everywhere. Each member's part
    /// carries the cluster set id (cluster_id in list --json). --json adds cluster: {id, members,
    /// hold_ms (the longest member's hold), holds ([{member, hold_ms}]), prepared_ms (how long this
    /// host's writers waited, not yet frozen, for every member to prepare), barrier_ms (how long
    /// they waited for the others while frozen), total_ms (plan to this part recorded)}. Each
    /// member's hold is its own volumes' alone, as on one host.
    Create {
        /// Volumes to copy [default: every volume]
        #[arg(value_name = "VOLUME", conflicts_with = "cluster")]
        volumes: Vec<String>,

        /// A free text kept with the set and shown by `umbra list`
        #[arg(long, value_name = "TEXT")]
        label: Option<String>,

        /// One set on every member of the cluster at one instant (through etcd)
        #[arg(long)]
        cluster: bool,

        #[command(flatten)]
        output: Output,
    },

    /// Make a set, run a command over it, report, and delete the set
    ///
    /// The requester's whole workflow, as VSS's auto-release shadow copies: a set of the named
    /// volumes (all when none) is made through the writers' sequence up to PostSnapshot; COMMAND
    /// runs with UMBRA_SNAPSHOT set to the set's browse path (<snapshots>/<name>) and UMBRA_SET_NAME
    /// to its name; the writers then hear BackupComplete with whether COMMAND succeeded, and the
    /// set is deleted unless --keep. Then one line on stderr (stdout is COMMAND's) names the set,
    /// how COMMAND ended and whether the set was deleted or kept. umbra backup exits with
    /// COMMAND's status (128+N if a signal N ended it). If umbra backup itself goes away first, the daemon completes the backup as failed.
    Backup {
        /// Volumes to copy [default: every volume]
        #[arg(value_name = "VOLUME")]
        volumes: Vec<String>,

        /// Keep the set after COMMAND instead of deleting it
        #[arg(long)]
        keep: bool,

        /// A free text kept with the set
        #[arg(long, value_name = "TEXT")]
        label: Option<String>,

        /// Instead of the line on stderr, print one JSON document on stdout once COMMAND ended
        ///
        /// It has the set (as `umbra create --json`, with the writers as BackupComplete left them),
        /// the command, its exit code or signal, and whether the set was kept. COMMAND's own
        /// output comes first on the same stdout.
        #[arg(long)]
        json: bool,

        /// The backup command and its arguments, after `--`
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },

    /// List the shadow copy sets, oldest first
    ///
    /// Prints a table of name, id, creation time (RFC 3339, UTC), origin (manual, scheduled or
    /// backup: who asked for the set), volumes and label. Control
    /// characters in a label (or in any name or message umbra prints as text) are shown escaped,
    /// as \n or \u{1b}, so that no label can add a line or reach the terminal; --json prints
    /// the array of sets, each with id, name, created (RFC 3339), label, origin, volumes and
    /// writers, every string exact.
    ///
    /// With --cluster, each cluster set's part also names the members that hold the cluster set
    /// (etcd's record; in --json, cluster_members beside cluster_id).
    List {
        /// Ask etcd which members hold each cluster set
        #[arg(long)]
        cluster: bool,

        #[command(flatten)]
        output: Output,
    },

    /// Delete shadow copy sets
    ///
    /// Every SET (a name or an id) is checked first: if one is unknown, none is deleted. The
    /// selectors add sets: the N oldest, those older than a duration, or all. What no remaining
    /// set needs is freed from the diff area, pack space included. Prints `deleted NAME (id N)`
    /// for each set deleted; --json prints the array of the deleted sets, each with id, name,
    /// created, label, origin, volumes and writers (as `list --json`).
    Delete {
        /// Sets to delete, by name or id
        #[arg(value_name = "SET", required_unless_present_any = ["oldest", "older_than", "all"])]
        sets: Vec<String>,
        /// Also delete the N oldest sets
        #[arg(long, value_name = "N")]
        oldest: Option<usize>,
        /// Also delete the sets created more than DURATION ago (e.g. 7d, 12h, 1w 2d)
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Delete every set
        #[arg(long, conflicts_with_all = ["sets", "oldest", "older_than"])]
        all: bool,
        #[command(flatten)]
        output: Output,
    },

    /// Apply the schedule's retention rules: delete the sets no rule keeps
    ///
    /// The rules are the daemon's [schedule] table (umbra.toml(5)): the first scheduled set of each
    /// of the newest N hours, days, ISO weeks, months, quarters and years stays, as in snapper's timeline;
    /// so do the newest set, a set a running umbra backup is using, every set younger than
    /// min_age, and manual and kept backup sets unless keep_manual or keep_backup give a count.
    /// Prints every set with its action and the rules that keep it; --dry-run deletes nothing.
    /// --json prints {dry_run, sets}, each set as `list --json` with action (keep or delete) and
    /// kept_by (the rules).
    /// The daemon applies the same rules after each scheduled set.
    Prune {
        /// Show what would be deleted, delete nothing
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        output: Output,
    },

    /// Show what changed between two sets, or between a set and the live volumes
    ///
    /// One line per change, as zfs diff -F prints them: a mark (+ added, - removed, M modified,
    /// R renamed), the kind of object (F file, / directory, @ symlink, | fifo, = socket, B block
    /// device, C character device) and the path under the volume's live mount; a rename shows
    /// `OLD -> NEW`, a modification what changed (content, mode, owner, times, xattrs, links).
    /// A directory added or removed brings every entry under it. Access and change times are not
    /// compared. FROM and TO are set names, ids or `latest`; without TO the live volumes are the
    /// other end. PATH (a path in a live volume, in a set under the snapshots mountpoint, or
    /// VOLUME/path) limits the diff to that file or directory and below; without it every volume
    /// FROM holds is compared. The work follows the number of changes the diff area recorded
    /// between the two, not the number of files (--json says how many objects were examined,
    /// and whether naming them needed a walk of a live tree: {from, to, changes, examined,
    /// searched}, each change {change, kind, volume, path, to, what}). Names that are not valid UTF-8 are
    /// shown with U+FFFD in their place; control characters are escaped.
    #[command(override_usage = "umbra diff [OPTIONS] <FROM> [TO] [PATH]")]
    Diff {
        /// The older set (name, id or latest)
        #[arg(value_name = "FROM")]
        from: String,
        /// The newer set, then PATH; a single argument that names no set is PATH
        #[arg(value_name = "TO|PATH", num_args = 0..=2)]
        rest: Vec<String>,
        #[command(flatten)]
        output: Output,
    },

    /// List every distinct version of a file, live and in the sets, newest first
    ///
    /// The Previous Versions tab on the command line: the file at PATH (a path in a live volume,
    /// in a set under the snapshots mountpoint, or VOLUME/path; it may be deleted live) is looked
    /// up in every set. A set holds the live file wherever it was then (renames are followed
    /// through the diff area's records), or else whatever was at PATH then (editors that save
    /// by renaming a new file over the old one make a new file each time). Versions with equal
    /// content (blake3) are one, listed with every set that holds them. Prints a table of
    /// modification time, size, the start of the blake3 hash and the sets with where each shows
    /// the file; `cp` from that path restores it. --json prints {volume, path, versions}, each
    /// version {blake3, size, mtime, live, sets: [{id, name, created, path}]}.
    Versions {
        /// The file
        #[arg(value_name = "PATH")]
        path: String,
        #[command(flatten)]
        output: Output,
    },

    /// Show the registered writers and their states
    ///
    /// Prints each writer's name, kind (socket or exec), state (stable, waiting-for-freeze,
    /// waiting-for-thaw, waiting-for-post-snapshot, waiting-for-backup-complete, or
    /// failed-at-EVENT), volumes and last error. --json prints the array of writers, each {name,
    /// kind, state, last_error, retryable, volumes, required, connected}. The wire protocol of
    /// writers is described in umbra-writer(7).
    Writers {
        #[command(flatten)]
        output: Output,
    },

    /// Show the volumes, mounts, diff area and sets of the running daemon
    ///
    /// Prints each volume's provider (cow or btrfs), backing directory, mountpoint and current epoch, the snapshots
    /// mountpoint, the bytes of the diff area (distinct pre-image chunks, and on disk) and the
    /// number of sets, and the [schedule]'s times with its next firing. --json prints {state_dir,
    /// socket, snapshots, volumes: [{name, provider, backing, mount, epoch}], diff_area: {chunk_bytes,
    /// chunks, disk_bytes, limit_bytes, max_sets}, sets, schedule: {times, next}}.
    Status {
        #[command(flatten)]
        output: Output,
    },

    /// Put files and trees back from a shadow copy set
    ///
    /// Copies each PATH as it was in SET (a name, an id or `latest`) back into its live volume:
    /// by default beside the live one, as `NAME.restored-SET` (the live file or tree is not
    /// touched); with --overwrite or --keep-newer in its own place; with --to into DIR as
    /// DIR/NAME (anywhere, e.g. outside every volume). PATH is a path
    /// in a volume's live mount, absolute or relative to the working directory (which may be in a
    /// live mount or in a set under the snapshots mount), or VOLUME/path. A path that leaves its
    /// volume (`..`), lies outside every volume, or passes a symlink in the set is refused; the
    /// restore itself never follows a symlink, in the set or live. A file, symlink, FIFO or whole
    /// directory tree is restored with its contents, mode, owner and group (as root; a user
    /// restores as themselves), times, xattrs (user.*, and trusted.* and security.* as root) and
    /// POSIX ACLs; holes stay holes and hard links within the restored tree stay linked; missing
    /// live parents are created as they were in the set.
    ///
    /// Everything is checked before anything is written: a destination that exists and differs
    /// from the set's version (a copy beside from an earlier restore, or an entry under --to DIR)
    /// is a conflict, and then the error lists every conflicting path and nothing is changed,
    /// unless --overwrite (replace them) or --keep-newer (replace them, but keep those whose
    /// mtime is newer than the set's). Entries equal to the set's (size, mtime
    /// and contents) are skipped. An entry that exists live but not in the set is left alone:
    /// restore is not a rollback. Each file is written under a temporary name in its directory,
    /// fsynced and renamed into place, so a reader sees the old file or the new one, never half;
    /// a directory gets its mode and times after its entries.
    ///
    /// The copy is made by this process, as the user who runs it: reading through the snapshot
    /// mount (a user cannot restore what they could not read at the set's instant) and writing
    /// through the live mount (nor write where they cannot write now). The writers of the
    /// volumes written into hear pre-restore before the copy and post-restore after it, with
    /// whether it succeeded; a required writer's refusal at pre-restore cancels the restore
    /// before anything is written.
    ///
    /// Prints `restored PATH`, `skipped PATH (unchanged)` or `kept PATH (newer live)` for each
    /// path, then a summary; --dry-run prints what would happen (`would restore PATH`) and changes
    /// nothing; --json prints one document: set, dry_run, actions (each {action, path, kind}),
    /// totals {restored, skipped, kept, bytes} and writers. A progress bar goes to stderr
    /// when it is a terminal, for long restores.
    Restore {
        /// The set to restore from: a name, an id or `latest`
        #[arg(value_name = "SET")]
        set: String,

        /// What to restore: a path in a live volume, or VOLUME/path
        #[arg(value_name = "PATH", required = true)]
        paths: Vec<PathBuf>,

        /// Restore into DIR (each PATH as DIR/<its name>) instead of beside the live one
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,

        /// Replace destinations that differ from the set's version
        #[arg(long, conflicts_with = "keep_newer")]
        overwrite: bool,

        /// Replace destinations that differ, but keep those newer (by mtime) than the set's
        #[arg(long)]
        keep_newer: bool,

        /// Print what would be restored, change nothing
        #[arg(long)]
        dry_run: bool,

        #[command(flatten)]
        output: Output,
    },

    /// Write sets into a restic repository, one snapshot per volume
    ///
    /// With --replica NAME, the repository, password, keys and volumes are those of the
    /// config's [[replica]] NAME (umbra.toml(5)). Writes each SET (a name, an id or `latest`; the newest when none is given) into the
    /// restic-format repository REPO: a local absolute path (only root may name one, as the
    /// daemon writes it as root), or `s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]` with the keys in
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. A repository without a config is
    /// initialised. The password is read by this process, as the caller: --password-file, else
    /// RESTIC_PASSWORD_FILE, else RESTIC_PASSWORD. Each volume becomes one snapshot at the path
    /// /umbra/VOLUME, with the set's instant as its time and the tags `umbra`,
    /// `umbra-set:NAME`, `umbra-set-id:ID` and `umbra-volume:VOLUME`. When the repository holds
    /// a snapshot of an older set that still exists, that snapshot is the parent and only what
    /// umbra's diff between the two sets names is read from the set. A set already in the
    /// repository is not written again. A run that cannot read every entry keeps no snapshot.
    /// Restoring is restic's job: `restic -r REPO restore SNAPSHOT --target DIR`.
    /// --json prints {repository, repository_id, snapshots: [{set, set_id, volume, snapshot,
    /// already, parent, parent_set, entries, files, stats, opened, bytes_read, bytes_added,
    /// seconds}]}. Progress goes to stderr when it is a terminal.
    Replicate {
        /// The sets to write: names, ids or `latest`
        #[arg(value_name = "SET")]
        sets: Vec<String>,

        /// The repository: /path or s3:http(s)://host[:port]/bucket[/prefix]
        #[arg(long, value_name = "REPO", required_unless_present = "replica")]
        to: Option<String>,

        /// A [[replica]] of the config, with its password and keys
        #[arg(long, value_name = "NAME", conflicts_with = "to")]
        replica: Option<String>,

        /// A file whose first line is the repository's password
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,

        /// Only this volume (repeatable)
        #[arg(long = "volume", value_name = "VOLUME")]
        volumes: Vec<String>,

        #[command(flatten)]
        output: Output,
    },

    /// List what restic repositories hold of umbra's sets
    ///
    /// For each [[replica]] of the config (or only REPO with --to, or NAME with --replica):
    /// its repository, when it is written (`after`), and each snapshot umbra wrote there:
    /// snapshot id, volume, set, the set's instant, and whether the set still exists here.
    /// --json prints [{name, repository, repository_id, after, snapshots: [{snapshot, set,
    /// set_id, volume, time, parent, set_exists}], error}].
    Replicas {
        /// Only this repository (with --password-file, as for replicate)
        #[arg(long, value_name = "REPO", conflicts_with = "replica")]
        to: Option<String>,

        /// Only this [[replica]] of the config
        #[arg(long, value_name = "NAME")]
        replica: Option<String>,

        /// A file whose first line is the repository's password (with --to)
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,

        #[command(flatten)]
        output: Output,
    },

    /// Print a shell completion script
    ///
    /// Writes the completion script for SHELL to standard output, made from the same definitions
    /// as `--help`. Install it where the shell looks, for example
    /// `umbra completions bash > /etc/bash_completion.d/umbra`,
    /// `umbra completions zsh > /usr/local/share/zsh/site-functions/_umbra` or
    /// `umbra completions fish > ~/.config/fish/completions/umbra.fish`.
    Completions {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Clone, Copy, Debug, Args)]
pub struct Output {
    /// Print one JSON document on stdout instead of text (its fields: see the command's help)
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("umbra").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn create_takes_volumes_label_and_json() {
        let cli =
            parse(&["create", "data", "logs", "--label", "nightly", "--json"]).expect("parses");
        match cli.command {
            Command::Create {
                volumes,
                label,
                output,
                cluster,
            } => {
                assert!(!cluster);
                assert_eq!(volumes, ["data", "logs"]);
                assert_eq!(label.as_deref(), Some("nightly"));
                assert!(output.json);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn backup_takes_volumes_then_a_command() {
        let cli =
            parse(&["backup", "data", "--keep", "--", "rsync", "-a", "--delete"]).expect("parses");
        match cli.command {
            Command::Backup {
                volumes,
                keep,
                command,
                ..
            } => {
                assert_eq!(volumes, ["data"]);
                assert!(keep);
                assert_eq!(command, ["rsync", "-a", "--delete"]);
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(parse(&["backup", "data"]).is_err(), "a command is needed");
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&["up", "--config", "/etc/umbra.toml"]).expect("parses");
        assert_eq!(cli.config, Some(PathBuf::from("/etc/umbra.toml")));
        let cli = parse(&["--socket", "/run/u.sock", "list"]).expect("parses");
        assert_eq!(cli.socket, Some(PathBuf::from("/run/u.sock")));
    }

    #[test]
    fn delete_needs_a_set() {
        assert!(parse(&["delete"]).is_err());
        assert!(parse(&["delete", "--all", "3"]).is_err());
        assert!(parse(&["delete", "--older-than", "soon"]).is_err());
        let cli = parse(&["delete", "--older-than", "7d", "--oldest", "2"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Delete { older_than: Some(d), oldest: Some(2), .. } if d.as_secs() == 7 * 86_400
        ));
        let cli = parse(&["delete", "3", "2026-11-25T084250Z"]).expect("parses");
        assert!(
            matches!(cli.command, Command::Delete { sets, .. } if sets == ["3", "2026-11-25T084250Z"])
        );
    }

    #[test]
    fn socket_flag_reads_umbra_socket() {
        let command = Cli::command();
        let socket = command
            .get_arguments()
            .find(|a| a.get_id() == "socket")
            .expect("--socket exists");
        assert_eq!(socket.get_env(), Some(std::ffi::OsStr::new("UMBRA_SOCKET")));
    }
}
