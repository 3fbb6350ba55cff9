//! A local AWS KMS endpoint for the key-import calls, faithful enough that passing against
//! it means passing against KMS: HTTPS, AWS JSON 1.1 (`POST /`, `X-Amz-Target:
//! TrentService.<Op>`), every request's Signature Version 4 checked against one access
//! key, KMS's member names, enums, limits and `{"__type","message"}` errors, real RSA
//! wrapping keys and a real unwrap of what is imported, KMS's rules for re-imports and
//! on-demand rotation of imported material, and fault injection for tests. Shipped as the
//! `aws-kms-emulator` binary. Never for production: it holds imported keys in memory and,
//! with `--test-oracle`, hands them out.
//!
//! Operations: CreateKey, DescribeKey, GetPublicKey, GetParametersForImport, ImportKeyMaterial,
//! RotateKeyOnDemand, ListKeyRotations. Test control, unsigned, under `/_emulator/`:
//! `GET requests` (the request log), `POST faults`, `DELETE faults`, `POST keys` (a key
//! made without a signature), `GET keys/{keyId}` (a key, its materials and call counts),
//! `GET material/{keyId}/{keyMaterialId}` (only with `--test-oracle`).

mod control;
mod faults;
mod import;
mod keys;
mod ops;
pub mod protocol;
pub mod sigv4;
pub(crate) mod unwrap;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use openssl::pkey::{PKey, Private};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::EmulatorError;
use crate::state::{Outcome, Reply};

pub use faults::Fault;
use keys::Key;
use protocol::{AwsError, Input, json_reply, uuid};
use unwrap::Wrap;

/// Largest request body read (KMS's import members are at most 6144 bytes, base64).
const MAX_BODY: usize = 64 << 10;
/// Requests kept in the log.
const MAX_LOG: usize = 10_000;
/// Import tokens kept (the oldest are forgotten first).
const MAX_TOKENS: usize = 10_000;
const TARGET_PREFIX: &str = "TrentService.";

/// How the AWS emulator starts.
#[derive(Debug, Clone, clap::Args)]
pub struct AwsOptions {
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8444")]
    pub listen: SocketAddr,
    /// TLS certificate chain (PEM).
    #[arg(long, value_name = "PEM")]
    pub tls_cert: PathBuf,
    /// TLS private key (PEM).
    #[arg(long, value_name = "PEM")]
    pub tls_key: PathBuf,
    /// The region signatures must be scoped to, and that key ARNs name.
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// The account that key ARNs name (12 digits).
    #[arg(long, default_value = "111122223333")]
    pub account: String,
    /// The access key id whose signatures are accepted.
    #[arg(long, value_name = "AKID")]
    pub access_key_id: String,
    /// A file holding the secret access key (never given on the command line).
    #[arg(long, value_name = "FILE")]
    pub secret_access_key_file: PathBuf,
    /// A file holding a session token; then `X-Amz-Security-Token` must be exactly it.
    #[arg(long, value_name = "FILE")]
    pub session_token_file: Option<PathBuf>,
    /// How long an import token and its public key stay usable.
    #[arg(long, default_value_t = 86_400)]
    pub import_token_ttl_secs: u64,
    /// Serve `GET /_emulator/material/{keyId}/{keyMaterialId}`: imported key material, hex.
    /// For tests that prove what arrived; never on a shared machine.
    #[arg(long)]
    pub test_oracle: bool,
}

/// The emulator's settings, as [`AwsOptions`] gives them once files are read.
pub struct Config {
    pub region: String,
    pub account: String,
    pub access_key_id: String,
    pub secret_access_key: Zeroizing<String>,
    pub session_token: Option<Zeroizing<String>>,
    pub import_token_ttl: Duration,
    pub test_oracle: bool,
}

/// What GetParametersForImport issued a token for.
struct Token {
    key_id: String,
    wrap: Wrap,
    wrapping_bits: u32,
    expires: SystemTime,
}

/// One line of the request log (never key material).
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogEntry {
    pub seq: u64,
    pub time: String,
    /// The operation named by `X-Amz-Target`.
    pub op: Option<String>,
    /// The `KeyId` member, as sent.
    pub key_id: Option<String>,
    pub status: u16,
    /// The error's `__type`.
    pub code: Option<String>,
    pub fault: bool,
    pub request_id: String,
}

#[derive(Default)]
struct Inner {
    /// By key id.
    keys: BTreeMap<String, Key>,
    tokens: HashMap<Vec<u8>, Token>,
    token_order: VecDeque<Vec<u8>>,
    faults: Vec<Fault>,
    log: Vec<LogEntry>,
    seq: u64,
}

/// The emulated KMS: its keys, import tokens, wrapping keys, faults and request log.
pub struct AwsKms {
    cfg: Config,
    /// RSA-2048, -3072 and -4096 wrapping keys, each made when first asked for.
    wrapping: [OnceLock<PKey<Private>>; 3],
    inner: Mutex<Inner>,
}

/// A request as the emulator sees it. Header names are lowercase; a header sent twice
/// appears twice, in order.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl Request<'_> {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub(crate) fn read_secret(
    path: &std::path::Path,
    what: &str,
) -> Result<Zeroizing<String>, EmulatorError> {
    let s = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| format!("{what} {}: {e}", path.display()))?,
    );
    let t = s.trim();
    if t.is_empty() || t.contains(char::is_whitespace) {
        return Err(format!("{what} {}: expected one line, no spaces", path.display()).into());
    }
    Ok(Zeroizing::new(t.to_string()))
}

/// Builds the emulator from its options (reads the secret files).
pub fn build(opts: &AwsOptions) -> Result<AwsKms, EmulatorError> {
    let region_ok = !opts.region.is_empty()
        && opts
            .region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !region_ok {
        return Err(format!("--region {:?}: expected e.g. us-east-1", opts.region).into());
    }
    if opts.account.len() != 12 || !opts.account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("--account {:?}: expected 12 digits", opts.account).into());
    }
    if opts.access_key_id.is_empty()
        || !opts
            .access_key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
    {
        return Err("--access-key-id: expected letters and digits".into());
    }
    Ok(AwsKms::new(Config {
        region: opts.region.clone(),
        account: opts.account.clone(),
        access_key_id: opts.access_key_id.clone(),
        secret_access_key: read_secret(&opts.secret_access_key_file, "--secret-access-key-file")?,
        session_token: opts
            .session_token_file
            .as_deref()
            .map(|p| read_secret(p, "--session-token-file"))
            .transpose()?,
        import_token_ttl: Duration::from_secs(opts.import_token_ttl_secs),
        test_oracle: opts.test_oracle,
    }))
}

/// Serves until the process ends. Prints `aws-kms-emulator: listening on https://ADDR` on
/// stdout.
pub async fn run(opts: AwsOptions) -> Result<(), EmulatorError> {
    let tls = crate::server::tls_config(&opts.tls_cert, &opts.tls_key)?;
    let kms = Arc::new(build(&opts)?);
    let (listener, addr) = crate::server::bind(opts.listen).await?;
    println!("aws-kms-emulator: listening on https://{addr}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    crate::server::serve(listener, tls, kms).await
}

impl crate::server::Service for AwsKms {
    const MAX_BODY: usize = MAX_BODY;

    fn too_large(&self) -> Reply {
        let mut r = AwsError {
            status: 413,
            code: "RequestEntityTooLargeException".into(),
            message: format!("the request body is over {MAX_BODY} bytes"),
        }
        .reply();
        r.headers.push(("x-amzn-RequestId", uuid()));
        r
    }

    fn handle(&self, parts: &hyper::http::request::Parts, body: &[u8]) -> Outcome {
        let headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        AwsKms::handle(
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

/// The `__type` of an error answer.
fn error_code(r: &Reply) -> Option<String> {
    if r.status < 400 {
        return None;
    }
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["__type"].as_str().map(str::to_string))
}

impl AwsKms {
    pub fn new(cfg: Config) -> AwsKms {
        AwsKms {
            cfg,
            wrapping: Default::default(),
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

    /// Handles one request at time `now`: the control API, or a signed KMS call under the
    /// fault list.
    pub fn handle(&self, req: &Request<'_>, now: SystemTime) -> Outcome {
        let request_id = uuid();
        if req.path.starts_with("/_emulator/") {
            let mut reply = self.control(req, now);
            reply.headers.push(("x-amzn-RequestId", request_id));
            return Outcome::Reply {
                reply,
                delay: Duration::ZERO,
            };
        }
        let op = req
            .header("x-amz-target")
            .map(|t| t.strip_prefix(TARGET_PREFIX).unwrap_or(t).to_string());
        let key_id = serde_json::from_slice::<Value>(req.body)
            .ok()
            .and_then(|v| v["KeyId"].as_str().map(str::to_string));
        let mut entry = LogEntry {
            seq: 0,
            time: hsm_bridge::time::rfc3339(now),
            op,
            key_id,
            status: 0,
            code: None,
            fault: false,
            request_id: request_id.clone(),
        };
        let fault = self.take_fault(entry.op.as_deref(), entry.key_id.as_deref());
        let (mut reply, delay) = match fault {
            None => (self.call(req, now), Duration::ZERO),
            Some(f) => {
                entry.fault = true;
                let delay = Duration::from_millis(f.delay_ms);
                if f.drop {
                    if f.processed {
                        entry.status = self.call(req, now).status;
                        entry.code = Some("(handled; answer dropped)".into());
                    } else {
                        entry.code = Some("(connection dropped)".into());
                    }
                    self.record(entry);
                    return Outcome::Drop { delay };
                }
                (f.answer().unwrap_or_else(|| self.call(req, now)), delay)
            }
        };
        reply.headers.push(("x-amzn-RequestId", request_id));
        entry.status = reply.status;
        entry.code = error_code(&reply);
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

    /// A signed call: the signature, then the operation.
    fn call(&self, req: &Request<'_>, now: SystemTime) -> Reply {
        let creds = sigv4::Credentials {
            access_key_id: &self.cfg.access_key_id,
            secret_access_key: &self.cfg.secret_access_key,
            session_token: self.cfg.session_token.as_deref().map(String::as_str),
            region: &self.cfg.region,
            service: "kms",
        };
        if let Err(e) = sigv4::verify(&creds, req, now) {
            tracing::info!(code = %e.code, "refused signature: {}", e.message);
            return e.reply();
        }
        match self.dispatch(req, now) {
            Ok(v) => json_reply(200, &v),
            Err(e) => e.reply(),
        }
    }

    fn dispatch(&self, req: &Request<'_>, now: SystemTime) -> Result<Value, AwsError> {
        let target = req.header("x-amz-target").unwrap_or_default();
        let op = target.strip_prefix(TARGET_PREFIX);
        if req.method != "POST" || req.path != "/" || op.is_none() {
            return Err(AwsError::new(
                "UnknownOperationException",
                format!(
                    "{} {} with X-Amz-Target {target:?}: KMS takes POST / with X-Amz-Target TrentService.<Operation>",
                    req.method, req.path
                ),
            ));
        }
        let content_type = req.header("content-type").unwrap_or_default();
        if content_type.split(';').next().map(str::trim) != Some(protocol::CONTENT_TYPE) {
            return Err(AwsError::new(
                "SerializationException",
                format!(
                    "Content-Type {content_type:?}: KMS takes {}",
                    protocol::CONTENT_TYPE
                ),
            ));
        }
        let body = Input::parse(req.body)?;
        self.op(op.unwrap_or_default(), &body, now)
    }

    /// Runs operation `op` on a parsed body (the signature already checked).
    pub(crate) fn op(
        &self,
        op: &str,
        body: &Map<String, Value>,
        now: SystemTime,
    ) -> Result<Value, AwsError> {
        self.count_call(op, body, now);
        match op {
            "CreateKey" => self.create_key(body, now),
            "DescribeKey" => self.describe_key(body, now),
            "GetPublicKey" => self.get_public_key(body, now),
            "GetParametersForImport" => self.get_parameters_for_import(body, now),
            "ImportKeyMaterial" => self.import_key_material(body, now),
            "RotateKeyOnDemand" => self.rotate_key_on_demand(body, now),
            "ListKeyRotations" => self.list_key_rotations(body, now),
            other => Err(AwsError::new(
                "UnknownOperationException",
                format!("the emulator does not implement TrentService.{other}"),
            )),
        }
    }

    /// Counts an ImportKeyMaterial or RotateKeyOnDemand call against the key it names,
    /// whatever its answer will be.
    fn count_call(&self, op: &str, body: &Map<String, Value>, now: SystemTime) {
        if !matches!(op, "ImportKeyMaterial" | "RotateKeyOnDemand") {
            return;
        }
        let Some(key_id) = body.get("KeyId").and_then(Value::as_str) else {
            return;
        };
        let mut inner = self.lock();
        if let Ok(k) = self.resolve(&mut inner, key_id, now) {
            match op {
                "ImportKeyMaterial" => k.import_calls += 1,
                _ => k.rotate_calls += 1,
            }
        }
    }

    fn arn(&self, key_id: &str) -> String {
        format!(
            "arn:aws:kms:{}:{}:key/{key_id}",
            self.cfg.region, self.cfg.account
        )
    }

    /// The key that `key_id` (a key id or key ARN) names in this account and region, its
    /// expired material dropped; `NotFoundException` otherwise.
    fn resolve<'k>(
        &self,
        inner: &'k mut Inner,
        key_id: &str,
        now: SystemTime,
    ) -> Result<&'k mut Key, AwsError> {
        if key_id.starts_with("alias/") || key_id.contains(":alias/") {
            return Err(AwsError::new(
                "NotFoundException",
                format!("Alias {key_id} is not found (the emulator keeps no aliases)."),
            ));
        }
        let id = match key_id.strip_prefix("arn:") {
            None => key_id,
            Some(_) => {
                let prefix = format!("arn:aws:kms:{}:{}:key/", self.cfg.region, self.cfg.account);
                key_id.strip_prefix(&prefix).ok_or_else(|| {
                    AwsError::new("NotFoundException", format!("Invalid arn {key_id}"))
                })?
            }
        };
        match inner.keys.get_mut(id) {
            Some(k) => {
                k.expire(now);
                Ok(k)
            }
            None => Err(AwsError::new(
                "NotFoundException",
                format!("Key '{}' does not exist", self.arn(id)),
            )),
        }
    }
}
