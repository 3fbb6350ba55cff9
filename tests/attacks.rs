//! The attack review's findings, performed: each test attacks the real daemon (over mTLS on
//! 127.0.0.1, on a real SoftHSM2 token, with the real OCI emulator where OCI is involved)
//! the way the review did, and passes only where the attack no longer works. SECURITY.md
//! lists each finding with what stops it now.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, audit_records, daemon_config, tls_server_lines};
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

fn by_id(id: &str) -> Option<proto::KeyRef> {
    Some(proto::KeyRef {
        key: Some(Key::IdHex(id.into())),
    })
}

fn wrap_req(key: Option<proto::KeyRef>, wk: &KeyPair) -> proto::WrapKeyRequest {
    proto::WrapKeyRequest {
        source_key: key,
        wrapping_public_key_pem: std::fs::read_to_string(&wk.public_pem).unwrap(),
        algorithm: proto::WrappingAlgorithm::RsaOaepAesSha256 as i32,
        ..Default::default()
    }
}

/// An emulator with one AES-256 key, and a daemon that may call it; `edit` changes the
/// daemon's config text (e.g. a caller's grants) before it starts.
struct Vault {
    emu: Emulator,
    daemon: Daemon,
    audit: std::path::PathBuf,
    identity: ApiIdentity,
}

fn vault(name: &str, edit: impl FnOnce(String) -> String) -> Vault {
    let fx = softhsm();
    let dir = fx.dir.join(format!("attack-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let identity = api_identity(&dir, "api");
    let emu = Emulator::start(
        &dir,
        &[identity.key.public_pem.as_path()],
        &["aes=AES-256", "aes128=AES-128"],
    );
    let (config, audit) = daemon_config(fx, name, &emu.oci_config(&identity, 2), None);
    let text = edit(std::fs::read_to_string(&config).unwrap());
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config, &[]);
    Vault {
        emu,
        daemon,
        audit,
        identity,
    }
}

/// `limited` may import too, but still touches only test-aes-128.
fn limited_imports(text: String) -> String {
    text.replace(
        "operations = [\"list\", \"wrap\"]\nkeys = [\"test-aes-*\"]",
        "operations = [\"list\", \"wrap\", \"import\"]\nkeys = [\"test-aes-128\"]",
    )
}

fn version_request(
    v: &Vault,
    key: Option<proto::KeyRef>,
    idem: &str,
) -> proto::ImportKeyVersionRequest {
    proto::ImportKeyVersionRequest {
        source_key: key,
        oci_key_id: v.emu.keys["aes"].clone(),
        oci: Some(proto::OciTarget {
            connection: String::new(),
            management_endpoint: v.emu.base.clone(),
        }),
        algorithm: proto::WrappingAlgorithm::RsaOaepAesSha256 as i32,
        idempotency_key: idem.into(),
        wait_for_enabled: false,
    }
}

async fn import_as(
    v: &Vault,
    who: &str,
    req: proto::ImportKeyVersionRequest,
) -> Result<proto::KeyVersion, tonic::Status> {
    let mut r = tonic::Request::new(req);
    r.set_timeout(Duration::from_secs(30));
    v.daemon
        .client(who)
        .await
        .import_key_version(r)
        .await
        .map(|r| r.into_inner().key_version.unwrap())
}

/// The emulator's import POSTs.
async fn import_posts(v: &Vault) -> Vec<serde_json::Value> {
    v.emu
        .requests()
        .await
        .into_iter()
        .filter(|e| e["method"] == "POST" && e["path"].as_str().unwrap().ends_with("/import"))
        .collect()
}

async fn versions(v: &Vault) -> usize {
    v.emu.key(&v.emu.keys["aes"]).await["versionIds"]
        .as_array()
        .unwrap()
        .len()
}

/// High 1: `grpc-timeout: 9999999999999999999S` overflowed the clock and killed the daemon,
/// before the caller was even identified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_timeout_past_the_clock_crashes_nothing() {
    let fx = softhsm();
    let (config, audit) = daemon_config(fx, "huge-timeout", "caller_wrapping_keys = \"any\"", None);
    let d = Daemon::start(&config, &[]);
    let huge = |body| {
        let mut r = tonic::Request::new(body);
        r.metadata_mut()
            .insert("grpc-timeout", "9999999999999999999S".parse().unwrap());
        r
    };
    let wk = &fx.wk.wk2048;
    // Any certificate from the client CA did it: now it is identified, and refused, first.
    let e = d
        .client("unlisted")
        .await
        .wrap_key(huge(wrap_req(by_label("test-aes-256"), wk)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // A listed caller with the same header is served, as with no deadline.
    let r = d
        .client("cckm")
        .await
        .wrap_key(huge(wrap_req(by_label("test-aes-256"), wk)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        open_material(&r.wrapped_key_material, wk, 256, "RSA_OAEP_AES_SHA256"),
        fx.aes["test-aes-256"]
    );
    let mut c = d.client("cckm").await;
    let again = c
        .wrap_key(wrap_req(by_label("test-aes-128"), wk))
        .await
        .expect("the daemon still serves");
    assert!(!again.into_inner().wrapped_key_material.is_empty());
    let codes: Vec<_> = audit_records(&audit)
        .iter()
        .map(|r| r["code"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(codes, ["UNAUTHENTICATED", "OK", "OK"]);
}

/// Medium 5: 2,000 idle TCP connections held 2,000 descriptors and starved the callers and
/// the health probe. Now a connection that has not finished its TLS handshake is one of at
/// most `max_handshakes` (a newcomer pushes out the oldest), and is dropped after
/// `tls_handshake_timeout_secs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_take_every_descriptor() {
    let fx = softhsm();
    let server = tls_server_lines()
        + "max_connections = 8\nmax_handshakes = 8\ntls_handshake_timeout_secs = 1\n";
    let (config, _) = daemon_config(fx, "idle", "caller_wrapping_keys = \"any\"", Some(&server));
    let d = Daemon::start(&config, &[]);
    let idle: Vec<std::net::TcpStream> = (0..60)
        .map(|_| std::net::TcpStream::connect(&d.addr).unwrap())
        .collect();
    // Every idle connection is closed by the daemon: at once past the cap, and after the
    // handshake timeout within it. (Before, each stayed open for as long as the peer liked.)
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("an idle connection was still open: {other:?}"),
        }
    }
    let r = d
        .client("cckm")
        .await
        .wrap_key(wrap_req(by_label("test-aes-256"), &fx.wk.wk2048))
        .await;
    assert!(
        r.is_ok(),
        "a caller is served once the idle ones are gone: {r:?}"
    );
    assert!(
        d.log_text().contains("server.max_handshakes"),
        "{}",
        d.log_text()
    );
}

/// Medium 6: raw `oci_key_id` and endpoint bytes went into the audit record before the
/// caller was identified or the field checked; 300 requests grew the log by 108 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_hold_no_unchecked_caller_bytes() {
    let v = vault("audit-bytes", |t| t);
    let (d, audit) = (&v.daemon, &v.audit);
    let junk = format!("\u{1b}[2J{}", "A".repeat(30_000));
    let request = |key_id: &str, endpoint: &str| proto::ImportKeyVersionRequest {
        source_key: by_label("test-aes-256"),
        oci_key_id: key_id.into(),
        oci: Some(proto::OciTarget {
            connection: String::new(),
            management_endpoint: endpoint.into(),
        }),
        ..Default::default()
    };
    let ok_ocid = "ocid1.key.oc1..x";
    for (who, req, code) in [
        ("unlisted", request(&junk, &junk), Code::Unauthenticated),
        ("cckm", request(&junk, &junk), Code::InvalidArgument),
        ("cckm", request(ok_ocid, &junk), Code::InvalidArgument),
    ] {
        for _ in 0..20 {
            let e = d
                .client(who)
                .await
                .import_key_version(req.clone())
                .await
                .unwrap_err();
            assert_eq!(e.code(), code, "{who}: {e:?}");
            assert!(
                e.message().len() < 1024,
                "{who}: a {}-byte status",
                e.message().len()
            );
        }
    }
    let size = std::fs::metadata(audit).unwrap().len();
    println!("60 refusals, each with 30 KB fields: {size} bytes of audit");
    assert!(size < 60 * 1024, "60 refusals wrote {size} bytes of audit");
    let records = audit_records(audit);
    assert_eq!(records.len(), 60);
    for r in &records {
        let text = r.to_string();
        assert!(
            !text.contains("AAAAAAAAAA") && !text.contains("\\u001b"),
            "{text}"
        );
    }
    assert!(records[..20].iter().all(|r| r.get("oci_key_id").is_none()));
    assert!(records[20..40].iter().all(|r| r["oci_key_id"] == "invalid"));
    assert!(
        records[40..]
            .iter()
            .all(|r| r["oci_key_id"] == ok_ocid && r["oci_endpoint"] == "invalid")
    );
}

/// High 3: the replay store was keyed without the caller and a replay skipped the key
/// check: `limited` replayed `cckm`'s import of id 1003 (test-aes-256, not one of its keys)
/// and got OK; where OCI had refused `cckm`, `limited`'s replay made the only import.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_belongs_to_its_caller() {
    let v = vault("idem-caller", limited_imports);
    let first = import_as(&v, "cckm", version_request(&v, by_id("1003"), "rot-1"))
        .await
        .unwrap();
    let e = import_as(&v, "limited", version_request(&v, by_id("1003"), "rot-1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(e.message(), "no key you may use has CKA_ID 1003");
    // cckm's attempt refused by OCI; limited's replay of it imports nothing.
    v.emu
        .fault(json!({"method": "POST", "path_contains": "/import", "status": 400, "code": "InvalidParameter"}))
        .await;
    let e = import_as(&v, "cckm", version_request(&v, by_id("1003"), "rot-2"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = import_as(&v, "limited", version_request(&v, by_id("1003"), "rot-2"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // The same key name is limited's own for its own key: a new import, not cckm's.
    let mut req = version_request(&v, by_label("test-aes-128"), "rot-1");
    req.oci_key_id = v.emu.keys["aes128"].clone();
    let own = import_as(&v, "limited", req).await.unwrap();
    assert_ne!(own.version_id, first.version_id);
    assert_eq!(versions(&v).await, 2, "the seeded version and cckm's");
    let posts = import_posts(&v).await;
    assert_eq!(posts.len(), 3, "cckm's two and limited's own: {posts:?}");
    assert_ne!(posts[0]["retry_token"], posts[2]["retry_token"]);
    let opened = v.emu.material(&own.version_id).await;
    assert_eq!(opened, fx_aes("test-aes-128"));
}

fn fx_aes(label: &str) -> Vec<u8> {
    softhsm().aes[label].clone()
}

/// Low 10: concurrent calls with one idempotency key got OK, ABORTED InvalidatedRetryToken,
/// and then ABORTED for every retry for 24 h (each call had wrapped afresh and sent other
/// bytes under the one token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_with_one_idempotency_key_import_once() {
    let v = vault("idem-concurrent", |t| t);
    // The first import answers slowly, so the others arrive while it is in flight.
    v.emu
        .fault(json!({"method": "POST", "path_contains": "/import", "delay_ms": 500}))
        .await;
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut c = v.daemon.client("cckm").await;
        let mut r = tonic::Request::new(version_request(&v, by_label("test-aes-256"), "burst-1"));
        r.set_timeout(Duration::from_secs(30));
        calls.push(tokio::spawn(async move { c.import_key_version(r).await }));
    }
    let mut ids = Vec::new();
    for call in calls {
        let r = call
            .await
            .unwrap()
            .expect("every call with the key is answered OK");
        ids.push(r.into_inner().key_version.unwrap().version_id);
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(versions(&v).await, 2, "one new version");
    // And the key keeps working.
    let later = import_as(
        &v,
        "cckm",
        version_request(&v, by_label("test-aes-256"), "burst-1"),
    )
    .await
    .unwrap();
    assert_eq!(later.version_id, ids[0]);
    let posts = import_posts(&v).await;
    assert!(
        posts
            .iter()
            .all(|p| p["body_sha256"] == posts[0]["body_sha256"]
                && p["retry_token"] == posts[0]["retry_token"])
    );
    assert_eq!(
        v.emu.material(&ids[0]).await,
        fx_aes("test-aes-256"),
        "the one version holds the token's key"
    );
}

/// Medium 8: destinations were the caller's choice: a compromised caller could ImportKey as
/// SOFTWARE (which OCI lets be exported) or into any vault the host globs allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_are_the_callers_and_software_keys_stay_out() {
    let v = vault("destinations", |t| {
        limited_imports(t)
            .replace(
                "keys = [\"test-aes-128\"]",
                "keys = [\"test-aes-128\"]\noci_endpoints = [\"https://vault-a.example\"]",
            )
            .replace(
                "keys = [\"*\"]",
                "keys = [\"*\"]\noci_compartments = [\"ocid1.compartment.oc1..allowed*\", \"ocid1.compartment.oc1..emulator\"]",
            )
    });
    let key = |compartment: &str, mode: &str| proto::ImportKeyRequest {
        source_key: by_label("test-aes-256"),
        compartment_id: compartment.into(),
        display_name: "imported".into(),
        protection_mode: mode.into(),
        oci: Some(proto::OciTarget {
            connection: String::new(),
            management_endpoint: v.emu.base.clone(),
        }),
        ..Default::default()
    };
    let mut c = v.daemon.client("cckm").await;
    let e = c
        .import_key(key("ocid1.compartment.oc1..allowed-1", "SOFTWARE"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("policy.protection_modes"),
        "{}",
        e.message()
    );
    let e = c
        .import_key(key("ocid1.compartment.oc1..elsewhere", "HSM"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("oci_compartments"), "{}", e.message());
    let e = import_as(
        &v,
        "limited",
        version_request(&v, by_label("test-aes-128"), ""),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("oci_endpoints"), "{}", e.message());
    assert!(
        v.emu.requests().await.is_empty(),
        "nothing reached OCI for a refused destination"
    );
    // Allowed: an HSM key in an allowed compartment; the audit record says where it went.
    let created = c
        .import_key(key("ocid1.compartment.oc1..allowed-1", ""))
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(created.protection_mode, "HSM");
    let rec = audit_records(&v.audit);
    let last = rec.last().unwrap();
    assert_eq!(last["outcome"], "allowed");
    assert_eq!(last["compartment_id"], "ocid1.compartment.oc1..allowed-1");
    assert_eq!(last["protection_mode"], "HSM (default)");
    assert_eq!(last["display_name"], "imported");
    assert_eq!(last["oci_connection"], "default");
    assert_eq!(last["oci_key_id"], created.key_id);

    // A SOFTWARE key made some other way (here by a daemon whose policy allows it) gets no
    // version from a daemon whose policy does not: OCI's GetKey says what it is.
    let fx = softhsm();
    let (config, _) = daemon_config(
        fx,
        "destinations-software",
        &format!(
            "protection_modes = [\"HSM\", \"SOFTWARE\"]\n{}",
            v.emu.oci_config(&v.identity, 2)
        ),
        None,
    );
    let lax = Daemon::start(&config, &[]);
    let soft = lax
        .client("cckm")
        .await
        .import_key(key("ocid1.compartment.oc1..allowed-2", "SOFTWARE"))
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    let mut req = version_request(&v, by_label("test-aes-256"), "");
    req.oci_key_id = soft.key_id.clone();
    let posts_before = import_posts(&v).await.len();
    let e = import_as(&v, "cckm", req).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("SOFTWARE"), "{}", e.message());
    assert_eq!(
        import_posts(&v).await.len(),
        posts_before,
        "nothing was sent"
    );
}

/// Low 9: an import OCI accepted was audited as refused (CANCELLED, no id) when the caller's
/// deadline passed first, while the version existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_oci_accepted_is_audited_when_the_caller_has_gone() {
    let v = vault("late-answer", |t| t);
    // OCI creates the version at once but answers after 4 s; the caller waits 2 s.
    v.emu
        .fault(json!({"method": "POST", "path_contains": "/import", "delay_ms": 4000}))
        .await;
    let mut r = tonic::Request::new(version_request(&v, by_label("test-aes-256"), "late-1"));
    r.set_timeout(Duration::from_secs(2));
    let e = v
        .daemon
        .client("cckm")
        .await
        .import_key_version(r)
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e:?}"
    );
    let created =
        v.emu.requests().await.iter().find_map(|e| {
            (e["method"] == "POST").then(|| e["created"].as_str().unwrap().to_string())
        });
    let created = created.expect("the emulator logged the import");
    let until = Instant::now() + Duration::from_secs(20);
    let rec = loop {
        let recs = audit_records(&v.audit);
        if let Some(r) = recs
            .into_iter()
            .find(|r| r["operation"] == "ImportKeyVersion")
        {
            break r;
        }
        assert!(Instant::now() < until, "no audit record of the import");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rec["outcome"], "allowed", "{rec}");
    assert_eq!(rec["oci_created_id"], created.as_str(), "{rec}");
    assert!(
        rec["reason"]
            .as_str()
            .unwrap()
            .contains("OCI accepted the import"),
        "{rec}"
    );
    // The caller's retry with the same key gets that version, and nothing new is made.
    let again = import_as(
        &v,
        "cckm",
        version_request(&v, by_label("test-aes-256"), "late-1"),
    )
    .await
    .unwrap();
    assert_eq!(again.version_id, created);
    assert_eq!(versions(&v).await, 2);
}

/// Read 17: OCIDs in OCI's answers went unchecked into follow-up URLs, and up to 1 MiB of
/// OCI's error text into statuses and audit records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_oci_answers_is_checked_and_bounded() {
    let v = vault("oci-answers", |t| t);
    let key_id = v.emu.keys["aes"].clone();
    v.emu
        .fault(json!({
            "method": "POST", "path_contains": "/import", "status": 200,
            "raw_body": json!({"id": "../../../evil", "keyId": key_id, "lifecycleState": "CREATING"}).to_string(),
        }))
        .await;
    let mut req = version_request(&v, by_label("test-aes-256"), "");
    req.wait_for_enabled = true;
    let e = import_as(&v, "cckm", req).await.unwrap_err();
    assert!(e.message().contains("not an OCID"), "{e:?}");
    let log = v.emu.requests().await;
    assert!(
        log.iter()
            .filter(|e| e["method"] == "GET")
            .all(|e| !e["path"].as_str().unwrap().contains("evil")
                && !e["path"].as_str().unwrap().contains("..")),
        "{log:?}"
    );
    let long = "x".repeat(200_000);
    v.emu
        .fault(json!({
            "method": "POST", "path_contains": "/import", "status": 400,
            "raw_body": json!({"code": "InvalidParameter", "message": long}).to_string(),
        }))
        .await;
    let e = import_as(
        &v,
        "cckm",
        version_request(&v, by_label("test-aes-256"), ""),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().len() < 2048,
        "a {}-byte status",
        e.message().len()
    );
    let rec = audit_records(&v.audit);
    assert!(rec.last().unwrap().to_string().len() < 4096);
}

/// Low 15: `softhsm-setup.sh` put the PIN on `pkcs11-tool`'s command line, where every local
/// user can read it (`/proc/PID/cmdline`). The script runs here on a fresh state folder with
/// every token tool behind a shim that records its arguments.
#[test]
fn the_setup_script_never_puts_a_pin_on_a_command_line() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = process_dir("setup-argv");
    let (shims, state, log) = (dir.join("bin"), dir.join("state"), dir.join("argv.log"));
    std::fs::create_dir_all(&shims).unwrap();
    for tool in ["pkcs11-tool", "softhsm2-util", "openssl", "env"] {
        let real = String::from_utf8(
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let shim = shims.join(tool);
        std::fs::write(
            &shim,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"{tool} $*\" >>'{}'\nexec {} \"$@\"\n",
                log.display(),
                real.trim()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    let path = format!("{}:{}", shims.display(), std::env::var("PATH").unwrap());
    let out = std::process::Command::new("bash")
        .arg(root.join("softhsm-setup.sh"))
        .env("PATH", path)
        .env("HSM_BRIDGE_SETUP_DIR", &state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "setup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let argv = std::fs::read_to_string(&log).unwrap();
    assert!(
        argv.contains("pkcs11-tool") && argv.contains("--init-token"),
        "{argv}"
    );
    for f in ["user-pin", "so-pin"] {
        let pin = std::fs::read_to_string(state.join(f)).unwrap();
        let pin = pin.trim();
        assert!(pin.len() >= 8, "{f}");
        assert!(
            !argv.contains(pin),
            "the {f} was on a command line:\n{argv}"
        );
    }
}

/// Low 16: `hsm-bridge wrap` ignored `caller_wrapping_keys` and wrote no audit record, and
/// neither did `import-key-version`.
#[test]
fn cli_exports_follow_the_wrapping_key_policy_and_are_audited() {
    let fx = softhsm();
    let audit = fx.dir.join("audit-cli.jsonl");
    let _ = std::fs::remove_file(&audit);
    let config = write_config(fx, "cli-audit.toml", |t| {
        format!("{t}\n[audit]\npath = \"{}\"\n", audit.display())
    });
    let config = config.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.bin");
    let wk = fx.wk.wk2048.public_pem.to_str().unwrap();
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "wrap",
            "--config",
            config,
            "--label",
            "test-aes-256",
            "--wrapping-key",
            wk,
            "--out",
            out.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        a
    };
    // The config says nothing: caller_wrapping_keys is "none".
    let l = hsm_bridge_refuses(&args(&[]));
    assert!(l.contains("caller_wrapping_keys = \"none\""), "{l}");
    assert!(!out.exists());
    hsm_bridge_ok(&args(&["--allow-any-wrapping-key"]));
    assert_eq!(
        openssl_unwrap(&out, &fx.wk.wk2048.private_pem, 256, "RSA_OAEP_AES_SHA256"),
        fx.aes["test-aes-256"]
    );
    let rec = audit_records(&audit);
    assert_eq!(rec.len(), 2, "{rec:?}");
    let uid = rustix::process::geteuid().as_raw();
    for r in &rec {
        assert_eq!(r["caller"], format!("cli (uid {uid})"));
        assert_eq!(r["operation"], "WrapKey");
        assert_eq!(r["source_key_label"], "test-aes-256");
    }
    assert_eq!(rec[0]["code"], "PERMISSION_DENIED");
    assert_eq!(rec[1]["outcome"], "allowed");
    assert_eq!(rec[1]["mode"], "hybrid");
    assert!(
        rec[1]["reason"]
            .as_str()
            .unwrap()
            .contains("--allow-any-wrapping-key")
    );

    // import-key-version, against the emulator: one record with what OCI created.
    let edir = fx.dir.join("attack-cli-import");
    std::fs::create_dir_all(&edir).unwrap();
    let identity = api_identity(&edir, "api");
    let emu = Emulator::start(
        &edir,
        &[identity.key.public_pem.as_path()],
        &["aes=AES-256"],
    );
    let config = write_config(fx, "cli-import.toml", |t| {
        format!(
            "{t}{}\n[audit]\npath = \"{}\"\n",
            emu.oci_config(&identity, 2),
            audit.display()
        )
    });
    let json = hsm_bridge_ok(&[
        "import-key-version",
        "--config",
        config.to_str().unwrap(),
        "--label",
        "test-aes-256",
        "--oci-key-id",
        &emu.keys["aes"],
        "--endpoint",
        &emu.base,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rec = audit_records(&audit);
    assert_eq!(rec.len(), 3);
    let r = &rec[2];
    assert_eq!(r["operation"], "ImportKeyVersion");
    assert_eq!(r["outcome"], "allowed");
    assert_eq!(r["oci_created_id"], v["key_version"]["id"]);
    assert_eq!(r["oci_key_id"], emu.keys["aes"].as_str());
    assert_eq!(r["protection_mode"], "HSM");
}

/// Found running the README's examples as root: `hsm-bridge wrap --out /dev/null` renamed its
/// output over /dev/null, leaving a regular file there (and every later reader of
/// /dev/null got the text written to it). `--out` now refuses anything but a regular file
/// or a new name; the node, pipe or link stays as it was.
#[test]
fn wrap_out_never_replaces_a_device_a_pipe_or_a_link() {
    use std::os::unix::fs::FileTypeExt;
    let fx = softhsm();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let target = dir.path().join("target.bin");
    std::fs::write(&target, b"keep").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let wk = fx.wk.wk2048.public_pem.to_str().unwrap();
    let config = fx.config.to_str().unwrap();
    for out in [&fifo, &link, &dir.path().to_path_buf()] {
        let l = hsm_bridge_refuses(&[
            "wrap",
            "--config",
            config,
            "--allow-any-wrapping-key",
            "--label",
            "test-aes-256",
            "--wrapping-key",
            wk,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(l.contains("not a regular file"), "{l}");
    }
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
}

/// Raises this test process's own file limit to its hard limit (it holds thousands of
/// sockets).
fn raise_own_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let r = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        rustix::process::Rlimit {
            current: r.maximum,
            maximum: r.maximum,
        },
    )
    .unwrap();
}

/// `n` plain TCP connections to `addr` that send nothing (those the listener refuses or
/// closes at once are counted too: the point is what the daemon does with them).
fn idle_sockets(addr: &str, n: usize) -> Vec<std::net::TcpStream> {
    (0..n)
        .filter_map(|_| std::net::TcpStream::connect(addr).ok())
        .collect()
}

/// The daemon's own view of its module: never re-initialised, no PKCS#11 error.
async fn the_module_never_faltered(d: &Daemon) {
    let m = d.scrape_metrics().await;
    assert_eq!(
        common::daemon::sample(&m, "hsm_bridge_module_reinitialisations_total"),
        0.0,
        "{m}"
    );
    assert!(!m.contains("hsm_bridge_hsm_errors_total{"), "{m}");
    let log = d.log_text();
    assert!(
        !log.contains("re-initialis") && !log.contains("Too many open files"),
        "{log}"
    );
}

/// High 3: with the file limit at 1,024 (systemd's default), 1,100 idle connections to the
/// plain health listener took the descriptors the HSM module needed (SoftHSM answered
/// CKR_GENERAL_ERROR, the module was re-initialised, callers got UNAVAILABLE), and so did
/// 4,905 to the metrics listener. Now the daemon raises its soft limit, derives each
/// listener's cap from what is left beside the module's share, and a newcomer on either
/// side door pushes out the oldest connection: the HSM keeps its descriptors, a listed
/// caller is served, and a probe still gets its answer during the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn side_doors_cannot_starve_the_hsm() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    raise_own_file_limit();
    let fx = softhsm();
    let server = tls_server_lines() + "health_listen = \"127.0.0.1:0\"\n";
    let policy = "caller_wrapping_keys = \"any\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n";
    let (config, _) = daemon_config(fx, "side-doors", policy, Some(&server));
    let d = Daemon::start_with_file_limit(&config, 1024);
    let (health, metrics) = (d.health_addr(), d.metrics_addr());

    for (door, addr) in [("health", &health), ("metrics", &metrics)] {
        let flood = idle_sockets(addr, 1100);
        assert!(flood.len() > 1000, "{door}: {} connected", flood.len());
        tokio::time::sleep(Duration::from_millis(500)).await;
        // (bounded waits: a daemon out of descriptors accepts nothing, and would hang us)
        let served = tokio::time::timeout(Duration::from_secs(30), async {
            let mut cckm = d.client("cckm").await;
            for i in 0..5 {
                let r = cckm
                    .wrap_key(wrap_req(by_label("test-aes-256"), &fx.wk.wk2048))
                    .await;
                assert!(r.is_ok(), "{door} flood, call {i}: {r:?}");
            }
            // a probe still gets through: it pushes out the oldest idle connection
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{health}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            HealthClient::new(ch)
                .check(HealthCheckRequest::default())
                .await
                .unwrap()
                .into_inner()
        })
        .await;
        let s = served.unwrap_or_else(|_| panic!("{door} flood: no answer within 30 s"));
        assert_eq!(s.status, ServingStatus::Serving as i32, "{door}");
        drop(flood);
    }
    the_module_never_faltered(&d).await;
    let log = d.log_text();
    assert!(log.contains("file descriptors: 1024;"), "{log}");
    assert!(
        log.contains("server.health_listen: the connection cap")
            && log.contains("metrics.listen: the connection cap"),
        "{log}"
    );
}

/// The health listener's HTTP/2 settings, read off the wire: at most a few streams per
/// connection (60,000 Watch streams on 3 connections took 280 MB before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_listener_allows_few_streams() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fx = softhsm();
    let server = tls_server_lines() + "health_listen = \"127.0.0.1:0\"\n";
    let (config, _) = daemon_config(fx, "health-streams", "", Some(&server));
    let d = Daemon::start(&config, &[]);
    let mut c = tokio::net::TcpStream::connect(d.health_addr())
        .await
        .unwrap();
    // the client preface and an empty SETTINGS frame
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut head = [0u8; 9];
    c.read_exact(&mut head).await.unwrap();
    assert_eq!(head[3], 4, "the server's first frame is SETTINGS");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).await.unwrap();
    let max_streams = body
        .chunks(6)
        .find(|s| u16::from_be_bytes([s[0], s[1]]) == 3)
        .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
    assert_eq!(max_streams, Some(4), "SETTINGS_MAX_CONCURRENT_STREAMS");
}

/// A TLS connection to the daemon as `who` (a test certificate), made by hand.
async fn raw_tls(d: &Daemon, who: &str) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
    let c = common::daemon::certs();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(c.join("ca.pem")).unwrap())
        .unwrap();
    let chain = vec![CertificateDer::from_pem_file(c.join(format!("{who}.pem"))).unwrap()];
    let key = PrivateKeyDer::from_pem_file(c.join(format!("{who}.key"))).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(&d.addr).await.unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// How long until the daemon closes `s` (it sends nothing itself but its HTTP/2 preface).
async fn closed_within(
    s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    within: Duration,
) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((started + within).into(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

/// Medium 4: the cap counted handshakes in progress and finished connections never timed
/// out: 256 idle TCP connections renewed at 26/s gave 0 of 10 legitimate calls, and 256
/// connections with a certificate whose CN is not listed held the cap for 45 s. Now
/// handshakes have a budget of their own (a newcomer pushes out the oldest, a quarter per
/// address, a short timeout); a connection whose certificate names no client never takes a
/// client's place, and is closed at the handshake stage's time limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_and_unlisted_connections_leave_a_listed_caller_served() {
    raise_own_file_limit();
    let fx = softhsm();
    let server = tls_server_lines() + "tls_handshake_timeout_secs = 2\n";
    let (config, _) = daemon_config(
        fx,
        "unlisted-flood",
        "caller_wrapping_keys = \"any\"",
        Some(&server),
    );
    let d = Daemon::start(&config, &[]);
    // 256 idle TCP connections, renewed all along
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let renewer = {
        let (addr, stop) = (d.addr.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut held = std::collections::VecDeque::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(s) = std::net::TcpStream::connect(&addr) {
                    held.push_back(s);
                }
                if held.len() > 256 {
                    held.pop_front();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let _idle = idle_sockets(&d.addr, 256);
    // 256 connections with a certificate from the client CA whose CN is not listed
    let mut unlisted = Vec::new();
    for _ in 0..256 {
        if let Ok(ch) = d.channel(Some("unlisted")).await {
            let mut c =
                hsm_bridge::proto::key_source_bridge_client::KeySourceBridgeClient::new(ch.clone());
            let _ = c
                .wrap_key(wrap_req(by_label("test-aes-256"), &fx.wk.wk2048))
                .await;
            unlisted.push(ch);
        }
    }
    let mut served = 0;
    for _ in 0..10 {
        let r = d
            .client("cckm")
            .await
            .wrap_key(wrap_req(by_label("test-aes-256"), &fx.wk.wk2048))
            .await;
        assert!(r.is_ok(), "{r:?}");
        served += 1;
    }
    assert_eq!(served, 10);
    // an unlisted connection is closed at the handshake stage's limit
    let mut one = raw_tls(&d, "unlisted").await;
    let closed = closed_within(&mut one, Duration::from_secs(10)).await;
    assert!(closed.is_some(), "an unlisted connection stayed open");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    renewer.join().unwrap();
    let log = d.log_text();
    assert!(log.contains("names no [[server.clients]] entry"), "{log}");
}

/// Medium 4, the other half: a finished connection that sits idle is closed after
/// `server.idle_timeout_secs`, but never while a call on it is in progress (an import
/// waiting 3 s for OCI on a connection whose idle timeout is 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_but_never_during_a_call() {
    let v = vault("idle-timeout", |t| {
        t.replace("[server]\n", "[server]\nidle_timeout_secs = 1\n")
    });
    let mut idle = raw_tls(&v.daemon, "cckm").await;
    let closed = closed_within(&mut idle, Duration::from_secs(10)).await;
    assert!(
        closed.is_some_and(|t| t >= Duration::from_secs(1)),
        "an idle connection is closed after the idle time: {closed:?}"
    );
    let path = format!("{}/keyVersions/import", v.emu.keys["aes"]);
    v.emu
        .fault(json!({"path_contains": path, "count": 1, "delay_ms": 3000}))
        .await;
    let r = import_as(
        &v,
        "cckm",
        version_request(&v, by_label("test-aes-256"), "slow-1"),
    )
    .await;
    assert!(r.is_ok(), "a call in progress keeps its connection: {r:?}");
}

/// Medium 6: `wrap --out` wrote through `.NAME.PID.tmp`, created without `O_EXCL` or
/// `O_NOFOLLOW`: links planted in a world-writable folder for the coming PIDs made root
/// overwrite a file it alone could write. Now the temporary name is random and created
/// exclusively (mode 0600), and no planted link is followed.
#[test]
fn wrap_out_follows_no_planted_link() {
    use std::os::unix::fs::PermissionsExt;
    let fx = softhsm();
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let victim_dir = tempfile::tempdir().unwrap();
    let victim = victim_dir.path().join("only-root-writes-this");
    std::fs::write(&victim, b"root's own").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    // a link for each of the next PIDs, as a local user can plant them
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for pid in last..last + 3000 {
        let _ =
            std::os::unix::fs::symlink(&victim, shared.path().join(format!(".out.bin.{pid}.tmp")));
    }
    let out = shared.path().join("out.bin");
    let wk = &fx.wk.wk2048;
    hsm_bridge_ok(&[
        "wrap",
        "--config",
        fx.config.to_str().unwrap(),
        "--allow-any-wrapping-key",
        "--label",
        "test-aes-256",
        "--wrapping-key",
        wk.public_pem.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"root's own",
        "a planted link was followed"
    );
    let meta = std::fs::symlink_metadata(&out).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        open_material(
            &std::fs::read(&out).unwrap(),
            wk,
            256,
            "RSA_OAEP_AES_SHA256"
        ),
        fx.aes["test-aes-256"]
    );
}

/// Medium 7: with `metrics.key_labels = true` every label a caller asked for became a
/// series, refused or not, without bound (33,000 distinct labels grew the exposition to
/// 6.9 MB). Now only labels of keys the token has are recorded (and the family is bounded:
/// `metrics::tests`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_record_no_label_a_caller_only_asked_for() {
    let fx = softhsm();
    let policy = "caller_wrapping_keys = \"any\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\nkey_labels = true\n";
    let (config, _) = daemon_config(fx, "key-labels", policy, None);
    let d = Daemon::start(&config, &[]);
    let mut c = d.client("cckm").await;
    for i in 0..500 {
        let e = c
            .wrap_key(wrap_req(by_label(&format!("ghost-{i}")), &fx.wk.wk2048))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
    }
    c.wrap_key(wrap_req(by_label("test-aes-256"), &fx.wk.wk2048))
        .await
        .unwrap();
    let m = d.scrape_metrics().await;
    assert!(!m.contains("ghost-"), "labels no key has were recorded");
    assert!(
        m.contains("hsm_bridge_exports_by_key_total{operation=\"WrapKey\",outcome=\"allowed\",key=\"test-aes-256\"} 1"),
        "{m}"
    );
    assert!(m.len() < 64 * 1024, "{} bytes", m.len());
}

/// Low 10: with `audit.path = "-"` (the shipped and Kubernetes configs) a CLI export left
/// no record at all. Now the record of every CLI export that happened goes to stderr then
/// (a refusal's one line on stderr stands for its own).
#[test]
fn cli_exports_are_recorded_with_the_audit_log_on_stderr() {
    let fx = softhsm();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.bin");
    let run = hsm_bridge(&[
        "wrap",
        "--config",
        fx.config.to_str().unwrap(),
        "--allow-any-wrapping-key",
        "--label",
        "test-aes-256",
        "--wrapping-key",
        fx.wk.wk2048.public_pem.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    let record: serde_json::Value = stderr
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no audit record on stderr: {stderr}"));
    assert_eq!(record["operation"], "WrapKey", "{record}");
    assert_eq!(record["outcome"], "allowed", "{record}");
    assert_eq!(record["source_key_label"], "test-aes-256", "{record}");
    assert!(
        record["reason"]
            .as_str()
            .unwrap()
            .contains("--allow-any-wrapping-key"),
        "{record}"
    );
}

/// Low 9: an import that OCI accepted but whose `wait_for_enabled` missed its deadline was
/// audited (and counted) as `refused`, though the key had left: it is `allowed` whenever a
/// version was created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_accepted_but_not_enabled_in_time_is_audited_as_allowed() {
    let fx = softhsm();
    let dir = fx.dir.join("attack-not-enabled");
    std::fs::create_dir_all(&dir).unwrap();
    let identity = api_identity(&dir, "api");
    // versions stay CREATING for a minute
    let emu = Emulator::start_with(
        &dir,
        &[identity.key.public_pem.as_path()],
        &["aes=AES-256"],
        60_000,
    );
    let (config, audit) = daemon_config(fx, "not-enabled", &emu.oci_config(&identity, 2), None);
    let d = Daemon::start(&config, &[]);
    let mut req = tonic::Request::new(proto::ImportKeyVersionRequest {
        source_key: by_label("test-aes-256"),
        oci_key_id: emu.keys["aes"].clone(),
        oci: Some(proto::OciTarget {
            connection: String::new(),
            management_endpoint: emu.base.clone(),
        }),
        algorithm: proto::WrappingAlgorithm::RsaOaepAesSha256 as i32,
        idempotency_key: "not-enabled-1".into(),
        wait_for_enabled: true,
    });
    req.set_timeout(Duration::from_secs(3));
    let e = d
        .client("cckm")
        .await
        .import_key_version(req)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    let rec = audit_records(&audit).pop().unwrap();
    assert_eq!(rec["outcome"], "allowed", "{rec}");
    assert_eq!(rec["code"], "DEADLINE_EXCEEDED", "{rec}");
    assert!(
        rec["oci_created_id"]
            .as_str()
            .unwrap()
            .starts_with("ocid1.keyversion"),
        "{rec}"
    );
}

/// Low 12: labels with U+2028 (a line separator) or U+202E (a right-to-left override)
/// reached the audit log raw, where a log viewer shows a new line or reordered text. Now a
/// caller's label with one is refused, and a token's key label with one is escaped in the
/// record (it reads back the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_cannot_forge_or_reorder_audit_lines() {
    let fx = softhsm();
    let label = "test-\u{2028}{\"outcome\":\"refused\"}\u{202E}652-sea";
    let out = p11(
        fx,
        &[
            "--keygen",
            "--key-type",
            "AES:32",
            "--label",
            label,
            "--id",
            "5001",
            "--extractable",
            "--sensitive",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (config, audit) = daemon_config(fx, "bidi", "caller_wrapping_keys = \"any\"", None);
    let d = Daemon::start(&config, &[]);
    let mut c = d.client("cckm").await;
    let e = c
        .wrap_key(wrap_req(by_label("test-aes\u{2028}256"), &fx.wk.wk2048))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    c.wrap_key(wrap_req(by_id("5001"), &fx.wk.wk2048))
        .await
        .unwrap();
    let raw = std::fs::read_to_string(&audit).unwrap();
    assert!(
        !raw.contains('\u{2028}') && !raw.contains('\u{202E}'),
        "raw separators or overrides in the audit log: {raw:?}"
    );
    assert_eq!(raw.lines().count(), 2, "{raw:?}");
    let records = audit_records(&audit);
    assert_eq!(records[1]["source_key_label"], label);
    assert_eq!(records[0]["code"], "INVALID_ARGUMENT");
    assert!(
        records[0].get("source_key_label").is_none(),
        "{}",
        records[0]
    );
}
