//! systemd's service notifications (`Type=notify`, deploy/systemd/hsm-bridge.service):
//! READY once the daemon listens, RELOADING around a reload, STOPPING at shutdown, and the
//! watchdog's keep-alive when `WatchdogSec=` is set. Without `$NOTIFY_SOCKET` every call is
//! a no-op; a failed notification is logged, never fatal.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("sd_notify: {e}");
    }
}

/// The daemon is serving at `addr`.
pub(super) fn ready(addr: &str) {
    send(&[
        NotifyState::Ready,
        NotifyState::Status(&format!("serving on {addr}")),
    ]);
}

/// A reload starts (systemd 253 and later want the monotonic time with it).
pub(super) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// A reload is done (or was refused, keeping the old settings): ready again.
pub(super) fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Shutdown has begun.
pub(super) fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// With `WatchdogSec=`, a keep-alive at half the interval for as long as the runtime runs:
/// it says the daemon's event loop is alive (the token's health is the health service's).
pub(super) fn spawn_watchdog() {
    let Some(every) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (every / 2).max(Duration::from_millis(100));
    tracing::info!(every_ms = every.as_millis() as u64, "systemd watchdog on");
    tokio::spawn(async move {
        loop {
            send(&[NotifyState::Watchdog]);
            tokio::time::sleep(every).await;
        }
    });
}
