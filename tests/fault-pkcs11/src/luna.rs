//! A Luna-like partition in front of the real module, as `FAULT_PKCS11_LUNA` says: a comma
//! list of the rules below, or `luna` for all of them with Luna's default partition mode
//! (cloning); `partition=key-export` after it switches that mode. The rules are what Thales
//! documents for Luna (and what AWS CloudHSM and other FIPS 140 Level 3 tokens share):
//!
//! - `no-plaintext-keys`: `C_CreateObject` of a `CKO_SECRET_KEY` or `CKO_PRIVATE_KEY` answers
//!   `CKR_TEMPLATE_INCONSISTENT`; public keys, data objects and certificates pass.
//! - `vendor-kwp`: RFC 5649 only as `CKM_LUNA_AES_KWP` (0x80000171), which is listed and
//!   served by the real module's 0x210B; 0x210B, 0x210A and `CKM_RSA_AES_KEY_WRAP` (0x1054)
//!   are neither listed nor accepted.
//! - `no-rsa-pkcs-wrap`: `CKM_RSA_PKCS` cannot wrap (FIPS).
//! - `extractable-false-default`: a generated or unwrapped key without `CKA_EXTRACTABLE` in
//!   its template is not extractable.
//! - `sensitive-private-required`: a secret or private key template with `CKA_SENSITIVE`
//!   or `CKA_PRIVATE` false is refused (`CKR_TEMPLATE_INCONSISTENT`), as Luna Cloud HSM does.
//! - `partition=cloning` (Luna's default, policy 0 on): `C_WrapKey` of a private key answers
//!   `CKR_KEY_NOT_WRAPPABLE`; `partition=key-export` (policy 1 "Allow private key wrapping")
//!   allows it.
//! - `crypto-user`: the vendor user type 0x80000001 (Luna's Crypto User) logs in as the real
//!   module's `CKU_USER`.
//!
//! Two rules make a token that lies, for the self-test to catch: `oaep-sha1` (OAEP wraps use
//! SHA-1 whatever the parameters say) and `kwp-is-rfc3394` (the vendor KWP number does RFC
//! 3394 key wrap, not RFC 5649).
//!
//! The test keys are put in through the real module: these are the partition's rules for
//! the daemon, not the seeding's.

use std::sync::OnceLock;

use cryptoki_sys::*;

/// Luna's vendor RFC 5649 mechanism.
pub const CKM_LUNA_AES_KWP: CK_MECHANISM_TYPE = 0x8000_0171;
/// Luna's Crypto User.
const CKU_LUNA_CRYPTO_USER: CK_USER_TYPE = 0x8000_0001;
/// The real module's RFC 5649 (kryoptic: 0x210B).
const REAL_KWP: CK_MECHANISM_TYPE = CKM_AES_KEY_WRAP_KWP;
/// Standard numbers a Luna partition neither lists nor accepts.
const HIDDEN: [CK_MECHANISM_TYPE; 3] =
    [CKM_AES_KEY_WRAP_KWP, CKM_AES_KEY_WRAP_PAD, CKM_RSA_AES_KEY_WRAP];

#[derive(Default)]
pub struct Rules {
    pub no_plaintext_keys: bool,
    pub vendor_kwp: bool,
    pub no_rsa_pkcs_wrap: bool,
    pub extractable_false_default: bool,
    pub sensitive_private_required: bool,
    /// Cloning mode: private keys cannot be wrapped.
    pub cloning: bool,
    pub crypto_user: bool,
    pub oaep_sha1: bool,
    pub kwp_is_rfc3394: bool,
}

/// The rules in force (none without `FAULT_PKCS11_LUNA`).
pub fn rules() -> &'static Rules {
    static R: OnceLock<Rules> = OnceLock::new();
    R.get_or_init(|| {
        let mut r = Rules::default();
        let spec = std::env::var("FAULT_PKCS11_LUNA").unwrap_or_default();
        for word in spec.split(',').map(str::trim) {
            match word {
                "luna" => {
                    r = Rules {
                        no_plaintext_keys: true,
                        vendor_kwp: true,
                        no_rsa_pkcs_wrap: true,
                        extractable_false_default: true,
                        sensitive_private_required: true,
                        cloning: true,
                        crypto_user: true,
                        ..Rules::default()
                    }
                }
                "no-plaintext-keys" => r.no_plaintext_keys = true,
                "vendor-kwp" => r.vendor_kwp = true,
                "no-rsa-pkcs-wrap" => r.no_rsa_pkcs_wrap = true,
                "extractable-false-default" => r.extractable_false_default = true,
                "sensitive-private-required" => r.sensitive_private_required = true,
                "partition=cloning" => r.cloning = true,
                "partition=key-export" => r.cloning = false,
                "crypto-user" => r.crypto_user = true,
                "oaep-sha1" => r.oaep_sha1 = true,
                "kwp-is-rfc3394" => r.kwp_is_rfc3394 = true,
                _ => {}
            }
        }
        r
    })
}

/// The template as a slice (empty for a null pointer).
///
/// # Safety
/// `t` must point to `n` attributes, or be null.
unsafe fn attrs<'a>(t: CK_ATTRIBUTE_PTR, n: CK_ULONG) -> &'a [CK_ATTRIBUTE] {
    if t.is_null() || n == 0 {
        &[]
    } else {
        // SAFETY: the caller's template, as the standard defines it.
        unsafe { std::slice::from_raw_parts(t, n as usize) }
    }
}

/// The value of a CK_ULONG attribute (CKA_CLASS).
fn ulong(t: &[CK_ATTRIBUTE], ty: CK_ATTRIBUTE_TYPE) -> Option<CK_ULONG> {
    let a = t.iter().find(|a| a.type_ == ty)?;
    if a.pValue.is_null() || a.ulValueLen as usize != size_of::<CK_ULONG>() {
        return None;
    }
    // SAFETY: checked non-null and of the right length.
    Some(unsafe { std::ptr::read_unaligned(a.pValue as *const CK_ULONG) })
}

/// The value of a CK_BBOOL attribute.
fn bool_of(t: &[CK_ATTRIBUTE], ty: CK_ATTRIBUTE_TYPE) -> Option<bool> {
    let a = t.iter().find(|a| a.type_ == ty)?;
    if a.pValue.is_null() || a.ulValueLen == 0 {
        return None;
    }
    // SAFETY: checked non-null and at least one byte.
    Some(unsafe { *(a.pValue as *const CK_BBOOL) } != CK_FALSE)
}

/// `C_CreateObject`: refused for secret and private keys under `no-plaintext-keys`.
pub fn refuse_create(t: CK_ATTRIBUTE_PTR, n: CK_ULONG) -> Option<CK_RV> {
    // SAFETY: the caller's template.
    let t = unsafe { attrs(t, n) };
    let class = ulong(t, CKA_CLASS)?;
    (rules().no_plaintext_keys && matches!(class, CKO_SECRET_KEY | CKO_PRIVATE_KEY))
        .then_some(CKR_TEMPLATE_INCONSISTENT)
}

static FALSE: CK_BBOOL = CK_FALSE;

/// A template for a generated or unwrapped secret/private key: refused if it asks for a
/// key that is not sensitive or not private (`sensitive-private-required`); with
/// `CKA_EXTRACTABLE = false` added where it does not say (`extractable-false-default`).
pub fn key_template(t: CK_ATTRIBUTE_PTR, n: CK_ULONG) -> Result<Vec<CK_ATTRIBUTE>, CK_RV> {
    // SAFETY: the caller's template.
    let t = unsafe { attrs(t, n) };
    let r = rules();
    if r.sensitive_private_required
        && (bool_of(t, CKA_SENSITIVE) == Some(false) || bool_of(t, CKA_PRIVATE) == Some(false))
    {
        return Err(CKR_TEMPLATE_INCONSISTENT);
    }
    let mut out = t.to_vec();
    if r.extractable_false_default && !t.iter().any(|a| a.type_ == CKA_EXTRACTABLE) {
        out.push(CK_ATTRIBUTE {
            type_: CKA_EXTRACTABLE,
            pValue: &FALSE as *const CK_BBOOL as *mut std::ffi::c_void,
            ulValueLen: 1,
        });
    }
    Ok(out)
}

/// A mechanism as the real module gets it, with the parameters it points to.
pub struct Translated {
    pub mech: CK_MECHANISM,
    _oaep: Option<Box<CK_RSA_PKCS_OAEP_PARAMS>>,
}

/// A mechanism as the partition takes it: the vendor KWP number served by the real one,
/// hidden standard numbers and (for wrapping) `CKM_RSA_PKCS` refused; `None` when it goes
/// to the real module as it is.
pub fn mechanism(m: CK_MECHANISM_PTR, wrapping: bool) -> Result<Option<Translated>, CK_RV> {
    if m.is_null() {
        return Ok(None);
    }
    // SAFETY: checked non-null; the caller's mechanism.
    let mut mech = unsafe { *m };
    let r = rules();
    if r.vendor_kwp {
        if HIDDEN.contains(&mech.mechanism) {
            return Err(CKR_MECHANISM_INVALID);
        }
        if mech.mechanism == CKM_LUNA_AES_KWP {
            mech.mechanism = if r.kwp_is_rfc3394 {
                CKM_AES_KEY_WRAP
            } else {
                REAL_KWP
            };
            return Ok(Some(Translated { mech, _oaep: None }));
        }
    }
    if wrapping && r.no_rsa_pkcs_wrap && mech.mechanism == CKM_RSA_PKCS {
        return Err(CKR_MECHANISM_INVALID);
    }
    if r.oaep_sha1
        && mech.mechanism == CKM_RSA_PKCS_OAEP
        && !mech.pParameter.is_null()
        && mech.ulParameterLen as usize == size_of::<CK_RSA_PKCS_OAEP_PARAMS>()
    {
        // SAFETY: checked non-null and of the parameter struct's size.
        let mut p = Box::new(unsafe { *(mech.pParameter as *const CK_RSA_PKCS_OAEP_PARAMS) });
        p.hashAlg = CKM_SHA_1;
        p.mgf = CKG_MGF1_SHA1;
        mech.pParameter = &mut *p as *mut CK_RSA_PKCS_OAEP_PARAMS as *mut std::ffi::c_void;
        return Ok(Some(Translated {
            mech,
            _oaep: Some(p),
        }));
    }
    Ok(None)
}

/// The mechanism list as the partition shows it.
pub fn listed(real: Vec<CK_MECHANISM_TYPE>) -> Vec<CK_MECHANISM_TYPE> {
    if !rules().vendor_kwp {
        return real;
    }
    let has_kwp = real.contains(&REAL_KWP);
    let mut out: Vec<_> = real.into_iter().filter(|m| !HIDDEN.contains(m)).collect();
    if has_kwp {
        out.push(CKM_LUNA_AES_KWP);
    }
    out
}

/// The user type the real module gets.
pub fn user(u: CK_USER_TYPE) -> CK_USER_TYPE {
    if rules().crypto_user && u == CKU_LUNA_CRYPTO_USER {
        CKU_USER
    } else {
        u
    }
}
