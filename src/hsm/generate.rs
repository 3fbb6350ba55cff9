//! New key material made inside the token, for a rotation (src/export/rotate.rs): an
//! AES key labelled `BASE-N` (N one more than the highest `BASE-N` on the token), with a
//! CKA_ID derived from the rotation's journal token, so that a retry of the same request finds
//! the key an earlier attempt made instead of making a second one. Sensitive, extractable
//! (it is made to be exported; the label must be one `policy.exportable` lets out) and
//! never modifiable, so no one can later make it less protected or rename it.

use std::sync::Mutex;
use std::time::Instant;

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::Session;

use super::{ExportRefusal, Hsm, HsmError, KeyDenied, KeyInfo, KeyRef, keys};
use crate::keyref::MAX_LABEL;
use crate::wrap::{KeyAlgorithm, KeyShape};

/// The key a rotation makes: the label's base, the id that ties it to its request, and
/// its shape.
#[derive(Debug, Clone)]
pub(crate) struct NewKey {
    pub base: String,
    pub id: Vec<u8>,
    pub shape: KeyShape,
}

/// The CKA_ID of the key the rotation under journal token `token` with label base `base`
/// makes: 16 bytes of SHA-256 over both. One request, one id; another base, another id.
pub(crate) fn rotation_id(token: &str, base: &str) -> Vec<u8> {
    let mut h = openssl::sha::Sha256::new();
    h.update(b"hsm-bridge rotation\0");
    h.update(token.as_bytes());
    h.update(b"\0");
    h.update(base.as_bytes());
    h.finish()[..16].to_vec()
}

/// Checks a label base: a label a caller may give (src/keyref/), with room for `-N`.
pub(crate) fn check_base(base: &str) -> Result<(), String> {
    KeyRef::label(base).map_err(|e| format!("base_label: {e}"))?;
    if base.len() + 11 > MAX_LABEL {
        return Err(format!(
            "base_label is {} bytes; at most {} (the label is BASE-N)",
            base.len(),
            MAX_LABEL - 11
        ));
    }
    Ok(())
}

/// The N of `label` if it is `base-N` (N a decimal number without leading zeros).
fn counter(label: &str, base: &str) -> Option<u64> {
    let n = label.strip_prefix(base)?.strip_prefix('-')?;
    if n.is_empty() || n.len() > 10 || n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    n.parse().ok()
}

/// The next free label `base-N`: N one more than the highest on the token (secret and
/// private keys), from 1.
fn next_label(s: &Session, base: &str) -> Result<String, HsmError> {
    let mut highest = 0u64;
    for class in [ObjectClass::SECRET_KEY, ObjectClass::PRIVATE_KEY] {
        let handles = s
            .find_objects(&[Attribute::Class(class), Attribute::Token(true)])
            .map_err(|e| HsmError::pkcs11("C_FindObjects", e))?;
        for h in handles {
            let label = match s.get_attributes(h, &[AttributeType::Label]) {
                Ok(attrs) => attrs.into_iter().find_map(|a| match a {
                    Attribute::Label(l) => Some(String::from_utf8_lossy(&l).into_owned()),
                    _ => None,
                }),
                Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => None,
                Err(e) => return Err(HsmError::pkcs11("C_GetAttributeValue", e)),
            };
            if let Some(n) = label.as_deref().and_then(|l| counter(l, base)) {
                highest = highest.max(n);
            }
        }
    }
    Ok(format!("{base}-{}", highest + 1))
}

/// The template of a rotation's key of `shape`, labelled `label`, with id `id`.
fn template(shape: KeyShape, label: &str, id: &[u8]) -> Result<Vec<Attribute>, HsmError> {
    if shape.algorithm != KeyAlgorithm::Aes || ![16, 24, 32].contains(&shape.length) {
        return Err(HsmError::Unsupported(super::Unsupported::NoModeFor {
            format: "rotation",
            why: format!(
                "a rotation makes AES keys; {} cannot be generated here",
                shape.describe()
            ),
        }));
    }
    Ok(vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen((shape.length as u64).into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::WrapWithTrusted(false),
        Attribute::Modifiable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ])
}

/// One rotation's key generation at a time in this process: two requests with one base
/// never pick the same N.
pub(super) type GenerateLock = Mutex<()>;

impl Hsm {
    /// The key `new` describes: the one an earlier attempt of the same request made (found
    /// by its id), or a new one generated now, labelled `BASE-N`. Before anything is made,
    /// `permit` (the caller's patterns) and `policy.exportable` must allow the label.
    pub(crate) fn find_or_generate(
        &self,
        new: &NewKey,
        deadline: Option<Instant>,
        permit: impl Fn(&str) -> Result<(), KeyDenied>,
    ) -> Result<(KeyInfo, bool), HsmError> {
        let key = KeyRef::Id(new.id.clone());
        match self.find_key(&key, deadline) {
            Ok(info) => return Ok((info, false)),
            Err(HsmError::KeyNotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let _one = self.generating.lock().unwrap_or_else(|p| p.into_inner());
        self.on_session(deadline, |up, s| {
            // Made by another call of this request while this one waited for the lock.
            match keys::find(&self.raw, s, &key) {
                Ok(info) => return Ok((info, false)),
                Err(HsmError::KeyNotFound(_)) => {}
                Err(e) => return Err(e),
            }
            let label = next_label(s, &new.base)?;
            permit(&label)?;
            if !crate::policy::any_match(&self.exportable, &label) {
                return Err(HsmError::NotExportable {
                    key: label.clone(),
                    why: format!(
                        "its label {label:?} matches no pattern in policy.exportable, so a key made for export under it could not leave; nothing was generated"
                    ),
                    refusal: ExportRefusal::Policy,
                });
            }
            // The pool's sessions are read-only; a token object needs a read-write one,
            // opened for this alone (logged in: the login belongs to the application).
            let rw = self
                .pkcs11
                .open_rw_session(up.slot)
                .map_err(|e| HsmError::pkcs11("C_OpenSession (read-write)", e))?;
            let handle = rw
                .generate_key(&Mechanism::AesKeyGen, &template(new.shape, &label, &new.id)?)
                .map_err(|e| HsmError::pkcs11("C_GenerateKey (CKM_AES_KEY_GEN)", e))?;
            let info = keys::read_info(&self.raw, s, handle)
                .map_err(|e| HsmError::pkcs11("C_GetAttributeValue", e))?
                .ok_or_else(|| HsmError::KeyNotFound(format!("the generated key {label:?}")))?;
            tracing::info!(label = %info.label, "generated a key for a rotation");
            Ok((info, true))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_only_base_dash_number() {
        assert_eq!(counter("pay-1", "pay"), Some(1));
        assert_eq!(counter("pay-42", "pay"), Some(42));
        for no in [
            "pay", "pay-", "pay-01", "pay-x", "pay-1-2", "payx-1", "pay--1",
        ] {
            assert_eq!(counter(no, "pay"), None, "{no}");
        }
        assert_eq!(counter("pay-2-3", "pay-2"), Some(3));
    }

    #[test]
    fn rotation_ids_differ_by_token_and_base() {
        let a = rotation_id("t1", "pay");
        assert_eq!(a.len(), 16);
        assert_eq!(a, rotation_id("t1", "pay"));
        assert_ne!(a, rotation_id("t2", "pay"));
        assert_ne!(a, rotation_id("t1", "pay2"));
        assert!(check_base("pay").is_ok());
        assert!(check_base("pay*").is_err());
        assert!(check_base(&"x".repeat(MAX_LABEL)).is_err());
    }
}
