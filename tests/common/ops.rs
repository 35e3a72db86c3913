//! Live operations as data: the `Op` list that the oracle generates,
//! applies to the umbra live mount and to a native reference directory
//! alike, prints in a replayable one-line-per-op text form and parses back.
//! Also the seeded generator of such lists. Nothing here talks to the
//! daemon: set creation, deletion and restarts are ops the runner handles.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use super::sys::{self, Errno, cstr, last_errno};

/// Open file slots an op list can hold across other ops.
pub const SLOTS: usize = 3;

/// A small seeded PRNG (SplitMix64): reproducible from one u64.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `num/den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// The bytes an op writes: a pure function of `seed` and `len`. Seed 0 is
/// zeros and seeds 1-3 a repeated byte (chunks a store may dedupe);
/// anything else is pseudo-random.
pub fn fill(seed: u64, len: usize) -> Vec<u8> {
    match seed {
        0 => vec![0; len],
        1..=3 => vec![seed as u8 * 0x41; len],
        _ => {
            let mut rng = Rng::new(seed);
            let mut out = Vec::with_capacity(len + 8);
            while out.len() < len {
                out.extend_from_slice(&rng.next_u64().to_le_bytes());
            }
            out.truncate(len);
            out
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameFlags {
    Plain,
    NoReplace,
    Exchange,
}

impl RenameFlags {
    fn raw(self) -> libc::c_uint {
        match self {
            RenameFlags::Plain => 0,
            RenameFlags::NoReplace => libc::RENAME_NOREPLACE,
            RenameFlags::Exchange => libc::RENAME_EXCHANGE,
        }
    }
}

/// One operation. Paths are relative to the volume root, `/`-separated,
/// without `..`; symlink targets are relative and never contain `..`, so
/// nothing an op list does can reach outside the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// open(O_CREAT|O_EXCL|O_WRONLY, mode)
    Create {
        path: String,
        mode: u32,
    },
    /// open(O_WRONLY) then pwrite at `offset`.
    Write {
        path: String,
        offset: u64,
        len: u64,
        seed: u64,
    },
    /// open(O_WRONLY|O_APPEND|O_CREAT) then write.
    Append {
        path: String,
        len: u64,
        seed: u64,
    },
    /// open(O_WRONLY|O_CREAT|O_TRUNC) then write.
    Overwrite {
        path: String,
        len: u64,
        seed: u64,
    },
    /// open(O_RDONLY) then pread; the outcome is the length and a hash.
    Read {
        path: String,
        offset: u64,
        len: u64,
    },
    Truncate {
        path: String,
        size: u64,
    },
    /// chmod(2), which follows symlinks.
    Chmod {
        path: String,
        mode: u32,
    },
    /// lchown(2).
    Chown {
        path: String,
        uid: u32,
        gid: u32,
    },
    /// utimensat(mtime only, AT_SYMLINK_NOFOLLOW).
    SetMtime {
        path: String,
        sec: i64,
        nsec: i64,
    },
    /// lsetxattr(`user.<name>`).
    SetXattr {
        path: String,
        name: String,
        len: u64,
        seed: u64,
    },
    RemoveXattr {
        path: String,
        name: String,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Unlink {
        path: String,
    },
    /// renameat2(from, to, flags).
    Rename {
        from: String,
        to: String,
        flags: RenameFlags,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    /// mknod(S_IFIFO | mode).
    Mkfifo {
        path: String,
        mode: u32,
    },
    /// open(O_RDWR) into a slot, closing what the slot held.
    Open {
        slot: usize,
        path: String,
    },
    FdWrite {
        slot: usize,
        offset: u64,
        len: u64,
        seed: u64,
    },
    FdRead {
        slot: usize,
        offset: u64,
        len: u64,
    },
    FdTruncate {
        slot: usize,
        size: u64,
    },
    Close {
        slot: usize,
    },
    /// `umbra create` (the runner's business).
    CreateSet,
    /// `umbra delete` of the n-th set this list created, if still there.
    DeleteSet {
        nth: usize,
    },
    /// Close every slot, stop the daemon, start it again.
    Restart,
}

impl Op {
    /// Ops the runner handles itself rather than applying to a tree.
    pub fn is_daemon_op(&self) -> bool {
        matches!(self, Op::CreateSet | Op::DeleteSet { .. } | Op::Restart)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Create { path, mode } => write!(f, "create {path} mode={mode:o}"),
            Op::Write {
                path,
                offset,
                len,
                seed,
            } => write!(f, "write {path} off={offset} len={len} seed={seed}"),
            Op::Append { path, len, seed } => write!(f, "append {path} len={len} seed={seed}"),
            Op::Overwrite { path, len, seed } => {
                write!(f, "overwrite {path} len={len} seed={seed}")
            }
            Op::Read { path, offset, len } => write!(f, "read {path} off={offset} len={len}"),
            Op::Truncate { path, size } => write!(f, "truncate {path} size={size}"),
            Op::Chmod { path, mode } => write!(f, "chmod {path} mode={mode:o}"),
            Op::Chown { path, uid, gid } => write!(f, "chown {path} uid={uid} gid={gid}"),
            Op::SetMtime { path, sec, nsec } => write!(f, "mtime {path} sec={sec} nsec={nsec}"),
            Op::SetXattr {
                path,
                name,
                len,
                seed,
            } => write!(f, "setxattr {path} name={name} len={len} seed={seed}"),
            Op::RemoveXattr { path, name } => write!(f, "rmxattr {path} name={name}"),
            Op::Mkdir { path, mode } => write!(f, "mkdir {path} mode={mode:o}"),
            Op::Rmdir { path } => write!(f, "rmdir {path}"),
            Op::Unlink { path } => write!(f, "unlink {path}"),
            Op::Rename { from, to, flags } => match flags {
                RenameFlags::Plain => write!(f, "rename {from} {to}"),
                RenameFlags::NoReplace => write!(f, "rename {from} {to} noreplace"),
                RenameFlags::Exchange => write!(f, "rename {from} {to} exchange"),
            },
            Op::Link { from, to } => write!(f, "link {from} {to}"),
            Op::Symlink { target, path } => write!(f, "symlink {target} {path}"),
            Op::Mkfifo { path, mode } => write!(f, "mkfifo {path} mode={mode:o}"),
            Op::Open { slot, path } => write!(f, "open {slot} {path}"),
            Op::FdWrite {
                slot,
                offset,
                len,
                seed,
            } => write!(f, "fdwrite {slot} off={offset} len={len} seed={seed}"),
            Op::FdRead { slot, offset, len } => write!(f, "fdread {slot} off={offset} len={len}"),
            Op::FdTruncate { slot, size } => write!(f, "fdtruncate {slot} size={size}"),
            Op::Close { slot } => write!(f, "close {slot}"),
            Op::CreateSet => write!(f, "set"),
            Op::DeleteSet { nth } => write!(f, "delete-set {nth}"),
            Op::Restart => write!(f, "restart"),
        }
    }
}

/// Parses one line of the text form `Display` prints.
pub fn parse_op(line: &str) -> Result<Op, String> {
    let mut words = line.split_whitespace();
    let verb = words.next().ok_or("empty line")?;
    let mut pos: Vec<&str> = Vec::new();
    let mut kv: BTreeMap<&str, &str> = BTreeMap::new();
    for w in words {
        match w.split_once('=') {
            Some((k, v)) => {
                kv.insert(k, v);
            }
            None => pos.push(w),
        }
    }
    let p = |i: usize| -> Result<String, String> {
        pos.get(i)
            .map(|s| s.to_string())
            .ok_or_else(|| format!("{line:?}: missing argument {}", i + 1))
    };
    let num = |k: &str| -> Result<u64, String> {
        kv.get(k)
            .ok_or_else(|| format!("{line:?}: missing {k}="))?
            .parse()
            .map_err(|e| format!("{line:?}: {k}: {e}"))
    };
    let inum = |k: &str| -> Result<i64, String> {
        kv.get(k)
            .ok_or_else(|| format!("{line:?}: missing {k}="))?
            .parse()
            .map_err(|e| format!("{line:?}: {k}: {e}"))
    };
    let mode = || -> Result<u32, String> {
        u32::from_str_radix(
            kv.get("mode")
                .ok_or_else(|| format!("{line:?}: missing mode="))?,
            8,
        )
        .map_err(|e| format!("{line:?}: mode: {e}"))
    };
    let slot = || -> Result<usize, String> {
        let s: usize = p(0)?.parse().map_err(|e| format!("{line:?}: slot: {e}"))?;
        if s < SLOTS {
            Ok(s)
        } else {
            Err(format!("{line:?}: slot {s} out of range"))
        }
    };
    let name = || -> Result<String, String> {
        kv.get("name")
            .map(|s| s.to_string())
            .ok_or_else(|| format!("{line:?}: missing name="))
    };
    Ok(match verb {
        "create" => Op::Create {
            path: p(0)?,
            mode: mode()?,
        },
        "write" => Op::Write {
            path: p(0)?,
            offset: num("off")?,
            len: num("len")?,
            seed: num("seed")?,
        },
        "append" => Op::Append {
            path: p(0)?,
            len: num("len")?,
            seed: num("seed")?,
        },
        "overwrite" => Op::Overwrite {
            path: p(0)?,
            len: num("len")?,
            seed: num("seed")?,
        },
        "read" => Op::Read {
            path: p(0)?,
            offset: num("off")?,
            len: num("len")?,
        },
        "truncate" => Op::Truncate {
            path: p(0)?,
            size: num("size")?,
        },
        "chmod" => Op::Chmod {
            path: p(0)?,
            mode: mode()?,
        },
        "chown" => Op::Chown {
            path: p(0)?,
            uid: num("uid")? as u32,
            gid: num("gid")? as u32,
        },
        "mtime" => Op::SetMtime {
            path: p(0)?,
            sec: inum("sec")?,
            nsec: inum("nsec")?,
        },
        "setxattr" => Op::SetXattr {
            path: p(0)?,
            name: name()?,
            len: num("len")?,
            seed: num("seed")?,
        },
        "rmxattr" => Op::RemoveXattr {
            path: p(0)?,
            name: name()?,
        },
        "mkdir" => Op::Mkdir {
            path: p(0)?,
            mode: mode()?,
        },
        "rmdir" => Op::Rmdir { path: p(0)? },
        "unlink" => Op::Unlink { path: p(0)? },
        "rename" => {
            let flags = match pos.get(2).copied() {
                None => RenameFlags::Plain,
                Some("noreplace") => RenameFlags::NoReplace,
                Some("exchange") => RenameFlags::Exchange,
                Some(other) => return Err(format!("{line:?}: unknown rename flag {other}")),
            };
            Op::Rename {
                from: p(0)?,
                to: p(1)?,
                flags,
            }
        }
        "link" => Op::Link {
            from: p(0)?,
            to: p(1)?,
        },
        "symlink" => Op::Symlink {
            target: p(0)?,
            path: p(1)?,
        },
        "mkfifo" => Op::Mkfifo {
            path: p(0)?,
            mode: mode()?,
        },
        "open" => Op::Open {
            slot: slot()?,
            path: p(1)?,
        },
        "fdwrite" => Op::FdWrite {
            slot: slot()?,
            offset: num("off")?,
            len: num("len")?,
            seed: num("seed")?,
        },
        "fdread" => Op::FdRead {
            slot: slot()?,
            offset: num("off")?,
            len: num("len")?,
        },
        "fdtruncate" => Op::FdTruncate {
            slot: slot()?,
            size: num("size")?,
        },
        "close" => Op::Close { slot: slot()? },
        "set" => Op::CreateSet,
        "delete-set" => Op::DeleteSet {
            nth: p(0)?.parse().map_err(|e| format!("{line:?}: {e}"))?,
        },
        "restart" => Op::Restart,
        other => return Err(format!("{line:?}: unknown op {other}")),
    })
}

/// The replayable text of an op list: one op a line.
pub fn format_ops(ops: &[Op]) -> String {
    ops.iter().map(|op| format!("{op}\n")).collect()
}

/// Parses `format_ops` output; blank lines and `#` comments are skipped.
pub fn parse_ops(text: &str) -> Result<Vec<Op>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(parse_op)
        .collect()
}

/// What an op returned when it did not fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Bytes written.
    Wrote(u64),
    /// Bytes read and the blake3 of them.
    Data {
        len: u64,
        hash: String,
    },
    /// The path opened fine but is no regular file (a fifo, a directory):
    /// the op did no I/O on it, so it could not block.
    NotRegular,
    /// A daemon op with nothing to do (e.g. deleting a set already gone).
    Skipped,
}

pub type OpResult = Result<Outcome, Errno>;

/// Formats a result with the errno's name.
pub fn show_result(r: &OpResult) -> String {
    match r {
        Ok(o) => format!("Ok({o:?})"),
        Err(e) => format!("Err({})", sys::errno_name(*e)),
    }
}

/// Open file slots; closed on drop.
#[derive(Debug, Default)]
pub struct Slots([Option<libc::c_int>; SLOTS]);

impl Slots {
    pub fn close_all(&mut self) {
        for slot in self.0.iter_mut() {
            if let Some(fd) = slot.take() {
                // SAFETY: we own this fd.
                unsafe { libc::close(fd) };
            }
        }
    }

    pub fn open(&self) -> [bool; SLOTS] {
        let mut out = [false; SLOTS];
        for (o, s) in out.iter_mut().zip(self.0.iter()) {
            *o = s.is_some();
        }
        out
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        self.close_all();
    }
}

struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own this fd.
        unsafe { libc::close(self.0) };
    }
}

fn open(path: &Path, flags: libc::c_int, mode: u32) -> Result<Fd, Errno> {
    let c = cstr(path);
    // SAFETY: valid path; O_NONBLOCK keeps a fifo from blocking the test.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            flags | libc::O_NONBLOCK | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        Err(last_errno())
    } else {
        Ok(Fd(fd))
    }
}

fn is_regular(fd: libc::c_int) -> Result<bool, Errno> {
    // SAFETY: an all-zero stat is a valid out-buffer for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; st is writable.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(last_errno());
    }
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFREG)
}

/// pwrite (or write, when `offset` is None) of all of `data`.
fn write_all(fd: libc::c_int, offset: Option<u64>, data: &[u8]) -> Result<u64, Errno> {
    let mut done = 0usize;
    while done < data.len() {
        let rest = &data[done..];
        // SAFETY: fd is open; rest is a live slice.
        let n = unsafe {
            match offset {
                Some(off) => libc::pwrite(
                    fd,
                    rest.as_ptr().cast(),
                    rest.len(),
                    (off + done as u64) as libc::off_t,
                ),
                None => libc::write(fd, rest.as_ptr().cast(), rest.len()),
            }
        };
        if n < 0 {
            return Err(last_errno());
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    Ok(done as u64)
}

fn read_at(fd: libc::c_int, offset: u64, len: u64) -> Result<Outcome, Errno> {
    let mut buf = vec![0u8; len as usize];
    let mut done = 0usize;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: fd is open; rest is writable for its length.
        let n = unsafe {
            libc::pread(
                fd,
                rest.as_mut_ptr().cast(),
                rest.len(),
                (offset + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            return Err(last_errno());
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    buf.truncate(done);
    Ok(Outcome::Data {
        len: done as u64,
        hash: blake3::hash(&buf).to_hex()[..16].to_string(),
    })
}

fn rc(r: libc::c_int) -> OpResult {
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(Outcome::Done)
    }
}

fn done(r: Result<(), Errno>) -> OpResult {
    r.map(|()| Outcome::Done)
}

fn slot_fd(slots: &Slots, slot: usize) -> Result<libc::c_int, Errno> {
    slots.0.get(slot).copied().flatten().ok_or(libc::EBADF)
}

/// Applies `op` to the tree at `root`. Daemon ops are the runner's: they
/// give `Skipped` here.
pub fn apply(op: &Op, root: &Path, slots: &mut Slots) -> OpResult {
    let at = |rel: &str| -> PathBuf { root.join(rel) };
    match op {
        Op::Create { path, mode } => open(
            &at(path),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
            *mode,
        )
        .map(|_| Outcome::Done),
        Op::Write {
            path,
            offset,
            len,
            seed,
        } => {
            let fd = open(&at(path), libc::O_WRONLY, 0)?;
            if !is_regular(fd.0)? {
                return Ok(Outcome::NotRegular);
            }
            write_all(fd.0, Some(*offset), &fill(*seed, *len as usize)).map(Outcome::Wrote)
        }
        Op::Append { path, len, seed } => {
            let fd = open(
                &at(path),
                libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT,
                0o644,
            )?;
            if !is_regular(fd.0)? {
                return Ok(Outcome::NotRegular);
            }
            write_all(fd.0, None, &fill(*seed, *len as usize)).map(Outcome::Wrote)
        }
        Op::Overwrite { path, len, seed } => {
            let fd = open(
                &at(path),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                0o644,
            )?;
            if !is_regular(fd.0)? {
                return Ok(Outcome::NotRegular);
            }
            write_all(fd.0, None, &fill(*seed, *len as usize)).map(Outcome::Wrote)
        }
        Op::Read { path, offset, len } => {
            let fd = open(&at(path), libc::O_RDONLY, 0)?;
            if !is_regular(fd.0)? {
                return Ok(Outcome::NotRegular);
            }
            read_at(fd.0, *offset, *len)
        }
        Op::Truncate { path, size } => {
            let c = cstr(&at(path));
            // SAFETY: valid path.
            rc(unsafe { libc::truncate(c.as_ptr(), *size as libc::off_t) })
        }
        Op::Chmod { path, mode } => {
            let c = cstr(&at(path));
            // SAFETY: valid path.
            rc(unsafe { libc::chmod(c.as_ptr(), *mode as libc::mode_t) })
        }
        Op::Chown { path, uid, gid } => done(sys::lchown(&at(path), *uid, *gid)),
        Op::SetMtime { path, sec, nsec } => done(sys::set_mtime(&at(path), *sec, *nsec)),
        Op::SetXattr {
            path,
            name,
            len,
            seed,
        } => done(sys::lsetxattr(
            &at(path),
            &format!("user.{name}"),
            &fill(*seed, *len as usize),
        )),
        Op::RemoveXattr { path, name } => {
            done(sys::lremovexattr(&at(path), &format!("user.{name}")))
        }
        Op::Mkdir { path, mode } => {
            let c = cstr(&at(path));
            // SAFETY: valid path.
            rc(unsafe { libc::mkdir(c.as_ptr(), *mode as libc::mode_t) })
        }
        Op::Rmdir { path } => {
            let c = cstr(&at(path));
            // SAFETY: valid path.
            rc(unsafe { libc::rmdir(c.as_ptr()) })
        }
        Op::Unlink { path } => {
            let c = cstr(&at(path));
            // SAFETY: valid path.
            rc(unsafe { libc::unlink(c.as_ptr()) })
        }
        Op::Rename { from, to, flags } => done(sys::renameat2(&at(from), &at(to), flags.raw())),
        Op::Link { from, to } => {
            let (a, b) = (cstr(&at(from)), cstr(&at(to)));
            // SAFETY: valid paths.
            rc(unsafe { libc::link(a.as_ptr(), b.as_ptr()) })
        }
        Op::Symlink { target, path } => {
            let t = CString::new(target.as_bytes()).expect("no NUL in targets");
            let c = cstr(&at(path));
            // SAFETY: valid strings.
            rc(unsafe { libc::symlink(t.as_ptr(), c.as_ptr()) })
        }
        Op::Mkfifo { path, mode } => done(sys::mknod_fifo(&at(path), *mode)),
        Op::Open { slot, path } => {
            if let Some(old) = slots.0[*slot].take() {
                // SAFETY: we own this fd.
                unsafe { libc::close(old) };
            }
            let fd = open(&at(path), libc::O_RDWR, 0)?;
            let raw = fd.0;
            std::mem::forget(fd);
            slots.0[*slot] = Some(raw);
            Ok(Outcome::Done)
        }
        Op::FdWrite {
            slot,
            offset,
            len,
            seed,
        } => {
            let fd = slot_fd(slots, *slot)?;
            if !is_regular(fd)? {
                return Ok(Outcome::NotRegular);
            }
            write_all(fd, Some(*offset), &fill(*seed, *len as usize)).map(Outcome::Wrote)
        }
        Op::FdRead { slot, offset, len } => {
            let fd = slot_fd(slots, *slot)?;
            if !is_regular(fd)? {
                return Ok(Outcome::NotRegular);
            }
            read_at(fd, *offset, *len)
        }
        Op::FdTruncate { slot, size } => {
            let fd = slot_fd(slots, *slot)?;
            // SAFETY: fd is open.
            rc(unsafe { libc::ftruncate(fd, *size as libc::off_t) })
        }
        Op::Close { slot } => {
            let fd = slots.0[*slot].take().ok_or(libc::EBADF)?;
            // SAFETY: we own this fd.
            rc(unsafe { libc::close(fd) })
        }
        Op::CreateSet | Op::DeleteSet { .. } | Op::Restart => Ok(Outcome::Skipped),
    }
}

/// What the generator sees of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub path: String,
    pub kind: NodeKind,
    pub size: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// Every path under `root` (root excluded), sorted, so choices made from it
/// do not depend on readdir order.
pub fn scan(root: &Path) -> Vec<Node> {
    let mut out = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let full = if dir.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&dir)
        };
        let Ok(rd) = fs::read_dir(&full) else {
            continue;
        };
        for dirent in rd.flatten() {
            let name = dirent.file_name().to_string_lossy().into_owned();
            let rel = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            let Ok(meta) = fs::symlink_metadata(root.join(&rel)) else {
                continue;
            };
            let kind = if meta.is_file() {
                NodeKind::File
            } else if meta.is_dir() {
                stack.push(rel.clone());
                NodeKind::Dir
            } else if meta.file_type().is_symlink() {
                NodeKind::Symlink
            } else {
                NodeKind::Other
            };
            out.push(Node {
                path: rel,
                kind,
                size: meta.len(),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Knobs of the generator.
#[derive(Clone, Debug)]
pub struct GenConfig {
    /// One set every this many ops, on average.
    pub set_every: u64,
    /// One daemon restart every this many ops, on average (0: never).
    pub restart_every: u64,
    /// One deletion of an older set every this many ops, on average (0: never).
    pub delete_every: u64,
    /// No file grows past this size.
    pub max_file: u64,
    /// Above this many bytes in all files, the generator shrinks the tree.
    pub max_total: u64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            set_every: 120,
            restart_every: 900,
            delete_every: 1500,
            max_file: 6 << 20,
            max_total: 8 << 20,
        }
    }
}

const NAMES: &[&str] = &["a", "b", "c", "d", "e", "f", "g", "d0", "d1", "d2"];
const TARGETS: &[&str] = &[
    "a", "b", "c", "d0", "d1", "d0/a", "d1/b", "missing", "d0/d1/c",
];
const MODES: &[u32] = &[
    0o644, 0o600, 0o755, 0o700, 0o444, 0o640, 0o750, 0o2755, 0o4755, 0o1777, 0o000, 0o777,
];
const UIDS: &[u32] = &[0, 1000, 1234, 65534];
const GIDS: &[u32] = &[0, 100, 5678, 65534];
const XATTRS: &[&str] = &["a", "b", "c", "long.name.here"];

/// The seeded generator of op lists. It looks at the reference tree before
/// each op so that most ops hit existing paths, and some deliberately fail.
pub struct Generator {
    rng: Rng,
    cfg: GenConfig,
    sets: usize,
}

impl Generator {
    pub fn new(seed: u64, cfg: GenConfig) -> Generator {
        Generator {
            rng: Rng::new(seed),
            cfg,
            sets: 0,
        }
    }

    /// The next op given the reference tree and which slots are open.
    pub fn next(&mut self, reference: &Path, open: [bool; SLOTS]) -> Op {
        let tree = scan(reference);
        let r = &mut self.rng;
        if r.chance(1, self.cfg.set_every) {
            self.sets += 1;
            return Op::CreateSet;
        }
        if self.cfg.restart_every > 0 && r.chance(1, self.cfg.restart_every) {
            return Op::Restart;
        }
        if self.cfg.delete_every > 0 && self.sets > 1 && r.chance(1, self.cfg.delete_every) {
            return Op::DeleteSet {
                nth: r.below(self.sets as u64 - 1) as usize,
            };
        }
        let total: u64 = tree
            .iter()
            .filter(|n| n.kind == NodeKind::File)
            .map(|n| n.size)
            .sum();
        if total > self.cfg.max_total && r.chance(1, 2) {
            // Shrink the biggest file.
            if let Some(big) = tree
                .iter()
                .filter(|n| n.kind == NodeKind::File)
                .max_by_key(|n| n.size)
            {
                return if r.chance(1, 2) {
                    Op::Unlink {
                        path: big.path.clone(),
                    }
                } else {
                    Op::Truncate {
                        path: big.path.clone(),
                        size: r.below(big.size / 4 + 1),
                    }
                };
            }
        }
        let slot_open: Vec<usize> = (0..SLOTS).filter(|s| open[*s]).collect();
        let weights: &[(u64, u8)] = &[
            (16, 0),                                        // write
            (5, 1),                                         // create
            (5, 2),                                         // append
            (4, 3),                                         // overwrite
            (7, 4),                                         // read
            (6, 5),                                         // truncate
            (3, 6),                                         // chmod
            (2, 7),                                         // chown
            (3, 8),                                         // mtime
            (3, 9),                                         // setxattr
            (2, 10),                                        // rmxattr
            (5, 11),                                        // mkdir
            (3, 12),                                        // rmdir
            (5, 13),                                        // unlink
            (8, 14),                                        // rename
            (3, 15),                                        // link
            (3, 16),                                        // symlink
            (1, 17),                                        // mkfifo
            (3, 18),                                        // open
            (if slot_open.is_empty() { 1 } else { 7 }, 19), // fdwrite
            (if slot_open.is_empty() { 0 } else { 3 }, 20), // fdread
            (if slot_open.is_empty() { 0 } else { 2 }, 21), // fdtruncate
            (if slot_open.is_empty() { 0 } else { 2 }, 22), // close
        ];
        let sum: u64 = weights.iter().map(|w| w.0).sum();
        let mut roll = self.rng.below(sum);
        let mut which = 0;
        for (w, k) in weights {
            if roll < *w {
                which = *k;
                break;
            }
            roll -= w;
        }
        let big_ok = total < self.cfg.max_total;
        let file = |g: &mut Generator| g.pick_path(&tree, Some(NodeKind::File));
        let any = |g: &mut Generator| g.pick_path(&tree, None);
        let dir = |g: &mut Generator| g.pick_path(&tree, Some(NodeKind::Dir));
        match which {
            0 => {
                let path = file(self);
                let size = tree.iter().find(|n| n.path == path).map_or(0, |n| n.size);
                let len = self.write_len(big_ok);
                let offset = self.offset(size, len);
                Op::Write {
                    path,
                    offset,
                    len,
                    seed: self.data_seed(),
                }
            }
            1 => Op::Create {
                path: self.new_path(&tree),
                mode: *self.rng.pick(MODES),
            },
            2 => {
                let path = file(self);
                let len = self.write_len(big_ok).min(300_000);
                Op::Append {
                    path,
                    len,
                    seed: self.data_seed(),
                }
            }
            3 => {
                let path = file(self);
                let len = self.write_len(big_ok);
                Op::Overwrite {
                    path,
                    len,
                    seed: self.data_seed(),
                }
            }
            4 => {
                let path = file(self);
                let size = tree.iter().find(|n| n.path == path).map_or(0, |n| n.size);
                let offset = if self.rng.chance(1, 8) {
                    size + 10
                } else {
                    self.rng.below(size + 1)
                };
                Op::Read {
                    path,
                    offset,
                    len: self.rng.range(1, 300_000),
                }
            }
            5 => {
                let path = file(self);
                let size = tree.iter().find(|n| n.path == path).map_or(0, |n| n.size);
                let new = match self.rng.below(10) {
                    0..=2 => 0,
                    3..=5 => self.rng.below(size + 1),
                    6..=7 => (size + self.rng.range(1, 1 << 20)).min(self.cfg.max_file),
                    _ => (self.rng.below(size / 65536 + 2) * 65536).min(self.cfg.max_file),
                };
                Op::Truncate { path, size: new }
            }
            6 => Op::Chmod {
                path: self.meta_path(&tree),
                mode: *self.rng.pick(MODES),
            },
            7 => Op::Chown {
                path: self.meta_path(&tree),
                uid: *self.rng.pick(UIDS),
                gid: *self.rng.pick(GIDS),
            },
            8 => {
                let nsec = if self.rng.chance(1, 3) {
                    0
                } else {
                    self.rng.below(1_000_000_000) as i64
                };
                Op::SetMtime {
                    path: self.meta_path(&tree),
                    sec: self.rng.below(2_000_000_000) as i64,
                    nsec,
                }
            }
            9 => {
                let len = if self.rng.chance(1, 10) {
                    0
                } else {
                    self.rng.range(1, 256)
                };
                Op::SetXattr {
                    path: self.meta_path(&tree),
                    name: self.rng.pick(XATTRS).to_string(),
                    len,
                    seed: self.data_seed(),
                }
            }
            10 => Op::RemoveXattr {
                path: self.meta_path(&tree),
                name: self.rng.pick(XATTRS).to_string(),
            },
            11 => Op::Mkdir {
                path: self.new_path(&tree),
                mode: *self.rng.pick(&[0o755, 0o700, 0o2775, 0o1777]),
            },
            12 => Op::Rmdir { path: dir(self) },
            13 => Op::Unlink { path: any(self) },
            14 => {
                let from = any(self);
                let to = if self.rng.chance(1, 2) {
                    any(self)
                } else {
                    self.new_path(&tree)
                };
                let flags = match self.rng.below(10) {
                    0..=6 => RenameFlags::Plain,
                    7..=8 => RenameFlags::Exchange,
                    _ => RenameFlags::NoReplace,
                };
                Op::Rename { from, to, flags }
            }
            15 => {
                let from = file(self);
                let to = if self.rng.chance(1, 5) {
                    any(self)
                } else {
                    self.new_path(&tree)
                };
                Op::Link { from, to }
            }
            16 => {
                let target = if self.rng.chance(1, 2) || tree.is_empty() {
                    self.rng.pick(TARGETS).to_string()
                } else {
                    self.rng.pick(&tree).path.clone()
                };
                Op::Symlink {
                    target,
                    path: self.new_path(&tree),
                }
            }
            17 => Op::Mkfifo {
                path: self.new_path(&tree),
                mode: 0o644,
            },
            18 => Op::Open {
                slot: self.rng.below(SLOTS as u64) as usize,
                path: file(self),
            },
            19..=22 => {
                let slot = if slot_open.is_empty() || self.rng.chance(1, 20) {
                    self.rng.below(SLOTS as u64) as usize
                } else {
                    *self.rng.pick(&slot_open)
                };
                match which {
                    19 => {
                        let len = self.write_len(big_ok);
                        let size = self.rng.below(1 << 20);
                        let offset = self.offset(size, len);
                        Op::FdWrite {
                            slot,
                            offset,
                            len,
                            seed: self.data_seed(),
                        }
                    }
                    20 => Op::FdRead {
                        slot,
                        offset: self.rng.below(2 << 20),
                        len: self.rng.range(1, 300_000),
                    },
                    21 => {
                        let size = if self.rng.chance(1, 3) {
                            0
                        } else {
                            self.rng.below(3 << 20)
                        };
                        Op::FdTruncate { slot, size }
                    }
                    _ => Op::Close { slot },
                }
            }
            _ => unreachable!("weights name ops 0..=22"),
        }
    }

    fn data_seed(&mut self) -> u64 {
        // Mostly fresh random bytes; sometimes zeros or a repeated byte.
        match self.rng.below(20) {
            0 => 0,
            1 => self.rng.range(1, 3),
            _ => self.rng.range(4, u64::MAX >> 1),
        }
    }

    fn write_len(&mut self, big_ok: bool) -> u64 {
        match self.rng.below(100) {
            0..=59 => self.rng.range(1, 4096),
            60..=84 => self.rng.range(4097, 70_000),
            85..=96 => self.rng.range(70_001, 600_000),
            _ if big_ok => self.rng.range(600_001, 4 << 20),
            _ => self.rng.range(1, 4096),
        }
    }

    /// An offset for a write of `len` into a file of `size`: inside, at the
    /// end, near a 64 KiB boundary, or past the end (sparse).
    fn offset(&mut self, size: u64, len: u64) -> u64 {
        let off = match self.rng.below(20) {
            0..=9 => self.rng.below(size + 1),
            10..=13 => size,
            14..=16 => {
                let block = self.rng.below(size / 65536 + 2) * 65536;
                (block + self.rng.range(0, 16)).saturating_sub(8)
            }
            _ => size + self.rng.range(1, 2 << 20),
        };
        off.min(self.cfg.max_file.saturating_sub(len))
    }

    /// Mostly an existing path of `kind` (any kind when None), otherwise a
    /// fresh or random one (which may not exist: errors are tested too).
    fn pick_path(&mut self, tree: &[Node], kind: Option<NodeKind>) -> String {
        let candidates: Vec<&Node> = tree
            .iter()
            .filter(|n| kind.is_none_or(|k| n.kind == k))
            .collect();
        if !candidates.is_empty() && !self.rng.chance(1, 6) {
            return self.rng.pick(&candidates).path.clone();
        }
        self.new_path(tree)
    }

    /// Like `pick_path(None)`, but sometimes the root, for metadata ops.
    fn meta_path(&mut self, tree: &[Node]) -> String {
        if self.rng.chance(1, 15) {
            ".".to_string()
        } else {
            self.pick_path(tree, None)
        }
    }

    /// A name from a small pool in an existing directory (or the root), so
    /// that new paths collide with old ones often.
    fn new_path(&mut self, tree: &[Node]) -> String {
        let dirs: Vec<&Node> = tree
            .iter()
            .filter(|n| n.kind == NodeKind::Dir && n.path.matches('/').count() < 2)
            .collect();
        let name = *self.rng.pick(NAMES);
        if dirs.is_empty() || self.rng.chance(1, 3) {
            name.to_string()
        } else {
            format!("{}/{name}", self.rng.pick(&dirs).path)
        }
    }
}
