//! The RSA public key that the key is wrapped for (the vault's wrapping key, or a caller's
//! where policy allows): parsed from PEM, checked, fingerprinted.

use openssl::bn::BigNum;
use openssl::pkey::{Id, PKey, Public};
use openssl::rsa::Rsa;

use super::{WrapError, hex};

/// Largest PEM input accepted. An RSA-16384 SPKI PEM is about 2.8 KiB.
pub(crate) const MAX_PEM_BYTES: usize = 16 * 1024;
/// Largest modulus accepted; bigger keys are no safer and cost the HSM more.
pub(crate) const MAX_BITS: u32 = 16384;

/// A validated RSA wrapping public key.
#[derive(Clone)]
pub struct WrappingKey {
    pub pkey: PKey<Public>,
    pub bits: u32,
    /// Big-endian modulus and public exponent, as PKCS#11 `CKA_MODULUS` /
    /// `CKA_PUBLIC_EXPONENT` want them.
    pub modulus: Vec<u8>,
    pub exponent: Vec<u8>,
    /// SHA-256 of the SubjectPublicKeyInfo DER: the key's identity in policy and audit.
    pub spki_sha256: [u8; 32],
}

impl std::fmt::Debug for WrappingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WrappingKey(RSA-{}, sha256 {})",
            self.bits,
            self.fingerprint()
        )
    }
}

fn bad(msg: impl Into<String>) -> WrapError {
    WrapError::WrappingKey(msg.into())
}

impl WrappingKey {
    /// Parses one PEM public key: SubjectPublicKeyInfo (`BEGIN PUBLIC KEY`) or PKCS#1
    /// (`BEGIN RSA PUBLIC KEY`). RSA only, `min_bits` to 16384 bits, odd exponent > 1.
    pub fn from_pem(pem: &[u8], min_bits: u32) -> Result<Self, WrapError> {
        if pem.len() > MAX_PEM_BYTES {
            return Err(bad(format!(
                "PEM input is {} bytes; the limit is {MAX_PEM_BYTES}",
                pem.len()
            )));
        }
        let text = std::str::from_utf8(pem).map_err(|_| bad("PEM input is not text"))?;
        let begins: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("-----BEGIN "))
            .collect();
        let pkey = match begins.as_slice() {
            ["-----BEGIN PUBLIC KEY-----"] => PKey::public_key_from_pem(pem)
                .map_err(|_| bad("PEM PUBLIC KEY block does not parse"))?,
            ["-----BEGIN RSA PUBLIC KEY-----"] => {
                let rsa = Rsa::public_key_from_pem_pkcs1(pem)
                    .map_err(|_| bad("PEM RSA PUBLIC KEY block does not parse"))?;
                PKey::from_rsa(rsa).map_err(|e| bad(e.to_string()))?
            }
            [] => return Err(bad("no PEM block found (expected BEGIN PUBLIC KEY)")),
            [one] if one.contains("PRIVATE KEY") => {
                return Err(bad("this is a private key; give the public key only"));
            }
            [one] => {
                return Err(bad(format!(
                    "unsupported PEM block {one:?}; expected PUBLIC KEY or RSA PUBLIC KEY"
                )));
            }
            _ => return Err(bad("more than one PEM block; give exactly one public key")),
        };
        Self::from_pkey(pkey, min_bits)
    }

    fn from_pkey(pkey: PKey<Public>, min_bits: u32) -> Result<Self, WrapError> {
        match pkey.id() {
            Id::RSA => {}
            Id::EC => return Err(bad("is an EC key; OCI wrapping keys are RSA")),
            Id::RSA_PSS => return Err(bad("is an RSA-PSS key; an RSA encryption key is needed")),
            _ => return Err(bad("is not an RSA key")),
        }
        let rsa = pkey.rsa().map_err(|e| bad(e.to_string()))?;
        let bits = pkey.bits();
        if bits < min_bits {
            return Err(bad(format!(
                "RSA-{bits} is below the minimum of {min_bits} bits (policy.min_wrapping_key_bits)"
            )));
        }
        if bits > MAX_BITS {
            return Err(bad(format!(
                "RSA-{bits} is above the maximum of {MAX_BITS} bits"
            )));
        }
        if !rsa.n().is_bit_set(0) {
            return Err(bad("the modulus is even: not an RSA public key"));
        }
        // e = 1 would make "encryption" the identity: OAEP's masking is unkeyed, so K
        // would be readable by anyone. An even e is not an RSA key at all.
        let e = rsa.e();
        let one = BigNum::from_u32(1).map_err(|e| bad(e.to_string()))?;
        if e <= &*one || !e.is_bit_set(0) {
            return Err(bad("the public exponent must be odd and greater than 1"));
        }
        let spki = pkey.public_key_to_der().map_err(|e| bad(e.to_string()))?;
        Ok(WrappingKey {
            bits,
            modulus: rsa.n().to_vec(),
            exponent: e.to_vec(),
            spki_sha256: openssl::sha::sha256(&spki),
            pkey,
        })
    }

    /// Modulus length in bytes: the length of OAEP output.
    pub(crate) fn modulus_len(&self) -> usize {
        self.bits.div_ceil(8) as usize
    }

    /// Hex SHA-256 of the SPKI DER.
    pub(crate) fn fingerprint(&self) -> String {
        hex(&self.spki_sha256)
    }
}

/// Parsed wrapping keys by their PEM text ([`crate::memo::Memo`]): OpenSSL 3's PEM decoder
/// costs far more than the wrap itself under load (locks in its decoder registry), and
/// callers send the same vault key again and again. Only keys that passed every check are
/// kept; at `CAPACITY` distinct keys the cache starts over, so hostile callers cannot grow it
/// (at most `CAPACITY` × `MAX_PEM_BYTES` of text).
pub(crate) struct ParsedKeys {
    min_bits: u32,
    keys: crate::memo::Memo<std::sync::Arc<WrappingKey>>,
}

impl ParsedKeys {
    const CAPACITY: usize = 256;

    pub(crate) fn new(min_bits: u32) -> ParsedKeys {
        ParsedKeys {
            min_bits,
            keys: crate::memo::Memo::new(Self::CAPACITY, MAX_PEM_BYTES),
        }
    }

    /// The key `pem` holds, parsed and checked as [`WrappingKey::from_pem`] does.
    pub(crate) fn get(&self, pem: &[u8]) -> Result<std::sync::Arc<WrappingKey>, WrapError> {
        if pem.len() > MAX_PEM_BYTES {
            // refused by from_pem; not worth looking up
            return WrappingKey::from_pem(pem, self.min_bits).map(std::sync::Arc::new);
        }
        if let Some(k) = self.keys.get(pem) {
            return Ok(k);
        }
        let key = std::sync::Arc::new(WrappingKey::from_pem(pem, self.min_bits)?);
        self.keys.put(pem, key.clone());
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;

    fn rsa_pem(bits: u32) -> (Vec<u8>, Vec<u8>, Rsa<openssl::pkey::Private>) {
        let rsa = Rsa::generate(bits).unwrap();
        (
            rsa.public_key_to_pem().unwrap(),
            rsa.public_key_to_pem_pkcs1().unwrap(),
            rsa,
        )
    }

    #[test]
    fn spki_and_pkcs1_give_the_same_key_and_fingerprint() {
        let (spki, pkcs1, rsa) = rsa_pem(2048);
        let a = WrappingKey::from_pem(&spki, 2048).unwrap();
        let b = WrappingKey::from_pem(&pkcs1, 2048).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.bits, 2048);
        assert_eq!(a.modulus_len(), 256);
        assert_eq!(a.modulus, rsa.n().to_vec());
        let der = PKey::from_rsa(rsa).unwrap().public_key_to_der().unwrap();
        assert_eq!(a.spki_sha256, openssl::sha::sha256(&der));
    }

    #[test]
    fn refusals() {
        let err = |pem: &[u8], min| WrappingKey::from_pem(pem, min).unwrap_err().to_string();
        let (spki, _, rsa) = rsa_pem(1024);
        assert!(err(&spki, 2048).contains("RSA-1024 is below the minimum of 2048"));

        let ec =
            EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap();
        let ec_pem = PKey::from_ec_key(ec).unwrap().public_key_to_pem().unwrap();
        assert!(err(&ec_pem, 2048).contains("EC key"));

        assert!(err(b"hello", 2048).contains("no PEM block"));
        let garbage = b"-----BEGIN PUBLIC KEY-----\nAAAA!!!!\n-----END PUBLIC KEY-----\n";
        assert!(err(garbage, 2048).contains("does not parse"));
        let mut big = spki.clone();
        big.resize(17 * 1024, b'\n');
        assert!(err(&big, 2048).contains("limit is 16384"));
        let private = rsa.private_key_to_pem().unwrap();
        assert!(err(&private, 1024).contains("private key"));
        let mut two = spki.clone();
        two.extend_from_slice(&spki);
        assert!(err(&two, 1024).contains("more than one"));
        assert!(err(&[0xff, 0xfe], 1024).contains("not text"));
    }

    #[test]
    fn parsed_keys_are_reused_and_refusals_are_not_kept() {
        let cache = ParsedKeys::new(2048);
        let (spki, pkcs1, _) = rsa_pem(2048);
        let a = cache.get(&spki).unwrap();
        let b = cache.get(&spki).unwrap();
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        // the same key in another encoding is parsed on its own, to the same key
        assert_eq!(cache.get(&pkcs1).unwrap().fingerprint(), a.fingerprint());
        let (small, _, _) = rsa_pem(1024);
        assert!(cache.get(&small).is_err());
        assert!(cache.get(&small).is_err());
        assert_eq!(cache.keys.len(), 2);
    }

    #[test]
    fn an_even_modulus_is_refused() {
        let (_, _, rsa) = rsa_pem(2048);
        let mut n = rsa.n().to_owned().unwrap();
        n.clear_bit(0).unwrap();
        let even = Rsa::from_public_components(n, BigNum::from_u32(65537).unwrap()).unwrap();
        let msg = WrappingKey::from_pem(&even.public_key_to_pem().unwrap(), 2048)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("modulus is even"), "{msg}");
    }

    #[test]
    fn exponent_one_is_refused() {
        let (_, _, rsa) = rsa_pem(2048);
        let n = rsa.n().to_owned().unwrap();
        let e1 = Rsa::from_public_components(n, BigNum::from_u32(1).unwrap()).unwrap();
        let pem = e1.public_key_to_pem().unwrap();
        let msg = WrappingKey::from_pem(&pem, 2048).unwrap_err().to_string();
        assert!(msg.contains("exponent"), "{msg}");
    }
}
