//! What ImportCryptoKeyVersion receives, opened as Cloud KMS opens it, and the plaintext
//! checked against the version's algorithm. The `RSA_OAEP_*_AES_256` methods are, first,
//! modulus-length bytes of RSA-OAEP (SHA-1 or SHA-256 for both the OAEP hash and MGF1, an
//! empty label) of a 32-byte AES key, then the material under that key with AES key wrap
//! with padding (RFC 5649); `RSA_OAEP_3072_SHA256` and `RSA_OAEP_4096_SHA256` are RSA-OAEP
//! SHA-256 of the material itself (too short for an RSA key). The RSA decryption is
//! src/open.rs's, the RFC 5649 unwrap src/aws/unwrap.rs's: neither is hsm-bridge's own.

use hsm_bridge::wrap::soft::OaepHash;
use hsm_bridge::wrap::verify::der_sequence_len;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private};
use zeroize::Zeroizing;

use super::protocol::{Algorithm, Material};
use crate::aws::unwrap::kwp_unwrap;
use crate::open::oaep_decrypt;

/// An import method: the RSA size it names, its OAEP hash, and whether it is hybrid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Method {
    pub(crate) bits: u32,
    pub(crate) hash: OaepHash,
    pub(crate) hybrid: bool,
}

impl Method {
    pub(crate) fn parse(name: &str) -> Option<Method> {
        let (bits, hash, hybrid) = match name {
            "RSA_OAEP_3072_SHA1_AES_256" => (3072, OaepHash::Sha1, true),
            "RSA_OAEP_4096_SHA1_AES_256" => (4096, OaepHash::Sha1, true),
            "RSA_OAEP_3072_SHA256_AES_256" => (3072, OaepHash::Sha256, true),
            "RSA_OAEP_4096_SHA256_AES_256" => (4096, OaepHash::Sha256, true),
            "RSA_OAEP_3072_SHA256" => (3072, OaepHash::Sha256, false),
            "RSA_OAEP_4096_SHA256" => (4096, OaepHash::Sha256, false),
            _ => return None,
        };
        Some(Method { bits, hash, hybrid })
    }
}

/// Opens `wrapped` with the job's private key as `method` says.
pub(crate) fn unwrap(
    key: &PKey<Private>,
    method: Method,
    wrapped: &[u8],
) -> Result<Zeroizing<Vec<u8>>, String> {
    let k = key.size();
    if !method.hybrid {
        if wrapped.len() != k {
            return Err(format!(
                "The wrapped key is {} bytes; RSA-OAEP under the import job's {}-bit key makes {k}.",
                wrapped.len(),
                k * 8
            ));
        }
        return oaep_decrypt(key, method.hash, wrapped).map_err(|_| {
            "The wrapped key does not decrypt with the import job's key and method.".into()
        });
    }
    if wrapped.len() <= k {
        return Err(format!(
            "The wrapped key is {} bytes; the import method needs {k} bytes of RSA-OAEP and then the AES-KWP-wrapped key.",
            wrapped.len()
        ));
    }
    let (rsa_part, aes_part) = wrapped.split_at(k);
    let aes = oaep_decrypt(key, method.hash, rsa_part).map_err(|_| {
        "The RSA-OAEP part of the wrapped key does not decrypt with the import job's key and method."
            .to_string()
    })?;
    if aes.len() != 32 {
        return Err(format!(
            "The RSA-OAEP part holds a {}-byte key; the import method wraps with AES-256.",
            aes.len()
        ));
    }
    kwp_unwrap(&aes, aes_part).map_err(|e| format!("The wrapped key is invalid: {e}."))
}

/// Why `material` is not key material for `alg`, if it is not.
pub(crate) fn check_material(alg: &Algorithm, material: &[u8]) -> Result<(), String> {
    let n = material.len();
    match alg.material {
        Material::Raw(len) if n == len => Ok(()),
        Material::Raw(len) => Err(format!(
            "The key material for {} must be {len} bytes; it is {n} bytes.",
            alg.name
        )),
        Material::Rsa(bits) => {
            let key = pkcs8(material)?;
            let rsa = key
                .rsa()
                .map_err(|_| format!("The key material is not an RSA key, for {}.", alg.name))?;
            if rsa.size() * 8 != bits {
                return Err(format!(
                    "The key material is a {}-bit RSA key; {} needs {bits} bits.",
                    rsa.size() * 8,
                    alg.name
                ));
            }
            if !rsa.check_key().unwrap_or(false) {
                return Err("The RSA private key fails its consistency check.".into());
            }
            Ok(())
        }
        Material::Ec(bits) => {
            let key = pkcs8(material)?;
            let ec = key
                .ec_key()
                .map_err(|_| format!("The key material is not an EC key, for {}.", alg.name))?;
            if ec.group().curve_name() != Some(curve(bits)) {
                return Err(format!(
                    "The EC key is not on the curve of {} (P-{bits}).",
                    alg.name
                ));
            }
            ec.check_key()
                .map_err(|_| "The EC private key fails its consistency check.".to_string())
        }
    }
}

fn curve(bits: u32) -> Nid {
    if bits == 256 {
        Nid::X9_62_PRIME256V1
    } else {
        Nid::SECP384R1
    }
}

/// A DER PKCS#8 private key, exactly (no trailing bytes).
fn pkcs8(der: &[u8]) -> Result<PKey<Private>, String> {
    let bad = || "The key material is not a DER PKCS#8 PrivateKeyInfo.".to_string();
    if der_sequence_len(der) != Some(der.len()) {
        return Err(bad());
    }
    let key = PKey::private_key_from_pkcs8(der).map_err(|_| bad())?;
    if !matches!(key.id(), Id::RSA | Id::EC) {
        return Err("The PKCS#8 key is neither RSA nor EC.".into());
    }
    Ok(key)
}

/// The SPKI PEM of an RSA or EC PKCS#8 private key.
pub(crate) fn public_pem(material: &[u8]) -> Option<String> {
    let key = PKey::private_key_from_pkcs8(material).ok()?;
    String::from_utf8(key.public_key_to_pem().ok()?).ok()
}

/// Fresh material for `alg` (a version the emulator generates).
pub(crate) fn generate(alg: &Algorithm) -> Result<Zeroizing<Vec<u8>>, String> {
    let der = |k: Result<PKey<Private>, openssl::error::ErrorStack>| {
        k.and_then(|k| k.private_key_to_pkcs8())
            .map(Zeroizing::new)
            .map_err(|e| e.to_string())
    };
    match alg.material {
        Material::Raw(n) => {
            let mut b = Zeroizing::new(vec![0u8; n]);
            getrandom::fill(&mut b).map_err(|e| e.to_string())?;
            Ok(b)
        }
        Material::Rsa(bits) => der(openssl::rsa::Rsa::generate(bits).and_then(PKey::from_rsa)),
        Material::Ec(bits) => der(openssl::ec::EcGroup::from_curve_name(curve(bits))
            .and_then(|g| openssl::ec::EcKey::generate(&g))
            .and_then(PKey::from_ec_key)),
    }
}
