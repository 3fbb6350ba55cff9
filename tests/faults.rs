//! HSM faults, through a PKCS#11 module of our own (`tests/fault-pkcs11`) that forwards every
//! call to SoftHSM2, counts chosen calls, and answers chosen `CKR_` codes on instruction.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::fault::{self, calls};
use common::*;

/// Plain text on loopback grants what this entry says, and nothing without it.
const LOOPBACK_CLIENT: &str = "\n[[server.clients]]\nname = \"local\"\nloopback = true\noperations = [\"list\", \"wrap\", \"import\"]\nkeys = [\"*\"]\n";

/// A config on `fx`'s token through the fault module, with `pin_file`; returns it with the
/// module's call log and control file.
fn fault_config(fx: &Fixture, name: &str, pin_file: &str) -> (PathBuf, PathBuf, PathBuf) {
    fault_config_reinit(fx, name, pin_file, 30)
}

/// As [`fault_config`], with `hsm.reinit_interval_secs`.
fn fault_config_reinit(
    fx: &Fixture,
    name: &str,
    pin_file: &str,
    reinit_secs: u64,
) -> (PathBuf, PathBuf, PathBuf) {
    let log = fx.dir.join(format!("{name}.calls"));
    let ctl = fx.dir.join(format!("{name}.control"));
    let _ = std::fs::remove_file(&log);
    std::fs::write(&ctl, "").unwrap();
    let config = write_config(fx, &format!("{name}.toml"), |t| {
        fault::route(fx, &t, &log, &ctl)
            .replace("./user-pin", pin_file)
            .replace(
                "sessions = 2\n",
                &format!("sessions = 2\nreinit_interval_secs = {reinit_secs}\n"),
            )
            + "caller_wrapping_keys = \"any\"\n\n[server]\nlisten = \"127.0.0.1:0\"\nplaintext = true\n"
            + LOOPBACK_CLIENT
    });
    (config, log, ctl)
}

/// Objects on the token, as pkcs11-tool lists them (logged in: private ones too).
fn token_objects(fx: &Fixture) -> usize {
    let out = p11(fx, &["--list-objects"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" Object;"))
        .count()
}

#[test]
fn the_fault_module_is_transparent() {
    let fx = softhsm();
    let (config, log, _) = fault_config(fx, "transparent", "./user-pin");
    let v = selftest_json(&config);
    assert_eq!(v["chosen_mode"], "hybrid", "{v}");
    assert_eq!(calls(&log, "C_Login"), 1);
    assert!(calls(&log, "C_WrapKey") > 0);
}

#[test]
fn a_wrong_pin_stops_the_daemon_after_one_login_attempt() {
    let fx = softhsm();
    let wrong = fx.dir.join("fault-wrong-pin");
    write_private(&wrong, b"not-the-pin\n");
    let (config, log, _) = fault_config(fx, "wrong-pin", "./fault-wrong-pin");
    let out = hsm_bridge(&["serve", "--config", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve must not start: {err}");
    assert!(
        err.contains("wrong PIN") && err.contains("CKR_PIN_INCORRECT"),
        "{err}"
    );
    assert!(
        !err.contains("not-the-pin"),
        "the PIN must never be printed"
    );
    assert_eq!(
        calls(&log, "C_Login"),
        1,
        "exactly one C_Login: a Luna partition locks after a few"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "never listened"
    );

    // A supervisor restarts it: the marker the refusal left stops every later start (and
    // the CLI) before C_Login, so a restart loop cannot lock a Luna partition.
    let marker = fx.dir.join("pin-refused-wrong-pin");
    let text = std::fs::read_to_string(&marker).expect("the refusal leaves its marker");
    assert!(text.contains("CKR_PIN_INCORRECT"), "{text}");
    assert!(
        !text.contains("not-the-pin"),
        "the marker never holds the PIN"
    );
    for args in [
        vec!["serve", "--config", config.to_str().unwrap()],
        vec!["keys", "--config", config.to_str().unwrap()],
    ] {
        let out = hsm_bridge(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains("pin-reset"), "says how to go on: {err}");
    }
    assert_eq!(calls(&log, "C_Login"), 1, "no C_Login after the refusal");

    // The operator fixes the PIN and removes the marker: the next start logs in.
    write_private(&wrong, format!("{PIN}\n").as_bytes());
    let reset = hsm_bridge_ok(&["pin-reset", "--config", config.to_str().unwrap()]);
    assert!(reset.contains("removed"), "{reset}");
    assert!(!marker.exists());
    let again = hsm_bridge_ok(&["pin-reset", "--config", config.to_str().unwrap()]);
    assert!(again.contains("nothing to reset"), "{again}");
    hsm_bridge_ok(&["keys", "--config", config.to_str().unwrap()]);
    assert_eq!(calls(&log, "C_Login"), 2);
}

#[test]
fn an_injected_pin_incorrect_is_not_retried() {
    let fx = softhsm();
    let (config, log, ctl) = fault_config(fx, "inject-pin", "./user-pin");
    // CKR_PIN_INCORRECT = 0xA0, for the next 5 logins: one must be all it takes.
    std::fs::write(&ctl, "C_Login 0xa0 5\n").unwrap();
    let out = hsm_bridge(&["serve", "--config", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("CKR_PIN_INCORRECT"), "{err}");
    assert_eq!(calls(&log, "C_Login"), 1);
}

/// The token refuses the PIN on a later login (someone changed it, or the partition is
/// locking): that call fails naming it, and no later recovery, session-level or a module
/// re-initialisation, calls C_Login again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_refused_after_start_is_never_tried_again() {
    let fx = softhsm();
    let (config, log, ctl) = fault_config(fx, "pin-later", "./user-pin");
    let (_d, _, mut c, req) = started(fx, &config).await;
    assert_eq!(calls(&log, "C_Login"), 1);
    let steps = [
        // A lost session; the renewal's login meets CKR_PIN_INCORRECT.
        (
            "C_WrapKey 0xb3 1\nC_Login 0xa0 1\n",
            "wrong PIN (CKR_PIN_INCORRECT)",
        ),
        // Another lost session: refused without a C_Login.
        ("C_WrapKey 0xb3 1 #2\n", "not trying the PIN again"),
        // A device error: the module is re-initialised, and its login refused the same way.
        ("C_WrapKey 0x30 1 #3\n", "not trying the PIN again"),
    ];
    for (control, says) in steps {
        std::fs::write(&ctl, control).unwrap();
        let e = c.wrap_key(req.clone()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert!(e.message().contains(says), "{control}: {}", e.message());
        assert_eq!(
            calls(&log, "C_Login"),
            2,
            "{control}: one C_Login after start, no more"
        );
    }
    assert_eq!(
        calls(&log, "C_Finalize"),
        1,
        "the device error re-initialised the module"
    );
}

fn label_ref(label: &str) -> Option<hsm_bridge::proto::KeyRef> {
    Some(hsm_bridge::proto::KeyRef {
        key: Some(hsm_bridge::proto::key_ref::Key::Label(label.into())),
    })
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

/// WrapKey of `key` for `pem` with RSA_OAEP_AES_SHA256.
fn wrap_request(
    key: Option<hsm_bridge::proto::KeyRef>,
    pem: String,
) -> hsm_bridge::proto::WrapKeyRequest {
    hsm_bridge::proto::WrapKeyRequest {
        source_key: key,
        wrapping_public_key_pem: pem,
        algorithm: hsm_bridge::proto::WrappingAlgorithm::RsaOaepAesSha256 as i32,
        ..Default::default()
    }
}

/// The daemon started on `config`, a plain-text channel to it, a client on that channel,
/// and a WrapKey request for `test-aes-256` that has just succeeded once.
async fn started(
    fx: &Fixture,
    config: &Path,
) -> (
    common::daemon::Daemon,
    tonic::transport::Channel,
    hsm_bridge::proto::key_source_bridge_client::KeySourceBridgeClient<tonic::transport::Channel>,
    hsm_bridge::proto::WrapKeyRequest,
) {
    let d = common::daemon::Daemon::start(config, &[]);
    let ch = d.plain_channel().await;
    let mut c = hsm_bridge::proto::key_source_bridge_client::KeySourceBridgeClient::new(ch.clone());
    let req = wrap_request(label_ref("test-aes-256"), read(&fx.wk.wk2048.public_pem));
    c.wrap_key(req.clone())
        .await
        .expect("wraps before any fault");
    (d, ch, c, req)
}

/// Health of the daemon's main service.
async fn serving(ch: &tonic::transport::Channel) -> bool {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let r = HealthClient::new(ch.clone())
        .check(HealthCheckRequest {
            service: "hsmbridge.v1.KeySourceBridge".into(),
        })
        .await
        .unwrap()
        .into_inner();
    r.status == ServingStatus::Serving as i32
}

/// Polls health until it is `want` (the daemon probes the token every 5 s).
async fn wait_health(ch: &tonic::transport::Channel, want: bool) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while serving(ch).await != want {
        assert!(
            std::time::Instant::now() < until,
            "health never became serving={want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_errors_are_unavailable_and_health_follows_the_token() {
    let fx = softhsm();
    let (config, _, ctl) = fault_config(fx, "health", "./user-pin");
    let (_d, ch, mut c, req) = started(fx, &config).await;
    assert!(serving(&ch).await);

    // Every C_WrapKey fails with CKR_DEVICE_ERROR (0x30): UNAVAILABLE naming it (after the
    // one retry on a fresh session), and the health probe's own wrap fails: NOT_SERVING.
    std::fs::write(&ctl, "C_WrapKey 0x30 1000000\n").unwrap();
    let e = c.wrap_key(req.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("CKR_DEVICE_ERROR"), "{}", e.message());
    wait_health(&ch, false).await;

    // The fault clears: SERVING again and wraps work, without a restart.
    std::fs::write(&ctl, "").unwrap();
    wait_health(&ch, true).await;
    c.wrap_key(req.clone())
        .await
        .expect("wraps after the fault");

    // The token disappears (C_GetTokenInfo: CKR_DEVICE_REMOVED, 0x32): NOT_SERVING; back.
    std::fs::write(&ctl, "C_GetTokenInfo 0x32 1000000\n").unwrap();
    wait_health(&ch, false).await;
    std::fs::write(&ctl, "").unwrap();
    wait_health(&ch, true).await;
    c.wrap_key(req)
        .await
        .expect("wraps after the token returns");
}

/// Counts of the calls the fault module logs, at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    wraps: usize,
    opens: usize,
    logins: usize,
    inits: usize,
    finals: usize,
}

fn counts(log: &Path) -> Counts {
    Counts {
        wraps: calls(log, "C_WrapKey"),
        opens: calls(log, "C_OpenSession"),
        logins: calls(log, "C_Login"),
        inits: calls(log, "C_Initialize"),
        finals: calls(log, "C_Finalize"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_session_error_once_is_recovered_on_a_fresh_session() {
    use hsm_bridge::proto;
    let fx = softhsm();
    // One re-initialisation an hour: the first device-level error re-initialises the
    // module, the ones after it fall back to a fresh session.
    let (config, log, ctl) = fault_config_reinit(fx, "recover", "./user-pin", 3600);
    let objects = token_objects(fx);
    assert!(objects > 0);
    let (d, _, mut c, req) = started(fx, &config).await;
    assert_eq!(calls(&log, "C_Initialize"), 1);
    for (name, rv, reinit) in [
        ("CKR_SESSION_HANDLE_INVALID", 0xb3, false),
        ("CKR_SESSION_CLOSED", 0xb0, false),
        ("CKR_USER_NOT_LOGGED_IN", 0x101, false),
        ("CKR_DEVICE_ERROR", 0x30, true),
        ("CKR_DEVICE_REMOVED", 0x32, false),
        ("CKR_TOKEN_NOT_PRESENT", 0xe0, false),
        ("CKR_GENERAL_ERROR", 0x5, false),
    ] {
        let before = counts(&log);
        std::fs::write(&ctl, format!("C_WrapKey {rv:#x} 1\n")).unwrap();
        let w = c
            .wrap_key(req.clone())
            .await
            .unwrap_or_else(|e| panic!("{name} once must be recovered: {e:?}"));
        assert!(!w.into_inner().wrapped_key_material.is_empty());
        let want = if reinit {
            // C_Finalize, C_Initialize, a new pool of 2 sessions, one login, and the
            // self-test's wraps (counted as they came).
            let after = counts(&log);
            assert!(
                after.wraps > before.wraps + 2,
                "{name}: the self-test ran again"
            );
            Counts {
                wraps: after.wraps,
                opens: before.opens + 2,
                logins: before.logins + 1,
                inits: before.inits + 1,
                finals: before.finals + 1,
            }
        } else {
            // One fresh session and one login on it.
            Counts {
                wraps: before.wraps + 2,
                opens: before.opens + 1,
                logins: before.logins + 1,
                ..before
            }
        };
        assert_eq!(
            counts(&log),
            want,
            "{name}: failed once, recovered, retried once"
        );
    }
    // A module wedged until re-initialised, within the interval: no second
    // re-initialisation; the fresh session fails too, and the call says why.
    let before = counts(&log);
    std::fs::write(&ctl, "C_WrapKey 0x30 sticky\n").unwrap();
    let e = c.wrap_key(req.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("CKR_DEVICE_ERROR"), "{}", e.message());
    assert_eq!(
        (counts(&log).inits, counts(&log).finals),
        (before.inits, before.finals),
        "at most one re-initialisation per hsm.reinit_interval_secs"
    );
    // Listing keys (C_FindObjectsInit) recovers the same way.
    std::fs::write(&ctl, "C_FindObjectsInit 0xb3 1\n").unwrap();
    let listed = c
        .list_source_keys(proto::ListSourceKeysRequest::default())
        .await
        .expect("a lost session while listing is recovered")
        .into_inner();
    assert!(listed.keys.iter().any(|k| k.label == "test-aes-256"));
    // The wrapped bytes still open to the key (the retry wrapped the same key).
    let w = c.wrap_key(req).await.unwrap().into_inner();
    let f = fx.dir.join("recovered.bin");
    std::fs::write(&f, &w.wrapped_key_material).unwrap();
    assert_eq!(
        openssl_unwrap(&f, &fx.wk.wk2048.private_pem, 256, "RSA_OAEP_AES_SHA256"),
        fx.aes["test-aes-256"]
    );
    d.terminate();
    // No leftovers: every session key made along the failed paths was destroyed or died
    // with its session; no token object was added.
    assert_eq!(token_objects(fx), objects);
}

/// A module wedged until re-initialised, whose first two re-initialisations fail: the call
/// that meets it is UNAVAILABLE with the reason, the module stays down (health NOT_SERVING)
/// and the health probe re-initialises it again once the interval allows, until it is back
/// (SERVING), all without a restart; the token ends as it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_fails_to_reinitialise_comes_back_later() {
    let fx = softhsm();
    let (config, log, ctl) = fault_config_reinit(fx, "reinit", "./user-pin", 1);
    let objects = token_objects(fx);
    let (d, ch, mut c, req) = started(fx, &config).await;

    std::fs::write(&ctl, "C_WrapKey 0x30 sticky\nC_Initialize 0x30 2\n").unwrap();
    let e = c.wrap_key(req.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("could not be re-initialised")
            && e.message().contains("CKR_DEVICE_ERROR"),
        "{}",
        e.message()
    );
    wait_health(&ch, false).await;
    wait_health(&ch, true).await;
    // Three attempts in all: two failed C_Initialize, then one that worked.
    assert_eq!(calls(&log, "C_Initialize"), 1 + 3);
    assert_eq!(calls(&log, "C_Finalize"), 3);
    let w = c
        .wrap_key(req)
        .await
        .expect("wraps after the module is back")
        .into_inner();
    let f = fx.dir.join("reinit.bin");
    std::fs::write(&f, &w.wrapped_key_material).unwrap();
    assert_eq!(
        openssl_unwrap(&f, &fx.wk.wk2048.private_pem, 256, "RSA_OAEP_AES_SHA256"),
        fx.aes["test-aes-256"]
    );
    d.terminate();
    assert_eq!(token_objects(fx), objects, "no leftovers on the token");
}

/// A slow HSM (every C_WrapKey takes 1.5 s) and callers with a 1 s deadline: the calls that
/// got one of the 2 sessions run (and time out at the caller), the ones still waiting when
/// their deadline passes end DEADLINE_EXCEEDED without reaching the HSM; when the HSM is
/// fast again, wraps work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_hsm_does_no_work_for_calls_whose_deadline_passed() {
    use std::time::Duration;
    let fx = softhsm();
    let (config, log, ctl) = fault_config(fx, "slow", "./user-pin");
    let objects = token_objects(fx);
    let (d, _, c, req) = started(fx, &config).await;
    let (wraps, infos) = (calls(&log, "C_WrapKey"), calls(&log, "C_GetTokenInfo"));
    std::fs::write(&ctl, "C_WrapKey delay:1500 1000\n").unwrap();
    let callers: Vec<_> = (0..6)
        .map(|_| {
            let (mut c, req) = (c.clone(), req.clone());
            tokio::spawn(async move {
                let mut r = tonic::Request::new(req);
                r.set_timeout(Duration::from_secs(1));
                c.wrap_key(r).await
            })
        })
        .collect();
    for h in callers {
        let e = h.await.unwrap().expect_err("no call can finish in time");
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    }
    // Wait for the two slow wraps to finish before counting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::write(&ctl, "").unwrap();
    let mut c2 = c.clone();
    c2.wrap_key(req)
        .await
        .expect("wraps when the HSM is fast again");
    // Two callers' wraps reached the HSM, plus one per health probe that ran meanwhile (each
    // calls C_GetTokenInfo first), plus the last call.
    let probes = calls(&log, "C_GetTokenInfo") - infos;
    assert_eq!(
        calls(&log, "C_WrapKey") - wraps,
        2 + probes + 1,
        "only calls holding a session reached the HSM"
    );
    d.terminate();
    assert_eq!(token_objects(fx), objects, "no leftovers on the token");
}

/// 32 callers for 30 s, valid and hostile requests mixed, while the fault module injects
/// session and device errors: every call is answered, valid calls succeed or fail with a
/// retryable code, hostile ones are INVALID_ARGUMENT, and the token ends as it started.
/// Long: runs when HSM_BRIDGE_LOAD_TEST=1 (`.ci/run` sets it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_with_faults_and_hostile_callers() {
    use hsm_bridge::proto::key_source_bridge_client::KeySourceBridgeClient;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;
    if std::env::var_os("HSM_BRIDGE_LOAD_TEST").is_none() {
        eprintln!("load_with_faults_and_hostile_callers: skipped; set HSM_BRIDGE_LOAD_TEST=1");
        return;
    }
    let fx = softhsm();
    // Re-initialisations at most every 5 s, under 32 callers.
    let (config, log, ctl) = fault_config_reinit(fx, "load", "./user-pin", 5);
    let objects = token_objects(fx);
    let d = common::daemon::Daemon::start(&config, &[]);
    let ch = d.plain_channel().await;
    let pem = read(&fx.wk.wk2048.public_pem);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, retryable, hostile, sent) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let callers: Vec<_> = (0..32)
        .map(|i| {
            let mut c = KeySourceBridgeClient::new(ch.clone());
            let (pem, stop) = (pem.clone(), stop.clone());
            let (ok, retryable, hostile, sent) =
                (ok.clone(), retryable.clone(), hostile.clone(), sent.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let bad = (i + n as usize).is_multiple_of(4);
                    let (label, pem) = match (bad, n % 2) {
                        (true, 0) => ("test-*", pem.clone()),
                        (true, _) => (
                            "test-aes-256",
                            "-----BEGIN PUBLIC KEY-----\nAA\n".to_string(),
                        ),
                        _ => ("test-aes-256", pem.clone()),
                    };
                    let mut req = tonic::Request::new(wrap_request(label_ref(label), pem));
                    req.set_timeout(Duration::from_secs(10));
                    sent.fetch_add(1, Ordering::Relaxed);
                    match (bad, c.wrap_key(req).await) {
                        (false, Ok(_)) => ok.fetch_add(1, Ordering::Relaxed),
                        (false, Err(e)) => {
                            assert!(
                                matches!(
                                    e.code(),
                                    tonic::Code::Unavailable
                                        | tonic::Code::ResourceExhausted
                                        | tonic::Code::DeadlineExceeded
                                        | tonic::Code::Aborted
                                ),
                                "a valid call failed with a non-retryable code: {e:?}"
                            );
                            retryable.fetch_add(1, Ordering::Relaxed)
                        }
                        (true, Err(e)) => {
                            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
                            hostile.fetch_add(1, Ordering::Relaxed)
                        }
                        (true, Ok(_)) => panic!("a hostile call succeeded"),
                    };
                }
            })
        })
        .collect();
    // Faults: every 500 ms a new instruction, one of the recoverable codes for a few calls.
    let codes = [0xb3u32, 0xb0, 0x101, 0x32, 0xe0, 0x30, 0x5];
    let started = std::time::Instant::now();
    let mut k = 0usize;
    while started.elapsed() < Duration::from_secs(30) {
        let rv = codes[k % codes.len()];
        std::fs::write(&ctl, format!("C_WrapKey {rv:#x} {} #{k}\n", 1 + k % 3)).unwrap();
        k += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    std::fs::write(&ctl, "").unwrap();
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await.expect("a caller task panicked");
    }
    let (ok, retryable, hostile, sent) = (
        ok.load(Ordering::Relaxed),
        retryable.load(Ordering::Relaxed),
        hostile.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed),
    );
    eprintln!(
        "load: {sent} calls: {ok} wrapped, {retryable} retryable failures, {hostile} hostile refused; {} C_WrapKey, {} module re-initialisations",
        calls(&log, "C_WrapKey"),
        calls(&log, "C_Finalize")
    );
    assert!(
        calls(&log, "C_Finalize") > 0,
        "device errors under load re-initialised the module"
    );
    assert_eq!(ok + retryable + hostile, sent, "every call answered");
    assert!(ok > 0 && hostile > 0);
    d.terminate();
    assert_eq!(token_objects(fx), objects, "no leftovers on the token");
}

/// From the attack review: a token that asks for an absurd wrap buffer was believed (the size
/// allocated unchecked: the process aborted), and hybrid mode sent the token's RFC 5649 output
/// on without checking that it opens under the K it holds. Now neither leaves the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_lies_about_its_wrap_exports_nothing() {
    let fx = softhsm();
    let (config, _, ctl) = fault_config(fx, "lies", "./user-pin");
    let (_d, _ch, mut c, req) = started(fx, &config).await;

    // 1 TiB asked for the wrapped key.
    std::fs::write(&ctl, "C_WrapKey size:1099511627776 1000\n").unwrap();
    let e = c.wrap_key(req.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("CKR_FUNCTION_FAILED"),
        "{}",
        e.message()
    );

    // The wrap under K comes back with a flipped bit.
    std::fs::write(&ctl, "C_WrapKey corrupt 1000\n").unwrap();
    let e = c.wrap_key(req.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Internal, "{e:?}");
    assert!(
        e.message().contains("does not open") && e.message().contains("nothing was exported"),
        "{}",
        e.message()
    );

    // The token behaves again: the same daemon wraps, exactly.
    std::fs::write(&ctl, "").unwrap();
    let r = c
        .wrap_key(req)
        .await
        .expect("the daemon lives on")
        .into_inner();
    assert_eq!(
        open_material(
            &r.wrapped_key_material,
            &fx.wk.wk2048,
            256,
            "RSA_OAEP_AES_SHA256"
        ),
        fx.aes["test-aes-256"]
    );
}

/// SIGHUP: a new client list takes effect for new calls, a call in flight finishes under
/// the settings it started with, a broken file is refused with its reason and the old
/// settings stay; systemd hears READY, RELOADING and READY again on `NOTIFY_SOCKET`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_client_list_and_keeps_calls_in_flight() {
    let fx = softhsm();
    let (config, _log, ctl) = fault_config(fx, "reload", "./user-pin");
    let sock_path = fx.dir.join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let notify = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let d = common::daemon::Daemon::start_with_env(
        &config,
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
    );
    let heard = || {
        let mut buf = [0u8; 512];
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(heard().contains("READY=1"));

    let ch = d.plain_channel().await;
    let c = hsm_bridge::proto::key_source_bridge_client::KeySourceBridgeClient::new(ch);
    let wk = read(&fx.wk.wk2048.public_pem);
    let aes256 = wrap_request(label_ref("test-aes-256"), wk.clone());
    let aes128 = wrap_request(label_ref("test-aes-128"), wk);
    // a slow HSM, so that one call is in flight across the reload
    std::fs::write(&ctl, "C_WrapKey delay:1500 1\n").unwrap();
    let in_flight = {
        let (mut c, req) = (c.clone(), aes256.clone());
        tokio::spawn(async move { c.wrap_key(req).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = std::fs::read_to_string(&config).unwrap();
    let narrowed = text.replace("keys = [\"*\"]", "keys = [\"test-aes-128\"]");
    assert_ne!(text, narrowed);
    std::fs::write(&config, &narrowed).unwrap();
    d.hangup();
    assert!(heard().contains("RELOADING=1"));
    assert!(heard().contains("READY=1"));
    in_flight
        .await
        .unwrap()
        .expect("the call in flight finishes under the old client list");
    let mut c2 = c.clone();
    let e = c2.wrap_key(aes256.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    c2.wrap_key(aes128.clone())
        .await
        .expect("the new list allows it");

    // A broken file: refused with its reason, the settings stay.
    std::fs::write(&config, format!("{narrowed}\nnot toml at all [[[\n")).unwrap();
    d.hangup();
    assert!(heard().contains("RELOADING=1"));
    let ready = heard();
    assert!(
        ready.contains("READY=1") && ready.contains("reload refused"),
        "{ready}"
    );
    let log = d.log_text();
    assert!(
        log.contains("not reloaded") && log.contains("reload.toml"),
        "{log}"
    );
    c2.wrap_key(aes128).await.expect("the old settings stay");
    let e = c2.wrap_key(aes256).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    std::fs::write(&config, text).unwrap();
    d.terminate();
    assert!(heard().contains("STOPPING=1"));
}

/// Low 11: a SIGHUP before the reload handler was installed killed the daemon (exit 129
/// during the self-test). Now SIGHUP is ignored from the first line of `serve` until the
/// handler takes over. Here the token holds C_Login for two seconds, and SIGHUPs come
/// meanwhile.
#[test]
fn a_sighup_during_start_up_is_harmless() {
    use std::io::{BufRead, BufReader};
    let fx = softhsm();
    let (config, log, ctl) = fault_config(fx, "early-hup", "./user-pin");
    std::fs::write(&ctl, "C_Login delay:2000 1\n").unwrap();
    let _login = token_login_lock();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hsm-bridge"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env_remove("SOFTHSM2_CONF")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let end = Instant::now() + Duration::from_secs(60);
    while calls(&log, "C_Login") == 0 {
        assert!(Instant::now() < end, "no C_Login");
        std::thread::sleep(Duration::from_millis(5));
    }
    // in C_Login now (for two seconds): SIGHUP, as `systemctl reload` would send it
    for _ in 0..5 {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::HUP);
        std::thread::sleep(Duration::from_millis(50));
    }
    let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    if let Some(status) = child.try_wait().unwrap() {
        panic!("the daemon died during start-up: {status}");
    }
    assert!(line.contains("listening"), "{line:?}");
    let _ = child.kill();
    let _ = child.wait();
}

/// Low 12: the PIN marker was per pod (an `emptyDir`), so each new pod presented a refused
/// PIN once more. Now the refusal is also recorded in the import journal, which the
/// replicas share: a second replica, with a marker file of its own and the same wrong PIN,
/// never calls C_Login, until `pin-reset` clears the record for all of them.
fn a_refused_pin_reaches_every_replica(name: &str, journal: Option<String>) {
    let fx = softhsm();
    let wrong = fx.dir.join(format!("{name}-wrong-pin"));
    write_private(&wrong, b"not-the-pin\n");
    let pin = format!("./{name}-wrong-pin");
    let (a, log_a, _) = fault_config(fx, &format!("{name}-a"), &pin);
    let (b, log_b, _) = fault_config(fx, &format!("{name}-b"), &pin);
    // both replicas on one journal (A's SQLite file, or a PostgreSQL database)
    let shared = journal.unwrap_or_else(|| format!("url = \"sqlite:./journal-{name}-a.sqlite\"\n"));
    let text_b = std::fs::read_to_string(&b).unwrap();
    let own = format!("url = \"sqlite:./journal-{name}-b.sqlite\"\n");
    assert!(text_b.contains(&own));
    std::fs::write(&b, text_b.replace(&own, &shared)).unwrap();
    let text_a = std::fs::read_to_string(&a).unwrap();
    std::fs::write(
        &a,
        text_a.replace(
            &format!("url = \"sqlite:./journal-{name}-a.sqlite\"\n"),
            &shared,
        ),
    )
    .unwrap();

    let out = hsm_bridge(&["serve", "--config", a.to_str().unwrap()]);
    assert!(!out.status.success());
    let err_a = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err_a.contains("CKR_PIN_INCORRECT"), "{err_a}");
    assert_eq!(calls(&log_a, "C_Login"), 1);
    // another replica (a new pod: no marker file of its own) refuses before C_Login
    for args in [["serve", "--config"], ["keys", "--config"]] {
        let out = hsm_bridge(&[args[0], args[1], b.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert_eq!(
            calls(&log_b, "C_Login"),
            0,
            "the second replica presented the refused PIN again: {err}"
        );
        assert!(
            err.contains("import journal") && err.contains("pin-reset"),
            "{err}"
        );
        assert!(!err.contains("not-the-pin"), "{err}");
    }
    assert_eq!(
        calls(&log_b, "C_Login"),
        0,
        "the second replica never presented the PIN"
    );
    assert!(err_a.contains("recorded in the import journal"), "{err_a}");
    // the operator fixes the PIN and resets once, from any replica
    write_private(&wrong, format!("{PIN}\n").as_bytes());
    let reset = hsm_bridge_ok(&["pin-reset", "--config", b.to_str().unwrap()]);
    assert!(reset.contains("import journal"), "{reset}");
    hsm_bridge_ok(&["keys", "--config", b.to_str().unwrap()]);
    assert_eq!(calls(&log_b, "C_Login"), 1);
}

#[test]
fn a_refused_pin_reaches_every_replica_sqlite() {
    a_refused_pin_reaches_every_replica("pin-shared-sqlite", None);
}

#[test]
fn a_refused_pin_reaches_every_replica_postgres() {
    let Some(pg) = common::postgres::Postgres::start("pin-shared") else {
        return;
    };
    pg.create_db("pinshared");
    a_refused_pin_reaches_every_replica("pin-shared-pg", Some(pg.journal_lines("pinshared")));
}
