//! Faults the tests ask for (`POST /_emulator/faults`): the next calls of an operation
//! (and key name) answer a chosen status and error code, or a raw body, late, or not at
//! all, or are handled and their answer lost, or are challenged for another resource.

use serde::Deserialize;

use super::protocol::{CONTENT_TYPE, KvError, challenge};
use super::{AzureKv, Reply};

/// A fault for the next `count` calls that match.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// The operation to match: `Token`, `Discovery`, `CreateKey`, `GetKey`, `ImportKey`,
    /// `GetKeyVersions` (any if absent).
    #[serde(default)]
    pub op: Option<String>,
    /// The key name to match (any if absent).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "one")]
    pub count: u32,
    /// Answer with this status and error code instead of handling the call.
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub code: Option<String>,
    /// Answer with this body verbatim (e.g. not JSON), with `status` (default 200).
    #[serde(default)]
    pub raw_body: Option<String>,
    /// Wait this long before answering or dropping. With neither `status`, `raw_body`,
    /// `drop` nor `challenge_resource`, the call is handled first and its answer is late.
    #[serde(default)]
    pub delay_ms: u64,
    /// Close the connection without an answer.
    #[serde(default)]
    pub drop: bool,
    /// With `drop`: handle the call first, then drop the answer (after `delay_ms`): the
    /// vault acted, and the caller never heard.
    #[serde(default)]
    pub processed: bool,
    /// Answer with a 401 challenge naming this resource instead of the vault's own (with
    /// or without a token): a server steering the client to ask for another token.
    #[serde(default)]
    pub challenge_resource: Option<String>,
    /// Handle the call, but let what it makes (a key version) appear only this long after,
    /// and answer then: a vault that commits late, also when the caller has given up.
    #[serde(default)]
    pub commit_after_ms: u64,
}

fn one() -> u32 {
    1
}

/// The error code Key Vault sends with `status` when a fault names none.
fn default_code(status: u16) -> &'static str {
    match status {
        400 => "BadParameter",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "KeyNotFound",
        409 => "Conflict",
        429 => "Throttled",
        500 => "InternalServerError",
        503 => "ServiceUnavailable",
        _ => "InternalError",
    }
}

impl Fault {
    /// Whether the fault applies to this call: a Key Vault call that carries a token (the
    /// SDKs' first, tokenless request is the challenge's, not the call's), except for a
    /// fault that changes the challenge itself; token calls always.
    fn matches(&self, op: Option<&str>, name: Option<&str>, authenticated: bool) -> bool {
        self.count > 0
            && (authenticated || self.challenge_resource.is_some())
            && self.op.as_deref().is_none_or(|o| Some(o) == op)
            && self.name.as_deref().is_none_or(|n| Some(n) == name)
    }

    /// The answer the fault gives instead of handling the call, if it gives one.
    pub(super) fn answer(&self, tenant: &str, had_token: bool) -> Option<Reply> {
        if let Some(resource) = &self.challenge_resource {
            let message = if had_token {
                "AKV10022: Invalid audience (injected by the emulator's fault list)."
            } else {
                "AKV10000: Request is missing a Bearer or PoP token."
            };
            return Some(challenge(tenant, resource, message));
        }
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
        Some(KvError::new(status, &code, "injected by the emulator's fault list").reply())
    }
}

impl AzureKv {
    /// Adds a fault.
    pub fn add_fault(&self, f: Fault) {
        self.lock().faults.push(f);
    }

    /// The first fault matching this call (`authenticated`: a token call, or a Key Vault
    /// call with a token), its count taken down by one.
    pub(super) fn take_fault(
        &self,
        op: Option<&str>,
        name: Option<&str>,
        authenticated: bool,
    ) -> Option<Fault> {
        let mut inner = self.lock();
        let i = inner
            .faults
            .iter()
            .position(|f| f.matches(op, name, authenticated))?;
        let f = &mut inner.faults[i];
        f.count -= 1;
        let out = f.clone();
        if f.count == 0 {
            inner.faults.remove(i);
        }
        Some(out)
    }
}
