//! What the daemon tells systemd when it runs as a `Type=notify` service
//! (systemd/umbra.service): READY once every volume is mounted and the
//! control socket serves, RELOADING and READY again around a reload
//! (SIGHUP), STOPPING once a signal asked it to stop. Without
//! NOTIFY_SOCKET (a terminal, a test) nothing is sent. It never decides
//! anything: a failure to notify is logged and the daemon goes on.

use sd_notify::NotifyState;

/// Everything is mounted and served.
pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// SIGHUP: the config is being read again; `ready` follows.
pub(crate) fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    // systemd matches RELOADING=1 with the reload it asked for by the
    // monotonic time it carries (Type=notify-reload needs it).
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// A signal asked the daemon to stop; it is unmounting.
pub(crate) fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("unmounting")]);
}

fn send(states: &[NotifyState<'_>]) {
    // Without NOTIFY_SOCKET this sends nothing and succeeds.
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("telling systemd {states:?}: {e}");
    }
}
