//! What ImportKeyMaterial receives, opened as KMS opens it, and the plaintext checked
//! against the key spec. `RSAES_OAEP_SHA_x` is RSA-OAEP with SHA-x and MGF1-SHA-x and an
//! empty label; `RSA_AES_KEY_WRAP_SHA_x` is, first, modulus-length bytes of RSA-OAEP (the
//! same hashes) of an AES key, then the material under that key with AES key wrap with
//! padding (RFC 5649). Symmetric material is 32 bytes; HMAC material is raw bytes within
//! the spec's range; RSA and ECC material is a DER PKCS#8 private key of that size or
//! curve.

use openssl::cipher::{Cipher, CipherRef};
use openssl::cipher_ctx::CipherCtx;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private};
use zeroize::Zeroizing;

use crate::open::oaep_decrypt;
use hsm_bridge::wrap::soft::OaepHash;
use hsm_bridge::wrap::verify::der_sequence_len;

use super::keys::Spec;

/// The model's `AlgorithmSpec` values.
pub(crate) const WRAPPING_ALGORITHMS: &[&str] = &[
    "RSAES_PKCS1_V1_5",
    "RSAES_OAEP_SHA_1",
    "RSAES_OAEP_SHA_256",
    "RSA_AES_KEY_WRAP_SHA_1",
    "RSA_AES_KEY_WRAP_SHA_256",
    "SM2PKE",
];
/// The model's `WrappingKeySpec` values.
pub(crate) const WRAPPING_KEY_SPECS: &[&str] = &["RSA_2048", "RSA_3072", "RSA_4096", "SM2"];

/// A wrapping algorithm the emulator opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wrap {
    Oaep(OaepHash),
    RsaAes(OaepHash),
}

impl Wrap {
    pub(crate) fn parse(s: &str) -> Option<Wrap> {
        Some(match s {
            "RSAES_OAEP_SHA_1" => Wrap::Oaep(OaepHash::Sha1),
            "RSAES_OAEP_SHA_256" => Wrap::Oaep(OaepHash::Sha256),
            "RSA_AES_KEY_WRAP_SHA_1" => Wrap::RsaAes(OaepHash::Sha1),
            "RSA_AES_KEY_WRAP_SHA_256" => Wrap::RsaAes(OaepHash::Sha256),
            _ => return None,
        })
    }
}

/// RFC 5649 unwrap under an AES-128, -192 or -256 key.
pub(crate) fn kwp_unwrap(kek: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    let cipher: &CipherRef = match kek.len() {
        16 => Cipher::aes_128_wrap_pad(),
        24 => Cipher::aes_192_wrap_pad(),
        32 => Cipher::aes_256_wrap_pad(),
        n => return Err(format!("the AES key is {n} bytes, not 16, 24 or 32")),
    };
    if wrapped.len() < 16 || !wrapped.len().is_multiple_of(8) {
        return Err(format!(
            "the AES-wrapped part is {} bytes, not a multiple of 8 of at least 16",
            wrapped.len()
        ));
    }
    let run = || -> Result<Zeroizing<Vec<u8>>, openssl::error::ErrorStack> {
        let mut ctx = CipherCtx::new()?;
        ctx.decrypt_init(Some(cipher), Some(kek), None)?;
        let mut out = Zeroizing::new(vec![0u8; wrapped.len() + cipher.block_size()]);
        let n = ctx.cipher_update(wrapped, Some(&mut out[..]))?;
        let m = ctx.cipher_final(&mut out[n..])?;
        out.truncate(n + m);
        Ok(out)
    };
    run().map_err(|_| "the AES-wrapped part does not unwrap (RFC 5649 integrity check)".into())
}

/// Opens `blob` with the wrapping key and algorithm its import token was issued for.
pub(crate) fn unwrap(
    wrapping: &PKey<Private>,
    wrap: Wrap,
    blob: &[u8],
) -> Result<Zeroizing<Vec<u8>>, String> {
    let k = wrapping.size();
    match wrap {
        Wrap::Oaep(hash) => {
            if blob.len() != k {
                return Err(format!(
                    "the encrypted key material is {} bytes; RSA-OAEP under this wrapping key makes {k}",
                    blob.len()
                ));
            }
            oaep_decrypt(wrapping, hash, blob).map_err(|_| {
                "the encrypted key material does not decrypt with this wrapping key and algorithm"
                    .into()
            })
        }
        Wrap::RsaAes(hash) => {
            if blob.len() <= k {
                return Err(format!(
                    "the encrypted key material is {} bytes; RSA_AES_KEY_WRAP needs {k} bytes of RSA-OAEP and then the AES-wrapped material",
                    blob.len()
                ));
            }
            let (rsa_part, aes_part) = blob.split_at(k);
            let aes = oaep_decrypt(wrapping, hash, rsa_part).map_err(|_| {
                "the RSA part does not decrypt with this wrapping key and algorithm".to_string()
            })?;
            kwp_unwrap(&aes, aes_part)
        }
    }
}

/// Why `material` is not key material of `spec`, if it is not.
pub(crate) fn check_material(spec: Spec, material: &[u8]) -> Result<(), String> {
    let n = material.len();
    match spec {
        Spec::Symmetric if n == 32 => Ok(()),
        Spec::Symmetric => Err(format!(
            "SYMMETRIC_DEFAULT key material is 256 bits (32 bytes); this is {n} bytes"
        )),
        Spec::Hmac(bits) => {
            let (min, max) = hmac_range(bits);
            if (min..=max).contains(&n) {
                Ok(())
            } else {
                Err(format!(
                    "HMAC_{bits} key material is {min} to {max} bytes; this is {n} bytes"
                ))
            }
        }
        Spec::Rsa(bits) => {
            let key = pkcs8(material)?;
            let rsa = key
                .rsa()
                .map_err(|_| format!("the PKCS#8 key is not RSA, for an RSA_{bits} key"))?;
            if rsa.size() * 8 != bits {
                return Err(format!(
                    "the RSA key is {} bits; the key spec is RSA_{bits}",
                    rsa.size() * 8
                ));
            }
            if !rsa.check_key().unwrap_or(false) {
                return Err("the RSA private key fails its consistency check".into());
            }
            Ok(())
        }
        Spec::Ecc(bits) => {
            let key = pkcs8(material)?;
            let ec = key
                .ec_key()
                .map_err(|_| format!("the PKCS#8 key is not EC, for an ECC_NIST_P{bits} key"))?;
            if ec.group().curve_name() != Some(curve(bits)) {
                return Err(format!(
                    "the EC key is not on the curve of ECC_NIST_P{bits}"
                ));
            }
            ec.check_key()
                .map_err(|_| "the EC private key fails its consistency check".to_string())
        }
    }
}

/// The NIST curve of `ECC_NIST_P{bits}`.
fn curve(bits: u32) -> Nid {
    match bits {
        256 => Nid::X9_62_PRIME256V1,
        384 => Nid::SECP384R1,
        _ => Nid::SECP521R1,
    }
}

/// The material sizes KMS accepts for an HMAC key of `bits` (the digest size to the block
/// size).
fn hmac_range(bits: u32) -> (usize, usize) {
    match bits {
        224 => (28, 64),
        256 => (32, 64),
        384 => (48, 128),
        _ => (64, 128),
    }
}

/// A DER PKCS#8 private key, exactly (no trailing bytes).
fn pkcs8(der: &[u8]) -> Result<PKey<Private>, String> {
    match der_sequence_len(der) {
        Some(len) if len == der.len() => {}
        Some(len) if len < der.len() => {
            return Err(format!(
                "the key material has {} bytes after its DER",
                der.len() - len
            ));
        }
        _ => return Err("the key material is not a DER PKCS#8 private key".into()),
    }
    let key = PKey::private_key_from_pkcs8(der)
        .map_err(|_| "the key material is not a DER PKCS#8 private key".to_string())?;
    if !matches!(key.id(), Id::RSA | Id::EC) {
        return Err("the PKCS#8 key is neither RSA nor EC".into());
    }
    Ok(key)
}

/// Fresh material of `spec`, as KMS makes for keys of origin AWS_KMS.
pub(crate) fn generate(spec: Spec) -> Result<Zeroizing<Vec<u8>>, String> {
    let random = |n: usize| {
        let mut b = Zeroizing::new(vec![0u8; n]);
        getrandom::fill(&mut b)
            .map(|()| b)
            .map_err(|e| e.to_string())
    };
    let der = |k: Result<PKey<Private>, openssl::error::ErrorStack>| {
        k.and_then(|k| k.private_key_to_pkcs8())
            .map(Zeroizing::new)
            .map_err(|e| e.to_string())
    };
    match spec {
        Spec::Symmetric => random(32),
        Spec::Hmac(bits) => random(bits as usize / 8),
        Spec::Rsa(bits) => der(openssl::rsa::Rsa::generate(bits).and_then(PKey::from_rsa)),
        Spec::Ecc(bits) => der(openssl::ec::EcGroup::from_curve_name(curve(bits))
            .and_then(|g| openssl::ec::EcKey::generate(&g))
            .and_then(PKey::from_ec_key)),
    }
}
