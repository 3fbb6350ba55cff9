//! The Luna-like token end to end: a kryoptic token behind the fault module's Luna rules
//! (tests/fault-pkcs11/src/luna.rs), which refuses plaintext secret and private keys, knows
//! RFC 5649 only as CKM_LUNA_AES_KWP, and in cloning mode wraps no private key. The wrap
//! core's whole suite runs on it too (tests/wrap.rs, module `luna`); here: the partition
//! modes through the daemon, an import into the emulator, the login role, and tokens that
//! no mode can serve.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::daemon::{Daemon, daemon_config};
use common::emulator::{Emulator, api_identity};
use common::*;
use hsm_bridge::proto::{self, key_ref::Key};
use tonic::Code;

fn by_label(l: &str) -> Option<proto::KeyRef> {
    Some(proto::KeyRef {
        key: Some(Key::Label(l.into())),
    })
}

/// A config on the Luna token whose partition follows `rules` (e.g. [`LUNA_CLONING`]).
fn luna_config(
    fx: &Fixture,
    name: &str,
    rules: &str,
    edit: impl FnOnce(String) -> String,
) -> PathBuf {
    write_config(fx, name, |t| edit(t.replace(LUNA_KEY_EXPORT, rules)))
}

/// Rewrites a daemon config on the Luna token to a partition that follows `rules`.
fn with_rules(config: &PathBuf, rules: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.contains(LUNA_KEY_EXPORT));
    std::fs::write(config, text.replace(LUNA_KEY_EXPORT, rules)).unwrap();
}

const REFUSED: &str = "the partition does not allow private-key wrapping (Luna: key export mode, partition policy 1; AES keys are unaffected)";

#[test]
fn selftest_in_cloning_mode_picks_two_step_and_says_rsa_keys_cannot_leave() {
    let Some(fx) = luna() else { return };
    let c = luna_config(fx, "cloning-selftest.toml", LUNA_CLONING, |t| t);
    let text = hsm_bridge_ok(&["selftest", "--config", c.to_str().unwrap()]);
    println!("{text}");
    let v = selftest_json(&c);
    assert_eq!(v["chosen_mode"], "hsm-two-step", "{v}");
    let two_step = v["modes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mode"] == "hsm-two-step")
        .unwrap()
        .clone();
    assert_eq!(two_step["aes"], "exact");
    assert!(
        two_step["rsa"].as_str().unwrap().contains(REFUSED)
            && two_step["rsa"]
                .as_str()
                .unwrap()
                .contains("CKR_KEY_NOT_WRAPPABLE"),
        "{v}"
    );
    assert!(
        v["chosen_because"]
            .as_str()
            .unwrap()
            .contains("RSA keys will be refused"),
        "{v}"
    );
    assert!(text.contains("hybrid        rejected needs the token to take the one-time key K"));
}

/// Cloning mode, through the real daemon: an RSA WrapKey answers FAILED_PRECONDITION naming
/// the partition policy, an AES key still wraps exactly, and the health probe (which takes
/// no plaintext key either) keeps the service SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloning_partition_refuses_rsa_wraps_and_serves_aes() {
    let Some(fx) = luna() else { return };
    let (config, _) = daemon_config(fx, "luna-cloning", "caller_wrapping_keys = \"any\"", None);
    with_rules(&config, LUNA_CLONING);
    let d = Daemon::start(&config, &[]);
    let mut c = d.client("cckm").await;
    let wk = &fx.wk.wk4096;
    let req = |label: &str| proto::WrapKeyRequest {
        source_key: by_label(label),
        wrapping_public_key_pem: std::fs::read_to_string(&wk.public_pem).unwrap(),
        algorithm: proto::WrappingAlgorithm::RsaOaepAesSha256 as i32,
        ..Default::default()
    };
    let e = c.wrap_key(req("test-rsa-3072")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains(REFUSED), "{}", e.message());
    for label in ["test-aes-128", "test-aes-256"] {
        let r = c.wrap_key(req(label)).await.unwrap().into_inner();
        assert_eq!(r.mode, "hsm-two-step");
        assert_eq!(
            open_material(&r.wrapped_key_material, wk, 512, "RSA_OAEP_AES_SHA256"),
            fx.aes[label]
        );
    }
    // RSA_OAEP_SHA256: the token does OAEP-SHA256 itself.
    let mut one = req("test-aes-192");
    one.algorithm = proto::WrappingAlgorithm::RsaOaepSha256 as i32;
    let r = c.wrap_key(one).await.unwrap().into_inner();
    assert_eq!(
        open_material(&r.wrapped_key_material, wk, 512, "RSA_OAEP_SHA256"),
        fx.aes["test-aes-192"]
    );
    // The health probe runs every 5 s; after one, the service is still SERVING.
    tokio::time::sleep(Duration::from_secs(6)).await;
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let h = HealthClient::new(d.channel(Some("cckm")).await.unwrap())
        .check(HealthCheckRequest {
            service: "hsmbridge.v1.KeySourceBridge".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.status, ServingStatus::Serving as i32);
    assert!(
        !d.log_text().contains("token health changed"),
        "{}",
        d.log_text()
    );
}

/// ImportKeyVersion from the Luna-like token into the emulator: what the emulator unwrapped
/// is the token's AES key, and (key export mode) the token's RSA key as exact PKCS#8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_key_version_from_the_luna_token_is_exact() {
    let Some(fx) = luna() else { return };
    let dir = fx.dir.join("luna-import");
    std::fs::create_dir_all(&dir).unwrap();
    let identity = api_identity(&dir, "api");
    let emu = Emulator::start(
        &dir,
        &[identity.key.public_pem.as_path()],
        &["aes=AES-256", "rsa=RSA-3072"],
    );
    let (config, _) = daemon_config(fx, "luna-import", &emu.oci_config(&identity, 2), None);
    let d = Daemon::start(&config, &[]);
    let mut c = d.client("cckm").await;
    for (label, key) in [("test-aes-256", "aes"), ("test-rsa-3072", "rsa")] {
        let v = c
            .import_key_version(proto::ImportKeyVersionRequest {
                source_key: by_label(label),
                oci_key_id: emu.keys[key].clone(),
                oci: Some(proto::OciTarget {
                    connection: String::new(),
                    management_endpoint: emu.base.clone(),
                }),
                algorithm: proto::WrappingAlgorithm::RsaOaepAesSha256 as i32,
                idempotency_key: format!("luna-{label}"),
                wait_for_enabled: true,
            })
            .await
            .unwrap()
            .into_inner()
            .key_version
            .unwrap();
        assert_eq!(v.lifecycle_state, "ENABLED");
        let material = emu.material(&v.version_id).await;
        if key == "aes" {
            assert_eq!(material, fx.aes[label]);
        } else {
            assert_eq!(
                pkcs8_modulus(&material),
                token_modulus(|a| p11(fx, a), label)
            );
        }
    }
}

/// `hsm.user_type`: Luna's Crypto User (0x80000001) logs in where the partition has one; a
/// role the token does not know is refused at start, naming the code.
#[test]
fn the_login_role_is_the_configured_one() {
    let Some(fx) = luna() else { return };
    let c = luna_config(fx, "crypto-user.toml", LUNA_KEY_EXPORT, |t| {
        t.replace("sessions = 2\n", "sessions = 2\nuser_type = 0x80000001\n")
    });
    assert_eq!(selftest_json(&c)["chosen_mode"], "hsm-two-step");
    let c = luna_config(fx, "unknown-role.toml", LUNA_KEY_EXPORT, |t| {
        t.replace("sessions = 2\n", "sessions = 2\nuser_type = 0x80000002\n")
    });
    let l = hsm_bridge_refuses(&["selftest", "--config", c.to_str().unwrap()]);
    assert!(l.contains("CKR_USER_TYPE_INVALID"), "{l}");
}

/// A token that neither takes plaintext keys nor does OAEP-SHA256 itself (SoftHSM 2.6.1
/// behind the no-plaintext-keys rule): no mode is possible, and the refusal names both facts.
#[test]
fn a_token_without_plaintext_keys_or_oaep_sha256_has_no_mode_and_says_why() {
    let fx = softhsm();
    let (log, ctl) = (fx.dir.join("no-mode.calls"), fx.dir.join("no-mode.control"));
    std::fs::write(&ctl, "").unwrap();
    let c = write_config(fx, "no-mode.toml", |t| {
        common::fault::route(fx, &t, &log, &ctl).replace(
            "module_env = { ",
            "module_env = { FAULT_PKCS11_LUNA = \"no-plaintext-keys\", ",
        )
    });
    let l = hsm_bridge_refuses(&["selftest", "--config", c.to_str().unwrap()]);
    assert!(
        l.contains("no wrap mode is possible")
            && l.contains("refuses secret keys created from a value")
            && l.contains("CKR_TEMPLATE_INCONSISTENT")
            && l.contains("does not do RSA-OAEP with SHA-256"),
        "{l}"
    );
}

/// Tokens that lie: OAEP that is SHA-1 whatever the parameters say, or a "KWP" that is RFC
/// 3394. With keys generated in the token the self-test learns their values only through
/// the token's own wraps, and still refuses both.
#[test]
fn a_token_whose_oaep_is_sha1_or_whose_kwp_is_not_rfc5649_is_refused() {
    let Some(fx) = luna() else { return };
    let c = luna_config(
        fx,
        "oaep-sha1.toml",
        &format!("{LUNA_KEY_EXPORT},oaep-sha1"),
        |t| t,
    );
    let l = hsm_bridge_refuses(&["selftest", "--config", c.to_str().unwrap()]);
    assert!(
        l.contains("no wrap mode is possible") && l.contains("does not open as OAEP-SHA256"),
        "{l}"
    );
    let c = luna_config(
        fx,
        "kwp-3394.toml",
        &format!("{LUNA_KEY_EXPORT},kwp-is-rfc3394"),
        |t| t,
    );
    let l = hsm_bridge_refuses(&["selftest", "--config", c.to_str().unwrap()]);
    assert!(
        l.contains("no wrap mode works") && l.contains("needs an RFC 5649 mechanism"),
        "{l}"
    );
}

/// The shipped Luna configs parse: the commented starting point for a real Luna and the dev
/// config that serves the kryoptic dev token as a Luna-like partition.
#[test]
fn the_shipped_luna_configs_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in [
        "config/hsm-bridge-luna.toml",
        "config/hsm-bridge-luna-like.toml",
    ] {
        let c =
            hsm_bridge::config::Config::load(&root.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_ne!(
            c.policy.caller_wrapping_keys,
            hsm_bridge::config::CallerWrappingKeys::Any,
            "{f}"
        );
    }
}

/// A key generated through the partition without asking for CKA_EXTRACTABLE is not
/// extractable, as on a Luna: the daemon lists it as not exportable and says why.
#[test]
fn keys_generated_on_the_partition_are_not_extractable_unless_asked() {
    let Some(fx) = luna() else { return };
    let shim = fx.daemon_module();
    let conf = fx.conf.to_str().unwrap();
    let env = [
        ("KRYOPTIC_CONF", conf),
        ("FAULT_PKCS11_MODULE", fx.module.as_str()),
        ("FAULT_PKCS11_LUNA", LUNA_KEY_EXPORT),
    ];
    let keygen = [
        "--keygen",
        "--key-type",
        "AES:32",
        "--label",
        "test-luna-default",
        "--id",
        "5001",
        "--sensitive",
    ];
    // pkcs11-tool asks for CKA_PRIVATE = false unless told: refused, as Luna Cloud HSM does.
    let out = pkcs11_tool_env(&shim, &env, &keygen);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CKR_TEMPLATE_INCONSISTENT"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = pkcs11_tool_env(&shim, &env, &[&keygen[..], &["--private"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&hsm_bridge_ok(&[
        "keys",
        "--config",
        fx.config.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    let k = v
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["label"] == "test-luna-default")
        .unwrap()
        .clone();
    assert_eq!(k["extractable"], false, "{k}");
    assert_eq!(k["exportable"], false, "{k}");
}

/// pkcs11-tool on `module` with `env`, logged in to the test token.
fn pkcs11_tool_env(module: &str, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let _login = token_login_lock();
    std::process::Command::new("pkcs11-tool")
        .envs(env.iter().copied())
        .args([
            "--module",
            module,
            "--token-label",
            TOKEN,
            "--login",
            "--pin",
            PIN,
        ])
        .args(args)
        .output()
        .unwrap()
}
