//! OCI KMS's JSON, with OCI's field names, and the errors and answers of its calls.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::code::Code;

/// An OCI key version (`KeyVersion`), with OCI's field names. Enum values this code does
/// not know pass through as text.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KeyVersion {
    pub id: String,
    pub key_id: String,
    #[serde(default)]
    pub vault_id: String,
    #[serde(default)]
    pub compartment_id: String,
    #[serde(default)]
    pub time_created: String,
    #[serde(default)]
    pub lifecycle_state: String,
    #[serde(default)]
    pub origin: String,
    #[serde(default)]
    pub is_primary: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KeyShapeJson {
    pub algorithm: String,
    pub length: u32,
}

/// An OCI key (`Key`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Key {
    pub id: String,
    #[serde(default)]
    pub compartment_id: String,
    #[serde(default)]
    pub vault_id: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub current_key_version: String,
    #[serde(default)]
    pub key_shape: KeyShapeJson,
    #[serde(default)]
    pub protection_mode: String,
    #[serde(default)]
    pub lifecycle_state: String,
    #[serde(default)]
    pub time_created: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WrappingKeyJson {
    pub(super) public_key: String,
}

/// `wrappedImportKey`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WrappedImportKey {
    /// Base64 of the wrapped bytes.
    pub key_material: String,
    pub wrapping_algorithm: &'static str,
}

/// `ImportKeyVersionDetails`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ImportKeyVersionDetails {
    pub wrapped_import_key: WrappedImportKey,
}

/// `ImportKeyDetails`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ImportKeyDetails {
    pub compartment_id: String,
    pub display_name: String,
    pub key_shape: KeyShapeJson,
    pub wrapped_import_key: WrappedImportKey,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protection_mode: Option<String>,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub freeform_tags: HashMap<String, String>,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub defined_tags: HashMap<String, HashMap<String, String>>,
}

/// A failed call, after retries.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    /// OCI answered with an error status.
    #[error(
        "{} {op} answered {status} {code}: {message} ({} {opc_request_id}; attempt {attempts})",
        service(.op).0, service(.op).1
    )]
    Service {
        op: &'static str,
        status: u16,
        code: String,
        message: String,
        opc_request_id: String,
        attempts: u32,
    },
    /// No answer: connect error, reset or timeout on every attempt.
    #[error("{} {op} at {endpoint} did not answer after {attempts} attempt(s): {why}", service(.op).0)]
    Transport {
        op: &'static str,
        endpoint: String,
        why: String,
        attempts: u32,
    },
    /// The caller's deadline came first.
    #[error("{} {op}: the call's deadline passed after {attempts} attempt(s){last}", service(.op).0)]
    Deadline {
        op: &'static str,
        attempts: u32,
        last: String,
    },
    /// A success status with a body that is not what OCI sends.
    #[error(
        "{} {op} answered {status} with a body that is not a {expected}: {why} ({} {opc_request_id})",
        service(.op).0, service(.op).1
    )]
    BadResponse {
        op: &'static str,
        status: u16,
        expected: &'static str,
        why: String,
        opc_request_id: String,
    },
    /// The vault's wrapping key fails the checks a caller's key must pass.
    #[error("the vault's wrapping key at {endpoint} is refused: {why}")]
    WrappingKey { endpoint: String, why: String },
    /// Signing or building the request failed (nothing was sent).
    #[error("{} {op}: {why}", service(.op).0)]
    Local { op: &'static str, why: String },
}

/// The service an operation belongs to and what it calls its request ids, as messages name
/// them: AWS KMS's calls (src/aws/) fail with this type too, by their own operation names.
fn service(op: &str) -> (&'static str, &'static str) {
    if crate::aws::OPERATIONS.contains(&op) {
        ("AWS KMS", "x-amzn-RequestId")
    } else if crate::azure::OPERATIONS.contains(&op) {
        ("Azure Key Vault", "x-ms-request-id")
    } else if crate::gcp::OPERATIONS.contains(&op) {
        ("Google Cloud KMS", "request id")
    } else {
        ("OCI", "opc-request-id")
    }
}

impl KmsError {
    /// OCI's `opc-request-id`, when OCI answered.
    pub fn opc_request_id(&self) -> Option<&str> {
        match self {
            KmsError::Service { opc_request_id, .. }
            | KmsError::BadResponse { opc_request_id, .. } => Some(opc_request_id),
            _ => None,
        }
    }

    pub fn attempts(&self) -> u32 {
        match self {
            KmsError::Service { attempts, .. }
            | KmsError::Transport { attempts, .. }
            | KmsError::Deadline { attempts, .. } => *attempts,
            KmsError::BadResponse { .. } => 1,
            _ => 0,
        }
    }

    /// The canonical code for this failure (src/code.rs), from OCI's HTTP status where OCI
    /// answered.
    pub fn code(&self) -> Code {
        match self {
            KmsError::Service { status, .. } => match status {
                400 => Code::InvalidArgument,
                401 | 403 => Code::PermissionDenied,
                404 => Code::NotFound,
                409 => Code::Aborted,
                412 => Code::FailedPrecondition,
                429 | 500..=599 => Code::Unavailable,
                _ => Code::Unknown,
            },
            KmsError::Transport { .. } | KmsError::BadResponse { .. } => Code::Unavailable,
            KmsError::Deadline { .. } => Code::DeadlineExceeded,
            KmsError::WrappingKey { .. } => Code::FailedPrecondition,
            KmsError::Local { .. } => Code::Internal,
        }
    }

    /// What a caller is told: OCI's status, code, message and opc-request-id, and for an
    /// answer that could not be read, that the import may have happened.
    pub fn message(&self) -> String {
        match self {
            KmsError::BadResponse { .. } => {
                format!("{self}; the import may have happened: retry with the same idempotency_key")
            }
            _ => self.to_string(),
        }
    }
}

/// A successful call's value, with OCI's request id and the number of attempts it took.
#[derive(Debug, Clone)]
pub(crate) struct Answer<T> {
    pub value: T,
    pub opc_request_id: String,
    pub attempts: u32,
}
