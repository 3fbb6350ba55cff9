//! SIGHUP: the config file read again, validated in full, and what can change without
//! touching the HSM put in place for calls that start from then on: the client list, the
//! wrapping-key policy, `policy.protection_modes`, the OCI endpoint allow-list and
//! identities, and the TLS certificate, key, client CA and CRL (for new connections; a call
//! on an open one is let through only if its certificate passes the new CA and CRL). Calls in flight finish under the settings they started with. A file that
//! fails any check is logged with the reason, and the old settings stay. Settings that need
//! the HSM, the listener, the runtime or the journal again (`[hsm]`, `policy.exportable`,
//! the `[server]` settings but the clients and TLS files, `[journal]`, `[audit]`,
//! `[metrics]`) are left as they are, and the log says that one changed.

use std::path::PathBuf;
use std::sync::Arc;

use super::auth::{Authenticator, Transport};
use super::{Bridge, Settings, notify};
use crate::Error;
use crate::config::Config;
use crate::journal::Journal;

/// The settings `cfg` gives, for `transport`, with the daemon's journal.
pub fn settings(
    cfg: &Config,
    transport: Transport,
    journal: &Arc<Journal>,
) -> Result<Settings, Error> {
    let auth = Authenticator::new(transport, cfg.server.clients.clone());
    let wrapping_policy = crate::policy::WrappingKeyPolicy::load(&cfg.policy)?;
    let oci =
        crate::import::OciSide::load(&cfg.oci, cfg.policy.min_wrapping_key_bits, journal.clone())?;
    Ok(Settings::new(auth, &cfg.policy, wrapping_policy, oci))
}

/// What a reload needs: where the config is, and what it was at start.
pub struct Reloader {
    pub path: PathBuf,
    pub transport: Transport,
    /// The TLS of new connections, when the daemon speaks TLS.
    pub tls: Option<super::tls::TlsState>,
    pub journal: Arc<Journal>,
    /// The parts that need a restart, as they were at start.
    pub fixed: String,
}

/// The parts of a config that a reload cannot change, for comparison: `[hsm]`,
/// `policy.exportable`, every `[server]` setting but the clients and the TLS files,
/// `[journal]`, `[audit]`, `[metrics]`.
pub fn fixed_parts(cfg: &Config) -> String {
    let s = &cfg.server;
    format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        cfg.hsm.module,
        cfg.hsm.token_name(),
        cfg.hsm.sessions,
        cfg.policy.exportable,
        s.listen,
        s.plaintext,
        s.max_queue,
        s.shutdown_grace_secs,
        (
            s.max_connections,
            s.max_connections_per_address,
            s.max_handshakes,
            s.idle_timeout_secs,
            s.max_connection_age_secs,
        ),
        s.tls_handshake_timeout_secs,
        s.max_concurrent_streams,
        s.io_threads,
        s.health_listen,
        cfg.journal.url,
        cfg.audit.path,
        (&cfg.metrics.listen, cfg.metrics.key_labels),
    )
}

impl Reloader {
    /// Reloads on every SIGHUP, for as long as the runtime runs.
    pub fn spawn(self, bridge: Arc<Bridge>) {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("no SIGHUP handler: the config cannot be reloaded without a restart");
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                notify::reloading();
                let status = match self.reload(&bridge) {
                    Ok(()) => "reloaded".to_string(),
                    Err(e) => {
                        tracing::error!(config = %self.path.display(), "SIGHUP: the config was not reloaded, the old settings stay: {e}");
                        format!("reload refused: {e}")
                    }
                };
                notify::reloaded(&status);
            }
        });
    }

    fn reload(&self, bridge: &Bridge) -> Result<(), Error> {
        let cfg = Config::load(&self.path)?;
        let new = settings(&cfg, self.transport, &self.journal)?;
        let tls = match &self.tls {
            Some(_) => Some(super::tls::server_config(&cfg.server)?),
            None => None,
        };
        if fixed_parts(&cfg) != self.fixed {
            tracing::warn!(
                "SIGHUP: [hsm], policy.exportable, a [server] setting other than the clients and TLS files, [journal], [audit] or [metrics] changed; those take a restart (the rest is reloaded)"
            );
        }
        // Everything checked: now all of it at once.
        if let (Some(state), Some(cfg)) = (&self.tls, tls) {
            state.replace(cfg);
        }
        bridge.replace_settings(new);
        tracing::info!(config = %self.path.display(), clients = cfg.server.clients.len(), "SIGHUP: reloaded the client list, policy, OCI endpoints and identities, and the TLS certificate, key, client CA and CRL (new connections use them; calls on open ones are checked against the CA and CRL)");
        Ok(())
    }
}
