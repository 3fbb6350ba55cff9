//! The wrap core against a real SoftHSM2 token, through the real binary. Every wrapped key
//! is opened with the openssl command line and compared with the key itself.

mod common;

use common::*;

fn cfg(fx: &Fixture) -> String {
    fx.config.to_str().unwrap().to_string()
}

fn wrap_args<'a>(
    config: &'a str,
    key: &[&'a str],
    wk: &'a str,
    alg: &'a str,
    out: &'a str,
) -> Vec<&'a str> {
    // The wrap core, not the policy on callers' keys: the operator vouches for these keys.
    let mut a = vec!["wrap", "--config", config, "--allow-any-wrapping-key"];
    a.extend_from_slice(key);
    a.extend(["--wrapping-key", wk, "--algorithm", alg, "--out", out]);
    a
}

fn aes_keys_unwrap_to_their_known_values(fx: &Fixture) {
    let config = cfg(fx);
    let dir = tempfile::tempdir().unwrap();
    let rsa_oaep_sha256 = selftest_json(&fx.config)["rsa_oaep_sha256"]
        .as_bool()
        .unwrap();
    for (wk, modulus_len) in [(&fx.wk.wk4096, 512), (&fx.wk.wk2048, 256)] {
        let wk_pub = wk.public_pem.to_str().unwrap();
        for (label, _, len) in AES_KEYS {
            // RSA_OAEP_AES_SHA256: always possible for AES keys.
            let out = dir.path().join(format!("{label}-{modulus_len}.bin"));
            let o = out.to_str().unwrap();
            let json = hsm_bridge_ok(&{
                let mut a = wrap_args(
                    &config,
                    &["--label", label],
                    wk_pub,
                    "RSA_OAEP_AES_SHA256",
                    o,
                );
                a.push("--json");
                a
            });
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(v["algorithm"], "RSA_OAEP_AES_SHA256");
            assert_eq!(v["shape"]["algorithm"], "AES");
            assert_eq!(v["shape"]["length"], len);
            let size = std::fs::metadata(&out).unwrap().len();
            assert_eq!(v["bytes"], size);
            assert_eq!(
                size as usize,
                modulus_len + 8 + len,
                "OCI layout: C1 || RFC 5649 of the key"
            );
            let got = openssl_unwrap(&out, &wk.private_pem, modulus_len, "RSA_OAEP_AES_SHA256");
            assert_eq!(got, fx.aes[label], "{label} unwrapped to a different key");
            println!(
                "{label}: RSA_OAEP_AES_SHA256 under RSA-{} in {} mode: ok",
                modulus_len * 8,
                v["mode"].as_str().unwrap()
            );

            // RSA_OAEP_SHA256: only where the token does OAEP-SHA256 itself.
            let out = dir.path().join(format!("{label}-{modulus_len}-oaep.bin"));
            let o = out.to_str().unwrap();
            let args = wrap_args(&config, &["--label", label], wk_pub, "RSA_OAEP_SHA256", o);
            if rsa_oaep_sha256 {
                hsm_bridge_ok(&args);
                let got = openssl_unwrap(&out, &wk.private_pem, modulus_len, "RSA_OAEP_SHA256");
                assert_eq!(got, fx.aes[label]);
                println!("{label}: RSA_OAEP_SHA256: ok");
            } else {
                let line = hsm_bridge_refuses(&args);
                assert!(
                    line.contains("RSA-OAEP with SHA-256") && line.contains("RSA_OAEP_AES_SHA256"),
                    "{line}"
                );
                assert!(!out.exists(), "a refused wrap must not write --out");
                println!("{label}: RSA_OAEP_SHA256 refused, as this token cannot do OAEP-SHA256");
            }
        }
    }
}

fn rsa_keys_unwrap_to_exact_pkcs8_of_the_token_key(fx: &Fixture) {
    let config = cfg(fx);
    let dir = tempfile::tempdir().unwrap();
    for (label, id, bits) in RSA_KEYS {
        let out = dir.path().join(format!("{label}.bin"));
        let o = out.to_str().unwrap();
        // Look up by CKA_ID for one of them: the public key shares the id, which is not
        // ambiguity.
        let key: Vec<&str> = if bits == 3072 {
            vec!["--id", id]
        } else {
            vec!["--label", label]
        };
        let wk = fx.wk.wk4096.public_pem.to_str().unwrap();
        let text = hsm_bridge_ok(&wrap_args(&config, &key, wk, "RSA_OAEP_AES_SHA256", o));
        assert!(text.contains(&format!("RSA-{bits}")), "{text}");
        let der = openssl_unwrap(&out, &fx.wk.wk4096.private_pem, 512, "RSA_OAEP_AES_SHA256");
        let modulus = pkcs8_modulus(&der);
        assert_eq!(
            modulus,
            token_modulus(|a| p11(fx, a), label),
            "{label}: a different key came out"
        );
        println!(
            "{label}: {} bytes of exact PKCS#8, modulus matches the token ({text})",
            der.len()
        );
    }
}

fn pkcs1_wrapping_key_is_accepted_and_fingerprinted_as_spki(fx: &Fixture) {
    let dir = tempfile::tempdir().unwrap();
    let pkcs1 = dir.path().join("wk.pkcs1.pem");
    openssl_ok(&[
        "rsa",
        "-pubin",
        "-in",
        fx.wk.wk2048.public_pem.to_str().unwrap(),
        "-RSAPublicKey_out",
        "-out",
        pkcs1.to_str().unwrap(),
    ]);
    let want = spki_sha256_hex(&fx.wk.wk2048.public_pem);
    let out = dir.path().join("k.bin");
    let mut args = wrap_args(
        fx.config.to_str().unwrap(),
        &["--label", "test-aes-256"],
        pkcs1.to_str().unwrap(),
        "RSA_OAEP_AES_SHA256",
        out.to_str().unwrap(),
    );
    args.push("--json");
    let v: serde_json::Value = serde_json::from_str(&hsm_bridge_ok(&args)).unwrap();
    assert_eq!(v["wrapping_key_sha256"], want);
    assert_eq!(
        openssl_unwrap(&out, &fx.wk.wk2048.private_pem, 256, "RSA_OAEP_AES_SHA256"),
        fx.aes["test-aes-256"]
    );
}

fn refusals_are_one_clear_line(fx: &Fixture) {
    let config = cfg(fx);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never.bin");
    let o = out.to_str().unwrap();
    let wk = fx.wk.wk4096.public_pem.to_str().unwrap();
    let refuse = |key: &[&str], wk: &str, alg: &str| {
        hsm_bridge_refuses(&wrap_args(&config, key, wk, alg, o))
    };

    let l = refuse(
        &["--label", "test-locked-aes-256"],
        wk,
        "RSA_OAEP_AES_SHA256",
    );
    assert!(l.contains("not extractable"), "{l}");
    let l = refuse(&["--label", "no-such-key"], wk, "RSA_OAEP_AES_SHA256");
    assert!(
        l.contains("no secret or private key") && l.contains("no-such-key"),
        "{l}"
    );
    let l = refuse(&["--label", "test-dup"], wk, "RSA_OAEP_AES_SHA256");
    assert!(
        l.contains("2 secret/private keys") && l.contains("refusing to guess"),
        "{l}"
    );
    let l = refuse(&["--label", "other-aes-256"], wk, "RSA_OAEP_AES_SHA256");
    assert!(l.contains("policy.exportable"), "{l}");
    let l = refuse(&["--label", "test-ec-p256"], wk, "RSA_OAEP_AES_SHA256");
    assert!(l.contains("OCI imports only AES and RSA"), "{l}");
    let l = refuse(&["--label", "test-rsa-1024"], wk, "RSA_OAEP_AES_SHA256");
    assert!(
        l.contains("RSA-1024") && l.contains("RSA-2048/3072/4096"),
        "{l}"
    );
    let l = refuse(&["--label", "test-rsa-2048"], wk, "RSA_OAEP_SHA256");
    assert!(
        l.contains("only AES keys") && l.contains("RSA_OAEP_AES_SHA256"),
        "{l}"
    );
    let l = refuse(&["--label", "test-aes-256"], wk, "RSA_OAEP_SHA1");
    assert!(l.contains("RSA_OAEP_SHA1"), "{l}");
    let l = refuse(&["--id", "zz"], wk, "RSA_OAEP_AES_SHA256");
    assert!(l.contains("not hex"), "{l}");

    // Wrapping keys.
    let l = refuse(
        &["--label", "test-aes-256"],
        fx.wk.ec_public_pem.to_str().unwrap(),
        "RSA_OAEP_AES_SHA256",
    );
    assert!(l.contains("EC key"), "{l}");
    let l = refuse(
        &["--label", "test-aes-256"],
        fx.wk.wk1024.public_pem.to_str().unwrap(),
        "RSA_OAEP_AES_SHA256",
    );
    assert!(l.contains("RSA-1024 is below the minimum of 2048"), "{l}");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN PUBLIC KEY-----\nnot base64 at all!\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let l = refuse(
        &["--label", "test-aes-256"],
        garbage.to_str().unwrap(),
        "RSA_OAEP_AES_SHA256",
    );
    assert!(l.contains("does not parse"), "{l}");
    let big = dir.path().join("big.pem");
    let mut bytes = std::fs::read(&fx.wk.wk4096.public_pem).unwrap();
    bytes.resize(17 * 1024, b'\n');
    std::fs::write(&big, bytes).unwrap();
    let l = refuse(
        &["--label", "test-aes-256"],
        big.to_str().unwrap(),
        "RSA_OAEP_AES_SHA256",
    );
    assert!(l.contains("limit is 16384"), "{l}");
    let l = refuse(
        &["--label", "test-aes-256"],
        "/nonexistent/wk.pem",
        "RSA_OAEP_AES_SHA256",
    );
    assert!(l.contains("/nonexistent/wk.pem"), "{l}");
    assert!(!out.exists(), "no refused wrap may write --out");
}

fn config_and_token_refusals(fx: &Fixture) {
    let keys = |c: &std::path::Path| hsm_bridge_refuses(&["keys", "--config", c.to_str().unwrap()]);

    let wrong = fx.dir.join("wrong-pin");
    write_private(&wrong, b"not-the-pin\n");
    let c = write_config(fx, "wrong-pin.toml", |t| {
        t.replace("./user-pin", "./wrong-pin")
    });
    let l = keys(&c);
    assert!(
        l.contains("wrong PIN") && l.contains("CKR_PIN_INCORRECT"),
        "{l}"
    );
    assert!(
        !l.contains("not-the-pin"),
        "the PIN must never be printed: {l}"
    );

    let open = fx.dir.join("open-pin");
    std::fs::write(&open, format!("{PIN}\n")).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let c = write_config(fx, "open-pin.toml", |t| {
        t.replace("./user-pin", "./open-pin")
    });
    let l = keys(&c);
    assert!(l.contains("0644") && l.contains("chmod 600"), "{l}");
    assert!(!l.contains(PIN));

    let c = write_config(fx, "no-module.toml", |t| {
        t.replace(
            &format!("module = \"{}\"", fx.daemon_module()),
            "module = \"/nonexistent/libpkcs11.so\"",
        )
    });
    let l = keys(&c);
    assert!(
        l.contains("/nonexistent/libpkcs11.so") && l.contains("does not exist"),
        "{l}"
    );

    let c = write_config(fx, "no-token.toml", |t| {
        t.replace(&format!("\"{TOKEN}\""), "\"no-such-token\"")
    });
    let l = keys(&c);
    assert!(
        l.contains("no-such-token") && l.contains(TOKEN),
        "names the missing and the present tokens: {l}"
    );

    let c = write_config(fx, "unknown-key.toml", |t| t + "colour = \"blue\"\n");
    let l = keys(&c);
    assert!(
        l.contains("unknown-key.toml") && l.contains("colour"),
        "{l}"
    );

    let c = write_config(fx, "pin-env.toml", |t| {
        t.replace(
            "pin_file = \"./user-pin\"",
            "pin_env = \"HB_TEST_UNSET_PIN_VAR\"",
        )
    });
    let l = keys(&c);
    assert!(l.contains("HB_TEST_UNSET_PIN_VAR"), "{l}");

    let l = hsm_bridge_refuses(&["keys", "--config", "/nonexistent/hsm-bridge.toml"]);
    assert!(l.contains("/nonexistent/hsm-bridge.toml"), "{l}");
}

fn pin_from_environment_works(fx: &Fixture) {
    let c = write_config(fx, "pin-env-ok.toml", |t| {
        t.replace("pin_file = \"./user-pin\"", "pin_env = \"HB_TEST_PIN\"")
    });
    let out = hsm_bridge_with_env(
        &["keys", "--config", c.to_str().unwrap(), "--json"],
        &[("HB_TEST_PIN", PIN)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn keys_lists_shapes_and_exportability(fx: &Fixture) {
    let v: serde_json::Value =
        serde_json::from_str(&hsm_bridge_ok(&["keys", "--config", &cfg(fx), "--json"])).unwrap();
    let rows = v.as_array().unwrap();
    let row = |label: &str| -> Vec<&serde_json::Value> {
        rows.iter().filter(|r| r["label"] == label).collect()
    };
    let aes = row("test-aes-192");
    assert_eq!(aes.len(), 1);
    assert_eq!(aes[0]["algorithm"], "AES");
    assert_eq!(aes[0]["length"], 24);
    assert_eq!(aes[0]["id_hex"], "1002");
    assert_eq!(aes[0]["extractable"], true);
    assert_eq!(aes[0]["sensitive"], true);
    assert_eq!(aes[0]["exportable"], true);
    let rsa = row("test-rsa-3072");
    assert_eq!(rsa.len(), 1, "the private key only, not its public key");
    assert_eq!(rsa[0]["algorithm"], "RSA");
    assert_eq!(rsa[0]["length"], 384);
    assert_eq!(row("test-locked-aes-256")[0]["exportable"], false);
    assert_eq!(
        row("other-aes-256")[0]["exportable"],
        false,
        "not in policy.exportable"
    );
    assert_eq!(row("test-ec-p256")[0]["exportable"], false);
    assert_eq!(row("test-dup").len(), 2);
}

fn selftest_chooses_a_proven_mode_and_says_why(fx: &Fixture) {
    let v = selftest_json(&fx.config);
    let text = hsm_bridge_ok(&["selftest", "--config", &cfg(fx)]);
    println!("{text}");
    let modes = v["modes"].as_array().unwrap();
    let mode = |m: &str| modes.iter().find(|f| f["mode"] == m).unwrap().clone();
    // Whatever the token, the chosen mode is one the self-test proved.
    let chosen = v["chosen_mode"].as_str().unwrap();
    assert_eq!(mode(chosen)["ok"], true, "{v}");
    assert!(text.contains(&format!("chosen: {chosen}")));
    for m in ["hsm-native", "hsm-two-step", "hybrid"] {
        if mode(m)["ok"] == false {
            assert!(
                !mode(m)["aes"].as_str().unwrap().is_empty(),
                "a rejected mode says why"
            );
        }
    }
    if v["token"]["manufacturer"]
        .as_str()
        .unwrap()
        .starts_with("SoftHSM")
        && v["token"]["firmware"] == "2.6"
    {
        assert_eq!(chosen, "hybrid");
        assert_eq!(v["rsa_oaep_sha256"], false);
        assert!(
            mode("hsm-native")["aes"]
                .as_str()
                .unwrap()
                .contains("0x1054")
        );
        assert!(
            mode("hsm-two-step")["aes"]
                .as_str()
                .unwrap()
                .contains("SHA-256")
        );
        assert!(
            v["pkcs8_from_kwp"]
                .as_str()
                .unwrap()
                .starts_with("zero-padded")
        );
        assert!(v["kwp_mechanism"].as_str().unwrap().contains("0x210a"));
    }
    if fx.kind == TokenKind::Luna {
        // No plaintext key import: the self-test's keys were generated in the token, and
        // hybrid mode (K from the host) is refused with the reason.
        assert_eq!(chosen, "hsm-two-step", "{v}");
        assert!(
            v["known_values"]
                .as_str()
                .unwrap()
                .starts_with("generated in the token")
                && v["known_values"]
                    .as_str()
                    .unwrap()
                    .contains("CKR_TEMPLATE_INCONSISTENT"),
            "{v}"
        );
        assert_eq!(mode("hybrid")["ok"], false);
        assert!(
            mode("hybrid")["aes"]
                .as_str()
                .unwrap()
                .contains("refuses secret keys created from a value"),
            "{v}"
        );
        assert!(
            v["kwp_mechanism"].as_str().unwrap().contains("0x80000171"),
            "{v}"
        );
        let mech = |n: &str| {
            v["mechanisms"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["number"] == n)
                .unwrap()
                .clone()
        };
        for hidden in ["0x210b", "0x210a", "0x1054"] {
            assert_eq!(mech(hidden)["listed"], false, "{hidden}");
            assert_eq!(mech(hidden)["ok"], false, "{hidden}");
        }
        assert_eq!(mech("0x80000171")["listed"], true);
        assert_eq!(v["pkcs8_from_kwp"], "exact");
        assert!(
            text.contains("session keys: generated in the token"),
            "{text}"
        );
    }
}

fn forcing_a_mode_the_token_cannot_do_fails_at_start(fx: &Fixture) {
    let v = selftest_json(&fx.config);
    let modes = v["modes"].as_array().unwrap();
    for m in ["hsm-native", "hsm-two-step", "hybrid"] {
        let f = modes.iter().find(|f| f["mode"] == m).unwrap();
        let c = write_config(fx, &format!("forced-{m}.toml"), |t| {
            t.replace("wrap_mode = \"auto\"", &format!("wrap_mode = \"{m}\""))
        });
        let args = ["selftest", "--config", c.to_str().unwrap()];
        if f["ok"] == true {
            assert!(hsm_bridge_ok(&args).contains(&format!("chosen: {m} (wrap_mode = {m}")));
        } else {
            let l = hsm_bridge_refuses(&args);
            assert!(
                l.contains(&format!("wrap_mode = \"{m}\"")) && l.contains("needs"),
                "{l}"
            );
        }
    }
    // With hybrid forbidden, only a mode the token does itself may be chosen.
    let c = write_config(fx, "no-hybrid.toml", |t| t + "allow_hybrid = false\n");
    let hsm_mode_works = modes
        .iter()
        .any(|f| f["mode"] != "hybrid" && f["ok"] == true);
    if hsm_mode_works {
        assert_ne!(selftest_json(&c)["chosen_mode"], "hybrid");
    } else {
        let l = hsm_bridge_refuses(&["selftest", "--config", c.to_str().unwrap()]);
        assert!(
            l.contains("no wrap mode works") && l.contains("allow_hybrid = false"),
            "{l}"
        );
    }
}

/// Every mode the self-test passes, forced in the config, produces keys that open to the
/// right values (on kryoptic: hybrid as well as the chosen hsm-two-step).
fn every_working_mode_forced_wraps_correctly(fx: &Fixture) {
    let v = selftest_json(&fx.config);
    let dir = tempfile::tempdir().unwrap();
    let wk = &fx.wk.wk4096;
    for f in v["modes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["ok"] == true)
    {
        let m = f["mode"].as_str().unwrap();
        let c = write_config(fx, &format!("forced-{m}-wraps.toml"), |t| {
            t.replace("wrap_mode = \"auto\"", &format!("wrap_mode = \"{m}\""))
        });
        let c = c.to_str().unwrap();
        for (label, expect_rsa) in [("test-aes-192", false), ("test-rsa-2048", true)] {
            let out = dir.path().join(format!("{m}-{label}.bin"));
            let mut args = wrap_args(
                c,
                &["--label", label],
                wk.public_pem.to_str().unwrap(),
                "RSA_OAEP_AES_SHA256",
                out.to_str().unwrap(),
            );
            args.push("--json");
            let j: serde_json::Value = serde_json::from_str(&hsm_bridge_ok(&args)).unwrap();
            assert_eq!(j["mode"], m);
            let key = openssl_unwrap(&out, &wk.private_pem, 512, "RSA_OAEP_AES_SHA256");
            if expect_rsa {
                assert_eq!(pkcs8_modulus(&key), token_modulus(|a| p11(fx, a), label));
            } else {
                assert_eq!(key, fx.aes[label]);
            }
        }
        println!(
            "{:?}: forced {m}: AES-192 and RSA-2048 open to the right keys",
            fx.kind
        );
    }
}

/// Keys and tokens named by PKCS#11 URI (RFC 7512) reach the same key as by label: the
/// material opens (openssl) to the known value; a URI for another token, or a strict-parse
/// failure, is refused with the reason; `hsm.token` as a URI serves the same token.
fn pkcs11_uris_name_the_same_keys(fx: &Fixture) {
    let config = cfg(fx);
    let dir = tempfile::tempdir().unwrap();
    let wk = &fx.wk.wk4096;
    for uri in [
        "pkcs11:object=test-aes-256;type=secret-key".to_string(),
        format!("pkcs11:token={TOKEN};id=%10%03"),
        "pkcs11:object=test%2daes%2d256;id=%10%03".to_string(),
    ] {
        let out = dir.path().join("uri.bin");
        hsm_bridge_ok(&wrap_args(
            &config,
            &["--key", &uri],
            wk.public_pem.to_str().unwrap(),
            "RSA_OAEP_AES_SHA256",
            out.to_str().unwrap(),
        ));
        let got = openssl_unwrap(&out, &wk.private_pem, 512, "RSA_OAEP_AES_SHA256");
        assert_eq!(got, fx.aes["test-aes-256"], "{uri}");
    }
    for (uri, why) in [
        (
            "pkcs11:token=another-token;object=test-aes-256",
            "no secret or private key",
        ),
        (
            "pkcs11:object=test-aes-256;type=private",
            "no secret or private key",
        ),
        ("pkcs11:object=test-aes-256;object=x", "twice"),
        (
            "pkcs11:object=test-aes-256?pin-value=1234",
            "PINs come from",
        ),
        ("pkcs11:object=test%zz", "percent escape"),
        ("pkcs11:colour=blue;object=x", "unknown attribute"),
    ] {
        let e = hsm_bridge_refuses(&wrap_args(
            &config,
            &["--key", uri],
            wk.public_pem.to_str().unwrap(),
            "RSA_OAEP_AES_SHA256",
            dir.path().join("no.bin").to_str().unwrap(),
        ));
        assert!(e.contains(why), "{uri}: {e}");
        assert!(!e.contains("1234"), "{e}");
    }
    let by_uri = write_config(fx, "token-uri.toml", |t| {
        t.replace(
            &format!("token_label = \"{TOKEN}\""),
            &format!("token = \"pkcs11:token={TOKEN}\""),
        )
    });
    let keys = hsm_bridge_ok(&["keys", "--config", by_uri.to_str().unwrap()]);
    assert!(keys.contains("test-aes-256"), "{keys}");
    let wrong = write_config(fx, "token-uri-wrong.toml", |t| {
        t.replace(
            &format!("token_label = \"{TOKEN}\""),
            "token = \"pkcs11:token=no-such-token;manufacturer=nobody\"",
        )
    });
    let e = hsm_bridge_refuses(&["keys", "--config", wrong.to_str().unwrap()]);
    assert!(e.contains("no-such-token") && e.contains(TOKEN), "{e}");
}

/// Runs every test above on one token, as a module named after it.
macro_rules! on_token {
    ($token:ident, $fixture:expr) => {
        mod $token {
            use super::*;

            fn fx() -> Option<&'static Fixture> {
                $fixture
            }

            #[test]
            fn pkcs11_uris_name_the_same_keys() {
                fx().map(super::pkcs11_uris_name_the_same_keys);
            }
            #[test]
            fn aes_keys_unwrap_to_their_known_values() {
                fx().map(super::aes_keys_unwrap_to_their_known_values);
            }
            #[test]
            fn rsa_keys_unwrap_to_exact_pkcs8_of_the_token_key() {
                fx().map(super::rsa_keys_unwrap_to_exact_pkcs8_of_the_token_key);
            }
            #[test]
            fn pkcs1_wrapping_key_is_accepted_and_fingerprinted_as_spki() {
                fx().map(super::pkcs1_wrapping_key_is_accepted_and_fingerprinted_as_spki);
            }
            #[test]
            fn refusals_are_one_clear_line() {
                fx().map(super::refusals_are_one_clear_line);
            }
            #[test]
            fn config_and_token_refusals() {
                fx().map(super::config_and_token_refusals);
            }
            #[test]
            fn pin_from_environment_works() {
                fx().map(super::pin_from_environment_works);
            }
            #[test]
            fn keys_lists_shapes_and_exportability() {
                fx().map(super::keys_lists_shapes_and_exportability);
            }
            #[test]
            fn selftest_chooses_a_proven_mode_and_says_why() {
                fx().map(super::selftest_chooses_a_proven_mode_and_says_why);
            }
            #[test]
            fn every_working_mode_forced_wraps_correctly() {
                fx().map(super::every_working_mode_forced_wraps_correctly);
            }
            #[test]
            fn forcing_a_mode_the_token_cannot_do_fails_at_start() {
                fx().map(super::forcing_a_mode_the_token_cannot_do_fails_at_start);
            }
        }
    };
}

on_token!(softhsm, Some(common::softhsm()));
on_token!(kryoptic, common::kryoptic());
on_token!(luna, common::luna());
