//! Faults the tests ask for: the next requests that match answer a chosen status or a raw
//! body, late, or not at all, or are handled and their answer lost (`POST /_emulator/faults`).

#[allow(unused_imports)]
use super::*;

/// A fault for the next `count` requests that match.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// HTTP method to match (any if absent).
    #[serde(default)]
    pub method: Option<String>,
    /// Substring of the path to match (any if absent).
    #[serde(default)]
    pub path_contains: Option<String>,
    #[serde(default = "one")]
    pub count: u32,
    /// Answer with this status and OCI error code instead of handling the request.
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub code: Option<String>,
    /// Answer with this body verbatim (e.g. not JSON), with `status` (default 200).
    #[serde(default)]
    pub raw_body: Option<String>,
    /// Wait this long before answering (or dropping, or handling normally).
    #[serde(default)]
    pub delay_ms: u64,
    /// Close the connection without an answer.
    #[serde(default)]
    pub drop: bool,
    /// With `drop`: handle the request first (an import is made), then drop the answer
    /// (after `delay_ms`): OCI accepted, and the caller never heard.
    #[serde(default)]
    pub processed: bool,
}

fn one() -> u32 {
    1
}

impl Emulator {
    /// Adds a fault.
    pub fn add_fault(&self, f: Fault) {
        self.lock().faults.push(f);
    }

    pub(super) fn take_fault(&self, req: &HttpRequest<'_>) -> Option<Fault> {
        let mut inner = self.lock();
        let i = inner.faults.iter().position(|f| {
            f.count > 0
                && f.method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(req.method))
                && f.path_contains
                    .as_deref()
                    .is_none_or(|p| req.path.contains(p))
        })?;
        let f = &mut inner.faults[i];
        f.count -= 1;
        let out = f.clone();
        if f.count == 0 {
            inner.faults.remove(i);
        }
        Some(out)
    }
}
