//! How a caller names a source key: an exact label, a CKA_ID, or a PKCS#11 URI (RFC 7512,
//! `uri.rs`), parsed strictly before anything asks the token. Pure: the token's side (finding
//! the key a reference names) is `hsm/keys.rs`.

use std::fmt;

use crate::wrap::hex;

pub(crate) mod uri;

/// How a caller names a source key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyRef {
    /// Exact `CKA_LABEL`.
    Label(String),
    /// `CKA_ID` bytes.
    Id(Vec<u8>),
    /// A PKCS#11 URI (RFC 7512): label and/or id, maybe the class and the token.
    Uri(uri::KeyUri),
}

/// Longest label and id a caller may name (PKCS#11 sets no limit; HSMs use 32 to 128 bytes).
pub(crate) const MAX_LABEL: usize = 128;
pub(crate) const MAX_ID: usize = 64;

impl KeyRef {
    /// A label as callers give it: 1 to `MAX_LABEL` bytes, no control characters, no glob
    /// characters (`* ? [ ]`: labels are matched exactly, and globs belong to policy).
    pub(crate) fn label(l: &str) -> Result<KeyRef, KeyRefError> {
        if l.is_empty() {
            return Err(KeyRefError::EmptyLabel);
        }
        if l.len() > MAX_LABEL {
            return Err(KeyRefError::LabelTooLong(l.len()));
        }
        if crate::text::has_deceptive(l) {
            return Err(KeyRefError::ControlInLabel);
        }
        if l.contains(['*', '?', '[', ']']) {
            return Err(KeyRefError::GlobInLabel);
        }
        Ok(KeyRef::Label(l.to_string()))
    }

    /// A CKA_ID as hex: 1 to `MAX_ID` bytes.
    pub(crate) fn id_hex(h: &str) -> Result<KeyRef, KeyRefError> {
        if h.len() > 2 * MAX_ID {
            return Err(KeyRefError::IdTooLong(h.len()));
        }
        crate::wrap::unhex(h)
            .filter(|b| !b.is_empty())
            .map(KeyRef::Id)
            .ok_or_else(|| KeyRefError::NotHex(h.to_string()))
    }

    /// A PKCS#11 URI, e.g. `pkcs11:object=demo-aes-256;type=secret-key` (see `uri.rs`).
    pub(crate) fn uri(u: &str) -> Result<KeyRef, uri::UriError> {
        Ok(KeyRef::Uri(uri::KeyUri::parse(u)?))
    }

    /// The label this names, if it names one (for the caller's label patterns, which apply
    /// before the token is asked).
    pub(crate) fn label_named(&self) -> Option<&str> {
        match self {
            KeyRef::Label(l) => Some(l),
            KeyRef::Uri(u) => u.label.as_deref(),
            KeyRef::Id(_) => None,
        }
    }

    /// The CKA_ID this names, if any.
    pub(crate) fn id_named(&self) -> Option<&[u8]> {
        match self {
            KeyRef::Id(id) => Some(id),
            KeyRef::Uri(u) => u.id.as_deref(),
            KeyRef::Label(_) => None,
        }
    }
}

/// Why a caller's key reference is refused (before the token is asked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyRefError {
    #[error("the label is empty")]
    EmptyLabel,
    #[error("the label is {0} bytes; at most {MAX_LABEL}")]
    LabelTooLong(usize),
    #[error("the label contains control characters, line separators or bidirectional controls")]
    ControlInLabel,
    #[error("the label contains glob characters (* ? [ ]); labels are matched exactly")]
    GlobInLabel,
    #[error("the id is {0} hex digits; at most {max}", max = 2 * MAX_ID)]
    IdTooLong(usize),
    /// At most `2 * MAX_ID` characters (checked first), so quoting it is bounded.
    #[error("the id {0:?} is not hex (an even number of 0-9a-f digits)")]
    NotHex(String),
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::Label(l) => write!(f, "label {l:?}"),
            KeyRef::Id(id) => write!(f, "id {}", hex(id)),
            KeyRef::Uri(u) => write!(f, "{u}"),
        }
    }
}
