//! CreateKey, DescribeKey, GetPublicKey, RotateKeyOnDemand and ListKeyRotations.

use std::time::SystemTime;

use serde_json::{Map, Value, json};

use super::AwsKms;
use super::keys::{
    CMK_SPECS, KEY_SPECS, KEY_USAGES, Key, Material, MaterialState, ORIGINS, Spec, material_id,
};
use super::protocol::{AwsError, Input, epoch, uuid};
use super::unwrap::generate;

/// On-demand rotations KMS allows per key.
const MAX_ROTATIONS: u32 = 25;

fn unsupported(message: impl Into<String>) -> AwsError {
    AwsError::new("UnsupportedOperationException", message)
}

fn invalid_state(message: impl Into<String>) -> AwsError {
    AwsError::new("KMSInvalidStateException", message)
}

/// Refuses what KMS does only for symmetric encryption keys (`what` "is" or "are").
fn symmetric_only(key: &Key, what: &str) -> Result<(), AwsError> {
    if key.spec == Spec::Symmetric {
        return Ok(());
    }
    Err(unsupported(format!(
        "{} is a {} key; {what} supported only for symmetric encryption KMS keys.",
        key.arn,
        key.spec.name()
    )))
}

/// The key a request of only `KeyId` and `GrantTokens` names (DescribeKey, GetPublicKey).
fn key_request(body: &Map<String, Value>) -> Result<&str, AwsError> {
    let mut i = Input::new(body);
    let key_id = i.key_id()?;
    i.objects("GrantTokens", 10).ok();
    i.finish()?;
    Ok(key_id)
}

/// Reads and checks the `Tags` member: at most 50 `{TagKey, TagValue}`.
fn check_tags(i: &mut Input<'_>) -> Result<(), AwsError> {
    for tag in i.objects("Tags", 50)? {
        let mut t = Input::new(tag);
        t.string("TagKey", (1, 128), true)?;
        t.string("TagValue", (0, 256), true)?;
        i.nested("Tags.member", t);
    }
    Ok(())
}

impl AwsKms {
    pub(super) fn create_key(
        &self,
        body: &Map<String, Value>,
        now: SystemTime,
    ) -> Result<Value, AwsError> {
        let mut i = Input::new(body);
        i.string("Policy", (1, 131_072), false)?;
        let description = i.string("Description", (0, 8192), false)?;
        let usage = i.one_of("KeyUsage", KEY_USAGES, false)?;
        let cmk_spec = i.one_of("CustomerMasterKeySpec", CMK_SPECS, false)?;
        let key_spec = i.one_of("KeySpec", KEY_SPECS, false)?;
        let origin = i.one_of("Origin", ORIGINS, false)?;
        let store = i.string("CustomKeyStoreId", (1, 64), false)?;
        i.bool("BypassPolicyLockoutSafetyCheck")?;
        check_tags(&mut i)?;
        let multi_region = i.bool("MultiRegion")?;
        let xks = i.string("XksKeyId", (1, 128), false)?;
        i.finish()?;
        if cmk_spec.is_some() && key_spec.is_some() {
            return Err(AwsError::validation(
                "You cannot specify KeySpec and CustomerMasterKeySpec in the same request. CustomerMasterKeySpec is deprecated.",
            ));
        }
        let spec_name = key_spec.or(cmk_spec).unwrap_or("SYMMETRIC_DEFAULT");
        let spec = Spec::parse(spec_name).ok_or_else(|| {
            unsupported(format!(
                "KeySpec {spec_name} is not emulated: SYMMETRIC_DEFAULT, RSA_*, ECC_NIST_P* and HMAC_* are"
            ))
        })?;
        let origin = origin.unwrap_or("AWS_KMS");
        if !matches!(origin, "AWS_KMS" | "EXTERNAL") || store.is_some() || xks.is_some() {
            return Err(unsupported(
                "keys in custom key stores are not emulated: Origin is AWS_KMS or EXTERNAL",
            ));
        }
        if multi_region == Some(true) {
            return Err(unsupported("multi-Region keys are not emulated"));
        }
        let usage = usage.unwrap_or("ENCRYPT_DECRYPT");
        if !spec.usages().contains(&usage) {
            return Err(AwsError::validation(format!(
                "KeyUsage {usage} is not compatible with KeySpec {}; use {}",
                spec.name(),
                spec.usages().join(" or ")
            )));
        }
        let id = uuid();
        let arn = self.arn(&id);
        let mut key = Key {
            id: id.clone(),
            arn,
            account: self.cfg.account.clone(),
            created: now,
            description: description.unwrap_or_default().to_string(),
            usage,
            spec,
            origin,
            materials: Vec::new(),
            rotations: 0,
            rotate_calls: 0,
            import_calls: 0,
        };
        if origin == "AWS_KMS" {
            key.materials
                .push(self.generated_material(&key, MaterialState::Current)?);
        }
        let metadata = key.metadata();
        self.lock().keys.insert(id, key);
        Ok(json!({ "KeyMetadata": metadata }))
    }

    /// New material KMS makes for a key of origin AWS_KMS.
    fn generated_material(&self, key: &Key, state: MaterialState) -> Result<Material, AwsError> {
        let bytes = generate(key.spec)
            .map_err(|e| AwsError::internal(format!("making key material: {e}")))?;
        Ok(Material {
            id: material_id(&key.arn, &bytes),
            bytes: Some(bytes),
            state,
            description: None,
            expiration: None,
            valid_to: None,
            rotated_at: None,
        })
    }

    pub(super) fn describe_key(
        &self,
        body: &Map<String, Value>,
        now: SystemTime,
    ) -> Result<Value, AwsError> {
        let key_id = key_request(body)?;
        let mut inner = self.lock();
        let key = self.resolve(&mut inner, key_id, now)?;
        Ok(json!({ "KeyMetadata": key.metadata() }))
    }

    /// The public key of an asymmetric key's current material, as DER SubjectPublicKeyInfo.
    pub(super) fn get_public_key(
        &self,
        body: &Map<String, Value>,
        now: SystemTime,
    ) -> Result<Value, AwsError> {
        let key_id = key_request(body)?;
        let mut inner = self.lock();
        let key = self.resolve(&mut inner, key_id, now)?;
        if !matches!(key.spec, Spec::Rsa(_) | Spec::Ecc(_)) {
            return Err(unsupported(format!(
                "{} is a {} key; GetPublicKey is supported only for asymmetric KMS keys.",
                key.arn,
                key.spec.name()
            )));
        }
        if key.state() != "Enabled" {
            return Err(invalid_state(format!("{} is pending import.", key.arn)));
        }
        let private = key
            .current()
            .and_then(|m| m.bytes.as_ref())
            .ok_or_else(|| invalid_state(format!("{} has no current key material.", key.arn)))?;
        let spki = openssl::pkey::PKey::private_key_from_der(private)
            .and_then(|k| k.public_key_to_der())
            .map_err(|e| AwsError::internal(format!("the key's public key: {e}")))?;
        Ok(json!({
            "KeyId": key.arn,
            "PublicKey": openssl::base64::encode_block(&spki),
            "KeySpec": key.spec.name(),
            "KeyUsage": key.usage,
        }))
    }

    pub(super) fn rotate_key_on_demand(
        &self,
        body: &Map<String, Value>,
        now: SystemTime,
    ) -> Result<Value, AwsError> {
        let mut i = Input::new(body);
        let key_id = i.key_id()?;
        i.finish()?;
        let mut inner = self.lock();
        let key = self.resolve(&mut inner, key_id, now)?;
        symmetric_only(key, "on-demand rotation is")?;
        if key.state() != "Enabled" {
            return Err(invalid_state(format!("{} is pending import.", key.arn)));
        }
        if key.rotations >= MAX_ROTATIONS {
            return Err(AwsError::new(
                "LimitExceededException",
                format!(
                    "{} has had {MAX_ROTATIONS} on-demand rotations, the most a key may have.",
                    key.arn
                ),
            ));
        }
        let pending = match key.origin {
            "EXTERNAL" => key
                .materials
                .iter()
                .position(|m| m.state == MaterialState::PendingRotation)
                .ok_or_else(|| {
                    invalid_state(format!(
                        "{} has no imported key material in PENDING_ROTATION state; import new key material (ImportType NEW_KEY_MATERIAL) before rotating.",
                        key.arn
                    ))
                })?,
            _ => {
                let m = self.generated_material(key, MaterialState::PendingRotation)?;
                key.materials.push(m);
                key.materials.len() - 1
            }
        };
        for m in &mut key.materials {
            if m.state == MaterialState::Current {
                m.state = MaterialState::NonCurrent;
            }
        }
        let m = &mut key.materials[pending];
        m.state = MaterialState::Current;
        m.rotated_at = Some(now);
        key.rotations += 1;
        Ok(json!({ "KeyId": key.id }))
    }

    pub(super) fn list_key_rotations(
        &self,
        body: &Map<String, Value>,
        now: SystemTime,
    ) -> Result<Value, AwsError> {
        let mut i = Input::new(body);
        let key_id = i.key_id()?;
        let include = i.one_of(
            "IncludeKeyMaterial",
            &["ALL_KEY_MATERIAL", "ROTATIONS_ONLY"],
            false,
        )?;
        let limit = i.int("Limit", (1, 1000))?;
        let marker = i.string("Marker", (1, 1024), false)?;
        i.finish()?;
        let mut inner = self.lock();
        let key = self.resolve(&mut inner, key_id, now)?;
        symmetric_only(key, "key rotations are")?;
        let all = include == Some("ALL_KEY_MATERIAL");
        let entries: Vec<Value> = key
            .materials
            .iter()
            .filter(|m| all || m.rotated_at.is_some())
            .map(|m| rotation_entry(key, m))
            .collect();
        let start = match marker {
            None => 0,
            Some(m) => m
                .parse::<usize>()
                .ok()
                .filter(|s| *s <= entries.len())
                .ok_or_else(|| {
                    AwsError::new(
                        "InvalidMarkerException",
                        "The marker is not valid for this request.",
                    )
                })?,
        };
        let end = (start + limit.unwrap_or(100) as usize).min(entries.len());
        let mut out = json!({
            "Rotations": entries[start..end],
            "Truncated": end < entries.len(),
        });
        if end < entries.len() {
            out["NextMarker"] = json!(end.to_string());
        }
        Ok(out)
    }
}

/// One `RotationsListEntry`; the import fields only for imported (EXTERNAL) material.
fn rotation_entry(key: &Key, m: &Material) -> Value {
    let mut e = json!({
        "KeyId": key.id,
        "KeyMaterialId": m.id,
        "KeyMaterialState": m.state.name(),
    });
    if key.origin == "EXTERNAL" {
        e["ImportState"] = json!(m.import_state());
        if let Some(d) = &m.description {
            e["KeyMaterialDescription"] = json!(d);
        }
        if let Some(x) = m.expiration {
            e["ExpirationModel"] = json!(x);
        }
        if let Some(t) = m.valid_to {
            e["ValidTo"] = epoch(t);
        }
    }
    if let Some(t) = m.rotated_at {
        e["RotationDate"] = epoch(t);
        e["RotationType"] = json!("ON_DEMAND");
    }
    e
}
