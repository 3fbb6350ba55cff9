//! GetParametersForImport and ImportKeyMaterial: wrapping keys and import tokens, the
//! unwrap, and KMS's rules for what a key accepts. A key that never had material takes
//! any (valid) material; after that the default is EXISTING_KEY_MATERIAL, which accepts
//! only material the key already has (it is imported again, with the new expiration).
//! A symmetric key also takes NEW_KEY_MATERIAL: material it does not have yet, which waits
//! in PENDING_ROTATION for RotateKeyOnDemand. Asymmetric and HMAC keys never change
//! material.

use std::time::{Duration, SystemTime};

use openssl::pkey::{PKey, Private};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use super::keys::{Key, Material, MaterialState, Spec, material_id};
use super::protocol::{AwsError, Input, epoch};
use super::unwrap::{WRAPPING_ALGORITHMS, WRAPPING_KEY_SPECS, Wrap, check_material, unwrap};
use super::{AwsKms, MAX_TOKENS, Token};

const EXPIRES: &str = "KEY_MATERIAL_EXPIRES";
const DOES_NOT_EXPIRE: &str = "KEY_MATERIAL_DOES_NOT_EXPIRE";
const NEW: &str = "NEW_KEY_MATERIAL";
const EXISTING: &str = "EXISTING_KEY_MATERIAL";
/// How far ahead `ValidTo` may be.
const MAX_VALID_TO: Duration = Duration::from_secs(365 * 86_400);
/// Random bytes in an import token.
const TOKEN_LEN: usize = 256;

fn incorrect(message: impl Into<String>) -> AwsError {
    AwsError::new("IncorrectKeyMaterialException", message)
}

/// An import, once its material is unwrapped and checked against the key spec.
pub(crate) struct Import<'a> {
    pub(crate) material: Zeroizing<Vec<u8>>,
    pub(crate) import_type: Option<&'a str>,
    pub(crate) description: Option<&'a str>,
    /// The `KeyMaterialId` the caller says this material has.
    pub(crate) key_material_id: Option<&'a str>,
    pub(crate) expiration: &'static str,
    pub(crate) valid_to: Option<SystemTime>,
}

/// Applies KMS's import rules to `key`; the material's `KeyMaterialId`.
pub(crate) fn apply_import(key: &mut Key, imp: Import<'_>) -> Result<String, AwsError> {
    let id = material_id(&key.arn, &imp.material);
    let first = key.materials.is_empty();
    let kind = imp
        .import_type
        .unwrap_or(if first { NEW } else { EXISTING });
    if let Some(given) = imp.key_material_id.filter(|g| *g != id) {
        return Err(incorrect(format!(
            "KeyMaterialId {given} is not the ID of the key material in this request."
        )));
    }
    let known = key.materials.iter().position(|m| m.id == id);
    match (kind, known) {
        (NEW, Some(_)) => Err(incorrect(format!(
            "ImportType is NEW_KEY_MATERIAL, but this key material ({id}) is already associated with {}.",
            key.arn
        ))),
        (NEW, None) => {
            let state = if first {
                MaterialState::Current
            } else if let Some(p) = key
                .materials
                .iter()
                .find(|m| m.state == MaterialState::PendingRotation)
            {
                return Err(AwsError::new(
                    "KMSInvalidStateException",
                    format!(
                        "{} already has key material {} in PENDING_ROTATION state; rotate the key (RotateKeyOnDemand) before importing more new key material.",
                        key.arn, p.id
                    ),
                ));
            } else {
                MaterialState::PendingRotation
            };
            key.materials.push(Material {
                id: id.clone(),
                bytes: Some(imp.material),
                state,
                description: imp.description.map(str::to_string),
                expiration: Some(imp.expiration),
                valid_to: imp.valid_to,
                rotated_at: None,
            });
            Ok(id)
        }
        (_, Some(i)) => {
            let m = &mut key.materials[i];
            m.bytes = Some(imp.material);
            m.expiration = Some(imp.expiration);
            m.valid_to = imp.valid_to;
            if let Some(d) = imp.description {
                m.description = Some(d.to_string());
            }
            Ok(id)
        }
        (_, None) if first => Err(incorrect(format!(
            "ImportType is EXISTING_KEY_MATERIAL, but {} has no key material yet.",
            key.arn
        ))),
        (_, None) => Err(incorrect(format!(
            "The key material in the request is not key material previously imported into {}.",
            key.arn
        ))),
    }
}

/// Refuses keys whose material KMS made: only EXTERNAL keys take imports.
fn external_only(key: &Key) -> Result<(), AwsError> {
    if key.origin == "EXTERNAL" {
        return Ok(());
    }
    Err(AwsError::new(
        "UnsupportedOperationException",
        format!(
            "{} origin is {} which is not valid for this operation.",
            key.arn, key.origin
        ),
    ))
}

/// `ExpirationModel` and `ValidTo` together, as KMS requires them.
fn check_expiration(
    model: &str,
    valid_to: Option<SystemTime>,
    now: SystemTime,
) -> Result<(), AwsError> {
    match (model, valid_to) {
        (EXPIRES, None) => Err(AwsError::validation(
            "ValidTo is required when ExpirationModel is KEY_MATERIAL_EXPIRES.",
        )),
        (DOES_NOT_EXPIRE, Some(_)) => Err(AwsError::validation(
            "ValidTo must not be set when ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE.",
        )),
        (_, Some(t)) if t <= now => Err(AwsError::validation(
            "ValidTo must be a time in the future.",
        )),
        (_, Some(t)) if t > now + MAX_VALID_TO => Err(AwsError::validation(
            "ValidTo must be at most 365 days after the request.",
        )),
        _ => Ok(()),
    }
}

/// `^[a-zA-Z0-9:/_\s.-]+$`
fn description_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c.is_whitespace() || ":/_.-".contains(c))
}

/// `^[a-f0-9]+$`
fn material_id_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn wrapping_index(bits: u32) -> usize {
    match bits {
        2048 => 0,
        3072 => 1,
        _ => 2,
    }
}

impl AwsKms {
    /// The RSA wrapping key of `bits`, made on first use and kept.
    fn wrapping_key(&self, bits: u32) -> Result<&PKey<Private>, AwsError> {
        let slot = &self.wrapping[wrapping_index(bits)];
        if let Some(k) = slot.get() {
            return Ok(k);
        }
        let k = openssl::rsa::Rsa::generate(bits)
            .and_then(PKey::from_rsa)
            .map_err(|e| AwsError::internal(format!("making an RSA-{bits} wrapping key: {e}")))?;
        Ok(slot.get_or_init(|| k))
    }

    pub(super) fn get_parameters_for_import(
        &self,
        body: &Map<String, Value>,
        now: SystemTime,
    ) -> Result<Value, AwsError> {
        let mut i = Input::new(body);
        let key_id = i.key_id()?;
        let algorithm = i.one_of("WrappingAlgorithm", WRAPPING_ALGORITHMS, true)?;
        let key_spec = i.one_of("WrappingKeySpec", WRAPPING_KEY_SPECS, true)?;
        i.finish()?;
        let (algorithm, key_spec) = (algorithm.unwrap_or_default(), key_spec.unwrap_or_default());
        let (id, arn, spec) = {
            let mut inner = self.lock();
            let key = self.resolve(&mut inner, key_id, now)?;
            external_only(key)?;
            (key.id.clone(), key.arn.clone(), key.spec)
        };
        let (wrap, bits) = check_wrapping(algorithm, key_spec, spec)?;
        let public = self
            .wrapping_key(bits)?
            .public_key_to_der()
            .map_err(|e| AwsError::internal(e.to_string()))?;
        let mut token = vec![0u8; TOKEN_LEN];
        getrandom::fill(&mut token).map_err(|e| AwsError::internal(e.to_string()))?;
        let expires = now + self.cfg.import_token_ttl;
        let mut inner = self.lock();
        if inner.token_order.len() >= MAX_TOKENS
            && let Some(old) = inner.token_order.pop_front()
        {
            inner.tokens.remove(&old);
        }
        inner.token_order.push_back(token.clone());
        inner.tokens.insert(
            token.clone(),
            Token {
                key_id: id,
                wrap,
                wrapping_bits: bits,
                expires,
            },
        );
        Ok(json!({
            "KeyId": arn,
            "ImportToken": openssl::base64::encode_block(&token),
            "PublicKey": openssl::base64::encode_block(&public),
            "ParametersValidTo": epoch(expires),
        }))
    }

    pub(super) fn import_key_material(
        &self,
        body: &Map<String, Value>,
        now: SystemTime,
    ) -> Result<Value, AwsError> {
        let mut i = Input::new(body);
        let key_id = i.key_id()?;
        let token = i.blob("ImportToken", (1, 6144), true)?;
        let wrapped = i.blob("EncryptedKeyMaterial", (1, 6144), true)?;
        let valid_to = i.timestamp("ValidTo")?;
        let expiration = i.one_of("ExpirationModel", &[EXPIRES, DOES_NOT_EXPIRE], false)?;
        let import_type = i.one_of("ImportType", &[NEW, EXISTING], false)?;
        let description = i.string("KeyMaterialDescription", (0, 256), false)?;
        i.pattern(
            "KeyMaterialDescription",
            description,
            "^[a-zA-Z0-9:/_\\s.-]+$",
            description_ok,
        );
        let key_material_id = i.string("KeyMaterialId", (64, 64), false)?;
        i.pattern(
            "KeyMaterialId",
            key_material_id,
            "^[a-f0-9]+$",
            material_id_ok,
        );
        i.finish()?;
        let (token, wrapped) = (token.unwrap_or_default(), wrapped.unwrap_or_default());
        let expiration = expiration.unwrap_or(EXPIRES);
        check_expiration(expiration, valid_to, now)?;
        if import_type == Some(NEW) && key_material_id.is_some() {
            return Err(AwsError::validation(
                "KeyMaterialId cannot be specified when ImportType is NEW_KEY_MATERIAL.",
            ));
        }
        let (id, spec, wrap, bits) = {
            let mut inner = self.lock();
            let key = self.resolve(&mut inner, key_id, now)?;
            external_only(key)?;
            let (id, arn, spec) = (key.id.clone(), key.arn.clone(), key.spec);
            if spec != Spec::Symmetric
                && (import_type.is_some() || description.is_some() || key_material_id.is_some())
            {
                return Err(AwsError::validation(format!(
                    "ImportType, KeyMaterialDescription and KeyMaterialId are only valid for symmetric encryption keys; {arn} is {}.",
                    spec.name()
                )));
            }
            let t = inner
                .tokens
                .get(&token[..])
                .filter(|t| t.key_id == id)
                .ok_or_else(|| {
                    AwsError::new(
                        "InvalidImportTokenException",
                        "Import token is invalid or is associated with a different KMS key.",
                    )
                })?;
            if t.expires <= now {
                return Err(AwsError::new(
                    "ExpiredImportTokenException",
                    "Import token has expired. Call GetParametersForImport for a new import token and public key.",
                ));
            }
            (id, spec, t.wrap, t.wrapping_bits)
        };
        let material = unwrap(self.wrapping_key(bits)?, wrap, &wrapped)
            .map_err(|why| AwsError::new("InvalidCiphertextException", why))?;
        check_material(spec, &material).map_err(incorrect)?;
        let mut inner = self.lock();
        let key = self.resolve(&mut inner, &id, now)?;
        let material_id = apply_import(
            key,
            Import {
                material,
                import_type,
                description,
                key_material_id,
                expiration,
                valid_to,
            },
        )?;
        Ok(json!({ "KeyId": key.arn, "KeyMaterialId": material_id }))
    }
}

/// The algorithm and wrapping key size, if KMS offers them for key material of `spec`.
fn check_wrapping(algorithm: &str, key_spec: &str, spec: Spec) -> Result<(Wrap, u32), AwsError> {
    if algorithm == "RSAES_PKCS1_V1_5" {
        return Err(AwsError::validation(
            "RSAES_PKCS1_V1_5 is no longer supported as a wrapping algorithm (since October 10, 2023); use RSAES_OAEP_SHA_256 or RSA_AES_KEY_WRAP_SHA_256.",
        ));
    }
    let bits = match key_spec {
        "RSA_2048" => 2048,
        "RSA_3072" => 3072,
        "RSA_4096" => 4096,
        _ => {
            return Err(AwsError::validation(
                "SM2 wrapping keys are offered only in China Regions.",
            ));
        }
    };
    let wrap = Wrap::parse(algorithm)
        .ok_or_else(|| AwsError::validation("SM2PKE wrapping is offered only in China Regions."))?;
    if let Wrap::Oaep(_) = wrap {
        if let Spec::Rsa(_) = spec {
            return Err(AwsError::validation(format!(
                "{algorithm} cannot wrap RSA key material; use RSA_AES_KEY_WRAP_SHA_1 or RSA_AES_KEY_WRAP_SHA_256."
            )));
        }
        if spec == Spec::Ecc(521) && bits == 2048 {
            return Err(AwsError::validation(format!(
                "{algorithm} with an RSA_2048 wrapping key cannot wrap ECC_NIST_P521 key material; use a longer wrapping key or an RSA_AES wrapping algorithm."
            )));
        }
    }
    Ok((wrap, bits))
}
