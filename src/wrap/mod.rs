//! Pure functions around the clouds' import formats: the formats as data, the layouts and
//! envelopes, wrapping-key parsing and validation, and the software OAEP / RFC 5649 used by hybrid mode and by the self-test.
//!
//! Nothing here talks to the HSM. Key material that passes through here (the one-time
//! AES key K, a padded PKCS#8 blob being re-wrapped) lives only in zeroizing buffers.

pub mod envelope;
pub(crate) mod format;
pub mod soft;
pub mod verify;
pub(crate) mod wrapping_key;

pub use envelope::{Algorithm, KeyAlgorithm, KeyShape};
pub(crate) use format::Cloud;
pub use format::{AzureKek, FORMATS, Format, Layout};
pub use wrapping_key::WrappingKey;

/// Errors from parsing outside input and from the software crypto.
#[derive(Debug, thiserror::Error)]
pub enum WrapError {
    #[error("wrapping key: {0}")]
    WrappingKey(String),
    #[error("unknown wrapping algorithm {0:?}: expected RSA_OAEP_AES_SHA256 or RSA_OAEP_SHA256")]
    UnknownAlgorithm(String),
    #[error("unknown format {0:?}: expected one of {names}", names = format::Format::names())]
    UnknownFormat(String),
    #[error("{0}")]
    Format(String),
    #[error("{0}")]
    Crypto(String),
}

/// Lower-case hex, for fingerprints and CKA_ID. By table, not `write!` per byte: it runs
/// several times per call (BENCHMARKS.md, "The daemon's own CPU per call").
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Parses hex (either case, no separators). `None` on odd length or a non-hex character.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    // from_str_radix alone would take "+1" as a digit pair
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex(&[0x00, 0xab, 0x10]), "00ab10");
        assert_eq!(unhex("00AB10"), Some(vec![0x00, 0xab, 0x10]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("+1+3"), None, "a sign is not a hex digit");
        assert_eq!(unhex("-1"), None);
        assert_eq!(unhex(""), Some(vec![]));
        let every: Vec<u8> = (0..=255).collect();
        let formatted: String = every.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&every), formatted);
        assert_eq!(unhex(&formatted), Some(every));
    }
}
