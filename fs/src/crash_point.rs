//! Named points where a test may end the daemon as a crash would, to leave
//! exactly the state a crash between two steps leaves (random kills, as in
//! tests/crash.rs, rarely land in a window two syscalls wide).
//!
//! Only in builds with debug assertions (the tests' build): a release
//! build never reads the variable. Never used for anything but ending the
//! process.

/// Ends the process with SIGKILL, as a crash would (no unwinding, no
/// unmount, no core), when `UMBRA_CRASH_AT` names `point`.
#[cfg(debug_assertions)]
pub(crate) fn crash_point(point: &str) {
    if std::env::var_os("UMBRA_CRASH_AT").is_some_and(|at| at == point) {
        // SAFETY: plain syscalls on this process.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

#[cfg(not(debug_assertions))]
pub(crate) fn crash_point(_point: &str) {}
