//! OCI's rules for a call: which answers are retried and after how long, the retry token an
//! idempotency key derives, and what of OCI's answers is kept (error text bounded, ids
//! checked before they go into a URL).

use std::time::Duration;

use serde::Deserialize;

use super::KmsError;

/// First backoff step; doubles per attempt, up to `BACKOFF_CAP`.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(10);

/// Whether OCI's answer may be retried (OCI's SDKs' rules).
pub(crate) fn retryable(status: u16, code: &str) -> bool {
    match status {
        429 => true,
        409 => matches!(code, "IncorrectState" | "LockConflict"),
        501 => false,
        500..=599 => true,
        _ => false,
    }
}

/// Sleep before attempt `attempt + 1` (attempt counts from 1): `BACKOFF_BASE * 2^(attempt-1)`,
/// capped, with "equal jitter" (half fixed, half random) so that callers spread out.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let step = BACKOFF_BASE
        .saturating_mul(1u32 << (attempt.saturating_sub(1)).min(16))
        .min(BACKOFF_CAP);
    let mut r = [0u8; 4];
    let _ = getrandom::fill(&mut r);
    let frac = f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX);
    step / 2 + step.mul_f64(frac / 2.0)
}

/// A retry token: derived from the caller's idempotency key (same key, same token), or
/// random. 32 characters from `[0-9a-f]`, within OCI's token alphabet.
pub(crate) fn retry_token(idempotency_key: Option<&str>, scope: &str) -> String {
    match idempotency_key {
        Some(k) => {
            let mut h = openssl::sha::Sha256::new();
            h.update(b"hsm-bridge retry token v1\0");
            h.update(scope.as_bytes());
            h.update(b"\0");
            h.update(k.as_bytes());
            crate::wrap::hex(&h.finish()[..16])
        }
        None => {
            let mut b = [0u8; 16];
            let _ = getrandom::fill(&mut b);
            crate::wrap::hex(&b)
        }
    }
}

/// `{"code","message"}` of an OCI error body, or what is known without one.
pub(crate) fn error_body(body: &[u8]) -> (String, String) {
    #[derive(Deserialize)]
    struct E {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<E>(body) {
        Ok(e) => (
            bounded(&e.code, MAX_ID_TEXT),
            bounded(&e.message, MAX_ERROR_TEXT),
        ),
        Err(_) => (
            "(no OCI error body)".into(),
            bounded(
                &String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_TEXT)]),
                MAX_ERROR_TEXT,
            ),
        ),
    }
}

/// Most of OCI's error message that goes into a status and an audit record.
pub(crate) const MAX_ERROR_TEXT: usize = 512;
/// Most of an OCI error code or request id kept.
pub(crate) const MAX_ID_TEXT: usize = 128;

/// At most `max` bytes of `text` (cut at a character boundary, "…" added), control
/// characters replaced by spaces: what OCI says is copied into statuses and audit records,
/// never without bound.
pub(crate) fn bounded(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// An id from an earlier OCI answer, checked before it goes into a URL path.
pub(super) fn ocid_for_url<'a>(
    op: &'static str,
    id: &'a str,
    prefix: &str,
) -> Result<&'a str, KmsError> {
    if crate::oci::is_ocid(id, prefix) {
        Ok(id)
    } else {
        Err(KmsError::BadResponse {
            op,
            status: 200,
            expected: "OCID",
            why: format!("{:?} is not an OCID ({prefix}…)", bounded(id, 80)),
            opc_request_id: String::new(),
        })
    }
}

/// A transport error with its causes, e.g. "connection refused".
pub(super) fn describe(e: reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "the connection failed"
    };
    format!("{what}{}", crate::text::causes(&e))
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    #[test]
    fn what_oci_says_is_bounded_and_ids_are_checked_before_urls() {
        let long = format!(
            "{{\"code\":\"X\",\"message\":\"{}\\u0007\"}}",
            "m".repeat(5000)
        );
        let (code, message) = error_body(long.as_bytes());
        assert_eq!(code, "X");
        assert!(
            message.len() <= MAX_ERROR_TEXT + '…'.len_utf8(),
            "{}",
            message.len()
        );
        assert!(!message.chars().any(char::is_control));
        assert!(
            ocid_for_url(
                "GetKeyVersion",
                "ocid1.keyversion.oc1..a",
                "ocid1.keyversion."
            )
            .is_ok()
        );
        for bad in [
            "../../x",
            "ocid1.keyversion.oc1../../x",
            "ocid1.key.oc1..a",
            "",
        ] {
            assert!(
                ocid_for_url("GetKeyVersion", bad, "ocid1.keyversion.").is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn retry_rules_follow_oci_sdks() {
        assert!(retryable(429, "TooManyRequests"));
        assert!(retryable(409, "IncorrectState"));
        assert!(retryable(409, "LockConflict"));
        assert!(!retryable(409, "Conflict"));
        assert!(!retryable(409, "InvalidatedRetryToken"));
        assert!(retryable(500, "InternalServerError"));
        assert!(retryable(503, ""));
        assert!(!retryable(501, "MethodNotImplemented"));
        for s in [400, 401, 403, 404, 412] {
            assert!(!retryable(s, "x"), "{s}");
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        for attempt in 1..=20 {
            let step = BACKOFF_BASE
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(BACKOFF_CAP);
            let b = backoff(attempt);
            assert!(b >= step / 2 && b <= step, "{attempt}: {b:?}");
        }
        assert!(backoff(30) <= BACKOFF_CAP);
    }

    #[test]
    fn retry_tokens_derive_from_idempotency_keys() {
        let a = retry_token(Some("rotation-42"), "ImportKeyVersion ocid1.key.x");
        assert_eq!(
            a,
            retry_token(Some("rotation-42"), "ImportKeyVersion ocid1.key.x")
        );
        assert_ne!(
            a,
            retry_token(Some("rotation-42"), "ImportKeyVersion ocid1.key.y")
        );
        assert_ne!(
            a,
            retry_token(Some("rotation-43"), "ImportKeyVersion ocid1.key.x")
        );
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(retry_token(None, "s"), retry_token(None, "s"));
    }

    #[test]
    fn bodies_use_oci_field_names() {
        let d = ImportKeyVersionDetails {
            wrapped_import_key: WrappedImportKey {
                key_material: "AAAA".into(),
                wrapping_algorithm: "RSA_OAEP_AES_SHA256",
            },
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"wrappedImportKey":{"keyMaterial":"AAAA","wrappingAlgorithm":"RSA_OAEP_AES_SHA256"}}"#
        );
        // unknown enum values and extra fields are kept / ignored, not fatal
        let v: KeyVersion = serde_json::from_str(
            r#"{"id":"v","keyId":"k","lifecycleState":"SOMETHING_NEW","origin":"EXTERNAL","extra":1}"#,
        )
        .unwrap();
        assert_eq!(v.lifecycle_state, "SOMETHING_NEW");
        assert_eq!(
            error_body(br#"{"code":"NotAuthenticated","message":"no"}"#),
            ("NotAuthenticated".into(), "no".into())
        );
        assert_eq!(error_body(b"<html>").0, "(no OCI error body)");
    }
}
