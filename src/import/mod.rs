//! ImportKeyVersion and ImportKey, for the daemon and the CLI alike: fetch the vault's
//! wrapping key, wrap in the HSM, send to OCI with one retry token and one fixed body on
//! every attempt, optionally wait for `ENABLED`. It knows nothing of gRPC: its errors are
//! [`ImportError`], which `service/status.rs` turns into gRPC codes.
//!
//! An `idempotency_key` belongs to the caller that sent it (the retry token is derived from
//! the caller's name, the operation, the endpoint and the target). Every import goes
//! through the journal (src/journal/): one call at a time, in any process sharing it, holds
//! a key's claim, from before the wrap until OCI has answered; a second call with the same
//! key waits for it (or, past its deadline, gets a retryable `ABORTED`). The body is
//! committed before its first send; a retry gets OCI's recorded answer, or re-sends exactly
//! the recorded bytes under the same token, so OCI creates nothing new; but only after the
//! retry has passed every check a fresh import passes, the source key's included.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::code::Code;
use crate::config::{OciConfig, ProtectionMode};
use crate::hsm::{KeyRef, Wrapped};
use crate::journal::{Journal, JournalError};
use crate::oci::kms::{self, Answer, Call, KmsClient, KmsError};
use crate::oci::{Identity, OciError, endpoint::Endpoint};
use crate::wrap::{self, Format};

mod flow;

pub use crate::audit::Progress;
pub use crate::oci::is_ocid;
pub use flow::{Prepared, Steps, prepare, send};

/// Why an import stopped, for the caller (`service/status.rs` picks the gRPC code).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// Policy or the caller's grants refuse it.
    #[error("{0}")]
    Denied(String),
    /// The daemon is not configured for it (e.g. no such OCI connection).
    #[error("{0}")]
    NotConfigured(String),
    /// Another call holds the idempotency key.
    #[error("{0}")]
    InProgress(String),
    /// The import was made but did not become `ENABLED` in time.
    #[error("{0}")]
    NotEnabled(String),
    /// OCI refused, or did not answer.
    #[error(transparent)]
    Oci(#[from] KmsError),
    /// The HSM (the CLI's own wrap; the daemon's goes through its queue).
    #[error(transparent)]
    Hsm(#[from] crate::hsm::HsmError),
    /// The import journal could not be written: nothing was sent.
    #[error("{0}; nothing was sent")]
    Journal(#[from] JournalError),
    /// The import body could not be made.
    #[error("{0}")]
    Body(String),
}

impl ImportError {
    /// The canonical code for this refusal (src/code.rs).
    pub fn code(&self) -> Code {
        match self {
            ImportError::Invalid(_) => Code::InvalidArgument,
            ImportError::Denied(_) => Code::PermissionDenied,
            ImportError::NotConfigured(_) => Code::FailedPrecondition,
            ImportError::InProgress(_) => Code::Aborted,
            ImportError::NotEnabled(_) => Code::DeadlineExceeded,
            ImportError::Oci(k) => k.code(),
            ImportError::Hsm(h) => h.code(),
            ImportError::Body(_) => Code::Internal,
            ImportError::Journal(JournalError::Unavailable(_) | JournalError::NoKey(_)) => {
                Code::Unavailable
            }
            ImportError::Journal(JournalError::LeaseLost) => Code::Aborted,
            // Not the caller's fault, and no retry mends it: an operator must look at the record.
            ImportError::Journal(JournalError::Forged { .. }) => Code::DataLoss,
        }
    }

    /// What a caller is told (OCI's details for OCI's refusals).
    pub fn message(&self) -> String {
        match self {
            ImportError::Oci(k) => k.message(),
            other => other.to_string(),
        }
    }

    fn invalid(m: impl Into<String>) -> Self {
        ImportError::Invalid(m.into())
    }
    fn denied(m: impl Into<String>) -> Self {
        ImportError::Denied(m.into())
    }
    fn not_configured(m: impl Into<String>) -> Self {
        ImportError::NotConfigured(m.into())
    }
    fn in_progress(m: impl Into<String>) -> Self {
        ImportError::InProgress(m.into())
    }
    fn not_enabled(m: impl Into<String>) -> Self {
        ImportError::NotEnabled(m.into())
    }
}

/// Longest `wait_for_enabled` wait when the caller gave no deadline.
const MAX_WAIT: Duration = Duration::from_secs(300);
/// Longest wait for another call's claim on an idempotency key when the caller gave no
/// deadline.
const MAX_CLAIM_WAIT: Duration = Duration::from_secs(60);

/// The OCI side of the daemon: client, identities, the import journal.
pub struct OciSide {
    pub kms: KmsClient,
    identities: BTreeMap<String, Arc<Identity>>,
    pub journal: Arc<Journal>,
}

/// Longest `oci.connection` name accepted.
const MAX_CONNECTION_NAME: usize = 64;

impl OciSide {
    /// Loads every `[oci.connections.NAME]` identity (failing at start, not at first use).
    pub fn load(
        cfg: &OciConfig,
        min_wrapping_bits: u32,
        journal: Arc<Journal>,
    ) -> Result<OciSide, OciError> {
        let mut identities = BTreeMap::new();
        for (name, c) in &cfg.connections {
            let id =
                Identity::load(&c.config_file, &c.profile).map_err(|e| OciError::Connection {
                    name: name.clone(),
                    err: Box::new(e),
                })?;
            identities.insert(name.clone(), Arc::new(id));
        }
        Ok(OciSide {
            kms: KmsClient::new(cfg, min_wrapping_bits)?,
            identities,
            journal,
        })
    }

    /// The identity `name` ("" = "default"); the name is checked before it is quoted.
    pub fn identity(&self, name: &str) -> Result<(String, Arc<Identity>), ImportError> {
        let name = if name.is_empty() { "default" } else { name };
        if name.len() > MAX_CONNECTION_NAME || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ImportError::invalid(format!(
                "oci.connection must be 1 to {MAX_CONNECTION_NAME} printable ASCII characters"
            )));
        }
        match self.identities.get(name) {
            Some(id) => Ok((name.to_string(), id.clone())),
            None => {
                let names: Vec<&str> = self.identities.keys().map(String::as_str).collect();
                Err(ImportError::not_configured(format!(
                    "no OCI connection {name:?} in the daemon's [oci.connections] (configured: {})",
                    if names.is_empty() {
                        "none".into()
                    } else {
                        names.join(", ")
                    }
                )))
            }
        }
    }

    pub fn endpoint(&self, url: &str) -> Result<Endpoint, ImportError> {
        self.kms.endpoint(url).map_err(|e| match e {
            OciError::NotAllowed(_) => ImportError::denied(format!(
                "{e}; nothing was sent (the operator lists vault endpoints in oci.allowed_endpoints)"
            )),
            _ => ImportError::invalid(format!("oci.management_endpoint: {e}")),
        })
    }
}

/// `oci_key_id` must look like a key OCID.
pub fn check_key_ocid(id: &str) -> Result<(), ImportError> {
    if is_ocid(id, "ocid1.key.") {
        Ok(())
    } else {
        // Not quoted: a caller's bytes that fail a check go into no status or audit record.
        Err(ImportError::invalid(
            "oci_key_id is not a key OCID (ocid1.key.…: at most 255 letters, digits, '.', '-' and '_')",
        ))
    }
}

/// `idempotency_key`: empty (none) or 1..=128 printable ASCII characters.
pub fn check_idempotency_key(k: &str) -> Result<Option<&str>, ImportError> {
    if k.is_empty() {
        return Ok(None);
    }
    if k.len() > 128 || !k.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ImportError::invalid(
            "idempotency_key must be 1 to 128 printable ASCII characters",
        ));
    }
    Ok(Some(k))
}

/// `opc-request-id` to send: the daemon's request id when OCI would take it.
pub fn opc_request_id(request_id: &str) -> Option<&str> {
    (request_id.len() <= 32
        && request_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then_some(request_id)
}

/// `wrappedImportKey` for `w`.
pub fn wrapped_import_key(w: &Wrapped) -> kms::WrappedImportKey {
    kms::WrappedImportKey {
        key_material: openssl::base64::encode_block(&w.material),
        wrapping_algorithm: w.format.algorithm(),
    }
}

/// What an idempotency key is bound to, and what the journal records of the request.
pub struct Described {
    /// Caller, operation, endpoint and OCI target: with the idempotency key, derives the
    /// retry token, so one caller's key never names another caller's import.
    pub scope: String,
    /// SHA-256 of everything asked (scope, source key, algorithm, details): a key reused
    /// with a different request is refused.
    pub digest: [u8; 32],
    pub caller: String,
    pub op: &'static str,
    pub target: String,
    pub endpoint: String,
    pub algorithm: &'static str,
}

/// What `caller` asks of `op`.
pub struct Ask<'a> {
    pub caller: &'a str,
    pub op: &'static str,
    pub target: &'a str,
    pub key: &'a KeyRef,
    pub format: &'static Format,
    pub endpoint: &'a Endpoint,
    pub details: &'a str,
}

pub fn describe(a: &Ask<'_>) -> Described {
    let key = match a.key {
        KeyRef::Label(l) => format!("label:{l}"),
        KeyRef::Id(id) => format!("id:{}", wrap::hex(id)),
        KeyRef::Uri(u) => format!("uri:{u}"),
    };
    let scope = format!("{} {} {} {}", a.caller, a.op, a.endpoint.base, a.target);
    let mut h = openssl::sha::Sha256::new();
    // The cloud's own algorithm name: for OCI's formats, the digest is what it always was.
    for part in [&scope, &key, a.format.algorithm(), a.details] {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    Described {
        digest: h.finish(),
        scope,
        caller: a.caller.to_string(),
        op: a.op,
        target: a.target.to_string(),
        endpoint: a.endpoint.base.clone(),
        algorithm: a.format.algorithm(),
    }
}

/// OCI's limits on tags, checked before anything is kept or sent: at most 64 tags in all,
/// keys and namespaces 1 to 100 characters, values at most 256, no control characters.
pub fn check_tags<'a>(
    freeform: &HashMap<String, String>,
    defined: impl Iterator<Item = (&'a String, &'a HashMap<String, String>)> + Clone,
) -> Result<(), ImportError> {
    const MAX_TAGS: usize = 64;
    let name_ok =
        |k: &str| (1..=100).contains(&k.chars().count()) && !k.chars().any(|c| c.is_control());
    let value_ok = |v: &str| v.chars().count() <= 256 && !v.chars().any(|c| c.is_control());
    let count = freeform.len() + defined.clone().map(|(_, t)| t.len()).sum::<usize>();
    if count > MAX_TAGS {
        return Err(ImportError::invalid(format!(
            "{count} tags: OCI allows at most {MAX_TAGS} per key"
        )));
    }
    let freeform_ok = freeform.iter().all(|(k, v)| name_ok(k) && value_ok(v));
    let defined_ok = defined
        .clone()
        .all(|(ns, t)| name_ok(ns) && t.iter().all(|(k, v)| name_ok(k) && value_ok(v)));
    if !(freeform_ok && defined_ok) {
        return Err(ImportError::invalid(
            "tags: keys and namespaces must be 1 to 100 characters, values at most 256, without control characters",
        ));
    }
    Ok(())
}

/// Whether `modes` (`policy.protection_modes`) allows OCI protection mode `mode` ("" is
/// OCI's default, HSM) for `what`.
pub fn protection_allowed(
    modes: &[ProtectionMode],
    mode: &str,
    what: &str,
) -> Result<ProtectionMode, ImportError> {
    match ProtectionMode::parse(mode) {
        Some(m) if modes.contains(&m) => Ok(m),
        _ => {
            let allowed: Vec<&str> = modes.iter().map(|m| m.as_str()).collect();
            Err(ImportError::denied(format!(
                "{what} is protected by {:?}; policy.protection_modes allows {}; nothing was wrapped or sent",
                mode.chars().take(32).collect::<String>(),
                allowed.join(", ")
            )))
        }
    }
}

/// The key an ImportKeyVersion adds to, as OCI describes it (GetKey), if its protection mode
/// is one `modes` allows: a version is never added to a key OCI would let anyone export.
/// A failed GetKey is noted in `progress` (OCI's request id, for the audit record).
pub async fn existing_key(
    oci: &OciSide,
    call: &Call<'_>,
    key_id: &str,
    modes: &[ProtectionMode],
    progress: &mut Progress,
) -> Result<kms::Key, ImportError> {
    let key = oci
        .kms
        .get_key(call, key_id)
        .await
        .map_err(|e| {
            note_error(progress, &e);
            ImportError::Oci(e)
        })?
        .value;
    protection_allowed(modes, &key.protection_mode, &format!("key {key_id}"))?;
    Ok(key)
}

/// Records the answer in `progress`.
pub fn note<T>(progress: &mut Progress, r: &Result<Answer<T>, KmsError>) {
    match r {
        Ok(a) => {
            progress.opc_request_id = Some(a.opc_request_id.clone());
            progress.attempts = a.attempts;
        }
        Err(e) => note_error(progress, e),
    }
}

fn note_error(progress: &mut Progress, e: &KmsError) {
    progress.opc_request_id = e.opc_request_id().map(str::to_string);
    progress.attempts = e.attempts();
}

/// Waits for `ENABLED`; a timeout is DEADLINE_EXCEEDED naming what was created.
pub async fn wait<T, F, Fut>(
    oci: &OciSide,
    fetch: F,
    state: impl Fn(&T) -> &str,
    deadline: Option<Instant>,
    what: &str,
) -> Result<T, ImportError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Answer<T>, KmsError>>,
{
    let (v, enabled) = oci
        .kms
        .wait_enabled(fetch, &state, deadline, MAX_WAIT)
        .await
        .map_err(ImportError::Oci)?;
    if enabled {
        Ok(v)
    } else {
        Err(ImportError::not_enabled(format!(
            "{what} was created but is still {} at the deadline; poll it, or call again with the same idempotency_key",
            state(&v)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ocids_and_idempotency_keys_are_checked() {
        assert!(check_key_ocid("ocid1.key.oc1.iad.abcd-ef_12").is_ok());
        for bad in [
            "",
            "ocid1.vault.oc1..x",
            "ocid1.key.oc1..x/../y",
            "ocid1.key.oc1..x?y",
            "ocid1.key. x",
        ] {
            assert!(
                matches!(check_key_ocid(bad), Err(ImportError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert_eq!(check_idempotency_key("").unwrap(), None);
        assert_eq!(
            check_idempotency_key("rotation-1").unwrap(),
            Some("rotation-1")
        );
        assert!(check_idempotency_key(&"x".repeat(129)).is_err());
        assert!(check_idempotency_key("has space").is_err());
        assert_eq!(opc_request_id("abc-123"), Some("abc-123"));
        assert_eq!(opc_request_id("a/b"), None);
        assert_eq!(opc_request_id(&"a".repeat(33)), None);
    }
}
