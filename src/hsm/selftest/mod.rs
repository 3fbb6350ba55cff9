//! The known-answer self-test: proves, with keys made for the purpose, which wrap
//! mechanisms on this token produce exactly the clouds' formats (src/wrap/format.rs), for
//! each OAEP hash, and so which wrap mode each format uses.
//!
//! It makes a throw-away RSA-2048 key pair in software, imports the public half as a
//! session key, wraps session keys whose values it knows with each candidate mechanism,
//! and opens the result in software (OpenSSL for OAEP, `aes-kw` for RFC 5649). A mechanism
//! counts only if the bytes are exactly right; a token's name or listed mechanisms decide
//! nothing. All objects it creates are session objects, destroyed when it ends.
//!
//! The session keys' values are known without giving the token a plaintext secret where
//! the token refuses one (a Luna, any FIPS 140 Level 3 token: `C_CreateObject` of a secret
//! key is `CKR_TEMPLATE_INCONSISTENT`): there the target T and the KEK are generated in the
//! token, their values learnt through the token's own OAEP-SHA256 wraps to the software key,
//! and T confirmed by a second, independent route, RFC 5649 under the KEK. A token whose
//! OAEP is not SHA-256 cannot be opened; a KWP that is not RFC 5649, or routes that disagree,
//! reject the mechanism. Hybrid mode, which creates K from the host, is impossible there.

use cryptoki::error::RvError;
use cryptoki::session::Session;
use openssl::pkey::{PKey, Private};
use zeroize::Zeroizing;

use super::HsmError;
use super::modes::{self, Capabilities, SessionObject, Target, WrapMode, describe, kwp_name};
use super::raw::{
    CK_MECHANISM_TYPE, CKM_AES_KEY_WRAP_KWP, CKM_AES_KEY_WRAP_PAD, CKM_LUNA_AES_KWP,
    CKM_RSA_AES_KEY_WRAP, CKM_RSA_PKCS_OAEP, RawModule, WrapMechanism,
};
use crate::config::WrapModeSetting;
use crate::wrap::soft::OaepHash;
use crate::wrap::verify::{Pkcs8Fit, judge_envelope, judge_kwp, judge_oaep, open_envelope};
use crate::wrap::{Format, KeyAlgorithm, KeyShape, Layout, WrappingKey};

/// KWP candidates, in order of preference.
const KWP_CANDIDATES: [CK_MECHANISM_TYPE; 3] =
    [CKM_AES_KEY_WRAP_KWP, CKM_LUNA_AES_KWP, CKM_AES_KEY_WRAP_PAD];

mod keys;
mod report;

use keys::{KnownKeys, fit_text, judge_private, known_keys, probe_private, software_key};
pub(crate) use report::{MechanismFinding, ModeFinding, Report, TokenSummary};
use report::{choose, setting_name};

/// What the probes work with: the session, the throw-away software key pair and its public
/// half in the token, and the mechanisms the slot lists.
struct Bench<'a> {
    raw: &'a RawModule,
    s: &'a Session,
    listed: &'a [CK_MECHANISM_TYPE],
    sw_key: PKey<Private>,
    wk: WrappingKey,
    wk_obj: SessionObject<'a>,
}

impl<'a> Bench<'a> {
    fn new(
        raw: &'a RawModule,
        s: &'a Session,
        listed: &'a [CK_MECHANISM_TYPE],
    ) -> Result<Self, HsmError> {
        let sw_key = software_key()?;
        let sw_pem = sw_key
            .public_key_to_pem()
            .map_err(|e| HsmError::SelfTest(e.to_string()))?;
        let wk = WrappingKey::from_pem(&sw_pem, 2048)?;
        let wk_obj = modes::import_wrapping_key(s, &wk)?;
        Ok(Bench {
            raw,
            s,
            listed,
            sw_key,
            wk,
            wk_obj,
        })
    }

    /// One `C_WrapKey` of `key` under `wrapping` with `mech`.
    fn call(
        &self,
        mech: WrapMechanism,
        wrapping: &SessionObject<'_>,
        key: &SessionObject<'_>,
    ) -> Result<Vec<u8>, String> {
        self.raw
            .wrap_key(
                self.s.handle(),
                mech,
                wrapping.handle.handle(),
                key.handle.handle(),
                4096,
            )
            .map_err(|rv| format!("C_WrapKey: {}", super::ckr_name(rv)))
    }
}

/// The report's name for OAEP with `hash` in the token.
fn oaep_name(hash: OaepHash) -> &'static str {
    match hash {
        OaepHash::Sha256 => "CKM_RSA_PKCS_OAEP (SHA-256)",
        OaepHash::Sha1 => "CKM_RSA_PKCS_OAEP (SHA-1)",
    }
}

/// The report's name for `CKM_RSA_AES_KEY_WRAP` with `hash`.
fn native_name(hash: OaepHash) -> &'static str {
    match hash {
        OaepHash::Sha256 => "CKM_RSA_AES_KEY_WRAP (SHA-256)",
        OaepHash::Sha1 => "CKM_RSA_AES_KEY_WRAP (SHA-1)",
    }
}

/// Runs the self-test on session `s` and picks the mode for `setting`.
pub(crate) fn run(
    raw: &RawModule,
    s: &Session,
    listed: &[CK_MECHANISM_TYPE],
    token: TokenSummary,
    setting: WrapModeSetting,
    allow_hybrid: bool,
) -> Result<Report, HsmError> {
    let b = Bench::new(raw, s, listed)?;
    let known = known_keys(s, &|m, w, k| b.call(m, w, k), &b.wk_obj, &b.sw_key)?;
    let mut caps = Capabilities {
        plaintext_keys: known.refused.is_none(),
        ..Capabilities::default()
    };
    let mut mechanisms = Vec::new();
    probe_kwp(&b, &known, &mut caps, &mut mechanisms);
    probe_oaep(&b, &known, &mut caps, &mut mechanisms);
    let (t_val, kek) = learnt(&known)?;
    probe_oaep_sha1(&b, &known, &t_val, &mut caps, &mut mechanisms);
    for hash in OaepHash::ALL {
        probe_native(&b, hash, &known.t_obj, &t_val, &mut caps, &mut mechanisms);
    }
    let probe = probe_private(s, &b.sw_key);
    let pkcs8_from_kwp = probe_pkcs8(&b, &probe, (&known.kek_obj, &kek), &mut caps);
    let targets = Targets {
        aes: (&known.t_obj, &t_val),
        rsa: &probe,
    };
    let trials = |hash: OaepHash| -> Vec<ModeFinding> {
        WrapMode::ALL
            .into_iter()
            .map(|mode| {
                match unavailable(
                    mode,
                    hash,
                    &caps,
                    allow_hybrid,
                    known.refused.as_deref(),
                    &mechanisms,
                ) {
                    Some(why) => ModeFinding::rejected(mode, why),
                    None => trial(&b, &caps, mode, hash, &targets),
                }
            })
            .collect()
    };
    let found = trials(OaepHash::Sha256);
    let found_sha1 = trials(OaepHash::Sha1);
    let (chosen, because) = choose(&found, setting)?;
    let chosen_sha1 = choose(&found_sha1, setting).map_err(|e| match e {
        HsmError::SelfTest(why) => why,
        other => other.to_string(),
    });
    let formats = report::formats(&caps, (chosen, &because), &chosen_sha1);
    Ok(Report {
        token,
        mechanisms,
        kwp_mechanism: caps.kwp.map(|n| describe(WrapMechanism::Kwp(n))),
        pkcs8_from_kwp,
        rsa_oaep_sha256: caps.oaep.sha256,
        rsa_oaep_sha1: caps.oaep.sha1,
        modes: found,
        modes_sha1: found_sha1,
        formats,
        known_values: match &known.refused {
            None => "imported (the token takes secret keys from a value)".into(),
            Some(why) => format!(
                "generated in the token, learnt through its own OAEP-SHA256 wraps and confirmed by RFC 5649 (it refuses secret keys from a value: {why})"
            ),
        },
        wrap_mode_setting: setting_name(setting).into(),
        chosen_mode: chosen.as_str().into(),
        chosen,
        chosen_because: because,
        chosen_sha1,
        caps,
    })
}

/// RFC 5649 under each candidate number, with the known KEK. (With generated keys, this is
/// the second route to T: it must agree with what OAEP said.)
fn probe_kwp(
    b: &Bench<'_>,
    known: &KnownKeys<'_>,
    caps: &mut Capabilities,
    mechanisms: &mut Vec<MechanismFinding>,
) {
    for n in KWP_CANDIDATES {
        let r = match (&known.t_val, &known.kek) {
            (Ok(t_val), Ok(kek)) => b
                .call(WrapMechanism::Kwp(n), &known.kek_obj, &known.t_obj)
                .and_then(|out| judge_kwp(&kek[..], &out, &t_val[..]).map_err(|e| e.to_string()))
                .map(|()| match known.refused {
                    None => "RFC 5649 verified".to_string(),
                    Some(_) => {
                        "RFC 5649 verified (and T's value learnt by OAEP confirmed)".to_string()
                    }
                }),
            _ => Err("not tested: the keys' values could not be learnt without OAEP-SHA256".into()),
        };
        if r.is_ok() && caps.kwp.is_none() {
            caps.kwp = Some(n);
        }
        mechanisms.push(MechanismFinding::new(kwp_name(n), n, b.listed, &r));
    }
}

/// OAEP with SHA-256 in the token. With generated keys it counts only where a second route
/// (RFC 5649 under the KEK, [`probe_kwp`]) confirmed the value it gave for T.
fn probe_oaep(
    b: &Bench<'_>,
    known: &KnownKeys<'_>,
    caps: &mut Capabilities,
    mechanisms: &mut Vec<MechanismFinding>,
) {
    let r = match (&known.refused, &known.t_val) {
        (None, Ok(t_val)) => b
            .call(
                WrapMechanism::RsaOaep(OaepHash::Sha256),
                &b.wk_obj,
                &known.t_obj,
            )
            .and_then(|out| {
                judge_oaep(&b.sw_key, OaepHash::Sha256, &out, &t_val[..]).map_err(|e| e.to_string())
            })
            .map(|()| "OAEP SHA-256 / MGF1-SHA-256 verified".to_string()),
        (Some(_), Ok(_)) if caps.kwp.is_some() => Ok(
            "OAEP SHA-256 / MGF1-SHA-256 verified (T's value confirmed by RFC 5649)".to_string(),
        ),
        (Some(_), Ok(_)) => Err(
            "OAEP-SHA256 decrypts, but no RFC 5649 route confirmed the value it gave".to_string(),
        ),
        (_, Err(e)) => Err(e.clone()),
    };
    caps.oaep.sha256 = r.is_ok();
    mechanisms.push(MechanismFinding::new(
        oaep_name(OaepHash::Sha256),
        CKM_RSA_PKCS_OAEP,
        b.listed,
        &r,
    ));
}

/// OAEP with SHA-1 in the token (AWS's and Google Cloud's SHA-1 formats, Azure's only one),
/// judged against T's value: known from the start, or learnt and confirmed by two routes.
fn probe_oaep_sha1(
    b: &Bench<'_>,
    known: &KnownKeys<'_>,
    t_val: &[u8],
    caps: &mut Capabilities,
    mechanisms: &mut Vec<MechanismFinding>,
) {
    let r = if known.refused.is_some() && caps.kwp.is_none() {
        Err("not tested: T's value was learnt by OAEP-SHA256 alone, with no RFC 5649 route to confirm it".to_string())
    } else {
        b.call(
            WrapMechanism::RsaOaep(OaepHash::Sha1),
            &b.wk_obj,
            &known.t_obj,
        )
        .and_then(|out| {
            judge_oaep(&b.sw_key, OaepHash::Sha1, &out, t_val).map_err(|e| e.to_string())
        })
        .map(|()| "OAEP SHA-1 / MGF1-SHA-1 verified".to_string())
    };
    caps.oaep.sha1 = r.is_ok();
    mechanisms.push(MechanismFinding::new(
        oaep_name(OaepHash::Sha1),
        CKM_RSA_PKCS_OAEP,
        b.listed,
        &r,
    ));
}

/// T's and the KEK's values, or why no mode can be proven: a token that takes no plaintext
/// key and does no OAEP-SHA256 leaves the self-test nothing to open.
#[allow(clippy::type_complexity)]
fn learnt(known: &KnownKeys<'_>) -> Result<(Zeroizing<Vec<u8>>, Zeroizing<Vec<u8>>), HsmError> {
    if let (Some(refused), Err(oaep)) = (&known.refused, &known.t_val) {
        return Err(HsmError::SelfTest(format!(
            "no wrap mode is possible on this token: it refuses secret keys created from a value ({refused}), so hybrid mode cannot run and the self-test cannot import known keys, and it does not do RSA-OAEP with SHA-256 itself ({oaep}), so neither hsm-two-step nor the self-test's own check can run"
        )));
    }
    let t_val = known.t_val.clone().map_err(HsmError::SelfTest)?;
    let kek = known.kek.clone().map_err(HsmError::SelfTest)?;
    Ok((t_val, kek))
}

/// One-shot `CKM_RSA_AES_KEY_WRAP` of T with OAEP `hash`.
fn probe_native(
    b: &Bench<'_>,
    hash: OaepHash,
    t_obj: &SessionObject<'_>,
    t_val: &[u8],
    caps: &mut Capabilities,
    mechanisms: &mut Vec<MechanismFinding>,
) {
    let r = b
        .call(WrapMechanism::RsaAesKeyWrap(hash), &b.wk_obj, t_obj)
        .and_then(|out| judge_envelope(&b.sw_key, hash, &out, t_val).map_err(|e| e.to_string()))
        .map(|()| format!("hybrid layout with OAEP {} verified", hash.as_str()));
    caps.native.set(hash, r.is_ok());
    mechanisms.push(MechanismFinding::new(
        native_name(hash),
        CKM_RSA_AES_KEY_WRAP,
        b.listed,
        &r,
    ));
}

/// How private keys come out of the proven KWP (and of 0x1054), on the probe private key;
/// a refusal of the extractable probe key means the partition forbids private-key wrapping.
/// Returns the report's line for it.
fn probe_pkcs8(
    b: &Bench<'_>,
    probe: &Result<(SessionObject<'_>, Vec<u8>), String>,
    (kek_obj, kek): (&SessionObject<'_>, &[u8]),
    caps: &mut Capabilities,
) -> String {
    let (p_obj, modulus) = match probe {
        Ok(p) => p,
        Err(e) => return format!("not tested: {e}"),
    };
    let mut text = String::from("not tested: no RFC 5649 mechanism");
    if let Some(n) = caps.kwp {
        let wrapped = b.raw.wrap_key(
            b.s.handle(),
            WrapMechanism::Kwp(n),
            kek_obj.handle.handle(),
            p_obj.handle.handle(),
            4096,
        );
        if let Err(
            rv @ (RvError::KeyNotWrappable
            | RvError::KeyFunctionNotPermitted
            | RvError::KeyUnextractable),
        ) = &wrapped
        {
            // The probe key is extractable: the partition forbids private-key wrapping.
            caps.private_wrap_refused = Some(super::ckr_name(*rv));
        }
        let r = wrapped
            .map_err(|rv| format!("C_WrapKey: {}", super::ckr_name(rv)))
            .and_then(|out| {
                let blob = crate::wrap::soft::kwp_unwrap(kek, &out).map_err(|e| e.to_string())?;
                judge_private(&blob, modulus)
            });
        caps.pkcs8_kwp = r.as_ref().ok().copied();
        text = match r {
            Ok(fit) => fit_text(fit),
            Err(e) => format!("broken: {e}"),
        };
    }
    // The PKCS#8 inside does not depend on the OAEP hash: either proven hash will do.
    if let Some(hash) = OaepHash::ALL.into_iter().find(|&h| caps.native.get(h)) {
        caps.pkcs8_native = b
            .call(WrapMechanism::RsaAesKeyWrap(hash), &b.wk_obj, p_obj)
            .and_then(|out| open_envelope(&b.sw_key, hash, &out).map_err(|e| e.to_string()))
            .and_then(|blob| judge_private(&blob, modulus))
            .ok();
    }
    text
}

/// Why `mode` cannot be tried with OAEP `hash` on this token, if it cannot.
fn unavailable(
    mode: WrapMode,
    hash: OaepHash,
    caps: &Capabilities,
    allow_hybrid: bool,
    refused: Option<&str>,
    mechanisms: &[MechanismFinding],
) -> Option<String> {
    let finding_of = |name: &str| -> String {
        mechanisms
            .iter()
            .find(|m| m.mechanism == name)
            .map(|m| m.detail.clone())
            .unwrap_or_default()
    };
    let no_kwp = || {
        "needs an RFC 5649 mechanism, and none of 0x210b, 0x80000171, 0x210a wraps exactly"
            .to_string()
    };
    match mode {
        WrapMode::HsmNative if !caps.native.get(hash) => Some(format!(
            "needs CKM_RSA_AES_KEY_WRAP (0x1054) with OAEP {}: {}",
            hash.as_str(),
            finding_of(native_name(hash))
        )),
        WrapMode::HsmTwoStep if caps.kwp.is_none() => Some(no_kwp()),
        WrapMode::HsmTwoStep if !caps.oaep.get(hash) => Some(format!(
            "needs CKM_RSA_PKCS_OAEP with {} in the token: {}",
            hash.as_str(),
            finding_of(oaep_name(hash))
        )),
        WrapMode::Hybrid if !allow_hybrid => {
            Some("forbidden by policy.allow_hybrid = false".into())
        }
        WrapMode::Hybrid if !caps.plaintext_keys => Some(format!(
            "needs the token to take the one-time key K from the host, and it refuses secret keys created from a value ({})",
            refused.unwrap_or("")
        )),
        WrapMode::Hybrid if caps.kwp.is_none() => Some(no_kwp()),
        _ => None,
    }
}

/// The keys a mode is tried on: T (with its value) and the probe private key (with its
/// modulus), if there is one.
struct Targets<'p, 'a> {
    aes: (&'p SessionObject<'a>, &'p [u8]),
    rsa: &'p Result<(SessionObject<'a>, Vec<u8>), String>,
}

/// `mode` with OAEP `hash` end to end, through the same code that serves real requests, on
/// T and on the probe private key; only exact output counts.
fn trial(
    b: &Bench<'_>,
    caps: &Capabilities,
    mode: WrapMode,
    hash: OaepHash,
    t: &Targets<'_, '_>,
) -> ModeFinding {
    let format = Format::hybrid(hash);
    debug_assert_eq!(format.layout, Layout::Hybrid);
    let wrap = |handle, shape| {
        modes::wrap(
            b.raw,
            b.s,
            caps,
            mode,
            format,
            Target { handle, shape },
            &b.wk,
        )
        .map_err(|e| e.to_string())
    };
    let (t_obj, t_val) = t.aes;
    let aes_shape = KeyShape {
        algorithm: KeyAlgorithm::Aes,
        length: 32,
    };
    let aes = wrap(t_obj.handle, aes_shape)
        .and_then(|out| judge_envelope(&b.sw_key, hash, &out, t_val).map_err(|e| e.to_string()))
        .map(|()| "exact".to_string());
    let rsa = match t.rsa {
        Ok((p_obj, modulus)) => {
            let rsa_shape = KeyShape {
                algorithm: KeyAlgorithm::Rsa,
                length: 256,
            };
            wrap(p_obj.handle, rsa_shape)
                .and_then(|out| open_envelope(&b.sw_key, hash, &out).map_err(|e| e.to_string()))
                .and_then(|blob| judge_private(&blob, modulus))
                .and_then(|fit| match fit {
                    Pkcs8Fit::Exact => Ok(match (mode, caps.pkcs8_kwp) {
                        (WrapMode::Hybrid, Some(Pkcs8Fit::ZeroPadded(_))) => {
                            "exact, after stripping the token's PKCS#8 padding".to_string()
                        }
                        _ => "exact".to_string(),
                    }),
                    Pkcs8Fit::ZeroPadded(n) => Err(format!("PKCS#8 carries {n} padding bytes")),
                })
        }
        Err(e) => Err(format!("not tested: {e}")),
    };
    ModeFinding {
        mode: mode.as_str(),
        ok: aes.is_ok() && rsa.is_ok(),
        aes_ok: aes.is_ok(),
        rsa_ok: rsa.is_ok(),
        aes: aes.unwrap_or_else(|e| e),
        rsa: rsa.unwrap_or_else(|e| e),
    }
}
