//! Exactly once across crashes, restarts and replicas: the real daemon on the SoftHSM
//! fixture, the real `oci-kms-emulator` (its request log says what OCI received), and the
//! import journal on SQLite and on a real PostgreSQL server started for the test
//! (tests/common/postgres.rs). The daemon is killed with SIGKILL at each point where an
//! answer can be lost, restarted, and the caller retries until it is answered.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, daemon_config};
use common::emulator::{ApiIdentity, Emulator, api_identity};
use common::postgres::Postgres;
use common::*;
use hsm_bridge::proto::{self, key_ref::Key};
use serde_json::{Value, json};
use tonic::Code;

/// Where a test's journal is.
#[derive(Clone, Copy)]
enum Store<'a> {
    Sqlite,
    Postgres(&'a Postgres, &'a str),
}

struct Rig {
    emu: Emulator,
    identity: ApiIdentity,
    dir: PathBuf,
}

/// An emulator with keys `k1..kN` (AES-256); new versions are CREATING for `enable_ms`.
fn rig(name: &str, n: usize, enable_ms: u64) -> Rig {
    let fx = softhsm();
    let dir = fx.dir.join(format!("journal-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let identity = api_identity(&dir, "api");
    let keys: Vec<String> = (1..=n).map(|i| format!("k{i}=AES-256")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let emu = Emulator::start_with(&dir, &[identity.key.public_pem.as_path()], &keys, enable_ms);
    Rig { emu, identity, dir }
}

/// A daemon config named `name` on the rig's emulator, its journal in `store`, claims
/// lasting 2 s unrenewed.
fn config(r: &Rig, name: &str, store: Store<'_>, max_attempts: u32) -> PathBuf {
    let fx = softhsm();
    let policy = format!(
        "caller_wrapping_keys = \"any\"\n{}",
        r.emu.oci_config(&r.identity, max_attempts)
    );
    let (config, _audit) = daemon_config(fx, name, &policy, None);
    let text = std::fs::read_to_string(&config).unwrap();
    let sqlite = format!("url = \"sqlite:./journal-daemon-{name}.sqlite\"\n");
    assert!(text.contains(&sqlite), "{text}");
    let journal = match store {
        Store::Sqlite => sqlite.clone(),
        Store::Postgres(pg, db) => pg.journal_lines(db),
    };
    std::fs::write(
        &config,
        text.replace(&sqlite, &format!("{journal}lease_secs = 2\n")),
    )
    .unwrap();
    config
}

fn request(r: &Rig, key: &str, idem: &str, wait: bool) -> proto::ImportKeyVersionRequest {
    proto::ImportKeyVersionRequest {
        source_key: Some(proto::KeyRef {
            key: Some(Key::Label("test-aes-256".into())),
        }),
        oci_key_id: r.emu.keys[key].clone(),
        oci: Some(proto::OciTarget {
            connection: String::new(),
            management_endpoint: r.emu.base.clone(),
        }),
        algorithm: proto::WrappingAlgorithm::RsaOaepAesSha256 as i32,
        idempotency_key: idem.into(),
        wait_for_enabled: wait,
    }
}

async fn import(
    d: &Daemon,
    req: proto::ImportKeyVersionRequest,
) -> Result<proto::KeyVersion, tonic::Status> {
    let mut r = tonic::Request::new(req);
    r.set_timeout(Duration::from_secs(20));
    d.client("cckm")
        .await
        .import_key_version(r)
        .await
        .map(|r| r.into_inner().key_version.unwrap())
}

/// Retries `req` until it is answered (a retryable code: again after 200 ms); the answer
/// and how many calls it took.
async fn until_answered(
    d: &Daemon,
    req: &proto::ImportKeyVersionRequest,
) -> (proto::KeyVersion, u32) {
    let end = Instant::now() + Duration::from_secs(90);
    let mut calls = 0;
    loop {
        calls += 1;
        match import(d, req.clone()).await {
            Ok(v) => return (v, calls),
            Err(e)
                if matches!(
                    e.code(),
                    Code::Unavailable | Code::Aborted | Code::DeadlineExceeded
                ) && Instant::now() < end =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{req:?}: {e:?}"),
        }
    }
}

/// The emulator's log entries that are ImportKeyVersion calls for `key_id`.
fn posts(log: &[Value], key_id: &str) -> Vec<Value> {
    log.iter()
        .filter(|e| {
            e["method"] == "POST"
                && e["path"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("{key_id}/keyVersions/import"))
        })
        .cloned()
        .collect()
}

/// Waits until the emulator's log has an entry `pred` accepts.
async fn logged(emu: &Emulator, pred: impl Fn(&Value) -> bool) {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if emu.requests().await.iter().any(&pred) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the emulator never logged what the test waits for");
}

/// One version per key, none lost, and every attempt for a key carried the same bytes
/// and the same retry token. Returns how many import calls OCI received per key.
async fn exactly_once(
    emu: &Emulator,
    answers: &BTreeMap<String, String>,
) -> BTreeMap<String, usize> {
    let log = emu.requests().await;
    let mut calls = BTreeMap::new();
    for (name, version) in answers {
        let id = &emu.keys[name];
        let key = emu.key(id).await;
        let versions = key["versionIds"].as_array().unwrap();
        assert_eq!(
            versions.len(),
            2,
            "{name}: one new version beside the seeded one: {key}"
        );
        assert_eq!(
            &versions[1], version,
            "{name}: the caller got the version OCI made"
        );
        let p = posts(&log, id);
        assert!(!p.is_empty(), "{name}");
        for e in &p {
            assert_eq!(
                e["body_sha256"], p[0]["body_sha256"],
                "{name}: the bytes changed between attempts"
            );
            assert_eq!(
                e["retry_token"], p[0]["retry_token"],
                "{name}: the retry token changed"
            );
        }
        calls.insert(name.clone(), p.len());
    }
    calls
}

/// Where the daemon is killed.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// The record committed and the request on its way; OCI has not handled it.
    BeforeOciHandled,
    /// OCI made the version; its answer never reached the daemon.
    AfterOciAccepted,
    /// OCI answered; the daemon was polling for ENABLED.
    WhileWaitingForEnabled,
}

/// N imports, the daemon killed once during each, restarted, every key retried until
/// answered. Returns (imports, kills, calls by the caller, import calls OCI received).
async fn crash_test(name: &str, store: Store<'_>) -> (usize, usize, u32, usize) {
    let kills = [
        Kill::BeforeOciHandled,
        Kill::AfterOciAccepted,
        Kill::WhileWaitingForEnabled,
        Kill::BeforeOciHandled,
        Kill::AfterOciAccepted,
        Kill::WhileWaitingForEnabled,
    ];
    let r = rig(name, kills.len(), 1500);
    let config = config(&r, name, store, 3);
    let mut daemon = Daemon::start(&config, &[]);
    let mut answers = BTreeMap::new();
    let mut caller_calls = 0;
    for (i, kill) in kills.iter().enumerate() {
        let key = format!("k{}", i + 1);
        let id = r.emu.keys[&key].clone();
        let path = format!("{id}/keyVersions/import");
        match kill {
            Kill::BeforeOciHandled => {
                r.emu
                    .fault(json!({"path_contains": path, "drop": true, "delay_ms": 60000}))
                    .await
            }
            Kill::AfterOciAccepted => {
                r.emu
                    .fault(json!({"path_contains": path, "drop": true, "processed": true, "delay_ms": 60000}))
                    .await
            }
            Kill::WhileWaitingForEnabled => {}
        }
        let req = request(&r, &key, &format!("crash-{name}-{i}"), true);
        let first = {
            let (d, req) = (&daemon, req.clone());
            async move { import(d, req).await }
        };
        let id2 = id.clone();
        let wait_for = async {
            match kill {
                Kill::BeforeOciHandled => {
                    logged(&r.emu, |e| {
                        e["path"].as_str().unwrap().ends_with(&path)
                            && e["code"] == "(connection dropped)"
                    })
                    .await
                }
                Kill::AfterOciAccepted => {
                    logged(&r.emu, |e| {
                        e["path"].as_str().unwrap().ends_with(&path)
                            && e["code"] == "(handled; answer dropped)"
                    })
                    .await
                }
                Kill::WhileWaitingForEnabled => {
                    logged(&r.emu, |e| {
                        e["method"] == "GET"
                            && e["path"]
                                .as_str()
                                .unwrap()
                                .contains(&format!("{id2}/keyVersions/"))
                    })
                    .await
                }
            }
        };
        tokio::select! {
            r = first => panic!("{kill:?}: the call ended before the kill: {r:?}"),
            () = wait_for => {}
        }
        drop(daemon); // SIGKILL
        daemon = Daemon::start(&config, &[]);
        if !matches!(kill, Kill::WhileWaitingForEnabled) {
            let log = daemon.log_text();
            assert!(
                log.contains("unresolved") && log.contains(&format!("crash-{name}-{i}")),
                "{kill:?}: the restart lists the import the crash left unresolved: {log}"
            );
        }
        let (v, calls) = until_answered(&daemon, &req).await;
        assert_eq!(v.lifecycle_state, "ENABLED", "{kill:?}");
        assert_eq!(
            r.emu.material(&v.version_id).await,
            softhsm().aes["test-aes-256"],
            "{kill:?}: the vault holds the token's key"
        );
        caller_calls += calls + 1;
        answers.insert(key, v.version_id);
    }
    let oci_calls = exactly_once(&r.emu, &answers).await;
    for (i, kill) in kills.iter().enumerate() {
        let n = oci_calls[&format!("k{}", i + 1)];
        match kill {
            // the first send, and the same bytes again after the restart
            Kill::BeforeOciHandled | Kill::AfterOciAccepted => assert_eq!(n, 2, "{kill:?}"),
            // accepted before the kill: the recorded answer, no new import call
            Kill::WhileWaitingForEnabled => assert_eq!(n, 1, "{kill:?}"),
        }
    }
    drop(daemon);
    let _ = &r.dir;
    (
        kills.len(),
        kills.len(),
        caller_calls,
        oci_calls.values().sum(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_never_import_twice_sqlite() {
    let (imports, kills, calls, oci) = crash_test("crash-sqlite", Store::Sqlite).await;
    eprintln!(
        "sqlite: {imports} imports, {kills} kills, {calls} caller calls, {oci} import calls at OCI, {imports} versions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_never_import_twice_postgres() {
    let Some(pg) = Postgres::start("crash") else {
        return;
    };
    pg.create_db("crash");
    let (imports, kills, calls, oci) = crash_test("crash-pg", Store::Postgres(&pg, "crash")).await;
    eprintln!(
        "postgres: {imports} imports, {kills} kills, {calls} caller calls, {oci} import calls at OCI, {imports} versions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_import_survives_a_restart_with_sqlite() {
    let r = rig("restart", 1, 150);
    let config = config(&r, "restart", Store::Sqlite, 3);
    let req = request(&r, "k1", "restart-1", true);
    let d = Daemon::start(&config, &[]);
    let first = import(&d, req.clone()).await.unwrap();
    drop(d);
    let d = Daemon::start(&config, &[]);
    let again = import(&d, req.clone()).await.unwrap();
    assert_eq!(first.version_id, again.version_id);
    let log = r.emu.requests().await;
    assert_eq!(
        posts(&log, &r.emu.keys["k1"]).len(),
        1,
        "the retry after the restart got the recorded answer, with no import call"
    );
    // The operator's view: the record, never the bytes.
    let out = hsm_bridge_ok(&[
        "journal",
        "list",
        "--config",
        config.to_str().unwrap(),
        "--json",
    ]);
    let list: Vec<Value> = serde_json::from_str(&out).unwrap();
    let rec = list
        .iter()
        .find(|x| x["idempotency_key"] == "restart-1")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(rec["state"], "accepted");
    assert_eq!(rec["created_id"], first.version_id);
    assert_eq!(rec["caller"], "cckm");
    assert!(rec["body_bytes"].as_u64().unwrap() > 500, "{rec}");
    assert!(
        rec.get("body").is_none() && !out.contains("keyMaterial"),
        "{out}"
    );
    let token = rec["token"].as_str().unwrap();
    let shown = hsm_bridge_ok(&[
        "journal",
        "show",
        "--config",
        config.to_str().unwrap(),
        token,
    ]);
    assert!(
        shown.contains("accepted") && shown.contains(&first.version_id),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_postgres_import_once() {
    let Some(pg) = Postgres::start("replicas") else {
        return;
    };
    pg.create_db("replicas");
    let r = rig("replicas", 2, 150);
    let store = Store::Postgres(&pg, "replicas");
    // One attempt per call: a lost answer reaches the caller, who retries elsewhere.
    let a = Daemon::start(&config(&r, "replica-a", store, 1), &[]);
    let b = Daemon::start(&config(&r, "replica-b", store, 1), &[]);

    // The same key to both at the same moment.
    let req = request(&r, "k1", "replicas-same-moment", true);
    let (va, vb) = tokio::join!(import(&a, req.clone()), import(&b, req.clone()));
    let (va, vb) = (va.unwrap(), vb.unwrap());
    assert_eq!(va.version_id, vb.version_id);

    // A lost answer, then the caller alternating replicas on each retry.
    let path = format!("{}/keyVersions/import", r.emu.keys["k2"]);
    r.emu
        .fault(json!({"path_contains": path, "drop": true, "processed": true}))
        .await;
    let req2 = request(&r, "k2", "replicas-alternating", true);
    let e = import(&a, req2.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let on_b = import(&b, req2.clone()).await.unwrap();
    let on_a = import(&a, req2.clone()).await.unwrap();
    assert_eq!(on_a.version_id, on_b.version_id);

    let answers = BTreeMap::from([
        ("k1".to_string(), va.version_id),
        ("k2".to_string(), on_a.version_id),
    ]);
    let calls = exactly_once(&r.emu, &answers).await;
    assert_eq!(
        calls["k1"], 1,
        "one replica sent; the other returned its answer"
    );
    assert_eq!(
        calls["k2"], 2,
        "the lost one, and the same bytes again from the other replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_that_is_down_refuses_imports_and_nothing_else() {
    let Some(pg) = Postgres::start("down") else {
        return;
    };
    pg.create_db("down");
    let r = rig("down", 1, 150);
    let d = Daemon::start(&config(&r, "down", Store::Postgres(&pg, "down"), 3), &[]);
    pg.stop();
    let e = import(&d, request(&r, "k1", "down-1", true))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("journal") && e.message().contains("nothing was sent"),
        "{}",
        e.message()
    );
    let log = r.emu.requests().await;
    assert!(
        posts(&log, &r.emu.keys["k1"]).is_empty(),
        "nothing sent while the journal is down"
    );
    assert!(
        !log.iter()
            .any(|e| e["path"].as_str().unwrap().contains("wrappingKeys")),
        "nothing wrapped either: the vault's wrapping key was never fetched"
    );

    // WrapKey and listing do not need the journal.
    let mut c = d.client("cckm").await;
    let wrapped = c
        .wrap_key(proto::WrapKeyRequest {
            source_key: Some(proto::KeyRef {
                key: Some(Key::Label("test-aes-256".into())),
            }),
            wrapping_public_key_pem: std::fs::read_to_string(&softhsm().wk.wk4096.public_pem)
                .unwrap(),
            algorithm: proto::WrappingAlgorithm::RsaOaepAesSha256 as i32,
        })
        .await
        .expect("WrapKey while the journal is down");
    assert!(!wrapped.into_inner().wrapped_key_material.is_empty());
    c.list_source_keys(proto::ListSourceKeysRequest::default())
        .await
        .expect("listing while the journal is down");
    assert!(d.log_text().contains("journal is down"), "{}", d.log_text());

    pg.start_again();
    let v = until_answered(&d, &request(&r, "k1", "down-1", true))
        .await
        .0;
    assert_eq!(v.lifecycle_state, "ENABLED");
    assert!(d.log_text().contains("journal is back"), "{}", d.log_text());
    exactly_once(&r.emu, &BTreeMap::from([("k1".to_string(), v.version_id)])).await;
}
