//! The HSM layer's errors, and the names and hints its PKCS#11 codes carry: each displays as
//! one line that says what to do.

use cryptoki::error::{Error as CkError, RvError};

use super::modes::WrapMode;
use crate::code::Code;
use crate::wrap::WrapError;

/// Errors from the HSM layer. Each displays as one line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    #[error("PKCS#11 module {0} does not exist (hsm.module)")]
    ModuleMissing(String),
    #[error("cannot load PKCS#11 module {path}: {why}")]
    ModuleLoad { path: String, why: String },
    #[error("no token labelled {label:?}; tokens present: {present}")]
    TokenNotFound { label: String, present: String },
    #[error("login to token {token:?} failed: {why}")]
    Login { token: String, why: String },
    #[error("{0}")]
    Pin(String),
    /// The module is down: its last re-initialisation failed (the reason says why and when
    /// the next attempt may come).
    #[error("{0}")]
    Down(String),
    #[error("no secret or private key with {0} on the token")]
    KeyNotFound(String),
    #[error(
        "{count} secret/private keys have {key}; refusing to guess: give the key a unique label or use its id"
    )]
    Ambiguous { key: String, count: usize },
    #[error("key {key} may not be exported: {why}")]
    NotExportable {
        key: String,
        why: String,
        refusal: ExportRefusal,
    },
    /// What was asked cannot be done on this token or with this key (a precondition of the
    /// token's proven capabilities, not a fault).
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    /// The OS random source failed (for hybrid mode's K): the daemon's fault, not the
    /// request's.
    #[error("the OS random source failed: {0}")]
    Random(String),
    /// The caller may not touch this key (caller policy, decided above this layer).
    #[error(transparent)]
    Denied(#[from] KeyDenied),
    /// A key named by id that is missing or that the caller may not touch: one answer for
    /// both, naming no key (decided above this layer).
    #[error("no key you may use has {0}")]
    NoKeyYouMayUse(String),
    #[error("self-test: {0}")]
    SelfTest(String),
    /// The journal's record key is not one the daemon may use (src/journal/seal.rs).
    #[error("{0}")]
    RecordKey(String),
    #[error("{op} failed: {}", ck_error_text(.err))]
    Pkcs11 { op: &'static str, err: CkError },
    #[error("C_WrapKey with {mechanism} failed: {}{}", ckr_name(*.rv), wrap_hint(*.rv))]
    WrapCall { mechanism: String, rv: RvError },
    #[error("all {0} HSM sessions stayed busy; try again")]
    Busy(usize),
    #[error(
        "the deadline passed before an HSM session was free; the HSM did no work for this call"
    )]
    DeadlineExceeded,
    #[error(transparent)]
    Wrap(#[from] WrapError),
}

/// A wrap this token cannot do, by what stands in the way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    #[error(
        "{format} can carry only AES keys; a {shape} key does not fit in one RSA block: {instead}"
    )]
    OaepOnlyCarriesAes {
        format: &'static str,
        shape: String,
        instead: String,
    },
    #[error(
        "{format} needs the HSM to do RSA-OAEP with {hash} itself (the key must never reach the host), and the self-test found this token cannot: {instead}"
    )]
    NoDirectOaep {
        format: &'static str,
        hash: &'static str,
        instead: String,
    },
    /// The wrap mode chosen for this format's hash cannot run, or no mode can.
    #[error("{format}: {why} (see hsm-bridge selftest)")]
    NoModeFor { format: &'static str, why: String },
    #[error(
        "{}; the token answered {rv} when the self-test wrapped an extractable private key",
        super::modes::PRIVATE_WRAP_REFUSED
    )]
    PrivateWrapRefused { rv: String },
    #[error(
        "{mode} cannot export RSA keys on this token: it pads PKCS#8 with zero bytes ({pad} on the self-test key), which the clouds reject, and only hybrid mode can strip them"
    )]
    Pkcs8Padded { mode: WrapMode, pad: usize },
    #[error(
        "{mode} cannot export RSA keys on this token: the self-test could not show that it wraps private keys as exact PKCS#8"
    )]
    Pkcs8Unproven { mode: WrapMode },
    #[error("wrap mode {mode} is not available on this token (see hsm-bridge selftest)")]
    ModeUnavailable { mode: WrapMode },
}

/// A caller's key patterns do not allow the key found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{caller} may not touch key {label:?} (its key patterns: {})", patterns.join(", "))]
pub struct KeyDenied {
    pub caller: String,
    pub label: String,
    pub patterns: Vec<String>,
}

impl HsmError {
    pub fn pkcs11(op: &'static str, err: CkError) -> Self {
        HsmError::Pkcs11 { op, err }
    }

    /// The token's return code, for errors that carry one.
    pub fn rv(&self) -> Option<RvError> {
        match self {
            HsmError::Pkcs11 {
                err: CkError::Pkcs11(rv, _),
                ..
            }
            | HsmError::WrapCall { rv, .. } => Some(*rv),
            _ => None,
        }
    }
}

impl HsmError {
    /// The canonical code for this error (src/code.rs).
    pub fn code(&self) -> Code {
        match self {
            HsmError::KeyNotFound(_) | HsmError::NoKeyYouMayUse(_) => Code::NotFound,
            HsmError::Ambiguous { .. } | HsmError::Unsupported(_) => Code::FailedPrecondition,
            HsmError::NotExportable {
                refusal: ExportRefusal::Policy,
                ..
            }
            | HsmError::Denied(_) => Code::PermissionDenied,
            HsmError::NotExportable { .. } => Code::FailedPrecondition,
            HsmError::Busy(_) => Code::ResourceExhausted,
            HsmError::DeadlineExceeded => Code::DeadlineExceeded,
            HsmError::Wrap(
                WrapError::WrappingKey(_)
                | WrapError::UnknownAlgorithm(_)
                | WrapError::UnknownFormat(_)
                | WrapError::Format(_),
            ) => Code::InvalidArgument,
            HsmError::Wrap(WrapError::Crypto(_)) => Code::Internal,
            HsmError::WrapCall {
                rv:
                    RvError::KeyNotWrappable
                    | RvError::KeyUnextractable
                    | RvError::KeyFunctionNotPermitted,
                ..
            } => Code::FailedPrecondition,
            HsmError::WrapCall { .. }
            | HsmError::Pkcs11 { .. }
            | HsmError::ModuleMissing(_)
            | HsmError::ModuleLoad { .. }
            | HsmError::TokenNotFound { .. }
            | HsmError::Login { .. }
            | HsmError::Pin(_)
            | HsmError::Down(_)
            | HsmError::Random(_)
            | HsmError::SelfTest(_)
            | HsmError::RecordKey(_) => Code::Unavailable,
        }
    }
}

/// Codes after which a fresh, logged-in session may succeed: the session or the login was
/// lost, or the device hiccuped. Never `CKR_PIN_INCORRECT` (a Luna partition locks after a
/// few bad PINs) and never a refusal about the key or the mechanism.
pub(crate) fn recoverable(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::UserNotLoggedIn
            | RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::DeviceError
            | RvError::GeneralError
    )
}

/// Who says a key may not leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportRefusal {
    /// The token: not CKA_EXTRACTABLE, or wrap-with-trusted only.
    Token,
    /// The cloud: a key type or size its format does not take.
    Shape,
    /// This daemon's policy.exportable.
    Policy,
}

/// The PKCS#11 name of a return value: `RvError::MechanismInvalid` -> `CKR_MECHANISM_INVALID`.
pub(crate) fn ckr_name(rv: RvError) -> String {
    let debug = format!("{rv:?}");
    let mut out = String::from("CKR");
    for c in debug.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// What a wrap refusal means and what fixes it, for the codes a Luna partition answers.
pub(super) fn wrap_hint(rv: RvError) -> &'static str {
    match rv {
        RvError::KeyUnextractable => {
            " (the key is not extractable: CKA_EXTRACTABLE is false, and a Luna makes keys so unless asked; generate source keys with CKA_EXTRACTABLE = true)"
        }
        RvError::KeyNotWrappable => {
            " (the token will not wrap this key; for a private key on a Luna: the partition does not allow private-key wrapping, key export mode is partition policy 1; AES keys are unaffected)"
        }
        RvError::KeyFunctionNotPermitted => {
            " (the key's attributes or the partition's policy forbid this: the key needs CKA_EXTRACTABLE = true, the wrapping key CKA_WRAP = true)"
        }
        RvError::TemplateInconsistent => {
            " (the token refused the one-time session key's template; a Luna requires CKA_SENSITIVE and CKA_PRIVATE true and takes no secret key from a value)"
        }
        _ => "",
    }
}

fn ck_error_text(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv @ RvError::TemplateInconsistent, _) => {
            format!("{}{}", ckr_name(*rv), wrap_hint(*rv))
        }
        CkError::Pkcs11(rv, _) => ckr_name(*rv),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luna_refusals_name_cause_and_fix() {
        let call = |rv| {
            HsmError::WrapCall {
                mechanism: "m".into(),
                rv,
            }
            .to_string()
        };
        assert!(call(RvError::KeyUnextractable).contains("CKA_EXTRACTABLE = true"));
        assert!(call(RvError::KeyNotWrappable).contains("partition policy 1"));
        assert!(call(RvError::KeyFunctionNotPermitted).contains("CKA_WRAP = true"));
        assert!(call(RvError::DeviceError).ends_with("CKR_DEVICE_ERROR"));
        let session_key = HsmError::pkcs11(
            "C_GenerateKey (session AES-256)",
            CkError::Pkcs11(
                RvError::TemplateInconsistent,
                cryptoki::context::Function::GenerateKey,
            ),
        )
        .to_string();
        assert!(
            session_key.contains("CKA_SENSITIVE and CKA_PRIVATE"),
            "{session_key}"
        );
    }

    #[test]
    fn ckr_names() {
        assert_eq!(ckr_name(RvError::MechanismInvalid), "CKR_MECHANISM_INVALID");
        assert_eq!(ckr_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(ckr_name(RvError::ArgumentsBad), "CKR_ARGUMENTS_BAD");
    }
}
