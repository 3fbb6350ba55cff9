//! A local OCI KMS management endpoint, faithful enough that passing against it means
//! passing against OCI: HTTPS, every request's OCI signature checked against registered API
//! keys, OCI's paths, field names and error bodies, imported material unwrapped and
//! validated as OCI does, versions going `CREATING` then `ENABLED`, `opc-retry-token`
//! de-duplication, and fault injection for tests. Shipped as the `oci-kms-emulator` binary
//! for demos and for callers' integration tests. Never for production: it holds imported
//! keys in memory and, with `--test-oracle`, hands them out.
//!
//! Routes (all under the management endpoint, API version `20180608`):
//! `GET /wrappingKeys`, `POST /keys/import`, `GET /keys/{id}`,
//! `POST /keys/{id}/keyVersions/import`, `GET /keys/{id}/keyVersions`,
//! `GET /keys/{id}/keyVersions/{versionId}`. Test control, unsigned, under `/_emulator/`:
//! `GET requests` (the request log), `POST faults`, `DELETE faults`, `POST keys`,
//! `GET keys/{id}` (a key and all its version ids),
//! `GET material/{versionId}` (only with `--test-oracle`).

pub mod auth;
mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use openssl::pkey::PKey;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

pub use state::{Emulator, Fault};

/// Largest request body the emulator reads (OCI's import bodies are a few KiB).
const MAX_BODY: usize = 1 << 20;

/// How the emulator starts.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// TLS certificate chain (PEM).
    #[arg(long, value_name = "PEM")]
    pub tls_cert: PathBuf,
    /// TLS private key (PEM).
    #[arg(long, value_name = "PEM")]
    pub tls_key: PathBuf,
    /// An API public key whose signatures are accepted: `PEM_FILE` (any tenancy and user
    /// with this key's fingerprint) or `TENANCY_OCID/USER_OCID=PEM_FILE`. Repeatable.
    #[arg(long = "api-key", value_name = "[TENANCY/USER=]PEM")]
    pub api_keys: Vec<String>,
    /// The vault's RSA wrapping private key (PEM); default: a fresh RSA-4096 key.
    #[arg(long, value_name = "PEM")]
    pub wrapping_key: Option<PathBuf>,
    /// A key to create at start, `NAME=AES-256` (or AES-128/192, RSA-2048/3072/4096);
    /// its OCID is `ocid1.key.oc1.emulator.NAME`. Repeatable.
    #[arg(long = "key", value_name = "NAME=SHAPE")]
    pub keys: Vec<String>,
    /// How long a new version stays CREATING before it is ENABLED.
    #[arg(long, default_value_t = 200)]
    pub enable_after_ms: u64,
    /// Serve `GET /_emulator/material/{versionId}`: the imported key material, hex. For
    /// tests that prove what arrived; never on a shared machine.
    #[arg(long)]
    pub test_oracle: bool,
}

/// Why the emulator cannot start, or cannot create a key: one line naming the option or
/// the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// An option, a file it names, or a key's name or shape is not usable.
    #[error("{0}")]
    Setup(String),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

impl From<String> for EmulatorError {
    fn from(why: String) -> Self {
        EmulatorError::Setup(why)
    }
}

impl From<&str> for EmulatorError {
    fn from(why: &str) -> Self {
        EmulatorError::Setup(why.into())
    }
}

fn tls_config(opts: &Options) -> Result<rustls::ServerConfig, EmulatorError> {
    let certs = CertificateDer::pem_file_iter(&opts.tls_cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", opts.tls_cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&opts.tls_key)
        .map_err(|e| format!("{}: {e}", opts.tls_key.display()))?;
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

/// Builds the emulator's state from the options.
pub fn build(opts: &Options) -> Result<Emulator, EmulatorError> {
    let mut keys = auth::ApiKeys::default();
    for spec in &opts.api_keys {
        let (who, file) = match spec.split_once('=') {
            Some((w, f)) => (Some(w), f),
            None => (None, spec.as_str()),
        };
        let pem = std::fs::read(file).map_err(|e| format!("--api-key {file}: {e}"))?;
        let key = PKey::public_key_from_pem(&pem)
            .map_err(|_| format!("--api-key {file}: not a PEM public key"))?;
        keys.add(who, key)?;
    }
    let wrapping = match &opts.wrapping_key {
        Some(p) => {
            let pem = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            PKey::private_key_from_pem_passphrase(&pem, b"")
                .map_err(|_| format!("{}: not an unencrypted PEM private key", p.display()))?
        }
        None => PKey::from_rsa(openssl::rsa::Rsa::generate(4096).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?,
    };
    let emu = Emulator::new(
        keys,
        wrapping,
        Duration::from_millis(opts.enable_after_ms),
        opts.test_oracle,
    )?;
    for spec in &opts.keys {
        let (name, shape) = spec
            .split_once('=')
            .ok_or_else(|| format!("--key {spec:?}: expected NAME=SHAPE, e.g. demo=AES-256"))?;
        emu.seed_key(name, shape)?;
    }
    Ok(emu)
}

/// Serves until the process ends. Prints `oci-kms-emulator: listening on https://ADDR`, then
/// one `key NAME OCID` line per seeded key, on stdout.
pub async fn run(opts: Options) -> Result<(), EmulatorError> {
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&opts)?));
    let emu = Arc::new(build(&opts)?);
    let listener =
        TcpListener::bind(opts.listen)
            .await
            .map_err(|source| EmulatorError::Listen {
                addr: opts.listen,
                source,
            })?;
    let addr = listener
        .local_addr()
        .map_err(|source| EmulatorError::Listen {
            addr: opts.listen,
            source,
        })?;
    println!("oci-kms-emulator: listening on https://{addr}");
    for (name, id) in emu.seeded() {
        println!("key {name} {id}");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (tls, emu) = (tls.clone(), emu.clone());
        tokio::spawn(async move {
            let stream = match tls.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, "TLS handshake: {e}");
                    return;
                }
            };
            let svc = service_fn(move |req| {
                let emu = emu.clone();
                async move { serve_one(&emu, req).await }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
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

async fn serve_one(
    emu: &Emulator,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Dropped> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let r = state::Reply::error(413, "PayloadTooLarge", "the request body is too large");
            return Ok(to_hyper(r));
        }
    };
    let outcome = handle_parts(emu, &parts, &body);
    match outcome {
        state::Outcome::Reply { reply, delay } => {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(to_hyper(reply))
        }
        state::Outcome::Drop { delay } => {
            tokio::time::sleep(delay).await;
            Err(Dropped)
        }
    }
}

/// The synchronous part: no reference to the request's headers outlives it.
fn handle_parts(
    emu: &Emulator,
    parts: &hyper::http::request::Parts,
    body: &[u8],
) -> state::Outcome {
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    emu.handle(&state::HttpRequest {
        method: parts.method.as_str(),
        target,
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        header: &header,
        body,
    })
}

fn to_hyper(r: state::Reply) -> hyper::Response<Full<Bytes>> {
    let mut b = hyper::Response::builder()
        .status(r.status)
        .header("content-type", r.content_type);
    for (k, v) in r.headers {
        b = b.header(k, v);
    }
    b.body(Full::new(Bytes::from(r.body)))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}
