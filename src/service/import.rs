//! ImportKeyVersion and ImportKey: fetch the vault's wrapping key, wrap in the HSM, send to
//! OCI with one retry token and one fixed body on every attempt, optionally wait for
//! `ENABLED`. A caller's retry with the same `idempotency_key` re-sends the bytes sent the
//! first time (kept in memory for 24 hours), so OCI sees the same token and the same body
//! and creates nothing new.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Status;
use zeroize::Zeroizing;

use crate::config::OciConfig;
use crate::hsm::{KeyRef, Wrapped};
use crate::oci::kms::{self, Answer, Call, KmsClient, KmsError};
use crate::oci::{Identity, OciError, endpoint::Endpoint};
use crate::proto;
use crate::wrap::{self, Algorithm};

/// How long a sent import body is kept for the caller's retries (OCI's retry-token life).
const REPLAY_TTL: Duration = Duration::from_secs(24 * 3600);
const REPLAY_MAX: usize = 10_000;
/// Longest `wait_for_enabled` wait when the caller gave no deadline.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// An import body and what the audit record says about how it was made.
#[derive(Clone)]
struct Sent {
    body: Arc<Zeroizing<Vec<u8>>>,
    wrapping_key_sha256: String,
    mode: &'static str,
    label: String,
    id_hex: String,
}

/// A body sent for an idempotency key, kept for the caller's retries.
struct Kept {
    /// What was asked (source key, algorithm, target), to refuse a key reused for another
    /// request.
    request: String,
    at: Instant,
    sent: Sent,
}

/// The OCI side of the daemon: client, identities, sent bodies.
pub struct OciSide {
    pub kms: KmsClient,
    identities: BTreeMap<String, Arc<Identity>>,
    sent: Mutex<HashMap<String, Kept>>,
}

impl OciSide {
    /// Loads every `[oci.connections.NAME]` identity (failing at start, not at first use).
    pub fn load(cfg: &OciConfig, min_wrapping_bits: u32) -> Result<OciSide, String> {
        let mut identities = BTreeMap::new();
        for (name, c) in &cfg.connections {
            let id = Identity::load(&c.config_file, &c.profile)
                .map_err(|e| format!("oci.connections.{name}: {e}"))?;
            identities.insert(name.clone(), Arc::new(id));
        }
        Ok(OciSide {
            kms: KmsClient::new(cfg, min_wrapping_bits)?,
            identities,
            sent: Mutex::new(HashMap::new()),
        })
    }

    pub fn identity(&self, name: &str) -> Result<Arc<Identity>, Status> {
        let name = if name.is_empty() { "default" } else { name };
        self.identities.get(name).cloned().ok_or_else(|| {
            let names: Vec<&str> = self.identities.keys().map(String::as_str).collect();
            Status::failed_precondition(format!(
                "no OCI connection {name:?} in the daemon's [oci.connections] (configured: {})",
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            ))
        })
    }

    pub fn endpoint(&self, url: &str) -> Result<Endpoint, Status> {
        self.kms.endpoint(url).map_err(|e| match e {
            OciError::NotAllowed(_) => Status::permission_denied(format!(
                "{e}; nothing was sent (the operator lists vault endpoints in oci.allowed_endpoints)"
            )),
            _ => Status::invalid_argument(format!("oci.management_endpoint: {e}")),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Kept>> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The body previously sent under `token`, if any; refuses a token reused for another
/// request.
fn replay(oci: &OciSide, token: &str, request: &str) -> Result<Option<Sent>, Status> {
    match oci.lock().get(token) {
        Some(k) if k.at.elapsed() < REPLAY_TTL => {
            if k.request != request {
                return Err(Status::invalid_argument(
                    "idempotency_key was already used for a different request (source key, algorithm or target); use a new key",
                ));
            }
            Ok(Some(k.sent.clone()))
        }
        _ => Ok(None),
    }
}

fn remember(oci: &OciSide, token: &str, request: String, sent: Sent) {
    let mut kept = oci.lock();
    if kept.len() >= REPLAY_MAX {
        kept.retain(|_, k| k.at.elapsed() < REPLAY_TTL);
        if kept.len() >= REPLAY_MAX
            && let Some(oldest) = kept
                .iter()
                .min_by_key(|(_, k)| k.at)
                .map(|(t, _)| t.clone())
        {
            kept.remove(&oldest);
        }
    }
    kept.insert(
        token.to_string(),
        Kept {
            request,
            at: Instant::now(),
            sent,
        },
    );
}

/// Whether `id` looks like an OCID starting with `prefix` (e.g. "ocid1.key."): at most 255
/// characters of letters, digits, '.', '-' and '_'.
pub fn is_ocid(id: &str, prefix: &str) -> bool {
    id.starts_with(prefix)
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// `oci_key_id` must look like a key OCID.
pub fn check_key_ocid(id: &str) -> Result<(), Status> {
    if is_ocid(id, "ocid1.key.") {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "oci_key_id {:?} is not a key OCID (ocid1.key.…)",
            id.chars().take(80).collect::<String>()
        )))
    }
}

/// `idempotency_key`: empty (none) or 1..=128 printable ASCII characters.
pub fn check_idempotency_key(k: &str) -> Result<Option<&str>, Status> {
    if k.is_empty() {
        return Ok(None);
    }
    if k.len() > 128 || !k.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Status::invalid_argument(
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

/// An OCI failure as a gRPC status: OCI's status, code, message and opc-request-id in the text.
pub fn kms_status(e: &KmsError) -> Status {
    let msg = e.to_string();
    match e {
        KmsError::Service { status, .. } => match status {
            400 => Status::invalid_argument(msg),
            401 | 403 => Status::permission_denied(msg),
            404 => Status::not_found(msg),
            409 => Status::aborted(msg),
            412 => Status::failed_precondition(msg),
            429 | 500..=599 => Status::unavailable(msg),
            _ => Status::unknown(msg),
        },
        KmsError::Transport { .. } => Status::unavailable(msg),
        KmsError::Deadline { .. } => Status::deadline_exceeded(msg),
        KmsError::BadResponse { .. } => Status::unavailable(format!(
            "{msg}; the import may have happened: retry with the same idempotency_key"
        )),
        KmsError::WrappingKey { .. } => Status::failed_precondition(msg),
        KmsError::Local { .. } => Status::internal(msg),
    }
}

/// What the audit record learns along the way.
#[derive(Default)]
pub struct Progress {
    pub wrapping_key_sha256: Option<String>,
    pub mode: Option<&'static str>,
    pub label: Option<String>,
    pub id_hex: Option<String>,
    pub opc_request_id: Option<String>,
    pub attempts: u32,
    pub created_id: Option<String>,
    pub replayed: bool,
}

/// The import body for OCI: built once, from the HSM's output or from a previous send.
pub struct Prepared {
    pub token: String,
    pub body: Arc<Zeroizing<Vec<u8>>>,
}

/// Gets the bytes to send: from the replay store, or by fetching the vault's wrapping key
/// and running `wrap` (the HSM work) and `build` (the JSON body).
pub async fn prepare<W, Fut>(
    oci: &OciSide,
    call: &Call<'_>,
    idempotency_key: Option<&str>,
    request: &Described,
    progress: &mut Progress,
    wrap: W,
    build: impl FnOnce(&Wrapped) -> Result<Vec<u8>, Status>,
) -> Result<Prepared, Status>
where
    W: FnOnce(Arc<wrap::WrappingKey>) -> Fut,
    Fut: std::future::Future<Output = Result<Wrapped, Status>>,
{
    let token = kms::retry_token(idempotency_key, &request.scope);
    if idempotency_key.is_some()
        && let Some(sent) = replay(oci, &token, &request.full)?
    {
        progress.replayed = true;
        return Ok(prepared(progress, token, sent));
    }
    let wk = oci.kms.wrapping_key(call).await.map_err(|e| {
        note_error(progress, &e);
        kms_status(&e)
    })?;
    // recorded now: a refused wrap is audited with the vault key it was for
    let fp = wk.fingerprint();
    progress.wrapping_key_sha256 = Some(fp.clone());
    let wrapped = wrap(wk).await?;
    let sent = Sent {
        body: Arc::new(Zeroizing::new(build(&wrapped)?)),
        wrapping_key_sha256: fp,
        mode: wrapped.mode.as_str(),
        label: wrapped.key.label.clone(),
        id_hex: wrap::hex(&wrapped.key.id),
    };
    if idempotency_key.is_some() {
        remember(oci, &token, request.full.clone(), sent.clone());
    }
    Ok(prepared(progress, token, sent))
}

/// What `sent` tells the audit record; the bytes to send with `token`.
fn prepared(progress: &mut Progress, token: String, sent: Sent) -> Prepared {
    progress.wrapping_key_sha256 = Some(sent.wrapping_key_sha256);
    progress.mode = Some(sent.mode);
    progress.label = Some(sent.label);
    progress.id_hex = Some(sent.id_hex);
    Prepared {
        token,
        body: sent.body,
    }
}

/// `wrappedImportKey` for `w`.
pub fn wrapped_import_key(w: &Wrapped) -> kms::WrappedImportKey {
    kms::WrappedImportKey {
        key_material: openssl::base64::encode_block(&w.material),
        wrapping_algorithm: w.algorithm.as_str(),
    }
}

/// What an idempotency key is bound to.
pub struct Described {
    /// Operation, endpoint and OCI target: with the idempotency key, derives the retry token.
    pub scope: String,
    /// Everything else asked (source key, algorithm, details): a key reused with a
    /// different request is refused.
    pub full: String,
}

pub fn describe(
    op: &str,
    target: &str,
    key: &KeyRef,
    alg: Algorithm,
    ep: &Endpoint,
    details: &str,
) -> Described {
    let key = match key {
        KeyRef::Label(l) => format!("label:{l}"),
        KeyRef::Id(id) => format!("id:{}", wrap::hex(id)),
    };
    let scope = format!("{op} {} {target}", ep.base);
    Described {
        full: format!("{scope} {key} {} {details}", alg.as_str()),
        scope,
    }
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

pub fn proto_version(v: &kms::KeyVersion) -> proto::KeyVersion {
    proto::KeyVersion {
        version_id: v.id.clone(),
        key_id: v.key_id.clone(),
        vault_id: v.vault_id.clone(),
        compartment_id: v.compartment_id.clone(),
        time_created: v.time_created.clone(),
        lifecycle_state: v.lifecycle_state.clone(),
        origin: v.origin.clone(),
        is_primary: v.is_primary,
    }
}

pub fn proto_key(k: &kms::Key) -> proto::Key {
    proto::Key {
        key_id: k.id.clone(),
        compartment_id: k.compartment_id.clone(),
        vault_id: k.vault_id.clone(),
        display_name: k.display_name.clone(),
        current_key_version: k.current_key_version.clone(),
        shape: Some(proto::KeyShape {
            algorithm: k.key_shape.algorithm.clone(),
            length: k.key_shape.length,
        }),
        protection_mode: k.protection_mode.clone(),
        lifecycle_state: k.lifecycle_state.clone(),
        time_created: k.time_created.clone(),
    }
}

/// Waits for `ENABLED`; a timeout is DEADLINE_EXCEEDED naming what was created.
pub async fn wait<T, F, Fut>(
    oci: &OciSide,
    fetch: F,
    state: impl Fn(&T) -> &str,
    deadline: Option<Instant>,
    what: &str,
) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Answer<T>, KmsError>>,
{
    let (v, enabled) = oci
        .kms
        .wait_enabled(fetch, &state, deadline, MAX_WAIT)
        .await
        .map_err(|e| kms_status(&e))?;
    if enabled {
        Ok(v)
    } else {
        Err(Status::deadline_exceeded(format!(
            "{what} was created but is still {} at the deadline; poll it, or call again with the same idempotency_key",
            state(&v)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

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
            assert_eq!(
                check_key_ocid(bad).unwrap_err().code(),
                Code::InvalidArgument,
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

    #[test]
    fn oci_errors_map_to_grpc_codes_with_oci_details() {
        let service = |status: u16, code: &str| KmsError::Service {
            op: "ImportKeyVersion",
            status,
            code: code.into(),
            message: "m".into(),
            opc_request_id: "OPC1".into(),
            attempts: 2,
        };
        for (status, code, grpc) in [
            (400, "InvalidParameter", Code::InvalidArgument),
            (401, "NotAuthenticated", Code::PermissionDenied),
            (403, "NotAuthorized", Code::PermissionDenied),
            (404, "NotAuthorizedOrNotFound", Code::NotFound),
            (409, "Conflict", Code::Aborted),
            (429, "TooManyRequests", Code::Unavailable),
            (503, "ServiceUnavailable", Code::Unavailable),
        ] {
            let s = kms_status(&service(status, code));
            assert_eq!(s.code(), grpc, "{status}");
            assert!(
                s.message().contains(code) && s.message().contains("OPC1"),
                "{}",
                s.message()
            );
        }
        let t = KmsError::Transport {
            op: "GetWrappingKey",
            endpoint: "https://x".into(),
            why: "could not connect".into(),
            attempts: 5,
        };
        assert_eq!(kms_status(&t).code(), Code::Unavailable);
        let d = KmsError::Deadline {
            op: "ImportKey",
            attempts: 1,
            last: String::new(),
        };
        assert_eq!(kms_status(&d).code(), Code::DeadlineExceeded);
    }
}
