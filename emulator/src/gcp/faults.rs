//! Faults the tests ask for: per call (`POST /_emulator/faults`), the next calls of an
//! operation (and resource) answer a chosen status or a raw body, late, or not at all, or
//! are handled and their answer lost, or commit what they make late; per import job and
//! import (`POST /_emulator/job-faults`), the next job never leaves PENDING_GENERATION, has
//! a key of another size, or is EXPIRED at once, and the next import fails.

use serde::Deserialize;

use serde_json::json;

use super::protocol::{CONTENT_TYPE, json_reply, status_name};
use super::{GcpKms, Reply};

/// A fault for the next `count` calls that match.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// The operation to match: `CreateKeyRing`, `GetKeyRing`, `CreateImportJob`,
    /// `GetImportJob`, `ListImportJobs`, `CreateCryptoKey`, `GetCryptoKey`,
    /// `ImportCryptoKeyVersion`, `ListCryptoKeyVersions`, `GetCryptoKeyVersion`,
    /// `GetPublicKey`, `MetadataToken` (any if absent).
    #[serde(default)]
    pub op: Option<String>,
    /// The resource name in the path to match (any if absent).
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default = "one")]
    pub count: u32,
    /// Answer with this status (and `code`, the status name; default the canonical one)
    /// instead of handling the call.
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    /// Answer with this body verbatim (e.g. not JSON), with `status` (default 200).
    #[serde(default)]
    pub raw_body: Option<String>,
    /// Wait this long before answering or dropping. With neither `status`, `raw_body` nor
    /// `drop`, the call is handled first and its answer is late.
    #[serde(default)]
    pub delay_ms: u64,
    /// Close the connection without an answer.
    #[serde(default)]
    pub drop: bool,
    /// With `drop`: handle the call first, then drop the answer (after `delay_ms`).
    #[serde(default)]
    pub processed: bool,
    /// Handle the call, but let what it makes (an imported version) appear only this long
    /// after, and answer then: a service that commits late, also when the caller gave up.
    #[serde(default)]
    pub commit_after_ms: u64,
}

fn one() -> u32 {
    1
}

impl Fault {
    fn matches(&self, op: Option<&str>, resource: Option<&str>) -> bool {
        self.count > 0
            && self.op.as_deref().is_none_or(|o| Some(o) == op)
            && self.resource.as_deref().is_none_or(|r| Some(r) == resource)
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
            .unwrap_or_else(|| status_name(status).to_string());
        let message = self
            .message
            .clone()
            .unwrap_or_else(|| "injected by the emulator's fault list".into());
        Some(json_reply(
            status,
            &json!({"error": {"code": status, "message": message, "status": code}}),
        ))
    }
}

/// One-shot faults for the next import job or import.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobFaults {
    /// The next created job never leaves PENDING_GENERATION.
    #[serde(default)]
    pub job_stays_pending: bool,
    /// The next created job's RSA key has this many bits, whatever its method says.
    #[serde(default)]
    pub job_key_bits: Option<u32>,
    /// The next created job is EXPIRED at once.
    #[serde(default)]
    pub job_expired: bool,
    /// The next import ends IMPORT_FAILED with this reason.
    #[serde(default)]
    pub import_fails: Option<String>,
}

impl GcpKms {
    /// Adds a fault.
    pub fn add_fault(&self, f: Fault) {
        self.lock().faults.push(f);
    }

    /// Arms the one-shot job and import faults `f` sets (others stay as they are).
    pub fn add_job_faults(&self, f: JobFaults) {
        let mut inner = self.lock();
        let j = &mut inner.job_faults;
        j.job_stays_pending |= f.job_stays_pending;
        j.job_expired |= f.job_expired;
        if f.job_key_bits.is_some() {
            j.job_key_bits = f.job_key_bits;
        }
        if f.import_fails.is_some() {
            j.import_fails = f.import_fails;
        }
    }

    /// The first fault matching this call, its count taken down by one.
    pub(super) fn take_fault(&self, op: Option<&str>, resource: Option<&str>) -> Option<Fault> {
        let mut inner = self.lock();
        let i = inner.faults.iter().position(|f| f.matches(op, resource))?;
        let f = &mut inner.faults[i];
        f.count -= 1;
        let out = f.clone();
        if f.count == 0 {
            inner.faults.remove(i);
        }
        Some(out)
    }
}
