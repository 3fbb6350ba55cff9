//! The `aws-kms-emulator` binary driven by AWS's own Python SDK (boto3), wrapping with
//! pyca/cryptography: every operation the emulator serves, its SigV4 check and its import
//! rules, then what the emulator holds compared with what the SDK sent (through the test
//! oracle), and its HTTP edges driven directly.

mod common;

use common::aws_emulator::AwsEmulator;
use common::daemon::certs;
use serde_json::{Value, json};

/// The SDK releases the fidelity test pins.
const BOTO3: &str = "boto3==1.44.8";
const CRYPTOGRAPHY: &str = "cryptography==50.0.2";

/// A virtualenv with boto3 and cryptography at the pinned releases, made once under the
/// target folder.
fn aws_sdk_python() -> std::path::PathBuf {
    let check = format!(
        "import boto3, cryptography; assert boto3.__version__ == {:?} and cryptography.__version__ == {:?}",
        &BOTO3["boto3==".len()..],
        &CRYPTOGRAPHY["cryptography==".len()..]
    );
    common::python::venv("aws-sdk-venv", &check, &[BOTO3, CRYPTOGRAPHY])
}

fn sha256_hex(b: &[u8]) -> String {
    hsm_bridge::wrap::hex(&openssl::sha::sha256(b))
}

fn test_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("aws-emulator-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_drives_the_emulator() {
    let python = tokio::task::spawn_blocking(aws_sdk_python).await.unwrap();
    let dir = test_dir("boto3");
    let emu = AwsEmulator::start(&dir);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aws_sdk/fidelity.py");
    let out = std::process::Command::new(&python)
        .arg(script)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &dir)
        .env("KMS_EMULATOR_ENDPOINT", &emu.base)
        .env("KMS_EMULATOR_CA", certs().join("ca.pem"))
        .env("KMS_EMULATOR_REGION", &emu.region)
        .env("AWS_SHARED_CREDENTIALS_FILE", &emu.credentials_file)
        .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
        .env("AWS_PROFILE", &emu.profile)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3 failed against the emulator:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key_id = v["created"]["key_id"].as_str().unwrap();
    let arn = format!("arn:aws:kms:{}:{}:key/{key_id}", emu.region, emu.account);

    // CreateKey and GetParametersForImport as the SDK parsed them
    assert_eq!(
        v["created"],
        json!({"key_id": key_id, "arn": arn, "state": "PendingImport", "enabled": false,
               "origin": "EXTERNAL", "creation_date_type": "datetime"})
    );
    assert_eq!(v["parameters"]["key_id"], arn.as_str());
    assert_eq!(v["parameters"]["public_key_bits"], 4096);
    assert_eq!(v["parameters"]["public_key_2048_bits"], 2048);
    assert_eq!(v["parameters"]["valid_hours"], 24);

    // the first import, and what the emulator holds is what the SDK sent
    let first_id = v["first"]["key_material_id"].as_str().unwrap();
    assert_eq!(first_id.len(), 64);
    assert_eq!(v["first"]["request_id"].as_str().unwrap().len(), 36);
    assert_eq!(
        sha256_hex(&emu.material(key_id, first_id).await),
        v["first"]["sha256"].as_str().unwrap()
    );
    assert_eq!(
        v["after_import"],
        json!({"state": "Enabled", "enabled": true, "current": first_id,
               "expiration_model": "KEY_MATERIAL_DOES_NOT_EXPIRE"})
    );
    assert_eq!(v["reimport_same"], first_id);
    assert_eq!(v["reimport_other"][0], "IncorrectKeyMaterialException");
    assert_eq!(v["reimport_other"][1], 400);

    // new material, pending, then rotated in
    let second_id = v["second"]["key_material_id"].as_str().unwrap();
    assert_eq!(
        sha256_hex(&emu.material(key_id, second_id).await),
        v["second"]["sha256"].as_str().unwrap()
    );
    assert_eq!(
        v["before_rotation"],
        json!([
            [first_id, "CURRENT", "IMPORTED", null],
            [second_id, "PENDING_ROTATION", "IMPORTED", "rotation 2"]
        ])
    );
    assert_eq!(v["rotations_only_before"], 0);
    assert_eq!(v["rotate"], key_id);
    assert_eq!(
        v["after_rotation"],
        json!([[first_id, "NON_CURRENT"], [second_id, "CURRENT"]])
    );
    assert_eq!(
        v["rotations_only_after"],
        json!([[second_id, "ON_DEMAND", "datetime"]])
    );
    assert_eq!(v["current_after_rotation"], second_id);
    assert_eq!(v["paged"], json!([first_id, second_id]));

    // the RSA_3072 signing key got the PKCS#8 the SDK wrapped
    let rsa_key = v["rsa"]["key_id"].as_str().unwrap();
    let rsa_material = emu
        .material(rsa_key, v["rsa"]["key_material_id"].as_str().unwrap())
        .await;
    assert_eq!(
        sha256_hex(&rsa_material),
        v["rsa"]["sha256"].as_str().unwrap()
    );
    assert_eq!(
        (&v["rsa"]["state"], &v["rsa"]["key_spec"]),
        (&json!("Enabled"), &json!("RSA_3072"))
    );
    assert!(
        v["rsa"]["signing_algorithms"]
            .as_array()
            .unwrap()
            .contains(&json!("RSASSA_PSS_SHA_256"))
    );
    assert_eq!(v["rsa_direct_oaep"][0], "ValidationException");
    assert_eq!(v["rsa"]["public_key_matches"], true, "GetPublicKey: {v}");
    assert_eq!(
        v["public_key_of_symmetric"][0],
        "UnsupportedOperationException"
    );

    // refusals, by type
    let code = |name: &str| v[name][0].as_str().unwrap().to_string();
    assert_eq!(code("token_for_another_key"), "InvalidImportTokenException");
    assert_eq!(code("expires_without_valid_to"), "ValidationException");
    assert!(
        v["expires_without_valid_to"][2]
            .as_str()
            .unwrap()
            .contains("ValidTo is required")
    );
    assert_eq!(
        v["expiring"],
        json!({"expiration_model": "KEY_MATERIAL_EXPIRES", "valid_to_days": 30})
    );
    assert_eq!(code("pkcs1_refused"), "ValidationException");
    assert_eq!(code("unknown_key"), "NotFoundException");
    assert_eq!(code("wrong_secret"), "InvalidSignatureException");
    assert_eq!(code("unknown_access_key"), "UnrecognizedClientException");

    // the control API: one rotation call, every import counted
    let key = emu.key(key_id).await;
    assert_eq!(key["rotate_on_demand_calls"], 1);
    assert_eq!(key["import_calls"], 5);
    assert_eq!(key["KeyMetadata"]["CurrentKeyMaterialId"], second_id);
    assert_eq!(
        key["materials"][1],
        json!({"KeyMaterialId": second_id, "KeyMaterialState": "CURRENT", "ImportState": "IMPORTED",
               "KeyMaterialDescription": "rotation 2", "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"})
    );
    // every operation went through the signature check, signed by the SDK
    let log = emu.requests().await;
    for op in [
        "CreateKey",
        "DescribeKey",
        "GetParametersForImport",
        "ImportKeyMaterial",
        "RotateKeyOnDemand",
        "ListKeyRotations",
    ] {
        assert!(
            log.iter().any(|e| e["op"] == op && e["status"] == 200),
            "{op} never answered 200: {log:?}"
        );
    }
    let refused_signatures = log
        .iter()
        .filter(|e| {
            matches!(
                e["code"].as_str(),
                Some("InvalidSignatureException" | "UnrecognizedClientException")
            )
        })
        .count();
    assert_eq!(refused_signatures, 2, "{log:?}");
}

/// A client that trusts the test CA, for requests no SDK would send.
async fn raw_post(
    emu: &AwsEmulator,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Value, bool) {
    let mut b = common::emulator::http_client().post(format!("{}/", emu.base));
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let r = b.body(body).send().await.unwrap();
    let status = r.status().as_u16();
    let has_request_id = r.headers().contains_key("x-amzn-requestid");
    (
        status,
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap(),
        has_request_id,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_oversized_and_faulted_requests() {
    let dir = test_dir("edges");
    let emu = AwsEmulator::start_with(&dir, &["--region", "eu-central-1"]);
    assert_eq!(emu.region, "eu-central-1");
    let target = [
        ("x-amz-target", "TrentService.DescribeKey"),
        ("content-type", "application/x-amz-json-1.1"),
    ];
    let (status, v, rid) = raw_post(&emu, &target, br#"{"KeyId":"x"}"#.to_vec()).await;
    assert_eq!(
        (status, v["__type"].as_str(), rid),
        (400, Some("MissingAuthenticationTokenException"), true)
    );
    let (status, v, rid) = raw_post(&emu, &target, vec![b' '; 65 << 10]).await;
    assert_eq!((status, rid), (413, true), "{v}");
    // a key made through the control API, and a fault the control API lists and clears
    let meta = emu.create_key("HMAC_384", "GENERATE_VERIFY_MAC").await;
    assert_eq!(meta["KeyState"], "PendingImport");
    assert!(
        meta["Arn"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:kms:eu-central-1:111122223333:key/")
    );
    emu.fault(json!({"op": "DescribeKey", "status": 500, "count": 3}))
        .await;
    let (status, v, _) = raw_post(&emu, &target, b"{}".to_vec()).await;
    assert_eq!(
        (status, v["__type"].as_str()),
        (500, Some("KMSInternalException"))
    );
    emu.clear_faults().await;
    let (_, v, _) = raw_post(&emu, &target, b"{}".to_vec()).await;
    assert_eq!(v["__type"], "MissingAuthenticationTokenException");
    let log = emu.requests().await;
    let seen: Vec<(&str, u64, bool)> = log
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap(),
                e["status"].as_u64().unwrap(),
                e["fault"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("DescribeKey", 400, false),
            ("DescribeKey", 500, true),
            ("DescribeKey", 400, false)
        ]
    );
    assert_eq!(
        emu.key(meta["KeyId"].as_str().unwrap()).await["import_calls"],
        0
    );
}
