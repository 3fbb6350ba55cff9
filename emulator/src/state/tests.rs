//! The vault's rules: material validated as OCI does, retry tokens, faults.

use super::*;
use hsm_bridge::wrap::soft::{kwp_wrap, oaep_encrypt};

fn wrapping() -> PKey<Private> {
    PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap()
}

fn envelope(wk: &PKey<Private>, plain: &[u8]) -> Vec<u8> {
    let kek = [7u8; 32];
    let mut out = oaep_encrypt(wk, OaepHash::Sha256, &kek).unwrap();
    out.extend(kwp_wrap(&kek, plain).unwrap());
    out
}

#[test]
fn material_is_validated_as_oci_does() {
    let wk = wrapping();
    let aes = [0x42u8; 32];
    // AES through both algorithms
    let m = envelope(&wk, &aes);
    assert_eq!(
        &unwrap_material(&wk, "RSA_OAEP_AES_SHA256", &m, ("AES", 32)).unwrap()[..],
        &aes
    );
    let m = oaep_encrypt(&wk, OaepHash::Sha256, &aes).unwrap();
    assert_eq!(
        &unwrap_material(&wk, "RSA_OAEP_SHA256", &m, ("AES", 32)).unwrap()[..],
        &aes
    );
    // wrong AES length
    let e = unwrap_material(&wk, "RSA_OAEP_SHA256", &m, ("AES", 16)).unwrap_err();
    assert!(e.contains("32 bytes") && e.contains("needs 16"), "{e}");
    // a truncated blob
    let e = unwrap_material(&wk, "RSA_OAEP_SHA256", &m[..255], ("AES", 32)).unwrap_err();
    assert!(e.contains("must be 256 bytes"), "{e}");
    // RSA: exact PKCS#8 only
    let rsa = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let p8 = rsa.private_key_to_pkcs8().unwrap();
    let m = envelope(&wk, &p8);
    assert_eq!(
        &unwrap_material(&wk, "RSA_OAEP_AES_SHA256", &m, ("RSA", 256)).unwrap()[..],
        &p8[..]
    );
    let e = unwrap_material(&wk, "RSA_OAEP_AES_SHA256", &m, ("RSA", 384)).unwrap_err();
    assert!(e.contains("256-byte modulus"), "{e}");
    let mut trailing = p8.clone();
    trailing.push(0);
    let e = unwrap_material(
        &wk,
        "RSA_OAEP_AES_SHA256",
        &envelope(&wk, &trailing),
        ("RSA", 256),
    )
    .unwrap_err();
    assert!(e.contains("1 bytes after its PKCS#8 DER"), "{e}");
    let e = unwrap_material(
        &wk,
        "RSA_OAEP_AES_SHA256",
        &envelope(&wk, &p8[..p8.len() - 9]),
        ("RSA", 256),
    )
    .unwrap_err();
    assert!(e.contains("truncated"), "{e}");
    let e = unwrap_material(&wk, "RSA_OAEP_SHA256", &m[..256], ("RSA", 256)).unwrap_err();
    assert!(e.contains("cannot carry an RSA private key"), "{e}");
    let e = unwrap_material(&wk, "RSA_OAEP_AES_SHA256", &m[..300], ("RSA", 256)).unwrap_err();
    assert!(e.contains("does not unwrap"), "{e}");
}

fn blank_entry() -> LogEntry {
    LogEntry {
        seq: 0,
        time: String::new(),
        method: String::new(),
        path: String::new(),
        body_sha256: String::new(),
        retry_token: None,
        client_request_id: None,
        opc_request_id: String::new(),
        key_id: None,
        status: 0,
        code: None,
        fault: false,
        created: None,
    }
}

#[test]
fn retry_tokens_replay_the_first_answer_and_refuse_other_requests() {
    let emu = Emulator::new(ApiKeys::default(), wrapping(), Duration::ZERO, false).unwrap();
    let header = |n: &str| (n == "opc-retry-token").then(|| "t-1".to_string());
    let req = |body: &'static [u8]| HttpRequest {
        method: "POST",
        target: "/20180608/keys/k/keyVersions/import",
        path: "/20180608/keys/k/keyVersions/import",
        query: "",
        header: &header,
        body,
    };
    let created = std::cell::Cell::new(0);
    let create = |_: &Emulator| {
        created.set(created.get() + 1);
        (
            Reply::json(200, &json!({ "n": created.get() })),
            Some("v".to_string()),
        )
    };
    let first = emu.idempotent(&req(b"{}"), &mut blank_entry(), create);
    let again = emu.idempotent(&req(b"{}"), &mut blank_entry(), create);
    assert_eq!((first.status, again.status), (200, 200));
    assert_eq!(first.body, again.body, "the first answer is replayed");
    let other = emu.idempotent(&req(b"{\"x\":1}"), &mut blank_entry(), create);
    assert_eq!(other.status, 409);
    assert_eq!(other.code().as_deref(), Some("InvalidatedRetryToken"));
    assert_eq!(created.get(), 1, "one create for three requests");
}

#[test]
fn faults_match_and_run_out() {
    let emu = Emulator::new(ApiKeys::default(), wrapping(), Duration::ZERO, false).unwrap();
    emu.add_fault(Fault {
        method: Some("GET".into()),
        path_contains: Some("wrappingKeys".into()),
        count: 2,
        status: Some(429),
        code: None,
        raw_body: None,
        delay_ms: 0,
        drop: false,
        processed: false,
    });
    let header = |_: &str| None;
    let req = |path: &'static str| HttpRequest {
        method: "GET",
        target: path,
        path,
        query: "",
        header: &header,
        body: b"",
    };
    let status = |o: Outcome| match o {
        Outcome::Reply { reply, .. } => reply.status,
        Outcome::Drop { .. } => 0,
    };
    assert_eq!(status(emu.handle(&req("/20180608/keys/x"))), 401);
    assert_eq!(status(emu.handle(&req("/20180608/wrappingKeys"))), 429);
    assert_eq!(status(emu.handle(&req("/20180608/wrappingKeys"))), 429);
    assert_eq!(status(emu.handle(&req("/20180608/wrappingKeys"))), 401);
    let log = emu.log();
    assert_eq!(log.len(), 4);
    assert!(log[1].fault && log[1].code.as_deref() == Some("TooManyRequests"));
    assert_eq!(log[3].code.as_deref(), Some("NotAuthenticated"));
}
