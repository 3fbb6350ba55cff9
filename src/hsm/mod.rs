//! PKCS#11: loading the module, finding the token, logging in once, a pool of sessions,
//! key lookup with a handle cache, the start-up self-test and the wrap modes.
//!
//! Key values never come out of here in clear: the token wraps them. The PIN is held in
//! a zeroizing secret and never logged.

mod error;
mod export;
mod generate;
pub(crate) mod keys;
mod listing;
pub(crate) mod modes;
pub(crate) mod pin;
pub(crate) mod pool;
pub mod raw;
pub(crate) mod selftest;
mod token;

use std::collections::HashMap;
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use cryptoki::slot::Slot;

use crate::config::{HsmConfig, PolicyConfig, WrapModeSetting};
pub(crate) use crate::keyref::uri;
use crate::wrap::{Format, KeyShape, WrapError, WrappingKey};
pub(crate) use error::{ExportRefusal, HsmError, KeyDenied, Unsupported, ckr_name, recoverable};
pub(crate) use generate::{NewKey, check_base, rotation_id};
pub use keys::{KeyInfo, KeyRef};
pub(crate) use modes::WrapMode;
pub use pin::SharedRefusal;
use token::{bring_up, initialize, login};

/// The result of one wrap.
#[derive(Debug, Clone)]
pub struct Wrapped {
    /// The token's output in the format (before the format's envelope, src/wrap/format.rs).
    pub material: Vec<u8>,
    pub format: &'static Format,
    pub mode: WrapMode,
    pub shape: KeyShape,
    pub key: KeyInfo,
}

/// An open, logged-in token with a pool of sessions and a chosen wrap mode.
///
/// The module's live state (slot, sessions, handle cache) sits behind a read-write lock:
/// every operation holds it shared for as long as it uses a session, and a
/// re-initialisation after a device-level error holds it exclusively, so `C_Finalize` never
/// runs under another thread's call and no session of the old generation outlives it.
pub struct Hsm {
    pkcs11: Pkcs11,
    raw: raw::RawModule,
    setup: Setup,
    live: RwLock<Live>,
    reinit_interval: Duration,
    report: selftest::Report,
    exportable: Vec<String>,
    min_wrapping_key_bits: u32,
    /// Kept (locked, zeroed on drop) to log in again after the token lost the login.
    pin: pin::Pin,
    /// Set when the token refused the PIN after start-up: no further `C_Login` is tried.
    pin_refused: pin::Refusal,
    /// Held while a rotation picks its label and generates (src/hsm/generate.rs).
    generating: generate::GenerateLock,
}

/// The module's current generation and its state.
struct Live {
    generation: u64,
    state: State,
    last_reinit: Option<Instant>,
}

enum State {
    /// Sessions open and logged in.
    Up(Up),
    /// The last re-initialisation failed: why, and when the next attempt may come.
    Down(String),
}

impl Live {
    fn up(&self) -> Option<&Up> {
        match &self.state {
            State::Up(up) => Some(up),
            State::Down(_) => None,
        }
    }

    /// The error calls get while the module is down.
    fn down(&self) -> Option<HsmError> {
        match &self.state {
            State::Up(_) => None,
            State::Down(why) => Some(HsmError::Down(why.clone())),
        }
    }
}

/// What bringing the token up takes, at start and at every re-initialisation.
struct Setup {
    /// How the token is named in messages: its label, or the URI.
    token_label: String,
    /// What the token must match (`hsm.token_label`, or the `hsm.token` URI).
    token: uri::TokenMatch,
    sessions: usize,
    wrap_mode: WrapModeSetting,
    allow_hybrid: bool,
}

/// What one initialisation of the module gives: the token's slot, the session pool and the
/// key handles found through it (handles are not valid across generations).
struct Up {
    slot: Slot,
    pool: pool::Pool,
    cache: Mutex<HashMap<KeyRef, ObjectHandle>>,
    /// What the last listing read, for its later pages (src/hsm/listing.rs).
    listing: Mutex<Option<listing::Listing<KeyInfo>>>,
}

/// Least time between attempts to re-initialise a module that is down (when
/// `hsm.reinit_interval_secs` is longer).
const DOWN_RETRY: Duration = Duration::from_secs(5);

/// How long a caller waits for a free session before `Busy`.
const SESSION_WAIT: Duration = Duration::from_secs(30);

/// Device-level codes: after these the module itself is re-initialised (rate-limited), not
/// just the session.
fn device_level(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::DeviceError
            | RvError::GeneralError
    )
}

impl Hsm {
    /// Loads the module, finds the token, logs in, opens the session pool and runs the
    /// self-test. Fails with the reason if any step does, or if the configured wrap mode is
    /// impossible on this token.
    pub fn open(cfg: &HsmConfig, policy: &PolicyConfig) -> Result<Hsm, HsmError> {
        Self::open_shared(cfg, policy, None)
    }

    /// As [`Hsm::open`], with refused PINs also remembered in (and read from) `shared`:
    /// the import journal, which replicas share.
    pub(crate) fn open_shared(
        cfg: &HsmConfig,
        policy: &PolicyConfig,
        shared: Option<std::sync::Arc<dyn pin::SharedRefusal>>,
    ) -> Result<Hsm, HsmError> {
        let module = cfg.module.display().to_string();
        if !cfg.module.is_file() {
            return Err(HsmError::ModuleMissing(module));
        }
        raw::set_module_env(&cfg.module_env);
        let pin: pin::Pin = match (&cfg.pin_file, &cfg.pin_env) {
            (Some(f), _) => pin::from_file(f)?,
            (None, Some(v)) => pin::from_env(v)?,
            (None, None) => return Err(HsmError::Pin("no PIN source configured".into())),
        };
        let load_err = |why: String| HsmError::ModuleLoad {
            path: module.clone(),
            why,
        };
        let pkcs11 = Pkcs11::new(&cfg.module).map_err(|e| load_err(e.to_string()))?;
        initialize(&pkcs11).map_err(|e| load_err(format!("C_Initialize: {e}")))?;
        let raw = raw::RawModule::open(&cfg.module, cfg.user_type.ck_user_type())
            .map_err(|e| load_err(e.to_string()))?;
        let pin_refused = pin::Refusal::new(cfg.pin_marker.clone(), shared);
        let setup = Setup {
            token_label: cfg.token_name().to_string(),
            token: cfg.token_match().map_err(|e| HsmError::TokenNotFound {
                label: format!("{} ({e})", cfg.token_name()),
                present: "not searched".into(),
            })?,
            sessions: cfg.sessions,
            wrap_mode: cfg.wrap_mode,
            allow_hybrid: policy.allow_hybrid,
        };
        let (up, report) = bring_up(&pkcs11, &raw, &setup, &pin, &pin_refused)?;
        tracing::info!(mode = %report.chosen, token = %cfg.token_name(), "token ready");
        Ok(Hsm {
            pkcs11,
            raw,
            setup,
            live: RwLock::new(Live {
                generation: 0,
                state: State::Up(up),
                last_reinit: None,
            }),
            reinit_interval: Duration::from_secs(cfg.reinit_interval_secs),
            report,
            exportable: policy.exportable.clone(),
            min_wrapping_key_bits: policy.min_wrapping_key_bits,
            pin,
            pin_refused,
            generating: Default::default(),
        })
    }

    /// The mode chosen for OCI's default format (hybrid layout, OAEP SHA-256).
    pub fn mode(&self) -> WrapMode {
        self.report.chosen
    }

    /// The mode `format` wraps in on this token, or why it cannot.
    pub(crate) fn mode_for(&self, format: &'static Format) -> Result<WrapMode, HsmError> {
        self.report.mode_for(format)
    }

    /// Whether `info` may leave in some format (the key listings' "exportable").
    pub(crate) fn exportable(&self, info: &KeyInfo) -> Result<KeyShape, HsmError> {
        self.export_check(info, Format::widest())
    }

    pub(crate) fn selftest_report(&self) -> &selftest::Report {
        &self.report
    }

    /// What made a wrap, for envelopes that name it (Azure's `.byok` `generator`): this tool
    /// and the token, with its firmware.
    pub(crate) fn generator(&self) -> String {
        let t = &self.report.token;
        format!(
            "hsm-bridge {}; {} {} firmware {}",
            env!("CARGO_PKG_VERSION"),
            t.manufacturer,
            t.model,
            t.firmware
        )
    }

    pub fn token_label(&self) -> &str {
        &self.setup.token_label
    }

    pub(crate) fn min_wrapping_key_bits(&self) -> u32 {
        self.min_wrapping_key_bits
    }

    fn live(&self) -> RwLockReadGuard<'_, Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A free session, waiting at most until `deadline` (or 30 s without one). A call
    /// whose deadline has passed gets no session, so the HSM does no work for it.
    fn session<'a>(
        &self,
        up: &'a Up,
        deadline: Option<Instant>,
    ) -> Result<pool::Lease<'a>, HsmError> {
        let now = Instant::now();
        let wait = match deadline {
            Some(d) if d <= now => return Err(HsmError::DeadlineExceeded),
            Some(d) => (d - now).min(SESSION_WAIT),
            None => SESSION_WAIT,
        };
        let expired = || deadline.is_some_and(|d| Instant::now() >= d);
        match up.pool.get(wait) {
            Some(_) | None if expired() => Err(HsmError::DeadlineExceeded),
            Some(lease) => Ok(lease),
            None => Err(HsmError::Busy(self.setup.sessions)),
        }
    }

    /// Whether the token still answers `C_GetTokenInfo`.
    fn check_token(&self, up: &Up) -> Result<(), HsmError> {
        self.pkcs11
            .get_token_info(up.slot)
            .map(|_| ())
            .map_err(|e| HsmError::pkcs11("C_GetTokenInfo", e))
    }

    /// Whether the token can still wrap, for the health service: it answers
    /// `C_GetTokenInfo`, and on a pooled session (with the usual one recovery) an RFC 5649
    /// `C_WrapKey` of a fresh session AES key under another succeeds; both keys are destroyed.
    /// A token too busy to lend a session within a second counts as working. A module that
    /// is down is re-initialised here when the interval allows, so health recovers without
    /// traffic.
    pub(crate) fn probe(&self) -> Result<(), HsmError> {
        let kwp = self.report.caps.kwp;
        let r = self.on_session(Some(Instant::now() + Duration::from_secs(1)), |up, s| {
            self.check_token(up)?;
            let Some(kwp) = kwp else {
                return Ok(());
            };
            // Generated in the token: a Luna takes no secret key from a value.
            let kek = modes::session_aes_generate(s)?;
            let target = modes::session_aes_generate(s)?;
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
    pub(crate) fn sessions(&self) -> usize {
        self.setup.sessions
    }

    /// Finds a key: a cached handle if it still names the same key, else `C_FindObjects`.
    pub(crate) fn find_key(
        &self,
        key: &KeyRef,
        deadline: Option<Instant>,
    ) -> Result<KeyInfo, HsmError> {
        self.on_session(deadline, |up, s| self.find_key_in(up, s, key))
    }

    /// The checks a wrap of `key` in `format` would make, without wrapping: the key is
    /// found, `permit` allows it (a caller's patterns) and it may leave (the cloud's rules,
    /// token attributes and policy). For an answer recorded earlier, which must be as
    /// allowed now as a fresh export would be.
    pub(crate) fn check_export(
        &self,
        key: &KeyRef,
        format: &'static Format,
        deadline: Option<Instant>,
        permit: impl Fn(&KeyInfo) -> Result<(), KeyDenied>,
    ) -> Result<KeyInfo, HsmError> {
        self.on_session(deadline, |up, s| {
            let info = self.find_key_in(up, s, key)?;
            permit(&info)?;
            self.export_check(&info, format)?;
            Ok(info)
        })
    }

    /// Runs `work` on a pooled session. After a recoverable error (see [`recoverable`]) it
    /// runs once more: after a device-level one, on a re-initialised module if the last
    /// re-initialisation is at least `hsm.reinit_interval_secs` ago; otherwise on a fresh,
    /// logged-in session.
    fn on_session<T>(
        &self,
        deadline: Option<Instant>,
        work: impl Fn(&Up, &Session) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let mut reinitialised = false;
        loop {
            let live = self.live();
            let generation = live.generation;
            let Some(up) = live.up() else {
                let down = live.down().expect("not up");
                let due = self.reinit_due(&live);
                drop(live);
                if reinitialised || !due {
                    return Err(down);
                }
                self.reinit(generation, &down)?;
                reinitialised = true;
                continue;
            };
            let mut s = self.session(up, deadline)?;
            let e = match work(up, &s) {
                Err(e) if !reinitialised && e.rv().is_some_and(recoverable) => e,
                other => return other,
            };
            if e.rv().is_some_and(device_level) && self.reinit_due(&live) {
                drop(s);
                drop(live);
                tracing::warn!(error = %e, "HSM device error; re-initialising the module and retrying once");
                self.reinit(generation, &e)?;
                reinitialised = true;
                continue;
            }
            tracing::warn!(error = %e, "HSM session error; opening a fresh session and retrying once");
            self.renew(up, &mut s)?;
            return work(up, &s);
        }
    }

    /// Whether a re-initialisation may start now: `hsm.reinit_interval_secs` after the last
    /// one while the module works, at most [`DOWN_RETRY`] after a failed one (nothing works
    /// then, so trying again disturbs no call).
    fn reinit_due(&self, live: &Live) -> bool {
        live.last_reinit
            .is_none_or(|t| t.elapsed() >= self.reinit_gap(live))
    }

    fn reinit_gap(&self, live: &Live) -> Duration {
        match live.state {
            State::Up(_) => self.reinit_interval,
            State::Down(_) => self.down_retry(),
        }
    }

    /// Least time between attempts while the module is down.
    fn down_retry(&self) -> Duration {
        self.reinit_interval.min(DOWN_RETRY)
    }

    /// Re-initialises the module after `why`, unless another thread already has since
    /// generation `seen`: closes every session (none is in use: this holds the lock
    /// exclusively), `C_Finalize`, `C_Initialize`, finds the token again, logs in, opens a
    /// new pool and runs the self-test, which must prove what it proved at start. On failure
    /// the module stays down with the reason until the next attempt.
    fn reinit(&self, seen: u64, why: &HsmError) -> Result<(), HsmError> {
        let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
        if live.generation != seen {
            return live.down().map_or(Ok(()), Err);
        }
        let started = Instant::now();
        live.generation += 1;
        crate::metrics::get().reinitialised();
        live.last_reinit = Some(started);
        let old = std::mem::replace(&mut live.state, State::Down(String::new()));
        if let State::Up(old) = old {
            drop(old.pool.drain());
        }
        match self.pkcs11.clone().finalize() {
            // Not initialised: the last attempt's C_Initialize failed.
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiNotInitialized, _)) => {}
            Err(e) => tracing::warn!(error = %e, "C_Finalize failed; initialising again anyway"),
        }
        let result = initialize(&self.pkcs11)
            .map_err(|e| HsmError::pkcs11("C_Initialize", e))
            .and_then(|()| {
                bring_up(
                    &self.pkcs11,
                    &self.raw,
                    &self.setup,
                    &self.pin,
                    &self.pin_refused,
                )
            })
            .and_then(|(up, report)| {
                // Another device (a replaced HSM, an HA member) may wrap differently: only
                // the same proven behaviour is accepted without a restart.
                if report.chosen == self.report.chosen && report.caps.same_behaviour(&self.report.caps) {
                    Ok(up)
                } else {
                    Err(HsmError::SelfTest(format!(
                        "the re-initialised token tests differently from the one at start (now {}: {}; at start {}: {}); restart the daemon to accept it",
                        report.chosen, report.chosen_because, self.report.chosen, self.report.chosen_because
                    )))
                }
            });
        match result {
            Ok(up) => {
                live.state = State::Up(up);
                tracing::warn!(generation = live.generation, after = %why,
                    millis = started.elapsed().as_millis() as u64, "HSM module re-initialised");
                Ok(())
            }
            Err(e) => {
                // After a failed attempt, `why` is that failure: not repeated.
                let after = match why {
                    HsmError::Down(_) => String::new(),
                    cause => format!(" after {cause}"),
                };
                let down = format!(
                    "the HSM module could not be re-initialised{after}: {e}; next attempt in {} s at the earliest",
                    self.down_retry().as_secs()
                );
                live.state = State::Down(down.clone());
                tracing::error!(generation = live.generation, error = %e, after = %why,
                    "HSM module re-initialisation failed");
                Err(HsmError::Down(down))
            }
        }
    }

    fn find_key_in(&self, up: &Up, s: &Session, key: &KeyRef) -> Result<KeyInfo, HsmError> {
        // A URI's token attributes must name this token.
        if let KeyRef::Uri(u) = key {
            let t = &self.report.token;
            if !u
                .token
                .matches(&t.label, &t.manufacturer, &t.serial, &t.model, t.slot_id)
            {
                return Err(HsmError::KeyNotFound(key.to_string()));
            }
        }
        let cache = || up.cache.lock().unwrap_or_else(|p| p.into_inner());
        let cached = cache().get(key).copied();
        if let Some(handle) = cached {
            // A handle can go stale (key deleted, handle reused): check it still names
            // the same key, else fall back to a search.
            if let Ok(Some(info)) = keys::read_info(&self.raw, s, handle)
                && keys::still_matches(&info, key)
            {
                return Ok(info);
            }
            cache().remove(key);
        }
        let info = keys::find(&self.raw, s, key)?;
        cache().insert(key.clone(), info.handle);
        Ok(info)
    }

    /// HMAC-SHA256 of `data` (`CKM_SHA256_HMAC`) with the token's secret key labelled
    /// `label`: the journal's record key (src/journal/seal.rs). The key must be a generic
    /// secret of at least 32 bytes that the token keeps sensitive and never lets out, so
    /// that no one without the token can make a record's MAC.
    pub fn record_mac(&self, label: &str, data: &[u8]) -> Result<[u8; 32], HsmError> {
        let key = KeyRef::Label(label.to_string());
        self.on_session(Some(Instant::now() + SESSION_WAIT), |up, s| {
            let info = self.find_key_in(up, s, &key)?;
            let unfit = |why: &str| {
                HsmError::RecordKey(format!(
                    "the journal's record key {label:?} {why}; it must be a generic secret key of at least 32 bytes, sensitive and not extractable (README, \"The import journal\")"
                ))
            };
            if info.class != cryptoki::object::ObjectClass::SECRET_KEY
                || info.key_type != cryptoki::object::KeyType::GENERIC_SECRET
            {
                return Err(unfit(&format!("is {}", info.describe())));
            }
            if info.extractable || !info.sensitive {
                return Err(unfit("may leave the token (CKA_EXTRACTABLE or not CKA_SENSITIVE)"));
            }
            if info.length < 32 {
                return Err(unfit(&format!("is {} bytes", info.length)));
            }
            let mac = s
                .sign(&cryptoki::mechanism::Mechanism::Sha256Hmac, info.handle, data)
                .map_err(|e| HsmError::pkcs11("C_Sign (CKM_SHA256_HMAC)", e))?;
            let n = mac.len();
            <[u8; 32]>::try_from(mac).map_err(|_| {
                HsmError::RecordKey(format!(
                    "C_Sign (CKM_SHA256_HMAC) with {label:?} gave {n} bytes, not 32"
                ))
            })
        })
    }

    /// Every secret and private key on the token, sorted by label then id, read afresh
    /// (without RSA moduli: a listing keeps only their length). What was read is kept for
    /// later pages of the listing ([`Hsm::list_keys_again`]).
    pub(crate) fn list_keys(&self, deadline: Option<Instant>) -> Result<Vec<KeyInfo>, HsmError> {
        self.on_session(deadline, |up, s| self.listing(up, s, false))
    }

    /// As [`Hsm::list_keys`], for a later page of a listing: the token is searched afresh,
    /// so which keys are listed is current, but what the last listing read of an object
    /// found again is reused and only new objects are read (src/hsm/listing.rs says what
    /// may be stale, and for how long).
    pub(crate) fn list_keys_again(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Vec<KeyInfo>, HsmError> {
        self.on_session(deadline, |up, s| self.listing(up, s, true))
    }

    fn listing(&self, up: &Up, s: &Session, reuse: bool) -> Result<Vec<KeyInfo>, HsmError> {
        let found = keys::search(s)?;
        let raw: Vec<u64> = found.iter().map(ObjectHandle::handle).collect();
        let now = Instant::now();
        let kept = || up.listing.lock().unwrap_or_else(|p| p.into_inner());
        let recalled = if reuse {
            kept()
                .as_ref()
                .and_then(|l| Some((l.read_at(), l.recall(&raw, now)?)))
        } else {
            None
        };
        let (since, mut out, unread) = match recalled {
            Some((at, (known, unread))) => (
                Some(at),
                known,
                unread.into_iter().map(|i| found[i]).collect(),
            ),
            None => (None, Vec::new(), found),
        };
        let read: Vec<(ObjectHandle, Option<KeyInfo>)> = keys::read_all(&self.raw, s, &unread)?
            .into_iter()
            .map(|(h, info)| (h, info.map(|i| KeyInfo { modulus: None, ..i })))
            .collect();
        let entries = read.iter().map(|(h, info)| (h.handle(), info.clone()));
        let mut kept = kept();
        match since {
            // Only into the listing this page started from: another page may have
            // replaced it with a fresher one meanwhile.
            Some(at) => {
                if let Some(l) = kept.as_mut().filter(|l| l.read_at() == at)
                    && !l.update(&raw, entries)
                {
                    *kept = None;
                }
            }
            None => *kept = listing::Listing::new(entries, now),
        }
        drop(kept);
        out.extend(read.into_iter().filter_map(|(_, info)| info));
        keys::sort(&mut out);
        Ok(out)
    }

    /// Wraps the key `key` names for `wk` in `format`, after the export checks: those of
    /// [`Hsm::precheck`], then those of [`Hsm::wrap_if`]. With a deadline, gives up (before
    /// any HSM work) if no session is free in time.
    pub fn wrap(
        &self,
        key: &KeyRef,
        wk: &WrappingKey,
        format: &'static Format,
        deadline: Option<Instant>,
    ) -> Result<Wrapped, HsmError> {
        self.precheck(wk, format)?;
        self.wrap_if(key, wk, format, deadline, |_| Ok(()))
    }

    /// The wrap for a `wk` that passed [`Hsm::precheck`] for `format` (the export core makes
    /// that check before the HSM queue), with `permit` asked about the key found (a caller's
    /// label patterns, for a key named by id) before anything is wrapped. A key the cloud
    /// does not take in the format, or a format this token cannot do, is refused after the
    /// key is looked up and before anything is wrapped. A session-level error gets one retry
    /// on a fresh, logged-in session.
    pub(crate) fn wrap_if(
        &self,
        key: &KeyRef,
        wk: &WrappingKey,
        format: &'static Format,
        deadline: Option<Instant>,
        permit: impl Fn(&KeyInfo) -> Result<(), KeyDenied>,
    ) -> Result<Wrapped, HsmError> {
        self.on_session(deadline, |up, s| {
            self.wrap_on(up, s, key, wk, format, &permit)
        })
    }

    /// The checks of a wrap that need no token: the wrapping key against policy and the
    /// format. Made once per wrap, before any HSM call.
    pub(crate) fn precheck(
        &self,
        wk: &WrappingKey,
        format: &'static Format,
    ) -> Result<(), HsmError> {
        if wk.bits < self.min_wrapping_key_bits {
            return Err(HsmError::Wrap(WrapError::WrappingKey(format!(
                "RSA-{} is below the minimum of {} bits (policy.min_wrapping_key_bits)",
                wk.bits, self.min_wrapping_key_bits
            ))));
        }
        format
            .fits_wrapping_key(wk.bits)
            .map_err(|why| HsmError::Wrap(WrapError::WrappingKey(why)))
    }

    fn wrap_on(
        &self,
        up: &Up,
        s: &Session,
        key: &KeyRef,
        wk: &WrappingKey,
        format: &'static Format,
        permit: &impl Fn(&KeyInfo) -> Result<(), KeyDenied>,
    ) -> Result<Wrapped, HsmError> {
        let info = self.find_key_in(up, s, key)?;
        permit(&info)?;
        // The cloud's rule for the key first, then whether this token can do the format.
        let shape = self.export_check(&info, format)?;
        let mode = self.mode_for(format)?;
        let target = modes::Target {
            handle: info.handle,
            shape,
        };
        let started = Instant::now();
        let material = modes::wrap(&self.raw, s, &self.report.caps, mode, format, target, wk)?;
        let took = started.elapsed();
        crate::metrics::get().hsm_wrap(mode.as_str(), took);
        tracing::debug!(key = %info.name(), shape = %shape.describe(), format = %format, mode = %mode,
            micros = took.as_micros() as u64, "wrapped");
        Ok(Wrapped {
            material,
            format,
            mode,
            shape,
            key: info,
        })
    }

    /// Replaces the leased session with a fresh one, logs in again (see [`login`]) and
    /// forgets cached handles and the last listing.
    fn renew(&self, up: &Up, s: &mut pool::Lease<'_>) -> Result<(), HsmError> {
        let fresh = self
            .pkcs11
            .open_ro_session(up.slot)
            .map_err(|e| HsmError::pkcs11("C_OpenSession", e))?;
        login(
            &self.raw,
            &fresh,
            &self.pin,
            &self.setup.token_label,
            &self.pin_refused,
        )?;
        s.replace(fresh);
        up.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
        *up.listing.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    /// Closes every session, logs out and finalises the module.
    pub fn close(self) {
        let live = self.live.into_inner().unwrap_or_else(|p| p.into_inner());
        if let State::Up(up) = live.state {
            let sessions = up.pool.drain();
            if let Some(s) = sessions.first() {
                let _ = s.logout();
            }
        }
        self.pkcs11.finalize().ok();
    }
}
