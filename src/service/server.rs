//! `hsm-bridge serve`: opens the token (login, self-test) before any thread starts, then
//! serves `KeySourceBridge`, `grpc.health.v1.Health` and server reflection until SIGTERM or
//! SIGINT; then stops accepting, lets calls in flight finish (bounded by
//! `server.shutdown_grace_secs`), closes the sessions, logs out and finalises the module.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Server;
use tonic_health::ServingStatus;

use super::Bridge;
use super::audit::Audit;
use super::auth::{Authenticator, Transport};
use super::limit;
use crate::Error;
use crate::config::{Config, Listen};
use crate::hsm::Hsm;
use crate::proto::key_source_bridge_server::KeySourceBridgeServer;

/// Largest request accepted; the biggest legitimate one (a 16 KiB PEM) is far below.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// The service name health reports on, besides "".
const SERVICE_NAME: &str = "hsmbridge.v1.KeySourceBridge";
/// The health service name that follows the process, not the token (liveness).
const PROCESS_SERVICE: &str = "hsm-bridge.process";
/// How often the token is checked for the health service.
const HEALTH_EVERY: Duration = Duration::from_secs(5);

/// Runs the daemon until a signal; `Ok` after a clean shutdown.
pub fn serve(cfg: Config) -> Result<(), Error> {
    let listen = cfg.server.listen()?;
    let tls = match &listen {
        Listen::Tcp(_) if !cfg.server.plaintext => Some(super::tls::TlsState::new(
            super::tls::server_config(&cfg.server)?,
        )),
        _ => None,
    };
    let transport = match (&listen, &tls) {
        (_, Some(_)) => Transport::Tls,
        (Listen::Unix(_), None) => Transport::Unix,
        (Listen::Tcp(_), None) => Transport::Loopback,
    };
    let audit = Arc::new(Audit::open(&cfg.audit.path)?);
    let journal = crate::journal::Journal::new(&cfg.journal)?;
    let settings = super::reload::settings(&cfg, transport, &journal)?;
    warn_at_start(&cfg, &settings.auth, transport);
    // Opened before the runtime starts threads: the module's environment is set here.
    let hsm = Arc::new(Hsm::open(&cfg.hsm, &cfg.policy)?);
    tracing::info!(mode = %hsm.mode(), sessions = hsm.sessions(), "self-test passed");
    // Without the key that authenticates its records, the journal could be made to send
    // what a database writer chose: no start.
    journal.set_key(crate::journal::Journal::key_from(&cfg.journal, &hsm)?);
    tracing::info!(memory = %crate::hardening::memory_report(), "secrets");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.server.io_threads)
        .enable_all()
        .build()
        .map_err(|e| Error::Io(format!("tokio runtime: {e}")))?;
    // A journal that is down is reported, and refuses imports; the daemon serves the rest.
    runtime.block_on(async {
        journal.report_at_start().await;
        journal.spawn_purge();
    });
    start_metrics(&runtime, &cfg.metrics)?;
    let bridge = Arc::new(Bridge::new(
        hsm.clone(),
        audit,
        cfg.server.max_queue,
        settings,
    ));
    let reloader = super::reload::Reloader {
        path: cfg.path.clone(),
        transport,
        tls: tls.clone(),
        journal: journal.clone(),
        fixed: super::reload::fixed_parts(&cfg),
    };
    runtime.block_on(async { reloader.spawn(bridge.clone()) });
    let limits = Limits {
        grace: Duration::from_secs(cfg.server.shutdown_grace_secs),
        max_connections: cfg.server.max_connections,
        max_streams: cfg.server.max_concurrent_streams,
        health_listen: cfg
            .server
            .health_listen
            .as_deref()
            .and_then(|l| l.parse().ok()),
        handshake_timeout: Duration::from_secs(cfg.server.tls_handshake_timeout_secs),
    };
    let result = runtime.block_on(run(listen, tls, bridge, hsm.clone(), limits));
    runtime.shutdown_timeout(Duration::from_secs(1));
    match Arc::try_unwrap(hsm) {
        Ok(hsm) => {
            hsm.close();
            tracing::info!("sessions closed, logged out, module finalised");
        }
        Err(_) => tracing::warn!("HSM work still running at exit; the module was not finalised"),
    }
    result
}

/// What bounds the server's use of the machine.
struct Limits {
    /// How long SIGTERM waits for calls in flight.
    grace: Duration,
    max_connections: usize,
    /// HTTP/2 streams per connection.
    max_streams: u32,
    /// The plain-text listener for health probes only.
    health_listen: Option<std::net::SocketAddr>,
    /// Longest TLS handshake.
    handshake_timeout: Duration,
}

/// Largest header block a caller may send (tonic's own default is larger).
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

async fn run(
    listen: Listen,
    tls: Option<super::tls::TlsState>,
    bridge: Arc<Bridge>,
    hsm: Arc<Hsm>,
    limits: Limits,
) -> Result<(), Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::Serving).await;
    // For liveness probes: SERVING while the process serves, whatever the token's state (a
    // restart cannot mend an HSM, and each one logs in again).
    health
        .set_service_status(PROCESS_SERVICE, ServingStatus::Serving)
        .await;
    let probe = tokio::spawn(follow_the_token(health.clone(), hsm));
    let probes = match limits.health_listen {
        Some(addr) => Some(health_only(addr, health_service.clone()).await?),
        None => None,
    };
    let described = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_err = |e: tonic_reflection::server::Error| Error::Io(format!("reflection: {e}"));
    let reflection = described().build_v1().map_err(reflection_err)?;
    let reflection_alpha = described().build_v1alpha().map_err(reflection_err)?;
    let mut builder = Server::builder()
        .max_concurrent_streams(limits.max_streams)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES);
    let api = KeySourceBridgeServer::from_arc(bridge.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let router = builder
        .add_service(api)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = serve_on(listen, tls, router, &limits, async {
        let _ = stop_rx.await;
    })
    .await?;

    let signal = wait_for_signal().await;
    super::notify::stopping();
    tracing::info!(
        "{signal}: no new calls; waiting up to {}s for calls in flight",
        limits.grace.as_secs()
    );
    set_health(&health, ServingStatus::NotServing).await;
    health
        .set_service_status(PROCESS_SERVICE, ServingStatus::NotServing)
        .await;
    let _ = stop_tx.send(());
    probe.abort();
    if let Some(p) = probes {
        p.abort();
    }
    shut_down(server, &bridge, limits.grace).await
}

/// The plain-text listener that serves only the health service (`server.health_listen`).
async fn health_only<H: tonic_health::pb::health_server::Health>(
    addr: std::net::SocketAddr,
    health: tonic_health::pb::health_server::HealthServer<H>,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Io(format!("server.health_listen {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Io(format!("server.health_listen {addr}: {e}")))?;
    tracing::info!(addr = %bound, "health probes listening (plain text, grpc.health.v1 only)");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    Ok(tokio::spawn(async move {
        if let Err(e) = Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming)
            .await
        {
            tracing::error!("health probe listener: {e}");
        }
    }))
}

/// What the operator should hear at start: no caller can match, any wrapping key goes,
/// the daemon runs as root.
fn warn_at_start(cfg: &Config, auth: &Authenticator, transport: Transport) {
    if auth.reachable() == 0 {
        tracing::warn!(
            "no [[server.clients]] entry can match a caller on this listener ({}): every call will be UNAUTHENTICATED",
            match transport {
                Transport::Tls => "TLS: give entries a subject_cn",
                Transport::Unix => "Unix socket: give entries a unix_uid",
                Transport::Loopback => "plain text on loopback: give one entry loopback = true",
            }
        );
    }
    if cfg.policy.caller_wrapping_keys == crate::config::CallerWrappingKeys::Any {
        tracing::warn!(
            "policy.caller_wrapping_keys = \"any\": any caller with the wrap operation can export keys to a public key of its own choosing; use \"pinned\" or \"none\" outside development"
        );
    }
    if rustix::process::geteuid().is_root() {
        tracing::warn!(
            "running as root: run the daemon as an unprivileged user that can read the PIN file, the TLS key and the PKCS#11 client configuration"
        );
    }
}

/// The metrics listener, when `[metrics] listen` is set.
fn start_metrics(
    runtime: &tokio::runtime::Runtime,
    cfg: &crate::config::MetricsConfig,
) -> Result<(), Error> {
    crate::metrics::get().set_key_labels(cfg.key_labels);
    let Some(addr) = &cfg.listen else {
        return Ok(());
    };
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .map_err(|e| Error::Io(format!("metrics.listen {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Io(format!("metrics.listen {addr}: {e}")))?;
    tracing::info!(addr = %bound, "metrics listening (GET /metrics)");
    runtime.spawn(crate::metrics::serve(listener));
    Ok(())
}

/// Sets the health of "" and of the service.
async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    crate::metrics::get().serving(status == ServingStatus::Serving);
    for name in ["", SERVICE_NAME] {
        health.set_service_status(name, status).await;
    }
}

/// Probes the token every [`HEALTH_EVERY`] and reports changes (runs until aborted).
async fn follow_the_token(health: tonic_health::server::HealthReporter, hsm: Arc<Hsm>) {
    let mut serving = true;
    loop {
        tokio::time::sleep(HEALTH_EVERY).await;
        let h = hsm.clone();
        let ok = matches!(
            tokio::task::spawn_blocking(move || h.probe()).await,
            Ok(Ok(()))
        );
        if ok != serving {
            serving = ok;
            tracing::warn!(serving = ok, "token health changed");
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set_health(&health, status).await;
        }
    }
}

/// Binds `listen` and serves `router` on it, at most `max_connections` at once, until
/// `stopped`; the serving task.
async fn serve_on(
    listen: Listen,
    tls: Option<super::tls::TlsState>,
    router: tonic::transport::server::Router,
    limits: &Limits,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>, Error> {
    let max_connections = limits.max_connections;
    Ok(match listen {
        Listen::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Io(format!("cannot listen on {addr}: {e}")))?;
            let local = listener
                .local_addr()
                .map_err(|e| Error::Io(e.to_string()))?;
            announce(&local.to_string());
            let listener = Arc::new(listener);
            let incoming = limit::incoming(max_connections, move || {
                let listener = listener.clone();
                async move {
                    let (io, _) = listener.accept().await?;
                    // No Nagle: a response held back for the client's delayed ACK costs 40 ms.
                    io.set_nodelay(true)?;
                    Ok(io)
                }
            });
            match tls {
                Some(tls) => {
                    let incoming = super::tls::incoming(incoming, tls, limits.handshake_timeout);
                    tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
                }
                None => tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped)),
            }
        }
        Listen::Unix(path) => {
            let listener = Arc::new(bind_unix(&path)?);
            announce(&format!("unix:{}", path.display()));
            let incoming = limit::incoming(max_connections, move || {
                let listener = listener.clone();
                async move { Ok(listener.accept().await?.0) }
            });
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
        }
    })
}

/// Waits up to `grace` for the server to finish its calls, then for the HSM queue.
async fn shut_down(
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    bridge: &Bridge,
    grace: Duration,
) -> Result<(), Error> {
    let finished = tokio::time::timeout(grace, server).await;
    let drained = bridge.drain(Duration::from_secs(1).max(grace / 10)).await;
    match finished {
        Ok(Ok(Ok(()))) if drained => Ok(()),
        Ok(Ok(Ok(()))) => Err(Error::Io("HSM work was still running at shutdown".into())),
        Ok(Ok(Err(e))) => Err(Error::Io(format!("server: {e}"))),
        Ok(Err(e)) => Err(Error::Io(format!("server task: {e}"))),
        Err(_) => Err(Error::Io(format!(
            "calls still in flight after {}s (server.shutdown_grace_secs); exiting anyway",
            grace.as_secs()
        ))),
    }
}

/// Tells whoever started the daemon where it listens (port 0 gets a real port).
fn announce(addr: &str) {
    tracing::info!(%addr, "listening");
    println!("hsm-bridge: listening on {addr}");
    super::notify::ready(addr);
    super::notify::spawn_watchdog();
}

/// Binds a Unix socket that only this user can connect to: created under umask 0177 so
/// it is never group/other-accessible, not even for an instant. A stale socket file is
/// replaced; any other file at the path is an error.
fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, Error> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)
                .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        } else {
            return Err(Error::Usage(format!(
                "server.listen: {} exists and is not a socket",
                path.display()
            )));
        }
    }
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = tokio::net::UnixListener::bind(path);
    rustix::process::umask(old);
    let listener =
        bound.map_err(|e| Error::Io(format!("cannot listen on {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
    Ok(listener)
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the daemon could not stop cleanly; keep serving.
        std::future::pending::<()>().await;
        unreachable!()
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
