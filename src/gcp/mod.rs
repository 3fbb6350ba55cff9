//! Google Cloud KMS, reached through the official client (`google-cloud-kms-v1`, tokens from
//! `google-cloud-auth`): one client per `[destinations.NAME]` with `cloud = "gcp"`
//! (src/config/destinations.rs), pinned to the destination's checked endpoint and key ring.
//! The calls an import makes (src/export/gcp.rs), each failing as a [`KmsError`] with
//! Google's status name and message.
//!
//! Tokens: with a service-account key file, every request carries a JWT the daemon signs
//! with that key for the audience `https://cloudkms.googleapis.com/` alone (no token
//! exchange; a token that reached another service would be refused there); without one,
//! the metadata server's token. `GCE_METADATA_HOST` is refused: the SDK would prefer it to
//! the configured metadata server. The client's own HTTP stack trusts the system's roots
//! (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured) and follows no redirects; reads are
//! retried (at most 3 attempts), writes never.

use std::time::{Duration, Instant};

use google_cloud_gax::options::RequestOptionsBuilder;
use google_cloud_gax::retry_policy::{Aip194Strict, NeverRetry, RetryPolicyExt};
use google_cloud_kms_v1::client::KeyManagementService;
use google_cloud_kms_v1::model::{
    CryptoKey, CryptoKeyVersion, ImportJob, ProtectionLevel, crypto_key_version,
    import_job::ImportMethod,
};
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use crate::config::GcpDestination;
use crate::oci::kms::{Answer, KmsError, MAX_ERROR_TEXT, MAX_ID_TEXT, bounded};

/// The Cloud KMS operations this daemon calls (error messages name the service by them).
pub(crate) const OPERATIONS: [&str; 8] = [
    CREATE_JOB,
    GET_JOB,
    CREATE_KEY,
    GET_KEY,
    IMPORT,
    LIST,
    GET_VERSION,
    PUBLIC_KEY,
];

const CREATE_JOB: &str = "CloudKMS.createImportJob";
const GET_JOB: &str = "CloudKMS.getImportJob";
const CREATE_KEY: &str = "CloudKMS.createCryptoKey";
const GET_KEY: &str = "CloudKMS.getCryptoKey";
const IMPORT: &str = "CloudKMS.importCryptoKeyVersion";
const LIST: &str = "CloudKMS.listCryptoKeyVersions";
const GET_VERSION: &str = "CloudKMS.getCryptoKeyVersion";
const PUBLIC_KEY: &str = "CloudKMS.getPublicKey";

/// The audience of the JWTs a service-account key signs: Cloud KMS alone.
const AUDIENCE: &str = "https://cloudkms.googleapis.com/";

/// Largest service-account key file read.
const MAX_KEY_FILE: u64 = 64 << 10;

/// Most versions of one key read when looking for an import's, in pages of this many.
const MAX_VERSIONS: usize = 10_000;
const PAGE_SIZE: i32 = 1000;

/// Whether `id` is a Cloud KMS resource id (a key ring's, a key's, an import job's): 1 to
/// 63 letters, digits, '-' and '_'.
pub(crate) fn id_ok(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// One Google Cloud KMS destination: its settings and its client (made at first use).
pub(crate) struct KeyRing {
    pub name: String,
    /// The endpoint, normalised (`https://host[:port]`), checked when the config was loaded.
    pub base: String,
    /// `projects/P/locations/L/keyRings/R`.
    pub ring: String,
    pub cfg: GcpDestination,
    client: OnceCell<KeyManagementService>,
}

impl KeyRing {
    pub(crate) fn new(name: &str, cfg: &GcpDestination) -> KeyRing {
        KeyRing {
            name: name.to_string(),
            base: cfg.endpoint_base().unwrap_or_default(),
            ring: cfg.key_ring_name(),
            cfg: cfg.clone(),
            client: OnceCell::new(),
        }
    }

    /// `deadline`, or when none is given a bound of its own: no call waits forever.
    pub(crate) fn bound(&self, deadline: Option<Instant>) -> Option<Instant> {
        let own = Instant::now() + Duration::from_millis(self.cfg.timeout_ms.saturating_mul(4));
        Some(deadline.map_or(own, |d| d.min(own)))
    }

    /// The key `id`'s resource name in this key ring.
    pub(crate) fn key_name(&self, id: &str) -> String {
        format!("{}/cryptoKeys/{id}", self.ring)
    }

    async fn client(&self) -> Result<&KeyManagementService, KmsError> {
        self.client
            .get_or_try_init(|| async {
                let local = |why: String| KmsError::Local { op: GET_KEY, why };
                // The SDK signs JWTs with rustls's key provider: this daemon's is ring.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let credentials = self.credentials().map_err(local)?;
                let builder = KeyManagementService::builder()
                    .with_endpoint(&self.base)
                    .with_credentials(credentials)
                    .with_retry_policy(
                        Aip194Strict
                            .with_attempt_limit(3)
                            .with_time_limit(Duration::from_secs(20)),
                    )
                    .with_attempt_timeout(Duration::from_millis(self.cfg.timeout_ms));
                let builder = google_cloud_gax::client_builder::internal::with_follow_redirects(
                    builder, false,
                );
                within(GET_KEY, self.bound(None), async {
                    builder
                        .build()
                        .await
                        .map_err(|e| local(format!("Cloud KMS client: {}", chain(&e))))
                })
                .await
            })
            .await
    }

    /// The destination's credentials: a JWT signer over its service-account key, or the
    /// metadata server.
    fn credentials(&self) -> Result<google_cloud_auth::credentials::Credentials, String> {
        use google_cloud_auth::credentials::{mds, service_account};
        if let Some(path) = &self.cfg.credentials_file {
            use std::io::Read;
            // Checked as every secret file is (src/hardening.rs), at most 64 KiB, read into
            // a buffer zeroed after; the parsed JSON and the SDK keep the private key as
            // strings of their own (the SDK copies it for every token it signs), which are
            // not zeroed (SECURITY.md).
            let f = crate::hardening::open_private(path, "Google service-account key file")
                .map_err(|e| e.to_string())?;
            // sized once: a buffer that grew would leave copies behind, unzeroed
            let mut buf = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE as usize + 1));
            f.take(MAX_KEY_FILE + 1)
                .read_to_end(&mut buf)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if buf.len() as u64 > MAX_KEY_FILE {
                return Err(format!(
                    "{}: a service-account key file is smaller than 64 KiB",
                    path.display()
                ));
            }
            let key: serde_json::Value = serde_json::from_slice(&buf).map_err(|_| {
                format!("{}: not a service-account key file (JSON)", path.display())
            })?;
            if key["type"] != "service_account" {
                return Err(format!(
                    "{}: not a service-account key file (its type is not \"service_account\")",
                    path.display()
                ));
            }
            return service_account::Builder::new(key)
                .with_access_specifier(service_account::AccessSpecifier::from_audience(AUDIENCE))
                .build()
                .map_err(|e| format!("{}: {}", path.display(), chain(&e)));
        }
        if std::env::var_os("GCE_METADATA_HOST").is_some() {
            return Err(
                "GCE_METADATA_HOST is set: the daemon does not let the environment choose its metadata server; unset it, and name the server in metadata_endpoint"
                    .into(),
            );
        }
        let endpoint = self
            .cfg
            .metadata_endpoint
            .clone()
            .unwrap_or_else(|| crate::config::GCP_METADATA.to_string());
        mds::Builder::default()
            .with_endpoint(endpoint.trim_end_matches('/'))
            .with_scopes(["https://www.googleapis.com/auth/cloudkms"])
            .build()
            .map_err(|e| format!("metadata server credentials: {}", chain(&e)))
    }

    /// Makes import job `id` in the key ring with the destination's protection level and
    /// `method` (never retried: a second call would answer ALREADY_EXISTS).
    pub(crate) async fn create_job(
        &self,
        id: &str,
        method: &str,
        deadline: Option<Instant>,
    ) -> Result<Answer<ImportJob>, KmsError> {
        let c = self.client().await?;
        let job = ImportJob::new()
            .set_import_method(ImportMethod::from(method))
            .set_protection_level(ProtectionLevel::from(self.cfg.protection_level.as_str()));
        let call = c
            .create_import_job()
            .set_parent(&self.ring)
            .set_import_job_id(id)
            .set_import_job(job)
            .with_retry_policy(NeverRetry)
            .send();
        answered(within(CREATE_JOB, self.bound(deadline), call).await)
    }

    /// Import job `name`.
    pub(crate) async fn get_job(
        &self,
        name: &str,
        deadline: Option<Instant>,
    ) -> Result<Answer<ImportJob>, KmsError> {
        let c = self.client().await?;
        let call = c.get_import_job().set_name(name).send();
        answered(within(GET_JOB, self.bound(deadline), call).await)
    }

    /// Key `name`.
    pub(crate) async fn get_key(
        &self,
        name: &str,
        deadline: Option<Instant>,
    ) -> Result<Answer<CryptoKey>, KmsError> {
        let c = self.client().await?;
        let call = c.get_crypto_key().set_name(name).send();
        answered(within(GET_KEY, self.bound(deadline), call).await)
    }

    /// Makes key `id`, import-only and without a first version (never retried).
    pub(crate) async fn create_key(
        &self,
        id: &str,
        key: CryptoKey,
        deadline: Option<Instant>,
    ) -> Result<Answer<CryptoKey>, KmsError> {
        let c = self.client().await?;
        let call = c
            .create_crypto_key()
            .set_parent(&self.ring)
            .set_crypto_key_id(id)
            .set_crypto_key(key)
            .set_skip_initial_version_creation(true)
            .with_retry_policy(NeverRetry)
            .send();
        answered(within(CREATE_KEY, self.bound(deadline), call).await)
    }

    /// Imports `wrapped` into key `key` as a new version of `algorithm`, wrapped for import
    /// job `job`. Never retried, and bounded by the destination's own limit only: every call
    /// that lands makes a version, so its answer is waited for.
    pub(crate) async fn import(
        &self,
        key: &str,
        algorithm: &str,
        job: &str,
        wrapped: Vec<u8>,
    ) -> Result<Answer<CryptoKeyVersion>, KmsError> {
        let c = self.client().await?;
        let call = c
            .import_crypto_key_version()
            .set_parent(key)
            .set_algorithm(crypto_key_version::CryptoKeyVersionAlgorithm::from(
                algorithm,
            ))
            .set_import_job(job)
            .set_wrapped_key(wrapped)
            .with_retry_policy(NeverRetry)
            .send();
        answered(within(IMPORT, self.bound(None), call).await)
    }

    /// Every version of key `key` (at most 10,000).
    pub(crate) async fn versions(
        &self,
        key: &str,
        deadline: Option<Instant>,
    ) -> Result<Answer<Vec<CryptoKeyVersion>>, KmsError> {
        let c = self.client().await?;
        let mut all = Vec::new();
        let mut token = String::new();
        for _ in 0..=MAX_VERSIONS / PAGE_SIZE as usize {
            let call = c
                .list_crypto_key_versions()
                .set_parent(key)
                .set_page_size(PAGE_SIZE)
                .set_page_token(token.clone())
                .send();
            let page = within(LIST, self.bound(deadline), call).await?;
            all.extend(page.crypto_key_versions);
            if all.len() > MAX_VERSIONS {
                return Err(KmsError::Local {
                    op: LIST,
                    why: format!(
                        "key {key} has more than {MAX_VERSIONS} versions: not all were read"
                    ),
                });
            }
            if page.next_page_token.is_empty() || page.next_page_token == token {
                return answered(Ok(all));
            }
            token = page.next_page_token;
        }
        Err(KmsError::Local {
            op: LIST,
            why: format!(
                "key {key}'s versions did not end within {} pages",
                MAX_VERSIONS / PAGE_SIZE as usize + 1
            ),
        })
    }

    /// Version `name`.
    pub(crate) async fn get_version(
        &self,
        name: &str,
        deadline: Option<Instant>,
    ) -> Result<Answer<CryptoKeyVersion>, KmsError> {
        let c = self.client().await?;
        let call = c.get_crypto_key_version().set_name(name).send();
        answered(within(GET_VERSION, self.bound(deadline), call).await)
    }

    /// The public key (PEM) of asymmetric version `name`.
    pub(crate) async fn public_key(
        &self,
        name: &str,
        deadline: Option<Instant>,
    ) -> Result<Answer<String>, KmsError> {
        let c = self.client().await?;
        let call = c.get_public_key().set_name(name).send();
        let key = within(PUBLIC_KEY, self.bound(deadline), call).await?;
        answered(Ok(key.pem))
    }
}

/// An answer: Google's REST answers carry no request id the client shows.
fn answered<T>(r: Result<T, KmsError>) -> Result<Answer<T>, KmsError> {
    r.map(|value| Answer {
        value,
        opc_request_id: String::new(),
        attempts: 1,
    })
}

/// An error with its causes.
fn chain(e: &dyn std::error::Error) -> String {
    let mut why = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        why = format!("{why}: {c}");
        cause = c.source();
    }
    why
}

/// Runs a call until `deadline`; its failure as a [`KmsError`].
async fn within<T, E: Into<Failure>>(
    op: &'static str,
    deadline: Option<Instant>,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, KmsError> {
    let result = match deadline {
        None => call.await,
        Some(d) => {
            tokio::time::timeout_at(d.into(), call)
                .await
                .map_err(|_| KmsError::Deadline {
                    op,
                    attempts: 1,
                    last: String::new(),
                })?
        }
    };
    result.map_err(|e| e.into().kms(op))
}

/// What a call can fail with: the SDK's error, or one of this module's.
enum Failure {
    Sdk(google_cloud_kms_v1::Error),
    Local(KmsError),
}

impl From<google_cloud_kms_v1::Error> for Failure {
    fn from(e: google_cloud_kms_v1::Error) -> Failure {
        Failure::Sdk(e)
    }
}

impl From<KmsError> for Failure {
    fn from(e: KmsError) -> Failure {
        Failure::Local(e)
    }
}

impl Failure {
    /// As a [`KmsError`]: an answer is a `Service` error with its HTTP status and Google's
    /// status name (src/export/journal.rs: 401/403/409/429/499/5xx are not final);
    /// credentials that gave no token are a 401 of the operation (nothing was sent with a
    /// token), or when that may pass (a metadata server that did not answer) `Transport`; no
    /// answer is `Transport`.
    fn kms(self, op: &'static str) -> KmsError {
        let e = match self {
            Failure::Local(e) => return e,
            Failure::Sdk(e) => e,
        };
        let why = bounded(&chain(&e), MAX_ERROR_TEXT);
        if let Some(status) = e.status() {
            return KmsError::Service {
                op,
                status: e
                    .http_status_code()
                    .unwrap_or_else(|| http_status(status.code.name())),
                code: bounded(status.code.name(), MAX_ID_TEXT),
                message: bounded(&status.message, MAX_ERROR_TEXT),
                opc_request_id: String::new(),
                attempts: 1,
            };
        }
        if let Some(status) = e.http_status_code() {
            let body = e
                .http_payload()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            return KmsError::Service {
                op,
                status,
                code: String::new(),
                message: bounded(&body, MAX_ERROR_TEXT),
                opc_request_id: String::new(),
                attempts: 1,
            };
        }
        let transient = std::error::Error::source(&e)
            .and_then(|c| c.downcast_ref::<google_cloud_gax::error::CredentialsError>())
            .is_some_and(|c| c.is_transient());
        if e.is_authentication() && !transient {
            return KmsError::Service {
                op,
                status: 401,
                code: "CredentialUnavailable".into(),
                message: why,
                opc_request_id: String::new(),
                attempts: 1,
            };
        }
        if e.is_deserialization() {
            return KmsError::BadResponse {
                op,
                status: 200,
                expected: "Cloud KMS answer",
                why,
                opc_request_id: String::new(),
            };
        }
        KmsError::Transport {
            op,
            endpoint: String::new(),
            why,
            attempts: 1,
        }
    }
}

/// The HTTP status Google maps a status name to.
fn http_status(code: &str) -> u16 {
    match code {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => 400,
        "UNAUTHENTICATED" => 401,
        "PERMISSION_DENIED" => 403,
        "NOT_FOUND" => 404,
        "ALREADY_EXISTS" | "ABORTED" => 409,
        "RESOURCE_EXHAUSTED" => 429,
        "CANCELLED" => 499,
        "UNIMPLEMENTED" => 501,
        "UNAVAILABLE" => 503,
        "DEADLINE_EXCEEDED" => 504,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(id_ok("byok_ring-1"));
        assert!(id_ok(&"a".repeat(63)));
        assert!(!id_ok(&"a".repeat(64)));
        assert!(!id_ok(""));
        assert!(!id_ok("a/b"));
        assert!(!id_ok("a.b"));
    }

    #[test]
    fn status_names_map_to_http() {
        assert_eq!(http_status("FAILED_PRECONDITION"), 400);
        assert_eq!(http_status("ALREADY_EXISTS"), 409);
        assert_eq!(http_status("UNAVAILABLE"), 503);
        assert_eq!(http_status("SOMETHING_NEW"), 500);
    }
}
