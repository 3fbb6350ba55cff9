//! SIGHUP: the config file read again, validated in full, and what can change without
//! touching the HSM put in place for calls that start from then on: the client list, the
//! wrapping-key policy, `policy.protection_modes`, the OCI endpoint allow-list and
//! identities, the `[destinations]` (their clients are made anew at first use), and the TLS certificate, key, client CA and CRL (for new connections; a call
//! on an open one is let through only if its certificate passes the new CA and CRL). Calls in flight finish under the settings they started with. A file that
//! fails any check is logged with the reason, and the old settings stay. Settings that need
//! the HSM, the listener, the runtime or the journal again (`[hsm]`, `policy.exportable`,
//! `policy.allow_hybrid`, `policy.min_wrapping_key_bits`, the `[server]` settings but the
//! clients and TLS files, `[journal]`, `[audit]`, `[metrics]`) are left as they are, and the
//! log names each one that changed. A reload warns as the start does (`caller_wrapping_keys
//! = "any"`).

use std::path::PathBuf;
use std::sync::Arc;

use super::auth::{Authenticator, Transport};
use super::{Bridge, Settings, notify};
use crate::Error;
use crate::config::Config;
use crate::journal::Journal;

/// The settings `cfg` gives, for `transport`, with the daemon's journal.
pub(super) fn settings(
    cfg: &Config,
    transport: Transport,
    journal: &Arc<Journal>,
) -> Result<Settings, Error> {
    let auth = Authenticator::new(transport, cfg.server.clients.clone());
    let wrapping_policy = crate::policy::WrappingKeyPolicy::load(&cfg.policy)?;
    let oci = crate::export::oci::OciSide::load(
        &cfg.oci,
        cfg.policy.min_wrapping_key_bits,
        journal.clone(),
    )?;
    let destinations = crate::clouds::Clouds::new(
        &cfg.destinations,
        cfg.policy.min_wrapping_key_bits,
        journal.clone(),
    );
    Ok(Settings::new(
        auth,
        &cfg.policy,
        wrapping_policy,
        (oci, destinations),
    ))
}

/// What a reload needs: where the config is, and what it was at start.
pub(super) struct Reloader {
    pub path: PathBuf,
    pub transport: Transport,
    /// The TLS of new connections, when the daemon speaks TLS.
    pub tls: Option<super::tls::TlsState>,
    pub journal: Arc<Journal>,
    /// The settings that need a restart, as they were at start.
    pub fixed: Vec<(&'static str, String)>,
}

/// The settings a reload cannot change, each by name with its value, for comparison:
/// `[hsm]` (the module, the token, the sessions, the login, the wrap mode),
/// `policy.exportable`, `policy.allow_hybrid` and `policy.min_wrapping_key_bits` (which the
/// HSM layer and WrapKey's key cache hold), every `[server]` setting but the clients and the
/// TLS files, `[journal]`, `[audit]`, `[metrics]`.
pub(super) fn fixed_parts(cfg: &Config) -> Vec<(&'static str, String)> {
    let s = &cfg.server;
    let v = |x: &dyn std::fmt::Debug| format!("{x:?}");
    vec![
        ("[hsm]", v(&cfg.hsm)),
        ("policy.exportable", v(&cfg.policy.exportable)),
        ("policy.allow_hybrid", v(&cfg.policy.allow_hybrid)),
        (
            "policy.min_wrapping_key_bits",
            v(&cfg.policy.min_wrapping_key_bits),
        ),
        ("server.listen", v(&s.listen)),
        ("server.plaintext", v(&s.plaintext)),
        ("server.max_queue", v(&s.max_queue)),
        ("server.shutdown_grace_secs", v(&s.shutdown_grace_secs)),
        ("server.max_connections", v(&s.max_connections)),
        (
            "server.max_connections_per_address",
            v(&s.max_connections_per_address),
        ),
        ("server.max_handshakes", v(&s.max_handshakes)),
        ("server.idle_timeout_secs", v(&s.idle_timeout_secs)),
        (
            "server.max_connection_age_secs",
            v(&s.max_connection_age_secs),
        ),
        (
            "server.tls_handshake_timeout_secs",
            v(&s.tls_handshake_timeout_secs),
        ),
        (
            "server.max_concurrent_streams",
            v(&s.max_concurrent_streams),
        ),
        ("server.io_threads", v(&s.io_threads)),
        ("server.health_listen", v(&s.health_listen)),
        ("[journal]", v(&cfg.journal)),
        ("[audit]", v(&cfg.audit.path)),
        (
            "[metrics]",
            v(&(&cfg.metrics.listen, cfg.metrics.key_labels)),
        ),
    ]
}

/// The names of the settings that differ between `now` and `then`.
fn changed(now: &[(&'static str, String)], then: &[(&'static str, String)]) -> Vec<&'static str> {
    now.iter()
        .zip(then)
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a.0)
        .collect()
}

impl Reloader {
    /// Reloads on every SIGHUP, for as long as the runtime runs.
    pub(super) fn spawn(self, bridge: Arc<Bridge>) {
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
        let restart = changed(&fixed_parts(&cfg), &self.fixed);
        if !restart.is_empty() {
            tracing::warn!(
                "SIGHUP: {} changed, which takes a restart: the value at start stays until then (the rest is reloaded)",
                restart.join(", ")
            );
        }
        super::server::warn_about_policy(&cfg);
        // Everything checked: now all of it at once.
        if let (Some(state), Some(cfg)) = (&self.tls, tls) {
            state.replace(cfg);
        }
        bridge.replace_settings(new);
        tracing::info!(config = %self.path.display(), clients = cfg.server.clients.len(), "SIGHUP: reloaded the client list, policy, OCI endpoints and identities, and the TLS certificate, key, client CA and CRL (new connections use them; calls on open ones are checked against the CA and CRL)");
        Ok(())
    }
}
