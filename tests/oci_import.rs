//! ImportKeyVersion / ImportKey end to end: the real daemon over mTLS, a real SoftHSM2
//! token, and the real `oci-kms-emulator` over HTTPS on 127.0.0.1 checking every signature
//! and unwrapping what arrives. What the emulator unwrapped is compared with the token's
//! known key values (AES) or the token's public modulus (RSA, parsed by the openssl command
//! line).

mod common;

use std::time::Duration;

use common::daemon::{Daemon, audit_records, daemon_config, sample};
use common::emulator::{ApiIdentity, Emulator, api_identity};
use common::*;
use hsm_bridge::proto::{self, key_ref::Key};
use serde_json::json;
use tonic::Code;

fn by_label(l: &str) -> Option<proto::KeyRef> {
    Some(proto::KeyRef {
        key: Some(Key::Label(l.into())),
    })
}

/// An emulator with `keys` seeded and a daemon on the SoftHSM fixture that may call it.
struct Setup {
    emu: Emulator,
    daemon: Daemon,
    audit: std::path::PathBuf,
    identity: ApiIdentity,
}

fn setup(name: &str, keys: &[&str], max_attempts: u32) -> Setup {
    let fx = softhsm();
    let dir = fx.dir.join(format!("oci-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let identity = api_identity(&dir, "api");
    let emu = Emulator::start(&dir, &[identity.key.public_pem.as_path()], keys);
    let (config, audit) = daemon_config(fx, name, &emu.oci_config(&identity, max_attempts), None);
    let daemon = Daemon::start(&config, &[]);
    Setup {
        emu,
        daemon,
        audit,
        identity,
    }
}

fn version_request(s: &Setup, label: &str, key: &str) -> proto::ImportKeyVersionRequest {
    proto::ImportKeyVersionRequest {
        source_key: by_label(label),
        oci_key_id: s.emu.keys[key].clone(),
        oci: Some(proto::OciTarget {
            connection: String::new(),
            management_endpoint: s.emu.base.clone(),
        }),
        algorithm: proto::WrappingAlgorithm::RsaOaepAesSha256 as i32,
        idempotency_key: String::new(),
        wait_for_enabled: true,
    }
}

async fn import_version(
    s: &Setup,
    req: proto::ImportKeyVersionRequest,
) -> Result<proto::KeyVersion, tonic::Status> {
    let mut r = tonic::Request::new(req);
    r.set_timeout(Duration::from_secs(30));
    s.daemon
        .client("cckm")
        .await
        .import_key_version(r)
        .await
        .map(|r| r.into_inner().key_version.unwrap())
}

fn import_posts<'a>(log: &'a [serde_json::Value], key_id: &str) -> Vec<&'a serde_json::Value> {
    log.iter()
        .filter(|e| {
            e["method"] == "POST"
                && e["path"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("{key_id}/keyVersions/import"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_key_version_delivers_the_token_keys_and_rotates() {
    let s = setup("e2e", &["aes=AES-256", "rsa=RSA-3072"], 3);
    let fx = softhsm();

    // AES-256, twice (RSA_OAEP_SHA256 needs OAEP-SHA256 in the HSM, which SoftHSM lacks)
    for (n, alg) in [
        proto::WrappingAlgorithm::RsaOaepAesSha256,
        proto::WrappingAlgorithm::Unspecified,
    ]
    .into_iter()
    .enumerate()
    {
        let mut req = version_request(&s, "test-aes-256", "aes");
        req.algorithm = alg as i32;
        let v = import_version(&s, req).await.expect("ImportKeyVersion");
        assert_eq!(v.lifecycle_state, "ENABLED");
        assert_eq!(v.key_id, s.emu.keys["aes"]);
        assert_eq!(v.origin, "EXTERNAL");
        assert!(v.version_id.starts_with("ocid1.keyversion."));
        assert_eq!(
            s.emu.material(&v.version_id).await,
            fx.aes["test-aes-256"],
            "the vault received a different key ({alg:?})"
        );
        let key = s.emu.key(&s.emu.keys["aes"]).await;
        assert_eq!(
            key["currentKeyVersion"], v.version_id,
            "the key rotated to it"
        );
        assert_eq!(key["versionIds"].as_array().unwrap().len(), 2 + n);
    }

    // RSA-3072: strict PKCS#8 whose modulus is the token's
    let v = import_version(&s, version_request(&s, "test-rsa-3072", "rsa"))
        .await
        .expect("ImportKeyVersion RSA");
    assert_eq!(v.lifecycle_state, "ENABLED");
    let der = s.emu.material(&v.version_id).await;
    assert_eq!(
        pkcs8_modulus(&der),
        token_modulus(|a| p11(fx, a), "test-rsa-3072")
    );
    assert_eq!(
        s.emu.key(&s.emu.keys["rsa"]).await["currentKeyVersion"],
        v.version_id
    );

    // The audit trail names the OCI key, version and request id.
    let records = audit_records(&s.audit);
    let ok: Vec<_> = records
        .iter()
        .filter(|r| r["operation"] == "ImportKeyVersion" && r["outcome"] == "allowed")
        .collect();
    assert_eq!(ok.len(), 3, "{records:?}");
    let log = s.emu.requests().await;
    for r in &ok {
        assert!(r["oci_key_id"].as_str().unwrap().starts_with("ocid1.key."));
        assert!(
            r["oci_created_id"]
                .as_str()
                .unwrap()
                .starts_with("ocid1.keyversion.")
        );
        assert_eq!(r["oci_attempts"], 1);
        let opc = r["opc_request_id"].as_str().unwrap();
        assert!(
            log.iter().any(|e| e["opc_request_id"] == opc),
            "audit opc-request-id {opc} is not one the emulator gave"
        );
        assert!(r.get("wrapping_key_sha256").is_some());
    }
    // Every request to the vault was signed with the configured key.
    assert!(log.iter().all(|e| e["key_id"]
        == format!(
            "{}/{}/{}",
            s.identity.tenancy, s.identity.user, s.identity.fingerprint
        )));
    // the vault's wrapping key was fetched once, then cached
    assert_eq!(
        log.iter()
            .filter(|e| e["path"] == "/20180608/wrappingKeys")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_key_creates_a_key_from_the_token_key() {
    let s = setup("newkey", &[], 3);
    let fx = softhsm();
    let mut c = s.daemon.client("cckm").await;
    let req = proto::ImportKeyRequest {
        source_key: by_label("test-aes-128"),
        oci: Some(proto::OciTarget {
            connection: "default".into(),
            management_endpoint: s.emu.base.clone(),
        }),
        algorithm: proto::WrappingAlgorithm::Unspecified as i32,
        idempotency_key: "new-key-1".into(),
        wait_for_enabled: true,
        compartment_id: "ocid1.compartment.oc1..test".into(),
        display_name: "imported from the HSM".into(),
        protection_mode: "HSM".into(),
        freeform_tags: [("source".to_string(), "hsm-bridge".to_string())].into(),
        defined_tags: Default::default(),
    };
    let key = c.import_key(req).await.unwrap().into_inner().key.unwrap();
    assert_eq!(key.lifecycle_state, "ENABLED");
    assert_eq!(key.display_name, "imported from the HSM");
    assert_eq!(key.protection_mode, "HSM");
    let shape = key.shape.unwrap();
    assert_eq!((shape.algorithm.as_str(), shape.length), ("AES", 16));
    assert_eq!(
        s.emu.material(&key.current_key_version).await,
        fx.aes["test-aes-128"]
    );
    let records = audit_records(&s.audit);
    let r = records
        .iter()
        .find(|r| r["operation"] == "ImportKey")
        .unwrap();
    assert_eq!(r["outcome"], "allowed");
    assert_eq!(r["oci_key_id"], key.key_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_import_is_retried_with_the_same_bytes_and_token() {
    let s = setup("retry", &["aes=AES-256"], 5);
    s.emu
        .fault(json!({"method": "POST", "path_contains": "/keyVersions/import", "count": 2, "status": 429}))
        .await;
    let v = import_version(&s, version_request(&s, "test-aes-256", "aes"))
        .await
        .expect("succeeds on the third attempt");
    let log = s.emu.requests().await;
    let posts = import_posts(&log, &s.emu.keys["aes"]);
    assert_eq!(posts.len(), 3, "{posts:?}");
    assert_eq!(posts[0]["status"], 429);
    assert_eq!(posts[1]["status"], 429);
    assert_eq!(posts[2]["status"], 200);
    for p in &posts {
        assert_eq!(
            p["body_sha256"], posts[0]["body_sha256"],
            "re-wrapped on a retry"
        );
        assert_eq!(p["retry_token"], posts[0]["retry_token"]);
        assert!(p["retry_token"].as_str().unwrap().len() >= 16);
    }
    let key = s.emu.key(&s.emu.keys["aes"]).await;
    assert_eq!(
        key["versionIds"].as_array().unwrap().len(),
        2,
        "exactly one version"
    );
    assert_eq!(key["currentKeyVersion"], v.version_id);
    let rec = audit_records(&s.audit);
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0]["oci_attempts"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_imports_once() {
    let s = setup("idem", &["aes=AES-256"], 3);
    let mut req = version_request(&s, "test-aes-256", "aes");
    req.idempotency_key = "rotation-2026-11-28".into();
    let first = import_version(&s, req.clone()).await.unwrap();
    let again = import_version(&s, req.clone()).await.unwrap();
    assert_eq!(first.version_id, again.version_id);
    let key = s.emu.key(&s.emu.keys["aes"]).await;
    assert_eq!(
        key["versionIds"].as_array().unwrap().len(),
        2,
        "one new version"
    );
    let log = s.emu.requests().await;
    let posts = import_posts(&log, &s.emu.keys["aes"]);
    // OCI accepted the first: the journal's recorded answer, no second import call.
    assert_eq!(posts.len(), 1, "{posts:?}");
    let rec = audit_records(&s.audit);
    assert_eq!(rec.len(), 2);
    assert_eq!(rec[1]["replayed"], true);
    assert_eq!(rec[1]["oci_created_id"], first.version_id);

    // The same idempotency key for another source key is refused, not silently replayed.
    let mut other = req.clone();
    other.source_key = by_label("test-aes-128");
    let e = import_version(&s, other).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("different request"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_off_the_allow_list_get_nothing() {
    let s = setup("allow", &["aes=AES-256"], 3);
    for (endpoint, code) in [
        // the same emulator by IP: not on the list (which names localhost)
        (
            format!("https://127.0.0.1:{}", s.emu.port),
            Code::PermissionDenied,
        ),
        (
            format!("http://localhost:{}", s.emu.port),
            Code::InvalidArgument,
        ),
        ("https://localhost:1".to_string(), Code::PermissionDenied),
        (
            format!("https://localhost:{}/x", s.emu.port),
            Code::InvalidArgument,
        ),
    ] {
        let mut req = version_request(&s, "test-aes-256", "aes");
        req.oci.as_mut().unwrap().management_endpoint = endpoint.clone();
        let e = import_version(&s, req).await.unwrap_err();
        assert_eq!(e.code(), code, "{endpoint}: {e:?}");
    }
    assert!(
        s.emu.requests().await.is_empty(),
        "a request reached the emulator"
    );
    let rec = audit_records(&s.audit);
    assert_eq!(rec.len(), 4);
    assert!(rec.iter().all(|r| r["outcome"] == "refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_api_key_surfaces_as_permission_denied() {
    let fx = softhsm();
    let dir = fx.dir.join("oci-wrongkey");
    std::fs::create_dir_all(&dir).unwrap();
    let registered = api_identity(&dir, "registered");
    let other = api_identity(&dir, "other");
    let emu = Emulator::start(
        &dir,
        &[registered.key.public_pem.as_path()],
        &["aes=AES-256"],
    );
    let (config, audit) = daemon_config(fx, "wrongkey", &emu.oci_config(&other, 3), None);
    let daemon = Daemon::start(&config, &[]);
    let s = Setup {
        emu,
        daemon,
        audit,
        identity: other,
    };
    let e = import_version(&s, version_request(&s, "test-aes-256", "aes"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("401 NotAuthenticated"),
        "{}",
        e.message()
    );
    let log = s.emu.requests().await;
    assert_eq!(log.len(), 1, "401 is not retried");
    let opc = log[0]["opc_request_id"].as_str().unwrap();
    assert!(e.message().contains(opc), "{} lacks {opc}", e.message());
    let rec = audit_records(&s.audit);
    assert_eq!(rec[0]["opc_request_id"], opc);
    assert_eq!(rec[0]["code"], "PERMISSION_DENIED");
}

/// Signs and sends one request to the emulator as `id`.
async fn signed(
    emu: &Emulator,
    id: &ApiIdentity,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let pem = std::fs::read(&id.key.private_pem).unwrap();
    let signer = hsm_bridge::oci::RequestSigner::from_pem(
        &id.tenancy,
        &id.user,
        &id.fingerprint,
        &pem,
        None,
    )
    .unwrap();
    let url = format!("{}{path}", emu.base);
    let date = hsm_bridge::time::http_date(std::time::SystemTime::now());
    let headers = signer
        .sign(&hsm_bridge::oci::RequestParts {
            method,
            url: &url,
            date: &date,
            body,
            content_type: "application/json",
        })
        .unwrap();
    let mut b = common::emulator::http_client().request(method.parse().unwrap(), &url);
    for (k, v) in headers {
        b = b.header(k, v);
    }
    if method == "POST" {
        b = b.body(body.to_vec());
    }
    let r = b.send().await.unwrap();
    (
        r.status().as_u16(),
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_refuses_bad_material_with_a_reason() {
    use hsm_bridge::wrap::soft::{OaepHash, kwp_wrap, oaep_encrypt};
    let fx = softhsm();
    let dir = fx.dir.join("oci-refusals");
    std::fs::create_dir_all(&dir).unwrap();
    let id = api_identity(&dir, "api");
    let emu = Emulator::start(
        &dir,
        &[id.key.public_pem.as_path()],
        &["aes=AES-256", "rsa=RSA-2048"],
    );
    let (status, wk) = signed(&emu, &id, "GET", "/20180608/wrappingKeys", b"").await;
    assert_eq!(status, 200, "{wk}");
    let wk = openssl::pkey::PKey::public_key_from_pem(wk["publicKey"].as_str().unwrap().as_bytes())
        .unwrap();
    let envelope = |plain: &[u8]| {
        let kek = [9u8; 32];
        let mut m = oaep_encrypt(&wk, OaepHash::Sha256, &kek).unwrap();
        m.extend(kwp_wrap(&kek, plain).unwrap());
        m
    };
    let rsa = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let p8 = rsa.private_key_to_pkcs8().unwrap();
    let mut trailing = p8.clone();
    trailing.push(0x00);
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "rsa",
            envelope(&trailing),
            "RSA_OAEP_AES_SHA256",
            "1 bytes after its PKCS#8 DER",
        ),
        (
            "rsa",
            envelope(&p8[..p8.len() - 16]),
            "RSA_OAEP_AES_SHA256",
            "truncated",
        ),
        (
            "aes",
            envelope(&[1u8; 16]),
            "RSA_OAEP_AES_SHA256",
            "16 bytes; the key's shape needs 32",
        ),
        (
            "aes",
            oaep_encrypt(&wk, OaepHash::Sha256, &[1u8; 24]).unwrap(),
            "RSA_OAEP_SHA256",
            "24 bytes; the key's shape needs 32",
        ),
        (
            "rsa",
            oaep_encrypt(&wk, OaepHash::Sha256, &[1u8; 32]).unwrap(),
            "RSA_OAEP_SHA256",
            "cannot carry an RSA private key",
        ),
        (
            "aes",
            envelope(&[1u8; 32])[..300].to_vec(),
            "RSA_OAEP_AES_SHA256",
            "does not unwrap",
        ),
    ];
    for (key, material, alg, reason) in cases {
        let body = json!({"wrappedImportKey": {
            "keyMaterial": openssl::base64::encode_block(&material),
            "wrappingAlgorithm": alg}});
        let path = format!("/20180608/keys/{}/keyVersions/import", emu.keys[key]);
        let (status, v) = signed(&emu, &id, "POST", &path, body.to_string().as_bytes()).await;
        assert_eq!(status, 400, "{reason}: {v}");
        assert_eq!(v["code"], "InvalidParameter");
        assert!(
            v["message"].as_str().unwrap().contains(reason),
            "{reason}: {v}"
        );
    }
    // and a good one passes, so the refusals above are about the material
    let body = json!({"wrappedImportKey": {
        "keyMaterial": openssl::base64::encode_block(&envelope(&p8)),
        "wrappingAlgorithm": "RSA_OAEP_AES_SHA256"}});
    let path = format!("/20180608/keys/{}/keyVersions/import", emu.keys["rsa"]);
    let (status, v) = signed(&emu, &id, "POST", &path, body.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["lifecycleState"], "CREATING");
    // a signed empty body is authenticated, then refused as unparseable
    let (status, v) = signed(&emu, &id, "POST", "/20180608/keys/import", b"").await;
    assert_eq!(
        status, 400,
        "an empty signed body is authenticated, then refused: {v}"
    );
    assert_eq!(v["code"], "CannotParseRequest");
}

#[test]
fn cli_import_key_version() {
    let fx = softhsm();
    let dir = fx.dir.join("oci-cli");
    std::fs::create_dir_all(&dir).unwrap();
    let id = api_identity(&dir, "api");
    let emu = Emulator::start(&dir, &[id.key.public_pem.as_path()], &["aes=AES-192"]);
    let config = write_config(fx, "oci-cli.toml", |base| {
        format!("{base}{}", emu.oci_config(&id, 3))
    });
    let out = hsm_bridge_ok(&[
        "import-key-version",
        "--config",
        config.to_str().unwrap(),
        "--label",
        "test-aes-192",
        "--oci-key-id",
        &emu.keys["aes"],
        "--endpoint",
        &emu.base,
        "--wait",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["key_version"]["lifecycleState"], "ENABLED");
    let version = v["key_version"]["id"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(rt.block_on(emu.material(&version)), fx.aes["test-aes-192"]);
    // a wrong-form OCID: one line, non-zero
    let e = hsm_bridge_refuses(&[
        "import-key-version",
        "--config",
        config.to_str().unwrap(),
        "--label",
        "test-aes-192",
        "--oci-key-id",
        "not-an-ocid",
        "--endpoint",
        &emu.base,
    ]);
    assert!(
        e.contains("INVALID_ARGUMENT") && e.contains("not a key OCID"),
        "{e}"
    );
}

/// A virtualenv with Oracle's Python SDK, made once under the target folder.
fn oci_sdk_python() -> std::path::PathBuf {
    common::python::venv("oci-sdk-venv", "import oci, cryptography", &[OCI_SDK])
}

/// The SDK release the fidelity test pins.
const OCI_SDK: &str = "oci==2.189.0";

fn sha256_hex(b: &[u8]) -> String {
    hsm_bridge::wrap::hex(&openssl::sha::sha256(b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oracles_python_sdk_drives_the_emulator() {
    let python = tokio::task::spawn_blocking(oci_sdk_python).await.unwrap();
    let fx = softhsm();
    let dir = fx.dir.join("oci-sdk");
    std::fs::create_dir_all(&dir).unwrap();
    let id = api_identity(&dir, "api");
    let emu = Emulator::start(&dir, &[id.key.public_pem.as_path()], &["sdk=AES-256"]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oci_sdk/fidelity.py");
    let out = std::process::Command::new(&python)
        .arg(script)
        .args([&emu.base, &id.tenancy, &id.user, &id.fingerprint])
        .arg(&id.key.private_pem)
        .arg(&emu.keys["sdk"])
        .env("REQUESTS_CA_BUNDLE", common::daemon::certs().join("ca.pem"))
        .env("OCI_SDK_DEFAULT_RETRY_ENABLED", "false")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the SDK failed against the emulator:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["wrapping_key_state"], "ENABLED");
    assert_eq!(v["version_state"], "CREATING");
    assert_eq!(v["version_origin"], "EXTERNAL");
    assert_eq!(v["enabled_state"], "ENABLED");
    assert_eq!(v["time_created_type"], "datetime");
    assert_eq!(v["new_key_shape"], json!(["RSA", 256]));
    assert_eq!(
        sha256_hex(&emu.material(v["version_id"].as_str().unwrap()).await),
        v["aes_sha256"].as_str().unwrap()
    );
    assert_eq!(
        sha256_hex(&emu.material(v["new_key_version"].as_str().unwrap()).await),
        v["rsa_pkcs8_sha256"].as_str().unwrap()
    );
    assert_eq!(v["unknown_key"][0], 401);
    assert_eq!(v["unknown_key"][1], "NotAuthenticated");
    // The SDK's signature verified on every call it made, with this identity.
    let log = emu.requests().await;
    let signed_ok: Vec<_> = log.iter().filter(|e| e["status"] == 200).collect();
    assert!(signed_ok.len() >= 4, "{log:?}");
    assert!(
        signed_ok
            .iter()
            .all(|e| e["key_id"] == format!("{}/{}/{}", id.tenancy, id.user, id.fingerprint))
    );
    let import = log
        .iter()
        .find(|e| e["path"].as_str().unwrap().ends_with("/keyVersions/import"))
        .unwrap();
    assert_eq!(import["retry_token"], "sdk-fidelity-0001");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_faults_end_in_clear_answers_without_duplicates() {
    let s = setup(
        "faults",
        &["a=AES-256", "b=AES-256", "c=AES-256", "d=AES-256"],
        3,
    );
    let versions = |v: serde_json::Value| v["versionIds"].as_array().unwrap().len();

    // A dropped connection, then a 503: retried, same bytes and token, one version.
    let path = format!("{}/keyVersions/import", s.emu.keys["a"]);
    s.emu
        .fault(json!([
            {"path_contains": path, "count": 1, "drop": true},
            {"path_contains": path, "count": 1, "status": 503},
        ]))
        .await;
    import_version(&s, version_request(&s, "test-aes-256", "a"))
        .await
        .expect("succeeds on the third attempt");
    let log = s.emu.requests().await;
    let posts = import_posts(&log, &s.emu.keys["a"]);
    assert_eq!(posts.len(), 3, "{posts:?}");
    assert!(
        posts
            .iter()
            .all(|p| p["body_sha256"] == posts[0]["body_sha256"]
                && p["retry_token"] == posts[0]["retry_token"])
    );
    assert_eq!(versions(s.emu.key(&s.emu.keys["a"]).await), 2);

    // 500 on every attempt: UNAVAILABLE after max_attempts, no version, one audit record.
    let path = format!("{}/keyVersions/import", s.emu.keys["b"]);
    s.emu
        .fault(json!({"path_contains": path, "count": 10, "status": 500}))
        .await;
    let e = import_version(&s, version_request(&s, "test-aes-256", "b"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("500 InternalServerError") && e.message().contains("attempt 3"),
        "{}",
        e.message()
    );
    assert_eq!(
        import_posts(&s.emu.requests().await, &s.emu.keys["b"]).len(),
        3
    );
    assert_eq!(versions(s.emu.key(&s.emu.keys["b"]).await), 1);
    let rec: Vec<_> = audit_records(&s.audit)
        .into_iter()
        .filter(|r| r["oci_key_id"] == s.emu.keys["b"].as_str())
        .collect();
    assert_eq!(rec.len(), 1);
    assert_eq!(
        (rec[0]["code"].as_str(), rec[0]["oci_attempts"].as_u64()),
        (Some("UNAVAILABLE"), Some(3))
    );

    // A 200 that is not JSON: UNAVAILABLE, saying the import may have happened.
    let path = format!("{}/keyVersions/import", s.emu.keys["c"]);
    s.emu
        .fault(json!({"path_contains": path, "count": 1, "raw_body": "<html>gateway</html>"}))
        .await;
    let e = import_version(&s, version_request(&s, "test-aes-256", "c"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("may have happened"), "{}", e.message());

    // A hanging endpoint: the call ends at its deadline.
    let path = format!("{}/keyVersions/import", s.emu.keys["d"]);
    s.emu
        .fault(json!({"path_contains": path, "count": 1, "delay_ms": 20000}))
        .await;
    let mut req = tonic::Request::new(version_request(&s, "test-aes-256", "d"));
    req.set_timeout(Duration::from_millis(1500));
    let started = std::time::Instant::now();
    let e = s
        .daemon
        .client("cckm")
        .await
        .import_key_version(req)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// An emulator with one AES-256 key ("aes") and a daemon on the SoftHSM fixture that may
/// call it, with its metrics listener on and any caller wrapping key allowed; `edit` may
/// change the daemon's config file before the daemon starts.
fn metrics_setup(name: &str, edit: impl FnOnce(&std::path::Path)) -> (Emulator, Daemon) {
    let fx = softhsm();
    let dir = fx.dir.join(format!("oci-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let identity = api_identity(&dir, "api");
    let emu = Emulator::start(&dir, &[identity.key.public_pem.as_path()], &["aes=AES-256"]);
    let policy = format!(
        "caller_wrapping_keys = \"any\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n{}",
        emu.oci_config(&identity, 3)
    );
    let (config, _audit) = daemon_config(fx, name, &policy, None);
    edit(&config);
    let d = Daemon::start(&config, &[]);
    (emu, d)
}

/// WrapKey of `label` for the fixture's RSA-4096 key.
fn metrics_wrap(label: &str) -> proto::WrapKeyRequest {
    proto::WrapKeyRequest {
        source_key: by_label(label),
        wrapping_public_key_pem: std::fs::read_to_string(&softhsm().wk.wk4096.public_pem).unwrap(),
        algorithm: proto::WrappingAlgorithm::RsaOaepAesSha256 as i32,
        ..Default::default()
    }
}

/// ImportKeyVersion of test-aes-256 into the emulator's key "aes", answered at once, after
/// one 429 that the daemon retries.
async fn metrics_import_after_a_429(emu: &Emulator, d: &Daemon, idempotency_key: &str) {
    emu.fault(json!({"method": "POST", "path_contains": "/keyVersions/import", "count": 1, "status": 429}))
        .await;
    let req = proto::ImportKeyVersionRequest {
        source_key: by_label("test-aes-256"),
        oci_key_id: emu.keys["aes"].clone(),
        oci: Some(proto::OciTarget {
            connection: String::new(),
            management_endpoint: emu.base.clone(),
        }),
        algorithm: proto::WrappingAlgorithm::RsaOaepAesSha256 as i32,
        idempotency_key: idempotency_key.into(),
        wait_for_enabled: false,
    };
    d.client("cckm")
        .await
        .import_key_version(req)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_happened() {
    let fx = softhsm();
    let (emu, d) = metrics_setup("metrics", |_| {});
    let dir = fx.dir.join("oci-metrics");
    let before = d.scrape_metrics().await;
    assert_eq!(
        sample(&before, "hsm_bridge_health_serving"),
        1.0,
        "{before}"
    );
    assert!(
        before.contains("hsm_bridge_build_info{version=\""),
        "{before}"
    );
    assert_eq!(sample(&before, "hsm_bridge_journal_up"), 1.0);

    // two wraps, one refused call, one import with a 429 retry
    let mut cckm = d.client("cckm").await;
    for _ in 0..2 {
        cckm.wrap_key(metrics_wrap("test-aes-256")).await.unwrap();
    }
    let e = d
        .client("limited")
        .await
        .wrap_key(metrics_wrap("test-rsa-2048"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    metrics_import_after_a_429(&emu, &d, "metrics-1").await;

    let after = d.scrape_metrics().await;
    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    let mode = selftest_json(&fx.config)["chosen_mode"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        moved(&format!(
            "hsm_bridge_exports_total{{operation=\"WrapKey\",outcome=\"allowed\",key_type=\"AES\",mode=\"{mode}\",format=\"oci:RSA_OAEP_AES_SHA256\",cloud=\"none\",destination=\"none\"}}"
        )),
        2.0,
        "{after}"
    );
    assert_eq!(
        moved(
            "hsm_bridge_exports_total{operation=\"WrapKey\",outcome=\"refused\",key_type=\"unknown\",mode=\"none\",format=\"none\",cloud=\"none\",destination=\"none\"}"
        ),
        1.0,
        "{after}"
    );
    assert_eq!(
        moved(&format!(
            "hsm_bridge_exports_total{{operation=\"ImportKeyVersion\",outcome=\"allowed\",key_type=\"AES\",mode=\"{mode}\",format=\"oci:RSA_OAEP_AES_SHA256\",cloud=\"none\",destination=\"none\"}}"
        )),
        1.0,
        "{after}"
    );
    assert_eq!(
        moved("hsm_bridge_oci_retries_total{operation=\"ImportKeyVersion\",status=\"429\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(
        moved("hsm_bridge_oci_attempts_total{operation=\"ImportKeyVersion\",status=\"429\"}"),
        1.0
    );
    assert_eq!(
        moved("hsm_bridge_oci_attempts_total{operation=\"ImportKeyVersion\",status=\"200\"}"),
        1.0
    );
    assert_eq!(
        moved(&format!(
            "hsm_bridge_hsm_wrap_seconds_count{{mode=\"{mode}\"}}"
        )),
        3.0,
        "{after}"
    );
    assert_eq!(
        moved("hsm_bridge_rpc_seconds_count{method=\"WrapKey\"}"),
        3.0
    );
    assert_eq!(
        moved("hsm_bridge_rpc_seconds_count{method=\"ImportKeyVersion\"}"),
        1.0
    );
    assert_eq!(
        moved("hsm_bridge_oci_call_seconds_count{operation=\"ImportKeyVersion\"}"),
        1.0
    );
    // gauges (the health probe may hold a session at this instant: present, not exact)
    assert!(after.contains("\nhsm_bridge_hsm_queue_calls "), "{after}");
    assert!(
        after.contains("\nhsm_bridge_hsm_sessions_in_use "),
        "{after}"
    );
    // no key label anywhere without metrics.key_labels
    assert!(!after.contains("test-aes-256"), "{after}");
    std::fs::write(dir.join("metrics-after.txt"), &after).unwrap();

    // Content negotiation: the classic text format unless OpenMetrics is asked for, and
    // promtool (Prometheus' own checker) passes the classic one; before, OpenMetrics was
    // served to everyone and promtool said "no help text" of every counter.
    let (ctype, text) = d.scrape_as(Some("text/plain")).await;
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!text.contains("# EOF"), "{text}");
    promtool_check(&text);
    let (ctype, open) = d
        .scrape_as(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        ))
        .await;
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(open.ends_with("# EOF\n"), "{open}");
}

/// promtool (Prometheus' own checker): `.tools/bin/promtool` (`./softhsm-setup.sh
/// --with-promtool`) or `HSM_BRIDGE_PROMTOOL`, run with `args` and `stdin`; its exit status
/// and what it said. Without it the test fails saying how to get it;
/// `HSM_BRIDGE_SKIP_PROMTOOL=1` makes that a skip the run prints (`None`; `.ci/run` never
/// sets it).
fn promtool(args: &[&str], stdin: &str) -> Option<(bool, String)> {
    use std::io::Write;
    let promtool = std::env::var_os("HSM_BRIDGE_PROMTOOL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/promtool")
        });
    let Ok(mut child) = std::process::Command::new(&promtool)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        let msg = "promtool missing: run ./softhsm-setup.sh --with-promtool";
        if std::env::var("HSM_BRIDGE_SKIP_PROMTOOL").as_deref() == Ok("1") {
            skip_notice(msg);
            return None;
        }
        panic!("{msg} (or set HSM_BRIDGE_SKIP_PROMTOOL=1 to skip this check)");
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), said))
}

/// `promtool check metrics` of an exposition: it must pass with nothing to say.
fn promtool_check(text: &str) {
    if let Some((ok, said)) = promtool(&["check", "metrics"], text) {
        assert!(ok && said.trim().is_empty(), "promtool: {said}\n{text}");
    }
}

/// The Grafana dashboard (deploy/grafana/hsm-bridge.json) against the daemon's own scrape:
/// every query is PromQL that promtool parses, every metric it names is one the daemon
/// exports, and every label it groups or matches by is one that metric carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_asks_only_for_what_the_daemon_exports() {
    let fx = softhsm();
    // The fault module in front of the token, for one PKCS#11 error that reaches a caller.
    let mut control = None;
    let (emu, d) = metrics_setup("dashboard", |config| {
        control = Some(common::fault::route_config_with_control(fx, config, "dashboard").1);
    });
    // A series of every family that has labels: a wrap, an import retried after a 429, and
    // a key lookup that fails with CKR_FUNCTION_FAILED.
    let mut cckm = d.client("cckm").await;
    cckm.wrap_key(metrics_wrap("test-aes-256")).await.unwrap();
    metrics_import_after_a_429(&emu, &d, "dashboard-1").await;
    std::fs::write(control.unwrap(), "C_FindObjectsInit 0x6 1\n").unwrap();
    let e = cckm
        .wrap_key(metrics_wrap("test-aes-192"))
        .await
        .unwrap_err();
    assert!(e.message().contains("CKR_FUNCTION_FAILED"), "{e:?}");
    let scrape = Exposition::parse(&d.scrape_metrics().await);

    // The checker itself sees a metric the daemon lacks, and a label a metric lacks.
    assert!(
        !scrape
            .problems("rate(hsm_bridge_no_such_thing_total[5m])")
            .is_empty()
    );
    assert!(
        !scrape
            .problems("sum by (ckr) (rate(hsm_bridge_rpc_seconds_count[5m]))")
            .is_empty()
    );
    assert!(
        !scrape
            .problems("hsm_bridge_journal_up{outcome=\"x\"}")
            .is_empty()
    );

    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/hsm-bridge.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(dashboard["schemaVersion"], 39);
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a ${{datasource}} variable of Prometheus data sources"
    );
    let mut uids = Vec::new();
    datasource_uids(&dashboard, &mut uids);
    assert!(
        uids.iter().all(|u| u == "${datasource}"),
        "data sources are ${{datasource}}, never a fixed uid: {uids:?}"
    );
    let mut exprs = Vec::new();
    panel_exprs(&dashboard["panels"], &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");

    let mut problems = Vec::new();
    for (panel, expr) in &exprs {
        for p in scrape.problems(expr) {
            problems.push(format!("panel {panel:?}: {p}\n    {expr}"));
        }
    }
    for v in variables.iter().filter(|v| v["type"] == "query") {
        let q = v["definition"].as_str().unwrap();
        for p in scrape.problems(q) {
            problems.push(format!("variable {}: {p}\n    {q}", v["name"]));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // PromQL syntax: every query as a recording rule, with Grafana's interval variables as
    // durations; `promtool check rules` parses them all.
    let mut rules = String::from("groups:\n  - name: hsm-bridge-dashboard\n    rules:\n");
    for (i, (_, expr)) in exprs.iter().enumerate() {
        let promql = ["$__rate_interval", "$__interval", "$__range"]
            .iter()
            .fold(expr.clone(), |e, v| e.replace(v, "5m"));
        rules.push_str(&format!(
            "      - record: hsm_bridge_dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&promql).unwrap()
        ));
    }
    let file = fx.dir.join("oci-dashboard").join("dashboard-rules.yml");
    std::fs::write(&file, &rules).unwrap();
    if let Some((ok, said)) = promtool(&["check", "rules", file.to_str().unwrap()], "") {
        assert!(
            ok && said.contains(&format!("SUCCESS: {} rules found", exprs.len())),
            "promtool: {said}\n{rules}"
        );
    }
}

/// Every `uid` of a `datasource` object anywhere in `v`.
fn datasource_uids(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == "datasource"
                    && let Some(uid) = x.get("uid")
                {
                    out.push(uid.as_str().unwrap_or_default().to_string());
                }
                datasource_uids(x, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| datasource_uids(x, out)),
        _ => {}
    }
}

/// (panel title, expr) of every target of every panel, rows' panels included.
fn panel_exprs(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
    for p in panels.as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("a target without expr: {t}"));
            out.push((
                p["title"].as_str().unwrap_or_default().to_string(),
                expr.to_string(),
            ));
        }
        panel_exprs(&p["panels"], out);
    }
}

/// What a scrape (the classic text format) exports: each family with its type, and the
/// label names carried by each sample name's series.
struct Exposition {
    families: std::collections::BTreeMap<String, String>,
    labels: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
}

/// Labels Prometheus puts on every series it scrapes (the target's), not the daemon.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut families = std::collections::BTreeMap::new();
        let mut labels: std::collections::BTreeMap<_, std::collections::BTreeSet<_>> =
            Default::default();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, kind) = t.split_once(' ').unwrap();
                families.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let end = line.find(['{', ' ']).unwrap();
            let set = labels.entry(line[..end].to_string()).or_default();
            if line[end..].starts_with('{') {
                let (names, _) = matchers(&line[end + 1..]);
                set.extend(names);
            }
        }
        Exposition { families, labels }
    }

    /// The family a series name belongs to: a gauge's, or a counter's (classic names end
    /// in `_total`; OpenMetrics' family is the name without it), or a histogram's
    /// `_bucket`, `_sum` or `_count`.
    fn family(&self, series: &str) -> Option<&str> {
        let typed = |name: &str, kinds: &[&str]| {
            self.families
                .get_key_value(name)
                .filter(|(_, k)| kinds.contains(&k.as_str()))
                .map(|(n, _)| n.as_str())
        };
        typed(series, &["gauge", "counter", "untyped"]).or_else(|| {
            [
                ("_bucket", &["histogram"][..]),
                ("_sum", &["histogram", "summary"]),
                ("_count", &["histogram", "summary"]),
                ("_total", &["counter"]),
            ]
            .iter()
            .find_map(|(suffix, kinds)| typed(series.strip_suffix(suffix)?, kinds))
        })
    }

    /// What is wrong with `expr`: each `hsm_bridge_` name that is no series of a family
    /// in the scrape, and each label in its matchers or in a `by`/`without` (of the
    /// aggregation's own argument) or `on`/`ignoring`/`group_*` (of the whole expression)
    /// that the named series do not carry.
    fn problems(&self, expr: &str) -> Vec<String> {
        let q = Query::scan(expr);
        let mut out = Vec::new();
        let mut check = |series: &str, label: &str, why: &str| {
            if TARGET_LABELS.contains(&label) {
                return;
            }
            match self.labels.get(series) {
                Some(have) if have.contains(label) => {}
                Some(have) => out.push(format!(
                    "{series} has no label {label:?} ({why}); it has {have:?}"
                )),
                None => out.push(format!(
                    "the scrape has no series of {series}, so its label {label:?} ({why}) cannot be checked: make the test produce one"
                )),
            }
        };
        for (series, _, matched) in &q.series {
            for l in matched {
                check(series, l, "matcher");
            }
        }
        for (labels, scope) in &q.groupings {
            for (series, at, _) in &q.series {
                if scope.contains(at) {
                    for l in labels {
                        check(series, l, "grouping");
                    }
                }
            }
        }
        for (series, _, _) in &q.series {
            if self.family(series).is_none() {
                out.push(format!("{series} is not exported by the daemon"));
            }
        }
        if q.series.is_empty() {
            out.push("names no hsm_bridge_ metric".into());
        }
        out
    }
}

/// The label names of a matcher or label list that starts after its `{`, and the bytes
/// read up to and including its `}`.
fn matchers(s: &str) -> (Vec<String>, usize) {
    let b = s.as_bytes();
    let (mut names, mut i) = (Vec::new(), 0);
    loop {
        while i < b.len() && (b[i] == b' ' || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() || b[i] == b'}' {
            return (names, i + 1);
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        names.push(s[start..i].to_string());
        while i < b.len() && b[i] != b'"' {
            i += 1;
        }
        i += 1;
        while i < b.len() && b[i] != b'"' {
            i += if b[i] == b'\\' { 2 } else { 1 };
        }
        i += 1;
    }
}

/// The parts of a PromQL expression the dashboard test checks.
struct Query {
    /// Each `hsm_bridge_` series name, its byte offset, and the labels of its matchers.
    series: Vec<(String, usize, Vec<String>)>,
    /// Each grouping's labels and the byte range it applies to.
    groupings: Vec<(Vec<String>, std::ops::Range<usize>)>,
}

impl Query {
    fn scan(expr: &str) -> Query {
        let b = expr.as_bytes();
        // The end of the parenthesised group that opens at `open`.
        let close = |open: usize| {
            let mut depth = 0;
            (open..b.len())
                .find(|&j| {
                    depth += match b[j] {
                        b'(' => 1,
                        b')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .unwrap_or(b.len())
        };
        // The start of the parenthesised group that ends at `end`.
        let open = |end: usize| {
            let mut depth = 0;
            (0..=end)
                .rev()
                .find(|&j| {
                    depth += match b[j] {
                        b')' => 1,
                        b'(' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .unwrap_or(0)
        };
        let skip_space = |mut j: usize| {
            while j < b.len() && b[j] == b' ' {
                j += 1;
            }
            j
        };
        let mut q = Query {
            series: Vec::new(),
            groupings: Vec::new(),
        };
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if c == b'"' || c == b'\'' || c == b'`' {
                i += 1;
                while i < b.len() && b[i] != c {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                continue;
            }
            if !(c.is_ascii_alphabetic() || c == b'_' || c == b':') {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let next = skip_space(i);
            if word.starts_with("hsm_bridge_") {
                let mut matched = Vec::new();
                if next < b.len() && b[next] == b'{' {
                    let (names, used) = matchers(&expr[next + 1..]);
                    matched = names;
                    i = next + 1 + used;
                }
                q.series.push((word.to_string(), start, matched));
            } else if next < b.len() && b[next] == b'(' {
                let whole = ["on", "ignoring", "group_left", "group_right"].contains(&word);
                if word == "by" || word == "without" || whole {
                    let end = close(next);
                    let labels = expr[next + 1..end]
                        .split(',')
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty())
                        .collect();
                    let after = skip_space(end + 1);
                    let scope = if whole {
                        0..b.len()
                    } else if after < b.len() && b[after] == b'(' {
                        after..close(after)
                    } else {
                        // `sum(x) by (l)`: the group before the keyword
                        let before = expr[..start].trim_end().len().saturating_sub(1);
                        open(before)..before
                    };
                    q.groupings.push((labels, scope));
                    i = end + 1;
                }
            }
        }
        q
    }
}
