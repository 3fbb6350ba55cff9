//! The `gcp-kms-emulator` binary driven by Google's own Python SDK (google-cloud-kms over
//! its REST transport, google-auth's service-account and Compute Engine credentials),
//! wrapping with pyca/cryptography: every call the daemon makes (key ring, import job
//! polled to ACTIVE, import-only keys, imports polled to ENABLED, listings with paging,
//! the public key) and the refusals as the SDK's exceptions, then what the emulator holds
//! compared with what the SDK sent (through the test oracle), and the request log.

mod common;

use common::daemon::certs;
use common::gcp_emulator::GcpEmulator;
use serde_json::{Value, json};

/// The SDK releases the fidelity test pins.
const PACKAGES: &[&str] = &[
    "google-cloud-kms==3.18.0",
    "google-api-core==2.44.0",
    "google-auth==2.63.0",
    "proto-plus==1.29.0",
    "protobuf==7.36.2",
    "googleapis-common-protos==1.76.0",
    "grpcio==1.85.3",
    "requests==2.34.2",
    "cryptography==50.0.2",
];

/// A virtualenv with the pinned Google SDK packages, made once under the target folder.
fn gcp_sdk_python() -> std::path::PathBuf {
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
    common::python::venv("gcp-sdk-venv", &check, PACKAGES)
}

fn sha256_hex(b: &[u8]) -> String {
    hsm_bridge::wrap::hex(&openssl::sha::sha256(b))
}

/// The refusal the script saw: `[exception type, HTTP status, message, error.status]`
/// (google-api-core picks the exception type by the HTTP status alone: Cloud KMS's
/// FAILED_PRECONDITION comes with 400 and so as `BadRequest`).
fn refusal<'a>(v: &'a Value, name: &str) -> (&'a str, u64, &'a str, &'a str) {
    let r = &v[name];
    (
        r[0].as_str().unwrap_or_else(|| panic!("{name}: {r}")),
        r[1].as_u64().unwrap(),
        r[2].as_str().unwrap(),
        r[3].as_str().unwrap_or(""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_sdk_drives_the_emulator() {
    let started = std::time::Instant::now();
    let python = tokio::task::spawn_blocking(gcp_sdk_python).await.unwrap();
    let venv_ready = started.elapsed();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("gcp-emulator-sdk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let emu = GcpEmulator::start(&dir);
    let aes = common::random(32);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gcp_sdk/fidelity.py");
    let ca = certs().join("ca.pem");
    let out = tokio::task::spawn_blocking({
        let (python, dir, emu_base, md) = (
            python.clone(),
            dir.clone(),
            emu.base.clone(),
            emu.metadata.clone(),
        );
        let (sa, ring, project, aes_hex) = (
            emu.sa_file.clone(),
            emu.key_ring.clone(),
            emu.project.clone(),
            hsm_bridge::wrap::hex(&aes),
        );
        move || {
            std::process::Command::new(&python)
                .arg(script)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOME", &dir)
                .env("NO_PROXY", "*")
                .env("REQUESTS_CA_BUNDLE", &ca)
                .env("EMU_CA", &ca)
                .env("EMU_ENDPOINT", &emu_base)
                .env("EMU_SA_FILE", &sa)
                .env("EMU_KEY_RING", &ring)
                .env("EMU_PROJECT", &project)
                .env("EMU_AES_HEX", aes_hex)
                .env("GCE_METADATA_HOST", md.trim_start_matches("http://"))
                .env("GCE_METADATA_IP", md.trim_start_matches("http://"))
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the Google SDK failed against the emulator:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ring = emu.key_ring.as_str();
    let job = format!("{ring}/importJobs/job-hsm");

    // key rings
    assert_eq!(
        v["key_ring_created"],
        format!(
            "projects/{}/locations/global/keyRings/sdk-ring",
            emu.project
        )
    );
    assert_eq!(v["key_ring"], ring);
    let r = refusal(&v, "key_ring_duplicate");
    assert_eq!((r.0, r.1, r.3), ("Conflict", 409, "ALREADY_EXISTS"));

    // the job: PENDING_GENERATION with no key, then ACTIVE with an RSA-4096 key, 3 days
    assert_eq!(
        v["job_created"],
        json!({"name": job, "state": "PENDING_GENERATION", "has_pem": false})
    );
    assert_eq!(
        v["job"],
        json!({"name": job, "state": "ACTIVE", "import_method": "RSA_OAEP_4096_SHA256_AES_256",
               "protection_level": "HSM", "key_bits": 4096, "lifetime_s": 3 * 86_400})
    );
    assert_eq!(v["jobs_listed"], json!([job]));

    // the keys
    assert_eq!(
        v["sym_key"],
        json!({"name": format!("{ring}/cryptoKeys/sym"), "purpose": "ENCRYPT_DECRYPT", "import_only": true,
               "labels": {"source": "hsm-bridge"}, "template": ["HSM", "GOOGLE_SYMMETRIC_ENCRYPTION"]})
    );
    let r = refusal(&v, "import_only_without_skip");
    assert_eq!((r.0, r.3), ("BadRequest", "INVALID_ARGUMENT"));

    // imports: PENDING_IMPORT first, ENABLED later, the first the primary
    let sym = format!("{ring}/cryptoKeys/sym");
    assert_eq!(v["sym_first_answer"]["state"], "PENDING_IMPORT");
    assert_eq!(v["sym_first_answer"]["import_job"], job.as_str());
    let versions = v["sym_versions"].as_array().unwrap();
    assert_eq!(versions.len(), 3);
    for (i, x) in versions.iter().enumerate() {
        let name = format!("{sym}/cryptoKeyVersions/{}", i + 1);
        assert_eq!(
            x,
            &json!({"name": name, "state": "ENABLED", "algorithm": "GOOGLE_SYMMETRIC_ENCRYPTION",
                    "protection_level": "HSM", "import_job": job, "import_failure_reason": "",
                    "has_import_time": true})
        );
        // what the emulator unwrapped is what the SDK wrapped
        assert_eq!(
            sha256_hex(&emu.material(&name).await),
            v["sym_sha256"][i].as_str().unwrap()
        );
    }
    assert_eq!(
        emu.material(&format!("{sym}/cryptoKeyVersions/1")).await,
        aes
    );
    assert_eq!(v["sym_primary"], format!("{sym}/cryptoKeyVersions/1"));
    let rsa_v = format!("{ring}/cryptoKeys/rsa/cryptoKeyVersions/1");
    assert_eq!(v["rsa_version"]["state"], "ENABLED");
    assert_eq!(
        sha256_hex(&emu.material(&rsa_v).await),
        v["rsa_sha256"].as_str().unwrap()
    );
    assert_eq!(v["public_key_matches"], true);
    assert_eq!(
        v["public_key"],
        json!({"name": rsa_v, "algorithm": "RSA_SIGN_PKCS1_3072_SHA256", "protection_level": "HSM", "crc_present": true})
    );
    let r = refusal(&v, "public_key_of_symmetric");
    assert_eq!((r.0, r.1, r.3), ("BadRequest", 400, "FAILED_PRECONDITION"));

    // listing: pages of 2 (the SDK's pager following nextPageToken), a filter
    assert_eq!(
        v["list_pages"],
        json!([
            [
                format!("{sym}/cryptoKeyVersions/1"),
                format!("{sym}/cryptoKeyVersions/2")
            ],
            [format!("{sym}/cryptoKeyVersions/3")]
        ])
    );
    assert_eq!(v["list_total"], 3);
    assert_eq!(v["list_filtered"].as_array().unwrap().len(), 3);

    // refusals as the SDK's exceptions
    assert_eq!(v["pending_state"], "PENDING_GENERATION");
    let (kind, status, message, code) = refusal(&v, "job_not_active");
    assert_eq!(
        (kind, status, code),
        ("BadRequest", 400, "FAILED_PRECONDITION")
    );
    assert!(message.contains("is not ACTIVE"), "{message}");
    let (kind, status, message, code) = refusal(&v, "protection_mismatch");
    assert_eq!(
        (kind, status, code),
        ("BadRequest", 400, "FAILED_PRECONDITION")
    );
    assert!(
        message.contains("SOFTWARE") && message.contains("HSM"),
        "{message}"
    );
    let r = refusal(&v, "purpose_mismatch");
    assert_eq!((r.0, r.3), ("BadRequest", "INVALID_ARGUMENT"));
    assert_eq!(v["wrong_size"]["state"], "IMPORT_FAILED");
    assert!(
        v["wrong_size"]["import_failure_reason"]
            .as_str()
            .unwrap()
            .contains("32 bytes")
    );
    for name in ["no_token", "bad_token"] {
        let r = refusal(&v, name);
        assert_eq!(
            (r.0, r.1, r.3),
            ("Unauthorized", 401, "UNAUTHENTICATED"),
            "{name}"
        );
    }

    // Compute Engine credentials from the metadata server
    assert_eq!(v["gce_key_ring"], ring);
    assert_eq!(v["gce_email"], emu.email.as_str());

    // the log: how each call authenticated, the JWT's audience, never a token
    let log = emu.requests().await;
    let jwt = log.iter().find(|e| e["op"] == "CreateImportJob").unwrap();
    assert_eq!(jwt["auth"], "jwt");
    assert_eq!(jwt["principal"], emu.email.as_str());
    assert_eq!(jwt["jwt_aud"], "https://cloudkms.googleapis.com/");
    assert!(
        log.iter()
            .any(|e| e["op"] == "MetadataToken" && e["status"] == 200)
    );
    assert!(
        log.iter()
            .any(|e| e["op"] == "GetKeyRing" && e["auth"] == "metadata")
    );
    assert!(
        log.iter()
            .any(|e| e["op"] == "GetKeyRing" && e["status"] == 401)
    );
    emu.clear_faults().await;
    eprintln!(
        "gcp_sdk_drives_the_emulator: venv {:?}, whole test {:?}",
        venv_ready,
        started.elapsed()
    );
}
