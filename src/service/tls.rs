//! The daemon's TLS, done here rather than inside tonic so that a reload (SIGHUP) can put a
//! new certificate, key and client CA in place for new connections: every handshake takes
//! the configuration current at its start. Mutual TLS always (a client certificate from
//! `server.client_ca`), HTTP/2 by ALPN, each handshake bounded by
//! `server.tls_handshake_timeout_secs`. tonic reads the peer's certificates from the
//! finished stream as it would from its own TLS.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::limit::Limited;
use crate::Error;
use crate::config::ServerConfig;

/// The TLS configuration new handshakes use; a reload replaces it.
#[derive(Clone)]
pub struct TlsState(Arc<RwLock<Arc<rustls::ServerConfig>>>);

impl TlsState {
    pub fn new(cfg: rustls::ServerConfig) -> TlsState {
        TlsState(Arc::new(RwLock::new(Arc::new(cfg))))
    }

    fn current(&self) -> Arc<rustls::ServerConfig> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// New connections from now on use `cfg`; open ones keep theirs.
    pub fn replace(&self, cfg: rustls::ServerConfig) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(cfg);
    }
}

fn usage(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Usage(format!("{what} {}: {e}", path.display()))
}

/// The server side of mutual TLS from `server.tls_cert`, `tls_key` and `client_ca`. The
/// key file is opened once and checked on the descriptor (the checked file is the one read).
pub fn server_config(s: &ServerConfig) -> Result<rustls::ServerConfig, Error> {
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
    let mut key_pem = zeroize::Zeroizing::new(Vec::new());
    let mut f = crate::hardening::open_private(key, "server.tls_key")?;
    std::io::Read::read_to_end(&mut f, &mut key_pem)
        .map_err(|e| usage("server.tls_key", key, e))?;
    let key_der =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| usage("server.tls_key", key, e))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| usage("server.client_ca", ca, e))?
    {
        roots.add(c).map_err(|e| usage("server.client_ca", ca, e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| usage("server.client_ca", ca, e))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Usage(format!("TLS: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key_der)
        .map_err(|e| Error::Usage(format!("server.tls_cert and server.tls_key: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// The TLS connections of `tcp`: each accepted socket's handshake runs in a task of its
/// own (a slow one holds up nobody), with the configuration current when it starts, and
/// at most `timeout`; a failed or late one is closed.
pub fn incoming(
    mut tcp: ReceiverStream<Result<Limited<TcpStream>, std::io::Error>>,
    tls: TlsState,
    timeout: Duration,
) -> ReceiverStream<Result<TlsStream<Limited<TcpStream>>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(conn) = tcp.next().await {
            let Ok(io) = conn else { continue };
            let (out, acceptor) = (tx.clone(), tokio_rustls::TlsAcceptor::from(tls.current()));
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, acceptor.accept(io)).await {
                    Ok(Ok(stream)) => {
                        let _ = out.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!("TLS handshake not finished in time; closed"),
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}
