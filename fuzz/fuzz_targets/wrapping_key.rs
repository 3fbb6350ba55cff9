//! The wrapping-key parser: any bytes a caller sends as `wrapping_public_key_pem`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(k) = hsm_bridge::wrap::WrappingKey::from_pem(data, 2048) {
        // A key that passes is usable: odd exponent > 1, odd modulus, sane size.
        assert!(k.bits >= 2048 && k.bits <= 16384);
        assert!(k.modulus.last().is_some_and(|b| b & 1 == 1));
    }
});
