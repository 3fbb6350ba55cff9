//! The signer's input (method, URL, date, body) and the emulator's verifier of incoming
//! signatures (Authorization header, headers, body), from one byte string split at newlines.
#![no_main]
use std::sync::OnceLock;
use std::time::SystemTime;

use oci_kms_emulator::auth::{ApiKeys, Incoming, authenticate};
use hsm_bridge::oci::{RequestParts, RequestSigner};
use libfuzzer_sys::fuzz_target;

fn keys() -> &'static ApiKeys {
    static K: OnceLock<ApiKeys> = OnceLock::new();
    K.get_or_init(|| {
        let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
        let public =
            openssl::pkey::PKey::public_key_from_der(&rsa.public_key_to_der().unwrap()).unwrap();
        let mut k = ApiKeys::default();
        k.add(None, public).unwrap();
        k
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut f = text.splitn(6, '\n');
    let (method, url, date, auth, sha) = (
        f.next().unwrap_or(""),
        f.next().unwrap_or(""),
        f.next().unwrap_or(""),
        f.next().unwrap_or(""),
        f.next().unwrap_or(""),
    );
    let body = f.next().unwrap_or("").as_bytes();
    let parts = RequestParts {
        method,
        url,
        date,
        body,
        content_type: "application/json",
    };
    let _ = RequestSigner::signing_string(&parts);
    let header = |name: &str| match name {
        "authorization" => Some(auth.to_string()),
        "date" => Some(date.to_string()),
        "host" => Some("kms.example.com".to_string()),
        "x-content-sha256" => Some(sha.to_string()),
        "content-length" => Some(body.len().to_string()),
        "content-type" => Some("application/json".to_string()),
        _ => None,
    };
    let r = authenticate(
        keys(),
        &Incoming {
            method,
            target: url,
            header: &header,
            body,
        },
        SystemTime::now(),
    );
    assert!(r.is_err(), "a random request authenticated");
});
