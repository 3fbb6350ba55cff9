//! The import journal's rules (src/journal/), each checked on SQLite and on a real
//! PostgreSQL server (tests/common/postgres.rs) alike: claims, leases, bodies, answers and
//! purges; records changed in the database; rows that cannot be read; and the schema's
//! versions (src/journal/schema.rs): a journal made before the schema had versions is
//! upgraded in place, one made by a newer hsm-bridge is refused and left as it is.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::postgres::{Postgres, USER};
use hsm_bridge::config::{JournalConfig, JournalStore};
use hsm_bridge::hsm::SharedRefusal;
use hsm_bridge::journal::{
    Claimed, Entry, Failure, Journal, JournalError, Made, Outcome, RecordKey, State, schema,
};
use zeroize::Zeroizing;

/// Where a test's journal is.
#[derive(Clone, Copy)]
enum Store<'a> {
    /// `j.sqlite` in this folder.
    Sqlite(&'a Path),
    /// This database of this server.
    Postgres(&'a Postgres, &'a str),
}

/// Runs `$body(store)` as two tests: on SQLite in a fresh folder, and on a fresh database
/// of a PostgreSQL server of its own, named `$server` (short: the server's socket path is
/// bounded).
macro_rules! on_both {
    ($($server:literal => $body:ident),* $(,)?) => {$(
        mod $body {
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                super::$body(Store::Sqlite(dir.path())).await;
            }

            #[tokio::test]
            async fn postgres() {
                let Some(pg) = Postgres::start($server) else {
                    return;
                };
                pg.create_db("journal");
                super::$body(Store::Postgres(&pg, "journal")).await;
            }
        }
    )*};
}

on_both!(
    "claim" => one_claim_one_body_then_the_recorded_answer,
    "lapsed" => a_lapsed_lease_is_taken_over_with_the_same_bytes,
    "purge" => nothing_sent_leaves_no_record_and_old_records_go,
    "changed" => records_changed_in_the_database_are_never_used,
    "unreadable" => rows_that_cannot_be_read_are_refused_naming_the_column,
    "legacy" => a_journal_from_before_schema_versions_is_upgraded_in_place,
    "legacy-mac" => a_journal_with_mac_from_before_schema_versions_keeps_its_records_verifiable,
    "newer" => a_journal_from_a_newer_hsm_bridge_is_refused_and_left_alone,
);

/// A journal on `store` with claims of `lease_secs` and records kept `retention_hours`.
fn journal(store: Store<'_>, lease_secs: u64, retention_hours: u64) -> Arc<Journal> {
    keyed(store, lease_secs, retention_hours, 1)
}

/// A journal whose records are authenticated by a key of `key_byte`s.
fn keyed(store: Store<'_>, lease_secs: u64, retention_hours: u64, key_byte: u8) -> Arc<Journal> {
    let (store, password_file) = match store {
        Store::Sqlite(dir) => (JournalStore::Sqlite(dir.join("j.sqlite")), None),
        Store::Postgres(pg, db) => {
            let url = format!("postgres://{USER}@127.0.0.1:{}/{db}", pg.port);
            let config = url.parse().unwrap();
            (
                JournalStore::Postgres(Box::new(config)),
                Some(pg.password_file.clone()),
            )
        }
    };
    let cfg = JournalConfig {
        lease_secs,
        retention_hours,
        password_file,
        store: Some(store),
        ..JournalConfig::default()
    };
    let j = Journal::new(&cfg).unwrap();
    let mut secret = hsm_bridge::hardening::Locked::new(32).unwrap();
    secret.as_mut_slice().fill(key_byte);
    j.set_key(RecordKey::File {
        secret,
        path: "test".into(),
    });
    j
}

/// A second process's view of the same journal: another owner.
fn other(store: Store<'_>, lease_secs: u64) -> Arc<Journal> {
    journal(store, lease_secs, 24)
}

/// Claims `e` on `j`.
async fn claim(j: &Arc<Journal>, e: Entry) -> Result<Claimed, JournalError> {
    j.claim(&j.ticket(e).await?).await
}

/// A body to commit.
fn body(b: &[u8]) -> Arc<Zeroizing<Vec<u8>>> {
    Arc::new(Zeroizing::new(b.to_vec()))
}

/// The request of an import whose retry token is `token`, its digest all `digest`s.
fn entry(token: &str, digest: u8) -> Entry {
    Entry {
        token: token.into(),
        caller: "c".into(),
        idempotency_key: Some("k".into()),
        operation: "ImportKeyVersion".into(),
        target: "ocid1.key.oc1..t".into(),
        endpoint: "https://localhost:1".into(),
        algorithm: "RSA_OAEP_AES_SHA256".into(),
        digest: [digest; 32],
    }
}

/// OCI's acceptance, creating `id`.
fn accepted(id: &str) -> Outcome {
    Outcome::Accepted {
        created_id: id.into(),
        answer: format!("{{\"id\":\"{id}\"}}"),
        opc_request_id: "r1".into(),
    }
}

/// Claims `e` afresh on `j`, commits `bytes` as its body, and records `outcome`.
async fn finished(j: &Arc<Journal>, e: Entry, bytes: &[u8], outcome: &Outcome) {
    let Claimed::Fresh(mut lease) = claim(j, e).await.unwrap() else {
        panic!("fresh")
    };
    lease.prepare(body(bytes), &Made::default()).await.unwrap();
    lease.finish(outcome).await;
}

/// A process that claims `e`, commits `bytes` and dies holding the claim: its runtime,
/// and with it the claim's renewals, ends, and nothing frees the claim.
fn dies_holding(store: Store<'_>, lease_secs: u64, e: Entry, bytes: &[u8]) {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let a = journal(store, lease_secs, 24);
                let Claimed::Fresh(mut lease) = claim(&a, e).await.unwrap() else {
                    panic!("fresh")
                };
                lease.prepare(body(bytes), &Made::default()).await.unwrap();
                std::mem::forget(lease);
            });
        })
        .join()
        .unwrap()
    });
}

/// SQL on the journal's database as a database writer runs it (not through the daemon):
/// the first column of the first row, as text ("" for none); for a statement that changes
/// rows, how many it changed.
fn sql(store: Store<'_>, sql: &str) -> String {
    match store {
        Store::Sqlite(dir) => {
            let c = rusqlite::Connection::open(dir.join("j.sqlite")).unwrap();
            let mut st = c.prepare(sql).unwrap();
            if st.column_count() == 0 {
                return st.execute([]).unwrap().to_string();
            }
            let mut rows = st.query([]).unwrap();
            match rows.next().unwrap() {
                None => String::new(),
                Some(r) => match r.get_ref(0).unwrap() {
                    rusqlite::types::ValueRef::Null => String::new(),
                    rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                    rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into(),
                    other => panic!("select text or integers: {other:?}"),
                },
            }
        }
        Store::Postgres(pg, db) => {
            let out = pg.sql(db, sql);
            let first = out.lines().next().unwrap_or("").to_string();
            // a statement's tag: "UPDATE 1", "INSERT 0 1", "DELETE 2"
            match first.split_once(' ') {
                Some(("UPDATE" | "INSERT" | "DELETE", n)) => {
                    n.rsplit(' ').next().unwrap_or("").to_string()
                }
                _ => first,
            }
        }
    }
}

/// A database writer changes exactly one record.
fn tamper(store: Store<'_>, statement: &str) {
    assert_eq!(sql(store, statement), "1", "{statement}");
}

/// Several statements of schema SQL, run as they are.
fn ddl(store: Store<'_>, statements: &str) {
    match store {
        Store::Sqlite(dir) => rusqlite::Connection::open(dir.join("j.sqlite"))
            .unwrap()
            .execute_batch(statements)
            .unwrap(),
        Store::Postgres(pg, db) => {
            pg.sql(db, statements);
        }
    }
}

/// A bytes literal in the store's SQL.
fn bytes_sql(store: Store<'_>, b: &[u8]) -> String {
    let hex = hsm_bridge::wrap::hex(b);
    match store {
        Store::Sqlite(_) => format!("X'{hex}'"),
        Store::Postgres(..) => format!("decode('{hex}', 'hex')"),
    }
}

/// The text of the refusal of a claim on a record that is not the daemon's.
fn forged(r: Result<Claimed, JournalError>) -> String {
    match r {
        Err(e @ JournalError::Forged { .. }) => e.to_string(),
        Err(e) => panic!("want a refused record, got {e}"),
        Ok(_) => panic!("want a refused record, got a claim"),
    }
}

async fn one_claim_one_body_then_the_recorded_answer(store: Store<'_>) {
    let (a, b) = (journal(store, 15, 24), other(store, 15));
    let Claimed::Fresh(mut lease) = claim(&a, entry("t1", 1)).await.unwrap() else {
        panic!("fresh")
    };
    // another process, same key, while held: busy; another request: refused
    assert!(matches!(
        claim(&b, entry("t1", 1)).await.unwrap(),
        Claimed::Busy
    ));
    assert!(matches!(
        claim(&b, entry("t1", 2)).await.unwrap(),
        Claimed::Mismatch
    ));
    lease
        .prepare(body(b"body-1"), &Made::default())
        .await
        .unwrap();
    // a body is committed once
    assert!(matches!(
        lease.prepare(body(b"body-2"), &Made::default()).await,
        Err(JournalError::LeaseLost)
    ));
    lease
        .finish(&Outcome::Accepted {
            created_id: "v1".into(),
            answer: "{}".into(),
            opc_request_id: "r1".into(),
        })
        .await;
    match claim(&b, entry("t1", 1)).await.unwrap() {
        Claimed::Accepted(r) => {
            assert_eq!(r.created_id.as_deref(), Some("v1"));
            assert_eq!(r.body_bytes, Some(6));
        }
        _ => panic!("accepted"),
    }
    // a late "unknown" from a stale holder never hides the accepted answer
    b.backend()
        .finish(
            "t1",
            &Outcome::Unknown {
                opc_request_id: None,
            },
            &[0; 32],
        )
        .await
        .unwrap();
    assert_eq!(b.get("t1").await.unwrap().unwrap().state, State::Accepted);
}

async fn a_lapsed_lease_is_taken_over_with_the_same_bytes(store: Store<'_>) {
    // the holder dies: no renewals, no release
    dies_holding(store, 1, entry("t2", 1), b"the-bytes");
    let b = other(store, 1);
    assert!(matches!(
        claim(&b, entry("t2", 1)).await.unwrap(),
        Claimed::Busy
    ));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    match claim(&b, entry("t2", 1)).await.unwrap() {
        Claimed::Resend(_, r) => assert_eq!(&r.body.unwrap()[..], b"the-bytes"),
        _ => panic!("resend"),
    }
    // and it is listed as unresolved meanwhile
    let open = b.unresolved().await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].token, "t2");
}

async fn nothing_sent_leaves_no_record_and_old_records_go(store: Store<'_>) {
    let j = journal(store, 15, 1);
    let Claimed::Fresh(lease) = claim(&j, entry("t3", 1)).await.unwrap() else {
        panic!()
    };
    drop(lease); // the wrap failed: freed, and the record without a body deleted
    for _ in 0..100 {
        if j.get("t3").await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(j.get("t3").await.unwrap().is_none());
    let Claimed::Fresh(mut lease) = claim(&j, entry("t4", 1)).await.unwrap() else {
        panic!()
    };
    lease.prepare(body(b"x"), &Made::default()).await.unwrap();
    lease
        .finish(&Outcome::Failed {
            failure: Failure {
                status: 400,
                code: "InvalidParameter".into(),
                message: "no".into(),
            },
            opc_request_id: "r".into(),
        })
        .await;
    assert!(matches!(
        claim(&j, entry("t4", 1)).await.unwrap(),
        Claimed::Failed(_)
    ));
    assert_eq!(j.purge().await.unwrap(), 0, "younger than an hour");
    assert_eq!(j.backend().purge(Duration::ZERO).await.unwrap(), 1);
    assert!(j.get("t4").await.unwrap().is_none());
    if let Store::Sqlite(dir) = store {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("j.sqlite"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

async fn records_changed_in_the_database_are_never_used(store: Store<'_>) {
    let j = journal(store, 1, 24);
    for t in ["body", "answer", "state", "nomac", "copied"] {
        let Claimed::Fresh(mut lease) = claim(&j, entry(t, 1)).await.unwrap() else {
            panic!()
        };
        lease
            .prepare(body(b"the-bytes"), &Made::default())
            .await
            .unwrap();
        if t == "body" {
            // sent, answer lost: a retry would re-send the body
            lease
                .finish(&Outcome::Unknown {
                    opc_request_id: None,
                })
                .await;
        } else {
            lease.finish(&accepted("v1")).await;
        }
    }
    // untouched, each is used
    assert!(matches!(
        claim(&j, entry("answer", 1)).await.unwrap(),
        Claimed::Accepted(_)
    ));
    tamper(
        store,
        &format!(
            "UPDATE hsm_bridge_imports SET body = {} WHERE token = 'body'",
            bytes_sql(store, b"other")
        ),
    );
    let e = forged(claim(&j, entry("body", 1)).await);
    assert!(e.contains("integrity") && e.contains("body"), "{e}");
    // the lease taken on it was given back, and the record kept as it is
    let e = forged(claim(&j, entry("body", 1)).await);
    assert!(e.contains("does not match"), "{e}");
    assert_eq!(j.get("body").await.unwrap().unwrap().body_bytes, Some(5));
    tamper(
        store,
        "UPDATE hsm_bridge_imports SET answer = '{\"id\":\"forged\"}' WHERE token = 'answer'",
    );
    forged(claim(&j, entry("answer", 1)).await);
    tamper(
        store,
        "UPDATE hsm_bridge_imports SET state = 'unknown' WHERE token = 'state'",
    );
    forged(claim(&j, entry("state", 1)).await);
    tamper(
        store,
        "UPDATE hsm_bridge_imports SET mac = NULL WHERE token = 'nomac'",
    );
    let e = forged(claim(&j, entry("nomac", 1)).await);
    assert!(e.contains("no MAC"), "{e}");
    // a valid record copied under another request's token
    tamper(
        store,
        "INSERT INTO hsm_bridge_imports SELECT 'planted', caller, idempotency_key, operation, target, endpoint, algorithm, request_digest, state, body, source_key_label, source_key_id_hex, mode, wrapping_key_sha256, created_id, answer, opc_request_id, failure_status, failure_code, failure_message, NULL, 0, created_at, updated_at, mac FROM hsm_bridge_imports WHERE token = 'copied'",
    );
    forged(claim(&j, entry("planted", 1)).await);
    // a record made with another key (another deployment's, or an attacker's guess)
    let stranger = keyed(store, 1, 24, 2);
    forged(claim(&stranger, entry("copied", 1)).await);
    // and one whose request does not match is still told apart from a forged one
    assert!(matches!(
        claim(&j, entry("copied", 2)).await.unwrap(),
        Claimed::Mismatch
    ));
    forged(claim(&stranger, entry("copied", 2)).await);
}

/// What reading the record `token` gives when its row cannot be read: the refusal's text.
async fn unreadable(j: &Arc<Journal>, token: &str) -> String {
    match j.get(token).await {
        Err(e @ JournalError::Forged { .. }) => e.to_string(),
        Err(e) => panic!("{token}: want a refused record, got {e}"),
        Ok(r) => panic!("{token}: want a refused record, got {r:?}"),
    }
}

async fn rows_that_cannot_be_read_are_refused_naming_the_column(store: Store<'_>) {
    let j = journal(store, 15, 24);
    let refusal = Outcome::Failed {
        failure: Failure {
            status: 400,
            code: "InvalidParameter".into(),
            message: "no".into(),
        },
        opc_request_id: "r".into(),
    };
    finished(&j, entry("state", 1), b"b", &accepted("v1")).await;
    finished(&j, entry("code", 1), b"b", &refusal).await;
    finished(&j, entry("typed", 1), b"b", &accepted("v2")).await;
    finished(&j, entry("fine", 1), b"b", &accepted("v3")).await;

    // A state no hsm-bridge writes: neither read as some state nor a panic, on reading,
    // listing or claiming; and a claim's lease on it is given back.
    tamper(
        store,
        "UPDATE hsm_bridge_imports SET state = 'bogus' WHERE token = 'state'",
    );
    let e = unreadable(&j, "state").await;
    assert!(
        e.contains("integrity check") && e.contains("column state holds \"bogus\""),
        "{e}"
    );
    let e = forged(claim(&j, entry("state", 1)).await);
    assert!(e.contains("column state"), "{e}");
    assert!(matches!(j.list(10).await, Err(JournalError::Forged { .. })));
    assert_eq!(
        sql(
            store,
            "SELECT count(*) FROM hsm_bridge_imports WHERE token = 'state' AND lease_owner IS NULL"
        ),
        "1"
    );
    tamper(
        store,
        "UPDATE hsm_bridge_imports SET state = 'accepted' WHERE token = 'state'",
    );

    // A refusal without its code: a NULL where every such record has a value.
    tamper(
        store,
        "UPDATE hsm_bridge_imports SET failure_code = NULL WHERE token = 'code'",
    );
    let e = unreadable(&j, "code").await;
    assert!(e.contains("column failure_code is NULL"), "{e}");

    // Meanwhile another record is read as it is.
    let r = j.get("fine").await.unwrap().unwrap();
    assert_eq!(r.created_id.as_deref(), Some("v3"));

    // A value of the wrong type: bytes where the answer's id is text (on PostgreSQL the
    // column's type changed, so every record has it).
    match store {
        Store::Sqlite(_) => tamper(
            store,
            "UPDATE hsm_bridge_imports SET created_id = X'00ff' WHERE token = 'typed'",
        ),
        Store::Postgres(..) => ddl(
            store,
            "ALTER TABLE hsm_bridge_imports ALTER COLUMN created_id TYPE bytea USING convert_to(created_id, 'UTF8')",
        ),
    }
    let e = unreadable(&j, "typed").await;
    assert!(e.contains("column created_id cannot be read"), "{e}");

    // The journal still answers: a new import is claimed.
    assert!(matches!(
        claim(&j, entry("new", 1)).await.unwrap(),
        Claimed::Fresh(_)
    ));
}

/// The journal's tables as hsm-bridge made them before the schema had versions, first
/// without the `mac` column and the table of refused PINs (added later, by hand, to both
/// backends): src/journal/sqlite.rs and src/journal/postgres.rs before schema.rs.
fn legacy_schema(store: Store<'_>, with_mac_and_pins: bool) -> String {
    let (bytes, integer) = match store {
        Store::Sqlite(_) => ("BLOB", "INTEGER"),
        Store::Postgres(..) => ("BYTEA", "BIGINT"),
    };
    let mac = if with_mac_and_pins {
        format!(",\n    mac {bytes}")
    } else {
        String::new()
    };
    let pins = if with_mac_and_pins {
        format!(
            "CREATE TABLE IF NOT EXISTS hsm_bridge_pin_refusals (
    token TEXT PRIMARY KEY,
    said TEXT NOT NULL,
    at {integer} NOT NULL
);"
        )
    } else {
        String::new()
    };
    format!(
        "
CREATE TABLE IF NOT EXISTS hsm_bridge_imports (
    token TEXT PRIMARY KEY,
    caller TEXT NOT NULL,
    idempotency_key TEXT,
    operation TEXT NOT NULL,
    target TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    request_digest {bytes} NOT NULL,
    state TEXT NOT NULL,
    body {bytes},
    source_key_label TEXT,
    source_key_id_hex TEXT,
    mode TEXT,
    wrapping_key_sha256 TEXT,
    created_id TEXT,
    answer TEXT,
    opc_request_id TEXT,
    failure_status {integer},
    failure_code TEXT,
    failure_message TEXT,
    lease_owner TEXT,
    lease_until {integer} NOT NULL DEFAULT 0,
    created_at {integer} NOT NULL,
    updated_at {integer} NOT NULL{mac}
);
CREATE INDEX IF NOT EXISTS hsm_bridge_imports_created ON hsm_bridge_imports (created_at);
{pins}
"
    )
}

/// A record as the code before schema versions wrote it, by SQL: sent, answer unknown.
fn legacy_record(store: Store<'_>, token: &str) {
    tamper(
        store,
        &format!(
            "INSERT INTO hsm_bridge_imports (token, caller, idempotency_key, operation, target, endpoint, algorithm, request_digest, state, body, source_key_label, created_at, updated_at)
             VALUES ('{token}', 'c', 'k', 'ImportKeyVersion', 'ocid1.key.oc1..t', 'https://localhost:1', 'RSA_OAEP_AES_SHA256', {}, 'unknown', {}, 'label', 1000, 2000)",
            bytes_sql(store, &[1; 32]),
            bytes_sql(store, b"old-bytes"),
        ),
    );
}

/// What the version table records: the newest version and how many migrations.
fn recorded_versions(store: Store<'_>) -> (String, String) {
    (
        sql(store, "SELECT max(version) FROM hsm_bridge_schema_version"),
        sql(store, "SELECT count(*) FROM hsm_bridge_schema_version"),
    )
}

/// Whether the records' table has a `mac` column.
fn has_mac_column(store: Store<'_>) -> bool {
    let q = match store {
        Store::Sqlite(_) => {
            "SELECT count(*) FROM pragma_table_info('hsm_bridge_imports') WHERE name = 'mac'"
        }
        Store::Postgres(..) => {
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'hsm_bridge_imports' AND column_name = 'mac'"
        }
    };
    sql(store, q) == "1"
}

/// Asks `j` for the refused PIN of `token` as the HSM layer does (a thread of its own).
async fn pin_refusal(j: &Arc<Journal>, token: &str) -> Result<Option<String>, String> {
    let (j, token) = (j.clone(), token.to_string());
    tokio::task::spawn_blocking(move || SharedRefusal::get(&*j, &token))
        .await
        .unwrap()
}

/// Records a refused PIN for `token` as the HSM layer does.
async fn set_pin_refusal(j: &Arc<Journal>, token: &str, said: &str) -> Result<(), String> {
    let (j, token, said) = (j.clone(), token.to_string(), said.to_string());
    tokio::task::spawn_blocking(move || SharedRefusal::set(&*j, &token, &said))
        .await
        .unwrap()
}

async fn a_journal_from_before_schema_versions_is_upgraded_in_place(store: Store<'_>) {
    ddl(store, &legacy_schema(store, false));
    legacy_record(store, "old");
    assert!(!has_mac_column(store));

    let j = journal(store, 15, 24);
    let r = j.get("old").await.unwrap().expect("the old record is kept");
    assert_eq!(r.state, State::Unknown);
    assert_eq!(r.caller, "c");
    assert_eq!(r.made.source_key_label.as_deref(), Some("label"));
    assert_eq!(r.digest, vec![1; 32]);
    assert_eq!(r.body_bytes, Some(9));
    assert_eq!((r.created_at_ms, r.updated_at_ms), (1000, 2000));
    assert_eq!(r.mac, None);
    assert_eq!(j.unresolved().await.unwrap().len(), 1);
    assert_eq!(
        recorded_versions(store),
        (schema::VERSION.to_string(), "1".to_string())
    );
    assert!(has_mac_column(store));
    // the table of refused PINs was made
    assert_eq!(pin_refusal(&j, "tok").await, Ok(None));
    set_pin_refusal(&j, "tok", "refused at 10:00")
        .await
        .unwrap();
    assert_eq!(
        pin_refusal(&j, "tok").await,
        Ok(Some("refused at 10:00".into()))
    );
    // a record without a MAC is refused when used, as before the upgrade
    let mut e = entry("old", 1);
    e.digest = [1; 32];
    let why = forged(claim(&j, e).await);
    assert!(why.contains("no MAC"), "{why}");
    // new records work, and opening it again migrates nothing more
    finished(&j, entry("new", 2), b"b", &accepted("v1")).await;
    let again = other(store, 15);
    assert!(matches!(
        claim(&again, entry("new", 2)).await.unwrap(),
        Claimed::Accepted(_)
    ));
    assert_eq!(
        recorded_versions(store),
        (schema::VERSION.to_string(), "1".to_string())
    );
}

async fn a_journal_with_mac_from_before_schema_versions_keeps_its_records_verifiable(
    store: Store<'_>,
) {
    ddl(store, &legacy_schema(store, true));
    // records written with their MAC, then the version table gone: what the code before
    // schema versions left
    let j = journal(store, 15, 24);
    finished(&j, entry("t", 1), b"the-bytes", &accepted("v1")).await;
    set_pin_refusal(&j, "tok", "refused").await.unwrap();
    drop(j);
    ddl(store, "DROP TABLE hsm_bridge_schema_version");

    let j = journal(store, 15, 24);
    match claim(&j, entry("t", 1)).await.unwrap() {
        Claimed::Accepted(r) => assert_eq!(r.created_id.as_deref(), Some("v1")),
        _ => panic!("accepted"),
    }
    assert_eq!(pin_refusal(&j, "tok").await, Ok(Some("refused".into())));
    assert_eq!(
        recorded_versions(store),
        (schema::VERSION.to_string(), "1".to_string())
    );
}

async fn a_journal_from_a_newer_hsm_bridge_is_refused_and_left_alone(store: Store<'_>) {
    let newer = schema::VERSION + 1;
    ddl(store, &legacy_schema(store, false));
    ddl(
        store,
        &format!(
            "CREATE TABLE hsm_bridge_schema_version (version BIGINT PRIMARY KEY); INSERT INTO hsm_bridge_schema_version VALUES ({newer});"
        ),
    );
    legacy_record(store, "old");

    let j = journal(store, 15, 24);
    let why = match j.get("old").await {
        Err(e @ JournalError::Unavailable(_)) => e.to_string(),
        other => panic!("want the journal refused, got {other:?}"),
    };
    assert!(
        why.contains(&format!("schema version {newer}"))
            && why.contains(&format!("version {}", schema::VERSION))
            && why.contains("left as it is"),
        "{why}"
    );
    assert!(matches!(
        claim(&j, entry("t", 1)).await,
        Err(JournalError::Unavailable(_))
    ));
    assert!(pin_refusal(&j, "tok").await.is_err());
    // untouched: no column added, no table made, no version recorded, no record written
    assert!(!has_mac_column(store));
    assert_eq!(
        recorded_versions(store),
        (newer.to_string(), "1".to_string())
    );
    assert_eq!(sql(store, "SELECT count(*) FROM hsm_bridge_imports"), "1");
    let pins = match store {
        Store::Sqlite(_) => {
            "SELECT count(*) FROM sqlite_master WHERE name = 'hsm_bridge_pin_refusals'"
        }
        Store::Postgres(..) => {
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'hsm_bridge_pin_refusals'"
        }
    };
    assert_eq!(sql(store, pins), "0");
}
