//! OCI KMS management client: GetWrappingKey (cached per endpoint), ImportKeyVersion,
//! ImportKey, GetKey, GetKeyVersion, every request signed, with OCI's retry rules.
//!
//! Safety of the outbound path: every call takes an [`Endpoint`] that already passed the
//! allow-list; redirects are never followed; a create is sent as one fixed byte string with
//! one `opc-retry-token` on every attempt, so a retry can never import a second, different
//! copy. Retries (at most `oci.max_attempts` attempts, exponential backoff with jitter, never
//! past the caller's deadline) on connect errors and timeouts, 429, 409 `IncorrectState` /
//! `LockConflict`, and 5xx other than 501.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use super::endpoint::Endpoint;
use super::identity::Identity;
use super::signer::RequestParts;
use crate::config::OciConfig;
use crate::wrap::WrappingKey;

const API: &str = "/20180608";
/// Largest OCI response body read.
const MAX_RESPONSE: usize = 1 << 20;
/// First backoff step; doubles per attempt, up to `BACKOFF_CAP`.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// How long a fetched vault wrapping key is reused (OCI never rotates it).
const WRAPPING_KEY_TTL: Duration = Duration::from_secs(3600);

/// An OCI key version (`KeyVersion`), with OCI's field names. Enum values this code does
/// not know pass through as text.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyVersion {
    pub id: String,
    pub key_id: String,
    #[serde(default)]
    pub vault_id: String,
    #[serde(default)]
    pub compartment_id: String,
    #[serde(default)]
    pub time_created: String,
    #[serde(default)]
    pub lifecycle_state: String,
    #[serde(default)]
    pub origin: String,
    #[serde(default)]
    pub is_primary: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyShapeJson {
    pub algorithm: String,
    pub length: u32,
}

/// An OCI key (`Key`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Key {
    pub id: String,
    #[serde(default)]
    pub compartment_id: String,
    #[serde(default)]
    pub vault_id: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub current_key_version: String,
    #[serde(default)]
    pub key_shape: KeyShapeJson,
    #[serde(default)]
    pub protection_mode: String,
    #[serde(default)]
    pub lifecycle_state: String,
    #[serde(default)]
    pub time_created: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WrappingKeyJson {
    public_key: String,
}

/// `wrappedImportKey`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WrappedImportKey {
    /// Base64 of the wrapped bytes.
    pub key_material: String,
    pub wrapping_algorithm: &'static str,
}

/// `ImportKeyVersionDetails`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportKeyVersionDetails {
    pub wrapped_import_key: WrappedImportKey,
}

/// `ImportKeyDetails`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportKeyDetails {
    pub compartment_id: String,
    pub display_name: String,
    pub key_shape: KeyShapeJson,
    pub wrapped_import_key: WrappedImportKey,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protection_mode: Option<String>,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub freeform_tags: HashMap<String, String>,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub defined_tags: HashMap<String, HashMap<String, String>>,
}

/// A failed call, after retries.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    /// OCI answered with an error status.
    #[error(
        "OCI {op} answered {status} {code}: {message} (opc-request-id {opc_request_id}; attempt {attempts})"
    )]
    Service {
        op: &'static str,
        status: u16,
        code: String,
        message: String,
        opc_request_id: String,
        attempts: u32,
    },
    /// No answer: connect error, reset or timeout on every attempt.
    #[error("OCI {op} at {endpoint} did not answer after {attempts} attempt(s): {why}")]
    Transport {
        op: &'static str,
        endpoint: String,
        why: String,
        attempts: u32,
    },
    /// The caller's deadline came first.
    #[error("OCI {op}: the call's deadline passed after {attempts} attempt(s){last}")]
    Deadline {
        op: &'static str,
        attempts: u32,
        last: String,
    },
    /// A success status with a body that is not what OCI sends.
    #[error(
        "OCI {op} answered {status} with a body that is not a {expected}: {why} (opc-request-id {opc_request_id})"
    )]
    BadResponse {
        op: &'static str,
        status: u16,
        expected: &'static str,
        why: String,
        opc_request_id: String,
    },
    /// The vault's wrapping key fails the checks a caller's key must pass.
    #[error("the vault's wrapping key at {endpoint} is refused: {why}")]
    WrappingKey { endpoint: String, why: String },
    /// Signing or building the request failed (nothing was sent).
    #[error("OCI {op}: {why}")]
    Local { op: &'static str, why: String },
}

impl KmsError {
    /// OCI's `opc-request-id`, when OCI answered.
    pub fn opc_request_id(&self) -> Option<&str> {
        match self {
            KmsError::Service { opc_request_id, .. }
            | KmsError::BadResponse { opc_request_id, .. } => Some(opc_request_id),
            _ => None,
        }
    }

    pub fn attempts(&self) -> u32 {
        match self {
            KmsError::Service { attempts, .. }
            | KmsError::Transport { attempts, .. }
            | KmsError::Deadline { attempts, .. } => *attempts,
            KmsError::BadResponse { .. } => 1,
            _ => 0,
        }
    }
}

/// A successful call's value, with OCI's request id and the number of attempts it took.
#[derive(Debug, Clone)]
pub struct Answer<T> {
    pub value: T,
    pub opc_request_id: String,
    pub attempts: u32,
}

/// Whether OCI's answer may be retried (OCI's SDKs' rules).
pub fn retryable(status: u16, code: &str) -> bool {
    match status {
        429 => true,
        409 => matches!(code, "IncorrectState" | "LockConflict"),
        501 => false,
        500..=599 => true,
        _ => false,
    }
}

/// Sleep before attempt `attempt + 1` (attempt counts from 1): `BACKOFF_BASE * 2^(attempt-1)`,
/// capped, with "equal jitter" (half fixed, half random) so that callers spread out.
pub fn backoff(attempt: u32) -> Duration {
    let step = BACKOFF_BASE
        .saturating_mul(1u32 << (attempt.saturating_sub(1)).min(16))
        .min(BACKOFF_CAP);
    let mut r = [0u8; 4];
    let _ = getrandom::fill(&mut r);
    let frac = f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX);
    step / 2 + step.mul_f64(frac / 2.0)
}

/// A retry token: derived from the caller's idempotency key (same key, same token), or
/// random. 32 characters from `[0-9a-f]`, within OCI's token alphabet.
pub fn retry_token(idempotency_key: Option<&str>, scope: &str) -> String {
    match idempotency_key {
        Some(k) => {
            let mut h = openssl::sha::Sha256::new();
            h.update(b"hsm-bridge retry token v1\0");
            h.update(scope.as_bytes());
            h.update(b"\0");
            h.update(k.as_bytes());
            crate::wrap::hex(&h.finish()[..16])
        }
        None => {
            let mut b = [0u8; 16];
            let _ = getrandom::fill(&mut b);
            crate::wrap::hex(&b)
        }
    }
}

/// Who calls where, for how long: the context of one OCI operation.
#[derive(Clone, Copy)]
pub struct Call<'a> {
    pub identity: &'a Identity,
    /// Already checked against the allow-list.
    pub endpoint: &'a Endpoint,
    /// Sent as `opc-request-id` (OCI returns it inside its own id).
    pub request_id: Option<&'a str>,
    /// The caller's deadline: no attempt starts, and no backoff sleeps, past it.
    pub deadline: Option<Instant>,
}

/// One request, fixed across attempts.
struct Request<'a> {
    op: &'static str,
    method: reqwest::Method,
    url: String,
    body: Option<&'a [u8]>,
    retry_token: Option<&'a str>,
}

pub struct KmsClient {
    http: reqwest::Client,
    timeout: Duration,
    max_attempts: u32,
    allowed: Vec<String>,
    min_wrapping_bits: u32,
    wrapping_keys: Mutex<HashMap<String, (Arc<WrappingKey>, Instant)>>,
}

impl std::fmt::Debug for KmsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsClient")
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

/// The TLS client config: the platform's roots plus `ca_bundle`, on ring.
fn tls(ca_bundle: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra = match ca_bundle {
        Some(p) => CertificateDer::pem_file_iter(p)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("oci.ca_bundle {}: {e}", p.display()))?,
        None => Vec::new(),
    };
    if ca_bundle.is_some() && extra.is_empty() {
        return Err("oci.ca_bundle holds no PEM certificate".into());
    }
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
            .map_err(|e| format!("TLS roots: {e}"))?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

impl KmsClient {
    pub fn new(cfg: &OciConfig, min_wrapping_bits: u32) -> Result<KmsClient, String> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls(cfg.ca_bundle.as_deref())?)
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .connect_timeout(Duration::from_millis(cfg.timeout_ms.min(10_000)))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("hsm-bridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(KmsClient {
            http,
            timeout: Duration::from_millis(cfg.timeout_ms.max(1)),
            max_attempts: cfg.max_attempts.max(1),
            allowed: cfg.allowed_endpoints.clone(),
            min_wrapping_bits,
            wrapping_keys: Mutex::new(HashMap::new()),
        })
    }

    /// Checks `url` against the allow-list (nothing is sent to an endpoint that fails).
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, super::OciError> {
        super::endpoint::check(url, &self.allowed)
    }

    /// Sends `req` with retries; returns status, body and opc-request-id of the final answer
    /// (a success, or an error that is not retryable).
    async fn send(
        &self,
        call: &Call<'_>,
        req: &Request<'_>,
    ) -> Result<(u16, Vec<u8>, String, u32), KmsError> {
        let deadline = call.deadline;
        let mut attempt = 0u32;
        let mut last_error = String::new();
        loop {
            attempt += 1;
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if remaining.is_some_and(|r| r < Duration::from_millis(5)) {
                return Err(KmsError::Deadline {
                    op: req.op,
                    attempts: attempt - 1,
                    last: last_error,
                });
            }
            // An import attempt, once started, runs to its own timeout even past the caller's
            // deadline: cut short, OCI may have created the version with nobody learning it.
            let timeout = match remaining {
                Some(r) if req.retry_token.is_none() => r.min(self.timeout),
                _ => self.timeout,
            };
            let outcome = self.attempt(call, req, timeout).await;
            let retry_reason = match outcome {
                Ok((status, body, opc)) => {
                    if (200..300).contains(&status) {
                        return Ok((status, body, opc, attempt));
                    }
                    let (code, message) = error_body(&body);
                    if !retryable(status, &code) || attempt >= self.max_attempts {
                        return Err(KmsError::Service {
                            op: req.op,
                            status,
                            code,
                            message,
                            opc_request_id: opc,
                            attempts: attempt,
                        });
                    }
                    format!("{status} {code} (opc-request-id {opc})")
                }
                Err(why) => {
                    if attempt >= self.max_attempts {
                        return Err(KmsError::Transport {
                            op: req.op,
                            endpoint: req.url.clone(),
                            why,
                            attempts: attempt,
                        });
                    }
                    why
                }
            };
            let pause = backoff(attempt);
            tracing::info!(
                op = req.op,
                attempt,
                max = self.max_attempts,
                pause_ms = pause.as_millis() as u64,
                "OCI call will be retried: {retry_reason}"
            );
            last_error = format!("; last: {retry_reason}");
            if let Some(d) = deadline
                && Instant::now() + pause >= d
            {
                return Err(KmsError::Deadline {
                    op: req.op,
                    attempts: attempt,
                    last: last_error,
                });
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// One attempt: Ok with any HTTP answer, Err with why there was none.
    async fn attempt(
        &self,
        call: &Call<'_>,
        req: &Request<'_>,
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>, String), String> {
        let date = crate::time::http_date(SystemTime::now());
        let body = req.body.unwrap_or(b"");
        let headers = call
            .identity
            .signer
            .sign(&RequestParts {
                method: req.method.as_str(),
                url: &req.url,
                date: &date,
                body,
                content_type: "application/json",
            })
            .map_err(|e| e.to_string())?;
        let mut b = self
            .http
            .request(req.method.clone(), &req.url)
            .timeout(timeout)
            .header("accept", "application/json");
        for (k, v) in headers {
            b = b.header(k, v);
        }
        if let Some(t) = req.retry_token {
            b = b.header("opc-retry-token", t);
        }
        if let Some(r) = call.request_id {
            b = b.header("opc-request-id", r);
        }
        if let Some(body) = req.body {
            b = b.body(body.to_vec());
        }
        let resp = b.send().await.map_err(describe)?;
        let status = resp.status().as_u16();
        let opc = resp
            .headers()
            .get("opc-request-id")
            .and_then(|v| v.to_str().ok())
            .map(|v| bounded(v, MAX_ID_TEXT))
            .unwrap_or_default();
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE as u64)
        {
            return Err(format!("the answer is larger than {MAX_RESPONSE} bytes"));
        }
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(describe)? {
            if body.len() + chunk.len() > MAX_RESPONSE {
                return Err(format!("the answer is larger than {MAX_RESPONSE} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body, opc))
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        call: &Call<'_>,
        req: Request<'_>,
        expected: &'static str,
    ) -> Result<Answer<T>, KmsError> {
        let (status, body, opc, attempts) = self.send(call, &req).await?;
        let value = serde_json::from_slice(&body).map_err(|e| KmsError::BadResponse {
            op: req.op,
            status,
            expected,
            why: e.to_string(),
            opc_request_id: opc.clone(),
        })?;
        Ok(Answer {
            value,
            opc_request_id: opc,
            attempts,
        })
    }

    /// The vault's RSA wrapping key, checked like a caller's (RSA, size, exponent); cached
    /// per endpoint.
    pub async fn wrapping_key(&self, call: &Call<'_>) -> Result<Arc<WrappingKey>, KmsError> {
        let ep = call.endpoint;
        if let Some((k, at)) = self.lock_cache().get(&ep.base)
            && at.elapsed() < WRAPPING_KEY_TTL
        {
            return Ok(k.clone());
        }
        let req = Request {
            op: "GetWrappingKey",
            method: reqwest::Method::GET,
            url: format!("{}{API}/wrappingKeys", ep.base),
            body: None,
            retry_token: None,
        };
        let a: Answer<WrappingKeyJson> = self.call(call, req, "WrappingKey").await?;
        let wk = WrappingKey::from_pem(a.value.public_key.as_bytes(), self.min_wrapping_bits)
            .map_err(|e| KmsError::WrappingKey {
                endpoint: ep.base.clone(),
                why: e.to_string(),
            })?;
        let wk = Arc::new(wk);
        self.lock_cache()
            .insert(ep.base.clone(), (wk.clone(), Instant::now()));
        Ok(wk)
    }

    fn lock_cache(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (Arc<WrappingKey>, Instant)>> {
        self.wrapping_keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// ImportKeyVersion with `body` (exactly these bytes on every attempt) and `retry_token`.
    pub async fn import_key_version(
        &self,
        call: &Call<'_>,
        key_id: &str,
        body: &[u8],
        retry_token: &str,
    ) -> Result<Answer<KeyVersion>, KmsError> {
        let key_id = ocid_for_url("ImportKeyVersion", key_id, "ocid1.key.")?;
        let req = Request {
            op: "ImportKeyVersion",
            method: reqwest::Method::POST,
            url: format!(
                "{}{API}/keys/{key_id}/keyVersions/import",
                call.endpoint.base
            ),
            body: Some(body),
            retry_token: Some(retry_token),
        };
        self.call(call, req, "KeyVersion").await
    }

    /// ImportKey with `body` and `retry_token`, as for [`Self::import_key_version`].
    pub async fn import_key(
        &self,
        call: &Call<'_>,
        body: &[u8],
        retry_token: &str,
    ) -> Result<Answer<Key>, KmsError> {
        let req = Request {
            op: "ImportKey",
            method: reqwest::Method::POST,
            url: format!("{}{API}/keys/import", call.endpoint.base),
            body: Some(body),
            retry_token: Some(retry_token),
        };
        self.call(call, req, "Key").await
    }

    pub async fn get_key(&self, call: &Call<'_>, key_id: &str) -> Result<Answer<Key>, KmsError> {
        let key_id = ocid_for_url("GetKey", key_id, "ocid1.key.")?;
        let req = Request {
            op: "GetKey",
            method: reqwest::Method::GET,
            url: format!("{}{API}/keys/{key_id}", call.endpoint.base),
            body: None,
            retry_token: None,
        };
        self.call(call, req, "Key").await
    }

    pub async fn get_key_version(
        &self,
        call: &Call<'_>,
        key_id: &str,
        version_id: &str,
    ) -> Result<Answer<KeyVersion>, KmsError> {
        let key_id = ocid_for_url("GetKeyVersion", key_id, "ocid1.key.")?;
        let version_id = ocid_for_url("GetKeyVersion", version_id, "ocid1.keyversion.")?;
        let req = Request {
            op: "GetKeyVersion",
            method: reqwest::Method::GET,
            url: format!(
                "{}{API}/keys/{key_id}/keyVersions/{version_id}",
                call.endpoint.base
            ),
            body: None,
            retry_token: None,
        };
        self.call(call, req, "KeyVersion").await
    }

    /// Polls until `state()` of the fetched value is `ENABLED`, at most until `deadline`
    /// (or `max_wait` without one). `Ok(None)` when time ran out first, with the last value.
    pub async fn wait_enabled<T, F, Fut>(
        &self,
        mut fetch: F,
        state: impl Fn(&T) -> &str,
        deadline: Option<Instant>,
        max_wait: Duration,
    ) -> Result<(T, bool), KmsError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Answer<T>, KmsError>>,
    {
        let until = deadline.unwrap_or_else(|| Instant::now() + max_wait);
        let mut pause = Duration::from_millis(100);
        loop {
            let a = fetch().await?;
            match state(&a.value) {
                "ENABLED" => return Ok((a.value, true)),
                "CREATING" | "ENABLING" | "UPDATING" => {}
                other => {
                    return Err(KmsError::Local {
                        op: "wait for ENABLED",
                        why: format!(
                            "the new version went to {other}, not ENABLED (opc-request-id {})",
                            a.opc_request_id
                        ),
                    });
                }
            }
            if Instant::now() + pause >= until {
                return Ok((a.value, false));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}

/// `{"code","message"}` of an OCI error body, or what is known without one.
pub fn error_body(body: &[u8]) -> (String, String) {
    #[derive(Deserialize)]
    struct E {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<E>(body) {
        Ok(e) => (
            bounded(&e.code, MAX_ID_TEXT),
            bounded(&e.message, MAX_ERROR_TEXT),
        ),
        Err(_) => (
            "(no OCI error body)".into(),
            bounded(
                &String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_TEXT)]),
                MAX_ERROR_TEXT,
            ),
        ),
    }
}

/// Most of OCI's error message that goes into a status and an audit record.
const MAX_ERROR_TEXT: usize = 512;
/// Most of an OCI error code or request id kept.
const MAX_ID_TEXT: usize = 128;

/// At most `max` bytes of `text` (cut at a character boundary, "…" added), control
/// characters replaced by spaces: what OCI says is copied into statuses and audit records,
/// never without bound.
fn bounded(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// An id from an earlier OCI answer, checked before it goes into a URL path.
fn ocid_for_url<'a>(op: &'static str, id: &'a str, prefix: &str) -> Result<&'a str, KmsError> {
    if super::is_ocid(id, prefix) {
        Ok(id)
    } else {
        Err(KmsError::BadResponse {
            op,
            status: 200,
            expected: "OCID",
            why: format!("{:?} is not an OCID ({prefix}…)", bounded(id, 80)),
            opc_request_id: String::new(),
        })
    }
}

/// A transport error with its causes, e.g. "connection refused".
fn describe(e: reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        "the connection failed".to_string()
    };
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {

    #[test]
    fn what_oci_says_is_bounded_and_ids_are_checked_before_urls() {
        let long = format!(
            "{{\"code\":\"X\",\"message\":\"{}\\u0007\"}}",
            "m".repeat(5000)
        );
        let (code, message) = error_body(long.as_bytes());
        assert_eq!(code, "X");
        assert!(
            message.len() <= MAX_ERROR_TEXT + '…'.len_utf8(),
            "{}",
            message.len()
        );
        assert!(!message.chars().any(char::is_control));
        assert!(
            ocid_for_url(
                "GetKeyVersion",
                "ocid1.keyversion.oc1..a",
                "ocid1.keyversion."
            )
            .is_ok()
        );
        for bad in [
            "../../x",
            "ocid1.keyversion.oc1../../x",
            "ocid1.key.oc1..a",
            "",
        ] {
            assert!(
                ocid_for_url("GetKeyVersion", bad, "ocid1.keyversion.").is_err(),
                "{bad}"
            );
        }
    }
    use super::*;

    #[test]
    fn retry_rules_follow_oci_sdks() {
        assert!(retryable(429, "TooManyRequests"));
        assert!(retryable(409, "IncorrectState"));
        assert!(retryable(409, "LockConflict"));
        assert!(!retryable(409, "Conflict"));
        assert!(!retryable(409, "InvalidatedRetryToken"));
        assert!(retryable(500, "InternalServerError"));
        assert!(retryable(503, ""));
        assert!(!retryable(501, "MethodNotImplemented"));
        for s in [400, 401, 403, 404, 412] {
            assert!(!retryable(s, "x"), "{s}");
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        for attempt in 1..=20 {
            let step = BACKOFF_BASE
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(BACKOFF_CAP);
            let b = backoff(attempt);
            assert!(b >= step / 2 && b <= step, "{attempt}: {b:?}");
        }
        assert!(backoff(30) <= BACKOFF_CAP);
    }

    #[test]
    fn retry_tokens_derive_from_idempotency_keys() {
        let a = retry_token(Some("rotation-42"), "ImportKeyVersion ocid1.key.x");
        assert_eq!(
            a,
            retry_token(Some("rotation-42"), "ImportKeyVersion ocid1.key.x")
        );
        assert_ne!(
            a,
            retry_token(Some("rotation-42"), "ImportKeyVersion ocid1.key.y")
        );
        assert_ne!(
            a,
            retry_token(Some("rotation-43"), "ImportKeyVersion ocid1.key.x")
        );
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(retry_token(None, "s"), retry_token(None, "s"));
    }

    #[test]
    fn bodies_use_oci_field_names() {
        let d = ImportKeyVersionDetails {
            wrapped_import_key: WrappedImportKey {
                key_material: "AAAA".into(),
                wrapping_algorithm: "RSA_OAEP_AES_SHA256",
            },
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"wrappedImportKey":{"keyMaterial":"AAAA","wrappingAlgorithm":"RSA_OAEP_AES_SHA256"}}"#
        );
        // unknown enum values and extra fields are kept / ignored, not fatal
        let v: KeyVersion = serde_json::from_str(
            r#"{"id":"v","keyId":"k","lifecycleState":"SOMETHING_NEW","origin":"EXTERNAL","extra":1}"#,
        )
        .unwrap();
        assert_eq!(v.lifecycle_state, "SOMETHING_NEW");
        assert_eq!(
            error_body(br#"{"code":"NotAuthenticated","message":"no"}"#),
            ("NotAuthenticated".into(), "no".into())
        );
        assert_eq!(error_body(b"<html>").0, "(no OCI error body)");
    }
}
