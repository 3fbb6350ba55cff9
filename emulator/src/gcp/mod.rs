//! A local Google Cloud KMS endpoint for the key-import calls, and a Compute Engine
//! metadata server its tokens can come from, faithful enough that passing against it means
//! passing against Cloud KMS: HTTPS, Cloud KMS v1's REST paths and camelCase fields, enums
//! as numbers with `$alt=json;enum-encoding=int` (what the client libraries send) and as
//! names without, `{"error":{"code","message","status"}}` errors, bearer tokens that are
//! either self-signed service-account JWTs (checked against `--service-account` keys) or
//! tokens the metadata server issued, import jobs that go PENDING_GENERATION, ACTIVE, then
//! EXPIRED with real RSA keys, a real unwrap of what is imported with the version going
//! PENDING_IMPORT then ENABLED or IMPORT_FAILED, and fault injection for tests. Shipped as
//! the `gcp-kms-emulator` binary. Never for production: it holds imported keys in memory
//! and, with `--test-oracle`, hands them out.
//!
//! Routes (under `/v1/`, with a bearer token): `POST|GET {location}/keyRings`, `GET
//! {keyRing}`, `POST|GET {keyRing}/importJobs`, `GET {importJob}`, `POST
//! {keyRing}/cryptoKeys`, `GET {cryptoKey}`, `POST {cryptoKey}/cryptoKeyVersions:import`,
//! `GET {cryptoKey}/cryptoKeyVersions`, `GET {cryptoKeyVersion}`, `GET
//! {cryptoKeyVersion}/publicKey`. Test control, unauthenticated, under `/_emulator/`: `GET
//! requests`, `POST faults`, `DELETE faults`, `POST job-faults`, `GET
//! material/{cryptoKeyVersion}` (only with `--test-oracle`). The metadata server (plain
//! HTTP, `--metadata-listen`) serves what google-auth's and google-cloud-auth's Compute
//! Engine credentials read; see src/gcp/auth.rs.

mod auth;
mod control;
mod faults;
mod import;
mod keys;
pub mod protocol;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::EmulatorError;
use crate::aws::Request;
use crate::state::{Outcome, Reply};

pub use auth::ServiceAccount;
pub use faults::{Fault, JobFaults};
use keys::KeyRing;
use protocol::GcpError;

/// Largest request body read (a wrapped RSA-4096 key is about 3.5 KiB, base64).
const MAX_BODY: usize = 64 << 10;
/// Largest metadata request body (only GETs are served).
const MAX_METADATA_BODY: usize = 4 << 10;
/// Requests kept in the log.
const MAX_LOG: usize = 10_000;
/// Metadata tokens kept (the oldest are forgotten first).
const MAX_TOKENS: usize = 10_000;
/// Key rings kept.
const MAX_KEY_RINGS: usize = 1_000;
/// Import jobs or crypto keys in one key ring.
const MAX_PER_RING: usize = 10_000;
/// Versions of one crypto key.
const MAX_VERSIONS: usize = 1_000;
/// The default and largest page of a listing.
const PAGE_DEFAULT: usize = 100;
const PAGE_MAX: usize = 1_000;
/// The audience of a self-signed JWT for Cloud KMS.
pub const AUDIENCE: &str = "https://cloudkms.googleapis.com/";
/// Scopes that reach Cloud KMS.
pub const SCOPES: &[&str] = &[
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/cloudkms",
];

/// How the GCP emulator starts.
#[derive(Debug, Clone, clap::Args)]
pub struct GcpOptions {
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8446")]
    pub listen: SocketAddr,
    /// TLS certificate chain (PEM).
    #[arg(long, value_name = "PEM")]
    pub tls_cert: PathBuf,
    /// TLS private key (PEM).
    #[arg(long, value_name = "PEM")]
    pub tls_key: PathBuf,
    /// A service-account key file (JSON, as the IAM console gives it) whose self-signed
    /// JWTs are accepted (the public key is derived from its private_key). Repeatable.
    #[arg(long = "service-account", value_name = "FILE")]
    pub service_accounts: Vec<PathBuf>,
    /// A key ring made at start, `projects/P/locations/L/keyRings/R`. Repeatable.
    #[arg(long = "key-ring", value_name = "NAME")]
    pub key_rings: Vec<String>,
    /// Serve a Compute Engine metadata server (plain HTTP) on this address too.
    #[arg(long, value_name = "ADDR")]
    pub metadata_listen: Option<SocketAddr>,
    /// The service account the metadata server issues tokens for (default: the first
    /// `--service-account`'s client_email).
    #[arg(long, value_name = "EMAIL")]
    pub metadata_email: Option<String>,
    /// How long a new import job stays PENDING_GENERATION.
    #[arg(long, default_value_t = 300)]
    pub job_generation_ms: u64,
    /// How long an import job lives before it is EXPIRED (Cloud KMS: 3 days).
    #[arg(long, default_value_t = 3 * 86_400_000)]
    pub job_ttl_ms: u64,
    /// How long an imported version stays PENDING_IMPORT.
    #[arg(long, default_value_t = 200)]
    pub import_ms: u64,
    /// How long a metadata-server token is good for.
    #[arg(long, default_value_t = 3599)]
    pub token_ttl_secs: u64,
    /// Serve `GET /_emulator/material/{cryptoKeyVersion}`: imported key material, hex. For
    /// tests that prove what arrived; never on a shared machine.
    #[arg(long)]
    pub test_oracle: bool,
}

/// The emulator's settings, as [`GcpOptions`] gives them once files are read.
pub struct Config {
    pub service_accounts: Vec<ServiceAccount>,
    pub metadata_email: Option<String>,
    pub job_generation: Duration,
    pub job_ttl: Duration,
    pub import_delay: Duration,
    pub token_ttl: Duration,
    pub test_oracle: bool,
}

/// One line of the request log (never key material or tokens).
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogEntry {
    pub seq: u64,
    pub time: String,
    /// `CreateKeyRing`, `GetKeyRing`, `CreateImportJob`, `GetImportJob`, `ListImportJobs`,
    /// `CreateCryptoKey`, `GetCryptoKey`, `ImportCryptoKeyVersion`,
    /// `ListCryptoKeyVersions`, `GetCryptoKeyVersion`, `GetPublicKey`, `MetadataToken`,
    /// `Metadata` (the metadata server's other reads); none for a route not served.
    pub op: Option<String>,
    /// The resource name in the path (for an import, the version it made).
    pub resource: Option<String>,
    pub status: u16,
    /// The error's `status` (e.g. `FAILED_PRECONDITION`).
    pub code: Option<String>,
    /// How the call authenticated: `jwt` (a self-signed service-account JWT), `metadata`
    /// (a token of the metadata server), none when it did not.
    pub auth: Option<String>,
    /// The service account the token is of.
    pub principal: Option<String>,
    /// A JWT's `aud` and `scope` claims.
    pub jwt_aud: Option<String>,
    pub jwt_scope: Option<String>,
    /// For a metadata token, the scopes asked for.
    pub scopes: Option<String>,
    pub fault: bool,
}

#[derive(Default)]
struct Inner {
    rings: BTreeMap<String, KeyRing>,
    tokens: HashMap<String, auth::Issued>,
    token_order: VecDeque<String>,
    faults: Vec<Fault>,
    job_faults: JobFaults,
    log: Vec<LogEntry>,
    seq: u64,
}

/// The emulated Cloud KMS and its metadata server.
pub struct GcpKms {
    cfg: Config,
    inner: Mutex<Inner>,
}

/// Builds the emulator from its options (reads the service-account files, makes the key
/// rings).
pub fn build(opts: &GcpOptions) -> Result<GcpKms, EmulatorError> {
    let mut accounts = Vec::new();
    for p in &opts.service_accounts {
        accounts.push(ServiceAccount::from_file(p)?);
    }
    if opts.metadata_listen.is_some() && opts.metadata_email.is_none() && accounts.is_empty() {
        return Err("--metadata-listen needs --metadata-email or a --service-account".into());
    }
    if let Some(e) = &opts.metadata_email
        && (e.is_empty() || e.len() > 200 || !e.contains('@') || e.contains(char::is_whitespace))
    {
        return Err(format!("--metadata-email {e:?}: expected a service account's email").into());
    }
    let kms = GcpKms::new(Config {
        metadata_email: opts
            .metadata_email
            .clone()
            .or_else(|| accounts.first().map(|a| a.client_email.clone())),
        service_accounts: accounts,
        job_generation: Duration::from_millis(opts.job_generation_ms),
        job_ttl: Duration::from_millis(opts.job_ttl_ms),
        import_delay: Duration::from_millis(opts.import_ms),
        token_ttl: Duration::from_secs(opts.token_ttl_secs),
        test_oracle: opts.test_oracle,
    });
    for name in &opts.key_rings {
        kms.seed_key_ring(name)
            .map_err(|e| format!("--key-ring {name:?}: {}", e.message))?;
    }
    Ok(kms)
}

/// Serves until the process ends. Prints `gcp-kms-emulator: listening on https://ADDR`,
/// then, with `--metadata-listen`, `gcp-kms-emulator: metadata on http://ADDR`, on stdout.
pub async fn run(opts: GcpOptions) -> Result<(), EmulatorError> {
    let tls = crate::server::tls_config(&opts.tls_cert, &opts.tls_key)?;
    let kms = Arc::new(build(&opts)?);
    let (listener, addr) = crate::server::bind(opts.listen).await?;
    let metadata = match opts.metadata_listen {
        Some(a) => Some(crate::server::bind(a).await?),
        None => None,
    };
    println!("gcp-kms-emulator: listening on https://{addr}");
    if let Some((_, a)) = &metadata {
        println!("gcp-kms-emulator: metadata on http://{a}");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    match metadata {
        None => crate::server::serve(listener, tls, kms).await,
        Some((ml, _)) => {
            let md = Arc::new(auth::MetadataServer(kms.clone()));
            tokio::try_join!(
                crate::server::serve(listener, tls, kms),
                crate::server::serve_plain(ml, md)
            )
            .map(|_| ())
        }
    }
}

/// The request's headers, lowercase names, with the Host.
pub(crate) fn headers_of(parts: &hyper::http::request::Parts) -> Vec<(String, String)> {
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
    headers
}

impl crate::server::Service for GcpKms {
    const MAX_BODY: usize = MAX_BODY;

    fn too_large(&self) -> Reply {
        GcpError::new(
            413,
            "INVALID_ARGUMENT",
            format!("The request body is over {MAX_BODY} bytes."),
        )
        .reply()
    }

    fn handle(&self, parts: &hyper::http::request::Parts, body: &[u8]) -> Outcome {
        let headers = headers_of(parts);
        GcpKms::handle(
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

/// What a request asks for; names are full resource names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    CreateKeyRing {
        location: String,
    },
    GetKeyRing {
        ring: String,
    },
    CreateImportJob {
        ring: String,
    },
    ListImportJobs {
        ring: String,
    },
    GetImportJob {
        ring: String,
        job: String,
    },
    CreateCryptoKey {
        ring: String,
    },
    GetCryptoKey {
        ring: String,
        key: String,
    },
    ImportCryptoKeyVersion {
        ring: String,
        key: String,
    },
    ListCryptoKeyVersions {
        ring: String,
        key: String,
    },
    GetCryptoKeyVersion {
        ring: String,
        key: String,
        version: String,
    },
    GetPublicKey {
        ring: String,
        key: String,
        version: String,
    },
    Unknown,
}

/// `%XX` escapes decoded (a path's segments as clients may escape them).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Route {
    fn parse(method: &str, path: &str) -> Route {
        let Some(rest) = path.strip_prefix("/v1/") else {
            return Route::Unknown;
        };
        let rest = percent_decode(rest);
        let segs: Vec<&str> = rest.split('/').collect();
        if segs.iter().any(|s| s.is_empty()) {
            return Route::Unknown;
        }
        let ["projects", p, "locations", l, tail @ ..] = segs.as_slice() else {
            return Route::Unknown;
        };
        let location = format!("projects/{p}/locations/{l}");
        let ring = |r: &str| format!("{location}/keyRings/{r}");
        let s = |x: &str| x.to_string();
        match (method, tail) {
            ("POST", ["keyRings"]) => Route::CreateKeyRing { location },
            ("GET", ["keyRings", r]) => Route::GetKeyRing { ring: ring(r) },
            ("POST", ["keyRings", r, "importJobs"]) => Route::CreateImportJob { ring: ring(r) },
            ("GET", ["keyRings", r, "importJobs"]) => Route::ListImportJobs { ring: ring(r) },
            ("GET", ["keyRings", r, "importJobs", j]) => Route::GetImportJob {
                ring: ring(r),
                job: s(j),
            },
            ("POST", ["keyRings", r, "cryptoKeys"]) => Route::CreateCryptoKey { ring: ring(r) },
            ("GET", ["keyRings", r, "cryptoKeys", k]) => Route::GetCryptoKey {
                ring: ring(r),
                key: s(k),
            },
            ("POST", ["keyRings", r, "cryptoKeys", k, "cryptoKeyVersions:import"]) => {
                Route::ImportCryptoKeyVersion {
                    ring: ring(r),
                    key: s(k),
                }
            }
            ("GET", ["keyRings", r, "cryptoKeys", k, "cryptoKeyVersions"]) => {
                Route::ListCryptoKeyVersions {
                    ring: ring(r),
                    key: s(k),
                }
            }
            ("GET", ["keyRings", r, "cryptoKeys", k, "cryptoKeyVersions", v]) => {
                Route::GetCryptoKeyVersion {
                    ring: ring(r),
                    key: s(k),
                    version: s(v),
                }
            }
            (
                "GET",
                [
                    "keyRings",
                    r,
                    "cryptoKeys",
                    k,
                    "cryptoKeyVersions",
                    v,
                    "publicKey",
                ],
            ) => Route::GetPublicKey {
                ring: ring(r),
                key: s(k),
                version: s(v),
            },
            _ => Route::Unknown,
        }
    }

    fn op(&self) -> Option<&'static str> {
        Some(match self {
            Route::CreateKeyRing { .. } => "CreateKeyRing",
            Route::GetKeyRing { .. } => "GetKeyRing",
            Route::CreateImportJob { .. } => "CreateImportJob",
            Route::ListImportJobs { .. } => "ListImportJobs",
            Route::GetImportJob { .. } => "GetImportJob",
            Route::CreateCryptoKey { .. } => "CreateCryptoKey",
            Route::GetCryptoKey { .. } => "GetCryptoKey",
            Route::ImportCryptoKeyVersion { .. } => "ImportCryptoKeyVersion",
            Route::ListCryptoKeyVersions { .. } => "ListCryptoKeyVersions",
            Route::GetCryptoKeyVersion { .. } => "GetCryptoKeyVersion",
            Route::GetPublicKey { .. } => "GetPublicKey",
            Route::Unknown => return None,
        })
    }

    /// The resource the path names.
    fn resource(&self) -> Option<String> {
        Some(match self {
            Route::CreateKeyRing { location } => format!("{location}/keyRings"),
            Route::GetKeyRing { ring }
            | Route::CreateImportJob { ring }
            | Route::ListImportJobs { ring }
            | Route::CreateCryptoKey { ring } => ring.clone(),
            Route::GetImportJob { ring, job } => format!("{ring}/importJobs/{job}"),
            Route::GetCryptoKey { ring, key }
            | Route::ImportCryptoKeyVersion { ring, key }
            | Route::ListCryptoKeyVersions { ring, key } => format!("{ring}/cryptoKeys/{key}"),
            Route::GetCryptoKeyVersion { ring, key, version }
            | Route::GetPublicKey { ring, key, version } => {
                format!("{ring}/cryptoKeys/{key}/cryptoKeyVersions/{version}")
            }
            Route::Unknown => return None,
        })
    }
}

/// The error status of an answer.
fn error_code(r: &Reply) -> Option<String> {
    if r.status < 400 {
        return None;
    }
    let v = serde_json::from_slice::<Value>(&r.body).ok()?;
    v["error"]["status"].as_str().map(str::to_string)
}

/// The `name` of a successful answer (the version an import made).
fn made_name(r: &Reply) -> Option<String> {
    if r.status != 200 {
        return None;
    }
    let v = serde_json::from_slice::<Value>(&r.body).ok()?;
    v["name"].as_str().map(str::to_string)
}

/// What one call needs besides the request: the time, whether enums go out as numbers,
/// and how late what it makes appears (a `commit_after_ms` fault).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx {
    pub(crate) now: SystemTime,
    pub(crate) ints: bool,
    pub(crate) commit_after: Duration,
}

/// How a call authenticated.
#[derive(Debug, Clone, Default)]
pub(crate) struct Authed {
    pub(crate) way: &'static str,
    pub(crate) principal: String,
    pub(crate) aud: Option<String>,
    pub(crate) scope: Option<String>,
}

impl GcpKms {
    pub fn new(cfg: Config) -> GcpKms {
        GcpKms {
            cfg,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The request log.
    pub fn log(&self) -> Vec<LogEntry> {
        self.lock().log.clone()
    }

    fn record(&self, mut entry: LogEntry) {
        let mut inner = self.lock();
        inner.seq += 1;
        entry.seq = inner.seq;
        if inner.log.len() >= MAX_LOG {
            inner.log.remove(0);
        }
        tracing::info!(
            op = entry.op.as_deref().unwrap_or(""),
            status = entry.status,
            code = entry.code.as_deref().unwrap_or(""),
            fault = entry.fault,
            "request"
        );
        inner.log.push(entry);
    }

    fn entry(&self, op: Option<&str>, resource: Option<String>, now: SystemTime) -> LogEntry {
        LogEntry {
            seq: 0,
            time: hsm_bridge::time::rfc3339(now),
            op: op.map(str::to_string),
            resource: resource.map(|r| r.chars().take(300).collect()),
            status: 0,
            code: None,
            auth: None,
            principal: None,
            jwt_aud: None,
            jwt_scope: None,
            scopes: None,
            fault: false,
        }
    }

    /// Handles one request at time `now`: the control API, or a Cloud KMS call under the
    /// fault list.
    pub fn handle(&self, req: &Request<'_>, now: SystemTime) -> Outcome {
        if req.path.starts_with("/_emulator/") {
            return Outcome::Reply {
                reply: self.control(req),
                delay: Duration::ZERO,
            };
        }
        let route = Route::parse(req.method, req.path);
        let mut entry = self.entry(route.op(), route.resource(), now);
        let ints = form_urlencoded::parse(req.query.as_bytes())
            .any(|(k, v)| k == "$alt" && v.contains("enum-encoding=int"));
        let mut ctx = Ctx {
            now,
            ints,
            commit_after: Duration::ZERO,
        };
        let fault = self.take_fault(route.op(), route.resource().as_deref());
        let mut delay = Duration::ZERO;
        if let Some(f) = &fault {
            entry.fault = true;
            delay = Duration::from_millis(f.delay_ms);
            if f.drop {
                if f.processed {
                    let (r, who) = self.call(req, &route, ctx);
                    entry.status = r.status;
                    note(&mut entry, who.as_ref());
                    if route.op() == Some("ImportCryptoKeyVersion") {
                        entry.resource = made_name(&r).or(entry.resource.take());
                    }
                    entry.code = Some("(handled; answer dropped)".into());
                } else {
                    entry.code = Some("(connection dropped)".into());
                }
                self.record(entry);
                return Outcome::Drop { delay };
            }
            if let Some(r) = f.answer() {
                entry.status = r.status;
                entry.code = error_code(&r);
                self.record(entry);
                return Outcome::Reply { reply: r, delay };
            }
            if f.commit_after_ms > 0 {
                ctx.commit_after = Duration::from_millis(f.commit_after_ms);
                delay = delay.max(ctx.commit_after);
            }
        }
        let (reply, who) = self.call(req, &route, ctx);
        note(&mut entry, who.as_ref());
        entry.status = reply.status;
        entry.code = error_code(&reply);
        if route.op() == Some("ImportCryptoKeyVersion") {
            entry.resource = made_name(&reply).or(entry.resource.take());
        }
        self.record(entry);
        Outcome::Reply { reply, delay }
    }

    /// One Cloud KMS call: the token, then the route.
    fn call(&self, req: &Request<'_>, route: &Route, ctx: Ctx) -> (Reply, Option<Authed>) {
        let who = match self.authenticate(req.header("authorization"), ctx.now) {
            Ok(w) => w,
            Err(e) => return (e.reply(), None),
        };
        let query: Vec<(String, String)> = form_urlencoded::parse(req.query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let q = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let body = || -> Result<Value, GcpError> {
            if req.body.is_empty() {
                return Ok(Value::Object(Default::default()));
            }
            match serde_json::from_slice::<Value>(req.body) {
                Ok(v @ Value::Object(_)) => Ok(v),
                _ => Err(GcpError::invalid(
                    "Invalid JSON payload received. The body is not a JSON object.",
                )),
            }
        };
        let result = match route {
            Route::CreateKeyRing { location } => {
                self.create_key_ring(location, q("keyRingId"), ctx)
            }
            Route::GetKeyRing { ring } => self.get_key_ring(ring, ctx),
            Route::CreateImportJob { ring } => {
                body().and_then(|b| self.create_import_job(ring, q("importJobId"), &b, ctx))
            }
            Route::ListImportJobs { ring } => {
                self.list_import_jobs(ring, q("pageSize"), q("pageToken"), ctx)
            }
            Route::GetImportJob { ring, job } => self.get_import_job(ring, job, ctx),
            Route::CreateCryptoKey { ring } => body().and_then(|b| {
                let skip = protocol::query_bool(
                    q("skipInitialVersionCreation"),
                    "skip_initial_version_creation",
                )?;
                self.create_crypto_key(ring, q("cryptoKeyId"), skip, &b, ctx)
            }),
            Route::GetCryptoKey { ring, key } => self.get_crypto_key(ring, key, ctx),
            Route::ImportCryptoKeyVersion { ring, key } => {
                body().and_then(|b| self.import_version(ring, key, &b, ctx))
            }
            Route::ListCryptoKeyVersions { ring, key } => self.list_versions(
                ring,
                key,
                &keys::ListQuery {
                    page_size: q("pageSize"),
                    page_token: q("pageToken"),
                    filter: q("filter"),
                },
                ctx,
            ),
            Route::GetCryptoKeyVersion { ring, key, version } => {
                self.get_version(ring, key, version, ctx)
            }
            Route::GetPublicKey { ring, key, version } => {
                self.get_public_key(ring, key, version, ctx)
            }
            Route::Unknown => Err(GcpError::not_found(format!(
                "{} {}: the emulator serves Cloud KMS v1's key ring, import job, crypto key and crypto key version calls for import.",
                req.method, req.path
            ))),
        };
        let reply = match result {
            Ok(v) => protocol::json_reply(200, &v),
            Err(e) => e.reply(),
        };
        (reply, Some(who))
    }
}

fn note(entry: &mut LogEntry, who: Option<&Authed>) {
    if let Some(w) = who {
        entry.auth = Some(w.way.to_string());
        entry.principal = Some(w.principal.clone());
        entry.jwt_aud = w.aud.clone();
        entry.jwt_scope = w.scope.clone();
    }
}
