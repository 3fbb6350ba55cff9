//! AWS KMS as a destination, end to end: the real daemon (gRPC `Import`) and the real
//! command line (`hsm-bridge import`) on SoftHSM2, kryoptic and the Luna-like token, the
//! real `aws-kms-emulator` (SigV4 checked, real unwraps; its test oracle says what material
//! a key holds), and the daemon killed with SIGKILL where an answer can be lost.

mod common;

use std::path::Path;
use std::time::Duration;

use common::aws_emulator::AwsEmulator;
use common::aws_rig::*;
use common::daemon::{Daemon, audit_records, daemon_config, until_answered_by};
use common::*;
use hsm_bridge::proto;
use serde_json::{Value, json};
use tonic::Code;

/// The format an AES key goes to AWS in from `fx`: SoftHSM2 2.6 cannot wrap with
/// OAEP-SHA256 (its self-test says so), so there the SHA-1 form, on request; elsewhere the
/// default (aws:RSAES_OAEP_SHA_256).
fn aes_format(fx: &Fixture) -> &'static str {
    match fx.kind {
        TokenKind::SoftHsm => "aws:RSAES_OAEP_SHA_1",
        _ => "",
    }
}

/// An `Import` of the key labelled `l` on `fx` into `target` (a key ARN), or with `create`
/// into a new key with that usage ("" for the default).
fn request(
    fx: &Fixture,
    l: &str,
    (target, create): (&str, Option<&str>),
    idem: &str,
) -> proto::ImportRequest {
    let format = match l.contains("-aes-") || l.contains("-aws-") {
        true => aes_format(fx),
        false => "",
    };
    proto::ImportRequest {
        source_key: label(l),
        destination: DEST.into(),
        target: target.into(),
        create: create.map(|u| proto::CreateOptions {
            key_usage: u.into(),
        }),
        format: format.into(),
        idempotency_key: idem.into(),
        wait_for_enabled: true,
        valid_to_unix: 0,
        ..Default::default()
    }
}

async fn import(
    d: &Daemon,
    req: proto::ImportRequest,
) -> Result<proto::ImportResponse, tonic::Status> {
    d.import(req).await
}

/// Retries `req` until it is answered (a retryable code: again after 200 ms).
async fn until_answered(d: &Daemon, req: &proto::ImportRequest) -> proto::ImportResponse {
    until_answered_by(&format!("{req:?}"), || import(d, req.clone()))
        .await
        .0
}

fn arn(meta: &Value) -> String {
    meta["Arn"].as_str().unwrap().to_string()
}

/// `hsm-bridge import` with the AWS environment; its JSON answer.
fn cli_import(config: &Path, env: &[(String, String)], args: &[&str]) -> Value {
    let mut all = vec![
        "import",
        "--config",
        config.to_str().unwrap(),
        "--to",
        DEST,
        "--json",
    ];
    all.extend(args);
    let out = hsm_bridge_with_env(&all, &borrowed(env));
    assert!(
        out.status.success(),
        "hsm-bridge {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Sends `req` to `daemon` and kills the daemon (SIGKILL) once `landed` says yes about
/// key `k` of `emu`, before the call is answered (`what` names the case); the emulator's
/// faults are cleared after.
async fn kill_once_landed(
    daemon: Daemon,
    req: &proto::ImportRequest,
    (emu, k): (&AwsEmulator, &str),
    landed: impl Fn(&Value) -> bool,
    what: &str,
) {
    tokio::select! {
        r = import(&daemon, req.clone()) => panic!("{what}: the call ended before the kill: {r:?}"),
        () = until_key(emu, k, landed) => {}
    }
    drop(daemon); // SIGKILL
    emu.clear_faults().await;
}

/// AES-256 and RSA-3072 from every token land in KMS as exactly the token's keys: through
/// the daemon into a key waiting for its material and into a new key, and the same
/// through the command line. The audit records and the metrics name the destination and
/// the cloud.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aes_and_rsa_land_as_the_tokens_keys() {
    let mut tokens = vec![softhsm()];
    match (kryoptic(), luna()) {
        (Some(k), Some(l)) => tokens.extend([k, l]),
        _ => skip_notice("kryoptic is not set up: only SoftHSM2 here"),
    }
    for fx in tokens {
        let kind = format!("{:?}", fx.kind).to_lowercase();
        let dir = fx.dir.join(format!("aws-{kind}"));
        std::fs::create_dir_all(&dir).unwrap();
        let emu = AwsEmulator::start(&dir);
        let env = aws_env(&emu, &dir);
        let (config, audit) = config(fx, &emu, &format!("aws-land-{kind}"), &[DEST]);
        let daemon = start(&config, &env);
        let modulus = token_modulus(|a| p11(fx, a), "test-rsa-3072");

        // AES-256 into a key that waits for its material.
        let k1 = arn(&emu.create_key("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await);
        let r = import(&daemon, request(fx, "test-aes-256", (&k1, None), ""))
            .await
            .unwrap();
        assert_eq!(
            (r.cloud.as_str(), r.destination.as_str(), r.key_id.as_str()),
            ("aws", DEST, k1.as_str())
        );
        assert_eq!(
            (r.state.as_str(), r.version_state.as_str()),
            ("Enabled", "CURRENT")
        );
        let expected = match aes_format(fx) {
            "" => "aws:RSAES_OAEP_SHA_256",
            f => f,
        };
        assert_eq!(r.format, expected);
        assert!(!r.created_key);
        assert_eq!(
            emu.material(&k1, &r.version_id).await,
            fx.aes["test-aes-256"],
            "{kind}: KMS holds the token's AES key"
        );

        // RSA-3072 into a new key.
        let r = import(&daemon, request(fx, "test-rsa-3072", ("", Some("")), ""))
            .await
            .unwrap();
        assert!(r.created_key);
        assert_eq!(r.format, "aws:RSA_AES_KEY_WRAP_SHA_256");
        let key = emu.key(&r.key_id).await;
        assert_eq!(key["KeyMetadata"]["KeySpec"], "RSA_3072", "{key}");
        assert_eq!(key["KeyMetadata"]["KeyUsage"], "SIGN_VERIFY", "{key}");
        assert_eq!(key["KeyMetadata"]["KeyState"], "Enabled", "{key}");
        assert_eq!(
            pkcs8_modulus(&emu.material(&r.key_id, &r.version_id).await),
            modulus,
            "{kind}: KMS holds the token's RSA key"
        );

        // The audit records and the metrics name the destination and the cloud.
        let recs = audit_records(&audit);
        let imports: Vec<&Value> = recs.iter().filter(|r| r["operation"] == "Import").collect();
        assert_eq!(imports.len(), 2, "{recs:?}");
        for rec in &imports {
            assert_eq!(rec["outcome"], "allowed", "{rec}");
            assert_eq!(rec["destination"], DEST, "{rec}");
            assert_eq!(rec["cloud"], "aws", "{rec}");
            assert!(
                rec["cloud_key_id"]
                    .as_str()
                    .unwrap()
                    .starts_with("arn:aws:kms:"),
                "{rec}"
            );
        }
        assert_eq!(imports[0]["cloud_key_id"], k1.as_str());
        let metrics = daemon.scrape_metrics().await;
        let counted: f64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("hsm_bridge_exports_total{")
                    && l.contains("operation=\"Import\"")
                    && l.contains("outcome=\"allowed\"")
                    && l.contains("cloud=\"aws\"")
                    && l.contains(&format!("destination=\"{DEST}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        assert_eq!(counted, 2.0, "{metrics}");
        drop(daemon);

        // The same through the command line.
        let k2 = arn(&emu.create_key("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await);
        let mut args = vec!["--label", "test-aes-256", "--target", &k2, "--wait"];
        if !aes_format(fx).is_empty() {
            args.extend(["--format", aes_format(fx)]);
        }
        let v = cli_import(&config, &env, &args);
        assert_eq!(v["key_id"], k2.as_str(), "{v}");
        assert_eq!(v["cloud"], "aws", "{v}");
        assert_eq!(
            emu.material(&k2, v["version_id"].as_str().unwrap()).await,
            fx.aes["test-aes-256"],
            "{kind}: the command line's import holds the token's AES key"
        );
        let v = cli_import(
            &config,
            &env,
            &[
                "--label",
                "test-rsa-3072",
                "--new-key",
                "--key-usage",
                "ENCRYPT_DECRYPT",
            ],
        );
        let k3 = v["key_id"].as_str().unwrap();
        assert_eq!(
            emu.key(k3).await["KeyMetadata"]["KeyUsage"],
            "ENCRYPT_DECRYPT"
        );
        assert_eq!(
            pkcs8_modulus(&emu.material(k3, v["version_id"].as_str().unwrap()).await),
            modulus,
            "{kind}: the command line's import holds the token's RSA key"
        );
        let recs = audit_records(&audit);
        assert_eq!(
            recs.iter()
                .filter(|r| r["operation"] == "Import" && r["outcome"] == "allowed")
                .count(),
            4,
            "{recs:?}"
        );
    }
}

/// A known AES-256 key besides the fixture's, written once into this process's SoftHSM2
/// token: new material for a key that has some.
fn next_aes() -> &'static Vec<u8> {
    static NEXT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    NEXT.get_or_init(|| {
        let v = random(32);
        write_aes(softhsm(), "test-aws-next", "5001", &v, true);
        v
    })
}

/// New material for a symmetric key that has some is imported and rotated to, with one
/// RotateKeyOnDemand; the same request again is answered from the journal. An RSA key
/// that has its material is refused before anything is wrapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_material_for_a_symmetric_key_rotates_once() {
    let fx = softhsm();
    let next = next_aes().clone();
    let rig = rig(fx, "aws-rotate", &[], None);
    let emu = &rig.emu;
    let daemon = rig.daemon();

    let k = arn(&emu.create_key("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await);
    let first = import(&daemon, request(fx, "test-aes-256", (&k, None), "rot-1"))
        .await
        .unwrap();
    let req = request(fx, "test-aws-next", (&k, None), "rot-2");
    let second = import(&daemon, req.clone()).await.unwrap();
    assert_ne!(first.version_id, second.version_id);
    assert_eq!(second.version_state, "CURRENT");
    let key = emu.key(&k).await;
    assert_eq!(key["rotate_on_demand_calls"], 1, "{key}");
    assert_eq!(
        key["KeyMetadata"]["CurrentKeyMaterialId"],
        second.version_id.as_str(),
        "{key}"
    );
    let states: Vec<(String, String)> = materials(&key)
        .iter()
        .map(|m| {
            (
                m["KeyMaterialId"].as_str().unwrap().to_string(),
                m["KeyMaterialState"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![
            (first.version_id.clone(), "NON_CURRENT".into()),
            (second.version_id.clone(), "CURRENT".into())
        ],
        "{key}"
    );
    assert_eq!(emu.material(&k, &second.version_id).await, next);

    // The same request again: the recorded answer; nothing is sent.
    let before = emu.requests().await.len();
    let again = import(&daemon, req).await.unwrap();
    assert_eq!(again.version_id, second.version_id);
    assert_eq!(calls(emu, "ImportKeyMaterial").await, 2);
    assert_eq!(emu.key(&k).await["rotate_on_demand_calls"], 1);
    let after: Vec<Value> = emu.requests().await[before..].to_vec();
    assert!(
        after.iter().all(|r| r["op"] == "DescribeKey"),
        "a replay only looks at the key: {after:?}"
    );

    // An RSA key has its material for good.
    let r = import(
        &daemon,
        request(fx, "test-rsa-3072", ("", Some("")), "rsa-1"),
    )
    .await
    .unwrap();
    let imports = calls(emu, "ImportKeyMaterial").await;
    let e = import(
        &daemon,
        request(fx, "test-rsa-3072", (&r.key_id, None), "rsa-2"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("never changes"), "{e:?}");
    assert_eq!(calls(emu, "ImportKeyMaterial").await, imports);
    assert_eq!(calls(emu, "GetParametersForImport").await, imports);
}

/// What AWS would not take, and what the destination does not cover, is refused with the
/// reason before anything is wrapped or sent: AES-128, a key ARN in another account, a
/// caller not granted the destination, a key made without Origin EXTERNAL, an endpoint
/// outside the destination's allow-list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_come_before_anything_is_sent() {
    let fx = softhsm();
    let rig = rig(fx, "aws-refusals", &[], None);
    let (emu, env) = (&rig.emu, &rig.env);
    let audit = &rig.audit;
    let daemon = rig.daemon();

    let k = arn(&emu.create_key("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await);
    let e = import(&daemon, request(fx, "test-aes-128", (&k, None), ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("AES-128") && e.message().contains("nothing was wrapped or sent"),
        "{e:?}"
    );
    // SoftHSM2 cannot wrap with OAEP-SHA256: the default format is refused, naming the
    // SHA-1 form, before anything is sent.
    let mut default = request(fx, "test-aes-256", (&k, None), "");
    default.format.clear();
    let e = import(&daemon, default).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("aws:RSAES_OAEP_SHA_1"), "{e:?}");
    let other = k.replace(&emu.account, "444455556666");
    let e = import(&daemon, request(fx, "test-aes-256", (&other, None), ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("444455556666"), "{e:?}");
    let mut to_elsewhere = request(fx, "test-aes-256", (&k, None), "");
    to_elsewhere.destination = "aws-unknown".into();
    let e = import(&daemon, to_elsewhere).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains(DEST),
        "names what the caller may use: {e:?}"
    );
    assert_eq!(
        emu.requests().await,
        Vec::<Value>::new(),
        "nothing was sent"
    );

    // Made by KMS itself: described, then refused.
    let own = emu
        .create_key_with(json!({"KeySpec": "SYMMETRIC_DEFAULT", "KeyUsage": "ENCRYPT_DECRYPT", "Origin": "AWS_KMS"}))
        .await;
    let e = import(&daemon, request(fx, "test-aes-256", (&arn(&own), None), ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("EXTERNAL"), "{e:?}");
    let ops: Vec<Value> = emu
        .requests()
        .await
        .iter()
        .map(|r| r["op"].clone())
        .collect();
    assert_eq!(ops, vec![json!("DescribeKey")]);
    drop(daemon);

    // A caller the destination is not granted to.
    let (ungranted, _) = self::config(fx, emu, "aws-ungranted", &[]);
    let daemon = start(&ungranted, env);
    let e = import(&daemon, request(fx, "test-aes-256", (&k, None), ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("destinations"), "{e:?}");
    drop(daemon);

    // An endpoint outside the destination's allow-list: the config is refused.
    let (outside, _) = daemon_config(fx, "aws-outside", "", None);
    let text = std::fs::read_to_string(&outside).unwrap();
    std::fs::write(&outside, format!("{text}{}", destination(emu, DEST, None))).unwrap();
    let out = hsm_bridge_with_env(
        &[
            "import",
            "--config",
            outside.to_str().unwrap(),
            "--to",
            DEST,
            "--label",
            "test-aes-256",
            "--target",
            &k,
        ],
        &borrowed(env),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("allowed_endpoints"), "{err}");
    assert_eq!(emu.requests().await.len(), 1, "nothing more was sent");
    assert!(
        audit_records(audit)
            .iter()
            .filter(|r| r["operation"] == "Import")
            .all(|r| r["outcome"] == "refused"),
        "every refusal is audited as one"
    );
}

/// Where a kill can lose an answer.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// KMS imported the first material; the answer never came.
    AfterFirstImport,
    /// KMS took the new material (pending rotation); the answer never came.
    AfterNewMaterial,
    /// KMS rotated to it; the answer never came.
    DuringRotation,
}

/// SIGKILL where an answer is lost, a restart, and the caller's retry: answered, the key
/// has the one new material, exactly the token's key, and RotateKeyOnDemand was called at
/// most once for the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_never_imports_or_rotates_twice() {
    let fx = softhsm();
    let next = next_aes().clone();
    let rig = rig(fx, "aws-crash", &[], None);
    let (emu, env, config) = (&rig.emu, &rig.env, &rig.config);
    let mut daemon = rig.daemon();
    for (i, kill) in [
        Kill::AfterFirstImport,
        Kill::AfterNewMaterial,
        Kill::DuringRotation,
    ]
    .into_iter()
    .enumerate()
    {
        let k = arn(&emu.create_key("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await);
        let (source, value) = match kill {
            Kill::AfterFirstImport => ("test-aes-256", fx.aes["test-aes-256"].clone()),
            _ => {
                // the key has its first material already
                import(
                    &daemon,
                    request(fx, "test-aes-256", (&k, None), &format!("base-{i}")),
                )
                .await
                .unwrap();
                ("test-aws-next", next.clone())
            }
        };
        let op = match kill {
            Kill::DuringRotation => "RotateKeyOnDemand",
            _ => "ImportKeyMaterial",
        };
        emu.fault(json!({"op": op, "drop": true, "processed": true, "delay_ms": 60000}))
            .await;
        let req = request(fx, source, (&k, None), &format!("crash-{i}"));
        let landed = |key: &Value| {
            let m = materials(key);
            match kill {
                Kill::AfterFirstImport => key["KeyMetadata"]["KeyState"] == "Enabled",
                Kill::AfterNewMaterial => m
                    .iter()
                    .any(|m| m["KeyMaterialState"] == "PENDING_ROTATION"),
                Kill::DuringRotation => {
                    key["rotate_on_demand_calls"] == 1
                        && m.len() == 2
                        && m[1]["KeyMaterialState"] == "CURRENT"
                }
            }
        };
        kill_once_landed(daemon, &req, (emu, &k), landed, &format!("{kill:?}")).await;
        daemon = start(config, env);
        let r = until_answered(&daemon, &req).await;
        let key = emu.key(&k).await;
        let m = materials(&key);
        let expected = match kill {
            Kill::AfterFirstImport => 1,
            _ => 2,
        };
        assert_eq!(m.len(), expected, "{kill:?}: one new material: {key}");
        assert_eq!(
            key["rotate_on_demand_calls"],
            expected - 1,
            "{kill:?}: at most one rotation: {key}"
        );
        assert_eq!(
            key["KeyMetadata"]["CurrentKeyMaterialId"],
            r.version_id.as_str(),
            "{kill:?}"
        );
        assert_eq!(r.version_state, "CURRENT", "{kill:?}");
        assert_eq!(emu.material(&k, &r.version_id).await, value, "{kill:?}");
    }
}

/// Credentials that belong to another account than the destination's: a key an import
/// would create lands there, so it is refused once KMS names the key's account, before
/// parameters are asked for or anything is wrapped or imported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_of_another_account_import_nothing() {
    let fx = softhsm();
    let rig = rig(
        fx,
        "aws-other-account",
        &["--account", "444455556666"],
        Some("111122223333"),
    );
    let emu = &rig.emu;
    let daemon = rig.daemon();
    let e = import(&daemon, request(fx, "test-rsa-3072", ("", Some("")), ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("444455556666") && e.message().contains("new key"),
        "{e:?}"
    );
    let ops: Vec<Value> = emu
        .requests()
        .await
        .iter()
        .map(|r| r["op"].clone())
        .collect();
    assert_eq!(
        ops,
        vec![json!("CreateKey")],
        "nothing but the key was asked for"
    );
}

/// A rotation that KMS refuses after it took the new material is not the import's final
/// answer: the retry under the same idempotency key finds the material and rotates to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_rotation_is_finished_by_the_retry() {
    let fx = softhsm();
    let next = next_aes().clone();
    let rig = rig(fx, "aws-refused-rotation", &[], None);
    let emu = &rig.emu;
    let daemon = rig.daemon();
    let k = arn(&emu.create_key("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await);
    import(&daemon, request(fx, "test-aes-256", (&k, None), "first"))
        .await
        .unwrap();
    emu.fault(json!({"op": "RotateKeyOnDemand", "status": 400, "code": "DisabledException"}))
        .await;
    let req = request(fx, "test-aws-next", (&k, None), "second");
    let e = import(&daemon, req.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "retryable: {e:?}");
    assert!(e.message().contains("the material was imported"), "{e:?}");
    let r = import(&daemon, req).await.unwrap();
    assert_eq!(r.version_state, "CURRENT");
    assert_eq!(emu.material(&k, &r.version_id).await, next);
    let key = emu.key(&k).await;
    assert_eq!(materials(&key).len(), 2, "{key}");
    assert_eq!(
        calls(emu, "ImportKeyMaterial").await,
        2,
        "the retry sent nothing again"
    );
}

/// `hsm-bridge import --valid-to DATE`: the material expires then, and the same command
/// again (same idempotency key) is the same request, answered without a second import.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_material_from_the_command_line_imports_once() {
    let fx = softhsm();
    let rig = rig(fx, "aws-valid-to", &[], None);
    let (emu, env, config) = (&rig.emu, &rig.env, &rig.config);
    let k = arn(&emu.create_key("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await);
    // 00:00 UTC, 100 days from now
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400
        + 100;
    let date = hsm_bridge::time::date(days as i64);
    let args = [
        "--label",
        "test-aes-256",
        "--target",
        &k,
        "--format",
        "aws:RSAES_OAEP_SHA_1",
        "--valid-to",
        &date,
        "--idempotency-key",
        "expiring-1",
    ];
    let first = cli_import(config, env, &args);
    let again = cli_import(config, env, &args);
    assert_eq!(first["version_id"], again["version_id"]);
    assert_eq!(calls(emu, "ImportKeyMaterial").await, 1);
    let meta = &emu.key(&k).await["KeyMetadata"];
    assert_eq!(meta["ExpirationModel"], "KEY_MATERIAL_EXPIRES", "{meta}");
    assert_eq!(
        meta["ValidTo"].as_f64().unwrap() as u64,
        days * 86_400,
        "{meta}"
    );
}

/// An RSA key's first material carries no mark: after a crash that lost KMS's answer, and
/// once the import token has expired (a re-send would be refused), the retry finds the
/// import by KMS's public key for the key being the token's, and sends nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_rsa_import_is_found_by_its_public_key() {
    let fx = softhsm();
    let rig = rig(fx, "aws-lost-rsa", &["--import-token-ttl-secs", "5"], None);
    let emu = &rig.emu;
    let daemon = rig.daemon();
    let k = arn(&emu.create_key("RSA_3072", "SIGN_VERIFY").await);
    emu.fault(
        json!({"op": "ImportKeyMaterial", "drop": true, "processed": true, "delay_ms": 60000}),
    )
    .await;
    let req = request(fx, "test-rsa-3072", (&k, None), "lost-rsa");
    let landed = |key: &Value| key["KeyMetadata"]["KeyState"] == "Enabled";
    kill_once_landed(daemon, &req, (emu, &k), landed, "RSA import").await;
    // the import token expires: the recorded bytes could not be sent again
    tokio::time::sleep(Duration::from_secs(6)).await;
    let daemon = rig.daemon();
    let r = until_answered(&daemon, &req).await;
    let key = emu.key(&k).await;
    assert_eq!(
        key["KeyMetadata"]["CurrentKeyMaterialId"],
        r.version_id.as_str(),
        "{key}"
    );
    assert_eq!(key["import_calls"], 1, "nothing was sent again: {key}");
    assert_eq!(calls(emu, "GetPublicKey").await, 1);
    assert_eq!(
        pkcs8_modulus(&emu.material(&k, &r.version_id).await),
        token_modulus(|a| p11(fx, a), "test-rsa-3072")
    );
}
