//! PKCS#11: loading the module, finding the token, logging in once, a pool of sessions,
//! key lookup with a handle cache, the start-up self-test and the wrap modes.
//!
//! Key values never come out of here in clear: the token wraps them. The PIN is held in
//! a zeroizing secret and never logged.

pub mod keys;
pub mod modes;
pub mod pin;
pub mod pool;
pub mod raw;
pub mod selftest;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::ObjectHandle;
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use crate::config::{HsmConfig, PolicyConfig};
use crate::wrap::{Algorithm, KeyShape, WrapError, WrappingKey};
pub use keys::{KeyInfo, KeyRef};
pub use modes::WrapMode;

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
    #[error("{0}")]
    Refused(String),
    /// The caller may not touch this key (caller policy, decided above this layer).
    #[error("{0}")]
    Denied(String),
    #[error("self-test: {0}")]
    SelfTest(String),
    #[error("{op} failed: {}", ck_error_text(.err))]
    Pkcs11 { op: &'static str, err: CkError },
    #[error("C_WrapKey with {mechanism} failed: {}", ckr_name(*.rv))]
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

/// Codes after which a fresh, logged-in session may succeed: the session or the login was
/// lost, or the device hiccuped. Never `CKR_PIN_INCORRECT` (a Luna partition locks after a
/// few bad PINs) and never a refusal about the key or the mechanism.
pub fn recoverable(rv: RvError) -> bool {
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
    /// OCI: a key type or size it does not import.
    Shape,
    /// This daemon's policy.exportable.
    Policy,
}

/// The PKCS#11 name of a return value: `RvError::MechanismInvalid` -> `CKR_MECHANISM_INVALID`.
pub fn ckr_name(rv: RvError) -> String {
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

fn ck_error_text(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, _) => ckr_name(*rv),
        other => other.to_string(),
    }
}

/// The result of one wrap.
#[derive(Debug, Clone)]
pub struct Wrapped {
    /// OCI `keyMaterial`, before base64.
    pub material: Vec<u8>,
    pub algorithm: Algorithm,
    pub mode: WrapMode,
    pub shape: KeyShape,
    pub key: KeyInfo,
}

/// An open, logged-in token with a pool of sessions and a chosen wrap mode.
pub struct Hsm {
    pkcs11: Pkcs11,
    slot: Slot,
    raw: raw::RawModule,
    token_label: String,
    pool: pool::Pool,
    sessions: usize,
    cache: Mutex<HashMap<KeyRef, ObjectHandle>>,
    report: selftest::Report,
    exportable: Vec<String>,
    min_wrapping_key_bits: u32,
    /// Kept (zeroized on drop) to log in again after the token lost the login.
    pin: AuthPin,
}

/// How long a caller waits for a free session before `Busy`.
const SESSION_WAIT: Duration = Duration::from_secs(30);

impl Hsm {
    /// Loads the module, finds the token, logs in, opens the session pool and runs the
    /// self-test. Fails with the reason if any step does, or if the configured wrap mode is
    /// impossible on this token.
    pub fn open(cfg: &HsmConfig, policy: &PolicyConfig) -> Result<Hsm, HsmError> {
        let module = cfg.module.display().to_string();
        if !cfg.module.is_file() {
            return Err(HsmError::ModuleMissing(module));
        }
        raw::set_module_env(&cfg.module_env);
        let pin: AuthPin = match (&cfg.pin_file, &cfg.pin_env) {
            (Some(f), _) => pin::from_file(f)?,
            (None, Some(v)) => pin::from_env(v)?,
            (None, None) => return Err(HsmError::Pin("no PIN source configured".into())),
        };
        let load_err = |why: String| HsmError::ModuleLoad {
            path: module.clone(),
            why,
        };
        let pkcs11 = Pkcs11::new(&cfg.module).map_err(|e| load_err(e.to_string()))?;
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(load_err(format!("C_Initialize: {e}"))),
        }
        let raw = raw::RawModule::open(&cfg.module).map_err(load_err)?;

        let (slot, token) = find_token(&pkcs11, &cfg.token_label)?;
        let login_session = pkcs11
            .open_ro_session(slot)
            .map_err(|e| HsmError::pkcs11("C_OpenSession", e))?;
        login(&login_session, &pin, &cfg.token_label)?;
        let mut sessions = vec![login_session];
        while sessions.len() < cfg.sessions {
            sessions.push(
                pkcs11
                    .open_ro_session(slot)
                    .map_err(|e| HsmError::pkcs11("C_OpenSession", e))?,
            );
        }

        let listed = raw.mechanism_list(slot.id()).unwrap_or_default();
        let report = selftest::run(
            &raw,
            &sessions[0],
            &listed,
            token,
            cfg.wrap_mode,
            policy.allow_hybrid,
        )?;
        tracing::info!(mode = %report.chosen, token = %cfg.token_label, "token ready");
        Ok(Hsm {
            pkcs11,
            slot,
            raw,
            token_label: cfg.token_label.clone(),
            sessions: sessions.len(),
            pool: pool::Pool::new(sessions),
            cache: Mutex::new(HashMap::new()),
            report,
            exportable: policy.exportable.clone(),
            min_wrapping_key_bits: policy.min_wrapping_key_bits,
            pin,
        })
    }

    pub fn mode(&self) -> WrapMode {
        self.report.chosen
    }

    pub fn selftest_report(&self) -> &selftest::Report {
        &self.report
    }

    pub fn token_label(&self) -> &str {
        &self.token_label
    }

    pub fn min_wrapping_key_bits(&self) -> u32 {
        self.min_wrapping_key_bits
    }

    /// A free session, waiting at most until `deadline` (or 30 s without one). A call
    /// whose deadline has passed gets no session, so the HSM does no work for it.
    fn session(&self, deadline: Option<Instant>) -> Result<pool::Lease<'_>, HsmError> {
        let now = Instant::now();
        let wait = match deadline {
            Some(d) if d <= now => return Err(HsmError::DeadlineExceeded),
            Some(d) => (d - now).min(SESSION_WAIT),
            None => SESSION_WAIT,
        };
        let expired = || deadline.is_some_and(|d| Instant::now() >= d);
        match self.pool.get(wait) {
            Some(_) | None if expired() => Err(HsmError::DeadlineExceeded),
            Some(lease) => Ok(lease),
            None => Err(HsmError::Busy(self.sessions)),
        }
    }

    /// Whether the token still answers (for health checks).
    pub fn check_token(&self) -> Result<(), HsmError> {
        self.pkcs11
            .get_token_info(self.slot)
            .map(|_| ())
            .map_err(|e| HsmError::pkcs11("C_GetTokenInfo", e))
    }

    /// Whether the token can still wrap, for the health service: it answers
    /// `C_GetTokenInfo`, and on a pooled session (with the usual one recovery) an RFC 5649
    /// `C_WrapKey` of a fresh session AES key under another succeeds; both keys are destroyed.
    /// A token too busy to lend a session within a second counts as working.
    pub fn probe(&self) -> Result<(), HsmError> {
        self.check_token()?;
        let Some(kwp) = self.report.caps.kwp else {
            return Ok(());
        };
        let r = self.on_session(Some(Instant::now() + Duration::from_secs(1)), |s| {
            let mut k = zeroize::Zeroizing::new([0u8; 64]);
            getrandom::fill(&mut k[..])
                .map_err(|e| HsmError::Wrap(WrapError::Crypto(e.to_string())))?;
            let kek = modes::session_aes(s, &k[..32], modes::AesRole::Wrapping)?;
            let target = modes::session_aes(s, &k[32..], modes::AesRole::Target)?;
            self.raw
                .wrap_key(
                    s.handle(),
                    raw::WrapMechanism::Kwp(kwp),
                    kek.handle.handle(),
                    target.handle.handle(),
                    64,
                )
                .map(|_| ())
                .map_err(|rv| HsmError::WrapCall {
                    mechanism: modes::kwp_name(kwp).into(),
                    rv,
                })
        });
        match r {
            Err(HsmError::Busy(_) | HsmError::DeadlineExceeded) => Ok(()),
            other => other,
        }
    }

    /// Number of sessions in the pool.
    pub fn sessions(&self) -> usize {
        self.sessions
    }

    /// Finds a key: a cached handle if it still names the same key, else `C_FindObjects`.
    pub fn find_key(&self, key: &KeyRef, deadline: Option<Instant>) -> Result<KeyInfo, HsmError> {
        self.on_session(deadline, |s| self.find_key_in(s, key))
    }

    /// Runs `work` on a pooled session; after a session-level error (see [`recoverable`]),
    /// once more on a fresh, logged-in session.
    fn on_session<T>(
        &self,
        deadline: Option<Instant>,
        work: impl Fn(&Session) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let mut s = self.session(deadline)?;
        match work(&s) {
            Err(e) if e.rv().is_some_and(recoverable) => {
                tracing::warn!(error = %e, "HSM session error; opening a fresh session and retrying once");
                self.renew(&mut s)?;
                work(&s)
            }
            other => other,
        }
    }

    fn find_key_in(&self, s: &Session, key: &KeyRef) -> Result<KeyInfo, HsmError> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied();
        if let Some(handle) = cached {
            // A handle can go stale (key deleted, handle reused): check it still names
            // the same key, else fall back to a search.
            if let Ok(Some(info)) = keys::read_info(s, handle)
                && keys::still_matches(&info, key)
            {
                return Ok(info);
            }
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key);
        }
        let info = keys::find(s, key)?;
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), info.handle);
        Ok(info)
    }

    /// Every secret and private key on the token.
    pub fn list_keys(&self, deadline: Option<Instant>) -> Result<Vec<KeyInfo>, HsmError> {
        self.on_session(deadline, keys::list)
    }

    /// Why `info` may not leave, or `Ok` if it may: OCI must be able to import it, the
    /// token must allow it out, and policy must list it.
    pub fn export_check(&self, info: &KeyInfo) -> Result<KeyShape, HsmError> {
        let refuse = |refusal, why: String| HsmError::NotExportable {
            key: info.name(),
            why,
            refusal,
        };
        let shape = info.shape().ok_or_else(|| {
            refuse(
                ExportRefusal::Shape,
                format!(
                    "it is {}; OCI imports only AES and RSA keys",
                    info.describe()
                ),
            )
        })?;
        if !shape.importable() {
            return Err(refuse(
                ExportRefusal::Shape,
                format!(
                    "it is {}; OCI imports AES-128/192/256 and RSA-2048/3072/4096",
                    shape.describe()
                ),
            ));
        }
        if !info.extractable {
            return Err(refuse(
                ExportRefusal::Token,
                "the token marks it not extractable (CKA_EXTRACTABLE = false)".into(),
            ));
        }
        if info.wrap_with_trusted {
            return Err(refuse(ExportRefusal::Token, "it is CKA_WRAP_WITH_TRUSTED and OCI's wrapping key is not a trusted key on this token".into(),
            ));
        }
        if !self.exportable_by_policy(info) {
            return Err(refuse(
                ExportRefusal::Policy,
                format!(
                    "its label {:?} matches no pattern in policy.exportable",
                    info.label
                ),
            ));
        }
        Ok(shape)
    }

    /// Whether `policy.exportable` lists the key's label.
    pub fn exportable_by_policy(&self, info: &KeyInfo) -> bool {
        crate::policy::any_match(&self.exportable, &info.label)
    }

    /// Wraps the key `key` names for `wk` with `alg`, after the export checks. With a
    /// deadline, gives up (before any HSM work) if no session is free in time.
    pub fn wrap(
        &self,
        key: &KeyRef,
        wk: &WrappingKey,
        alg: Algorithm,
        deadline: Option<Instant>,
    ) -> Result<Wrapped, HsmError> {
        self.wrap_if(key, wk, alg, deadline, |_| Ok(()))
    }

    /// As [`Hsm::wrap`], with `permit` asked about the key found (a caller's label
    /// patterns, for a key named by id) before anything is wrapped. A session-level error
    /// gets one retry on a fresh, logged-in session.
    pub fn wrap_if(
        &self,
        key: &KeyRef,
        wk: &WrappingKey,
        alg: Algorithm,
        deadline: Option<Instant>,
        permit: impl Fn(&KeyInfo) -> Result<(), String>,
    ) -> Result<Wrapped, HsmError> {
        if wk.bits < self.min_wrapping_key_bits {
            return Err(HsmError::Wrap(WrapError::WrappingKey(format!(
                "RSA-{} is below the minimum of {} bits (policy.min_wrapping_key_bits)",
                wk.bits, self.min_wrapping_key_bits
            ))));
        }
        self.on_session(deadline, |s| self.wrap_on(s, key, wk, alg, &permit))
    }

    fn wrap_on(
        &self,
        s: &Session,
        key: &KeyRef,
        wk: &WrappingKey,
        alg: Algorithm,
        permit: &impl Fn(&KeyInfo) -> Result<(), String>,
    ) -> Result<Wrapped, HsmError> {
        let info = self.find_key_in(s, key)?;
        permit(&info).map_err(HsmError::Denied)?;
        let shape = self.export_check(&info)?;
        let target = modes::Target {
            handle: info.handle,
            shape,
        };
        let started = Instant::now();
        let material = modes::wrap(
            &self.raw,
            s,
            &self.report.caps,
            self.mode(),
            alg,
            target,
            wk,
        )?;
        tracing::debug!(key = %info.name(), shape = %shape.describe(), alg = %alg, mode = %self.mode(),
            micros = started.elapsed().as_micros() as u64, "wrapped");
        Ok(Wrapped {
            material,
            algorithm: alg,
            mode: self.mode(),
            shape,
            key: info,
        })
    }

    /// Replaces the leased session with a fresh one, logs in again (see [`login`]) and
    /// forgets cached handles.
    fn renew(&self, s: &mut pool::Lease<'_>) -> Result<(), HsmError> {
        let fresh = self
            .pkcs11
            .open_ro_session(self.slot)
            .map_err(|e| HsmError::pkcs11("C_OpenSession", e))?;
        login(&fresh, &self.pin, &self.token_label)?;
        s.replace(fresh);
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(())
    }

    /// Closes every session, logs out and finalises the module.
    pub fn close(self) {
        let sessions = self.pool.drain();
        if let Some(s) = sessions.first() {
            let _ = s.logout();
        }
        drop(sessions);
        self.pkcs11.finalize().ok();
    }
}

/// `C_Login` as the user, once; "already logged in" (login is per application) is success.
/// Any failure is final: never a second attempt with the same PIN (a Luna partition locks
/// after a few bad ones).
fn login(s: &Session, pin: &AuthPin, token: &str) -> Result<(), HsmError> {
    let why = match s.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => return Ok(()),
        Err(CkError::Pkcs11(rv, _)) => match rv {
            RvError::PinIncorrect => "wrong PIN (CKR_PIN_INCORRECT)".to_string(),
            RvError::PinLocked => "the PIN is locked (CKR_PIN_LOCKED)".to_string(),
            RvError::UserPinNotInitialized => {
                "the user PIN is not initialised (CKR_USER_PIN_NOT_INITIALIZED)".to_string()
            }
            other => ckr_name(other),
        },
        Err(e) => e.to_string(),
    };
    Err(HsmError::Login {
        token: token.to_string(),
        why,
    })
}

fn find_token(pkcs11: &Pkcs11, label: &str) -> Result<(Slot, selftest::TokenSummary), HsmError> {
    let slots = pkcs11
        .get_slots_with_token()
        .map_err(|e| HsmError::pkcs11("C_GetSlotList", e))?;
    let mut present = Vec::new();
    for slot in slots {
        let Ok(info) = pkcs11.get_token_info(slot) else {
            continue;
        };
        let l = info.label().trim_end().to_string();
        if l == label {
            let fw = info.firmware_version();
            return Ok((
                slot,
                selftest::TokenSummary {
                    label: l,
                    manufacturer: info.manufacturer_id().trim_end().to_string(),
                    model: info.model().trim_end().to_string(),
                    firmware: format!("{}.{}", fw.major(), fw.minor()),
                },
            ));
        }
        if !l.is_empty() {
            present.push(format!("{l:?}"));
        }
    }
    Err(HsmError::TokenNotFound {
        label: label.to_string(),
        present: if present.is_empty() {
            "none".into()
        } else {
            present.join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ckr_names() {
        assert_eq!(ckr_name(RvError::MechanismInvalid), "CKR_MECHANISM_INVALID");
        assert_eq!(ckr_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(ckr_name(RvError::ArgumentsBad), "CKR_ARGUMENTS_BAD");
    }
}
