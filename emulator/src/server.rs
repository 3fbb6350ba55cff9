//! The HTTPS loop the emulators share (and a plain-HTTP one for the GCP metadata server): TLS from PEM files, one task per connection,
//! request bodies capped, and each request's [`Outcome`] answered now, answered late, or
//! dropped without an answer.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use crate::EmulatorError;
use crate::state::{Outcome, Reply};

/// What an emulator does with one request, once its body is read.
pub(crate) trait Service: Send + Sync + 'static {
    /// The largest body read; a longer one is answered with [`Service::too_large`].
    const MAX_BODY: usize;
    fn too_large(&self) -> Reply;
    /// The synchronous part: no reference to the request outlives it.
    fn handle(&self, parts: &Parts, body: &[u8]) -> Outcome;
}

/// The TLS server configuration from a PEM certificate chain and key.
pub(crate) fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, EmulatorError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("TLS certificate and key: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Binds `addr`; the listener and the address it got (port 0: any free port).
pub(crate) async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), EmulatorError> {
    let listen = |source| EmulatorError::Listen { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(listen)?;
    let local = listener.local_addr().map_err(listen)?;
    Ok((listener, local))
}

/// Serves `svc` over TLS on `listener` until the process ends.
pub(crate) async fn serve<S: Service>(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    svc: Arc<S>,
) -> Result<(), EmulatorError> {
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (tls, svc) = (tls.clone(), svc.clone());
        tokio::spawn(async move {
            let stream = match tls.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, "TLS handshake: {e}");
                    return;
                }
            };
            let one = service_fn(move |req| {
                let svc = svc.clone();
                async move { serve_one(&*svc, req).await }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), one)
                .await
            {
                tracing::debug!(%peer, "connection: {e}");
            }
        });
    }
}

/// Serves `svc` over plain HTTP on `listener` until the process ends (the GCP emulator's
/// metadata server, which is plain HTTP as Compute Engine's is).
pub(crate) async fn serve_plain<S: Service>(
    listener: TcpListener,
    svc: Arc<S>,
) -> Result<(), EmulatorError> {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let svc = svc.clone();
        tokio::spawn(async move {
            let one = service_fn(move |req| {
                let svc = svc.clone();
                async move { serve_one(&*svc, req).await }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), one)
                .await
            {
                tracing::debug!(%peer, "connection: {e}");
            }
        });
    }
}

/// Dropping the connection without an answer (an injected fault).
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for Dropped {}

async fn serve_one<S: Service>(
    svc: &S,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Dropped> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, S::MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(to_hyper(svc.too_large())),
    };
    match svc.handle(&parts, &body) {
        Outcome::Reply { reply, delay } => {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(to_hyper(reply))
        }
        Outcome::Drop { delay } => {
            tokio::time::sleep(delay).await;
            Err(Dropped)
        }
    }
}

fn to_hyper(r: Reply) -> hyper::Response<Full<Bytes>> {
    let mut b = hyper::Response::builder()
        .status(r.status)
        .header("content-type", r.content_type);
    for (k, v) in r.headers {
        b = b.header(k, v);
    }
    b.body(Full::new(Bytes::from(r.body)))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}
