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

use super::endpoint::Endpoint;
use super::identity::Identity;
use super::signer::RequestParts;
use crate::config::OciConfig;
use crate::wrap::WrappingKey;

const API: &str = "/20180608";
/// Largest OCI response body read.
const MAX_RESPONSE: usize = 1 << 20;
/// How long a fetched vault wrapping key is reused (OCI never rotates it).
const WRAPPING_KEY_TTL: Duration = Duration::from_secs(3600);

mod rules;
mod types;

pub(crate) use rules::{
    MAX_ERROR_TEXT, MAX_ID_TEXT, backoff, bounded, error_body, retry_token, retryable,
};
use rules::{describe, ocid_for_url};
pub(crate) use types::*;

/// Who calls where, for how long: the context of one OCI operation.
#[derive(Clone, Copy)]
pub(crate) struct Call<'a> {
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

pub(crate) struct KmsClient {
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

/// The TLS client config: the platform's roots plus `ca_bundle`, on ring (also Azure's
/// client's, src/azure/).
pub(crate) fn tls(ca_bundle: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra = match ca_bundle {
        Some(p) => CertificateDer::pem_file_iter(p)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("ca_bundle {}: {e}", p.display()))?,
        None => Vec::new(),
    };
    if ca_bundle.is_some() && extra.is_empty() {
        return Err(format!(
            "ca_bundle {} holds no PEM certificate",
            ca_bundle.unwrap_or(std::path::Path::new("")).display()
        ));
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
    pub(crate) fn new(
        cfg: &OciConfig,
        min_wrapping_bits: u32,
    ) -> Result<KmsClient, super::OciError> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(
                tls(cfg.ca_bundle.as_deref()).map_err(super::OciError::Client)?,
            )
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .connect_timeout(Duration::from_millis(cfg.timeout_ms.min(10_000)))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("hsm-bridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| super::OciError::Client(format!("HTTP client: {e}")))?;
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
    pub(crate) fn endpoint(&self, url: &str) -> Result<Endpoint, super::OciError> {
        super::endpoint::check(url, &self.allowed)
    }

    /// Sends `req` with retries; returns status, body and opc-request-id of the final answer
    /// (a success, or an error that is not retryable).
    async fn send(
        &self,
        call: &Call<'_>,
        req: &Request<'_>,
    ) -> Result<(u16, Vec<u8>, String, u32), KmsError> {
        let started = Instant::now();
        let r = self.send_attempts(call, req).await;
        crate::metrics::get().oci_call(req.op, started.elapsed());
        r
    }

    async fn send_attempts(
        &self,
        call: &Call<'_>,
        req: &Request<'_>,
    ) -> Result<(u16, Vec<u8>, String, u32), KmsError> {
        let deadline = call.deadline;
        let mut attempt = 0u32;
        let mut last_error = String::new();
        let m = crate::metrics::get();
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
                        m.oci_attempt(req.op, status, false);
                        return Ok((status, body, opc, attempt));
                    }
                    let (code, message) = error_body(&body);
                    let last = !retryable(status, &code) || attempt >= self.max_attempts;
                    m.oci_attempt(req.op, status, !last);
                    if last {
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
                    m.oci_attempt(req.op, 0, attempt < self.max_attempts);
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
    pub(crate) async fn wrapping_key(&self, call: &Call<'_>) -> Result<Arc<WrappingKey>, KmsError> {
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
    pub(crate) async fn import_key_version(
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
    pub(crate) async fn import_key(
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

    pub(crate) async fn get_key(
        &self,
        call: &Call<'_>,
        key_id: &str,
    ) -> Result<Answer<Key>, KmsError> {
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

    pub(crate) async fn get_key_version(
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
    pub(crate) async fn wait_enabled<T, F, Fut>(
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
