//! The daemon's TLS, done here rather than inside tonic so that a reload (SIGHUP) can put a
//! new certificate, key, client CA and CRL in place: every handshake takes the
//! configuration current at its start, and a call on a connection made under an older one
//! is let through only if its certificate still chains to the current client CA (and is not
//! on the current CRL), checked once per connection per reload. Mutual TLS always (a
//! client certificate from `server.client_ca`), HTTP/2 by ALPN.
//!
//! Handshakes are a stage of their own (`limit.rs`): at most `server.max_handshakes` at once
//! (a quarter of them from one address), each within `server.tls_handshake_timeout_secs`, a
//! newcomer pushing out the oldest when full. Only a finished handshake whose certificate
//! names a `[[server.clients]]` entry becomes an established connection, under
//! `server.max_connections`; any other stays in the handshake stage, long enough to be told
//! why its calls are refused, and is closed at that stage's time limit. tonic reads the
//! peer's certificates from the finished stream as it would from its own TLS.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime, pem::PemObject,
};
use rustls::server::danger::ClientCertVerifier;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::limit::{Conn, Limited, Tracker};
use crate::Error;
use crate::config::ServerConfig;

/// The TLS configuration new handshakes use, and the client CA calls are checked against;
/// a reload replaces both and starts a new generation.
#[derive(Clone)]
pub(crate) struct TlsState(Arc<RwLock<Current>>);

struct Current {
    config: Arc<rustls::ServerConfig>,
    clients: Arc<dyn ClientCertVerifier>,
    generation: u64,
}

/// A server configuration and the client verifier inside it.
pub(crate) struct ServerTls {
    config: rustls::ServerConfig,
    clients: Arc<dyn ClientCertVerifier>,
}

impl TlsState {
    pub(crate) fn new(t: ServerTls) -> TlsState {
        TlsState(Arc::new(RwLock::new(Current {
            config: Arc::new(t.config),
            clients: t.clients,
            generation: 1,
        })))
    }

    fn current(&self) -> (Arc<rustls::ServerConfig>, u64) {
        let c = self.0.read().unwrap_or_else(|p| p.into_inner());
        (c.config.clone(), c.generation)
    }

    /// New connections from now on use `t`; calls on open ones are checked against it.
    pub(crate) fn replace(&self, t: ServerTls) {
        let mut c = self.0.write().unwrap_or_else(|p| p.into_inner());
        c.config = Arc::new(t.config);
        c.clients = t.clients;
        c.generation += 1;
    }

    /// Whether the client CA (and CRL) in place now accepts `chain` (the connection's
    /// certificates, leaf first): free when `conn` was checked under the current
    /// generation, a verification otherwise (remembered on `conn`).
    pub(crate) fn vouches(
        &self,
        conn: Option<&Conn>,
        chain: &[CertificateDer<'_>],
    ) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        let (clients, generation) = {
            let c = self.0.read().unwrap_or_else(|p| p.into_inner());
            (c.clients.clone(), c.generation)
        };
        if conn.is_some_and(|c| c.verified_generation.load(Ordering::Relaxed) == generation) {
            return Ok(());
        }
        let (leaf, rest) = chain.split_first().ok_or("no client certificate")?;
        clients
            .verify_client_cert(leaf, rest, UnixTime::now())
            .map_err(|e| format!("the connection's client certificate is no longer accepted since the TLS settings were reloaded ({e}); reconnect with a certificate from server.client_ca"))?;
        if let Some(c) = conn {
            c.verified_generation.store(generation, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn usage(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Usage(format!("{what} {}: {e}", path.display()))
}

/// The server side of mutual TLS from `server.tls_cert`, `tls_key`, `client_ca` and
/// `client_crl`. The key file is opened once and checked on the descriptor (the checked
/// file is the one read).
pub(crate) fn server_config(s: &ServerConfig) -> Result<ServerTls, Error> {
    let (Some(cert), Some(key), Some(ca)) = (&s.tls_cert, &s.tls_key, &s.client_ca) else {
        return Err(Error::Usage(
            "TLS needs server.tls_cert, server.tls_key and server.client_ca".into(),
        ));
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect())
        .map_err(|e| usage("server.tls_cert", cert, e))?;
    if certs.is_empty() {
        return Err(usage("server.tls_cert", cert, "no certificate in it"));
    }
    // At most 64 KiB (an RSA-8192 key in PEM is under 7 KiB), into a buffer sized once: a
    // buffer that grew would leave copies of the key behind, unzeroed.
    const MAX_KEY_PEM: usize = 64 << 10;
    let mut key_pem = zeroize::Zeroizing::new(Vec::with_capacity(MAX_KEY_PEM + 1));
    let f = crate::hardening::open_private(key, "server.tls_key")?;
    std::io::Read::read_to_end(
        &mut std::io::Read::take(f, MAX_KEY_PEM as u64 + 1),
        &mut key_pem,
    )
    .map_err(|e| usage("server.tls_key", key, e))?;
    if key_pem.len() > MAX_KEY_PEM {
        return Err(usage("server.tls_key", key, "larger than 64 KiB"));
    }
    let key_der =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| usage("server.tls_key", key, e))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| usage("server.client_ca", ca, e))?
    {
        roots.add(c).map_err(|e| usage("server.client_ca", ca, e))?;
    }
    let crls: Vec<CertificateRevocationListDer<'static>> = match &s.client_crl {
        Some(crl) => CertificateRevocationListDer::pem_file_iter(crl)
            .and_then(|i| i.collect())
            .map_err(|e| usage("server.client_crl", crl, e))?,
        None => Vec::new(),
    };
    if let (Some(crl), true) = (&s.client_crl, crls.is_empty()) {
        return Err(usage("server.client_crl", crl, "no CRL in it"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .with_crls(crls)
    .build()
    .map_err(|e| usage("server.client_ca", ca, e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Usage(format!("TLS: {e}")))?
        .with_client_cert_verifier(clients.clone())
        .with_single_cert(certs, key_der)
        .map_err(|e| Error::Usage(format!("server.tls_cert and server.tls_key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(ServerTls { config, clients })
}

/// Whether a finished handshake may become a connection: its certificate names a client.
pub(crate) type Listed = Arc<dyn Fn(&CertificateDer<'_>) -> bool + Send + Sync>;

/// The TLS connections of `tcp` (sockets in the handshake stage): each handshake runs in a
/// task of its own (a slow one holds up nobody), with the configuration current when it
/// starts, and at most `timeout`. A finished handshake whose certificate `listed` accepts
/// moves to `established` if it has room (else it is closed); one it does not stays where
/// it is, and is closed when the handshake stage's time is up.
pub(crate) fn incoming(
    mut tcp: ReceiverStream<Result<Limited<TcpStream>, std::io::Error>>,
    tls: TlsState,
    timeout: Duration,
    established: Arc<Tracker>,
    listed: Listed,
) -> ReceiverStream<Result<TlsStream<Limited<TcpStream>>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let unlisted = std::sync::atomic::AtomicU64::new(0);
        let unlisted = Arc::new(unlisted);
        while let Some(conn) = tcp.next().await {
            let Ok(io) = conn else { continue };
            let (config, generation) = tls.current();
            let (out, acceptor) = (tx.clone(), tokio_rustls::TlsAcceptor::from(config));
            let (established, listed, unlisted) =
                (established.clone(), listed.clone(), unlisted.clone());
            tokio::spawn(async move {
                let mut stream = match tokio::time::timeout(timeout, acceptor.accept(io)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return tracing::debug!("TLS handshake failed: {e}"),
                    Err(_) => return tracing::debug!("TLS handshake not finished in time; closed"),
                };
                let known = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .is_some_and(|leaf| listed(leaf));
                if known {
                    if !stream.get_mut().0.enter(&established) {
                        return;
                    }
                    stream
                        .get_ref()
                        .0
                        .conn()
                        .verified_generation
                        .store(generation, std::sync::atomic::Ordering::Relaxed);
                } else {
                    // Served, so that it hears why it is refused (UNAUTHENTICATED, audited),
                    // but it stays in the handshake stage: it counts against the handshakes'
                    // cap, not the clients', and is closed at that stage's time limit.
                    let n = unlisted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if (n + 1).is_power_of_two() {
                        tracing::warn!(
                            so_far = n + 1,
                            "a TLS connection whose client certificate names no [[server.clients]] entry: its calls are refused and it is closed within server.tls_handshake_timeout_secs"
                        );
                    }
                }
                let _ = out.send(Ok(stream)).await;
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}
