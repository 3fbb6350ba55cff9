//! Azure Key Vault and Managed HSM as destinations, end to end: the real daemon (gRPC
//! `Import`) and the real command line (`hsm-bridge import`) on SoftHSM2, kryoptic and the
//! Luna-like token, the real `azure-kv-emulator` (the bearer challenge, tokens from its
//! Entra ID endpoint, the key-exchange key's checks and a real OAEP-SHA1 + RFC 5649 unwrap;
//! its test oracle says what a version holds), and the daemon killed with SIGKILL after
//! Azure took an import and before its answer came.

mod common;

use oci_kms_emulator::azure::protocol::b64url;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::azure_emulator::AzureEmulator;
use common::daemon::{Daemon, audit_records, certs, destinations_config, until_answered_by};
use common::*;
use hsm_bridge::proto::{self, key_ref::Key};
use serde_json::{Value, json};
use tonic::Code;

const KV: &str = "azure-kv";
const MHSM: &str = "azure-mhsm";

/// The `[destinations.NAME]` table for `emu`, its key-exchange key given by `kek` (a line
/// such as `kek = "..."` or `kek_name = "..."`).
fn destination(emu: &AzureEmulator, name: &str, kek: &str) -> String {
    let kind = if emu.resource.contains("managedhsm") {
        "managed_hsm"
    } else {
        "key_vault"
    };
    format!(
        "\n[destinations.{name}]\ncloud = \"azure\"\nvault = \"{base}\"\nkind = \"{kind}\"\n{kek}\ntenant = \"{}\"\nclient_id = \"{}\"\nclient_secret_file = \"{}\"\nauthority = \"{base}\"\nallowed_endpoints = [\"{base}\"]\nallowed_authorities = [\"{base}\"]\nca_bundle = \"{}\"\ntimeout_ms = 20000\n",
        emu.tenant,
        emu.client_id,
        emu.secret_file.display(),
        certs().join("ca.pem").display(),
        base = emu.base,
    )
}

/// A daemon config on `fx` whose caller `cckm` may import into `destinations` (name,
/// table), with metrics on.
fn config(fx: &Fixture, name: &str, destinations: &[(&str, String)]) -> (PathBuf, PathBuf) {
    let grants: Vec<&str> = destinations.iter().map(|(n, _)| *n).collect();
    let tables: String = destinations.iter().map(|(_, t)| t.as_str()).collect();
    destinations_config(
        fx,
        name,
        &grants,
        &format!("{}{tables}", "\n[metrics]\nlisten = \"127.0.0.1:0\"\n"),
    )
}

fn label(l: &str) -> Option<proto::KeyRef> {
    Some(proto::KeyRef {
        key: Some(Key::Label(l.into())),
    })
}

/// An `Import` of the key labelled `l` into key `name` of `dest` (a new key with `create`).
fn request(l: &str, dest: &str, name: &str, create: bool, idem: &str) -> proto::ImportRequest {
    proto::ImportRequest {
        source_key: label(l),
        destination: dest.into(),
        target: name.into(),
        create: create.then(proto::CreateOptions::default),
        idempotency_key: idem.into(),
        wait_for_enabled: true,
        ..Default::default()
    }
}

async fn import(
    d: &Daemon,
    req: proto::ImportRequest,
) -> Result<proto::ImportResponse, tonic::Status> {
    d.import(req).await
}

/// `hsm-bridge import` into `dest`; its JSON answer.
fn cli_import(config: &Path, dest: &str, args: &[&str]) -> Value {
    let mut all = vec![
        "import",
        "--config",
        config.to_str().unwrap(),
        "--to",
        dest,
        "--json",
    ];
    all.extend(args);
    let out = hsm_bridge(&all);
    assert!(
        out.status.success(),
        "hsm-bridge {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `hsm-bridge import` of `test-rsa-3072` into a new key `rsa` of `azure-kv` with `config`,
/// which must fail; its stderr.
fn cli_refused(config: &Path) -> String {
    let out = hsm_bridge(&[
        "import",
        "--config",
        config.to_str().unwrap(),
        "--to",
        KV,
        "--label",
        "test-rsa-3072",
        "--new-key",
        "--target",
        "rsa",
    ]);
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The emulator's calls of operation `op` that carried a token (the SDK's first,
/// tokenless request of a client is answered by the challenge).
async fn calls(emu: &AzureEmulator, op: &str) -> usize {
    emu.requests()
        .await
        .iter()
        .filter(|r| r["op"] == op && (r["token"] == true || op == "Token"))
        .count()
}

/// The versions of key `name` the emulator holds.
async fn versions(emu: &AzureEmulator, name: &str) -> Vec<Value> {
    if !emu.names().await.iter().any(|n| n == name) {
        return Vec::new();
    }
    let k = emu.key(name).await;
    k["versions"].as_array().cloned().unwrap_or_default()
}

/// The version id at the end of a key id.
fn version_of(kid: &str) -> String {
    kid.rsplit('/').next().unwrap().to_string()
}

/// A test's Key Vault on SoftHSM2's fixture: a folder of its own, the emulator, and an
/// RSA-3072 key-exchange key in it.
struct Vault {
    dir: PathBuf,
    kv: AzureEmulator,
    kek: String,
}

impl Vault {
    async fn start(name: &str) -> Vault {
        let dir = softhsm().dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let kv = AzureEmulator::start(&dir, false);
        let kek = kv.kek("byok-kek", 3072).await;
        Vault { dir, kv, kek }
    }

    /// The destination `azure-kv` on it, with the key-exchange key by its versioned id.
    fn table(&self) -> String {
        destination(&self.kv, KV, &format!("kek = \"{}\"", self.kek))
    }

    /// [`Vault::table`] with `credential` (config lines) instead of the client secret.
    fn table_with(&self, credential: &str) -> String {
        self.table().replace(
            &format!("client_secret_file = \"{}\"", self.kv.secret_file.display()),
            credential,
        )
    }
}

/// Every token the emulator issued was asked for with a client assertion, none with the
/// secret.
async fn tokens_by_assertion(kv: &AzureEmulator) {
    let tokens: Vec<Value> = kv
        .requests()
        .await
        .into_iter()
        .filter(|r| r["op"] == "Token")
        .collect();
    assert!(!tokens.is_empty());
    for t in &tokens {
        assert_eq!(t["status"], 200, "{t}");
        assert_eq!(t["client_auth"], "assertion", "{t}");
    }
}

/// RSA-3072 into a Key Vault and AES-256 into a Managed HSM, from every token, land as
/// exactly the token's keys: a new key through the daemon, a new version of it through the
/// command line; each version tagged with its import's mark; a replay sends nothing; the
/// audit records name the cloud and the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_into_key_vault_and_aes_into_managed_hsm_land_as_the_tokens_keys() {
    let mut tokens = vec![softhsm()];
    match (kryoptic(), luna()) {
        (Some(k), Some(l)) => tokens.extend([k, l]),
        _ => skip_notice("kryoptic is not set up: only SoftHSM2 here"),
    }
    for fx in tokens {
        let kind = format!("{:?}", fx.kind).to_lowercase();
        let dir = fx.dir.join(format!("azure-{kind}"));
        std::fs::create_dir_all(&dir).unwrap();
        let kv = AzureEmulator::start(&dir, false);
        let mhsm = AzureEmulator::start(&dir, true);
        let kv_kek = kv.kek("byok-kek", 4096).await;
        let (config, audit) = config(
            fx,
            &format!("azure-land-{kind}"),
            &[
                (KV, destination(&kv, KV, &format!("kek = \"{kv_kek}\""))),
                // The Managed HSM's key-exchange key is made by the daemon, asked for.
                (
                    MHSM,
                    destination(
                        &mhsm,
                        MHSM,
                        "kek_name = \"hsm-bridge-kek\"\nkek_create = true\nkek_bits = 3072",
                    ),
                ),
            ],
        );
        let daemon = Daemon::start(&config, &[]);
        let modulus = token_modulus(|a| p11(fx, a), "test-rsa-3072");

        // RSA-3072 into a new Key Vault key.
        let rsa_name = format!("rsa-{kind}");
        let r = import(
            &daemon,
            request("test-rsa-3072", KV, &rsa_name, true, "rsa-1"),
        )
        .await
        .unwrap();
        assert_eq!(
            (r.cloud.as_str(), r.destination.as_str(), r.format.as_str()),
            ("azure", KV, "azure:byok")
        );
        assert_eq!(r.key_id, format!("{}/keys/{rsa_name}", kv.base));
        assert!(r.created_key);
        assert_eq!(
            (r.state.as_str(), r.version_state.as_str()),
            ("Enabled", "Enabled")
        );
        let first = kv.material(&rsa_name, &r.version_id).await;
        assert_eq!(
            pkcs8_modulus(&first),
            modulus,
            "{kind}: the Key Vault holds the token's RSA key"
        );

        // AES-256 into a new Managed HSM key, its key-exchange key made first.
        let aes_name = format!("aes-{kind}");
        let mut req = request("test-aes-256", MHSM, &aes_name, true, "aes-1");
        req.create_kek = true;
        req.key_ops = vec!["wrapKey".into(), "unwrapKey".into()];
        let r = import(&daemon, req).await.unwrap();
        assert_eq!(r.key_id, format!("{}/keys/{aes_name}", mhsm.base));
        assert_eq!(
            mhsm.material(&aes_name, &r.version_id).await,
            fx.aes["test-aes-256"],
            "{kind}: the Managed HSM holds the token's AES key"
        );
        let kek = versions(&mhsm, "hsm-bridge-kek").await;
        assert_eq!(kek.len(), 1, "{kek:?}");
        assert_eq!(kek[0]["key_ops"], json!(["import"]), "{kek:?}");
        assert_eq!(kek[0]["kty"], "RSA-HSM", "{kek:?}");
        let v = versions(&mhsm, &aes_name).await;
        assert_eq!(v[0]["key_ops"], json!(["wrapKey", "unwrapKey"]), "{v:?}");

        // The same requests again: answered from the journal, nothing sent.
        let imports = calls(&kv, "ImportKey").await + calls(&mhsm, "ImportKey").await;
        let again = import(
            &daemon,
            request("test-rsa-3072", KV, &rsa_name, true, "rsa-1"),
        )
        .await
        .unwrap();
        assert!(again.replayed);
        assert_eq!(
            imports,
            calls(&kv, "ImportKey").await + calls(&mhsm, "ImportKey").await
        );
        drop(daemon);

        // New versions through the command line.
        let made = cli_import(
            &config,
            KV,
            &["--label", "test-rsa-3072", "--target", &rsa_name],
        );
        assert_eq!(made["cloud"], "azure", "{made}");
        let second = made["version_id"].as_str().unwrap();
        assert_eq!(
            pkcs8_modulus(&kv.material(&rsa_name, second).await),
            modulus
        );
        let made = cli_import(
            &config,
            MHSM,
            &["--label", "test-aes-256", "--target", &aes_name],
        );
        assert_eq!(
            mhsm.material(&aes_name, made["version_id"].as_str().unwrap())
                .await,
            fx.aes["test-aes-256"]
        );
        let v = versions(&kv, &rsa_name).await;
        assert_eq!(v.len(), 2, "{v:?}");
        for version in &v {
            let mark = version["tags"]["hsm-bridge-request"].as_str().unwrap_or("");
            assert!(mark.starts_with("hsm-bridge "), "{version}");
        }
        assert_ne!(
            v[0]["tags"]["hsm-bridge-request"], v[1]["tags"]["hsm-bridge-request"],
            "each import carries a mark of its own"
        );

        let recs = audit_records(&audit);
        let imports: Vec<&Value> = recs.iter().filter(|r| r["operation"] == "Import").collect();
        assert!(imports.len() >= 3, "{recs:?}");
        for rec in imports {
            assert_eq!(rec["outcome"], "allowed", "{rec}");
            assert_eq!(rec["cloud"], "azure", "{rec}");
            assert_eq!(rec["format"], "azure:byok", "{rec}");
            assert!(
                rec["cloud_key_id"].as_str().unwrap().contains("/keys/"),
                "{rec}"
            );
        }
    }
}

/// What Azure would not take, and a key-exchange key it would not import with, are refused
/// with the reason before the HSM wraps: AES into a Key Vault, a key-exchange key with more
/// operations than `import`, a key-exchange key in another vault, a key-exchange key the
/// destination does not let the daemon make, a challenge that asks for another resource's
/// token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_come_before_the_hsm_wraps() {
    let fx = softhsm();
    let vault = Vault::start("azure-refusals").await;
    let (dir, kv) = (&vault.dir, &vault.kv);
    let wide = kv
        .create_key("wide-kek", "RSA-HSM", 3072, &["import", "wrapKey"])
        .await;
    let wide = wide["key"]["kid"].as_str().unwrap().to_string();
    let (config, audit) = config(
        fx,
        "azure-refusals",
        &[
            (KV, vault.table()),
            (
                "azure-wide",
                destination(kv, "azure-wide", &format!("kek = \"{wide}\"")),
            ),
            (
                "azure-named",
                destination(kv, "azure-named", "kek_name = \"not-made-yet\""),
            ),
        ],
    );
    let daemon = Daemon::start(&config, &[]);

    // AES into a Key Vault Premium: refused before the cloud is asked anything.
    let e = import(&daemon, request("test-aes-256", KV, "aes", true, ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("Managed HSM") && e.message().contains("nothing was wrapped or sent"),
        "{e:?}"
    );
    assert_eq!(
        calls(kv, "GetKey").await,
        0,
        "nothing was asked of the vault"
    );

    // The destination's own key-exchange key as the target.
    let e = import(&daemon, request("test-rsa-3072", KV, "BYOK-kek", false, ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("key-exchange key"), "{e:?}");

    // A key-exchange key with more operations than import.
    let e = import(
        &daemon,
        request("test-rsa-3072", "azure-wide", "rsa", true, ""),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("exactly [\"import\"]") && e.message().contains("wrapKey"),
        "{e:?}"
    );

    // No key-exchange key, and the destination does not let the daemon make one.
    let mut req = request("test-rsa-3072", "azure-named", "rsa", true, "");
    let e = import(&daemon, req.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("create_kek"), "{e:?}");
    req.create_kek = true;
    let e = import(&daemon, req).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("kek_create"), "{e:?}");
    assert!(kv.names().await.iter().all(|n| n != "not-made-yet"));

    // A challenge that names another resource: no token is asked for it.
    let tokens = calls(kv, "Token").await;
    kv.fault(
        json!({"op": "GetKey", "challenge_resource": "https://management.azure.com", "count": 10}),
    )
    .await;
    let fresh = Daemon::start(&config, &[]);
    let e = import(&fresh, request("test-rsa-3072", KV, "rsa", true, ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("https://management.azure.com")
            && e.message().contains("https://vault.azure.net/.default"),
        "{e:?}"
    );
    kv.clear_faults().await;
    drop(fresh);
    assert_eq!(
        calls(kv, "Token").await,
        tokens,
        "no token was asked for another resource"
    );

    assert_eq!(calls(kv, "ImportKey").await, 0, "nothing was imported");
    let recs = audit_records(&audit);
    let refused: Vec<&Value> = recs.iter().filter(|r| r["operation"] == "Import").collect();
    assert!(refused.len() >= 6, "{recs:?}");
    for r in refused {
        assert_eq!(r["outcome"], "refused", "{r}");
        assert!(r["mode"].is_null(), "nothing was wrapped: {r}");
    }
    drop(daemon);

    // A client secret file others may read: refused, nothing sent with it.
    let open_secret = dir.join("open-client-secret");
    std::fs::copy(&kv.secret_file, &open_secret).unwrap();
    std::fs::set_permissions(
        &open_secret,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let table = vault.table_with(&format!(
        "client_secret_file = \"{}\"",
        open_secret.display()
    ));
    let (open, _) = self::config(fx, "azure-open-secret", &[(KV, table)]);
    let tokens = calls(kv, "Token").await;
    let err = cli_refused(&open);
    assert!(
        err.contains("client secret file") && err.contains("chmod 600"),
        "{err}"
    );
    assert_eq!(calls(kv, "Token").await, tokens, "no token was asked for");

    // A key-exchange key in another vault: the config is refused.
    let (other, _) = self::config(
        fx,
        "azure-other-vault",
        &[(
            KV,
            destination(
                kv,
                KV,
                "kek = \"https://elsewhere.vault.azure.net/keys/byok-kek/0123456789abcdef0123456789abcdef\"",
            ),
        )],
    );
    let err = cli_refused(&other);
    assert!(
        err.contains("https://elsewhere.vault.azure.net") && err.contains("same vault"),
        "{err}"
    );
    assert_eq!(calls(kv, "ImportKey").await, 0);
}

/// Polls `emu` until key `name` has `n` versions (at most 30 s).
async fn until_versions(emu: &AzureEmulator, name: &str, n: usize) {
    let end = Instant::now() + Duration::from_secs(30);
    while versions(emu, name).await.len() < n {
        assert!(Instant::now() < end, "{:?}", versions(emu, name).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Azure took the import and its answer was lost: killed (SIGKILL) before the answer came,
/// the retry under the same idempotency key finds the version by its mark and answers OK
/// without a second PUT; a lost answer without a crash is found the same way in the call
/// itself. On SoftHSM2 and the Luna-like token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_azure_accepted_leaves_one_version() {
    let mut tokens = vec![softhsm()];
    match luna() {
        Some(l) => tokens.push(l),
        None => skip_notice("the Luna-like token is not set up: only SoftHSM2 here"),
    }
    for fx in tokens {
        let kind = format!("{:?}", fx.kind).to_lowercase();
        let dir = fx.dir.join(format!("azure-crash-{kind}"));
        std::fs::create_dir_all(&dir).unwrap();
        let kv = AzureEmulator::start(&dir, false);
        let kek = kv.kek("byok-kek", 4096).await;
        let (config, _) = config(
            fx,
            &format!("azure-crash-{kind}"),
            &[(KV, destination(&kv, KV, &format!("kek = \"{kek}\"")))],
        );
        let modulus = token_modulus(|a| p11(fx, a), "test-rsa-3072");

        // Killed after Azure made the version, before the answer.
        kv.fault(json!({"op": "ImportKey", "processed": true, "delay_ms": 60000}))
            .await;
        let daemon = Daemon::start(&config, &[]);
        let req = request("test-rsa-3072", KV, "crash", true, "crash-1");
        tokio::select! {
            r = import(&daemon, req.clone()) => panic!("{kind}: the call ended before the kill: {r:?}"),
            () = until_versions(&kv, "crash", 1) => {}
        }
        drop(daemon); // SIGKILL
        kv.clear_faults().await;
        let daemon = Daemon::start(&config, &[]);
        let (r, _) = until_answered_by(&format!("{req:?}"), || import(&daemon, req.clone())).await;
        let v = versions(&kv, "crash").await;
        assert_eq!(v.len(), 1, "{kind}: one version: {v:?}");
        assert_eq!(calls(&kv, "ImportKey").await, 1, "{kind}: one PUT");
        assert_eq!(r.version_id, version_of(v[0]["kid"].as_str().unwrap()));
        assert!(r.created_key);
        assert_eq!(
            pkcs8_modulus(&kv.material("crash", &r.version_id).await),
            modulus
        );

        // A lost answer without a crash: found in the call itself.
        kv.fault(json!({"op": "ImportKey", "drop": true, "processed": true}))
            .await;
        let r = import(
            &daemon,
            request("test-rsa-3072", KV, "crash", false, "crash-2"),
        )
        .await
        .unwrap();
        let v = versions(&kv, "crash").await;
        assert_eq!(v.len(), 2, "{kind}: {v:?}");
        assert_eq!(calls(&kv, "ImportKey").await, 2);
        assert!(
            v.iter()
                .any(|x| version_of(x["kid"].as_str().unwrap()) == r.version_id)
        );
        drop(daemon);
    }
}

/// A certificate credential: the application's PKCS#12 file (made here with the openssl
/// command line, with a password in a file of its own) signs the client assertion the
/// emulator checks against the registered certificate; the import lands, and every token
/// was got by assertion, none by secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_credential_gets_the_tokens() {
    let fx = softhsm();
    let vault = Vault::start("azure-certificate").await;
    let (dir, kv) = (&vault.dir, &vault.kv);
    let password = dir.join("p12-password");
    write_private(&password, b"correct horse\n");
    let p12 = dir.join("client.p12");
    openssl_ok(&[
        "pkcs12",
        "-export",
        "-in",
        kv.client_key_and_cert.to_str().unwrap(),
        "-out",
        p12.to_str().unwrap(),
        "-passout",
        &format!("file:{}", password.display()),
    ]);
    std::fs::set_permissions(&p12, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let table = vault.table_with(&format!(
        "client_certificate_file = \"{}\"\nclient_certificate_password_file = \"{}\"",
        p12.display(),
        password.display()
    ));
    let (config, _) = config(fx, "azure-certificate", &[(KV, table)]);
    let made = cli_import(
        &config,
        KV,
        &[
            "--label",
            "test-rsa-3072",
            "--new-key",
            "--target",
            "by-cert",
        ],
    );
    assert_eq!(
        pkcs8_modulus(
            &kv.material("by-cert", made["version_id"].as_str().unwrap())
                .await
        ),
        token_modulus(|a| p11(fx, a), "test-rsa-3072")
    );
    tokens_by_assertion(kv).await;
}

/// A vault that commits an import late, after the caller's deadline has passed: the PUT is
/// not cut at the caller's deadline (the send goes on in a task of its own and holds the
/// request's claim), so the caller's immediate retry waits for that answer instead of
/// finding nothing and sending again; one version in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_after_the_callers_deadline_is_imported_once() {
    let vault = Vault::start("azure-late-commit").await;
    let kv = &vault.kv;
    let (config, _) = config(softhsm(), "azure-late-commit", &[(KV, vault.table())]);
    let daemon = Daemon::start(&config, &[]);
    kv.fault(json!({"op": "ImportKey", "commit_after_ms": 2500}))
        .await;
    let req = request("test-rsa-3072", KV, "late", true, "late-1");
    let mut short = tonic::Request::new(req.clone());
    short.set_timeout(Duration::from_secs(1));
    let e = daemon.client("cckm").await.import(short).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e:?}"
    );
    // At once, as a caller would: answered by the first send's answer, not a second PUT.
    let (r, _) = until_answered_by(&format!("{req:?}"), || import(&daemon, req.clone())).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v = versions(kv, "late").await;
    assert_eq!(v.len(), 1, "one version: {v:?}");
    assert_eq!(calls(kv, "ImportKey").await, 1, "one PUT");
    assert_eq!(r.version_id, version_of(v[0]["kid"].as_str().unwrap()));
}

/// A version listing whose next page is on another host is not followed: the bearer token
/// goes to the vault only. (The listing is how a lost answer is looked for: here an import
/// whose answer is dropped.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_page_elsewhere_is_not_followed() {
    let vault = Vault::start("azure-next-link").await;
    let kv = &vault.kv;
    let elsewhere = AzureEmulator::start(&vault.dir, false);
    let (config, _) = config(softhsm(), "azure-next-link", &[(KV, vault.table())]);
    let daemon = Daemon::start(&config, &[]);
    let next = format!(
        "{}/keys/next/versions?api-version=2025-07-01&$skiptoken=x",
        elsewhere.base.replace("localhost", "127.0.0.1")
    );
    kv.fault(json!([
        {"op": "ImportKey", "drop": true, "processed": true},
        {"op": "GetKeyVersions", "count": 10, "status": 200,
         "raw_body": json!({"value": [], "nextLink": next}).to_string()}
    ]))
    .await;
    let e = import(
        &daemon,
        request("test-rsa-3072", KV, "next", true, "next-1"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(
        elsewhere.requests().await,
        Vec::<Value>::new(),
        "nothing was sent elsewhere"
    );
    assert!(calls(kv, "GetKeyVersions").await >= 1);
}

/// Kubernetes workload identity: the projected service-account token (here a JWT the test
/// signs with the key of the certificate the emulator trusts, as the federation would
/// vouch for it) is read from `federated_token_file` and exchanged for the vault's token;
/// the import lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_identity_gets_the_tokens() {
    let fx = softhsm();
    let vault = Vault::start("azure-workload").await;
    let (dir, kv) = (&vault.dir, &vault.kv);
    let pem = std::fs::read(&kv.client_key_and_cert).unwrap();
    let key = openssl::pkey::PKey::private_key_from_pem(&pem).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = b64url(json!({"alg": "RS256", "typ": "JWT"}).to_string().as_bytes());
    let claims = b64url(
        json!({
            "aud": format!("{}/{}/oauth2/v2.0/token", kv.base, kv.tenant),
            "iss": kv.client_id,
            "sub": kv.client_id,
            "nbf": now,
            "exp": now + 3600,
            "jti": b64url(&random(16)),
        })
        .to_string()
        .as_bytes(),
    );
    let mut signer =
        openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
    signer
        .update(format!("{header}.{claims}").as_bytes())
        .unwrap();
    let jwt = format!(
        "{header}.{claims}.{}",
        b64url(&signer.sign_to_vec().unwrap())
    );
    let token_file = dir.join("projected-token");
    std::fs::write(&token_file, jwt).unwrap();
    let table = vault.table_with(&format!(
        "workload_identity = true\nfederated_token_file = \"{}\"",
        token_file.display()
    ));
    let (config, _) = config(fx, "azure-workload", &[(KV, table)]);
    let made = cli_import(
        &config,
        KV,
        &[
            "--label",
            "test-rsa-3072",
            "--new-key",
            "--target",
            "by-workload",
        ],
    );
    assert_eq!(made["cloud"], "azure", "{made}");
    tokens_by_assertion(kv).await;
}
