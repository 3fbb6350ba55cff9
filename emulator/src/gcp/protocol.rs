//! Cloud KMS's wire shapes: the `{"error":{"code","message","status"}}` error body, the
//! enums of google.cloud.kms.v1 with their numbers (as the google-cloud-kms-v1 crate's
//! src/model.rs has them) read as numbers or names and written as one or the other, RFC
//! 3339 times, base64 as protobuf's JSON mapping writes bytes, and CRC32C.

use serde_json::{Value, json};

use crate::state::Reply;

pub(crate) const CONTENT_TYPE: &str = "application/json; charset=UTF-8";

/// A refused call: the HTTP status, the canonical status name and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcpError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl GcpError {
    pub(crate) fn new(status: u16, code: &'static str, message: impl Into<String>) -> GcpError {
        GcpError {
            status,
            code,
            message: message.into(),
        }
    }
    pub(crate) fn invalid(message: impl Into<String>) -> GcpError {
        GcpError::new(400, "INVALID_ARGUMENT", message)
    }
    pub(crate) fn precondition(message: impl Into<String>) -> GcpError {
        GcpError::new(400, "FAILED_PRECONDITION", message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> GcpError {
        GcpError::new(404, "NOT_FOUND", message)
    }
    pub(crate) fn exists(message: impl Into<String>) -> GcpError {
        GcpError::new(409, "ALREADY_EXISTS", message)
    }
    pub(crate) fn unauthenticated(message: impl Into<String>) -> GcpError {
        GcpError::new(401, "UNAUTHENTICATED", message)
    }
    pub(crate) fn exhausted(message: impl Into<String>) -> GcpError {
        GcpError::new(429, "RESOURCE_EXHAUSTED", message)
    }
    pub(crate) fn internal(message: impl Into<String>) -> GcpError {
        GcpError::new(500, "INTERNAL", message)
    }

    pub(crate) fn reply(&self) -> Reply {
        json_reply(
            self.status,
            &json!({"error": {"code": self.status, "message": self.message, "status": self.code}}),
        )
    }
}

/// The canonical status name Google sends with an HTTP status (for faults naming none).
pub(crate) fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

pub(crate) fn json_reply(status: u16, v: &Value) -> Reply {
    Reply {
        status,
        content_type: CONTENT_TYPE,
        headers: Vec::new(),
        body: serde_json::to_vec(v).unwrap_or_default(),
    }
}

/// One enum of google.cloud.kms.v1: its values' names and numbers.
pub(crate) struct EnumDef {
    pub(crate) field: &'static str,
    pub(crate) values: &'static [(&'static str, i64)],
}

impl EnumDef {
    /// A request's value, as a number or a name: its name.
    pub(crate) fn read(&self, v: &Value) -> Result<&'static str, GcpError> {
        let found = match v {
            Value::Number(n) => n
                .as_i64()
                .and_then(|n| self.values.iter().find(|(_, m)| *m == n)),
            Value::String(s) => self.values.iter().find(|(name, _)| name == s),
            _ => None,
        };
        found.map(|(name, _)| *name).ok_or_else(|| {
            GcpError::invalid(format!(
                "Invalid value at '{}' ({}): {v}",
                self.field,
                self.field_type()
            ))
        })
    }

    fn field_type(&self) -> &'static str {
        match self.field {
            "protection_level" => "type.googleapis.com/google.cloud.kms.v1.ProtectionLevel",
            "import_method" => "type.googleapis.com/google.cloud.kms.v1.ImportJob.ImportMethod",
            "purpose" => "type.googleapis.com/google.cloud.kms.v1.CryptoKey.CryptoKeyPurpose",
            _ => "TYPE_ENUM",
        }
    }

    /// `name` as the answer writes it: its number with `ints`, else the name.
    pub(crate) fn write(&self, name: &str, ints: bool) -> Value {
        if !ints {
            return Value::String(name.to_string());
        }
        let n = self
            .values
            .iter()
            .find(|(v, _)| *v == name)
            .map_or(0, |(_, n)| *n);
        json!(n)
    }
}

pub(crate) const PROTECTION_LEVEL: EnumDef = EnumDef {
    field: "protection_level",
    values: &[
        ("PROTECTION_LEVEL_UNSPECIFIED", 0),
        ("SOFTWARE", 1),
        ("HSM", 2),
        ("EXTERNAL", 3),
        ("EXTERNAL_VPC", 4),
        ("HSM_SINGLE_TENANT", 5),
    ],
};

pub(crate) const IMPORT_METHOD: EnumDef = EnumDef {
    field: "import_method",
    values: &[
        ("IMPORT_METHOD_UNSPECIFIED", 0),
        ("RSA_OAEP_3072_SHA1_AES_256", 1),
        ("RSA_OAEP_4096_SHA1_AES_256", 2),
        ("RSA_OAEP_3072_SHA256_AES_256", 3),
        ("RSA_OAEP_4096_SHA256_AES_256", 4),
        ("RSA_OAEP_3072_SHA256", 5),
        ("RSA_OAEP_4096_SHA256", 6),
        ("HPKE_KEM_ML_KEM_768_HKDF_SHA256_AES_256_GCM", 8),
        ("HPKE_KEM_ML_KEM_1024_HKDF_SHA256_AES_256_GCM", 9),
        ("HPKE_KEM_XWING_HKDF_SHA256_AES_256_GCM", 10),
    ],
};

pub(crate) const JOB_STATE: EnumDef = EnumDef {
    field: "state",
    values: &[
        ("IMPORT_JOB_STATE_UNSPECIFIED", 0),
        ("PENDING_GENERATION", 1),
        ("ACTIVE", 2),
        ("EXPIRED", 3),
    ],
};

pub(crate) const PURPOSE: EnumDef = EnumDef {
    field: "purpose",
    values: &[
        ("CRYPTO_KEY_PURPOSE_UNSPECIFIED", 0),
        ("ENCRYPT_DECRYPT", 1),
        ("ASYMMETRIC_SIGN", 5),
        ("ASYMMETRIC_DECRYPT", 6),
        ("RAW_ENCRYPT_DECRYPT", 7),
        ("MAC", 9),
        ("KEY_ENCAPSULATION", 10),
        ("AES_WRAPPING", 11),
    ],
};

pub(crate) const VERSION_STATE: EnumDef = EnumDef {
    field: "state",
    values: &[
        ("CRYPTO_KEY_VERSION_STATE_UNSPECIFIED", 0),
        ("PENDING_GENERATION", 5),
        ("ENABLED", 1),
        ("DISABLED", 2),
        ("DESTROYED", 3),
        ("DESTROY_SCHEDULED", 4),
        ("PENDING_IMPORT", 6),
        ("IMPORT_FAILED", 7),
        ("GENERATION_FAILED", 8),
    ],
};

/// What key material an algorithm takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Material {
    /// Raw bytes of exactly this length (AES, HMAC).
    Raw(usize),
    /// A PKCS#8 RSA private key of this many bits.
    Rsa(u32),
    /// A PKCS#8 EC private key on NIST P-256 or P-384.
    Ec(u32),
}

/// A CryptoKeyVersionAlgorithm the emulator knows: name, number, purpose, material.
pub(crate) struct Algorithm {
    pub(crate) name: &'static str,
    pub(crate) number: i64,
    pub(crate) purpose: &'static str,
    pub(crate) material: Material,
}

const fn alg(
    name: &'static str,
    number: i64,
    purpose: &'static str,
    material: Material,
) -> Algorithm {
    Algorithm {
        name,
        number,
        purpose,
        material,
    }
}

const ED: &str = "ENCRYPT_DECRYPT";
const SIGN: &str = "ASYMMETRIC_SIGN";
const DEC: &str = "ASYMMETRIC_DECRYPT";
const RAW: &str = "RAW_ENCRYPT_DECRYPT";
const MAC: &str = "MAC";

/// The algorithms served (numbers from google-cloud-kms-v1's src/model.rs,
/// `impl From<i32> for CryptoKeyVersionAlgorithm`).
pub(crate) const ALGORITHMS: &[Algorithm] = &[
    alg("GOOGLE_SYMMETRIC_ENCRYPTION", 1, ED, Material::Raw(32)),
    alg("RSA_SIGN_PSS_2048_SHA256", 2, SIGN, Material::Rsa(2048)),
    alg("RSA_SIGN_PSS_3072_SHA256", 3, SIGN, Material::Rsa(3072)),
    alg("RSA_SIGN_PSS_4096_SHA256", 4, SIGN, Material::Rsa(4096)),
    alg("RSA_SIGN_PKCS1_2048_SHA256", 5, SIGN, Material::Rsa(2048)),
    alg("RSA_SIGN_PKCS1_3072_SHA256", 6, SIGN, Material::Rsa(3072)),
    alg("RSA_SIGN_PKCS1_4096_SHA256", 7, SIGN, Material::Rsa(4096)),
    alg("RSA_DECRYPT_OAEP_2048_SHA256", 8, DEC, Material::Rsa(2048)),
    alg("RSA_DECRYPT_OAEP_3072_SHA256", 9, DEC, Material::Rsa(3072)),
    alg("RSA_DECRYPT_OAEP_4096_SHA256", 10, DEC, Material::Rsa(4096)),
    alg("EC_SIGN_P256_SHA256", 12, SIGN, Material::Ec(256)),
    alg("EC_SIGN_P384_SHA384", 13, SIGN, Material::Ec(384)),
    alg("RSA_SIGN_PSS_4096_SHA512", 15, SIGN, Material::Rsa(4096)),
    alg("RSA_SIGN_PKCS1_4096_SHA512", 16, SIGN, Material::Rsa(4096)),
    alg("RSA_DECRYPT_OAEP_4096_SHA512", 17, DEC, Material::Rsa(4096)),
    alg("AES_256_GCM", 19, RAW, Material::Raw(32)),
    alg("RSA_SIGN_RAW_PKCS1_2048", 28, SIGN, Material::Rsa(2048)),
    alg("RSA_SIGN_RAW_PKCS1_3072", 29, SIGN, Material::Rsa(3072)),
    alg("RSA_SIGN_RAW_PKCS1_4096", 30, SIGN, Material::Rsa(4096)),
    alg("HMAC_SHA256", 32, MAC, Material::Raw(32)),
    alg("HMAC_SHA1", 33, MAC, Material::Raw(20)),
    alg("HMAC_SHA384", 34, MAC, Material::Raw(48)),
    alg("HMAC_SHA512", 35, MAC, Material::Raw(64)),
    alg("HMAC_SHA224", 36, MAC, Material::Raw(28)),
    alg("RSA_DECRYPT_OAEP_2048_SHA1", 37, DEC, Material::Rsa(2048)),
    alg("RSA_DECRYPT_OAEP_3072_SHA1", 38, DEC, Material::Rsa(3072)),
    alg("RSA_DECRYPT_OAEP_4096_SHA1", 39, DEC, Material::Rsa(4096)),
    alg("AES_128_GCM", 41, RAW, Material::Raw(16)),
    alg("AES_128_CBC", 42, RAW, Material::Raw(16)),
    alg("AES_256_CBC", 43, RAW, Material::Raw(32)),
    alg("AES_128_CTR", 44, RAW, Material::Raw(16)),
    alg("AES_256_CTR", 45, RAW, Material::Raw(32)),
];

/// The algorithm a request names, as a number or a name.
pub(crate) fn read_algorithm(v: &Value, field: &str) -> Result<&'static Algorithm, GcpError> {
    let found = match v {
        Value::Number(n) => n
            .as_i64()
            .and_then(|n| ALGORITHMS.iter().find(|a| a.number == n)),
        Value::String(s) => ALGORITHMS.iter().find(|a| a.name == s),
        _ => None,
    };
    found.ok_or_else(|| match v {
        Value::Null => GcpError::invalid(format!("{field} is required")),
        Value::Number(n) if n.as_i64() == Some(0) => {
            GcpError::invalid(format!("{field} must be specified"))
        }
        v => GcpError::invalid(format!(
            "Invalid value at '{field}' (type.googleapis.com/google.cloud.kms.v1.CryptoKeyVersion.CryptoKeyVersionAlgorithm), or an algorithm the emulator does not serve: {v}"
        )),
    })
}

pub(crate) fn algorithm(name: &str) -> &'static Algorithm {
    ALGORITHMS
        .iter()
        .find(|a| a.name == name)
        .unwrap_or(&ALGORITHMS[0])
}

pub(crate) fn write_algorithm(name: &str, ints: bool) -> Value {
    if ints {
        json!(algorithm(name).number)
    } else {
        json!(name)
    }
}

/// Base64 as protobuf's JSON parsers take it: standard or URL-safe, padded or not.
pub(crate) fn unb64(s: &str) -> Option<Vec<u8>> {
    crate::azure::protocol::b64_any_decode(s)
}

/// CRC32C (Castagnoli), as `pemCrc32c` carries it.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Whether `id` can name a key ring, import job or crypto key: `^[a-zA-Z0-9_-]{1,63}$`.
pub(crate) fn valid_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether a label key or value is of lowercase letters, digits, `_` and `-`, at most 63
/// characters (a key also non-empty and starting with a letter).
pub(crate) fn valid_label(s: &str, key: bool) -> bool {
    s.len() <= 63
        && (!key || s.bytes().next().is_some_and(|b| b.is_ascii_lowercase()))
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A query's boolean (`true`/`false`, as the Rust client writes it, or Python's
/// `True`/`False`).
pub(crate) fn query_bool(v: Option<&str>, name: &str) -> Result<bool, GcpError> {
    match v {
        None | Some("") | Some("false") | Some("False") | Some("0") => Ok(false),
        Some("true") | Some("True") | Some("1") => Ok(true),
        Some(other) => Err(GcpError::invalid(format!(
            "Invalid value at '{name}' (TYPE_BOOL), \"{other}\""
        ))),
    }
}
