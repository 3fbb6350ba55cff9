//! Google Cloud KMS as a destination, end to end: the real daemon (gRPC `Import`) and the
//! real command line (`hsm-bridge import`) on SoftHSM2, kryoptic and the Luna-like token,
//! the real `gcp-kms-emulator` (service-account JWTs checked, metadata-server tokens, import
//! jobs made and ACTIVE after a while, a real unwrap with the job's key and method; its test
//! oracle says what a version holds), and the daemon killed with SIGKILL after Google took
//! an import and before its answer came. The Google client trusts the system's roots, so
//! the daemon and the command line get the test CA as `SSL_CERT_FILE`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::{Daemon, audit_records, certs, destinations_config, until_answered_by};
use common::gcp_emulator::GcpEmulator;
use common::*;
use hsm_bridge::proto::{self, key_ref::Key};
use serde_json::{Value, json};
use tonic::Code;

const GCP: &str = "gcp-kms";

/// The test CA, as the Google client's roots.
fn ca_env() -> [(&'static str, String); 1] {
    [(
        "SSL_CERT_FILE",
        certs().join("ca.pem").to_str().unwrap().to_string(),
    )]
}

/// A folder `name` of `fx`'s and an emulator in it.
fn emulator(fx: &Fixture, name: impl AsRef<Path>) -> (PathBuf, GcpEmulator) {
    let dir = fx.dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let emu = GcpEmulator::start(&dir);
    (dir, emu)
}

/// The `[destinations.NAME]` table for `emu`'s key ring, with `extra` lines (credentials
/// unless `extra` names them).
fn destination(emu: &GcpEmulator, name: &str, extra: &str) -> String {
    let credentials = if extra.contains("metadata_endpoint") || extra.contains("credentials_file") {
        String::new()
    } else {
        format!("credentials_file = \"{}\"\n", emu.sa_file.display())
    };
    format!(
        "\n[destinations.{name}]\ncloud = \"gcp\"\nproject = \"{}\"\nlocation = \"global\"\nkey_ring = \"ring\"\nendpoint = \"{base}\"\nallowed_endpoints = [\"{base}\"]\ntimeout_ms = 20000\n{credentials}{extra}\n",
        emu.project,
        base = emu.base,
    )
}

/// A daemon config on `fx` whose caller `cckm` may import into `destinations` (name,
/// table).
fn config(fx: &Fixture, name: &str, destinations: &[(&str, String)]) -> (PathBuf, PathBuf) {
    let grants: Vec<&str> = destinations.iter().map(|(n, _)| *n).collect();
    let tables: String = destinations.iter().map(|(_, t)| t.as_str()).collect();
    destinations_config(fx, name, &grants, &format!("{}{tables}", ""))
}

fn daemon(config: &Path) -> Daemon {
    let env = ca_env();
    Daemon::start_with_env(config, &[(env[0].0, env[0].1.as_str())])
}

/// An `Import` of the key labelled `l` into key `key` of `dest` (a new key for `purpose`
/// with `Some`, "" for the shape's), waiting until it is ENABLED.
fn request(
    l: &str,
    dest: &str,
    key: &str,
    purpose: Option<&str>,
    idem: &str,
) -> proto::ImportRequest {
    proto::ImportRequest {
        source_key: Some(proto::KeyRef {
            key: Some(Key::Label(l.into())),
        }),
        destination: dest.into(),
        target: key.into(),
        create: purpose.map(|p| proto::CreateOptions {
            key_usage: p.into(),
        }),
        idempotency_key: idem.into(),
        wait_for_enabled: true,
        ..Default::default()
    }
}

/// `hsm-bridge import` into `dest` with the test CA; its output.
fn cli(config: &Path, dest: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec![
        "import",
        "--config",
        config.to_str().unwrap(),
        "--to",
        dest,
        "--json",
    ];
    all.extend(args);
    let env = ca_env();
    hsm_bridge_with_env(&all, &[(env[0].0, env[0].1.as_str())])
}

/// `hsm-bridge import` into `dest`; its JSON answer.
fn cli_import(config: &Path, dest: &str, args: &[&str]) -> Value {
    let out = cli(config, dest, args);
    assert!(
        out.status.success(),
        "hsm-bridge import {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `hsm-bridge import` into `dest`, which must fail; its stderr.
fn cli_refused(config: &Path, dest: &str, args: &[&str]) -> String {
    let out = cli(config, dest, args);
    assert!(!out.status.success(), "{args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The emulator's calls of operation `op`.
async fn calls(emu: &GcpEmulator, op: &str) -> usize {
    emu.requests()
        .await
        .iter()
        .filter(|r| r["op"] == op)
        .count()
}

/// RSA-3072 and AES-256 from every token land as exactly the token's keys: new keys through
/// the daemon, new versions of them through the command line, each version made with an
/// import job of its own; a replay sends nothing; the audit records name the cloud and key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aes_and_rsa_land_as_the_tokens_keys() {
    let mut tokens = vec![softhsm()];
    match (kryoptic(), luna()) {
        (Some(k), Some(l)) => tokens.extend([k, l]),
        _ => skip_notice("kryoptic is not set up: only SoftHSM2 here"),
    }
    for fx in tokens {
        let kind = format!("{:?}", fx.kind).to_lowercase();
        let (_, emu) = emulator(fx, format!("gcp-{kind}"));
        let (config, audit) = config(
            fx,
            &format!("gcp-land-{kind}"),
            &[(GCP, destination(&emu, GCP, ""))],
        );
        let daemon = daemon(&config);
        let modulus = token_modulus(|a| p11(fx, a), "test-rsa-3072");

        // AES-256 into a new key: ENCRYPT_DECRYPT, GOOGLE_SYMMETRIC_ENCRYPTION.
        let aes = format!("aes-{kind}");
        let r = daemon
            .import(request("test-aes-256", GCP, &aes, Some(""), "aes-1"))
            .await
            .unwrap();
        assert_eq!(
            (r.cloud.as_str(), r.destination.as_str(), r.format.as_str()),
            ("gcp", GCP, "gcp:RSA_OAEP_4096_SHA256_AES_256")
        );
        let aes_key = format!("{}/cryptoKeys/{aes}", emu.key_ring);
        assert_eq!(r.key_id, aes_key);
        assert_eq!(r.version_id, format!("{aes_key}/cryptoKeyVersions/1"));
        assert!(r.created_key);
        assert_eq!(r.version_state, "ENABLED");
        assert_eq!(
            emu.material(&r.version_id).await,
            fx.aes["test-aes-256"],
            "{kind}: Cloud KMS holds the token's AES key"
        );
        let key = emu.get(&aes_key).await;
        assert_eq!(key["importOnly"], true, "{key}");
        assert_eq!(key["purpose"], "ENCRYPT_DECRYPT", "{key}");
        assert_eq!(key["versionTemplate"]["protectionLevel"], "HSM", "{key}");
        assert_eq!(
            key["versionTemplate"]["algorithm"], "GOOGLE_SYMMETRIC_ENCRYPTION",
            "{key}"
        );

        // RSA-3072 into a new ASYMMETRIC_DECRYPT key, by its resource name.
        let rsa = format!("rsa-{kind}");
        let rsa_key = format!("{}/cryptoKeys/{rsa}", emu.key_ring);
        let r = daemon
            .import(request(
                "test-rsa-3072",
                GCP,
                &rsa_key,
                Some("ASYMMETRIC_DECRYPT"),
                "rsa-1",
            ))
            .await
            .unwrap();
        assert_eq!(r.key_id, rsa_key);
        assert_eq!(
            pkcs8_modulus(&emu.material(&r.version_id).await),
            modulus,
            "{kind}: Cloud KMS holds the token's RSA key"
        );
        let v = emu.get(&r.version_id).await;
        assert_eq!(v["algorithm"], "RSA_DECRYPT_OAEP_3072_SHA256", "{v}");

        // The same request again: answered from the journal, nothing sent.
        let (imports, jobs) = (
            calls(&emu, "ImportCryptoKeyVersion").await,
            calls(&emu, "CreateImportJob").await,
        );
        let again = daemon
            .import(request(
                "test-rsa-3072",
                GCP,
                &rsa_key,
                Some("ASYMMETRIC_DECRYPT"),
                "rsa-1",
            ))
            .await
            .unwrap();
        assert!(again.replayed);
        assert_eq!(again.version_id, r.version_id);
        assert_eq!(imports, calls(&emu, "ImportCryptoKeyVersion").await);
        assert_eq!(jobs, calls(&emu, "CreateImportJob").await);
        drop(daemon);

        // New versions through the command line.
        for (label, key) in [("test-aes-256", &aes), ("test-rsa-3072", &rsa)] {
            let made = cli_import(&config, GCP, &["--label", label, "--target", key, "--wait"]);
            assert_eq!(made["cloud"], "gcp", "{made}");
            assert_eq!(made["version_state"], "ENABLED", "{made}");
            let material = emu.material(made["version_id"].as_str().unwrap()).await;
            match label {
                "test-aes-256" => assert_eq!(material, fx.aes[label]),
                _ => assert_eq!(pkcs8_modulus(&material), modulus),
            }
        }
        for key in [&aes_key, &rsa_key] {
            let versions = emu.versions(key).await;
            assert_eq!(versions.len(), 2, "{versions:?}");
            let jobs: Vec<&str> = versions
                .iter()
                .map(|v| v["importJob"].as_str().unwrap())
                .collect();
            assert_ne!(jobs[0], jobs[1], "each import has a job of its own");
            for job in jobs {
                assert!(
                    job.starts_with(&format!("{}/importJobs/hsm-bridge-", emu.key_ring)),
                    "{job}"
                );
            }
        }

        let recs = audit_records(&audit);
        let imports: Vec<&Value> = recs.iter().filter(|r| r["operation"] == "Import").collect();
        assert!(imports.len() >= 5, "{recs:?}");
        for rec in imports {
            assert_eq!(rec["outcome"], "allowed", "{rec}");
            assert_eq!(rec["cloud"], "gcp", "{rec}");
            assert_eq!(rec["format"], "gcp:RSA_OAEP_4096_SHA256_AES_256", "{rec}");
            assert!(
                rec["cloud_key_id"]
                    .as_str()
                    .unwrap()
                    .starts_with(&emu.key_ring),
                "{rec}"
            );
        }
        // Every call carried a JWT for Cloud KMS alone.
        for call in emu.requests().await {
            assert_eq!(call["auth"], "jwt", "{call}");
            assert_eq!(
                call["jwt_aud"], "https://cloudkms.googleapis.com/",
                "{call}"
            );
        }
    }
}

/// What Google would not take, and an import job it would not import with, are refused
/// with the reason before the HSM wraps: a job whose key is not its method's size, a job
/// that does not become ACTIVE in time (a retryable DEADLINE_EXCEEDED), an expired job, a
/// key of another protection level, a key outside the key ring, a new key whose id is taken, AES-192, a world-readable
/// service-account key, and metadata credentials with `GCE_METADATA_HOST` set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_come_before_the_hsm_wraps() {
    let fx = softhsm();
    let (dir, emu) = emulator(fx, "gcp-refusals");
    let (config, audit) = config(
        fx,
        "gcp-refusals",
        &[
            (GCP, destination(&emu, GCP, "")),
            (
                "gcp-quick",
                destination(&emu, "gcp-quick", "job_wait_ms = 1500"),
            ),
        ],
    );
    let daemon = daemon(&config);
    let refused = async |req: proto::ImportRequest, code: Code, says: &[&str]| {
        let e = daemon.import(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
        for s in says {
            assert!(e.message().contains(s), "{s:?} in {e:?}");
        }
    };

    // A job whose key is RSA-3072 for a 4096-bit method.
    emu.job_faults(json!({"job_key_bits": 3072})).await;
    refused(
        request("test-aes-256", GCP, "sized", Some(""), ""),
        Code::FailedPrecondition,
        &[
            "does not match its method",
            "RSA-3072",
            "RSA-4096",
            "nothing was wrapped",
        ],
    )
    .await;
    // A job that stays PENDING_GENERATION past job_wait_ms.
    emu.job_faults(json!({"job_stays_pending": true})).await;
    refused(
        request("test-aes-256", "gcp-quick", "pending", Some(""), ""),
        Code::DeadlineExceeded,
        &["PENDING_GENERATION", "job_wait_ms", "nothing was wrapped"],
    )
    .await;
    // An expired job.
    emu.job_faults(json!({"job_expired": true})).await;
    refused(
        request("test-aes-256", GCP, "expired", Some(""), ""),
        Code::FailedPrecondition,
        &["EXPIRED", "not ACTIVE", "nothing was wrapped"],
    )
    .await;
    emu.clear_faults().await;
    assert_eq!(
        calls(&emu, "CreateCryptoKey").await,
        0,
        "no key was made for a job refused"
    );

    // A key of SOFTWARE versions for an HSM destination: refused before any job is made.
    let soft = emu
        .create_key(
            "soft",
            "ENCRYPT_DECRYPT",
            "SOFTWARE",
            "GOOGLE_SYMMETRIC_ENCRYPTION",
        )
        .await;
    let jobs = calls(&emu, "CreateImportJob").await;
    refused(
        request("test-aes-256", GCP, "soft", None, ""),
        Code::InvalidArgument,
        &["SOFTWARE", "HSM", "protection level", "nothing was wrapped"],
    )
    .await;
    assert_eq!(calls(&emu, "CreateImportJob").await, jobs, "{soft}");

    // A key of another key ring, a taken id for a new key, AES-192, a key that is not there.
    let before = emu.requests().await.len();
    refused(
        request(
            "test-aes-256",
            GCP,
            "projects/other-project/locations/global/keyRings/ring/cryptoKeys/k",
            None,
            "",
        ),
        Code::InvalidArgument,
        &["neither a key id", &emu.key_ring],
    )
    .await;
    assert_eq!(emu.requests().await.len(), before, "nothing was asked");
    refused(
        request("test-aes-256", GCP, "soft", Some(""), ""),
        Code::InvalidArgument,
        &["exists", "nothing was wrapped"],
    )
    .await;
    refused(
        request("test-aes-192", GCP, "aes192", Some(""), ""),
        Code::InvalidArgument,
        &["AES-192"],
    )
    .await;
    refused(
        request("test-aes-256", GCP, "absent", None, ""),
        Code::FailedPrecondition,
        &["there is no key", "create"],
    )
    .await;

    assert_eq!(
        calls(&emu, "ImportCryptoKeyVersion").await,
        0,
        "nothing was imported"
    );
    let recs = audit_records(&audit);
    let refusals: Vec<&Value> = recs.iter().filter(|r| r["operation"] == "Import").collect();
    assert!(refusals.len() >= 8, "{recs:?}");
    for r in refusals {
        assert_eq!(r["outcome"], "refused", "{r}");
        assert!(r["mode"].is_null(), "nothing was wrapped: {r}");
    }
    drop(daemon);

    // A service-account key others may read: refused, nothing sent with it.
    let open = dir.join("open-service-account.json");
    std::fs::copy(&emu.sa_file, &open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let table = destination(
        &emu,
        GCP,
        &format!("credentials_file = \"{}\"", open.display()),
    );
    let (open_config, _) = self::config(fx, "gcp-open-key", &[(GCP, table)]);
    let before = emu.requests().await.len();
    let args = ["--label", "test-aes-256", "--new-key", "--target", "x"];
    let err = cli_refused(&open_config, GCP, &args);
    assert!(err.contains("chmod 600"), "{err}");
    assert_eq!(emu.requests().await.len(), before, "nothing was sent");

    // Metadata-server credentials while the environment names another metadata server.
    let table = destination(
        &emu,
        GCP,
        &format!("metadata_endpoint = \"{}\"", emu.metadata),
    );
    let (mds_config, _) = self::config(fx, "gcp-mds-env", &[(GCP, table)]);
    let mut all = vec![
        "import",
        "--config",
        mds_config.to_str().unwrap(),
        "--to",
        GCP,
    ];
    all.extend(args);
    let out = hsm_bridge_with_env(&all, &[("GCE_METADATA_HOST", "127.0.0.1:9")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("GCE_METADATA_HOST"), "{err}");
    assert_eq!(emu.requests().await.len(), before, "nothing was sent");
}

/// Polls `emu` until key `key` has `n` versions (at most 60 s).
async fn until_versions(emu: &GcpEmulator, key: &str, n: usize) {
    let end = Instant::now() + Duration::from_secs(60);
    while emu.versions(key).await.len() < n {
        assert!(Instant::now() < end, "{:?}", emu.versions(key).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Google took the import and its answer was lost: killed (SIGKILL) before the answer came,
/// the retry under the same idempotency key finds the version by its job and answers OK
/// without a second import; a lost answer without a crash is found the same way in the
/// call itself. On SoftHSM2 and the Luna-like token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_google_accepted_leaves_one_version() {
    let mut tokens = vec![softhsm()];
    match luna() {
        Some(l) => tokens.push(l),
        None => skip_notice("the Luna-like token is not set up: only SoftHSM2 here"),
    }
    for fx in tokens {
        let kind = format!("{:?}", fx.kind).to_lowercase();
        let (_, emu) = emulator(fx, format!("gcp-crash-{kind}"));
        let (config, _) = config(
            fx,
            &format!("gcp-crash-{kind}"),
            &[(GCP, destination(&emu, GCP, ""))],
        );
        let modulus = token_modulus(|a| p11(fx, a), "test-rsa-3072");
        let key = format!("{}/cryptoKeys/crash", emu.key_ring);

        // Killed after Google made the version, before the answer.
        emu.fault(json!({"op": "ImportCryptoKeyVersion", "processed": true, "delay_ms": 60000}))
            .await;
        let d = daemon(&config);
        let req = request("test-rsa-3072", GCP, "crash", Some(""), "crash-1");
        tokio::select! {
            r = d.import(req.clone()) => panic!("{kind}: the call ended before the kill: {r:?}"),
            () = until_versions(&emu, &key, 1) => {}
        }
        drop(d); // SIGKILL
        emu.clear_faults().await;
        let d = daemon(&config);
        let (r, _) = until_answered_by(&format!("{req:?}"), || d.import(req.clone())).await;
        let v = emu.versions(&key).await;
        assert_eq!(v.len(), 1, "{kind}: one version: {v:?}");
        assert_eq!(
            calls(&emu, "ImportCryptoKeyVersion").await,
            1,
            "{kind}: one import"
        );
        assert_eq!(r.version_id, v[0]["name"].as_str().unwrap());
        assert!(r.created_key);
        assert_eq!(r.version_state, "ENABLED");
        assert_eq!(pkcs8_modulus(&emu.material(&r.version_id).await), modulus);

        // A lost answer without a crash: found in the call itself.
        emu.fault(json!({"op": "ImportCryptoKeyVersion", "drop": true, "processed": true}))
            .await;
        let r = d
            .import(request("test-rsa-3072", GCP, "crash", None, "crash-2"))
            .await
            .unwrap();
        let v = emu.versions(&key).await;
        assert_eq!(v.len(), 2, "{kind}: {v:?}");
        assert_eq!(calls(&emu, "ImportCryptoKeyVersion").await, 2);
        assert!(v.iter().any(|x| x["name"] == r.version_id.as_str()));
        drop(d);
    }
}

/// Cloud KMS commits an import late, after the caller's deadline has passed: the call is
/// not cut at the caller's deadline (the send goes on in a task of its own and holds the
/// request's claim), so the caller's immediate retry waits for that answer instead of
/// finding nothing and sending again; one version in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_after_the_callers_deadline_is_imported_once() {
    let fx = softhsm();
    let (_, emu) = emulator(fx, "gcp-late-commit");
    let (config, _) = config(fx, "gcp-late-commit", &[(GCP, destination(&emu, GCP, ""))]);
    let d = daemon(&config);
    emu.fault(json!({"op": "ImportCryptoKeyVersion", "commit_after_ms": 12000}))
        .await;
    let req = request("test-rsa-3072", GCP, "late", Some(""), "late-1");
    let mut short = tonic::Request::new(req.clone());
    // Long enough for the job and the wrap, not for the import's answer.
    short.set_timeout(Duration::from_secs(8));
    let e = d.client("cckm").await.import(short).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e:?}"
    );
    assert_eq!(
        calls(&emu, "ImportCryptoKeyVersion").await,
        1,
        "the import was sent"
    );
    let (r, _) = until_answered_by(&format!("{req:?}"), || d.import(req.clone())).await;
    let key = format!("{}/cryptoKeys/late", emu.key_ring);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let v = emu.versions(&key).await;
    assert_eq!(v.len(), 1, "one version: {v:?}");
    assert_eq!(calls(&emu, "ImportCryptoKeyVersion").await, 1, "one import");
    assert_eq!(r.version_id, v[0]["name"].as_str().unwrap());
}

/// Without a key file, tokens come from the metadata server the destination names (asked
/// for the cloudkms scope), and the import lands; Google's reason for an import that fails
/// is the caller's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_server_gives_the_tokens_and_a_failed_import_says_why() {
    let fx = softhsm();
    let (_, emu) = emulator(fx, "gcp-metadata");
    let table = destination(
        &emu,
        GCP,
        &format!("metadata_endpoint = \"{}\"", emu.metadata),
    );
    let (config, _) = config(fx, "gcp-metadata", &[(GCP, table)]);
    let made = cli_import(
        &config,
        GCP,
        &[
            "--label",
            "test-aes-256",
            "--new-key",
            "--target",
            "by-mds",
            "--wait",
        ],
    );
    assert_eq!(
        emu.material(made["version_id"].as_str().unwrap()).await,
        fx.aes["test-aes-256"]
    );
    let log = emu.requests().await;
    let metadata = |r: &&Value| r["op"].as_str().unwrap_or("").starts_with("Metadata");
    let tokens: Vec<&Value> = log.iter().filter(|r| r["op"] == "MetadataToken").collect();
    assert!(!tokens.is_empty(), "{log:?}");
    for t in tokens {
        assert!(
            t["scopes"]
                .to_string()
                .contains("https://www.googleapis.com/auth/cloudkms"),
            "{t}"
        );
    }
    for call in log.iter().filter(|r| !metadata(r)) {
        assert_eq!(call["auth"], "metadata", "{call}");
    }

    emu.job_faults(json!({"import_fails": "the wrapped key is not what the algorithm takes"}))
        .await;
    let err = cli_refused(
        &config,
        GCP,
        &["--label", "test-aes-256", "--target", "by-mds", "--wait"],
    );
    assert!(
        err.contains("IMPORT_FAILED") && err.contains("not what the algorithm takes"),
        "{err}"
    );
}

/// What someone else with rights in the key ring makes is not taken as this import's:
/// a version another made with this import's job (its id is in the job list, its public key
/// public) after Google refused the import itself (429: nothing made) is not the answer; and
/// a key carrying this request's label (the token is in the job's id) that already has a
/// version is not "the key an earlier attempt made" for a new-key import.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_others_make_in_the_key_ring_is_not_taken_as_this_imports() {
    let fx = softhsm();
    let (_, emu) = emulator(fx, "gcp-others");
    let (config, _) = config(fx, "gcp-others", &[(GCP, destination(&emu, GCP, ""))]);
    let d = daemon(&config);
    let job_of = async |emu: &GcpEmulator| -> Option<String> {
        emu.requests()
            .await
            .iter()
            .rev()
            .find(|r| r["op"] == "GetImportJob")
            .and_then(|r| r["resource"].as_str().map(str::to_string))
    };

    // Google refuses the import (429); meanwhile another imports with its job.
    let target = emu
        .create_key(
            "shared",
            "ENCRYPT_DECRYPT",
            "HSM",
            "GOOGLE_SYMMETRIC_ENCRYPTION",
        )
        .await;
    let key = target["name"].as_str().unwrap().to_string();
    emu.fault(json!({"op": "ImportCryptoKeyVersion", "status": 429, "code": "RESOURCE_EXHAUSTED"}))
        .await;
    let req = request("test-aes-256", GCP, "shared", None, "shared-1");
    let mut planted = None;
    let call = d.import(req);
    tokio::pin!(call);
    let result = loop {
        tokio::select! {
            r = &mut call => break r,
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let refused = emu
            .requests()
            .await
            .iter()
            .any(|r| r["op"] == "ImportCryptoKeyVersion" && r["status"] == 429);
        if refused && planted.is_none() {
            let job = job_of(&emu).await.unwrap();
            let v = emu
                .api(
                    reqwest::Method::POST,
                    &format!("{key}/cryptoKeyVersions:import"),
                    Some(json!({
                        "algorithm": "GOOGLE_SYMMETRIC_ENCRYPTION",
                        "importJob": job,
                        "wrappedKey": openssl::base64::encode_block(&random(552)),
                    })),
                )
                .await;
            planted = Some(v["name"].as_str().unwrap().to_string());
        }
    };
    let e = result.expect_err("Google refused the import; another's version is not its answer");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("RESOURCE_EXHAUSTED"), "{e:?}");
    if let Some(planted) = planted {
        assert!(!e.message().contains(&planted), "{e:?}");
    }

    // A first attempt shows the request's token in its job's id; another labels a key with
    // it and gives the key a version; the retry of the new-key import refuses that key.
    emu.clear_faults().await;
    emu.job_faults(json!({"job_key_bits": 3072})).await;
    let req = request("test-aes-256", GCP, "labelled", Some(""), "labelled-1");
    let e = d.import(req.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let job = job_of(&emu).await.unwrap();
    let id = job.rsplit('/').next().unwrap();
    let token = id
        .strip_prefix("hsm-bridge-")
        .and_then(|t| t.rsplit_once('-'))
        .map(|(t, _)| t)
        .unwrap();
    emu.api(
        reqwest::Method::POST,
        &format!("{}/cryptoKeys?cryptoKeyId=labelled", emu.key_ring),
        Some(json!({
            "purpose": "ENCRYPT_DECRYPT",
            "versionTemplate": {"protectionLevel": "HSM", "algorithm": "GOOGLE_SYMMETRIC_ENCRYPTION"},
            "labels": {"hsm-bridge-request": token},
        })),
    )
    .await;
    let labelled = format!("{}/cryptoKeys/labelled", emu.key_ring);
    assert_eq!(emu.versions(&labelled).await.len(), 1);
    let e = d.import(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("exists"), "{e:?}");
    assert_eq!(
        emu.versions(&labelled).await.len(),
        1,
        "nothing was imported into the key another made"
    );
}
