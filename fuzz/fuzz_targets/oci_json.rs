//! OCI's JSON as the client reads it: key versions, keys, wrapping keys, error bodies.
#![no_main]
use hsm_bridge::oci::kms;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<kms::KeyVersion>(data);
    let _ = serde_json::from_slice::<kms::Key>(data);
    let _ = kms::error_body(data);
    if let Ok(v) = serde_json::from_slice::<kms::KeyVersion>(data) {
        // what the daemon hands back must survive a round trip
        let again: kms::KeyVersion =
            serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
        assert_eq!(again.id, v.id);
    }
});
