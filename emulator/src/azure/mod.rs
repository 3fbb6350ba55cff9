//! A local Azure Key Vault (Premium) or Managed HSM endpoint for the BYOK calls, and the
//! Entra ID authority its tokens come from, faithful enough that passing against it means
//! passing against Azure: HTTPS, Key Vault's bearer challenge (the first request goes out
//! without a token and is answered 401 with `WWW-Authenticate: Bearer
//! authorization="https://login.microsoftonline.com/{tenant}", resource="..."`), tokens
//! issued for one resource by a client-credentials token endpoint (client secret or a
//! certificate-signed JWT assertion), Key Vault's paths, field names and
//! `{"error":{"code","message"}}` errors, real RSA key-exchange keys and a real unwrap of
//! what is imported, and fault injection for tests. Shipped as the `azure-kv-emulator`
//! binary. Never for production: it holds imported keys in memory and, with
//! `--test-oracle`, hands them out.
//!
//! Routes: `GET /{tenant}/v2.0/.well-known/openid-configuration`, `POST
//! /{tenant}/oauth2/v2.0/token`; with `?api-version=` and a bearer token: `POST
//! /keys/{name}/create`, `GET /keys/{name}`, `GET /keys/{name}/`, `GET
//! /keys/{name}/{version}`, `GET /keys/{name}/versions`, `PUT /keys/{name}` (import). A
//! key id is `https://{Host header}/keys/{name}/{version}`. Test control, unauthenticated,
//! under `/_emulator/`: `GET requests`, `POST faults`, `DELETE faults`, `POST keys`, `GET
//! keys`, `GET keys/{name}`, `GET material/{name}/{version}` (only with `--test-oracle`).

mod control;
mod faults;
mod import;
mod keys;
pub mod protocol;
mod token;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use openssl::x509::X509;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::EmulatorError;
use crate::aws::Request;
use crate::state::{Outcome, Reply};

use crate::aws::protocol::uuid;
pub use faults::Fault;
use keys::Key;
use protocol::{KvError, challenge};
use token::{ClientAuth, Issued};

/// Largest request body read (a `.byok` for an RSA-4096 key is about 4 KiB).
const MAX_BODY: usize = 64 << 10;
/// Requests kept in the log.
const MAX_LOG: usize = 10_000;
/// Tokens kept (the oldest are forgotten first).
const MAX_TOKENS: usize = 10_000;
/// Key names kept.
const MAX_KEYS: usize = 10_000;
/// Versions kept of one key.
const MAX_VERSIONS: usize = 1_000;
/// The default and largest page of a version listing.
const PAGE: usize = 25;

pub(crate) const VAULT_RESOURCE: &str = "https://vault.azure.net";
pub(crate) const MHSM_RESOURCE: &str = "https://managedhsm.azure.net";

/// How the Azure emulator starts.
#[derive(Debug, Clone, clap::Args)]
pub struct AzureOptions {
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8445")]
    pub listen: SocketAddr,
    /// TLS certificate chain (PEM).
    #[arg(long, value_name = "PEM")]
    pub tls_cert: PathBuf,
    /// TLS private key (PEM).
    #[arg(long, value_name = "PEM")]
    pub tls_key: PathBuf,
    /// The Entra ID tenant (directory) id tokens are issued in and challenges name.
    #[arg(long, value_name = "ID")]
    pub tenant: String,
    /// The client (application) id allowed to get tokens.
    #[arg(long, value_name = "ID")]
    pub client_id: String,
    /// A file holding the client secret (never given on the command line).
    #[arg(long, value_name = "FILE")]
    pub client_secret_file: Option<PathBuf>,
    /// A certificate (PEM, RSA key) whose private key may sign client assertions.
    #[arg(long, value_name = "PEM")]
    pub client_cert: Option<PathBuf>,
    /// Serve as a Managed HSM (resource https://managedhsm.azure.net, oct-HSM keys) instead
    /// of a Key Vault Premium (resource https://vault.azure.net).
    #[arg(long)]
    pub managed_hsm: bool,
    /// How long an issued token is good for.
    #[arg(long, default_value_t = 3600)]
    pub token_ttl_secs: u64,
    /// Serve `GET /_emulator/material/{name}/{version}`: imported key material, hex. For
    /// tests that prove what arrived; never on a shared machine.
    #[arg(long)]
    pub test_oracle: bool,
}

/// The emulator's settings, as [`AzureOptions`] gives them once files are read.
pub struct Config {
    pub tenant: String,
    pub client_id: String,
    pub client_secret: Option<Zeroizing<String>>,
    pub client_cert: Option<X509>,
    pub managed_hsm: bool,
    pub token_ttl: Duration,
    pub test_oracle: bool,
}

/// One line of the request log (never key material or secrets).
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogEntry {
    pub seq: u64,
    pub time: String,
    /// `Discovery`, `Token`, `CreateKey`, `GetKey`, `ImportKey`, `GetKeyVersions`; none
    /// for a route the emulator does not serve.
    pub op: Option<String>,
    /// The key name in the path.
    pub name: Option<String>,
    /// The key version in the path, else the one a successful answer names: the version
    /// a create or import made (also when a fault dropped the answer), the latest read.
    pub version: Option<String>,
    pub status: u16,
    /// The error's code (`error.code` for Key Vault, `error` for Entra ID).
    pub code: Option<String>,
    /// Whether the request carried an `Authorization` header.
    pub token: bool,
    /// For a token issued: `secret` or `assertion`.
    pub client_auth: Option<String>,
    pub fault: bool,
    pub request_id: String,
}

#[derive(Default)]
struct Inner {
    keys: BTreeMap<String, Key>,
    /// Versions a `commit_after_ms` fault made, each with when it appears.
    pending: Vec<(SystemTime, String, keys::Version)>,
    tokens: HashMap<String, Issued>,
    token_order: VecDeque<String>,
    faults: Vec<Fault>,
    log: Vec<LogEntry>,
    seq: u64,
}

/// The emulated vault and its authority: keys, issued tokens, faults, request log.
pub struct AzureKv {
    cfg: Config,
    inner: Mutex<Inner>,
}

/// Whether `id` can be a tenant or client id (a GUID or a domain-like name).
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 100
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Builds the emulator from its options (reads the secret and certificate files).
pub fn build(opts: &AzureOptions) -> Result<AzureKv, EmulatorError> {
    if !valid_id(&opts.tenant) {
        return Err("--tenant: expected a GUID (letters, digits, '-', '.')".into());
    }
    if !valid_id(&opts.client_id) {
        return Err("--client-id: expected a GUID (letters, digits, '-', '.')".into());
    }
    if opts.client_secret_file.is_none() && opts.client_cert.is_none() {
        return Err("give --client-secret-file, --client-cert or both".into());
    }
    let client_secret = opts
        .client_secret_file
        .as_deref()
        .map(|p| crate::aws::read_secret(p, "--client-secret-file"))
        .transpose()?;
    let client_cert = match &opts.client_cert {
        None => None,
        Some(p) => {
            let pem =
                std::fs::read(p).map_err(|e| format!("--client-cert {}: {e}", p.display()))?;
            let cert = X509::from_pem(&pem)
                .map_err(|_| format!("--client-cert {}: not a PEM certificate", p.display()))?;
            let rsa = cert.public_key().ok().and_then(|k| k.rsa().ok());
            if rsa.is_none() {
                return Err(format!(
                    "--client-cert {}: Entra ID takes RSA certificates for client assertions",
                    p.display()
                )
                .into());
            }
            Some(cert)
        }
    };
    Ok(AzureKv::new(Config {
        tenant: opts.tenant.clone(),
        client_id: opts.client_id.clone(),
        client_secret,
        client_cert,
        managed_hsm: opts.managed_hsm,
        token_ttl: Duration::from_secs(opts.token_ttl_secs),
        test_oracle: opts.test_oracle,
    }))
}

/// Serves until the process ends. Prints `azure-kv-emulator: listening on https://ADDR` on
/// stdout.
pub async fn run(opts: AzureOptions) -> Result<(), EmulatorError> {
    let tls = crate::server::tls_config(&opts.tls_cert, &opts.tls_key)?;
    let kv = Arc::new(build(&opts)?);
    let (listener, addr) = crate::server::bind(opts.listen).await?;
    println!("azure-kv-emulator: listening on https://{addr}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    crate::server::serve(listener, tls, kv).await
}

impl crate::server::Service for AzureKv {
    const MAX_BODY: usize = MAX_BODY;

    fn too_large(&self) -> Reply {
        let mut r = KvError::new(
            413,
            "RequestEntityTooLarge",
            format!("The request body is over {MAX_BODY} bytes."),
        )
        .reply();
        r.headers.push(("x-ms-request-id", uuid()));
        r
    }

    fn handle(&self, parts: &hyper::http::request::Parts, body: &[u8]) -> Outcome {
        let mut headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        if !headers.iter().any(|(n, _)| n == "host")
            && let Some(a) = parts.uri.authority()
        {
            headers.push(("host".into(), a.to_string()));
        }
        AzureKv::handle(
            self,
            &Request {
                method: parts.method.as_str(),
                path: parts.uri.path(),
                query: parts.uri.query().unwrap_or(""),
                headers: &headers,
                body,
            },
            SystemTime::now(),
        )
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Discovery {
        tenant: String,
    },
    Token {
        tenant: String,
    },
    CreateKey {
        name: String,
    },
    GetKey {
        name: String,
        version: Option<String>,
    },
    ImportKey {
        name: String,
    },
    GetKeyVersions {
        name: String,
    },
    Unknown,
}

impl Route {
    fn parse(method: &str, path: &str) -> Route {
        let segs: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
        let s = |x: &str| x.to_string();
        match (method, segs.as_slice()) {
            ("GET", [t, "v2.0", ".well-known", "openid-configuration"]) => {
                Route::Discovery { tenant: s(t) }
            }
            (_, [t, "oauth2", "v2.0", "token"]) => Route::Token { tenant: s(t) },
            ("POST", ["keys", n, "create"]) => Route::CreateKey { name: s(n) },
            ("PUT", ["keys", n]) => Route::ImportKey { name: s(n) },
            ("GET", ["keys", n]) | ("GET", ["keys", n, ""]) => Route::GetKey {
                name: s(n),
                version: None,
            },
            ("GET", ["keys", n, "versions"]) => Route::GetKeyVersions { name: s(n) },
            ("GET", ["keys", n, v]) => Route::GetKey {
                name: s(n),
                version: Some(s(v)),
            },
            _ => Route::Unknown,
        }
    }

    fn op(&self) -> Option<&'static str> {
        Some(match self {
            Route::Discovery { .. } => "Discovery",
            Route::Token { .. } => "Token",
            Route::CreateKey { .. } => "CreateKey",
            Route::GetKey { .. } => "GetKey",
            Route::ImportKey { .. } => "ImportKey",
            Route::GetKeyVersions { .. } => "GetKeyVersions",
            Route::Unknown => return None,
        })
    }

    fn name(&self) -> Option<&str> {
        match self {
            Route::CreateKey { name }
            | Route::GetKey { name, .. }
            | Route::ImportKey { name }
            | Route::GetKeyVersions { name } => Some(name),
            _ => None,
        }
    }

    fn version(&self) -> Option<&str> {
        match self {
            Route::GetKey { version, .. } => version.as_deref(),
            _ => None,
        }
    }

    /// Whether the route is the authority's (no bearer token).
    fn is_authority(&self) -> bool {
        matches!(self, Route::Discovery { .. } | Route::Token { .. })
    }
}

/// The error code of an answer: Key Vault's `error.code` or Entra ID's `error`.
fn error_code(r: &Reply) -> Option<String> {
    if r.status < 400 {
        return None;
    }
    let v = serde_json::from_slice::<Value>(&r.body).ok()?;
    match &v["error"] {
        Value::String(s) => Some(s.clone()),
        e => e["code"].as_str().map(str::to_string),
    }
}

/// The version a successful answer's key bundle names (the last part of its kid).
fn made_version(r: &Reply) -> Option<String> {
    if r.status != 200 {
        return None;
    }
    let v = serde_json::from_slice::<Value>(&r.body).ok()?;
    let kid = v["key"]["kid"].as_str()?;
    Some(kid.rsplit('/').next()?.to_string())
}

impl AzureKv {
    pub fn new(cfg: Config) -> AzureKv {
        AzureKv {
            cfg,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Versions committed late appear once their time has come, before anything is read.
        let now = SystemTime::now();
        if inner.pending.iter().any(|(due, _, _)| *due <= now) {
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut inner.pending)
                .into_iter()
                .partition(|(d, _, _)| *d <= now);
            inner.pending = later;
            for (_, name, version) in due {
                inner
                    .keys
                    .entry(name)
                    .or_insert_with(|| Key {
                        versions: Vec::new(),
                    })
                    .versions
                    .push(version);
            }
        }
        inner
    }

    /// The resource tokens for this vault are for.
    pub(crate) fn resource(&self) -> &'static str {
        if self.cfg.managed_hsm {
            MHSM_RESOURCE
        } else {
            VAULT_RESOURCE
        }
    }

    /// What error messages call this vault.
    pub(crate) fn kind(&self) -> &'static str {
        if self.cfg.managed_hsm {
            "managed HSM"
        } else {
            "key vault"
        }
    }

    /// The request log.
    pub fn log(&self) -> Vec<LogEntry> {
        self.lock().log.clone()
    }

    /// Handles one request at time `now`: the control API, the authority, or a Key Vault
    /// call under the fault list.
    pub fn handle(&self, req: &Request<'_>, now: SystemTime) -> Outcome {
        let request_id = uuid();
        if req.path.starts_with("/_emulator/") {
            let mut reply = self.control(req, now);
            reply.headers.push(("x-ms-request-id", request_id));
            return Outcome::Reply {
                reply,
                delay: Duration::ZERO,
            };
        }
        let route = Route::parse(req.method, req.path);
        let had_token = !route.is_authority() && req.header("authorization").is_some();
        let mut entry = LogEntry {
            seq: 0,
            time: hsm_bridge::time::rfc3339(now),
            op: route.op().map(str::to_string),
            name: route.name().map(|n| n.chars().take(127).collect()),
            version: route.version().map(|v| v.chars().take(64).collect()),
            status: 0,
            code: None,
            token: had_token,
            client_auth: None,
            fault: false,
            request_id: request_id.clone(),
        };
        let fault = self.take_fault(route.op(), route.name(), had_token || route.is_authority());
        let (mut reply, delay) = match fault {
            None => {
                let (r, how) = self.call(req, &route, now);
                entry.client_auth = how.map(|h| h.name().to_string());
                (r, Duration::ZERO)
            }
            Some(f) => {
                entry.fault = true;
                let delay = Duration::from_millis(f.delay_ms);
                if f.drop {
                    if f.processed {
                        let (r, how) = self.call(req, &route, now);
                        entry.status = r.status;
                        entry.version = entry.version.take().or_else(|| made_version(&r));
                        entry.client_auth = how.map(|h| h.name().to_string());
                        entry.code = Some("(handled; answer dropped)".into());
                    } else {
                        entry.code = Some("(connection dropped)".into());
                    }
                    self.record(entry);
                    return Outcome::Drop { delay };
                }
                match f.answer(&self.cfg.tenant, had_token) {
                    Some(r) => (r, delay),
                    None if f.commit_after_ms > 0 => {
                        let late = Duration::from_millis(f.commit_after_ms);
                        keys::COMMIT_AFTER.with(|c| c.set(Some(late)));
                        let (r, how) = self.call(req, &route, now);
                        keys::COMMIT_AFTER.with(|c| c.set(None));
                        entry.client_auth = how.map(|h| h.name().to_string());
                        (r, delay.max(late))
                    }
                    None => {
                        let (r, how) = self.call(req, &route, now);
                        entry.client_auth = how.map(|h| h.name().to_string());
                        (r, delay)
                    }
                }
            }
        };
        reply.headers.push(("x-ms-request-id", request_id));
        entry.status = reply.status;
        entry.code = error_code(&reply);
        entry.version = entry.version.take().or_else(|| made_version(&reply));
        self.record(entry);
        Outcome::Reply { reply, delay }
    }

    fn record(&self, mut entry: LogEntry) {
        let mut inner = self.lock();
        inner.seq += 1;
        entry.seq = inner.seq;
        if inner.log.len() >= MAX_LOG {
            inner.log.remove(0);
        }
        tracing::info!(
            op = entry.op.as_deref().unwrap_or(""), status = entry.status,
            code = entry.code.as_deref().unwrap_or(""), fault = entry.fault,
            request_id = %entry.request_id, "request"
        );
        inner.log.push(entry);
    }

    /// One request: the authority's routes as they are, Key Vault's after the api-version
    /// and the bearer token.
    fn call(
        &self,
        req: &Request<'_>,
        route: &Route,
        now: SystemTime,
    ) -> (Reply, Option<ClientAuth>) {
        let Some(host) = req.header("host").filter(|h| !h.is_empty()) else {
            return (
                KvError::bad("The request has no Host header.").reply(),
                None,
            );
        };
        match route {
            Route::Discovery { tenant } => return (self.discovery(tenant, host, now), None),
            Route::Token { tenant } => return self.token(req, tenant, host, now),
            _ => {}
        }
        let query: Vec<(String, String)> = form_urlencoded::parse(req.query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if !query
            .iter()
            .any(|(k, v)| k == "api-version" && !v.is_empty())
        {
            return (
                KvError::bad(
                    "The api-version query parameter is required (e.g. api-version=2025-07-01).",
                )
                .reply(),
                None,
            );
        }
        if let Err(message) = self.check_bearer(req.header("authorization"), now) {
            return (challenge(&self.cfg.tenant, self.resource(), message), None);
        }
        let base = format!("https://{host}");
        let body = || -> Result<Value, KvError> {
            serde_json::from_slice(req.body)
                .map_err(|_| KvError::bad("The request body is not valid JSON."))
        };
        let result = match route {
            Route::CreateKey { name } => {
                body().and_then(|b| self.create_key(name, &b, &base, now, true))
            }
            Route::ImportKey { name } => body().and_then(|b| self.import_key(name, &b, &base, now)),
            Route::GetKey { name, version } => self.get_key(name, version.as_deref(), &base),
            Route::GetKeyVersions { name } => self.key_versions(name, &query, &base),
            _ => Err(KvError::new(
                404,
                "NotFound",
                format!(
                    "{} {}: the emulator serves keys/{{name}}/create, keys/{{name}}[/{{version}}], keys/{{name}}/versions and PUT keys/{{name}}.",
                    req.method, req.path
                ),
            )),
        };
        (keys::reply(result), None)
    }
}
