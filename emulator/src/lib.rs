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
//!
//! The AWS KMS endpoint (`aws-kms-emulator`) is in src/aws/, the Azure Key Vault and
//! Managed HSM endpoint (`azure-kv-emulator`) in src/azure/, the Google Cloud KMS endpoint
//! and metadata server (`gcp-kms-emulator`) in src/gcp/.

pub mod auth;
pub mod aws;
pub mod azure;
pub mod gcp;
mod open;
mod server;
mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openssl::pkey::PKey;

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

/// The body of an emulator binary's `main`: logs to stderr filtered by the environment
/// variable `log_var` (default `warn`), runs `serve` on two worker threads, and reports a
/// failure as `NAME: why` on stderr.
pub fn main_with(
    name: &str,
    log_var: &str,
    serve: impl std::future::Future<Output = Result<(), EmulatorError>>,
) -> std::process::ExitCode {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env(log_var).unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(serve).map_err(|e| e.to_string()));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Serves until the process ends. Prints `oci-kms-emulator: listening on https://ADDR`, then
/// one `key NAME OCID` line per seeded key, on stdout.
pub async fn run(opts: Options) -> Result<(), EmulatorError> {
    let tls = server::tls_config(&opts.tls_cert, &opts.tls_key)?;
    let emu = Arc::new(build(&opts)?);
    let (listener, addr) = server::bind(opts.listen).await?;
    println!("oci-kms-emulator: listening on https://{addr}");
    for (name, id) in emu.seeded() {
        println!("key {name} {id}");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    server::serve(listener, tls, emu).await
}

impl server::Service for Emulator {
    const MAX_BODY: usize = MAX_BODY;

    fn too_large(&self) -> state::Reply {
        state::Reply::error(413, "PayloadTooLarge", "the request body is too large")
    }

    fn handle(&self, parts: &hyper::http::request::Parts, body: &[u8]) -> state::Outcome {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        Emulator::handle(
            self,
            &state::HttpRequest {
                method: parts.method.as_str(),
                target,
                path: parts.uri.path(),
                query: parts.uri.query().unwrap_or(""),
                header: &header,
                body,
            },
        )
    }
}
