//! OCI Vault as an import destination (src/export/destination.rs), over the OCI client
//! (src/oci/): the client, the `[oci.connections]` identities and the endpoint allow-list
//! (with the journal they share), and the two imports, a new version of a key
//! (`ImportKeyVersion`) and a new key (`ImportKey`): GetKey's checks, the vault's wrapping
//! key, the JSON bodies, the send under `opc-retry-token`, and the wait for `ENABLED`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::journal::noted;
use super::{Caller, Destination, ExportError};
use crate::audit::{Progress, Record, bounded};
use crate::config::{OciConfig, ProtectionMode};
use crate::hsm::Wrapped;
use crate::journal::Journal;
use crate::oci::endpoint::Endpoint;
use crate::oci::kms::{self, Answer, Call, KmsClient, KmsError};
use crate::oci::{Identity, OciError, is_ocid};
use crate::wrap::WrappingKey;

/// Longest wait for `ENABLED` when the caller gave no deadline.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// The OCI side of the daemon: client, identities, the import journal.
pub(crate) struct OciSide {
    pub kms: KmsClient,
    identities: BTreeMap<String, Arc<Identity>>,
    pub journal: Arc<Journal>,
}

/// Longest `oci.connection` name accepted.
const MAX_CONNECTION_NAME: usize = 64;

impl OciSide {
    /// Loads every `[oci.connections.NAME]` identity (failing at start, not at first use).
    pub(crate) fn load(
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
    pub(crate) fn identity(&self, name: &str) -> Result<(String, Arc<Identity>), ExportError> {
        let name = if name.is_empty() { "default" } else { name };
        if name.len() > MAX_CONNECTION_NAME || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ExportError::invalid(format!(
                "oci.connection must be 1 to {MAX_CONNECTION_NAME} printable ASCII characters"
            )));
        }
        match self.identities.get(name) {
            Some(id) => Ok((name.to_string(), id.clone())),
            None => {
                let names: Vec<&str> = self.identities.keys().map(String::as_str).collect();
                Err(ExportError::not_configured(format!(
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

    pub(crate) fn endpoint(&self, url: &str) -> Result<Endpoint, ExportError> {
        self.kms.endpoint(url).map_err(|e| match e {
            OciError::NotAllowed(_) => ExportError::denied(format!(
                "{e}; nothing was sent (the operator lists vault endpoints in oci.allowed_endpoints)"
            )),
            _ => ExportError::invalid(format!("oci.management_endpoint: {e}")),
        })
    }
}

/// `oci_key_id` must look like a key OCID.
pub(crate) fn check_key_ocid(id: &str) -> Result<(), ExportError> {
    if is_ocid(id, "ocid1.key.") {
        Ok(())
    } else {
        // Not quoted: a caller's bytes that fail a check go into no status or audit record.
        Err(ExportError::invalid(
            "oci_key_id is not a key OCID (ocid1.key.…: at most 255 letters, digits, '.', '-' and '_')",
        ))
    }
}

/// `opc-request-id` to send: the daemon's request id when OCI would take it.
pub(crate) fn opc_request_id(request_id: &str) -> Option<&str> {
    (request_id.len() <= 32
        && request_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then_some(request_id)
}

/// `wrappedImportKey` for `w`.
fn wrapped_import_key(w: &Wrapped) -> kms::WrappedImportKey {
    kms::WrappedImportKey {
        key_material: openssl::base64::encode_block(&w.material),
        wrapping_algorithm: w.format.algorithm(),
    }
}

/// OCI's limits on tags, checked before anything is kept or sent: at most 64 tags in all,
/// keys and namespaces 1 to 100 characters, values at most 256, no control characters.
pub(crate) fn check_tags<'a>(
    freeform: &HashMap<String, String>,
    defined: impl Iterator<Item = (&'a String, &'a HashMap<String, String>)> + Clone,
) -> Result<(), ExportError> {
    const MAX_TAGS: usize = 64;
    let name_ok =
        |k: &str| (1..=100).contains(&k.chars().count()) && !k.chars().any(|c| c.is_control());
    let value_ok = |v: &str| v.chars().count() <= 256 && !v.chars().any(|c| c.is_control());
    let count = freeform.len() + defined.clone().map(|(_, t)| t.len()).sum::<usize>();
    if count > MAX_TAGS {
        return Err(ExportError::invalid(format!(
            "{count} tags: OCI allows at most {MAX_TAGS} per key"
        )));
    }
    let freeform_ok = freeform.iter().all(|(k, v)| name_ok(k) && value_ok(v));
    let defined_ok = defined
        .clone()
        .all(|(ns, t)| name_ok(ns) && t.iter().all(|(k, v)| name_ok(k) && value_ok(v)));
    if !(freeform_ok && defined_ok) {
        return Err(ExportError::invalid(
            "tags: keys and namespaces must be 1 to 100 characters, values at most 256, without control characters",
        ));
    }
    Ok(())
}

/// Whether `modes` (`policy.protection_modes`) allows OCI protection mode `mode` ("" is
/// OCI's default, HSM) for `what`.
pub(crate) fn protection_allowed(
    modes: &[ProtectionMode],
    mode: &str,
    what: &str,
) -> Result<ProtectionMode, ExportError> {
    match ProtectionMode::parse(mode) {
        Some(m) if modes.contains(&m) => Ok(m),
        _ => {
            let allowed: Vec<&str> = modes.iter().map(|m| m.as_str()).collect();
            Err(ExportError::denied(format!(
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
async fn existing_key(
    oci: &OciSide,
    call: &Call<'_>,
    key_id: &str,
    modes: &[ProtectionMode],
    progress: &mut Progress,
) -> Result<kms::Key, ExportError> {
    let key = oci
        .kms
        .get_key(call, key_id)
        .await
        .map_err(noted(progress))?
        .value;
    protection_allowed(modes, &key.protection_mode, &format!("key {key_id}"))?;
    Ok(key)
}

/// Waits for `ENABLED`; a timeout is DEADLINE_EXCEEDED naming what was created.
async fn wait<T, F, Fut>(
    oci: &OciSide,
    fetch: F,
    state: impl Fn(&T) -> &str,
    deadline: Option<Instant>,
    what: &str,
) -> Result<T, ExportError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Answer<T>, KmsError>>,
{
    let (v, enabled) = oci
        .kms
        .wait_enabled(fetch, &state, deadline, MAX_WAIT)
        .await
        .map_err(ExportError::Oci)?;
    if enabled {
        Ok(v)
    } else {
        Err(ExportError::not_enabled(format!(
            "{what} was created but is still {} at the deadline; poll it, or call again with the same idempotency_key",
            state(&v)
        )))
    }
}

/// Where an OCI import goes and as whom: owned, so that the task sending it can outlive
/// the call.
pub(crate) struct Vault {
    oci: Arc<OciSide>,
    identity: Arc<Identity>,
    endpoint: Endpoint,
    /// The caller's request id, sent as `opc-request-id` where OCI takes it.
    request_id: String,
    deadline: Option<Instant>,
    /// `policy.protection_modes`: what an import may add a version to or create.
    protection_modes: Vec<ProtectionMode>,
}

impl Vault {
    /// The vault at `endpoint` (checked against `oci.allowed_endpoints`), reached as the
    /// connection `connection`; what each is is noted in `rec`.
    pub(crate) fn new(
        oci: Arc<OciSide>,
        (endpoint, connection): (&str, &str),
        (request_id, deadline): (String, Option<Instant>),
        protection_modes: Vec<ProtectionMode>,
        rec: &mut Record,
    ) -> Result<Vault, ExportError> {
        let endpoint = oci.endpoint(endpoint).inspect_err(|_| {
            rec.oci_endpoint = Some(bounded(endpoint, MAX_AUDITED_URL));
        })?;
        rec.oci_endpoint = Some(endpoint.base.clone());
        let (connection, identity) = oci.identity(connection)?;
        rec.oci_connection = Some(connection);
        Ok(Vault {
            oci,
            identity,
            endpoint,
            request_id,
            deadline,
            protection_modes,
        })
    }

    /// The OCI calls' context: this identity and endpoint, the request id (if OCI accepts
    /// it as `opc-request-id`) and the deadline.
    fn call(&self) -> Call<'_> {
        Call {
            identity: &self.identity,
            endpoint: &self.endpoint,
            request_id: opc_request_id(&self.request_id),
            deadline: self.deadline,
        }
    }

    /// The caller may import into this endpoint (its `oci_endpoints` in server.clients).
    fn admit_caller(&self, caller: &Caller) -> Result<(), ExportError> {
        if caller.may_send_to(&self.endpoint.base) {
            Ok(())
        } else {
            Err(ExportError::denied(format!(
                "{} may not import into {} (its oci_endpoints in server.clients); nothing was sent",
                caller.display, self.endpoint.base
            )))
        }
    }

    /// The vault's wrapping key (cached per endpoint).
    async fn wrapping_key(&self, progress: &mut Progress) -> Result<Arc<WrappingKey>, ExportError> {
        self.oci
            .kms
            .wrapping_key(&self.call())
            .await
            .map_err(noted(progress))
    }

    /// The compartment `ocid` is one `caller` may import into.
    fn admit_compartment(caller: &Caller, ocid: &str) -> Result<(), ExportError> {
        if caller.may_use_compartment(ocid) {
            return Ok(());
        }
        Err(ExportError::denied(format!(
            "{} may not import into compartment {} (its oci_compartments in server.clients); nothing was wrapped or sent",
            caller.display,
            bounded(ocid, 255)
        )))
    }
}

/// Most bytes of a refused endpoint kept in an audit record.
const MAX_AUDITED_URL: usize = 255;

/// `ImportKeyVersion`: a new version of an existing OCI key.
pub(crate) struct NewVersion {
    pub vault: Vault,
    /// The key's OCID (checked by [`check_key_ocid`]).
    pub key_id: String,
}

impl Destination for NewVersion {
    type Answer = kms::KeyVersion;

    fn journal(&self) -> &Arc<Journal> {
        &self.vault.oci.journal
    }

    fn endpoint(&self) -> &str {
        &self.vault.endpoint.base
    }

    fn target(&self) -> &str {
        &self.key_id
    }

    fn details(&self) -> String {
        String::new()
    }

    /// The key OCI describes (GetKey) must be protected as `policy.protection_modes` allows
    /// and live in a compartment the caller may use, before anything is wrapped or sent: a
    /// version is never added to a key OCI would let anyone export.
    async fn admit(&self, caller: &Caller, rec: &mut Record) -> Result<(), ExportError> {
        self.vault.admit_caller(caller)?;
        let mut progress = Progress::default();
        let key = existing_key(
            &self.vault.oci,
            &self.vault.call(),
            &self.key_id,
            &self.vault.protection_modes,
            &mut progress,
        )
        .await
        .inspect_err(|_| rec.export.merge(&progress))?;
        rec.compartment_id = Some(bounded(&key.compartment_id, 255));
        rec.protection_mode = Some(bounded(&key.protection_mode, 32));
        Vault::admit_compartment(caller, &key.compartment_id)
    }

    async fn wrapping_key(
        &self,
        _token: &str,
        progress: &mut Progress,
    ) -> Result<Arc<WrappingKey>, ExportError> {
        self.vault.wrapping_key(progress).await
    }

    fn body(&self, _token: &str, wrapped: &Wrapped) -> Result<Vec<u8>, ExportError> {
        serde_json::to_vec(&kms::ImportKeyVersionDetails {
            wrapped_import_key: wrapped_import_key(wrapped),
        })
        .map_err(|e| ExportError::Body(e.to_string()))
    }

    async fn find_lost(
        &self,
        _token: &str,
        _body: &[u8],
    ) -> Result<Option<Answer<kms::KeyVersion>>, KmsError> {
        Ok(None)
    }

    async fn send(
        &self,
        body: Arc<Zeroizing<Vec<u8>>>,
        token: String,
    ) -> Result<Answer<kms::KeyVersion>, KmsError> {
        self.vault
            .oci
            .kms
            .import_key_version(&self.vault.call(), &self.key_id, &body, &token)
            .await
    }

    fn created_id(answer: &kms::KeyVersion) -> &str {
        &answer.id
    }

    async fn poll(
        &self,
        version: kms::KeyVersion,
        deadline: Option<Instant>,
    ) -> Result<kms::KeyVersion, ExportError> {
        let (kms, call) = (&self.vault.oci.kms, self.vault.call());
        wait(
            &self.vault.oci,
            || kms.get_key_version(&call, &version.key_id, &version.id),
            |v: &kms::KeyVersion| v.lifecycle_state.as_str(),
            deadline,
            &format!("key version {}", version.id),
        )
        .await
    }
}

/// What an `ImportKey` asks for the new key besides its material.
pub(crate) struct KeyDetails {
    pub compartment_id: String,
    pub display_name: String,
    /// `None`: OCI's default (HSM).
    pub protection_mode: Option<String>,
    pub freeform_tags: HashMap<String, String>,
    pub defined_tags: HashMap<String, HashMap<String, String>>,
}

/// `ImportKey`: a new OCI key.
pub(crate) struct NewKey {
    pub vault: Vault,
    pub details: KeyDetails,
}

impl Destination for NewKey {
    type Answer = kms::Key;

    fn journal(&self) -> &Arc<Journal> {
        &self.vault.oci.journal
    }

    fn endpoint(&self) -> &str {
        &self.vault.endpoint.base
    }

    fn target(&self) -> &str {
        &self.details.compartment_id
    }

    /// Display name, protection mode and tags, in a stable order.
    fn details(&self) -> String {
        let d = &self.details;
        let freeform: BTreeMap<_, _> = d.freeform_tags.iter().collect();
        let defined: BTreeMap<_, BTreeMap<_, _>> = d
            .defined_tags
            .iter()
            .map(|(ns, t)| (ns, t.iter().collect()))
            .collect();
        format!(
            "{:?} {:?} {freeform:?} {defined:?}",
            d.display_name, d.protection_mode
        )
    }

    /// The caller may reach the vault (the compartment and protection mode asked for were
    /// checked with the request).
    async fn admit(&self, caller: &Caller, _rec: &mut Record) -> Result<(), ExportError> {
        self.vault.admit_caller(caller)
    }

    async fn wrapping_key(
        &self,
        _token: &str,
        progress: &mut Progress,
    ) -> Result<Arc<WrappingKey>, ExportError> {
        self.vault.wrapping_key(progress).await
    }

    fn body(&self, _token: &str, wrapped: &Wrapped) -> Result<Vec<u8>, ExportError> {
        let d = &self.details;
        serde_json::to_vec(&kms::ImportKeyDetails {
            compartment_id: d.compartment_id.clone(),
            display_name: d.display_name.clone(),
            key_shape: kms::KeyShapeJson {
                algorithm: wrapped.shape.algorithm.as_str().into(),
                length: wrapped.shape.length as u32,
            },
            wrapped_import_key: wrapped_import_key(wrapped),
            protection_mode: d.protection_mode.clone(),
            freeform_tags: d.freeform_tags.clone(),
            defined_tags: d.defined_tags.clone(),
        })
        .map_err(|e| ExportError::Body(e.to_string()))
    }

    async fn find_lost(
        &self,
        _token: &str,
        _body: &[u8],
    ) -> Result<Option<Answer<kms::Key>>, KmsError> {
        Ok(None)
    }

    async fn send(
        &self,
        body: Arc<Zeroizing<Vec<u8>>>,
        token: String,
    ) -> Result<Answer<kms::Key>, KmsError> {
        self.vault
            .oci
            .kms
            .import_key(&self.vault.call(), &body, &token)
            .await
    }

    fn created_id(answer: &kms::Key) -> &str {
        &answer.id
    }

    /// The new key is the record's OCI key.
    fn record_made(&self, rec: &mut Record, created: Option<&str>) {
        rec.oci_key_id = created.map(str::to_string);
    }

    async fn poll(
        &self,
        key: kms::Key,
        deadline: Option<Instant>,
    ) -> Result<kms::Key, ExportError> {
        let (kms, call) = (&self.vault.oci.kms, self.vault.call());
        wait(
            &self.vault.oci,
            || kms.get_key(&call, &key.id),
            |k: &kms::Key| k.lifecycle_state.as_str(),
            deadline,
            &format!("key {}", key.id),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ocids_and_request_ids_are_checked() {
        assert!(check_key_ocid("ocid1.key.oc1.iad.abcd-ef_12").is_ok());
        for bad in [
            "",
            "ocid1.vault.oc1..x",
            "ocid1.key.oc1..x/../y",
            "ocid1.key.oc1..x?y",
            "ocid1.key. x",
        ] {
            assert!(
                matches!(check_key_ocid(bad), Err(ExportError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert_eq!(opc_request_id("abc-123"), Some("abc-123"));
        assert_eq!(opc_request_id("a/b"), None);
        assert_eq!(opc_request_id(&"a".repeat(33)), None);
    }
}
