//! What the journal's unit tests share. The journal's rules (claims, leases, bodies,
//! answers, purges, records changed in the database, the schema's migrations) are tested
//! on SQLite and PostgreSQL alike in tests/journal_rules.rs.

use super::*;

/// The request of an import whose retry token is `token`, its digest all `digest`s.
pub(super) fn entry(token: &str, digest: u8) -> Entry {
    Entry {
        token: token.into(),
        caller: "c".into(),
        idempotency_key: Some("k".into()),
        operation: "ImportKeyVersion".into(),
        target: "ocid1.key.oc1..t".into(),
        endpoint: "https://localhost:1".into(),
        algorithm: "RSA_OAEP_AES_SHA256".into(),
        digest: [digest; 32],
    }
}
