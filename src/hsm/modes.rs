//! The three wrap modes (docs/ARCHITECTURE.md, "Wrap modes"). Each turns a target key handle
//! into key material in a cloud's format (src/wrap/format.rs) for a wrapping public key. The target is never read in clear: the token wraps
//! it. Only hybrid mode holds key material on the host: the one-time key K, and on a token
//! that pads PKCS#8, the private key for as long as it takes to strip the padding; both in
//! the thread's locked scratch ([`crate::hardening::with_scratch`]), zeroed after each wrap.

use std::fmt;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use zeroize::Zeroize;

use super::raw::{CK_MECHANISM_TYPE, RawModule, WrapMechanism};
use super::{HsmError, Unsupported};
use crate::wrap::envelope::{TRANSPORT_KEY_LEN, check_layout, kwp_len};
use crate::wrap::soft::{OaepHash, kwp_unwrap_into, kwp_wrap, oaep_encrypt};
use crate::wrap::verify::{Pkcs8Fit, pkcs8_fit};
use crate::wrap::{Format, KeyAlgorithm, KeyShape, Layout, WrapError, WrappingKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrapMode {
    HsmNative,
    HsmTwoStep,
    Hybrid,
}

impl WrapMode {
    pub const ALL: [WrapMode; 3] = [WrapMode::HsmNative, WrapMode::HsmTwoStep, WrapMode::Hybrid];

    pub fn as_str(self) -> &'static str {
        match self {
            WrapMode::HsmNative => "hsm-native",
            WrapMode::HsmTwoStep => "hsm-two-step",
            WrapMode::Hybrid => "hybrid",
        }
    }
}

impl fmt::Display for WrapMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding for each OAEP hash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ByHash<T> {
    pub sha256: T,
    pub sha1: T,
}

impl<T: Copy> ByHash<T> {
    pub(crate) fn get(&self, hash: OaepHash) -> T {
        match hash {
            OaepHash::Sha256 => self.sha256,
            OaepHash::Sha1 => self.sha1,
        }
    }

    pub(crate) fn set(&mut self, hash: OaepHash, value: T) {
        match hash {
            OaepHash::Sha256 => self.sha256 = value,
            OaepHash::Sha1 => self.sha1 = value,
        }
    }
}

/// What the self-test proved the token does.
#[derive(Debug, Clone, Default)]
pub(crate) struct Capabilities {
    /// The mechanism number that is RFC 5649 on this token.
    pub kwp: Option<CK_MECHANISM_TYPE>,
    /// `CKM_RSA_PKCS_OAEP` honours the hash (and MGF1 of the same hash).
    pub oaep: ByHash<bool>,
    /// `CKM_RSA_AES_KEY_WRAP` gives exactly the hybrid layout with the hash.
    pub native: ByHash<bool>,
    /// How private keys come out of the KWP mechanism; `None` if not established.
    pub pkcs8_kwp: Option<Pkcs8Fit>,
    /// How private keys come out of `CKM_RSA_AES_KEY_WRAP`; `None` if not established.
    pub pkcs8_native: Option<Pkcs8Fit>,
    /// The token takes secret keys created from a value (a FIPS 140 Level 3 token, a Luna,
    /// does not: there hybrid mode, which creates K from the host, cannot run).
    pub plaintext_keys: bool,
    /// The token refused to wrap the self-test's extractable private key, with this code:
    /// the partition forbids private-key wrapping (Luna in cloning mode).
    pub private_wrap_refused: Option<String>,
}

impl Capabilities {
    /// Whether `other` proves the same behaviour: the same mechanisms and the same kind of
    /// PKCS#8 output (the number of padding bytes depends on the probe key, so it may differ).
    pub(crate) fn same_behaviour(&self, other: &Capabilities) -> bool {
        let kind = |f: Option<Pkcs8Fit>| f.map(|f| matches!(f, Pkcs8Fit::Exact));
        self.kwp == other.kwp
            && self.oaep == other.oaep
            && self.native == other.native
            && kind(self.pkcs8_kwp) == kind(other.pkcs8_kwp)
            && kind(self.pkcs8_native) == kind(other.pkcs8_native)
            && self.plaintext_keys == other.plaintext_keys
            && self.private_wrap_refused.is_some() == other.private_wrap_refused.is_some()
    }
}

/// A key to wrap: its handle and shape.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    pub handle: ObjectHandle,
    pub shape: KeyShape,
}

/// A session object destroyed when this goes out of scope.
pub(crate) struct SessionObject<'a> {
    session: &'a Session,
    pub handle: ObjectHandle,
}

impl<'a> SessionObject<'a> {
    pub(crate) fn new(session: &'a Session, handle: ObjectHandle) -> Self {
        SessionObject { session, handle }
    }
}

impl Drop for SessionObject<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.session.destroy_object(self.handle) {
            tracing::warn!("could not destroy a session object: {e}");
        }
    }
}

/// Imports `wk` as a session public key with CKA_WRAP.
pub(crate) fn import_wrapping_key<'a>(
    s: &'a Session,
    wk: &WrappingKey,
) -> Result<SessionObject<'a>, HsmError> {
    let handle = s
        .create_object(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::RSA),
            Attribute::Token(false),
            Attribute::Private(false),
            Attribute::Wrap(true),
            Attribute::Encrypt(true),
            Attribute::Modulus(wk.modulus.clone()),
            Attribute::PublicExponent(wk.exponent.clone()),
        ])
        .map_err(|e| HsmError::pkcs11("C_CreateObject (wrapping public key)", e))?;
    Ok(SessionObject { session: s, handle })
}

/// What a session AES key made from a known value is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AesRole {
    /// Wraps other keys; cannot itself leave the token (hybrid mode's K, the self-test's KEK).
    Wrapping,
    /// Is wrapped; extractable (the self-test's known AES target).
    Target,
}

/// Creates a session AES key with value `k`. The template's copy of `k` is zeroized
/// before returning.
pub(crate) fn session_aes<'a>(
    s: &'a Session,
    k: &[u8],
    role: AesRole,
) -> Result<SessionObject<'a>, HsmError> {
    let mut template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(role == AesRole::Target),
        Attribute::Wrap(role == AesRole::Wrapping),
        Attribute::Value(k.to_vec()),
    ];
    let created = s.create_object(&template);
    for a in template.iter_mut() {
        if let Attribute::Value(v) = a {
            v.zeroize();
        }
    }
    let handle = created.map_err(|e| HsmError::pkcs11("C_CreateObject (session AES key)", e))?;
    Ok(SessionObject { session: s, handle })
}

/// Generates a session AES-256 key in the token that can wrap and be wrapped.
pub(crate) fn session_aes_generate(s: &Session) -> Result<SessionObject<'_>, HsmError> {
    let handle = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(true),
                Attribute::Wrap(true),
                Attribute::ValueLen((TRANSPORT_KEY_LEN as u64).into()),
            ],
        )
        .map_err(|e| HsmError::pkcs11("C_GenerateKey (session AES-256)", e))?;
    Ok(SessionObject { session: s, handle })
}

/// Output size to offer `C_WrapKey` so that one call is enough.
fn size_hint(shape: KeyShape) -> usize {
    match shape.algorithm {
        KeyAlgorithm::Aes => kwp_len(shape.length),
        // PKCS#8 of an RSA key with an n-byte modulus is about 4.5 n + 70 bytes.
        KeyAlgorithm::Rsa => 5 * shape.length + 128,
    }
}

/// Wraps `target` for `wk` in `format`, in `mode` (a direct format always wraps with one
/// `C_WrapKey` in the token, whatever the mode).
pub(crate) fn wrap(
    raw: &RawModule,
    s: &Session,
    caps: &Capabilities,
    mode: WrapMode,
    format: &'static Format,
    target: Target,
    wk: &WrappingKey,
) -> Result<Vec<u8>, HsmError> {
    let t = Token { raw, s };
    let hash = format.hash;
    let material = match format.layout {
        Layout::Direct => wrap_oaep_only(&t, caps, format, target, wk)?,
        Layout::Hybrid => {
            if target.shape.algorithm == KeyAlgorithm::Rsa {
                check_rsa_export(caps, mode)?;
            }
            match mode {
                WrapMode::HsmNative => wrap_native(&t, caps, hash, target, wk)?,
                WrapMode::HsmTwoStep => wrap_two_step(&t, caps, hash, target, wk)?,
                WrapMode::Hybrid => wrap_hybrid(&t, caps, hash, target, wk)?,
            }
        }
    };
    check_layout(format, target.shape, wk.modulus_len(), &material)?;
    Ok(material)
}

/// The session a wrap runs on.
struct Token<'a> {
    raw: &'a RawModule,
    s: &'a Session,
}

impl Token<'_> {
    /// One `C_WrapKey`; its error names the mechanism.
    fn call(
        &self,
        mech: WrapMechanism,
        wrapping: ObjectHandle,
        key: ObjectHandle,
        hint: usize,
    ) -> Result<Vec<u8>, HsmError> {
        self.raw
            .wrap_key(self.s.handle(), mech, wrapping.handle(), key.handle(), hint)
            .map_err(|rv| HsmError::WrapCall {
                mechanism: describe(mech),
                rv,
            })
    }
}

/// A direct format: the AES key itself under OAEP with the format's hash, in the token.
fn wrap_oaep_only(
    t: &Token<'_>,
    caps: &Capabilities,
    format: &'static Format,
    target: Target,
    wk: &WrappingKey,
) -> Result<Vec<u8>, HsmError> {
    if target.shape.algorithm != KeyAlgorithm::Aes {
        return Err(Unsupported::OaepOnlyCarriesAes {
            format: format.name,
            shape: target.shape.describe(),
            instead: format.instead(),
        }
        .into());
    }
    if !caps.oaep.get(format.hash) {
        return Err(no_direct_oaep(format));
    }
    let wk_obj = import_wrapping_key(t.s, wk)?;
    t.call(
        WrapMechanism::RsaOaep(format.hash),
        wk_obj.handle,
        target.handle,
        wk.modulus_len(),
    )
}

/// hsm-native: one `C_WrapKey` with 0x1054.
fn wrap_native(
    t: &Token<'_>,
    caps: &Capabilities,
    hash: OaepHash,
    target: Target,
    wk: &WrappingKey,
) -> Result<Vec<u8>, HsmError> {
    if !caps.native.get(hash) {
        return Err(unavailable(WrapMode::HsmNative));
    }
    let wk_obj = import_wrapping_key(t.s, wk)?;
    t.call(
        WrapMechanism::RsaAesKeyWrap(hash),
        wk_obj.handle,
        target.handle,
        wk.modulus_len() + size_hint(target.shape),
    )
}

/// hsm-two-step: K generated in the token, RFC 5649 of the target under K, OAEP of K.
fn wrap_two_step(
    t: &Token<'_>,
    caps: &Capabilities,
    hash: OaepHash,
    target: Target,
    wk: &WrappingKey,
) -> Result<Vec<u8>, HsmError> {
    let (Some(kwp), true) = (caps.kwp, caps.oaep.get(hash)) else {
        return Err(unavailable(WrapMode::HsmTwoStep));
    };
    let k = session_aes_generate(t.s)?;
    let c2 = t.call(
        WrapMechanism::Kwp(kwp),
        k.handle,
        target.handle,
        size_hint(target.shape),
    )?;
    let wk_obj = import_wrapping_key(t.s, wk)?;
    let mut out = t.call(
        WrapMechanism::RsaOaep(hash),
        wk_obj.handle,
        k.handle,
        wk.modulus_len(),
    )?;
    out.extend_from_slice(&c2);
    Ok(out)
}

/// hybrid: K from the OS random source in a locked scratch page, RFC 5649 of the target
/// under K in the token (checked, or trimmed of PKCS#8 padding, under K), OAEP of K in
/// software.
fn wrap_hybrid(
    t: &Token<'_>,
    caps: &Capabilities,
    hash: OaepHash,
    target: Target,
    wk: &WrappingKey,
) -> Result<Vec<u8>, HsmError> {
    let Some(kwp) = caps.kwp else {
        return Err(unavailable(WrapMode::Hybrid));
    };
    crate::hardening::with_scratch(|scratch| {
        let (k, rest) = scratch.split_at_mut(TRANSPORT_KEY_LEN);
        getrandom::fill(k).map_err(|e| HsmError::Random(e.to_string()))?;
        let c2 = {
            let k_obj = session_aes(t.s, k, AesRole::Wrapping)?;
            t.call(
                WrapMechanism::Kwp(kwp),
                k_obj.handle,
                target.handle,
                size_hint(target.shape),
            )?
        };
        let c2 = match (target.shape.algorithm, caps.pkcs8_kwp) {
            (KeyAlgorithm::Rsa, Some(Pkcs8Fit::ZeroPadded(_))) => strip_and_rewrap(k, &c2, rest)?,
            _ => {
                check_opens(k, &c2, rest, target.shape)?;
                c2
            }
        };
        let mut out = oaep_encrypt(&wk.pkey, hash, k)?;
        out.extend_from_slice(&c2);
        Ok::<_, HsmError>(out)
    })
    .map_err(|e| HsmError::Wrap(WrapError::Crypto(e.to_string())))?
}

/// On a token that pads PKCS#8: opens C2 under K into `scratch` (locked, zeroed by the
/// caller), checks that only zero padding follows the DER, and re-wraps the exact DER. The
/// private key is in host memory only here.
fn strip_and_rewrap(k: &[u8], c2: &[u8], scratch: &mut [u8]) -> Result<Vec<u8>, HsmError> {
    let n = kwp_unwrap_into(k, c2, scratch)?;
    let blob = &scratch[..n];
    let der_len = match pkcs8_fit(blob) {
        Ok(Pkcs8Fit::Exact) => blob.len(),
        Ok(Pkcs8Fit::ZeroPadded(n)) => blob.len() - n,
        Err(why) => {
            return Err(HsmError::Wrap(WrapError::Crypto(format!(
                "the token's wrap of the private key did not hold PKCS#8: {why}"
            ))));
        }
    };
    Ok(kwp_wrap(k, &blob[..der_len])?)
}

/// Hybrid mode holds K, so it checks what the token wrapped under K before it leaves: C2
/// must open under K (RFC 5649 integrity) to a key of the target's shape (AES: its length;
/// RSA: exact PKCS#8). Opened into `scratch` (locked, zeroed by the caller). A token whose
/// KWP output is corrupt, or not RFC 5649, never reaches the vault.
fn check_opens(k: &[u8], c2: &[u8], scratch: &mut [u8], shape: KeyShape) -> Result<(), HsmError> {
    let bad = |why: String| {
        HsmError::Wrap(WrapError::Crypto(format!(
            "the token's RFC 5649 wrap under the one-time key {why}; nothing was exported"
        )))
    };
    let n = kwp_unwrap_into(k, c2, scratch).map_err(|_| bad("does not open".into()))?;
    let fits = match shape.algorithm {
        KeyAlgorithm::Aes => n == shape.length,
        KeyAlgorithm::Rsa => matches!(pkcs8_fit(&scratch[..n]), Ok(Pkcs8Fit::Exact)),
    };
    if !fits {
        return Err(bad(format!(
            "opens to {n} bytes that are not a {}",
            shape.describe()
        )));
    }
    Ok(())
}

/// What an operator reads when the partition forbids private-key wrapping.
pub(crate) const PRIVATE_WRAP_REFUSED: &str = "the partition does not allow private-key wrapping (Luna: key export mode, partition policy 1; AES keys are unaffected)";

fn check_rsa_export(caps: &Capabilities, mode: WrapMode) -> Result<(), HsmError> {
    if let Some(rv) = &caps.private_wrap_refused {
        return Err(Unsupported::PrivateWrapRefused { rv: rv.clone() }.into());
    }
    let fit = match mode {
        WrapMode::HsmNative => caps.pkcs8_native,
        WrapMode::HsmTwoStep | WrapMode::Hybrid => caps.pkcs8_kwp,
    };
    match (mode, fit) {
        (_, Some(Pkcs8Fit::Exact)) | (WrapMode::Hybrid, Some(Pkcs8Fit::ZeroPadded(_))) => Ok(()),
        (_, Some(Pkcs8Fit::ZeroPadded(pad))) => Err(Unsupported::Pkcs8Padded { mode, pad }.into()),
        (_, None) => Err(Unsupported::Pkcs8Unproven { mode }.into()),
    }
}

fn unavailable(mode: WrapMode) -> HsmError {
    Unsupported::ModeUnavailable { mode }.into()
}

/// A direct format on a token that does not do OAEP with its hash.
pub(crate) fn no_direct_oaep(format: &'static Format) -> HsmError {
    Unsupported::NoDirectOaep {
        format: format.name,
        hash: format.hash.as_str(),
        instead: format.instead(),
    }
    .into()
}

/// Name and number of a wrap mechanism, for messages.
pub(crate) fn describe(m: WrapMechanism) -> String {
    match m {
        WrapMechanism::RsaAesKeyWrap(h) => {
            format!("CKM_RSA_AES_KEY_WRAP (0x1054) with OAEP {}", h.as_str())
        }
        WrapMechanism::RsaOaep(h) => format!("CKM_RSA_PKCS_OAEP with {}", h.as_str()),
        WrapMechanism::Kwp(n) => format!("{} ({n:#x})", kwp_name(n)),
    }
}

pub(crate) fn kwp_name(n: CK_MECHANISM_TYPE) -> &'static str {
    match n {
        super::raw::CKM_AES_KEY_WRAP_KWP => "CKM_AES_KEY_WRAP_KWP",
        super::raw::CKM_AES_KEY_WRAP_PAD => "CKM_AES_KEY_WRAP_PAD",
        super::raw::CKM_LUNA_AES_KWP => "CKM_LUNA_AES_KWP",
        _ => "vendor KWP",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(kwp: Option<Pkcs8Fit>, native: Option<Pkcs8Fit>) -> Capabilities {
        Capabilities {
            pkcs8_kwp: kwp,
            pkcs8_native: native,
            ..Capabilities::default()
        }
    }

    #[test]
    fn rsa_export_on_a_token_that_pads_pkcs8_is_hybrid_only() {
        let padded = caps(Some(Pkcs8Fit::ZeroPadded(7)), Some(Pkcs8Fit::ZeroPadded(7)));
        assert!(check_rsa_export(&padded, WrapMode::Hybrid).is_ok());
        for mode in [WrapMode::HsmNative, WrapMode::HsmTwoStep] {
            let e = check_rsa_export(&padded, mode).unwrap_err().to_string();
            assert!(
                e.contains("pads PKCS#8") && e.contains("only hybrid"),
                "{e}"
            );
        }
        let exact = caps(Some(Pkcs8Fit::Exact), Some(Pkcs8Fit::Exact));
        for mode in WrapMode::ALL {
            assert!(check_rsa_export(&exact, mode).is_ok());
        }
        // Native exact but KWP unknown: only native may export RSA.
        let mixed = caps(None, Some(Pkcs8Fit::Exact));
        assert!(check_rsa_export(&mixed, WrapMode::HsmNative).is_ok());
        let e = check_rsa_export(&mixed, WrapMode::Hybrid)
            .unwrap_err()
            .to_string();
        assert!(e.contains("could not show"), "{e}");
    }

    #[test]
    fn rsa_size_hint_covers_pkcs8() {
        // RSA-4096 PKCS#8 is about 2,375 bytes; one C_WrapKey call must be enough.
        let s = KeyShape {
            algorithm: KeyAlgorithm::Rsa,
            length: 512,
        };
        assert!(size_hint(s) >= kwp_len(2400));
        let a = KeyShape {
            algorithm: KeyAlgorithm::Aes,
            length: 24,
        };
        assert_eq!(size_hint(a), 32);
    }
}
