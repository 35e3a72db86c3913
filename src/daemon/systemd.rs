//! What the daemon tells systemd when it runs as a `Type=notify` service
//! (systemd/umbra.service): READY once every volume is mounted and the
//! control socket serves, STOPPING once a signal asked it to stop. Without
//! NOTIFY_SOCKET (a terminal, a test) nothing is sent. It never decides
//! anything: a failure to notify is logged and the daemon goes on.

use sd_notify::NotifyState;

/// Everything is mounted and served.
pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
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
