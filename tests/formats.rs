//! Every cloud's format (src/wrap/format.rs), on SoftHSM2, kryoptic and the Luna-like token,
//! through `hsm-bridge wrap --format` and through WrapKey on the real daemon. Each wrapped key
//! is opened with the openssl command line under the cloud's own hash and compared with the
//! key itself; each cloud's rule is refused with its reason, and the refusals that need no
//! key are made before any call reaches the token.
//!
//! The table below is written from the clouds' documentation (README, "Formats"), not from
//! the code under test.

mod common;

use std::path::PathBuf;

use common::daemon::{Daemon, audit_records, daemon_config, sample};
use common::*;
use hsm_bridge::proto::{self, key_ref::Key};
use tonic::Code;

/// The Azure key-exchange key the `.byok` files name.
const KEK: &str = "https://contoso.vault.azure.net/keys/byok-kek/7f2c8d1a9b3e4f5061728394a5b6c7d8";

/// One format, and what its cloud takes.
struct Case {
    format: &'static str,
    /// The OAEP hash, as openssl names it.
    md: &'static str,
    /// RSA-OAEP of the key itself (else a one-time AES-256 key, then RFC 5649).
    direct: bool,
    /// The wrapping key's size: what the method fixes, or a size of our choosing.
    wk_bits: u32,
    /// `Err(reason)` where the cloud does not take an AES-256 key this way.
    aes: Result<(), &'static str>,
    /// `Err(reason)` where the cloud does not take an RSA-3072 key this way.
    rsa: Result<(), &'static str>,
}

const NO_RSA_OCI: &str = "carries only AES keys";
const AWS_AES: &str = "AWS KMS takes AES keys only by direct OAEP";
const AWS_RSA: &str = "AWS KMS takes RSA keys only by RSA_AES_KEY_WRAP";
const GCP_RSA: &str = "never carries RSA keys";

#[rustfmt::skip]
const CASES: [Case; 13] = [
    Case { format: "oci:RSA_OAEP_AES_SHA256", md: "sha256", direct: false, wk_bits: 4096, aes: Ok(()), rsa: Ok(()) },
    Case { format: "oci:RSA_OAEP_SHA256", md: "sha256", direct: true, wk_bits: 2048, aes: Ok(()), rsa: Err(NO_RSA_OCI) },
    Case { format: "aws:RSA_AES_KEY_WRAP_SHA_256", md: "sha256", direct: false, wk_bits: 2048, aes: Err(AWS_AES), rsa: Ok(()) },
    Case { format: "aws:RSA_AES_KEY_WRAP_SHA_1", md: "sha1", direct: false, wk_bits: 3072, aes: Err(AWS_AES), rsa: Ok(()) },
    Case { format: "aws:RSAES_OAEP_SHA_256", md: "sha256", direct: true, wk_bits: 4096, aes: Ok(()), rsa: Err(AWS_RSA) },
    Case { format: "aws:RSAES_OAEP_SHA_1", md: "sha1", direct: true, wk_bits: 2048, aes: Ok(()), rsa: Err(AWS_RSA) },
    Case { format: "gcp:RSA_OAEP_3072_SHA256_AES_256", md: "sha256", direct: false, wk_bits: 3072, aes: Ok(()), rsa: Ok(()) },
    Case { format: "gcp:RSA_OAEP_4096_SHA256_AES_256", md: "sha256", direct: false, wk_bits: 4096, aes: Ok(()), rsa: Ok(()) },
    Case { format: "gcp:RSA_OAEP_3072_SHA1_AES_256", md: "sha1", direct: false, wk_bits: 3072, aes: Ok(()), rsa: Ok(()) },
    Case { format: "gcp:RSA_OAEP_4096_SHA1_AES_256", md: "sha1", direct: false, wk_bits: 4096, aes: Ok(()), rsa: Ok(()) },
    Case { format: "gcp:RSA_OAEP_3072_SHA256", md: "sha256", direct: true, wk_bits: 3072, aes: Ok(()), rsa: Err(GCP_RSA) },
    Case { format: "gcp:RSA_OAEP_4096_SHA256", md: "sha256", direct: true, wk_bits: 4096, aes: Ok(()), rsa: Err(GCP_RSA) },
    Case { format: "azure:byok", md: "sha1", direct: false, wk_bits: 3072, aes: Ok(()), rsa: Ok(()) },
];

/// The token cannot do a direct format whose OAEP hash it does not do itself.
const NO_DIRECT: &str = "needs the HSM to do RSA-OAEP with SHA-256 itself";

fn by_label(l: &str) -> Option<proto::KeyRef> {
    Some(proto::KeyRef {
        key: Some(Key::Label(l.into())),
    })
}

/// An RSA-3072 wrapping key (the fixtures have 2048 and 4096), made once per process.
fn wk3072() -> &'static KeyPair {
    static WK: std::sync::OnceLock<KeyPair> = std::sync::OnceLock::new();
    WK.get_or_init(|| {
        let dir = process_dir("formats-wk3072");
        keypair(
            &dir,
            "wk3072",
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:3072",
            ],
        )
    })
}

fn wrapping_key(fx: &Fixture, bits: u32) -> &KeyPair {
    match bits {
        2048 => &fx.wk.wk2048,
        3072 => wk3072(),
        4096 => &fx.wk.wk4096,
        other => panic!("no RSA-{other} wrapping key"),
    }
}

/// `hsm-bridge wrap` of the key labelled `label` for `wk` in `format`, into `out` (the
/// operator vouches for the wrapping key: the wrap core, not the policy, is under test).
fn wrap_args<'a>(
    config: &'a str,
    label: &'a str,
    wk: &'a KeyPair,
    format: &'a str,
    out: &'a str,
) -> Vec<&'a str> {
    let wk = wk.public_pem.to_str().unwrap();
    vec![
        "wrap",
        "--config",
        config,
        "--allow-any-wrapping-key",
        "--label",
        label,
        "--wrapping-key",
        wk,
        "--format",
        format,
        "--out",
        out,
    ]
}

/// Checks a `.byok` file field by field and returns its ciphertext.
fn open_byok(bytes: &[u8]) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_slice(bytes).expect("the .byok file is JSON");
    let o = v.as_object().unwrap();
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["ciphertext", "generator", "header", "schema_version"]
    );
    let text = std::str::from_utf8(bytes).unwrap();
    let at = |field: &str| text.find(&format!("\"{field}\":")).unwrap();
    assert!(
        at("schema_version") < at("header")
            && at("header") < at("ciphertext")
            && at("ciphertext") < at("generator"),
        "the .byok file's fields, in Azure's order: {text}"
    );
    assert_eq!(v["schema_version"], "1.0.0");
    assert_eq!(
        v["header"],
        serde_json::json!({"kid": KEK, "alg": "dir", "enc": "CKM_RSA_AES_KEY_WRAP"})
    );
    assert_eq!(v["header"].as_object().unwrap().len(), 3);
    let generator = v["generator"].as_str().unwrap();
    assert!(generator.starts_with("hsm-bridge "), "{generator}");
    let ct = v["ciphertext"].as_str().unwrap();
    assert!(
        ct.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "base64url without padding: {ct}"
    );
    // Decoded by OpenSSL's base64, after mapping base64url to base64.
    let mut std_b64: String = ct
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while !std_b64.len().is_multiple_of(4) {
        std_b64.push('=');
    }
    openssl::base64::decode_block(&std_b64).unwrap()
}

/// Opens what a wrap in `case`'s format gave, with the openssl command line.
fn open(case: &Case, bytes: &[u8], wk: &KeyPair) -> Vec<u8> {
    let material = if case.format == "azure:byok" {
        open_byok(bytes)
    } else {
        bytes.to_vec()
    };
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("m.bin");
    std::fs::write(&f, material).unwrap();
    openssl_open(
        &f,
        &wk.private_pem,
        case.wk_bits as usize / 8,
        case.direct,
        case.md,
    )
}

/// Asserts that `got` is the key `label` names on `fx`'s token.
fn is_the_key(fx: &Fixture, label: &str, got: &[u8], what: &str) {
    if label.starts_with("test-aes") {
        assert_eq!(got, fx.aes[label], "{what}: a different AES key came out");
    } else {
        assert_eq!(
            pkcs8_modulus(got),
            token_modulus(|a| p11(fx, a), label),
            "{what}: a different RSA key came out"
        );
    }
}

/// Every format, both keys, both ways, on `fx`.
async fn every_format_gives_the_exact_key(fx: &Fixture) {
    let policy = "caller_wrapping_keys = \"any\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"";
    let (config, audit) = daemon_config(fx, "formats", policy, None);
    let report = selftest_json(&config);
    let oaep_sha256 = report["rsa_oaep_sha256"].as_bool().unwrap();
    let d = Daemon::start(&config, &[]);
    let mut c = d.client("cckm").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config.to_str().unwrap();
    let mut allowed = 0;
    for case in &CASES {
        let wk = wrapping_key(fx, case.wk_bits);
        let finding = report["formats"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["format"] == case.format)
            .unwrap_or_else(|| panic!("selftest reports no {}", case.format));
        let cannot = case.direct && case.md == "sha256" && !oaep_sha256;
        assert_eq!(finding["mode"].is_null(), cannot, "{finding}");
        for (label, rule) in [("test-aes-256", case.aes), ("test-rsa-3072", case.rsa)] {
            let what = format!("{} of {label} on {:?}", case.format, fx.kind);
            // The cloud's rule for the key first, then what the token can do.
            let expected = match rule {
                Ok(()) if cannot => Err(NO_DIRECT),
                rule => rule,
            };
            // The command line.
            let out = dir
                .path()
                .join(format!("{}-{label}.bin", case.format.replace(':', "_")));
            let o = out.to_str().unwrap();
            let mut args = wrap_args(cfg, label, wk, case.format, o);
            args.push("--json");
            if case.format == "azure:byok" {
                args.extend(["--azure-kek-id", KEK]);
            }
            // The daemon.
            let req = proto::WrapKeyRequest {
                source_key: by_label(label),
                wrapping_public_key_pem: std::fs::read_to_string(&wk.public_pem).unwrap(),
                format: case.format.into(),
                azure_kek_id: if case.format == "azure:byok" {
                    KEK.into()
                } else {
                    String::new()
                },
                ..Default::default()
            };
            let answer = c.wrap_key(req).await;
            match expected {
                Ok(()) => {
                    let v: serde_json::Value = serde_json::from_str(&hsm_bridge_ok(&args)).unwrap();
                    assert_eq!(v["format"], case.format, "{what}");
                    let cli = std::fs::read(&out).unwrap();
                    is_the_key(fx, label, &open(case, &cli, wk), &format!("{what} (wrap)"));
                    let r = answer
                        .unwrap_or_else(|e| panic!("{what}: {e:?}"))
                        .into_inner();
                    assert_eq!(r.format, case.format, "{what}");
                    let oci = case.format.starts_with("oci:");
                    assert_eq!(r.algorithm != 0, oci, "{what}: OCI's enum only for OCI");
                    is_the_key(
                        fx,
                        label,
                        &open(case, &r.wrapped_key_material, wk),
                        &format!("{what} (WrapKey)"),
                    );
                    allowed += 1;
                    println!("{what}: exact, both ways ({} mode)", r.mode);
                }
                Err(reason) => {
                    let line = hsm_bridge_refuses(&args);
                    assert!(line.contains(reason), "{what}: {line}");
                    assert!(!out.exists(), "{what}: a refused wrap wrote --out");
                    let e = answer.unwrap_err();
                    assert_eq!(e.code(), Code::FailedPrecondition, "{what}: {e:?}");
                    assert!(e.message().contains(reason), "{what}: {}", e.message());
                    println!("{what}: refused: {reason}");
                }
            }
        }
    }
    // The daemon's audit records carry the format: one per WrapKey asked. (The command
    // line's own records go to the same file.)
    let records: Vec<_> = audit_records(&audit)
        .into_iter()
        .filter(|r| !r["caller"].as_str().unwrap().starts_with("cli "))
        .collect();
    assert_eq!(records.len(), 2 * CASES.len());
    for case in &CASES {
        let n = records
            .iter()
            .filter(|r| r["format"] == case.format)
            .count();
        assert_eq!(n, 2, "{}: {records:?}", case.format);
    }
    let ok = records.iter().filter(|r| r["outcome"] == "allowed").count();
    assert_eq!(ok, allowed);
    // ... and so do the metrics.
    let metrics = d.scrape_metrics().await;
    let azure = format!(
        "hsm_bridge_exports_total{{operation=\"WrapKey\",outcome=\"allowed\",key_type=\"AES\",mode=\"{}\",format=\"azure:byok\",cloud=\"none\",destination=\"none\"}}",
        report["formats"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["format"] == "azure:byok")
            .unwrap()["mode"]
            .as_str()
            .unwrap()
    );
    assert_eq!(sample(&metrics, &azure), 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_gives_the_exact_key_on_softhsm() {
    every_format_gives_the_exact_key(softhsm()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_gives_the_exact_key_on_kryoptic() {
    let Some(fx) = kryoptic() else { return };
    every_format_gives_the_exact_key(fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_gives_the_exact_key_on_the_luna_like_token() {
    let Some(fx) = luna() else { return };
    every_format_gives_the_exact_key(fx).await;
}

/// The rules that need no key are refused before any call reaches the token (no key
/// lookup, no session, no wrap); the rules on the key's shape after the lookup and before
/// any wrap. Each says why, in the daemon's answer and in the command line's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_rules_are_refused_with_their_reason_before_the_hsm_wraps() {
    let fx = softhsm();
    let (config, audit) = daemon_config(fx, "format-rules", "caller_wrapping_keys = \"any\"", None);
    let log = common::fault::route_config(fx, &config, "format-rules");
    let d = Daemon::start(&config, &[]);
    let mut c = d.client("cckm").await;
    let count = || common::fault::COUNTED.map(|f| common::fault::calls(&log, f));
    let pem = |kp: &KeyPair| std::fs::read_to_string(&kp.public_pem).unwrap();
    let req = |label: &str, wk: &KeyPair, format: &str, kek: &str| proto::WrapKeyRequest {
        source_key: by_label(label),
        wrapping_public_key_pem: pem(wk),
        format: format.into(),
        azure_kek_id: kek.into(),
        ..Default::default()
    };
    let wk4096 = &fx.wk.wk4096;
    let no_key_needed = [
        (
            req(
                "test-aes-256",
                wk4096,
                "gcp:RSA_OAEP_3072_SHA256_AES_256",
                "",
            ),
            Code::InvalidArgument,
            "gcp:RSA_OAEP_3072_SHA256_AES_256 wraps for an RSA-3072 key, and this wrapping key is RSA-4096",
        ),
        (
            req(
                "test-aes-256",
                wk3072(),
                "gcp:RSA_OAEP_4096_SHA1_AES_256",
                "",
            ),
            Code::InvalidArgument,
            "wraps for an RSA-4096 key, and this wrapping key is RSA-3072",
        ),
        (
            req("test-aes-256", wk4096, "azure:byok", ""),
            Code::InvalidArgument,
            "azure:byok needs the key-exchange key's versioned id",
        ),
        (
            req(
                "test-aes-256",
                wk4096,
                "azure:byok",
                "https://contoso.vault.azure.net/keys/byok-kek",
            ),
            Code::InvalidArgument,
            "has no version",
        ),
        (
            req("test-aes-256", wk4096, "oci:RSA_OAEP_AES_SHA256", KEK),
            Code::InvalidArgument,
            "for azure:byok only",
        ),
        (
            req("test-aes-256", wk4096, "aws:RSA_AES_KEY_WRAP_SHA_512", ""),
            Code::InvalidArgument,
            "expected one of oci:RSA_OAEP_AES_SHA256",
        ),
        (
            proto::WrapKeyRequest {
                algorithm: proto::WrappingAlgorithm::RsaOaepSha256 as i32,
                ..req("test-aes-256", wk4096, "aws:RSAES_OAEP_SHA_1", "")
            },
            Code::InvalidArgument,
            "disagree",
        ),
    ];
    let before = count();
    for (r, code, reason) in no_key_needed.iter().cloned() {
        let e = c.wrap_key(r).await.unwrap_err();
        assert_eq!(e.code(), code, "{reason}: {e:?}");
        assert!(e.message().contains(reason), "{reason}: {}", e.message());
    }
    let [finds, wraps, opens, probes] = {
        let after = count();
        [0, 1, 2, 3].map(|i| after[i] - before[i])
    };
    assert_eq!((finds, opens), (0, 0), "no key lookup, no new session");
    assert_eq!(wraps, probes, "no C_WrapKey but the health probe's");

    // The key's shape, and what the token can do: looked up, never wrapped. (SoftHSM2 2.6.1
    // does OAEP only with SHA-1 itself: known from the self-test.)
    let shape_rules = [
        (
            req("test-aes-256", wk4096, "aws:RSAES_OAEP_SHA_256", ""),
            NO_DIRECT,
        ),
        (
            req("test-aes-256", wk4096, "aws:RSA_AES_KEY_WRAP_SHA_1", ""),
            AWS_AES,
        ),
        (
            req("test-aes-128", wk4096, "aws:RSAES_OAEP_SHA_1", ""),
            "AWS KMS takes AES only as 256-bit keys",
        ),
        (
            req("test-rsa-3072", wk4096, "aws:RSAES_OAEP_SHA_1", ""),
            AWS_RSA,
        ),
        (
            req(
                "test-aes-192",
                wk3072(),
                "gcp:RSA_OAEP_3072_SHA1_AES_256",
                "",
            ),
            "Google Cloud KMS takes AES-128 and AES-256 keys",
        ),
        (
            req("test-rsa-1024", wk4096, "azure:byok", KEK),
            "Azure takes RSA-HSM keys of 2048, 3072 or 4096 bits",
        ),
        (
            req("test-ec-p256", wk4096, "aws:RSA_AES_KEY_WRAP_SHA_256", ""),
            "exports AES-128/192/256 and RSA-2048/3072/4096 keys only",
        ),
    ];
    let before = count();
    for (r, reason) in shape_rules.iter().cloned() {
        let e = c.wrap_key(r).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{reason}: {e:?}");
        assert!(e.message().contains(reason), "{reason}: {}", e.message());
    }
    let after = count();
    let (wraps, probes) = (after[1] - before[1], after[3] - before[3]);
    assert!(after[0] > before[0], "the shape needs the key looked up");
    assert_eq!(wraps, probes, "no C_WrapKey but the health probe's");

    // Each refusal is audited with its format (where the format was understood).
    let records = audit_records(&audit);
    assert_eq!(records.len(), no_key_needed.len() + shape_rules.len());
    assert!(records.iter().all(|r| r["outcome"] == "refused"));
    assert!(
        records
            .iter()
            .any(|r| r["format"] == "azure:byok" && r["algorithm"] == "byok")
    );

    // The command line says the same, and writes nothing.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never.bin");
    let cfg = config.to_str().unwrap();
    let cli = |label: &str, wk: &KeyPair, format: &str, extra: &[&str]| {
        let mut a = wrap_args(cfg, label, wk, format, out.to_str().unwrap());
        a.extend_from_slice(extra);
        hsm_bridge_refuses(&a)
    };
    for (line, reason) in [
        (
            cli("test-aes-256", wk4096, "gcp:RSA_OAEP_3072_SHA256", &[]),
            "wraps for an RSA-3072 key, and this wrapping key is RSA-4096",
        ),
        (
            cli("test-aes-256", wk4096, "azure:byok", &[]),
            "needs the key-exchange key's versioned id",
        ),
        (
            cli("test-aes-256", wk4096, "gcp:RSA_OAEP_4096_SHA256", &[]),
            NO_DIRECT,
        ),
        (
            cli("test-aes-256", wk4096, "aws:RSA_AES_KEY_WRAP_SHA_256", &[]),
            AWS_AES,
        ),
        (
            cli(
                "test-aes-256",
                wk4096,
                "azure:byok",
                &["--algorithm", "RSA_OAEP_SHA256"],
            ),
            "disagree",
        ),
        (
            cli("test-aes-256", wk4096, "RSA_OAEP_AES_SHA256", &[]),
            "unknown format",
        ),
    ] {
        assert!(line.contains(reason), "{line}");
    }
    assert!(!out.exists());
}

/// `--algorithm X` still means `oci:X`, on the command line and over gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oci_algorithm_names_the_oci_format() {
    let fx = softhsm();
    let dir = tempfile::tempdir().unwrap();
    let out: PathBuf = dir.path().join("k.bin");
    let v: serde_json::Value = serde_json::from_str(&hsm_bridge_ok(&[
        "wrap",
        "--config",
        fx.config.to_str().unwrap(),
        "--allow-any-wrapping-key",
        "--label",
        "test-aes-128",
        "--wrapping-key",
        fx.wk.wk2048.public_pem.to_str().unwrap(),
        "--algorithm",
        "RSA_OAEP_AES_SHA256",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    assert_eq!(v["format"], "oci:RSA_OAEP_AES_SHA256");
    assert_eq!(v["algorithm"], "RSA_OAEP_AES_SHA256");
    assert_eq!(
        openssl_unwrap(&out, &fx.wk.wk2048.private_pem, 256, "RSA_OAEP_AES_SHA256"),
        fx.aes["test-aes-128"]
    );
    let (config, _) = daemon_config(fx, "oci-names", "caller_wrapping_keys = \"any\"", None);
    let d = Daemon::start(&config, &[]);
    let r = d
        .client("cckm")
        .await
        .wrap_key(proto::WrapKeyRequest {
            source_key: by_label("test-aes-128"),
            wrapping_public_key_pem: std::fs::read_to_string(&fx.wk.wk2048.public_pem).unwrap(),
            algorithm: proto::WrappingAlgorithm::RsaOaepAesSha256 as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.format, "oci:RSA_OAEP_AES_SHA256");
    assert_eq!(
        r.algorithm,
        proto::WrappingAlgorithm::RsaOaepAesSha256 as i32
    );
}
