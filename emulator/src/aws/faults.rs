//! Faults the tests ask for (`POST /_emulator/faults`): the next calls of an operation
//! (and key) answer a chosen status and `__type`, or a raw body, late, or not at all, or
//! are handled and their answer lost.

use serde::Deserialize;

use super::protocol::{AwsError, CONTENT_TYPE};
use super::{AwsKms, Reply};

/// A fault for the next `count` calls that match.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// The operation to match, e.g. `ImportKeyMaterial` (any if absent).
    #[serde(default)]
    pub op: Option<String>,
    /// The key to match: the `KeyId` member as sent, or the key id an ARN ends with (any
    /// if absent).
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default = "one")]
    pub count: u32,
    /// Answer with this status and `__type` instead of handling the call.
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub code: Option<String>,
    /// Answer with this body verbatim (e.g. not JSON), with `status` (default 200).
    #[serde(default)]
    pub raw_body: Option<String>,
    /// Wait this long before answering or dropping. With neither `status`, `raw_body`
    /// nor `drop`, the call is handled first and its answer is late.
    #[serde(default)]
    pub delay_ms: u64,
    /// Close the connection without an answer.
    #[serde(default)]
    pub drop: bool,
    /// With `drop`: handle the call first, then drop the answer (after `delay_ms`): KMS
    /// accepted, and the caller never heard.
    #[serde(default)]
    pub processed: bool,
}

fn one() -> u32 {
    1
}

/// The `__type` KMS sends with `status` when a fault names none.
fn default_code(status: u16) -> &'static str {
    match status {
        400 => "ValidationException",
        429 => "ThrottlingException",
        500 => "KMSInternalException",
        503 => "ServiceUnavailableException",
        _ => "InternalFailure",
    }
}

impl Fault {
    fn matches(&self, op: Option<&str>, key_id: Option<&str>) -> bool {
        let key_matches =
            |want: &str| key_id.is_some_and(|k| k == want || k.ends_with(&format!("/{want}")));
        self.count > 0
            && self.op.as_deref().is_none_or(|o| Some(o) == op)
            && self.key_id.as_deref().is_none_or(key_matches)
    }

    /// The answer the fault gives instead of handling the call, if it gives one.
    pub(super) fn answer(&self) -> Option<Reply> {
        if let Some(raw) = &self.raw_body {
            return Some(Reply {
                status: self.status.unwrap_or(200),
                content_type: CONTENT_TYPE,
                headers: Vec::new(),
                body: raw.clone().into_bytes(),
            });
        }
        let status = self.status?;
        let code = self
            .code
            .clone()
            .unwrap_or_else(|| default_code(status).into());
        Some(
            AwsError {
                status,
                code,
                message: "injected by the emulator's fault list".into(),
            }
            .reply(),
        )
    }
}

impl AwsKms {
    /// Adds a fault.
    pub fn add_fault(&self, f: Fault) {
        self.lock().faults.push(f);
    }

    /// The first fault matching this call, its count taken down by one.
    pub(super) fn take_fault(&self, op: Option<&str>, key_id: Option<&str>) -> Option<Fault> {
        let mut inner = self.lock();
        let i = inner.faults.iter().position(|f| f.matches(op, key_id))?;
        let f = &mut inner.faults[i];
        f.count -= 1;
        let out = f.clone();
        if f.count == 0 {
            inner.faults.remove(i);
        }
        Some(out)
    }
}
