//! KMS keys as the emulator holds them: key specs and the usages each allows, the key
//! materials of a key (CURRENT, NON_CURRENT, PENDING_ROTATION; imported or expired), the
//! key state that follows from them, and `KeyMetadata` as KMS returns it.

use std::time::SystemTime;

use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::protocol::epoch;

/// The model's `KeySpec` values (botocore `data/kms/2014-11-01/service-2.json`).
pub(crate) const KEY_SPECS: &[&str] = &[
    "RSA_2048",
    "RSA_3072",
    "RSA_4096",
    "ECC_NIST_P256",
    "ECC_NIST_P384",
    "ECC_NIST_P521",
    "ECC_SECG_P256K1",
    "SYMMETRIC_DEFAULT",
    "HMAC_224",
    "HMAC_256",
    "HMAC_384",
    "HMAC_512",
    "SM2",
    "ML_DSA_44",
    "ML_DSA_65",
    "ML_DSA_87",
    "ECC_NIST_EDWARDS25519",
    "ML_KEM_512",
    "ML_KEM_768",
    "ML_KEM_1024",
];
/// The deprecated `CustomerMasterKeySpec`'s values: the first 13 of `KeySpec`'s.
pub(crate) const CMK_SPECS: &[&str] = KEY_SPECS.split_at(13).0;
pub(crate) const KEY_USAGES: &[&str] = &[
    "SIGN_VERIFY",
    "ENCRYPT_DECRYPT",
    "GENERATE_VERIFY_MAC",
    "KEY_AGREEMENT",
];
pub(crate) const ORIGINS: &[&str] = &["AWS_KMS", "EXTERNAL", "AWS_CLOUDHSM", "EXTERNAL_KEY_STORE"];

/// The key specs the emulator keeps keys of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spec {
    Symmetric,
    /// Modulus bits.
    Rsa(u32),
    /// NIST curve bits: 256, 384, 521.
    Ecc(u32),
    /// Digest bits: 224, 256, 384, 512.
    Hmac(u32),
}

impl Spec {
    pub(crate) fn parse(s: &str) -> Option<Spec> {
        Some(match s {
            "SYMMETRIC_DEFAULT" => Spec::Symmetric,
            "RSA_2048" => Spec::Rsa(2048),
            "RSA_3072" => Spec::Rsa(3072),
            "RSA_4096" => Spec::Rsa(4096),
            "ECC_NIST_P256" => Spec::Ecc(256),
            "ECC_NIST_P384" => Spec::Ecc(384),
            "ECC_NIST_P521" => Spec::Ecc(521),
            "HMAC_224" => Spec::Hmac(224),
            "HMAC_256" => Spec::Hmac(256),
            "HMAC_384" => Spec::Hmac(384),
            "HMAC_512" => Spec::Hmac(512),
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> String {
        match self {
            Spec::Symmetric => "SYMMETRIC_DEFAULT".into(),
            Spec::Rsa(b) => format!("RSA_{b}"),
            Spec::Ecc(b) => format!("ECC_NIST_P{b}"),
            Spec::Hmac(b) => format!("HMAC_{b}"),
        }
    }

    /// The key usages KMS allows with this spec (key agreement is not emulated).
    pub(crate) fn usages(self) -> &'static [&'static str] {
        match self {
            Spec::Symmetric => &["ENCRYPT_DECRYPT"],
            Spec::Rsa(_) => &["ENCRYPT_DECRYPT", "SIGN_VERIFY"],
            Spec::Ecc(_) => &["SIGN_VERIFY"],
            Spec::Hmac(_) => &["GENERATE_VERIFY_MAC"],
        }
    }

    /// The algorithm lists `KeyMetadata` carries for this spec and usage.
    fn algorithms(self, usage: &str) -> (&'static str, Vec<String>) {
        match (self, usage) {
            (Spec::Symmetric, _) => ("EncryptionAlgorithms", vec!["SYMMETRIC_DEFAULT".into()]),
            (Spec::Rsa(_), "ENCRYPT_DECRYPT") => (
                "EncryptionAlgorithms",
                vec!["RSAES_OAEP_SHA_1".into(), "RSAES_OAEP_SHA_256".into()],
            ),
            (Spec::Rsa(_), _) => (
                "SigningAlgorithms",
                ["PSS", "PKCS1_V1_5"]
                    .iter()
                    .flat_map(|p| [256, 384, 512].map(|h| format!("RSASSA_{p}_SHA_{h}")))
                    .collect(),
            ),
            (Spec::Ecc(b), _) => (
                "SigningAlgorithms",
                vec![format!("ECDSA_SHA_{}", if b == 521 { 512 } else { b })],
            ),
            (Spec::Hmac(b), _) => ("MacAlgorithms", vec![format!("HMAC_SHA_{b}")]),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MaterialState {
    Current,
    NonCurrent,
    PendingRotation,
}

impl MaterialState {
    pub(crate) fn name(self) -> &'static str {
        match self {
            MaterialState::Current => "CURRENT",
            MaterialState::NonCurrent => "NON_CURRENT",
            MaterialState::PendingRotation => "PENDING_ROTATION",
        }
    }
}

/// One key material of a key.
pub(crate) struct Material {
    /// Lowercase hex SHA-256 over the key ARN, a 0 byte and the material (64 characters).
    pub(crate) id: String,
    /// The material while it is imported; `None` once it expired.
    pub(crate) bytes: Option<Zeroizing<Vec<u8>>>,
    pub(crate) state: MaterialState,
    pub(crate) description: Option<String>,
    /// `KEY_MATERIAL_EXPIRES` or `KEY_MATERIAL_DOES_NOT_EXPIRE`; `None` for material KMS
    /// generated.
    pub(crate) expiration: Option<&'static str>,
    pub(crate) valid_to: Option<SystemTime>,
    /// When an on-demand rotation made this material current.
    pub(crate) rotated_at: Option<SystemTime>,
}

impl Material {
    pub(crate) fn import_state(&self) -> &'static str {
        if self.bytes.is_some() {
            "IMPORTED"
        } else {
            "PENDING_IMPORT"
        }
    }
}

/// The `KeyMaterialId` of `material` for the key `arn`.
pub(crate) fn material_id(arn: &str, material: &[u8]) -> String {
    let mut h = openssl::sha::Sha256::new();
    h.update(arn.as_bytes());
    h.update(&[0]);
    h.update(material);
    hsm_bridge::wrap::hex(&h.finish())
}

pub(crate) struct Key {
    pub(crate) id: String,
    pub(crate) arn: String,
    pub(crate) account: String,
    pub(crate) created: SystemTime,
    pub(crate) description: String,
    pub(crate) usage: &'static str,
    pub(crate) spec: Spec,
    pub(crate) origin: &'static str,
    /// Oldest first.
    pub(crate) materials: Vec<Material>,
    /// Successful on-demand rotations.
    pub(crate) rotations: u32,
    /// Every RotateKeyOnDemand call for this key, answered or refused.
    pub(crate) rotate_calls: u32,
    /// Every ImportKeyMaterial call for this key, answered or refused.
    pub(crate) import_calls: u32,
}

impl Key {
    /// Drops the material whose `ValidTo` has passed, as KMS deletes it.
    pub(crate) fn expire(&mut self, now: SystemTime) {
        for m in &mut self.materials {
            if m.valid_to.is_some_and(|t| t <= now) {
                m.bytes = None;
            }
        }
    }

    /// `Enabled` when the key has material and all of it is imported, else `PendingImport`.
    pub(crate) fn state(&self) -> &'static str {
        if !self.materials.is_empty() && self.materials.iter().all(|m| m.bytes.is_some()) {
            "Enabled"
        } else {
            "PendingImport"
        }
    }

    pub(crate) fn current(&self) -> Option<&Material> {
        self.materials
            .iter()
            .find(|m| m.state == MaterialState::Current)
    }

    pub(crate) fn metadata(&self) -> Value {
        let state = self.state();
        let mut m = json!({
            "AWSAccountId": self.account,
            "KeyId": self.id,
            "Arn": self.arn,
            "CreationDate": epoch(self.created),
            "Enabled": state == "Enabled",
            "Description": self.description,
            "KeyUsage": self.usage,
            "KeyState": state,
            "Origin": self.origin,
            "KeyManager": "CUSTOMER",
            "CustomerMasterKeySpec": self.spec.name(),
            "KeySpec": self.spec.name(),
            "MultiRegion": false,
        });
        let (field, algorithms) = self.spec.algorithms(self.usage);
        m[field] = json!(algorithms);
        if let Some(cur) = self.current() {
            m["CurrentKeyMaterialId"] = json!(cur.id);
            if let Some(e) = cur.expiration {
                m["ExpirationModel"] = json!(e);
            }
            if let Some(t) = cur.valid_to {
                m["ValidTo"] = epoch(t);
            }
        }
        m
    }
}
