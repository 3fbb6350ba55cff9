//! Bringing the token up: `C_Initialize`, finding the token by label, logging in once (never
//! twice with a refused PIN), the session pool, and the start-up self-test.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::Session;
use cryptoki::slot::Slot;

use super::{HsmError, Setup, Up, ckr_name, pin, pool, raw, selftest, uri};

/// `C_Initialize` with OS locking; "already initialised" (another user of the module in this
/// process) is success.
pub(super) fn initialize(pkcs11: &Pkcs11) -> Result<(), CkError> {
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Finds the token, logs in on a first session and opens the rest of the pool.
pub(super) fn start(
    pkcs11: &Pkcs11,
    raw: &raw::RawModule,
    (want, label): (&uri::TokenMatch, &str),
    count: usize,
    pin: &pin::Pin,
    pin_refused: &pin::Refusal,
) -> Result<(Up, selftest::TokenSummary), HsmError> {
    let (slot, token) = find_token(pkcs11, want, label)?;
    let open = || {
        pkcs11
            .open_ro_session(slot)
            .map_err(|e| HsmError::pkcs11("C_OpenSession", e))
    };
    let first = open()?;
    login(raw, &first, pin, label, pin_refused)?;
    let mut sessions = vec![first];
    while sessions.len() < count {
        sessions.push(open()?);
    }
    let up = Up {
        slot,
        pool: pool::Pool::new(sessions),
        cache: Mutex::new(HashMap::new()),
        listing: Mutex::new(None),
    };
    Ok((up, token))
}

/// Finds the token, logs in, opens the pool and runs the self-test on one of its sessions.
pub(super) fn bring_up(
    pkcs11: &Pkcs11,
    raw: &raw::RawModule,
    setup: &Setup,
    pin: &pin::Pin,
    pin_refused: &pin::Refusal,
) -> Result<(Up, selftest::Report), HsmError> {
    let (up, token) = start(
        pkcs11,
        raw,
        (&setup.token, &setup.token_label),
        setup.sessions,
        pin,
        pin_refused,
    )?;
    let listed = raw.mechanism_list(up.slot.id()).unwrap_or_default();
    let report = {
        let s = up.pool.get(Duration::ZERO).ok_or(HsmError::Busy(0))?;
        selftest::run(raw, &s, &listed, token, setup.wrap_mode, setup.allow_hybrid)?
    };
    Ok((up, report))
}

/// `C_Login` as the user, once; "already logged in" (login is per application) is success.
/// Any failure is final: never a second attempt with the same PIN (a Luna partition locks
/// after a few bad ones). A refused PIN is remembered in `refused`, and every later call
/// (a session renewal, a re-initialisation) fails at once without calling `C_Login`.
pub(super) fn login(
    raw: &raw::RawModule,
    s: &Session,
    pin: &pin::Pin,
    token: &str,
    refused: &pin::Refusal,
) -> Result<(), HsmError> {
    let fail = |why: String| HsmError::Login {
        token: token.to_string(),
        why,
    };
    if let Some(why) = refused.get(token) {
        return Err(fail(why));
    }
    let why = match raw.login_user(s.handle(), pin.bytes()) {
        Ok(()) | Err(RvError::UserAlreadyLoggedIn) => return Ok(()),
        Err(rv) => match rv {
            RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired => {
                let why = match rv {
                    RvError::PinIncorrect => "wrong PIN (CKR_PIN_INCORRECT)",
                    RvError::PinLocked => "the PIN is locked (CKR_PIN_LOCKED)",
                    _ => {
                        "the PIN has expired (CKR_PIN_EXPIRED; on a Luna, the initial Crypto Officer password must be changed first, e.g. lunacm role changepw)"
                    }
                };
                format!("{why}{}", refused.set(token, why))
            }
            RvError::UserPinNotInitialized => {
                "the user PIN is not initialised (CKR_USER_PIN_NOT_INITIALIZED)".to_string()
            }
            other => ckr_name(other),
        },
    };
    Err(fail(why))
}

pub(super) fn find_token(
    pkcs11: &Pkcs11,
    want: &uri::TokenMatch,
    name: &str,
) -> Result<(Slot, selftest::TokenSummary), HsmError> {
    let slots = pkcs11
        .get_slots_with_token()
        .map_err(|e| HsmError::pkcs11("C_GetSlotList", e))?;
    let mut present = Vec::new();
    for slot in slots {
        let Ok(info) = pkcs11.get_token_info(slot) else {
            continue;
        };
        let fw = info.firmware_version();
        let t = selftest::TokenSummary {
            label: info.label().trim_end().to_string(),
            manufacturer: info.manufacturer_id().trim_end().to_string(),
            model: info.model().trim_end().to_string(),
            serial: info.serial_number().trim_end().to_string(),
            firmware: format!("{}.{}", fw.major(), fw.minor()),
            slot_id: slot.id(),
        };
        if want.matches(&t.label, &t.manufacturer, &t.serial, &t.model, t.slot_id) {
            return Ok((slot, t));
        }
        if !t.label.is_empty() {
            present.push(format!("{:?}", t.label));
        }
    }
    Err(HsmError::TokenNotFound {
        label: name.to_string(),
        present: if present.is_empty() {
            "none".into()
        } else {
            present.join(", ")
        },
    })
}
