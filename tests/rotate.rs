//! Rotation, end to end: the real daemon (gRPC `RotateKey`) and the real command line
//! (`hsm-bridge rotate`) generate a key in the token (SoftHSM2, and the Luna-like token) and
//! import it into the real `aws-kms-emulator`, which unwraps it; the key's value is read back
//! through a wrap that the openssl command line opens. The daemon is killed with SIGKILL
//! after the HSM generated, after KMS accepted, and while it waits for the key: each retry
//! ends with one new HSM key and one new version.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::aws_rig::*;
use common::daemon::{Daemon, audit_records, until_answered_by};
use common::*;
use hsm_bridge::proto;
use serde_json::{Value, json};
use tonic::Code;

/// A rig whose caller `cckm` may also rotate, with a short journal lease (a killed daemon's
/// claim frees within 2 s).
fn rotate_rig(fx: &Fixture, name: &str) -> Rig {
    let rig = rig(fx, name, &[], None);
    let text = std::fs::read_to_string(&rig.config)
        .unwrap()
        .replacen(
            "operations = [\"list\", \"wrap\", \"import\"]",
            "operations = [\"list\", \"wrap\", \"import\", \"rotate\"]",
            1,
        )
        .replace("[journal]\n", "[journal]\nlease_secs = 2\n");
    std::fs::write(&rig.config, text).unwrap();
    rig
}

/// The format an AES key goes to AWS in from `fx` (SoftHSM2 2.6 has no OAEP-SHA256 wrap).
fn aes_format(fx: &Fixture) -> &'static str {
    match fx.kind {
        TokenKind::SoftHsm => "aws:RSAES_OAEP_SHA_1",
        _ => "",
    }
}

fn request(fx: &Fixture, target: &str, base: &str, idem: &str) -> proto::RotateKeyRequest {
    proto::RotateKeyRequest {
        destination: DEST.into(),
        target: target.into(),
        base_label: base.into(),
        format: aes_format(fx).into(),
        idempotency_key: idem.into(),
        wait_for_enabled: true,
    }
}

async fn rotate_as(
    d: &Daemon,
    client: &str,
    req: proto::RotateKeyRequest,
) -> Result<proto::RotateKeyResponse, tonic::Status> {
    let mut r = tonic::Request::new(req);
    r.set_timeout(Duration::from_secs(30));
    d.client(client)
        .await
        .rotate_key(r)
        .await
        .map(|r| r.into_inner())
}

async fn rotate(
    d: &Daemon,
    req: proto::RotateKeyRequest,
) -> Result<proto::RotateKeyResponse, tonic::Status> {
    rotate_as(d, "cckm", req).await
}

/// Retries `req` until it is answered (a retryable code: again after 200 ms).
async fn until_rotated(d: &Daemon, req: &proto::RotateKeyRequest) -> proto::RotateKeyResponse {
    until_answered_by(&format!("{req:?}"), || rotate(d, req.clone()))
        .await
        .0
}

fn arn(meta: &Value) -> String {
    meta["Arn"].as_str().unwrap().to_string()
}

fn import_of(r: &proto::RotateKeyResponse) -> &proto::ImportResponse {
    r.import.as_ref().unwrap()
}

fn new_key(r: &proto::RotateKeyResponse) -> &proto::SourceKey {
    r.new_key.as_ref().unwrap()
}

/// The labels of the token's keys named `base-…`, by `hsm-bridge keys`.
fn labels(config: &Path, base: &str) -> Vec<String> {
    let out = hsm_bridge_ok(&["keys", "--config", config.to_str().unwrap(), "--json"]);
    let keys: Vec<Value> = serde_json::from_str(&out).unwrap();
    let mut l: Vec<String> = keys
        .iter()
        .filter_map(|k| k["label"].as_str())
        .filter(|l| l.starts_with(&format!("{base}-")))
        .map(str::to_string)
        .collect();
    l.sort();
    l
}

/// The value of the token key with CKA_ID `id_hex`: wrapped by `hsm-bridge wrap` for the
/// test process's RSA-4096 key, and opened with the openssl command line.
fn hsm_value(config: &Path, id_hex: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let wk = &wrapping_keys().wk4096;
    let out = dir.path().join("wrapped.bin");
    hsm_bridge_ok(&[
        "wrap",
        "--config",
        config.to_str().unwrap(),
        "--id",
        id_hex,
        "--wrapping-key",
        wk.public_pem.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--allow-any-wrapping-key",
    ]);
    openssl_unwrap(&out, &wk.private_pem, 512, "RSA_OAEP_AES_SHA256")
}

/// Whether pkcs11-tool can change the CKA_ID of the secret key with id `id_hex` (to 77..).
fn id_changes(fx: &Fixture, id_hex: &str) -> bool {
    p11(
        fx,
        &[
            "--set-id",
            "7777777777",
            "--id",
            id_hex,
            "--type",
            "secrkey",
        ],
    )
    .status
    .success()
}

/// A rotation makes `BASE-N` in the token, sensitive and never modifiable, and KMS holds
/// exactly its value: into a key waiting for its first material, then as a second version
/// (one RotateKeyOnDemand), then from the command line. The same request again is answered
/// without a second key or a second import. Audit records say what was generated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_generates_in_the_hsm_and_imports_that_key_once() {
    let fx = softhsm();
    let base = "test-rot-a";
    let rig = rotate_rig(fx, "rotate-basic");
    let (emu, config) = (&rig.emu, &rig.config);
    let daemon = rig.daemon();
    let k = arn(&emu.create_key("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await);

    let r1 = rotate(&daemon, request(fx, &k, base, "rot-1"))
        .await
        .unwrap();
    let key1 = new_key(&r1);
    assert_eq!(key1.label, format!("{base}-1"));
    assert!(r1.generated);
    assert_eq!(key1.key_type, "AES");
    assert_eq!(key1.shape.as_ref().unwrap().length, 32);
    assert!(
        key1.sensitive && key1.extractable && key1.exportable,
        "{key1:?}"
    );
    let i1 = import_of(&r1);
    assert_eq!(
        (
            i1.key_id.as_str(),
            i1.state.as_str(),
            i1.version_state.as_str()
        ),
        (k.as_str(), "Enabled", "CURRENT")
    );
    let v1 = hsm_value(config, &key1.id_hex);
    assert_eq!(v1.len(), 32);
    assert_eq!(
        emu.material(&k, &i1.version_id).await,
        v1,
        "KMS holds the generated key"
    );
    // Never modifiable: its id (and so what a retry finds it by) cannot be changed, where a
    // key made by pkcs11-tool's defaults can.
    assert!(
        !id_changes(fx, &key1.id_hex),
        "the rotated key is modifiable"
    );
    let out = p11(
        fx,
        &[
            "--keygen",
            "--key-type",
            "AES:32",
            "--label",
            "test-rot-control",
            "--id",
            "5151",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        id_changes(fx, "5151"),
        "pkcs11-tool could not change any key's id"
    );

    // A second rotation: base-2, new material, one RotateKeyOnDemand.
    let req2 = request(fx, &k, base, "rot-2");
    let r2 = rotate(&daemon, req2.clone()).await.unwrap();
    let key2 = new_key(&r2);
    assert_eq!(key2.label, format!("{base}-2"));
    assert_ne!(key2.id_hex, key1.id_hex);
    let i2 = import_of(&r2);
    let v2 = hsm_value(config, &key2.id_hex);
    assert_ne!(v1, v2);
    assert_eq!(emu.material(&k, &i2.version_id).await, v2);
    let key = emu.key(&k).await;
    assert_eq!(key["rotate_on_demand_calls"], 1, "{key}");
    assert_eq!(
        key["KeyMetadata"]["CurrentKeyMaterialId"],
        i2.version_id.as_str()
    );

    // The same request again: the same key and version; nothing generated or imported.
    let imports = calls(emu, "ImportKeyMaterial").await;
    let again = rotate(&daemon, req2).await.unwrap();
    assert!(!again.generated);
    assert_eq!(new_key(&again).id_hex, key2.id_hex);
    assert_eq!(import_of(&again).version_id, i2.version_id);
    assert_eq!(calls(emu, "ImportKeyMaterial").await, imports);
    assert_eq!(
        labels(config, base),
        [format!("{base}-1"), format!("{base}-2")]
    );

    // The command line: base-3, its value in KMS.
    let mut args = vec![
        "rotate",
        "--config",
        config.to_str().unwrap(),
        "--to",
        DEST,
        "--target",
        &k,
        "--base",
        base,
        "--idempotency-key",
        "cli-rot-1",
        "--json",
    ];
    if !aes_format(fx).is_empty() {
        args.extend(["--format", aes_format(fx)]);
    }
    let out = hsm_bridge_with_env(&args, &borrowed(&rig.env));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli["source_key_label"], format!("{base}-3"), "{cli}");
    assert_eq!(cli["generated_key"], true, "{cli}");
    assert_eq!(cli["version_state"], "CURRENT", "{cli}");
    let v3 = hsm_value(config, cli["source_key_id_hex"].as_str().unwrap());
    assert_eq!(
        emu.material(&k, cli["version_id"].as_str().unwrap()).await,
        v3
    );

    drop(daemon);
    let recs = audit_records(&rig.audit);
    let rotations: Vec<&Value> = recs
        .iter()
        .filter(|r| r["operation"] == "RotateKey")
        .collect();
    // The daemon's three and the command line's; the replay generated nothing.
    assert_eq!(rotations.len(), 4, "{recs:?}");
    for (rec, generated) in
        rotations
            .iter()
            .zip([json!(true), json!(true), Value::Null, json!(true)])
    {
        assert_eq!(rec["outcome"], "allowed", "{rec}");
        assert_eq!(rec["destination"], DEST, "{rec}");
        assert_eq!(rec["cloud_key_id"], k.as_str(), "{rec}");
        assert_eq!(rec["generated_key"], generated, "{rec}");
        assert!(
            rec["source_key_label"].as_str().unwrap().starts_with(base),
            "{rec}"
        );
    }
}

/// What a rotation may not do is refused with the reason before anything is generated: a
/// caller without the "rotate" operation, a label base that policy.exportable does not
/// let out, a request without an idempotency key, a KMS key that takes no new material of
/// this kind (RSA, or made by KMS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_rotations_generate_nothing() {
    let fx = softhsm();
    let rig = rotate_rig(fx, "rotate-refused");
    let (emu, config) = (&rig.emu, &rig.config);
    let daemon = rig.daemon();
    let k = arn(&emu.create_key("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await);
    let rsa = arn(&emu.create_key("RSA_3072", "SIGN_VERIFY").await);
    let native = arn(&emu
        .create_key_with(json!({
            "KeySpec": "SYMMETRIC_DEFAULT", "KeyUsage": "ENCRYPT_DECRYPT", "Origin": "AWS_KMS"
        }))
        .await);
    let generated = || {
        std::fs::read_to_string(rig.config.with_extension("log"))
            .unwrap_or_default()
            .matches("generated a key for a rotation")
            .count()
    };

    let cases: Vec<(&str, proto::RotateKeyRequest, Code, &str)> = vec![
        (
            "limited",
            request(fx, &k, "test-rot-r", "r-1"),
            Code::PermissionDenied,
            "may not call RotateKey",
        ),
        (
            "cckm",
            request(fx, &k, "prod-rot", "r-2"),
            Code::PermissionDenied,
            "policy.exportable",
        ),
        (
            "cckm",
            request(fx, &k, "test-rot-r", ""),
            Code::InvalidArgument,
            "needs an idempotency_key",
        ),
        (
            "cckm",
            request(fx, &rsa, "test-rot-r", "r-3"),
            Code::InvalidArgument,
            "RSA_3072",
        ),
        (
            "cckm",
            request(fx, &native, "test-rot-r", "r-4"),
            Code::InvalidArgument,
            "origin AWS_KMS",
        ),
    ];
    for (client, req, code, says) in cases {
        let e = rotate_as(&daemon, client, req.clone()).await.unwrap_err();
        assert_eq!(e.code(), code, "{req:?}: {e:?}");
        assert!(e.message().contains(says), "{req:?}: {e:?}");
    }
    assert_eq!(calls(emu, "GetParametersForImport").await, 0);
    assert_eq!(calls(emu, "ImportKeyMaterial").await, 0);
    assert!(labels(config, "test-rot-r").is_empty());
    assert!(labels(config, "prod-rot").is_empty());
    assert_eq!(generated(), 0);
}

/// Where a rotation can be cut short.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// The HSM generated the key; the wrap had started, nothing was committed or sent.
    AfterGenerate,
    /// KMS took the new material; its answer was lost.
    AfterAccepted,
    /// The import was answered and recorded; the daemon was waiting for the key.
    WhileWaiting,
}

/// SIGKILL after the HSM generated, after KMS accepted, and while waiting; the restart and
/// the caller's retry: on SoftHSM2 and the Luna-like token, each ends with one new HSM key
/// and one new version of the KMS key, whose material is exactly that key's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_never_makes_two_keys_or_two_versions() {
    let mut tokens = vec![softhsm()];
    match luna() {
        Some(l) => tokens.push(l),
        None => skip_notice("kryoptic is not set up: only SoftHSM2 here"),
    }
    for fx in tokens {
        let kind = format!("{:?}", fx.kind).to_lowercase();
        let base = format!("test-rot-crash-{kind}");
        let rig = rotate_rig(fx, &format!("rotate-crash-{kind}"));
        let (emu, env, config) = (&rig.emu, &rig.env, &rig.config);
        let (log, ctl) =
            common::fault::route_config_with_control(fx, config, &format!("rotate-crash-{kind}"));
        let mut daemon = rig.daemon();
        let k = arn(&emu.create_key("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await);

        // A first rotation (the key's first material), counting the DescribeKey calls of a
        // rotation before its wait.
        let before = emu.requests().await.len();
        let mut first = request(fx, &k, &base, "crash-0");
        first.wait_for_enabled = false;
        rotate(&daemon, first).await.unwrap();
        let mut second = request(fx, &k, &base, "crash-0b");
        second.wait_for_enabled = false;
        let mark = emu.requests().await.len();
        rotate(&daemon, second).await.unwrap();
        let describes = emu.requests().await[mark..]
            .iter()
            .filter(|r| r["op"] == "DescribeKey")
            .count();
        assert!(emu.requests().await.len() > before);

        for (i, kill) in [Kill::AfterGenerate, Kill::AfterAccepted, Kill::WhileWaiting]
            .into_iter()
            .enumerate()
        {
            let what = format!("{kind} {kill:?}");
            let keys_before = labels(config, &base).len();
            let materials_before = materials(&emu.key(&k).await).len();
            let rotations_before = emu.key(&k).await["rotate_on_demand_calls"]
                .as_u64()
                .unwrap();
            let generated_before = common::fault::calls(&log, "C_GenerateKey");
            let wraps_before = common::fault::calls(&log, "C_WrapKey");
            let requests_before = emu.requests().await.len();
            match kill {
                Kill::AfterGenerate => std::fs::write(&ctl, "C_WrapKey delay:60000 1\n").unwrap(),
                Kill::AfterAccepted => {
                    emu.fault(json!({"op": "ImportKeyMaterial", "drop": true, "processed": true, "delay_ms": 60000}))
                        .await
                }
                Kill::WhileWaiting => {
                    emu.fault(json!([
                        {"op": "DescribeKey", "count": describes},
                        {"op": "DescribeKey", "count": 1000, "delay_ms": 60000}
                    ]))
                    .await
                }
            }
            let req = request(fx, &k, &base, &format!("crash-{}", i + 1));
            let cut = async {
                let end = Instant::now() + Duration::from_secs(60);
                loop {
                    let done = match kill {
                        Kill::AfterGenerate => {
                            common::fault::calls(&log, "C_GenerateKey") > generated_before
                                && common::fault::calls(&log, "C_WrapKey") > wraps_before
                        }
                        Kill::AfterAccepted => materials(&emu.key(&k).await)
                            .iter()
                            .any(|m| m["KeyMaterialState"] == "PENDING_ROTATION"),
                        Kill::WhileWaiting => {
                            emu.requests().await[requests_before..]
                                .iter()
                                .filter(|r| r["op"] == "DescribeKey")
                                .count()
                                > describes
                        }
                    };
                    if done {
                        return;
                    }
                    assert!(Instant::now() < end, "{what}: never reached the kill point");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            tokio::select! {
                r = rotate(&daemon, req.clone()) => panic!("{what}: the call ended before the kill: {r:?}"),
                () = cut => {}
            }
            drop(daemon); // SIGKILL
            emu.clear_faults().await;
            std::fs::write(&ctl, "").unwrap();
            daemon = Daemon::start_with_env(config, &borrowed(env));

            let r = until_rotated(&daemon, &req).await;
            let key = emu.key(&k).await;
            assert_eq!(
                labels(config, &base).len(),
                keys_before + 1,
                "{what}: one new HSM key"
            );
            assert_eq!(
                materials(&key).len(),
                materials_before + 1,
                "{what}: one new version: {key}"
            );
            assert_eq!(
                key["rotate_on_demand_calls"].as_u64().unwrap(),
                rotations_before + 1,
                "{what}: one rotation: {key}"
            );
            let i = import_of(&r);
            assert_eq!(i.version_state, "CURRENT", "{what}");
            assert_eq!(
                key["KeyMetadata"]["CurrentKeyMaterialId"],
                i.version_id.as_str(),
                "{what}"
            );
            assert_eq!(
                emu.material(&k, &i.version_id).await,
                hsm_value(config, &new_key(&r).id_hex),
                "{what}: the new version is the new HSM key"
            );
            assert!(
                !r.generated,
                "{what}: the retry found the key the first attempt made"
            );
        }
    }
}
