//! The shipped config against the dev token that ./softhsm-setup.sh made: every demo key
//! wraps, and the openssl command line opens it to the right key. The demo keys were
//! generated inside the token, so nobody knows their values: an AES key is proven by its
//! key check value (the token's AES-ECB encryption of a zero block), an RSA key by its
//! modulus.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn dev_token() -> (String, String) {
    let env = repo().join(".softhsm/env");
    assert!(
        env.exists(),
        "the dev token is missing: run ./softhsm-setup.sh first"
    );
    let pin = std::fs::read_to_string(repo().join(".softhsm/user-pin")).unwrap();
    (
        repo().join(".softhsm/softhsm2.conf").display().to_string(),
        pin.trim().to_string(),
    )
}

fn dev_p11(args: &[&str]) -> Output {
    let (conf, pin) = dev_token();
    pkcs11_tool(Path::new(&conf), "hsm-bridge-dev", &pin, args)
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
fn token_kcv(id: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let zero = dir.path().join("zero");
    let out = dir.path().join("kcv");
    std::fs::write(&zero, [0u8; 16]).unwrap();
    let o = dev_p11(&[
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
fn every_demo_key_wraps_and_unwraps_to_the_right_key() {
    dev_token();
    let config = repo().join("config/hsm-bridge.toml");
    let config = config.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wk_private = dir.path().join("wk.key.pem");
    let wk_public = dir.path().join("wk.pub.pem");
    openssl_ok(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:4096",
        "-out",
        wk_private.to_str().unwrap(),
    ]);
    openssl_ok(&[
        "pkey",
        "-in",
        wk_private.to_str().unwrap(),
        "-pubout",
        "-out",
        wk_public.to_str().unwrap(),
    ]);

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
            wk_public.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let key = openssl_unwrap(&out, &wk_private, 512, "RSA_OAEP_AES_SHA256");
        if label.starts_with("demo-aes") {
            assert_eq!(
                kcv_of(&key),
                token_kcv(id),
                "{label}: the unwrapped key is not the token's"
            );
        } else {
            let m = pkcs8_modulus(&key);
            assert_eq!(
                m,
                token_modulus(dev_p11, label),
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
        wk_public.to_str().unwrap(),
        "--out",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert!(l.contains("not extractable"), "{l}");
}
