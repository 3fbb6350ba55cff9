//! The self-test's keys in the token: the probe RSA key (imported, or generated where the
//! token takes no private key from a value, and judged against its own modulus), and the
//! AES target and KEK whose values the self-test knows, or learns through the token's own
//! OAEP-SHA256 wraps.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::Session;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use zeroize::Zeroizing;

use super::super::HsmError;
use super::super::modes::{self, AesRole, SessionObject};
use super::super::raw::WrapMechanism;
use crate::wrap::soft::OaepHash;
use crate::wrap::verify::{Pkcs8Fit, pkcs8_fit};

/// Software key pair for the test; its PKCS#8 length is not a multiple of 8, so a token
/// that pads shows it.
pub(super) fn software_key() -> Result<PKey<Private>, HsmError> {
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
pub(super) fn judge_private(blob: &[u8], modulus: &[u8]) -> Result<Pkcs8Fit, String> {
    let fit = pkcs8_fit(blob).map_err(|e| e.to_string())?;
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

pub(super) fn fit_text(fit: Pkcs8Fit) -> String {
    match fit {
        Pkcs8Fit::Exact => "exact".into(),
        Pkcs8Fit::ZeroPadded(n) => format!("zero-padded ({n} bytes on the probe key)"),
    }
}

/// The self-test's AES-256 target T and KEK, in the token, with their values where they
/// could be learnt.
pub(super) struct KnownKeys<'a> {
    pub(super) t_obj: SessionObject<'a>,
    pub(super) t_val: Result<Zeroizing<Vec<u8>>, String>,
    pub(super) kek_obj: SessionObject<'a>,
    pub(super) kek: Result<Zeroizing<Vec<u8>>, String>,
    /// Why the token would not take them from a value (`None`: it did).
    pub(super) refused: Option<String>,
}

/// T and the KEK: created from known values where the token allows it, else generated in
/// the token and their values learnt through its OAEP-SHA256 wraps to the software key
/// (whose decryption fails for any other hash).
pub(super) fn known_keys<'a>(
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
                e.rv().map_or(e.to_string(), super::super::ckr_name)
            );
            let t_obj = modes::session_aes_generate(s)?;
            let kek_obj = modes::session_aes_generate(s)?;
            let learn = |obj: &SessionObject<'_>| {
                call(WrapMechanism::RsaOaep(OaepHash::Sha256), wk_obj, obj)
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
pub(super) fn probe_private<'a>(
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
