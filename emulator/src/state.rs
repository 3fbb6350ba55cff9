//! The emulator's vault: keys, versions, retry tokens, faults and the request log, and the
//! handling of one request (no I/O here).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use openssl::pkey::{PKey, Private};
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::auth::{self, ApiKeys};
use hsm_bridge::oci::signer::body_sha256;
use hsm_bridge::time::rfc3339;
use hsm_bridge::wrap::soft::{OaepHash, oaep_decrypt};
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

/// A fault for the next `count` requests that match.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// HTTP method to match (any if absent).
    #[serde(default)]
    pub method: Option<String>,
    /// Substring of the path to match (any if absent).
    #[serde(default)]
    pub path_contains: Option<String>,
    #[serde(default = "one")]
    pub count: u32,
    /// Answer with this status and OCI error code instead of handling the request.
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub code: Option<String>,
    /// Answer with this body verbatim (e.g. not JSON), with `status` (default 200).
    #[serde(default)]
    pub raw_body: Option<String>,
    /// Wait this long before answering (or dropping, or handling normally).
    #[serde(default)]
    pub delay_ms: u64,
    /// Close the connection without an answer.
    #[serde(default)]
    pub drop: bool,
}

fn one() -> u32 {
    1
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

fn parse_shape(s: &str) -> Result<(String, usize), String> {
    let (alg, bits) = s
        .split_once('-')
        .ok_or_else(|| format!("shape {s:?}: expected e.g. AES-256 or RSA-3072"))?;
    let bits: usize = bits
        .parse()
        .map_err(|_| format!("shape {s:?}: bits not a number"))?;
    let alg = alg.to_ascii_uppercase();
    if bits.is_multiple_of(8) && importable(&alg, bits / 8) {
        Ok((alg, bits / 8))
    } else {
        Err(format!(
            "shape {s:?}: OCI imports AES-128/192/256 and RSA-2048/3072/4096"
        ))
    }
}

/// Whether OCI imports a key of `algorithm` ("AES", "RSA") and `length` bytes.
fn importable(algorithm: &str, length: usize) -> bool {
    let algorithm = match algorithm {
        "AES" => KeyAlgorithm::Aes,
        "RSA" => KeyAlgorithm::Rsa,
        _ => return false,
    };
    KeyShape { algorithm, length }.importable()
}

/// Why OCI would refuse this material, or the unwrapped key.
fn unwrap_material(
    wrapping: &PKey<Private>,
    algorithm: &str,
    material: &[u8],
    (key_alg, length): (&str, usize),
) -> Result<Zeroizing<Vec<u8>>, String> {
    let k = wrapping.rsa().map_err(|e| e.to_string())?.size() as usize;
    let plain = match algorithm {
        "RSA_OAEP_SHA256" => {
            if key_alg == "RSA" {
                return Err(
                    "RSA_OAEP_SHA256 cannot carry an RSA private key; use RSA_OAEP_AES_SHA256"
                        .into(),
                );
            }
            if material.len() != k {
                return Err(format!(
                    "RSA_OAEP_SHA256 key material must be {k} bytes for this vault's wrapping key, got {}",
                    material.len()
                ));
            }
            oaep_decrypt(wrapping, OaepHash::Sha256, material)
                .map_err(|_| "the key material does not decrypt with the vault's wrapping key (RSA-OAEP, SHA-256)".to_string())?
        }
        "RSA_OAEP_AES_SHA256" => open_envelope(wrapping, material)
            .map_err(|e| format!("the key material does not unwrap: {e}"))?,
        other => {
            return Err(format!(
                "wrappingAlgorithm {other:?} is not RSA_OAEP_SHA256 or RSA_OAEP_AES_SHA256"
            ));
        }
    };
    match key_alg {
        "AES" if plain.len() == length => Ok(plain),
        "AES" => Err(format!(
            "the unwrapped AES key is {} bytes; the key's shape needs {length}",
            plain.len()
        )),
        "RSA" => {
            let der_len =
                der_sequence_len(&plain).ok_or("the unwrapped RSA key is not PKCS#8 DER")?;
            if der_len > plain.len() {
                return Err(format!(
                    "the unwrapped RSA key is truncated: its DER says {der_len} bytes, got {}",
                    plain.len()
                ));
            }
            if der_len < plain.len() {
                return Err(format!(
                    "the unwrapped RSA key has {} bytes after its PKCS#8 DER",
                    plain.len() - der_len
                ));
            }
            let key = PKey::private_key_from_pkcs8(&plain)
                .map_err(|_| "the unwrapped RSA key is not a valid PKCS#8 private key")?;
            let rsa = key
                .rsa()
                .map_err(|_| "the unwrapped PKCS#8 key is not an RSA key")?;
            if rsa.size() as usize != length {
                return Err(format!(
                    "the unwrapped RSA key has a {}-byte modulus; the key's shape needs {length}",
                    rsa.size()
                ));
            }
            if !rsa.check_key().unwrap_or(false) {
                return Err("the unwrapped RSA key fails its consistency check".into());
            }
            Ok(plain)
        }
        other => Err(format!("keys of algorithm {other} cannot be imported")),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WrappedImportKey {
    key_material: String,
    wrapping_algorithm: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImportKeyVersionDetails {
    wrapped_import_key: WrappedImportKey,
    #[serde(default)]
    #[allow(dead_code)]
    defined_tags: Option<Value>,
    #[serde(default)]
    #[allow(dead_code)]
    freeform_tags: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyShapeJson {
    algorithm: String,
    length: usize,
    #[serde(default)]
    #[allow(dead_code)]
    curve_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImportKeyDetails {
    compartment_id: String,
    display_name: String,
    key_shape: KeyShapeJson,
    wrapped_import_key: WrappedImportKey,
    #[serde(default)]
    protection_mode: Option<String>,
    #[serde(default)]
    defined_tags: Option<Value>,
    #[serde(default)]
    freeform_tags: Option<Value>,
}

/// Parses a JSON body the way OCI answers bad ones: 400 `CannotParseRequest` for bad JSON,
/// 400 `MissingParameter`/`InvalidParameter` for missing or wrong fields.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        Reply::error(
            400,
            "CannotParseRequest",
            &format!("the body is not JSON: {e}"),
        )
    })?;
    serde_json::from_value(v).map_err(|e| {
        let msg = e.to_string();
        let code = if msg.starts_with("missing field") {
            "MissingParameter"
        } else {
            "InvalidParameter"
        };
        Reply::error(400, code, &msg)
    })
}

impl Emulator {
    pub fn new(
        api_keys: ApiKeys,
        wrapping: PKey<Private>,
        enable_after: Duration,
        test_oracle: bool,
    ) -> Result<Emulator, String> {
        let bits = wrapping
            .rsa()
            .map_err(|_| "the wrapping key must be RSA")?
            .size()
            * 8;
        if bits < 2048 {
            return Err(format!(
                "the wrapping key is RSA-{bits}; use at least 2048 bits"
            ));
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
    pub fn seed_key(&self, name: &str, shape: &str) -> Result<String, String> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "key name {name:?}: use letters, digits, '-' and '_'"
            ));
        }
        let (alg, length) = parse_shape(shape)?;
        let id = format!("ocid1.key.oc1.emulator.{name}");
        let mut inner = self.lock();
        if inner.keys.contains_key(&id) {
            return Err(format!("key {name} exists"));
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

    /// Adds a fault.
    pub fn add_fault(&self, f: Fault) {
        self.lock().faults.push(f);
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

    fn take_fault(&self, req: &HttpRequest<'_>) -> Option<Fault> {
        let mut inner = self.lock();
        let i = inner.faults.iter().position(|f| {
            f.count > 0
                && f.method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(req.method))
                && f.path_contains
                    .as_deref()
                    .is_none_or(|p| req.path.contains(p))
        })?;
        let f = &mut inner.faults[i];
        f.count -= 1;
        let out = f.clone();
        if f.count == 0 {
            inner.faults.remove(i);
        }
        Some(out)
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
                        Err(e) => Reply::error(400, "InvalidParameter", &e),
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

    fn route(&self, req: &HttpRequest<'_>, entry: &mut LogEntry) -> Reply {
        let key_id = match auth::authenticate(
            &self.api_keys,
            &auth::Incoming {
                method: req.method,
                target: req.target,
                header: req.header,
                body: req.body,
            },
            SystemTime::now(),
        ) {
            Ok(k) => k,
            Err(why) => {
                tracing::info!(path = %req.path, "401: {why}");
                return Reply::error(
                    401,
                    "NotAuthenticated",
                    &format!(
                        "The required information to complete authentication was not provided or was incorrect: {why}"
                    ),
                );
            }
        };
        entry.key_id = Some(key_id);
        let Some(path) = req.path.strip_prefix(API) else {
            return Reply::error(
                404,
                "NotAuthorizedOrNotFound",
                "unknown API version or path",
            );
        };
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (req.method, segs.as_slice()) {
            ("GET", ["wrappingKeys"]) => Reply::json(
                200,
                &json!({
                    "compartmentId": COMPARTMENT_ID,
                    "id": WRAPPING_KEY_ID,
                    "lifecycleState": "ENABLED",
                    "publicKey": self.wrapping_pem,
                    "timeCreated": rfc3339(self.wrapping_created),
                    "vaultId": VAULT_ID,
                }),
            ),
            ("POST", ["keys", "import"]) => self.idempotent(req, entry, |s| s.import_key(req.body)),
            ("POST", ["keys", key, "keyVersions", "import"]) => {
                self.idempotent(req, entry, |s| s.import_key_version(key, req.body))
            }
            ("GET", ["keys", key]) => {
                let inner = self.lock();
                match inner.keys.get(*key) {
                    Some(k) => Reply::json(200, &self.key_json(&inner, k)),
                    None => not_found(),
                }
            }
            ("GET", ["keys", key, "keyVersions"]) => self.list_versions(key, req.query),
            ("GET", ["keys", key, "keyVersions", version]) => {
                let inner = self.lock();
                match inner.versions.get(*version).filter(|v| v.key_id == *key) {
                    Some(v) => Reply::json(200, &self.version_json(v)),
                    None => not_found(),
                }
            }
            (_, ["keys", ..] | ["wrappingKeys"]) => Reply::error(
                405,
                "MethodNotAllowed",
                "method not allowed on this resource",
            ),
            _ => not_found(),
        }
    }

    /// Runs a create under `opc-retry-token` rules: the same token with the same request
    /// replays the first success; with a different request it is refused.
    fn idempotent(
        &self,
        req: &HttpRequest<'_>,
        entry: &mut LogEntry,
        create: impl FnOnce(&Self) -> (Reply, Option<String>),
    ) -> Reply {
        let token = (req.header)("opc-retry-token");
        let fingerprint = (
            req.method.to_string(),
            req.path.to_string(),
            body_sha256(req.body),
        );
        if let Some(t) = &token {
            if t.is_empty() || t.len() > 64 {
                return Reply::error(
                    400,
                    "InvalidParameter",
                    "opc-retry-token must be 1 to 64 characters",
                );
            }
            if let Some(r) = self.lock().retry_tokens.get(t) {
                if r.request != fingerprint {
                    return Reply::error(
                        409,
                        "InvalidatedRetryToken",
                        "the retry token was used for a different request",
                    );
                }
                entry.created = r.created.clone();
                return Reply {
                    status: r.status,
                    content_type: "application/json",
                    headers: vec![("etag", etag(&r.body))],
                    body: r.body.clone(),
                };
            }
        }
        let (mut reply, created) = create(self);
        entry.created = created.clone();
        if reply.status == 200 {
            reply.headers.push(("etag", etag(&reply.body)));
            if let Some(t) = token {
                self.lock().retry_tokens.insert(
                    t,
                    Replay {
                        request: fingerprint,
                        status: reply.status,
                        body: reply.body.clone(),
                        created,
                    },
                );
            }
        }
        reply
    }

    fn new_version(&self, key_id: &str, material: Zeroizing<Vec<u8>>) -> EmuVersion {
        EmuVersion {
            id: format!("ocid1.keyversion.oc1.emulator.{}", random_suffix()),
            key_id: key_id.to_string(),
            time_created: SystemTime::now(),
            enabled_at: Instant::now() + self.enable_after,
            origin: "EXTERNAL",
            material,
        }
    }

    fn import_key_version(&self, key_id: &str, body: &[u8]) -> (Reply, Option<String>) {
        let details: ImportKeyVersionDetails = match parse_body(body) {
            Ok(d) => d,
            Err(r) => return (r, None),
        };
        let shape = {
            let inner = self.lock();
            let Some(k) = inner.keys.get(key_id) else {
                return (not_found(), None);
            };
            if self.key_state(&inner, k) != "ENABLED" {
                return (
                    Reply::error(
                        409,
                        "IncorrectState",
                        "the key must be ENABLED to be rotated",
                    ),
                    None,
                );
            }
            (k.algorithm.clone(), k.length)
        };
        let material = match self.material(&details.wrapped_import_key, (&shape.0, shape.1)) {
            Ok(m) => m,
            Err(r) => return (r, None),
        };
        let v = self.new_version(key_id, material);
        let reply = Reply::json(200, &self.version_json(&v));
        let id = v.id.clone();
        let mut inner = self.lock();
        if let Some(k) = inner.keys.get_mut(key_id) {
            k.versions.push(id.clone());
        }
        inner.versions.insert(id.clone(), v);
        (reply, Some(id))
    }

    fn import_key(&self, body: &[u8]) -> (Reply, Option<String>) {
        let d: ImportKeyDetails = match parse_body(body) {
            Ok(d) => d,
            Err(r) => return (r, None),
        };
        let alg = d.key_shape.algorithm.as_str();
        if alg == "ECDSA" {
            return (
                Reply::error(400, "InvalidParameter", "ECDSA keys cannot be imported"),
                None,
            );
        }
        if !importable(alg, d.key_shape.length) {
            return (
                Reply::error(
                    400,
                    "InvalidParameter",
                    &format!(
                        "keyShape {alg}/{} cannot be imported: AES 16/24/32 or RSA 256/384/512 bytes",
                        d.key_shape.length
                    ),
                ),
                None,
            );
        }
        let protection_mode = d.protection_mode.unwrap_or_else(|| "HSM".into());
        if !matches!(protection_mode.as_str(), "HSM" | "SOFTWARE") {
            return (
                Reply::error(
                    400,
                    "InvalidParameter",
                    "protectionMode must be HSM or SOFTWARE for an import",
                ),
                None,
            );
        }
        if d.display_name.is_empty() || d.display_name.len() > 255 {
            return (
                Reply::error(
                    400,
                    "InvalidParameter",
                    "displayName must be 1 to 255 characters",
                ),
                None,
            );
        }
        if !d.compartment_id.starts_with("ocid1.") {
            return (
                Reply::error(400, "InvalidParameter", "compartmentId is not an OCID"),
                None,
            );
        }
        let material = match self.material(&d.wrapped_import_key, (alg, d.key_shape.length)) {
            Ok(m) => m,
            Err(r) => return (r, None),
        };
        let id = format!("ocid1.key.oc1.emulator.{}", random_suffix());
        let v = self.new_version(&id, material);
        let key = EmuKey {
            id: id.clone(),
            display_name: d.display_name,
            algorithm: alg.to_string(),
            length: d.key_shape.length,
            protection_mode,
            time_created: SystemTime::now(),
            freeform_tags: d.freeform_tags.unwrap_or_else(|| json!({})),
            defined_tags: d.defined_tags.unwrap_or_else(|| json!({})),
            versions: vec![v.id.clone()],
        };
        let mut inner = self.lock();
        inner.versions.insert(v.id.clone(), v);
        let reply = Reply::json(200, &self.key_json(&inner, &key));
        inner.keys.insert(id.clone(), key);
        (reply, Some(id))
    }

    fn material(
        &self,
        w: &WrappedImportKey,
        shape: (&str, usize),
    ) -> Result<Zeroizing<Vec<u8>>, Reply> {
        let bytes = openssl::base64::decode_block(&w.key_material)
            .map(Zeroizing::new)
            .map_err(|_| Reply::error(400, "InvalidParameter", "keyMaterial is not base64"))?;
        unwrap_material(&self.wrapping, &w.wrapping_algorithm, &bytes, shape).map_err(|why| {
            Reply::error(
                400,
                "InvalidParameter",
                &format!("Invalid key material: {why}"),
            )
        })
    }

    fn list_versions(&self, key_id: &str, query: &str) -> Reply {
        let inner = self.lock();
        let Some(k) = inner.keys.get(key_id) else {
            return not_found();
        };
        let mut limit = 100usize;
        let mut page = 0usize;
        let mut desc = false;
        for (name, value) in query.split('&').filter_map(|p| p.split_once('=')) {
            match name {
                "limit" => limit = value.parse().unwrap_or(100).clamp(1, 1000),
                "page" => page = value.parse().unwrap_or(0),
                "sortOrder" => desc = value == "DESC",
                _ => {}
            }
        }
        let mut ids: Vec<&String> = k.versions.iter().collect();
        if desc {
            ids.reverse();
        }
        let items: Vec<Value> = ids
            .iter()
            .skip(page)
            .take(limit)
            .filter_map(|id| inner.versions.get(*id))
            .map(|v| self.version_json(v))
            .collect();
        let mut reply = Reply::json(200, &Value::Array(items));
        if page + limit < ids.len() {
            reply
                .headers
                .push(("opc-next-page", (page + limit).to_string()));
        }
        reply
    }

    /// A key's state: CREATING until its first version is enabled.
    fn key_state(&self, inner: &Inner, k: &EmuKey) -> &'static str {
        let now = Instant::now();
        if k.versions
            .iter()
            .filter_map(|v| inner.versions.get(v))
            .any(|v| v.state(now) == "ENABLED")
        {
            "ENABLED"
        } else {
            "CREATING"
        }
    }

    fn key_json(&self, inner: &Inner, k: &EmuKey) -> Value {
        let now = Instant::now();
        // The current version is the newest enabled one: an import rotates the key once
        // the new version is usable.
        let current = k
            .versions
            .iter()
            .rev()
            .find(|id| {
                inner
                    .versions
                    .get(*id)
                    .is_some_and(|v| v.state(now) == "ENABLED")
            })
            .or(k.versions.first())
            .cloned()
            .unwrap_or_default();
        json!({
            "compartmentId": COMPARTMENT_ID,
            "currentKeyVersion": current,
            "definedTags": k.defined_tags,
            "displayName": k.display_name,
            "freeformTags": k.freeform_tags,
            "id": k.id,
            "isPrimary": true,
            "keyShape": { "algorithm": k.algorithm, "length": k.length },
            "lifecycleState": self.key_state(inner, k),
            "protectionMode": k.protection_mode,
            "timeCreated": rfc3339(k.time_created),
            "vaultId": VAULT_ID,
        })
    }

    fn version_json(&self, v: &EmuVersion) -> Value {
        json!({
            "compartmentId": COMPARTMENT_ID,
            "id": v.id,
            "keyId": v.key_id,
            "lifecycleState": v.state(Instant::now()),
            "origin": v.origin,
            "timeCreated": rfc3339(v.time_created),
            "vaultId": VAULT_ID,
            "isPrimary": true,
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use hsm_bridge::wrap::soft::{kwp_wrap, oaep_encrypt};

    fn wrapping() -> PKey<Private> {
        PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap()
    }

    fn envelope(wk: &PKey<Private>, plain: &[u8]) -> Vec<u8> {
        let kek = [7u8; 32];
        let mut out = oaep_encrypt(wk, OaepHash::Sha256, &kek).unwrap();
        out.extend(kwp_wrap(&kek, plain).unwrap());
        out
    }

    #[test]
    fn material_is_validated_as_oci_does() {
        let wk = wrapping();
        let aes = [0x42u8; 32];
        // AES through both algorithms
        let m = envelope(&wk, &aes);
        assert_eq!(
            &unwrap_material(&wk, "RSA_OAEP_AES_SHA256", &m, ("AES", 32)).unwrap()[..],
            &aes
        );
        let m = oaep_encrypt(&wk, OaepHash::Sha256, &aes).unwrap();
        assert_eq!(
            &unwrap_material(&wk, "RSA_OAEP_SHA256", &m, ("AES", 32)).unwrap()[..],
            &aes
        );
        // wrong AES length
        let e = unwrap_material(&wk, "RSA_OAEP_SHA256", &m, ("AES", 16)).unwrap_err();
        assert!(e.contains("32 bytes") && e.contains("needs 16"), "{e}");
        // a truncated blob
        let e = unwrap_material(&wk, "RSA_OAEP_SHA256", &m[..255], ("AES", 32)).unwrap_err();
        assert!(e.contains("must be 256 bytes"), "{e}");
        // RSA: exact PKCS#8 only
        let rsa = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
        let p8 = rsa.private_key_to_pkcs8().unwrap();
        let m = envelope(&wk, &p8);
        assert_eq!(
            &unwrap_material(&wk, "RSA_OAEP_AES_SHA256", &m, ("RSA", 256)).unwrap()[..],
            &p8[..]
        );
        let e = unwrap_material(&wk, "RSA_OAEP_AES_SHA256", &m, ("RSA", 384)).unwrap_err();
        assert!(e.contains("256-byte modulus"), "{e}");
        let mut trailing = p8.clone();
        trailing.push(0);
        let e = unwrap_material(
            &wk,
            "RSA_OAEP_AES_SHA256",
            &envelope(&wk, &trailing),
            ("RSA", 256),
        )
        .unwrap_err();
        assert!(e.contains("1 bytes after its PKCS#8 DER"), "{e}");
        let e = unwrap_material(
            &wk,
            "RSA_OAEP_AES_SHA256",
            &envelope(&wk, &p8[..p8.len() - 9]),
            ("RSA", 256),
        )
        .unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let e = unwrap_material(&wk, "RSA_OAEP_SHA256", &m[..256], ("RSA", 256)).unwrap_err();
        assert!(e.contains("cannot carry an RSA private key"), "{e}");
        let e = unwrap_material(&wk, "RSA_OAEP_AES_SHA256", &m[..300], ("RSA", 256)).unwrap_err();
        assert!(e.contains("does not unwrap"), "{e}");
    }

    fn blank_entry() -> LogEntry {
        LogEntry {
            seq: 0,
            time: String::new(),
            method: String::new(),
            path: String::new(),
            body_sha256: String::new(),
            retry_token: None,
            client_request_id: None,
            opc_request_id: String::new(),
            key_id: None,
            status: 0,
            code: None,
            fault: false,
            created: None,
        }
    }

    #[test]
    fn retry_tokens_replay_the_first_answer_and_refuse_other_requests() {
        let emu = Emulator::new(ApiKeys::default(), wrapping(), Duration::ZERO, false).unwrap();
        let header = |n: &str| (n == "opc-retry-token").then(|| "t-1".to_string());
        let req = |body: &'static [u8]| HttpRequest {
            method: "POST",
            target: "/20180608/keys/k/keyVersions/import",
            path: "/20180608/keys/k/keyVersions/import",
            query: "",
            header: &header,
            body,
        };
        let created = std::cell::Cell::new(0);
        let create = |_: &Emulator| {
            created.set(created.get() + 1);
            (
                Reply::json(200, &json!({ "n": created.get() })),
                Some("v".to_string()),
            )
        };
        let first = emu.idempotent(&req(b"{}"), &mut blank_entry(), create);
        let again = emu.idempotent(&req(b"{}"), &mut blank_entry(), create);
        assert_eq!((first.status, again.status), (200, 200));
        assert_eq!(first.body, again.body, "the first answer is replayed");
        let other = emu.idempotent(&req(b"{\"x\":1}"), &mut blank_entry(), create);
        assert_eq!(other.status, 409);
        assert_eq!(other.code().as_deref(), Some("InvalidatedRetryToken"));
        assert_eq!(created.get(), 1, "one create for three requests");
    }

    #[test]
    fn faults_match_and_run_out() {
        let emu = Emulator::new(ApiKeys::default(), wrapping(), Duration::ZERO, false).unwrap();
        emu.add_fault(Fault {
            method: Some("GET".into()),
            path_contains: Some("wrappingKeys".into()),
            count: 2,
            status: Some(429),
            code: None,
            raw_body: None,
            delay_ms: 0,
            drop: false,
        });
        let header = |_: &str| None;
        let req = |path: &'static str| HttpRequest {
            method: "GET",
            target: path,
            path,
            query: "",
            header: &header,
            body: b"",
        };
        let status = |o: Outcome| match o {
            Outcome::Reply { reply, .. } => reply.status,
            Outcome::Drop { .. } => 0,
        };
        assert_eq!(status(emu.handle(&req("/20180608/keys/x"))), 401);
        assert_eq!(status(emu.handle(&req("/20180608/wrappingKeys"))), 429);
        assert_eq!(status(emu.handle(&req("/20180608/wrappingKeys"))), 429);
        assert_eq!(status(emu.handle(&req("/20180608/wrappingKeys"))), 401);
        let log = emu.log();
        assert_eq!(log.len(), 4);
        assert!(log[1].fault && log[1].code.as_deref() == Some("TooManyRequests"));
        assert_eq!(log[3].code.as_deref(), Some("NotAuthenticated"));
    }
}
