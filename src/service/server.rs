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
use super::auth::{Authenticator, Transport};
use super::limit;
use crate::Error;
use crate::audit::Audit;
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
pub(crate) fn serve(cfg: Config) -> Result<(), Error> {
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
    let hsm = Arc::new(Hsm::open_shared(
        &cfg.hsm,
        &cfg.policy,
        Some(journal.clone()),
    )?);
    tracing::info!(mode = %hsm.mode(), sessions = hsm.sessions(), "self-test passed");
    // Without the key that authenticates its records, the journal could be made to send
    // what a database writer chose: no start.
    journal.set_key(crate::journal::Journal::key_from(&cfg.journal, &hsm)?);
    let caps = Caps::plan(&cfg);
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
    start_metrics(&runtime, &cfg.metrics, caps.metrics)?;
    let bridge = Arc::new(Bridge::new(
        hsm.clone(),
        audit,
        cfg.server.max_queue,
        settings,
        tls.clone(),
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
        caps,
        per_address: cfg.server.max_connections_per_address,
        max_streams: cfg.server.max_concurrent_streams,
        health_listen: cfg
            .server
            .health_listen
            .as_deref()
            .and_then(|l| l.parse().ok()),
        handshake_timeout: Duration::from_secs(cfg.server.tls_handshake_timeout_secs),
        idle: Duration::from_secs(cfg.server.idle_timeout_secs),
        max_age: Duration::from_secs(cfg.server.max_connection_age_secs),
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
    caps: Caps,
    /// Established connections from one address.
    per_address: usize,
    /// HTTP/2 streams per connection.
    max_streams: u32,
    /// The plain-text listener for health probes only.
    health_listen: Option<std::net::SocketAddr>,
    /// Longest TLS handshake.
    handshake_timeout: Duration,
    /// A connection with no call and no byte this long is closed.
    idle: Duration,
    /// A connection is asked to go away after this long.
    max_age: Duration,
}

/// The health listener's limits: probes make a call a few seconds apart, each on a
/// connection of its own or on one kept open.
const HEALTH_STREAMS: u32 = 4;
const HEALTH_IDLE: Duration = Duration::from_secs(30);
const HEALTH_AGE: Duration = Duration::from_secs(300);
/// Connections the health and metrics listeners want (before the file limit has its say).
const HEALTH_CONNECTIONS: usize = 32;
const METRICS_CONNECTIONS: usize = 16;
/// How long calls in progress may finish on a connection past its age (imports that wait
/// for OCI and for ENABLED take minutes at the most).
const AGE_GRACE: Duration = Duration::from_secs(900);

/// Each listener's connection cap, fitted to the process's file limit (raised to its hard
/// limit first) so that the HSM module keeps descriptors of its own.
#[derive(Debug, Clone, Copy)]
struct Caps {
    api: usize,
    handshakes: usize,
    health: usize,
    metrics: usize,
}

impl Caps {
    fn plan(cfg: &Config) -> Caps {
        let (files, before) = limit::raise_file_limit();
        let tls = !cfg.server.plaintext && !cfg.server.listen.starts_with("unix:");
        let wanted = [
            cfg.server.max_connections,
            if tls { cfg.server.max_handshakes } else { 0 },
            if cfg.server.health_listen.is_some() {
                HEALTH_CONNECTIONS
            } else {
                0
            },
            if cfg.metrics.listen.is_some() {
                METRICS_CONNECTIONS
            } else {
                0
            },
        ];
        let got = limit::plan(files, &wanted);
        let caps = Caps {
            api: got[0],
            handshakes: got[1],
            health: got[2],
            metrics: got[3],
        };
        let used: usize = got.iter().sum();
        let raised = if before < files {
            format!(" (the soft limit raised from {before})")
        } else {
            String::new()
        };
        tracing::info!(
            "file descriptors: {files}{raised}; connections at most: server.listen {} (+{} TLS handshakes), health {}, metrics {}; the other {} are the HSM module's, the journal's, OCI's and the daemon's files",
            caps.api,
            caps.handshakes,
            caps.health,
            caps.metrics,
            files.saturating_sub(used as u64)
        );
        if got[..] != wanted[..] {
            tracing::warn!(
                "the file limit ({files}) is too low for the configured connection caps (server.max_connections {}, server.max_handshakes {}): they were cut to fit; raise LimitNOFILE (systemd) or the container's limit",
                cfg.server.max_connections,
                cfg.server.max_handshakes
            );
        }
        caps
    }
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
        Some(addr) => Some(health_only(addr, health_service.clone(), limits.caps.health).await?),
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
    let tracker = limit::Tracker::new(limit::Caps {
        what: "server.listen",
        max: limits.caps.api,
        per_address: limits.per_address,
        idle: match &listen {
            // a Unix socket's peers have no address to find their calls by (and are this
            // user's and root's processes only)
            Listen::Unix(_) => None,
            Listen::Tcp(_) => Some(limits.idle),
        },
        lifetime: None,
        when_full: limit::WhenFull::Refuse,
    });
    let mut builder = Server::builder()
        .max_concurrent_streams(limits.max_streams)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .max_connection_age(limits.max_age)
        .max_connection_age_grace(AGE_GRACE)
        .layer(limit::InFlightLayer(tracker.clone()));
    let api = KeySourceBridgeServer::from_arc(bridge.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let router = builder
        .add_service(api)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let listed: super::tls::Listed = {
        let bridge = bridge.clone();
        Arc::new(move |leaf| bridge.lists_certificate(leaf))
    };
    let server = serve_on(listen, tls, router, &limits, tracker, listed, async {
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

/// The plain-text listener that serves only the health service (`server.health_listen`):
/// anyone who can reach it may connect, so it has a small cap (a newcomer pushes out the
/// oldest connection, half of them at most from one address), a short idle time, a
/// lifetime and few streams per connection.
async fn health_only<H: tonic_health::pb::health_server::Health>(
    addr: std::net::SocketAddr,
    health: tonic_health::pb::health_server::HealthServer<H>,
    cap: usize,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Io(format!("server.health_listen {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Io(format!("server.health_listen {addr}: {e}")))?;
    tracing::info!(addr = %bound, connections = cap, "health probes listening (plain text, grpc.health.v1 only)");
    let tracker = limit::Tracker::new(limit::Caps {
        what: "server.health_listen",
        max: cap,
        per_address: (cap / 2).max(1),
        idle: Some(HEALTH_IDLE),
        lifetime: Some(HEALTH_AGE + HEALTH_IDLE),
        when_full: limit::WhenFull::EvictOldest,
    });
    let incoming = limit::incoming(tracker.clone(), tcp_accept(Arc::new(listener)));
    Ok(tokio::spawn(async move {
        if let Err(e) = Server::builder()
            .max_concurrent_streams(HEALTH_STREAMS)
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .max_connection_age(HEALTH_AGE)
            .max_connection_age_grace(Duration::from_secs(5))
            .layer(limit::InFlightLayer(tracker))
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
    warn_about_policy(cfg);
    if rustix::process::geteuid().is_root() {
        tracing::warn!(
            "running as root: run the daemon as an unprivileged user that can read the PIN file, the TLS key and the PKCS#11 client configuration"
        );
    }
}

/// What the operator should hear of the policy, at start and at every reload.
pub(super) fn warn_about_policy(cfg: &Config) {
    if cfg.policy.caller_wrapping_keys == crate::config::CallerWrappingKeys::Any {
        tracing::warn!(
            "policy.caller_wrapping_keys = \"any\": any caller with the wrap operation can export keys to a public key of its own choosing; use \"pinned\" or \"none\" outside development"
        );
    }
}

/// The metrics listener, when `[metrics] listen` is set.
fn start_metrics(
    runtime: &tokio::runtime::Runtime,
    cfg: &crate::config::MetricsConfig,
    cap: usize,
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
    tracing::info!(addr = %bound, connections = cap, "metrics listening (GET /metrics)");
    let _guard = runtime.enter();
    let tracker = limit::Tracker::new(limit::Caps {
        what: "metrics.listen",
        max: cap,
        per_address: (cap / 2).max(1),
        idle: None,
        lifetime: Some(crate::metrics::CONNECTION_LIFETIME),
        when_full: limit::WhenFull::EvictOldest,
    });
    runtime.spawn(crate::metrics::serve(limit::incoming(
        tracker,
        tcp_accept(Arc::new(listener)),
    )));
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

/// One accepted TCP socket and its peer, to come.
type Accepting = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = std::io::Result<(tokio::net::TcpStream, Option<std::net::SocketAddr>)>,
            > + Send,
    >,
>;

/// Accepts from a TCP listener: the socket (no Nagle: a response held back for the
/// client's delayed ACK costs 40 ms) and its peer.
fn tcp_accept(
    listener: Arc<tokio::net::TcpListener>,
) -> impl FnMut() -> Accepting + Send + 'static {
    move || {
        let listener = listener.clone();
        Box::pin(async move {
            let (io, peer) = listener.accept().await?;
            io.set_nodelay(true)?;
            Ok((io, Some(peer)))
        })
    }
}

/// Binds `listen` and serves `router` on it until `stopped`, each connection a member of
/// `tracker` (with TLS: once its handshake is done and `listed` knows its certificate);
/// the serving task.
#[allow(clippy::too_many_arguments)]
async fn serve_on(
    listen: Listen,
    tls: Option<super::tls::TlsState>,
    router: tonic::transport::server::Router<
        tower_layer::Stack<limit::InFlightLayer, tower_layer::Identity>,
    >,
    limits: &Limits,
    tracker: Arc<limit::Tracker>,
    listed: super::tls::Listed,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>, Error> {
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
            match tls {
                Some(tls) => {
                    let handshakes = limit::Tracker::new(limit::Caps {
                        what: "TLS handshakes (server.max_handshakes)",
                        max: limits.caps.handshakes,
                        per_address: (limits.caps.handshakes / 4).max(1),
                        idle: None,
                        lifetime: Some(limits.handshake_timeout),
                        when_full: limit::WhenFull::EvictOldest,
                    });
                    let incoming = limit::incoming(handshakes, tcp_accept(listener));
                    let incoming = super::tls::incoming(
                        incoming,
                        tls,
                        limits.handshake_timeout,
                        tracker,
                        listed,
                    );
                    tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
                }
                None => {
                    let incoming = limit::incoming(tracker, tcp_accept(listener));
                    tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
                }
            }
        }
        Listen::Unix(path) => {
            let listener = Arc::new(bind_unix(&path)?);
            announce(&format!("unix:{}", path.display()));
            let incoming = limit::incoming(tracker, move || {
                let listener = listener.clone();
                async move { Ok((listener.accept().await?.0, None)) }
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
