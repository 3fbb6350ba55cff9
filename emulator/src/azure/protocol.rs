//! Key Vault's and Entra ID's wire shapes: Key Vault errors as
//! `{"error":{"code","message"}}`, Entra errors as `{"error","error_description",
//! "error_codes",...}`, the 401 challenge with its `WWW-Authenticate` header, base64url
//! both ways, and the random ids (key versions, tokens, request ids).

use crate::aws::protocol::uuid;
use serde_json::{Value, json};

use crate::state::Reply;

/// Key Vault's and Entra ID's content type.
pub(crate) const CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// A refused Key Vault call: its status, `error.code` and `error.message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl KvError {
    pub(crate) fn new(status: u16, code: &str, message: impl Into<String>) -> KvError {
        KvError {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// A 400 `BadParameter`.
    pub(crate) fn bad(message: impl Into<String>) -> KvError {
        KvError::new(400, "BadParameter", message)
    }

    /// A 500: the emulator itself failed.
    pub(crate) fn internal(message: impl Into<String>) -> KvError {
        KvError::new(500, "InternalError", message)
    }

    pub(crate) fn reply(&self) -> Reply {
        json_reply(
            self.status,
            &json!({ "error": { "code": self.code, "message": self.message } }),
        )
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

/// The 401 a Key Vault answers a request without a usable token with: the challenge names
/// the authority (with the tenant) and the resource a token must be for.
pub(crate) fn challenge(tenant: &str, resource: &str, message: &str) -> Reply {
    let mut r = KvError::new(401, "Unauthorized", message).reply();
    r.headers.push((
        "www-authenticate",
        format!(
            "Bearer authorization=\"https://login.microsoftonline.com/{tenant}\", resource=\"{resource}\""
        ),
    ));
    r
}

/// An Entra ID token-endpoint error: `error` (an OAuth code), `error_description`
/// (starting `AADSTS{number}: `), `error_codes` and the trace fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraError {
    pub status: u16,
    pub error: &'static str,
    pub number: u32,
    pub description: String,
}

impl EntraError {
    pub(crate) fn new(
        status: u16,
        error: &'static str,
        number: u32,
        description: impl Into<String>,
    ) -> EntraError {
        EntraError {
            status,
            error,
            number,
            description: description.into(),
        }
    }

    pub(crate) fn reply(&self, now: std::time::SystemTime) -> Reply {
        let trace = uuid();
        let correlation = uuid();
        let time = hsm_bridge::time::rfc3339(now);
        json_reply(
            self.status,
            &json!({
                "error": self.error,
                "error_description": format!(
                    "AADSTS{}: {} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {time}",
                    self.number, self.description
                ),
                "error_codes": [self.number],
                "timestamp": time,
                "trace_id": trace,
                "correlation_id": correlation,
                "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.number),
            }),
        )
    }
}

/// `n` random bytes.
pub(crate) fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("the system's random source");
    b
}

/// A key version: 32 lowercase hex digits.
pub(crate) fn version_id() -> String {
    hsm_bridge::wrap::hex(&random(16))
}

/// Base64url without padding (RFC 4648 section 5).
pub fn b64url(bytes: &[u8]) -> String {
    openssl::base64::encode_block(bytes)
        .chars()
        .filter_map(|c| match c {
            '+' => Some('-'),
            '/' => Some('_'),
            '=' => None,
            c => Some(c),
        })
        .collect()
}

/// Base64url, with or without padding; `None` for any other character or a bad length.
pub(crate) fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    if s.len() % 4 == 1 {
        return None;
    }
    let mut std: String = s
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while !std.len().is_multiple_of(4) {
        std.push('=');
    }
    openssl::base64::decode_block(&std).ok()
}

/// Standard base64 or base64url, with or without padding (JWT header fields that SDKs
/// write either way).
pub(crate) fn b64_any_decode(s: &str) -> Option<Vec<u8>> {
    let url: String = s
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    b64url_decode(&url)
}
