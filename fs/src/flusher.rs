//! Step (1) of flush-and-hold: making the kernel hand the daemon what its
//! writeback cache still holds for the live mounts. It owns the flush child
//! process (spawning, feeding, timing out, killing and reaping it) and the
//! list of the children's pids, so that the live mount can tell the
//! daemon's own FSYNCs from an application's. It never holds a gate and
//! never opens a backing file (it only borrows the handle syscall wrapper
//! of backing.rs, for files on the live mount).
//!
//! With the writeback cache a write() returns once its bytes are in the
//! kernel's page cache, and the kernel owns the file's size and mtime until
//! it sends them (WRITE, then SETATTR from `write_inode`). close() and the
//! last munmap write a file back whole before they return (`fuse_flush`,
//! `fuse_release`), so what can still be dirty belongs to files the kernel
//! has open for writing. `fsync` through the mount is the one call that
//! writes their pages back, waits for the daemon's replies and then sends
//! the times; `sync_file_range` sends no times, and `syncfs` is no barrier
//! on FUSE. The FSYNC that ends it needs no backing fsync: a set promises
//! what was written, not durability the application never asked for.
//!
//! Files are opened by FUSE file handle, not by path: a file open for
//! writing may have been renamed, or may only be reachable through a link
//! other than the one it was opened by. The kernel resolves a FUSE handle
//! from its inode cache, where every open file's inode is.
//!
//! Why a child process, and never a thread of the daemon: the flush makes
//! requests to the daemon's own mounts. Once a FUSE worker has read such a
//! request, the kernel waits for its answer uninterruptibly, even for a
//! SIGKILLed caller. A daemon thread waiting so when the daemon is killed
//! keeps the dying process from ever finishing its exit, so it never closes
//! /dev/fuse, nobody answers, and the process and its mounts hang until an
//! administrator aborts the connection. The child holds no /dev/fuse
//! descriptor (every descriptor but stdio is closed on its exec), so a
//! killed daemon closes its connections, the child's pending request fails
//! with ENOTCONN and PR_SET_PDEATHSIG ends the child. The child is the
//! daemon's own binary re-executed (/proc/self/exe, which still names the
//! running image if the file was replaced) with the hidden argument
//! `FLUSH_COMMAND`: the binary must hand that to `flush_child_main`. The
//! targets travel on its stdin (`encode`), whose end is also the signal to
//! start, given only once its pid is listed; it answers with its exit
//! status and, on failure, one line on stderr.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use crate::backing;

/// The hidden first argument that makes the daemon's binary a flush child.
pub const FLUSH_COMMAND: &str = "__flush";

/// The most of a failed child's stderr that is kept for its error.
const MAX_MESSAGE: u64 = 4096;

/// Pids of the flush children running (each is single-threaded, so its pid
/// is also the thread id the kernel puts in its FUSE requests).
static FLUSHERS: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

fn flushers() -> MutexGuard<'static, Option<HashSet<u32>>> {
    FLUSHERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a request comes from one of the daemon's own flushes (`pid` is
/// the FUSE request's, which the kernel fills with the calling thread's id).
pub(crate) fn is_flusher(pid: u32) -> bool {
    flushers().as_ref().is_some_and(|set| set.contains(&pid))
}

fn unlist(pid: u32) {
    if let Some(set) = flushers().as_mut() {
        set.remove(&pid);
    }
}

/// A flush child, listed as a flusher until it is reaped. It is unlisted
/// before it is reaped: once reaped, its pid may go to an application
/// whose FSYNCs must not be mistaken for the daemon's.
struct Running(Option<Child>);

impl Running {
    fn listed(child: Child) -> Running {
        flushers()
            .get_or_insert_with(HashSet::new)
            .insert(child.id());
        Running(Some(child))
    }

    fn child(&mut self) -> io::Result<&mut Child> {
        self.0.as_mut().ok_or_else(gone)
    }

    fn reap(mut self) -> io::Result<ExitStatus> {
        let mut child = self.0.take().ok_or_else(gone)?;
        unlist(child.id());
        child.wait()
    }
}

fn gone() -> io::Error {
    io::Error::other("the flush child is gone")
}

impl Drop for Running {
    /// A child not reaped yet (a timeout) is killed and reaped on a thread
    /// of its own: a child waiting on an answer a FUSE worker is still
    /// working on dies only once that answer comes, and the set must not
    /// wait for it.
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        let pid = child.id();
        unlist(pid);
        let _ = child.kill();
        let reaper = thread::Builder::new()
            .name("flush-reaper".into())
            .spawn(move || child.wait());
        if let Err(e) = reaper {
            tracing::warn!("cannot reap the flush child {pid}: {e}");
        }
    }
}

/// Why a flush failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FlushError {
    #[error("starting the flush child: {0}")]
    Spawn(io::Error),
    #[error("flushing the files open for writing took longer than {0:?}")]
    Timeout(Duration),
    #[error("the flush child failed ({status}){}", if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    Failed { status: ExitStatus, message: String },
    #[error("feeding the flush child: {0}")]
    Feed(io::Error),
    #[error("reaping the flush child: {0}")]
    Reap(io::Error),
}

/// Flushes, for each live mountpoint, the files of those inode numbers, in
/// a child process, waiting at most `timeout`. An inode the kernel has
/// forgotten meanwhile was closed, and so written back.
///
/// The calling thread must outlive the child: the child's parent-death
/// signal follows the thread that spawned it, and this call returns only
/// once the child is reaped or killed.
pub(crate) fn flush(
    targets: Vec<(PathBuf, Vec<u64>)>,
    timeout: Duration,
) -> Result<(), FlushError> {
    if targets.iter().all(|(_, inos)| inos.is_empty()) {
        return Ok(());
    }
    let input = encode(&targets);
    let parent = std::process::id();
    let mut command = Command::new("/proc/self/exe");
    command
        .arg(FLUSH_COMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: the hook makes async-signal-safe syscalls only.
    unsafe { command.pre_exec(move || in_child_before_exec(parent)) };
    let mut running = Running::listed(command.spawn().map_err(FlushError::Spawn)?);
    let child = running.child().map_err(FlushError::Spawn)?;
    let (Some(mut stdin), Some(stderr)) = (child.stdin.take(), child.stderr.take()) else {
        return Err(FlushError::Spawn(io::Error::other(
            "no pipes to the flush child",
        )));
    };
    // Feeding and listening on a thread keep both under the timeout.
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("flush-pipes".into())
        .spawn(move || {
            let fed = stdin.write_all(&input);
            drop(stdin);
            let mut message = Vec::new();
            let _ = stderr.take(MAX_MESSAGE).read_to_end(&mut message);
            let _ = tx.send((fed, message));
        })
        .map_err(FlushError::Spawn)?;
    let (fed, message) = match rx.recv_timeout(timeout) {
        Ok(answer) => answer,
        Err(mpsc::RecvTimeoutError::Timeout) => return Err(FlushError::Timeout(timeout)),
        Err(mpsc::RecvTimeoutError::Disconnected) => (Ok(()), Vec::new()),
    };
    let status = running.reap().map_err(FlushError::Reap)?;
    if !status.success() {
        let message = String::from_utf8_lossy(&message);
        let message = message.lines().next().unwrap_or_default().to_string();
        return Err(FlushError::Failed { status, message });
    }
    fed.map_err(FlushError::Feed)
}

/// Runs in the forked child before it executes the binary again; only
/// async-signal-safe calls are allowed here.
fn in_child_before_exec(parent: u32) -> io::Result<()> {
    // SAFETY: prctl, getppid and close_range have no memory preconditions.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(io::Error::last_os_error());
        }
        // The daemon may have died before the signal was asked for.
        if libc::getppid() as u32 != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        // Every descriptor but stdio closes on exec, whoever opened it
        // without O_CLOEXEC: above all /dev/fuse, which would keep a
        // killed daemon's connections alive. (Closing them here would also
        // close the pipe std reports a failed exec through.)
        if libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The child's input: per target, the mountpoint's length (u32) and bytes,
/// the number of inodes (u32) and the inodes (u64), all little-endian.
fn encode(targets: &[(PathBuf, Vec<u64>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (mount, inos) in targets.iter().filter(|(_, inos)| !inos.is_empty()) {
        let mount = mount.as_os_str().as_bytes();
        out.extend_from_slice(&(mount.len() as u32).to_le_bytes());
        out.extend_from_slice(mount);
        out.extend_from_slice(&(inos.len() as u32).to_le_bytes());
        for ino in inos {
            out.extend_from_slice(&ino.to_le_bytes());
        }
    }
    out
}

fn decode(mut input: &[u8]) -> Option<Vec<(PathBuf, Vec<u64>)>> {
    fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = input.split_at_checked(n)?;
        *input = rest;
        Some(head)
    }
    fn u32_at(input: &mut &[u8]) -> Option<usize> {
        let bytes = take(input, 4)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(bytes)).ok()
    }
    let mut targets = Vec::new();
    while !input.is_empty() {
        let len = u32_at(&mut input)?;
        let mount = PathBuf::from(OsString::from_vec(take(&mut input, len)?.to_vec()));
        let count = u32_at(&mut input)?;
        let mut inos = Vec::with_capacity(count.min(input.len() / 8));
        for _ in 0..count {
            inos.push(u64::from_le_bytes(take(&mut input, 8)?.try_into().ok()?));
        }
        targets.push((mount, inos));
    }
    Some(targets)
}

/// Why the flush child failed.
#[derive(Debug, thiserror::Error)]
enum ChildError {
    #[error("reading the flush targets: {0}")]
    Input(io::Error),
    #[error("malformed flush targets")]
    Malformed,
    #[error("flushing inode {ino} of {}: {source}", mount.display())]
    File {
        mount: PathBuf,
        ino: u64,
        source: io::Error,
    },
}

/// The flush child: what the binary runs when its first argument is
/// `FLUSH_COMMAND`. Reads the targets from stdin, flushes them, and exits
/// 0, or 1 after one line on stderr.
pub fn flush_child_main() -> ExitCode {
    let mut input = Vec::new();
    let done = io::stdin()
        .lock()
        .read_to_end(&mut input)
        .map_err(ChildError::Input)
        .and_then(|_| decode(&input).ok_or(ChildError::Malformed))
        .and_then(|targets| flush_all(&targets));
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = e.to_string().replace('\n', " ");
            let _ = writeln!(io::stderr(), "{line}");
            ExitCode::FAILURE
        }
    }
}

fn flush_all(targets: &[(PathBuf, Vec<u64>)]) -> Result<(), ChildError> {
    for (mount, inos) in targets {
        let failed = |ino, source| ChildError::File {
            mount: mount.clone(),
            ino,
            source,
        };
        let root = open_root(mount).map_err(|e| failed(1, e))?;
        for &ino in inos {
            match flush_one(&root, ino) {
                Err(e) if !matches!(e.raw_os_error(), Some(libc::ESTALE | libc::ENOENT)) => {
                    return Err(failed(ino, e));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn open_root(mount: &Path) -> io::Result<File> {
    // Not O_PATH: open_by_handle_at refuses an O_PATH descriptor.
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(mount)
}

/// FUSE's file handle (fuse_encode_fh, type 0x81): the node id in two
/// 32-bit halves, then the generation, which the live mount always gives
/// as 0.
fn fuse_handle(ino: u64) -> Vec<u8> {
    const FILEID_FUSE_WITHOUT_PARENT: i32 = 0x81;
    let mut handle = Vec::with_capacity(20);
    handle.extend_from_slice(&12u32.to_ne_bytes());
    handle.extend_from_slice(&FILEID_FUSE_WITHOUT_PARENT.to_ne_bytes());
    handle.extend_from_slice(&((ino >> 32) as u32).to_ne_bytes());
    handle.extend_from_slice(&(ino as u32).to_ne_bytes());
    handle.extend_from_slice(&0u32.to_ne_bytes());
    handle
}

/// The file may have been closed (and so written back) since the daemon
/// listed it, and its number reused: then the number names nothing
/// (ESTALE, ENOENT), or something that is no regular file, which is looked
/// at through O_PATH and never opened (a device's open could do anything).
fn flush_one(root: &File, ino: u64) -> io::Result<()> {
    let found = backing::open_by_handle(root.as_fd(), &fuse_handle(ino), libc::O_PATH)?;
    if backing::fstat(found.as_fd())?.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Ok(());
    }
    let file = backing::reopen(found.as_fd(), libc::O_RDONLY | libc::O_NONBLOCK)?;
    File::from(file).sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_survive_the_pipe() {
        let targets = vec![
            (PathBuf::from("/mnt/a b"), vec![1, 2, u64::MAX]),
            (
                PathBuf::from(OsString::from_vec(b"/mnt/\xff\n".to_vec())),
                vec![7],
            ),
        ];
        let with_empty = [targets.clone(), vec![(PathBuf::from("/x"), vec![])]].concat();
        assert_eq!(decode(&encode(&with_empty)), Some(targets));
        assert_eq!(decode(&[]), Some(vec![]));
    }

    #[test]
    fn truncated_targets_are_refused() {
        let bytes = encode(&[(PathBuf::from("/mnt"), vec![1, 2])]);
        for cut in 1..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
    }
}
