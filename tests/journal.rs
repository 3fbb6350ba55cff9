//! Exactly once across crashes, restarts and replicas: the real daemon on the SoftHSM
//! fixture, the real `oci-kms-emulator` (its request log says what OCI received), and the
//! import journal on SQLite and on a real PostgreSQL server started for the test
//! (tests/common/postgres.rs). The daemon is killed with SIGKILL at each point where an
//! answer can be lost, restarted, and the caller retries until it is answered.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, audit_records, daemon_config, sample, until_answered_by};
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
    until_answered_by(&format!("{req:?}"), || import(d, req.clone())).await
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
            ..Default::default()
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

/// SQL on the journal as a database writer runs it (not through the daemon): SQLite on
/// the file, PostgreSQL through the server. Rows as `|`-separated text.
fn db_sql(store: Store<'_>, sqlite_file: &std::path::Path, sql: &str) -> Vec<String> {
    match store {
        Store::Sqlite => {
            let c = rusqlite::Connection::open(sqlite_file).unwrap();
            let mut st = c.prepare(sql).unwrap();
            let n = st.column_count();
            st.query_map([], |r| {
                Ok((0..n)
                    .map(|i| match r.get_ref(i).unwrap() {
                        rusqlite::types::ValueRef::Null => String::new(),
                        rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                        rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into(),
                        other => panic!("select text or hex(): {other:?}"),
                    })
                    .collect::<Vec<_>>()
                    .join("|"))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
        }
        Store::Postgres(pg, db) => {
            let out = pg.sql(db, sql);
            out.lines().map(str::to_string).collect()
        }
    }
}

/// A bytes literal in the store's SQL.
fn bytes_sql(store: Store<'_>, b: &[u8]) -> String {
    let hex = hsm_bridge::wrap::hex(b);
    match store {
        Store::Sqlite => format!("X'{hex}'"),
        Store::Postgres(..) => format!("decode('{hex}', 'hex')"),
    }
}

/// A bytes column as hex text in the store's SQL.
fn hex_sql(store: Store<'_>, column: &str) -> String {
    match store {
        Store::Sqlite => format!("lower(hex({column}))"),
        Store::Postgres(..) => format!("encode({column}, 'hex')"),
    }
}

/// The retry token and request digest of cckm's ImportKeyVersion of `test-aes-256`, as
/// anyone can compute them from the source (src/export/mod.rs `describe`,
/// src/oci/kms/rules.rs `retry_token`): nothing secret goes into either.
fn derive(endpoint: &str, key_ocid: &str, idem: &str) -> (String, [u8; 32]) {
    let scope = format!("cckm ImportKeyVersion {endpoint} {key_ocid}");
    let mut d = openssl::sha::Sha256::new();
    for part in [
        scope.as_str(),
        "label:test-aes-256",
        "RSA_OAEP_AES_SHA256",
        "",
    ] {
        d.update(part.as_bytes());
        d.update(b"\0");
    }
    let mut t = openssl::sha::Sha256::new();
    t.update(b"hsm-bridge retry token v1\0");
    t.update(scope.as_bytes());
    t.update(b"\0");
    t.update(idem.as_bytes());
    (hsm_bridge::wrap::hex(&t.finish()[..16]), d.finish())
}

/// OCI's body for key material `key` wrapped for the vault's public key, made as anyone
/// with the public key can (RSA-OAEP-SHA256 of a fresh AES-256 key, RFC 5649 of `key`).
fn attackers_body(
    genuine_body: &[u8],
    wrapping_public_pem: &std::path::Path,
    key: &[u8],
) -> Vec<u8> {
    let public =
        openssl::pkey::PKey::public_key_from_pem(&std::fs::read(wrapping_public_pem).unwrap())
            .unwrap();
    let mut k = [0u8; 32];
    openssl::rand::rand_bytes(&mut k).unwrap();
    let mut material =
        hsm_bridge::wrap::soft::oaep_encrypt(&public, hsm_bridge::wrap::soft::OaepHash::Sha256, &k)
            .unwrap();
    material.extend(hsm_bridge::wrap::soft::kwp_wrap(&k, key).unwrap());
    let mut body: Value = serde_json::from_slice(genuine_body).unwrap();
    body["wrappedImportKey"]["keyMaterial"] =
        Value::String(openssl::base64::encode_block(&material));
    serde_json::to_vec(&body).unwrap()
}

/// Whoever can write the journal's database plants a record for an import cckm has not
/// made yet (state `unknown`, its body wrapping the attacker's own AES key for the vault),
/// and edits records cckm made (the body and state of one, the answer of another, a state
/// no hsm-bridge writes). None of them is ever sent or replayed: each call is refused with
/// the reason, audited, counted and logged, and OCI receives nothing but cckm's own import.
async fn forged_records(name: &str, store: Store<'_>) {
    let fx = softhsm();
    let dir = fx.dir.join(format!("journal-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let identity = api_identity(&dir, "api");
    let emu = Emulator::start_with_wrapping_key(
        &dir,
        &[identity.key.public_pem.as_path()],
        &["k1=AES-256", "k2=AES-256"],
        150,
        &fx.wk.wk4096.private_pem,
    );
    let r = Rig { emu, identity, dir };
    let config = config(&r, name, store, 3);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "[journal]",
            "[metrics]\nlisten = \"127.0.0.1:0\"\n\n[journal]",
        ),
    )
    .unwrap();
    let audit = fx.dir.join(format!("audit-{name}.jsonl"));
    let sqlite = fx.dir.join(format!("journal-daemon-{name}.sqlite"));
    let d = Daemon::start(&config, &[]);
    let sql = |q: &str| db_sql(store, &sqlite, q);

    // cckm's own imports: one whose answer is lost (left `unknown`), one accepted.
    let k1 = r.emu.keys["k1"].clone();
    let k2 = r.emu.keys["k2"].clone();
    let genuine = import(&d, request(&r, "k1", "genuine", false))
        .await
        .unwrap();
    let path2 = format!("{k2}/keyVersions/import");
    r.emu
        .fault(json!({"path_contains": path2, "drop": true, "count": 3}))
        .await;
    let lost = import(&d, request(&r, "k2", "lost", false))
        .await
        .unwrap_err();
    assert_eq!(lost.code(), Code::Unavailable, "{lost:?}");

    // The attacker reads cckm's record, and derives the token and digest of cckm's next
    // import exactly as the daemon does.
    let row = sql(&format!(
        "SELECT token, endpoint, {}, {} FROM hsm_bridge_imports WHERE idempotency_key = 'genuine'",
        hex_sql(store, "request_digest"),
        hex_sql(store, "body")
    ));
    let cols: Vec<&str> = row[0].split('|').collect();
    let (endpoint, genuine_body) = (cols[1], hsm_bridge::wrap::unhex(cols[3]).unwrap());
    assert_eq!(
        derive(endpoint, &k1, "genuine"),
        (
            cols[0].to_string(),
            hsm_bridge::wrap::unhex(cols[2])
                .unwrap()
                .try_into()
                .unwrap()
        ),
        "the attacker's derivation is the daemon's"
    );
    let mut attackers_key = [0u8; 32];
    openssl::rand::rand_bytes(&mut attackers_key).unwrap();
    let forged = attackers_body(&genuine_body, &fx.wk.wk4096.public_pem, &attackers_key);
    let (token, digest) = derive(endpoint, &k1, "next");
    sql(&format!(
        "INSERT INTO hsm_bridge_imports (token, caller, idempotency_key, operation, target, endpoint, algorithm, request_digest, state, body, lease_until, created_at, updated_at)
         SELECT '{token}', caller, 'next', operation, target, endpoint, algorithm, {}, 'unknown', {}, 0, created_at, updated_at
         FROM hsm_bridge_imports WHERE idempotency_key = 'genuine'",
        bytes_sql(store, &digest),
        bytes_sql(store, &forged)
    ));
    let refused = |e: Result<proto::KeyVersion, tonic::Status>, what: &str| {
        let e = e.expect_err(what);
        assert_eq!(e.code(), Code::DataLoss, "{what}: {e:?}");
        assert!(
            e.message().contains("integrity check") && e.message().contains("nothing was sent"),
            "{what}: {}",
            e.message()
        );
    };
    // cckm's first import with that key: the planted record is refused, not sent.
    refused(
        import(&d, request(&r, "k1", "next", false)).await,
        "planted, no MAC",
    );
    // The same with a real MAC of the daemon's, copied from another record.
    sql(&format!(
        "UPDATE hsm_bridge_imports SET mac = (SELECT mac FROM hsm_bridge_imports WHERE idempotency_key = 'genuine') WHERE token = '{token}'"
    ));
    refused(
        import(&d, request(&r, "k1", "next", false)).await,
        "planted, a copied MAC",
    );
    // cckm's lost import, its body swapped for the attacker's: not re-sent.
    sql(&format!(
        "UPDATE hsm_bridge_imports SET body = {} WHERE idempotency_key = 'lost'",
        bytes_sql(store, &forged)
    ));
    refused(
        import(&d, request(&r, "k2", "lost", false)).await,
        "edited body",
    );
    // cckm's accepted import, its recorded answer changed: not replayed.
    sql(
        "UPDATE hsm_bridge_imports SET answer = replace(answer, 'ocid1.keyversion.', 'ocid1.keyversion.forged') WHERE idempotency_key = 'genuine'",
    );
    refused(
        import(&d, request(&r, "k1", "genuine", false)).await,
        "edited answer",
    );
    // ... or its state, so that a retry would re-send it.
    sql(
        "UPDATE hsm_bridge_imports SET state = 'unknown', answer = NULL WHERE idempotency_key = 'genuine'",
    );
    refused(
        import(&d, request(&r, "k1", "genuine", false)).await,
        "edited state",
    );
    // ... or to a state no hsm-bridge writes: the row is read as no state at all.
    sql("UPDATE hsm_bridge_imports SET state = 'resend' WHERE idempotency_key = 'genuine'");
    refused(
        import(&d, request(&r, "k1", "genuine", false)).await,
        "a state no hsm-bridge writes",
    );

    // OCI received cckm's import of k1 once, and the three lost attempts at k2: never the
    // attacker's key, never a second k1 version.
    let log = r.emu.requests().await;
    assert_eq!(posts(&log, &k1).len(), 1, "{log:?}");
    assert_eq!(posts(&log, &k2).len(), 3, "{log:?}");
    let versions = r.emu.key(&k1).await["versionIds"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert_eq!(versions[1], genuine.version_id);
    assert_eq!(
        r.emu.material(&genuine.version_id).await,
        fx.aes["test-aes-256"]
    );

    // Each refusal audited with its reason, counted, and logged.
    let records = audit_records(&audit);
    let forged_audits: Vec<_> = records
        .iter()
        .filter(|a| a["code"] == "DATA_LOSS")
        .collect();
    assert_eq!(forged_audits.len(), 6, "{records:?}");
    for a in &forged_audits {
        assert_eq!(a["outcome"], "refused", "{a}");
        assert!(
            a["reason"].as_str().unwrap().contains("integrity check"),
            "{a}"
        );
    }
    let metrics = d.scrape_metrics().await;
    assert_eq!(
        sample(&metrics, "hsm_bridge_journal_forged_records_total"),
        6.0,
        "{metrics}"
    );
    let log = d.log_text();
    assert!(
        log.contains(&token) && log.contains("failed its integrity check"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_writer_cannot_choose_what_is_sent_sqlite() {
    forged_records("forged-sqlite", Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_writer_cannot_choose_what_is_sent_postgres() {
    let Some(pg) = Postgres::start("forged") else {
        return;
    };
    pg.create_db("forged");
    forged_records("forged-pg", Store::Postgres(&pg, "forged")).await;
}

/// A fake PostgreSQL server on 127.0.0.1 that says "no TLS" to a TLS request and asks for
/// the password in clear text: what a man in the middle, or a local process on the
/// server's port, does. It keeps every byte it receives.
struct FakePostgres {
    port: u16,
    received: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FakePostgres {
    async fn start() -> FakePostgres {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (kept, counted) = (received.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut c, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let kept = kept.clone();
                tokio::spawn(async move {
                    let mut all = Vec::new();
                    let mut buf = [0u8; 4096];
                    let mut asked = false;
                    while let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await
                    {
                        if n == 0 {
                            break;
                        }
                        all.extend_from_slice(&buf[..n]);
                        kept.lock().unwrap().extend_from_slice(&buf[..n]);
                        // SSLRequest: length 8, code 80877103
                        if all.len() == 8 && all[4..8] == 80877103u32.to_be_bytes() {
                            let _ = c.write_all(b"N").await;
                            all.clear();
                        } else if !asked && all.len() >= 8 {
                            // the startup message: ask for the password in clear text
                            asked = true;
                            let _ = c.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await;
                        }
                    }
                });
            }
        });
        FakePostgres {
            port,
            received,
            connections,
        }
    }

    /// Everything received, after checking that `password` is not in it.
    fn never_got(&self, password: &str) -> Vec<u8> {
        let got = self.received.lock().unwrap().clone();
        assert!(
            !got.windows(password.len())
                .any(|w| w == password.as_bytes()),
            "the fake server received the password"
        );
        got
    }

    /// Waits until the daemon has connected and had time to send what it would.
    async fn contacted(&self) {
        let end = Instant::now() + Duration::from_secs(30);
        while self.connections.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(
                Instant::now() < end,
                "the daemon never connected to the journal"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A daemon config whose journal is the fake server, with `journal_extra` lines.
fn fake_journal_config(
    name: &str,
    port: u16,
    url_query: &str,
    journal_extra: &str,
) -> (PathBuf, String) {
    let fx = softhsm();
    let (config, _) = daemon_config(fx, name, "", None);
    let password = format!("journal-secret-{name}-8263");
    let pw_file = fx.dir.join(format!("{name}.pgpass"));
    write_private(&pw_file, format!("{password}\n").as_bytes());
    let text = std::fs::read_to_string(&config).unwrap();
    let sqlite = format!("url = \"sqlite:./journal-daemon-{name}.sqlite\"\n");
    assert!(text.contains(&sqlite), "{text}");
    let journal = format!(
        "url = \"postgres://hsm_bridge@127.0.0.1:{port}/journal{url_query}\"\npassword_file = \"{}\"\n{journal_extra}",
        pw_file.display()
    );
    std::fs::write(&config, text.replace(&sqlite, &journal)).unwrap();
    (config, password)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_that_refuses_tls_never_receives_the_password() {
    let ca = format!(
        "ca_file = \"{}\"\n",
        common::daemon::certs().join("ca.pem").display()
    );
    // With journal.ca_file: TLS is required, whatever the server answers.
    let fake = FakePostgres::start().await;
    let (config, password) = fake_journal_config("pg-no-tls", fake.port, "", &ca);
    let d = Daemon::start(&config, &[]);
    fake.contacted().await;
    let got = fake.never_got(&password);
    assert!(
        !got.is_empty()
            && got.len() % 8 == 0
            && got.chunks(8).all(|c| c == [0, 0, 0, 8, 4, 210, 22, 47]),
        "only TLS requests, never a startup message: {got:?}"
    );
    let log = d.log_text();
    assert!(
        log.contains("journal is down") && log.contains("TLS"),
        "{log}"
    );
    drop(d);

    // Without TLS (loopback, no CA): the password goes to SCRAM only, never in clear text.
    let fake = FakePostgres::start().await;
    let (config, password) = fake_journal_config("pg-clear-text", fake.port, "", "");
    let d = Daemon::start(&config, &[]);
    fake.contacted().await;
    let got = fake.never_got(&password);
    assert!(!got.is_empty(), "the startup message arrived");
    let log = d.log_text();
    assert!(
        log.contains("in clear text") && log.contains("SCRAM"),
        "{log}"
    );
    drop(d);

    // A URL that would let TLS be turned off is refused with the reason.
    let (config, _) = fake_journal_config("pg-prefer", fake.port, "?sslmode=prefer", &ca);
    let line = hsm_bridge_refuses(&["serve", "--config", config.to_str().unwrap()]);
    assert!(line.contains("sslmode=prefer"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_journal_over_verified_tls() {
    let certs = common::daemon::certs();
    let Some(pg) = Postgres::start_tls("tls", &certs.join("server.pem"), &certs.join("server.key"))
    else {
        return;
    };
    pg.create_db("tls");
    let r = rig("pg-tls", 1, 150);
    let config = config(&r, "pg-tls", Store::Postgres(&pg, "tls"), 3);
    let text = std::fs::read_to_string(&config).unwrap();
    let with_ca = |ca: &str| {
        text.replace(
            "lease_secs = 2\n",
            &format!(
                "lease_secs = 2\nca_file = \"{}\"\n",
                certs.join(ca).display()
            ),
        )
    };
    // A CA that did not issue the server's certificate: nothing is sent.
    std::fs::write(&config, with_ca("rogue-ca.pem")).unwrap();
    let d = Daemon::start(&config, &[]);
    let e = import(&d, request(&r, "k1", "tls-1", false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("certificate"), "{}", e.message());
    assert!(posts(&r.emu.requests().await, &r.emu.keys["k1"]).is_empty());
    drop(d);
    // The server's own CA: the import goes through, over TLS.
    std::fs::write(&config, with_ca("ca.pem")).unwrap();
    let d = Daemon::start(&config, &[]);
    let v = import(&d, request(&r, "k1", "tls-1", false)).await.unwrap();
    exactly_once(&r.emu, &BTreeMap::from([("k1".to_string(), v.version_id)])).await;
    let ssl = pg.sql(
        "tls",
        "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'hsm-bridge'",
    );
    assert_eq!(ssl, "t", "the daemon's connection is TLS");
}
