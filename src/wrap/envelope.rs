//! OCI's two wrapping algorithms, key shapes, and the exact layout of wrapped material.

use std::fmt;
use std::str::FromStr;

use super::WrapError;

/// OCI `wrappingAlgorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// C1 = RSA-OAEP-SHA256(wrapping key, K), C2 = RFC 5649(K, target); material = C1 || C2.
    RsaOaepAesSha256,
    /// material = RSA-OAEP-SHA256(wrapping key, raw AES key). AES targets only.
    RsaOaepSha256,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RsaOaepAesSha256 => "RSA_OAEP_AES_SHA256",
            Algorithm::RsaOaepSha256 => "RSA_OAEP_SHA256",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = WrapError;
    fn from_str(s: &str) -> Result<Self, WrapError> {
        match s {
            "RSA_OAEP_AES_SHA256" => Ok(Algorithm::RsaOaepAesSha256),
            "RSA_OAEP_SHA256" => Ok(Algorithm::RsaOaepSha256),
            other => Err(WrapError::UnknownAlgorithm(other.to_string())),
        }
    }
}

/// Key algorithms hsm-bridge exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Aes,
    Rsa,
}

impl KeyAlgorithm {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::Aes => "AES",
            KeyAlgorithm::Rsa => "RSA",
        }
    }
}

/// A key's shape, in OCI's `keyShape` units: algorithm and length in bytes (AES key bytes, RSA modulus bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyShape {
    pub algorithm: KeyAlgorithm,
    pub length: usize,
}

impl KeyShape {
    /// Whether OCI can import a key of this shape (AES 16/24/32, RSA 256/384/512 bytes).
    pub fn importable(&self) -> bool {
        match self.algorithm {
            KeyAlgorithm::Aes => matches!(self.length, 16 | 24 | 32),
            KeyAlgorithm::Rsa => matches!(self.length, 256 | 384 | 512),
        }
    }

    /// Human form: "AES-256", "RSA-3072".
    pub(crate) fn describe(&self) -> String {
        format!("{}-{}", self.algorithm.as_str(), self.length * 8)
    }
}

/// Length of RFC 5649 output for `n` bytes of plaintext.
pub fn kwp_len(n: usize) -> usize {
    8 + n.div_ceil(8) * 8
}

/// The one-time AES key's size in the hybrid layout (bytes): AES-256 for every cloud.
pub const TRANSPORT_KEY_LEN: usize = 32;

/// Checks that `material` has a plausible layout for `format`, a target of `shape`, and a
/// wrapping key of `modulus_len` bytes. Catches a token that answers with the wrong
/// construction before the bytes go anywhere.
pub fn check_layout(
    format: &super::Format,
    shape: KeyShape,
    modulus_len: usize,
    material: &[u8],
) -> Result<(), WrapError> {
    use super::Layout;
    let ok = match (format.layout, shape.algorithm) {
        (Layout::Direct, _) => material.len() == modulus_len,
        (Layout::Hybrid, KeyAlgorithm::Aes) => {
            material.len() == modulus_len + kwp_len(shape.length)
        }
        // PKCS#8 length is not known in advance; C2 is whole semiblocks and at least the
        // modulus itself long.
        (Layout::Hybrid, KeyAlgorithm::Rsa) => {
            material.len() > modulus_len + shape.length
                && (material.len() - modulus_len).is_multiple_of(8)
        }
    };
    if ok {
        Ok(())
    } else {
        Err(WrapError::Crypto(format!(
            "the token returned {} bytes, which is not a valid {format} layout for {} under a {}-bit wrapping key",
            material.len(),
            shape.describe(),
            modulus_len * 8
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_round_trip() {
        for a in [Algorithm::RsaOaepAesSha256, Algorithm::RsaOaepSha256] {
            assert_eq!(a.as_str().parse::<Algorithm>().unwrap(), a);
        }
        let err = "RSA_OAEP_SHA1".parse::<Algorithm>().unwrap_err();
        assert!(err.to_string().contains("RSA_OAEP_SHA1"));
    }

    #[test]
    fn shapes() {
        let s = |algorithm, length| KeyShape { algorithm, length };
        assert!(s(KeyAlgorithm::Aes, 24).importable());
        assert!(!s(KeyAlgorithm::Aes, 8).importable());
        assert!(s(KeyAlgorithm::Rsa, 384).importable());
        assert!(!s(KeyAlgorithm::Rsa, 128).importable());
        assert_eq!(s(KeyAlgorithm::Rsa, 384).describe(), "RSA-3072");
    }

    #[test]
    fn kwp_lengths_match_oci_facts() {
        assert_eq!(kwp_len(32), 40);
        assert_eq!(kwp_len(16), 24);
        assert_eq!(kwp_len(1217), 1232);
    }

    #[test]
    fn layout_check() {
        let hybrid = super::super::Format::oci(Algorithm::RsaOaepAesSha256);
        let direct = super::super::Format::oci(Algorithm::RsaOaepSha256);
        let aes = KeyShape {
            algorithm: KeyAlgorithm::Aes,
            length: 32,
        };
        assert!(check_layout(hybrid, aes, 512, &[0; 552]).is_ok());
        assert!(check_layout(hybrid, aes, 512, &[0; 551]).is_err());
        assert!(check_layout(direct, aes, 512, &[0; 512]).is_ok());
        let rsa = KeyShape {
            algorithm: KeyAlgorithm::Rsa,
            length: 256,
        };
        assert!(check_layout(hybrid, rsa, 512, &[0; 512 + 1232]).is_ok());
        assert!(check_layout(hybrid, rsa, 512, &[0; 512 + 40]).is_err());
    }
}
