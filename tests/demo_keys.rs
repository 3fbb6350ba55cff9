//! The shipped config against the dev token that ./softhsm-setup.sh made: every demo key
//! wraps, and the openssl command line opens it to the right key. The demo keys were
//! generated inside the token, so nobody knows their values: an AES key is proven by its
//! key check value (the token's AES-ECB encryption of a zero block), an RSA key by its
//! modulus.

mod common;

use common::daemon::Daemon;
use hsm_bridge::proto::{self, key_ref::Key};

use std::path::PathBuf;
use std::process::Output;

use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A dev token made by softhsm-setup.sh and the shipped config that serves it.
struct DevToken {
    config: PathBuf,
    module: String,
    conf: (&'static str, PathBuf),
    label: &'static str,
    pin: String,
}

impl DevToken {
    fn softhsm() -> DevToken {
        let conf = repo().join(".softhsm/softhsm2.conf");
        assert!(
            conf.exists(),
            "the dev token is missing: run ./softhsm-setup.sh first"
        );
        DevToken {
            config: repo().join("config/hsm-bridge.toml"),
            module: module(),
            conf: ("SOFTHSM2_CONF", conf),
            label: "hsm-bridge-dev",
            pin: read_pin(".softhsm/user-pin"),
        }
    }

    /// `None` only when the kryoptic tests are explicitly skipped.
    fn kryoptic() -> Option<DevToken> {
        let module = kryoptic()?.module.clone();
        let conf = repo().join(".softhsm/kryoptic/kryoptic.conf");
        assert!(
            conf.exists(),
            "the kryoptic dev token is missing: run ./softhsm-setup.sh --with-kryoptic"
        );
        Some(DevToken {
            config: repo().join("config/hsm-bridge-kryoptic.toml"),
            module,
            conf: ("KRYOPTIC_CONF", conf),
            label: "hsm-bridge-kryoptic",
            pin: read_pin(".softhsm/kryoptic/user-pin"),
        })
    }

    /// The kryoptic dev token seen as a Luna partition in key export mode
    /// (config/hsm-bridge-luna-like.toml, through the fault module's Luna rules).
    fn luna_like() -> Option<DevToken> {
        let mut token = DevToken::kryoptic()?;
        common::fault::module();
        token.config = repo().join("config/hsm-bridge-luna-like.toml");
        Some(token)
    }

    fn p11(&self, args: &[&str]) -> Output {
        pkcs11_tool(
            &self.module,
            (self.conf.0, &self.conf.1),
            self.label,
            &self.pin,
            args,
        )
    }
}

fn read_pin(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel))
        .unwrap()
        .trim()
        .to_string()
}

/// AES-ECB of a zero block under `key`, by the openssl command line.
fn kcv_of(key: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let zero = dir.path().join("zero");
    std::fs::write(&zero, [0u8; 16]).unwrap();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let cipher = format!("-aes-{}-ecb", key.len() * 8);
    openssl_ok(&[
        "enc",
        &cipher,
        "-nopad",
        "-K",
        &hex,
        "-in",
        zero.to_str().unwrap(),
    ])
}

/// AES-ECB of a zero block under the token's key with CKA_ID `id`, by the token.
/// (pkcs11-tool's --encrypt selects the key by --id; it ignores --label.)
fn token_kcv(token: &DevToken, id: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let zero = dir.path().join("zero");
    let out = dir.path().join("kcv");
    std::fs::write(&zero, [0u8; 16]).unwrap();
    let o = token.p11(&[
        "--encrypt",
        "--mechanism",
        "AES-ECB",
        "--id",
        id,
        "--input-file",
        zero.to_str().unwrap(),
        "--output-file",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(out).unwrap()
}

#[test]
fn softhsm_demo_keys_wrap_and_unwrap_to_the_right_key() {
    demo_keys_wrap_and_unwrap_to_the_right_key(&DevToken::softhsm());
}

#[test]
fn kryoptic_demo_keys_wrap_and_unwrap_to_the_right_key() {
    if let Some(token) = DevToken::kryoptic() {
        demo_keys_wrap_and_unwrap_to_the_right_key(&token);
    }
}

/// The dev wrapping key softhsm-setup.sh made, which the shipped configs pin.
fn dev_wrapping_key() -> KeyPair {
    KeyPair {
        private_pem: repo().join(".softhsm/dev-wrapping-key.pem"),
        public_pem: repo().join(".softhsm/dev-wrapping-key.pub.pem"),
    }
}

#[test]
fn luna_like_demo_keys_wrap_and_unwrap_to_the_right_key() {
    if let Some(token) = DevToken::luna_like() {
        let v = selftest_json(&token.config);
        assert_eq!(v["chosen_mode"], "hsm-two-step", "{v}");
        demo_keys_wrap_and_unwrap_to_the_right_key(&token);
    }
}

fn demo_keys_wrap_and_unwrap_to_the_right_key(token: &DevToken) {
    let config = token.config.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kp = dev_wrapping_key();

    // Labels and ids as softhsm-setup.sh seeds them.
    for (label, id) in [
        ("demo-aes-128", "0101"),
        ("demo-aes-192", "0102"),
        ("demo-aes-256", "0103"),
        ("demo-rsa-2048", "0201"),
        ("demo-rsa-3072", "0202"),
        ("demo-rsa-4096", "0203"),
    ] {
        let out = dir.path().join(format!("{label}.bin"));
        let text = hsm_bridge_ok(&[
            "wrap",
            "--config",
            config,
            "--label",
            label,
            "--wrapping-key",
            kp.public_pem.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let key = openssl_unwrap(&out, &kp.private_pem, 512, "RSA_OAEP_AES_SHA256");
        if label.starts_with("demo-aes") {
            assert_eq!(
                kcv_of(&key),
                token_kcv(token, id),
                "{label}: the unwrapped key is not the token's"
            );
        } else {
            let m = pkcs8_modulus(&key);
            assert_eq!(
                m,
                token_modulus(|a| token.p11(a), label),
                "{label}: the unwrapped key is not the token's"
            );
        }
        println!("{text}");
    }

    let l = hsm_bridge_refuses(&[
        "wrap",
        "--config",
        config,
        "--label",
        "demo-locked-aes-256",
        "--wrapping-key",
        kp.public_pem.to_str().unwrap(),
        "--out",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert!(l.contains("not extractable"), "{l}");

    // The shipped config pins the dev key: the CLI does not wrap for a key of anyone's own
    // choosing unless the operator says so.
    let own = rsa4096(dir.path());
    let x = dir.path().join("own.bin");
    let l = hsm_bridge_refuses(&[
        "wrap",
        "--config",
        config,
        "--label",
        "demo-aes-256",
        "--wrapping-key",
        own.public_pem.to_str().unwrap(),
        "--out",
        x.to_str().unwrap(),
    ]);
    assert!(
        l.contains("not pinned") && l.contains("--allow-any-wrapping-key"),
        "{l}"
    );
    assert!(!x.exists(), "nothing written for a refused wrap");
}

/// The README's first command, as shipped: `serve --config config/hsm-bridge.toml` (here
/// on a free port), called by another process over mutual TLS with the dev client
/// certificate that softhsm-setup.sh made. Every demo key comes back wrapped, and opens to
/// the token's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_config_serves_every_demo_key_over_mtls() {
    let token = DevToken::softhsm();
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("shipped-config-daemon.log");
    let mut d = Daemon::start_logging_to(&token.config, &["--listen", "127.0.0.1:0"], &log);
    d.tls = repo().join(".softhsm/tls");
    let dir = tempfile::tempdir().unwrap();
    let kp = dev_wrapping_key();
    assert!(
        !d.log_text().contains("caller_wrapping_keys = \"any\""),
        "the shipped config does not let callers choose the wrapping key"
    );

    let mut client = d.client("cckm").await;
    for (label, id) in [
        ("demo-aes-128", "0101"),
        ("demo-aes-256", "0103"),
        ("demo-rsa-2048", "0201"),
        ("demo-rsa-4096", "0203"),
    ] {
        let r = client
            .wrap_key(proto::WrapKeyRequest {
                source_key: Some(proto::KeyRef {
                    key: Some(Key::Label(label.into())),
                }),
                wrapping_public_key_pem: std::fs::read_to_string(&kp.public_pem).unwrap(),
                algorithm: proto::WrappingAlgorithm::RsaOaepAesSha256 as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let f = dir.path().join(format!("{label}.bin"));
        std::fs::write(&f, &r.wrapped_key_material).unwrap();
        let key = openssl_unwrap(&f, &kp.private_pem, 512, "RSA_OAEP_AES_SHA256");
        if label.starts_with("demo-aes") {
            assert_eq!(kcv_of(&key), token_kcv(&token, id), "{label}");
        } else {
            assert_eq!(
                pkcs8_modulus(&key),
                token_modulus(|a| token.p11(a), label),
                "{label}"
            );
        }
    }
    let e = client
        .wrap_key(proto::WrapKeyRequest {
            source_key: Some(proto::KeyRef {
                key: Some(Key::Label("demo-locked-aes-256".into())),
            }),
            wrapping_public_key_pem: std::fs::read_to_string(&kp.public_pem).unwrap(),
            algorithm: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    // The attack the shipped config once allowed: a narrow caller has a key it may touch
    // wrapped for its own RSA key, and opens it. Refused for it and for the full caller.
    let own = rsa4096(dir.path());
    for who in ["limited", "cckm"] {
        let e = d
            .client(who)
            .await
            .wrap_key(proto::WrapKeyRequest {
                source_key: Some(proto::KeyRef {
                    key: Some(Key::Label("demo-aes-256".into())),
                }),
                wrapping_public_key_pem: std::fs::read_to_string(&own.public_pem).unwrap(),
                algorithm: 0,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{who}: {e:?}");
        assert!(e.message().contains("not pinned"), "{}", e.message());
    }
    d.terminate();
    assert!(d.wait(std::time::Duration::from_secs(30)).success());
    // The shipped config audits to stderr: one JSON line per attempt.
    let audit: Vec<serde_json::Value> = d
        .log_text()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(audit.len(), 7, "{audit:?}");
    assert_eq!(audit[5]["caller"], "limited (CN=limited.example)");
    assert!(audit.iter().all(|r| r["caller"] == "cckm (CN=cckm.example)"
        || r["caller"] == "limited (CN=limited.example)"));
    assert!(audit[5..].iter().all(|r| r["code"] == "PERMISSION_DENIED"));
    println!("audit line: {}", audit[0]);
}
