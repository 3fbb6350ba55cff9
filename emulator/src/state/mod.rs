//! The emulator's vault: keys, versions, retry tokens, faults and the request log, and the
//! handling of one request (no I/O here).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use openssl::pkey::{PKey, Private};
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::EmulatorError;
use super::auth::{self, ApiKeys};
use crate::open::oaep_decrypt;
use hsm_bridge::oci::signer::body_sha256;
use hsm_bridge::time::rfc3339;
use hsm_bridge::wrap::soft::OaepHash;
use hsm_bridge::wrap::verify::{der_sequence_len, open_envelope};
use hsm_bridge::wrap::{KeyAlgorithm, KeyShape};

const API: &str = "/20180608";
const VAULT_ID: &str = "ocid1.vault.oc1.emulator.vault";
const COMPARTMENT_ID: &str = "ocid1.compartment.oc1..emulator";
const WRAPPING_KEY_ID: &str = "ocid1.key.oc1.emulator.wrappingkey";
/// Requests kept in the log.
const MAX_LOG: usize = 10_000;

/// A request as the handler sees it.
pub struct HttpRequest<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub header: &'a dyn Fn(&str) -> Option<String>,
    pub body: &'a [u8],
}

/// An answer.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, v: &Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: serde_json::to_vec(v).unwrap_or_default(),
        }
    }

    /// OCI's error body: `{"code", "message"}`.
    pub fn error(status: u16, code: &str, message: &str) -> Reply {
        Reply::json(status, &json!({ "code": code, "message": message }))
    }

    fn code(&self) -> Option<String> {
        if self.status < 400 {
            return None;
        }
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_string))
    }
}

pub enum Outcome {
    Reply {
        reply: Reply,
        delay: Duration,
    },
    /// Close the connection without an answer.
    Drop {
        delay: Duration,
    },
}

/// One line of the request log (what a test asserts on; never key material).
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogEntry {
    pub seq: u64,
    pub time: String,
    pub method: String,
    pub path: String,
    /// Base64 SHA-256 of the body received.
    pub body_sha256: String,
    pub retry_token: Option<String>,
    pub client_request_id: Option<String>,
    pub opc_request_id: String,
    /// The API key that signed it, when the signature verified.
    pub key_id: Option<String>,
    pub status: u16,
    pub code: Option<String>,
    pub fault: bool,
    /// For imports: the version or key created (or replayed).
    pub created: Option<String>,
}

struct EmuKey {
    id: String,
    display_name: String,
    algorithm: String,
    length: usize,
    protection_mode: String,
    time_created: SystemTime,
    freeform_tags: Value,
    defined_tags: Value,
    /// Version ids, oldest first.
    versions: Vec<String>,
}

struct EmuVersion {
    id: String,
    key_id: String,
    time_created: SystemTime,
    enabled_at: Instant,
    origin: &'static str,
    material: Zeroizing<Vec<u8>>,
}

impl EmuVersion {
    fn state(&self, now: Instant) -> &'static str {
        if now >= self.enabled_at {
            "ENABLED"
        } else {
            "CREATING"
        }
    }
}

/// A stored successful answer to a request with an `opc-retry-token`.
struct Replay {
    /// Method, path and body hash of the first request.
    request: (String, String, String),
    status: u16,
    body: Vec<u8>,
    created: Option<String>,
}

#[derive(Default)]
struct Inner {
    keys: BTreeMap<String, EmuKey>,
    versions: HashMap<String, EmuVersion>,
    retry_tokens: HashMap<String, Replay>,
    faults: Vec<Fault>,
    log: Vec<LogEntry>,
    seq: u64,
    seeded: Vec<(String, String)>,
}

pub struct Emulator {
    api_keys: ApiKeys,
    wrapping: PKey<Private>,
    wrapping_pem: String,
    wrapping_created: SystemTime,
    enable_after: Duration,
    test_oracle: bool,
    inner: Mutex<Inner>,
}

fn random_suffix() -> String {
    let mut b = [0u8; 12];
    let _ = getrandom::fill(&mut b);
    hsm_bridge::wrap::hex(&b)
}

impl Emulator {
    pub fn new(
        api_keys: ApiKeys,
        wrapping: PKey<Private>,
        enable_after: Duration,
        test_oracle: bool,
    ) -> Result<Emulator, EmulatorError> {
        let bits = wrapping
            .rsa()
            .map_err(|_| "the wrapping key must be RSA")?
            .size()
            * 8;
        if bits < 2048 {
            return Err(format!("the wrapping key is RSA-{bits}; use at least 2048 bits").into());
        }
        let pem = wrapping.public_key_to_pem().map_err(|e| e.to_string())?;
        Ok(Emulator {
            api_keys,
            wrapping_pem: String::from_utf8(pem).map_err(|e| e.to_string())?,
            wrapping,
            wrapping_created: SystemTime::now(),
            enable_after,
            test_oracle,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates key `name` with one INTERNAL, ENABLED version of random material.
    pub fn seed_key(&self, name: &str, shape: &str) -> Result<String, EmulatorError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("key name {name:?}: use letters, digits, '-' and '_'").into());
        }
        let (alg, length) = parse_shape(shape)?;
        let id = format!("ocid1.key.oc1.emulator.{name}");
        let mut inner = self.lock();
        if inner.keys.contains_key(&id) {
            return Err(format!("key {name} exists").into());
        }
        let mut material = Zeroizing::new(vec![0u8; length]);
        let _ = getrandom::fill(&mut material);
        let version = EmuVersion {
            id: format!("ocid1.keyversion.oc1.emulator.{}", random_suffix()),
            key_id: id.clone(),
            time_created: SystemTime::now(),
            enabled_at: Instant::now(),
            origin: "INTERNAL",
            material,
        };
        inner.keys.insert(
            id.clone(),
            EmuKey {
                id: id.clone(),
                display_name: name.to_string(),
                algorithm: alg,
                length,
                protection_mode: "HSM".into(),
                time_created: SystemTime::now(),
                freeform_tags: json!({}),
                defined_tags: json!({}),
                versions: vec![version.id.clone()],
            },
        );
        inner.versions.insert(version.id.clone(), version);
        inner.seeded.push((name.to_string(), id.clone()));
        Ok(id)
    }

    /// Seeded keys, as (name, OCID).
    pub fn seeded(&self) -> Vec<(String, String)> {
        self.lock().seeded.clone()
    }

    /// The request log.
    pub fn log(&self) -> Vec<LogEntry> {
        self.lock().log.clone()
    }

    pub fn handle(&self, req: &HttpRequest<'_>) -> Outcome {
        let client_request_id = (req.header)("opc-request-id").filter(|v| v.len() <= 98);
        let opc_request_id = match &client_request_id {
            Some(c) => format!("{c}/{}", random_suffix().to_ascii_uppercase()),
            None => random_suffix().to_ascii_uppercase(),
        };
        let mut entry = LogEntry {
            seq: 0,
            time: rfc3339(SystemTime::now()),
            method: req.method.to_string(),
            path: req.path.to_string(),
            body_sha256: body_sha256(req.body),
            retry_token: (req.header)("opc-retry-token"),
            client_request_id,
            opc_request_id: opc_request_id.clone(),
            key_id: None,
            status: 0,
            code: None,
            fault: false,
            created: None,
        };
        let control = req.path.starts_with("/_emulator/");
        let fault = if control { None } else { self.take_fault(req) };
        let (mut reply, delay) = match fault {
            Some(f) => {
                entry.fault = true;
                let delay = Duration::from_millis(f.delay_ms);
                if f.drop && f.processed {
                    let reply = self.route(req, &mut entry);
                    entry.status = reply.status;
                    entry.code = Some("(handled; answer dropped)".into());
                    self.record(entry);
                    return Outcome::Drop { delay };
                }
                if f.drop {
                    entry.status = 0;
                    entry.code = Some("(connection dropped)".into());
                    self.record(entry);
                    return Outcome::Drop { delay };
                }
                match (f.raw_body, f.status) {
                    (Some(raw), status) => (
                        Reply {
                            status: status.unwrap_or(200),
                            content_type: "application/json",
                            headers: Vec::new(),
                            body: raw.into_bytes(),
                        },
                        delay,
                    ),
                    (None, Some(status)) => {
                        let code = f.code.unwrap_or_else(|| default_code(status).into());
                        (
                            Reply::error(status, &code, "injected by the emulator's fault list"),
                            delay,
                        )
                    }
                    (None, None) => (self.route(req, &mut entry), delay),
                }
            }
            None if control => (self.control(req), Duration::ZERO),
            None => (self.route(req, &mut entry), Duration::ZERO),
        };
        reply.headers.push(("opc-request-id", opc_request_id));
        entry.status = reply.status;
        entry.code = reply.code();
        if !control {
            self.record(entry);
        }
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
            method = %entry.method, path = %entry.path, status = entry.status,
            code = entry.code.as_deref().unwrap_or(""), fault = entry.fault,
            opc_request_id = %entry.opc_request_id, "request"
        );
        inner.log.push(entry);
    }

    /// The test-control API.
    fn control(&self, req: &HttpRequest<'_>) -> Reply {
        let rest = &req.path["/_emulator/".len()..];
        match (req.method, rest) {
            ("GET", "requests") => Reply::json(200, &json!(self.log())),
            ("POST", "faults") => match parse_body::<Vec<Fault>>(req.body)
                .or_else(|_| parse_body::<Fault>(req.body).map(|f| vec![f]))
            {
                Ok(faults) => {
                    let n = faults.len();
                    self.lock().faults.extend(faults);
                    Reply::json(200, &json!({ "added": n }))
                }
                Err(r) => r,
            },
            ("DELETE", "faults") => {
                self.lock().faults.clear();
                Reply::json(200, &json!({}))
            }
            ("POST", "keys") => {
                #[derive(Deserialize)]
                struct NewKey {
                    name: String,
                    shape: String,
                }
                match parse_body::<NewKey>(req.body) {
                    Ok(k) => match self.seed_key(&k.name, &k.shape) {
                        Ok(id) => {
                            let inner = self.lock();
                            Reply::json(200, &self.key_json(&inner, &inner.keys[&id]))
                        }
                        Err(e) => Reply::error(400, "InvalidParameter", &e.to_string()),
                    },
                    Err(r) => r,
                }
            }
            ("GET", r) if r.starts_with("keys/") => {
                let inner = self.lock();
                match inner.keys.get(&r["keys/".len()..]) {
                    Some(k) => {
                        let mut v = self.key_json(&inner, k);
                        v["versionIds"] = json!(k.versions);
                        Reply::json(200, &v)
                    }
                    None => Reply::error(404, "NotFound", "no such key"),
                }
            }
            ("GET", r) if r.starts_with("material/") => {
                if !self.test_oracle {
                    return Reply::error(
                        404,
                        "NotFound",
                        "start the emulator with --test-oracle to read imported material",
                    );
                }
                let id = &r["material/".len()..];
                match self.lock().versions.get(id) {
                    Some(v) => {
                        Reply::json(200, &json!({ "hex": hsm_bridge::wrap::hex(&v.material) }))
                    }
                    None => Reply::error(404, "NotFound", "no such key version"),
                }
            }
            _ => Reply::error(404, "NotFound", "no such emulator control route"),
        }
    }
}

fn not_found() -> Reply {
    Reply::error(
        404,
        "NotAuthorizedOrNotFound",
        "Authorization failed or requested resource not found.",
    )
}

fn default_code(status: u16) -> &'static str {
    match status {
        400 => "InvalidParameter",
        401 => "NotAuthenticated",
        403 => "NotAuthorized",
        404 => "NotAuthorizedOrNotFound",
        409 => "IncorrectState",
        429 => "TooManyRequests",
        500 => "InternalServerError",
        503 => "ServiceUnavailable",
        _ => "Unknown",
    }
}

fn etag(body: &[u8]) -> String {
    hsm_bridge::wrap::hex(&openssl::sha::sha256(body)[..16])
}

mod faults;
mod idempotency;
mod json;
mod material;
mod routing;

use material::*;

pub use faults::Fault;

#[cfg(test)]
mod tests;
