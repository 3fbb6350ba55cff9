//! The GCP emulator's rules, driven through its request handler: enums both ways, import
//! jobs over time, imports (wraps built here with the openssl crate) and each refusal,
//! material checks, tokens (self-signed JWTs and the metadata server's), paging and
//! filters, faults.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;
use openssl::hash::MessageDigest;
use openssl::md::Md;
use openssl::pkey::{PKey, Private};
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::Padding;
use openssl::sign::Signer;
use serde_json::{Value, json};

use super::*;
use crate::azure::protocol::b64url;

const RING: &str = "projects/p1/locations/global/keyRings/r1";
const EMAIL: &str = "importer@p1.iam.gserviceaccount.com";
const KID: &str = "0123456789abcdef0123456789abcdef01234567";
const INTS: &str = "$alt=json;enum-encoding=int";

fn sa_key() -> &'static PKey<Private> {
    static K: OnceLock<PKey<Private>> = OnceLock::new();
    K.get_or_init(|| PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap())
}

fn sa_json(key: &PKey<Private>, kid: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": "p1",
        "private_key_id": kid,
        "private_key": String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap(),
        "client_email": EMAIL,
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    })
    .to_string()
}

fn rig() -> GcpKms {
    let kms = GcpKms::new(Config {
        service_accounts: vec![ServiceAccount::from_json(&sa_json(sa_key(), KID)).unwrap()],
        metadata_email: Some(EMAIL.into()),
        job_generation: Duration::from_millis(300),
        job_ttl: Duration::from_secs(3 * 86_400),
        import_delay: Duration::from_millis(200),
        token_ttl: Duration::from_secs(3599),
        test_oracle: true,
    });
    kms.seed_key_ring(RING).unwrap();
    kms
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A self-signed JWT with these claims, signed by `key` under `kid`.
fn jwt_with(key: &PKey<Private>, kid: &str, claims: &Value) -> String {
    let header = b64url(
        json!({"alg": "RS256", "typ": "JWT", "kid": kid})
            .to_string()
            .as_bytes(),
    );
    let claims = b64url(claims.to_string().as_bytes());
    let mut s = Signer::new(MessageDigest::sha256(), key).unwrap();
    s.update(format!("{header}.{claims}").as_bytes()).unwrap();
    format!("{header}.{claims}.{}", b64url(&s.sign_to_vec().unwrap()))
}

fn jwt(now: SystemTime) -> String {
    let t = secs(now);
    jwt_with(
        sa_key(),
        KID,
        &json!({"iss": EMAIL, "sub": EMAIL, "aud": AUDIENCE, "iat": t, "exp": t + 3600}),
    )
}

/// The answer's status and JSON, or `None` for a dropped connection.
fn send_with(
    kms: &GcpKms,
    method: &str,
    target: &str,
    auth: Option<&str>,
    body: Option<Value>,
    now: SystemTime,
) -> Option<(u16, Value, Duration)> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = vec![("host".to_string(), "localhost".to_string())];
    if let Some(a) = auth {
        headers.push(("authorization".into(), a.to_string()));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = Request {
        method,
        path,
        query,
        headers: &headers,
        body: body.as_bytes(),
    };
    let out = if path.starts_with("/computeMetadata") || path == "/" {
        kms.metadata(&req, now)
    } else {
        kms.handle(&req, now)
    };
    match out {
        Outcome::Reply { reply, delay } => Some((
            reply.status,
            serde_json::from_slice(&reply.body)
                .unwrap_or_else(|_| json!(String::from_utf8_lossy(&reply.body))),
            delay,
        )),
        Outcome::Drop { .. } => None,
    }
}

fn send(
    kms: &GcpKms,
    method: &str,
    target: &str,
    body: Option<Value>,
    now: SystemTime,
) -> (u16, Value) {
    let auth = format!("Bearer {}", jwt(now));
    let (s, v, _) = send_with(kms, method, target, Some(&auth), body, now).expect("an answer");
    (s, v)
}

fn job(kms: &GcpKms, id: &str, method: i64, protection: i64, now: SystemTime) -> Value {
    let (s, v) = send(
        kms,
        "POST",
        &format!("/v1/{RING}/importJobs?importJobId={id}&{INTS}"),
        Some(json!({"importMethod": method, "protectionLevel": protection})),
        now,
    );
    assert_eq!(s, 200, "{v}");
    v
}

fn public_of(job: &Value) -> PKey<openssl::pkey::Public> {
    PKey::public_key_from_pem(job["publicKey"]["pem"].as_str().unwrap().as_bytes()).unwrap()
}

fn key(kms: &GcpKms, id: &str, purpose: &str, alg: &str, protection: &str) {
    let (s, v) = send(
        kms,
        "POST",
        &format!("/v1/{RING}/cryptoKeys?cryptoKeyId={id}&skipInitialVersionCreation=true"),
        Some(json!({"purpose": purpose, "importOnly": true,
                    "versionTemplate": {"protectionLevel": protection, "algorithm": alg}})),
        SystemTime::now(),
    );
    assert_eq!(s, 200, "{v}");
}

fn oaep(key: &PKey<openssl::pkey::Public>, sha1: bool, data: &[u8]) -> Vec<u8> {
    let md = if sha1 { Md::sha1() } else { Md::sha256() };
    let mut ctx = PkeyCtx::new(key).unwrap();
    ctx.encrypt_init().unwrap();
    ctx.set_rsa_padding(Padding::PKCS1_OAEP).unwrap();
    ctx.set_rsa_oaep_md(md).unwrap();
    ctx.set_rsa_mgf1_md(md).unwrap();
    let mut out = Vec::new();
    ctx.encrypt_to_vec(data, &mut out).unwrap();
    out
}

fn kwp(kek: &[u8], data: &[u8]) -> Vec<u8> {
    let mut ctx = CipherCtx::new().unwrap();
    ctx.encrypt_init(Some(Cipher::aes_256_wrap_pad()), Some(kek), None)
        .unwrap();
    let mut out = vec![0u8; data.len() + 64];
    let n = ctx.cipher_update(data, Some(&mut out)).unwrap();
    let m = ctx.cipher_final(&mut out[n..]).unwrap();
    out.truncate(n + m);
    out
}

/// Google's hybrid wrap: RSA-OAEP of a fresh AES-256 key, then RFC 5649 of the material.
fn hybrid(job: &Value, sha1: bool, material: &[u8]) -> Vec<u8> {
    let aes = crate::azure::protocol::random(32);
    [oaep(&public_of(job), sha1, &aes), kwp(&aes, material)].concat()
}

fn import(
    kms: &GcpKms,
    key: &str,
    alg: &str,
    job: &str,
    wrapped: &[u8],
    now: SystemTime,
) -> (u16, Value) {
    send(
        kms,
        "POST",
        &format!("/v1/{RING}/cryptoKeys/{key}/cryptoKeyVersions:import?{INTS}"),
        Some(
            json!({"algorithm": alg, "importJob": format!("{RING}/importJobs/{job}"),
                    "wrappedKey": openssl::base64::encode_block(wrapped)}),
        ),
        now,
    )
}

fn get(kms: &GcpKms, name: &str, now: SystemTime) -> Value {
    let (s, v) = send(kms, "GET", &format!("/v1/{name}"), None, now);
    assert_eq!(s, 200, "{v}");
    v
}

fn oracle(kms: &GcpKms, name: &str) -> Vec<u8> {
    kms.material(name).unwrap().to_vec()
}

#[test]
fn enums_go_out_as_numbers_or_names_and_come_in_as_either() {
    let kms = rig();
    let t0 = SystemTime::now();
    let v = job(&kms, "j1", 3, 2, t0);
    assert_eq!(v["importMethod"], 3);
    assert_eq!(v["protectionLevel"], 2);
    assert_eq!(v["state"], 1);
    assert!(v.get("publicKey").is_none() && v.get("generateTime").is_none());
    let (s, v) = send(
        &kms,
        "POST",
        &format!("/v1/{RING}/importJobs?importJobId=j2"),
        Some(json!({"importMethod": "RSA_OAEP_3072_SHA256", "protectionLevel": "SOFTWARE"})),
        t0,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["importMethod"], "RSA_OAEP_3072_SHA256");
    assert_eq!(v["state"], "PENDING_GENERATION");
    let v = get(
        &kms,
        &format!("{RING}/importJobs/j1?{INTS}"),
        t0 + Duration::from_secs(1),
    );
    assert_eq!(v["state"], 2);
    let v = get(
        &kms,
        &format!("{RING}/importJobs/j1"),
        t0 + Duration::from_secs(1),
    );
    assert_eq!(v["state"], "ACTIVE");
    assert_eq!(v["importMethod"], "RSA_OAEP_3072_SHA256_AES_256");
    // a key: names in, numbers out and back
    key(
        &kms,
        "k",
        "ENCRYPT_DECRYPT",
        "GOOGLE_SYMMETRIC_ENCRYPTION",
        "HSM",
    );
    let v = get(&kms, &format!("{RING}/cryptoKeys/k?{INTS}"), t0);
    assert_eq!(v["purpose"], 1);
    assert_eq!(
        v["versionTemplate"],
        json!({"protectionLevel": 2, "algorithm": 1})
    );
    assert_eq!(v["importOnly"], true);
    let v = get(&kms, &format!("{RING}/cryptoKeys/k"), t0);
    assert_eq!(v["purpose"], "ENCRYPT_DECRYPT");
    // an unknown enum number is refused
    let (s, v) = send(
        &kms,
        "POST",
        &format!("/v1/{RING}/importJobs?importJobId=j3"),
        Some(json!({"importMethod": 77, "protectionLevel": 2})),
        t0,
    );
    assert_eq!(
        (s, v["error"]["status"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
}

#[test]
fn jobs_go_pending_active_expired_and_faults_change_the_next_one() {
    let kms = rig();
    let t0 = SystemTime::now();
    let v = job(&kms, "j", 1, 1, t0);
    let name = format!("{RING}/importJobs/j");
    assert_eq!(v["name"], name.as_str());
    let expire = hsm_bridge::time::rfc3339(t0 + Duration::from_secs(3 * 86_400));
    assert_eq!(v["expireTime"], expire.as_str());
    let at = |d: Duration| get(&kms, &format!("{name}?{INTS}"), t0 + d);
    assert_eq!(at(Duration::from_millis(299))["state"], 1);
    let active = at(Duration::from_millis(300));
    assert_eq!(active["state"], 2);
    assert_eq!(public_of(&active).rsa().unwrap().size(), 384);
    assert!(active["generateTime"].is_string());
    let expired = at(Duration::from_secs(3 * 86_400));
    assert_eq!(expired["state"], 3);
    assert!(expired.get("publicKey").is_none());
    // duplicate, bad id, no ring, bad protection
    let (s, v) = send(
        &kms,
        "POST",
        &format!("/v1/{RING}/importJobs?importJobId=j"),
        Some(json!({"importMethod": 1, "protectionLevel": 1})),
        t0,
    );
    assert_eq!(
        (s, v["error"]["status"].as_str()),
        (409, Some("ALREADY_EXISTS"))
    );
    let (s, _) = send(
        &kms,
        "POST",
        &format!("/v1/{RING}/importJobs?importJobId=a.b"),
        Some(json!({"importMethod": 1, "protectionLevel": 1})),
        t0,
    );
    assert_eq!(s, 400);
    let (s, _) = send(
        &kms,
        "POST",
        "/v1/projects/p1/locations/global/keyRings/none/importJobs?importJobId=x",
        Some(json!({"importMethod": 1, "protectionLevel": 1})),
        t0,
    );
    assert_eq!(s, 404);
    let (s, _) = send(
        &kms,
        "POST",
        &format!("/v1/{RING}/importJobs?importJobId=x"),
        Some(json!({"importMethod": 1, "protectionLevel": 3})),
        t0,
    );
    assert_eq!(s, 400);
    // job faults, each for the next job only
    kms.add_job_faults(JobFaults {
        job_stays_pending: true,
        job_key_bits: Some(3072),
        ..Default::default()
    });
    job(&kms, "stuck", 2, 2, t0);
    assert_eq!(
        get(
            &kms,
            &format!("{RING}/importJobs/stuck"),
            t0 + Duration::from_secs(60)
        )["state"],
        "PENDING_GENERATION"
    );
    kms.add_job_faults(JobFaults {
        job_key_bits: Some(3072),
        job_expired: true,
        ..Default::default()
    });
    let v = job(&kms, "gone", 2, 2, t0);
    assert_eq!(v["state"], 3);
    kms.add_job_faults(JobFaults {
        job_key_bits: Some(3072),
        ..Default::default()
    });
    job(&kms, "small", 2, 2, t0);
    let small = get(
        &kms,
        &format!("{RING}/importJobs/small"),
        t0 + Duration::from_secs(1),
    );
    assert_eq!(small["state"], "ACTIVE");
    assert_eq!(public_of(&small).rsa().unwrap().size(), 384);
    // listing
    let (s, v) = send(
        &kms,
        "GET",
        &format!("/v1/{RING}/importJobs?pageSize=2"),
        None,
        t0,
    );
    assert_eq!(s, 200);
    assert_eq!(v["totalSize"], 4);
    assert_eq!(v["importJobs"].as_array().unwrap().len(), 2);
    let tok = v["nextPageToken"].as_str().unwrap();
    let (_, v) = send(
        &kms,
        "GET",
        &format!("/v1/{RING}/importJobs?pageSize=2&pageToken={tok}"),
        None,
        t0,
    );
    assert_eq!(v["importJobs"].as_array().unwrap().len(), 2);
    assert!(v.get("nextPageToken").is_none());
}

#[test]
fn imports_unwrap_methods_3_4_5_and_check_the_material() {
    let kms = rig();
    let t0 = SystemTime::now();
    let later = t0 + Duration::from_secs(1);
    job(&kms, "m3", 3, 2, t0);
    job(&kms, "m4", 4, 2, t0);
    job(&kms, "m5", 5, 2, t0);
    let (j3, j4, j5) = (
        get(&kms, &format!("{RING}/importJobs/m3"), later),
        get(&kms, &format!("{RING}/importJobs/m4"), later),
        get(&kms, &format!("{RING}/importJobs/m5"), later),
    );
    key(
        &kms,
        "sym",
        "ENCRYPT_DECRYPT",
        "GOOGLE_SYMMETRIC_ENCRYPTION",
        "HSM",
    );
    key(
        &kms,
        "rsa",
        "ASYMMETRIC_SIGN",
        "RSA_SIGN_PKCS1_3072_SHA256",
        "HSM",
    );
    key(&kms, "raw", "RAW_ENCRYPT_DECRYPT", "AES_128_GCM", "HSM");
    let aes = crate::azure::protocol::random(32);
    let rsa = PKey::from_rsa(openssl::rsa::Rsa::generate(3072).unwrap()).unwrap();
    let rsa_der = rsa.private_key_to_pkcs8().unwrap();
    let aes128 = crate::azure::protocol::random(16);

    let (s, v) = import(
        &kms,
        "sym",
        "GOOGLE_SYMMETRIC_ENCRYPTION",
        "m3",
        &hybrid(&j3, false, &aes),
        later,
    );
    assert_eq!(s, 200, "{v}");
    let v1 = format!("{RING}/cryptoKeys/sym/cryptoKeyVersions/1");
    assert_eq!(v["name"], v1.as_str());
    assert_eq!(v["state"], 6);
    assert_eq!(v["importJob"], format!("{RING}/importJobs/m3"));
    // no primary until ENABLED; then version 1
    assert!(
        get(&kms, &format!("{RING}/cryptoKeys/sym"), later)
            .get("primary")
            .is_none()
    );
    let done = later + Duration::from_millis(200);
    let v = get(&kms, &format!("{v1}?{INTS}"), done);
    assert_eq!(v["state"], 1);
    assert!(v["importTime"].is_string());
    assert_eq!(
        get(&kms, &format!("{RING}/cryptoKeys/sym"), done)["primary"]["name"],
        v1.as_str()
    );
    assert_eq!(oracle(&kms, &v1), aes);

    let (s, v) = import(
        &kms,
        "rsa",
        "RSA_SIGN_PKCS1_3072_SHA256",
        "m4",
        &hybrid(&j4, false, &rsa_der),
        later,
    );
    assert_eq!(s, 200, "{v}");
    let r1 = format!("{RING}/cryptoKeys/rsa/cryptoKeyVersions/1");
    assert_eq!(get(&kms, &r1, done)["state"], "ENABLED");
    assert_eq!(oracle(&kms, &r1), rsa_der);
    let (s, pk) = send(&kms, "GET", &format!("/v1/{r1}/publicKey"), None, done);
    assert_eq!(s, 200, "{pk}");
    assert_eq!(
        pk["pem"].as_str().unwrap().as_bytes(),
        rsa.public_key_to_pem().unwrap()
    );
    assert_eq!(pk["algorithm"], "RSA_SIGN_PKCS1_3072_SHA256");
    assert_eq!(
        pk["pemCrc32c"],
        protocol::crc32c(pk["pem"].as_str().unwrap().as_bytes()).to_string()
    );
    // no public key for a symmetric version, nor for one not ENABLED
    let (s, v) = send(&kms, "GET", &format!("/v1/{v1}/publicKey"), None, done);
    assert_eq!(
        (s, v["error"]["status"].as_str()),
        (400, Some("FAILED_PRECONDITION"))
    );

    // method 5: OAEP-SHA256 of the material itself
    let (s, v) = import(
        &kms,
        "raw",
        "AES_128_GCM",
        "m5",
        &oaep(&public_of(&j5), false, &aes128),
        later,
    );
    assert_eq!(s, 200, "{v}");
    let a1 = format!("{RING}/cryptoKeys/raw/cryptoKeyVersions/1");
    assert_eq!(get(&kms, &a1, done)["state"], "ENABLED");
    assert_eq!(oracle(&kms, &a1), aes128);

    // material that does not fit: IMPORT_FAILED with a reason
    let (s, _) = import(
        &kms,
        "raw",
        "AES_128_GCM",
        "m5",
        &oaep(&public_of(&j5), false, &aes),
        later,
    );
    assert_eq!(s, 200);
    let a2 = get(
        &kms,
        &format!("{RING}/cryptoKeys/raw/cryptoKeyVersions/2"),
        done,
    );
    assert_eq!(a2["state"], "IMPORT_FAILED");
    assert!(
        a2["importFailureReason"]
            .as_str()
            .unwrap()
            .contains("16 bytes"),
        "{a2}"
    );
    let small = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    import(
        &kms,
        "rsa",
        "RSA_SIGN_PKCS1_3072_SHA256",
        "m4",
        &hybrid(&j4, false, &small.private_key_to_pkcs8().unwrap()),
        later,
    );
    let r2 = get(
        &kms,
        &format!("{RING}/cryptoKeys/rsa/cryptoKeyVersions/2"),
        done,
    );
    assert_eq!(r2["state"], "IMPORT_FAILED");
    assert!(
        r2["importFailureReason"]
            .as_str()
            .unwrap()
            .contains("2048-bit"),
        "{r2}"
    );
    // the wrong OAEP hash does not decrypt
    import(
        &kms,
        "sym",
        "GOOGLE_SYMMETRIC_ENCRYPTION",
        "m3",
        &hybrid(&j3, true, &aes),
        later,
    );
    assert_eq!(
        get(
            &kms,
            &format!("{RING}/cryptoKeys/sym/cryptoKeyVersions/2"),
            done
        )["state"],
        "IMPORT_FAILED"
    );
    // the import_fails fault
    kms.add_job_faults(JobFaults {
        import_fails: Some("injected failure".into()),
        ..Default::default()
    });
    import(
        &kms,
        "sym",
        "GOOGLE_SYMMETRIC_ENCRYPTION",
        "m3",
        &hybrid(&j3, false, &aes),
        later,
    );
    let v3 = get(
        &kms,
        &format!("{RING}/cryptoKeys/sym/cryptoKeyVersions/3"),
        done,
    );
    assert_eq!(v3["importFailureReason"], "injected failure");
    // re-import into the failed version 2 with good material
    let (s, v) = send(
        &kms,
        "POST",
        &format!("/v1/{RING}/cryptoKeys/sym/cryptoKeyVersions:import"),
        Some(
            json!({"algorithm": "GOOGLE_SYMMETRIC_ENCRYPTION", "importJob": format!("{RING}/importJobs/m3"),
                    "wrappedKey": openssl::base64::encode_block(&hybrid(&j3, false, &aes)),
                    "cryptoKeyVersion": format!("{RING}/cryptoKeys/sym/cryptoKeyVersions/2")}),
        ),
        done,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "PENDING_IMPORT");
    let d2 = done + Duration::from_millis(200);
    assert_eq!(
        get(
            &kms,
            &format!("{RING}/cryptoKeys/sym/cryptoKeyVersions/2"),
            d2
        )["state"],
        "ENABLED"
    );
    // an ENABLED version is not re-imported
    let (s, v) = send(
        &kms,
        "POST",
        &format!("/v1/{RING}/cryptoKeys/sym/cryptoKeyVersions:import"),
        Some(
            json!({"algorithm": 1, "importJob": format!("{RING}/importJobs/m3"),
                    "wrappedKey": openssl::base64::encode_block(&hybrid(&j3, false, &aes)),
                    "cryptoKeyVersion": v1}),
        ),
        d2,
    );
    assert_eq!(
        (s, v["error"]["status"].as_str()),
        (400, Some("FAILED_PRECONDITION"))
    );
}

#[test]
fn imports_are_refused_as_cloud_kms_refuses_them() {
    let kms = rig();
    let t0 = SystemTime::now();
    let later = t0 + Duration::from_secs(1);
    job(&kms, "soft", 5, 1, t0);
    let soft = get(&kms, &format!("{RING}/importJobs/soft"), later);
    kms.add_job_faults(JobFaults {
        job_stays_pending: true,
        ..Default::default()
    });
    job(&kms, "pending", 5, 2, t0);
    key(
        &kms,
        "k",
        "ENCRYPT_DECRYPT",
        "GOOGLE_SYMMETRIC_ENCRYPTION",
        "HSM",
    );
    let aes = crate::azure::protocol::random(32);
    let w = oaep(&public_of(&soft), false, &aes);
    let (s, v) = import(
        &kms,
        "k",
        "GOOGLE_SYMMETRIC_ENCRYPTION",
        "pending",
        &w,
        later,
    );
    assert_eq!(
        (s, v["error"]["status"].as_str()),
        (400, Some("FAILED_PRECONDITION"))
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is not ACTIVE")
    );
    let (s, v) = import(&kms, "k", "GOOGLE_SYMMETRIC_ENCRYPTION", "soft", &w, later);
    assert_eq!(
        (s, v["error"]["status"].as_str()),
        (400, Some("FAILED_PRECONDITION"))
    );
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("SOFTWARE") && m.contains("HSM"), "{m}");
    key(
        &kms,
        "s",
        "ENCRYPT_DECRYPT",
        "GOOGLE_SYMMETRIC_ENCRYPTION",
        "SOFTWARE",
    );
    let (s, v) = import(&kms, "s", "RSA_SIGN_PKCS1_2048_SHA256", "soft", &w, later);
    assert_eq!(
        (s, v["error"]["status"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
    let (s, _) = import(&kms, "s", "GOOGLE_SYMMETRIC_ENCRYPTION", "nope", &w, later);
    assert_eq!(s, 404);
    let (s, _) = import(
        &kms,
        "missing",
        "GOOGLE_SYMMETRIC_ENCRYPTION",
        "soft",
        &w,
        later,
    );
    assert_eq!(s, 404);
    let (s, _) = send(
        &kms,
        "POST",
        &format!("/v1/{RING}/cryptoKeys/s/cryptoKeyVersions:import"),
        Some(
            json!({"algorithm": 1, "importJob": format!("{RING}/importJobs/soft"),
                    "wrappedKey": openssl::base64::encode_block(&w), "rsaAesWrappedKey": "AAAA"}),
        ),
        later,
    );
    assert_eq!(s, 400);
    let (s, v) = import(&kms, "s", "GOOGLE_SYMMETRIC_ENCRYPTION", "soft", &w, later);
    assert_eq!(s, 200, "{v}");
    // crypto key rules
    let post = |id: &str, q: &str, b: Value| {
        send(
            &kms,
            "POST",
            &format!("/v1/{RING}/cryptoKeys?cryptoKeyId={id}{q}"),
            Some(b),
            t0,
        )
    };
    assert_eq!(
        post(
            "s",
            "&skipInitialVersionCreation=true",
            json!({"purpose": 1})
        )
        .0,
        409
    );
    assert_eq!(
        post("x", "", json!({"purpose": 1, "importOnly": true})).0,
        400
    );
    assert_eq!(
        post(
            "x",
            "&skipInitialVersionCreation=True",
            json!({"purpose": 5, "versionTemplate": {"algorithm": 1}})
        )
        .0,
        400
    );
    assert_eq!(
        post(
            "x",
            "&skipInitialVersionCreation=true",
            json!({"purpose": 1, "labels": {"Bad": "x"}})
        )
        .0,
        400
    );
    assert_eq!(post("a b", "", json!({"purpose": 1})).0, 400);
    // without skip: a first version, generated and primary
    let (s, v) = post(
        "gen",
        "",
        json!({"purpose": 1, "labels": {"team": "hsm-bridge"}}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["primary"]["state"], "ENABLED");
    assert_eq!(v["labels"], json!({"team": "hsm-bridge"}));
}

#[test]
fn tokens_are_checked() {
    let kms = rig();
    let now = SystemTime::now();
    let t = secs(now);
    let target = format!("/v1/{RING}");
    let status = |auth: Option<&str>| send_with(&kms, "GET", &target, auth, None, now).unwrap().0;
    assert_eq!(status(Some(&format!("Bearer {}", jwt(now)))), 200);
    assert_eq!(status(None), 401);
    assert_eq!(status(Some("Bearer nonsense")), 401);
    assert_eq!(status(Some("Basic abc")), 401);
    let with = |claims: Value| format!("Bearer {}", jwt_with(sa_key(), KID, &claims));
    // a scope instead of the audience (aud null, as google-cloud-auth writes it)
    assert_eq!(
        status(Some(&with(
            json!({"iss": EMAIL, "sub": EMAIL, "aud": null, "iat": t, "exp": t + 3600,
        "scope": "https://www.googleapis.com/auth/cloud-platform"})
        ))),
        200
    );
    assert_eq!(
        status(Some(&with(
            json!({"iss": EMAIL, "sub": EMAIL, "aud": "https://storage.googleapis.com/", "iat": t, "exp": t + 3600})
        ))),
        401
    );
    assert_eq!(
        status(Some(&with(
            json!({"iss": EMAIL, "sub": EMAIL, "aud": AUDIENCE, "iat": t - 7200, "exp": t - 3600})
        ))),
        401
    );
    assert_eq!(
        status(Some(&with(
            json!({"iss": EMAIL, "sub": EMAIL, "aud": AUDIENCE, "iat": t, "exp": t + 7200})
        ))),
        401
    );
    assert_eq!(
        status(Some(&with(
            json!({"iss": EMAIL, "sub": EMAIL, "aud": AUDIENCE, "iat": t + 600, "exp": t + 1200})
        ))),
        401
    );
    assert_eq!(
        status(Some(&with(
            json!({"iss": "other@x.iam.gserviceaccount.com", "aud": AUDIENCE, "iat": t, "exp": t + 3600})
        ))),
        401
    );
    let other = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let forged = jwt_with(
        &other,
        KID,
        &json!({"iss": EMAIL, "sub": EMAIL, "aud": AUDIENCE, "iat": t, "exp": t + 3600}),
    );
    assert_eq!(status(Some(&format!("Bearer {forged}"))), 401);
    let (_, v, _) = send_with(&kms, "GET", &target, None, None, now).unwrap();
    assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(v["error"]["code"], 401);
    // the metadata server: its header, then a token that works
    let (s, _, _) = send_with(
        &kms,
        "GET",
        "/computeMetadata/v1/instance/service-accounts/default/token",
        None,
        None,
        now,
    )
    .unwrap();
    assert_eq!(s, 403);
    let req_headers = vec![("metadata-flavor".to_string(), "Google".to_string())];
    let md = |path: &str, query: &str| match kms.metadata(
        &Request {
            method: "GET",
            path,
            query,
            headers: &req_headers,
            body: b"",
        },
        now,
    ) {
        Outcome::Reply { reply, .. } => (reply.status, String::from_utf8(reply.body).unwrap()),
        Outcome::Drop { .. } => panic!("dropped"),
    };
    let (s, body) = md(
        "/computeMetadata/v1/instance/service-accounts/default/token",
        "scopes=https://www.googleapis.com/auth/cloud-platform",
    );
    assert_eq!(s, 200);
    let tok: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(tok["token_type"], "Bearer");
    assert_eq!(tok["expires_in"], 3599);
    let access = tok["access_token"].as_str().unwrap();
    assert_eq!(status(Some(&format!("Bearer {access}"))), 200);
    assert_eq!(
        md(
            "/computeMetadata/v1/instance/service-accounts/default/email",
            ""
        ),
        (200, EMAIL.to_string())
    );
    assert_eq!(
        md("/computeMetadata/v1/universe/universe-domain", ""),
        (200, "googleapis.com".to_string())
    );
    // the log says how each call authenticated, and never the token
    let log = kms.log();
    let ways: Vec<Option<&str>> = log
        .iter()
        .filter(|e| e.op.as_deref() == Some("GetKeyRing"))
        .map(|e| e.auth.as_deref())
        .collect();
    assert_eq!(ways.first(), Some(&Some("jwt")));
    assert_eq!(ways.last(), Some(&Some("metadata")));
    let text = serde_json::to_string(&log).unwrap();
    assert!(!text.contains(access));
    assert!(
        log.iter()
            .any(|e| e.jwt_scope.as_deref()
                == Some("https://www.googleapis.com/auth/cloud-platform"))
    );
}

#[test]
fn versions_page_and_filter() {
    let kms = rig();
    let t0 = SystemTime::now();
    let later = t0 + Duration::from_secs(1);
    job(&kms, "a", 5, 2, t0);
    job(&kms, "b", 5, 2, t0);
    let ja = get(&kms, &format!("{RING}/importJobs/a"), later);
    let jb = get(&kms, &format!("{RING}/importJobs/b"), later);
    key(&kms, "k", "RAW_ENCRYPT_DECRYPT", "AES_256_GCM", "HSM");
    for i in 0..5 {
        let j = if i < 3 { &ja } else { &jb };
        let len = if i == 4 { 16 } else { 32 };
        let w = oaep(&public_of(j), false, &crate::azure::protocol::random(len));
        let (s, _) = import(
            &kms,
            "k",
            "AES_256_GCM",
            if i < 3 { "a" } else { "b" },
            &w,
            later,
        );
        assert_eq!(s, 200);
    }
    let done = later + Duration::from_secs(1);
    let list = |q: &str| {
        send(
            &kms,
            "GET",
            &format!("/v1/{RING}/cryptoKeys/k/cryptoKeyVersions?{q}"),
            None,
            done,
        )
    };
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let (s, v) = list(&format!("pageSize=2&pageToken={token}"));
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["totalSize"], 5);
        for x in v["cryptoKeyVersions"].as_array().unwrap() {
            names.push(
                x["name"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string(),
            );
        }
        match v["nextPageToken"].as_str() {
            Some(t) => token = t.to_string(),
            None => break,
        }
    }
    assert_eq!(names, ["1", "2", "3", "4", "5"]);
    let (_, v) = list(&format!("filter=importJob=\"{RING}/importJobs/b\""));
    assert_eq!(v["totalSize"], 2);
    let (_, v) = list("filter=state=IMPORT_FAILED");
    assert_eq!(v["totalSize"], 1);
    let (_, v) = list(&format!(
        "filter=importJob=\"{RING}/importJobs/b\" AND state=1"
    ));
    assert_eq!(v["totalSize"], 1);
    assert_eq!(list("filter=algorithm=AES_256_GCM").0, 400);
    assert_eq!(list("pageToken=garbage").0, 400);
    assert_eq!(list("pageSize=-1").0, 400);
}

#[test]
fn faults_answer_drop_and_commit_late() {
    let kms = rig();
    let t0 = SystemTime::now();
    let later = t0 + Duration::from_secs(1);
    job(&kms, "j", 5, 2, t0);
    let j = get(&kms, &format!("{RING}/importJobs/j"), later);
    key(
        &kms,
        "k",
        "ENCRYPT_DECRYPT",
        "GOOGLE_SYMMETRIC_ENCRYPTION",
        "HSM",
    );
    let w = || oaep(&public_of(&j), false, &crate::azure::protocol::random(32));
    let fault = |v: Value| kms.add_fault(serde_json::from_value(v).unwrap());
    fault(json!({"op": "GetCryptoKey", "status": 503}));
    let (s, v) = send(
        &kms,
        "GET",
        &format!("/v1/{RING}/cryptoKeys/k"),
        None,
        later,
    );
    assert_eq!(
        (s, v["error"]["status"].as_str()),
        (503, Some("UNAVAILABLE"))
    );
    assert_eq!(
        send(
            &kms,
            "GET",
            &format!("/v1/{RING}/cryptoKeys/k"),
            None,
            later
        )
        .0,
        200
    );
    // dropped after the work: version 1 exists
    fault(json!({"op": "ImportCryptoKeyVersion", "drop": true, "processed": true}));
    let auth = format!("Bearer {}", jwt(SystemTime::now()));
    let body = json!({"algorithm": 1, "importJob": format!("{RING}/importJobs/j"), "wrappedKey": openssl::base64::encode_block(&w())});
    let target = format!("/v1/{RING}/cryptoKeys/k/cryptoKeyVersions:import");
    assert!(
        send_with(
            &kms,
            "POST",
            &target,
            Some(&auth),
            Some(body.clone()),
            later
        )
        .is_none()
    );
    get(
        &kms,
        &format!("{RING}/cryptoKeys/k/cryptoKeyVersions/1"),
        later,
    );
    // dropped before: nothing made
    fault(json!({"op": "ImportCryptoKeyVersion", "drop": true}));
    assert!(
        send_with(
            &kms,
            "POST",
            &target,
            Some(&auth),
            Some(body.clone()),
            later
        )
        .is_none()
    );
    // committed late: version 2 appears only after 500 ms, and the answer waits as long
    fault(json!({"op": "ImportCryptoKeyVersion", "commit_after_ms": 500}));
    let (s, v, delay) = send_with(&kms, "POST", &target, Some(&auth), Some(body), later).unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["name"],
        format!("{RING}/cryptoKeys/k/cryptoKeyVersions/2")
    );
    assert_eq!(delay, Duration::from_millis(500));
    let (s, _) = send(
        &kms,
        "GET",
        &format!("/v1/{RING}/cryptoKeys/k/cryptoKeyVersions/2"),
        None,
        later,
    );
    assert_eq!(s, 404);
    get(
        &kms,
        &format!("{RING}/cryptoKeys/k/cryptoKeyVersions/2"),
        later + Duration::from_millis(500),
    );
    // raw bodies, and the log
    fault(json!({"op": "GetImportJob", "status": 500, "raw_body": "<html>oops</html>"}));
    let (s, v) = send(
        &kms,
        "GET",
        &format!("/v1/{RING}/importJobs/j"),
        None,
        later,
    );
    assert_eq!((s, v.as_str()), (500, Some("<html>oops</html>")));
    let log = kms.log();
    assert!(log.iter().filter(|e| e.fault).count() >= 5);
    assert!(
        log.iter()
            .any(|e| e.code.as_deref() == Some("(handled; answer dropped)")
                && e.resource.as_deref()
                    == Some(&format!("{RING}/cryptoKeys/k/cryptoKeyVersions/1")[..]))
    );
}
