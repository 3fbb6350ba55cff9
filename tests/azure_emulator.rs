//! The `azure-kv-emulator` binary driven by Azure's own Python SDK (azure-identity for the
//! tokens, azure-keyvault-keys for the Key Vault calls), wrapping with pyca/cryptography:
//! every call the daemon makes (the challenge, the token, create and read a key-exchange
//! key, import .byok files, list versions) and the refusals as the SDK's exceptions, then
//! what the emulator holds compared with what the SDK sent (through the test oracle); and
//! the emulator's HTTP edges (the challenge, the token endpoint's errors, faults) driven
//! directly; and the `.byok` files `hsm-bridge wrap --format azure:byok` writes, imported.

mod common;

use oci_kms_emulator::azure::protocol::b64url;

use common::azure_emulator::AzureEmulator;
use common::daemon::certs;
use serde_json::{Value, json};

/// The SDK releases the fidelity test pins.
const PACKAGES: &[&str] = &[
    "azure-keyvault-keys==4.11.3",
    "azure-identity==1.27.0",
    "azure-core==1.41.0",
    "msal==1.39.0",
    "cryptography==50.0.2",
];

/// A virtualenv with the pinned Azure SDK packages, made once under the target folder.
fn azure_sdk_python() -> std::path::PathBuf {
    let pins: Vec<String> = PACKAGES
        .iter()
        .map(|p| {
            let (name, version) = p.split_once("==").unwrap();
            format!("version({name:?}) == {version:?}")
        })
        .collect();
    let check = format!(
        "from importlib.metadata import version; assert {}",
        pins.join(" and ")
    );
    common::python::venv("azure-sdk-venv", &check, PACKAGES)
}

fn sha256_hex(b: &[u8]) -> String {
    hsm_bridge::wrap::hex(&openssl::sha::sha256(b))
}

fn test_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("azure-emulator-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The refusal the script saw: `[exception type, status, error code, message]`.
fn refusal<'a>(v: &'a Value, name: &str) -> (&'a str, u64, &'a str, &'a str) {
    let r = &v[name];
    (
        r[0].as_str().unwrap_or_else(|| panic!("{name}: {r}")),
        r[1].as_u64().unwrap(),
        r[2].as_str().unwrap(),
        r[3].as_str().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_sdk_drives_the_emulator() {
    let python = tokio::task::spawn_blocking(azure_sdk_python).await.unwrap();
    let dir = test_dir("sdk");
    let kv = AzureEmulator::start(&dir, false);
    let mhsm = AzureEmulator::start(&dir, true);
    assert_eq!(kv.resource, "https://vault.azure.net");
    assert_eq!(mhsm.resource, "https://managedhsm.azure.net");
    // a key-exchange key Key Vault would refuse to create: import and wrapKey
    let bad_kek = kv
        .create_key("bad-kek", "RSA-HSM", 2048, &["import", "wrapKey"])
        .await;
    let bad_kek = bad_kek["key"]["kid"].as_str().unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/azure_sdk/fidelity.py");
    let out = std::process::Command::new(&python)
        .arg(script)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &dir)
        .env("EMU_CA", certs().join("ca.pem"))
        .env("EMU_KV_ENDPOINT", &kv.base)
        .env("EMU_KV_TENANT", &kv.tenant)
        .env("EMU_KV_CLIENT_ID", &kv.client_id)
        .env("EMU_KV_SECRET_FILE", &kv.secret_file)
        .env("EMU_KV_CERT", &kv.client_key_and_cert)
        .env("EMU_KV_BAD_KEK", bad_kek)
        .env("EMU_MHSM_ENDPOINT", &mhsm.base)
        .env("EMU_MHSM_TENANT", &mhsm.tenant)
        .env("EMU_MHSM_CLIENT_ID", &mhsm.client_id)
        .env("EMU_MHSM_SECRET_FILE", &mhsm.secret_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Azure SDK failed against the emulator:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();

    // the key-exchange key as the SDK parsed it; latest and versioned reads agree
    let kek_version = v["kek"]["version"].as_str().unwrap();
    let kek_id = format!("{}/keys/kek/{kek_version}", kv.base);
    assert_eq!(kek_version.len(), 32);
    assert!(
        kek_version
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(
        v["kek"],
        json!({"id": kek_id, "name": "kek", "version": kek_version, "kty": "RSA-HSM",
               "key_ops": ["import"], "enabled": true, "tags": null,
               "recovery_level": "Recoverable+Purgeable", "created_type": "datetime"})
    );
    assert_eq!(v["kek_n_bits"], 3072);
    assert_eq!(v["kek_latest"], kek_id.as_str());
    assert_eq!(v["kek_versioned"], kek_id.as_str());

    // three imports of the same RSA-3072 key: three versions, each with its tags, each
    // holding what the SDK wrapped
    let imported = v["imported"].as_array().unwrap();
    assert_eq!(imported.len(), 3);
    let versions: Vec<&str> = imported
        .iter()
        .map(|k| k["version"].as_str().unwrap())
        .collect();
    assert!(versions[0] != versions[1] && versions[1] != versions[2] && versions[0] != versions[2]);
    for (i, k) in imported.iter().enumerate() {
        assert_eq!(k["kty"], "RSA-HSM");
        assert_eq!(k["key_ops"], json!(["sign", "verify"]));
        assert_eq!(
            k["tags"],
            json!({"source": "hsm-bridge", "hsm-key": "demo-rsa-3072", "round": i.to_string()})
        );
        assert_eq!(
            sha256_hex(&kv.material("imported", versions[i]).await),
            v["imported_sha256"].as_str().unwrap()
        );
    }
    assert_eq!(v["imported_n_matches"], json!([true, true, true]));
    assert_eq!(v["latest_after_imports"], versions[2]);
    // the pager followed nextLink: two pages of at most two
    assert_eq!(
        v["version_pages"],
        json!([[versions[0], versions[1]], [versions[2]]])
    );
    assert_eq!(v["version_tags"].as_array().unwrap().len(), 3);
    assert_eq!(v["version_tags"][2]["round"], "2");

    // refusals, as the SDK's exception types with Key Vault's error code
    let (kind, status, code, message) = refusal(&v, "not_found");
    assert_eq!(
        (kind, status, code),
        ("ResourceNotFoundError", 404, "KeyNotFound")
    );
    assert!(message.contains("no-such-key"), "{message}");
    assert_eq!(refusal(&v, "not_found_version").2, "KeyNotFound");
    for (name, says) in [
        ("sha256_oaep", "SHA-256"),
        ("kid_without_version", "has no version"),
        ("kid_of_another_vault", "is not a key of this key vault"),
        ("kek_not_import_only", "must be exactly [\"import\"]"),
        ("ec_as_rsa", "is an EC key; key.kty is RSA-HSM"),
        ("oct_on_key_vault", "only supported by a Managed HSM"),
        ("create_import_and_wrap", "mutually exclusive"),
        ("oct_bad_size", "20 bytes"),
        ("kv_kek_on_mhsm", "is not a key of this managed HSM"),
    ] {
        let (kind, status, code, message) = refusal(&v, name);
        assert_eq!(
            (kind, status, code),
            ("HttpResponseError", 400, "BadParameter"),
            "{name}"
        );
        assert!(message.contains(says), "{name}: {message}");
    }
    assert_eq!(
        v["wrong_secret"],
        json!(["ClientAuthenticationError", true])
    );
    assert_eq!(v["by_certificate"], kek_id.as_str());

    // an EC-HSM import on P-256
    assert_eq!(
        v["ec"],
        json!({"kty": "EC-HSM", "crv": "P-256", "x_len": 32})
    );
    assert_eq!(
        sha256_hex(
            &kv.material("imported-ec", v["ec_version"].as_str().unwrap())
                .await
        ),
        v["ec_sha256"].as_str().unwrap()
    );

    // the Managed HSM took the AES key as oct-HSM, showing no key material
    assert_eq!(v["oct"]["kty"], "oct-HSM");
    assert_eq!(v["oct"]["tags"], json!({"source": "hsm-bridge"}));
    assert_eq!(v["oct_has_n"], false);
    let oct_version = v["oct"]["version"].as_str().unwrap();
    assert_eq!(
        sha256_hex(&mhsm.material("aes", oct_version).await),
        v["oct_sha256"].as_str().unwrap()
    );
    assert_eq!(mhsm.names().await, ["aes", "kek"]);
    let mut names = kv.names().await;
    names.sort();
    assert_eq!(names, ["bad-kek", "imported", "imported-ec", "kek"]);
    let report = kv.key("imported").await;
    assert_eq!(report["versions"].as_array().unwrap().len(), 3);
    assert_eq!(report["versions"][0]["imported"], true);

    // the SDK's first call went out without a token and was challenged; its token
    // requests reached this emulator's token endpoint (MSAL read the discovery document
    // first), by secret and by certificate assertion
    let log = kv.requests().await;
    assert_eq!(
        (
            log[0]["op"].as_str(),
            log[0]["status"].as_u64(),
            log[0]["token"].as_bool(),
            log[0]["code"].as_str()
        ),
        (
            Some("CreateKey"),
            Some(401),
            Some(false),
            Some("Unauthorized")
        )
    );
    let tokens = |how: &str| {
        log.iter()
            .filter(|e| e["op"] == "Token" && e["status"] == 200 && e["client_auth"] == how)
            .count()
    };
    assert_eq!(tokens("secret"), 1, "{log:?}");
    assert_eq!(tokens("assertion"), 1, "{log:?}");
    assert!(
        log.iter()
            .any(|e| e["op"] == "Discovery" && e["status"] == 200)
    );
    assert!(
        log.iter()
            .any(|e| e["op"] == "Token" && e["status"] == 401 && e["code"] == "invalid_client"),
        "the wrong secret: {log:?}"
    );
    for op in ["CreateKey", "GetKey", "ImportKey", "GetKeyVersions"] {
        assert!(
            log.iter()
                .any(|e| e["op"] == op && e["status"] == 200 && e["token"] == true),
            "{op} never answered 200: {log:?}"
        );
    }
    // the log names the versions the imports made
    let made: Vec<&str> = log
        .iter()
        .filter(|e| e["op"] == "ImportKey" && e["name"] == "imported" && e["status"] == 200)
        .map(|e| e["version"].as_str().unwrap())
        .collect();
    assert_eq!(made, versions);
    let mlog = mhsm.requests().await;
    assert!(
        mlog.iter()
            .any(|e| e["op"] == "Token" && e["status"] == 200 && e["client_auth"] == "secret")
    );
}

/// A client that trusts the test CA, for requests no SDK would send; the status, the
/// `WWW-Authenticate` header and the JSON body.
async fn raw(
    emu: &AzureEmulator,
    method: reqwest::Method,
    path: &str,
    bearer: Option<&str>,
    form: Option<&[(&str, &str)]>,
    body: Option<Vec<u8>>,
) -> (u16, Option<String>, Value) {
    let mut b = common::emulator::http_client().request(method, format!("{}{path}", emu.base));
    if let Some(t) = bearer {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if let Some(f) = form {
        let encoded: String = f
            .iter()
            .map(|(k, v)| format!("{k}={}", url_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        b = b
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encoded);
    }
    if let Some(body) = body {
        b = b.header("content-type", "application/json").body(body);
    }
    let r = b.send().await.unwrap();
    let status = r.status().as_u16();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|h| h.to_str().unwrap().to_string());
    let bytes = r.bytes().await.unwrap();
    (
        status,
        challenge,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A client-credentials token request with a client secret.
async fn token_request(
    emu: &AzureEmulator,
    path: &str,
    scope: &str,
    secret: &str,
) -> (u16, Option<String>, Value) {
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", emu.client_id.as_str()),
        ("scope", scope),
        ("client_secret", secret),
    ];
    raw(emu, reqwest::Method::POST, path, None, Some(&form), None).await
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_token_errors_and_faults() {
    let dir = test_dir("edges");
    let emu = AzureEmulator::start(&dir, false);
    let get = reqwest::Method::GET;
    let path = "/keys/kek?api-version=2025-07-01";

    // no token: the challenge, exactly as Key Vault words it
    let (status, challenge, v) = raw(&emu, get.clone(), path, None, None, None).await;
    assert_eq!(status, 401);
    assert_eq!(
        challenge.as_deref(),
        Some(
            format!(
                "Bearer authorization=\"https://login.microsoftonline.com/{}\", resource=\"https://vault.azure.net\"",
                emu.tenant
            )
            .as_str()
        )
    );
    assert_eq!(
        v,
        json!({"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}})
    );
    // a token the authority never issued
    let (status, challenge, v) = raw(&emu, get.clone(), path, Some("made-up"), None, None).await;
    assert_eq!((status, challenge.is_some()), (401, true));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("AKV10022")
    );

    // the token endpoint: the wrong secret, the wrong scope, another tenant, then a token
    let secret = std::fs::read_to_string(&emu.secret_file).unwrap();
    let token_path = format!("/{}/oauth2/v2.0/token", emu.tenant);
    let vault = "https://vault.azure.net/.default";
    let (status, _, v) = token_request(&emu, &token_path, vault, "wrong").await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));
    assert_eq!(v["error_codes"], json!([7000215]));
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS7000215: ")
    );
    let hsm = "https://managedhsm.azure.net/.default";
    let (status, _, v) = token_request(&emu, &token_path, hsm, &secret).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_scope")));
    let other_tenant = format!("/{}/oauth2/v2.0/token", common::azure_emulator::guid());
    let (status, _, v) = token_request(&emu, &other_tenant, vault, &secret).await;
    assert_eq!((status, v["error_codes"].clone()), (400, json!([90002])));
    let (status, _, v) = token_request(&emu, &token_path, vault, &secret).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3600);
    let token = v["access_token"].as_str().unwrap().to_string();

    // with the token: a key-exchange key, read back; no api-version is a 400
    let kek = emu.kek("kek", 2048).await;
    let (status, _, v) = raw(&emu, get.clone(), path, Some(&token), None, None).await;
    assert_eq!(
        (status, v["key"]["kid"].as_str()),
        (200, Some(kek.as_str()))
    );
    assert_eq!(v["key"]["key_ops"], json!(["import"]));
    let (status, _, v) = raw(&emu, get.clone(), "/keys/kek", Some(&token), None, None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("BadParameter"))
    );
    // an oversized body
    let (status, _, _) = raw(
        &emu,
        reqwest::Method::PUT,
        path,
        Some(&token),
        None,
        Some(vec![b' '; 65 << 10]),
    )
    .await;
    assert_eq!(status, 413);

    // faults: a challenge for another resource, an injected 503, a raw body
    emu.fault(json!({"op": "GetKey", "name": "kek", "challenge_resource": "https://evil.example"}))
        .await;
    let (status, challenge, _) = raw(&emu, get.clone(), path, Some(&token), None, None).await;
    assert_eq!(status, 401);
    assert!(
        challenge
            .unwrap()
            .ends_with("resource=\"https://evil.example\"")
    );
    emu.fault(json!([{"op": "GetKey", "status": 503, "count": 2}, {"op": "Token", "raw_body": "not json", "status": 500}]))
        .await;
    let (status, _, v) = raw(&emu, get.clone(), path, Some(&token), None, None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (503, Some("ServiceUnavailable"))
    );
    emu.clear_faults().await;
    let (status, _, _) = raw(&emu, get.clone(), path, Some(&token), None, None).await;
    assert_eq!(status, 200);
    let log = emu.requests().await;
    let seen: Vec<(String, u64, bool, bool)> = log
        .iter()
        .filter(|e| e["op"] == "GetKey")
        .map(|e| {
            (
                e["code"].as_str().unwrap_or("-").to_string(),
                e["status"].as_u64().unwrap(),
                e["token"].as_bool().unwrap(),
                e["fault"].as_bool().unwrap(),
            )
        })
        .collect();
    let s = |c: &str, st: u64, t: bool, f: bool| (c.to_string(), st, t, f);
    assert_eq!(
        seen,
        [
            s("Unauthorized", 401, false, false),
            s("Unauthorized", 401, true, false),
            s("-", 200, true, false),
            s("BadParameter", 400, true, false),
            s("Unauthorized", 401, true, true),
            s("ServiceUnavailable", 503, true, true),
            s("-", 200, true, false),
        ]
    );
    assert_eq!(emu.key("kek").await["versions"][0]["kid"], kek.as_str());
}

/// A PEM public key file from a KeyBundle's `n` and `e`.
fn kek_pem(bundle: &Value, path: &std::path::Path) {
    let part = |name: &str| {
        let s = bundle["key"][name].as_str().unwrap();
        let mut b64: String = s
            .chars()
            .map(|c| match c {
                '-' => '+',
                '_' => '/',
                c => c,
            })
            .collect();
        while !b64.len().is_multiple_of(4) {
            b64.push('=');
        }
        openssl::bn::BigNum::from_slice(&openssl::base64::decode_block(&b64).unwrap()).unwrap()
    };
    let rsa = openssl::rsa::Rsa::from_public_components(part("n"), part("e")).unwrap();
    std::fs::write(path, rsa.public_key_to_pem().unwrap()).unwrap();
}

/// `hsm-bridge wrap --format azure:byok` of `label` for the KEK `bundle`; the .byok bytes.
fn daemon_byok(
    fx: &common::Fixture,
    label: &str,
    bundle: &Value,
    dir: &std::path::Path,
) -> Vec<u8> {
    let kid = bundle["key"]["kid"].as_str().unwrap();
    let version = kid.rsplit('/').next().unwrap();
    let pem = dir.join(format!("kek-{version}.pem"));
    kek_pem(bundle, &pem);
    let out = dir.join(format!("{label}-{version}.byok"));
    common::hsm_bridge_ok(&[
        "wrap",
        "--config",
        fx.config.to_str().unwrap(),
        "--allow-any-wrapping-key",
        "--label",
        label,
        "--wrapping-key",
        pem.to_str().unwrap(),
        "--format",
        "azure:byok",
        "--azure-kek-id",
        kid,
        "--out",
        out.to_str().unwrap(),
    ]);
    std::fs::read(&out).unwrap()
}

/// The `.byok` files `hsm-bridge wrap --format azure:byok` writes (src/wrap/format.rs) are
/// what the emulator takes: test-rsa-3072 as RSA-HSM into the Key Vault, test-aes-256 as
/// oct-HSM into the Managed HSM (and refused by the Key Vault), each landing as exactly the
/// token's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemons_byok_files_import() {
    let fx = common::softhsm();
    let dir = test_dir("byok");
    let kv = AzureEmulator::start(&dir, false);
    let mhsm = AzureEmulator::start(&dir, true);
    let put = |name: &str, kty: &str, byok: &[u8]| {
        let body = json!({"key": {"kty": kty, "key_hsm": b64url(byok)}});
        let path = format!("/keys/{name}?api-version=2025-07-01");
        (path, body.to_string().into_bytes())
    };
    let token = |emu: &AzureEmulator| {
        let secret = std::fs::read_to_string(&emu.secret_file).unwrap();
        let path = format!("/{}/oauth2/v2.0/token", emu.tenant);
        let scope = format!("{}/.default", emu.resource);
        (path, scope, secret)
    };

    let (tpath, scope, secret) = token(&kv);
    let (status, _, v) = token_request(&kv, &tpath, &scope, &secret).await;
    assert_eq!(status, 200);
    let kv_token = v["access_token"].as_str().unwrap().to_string();
    let kek = kv.create_key("kek", "RSA-HSM", 3072, &["import"]).await;
    let byok = daemon_byok(fx, "test-rsa-3072", &kek, &dir);
    let (path, body) = put("rsa", "RSA-HSM", &byok);
    let (status, _, v) = raw(
        &kv,
        reqwest::Method::PUT,
        &path,
        Some(&kv_token),
        None,
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let version = v["key"]["kid"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap();
    assert_eq!(
        common::pkcs8_modulus(&kv.material("rsa", version).await),
        common::token_modulus(|a| common::p11(fx, a), "test-rsa-3072")
    );
    // AES keys are for a Managed HSM
    let byok = daemon_byok(fx, "test-aes-256", &kek, &dir);
    let (path, body) = put("aes", "oct-HSM", &byok);
    let (status, _, v) = raw(
        &kv,
        reqwest::Method::PUT,
        &path,
        Some(&kv_token),
        None,
        Some(body),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("BadParameter")),
        "{v}"
    );

    let (tpath, scope, secret) = token(&mhsm);
    let (status, _, v) = token_request(&mhsm, &tpath, &scope, &secret).await;
    assert_eq!(status, 200);
    let hsm_token = v["access_token"].as_str().unwrap().to_string();
    let kek = mhsm.create_key("kek", "RSA-HSM", 2048, &["import"]).await;
    let byok = daemon_byok(fx, "test-aes-256", &kek, &dir);
    let (path, body) = put("aes", "oct-HSM", &byok);
    let (status, _, v) = raw(
        &mhsm,
        reqwest::Method::PUT,
        &path,
        Some(&hsm_token),
        None,
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let version = v["key"]["kid"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap();
    assert_eq!(mhsm.material("aes", version).await, fx.aes["test-aes-256"]);
}
