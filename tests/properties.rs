//! Property tests of the pure parts: OCI's envelope (RFC 5649 and OAEP halves, layout,
//! PKCS#8 fitting) and the OCI request signer, each against an independent check (the
//! `openssl` crate's key-wrap cipher; the emulator's signature verifier, which rebuilds the
//! signing string from headers).

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hsm_bridge::oci::{RequestParts, RequestSigner};
use hsm_bridge::wrap::envelope::{TRANSPORT_KEY_LEN, check_layout, kwp_len};
use hsm_bridge::wrap::soft::{OaepHash, kwp_unwrap, kwp_wrap, oaep_encrypt};
use hsm_bridge::wrap::verify::{Pkcs8Fit, open_envelope, pkcs8_fit};
use hsm_bridge::wrap::{Algorithm, Format, KeyAlgorithm, KeyShape};
use oci_kms_emulator::auth::{ApiKeys, Incoming, authenticate};
use openssl::pkey::{PKey, Private};
use proptest::prelude::*;

fn rsa2048() -> &'static PKey<Private> {
    static K: OnceLock<PKey<Private>> = OnceLock::new();
    K.get_or_init(|| PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap())
}

/// RFC 5649 with OpenSSL's `id-aes256-wrap-pad`, independent of `aes-kw`.
fn openssl_kwp_unwrap(kek: &[u8], wrapped: &[u8]) -> Option<Vec<u8>> {
    use openssl::cipher::Cipher;
    use openssl::cipher_ctx::{CipherCtx, CipherCtxFlags};
    let mut ctx = CipherCtx::new().ok()?;
    ctx.set_flags(CipherCtxFlags::FLAG_WRAP_ALLOW);
    ctx.decrypt_init(Some(Cipher::aes_256_wrap_pad()), Some(kek), None)
        .ok()?;
    let mut out = vec![0u8; wrapped.len() + 16];
    let n = ctx.cipher_update(wrapped, Some(&mut out)).ok()?;
    let m = ctx.cipher_final(&mut out[n..]).ok()?;
    out.truncate(n + m);
    Some(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// RFC 5649 output has the length OCI expects, opens with OpenSSL to the same bytes, and
    /// any flipped bit is detected.
    #[test]
    fn kwp_round_trips_and_detects_tampering(
        kek in prop::array::uniform32(any::<u8>()),
        plain in prop::collection::vec(any::<u8>(), 1..600),
        flip in any::<prop::sample::Index>(),
    ) {
        let wrapped = kwp_wrap(&kek, &plain).unwrap();
        prop_assert_eq!(wrapped.len(), kwp_len(plain.len()));
        prop_assert_eq!(openssl_kwp_unwrap(&kek, &wrapped).unwrap(), plain.clone());
        prop_assert_eq!(&kwp_unwrap(&kek, &wrapped).unwrap()[..], &plain[..]);
        let mut bad = wrapped.clone();
        let i = flip.index(bad.len());
        bad[i] ^= 1;
        prop_assert!(kwp_unwrap(&kek, &bad).is_err());
    }

    /// An envelope (OAEP of K with SHA-256 or SHA-1, then RFC 5649 under K) opens to the
    /// target with that hash only, and has the layout `check_layout` accepts for an AES
    /// target of that length.
    #[test]
    fn envelopes_open_and_have_the_hybrid_layout(
        k in prop::array::uniform32(any::<u8>()),
        len in prop::sample::select(vec![16usize, 24, 32]),
        seed in any::<u8>(),
        hash in prop::sample::select(vec![OaepHash::Sha256, OaepHash::Sha1]),
    ) {
        let target: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
        let key = rsa2048();
        let mut material = oaep_encrypt(key, hash, &k).unwrap();
        material.extend(kwp_wrap(&k, &target).unwrap());
        prop_assert_eq!(k.len(), TRANSPORT_KEY_LEN);
        prop_assert_eq!(&open_envelope(key, hash, &material).unwrap()[..], &target[..]);
        prop_assert!(open_envelope(key, hash.other(), &material).is_err());
        let shape = KeyShape { algorithm: KeyAlgorithm::Aes, length: len };
        let hybrid = Format::hybrid(hash);
        prop_assert!(check_layout(hybrid, shape, 256, &material).is_ok());
        prop_assert!(check_layout(hybrid, shape, 256, &material[..material.len() - 8]).is_err());
        let direct = Format::oci(Algorithm::RsaOaepSha256);
        prop_assert!(check_layout(direct, shape, 256, &material).is_err());
    }

    /// A DER SEQUENCE is exact, or padded with 1..7 zero bytes; anything else after it,
    /// or a truncation, is refused.
    #[test]
    fn pkcs8_fit_classifies_padding(
        body in prop::collection::vec(any::<u8>(), 0..1500),
        pad in 0usize..8,
        junk in 1u8..=255,
    ) {
        let mut der = vec![0x30];
        match body.len() {
            n if n < 0x80 => der.push(n as u8),
            n if n < 0x100 => der.extend([0x81, n as u8]),
            n => der.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        der.extend(&body);
        let mut padded = der.clone();
        padded.extend(std::iter::repeat_n(0u8, pad));
        let expected = if pad == 0 { Pkcs8Fit::Exact } else { Pkcs8Fit::ZeroPadded(pad) };
        prop_assert_eq!(pkcs8_fit(&padded).unwrap(), expected);
        let mut trailing = der.clone();
        trailing.push(junk);
        prop_assert!(pkcs8_fit(&trailing).is_err());
        if !body.is_empty() {
            prop_assert!(pkcs8_fit(&der[..der.len() - 1]).is_err());
        }
    }

    /// What the signer signs, an independent verifier (rebuilding the signing string from
    /// the headers as a server does) accepts; a changed body or path is refused.
    #[test]
    fn signed_requests_verify_and_tampering_is_refused(
        post in any::<bool>(),
        path in "/20180608/[a-zA-Z0-9._-]{1,40}(/[a-zA-Z0-9._-]{1,20}){0,3}",
        query in prop::option::of("[a-z]{1,8}=[a-zA-Z0-9]{0,12}"),
        body in prop::collection::vec(any::<u8>(), 0..300),
        port in prop::option::of(1u16..65535),
    ) {
        let (signer, keys) = signer();
        let method = if post { "POST" } else { "GET" };
        let host = match port { Some(p) if p != 443 => format!("kms.example.com:{p}"), _ => "kms.example.com".into() };
        let target = match &query { Some(q) => format!("{path}?{q}"), None => path.clone() };
        let url = format!("https://{host}{target}");
        let date = hsm_bridge::time::http_date(SystemTime::now());
        let body = if post { body } else { Vec::new() };
        let headers = signer.sign(&RequestParts { method, url: &url, date: &date, body: &body, content_type: "application/json" }).unwrap();
        let lookup = |name: &str| -> Option<String> {
            if name == "host" { return Some(host.clone()); }
            headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
        };
        let check = |target: &str, body: &[u8]| authenticate(keys, &Incoming { method, target, header: &lookup, body }, SystemTime::now());
        prop_assert_eq!(check(&target, &body).unwrap(), signer.key_id().to_string());
        let changed = format!("{}x", target);
        prop_assert!(check(&changed, &body).is_err());
        if post {
            let mut other = body.clone();
            other.push(b'!');
            prop_assert!(check(&target, &other).is_err());
        }
    }

    /// HTTP dates round-trip for any second from 1970 to 9999.
    #[test]
    fn http_dates_round_trip(secs in 0u64..253_402_300_799) {
        let t = UNIX_EPOCH + Duration::from_secs(secs);
        prop_assert_eq!(hsm_bridge::time::parse_http_date(&hsm_bridge::time::http_date(t)), Some(t));
    }
}

fn signer() -> &'static (RequestSigner, ApiKeys) {
    static S: OnceLock<(RequestSigner, ApiKeys)> = OnceLock::new();
    S.get_or_init(|| {
        let key = rsa2048().clone();
        let public = PKey::public_key_from_der(&key.public_key_to_der().unwrap()).unwrap();
        let fp = hsm_bridge::oci::signer::fingerprint(&key).unwrap();
        let mut keys = ApiKeys::default();
        keys.add(None, public).unwrap();
        (
            RequestSigner::new("ocid1.tenancy.oc1..t", "ocid1.user.oc1..u", &fp, key),
            keys,
        )
    })
}
