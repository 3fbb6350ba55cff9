//! Google Cloud KMS as an import destination (src/export/destination.rs), over the Cloud
//! KMS client (src/gcp/). An import names a key of the destination's key ring: a new
//! version of a key that exists, or (asked for) a new key, made import-only and without a
//! first version. Every import gets an import job of its own, made in the key ring with
//! the destination's protection level and the format's method, waited for until ACTIVE and
//! checked (method, protection level, its public key's size) before the HSM wraps for its
//! public key; then `cryptoKeyVersions:import` with the algorithm the key's purpose and
//! the source key's shape imply.
//!
//! Exactly once: every import call that lands makes a new version, and Cloud KMS has no
//! retry token. The job is this import's alone (its id is the journal token and a nonce of
//! this wrap, recorded in the body, which the journal MACs), and every version records the
//! job it was imported with: before the recorded bytes are sent again, the key's versions
//! are read, and a version made with this import's job is the import's answer.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use google_cloud_kms_v1::model::{
    CryptoKey, CryptoKeyVersion, CryptoKeyVersionTemplate, ImportJob, ProtectionLevel,
    crypto_key::CryptoKeyPurpose, crypto_key_version::CryptoKeyVersionAlgorithm,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::destination::{looked_for_twice, modulus_hex, recorded, unbase64};
use super::journal::noted;
use super::{Caller, Destination, ExportError};
use crate::audit::{Progress, Record, bounded};
use crate::clouds::Clouds;
use crate::gcp::{KeyRing, id_ok};
use crate::hsm::Wrapped;
use crate::journal::Journal;
use crate::oci::kms::{Answer, KmsError};
use crate::wrap::{Format, KeyAlgorithm, KeyShape, WrappingKey};

/// The label a key this daemon made carries: the journal token of the import that made it
/// (a retry of that import finds its own key).
const REQUEST_LABEL: &str = "hsm-bridge-request";

/// How long before its expiry an import job is no longer used.
const JOB_MARGIN: Duration = Duration::from_secs(600);

/// The purposes an import may make a key for.
const PURPOSES: [&str; 4] = [
    "ENCRYPT_DECRYPT",
    "RAW_ENCRYPT_DECRYPT",
    "ASYMMETRIC_SIGN",
    "ASYMMETRIC_DECRYPT",
];

/// The format of a destination's import method.
pub(crate) fn default_format(ring: &KeyRing) -> Result<&'static Format, ExportError> {
    ring.cfg.format().ok_or_else(|| {
        ExportError::not_configured(format!(
            "destination {} has no import method the daemon knows",
            ring.name
        ))
    })
}

/// The purpose a new key of `shape` gets when the caller names none.
pub(crate) fn default_purpose(shape: KeyShape) -> &'static str {
    match (shape.algorithm, shape.length) {
        (KeyAlgorithm::Aes, 32) => "ENCRYPT_DECRYPT",
        (KeyAlgorithm::Aes, _) => "RAW_ENCRYPT_DECRYPT",
        _ => "ASYMMETRIC_SIGN",
    }
}

/// The algorithm a version of a key of `purpose` gets from a source key of `shape`; the
/// reason if there is none.
pub(crate) fn algorithm(shape: KeyShape, purpose: &str) -> Result<&'static str, String> {
    let found = match (shape.algorithm, shape.length, purpose) {
        (KeyAlgorithm::Aes, 32, "ENCRYPT_DECRYPT") => Some("GOOGLE_SYMMETRIC_ENCRYPTION"),
        (KeyAlgorithm::Aes, 16, "RAW_ENCRYPT_DECRYPT") => Some("AES_128_GCM"),
        (KeyAlgorithm::Aes, 32, "RAW_ENCRYPT_DECRYPT") => Some("AES_256_GCM"),
        (KeyAlgorithm::Rsa, 256, "ASYMMETRIC_SIGN") => Some("RSA_SIGN_PKCS1_2048_SHA256"),
        (KeyAlgorithm::Rsa, 384, "ASYMMETRIC_SIGN") => Some("RSA_SIGN_PKCS1_3072_SHA256"),
        (KeyAlgorithm::Rsa, 512, "ASYMMETRIC_SIGN") => Some("RSA_SIGN_PKCS1_4096_SHA256"),
        (KeyAlgorithm::Rsa, 256, "ASYMMETRIC_DECRYPT") => Some("RSA_DECRYPT_OAEP_2048_SHA256"),
        (KeyAlgorithm::Rsa, 384, "ASYMMETRIC_DECRYPT") => Some("RSA_DECRYPT_OAEP_3072_SHA256"),
        (KeyAlgorithm::Rsa, 512, "ASYMMETRIC_DECRYPT") => Some("RSA_DECRYPT_OAEP_4096_SHA256"),
        _ => None,
    };
    found.ok_or_else(|| {
        format!(
            "Cloud KMS imports no {} key for {purpose} (AES-256 for ENCRYPT_DECRYPT; AES-128/256 for RAW_ENCRYPT_DECRYPT; RSA-2048/3072/4096 for ASYMMETRIC_SIGN or ASYMMETRIC_DECRYPT)",
            shape.describe()
        )
    })
}

/// Whether a key's template algorithm is one a source key of `shape` can be imported as:
/// the same family and size (e.g. RSA_SIGN_PSS_3072_SHA256 for RSA-3072).
fn template_fits(shape: KeyShape, template: &str) -> bool {
    match shape.algorithm {
        KeyAlgorithm::Rsa => {
            let bits = format!("_{}_", shape.length * 8);
            (template.starts_with("RSA_SIGN_") || template.starts_with("RSA_DECRYPT_"))
                && template.contains(&bits)
                && !template.contains("RAW")
        }
        KeyAlgorithm::Aes => algorithm(shape, "ENCRYPT_DECRYPT")
            .into_iter()
            .chain(algorithm(shape, "RAW_ENCRYPT_DECRYPT"))
            .any(|a| a == template),
    }
}

/// Whether Google's error answer to an import says it made nothing: a 4xx but a timeout
/// (408), a conflict (409) and a cancelled call (499). (The call is never retried, so a 401,
/// 403 or 429 is Google refusing this one call, and the credentials' own failures are 401s
/// of calls never sent.) Anything else (no answer, a 5xx, an answer that cannot be read)
/// may hide an import, which is looked for.
fn answered_without_import(e: &KmsError) -> bool {
    matches!(e, KmsError::Service { status, .. }
        if (400..500).contains(status) && !matches!(status, 408 | 409 | 499))
}

/// One import into a Google Cloud KMS destination.
pub(crate) struct GcpImport {
    clouds: Arc<Clouds>,
    ring: Arc<KeyRing>,
    /// The key's id, and its resource name.
    key_id: String,
    key: String,
    /// A new key, for this purpose.
    create: Option<&'static str>,
    shape: KeyShape,
    format: &'static Format,
    deadline: Option<Instant>,
    /// Learnt by [`Destination::wrapping_key`]: the version's algorithm, this import's
    /// job, whether this import made the key.
    learnt: Mutex<Option<Learnt>>,
}

#[derive(Clone)]
struct Learnt {
    algorithm: String,
    job: String,
    created_key: bool,
}

/// The import request as the journal records it.
#[derive(Serialize, Deserialize)]
struct Body {
    key: String,
    algorithm: String,
    /// The import job, this import's alone: what a retry looks for.
    job: String,
    /// The wrapped key, base64.
    wrapped: String,
    created_key: bool,
    /// An RSA source key's modulus (hex, no leading zeros): what the version's public key
    /// must have.
    modulus: Option<String>,
}

/// What a Google Cloud KMS import made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Imported {
    /// `projects/P/locations/L/keyRings/R/cryptoKeys/K`.
    pub key: String,
    /// `{key}/cryptoKeyVersions/N`.
    pub version: String,
    /// PENDING_IMPORT, ENABLED, IMPORT_FAILED, ...
    pub state: String,
    pub algorithm: String,
    pub import_job: String,
    /// When the version was made (RFC 3339).
    pub created: String,
    /// Whether this import made the key.
    pub created_key: bool,
    /// Google's reason, for IMPORT_FAILED.
    #[serde(default)]
    pub failure: String,
    /// An RSA source key's modulus: what the version's public key must have.
    #[serde(default)]
    pub modulus: Option<String>,
}

/// An enum's name as the client has it ("" when it has none).
fn name_of(n: Option<&str>) -> String {
    n.unwrap_or_default().to_string()
}

/// A time the client gives in seconds since 1970, as RFC 3339 ("" for none).
fn rfc3339(seconds: Option<i64>) -> String {
    seconds
        .map(|s| crate::time::rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(s.max(0) as u64)))
        .unwrap_or_default()
}

impl GcpImport {
    /// An import of a key of `shape` into `ring`'s destination as key `target` (its id, or
    /// its resource name in the key ring), or with `create` a new key of that id for that
    /// purpose ("" for the shape's), for a caller already granted the destination.
    /// Everything that needs no call is checked here.
    pub(crate) fn new(
        clouds: Arc<Clouds>,
        ring: Arc<KeyRing>,
        (target, create): (&str, Option<&str>),
        (shape, format): (KeyShape, &'static Format),
        deadline: Option<Instant>,
    ) -> Result<GcpImport, ExportError> {
        let prefix = format!("{}/cryptoKeys/", ring.ring);
        let key_id = target.strip_prefix(&prefix).unwrap_or(target);
        if !id_ok(key_id) {
            return Err(ExportError::invalid(format!(
                "target {:?} is neither a key id (1 to 63 letters, digits, '-' and '_') nor a key of {} ({prefix}ID)",
                bounded(target, 64),
                ring.ring
            )));
        }
        format
            .takes(shape)
            .map_err(|why| ExportError::invalid(format!("{why}; nothing was wrapped or sent")))?;
        let create = match create {
            None => None,
            Some("") => Some(default_purpose(shape)),
            Some(p) => Some(PURPOSES.into_iter().find(|q| *q == p).ok_or_else(|| {
                ExportError::invalid(format!(
                    "key_usage {:?} is not a purpose a key can be imported for: give one of {}",
                    bounded(p, 32),
                    PURPOSES.join(", ")
                ))
            })?),
        };
        if let Some(purpose) = create {
            algorithm(shape, purpose).map_err(|why| {
                ExportError::invalid(format!("{why}; nothing was wrapped or sent"))
            })?;
        }
        Ok(GcpImport {
            key: ring.key_name(key_id),
            key_id: key_id.to_string(),
            clouds,
            ring,
            create,
            shape,
            format,
            deadline,
            learnt: Mutex::new(None),
        })
    }

    fn protection(&self) -> &'static str {
        self.ring.cfg.protection_level.as_str()
    }

    /// The format's import method (Google's name).
    fn method(&self) -> &'static str {
        self.format.name.trim_start_matches("gcp:")
    }

    fn refuse(&self, why: String) -> ExportError {
        ExportError::Oci(KmsError::WrappingKey {
            endpoint: self.ring.base.clone(),
            why: format!("{why}; nothing was wrapped or sent"),
        })
    }

    /// The key named, for a fresh import: for a new key, absent (or made by this import's
    /// earlier attempt); else present, of the destination's protection level, with a
    /// purpose and template the source key fits. The version's algorithm, and whether the
    /// key is still to be made (`Some(purpose)`) or this import made it.
    async fn check_target(
        &self,
        token: &str,
        progress: &mut Progress,
    ) -> Result<(String, Option<&'static str>, bool), ExportError> {
        let got = self.ring.get_key(&self.key, self.deadline).await;
        let key = match (got, self.create) {
            (Err(KmsError::Service { status: 404, .. }), Some(purpose)) => {
                let algorithm = algorithm(self.shape, purpose).map_err(ExportError::invalid)?;
                return Ok((algorithm.to_string(), Some(purpose), true));
            }
            (Err(KmsError::Service { status: 404, .. }), None) => {
                return Err(ExportError::not_configured(format!(
                    "there is no key {}: ask for a new key (create) to make it; nothing was wrapped or sent",
                    self.key
                )));
            }
            (Err(e), _) => return Err(noted(progress)(e)),
            (Ok(k), _) => k.value,
        };
        let ours = key.labels.get(REQUEST_LABEL).map(String::as_str) == Some(token);
        // A key an earlier attempt of this import made holds no version yet (nothing was
        // committed, so nothing was sent): one with versions is not that key, whatever
        // its label says.
        let fresh = ours
            && self
                .ring
                .versions(&self.key, self.deadline)
                .await
                .map_err(noted(progress))?
                .value
                .is_empty();
        if self.create.is_some() && !fresh {
            return Err(ExportError::invalid(format!(
                "key {} exists: import a new version of it (no create), or name a new key; nothing was wrapped or sent",
                self.key
            )));
        }
        let template = key.version_template.as_ref();
        let protection = name_of(template.and_then(|t| t.protection_level.name()));
        if protection != self.protection() {
            return Err(ExportError::invalid(format!(
                "key {} makes {} versions, and destination {} imports with {} import jobs: Cloud KMS imports only with a job of the key's protection level; nothing was wrapped or sent",
                self.key,
                if protection.is_empty() {
                    "unknown"
                } else {
                    &protection
                },
                self.ring.name,
                self.protection()
            )));
        }
        let purpose = name_of(key.purpose.name());
        let template = name_of(template.and_then(|t| t.algorithm.name()));
        let algorithm = if template_fits(self.shape, &template) {
            template
        } else {
            algorithm(self.shape, &purpose)
                .map_err(|why| {
                    ExportError::invalid(format!(
                        "key {} ({purpose}, {template}): {why}; nothing was wrapped or sent",
                        self.key
                    ))
                })?
                .to_string()
        };
        Ok((algorithm, None, fresh))
    }

    /// This import's job: made, waited for until ACTIVE (at most `job_wait_ms`, and the
    /// caller's deadline), checked; its public key.
    async fn job(
        &self,
        token: &str,
        progress: &mut Progress,
    ) -> Result<(String, Arc<WrappingKey>), ExportError> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| {
            ExportError::Body(format!("no random bytes for the import job's id: {e}"))
        })?;
        let id = format!("hsm-bridge-{token}-{}", crate::wrap::hex(&nonce));
        let name = format!("{}/importJobs/{id}", self.ring.ring);
        let mut job = match self
            .ring
            .create_job(&id, self.method(), self.deadline)
            .await
        {
            Ok(j) => j.value,
            // A job of this id exists: the call's answer was lost after Google made it (the
            // id has a nonce of this attempt, so no other import made it).
            Err(KmsError::Service { code, .. }) if code == "ALREADY_EXISTS" => {
                self.ring
                    .get_job(&name, self.deadline)
                    .await
                    .map_err(noted(progress))?
                    .value
            }
            Err(e) => return Err(noted(progress)(e)),
        };
        let wait = Duration::from_millis(self.ring.cfg.job_wait_ms);
        let until = self
            .deadline
            .map_or(Instant::now() + wait, |d| d.min(Instant::now() + wait));
        let mut pause = Duration::from_millis(200);
        loop {
            let state = name_of(job.state.name());
            if state == "ACTIVE" {
                break;
            }
            if state != "PENDING_GENERATION" {
                return Err(self.refuse(format!("import job {name} is {state}, not ACTIVE")));
            }
            if Instant::now() + pause >= until {
                // Not a refusal of the job: Google may still make its key (retryable).
                return Err(ExportError::Oci(KmsError::Deadline {
                    op: "CloudKMS.getImportJob",
                    attempts: 1,
                    last: format!(
                        ": import job {name} is still PENDING_GENERATION after {} ms (job_wait_ms, or the call's deadline); nothing was wrapped or sent",
                        wait.as_millis()
                    ),
                }));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
            job = self
                .ring
                .get_job(&name, Some(until))
                .await
                .map_err(noted(progress))?
                .value;
        }
        let wk = self.check_job(&name, &job)?;
        Ok((name, wk))
    }

    /// Refuses an import job that is not the one asked for: another method or protection
    /// level, about to expire, or a public key that is not the method's size.
    fn check_job(&self, name: &str, job: &ImportJob) -> Result<Arc<WrappingKey>, ExportError> {
        let method = name_of(job.import_method.name());
        if method != self.method() {
            return Err(self.refuse(format!(
                "import job {name} has method {method}, not {}",
                self.method()
            )));
        }
        let protection = name_of(job.protection_level.name());
        if protection != self.protection() {
            return Err(self.refuse(format!(
                "import job {name} has protection level {protection}, not {}",
                self.protection()
            )));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let expires = job.expire_time.as_ref().map(|t| t.seconds());
        if expires.is_none_or(|t| t <= now + JOB_MARGIN.as_secs() as i64) {
            return Err(self.refuse(format!(
                "import job {name} expires at {} (or says not when): too soon to import with",
                rfc3339(expires)
            )));
        }
        let pem = job
            .public_key
            .as_ref()
            .map(|k| k.pem.as_str())
            .unwrap_or_default();
        let wk = WrappingKey::from_pem(pem.as_bytes(), self.clouds.min_wrapping_bits)
            .map_err(|e| self.refuse(format!("import job {name}'s public key: {e}")))?;
        self.format.fits_wrapping_key(wk.bits).map_err(|why| {
            self.refuse(format!(
                "import job {name}'s key does not match its method: {why}"
            ))
        })?;
        Ok(Arc::new(wk))
    }

    /// Makes the key for a new-key import: import-only, no first version, of the
    /// destination's protection level, labelled with the journal token.
    async fn make_key(
        &self,
        token: &str,
        purpose: &'static str,
        algorithm: &str,
        progress: &mut Progress,
    ) -> Result<(), ExportError> {
        let key = CryptoKey::new()
            .set_purpose(CryptoKeyPurpose::from(purpose))
            .set_import_only(true)
            .set_version_template(
                CryptoKeyVersionTemplate::new()
                    .set_protection_level(ProtectionLevel::from(self.protection()))
                    .set_algorithm(CryptoKeyVersionAlgorithm::from(algorithm)),
            )
            .set_labels([(REQUEST_LABEL, token)]);
        self.ring
            .create_key(&self.key_id, key, self.deadline)
            .await
            .map_err(noted(progress))?;
        Ok(())
    }

    /// The version of key `b.key` made with import job `b.job`, if any (none while the key
    /// does not exist).
    async fn made_with_job(&self, b: &Body) -> Result<Option<Answer<Imported>>, KmsError> {
        // Not the caller's deadline: a search for what a send made runs to its end.
        let deadline = self.ring.bound(None);
        let versions = match self.ring.versions(&b.key, deadline).await {
            Ok(v) => v.value,
            Err(KmsError::Service { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut made: Vec<CryptoKeyVersion> = versions
            .into_iter()
            .filter(|v| v.import_job == b.job)
            .collect();
        if made.len() > 1 {
            return Err(KmsError::Local {
                op: "CloudKMS.listCryptoKeyVersions",
                why: format!(
                    "key {} has {} versions made with this import's job {}: nothing is sent again, and none is taken as the answer; an operator must look at the key",
                    b.key,
                    made.len(),
                    b.job
                ),
            });
        }
        match made.pop() {
            None => Ok(None),
            Some(v) => {
                self.check_version(b, &v)?;
                Ok(Some(self.imported(b, v)))
            }
        }
    }

    /// The answer for version `v` of the import `b`.
    fn imported(&self, b: &Body, v: CryptoKeyVersion) -> Answer<Imported> {
        Answer {
            value: Imported {
                key: b.key.clone(),
                version: v.name,
                state: name_of(v.state.name()),
                algorithm: name_of(v.algorithm.name()),
                import_job: v.import_job,
                created: rfc3339(v.create_time.as_ref().map(|t| t.seconds())),
                created_key: b.created_key,
                failure: v.import_failure_reason,
                modulus: b.modulus.clone(),
            },
            opc_request_id: String::new(),
            attempts: 1,
        }
    }

    /// Refuses a version that is not the import's: of another key, or another job.
    fn check_version(&self, b: &Body, v: &CryptoKeyVersion) -> Result<(), KmsError> {
        let ok = v
            .name
            .strip_prefix(&format!("{}/cryptoKeyVersions/", b.key))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()));
        if !ok || v.import_job != b.job {
            return Err(KmsError::BadResponse {
                op: "CloudKMS.importCryptoKeyVersion",
                status: 200,
                expected: "version of the key, made with this import's job",
                why: format!(
                    "the answer names version {:?} made with job {:?}",
                    bounded(&v.name, 200),
                    bounded(&v.import_job, 200)
                ),
                opc_request_id: String::new(),
            });
        }
        Ok(())
    }
}

impl Destination for GcpImport {
    type Answer = Imported;

    fn journal(&self) -> &Arc<Journal> {
        &self.clouds.journal
    }

    fn endpoint(&self) -> &str {
        &self.ring.base
    }

    fn target(&self) -> &str {
        &self.key
    }

    /// The destination, the source key's shape, the format, and the new key's purpose.
    fn details(&self) -> String {
        format!(
            "{} {} {} {}",
            self.ring.name,
            self.shape.describe(),
            self.format.name,
            self.create.unwrap_or("version")
        )
    }

    /// The key named, for the record. (What the key ring holds is checked when a fresh
    /// import asks for the wrapping key: a retry of a recorded import must not be refused
    /// because its own first attempt made the key.)
    async fn admit(&self, _caller: &Caller, rec: &mut Record) -> Result<(), ExportError> {
        rec.cloud_key_id = Some(self.key.clone());
        Ok(())
    }

    /// The key named, checked; this import's job, made, waited for and checked; then, for
    /// a new key, the key made. The job's public key.
    async fn wrapping_key(
        &self,
        token: &str,
        progress: &mut Progress,
    ) -> Result<Arc<WrappingKey>, ExportError> {
        let (algorithm, to_make, created_key) = self.check_target(token, progress).await?;
        let (job, wk) = self.job(token, progress).await?;
        if let Some(purpose) = to_make {
            self.make_key(token, purpose, &algorithm, progress).await?;
        }
        *self.learnt.lock().unwrap_or_else(|p| p.into_inner()) = Some(Learnt {
            algorithm,
            job,
            created_key,
        });
        Ok(wk)
    }

    fn body(&self, _token: &str, wrapped: &Wrapped) -> Result<Vec<u8>, ExportError> {
        let learnt = self
            .learnt
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| ExportError::Body("no import job".into()))?;
        let bytes = self
            .format
            .seal(wrapped.material.clone(), None, "")
            .map_err(|e| ExportError::Body(e.to_string()))?;
        serde_json::to_vec(&Body {
            key: self.key.clone(),
            algorithm: learnt.algorithm,
            job: learnt.job,
            wrapped: openssl::base64::encode_block(&bytes),
            created_key: learnt.created_key,
            modulus: wrapped.key.modulus.as_deref().map(modulus_hex),
        })
        .map_err(|e| ExportError::Body(e.to_string()))
    }

    /// The version made with the import's job, if the earlier send made one.
    async fn find_lost(
        &self,
        _token: &str,
        body: &[u8],
    ) -> Result<Option<Answer<Imported>>, KmsError> {
        let b: Body = recorded("CloudKMS.importCryptoKeyVersion", body)?;
        looked_for_twice(|| self.made_with_job(&b)).await
    }

    /// The import call. A send that got no answer (or an answer that is not final) is
    /// looked for by its job before it is given up.
    async fn send(
        &self,
        body: Arc<Zeroizing<Vec<u8>>>,
        _token: String,
    ) -> Result<Answer<Imported>, KmsError> {
        const OP: &str = "CloudKMS.importCryptoKeyVersion";
        let b: Body = recorded(OP, &body)?;
        let wrapped = unbase64(OP, &b.wrapped)?;
        match self
            .ring
            .import(&b.key, &b.algorithm, &b.job, wrapped)
            .await
        {
            Ok(v) => {
                self.check_version(&b, &v.value)?;
                Ok(self.imported(&b, v.value))
            }
            Err(e) => {
                if answered_without_import(&e) {
                    return Err(e);
                }
                match looked_for_twice(|| self.made_with_job(&b)).await {
                    Ok(Some(found)) => Ok(found),
                    _ => Err(e),
                }
            }
        }
    }

    fn created_id(answer: &Imported) -> &str {
        &answer.version
    }

    fn record_made(&self, rec: &mut Record, _created: Option<&str>) {
        rec.cloud_key_id = Some(self.key.clone());
    }

    /// Waits until the version is ENABLED (Cloud KMS imports asynchronously): IMPORT_FAILED
    /// fails with Google's reason. An RSA version's public key must be the source key's.
    async fn poll(
        &self,
        imported: Imported,
        deadline: Option<Instant>,
    ) -> Result<Imported, ExportError> {
        let until = self.ring.bound(deadline).unwrap_or_else(Instant::now);
        let mut pause = Duration::from_millis(100);
        let mut v = imported;
        loop {
            match v.state.as_str() {
                "ENABLED" => break,
                "IMPORT_FAILED" => {
                    // Final: the same bytes would fail again (FAILED_PRECONDITION).
                    return Err(ExportError::Oci(KmsError::Service {
                        op: "CloudKMS.getCryptoKeyVersion",
                        status: 412,
                        code: "IMPORT_FAILED".into(),
                        message: format!(
                            "Cloud KMS could not import version {}: {}",
                            v.version,
                            if v.failure.is_empty() {
                                "no reason given".to_string()
                            } else {
                                bounded(&v.failure, 500)
                            }
                        ),
                        opc_request_id: String::new(),
                        attempts: 1,
                    }));
                }
                "PENDING_IMPORT" => {}
                other => {
                    // Final: the version will not become ENABLED by waiting.
                    return Err(ExportError::Oci(KmsError::Service {
                        op: "CloudKMS.getCryptoKeyVersion",
                        status: 412,
                        code: bounded(other, 40),
                        message: format!(
                            "version {} is {}, not ENABLED",
                            v.version,
                            bounded(other, 40)
                        ),
                        opc_request_id: String::new(),
                        attempts: 1,
                    }));
                }
            }
            if Instant::now() + pause >= until {
                return Err(ExportError::not_enabled(format!(
                    "version {} is still PENDING_IMPORT when the call's deadline passes; ask again later",
                    v.version
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
            let got = self
                .ring
                .get_version(&v.version, Some(until))
                .await
                .map_err(ExportError::Oci)?
                .value;
            v.state = name_of(got.state.name());
            v.failure = got.import_failure_reason;
        }
        if let Some(want) = &v.modulus {
            let pem = self
                .ring
                .public_key(&v.version, Some(until))
                .await
                .map_err(ExportError::Oci)?
                .value;
            let got = openssl::pkey::PKey::public_key_from_pem(pem.as_bytes())
                .and_then(|k| k.rsa())
                .map(|r| modulus_hex(&r.n().to_vec()))
                .ok();
            if got.as_deref() != Some(want.as_str()) {
                return Err(ExportError::Oci(KmsError::Local {
                    op: "CloudKMS.getPublicKey",
                    why: format!(
                        "version {} was imported with this import's job but its public key is not the source key's: an operator must look at the key",
                        v.version
                    ),
                }));
            }
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aes(n: usize) -> KeyShape {
        KeyShape {
            algorithm: KeyAlgorithm::Aes,
            length: n,
        }
    }

    fn rsa(n: usize) -> KeyShape {
        KeyShape {
            algorithm: KeyAlgorithm::Rsa,
            length: n,
        }
    }

    #[test]
    fn shapes_and_purposes_map_to_algorithms() {
        assert_eq!(
            algorithm(aes(32), default_purpose(aes(32))),
            Ok("GOOGLE_SYMMETRIC_ENCRYPTION")
        );
        assert_eq!(
            algorithm(aes(16), default_purpose(aes(16))),
            Ok("AES_128_GCM")
        );
        assert_eq!(
            algorithm(rsa(384), default_purpose(rsa(384))),
            Ok("RSA_SIGN_PKCS1_3072_SHA256")
        );
        assert_eq!(
            algorithm(rsa(512), "ASYMMETRIC_DECRYPT"),
            Ok("RSA_DECRYPT_OAEP_4096_SHA256")
        );
        assert!(algorithm(aes(24), "RAW_ENCRYPT_DECRYPT").is_err());
        assert!(algorithm(aes(16), "ENCRYPT_DECRYPT").is_err());
        assert!(algorithm(rsa(384), "ENCRYPT_DECRYPT").is_err());
    }

    #[test]
    fn templates_fit_by_family_and_size() {
        assert!(template_fits(rsa(384), "RSA_SIGN_PSS_3072_SHA256"));
        assert!(template_fits(rsa(384), "RSA_DECRYPT_OAEP_3072_SHA1"));
        assert!(!template_fits(rsa(384), "RSA_SIGN_PSS_4096_SHA256"));
        assert!(!template_fits(rsa(256), "RSA_SIGN_RAW_PKCS1_2048"));
        assert!(template_fits(aes(32), "AES_256_GCM"));
        assert!(!template_fits(aes(32), "AES_128_GCM"));
        assert!(!template_fits(aes(32), "HMAC_SHA256"));
    }
}
