//! The vault's keys and versions as OCI's JSON.

#[allow(unused_imports)]
use super::*;

impl Emulator {
    /// A key's state: CREATING until its first version is enabled.
    pub(super) fn key_state(&self, inner: &Inner, k: &EmuKey) -> &'static str {
        let now = Instant::now();
        if k.versions
            .iter()
            .filter_map(|v| inner.versions.get(v))
            .any(|v| v.state(now) == "ENABLED")
        {
            "ENABLED"
        } else {
            "CREATING"
        }
    }

    pub(super) fn key_json(&self, inner: &Inner, k: &EmuKey) -> Value {
        let now = Instant::now();
        // The current version is the newest enabled one: an import rotates the key once
        // the new version is usable.
        let current = k
            .versions
            .iter()
            .rev()
            .find(|id| {
                inner
                    .versions
                    .get(*id)
                    .is_some_and(|v| v.state(now) == "ENABLED")
            })
            .or(k.versions.first())
            .cloned()
            .unwrap_or_default();
        json!({
            "compartmentId": COMPARTMENT_ID,
            "currentKeyVersion": current,
            "definedTags": k.defined_tags,
            "displayName": k.display_name,
            "freeformTags": k.freeform_tags,
            "id": k.id,
            "isPrimary": true,
            "keyShape": { "algorithm": k.algorithm, "length": k.length },
            "lifecycleState": self.key_state(inner, k),
            "protectionMode": k.protection_mode,
            "timeCreated": rfc3339(k.time_created),
            "vaultId": VAULT_ID,
        })
    }

    pub(super) fn version_json(&self, v: &EmuVersion) -> Value {
        json!({
            "compartmentId": COMPARTMENT_ID,
            "id": v.id,
            "keyId": v.key_id,
            "lifecycleState": v.state(Instant::now()),
            "origin": v.origin,
            "timeCreated": rfc3339(v.time_created),
            "vaultId": VAULT_ID,
            "isPrimary": true,
        })
    }
}
