//! How the coordinator talks to one writer: send an event, wait for its
//! reply until a deadline. [`SocketLink`] is a registered connection on the
//! control socket; the exec writer (exec.rs) is another link; tests use
//! fakes. A link never decides what a reply means for the set.

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::protocol::{EventMessage, MAX_LINE, Reply};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("disconnected")]
    Disconnected,
    #[error("malformed reply: {0}")]
    Malformed(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The instant `timeout` from now. A timeout too long for the clock (a
/// writer asking for 2^64 - 1 seconds) is as good as no deadline: it is
/// clamped to a century rather than overflowing.
pub fn deadline_in(timeout: Duration) -> Instant {
    after(Instant::now(), timeout)
}

/// `start + timeout`, clamped as `deadline_in` is.
pub fn after(start: Instant, timeout: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
    start
        .checked_add(timeout.min(CENTURY))
        .or_else(|| start.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(start)
}

/// One writer as the coordinator sees it.
pub trait WriterLink: Send {
    /// Sends `event`; does not wait for the answer.
    fn send(&mut self, event: &EventMessage) -> Result<(), LinkError>;
    /// Waits for the reply to the last event sent, until `deadline`.
    fn recv(&mut self, deadline: Instant) -> Result<Reply, LinkError>;
    /// Whether the writer is still there (without waiting).
    fn alive(&mut self) -> bool;
    /// "socket" or "exec", for `umbra writers`.
    fn kind(&self) -> &'static str;
    /// Whether the link is still usable after an error. A socket writer
    /// that timed out, hung up or sent nonsense is dropped and must
    /// register again; a program run per event is simply run again.
    fn survives_errors(&self) -> bool {
        false
    }
}

/// A writer connected to the control socket.
pub struct SocketLink {
    reader: BufReader<UnixStream>,
    stream: UnixStream,
}

impl SocketLink {
    /// A link over a connection whose registration was already read
    /// through `reader` (which may hold bytes the writer sent after it).
    pub fn new(reader: BufReader<UnixStream>) -> io::Result<SocketLink> {
        let stream = reader.get_ref().try_clone()?;
        Ok(SocketLink { reader, stream })
    }
}

impl WriterLink for SocketLink {
    fn send(&mut self, event: &EventMessage) -> Result<(), LinkError> {
        self.stream
            .set_write_timeout(Some(Duration::from_secs(5)))?;
        write_line(&mut self.stream, event).map_err(|e| match e.kind() {
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => LinkError::Disconnected,
            _ => LinkError::Io(e),
        })
    }

    fn recv(&mut self, deadline: Instant) -> Result<Reply, LinkError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LinkError::Timeout(Duration::ZERO));
        }
        self.stream.set_read_timeout(Some(left))?;
        let started = Instant::now();
        match read_line(&mut self.reader) {
            Ok(Some(line)) => serde_json::from_slice(&line)
                .map_err(|e| LinkError::Malformed(format!("{e}: {}", preview(&line)))),
            Ok(None) => Err(LinkError::Disconnected),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(LinkError::Timeout(started.elapsed()))
            }
            Err(e) if e.kind() == ErrorKind::InvalidData => {
                Err(LinkError::Malformed(e.to_string()))
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Err(LinkError::Disconnected),
            Err(e) => Err(LinkError::Io(e)),
        }
    }

    fn alive(&mut self) -> bool {
        if !self.reader.buffer().is_empty() {
            return true;
        }
        let mut byte = 0u8;
        // SAFETY: a one-byte peek into a local buffer on a valid socket.
        let n = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                (&raw mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n > 0 || (n < 0 && io::Error::last_os_error().kind() == ErrorKind::WouldBlock)
    }

    fn kind(&self) -> &'static str {
        "socket"
    }
}

fn preview(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut short: String = text.chars().take(80).collect();
    if short.len() < text.len() {
        short.push_str("...");
    }
    short
}

/// Reads one line of at most [`MAX_LINE`] bytes, without its newline, or
/// `None` at the end of the stream. A longer line is `InvalidData`.
pub fn read_line(reader: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let cap = (MAX_LINE as u64).saturating_add(1);
    if Read::take(&mut *reader, cap).read_until(b'\n', &mut line)? == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > MAX_LINE {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            format!("line longer than {MAX_LINE} bytes"),
        ));
    }
    Ok(Some(line))
}

/// Writes `message` as one JSON line and flushes.
pub fn write_line(writer: &mut impl Write, message: &impl Serialize) -> io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line)?;
    writer.flush()
}
