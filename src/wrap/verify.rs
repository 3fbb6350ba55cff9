//! Opening wrapped key material in software and judging whether a token's output is exactly
//! what was asked for. The self-test's decisions are these functions, so they are pure
//! and tested with crafted bytes.

use openssl::pkey::{HasPrivate, PKeyRef};
use zeroize::Zeroizing;

use super::envelope::TRANSPORT_KEY_LEN;
use super::soft::{OaepHash, kwp_unwrap, oaep_decrypt};

/// How a private key's PKCS#8 came out of an RFC 5649 unwrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pkcs8Fit {
    /// Exactly the DER, as OCI needs.
    Exact,
    /// The DER followed by this many zero bytes (SoftHSM2 before 2.7 pads to 8).
    ZeroPadded(usize),
}

/// Which part of a token's output an OAEP finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// A whole direct-OAEP output.
    Output,
    /// The RSA part of a hybrid envelope.
    RsaPart,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Part::Output => "the output",
            Part::RsaPart => "the RSA part",
        })
    }
}

/// Why a token's output is not exactly what was asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("OAEP-{} decrypts, but to a different value than was wrapped", .0.as_str())]
    OaepValue(OaepHash),
    #[error("{part} decrypts only as OAEP with {}: the token ignored the {} parameters", .got.as_str(), .got.other().as_str())]
    OaepOtherHash { part: Part, got: OaepHash },
    #[error("{part} is not RSA-OAEP with {h} / MGF1-{h}", h = .hash.as_str())]
    NotOaep { part: Part, hash: OaepHash },
    #[error("the output ({0} bytes) is not RFC 5649 under the given key")]
    NotKwp(usize),
    #[error("RFC 5649 unwraps to {got} bytes that differ from the {wrapped} bytes wrapped")]
    KwpValue { got: usize, wrapped: usize },
    #[error("not an RSA key")]
    NotRsa,
    #[error("{len} bytes is too short for a {k}-byte RSA part")]
    TooShort { len: usize, k: usize },
    #[error("the RSA part carries a {0}-byte key, not an AES-256 key")]
    NotAes256(usize),
    #[error("the AES part is not RFC 5649 under the RSA part's key")]
    AesPartNotKwp,
    #[error("the envelope opens to different bytes than were wrapped")]
    EnvelopeValue,
    #[error("the unwrapped private key is not DER")]
    NotDer,
    #[error("the unwrapped private key is truncated: DER says {der} bytes, got {got}")]
    Truncated { der: usize, got: usize },
    #[error("the unwrapped private key has {0} unexpected bytes after its DER")]
    Trailing(usize),
}

/// Accepts `ct` only if it is RSA-OAEP with `hash` and MGF1-`hash` of `expected`.
pub(crate) fn judge_oaep<T: HasPrivate>(
    key: &PKeyRef<T>,
    hash: OaepHash,
    ct: &[u8],
    expected: &[u8],
) -> Result<(), Mismatch> {
    let pt = open_oaep(key, hash, ct, Part::Output)?;
    if pt[..] == *expected {
        Ok(())
    } else {
        Err(Mismatch::OaepValue(hash))
    }
}

/// OAEP decryption of `ct` with `hash`, saying when it opens only with the other hash.
fn open_oaep<T: HasPrivate>(
    key: &PKeyRef<T>,
    hash: OaepHash,
    ct: &[u8],
    part: Part,
) -> Result<Zeroizing<Vec<u8>>, Mismatch> {
    oaep_decrypt(key, hash, ct).map_err(|_| {
        if oaep_decrypt(key, hash.other(), ct).is_ok() {
            Mismatch::OaepOtherHash {
                part,
                got: hash.other(),
            }
        } else {
            Mismatch::NotOaep { part, hash }
        }
    })
}

/// Accepts `ct` only if it is RFC 5649 of `expected` under `kek`.
pub(crate) fn judge_kwp(kek: &[u8], ct: &[u8], expected: &[u8]) -> Result<(), Mismatch> {
    let pt = kwp_unwrap(kek, ct).map_err(|_| Mismatch::NotKwp(ct.len()))?;
    if pt[..] == *expected {
        Ok(())
    } else {
        Err(Mismatch::KwpValue {
            got: pt.len(),
            wrapped: expected.len(),
        })
    }
}

/// Splits hybrid material (OAEP with `hash` of K, then RFC 5649 under K) and opens both
/// halves: returns the target bytes as wrapped (for a private key, possibly padded PKCS#8).
pub fn open_envelope<T: HasPrivate>(
    key: &PKeyRef<T>,
    hash: OaepHash,
    material: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Mismatch> {
    let k = key.rsa().map_err(|_| Mismatch::NotRsa)?.size() as usize;
    if material.len() <= k {
        return Err(Mismatch::TooShort {
            len: material.len(),
            k,
        });
    }
    let (c1, c2) = material.split_at(k);
    let kek = open_oaep(key, hash, c1, Part::RsaPart)?;
    if kek.len() != TRANSPORT_KEY_LEN {
        return Err(Mismatch::NotAes256(kek.len()));
    }
    kwp_unwrap(&kek, c2).map_err(|_| Mismatch::AesPartNotKwp)
}

/// Accepts `material` only if it is the hybrid layout with `hash` of exactly `expected`.
pub(crate) fn judge_envelope<T: HasPrivate>(
    key: &PKeyRef<T>,
    hash: OaepHash,
    material: &[u8],
    expected: &[u8],
) -> Result<(), Mismatch> {
    let pt = open_envelope(key, hash, material)?;
    if pt[..] == *expected {
        Ok(())
    } else {
        Err(Mismatch::EnvelopeValue)
    }
}

/// Total length of the DER element at the start of `der` (tag, length, contents), if its
/// header is a well-formed SEQUENCE header.
pub fn der_sequence_len(der: &[u8]) -> Option<usize> {
    if *der.first()? != 0x30 {
        return None;
    }
    let first = *der.get(1)? as usize;
    if first < 0x80 {
        return Some(2 + first);
    }
    let n = first & 0x7f;
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | *der.get(2 + i)? as usize;
    }
    if len < 0x80 {
        return None; // not minimal DER
    }
    Some(2 + n + len)
}

/// Classifies an unwrapped PKCS#8 blob: exact DER, or DER plus 1..7 zero bytes. Anything
/// else (truncated, non-zero trailing bytes, not a SEQUENCE) is an error.
pub fn pkcs8_fit(blob: &[u8]) -> Result<Pkcs8Fit, Mismatch> {
    let len = der_sequence_len(blob).ok_or(Mismatch::NotDer)?;
    if len > blob.len() {
        return Err(Mismatch::Truncated {
            der: len,
            got: blob.len(),
        });
    }
    let rest = &blob[len..];
    if rest.is_empty() {
        Ok(Pkcs8Fit::Exact)
    } else if rest.len() < 8 && rest.iter().all(|&b| b == 0) {
        Ok(Pkcs8Fit::ZeroPadded(rest.len()))
    } else {
        Err(Mismatch::Trailing(rest.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wrap::soft::{kwp_wrap, oaep_encrypt};
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;

    fn rsa() -> PKey<openssl::pkey::Private> {
        PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
    }

    #[test]
    fn oaep_judge_accepts_sha256_rejects_sha1_with_reason() {
        let key = rsa();
        let k = [9u8; 32];
        let good = oaep_encrypt(&key, OaepHash::Sha256, &k).unwrap();
        let sha256 = OaepHash::Sha256;
        assert_eq!(judge_oaep(&key, sha256, &good, &k), Ok(()));
        assert!(judge_oaep(&key, sha256, &good, &[8u8; 32]).is_err());
        // What SoftHSM 2.7.0 does when asked for 0x1054 with SHA-256: SHA-1 output.
        let sha1 = oaep_encrypt(&key, OaepHash::Sha1, &k).unwrap();
        let why = judge_oaep(&key, sha256, &sha1, &k).unwrap_err();
        assert_eq!(
            why,
            Mismatch::OaepOtherHash {
                part: Part::Output,
                got: OaepHash::Sha1
            }
        );
        assert!(why.to_string().contains("only as OAEP with SHA-1"), "{why}");
        let why = judge_oaep(&key, sha256, &[0u8; 256], &k).unwrap_err();
        assert!(
            why.to_string().contains("not RSA-OAEP with SHA-256"),
            "{why}"
        );
        // And the other way round: SHA-1 asked for, SHA-256 given.
        assert_eq!(judge_oaep(&key, OaepHash::Sha1, &sha1, &k), Ok(()));
        let why = judge_oaep(&key, OaepHash::Sha1, &good, &k).unwrap_err();
        assert!(
            why.to_string().contains("ignored the SHA-1 parameters"),
            "{why}"
        );
    }

    #[test]
    fn envelope_judge() {
        let key = rsa();
        let kek = [3u8; 32];
        let target = [5u8; 24];
        let c2 = kwp_wrap(&kek, &target).unwrap();
        let mut good = oaep_encrypt(&key, OaepHash::Sha256, &kek).unwrap();
        good.extend_from_slice(&c2);
        assert_eq!(
            judge_envelope(&key, OaepHash::Sha256, &good, &target),
            Ok(())
        );

        let mut sha1 = oaep_encrypt(&key, OaepHash::Sha1, &kek).unwrap();
        sha1.extend_from_slice(&c2);
        let why = judge_envelope(&key, OaepHash::Sha256, &sha1, &target).unwrap_err();
        assert_eq!(
            why,
            Mismatch::OaepOtherHash {
                part: Part::RsaPart,
                got: OaepHash::Sha1
            }
        );
        assert_eq!(judge_envelope(&key, OaepHash::Sha1, &sha1, &target), Ok(()));
        assert!(why.to_string().contains("SHA-1"), "{why}");

        // A 16-byte transport key is not what OCI documents.
        let mut short = oaep_encrypt(&key, OaepHash::Sha256, &[3u8; 16]).unwrap();
        short.extend_from_slice(&c2);
        let why = judge_envelope(&key, OaepHash::Sha256, &short, &target).unwrap_err();
        assert_eq!(why, Mismatch::NotAes256(16));
        assert!(why.to_string().contains("16-byte"), "{why}");

        // Halves swapped (AES part first) must not pass.
        let mut swapped = c2.clone();
        swapped.extend_from_slice(&good[..256]);
        assert!(judge_envelope(&key, OaepHash::Sha256, &swapped, &target).is_err());
        assert!(judge_kwp(&kek, &c2, &target).is_ok());
        assert!(judge_kwp(&kek, &c2, &[5u8; 16]).is_err());
    }

    #[test]
    fn der_lengths() {
        assert_eq!(der_sequence_len(&[0x30, 0x03, 1, 2, 3]), Some(5));
        assert_eq!(der_sequence_len(&[0x30, 0x82, 0x04, 0xbd]), Some(4 + 0x4bd));
        assert_eq!(der_sequence_len(&[0x30, 0x81, 0x05]), None, "non-minimal");
        assert_eq!(der_sequence_len(&[0x02, 0x01]), None);
        assert_eq!(der_sequence_len(&[0x30]), None);
        assert_eq!(der_sequence_len(&[0x30, 0x80]), None, "indefinite length");
    }

    #[test]
    fn pkcs8_padding_classification() {
        let der = rsa().private_key_to_pkcs8().unwrap();
        assert_eq!(pkcs8_fit(&der), Ok(Pkcs8Fit::Exact));
        let mut padded = der.clone();
        padded.extend_from_slice(&[0, 0, 0]);
        assert_eq!(pkcs8_fit(&padded), Ok(Pkcs8Fit::ZeroPadded(3)));
        let mut junk = der.clone();
        junk.extend_from_slice(&[0, 1]);
        assert!(pkcs8_fit(&junk).is_err());
        let mut long = der.clone();
        long.extend_from_slice(&[0; 8]);
        assert!(pkcs8_fit(&long).is_err());
        let why = pkcs8_fit(&der[..der.len() - 1]).unwrap_err();
        assert!(why.to_string().contains("truncated"), "{why}");
    }
}
