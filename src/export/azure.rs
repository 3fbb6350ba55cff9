//! Azure Key Vault (Premium) or Managed HSM as an import destination
//! (src/export/destination.rs), over the Key Vault client (src/azure/). An import names a
//! key: a new version of a key that exists, or (asked for) a new key of that name. The
//! target is wrapped for the destination's key-exchange key (KEK: RSA-HSM, key operations
//! exactly `["import"]`, in the same vault) in `azure:byok`, and sent as the `.byok` file
//! in `key_hsm` of `PUT {vault}/keys/NAME`.
//!
//! Exactly once: Azure makes a new version on every PUT that lands, and has no retry token.
//! Every import carries a mark in its tags (the journal token and a nonce of this wrap,
//! recorded in the body, which the journal MACs); before the recorded bytes are sent again,
//! the key's versions are read and a version with the mark is the import's answer. For an
//! RSA key the version's public key must also be the source key's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use azure_security_keyvault_keys::models::{
    ImportKeyParameters, JsonWebKey, Key, KeyAttributes, KeyProperties, KeyType,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::destination::{
    looked_for_twice, mark, modulus_hex, recorded, refused_for_good, unbase64,
};
use super::journal::noted;
use super::{Caller, Destination, ExportError};
use crate::audit::{Progress, Record, bounded};
use crate::azure::{KeyId, Vault, key_name_ok};
use crate::clouds::Clouds;
use crate::config::AzureKind;
use crate::hsm::Wrapped;
use crate::journal::Journal;
use crate::oci::kms::{Answer, KmsError};
use crate::wrap::{AzureKek, Format, KeyAlgorithm, KeyShape, WrappingKey};

/// The tag an import's version carries: its mark.
const REQUEST_TAG: &str = "hsm-bridge-request";

/// Key operations a key may be given, by type.
const RSA_OPS: [&str; 6] = [
    "encrypt",
    "decrypt",
    "sign",
    "verify",
    "wrapKey",
    "unwrapKey",
];
const OCT_OPS: [&str; 4] = ["encrypt", "decrypt", "wrapKey", "unwrapKey"];

/// The format Azure takes every key in.
pub(crate) fn default_format() -> &'static Format {
    Format::parse("azure:byok").expect("a format of the table")
}

/// The key type Azure imports a source key of `shape` as, in a vault of `kind`; the
/// reason if it takes none.
pub(crate) fn key_type(shape: KeyShape, kind: AzureKind) -> Result<&'static str, String> {
    match (shape.algorithm, shape.length, kind) {
        (KeyAlgorithm::Rsa, 256 | 384 | 512, _) => Ok("RSA-HSM"),
        (KeyAlgorithm::Aes, 16 | 24 | 32, AzureKind::ManagedHsm) => Ok("oct-HSM"),
        (KeyAlgorithm::Aes, 16 | 24 | 32, AzureKind::KeyVault) => Err(format!(
            "an Azure Key Vault imports no AES key ({} would be oct-HSM, which only a Managed HSM takes); import it into a destination with kind = \"managed_hsm\"",
            shape.describe()
        )),
        _ => Err(format!(
            "Azure imports no {} key (RSA-2048/3072/4096; AES-128/192/256 into a Managed HSM)",
            shape.describe()
        )),
    }
}

/// One import into an Azure destination.
pub(crate) struct AzureImport {
    clouds: Arc<Clouds>,
    vault: Arc<Vault>,
    /// The key's name.
    name: String,
    /// A new key: the name must be free.
    create: bool,
    /// The caller asked the daemon to make the destination's key-exchange key if it has none.
    create_kek: bool,
    kty: &'static str,
    key_ops: Vec<String>,
    format: &'static Format,
    /// The `.byok` file's `generator`: this tool and the token.
    generator: String,
    deadline: Option<Instant>,
    /// The key-exchange key's versioned id, learnt by [`Destination::wrapping_key`].
    kek: Mutex<Option<String>>,
}

/// The import request as the journal records it.
#[derive(Serialize, Deserialize)]
struct Body {
    name: String,
    kty: String,
    key_ops: Vec<String>,
    /// The `.byok` file, base64.
    byok: String,
    /// The tag value a retry looks for.
    mark: String,
    created_key: bool,
    /// An RSA source key's modulus (hex, no leading zeros): what a version found by its
    /// mark must have.
    modulus: Option<String>,
}

/// What an Azure import made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Imported {
    /// `{vault}/keys/NAME`.
    pub key_id: String,
    /// The version this import made.
    pub version: String,
    pub kty: String,
    pub enabled: bool,
    /// When the version was made (RFC 3339).
    pub created: String,
    /// Whether this import made the key.
    pub created_key: bool,
}

fn bad(op: &'static str, rid: &str, why: String) -> KmsError {
    KmsError::BadResponse {
        op,
        status: 200,
        expected: "key bundle",
        why,
        opc_request_id: rid.to_string(),
    }
}

impl AzureImport {
    /// An import of a key of `shape` into `vault`'s destination as key `name` (a new key
    /// with `create`), with `key_ops` (empty: the type's every operation), for a caller
    /// already granted the destination. Everything that needs no call is checked here.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        clouds: Arc<Clouds>,
        vault: Arc<Vault>,
        (name, create, create_kek): (&str, bool, bool),
        (shape, format): (KeyShape, &'static Format),
        key_ops: &[String],
        generator: String,
        deadline: Option<Instant>,
    ) -> Result<AzureImport, ExportError> {
        if !key_name_ok(name) {
            return Err(ExportError::invalid(format!(
                "target {:?} is not a Key Vault key name (1 to 127 letters, digits and '-')",
                bounded(name, 64)
            )));
        }
        let kek_name = match (&vault.cfg.kek, &vault.cfg.kek_name) {
            (Some(id), _) => KeyId::parse(id).map(|id| id.name).unwrap_or_default(),
            (None, Some(n)) => n.clone(),
            (None, None) => String::new(),
        };
        if name.eq_ignore_ascii_case(&kek_name) {
            return Err(ExportError::invalid(format!(
                "target {name:?} is destination {}'s key-exchange key: nothing is imported into it",
                vault.name
            )));
        }
        let kty = key_type(shape, vault.kind).map_err(|why| {
            ExportError::invalid(format!(
                "destination {} is {}: {why}; nothing was wrapped or sent",
                vault.name,
                vault.kind.describe()
            ))
        })?;
        format
            .takes(shape)
            .map_err(|why| ExportError::invalid(format!("{why}; nothing was wrapped or sent")))?;
        let allowed: &[&str] = match kty {
            "RSA-HSM" => &RSA_OPS,
            _ => &OCT_OPS,
        };
        let mut ops: Vec<String> = Vec::new();
        for op in key_ops {
            if !allowed.contains(&op.as_str()) {
                return Err(ExportError::invalid(format!(
                    "key operation {:?} does not fit a {kty} key (give some of {})",
                    bounded(op, 32),
                    allowed.join(", ")
                )));
            }
            if !ops.contains(op) {
                ops.push(op.clone());
            }
        }
        if ops.is_empty() {
            ops = allowed.iter().map(|s| s.to_string()).collect();
        }
        Ok(AzureImport {
            clouds,
            vault,
            name: name.to_string(),
            create,
            create_kek,
            kty,
            key_ops: ops,
            format,
            generator,
            deadline,
            kek: Mutex::new(None),
        })
    }

    fn key_id(&self) -> String {
        format!("{}/keys/{}", self.vault.base, self.name)
    }

    /// The destination's key-exchange key, checked: its versioned id and public key.
    async fn kek(
        &self,
        progress: &mut Progress,
    ) -> Result<(String, Arc<WrappingKey>), ExportError> {
        let cfg = &self.vault.cfg;
        let (name, version) = match (&cfg.kek, &cfg.kek_name) {
            (Some(id), _) => {
                let id = KeyId::parse(id).map_err(ExportError::not_configured)?;
                (id.name, id.version)
            }
            (None, Some(name)) => (name.clone(), None),
            (None, None) => {
                return Err(ExportError::not_configured(format!(
                    "destination {} names no key-exchange key",
                    self.vault.name
                )));
            }
        };
        let got = self
            .vault
            .get_key(&name, version.as_deref(), self.deadline)
            .await;
        let key = match got {
            Ok(k) => k,
            Err(KmsError::Service { status: 404, .. }) if version.is_none() => {
                if !self.create_kek {
                    return Err(ExportError::not_configured(format!(
                        "destination {} has no key-exchange key {name:?} in {}: make it (RSA-HSM, key operations [\"import\"] only), or ask the daemon to (create_kek, if the destination allows it); nothing was wrapped or sent",
                        self.vault.name, self.vault.base
                    )));
                }
                if !cfg.kek_create {
                    return Err(ExportError::denied(format!(
                        "destination {} does not let the daemon make its key-exchange key (kek_create = false); nothing was made, wrapped or sent",
                        self.vault.name
                    )));
                }
                self.vault
                    .create_kek(&name, cfg.kek_bits, self.deadline)
                    .await
                    .map_err(noted(progress))?
            }
            Err(e) => return Err(noted(progress)(e)),
        };
        progress.opc_request_id = Some(key.opc_request_id.clone());
        self.check_kek(&name, version.as_deref(), &key.value)
    }

    /// Refuses a key-exchange key Azure would not import with, or that is not the one the
    /// destination names: in another vault, not RSA-HSM, any key operation but `import`,
    /// disabled or outside its validity, or too small.
    fn check_kek(
        &self,
        name: &str,
        version: Option<&str>,
        key: &Key,
    ) -> Result<(String, Arc<WrappingKey>), ExportError> {
        let refuse = |why: String| {
            ExportError::Oci(KmsError::WrappingKey {
                endpoint: self.vault.base.clone(),
                why: format!("{why}; nothing was wrapped or sent"),
            })
        };
        let jwk = key
            .key
            .as_ref()
            .ok_or_else(|| refuse("the key-exchange key came without its key".into()))?;
        let kid = jwk.kid.clone().unwrap_or_default();
        let id =
            KeyId::parse(&kid).map_err(|e| refuse(format!("the key-exchange key's id {e}")))?;
        if id.vault != self.vault.base {
            return Err(refuse(format!(
                "the key-exchange key {kid} is in {}, not in {}: Azure imports only with a key-exchange key of the same vault or Managed HSM",
                id.vault, self.vault.base
            )));
        }
        let Some(got_version) = &id.version else {
            return Err(refuse(format!(
                "the key-exchange key's id {kid} has no version"
            )));
        };
        if id.name != name || version.is_some_and(|v| v != got_version) {
            return Err(refuse(format!(
                "asked for key-exchange key {name}{}, the vault answered {kid}",
                version.map(|v| format!("/{v}")).unwrap_or_default()
            )));
        }
        let kty = jwk.kty.as_ref().map(|t| t.to_string()).unwrap_or_default();
        if kty != "RSA-HSM" {
            return Err(refuse(format!(
                "the key-exchange key {kid} is {kty:?}; Azure imports only with an RSA-HSM key-exchange key"
            )));
        }
        if key.release_policy.is_some() {
            return Err(refuse(format!(
                "the key-exchange key {kid} has a release policy: its private key could leave the HSM"
            )));
        }
        let ops = jwk.key_ops.clone().unwrap_or_default();
        if ops != ["import"] {
            return Err(refuse(format!(
                "the key-exchange key {kid} has key operations {ops:?}; a key-exchange key must have exactly [\"import\"]"
            )));
        }
        if let Some(a) = &key.attributes {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            if a.enabled == Some(false) {
                return Err(refuse(format!("the key-exchange key {kid} is disabled")));
            }
            if a.exportable == Some(true) {
                return Err(refuse(format!(
                    "the key-exchange key {kid} is exportable: its private key could leave the HSM"
                )));
            }
            if a.expires.is_some_and(|t| t.unix_timestamp() <= now) {
                return Err(refuse(format!("the key-exchange key {kid} has expired")));
            }
            if a.not_before.is_some_and(|t| t.unix_timestamp() > now) {
                return Err(refuse(format!(
                    "the key-exchange key {kid} is not valid yet"
                )));
            }
        }
        let (Some(n), Some(e)) = (&jwk.n, &jwk.e) else {
            return Err(refuse(format!(
                "the key-exchange key {kid} came without n and e"
            )));
        };
        let pem = openssl::bn::BigNum::from_slice(n)
            .and_then(|n| Ok((n, openssl::bn::BigNum::from_slice(e)?)))
            .and_then(|(n, e)| openssl::rsa::Rsa::from_public_components(n, e))
            .and_then(openssl::pkey::PKey::from_rsa)
            .and_then(|k| k.public_key_to_pem())
            .map_err(|_| {
                refuse(format!(
                    "the key-exchange key {kid} is not an RSA public key"
                ))
            })?;
        let wk = WrappingKey::from_pem(&pem, self.clouds.min_wrapping_bits)
            .map_err(|e| refuse(e.to_string()))?;
        if !matches!(wk.bits, 2048 | 3072 | 4096) {
            return Err(refuse(format!(
                "the key-exchange key {kid} is RSA-{}; Azure's are RSA-2048, 3072 or 4096",
                wk.bits
            )));
        }
        Ok((kid, Arc::new(wk)))
    }

    /// The key named, for a fresh import: absent for a new key; else present, of the source
    /// key's type and not managed by Key Vault (a certificate's key).
    async fn check_target(&self, progress: &mut Progress) -> Result<(), ExportError> {
        let got = self.vault.get_key(&self.name, None, self.deadline).await;
        match (got, self.create) {
            (Err(KmsError::Service { status: 404, .. }), true) => Ok(()),
            (Ok(_), true) => Err(ExportError::invalid(format!(
                "key {} exists: import a new version of it (no create), or name a new key; nothing was wrapped or sent",
                self.key_id()
            ))),
            (Err(KmsError::Service { status: 404, .. }), false) => {
                Err(ExportError::not_configured(format!(
                    "there is no key {}: ask for a new key (create) to make it; nothing was wrapped or sent",
                    self.key_id()
                )))
            }
            (Err(e), _) => Err(noted(progress)(e)),
            (Ok(k), false) => {
                let k = k.value;
                if k.managed == Some(true) {
                    return Err(ExportError::invalid(format!(
                        "key {} is managed by Key Vault (a certificate's key): it takes no imported version",
                        self.key_id()
                    )));
                }
                let kty = k
                    .key
                    .as_ref()
                    .and_then(|j| j.kty.as_ref())
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                let family = |t: &str| t.trim_end_matches("-HSM").to_string();
                if family(&kty) != family(self.kty) {
                    return Err(ExportError::invalid(format!(
                        "key {} is {kty}; the source key would be a {} version; nothing was wrapped or sent",
                        self.key_id(),
                        self.kty
                    )));
                }
                Ok(())
            }
        }
    }

    /// The version of key `b.name` that carries `b.mark`, if any (none while the key does
    /// not exist), confirmed for an RSA key by its public key being the source key's.
    async fn marked(&self, b: &Body) -> Result<Option<Answer<Imported>>, KmsError> {
        // Not the caller's deadline: a search for what a send made runs to its end.
        let deadline = self.vault.bound(None);
        let versions = match self.vault.versions(&b.name, deadline).await {
            Ok(v) => v.value,
            Err(KmsError::Service { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let found = versions.iter().find(|p: &&KeyProperties| {
            p.tags.as_ref().and_then(|t| t.get(REQUEST_TAG)) == Some(&b.mark)
        });
        let Some(found) = found else {
            return Ok(None);
        };
        let kid = found.kid.clone().unwrap_or_default();
        let version = KeyId::parse(&kid)
            .ok()
            .and_then(|id| id.version)
            .ok_or_else(|| {
                bad(
                    "KeyVault.getKeyVersions",
                    "",
                    format!("a version's id {kid:?} is not a versioned key id"),
                )
            })?;
        let key = self
            .vault
            .get_key(&b.name, Some(&version), deadline)
            .await?;
        if let Some(want) = &b.modulus {
            let got = key
                .value
                .key
                .as_ref()
                .and_then(|k| k.n.as_deref())
                .map(modulus_hex);
            if got.as_deref() != Some(want.as_str()) {
                return Err(KmsError::Local {
                    op: "KeyVault.getKey",
                    why: format!(
                        "version {version} of key {} carries this import's mark but not the source key's public key: nothing is sent again; an operator must look at the key",
                        b.name
                    ),
                });
            }
        }
        self.imported(b, key).map(Some)
    }

    /// The answer for the version `key` of the import `b`.
    fn imported(&self, b: &Body, key: Answer<Key>) -> Result<Answer<Imported>, KmsError> {
        let rid = key.opc_request_id.clone();
        let jwk = key.value.key.as_ref();
        let kid = jwk.and_then(|k| k.kid.clone()).unwrap_or_default();
        let id = KeyId::parse(&kid)
            .map_err(|e| bad("KeyVault.importKey", &rid, format!("the key's id {e}")))?;
        if id.vault != self.vault.base || id.name != b.name {
            return Err(bad(
                "KeyVault.importKey",
                &rid,
                format!("the vault answered for key {kid}, not {}", self.key_id()),
            ));
        }
        let version = id.version.ok_or_else(|| {
            bad(
                "KeyVault.importKey",
                &rid,
                format!("the key's id {kid} has no version"),
            )
        })?;
        let attrs = key.value.attributes.as_ref();
        let created = attrs
            .and_then(|a| a.created)
            .map(|t| {
                crate::time::rfc3339(
                    std::time::UNIX_EPOCH
                        + std::time::Duration::from_secs(t.unix_timestamp().max(0) as u64),
                )
            })
            .unwrap_or_default();
        Ok(Answer {
            value: Imported {
                key_id: self.key_id(),
                version,
                kty: jwk
                    .and_then(|k| k.kty.as_ref())
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
                enabled: attrs.and_then(|a| a.enabled).unwrap_or(false),
                created,
                created_key: b.created_key,
            },
            opc_request_id: rid,
            attempts: key.attempts,
        })
    }
}

impl Destination for AzureImport {
    type Answer = Imported;

    fn journal(&self) -> &Arc<Journal> {
        &self.clouds.journal
    }

    fn endpoint(&self) -> &str {
        &self.vault.base
    }

    fn target(&self) -> &str {
        &self.name
    }

    /// The destination, the key type and operations, and whether a new key is asked for.
    fn details(&self) -> String {
        format!(
            "{} {} {} {}",
            self.vault.name,
            self.kty,
            self.key_ops.join(","),
            if self.create { "new" } else { "version" }
        )
    }

    /// The key named, for the record. (What the vault holds is checked when a fresh import
    /// asks for the wrapping key: a retry of a recorded import must not be refused because
    /// its own first send made the key.)
    async fn admit(&self, _caller: &Caller, rec: &mut Record) -> Result<(), ExportError> {
        rec.cloud_key_id = Some(self.key_id());
        Ok(())
    }

    /// The key named, checked ([`AzureImport::check_target`]); then the destination's
    /// key-exchange key, read (or made, when asked and allowed) and checked.
    async fn wrapping_key(
        &self,
        _token: &str,
        progress: &mut Progress,
    ) -> Result<Arc<WrappingKey>, ExportError> {
        self.check_target(progress).await?;
        let (kid, wk) = self.kek(progress).await?;
        *self.kek.lock().unwrap_or_else(|p| p.into_inner()) = Some(kid);
        Ok(wk)
    }

    fn body(&self, token: &str, wrapped: &Wrapped) -> Result<Vec<u8>, ExportError> {
        let kid = self
            .kek
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| ExportError::Body("no key-exchange key".into()))?;
        let kek = AzureKek::parse(&kid).map_err(ExportError::Body)?;
        let byok = self
            .format
            .seal(wrapped.material.clone(), Some(&kek), &self.generator)
            .map_err(|e| ExportError::Body(e.to_string()))?;
        serde_json::to_vec(&Body {
            name: self.name.clone(),
            kty: self.kty.to_string(),
            key_ops: self.key_ops.clone(),
            byok: openssl::base64::encode_block(&byok),
            mark: mark(token)?,
            created_key: self.create,
            modulus: wrapped.key.modulus.as_deref().map(modulus_hex),
        })
        .map_err(|e| ExportError::Body(e.to_string()))
    }

    /// The version carrying the import's mark, if the earlier send made one.
    async fn find_lost(
        &self,
        _token: &str,
        body: &[u8],
    ) -> Result<Option<Answer<Imported>>, KmsError> {
        let b: Body = recorded("KeyVault.importKey", body)?;
        looked_for_twice(|| self.marked(&b)).await
    }

    /// The PUT. A send that got no answer (or an answer that is not final) is looked for
    /// by its mark before it is given up.
    async fn send(
        &self,
        body: Arc<Zeroizing<Vec<u8>>>,
        _token: String,
    ) -> Result<Answer<Imported>, KmsError> {
        const OP: &str = "KeyVault.importKey";
        let b: Body = recorded(OP, &body)?;
        let byok = Zeroizing::new(unbase64(OP, &b.byok)?);
        let params = ImportKeyParameters {
            key: Some(JsonWebKey {
                kty: Some(b.kty.parse::<KeyType>().map_err(|e| KmsError::Local {
                    op: OP,
                    why: e.to_string(),
                })?),
                key_ops: Some(b.key_ops.clone()),
                t: Some(byok.to_vec()),
                ..Default::default()
            }),
            key_attributes: Some(KeyAttributes {
                enabled: Some(true),
                ..Default::default()
            }),
            tags: Some(HashMap::from([(REQUEST_TAG.to_string(), b.mark.clone())])),
            ..Default::default()
        };
        match self.vault.import(&b.name, params).await {
            Ok(key) => {
                let mut answer = self.imported(&b, key)?;
                if b.created_key {
                    // Made as a new key only if this is its one version: another import of
                    // the same name between the check and the PUT made this one a version.
                    let versions = self.vault.versions(&b.name, self.vault.bound(None)).await;
                    answer.value.created_key = versions.is_ok_and(|v| v.value.len() == 1);
                }
                Ok(answer)
            }
            Err(e) => {
                if refused_for_good(&e) {
                    return Err(e);
                }
                match looked_for_twice(|| self.marked(&b)).await {
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
        rec.cloud_key_id = Some(self.key_id());
    }

    /// An import is usable when Azure answers it (the PUT is synchronous): the version as
    /// Azure has it now.
    async fn poll(
        &self,
        imported: Imported,
        deadline: Option<Instant>,
    ) -> Result<Imported, ExportError> {
        let key = self
            .vault
            .get_key(&self.name, Some(&imported.version), deadline)
            .await
            .map_err(ExportError::Oci)?;
        let enabled = key
            .value
            .attributes
            .as_ref()
            .and_then(|a| a.enabled)
            .unwrap_or(false);
        if !enabled {
            return Err(ExportError::not_enabled(format!(
                "version {} of key {} was imported but is disabled",
                imported.version, imported.key_id
            )));
        }
        Ok(Imported {
            enabled,
            ..imported
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_map_to_key_types() {
        let aes = |n| KeyShape {
            algorithm: KeyAlgorithm::Aes,
            length: n,
        };
        let rsa = |n| KeyShape {
            algorithm: KeyAlgorithm::Rsa,
            length: n,
        };
        assert_eq!(key_type(rsa(384), AzureKind::KeyVault), Ok("RSA-HSM"));
        assert_eq!(key_type(aes(32), AzureKind::ManagedHsm), Ok("oct-HSM"));
        assert!(
            key_type(aes(32), AzureKind::KeyVault)
                .unwrap_err()
                .contains("Managed HSM")
        );
        assert!(key_type(rsa(128), AzureKind::ManagedHsm).is_err());
        assert!(default_format().takes(rsa(384)).is_ok());
        assert!(default_format().takes(aes(16)).is_ok());
    }
}
