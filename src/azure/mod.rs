//! Azure Key Vault (Premium) and Managed HSM, reached through the official SDK
//! (`azure_security_keyvault_keys`, tokens from Microsoft Entra ID by `azure_identity`): one
//! client per `[destinations.NAME]` with `cloud = "azure"` (src/config/destinations.rs),
//! pinned to the destination's checked vault and authority, over rustls with ring and the
//! system's roots plus the destination's `ca_bundle`. The calls an import makes
//! (src/export/azure.rs), each failing as a [`KmsError`] with the service's error code,
//! message and `x-ms-request-id`.
//!
//! Tokens: the vault's first answer is a bearer challenge naming the resource a token is
//! for. The SDK would take any resource whose host the vault's host ends with; here the
//! credential gives a token for exactly one scope, the destination's kind's
//! (`https://vault.azure.net/.default` or `https://managedhsm.azure.net/.default`), so a
//! challenge can never steer the daemon's credentials to another resource. Secrets are read
//! from their files when the client is first made and live in the SDK's credential after
//! (which does not zero them: SECURITY.md). A version listing is read here, not by the
//! SDK's pager, so that a `nextLink` is followed on the vault only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::TokenRequestOptions;
use azure_core::credentials::{AccessToken, Secret, SecretBytes, TokenCredential};
use azure_core::http::headers::HeaderName;
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_security_keyvault_keys::models::{
    CreateKeyParameters, ImportKeyParameters, Key, KeyClientGetKeyOptions, KeyOperation,
    KeyProperties, KeyType, ListKeyPropertiesResult,
};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use crate::config::{AzureDestination, AzureKind};
use crate::oci::kms::{Answer, KmsError, MAX_ERROR_TEXT, MAX_ID_TEXT, bounded};

/// The Key Vault operations this daemon calls, by the SDK's names for them (error messages
/// name the service by them).
pub(crate) const OPERATIONS: [&str; 4] = [
    "KeyVault.getKey",
    "KeyVault.createKey",
    "KeyVault.importKey",
    "KeyVault.getKeyVersions",
];

const GET: &str = "KeyVault.getKey";
const CREATE: &str = "KeyVault.createKey";
const IMPORT: &str = "KeyVault.importKey";
const VERSIONS: &str = "KeyVault.getKeyVersions";

/// Largest secret file read (a client secret, a PKCS#12 file, its password).
const MAX_SECRET_FILE: u64 = 64 << 10;

/// Most versions of one key read when looking for an import's mark, in at most this many
/// pages of at most this many bytes.
const MAX_VERSIONS: usize = 10_000;
const MAX_PAGES: usize = 500;
const MAX_PAGE_BYTES: usize = 1 << 20;

/// The Key Vault REST API version of the listing this module reads itself (the SDK's
/// default for its own calls).
const API_VERSION: &str = "2025-07-01";

/// Whether `name` is a Key Vault key name: 1 to 127 letters, digits and '-'.
pub(crate) fn key_name_ok(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A key id, taken apart: `https://HOST[:PORT]/keys/NAME[/VERSION]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyId {
    /// `https://host[:port]`, lower case, without the default port.
    pub vault: String,
    pub name: String,
    pub version: Option<String>,
}

impl KeyId {
    pub(crate) fn parse(id: &str) -> Result<KeyId, String> {
        let shown: String = id.chars().take(80).collect();
        let bad =
            |why: &str| format!("{shown:?} {why}; a key id is https://VAULT/keys/NAME/VERSION");
        if id.len() > 512 {
            return Err(bad("is longer than 512 characters"));
        }
        let rest = id
            .get(..8)
            .filter(|s| s.eq_ignore_ascii_case("https://"))
            .map(|_| &id[8..])
            .ok_or_else(|| bad("is not an https URL"))?;
        let (authority, path) = rest.split_once('/').ok_or_else(|| bad("has no path"))?;
        let authority = authority.to_ascii_lowercase();
        let authority = authority.strip_suffix(":443").unwrap_or(&authority);
        if authority.is_empty()
            || !authority
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']'))
        {
            return Err(bad("has no host"));
        }
        let version_ok =
            |v: &str| (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric());
        let parts: Vec<&str> = path.split('/').collect();
        let (name, version) = match parts.as_slice() {
            ["keys", name] | ["keys", name, ""] => (*name, None),
            ["keys", name, v] if version_ok(v) => (*name, Some(v.to_string())),
            _ => return Err(bad("is not a key id")),
        };
        if !key_name_ok(name) {
            return Err(bad(
                "does not name a key (1 to 127 letters, digits and '-')",
            ));
        }
        Ok(KeyId {
            vault: format!("https://{authority}"),
            name: name.to_string(),
            version,
        })
    }
}

/// One Azure destination: its settings and its clients (made at first use).
pub(crate) struct Vault {
    pub name: String,
    /// The vault, normalised (`https://host[:port]`), checked when the config was loaded.
    pub base: String,
    pub kind: AzureKind,
    pub cfg: AzureDestination,
    clients: OnceCell<Clients>,
}

/// The SDK's clients: one that retries what is safe to retry (reads), one that never does
/// (a key's import or creation: Azure makes a new version on every call that lands).
struct Clients {
    reads: KeyClient,
    writes: KeyClient,
    /// For the version listing, made here (src/azure/mod.rs, `Vault::versions`): the
    /// SDK's pager follows a `nextLink` to any host with the token.
    http: reqwest::Client,
    credential: Arc<dyn TokenCredential>,
}

/// A credential that gives tokens for one scope only.
#[derive(Debug)]
struct Scoped {
    inner: Arc<dyn TokenCredential>,
    scope: String,
    vault: String,
}

#[async_trait::async_trait]
impl TokenCredential for Scoped {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        if scopes != [self.scope.as_str()] {
            return Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                format!(
                    "{} asked for a token for {:?}; only {} is given to it (nothing was sent with a token)",
                    self.vault,
                    bounded(&scopes.join(" "), MAX_ID_TEXT),
                    self.scope
                ),
            ));
        }
        self.inner.get_token(scopes, options).await
    }
}

impl Vault {
    pub(crate) fn new(name: &str, cfg: &AzureDestination) -> Vault {
        Vault {
            name: name.to_string(),
            base: cfg.vault_base().unwrap_or_default(),
            kind: cfg.kind().unwrap_or(AzureKind::KeyVault),
            cfg: cfg.clone(),
            clients: OnceCell::new(),
        }
    }

    /// `deadline`, or when none is given a bound of its own: no call waits forever, whatever
    /// the vault or Entra ID answers.
    pub(crate) fn bound(&self, deadline: Option<Instant>) -> Option<Instant> {
        let own = Instant::now() + Duration::from_millis(self.cfg.timeout_ms.saturating_mul(4));
        Some(deadline.map_or(own, |d| d.min(own)))
    }

    /// The scope of the tokens the vault takes.
    pub(crate) fn scope(&self) -> String {
        format!("{}/.default", self.kind.resource())
    }

    async fn clients(&self) -> Result<&Clients, KmsError> {
        self.clients
            .get_or_try_init(|| async {
                let local = |why: String| KmsError::Local { op: GET, why };
                let tls = crate::oci::kms::tls(self.cfg.ca_bundle.as_deref()).map_err(local)?;
                let timeout = Duration::from_millis(self.cfg.timeout_ms);
                let http = reqwest::Client::builder()
                    .tls_backend_preconfigured(tls)
                    .redirect(reqwest::redirect::Policy::none())
                    .https_only(true)
                    .connect_timeout(timeout.min(Duration::from_secs(10)))
                    .timeout(timeout)
                    .pool_idle_timeout(Duration::from_secs(60))
                    .user_agent(concat!("hsm-bridge/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| local(format!("HTTP client: {e}")))?;
                let transport = Transport::new(Arc::new(http.clone()));
                let authority = self.cfg.authority_base().map_err(local)?;
                let mut cloud = CustomConfiguration::default();
                cloud.authority_host = authority;
                let cloud = Arc::new(CloudConfiguration::Custom(cloud));
                let options = |retry: RetryOptions| ClientOptions {
                    transport: Some(transport.clone()),
                    retry,
                    cloud: Some(cloud.clone()),
                    ..ClientOptions::default()
                };
                let inner = self.credential(options(reads_retry())).map_err(local)?;
                let credential: Arc<dyn TokenCredential> = Arc::new(Scoped {
                    inner,
                    scope: self.scope(),
                    vault: self.base.clone(),
                });
                let client = |retry: RetryOptions| {
                    KeyClient::new(
                        &self.base,
                        credential.clone(),
                        Some(KeyClientOptions {
                            client_options: options(retry),
                            // The credential itself refuses every scope but the vault's.
                            verify_challenge_resource: Some(false),
                            ..KeyClientOptions::default()
                        }),
                    )
                    .map_err(|e| local(format!("Key Vault client: {e}")))
                };
                Ok(Clients {
                    reads: client(reads_retry())?,
                    writes: client(RetryOptions::none())?,
                    http,
                    credential,
                })
            })
            .await
    }

    /// The destination's Entra ID credential: a client secret, a certificate, or the
    /// workload identity's projected token.
    fn credential(
        &self,
        client_options: ClientOptions,
    ) -> Result<Arc<dyn TokenCredential>, String> {
        let c = &self.cfg;
        // Checked as every secret file is (src/hardening.rs: a regular file of this user or
        // root that no one else may read), at most 64 KiB, read into a buffer zeroed after; the
        // SDK's `Secret`/`SecretBytes` then keep copies of their own, which they do not zero.
        let read = |p: &std::path::Path, what: &'static str| {
            use std::io::Read;
            let f = crate::hardening::open_private(p, what).map_err(|e| e.to_string())?;
            // sized once: a buffer that grew would leave copies behind, unzeroed
            let mut buf = Zeroizing::new(Vec::with_capacity(MAX_SECRET_FILE as usize + 1));
            f.take(MAX_SECRET_FILE + 1)
                .read_to_end(&mut buf)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            if buf.len() as u64 > MAX_SECRET_FILE {
                return Err(format!("{}: {what} is larger than 64 KiB", p.display()));
            }
            Ok(buf)
        };
        if let Some(f) = &c.client_secret_file {
            let bytes = read(f, "Azure client secret file")?;
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| format!("{}: the client secret is not UTF-8", f.display()))?;
            let secret = text.strip_suffix('\n').unwrap_or(text);
            let secret = secret.strip_suffix('\r').unwrap_or(secret);
            if secret.is_empty() {
                return Err(format!("{}: the client secret is empty", f.display()));
            }
            let cred = azure_identity::ClientSecretCredential::new(
                &c.tenant,
                c.client_id.clone(),
                Secret::new(secret.to_string()),
                Some(azure_identity::ClientSecretCredentialOptions { client_options }),
            )
            .map_err(|e| format!("client secret credential: {e}"))?;
            return Ok(cred);
        }
        if let Some(f) = &c.client_certificate_file {
            let password = match &c.client_certificate_password_file {
                Some(p) => {
                    let bytes = read(p, "Azure certificate password file")?;
                    let text = std::str::from_utf8(&bytes)
                        .map_err(|_| format!("{}: not UTF-8", p.display()))?;
                    Some(Secret::new(text.trim_end_matches(['\r', '\n']).to_string()))
                }
                None => None,
            };
            let cred = azure_identity::ClientCertificateCredential::new(
                c.tenant.clone(),
                c.client_id.clone(),
                SecretBytes::new(read(f, "Azure client certificate file")?.to_vec()),
                Some(azure_identity::ClientCertificateCredentialOptions {
                    client_options,
                    password,
                }),
            )
            .map_err(|e| format!("client certificate credential ({}): {e}", f.display()))?;
            return Ok(cred);
        }
        let cred = azure_identity::WorkloadIdentityCredential::new(Some(
            azure_identity::WorkloadIdentityCredentialOptions {
                credential_options: azure_identity::ClientAssertionCredentialOptions {
                    client_options,
                },
                client_id: Some(c.client_id.clone()),
                tenant_id: Some(c.tenant.clone()),
                token_file_path: c.federated_token_file.clone(),
            },
        ))
        .map_err(|e| format!("workload identity credential: {e}"))?;
        Ok(cred)
    }

    /// A key (its latest version, or `version`).
    pub(crate) async fn get_key(
        &self,
        name: &str,
        version: Option<&str>,
        deadline: Option<Instant>,
    ) -> Result<Answer<Key>, KmsError> {
        let c = &self.clients().await?.reads;
        let options = KeyClientGetKeyOptions {
            key_version: version.map(str::to_string),
            ..Default::default()
        };
        let rsp = within(GET, self.bound(deadline), c.get_key(name, Some(options))).await?;
        model(GET, rsp)
    }

    /// Creates the key-exchange key `name`: RSA-HSM of `bits`, for `import` only. Not
    /// retried (a lost answer would leave a second version; the next import reads the
    /// latest).
    pub(crate) async fn create_kek(
        &self,
        name: &str,
        bits: u32,
        deadline: Option<Instant>,
    ) -> Result<Answer<Key>, KmsError> {
        let c = &self.clients().await?.writes;
        let params = CreateKeyParameters {
            kty: Some(KeyType::RsaHsm),
            key_size: Some(bits as i32),
            key_ops: Some(vec![KeyOperation::Import]),
            tags: Some(HashMap::from([(
                "made-by".to_string(),
                "hsm-bridge".to_string(),
            )])),
            ..Default::default()
        };
        let content = params
            .try_into()
            .map_err(|e: azure_core::Error| KmsError::Local {
                op: CREATE,
                why: e.to_string(),
            })?;
        let rsp = within(
            CREATE,
            self.bound(deadline),
            c.create_key(name, content, None),
        )
        .await?;
        model(CREATE, rsp)
    }

    /// Imports a key (`PUT /keys/NAME`): a new key, or a new version of it. Never retried
    /// here: a send whose answer is lost is looked for by its mark (src/export/azure.rs).
    /// Not cut by a caller's deadline (the send runs in a task of its own): only by the
    /// destination's `timeout_ms`, so that a cut is rare and the mark's search after it
    /// waits for what Azure may still be doing.
    pub(crate) async fn import(
        &self,
        name: &str,
        params: ImportKeyParameters,
    ) -> Result<Answer<Key>, KmsError> {
        let deadline = self.bound(None);
        let c = &self.clients().await?.writes;
        let content = params
            .try_into()
            .map_err(|e: azure_core::Error| KmsError::Local {
                op: IMPORT,
                why: e.to_string(),
            })?;
        let rsp = within(IMPORT, deadline, c.import_key(name, content, None)).await?;
        model(IMPORT, rsp)
    }

    /// Every version of key `name` (at most [`MAX_VERSIONS`], in at most [`MAX_PAGES`]
    /// pages of at most 1 MiB): ids, attributes and tags. Read here rather than through the
    /// SDK's pager, which follows a `nextLink` to any https host with the bearer token: a
    /// next page must be on the vault itself.
    pub(crate) async fn versions(
        &self,
        name: &str,
        deadline: Option<Instant>,
    ) -> Result<Answer<Vec<KeyProperties>>, KmsError> {
        let c = self.clients().await?;
        let all = async {
            let token = c
                .credential
                .get_token(&[self.scope().as_str()], None)
                .await
                .map_err(|e| failed(VERSIONS, e))?;
            let mut url = format!(
                "{}/keys/{name}/versions?api-version={API_VERSION}&maxresults=25",
                self.base
            );
            let (mut all, mut rid) = (Vec::new(), String::new());
            for _ in 0..MAX_PAGES {
                let (page, id) = self.page(&c.http, &url, token.token.secret()).await?;
                rid = id;
                all.extend(page.value);
                if all.len() > MAX_VERSIONS {
                    return Err(KmsError::Local {
                        op: VERSIONS,
                        why: format!("key {name} has more than {MAX_VERSIONS} versions"),
                    });
                }
                match page.next_link.filter(|l| !l.is_empty()) {
                    None => return Ok((all, rid)),
                    Some(next) => {
                        if !next.starts_with(&format!("{}/", self.base)) {
                            return Err(bad_listing(
                                &rid,
                                format!(
                                    "its nextLink {:?} leaves {}; it is not followed",
                                    bounded(&next, MAX_ID_TEXT),
                                    self.base
                                ),
                            ));
                        }
                        url = next;
                    }
                }
            }
            Err(bad_listing(&rid, format!("more than {MAX_PAGES} pages")))
        };
        let (value, rid) = match self.bound(deadline) {
            None => all.await?,
            Some(d) => tokio::time::timeout_at(d.into(), all)
                .await
                .map_err(|_| deadline_passed(VERSIONS))??,
        };
        Ok(Answer {
            value,
            opc_request_id: rid,
            attempts: 1,
        })
    }

    /// One page of a version listing.
    async fn page(
        &self,
        http: &reqwest::Client,
        url: &str,
        token: &str,
    ) -> Result<(ListKeyPropertiesResult, String), KmsError> {
        let transport = |e: reqwest::Error| KmsError::Transport {
            op: VERSIONS,
            endpoint: self.base.clone(),
            why: bounded(&e.to_string(), MAX_ERROR_TEXT),
            attempts: 1,
        };
        let mut rsp = http
            .get(url)
            .bearer_auth(token)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(transport)?;
        let status = rsp.status().as_u16();
        let rid = rsp
            .headers()
            .get("x-ms-request-id")
            .and_then(|v| v.to_str().ok())
            .map(|r| bounded(r, MAX_ID_TEXT))
            .unwrap_or_default();
        let mut body = Vec::new();
        while let Some(chunk) = rsp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_PAGE_BYTES {
                return Err(bad_listing(&rid, "a page is larger than 1 MiB".into()));
            }
            body.extend_from_slice(&chunk);
        }
        if status != 200 {
            let v: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
            let error = v.as_ref().map(|v| &v["error"]);
            return Err(KmsError::Service {
                op: VERSIONS,
                status,
                code: bounded(
                    error.and_then(|e| e["code"].as_str()).unwrap_or_default(),
                    MAX_ID_TEXT,
                ),
                message: bounded(
                    error
                        .and_then(|e| e["message"].as_str())
                        .unwrap_or_default(),
                    MAX_ERROR_TEXT,
                ),
                opc_request_id: rid,
                attempts: 1,
            });
        }
        let page = serde_json::from_slice(&body)
            .map_err(|e| bad_listing(&rid, bounded(&e.to_string(), MAX_ERROR_TEXT)))?;
        Ok((page, rid))
    }
}

fn bad_listing(rid: &str, why: String) -> KmsError {
    KmsError::BadResponse {
        op: VERSIONS,
        status: 200,
        expected: "version listing",
        why,
        opc_request_id: rid.to_string(),
    }
}

/// Retries of what is safe to retry (reads, token requests): at most 3, backing off at most
/// 5 s each. A `Retry-After` can ask for longer (the SDK waits for it); every call is
/// bounded from outside by [`Vault::bound`].
fn reads_retry() -> RetryOptions {
    RetryOptions::exponential(azure_core::http::ExponentialRetryOptions {
        max_retries: 3,
        max_delay: azure_core::time::Duration::seconds(5),
        max_total_elapsed: azure_core::time::Duration::seconds(20),
        ..Default::default()
    })
}

fn deadline_passed(op: &'static str) -> KmsError {
    KmsError::Deadline {
        op,
        attempts: 1,
        last: String::new(),
    }
}

/// Runs a call until `deadline`; its failure as a [`KmsError`].
async fn within<T>(
    op: &'static str,
    deadline: Option<Instant>,
    call: impl std::future::Future<Output = azure_core::Result<T>>,
) -> Result<T, KmsError> {
    let result = match deadline {
        None => call.await,
        Some(d) => tokio::time::timeout_at(d.into(), call)
            .await
            .map_err(|_| deadline_passed(op))?,
    };
    result.map_err(|e| failed(op, e))
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-request-id");

/// A 200 answer's key, with its request id.
fn model(op: &'static str, rsp: azure_core::http::Response<Key>) -> Result<Answer<Key>, KmsError> {
    let rid = rsp
        .headers()
        .get_optional_str(&REQUEST_ID)
        .map(|r| bounded(r, MAX_ID_TEXT))
        .unwrap_or_default();
    let key = rsp.into_model().map_err(|e| KmsError::BadResponse {
        op,
        status: 200,
        expected: "key bundle",
        why: bounded(&e.to_string(), MAX_ERROR_TEXT),
        opc_request_id: rid.clone(),
    })?;
    Ok(Answer {
        value: key,
        opc_request_id: rid,
        attempts: 1,
    })
}

/// The service's error as a [`KmsError`]: an answer is a `Service` error with its status,
/// error code and message (src/export/journal.rs: 401/403/409/429/5xx are not final); a
/// credential that could not get a token is a 401 of the operation (nothing was sent with
/// a token); no answer is `Transport`.
fn failed(op: &'static str, e: azure_core::Error) -> KmsError {
    use azure_core::error::ErrorKind;
    // The SDK's outer message says what failed; the causes say why.
    let mut why = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        why = format!("{why}: {c}");
        cause = c.source();
    }
    match e.kind() {
        ErrorKind::HttpResponse {
            status,
            error_code,
            raw_response,
        } => {
            let body: Option<serde_json::Value> =
                raw_response.as_ref().and_then(|r| r.body().json().ok());
            let error = body.as_ref().map(|b| &b["error"]);
            let code = error
                .and_then(|e| e["code"].as_str())
                .map(str::to_string)
                .or_else(|| error_code.clone())
                .unwrap_or_default();
            let message = error
                .and_then(|e| e["message"].as_str())
                .map(str::to_string)
                .unwrap_or(why);
            let rid = raw_response
                .as_ref()
                .and_then(|r| r.headers().get_optional_str(&REQUEST_ID))
                .unwrap_or_default();
            KmsError::Service {
                op,
                status: u16::from(*status),
                code: bounded(&code, MAX_ID_TEXT),
                message: bounded(&message, MAX_ERROR_TEXT),
                opc_request_id: bounded(rid, MAX_ID_TEXT),
                attempts: 1,
            }
        }
        ErrorKind::Credential => KmsError::Service {
            op,
            status: 401,
            code: "CredentialUnavailable".into(),
            message: bounded(&why, MAX_ERROR_TEXT),
            opc_request_id: String::new(),
            attempts: 1,
        },
        ErrorKind::DataConversion => KmsError::BadResponse {
            op,
            status: 200,
            expected: "Key Vault answer",
            why: bounded(&why, MAX_ERROR_TEXT),
            opc_request_id: String::new(),
        },
        _ => KmsError::Transport {
            op,
            endpoint: String::new(),
            why: bounded(&why, MAX_ERROR_TEXT),
            attempts: 1,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_taken_apart() {
        let id = KeyId::parse("https://Contoso.vault.azure.net:443/keys/kek-1/0123abcd").unwrap();
        assert_eq!(id.vault, "https://contoso.vault.azure.net");
        assert_eq!(id.name, "kek-1");
        assert_eq!(id.version.as_deref(), Some("0123abcd"));
        let id = KeyId::parse("https://localhost:8443/keys/k").unwrap();
        assert_eq!(id.vault, "https://localhost:8443");
        assert_eq!(id.version, None);
        for bad in [
            "http://v.vault.azure.net/keys/k/1",
            "https://v.vault.azure.net/secrets/k/1",
            "https://v.vault.azure.net/keys/k_1/1",
            "https://v.vault.azure.net/keys/k/1/2",
            "https://v.vault.azure.net/keys/k/1?x=y",
            "https://user@v.vault.azure.net/keys/k/1",
        ] {
            assert!(KeyId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_names_are_checked() {
        assert!(key_name_ok("byok-kek-2"));
        assert!(!key_name_ok(""));
        assert!(!key_name_ok("a/b"));
        assert!(!key_name_ok(&"a".repeat(128)));
    }
}
