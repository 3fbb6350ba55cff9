//! The known-answer self-test: proves, with keys made for the purpose, which wrap
//! mechanisms on this token produce exactly OCI's formats, and so which wrap mode to use.
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

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::Session;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use serde::Serialize;
use zeroize::Zeroizing;

use super::HsmError;
use super::modes::{
    self, AesRole, Capabilities, SessionObject, Target, WrapMode, describe, kwp_name,
};
use super::raw::{
    CK_MECHANISM_TYPE, CKM_AES_KEY_WRAP_KWP, CKM_AES_KEY_WRAP_PAD, CKM_LUNA_AES_KWP,
    CKM_RSA_AES_KEY_WRAP, CKM_RSA_PKCS_OAEP, RawModule, WrapMechanism,
};
use crate::config::WrapModeSetting;
use crate::wrap::soft::OaepHash;
use crate::wrap::verify::{
    Pkcs8Fit, judge_envelope, judge_kwp, judge_oaep_sha256, open_envelope, pkcs8_fit,
};
use crate::wrap::{Algorithm, KeyAlgorithm, KeyShape, WrappingKey};
use cryptoki::error::RvError;

/// KWP candidates, in order of preference.
const KWP_CANDIDATES: [CK_MECHANISM_TYPE; 3] =
    [CKM_AES_KEY_WRAP_KWP, CKM_LUNA_AES_KWP, CKM_AES_KEY_WRAP_PAD];

#[derive(Debug, Clone, Serialize)]
pub struct MechanismFinding {
    pub mechanism: String,
    pub number: String,
    pub listed: bool,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModeFinding {
    pub mode: &'static str,
    pub ok: bool,
    /// Result for an AES-256 target.
    pub aes: String,
    /// Result for an RSA-2048 target.
    pub rsa: String,
    #[serde(skip)]
    pub aes_ok: bool,
    #[serde(skip)]
    pub rsa_ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub token: TokenSummary,
    pub mechanisms: Vec<MechanismFinding>,
    pub kwp_mechanism: Option<String>,
    /// "exact", "zero-padded (N bytes on the probe key)", or why it is unknown.
    pub pkcs8_from_kwp: String,
    pub rsa_oaep_sha256: bool,
    pub modes: Vec<ModeFinding>,
    /// How the self-test learnt its session keys' values: imported, or generated in the
    /// token and learnt through its own wraps.
    pub known_values: String,
    pub wrap_mode_setting: String,
    pub chosen_mode: String,
    #[serde(skip)]
    pub chosen: WrapMode,
    pub chosen_because: String,
    #[serde(skip)]
    pub caps: Capabilities,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenSummary {
    pub label: String,
    pub manufacturer: String,
    pub model: String,
    pub firmware: String,
}

impl MechanismFinding {
    /// A finding for mechanism `name` (`number`), from the result of testing it.
    fn new(
        name: &str,
        number: CK_MECHANISM_TYPE,
        listed: &[CK_MECHANISM_TYPE],
        r: &Result<String, String>,
    ) -> Self {
        let (ok, detail) = match r {
            Ok(s) => (true, s.clone()),
            Err(s) => (false, s.clone()),
        };
        MechanismFinding {
            mechanism: name.into(),
            number: format!("{number:#x}"),
            listed: listed.contains(&number),
            ok,
            detail,
        }
    }
}

/// Software key pair for the test; its PKCS#8 length is not a multiple of 8, so a token
/// that pads shows it.
fn software_key() -> Result<PKey<Private>, HsmError> {
    let e = |e: openssl::error::ErrorStack| HsmError::SelfTest(format!("software RSA key: {e}"));
    for _ in 0..64 {
        let rsa = Rsa::generate(2048).map_err(e)?;
        let key = PKey::from_rsa(rsa).map_err(e)?;
        let der = key.private_key_to_pkcs8().map_err(e)?;
        if der.len() % 8 != 0 {
            return Ok(key);
        }
    }
    Err(HsmError::SelfTest("could not make a probe key".into()))
}

fn import_private<'a>(s: &'a Session, key: &PKey<Private>) -> Result<SessionObject<'a>, HsmError> {
    let rsa = key.rsa().map_err(|e| HsmError::SelfTest(e.to_string()))?;
    let part = |b: Option<&openssl::bn::BigNumRef>| b.map(|b| b.to_vec()).unwrap_or_default();
    let handle = s
        .create_object(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::RSA),
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(true),
            Attribute::Modulus(rsa.n().to_vec()),
            Attribute::PublicExponent(rsa.e().to_vec()),
            Attribute::PrivateExponent(rsa.d().to_vec()),
            Attribute::Prime1(part(rsa.p())),
            Attribute::Prime2(part(rsa.q())),
            Attribute::Exponent1(part(rsa.dmp1())),
            Attribute::Exponent2(part(rsa.dmq1())),
            Attribute::Coefficient(part(rsa.iqmp())),
        ])
        .map_err(|e| HsmError::pkcs11("C_CreateObject (probe private key)", e))?;
    Ok(SessionObject::new(s, handle))
}

fn generate_private(s: &Session) -> Result<(SessionObject<'_>, Vec<u8>), HsmError> {
    let (public, private) = s
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[
                Attribute::Token(false),
                Attribute::ModulusBits(2048u64.into()),
                Attribute::PublicExponent(vec![1, 0, 1]),
            ],
            &[
                Attribute::Token(false),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(true),
            ],
        )
        .map_err(|e| HsmError::pkcs11("C_GenerateKeyPair (probe key)", e))?;
    let _ = s.destroy_object(public);
    let private = SessionObject::new(s, private);
    let modulus = match s.get_attributes(private.handle, &[AttributeType::Modulus]) {
        Ok(attrs) => attrs.into_iter().find_map(|a| match a {
            Attribute::Modulus(m) => Some(m),
            _ => None,
        }),
        Err(_) => None,
    }
    .ok_or_else(|| HsmError::SelfTest("probe key has no readable CKA_MODULUS".into()))?;
    Ok((private, modulus))
}

/// Checks that `blob` (a private key as it came out of a wrap) is PKCS#8 of the key with
/// `modulus`, and says whether it is exact or zero-padded.
fn judge_private(blob: &[u8], modulus: &[u8]) -> Result<Pkcs8Fit, String> {
    let fit = pkcs8_fit(blob)?;
    let der_len = match fit {
        Pkcs8Fit::Exact => blob.len(),
        Pkcs8Fit::ZeroPadded(n) => blob.len() - n,
    };
    let key = PKey::private_key_from_pkcs8(&blob[..der_len])
        .map_err(|_| "the unwrapped private key is not PKCS#8".to_string())?;
    let n = key
        .rsa()
        .map_err(|_| "the unwrapped key is not RSA".to_string())?
        .n()
        .to_vec();
    if n != modulus {
        return Err("the unwrapped private key is a different key".into());
    }
    Ok(fit)
}

fn fit_text(fit: Pkcs8Fit) -> String {
    match fit {
        Pkcs8Fit::Exact => "exact".into(),
        Pkcs8Fit::ZeroPadded(n) => format!("zero-padded ({n} bytes on the probe key)"),
    }
}

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

const OAEP_NAME: &str = "CKM_RSA_PKCS_OAEP (SHA-256)";

/// Runs the self-test on session `s` and picks the mode for `setting`.
pub fn run(
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
    probe_native(&b, &known.t_obj, &t_val, &mut caps, &mut mechanisms);
    let probe = probe_private(s, &b.sw_key);
    let pkcs8_from_kwp = probe_pkcs8(&b, &probe, (&known.kek_obj, &kek), &mut caps);
    let targets = Targets {
        aes: (&known.t_obj, &t_val),
        rsa: &probe,
    };
    let found: Vec<ModeFinding> = WrapMode::ALL
        .into_iter()
        .map(|mode| {
            match unavailable(
                mode,
                &caps,
                allow_hybrid,
                known.refused.as_deref(),
                &mechanisms,
            ) {
                Some(why) => ModeFinding::rejected(mode, why),
                None => trial(&b, &caps, mode, &targets),
            }
        })
        .collect();
    let (chosen, because) = choose(&found, setting)?;
    Ok(Report {
        token,
        mechanisms,
        kwp_mechanism: caps.kwp.map(|n| describe(WrapMechanism::Kwp(n))),
        pkcs8_from_kwp,
        rsa_oaep_sha256: caps.oaep_sha256,
        modes: found,
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
                .and_then(|out| judge_kwp(&kek[..], &out, &t_val[..]))
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
            .call(WrapMechanism::RsaOaepSha256, &b.wk_obj, &known.t_obj)
            .and_then(|out| judge_oaep_sha256(&b.sw_key, &out, &t_val[..]))
            .map(|()| "OAEP SHA-256 / MGF1-SHA-256 verified".to_string()),
        (Some(_), Ok(_)) if caps.kwp.is_some() => Ok(
            "OAEP SHA-256 / MGF1-SHA-256 verified (T's value confirmed by RFC 5649)".to_string(),
        ),
        (Some(_), Ok(_)) => Err(
            "OAEP-SHA256 decrypts, but no RFC 5649 route confirmed the value it gave".to_string(),
        ),
        (_, Err(e)) => Err(e.clone()),
    };
    caps.oaep_sha256 = r.is_ok();
    mechanisms.push(MechanismFinding::new(
        OAEP_NAME,
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

/// One-shot `CKM_RSA_AES_KEY_WRAP` of T.
fn probe_native(
    b: &Bench<'_>,
    t_obj: &SessionObject<'_>,
    t_val: &[u8],
    caps: &mut Capabilities,
    mechanisms: &mut Vec<MechanismFinding>,
) {
    let r = b
        .call(WrapMechanism::RsaAesKeyWrapSha256, &b.wk_obj, t_obj)
        .and_then(|out| judge_envelope(&b.sw_key, &out, t_val))
        .map(|()| "RSA_OAEP_AES_SHA256 layout verified".to_string());
    caps.native = r.is_ok();
    mechanisms.push(MechanismFinding::new(
        "CKM_RSA_AES_KEY_WRAP",
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
    if caps.native {
        caps.pkcs8_native = b
            .call(WrapMechanism::RsaAesKeyWrapSha256, &b.wk_obj, p_obj)
            .and_then(|out| open_envelope(&b.sw_key, &out))
            .and_then(|blob| judge_private(&blob, modulus))
            .ok();
    }
    text
}

/// Why `mode` cannot be tried on this token, if it cannot.
fn unavailable(
    mode: WrapMode,
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
        WrapMode::HsmNative if !caps.native => Some(format!(
            "needs CKM_RSA_AES_KEY_WRAP (0x1054) with OAEP SHA-256: {}",
            finding_of("CKM_RSA_AES_KEY_WRAP")
        )),
        WrapMode::HsmTwoStep if caps.kwp.is_none() => Some(no_kwp()),
        WrapMode::HsmTwoStep if !caps.oaep_sha256 => Some(format!(
            "needs CKM_RSA_PKCS_OAEP with SHA-256 in the token: {}",
            finding_of(OAEP_NAME)
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

/// `mode` end to end, through the same code that serves real requests, on T and on the
/// probe private key; only exact output counts.
fn trial(b: &Bench<'_>, caps: &Capabilities, mode: WrapMode, t: &Targets<'_, '_>) -> ModeFinding {
    let wrap = |handle, shape| {
        modes::wrap(
            b.raw,
            b.s,
            caps,
            mode,
            Algorithm::RsaOaepAesSha256,
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
        .and_then(|out| judge_envelope(&b.sw_key, &out, t_val))
        .map(|()| "exact".to_string());
    let rsa = match t.rsa {
        Ok((p_obj, modulus)) => {
            let rsa_shape = KeyShape {
                algorithm: KeyAlgorithm::Rsa,
                length: 256,
            };
            wrap(p_obj.handle, rsa_shape)
                .and_then(|out| open_envelope(&b.sw_key, &out))
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

impl ModeFinding {
    /// A mode that could not be tried, and why.
    fn rejected(mode: WrapMode, why: String) -> Self {
        ModeFinding {
            mode: mode.as_str(),
            ok: false,
            aes: why.clone(),
            rsa: why,
            aes_ok: false,
            rsa_ok: false,
        }
    }
}

/// The self-test's AES-256 target T and KEK, in the token, with their values where they
/// could be learnt.
struct KnownKeys<'a> {
    t_obj: SessionObject<'a>,
    t_val: Result<Zeroizing<Vec<u8>>, String>,
    kek_obj: SessionObject<'a>,
    kek: Result<Zeroizing<Vec<u8>>, String>,
    /// Why the token would not take them from a value (`None`: it did).
    refused: Option<String>,
}

/// T and the KEK: created from known values where the token allows it, else generated in
/// the token and their values learnt through its OAEP-SHA256 wraps to the software key
/// (whose decryption fails for any other hash).
fn known_keys<'a>(
    s: &'a Session,
    call: &impl Fn(WrapMechanism, &SessionObject<'_>, &SessionObject<'_>) -> Result<Vec<u8>, String>,
    wk_obj: &SessionObject<'_>,
    sw_key: &PKey<Private>,
) -> Result<KnownKeys<'a>, HsmError> {
    let random = || -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let mut v = Zeroizing::new(vec![0u8; 32]);
        getrandom::fill(&mut v[..]).map_err(|e| HsmError::SelfTest(e.to_string()))?;
        Ok(v)
    };
    let t_val = random()?;
    match modes::session_aes(s, &t_val[..], AesRole::Target) {
        Ok(t_obj) => {
            let kek = random()?;
            let kek_obj = modes::session_aes(s, &kek[..], AesRole::Wrapping)?;
            Ok(KnownKeys {
                t_obj,
                t_val: Ok(t_val),
                kek_obj,
                kek: Ok(kek),
                refused: None,
            })
        }
        Err(e) => {
            let refused = format!(
                "C_CreateObject: {}",
                e.rv().map_or(e.to_string(), super::ckr_name)
            );
            let t_obj = modes::session_aes_generate(s)?;
            let kek_obj = modes::session_aes_generate(s)?;
            let learn = |obj: &SessionObject<'_>| {
                call(WrapMechanism::RsaOaepSha256, wk_obj, obj)
                    .and_then(|out| {
                        crate::wrap::soft::oaep_decrypt(sw_key, OaepHash::Sha256, &out).map_err(
                            |_| {
                                "the token's OAEP wrap does not open as OAEP-SHA256 / MGF1-SHA-256"
                                    .to_string()
                            },
                        )
                    })
                    .and_then(|v| {
                        if v.len() == 32 {
                            Ok(v)
                        } else {
                            Err(format!(
                                "OAEP-SHA256 opens to {} bytes, not an AES-256 key",
                                v.len()
                            ))
                        }
                    })
            };
            Ok(KnownKeys {
                t_val: learn(&t_obj),
                kek: learn(&kek_obj),
                t_obj,
                kek_obj,
                refused: Some(refused),
            })
        }
    }
}

/// A private key in the token to probe PKCS#8 handling: the software key imported, or,
/// where the token refuses private-key import, one generated inside it.
fn probe_private<'a>(
    s: &'a Session,
    sw_key: &PKey<Private>,
) -> Result<(SessionObject<'a>, Vec<u8>), String> {
    match import_private(s, sw_key) {
        Ok(obj) => {
            let n = sw_key.rsa().map_err(|e| e.to_string())?.n().to_vec();
            Ok((obj, n))
        }
        Err(import_err) => generate_private(s).map_err(|e| format!("{import_err}; and {e}")),
    }
}

fn choose(found: &[ModeFinding], setting: WrapModeSetting) -> Result<(WrapMode, String), HsmError> {
    let finding = |m: WrapMode| {
        found
            .iter()
            .find(|f| f.mode == m.as_str())
            .expect("all modes tested")
    };
    let forced = match setting {
        WrapModeSetting::Auto => None,
        WrapModeSetting::HsmNative => Some(WrapMode::HsmNative),
        WrapModeSetting::HsmTwoStep => Some(WrapMode::HsmTwoStep),
        WrapModeSetting::Hybrid => Some(WrapMode::Hybrid),
    };
    if let Some(m) = forced {
        let f = finding(m);
        if !f.aes_ok {
            return Err(HsmError::SelfTest(format!(
                "wrap_mode = \"{m}\" is configured, but this token cannot do it: {}",
                f.aes
            )));
        }
        let because = if f.rsa_ok {
            "configured".to_string()
        } else {
            format!("configured; RSA keys will be refused: {}", f.rsa)
        };
        return Ok((m, because));
    }
    if let Some(m) = WrapMode::ALL.into_iter().find(|&m| finding(m).ok) {
        return Ok((m, "first mode, in the order hsm-native, hsm-two-step, hybrid, that passed for AES and RSA".into()));
    }
    if let Some(m) = WrapMode::ALL.into_iter().find(|&m| finding(m).aes_ok) {
        let why = format!(
            "no mode passed for RSA; RSA keys will be refused: {}",
            finding(m).rsa
        );
        return Ok((m, why));
    }
    let reasons: Vec<String> = found
        .iter()
        .map(|f| format!("{}: {}", f.mode, f.aes))
        .collect();
    Err(HsmError::SelfTest(format!(
        "no wrap mode works on this token ({})",
        reasons.join("; ")
    )))
}

fn setting_name(s: WrapModeSetting) -> &'static str {
    match s {
        WrapModeSetting::Auto => "auto",
        WrapModeSetting::HsmNative => "hsm-native",
        WrapModeSetting::HsmTwoStep => "hsm-two-step",
        WrapModeSetting::Hybrid => "hybrid",
    }
}

impl Report {
    /// The human form printed by `hsm-bridge selftest`.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "token: {} ({} {}, firmware {})\nmechanisms:\n",
            self.token.label, self.token.manufacturer, self.token.model, self.token.firmware
        );
        for m in &self.mechanisms {
            out += &format!(
                "  {:<28} {:<11} {:<10} {}: {}\n",
                m.mechanism,
                m.number,
                if m.listed { "listed" } else { "not listed" },
                if m.ok { "ok" } else { "rejected" },
                m.detail
            );
        }
        out += &format!("session keys: {}\n", self.known_values);
        out += &format!(
            "RFC 5649 mechanism: {}\nPKCS#8 from RFC 5649 wrap: {}\nRSA_OAEP_SHA256 (AES keys): {}\nmodes:\n",
            self.kwp_mechanism.as_deref().unwrap_or("none"),
            self.pkcs8_from_kwp,
            if self.rsa_oaep_sha256 {
                "available"
            } else {
                "unavailable: the token does not do OAEP with SHA-256"
            }
        );
        for f in &self.modes {
            out += &if f.aes_ok {
                format!(
                    "  {:<13} {:<8} AES: {}; RSA: {}\n",
                    f.mode,
                    if f.ok { "ok" } else { "partial" },
                    f.aes,
                    f.rsa
                )
            } else {
                format!("  {:<13} rejected {}\n", f.mode, f.aes)
            };
        }
        out += &format!(
            "chosen: {} (wrap_mode = {}; {})\n",
            self.chosen_mode, self.wrap_mode_setting, self.chosen_because
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(mode: WrapMode, aes: bool, rsa: bool) -> ModeFinding {
        ModeFinding {
            mode: mode.as_str(),
            ok: aes && rsa,
            aes: if aes { "exact".into() } else { "no".into() },
            rsa: if rsa { "exact".into() } else { "pads".into() },
            aes_ok: aes,
            rsa_ok: rsa,
        }
    }

    #[test]
    fn auto_prefers_hsm_modes_that_do_everything() {
        let f = [
            finding(WrapMode::HsmNative, false, false),
            finding(WrapMode::HsmTwoStep, true, true),
            finding(WrapMode::Hybrid, true, true),
        ];
        assert_eq!(
            choose(&f, WrapModeSetting::Auto).unwrap().0,
            WrapMode::HsmTwoStep
        );
        // A token that pads PKCS#8: two-step cannot do RSA, hybrid can.
        let f = [
            finding(WrapMode::HsmNative, false, false),
            finding(WrapMode::HsmTwoStep, true, false),
            finding(WrapMode::Hybrid, true, true),
        ];
        assert_eq!(
            choose(&f, WrapModeSetting::Auto).unwrap().0,
            WrapMode::Hybrid
        );
        // Same, hybrid forbidden: two-step, with RSA refused and said so.
        let f = [
            finding(WrapMode::HsmNative, false, false),
            finding(WrapMode::HsmTwoStep, true, false),
            finding(WrapMode::Hybrid, false, true),
        ];
        let (m, why) = choose(&f, WrapModeSetting::Auto).unwrap();
        assert_eq!(m, WrapMode::HsmTwoStep);
        assert!(why.contains("RSA keys will be refused"), "{why}");
    }

    #[test]
    fn forced_mode_must_work() {
        let f = [
            finding(WrapMode::HsmNative, false, false),
            finding(WrapMode::HsmTwoStep, false, false),
            finding(WrapMode::Hybrid, true, true),
        ];
        let e = choose(&f, WrapModeSetting::HsmTwoStep)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hsm-two-step") && e.contains("cannot"), "{e}");
        assert_eq!(
            choose(&f, WrapModeSetting::Hybrid).unwrap().0,
            WrapMode::Hybrid
        );
        let none = [
            finding(WrapMode::HsmNative, false, false),
            finding(WrapMode::HsmTwoStep, false, false),
            finding(WrapMode::Hybrid, false, false),
        ];
        assert!(choose(&none, WrapModeSetting::Auto).is_err());
    }
}
