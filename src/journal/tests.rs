//! The journal's rules on a real SQLite file: claims, leases, bodies, answers, purges.

use super::*;

fn journal(dir: &std::path::Path, lease_secs: u64, retention_hours: u64) -> Arc<Journal> {
    keyed(dir, lease_secs, retention_hours, 1)
}

/// A journal whose records are authenticated by a key of `key_byte`s.
fn keyed(
    dir: &std::path::Path,
    lease_secs: u64,
    retention_hours: u64,
    key_byte: u8,
) -> Arc<Journal> {
    let cfg = JournalConfig {
        lease_secs,
        retention_hours,
        store: Some(JournalStore::Sqlite(dir.join("j.sqlite"))),
        ..JournalConfig::default()
    };
    let j = Journal::new(&cfg).unwrap();
    let mut secret = crate::hardening::Locked::new(32).unwrap();
    secret.as_mut_slice().fill(key_byte);
    j.set_key(RecordKey::File {
        secret,
        path: "test".into(),
    });
    j
}

/// Claims `e` on `j`.
async fn claim(j: &Arc<Journal>, e: Entry) -> Result<Claimed, JournalError> {
    j.claim(&j.ticket(e).await?).await
}

fn body(b: &[u8]) -> Arc<Zeroizing<Vec<u8>>> {
    Arc::new(Zeroizing::new(b.to_vec()))
}

pub(super) fn entry(token: &str, digest: u8) -> Entry {
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

/// A second process's view of the same file: another owner.
fn other(dir: &std::path::Path, lease_secs: u64) -> Arc<Journal> {
    journal(dir, lease_secs, 24)
}

#[tokio::test]
async fn one_claim_one_body_then_the_recorded_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (journal(dir.path(), 15, 24), other(dir.path(), 15));
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
    b.backend
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

#[tokio::test]
async fn a_lapsed_lease_is_taken_over_with_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (journal(dir.path(), 1, 24), other(dir.path(), 1));
    let Claimed::Fresh(mut lease) = claim(&a, entry("t2", 1)).await.unwrap() else {
        panic!()
    };
    lease
        .prepare(body(b"the-bytes"), &Made::default())
        .await
        .unwrap();
    // the holder dies: no renewals, no release
    lease.heartbeat.abort();
    std::mem::forget(lease);
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

#[tokio::test]
async fn nothing_sent_leaves_no_record_and_old_records_go() {
    let dir = tempfile::tempdir().unwrap();
    let j = journal(dir.path(), 15, 1);
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
    assert_eq!(j.backend.purge(Duration::ZERO).await.unwrap(), 1);
    assert!(j.get("t4").await.unwrap().is_none());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("j.sqlite"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// What a database writer does to a record, by SQL on the file.
fn tamper(dir: &std::path::Path, sql: &str) {
    let c = rusqlite::Connection::open(dir.join("j.sqlite")).unwrap();
    assert_eq!(c.execute(sql, []).unwrap(), 1, "{sql}");
}

fn forged(r: Result<Claimed, JournalError>) -> String {
    match r {
        Err(e @ JournalError::Forged { .. }) => e.to_string(),
        Err(e) => panic!("want a refused record, got {e}"),
        Ok(_) => panic!("want a refused record, got a claim"),
    }
}

#[tokio::test]
async fn records_changed_in_the_database_are_never_used() {
    let dir = tempfile::tempdir().unwrap();
    let j = journal(dir.path(), 1, 24);
    let accepted = Outcome::Accepted {
        created_id: "v1".into(),
        answer: "{\"id\":\"v1\"}".into(),
        opc_request_id: "r1".into(),
    };
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
            lease.finish(&accepted).await;
        }
    }
    // untouched, each is used
    assert!(matches!(
        claim(&j, entry("answer", 1)).await.unwrap(),
        Claimed::Accepted(_)
    ));
    tamper(
        dir.path(),
        "UPDATE hsm_bridge_imports SET body = x'6f74686572' WHERE token = 'body'",
    );
    let e = forged(claim(&j, entry("body", 1)).await);
    assert!(e.contains("integrity") && e.contains("body"), "{e}");
    // the lease taken on it was given back, and the record kept as it is
    let e = forged(claim(&j, entry("body", 1)).await);
    assert!(e.contains("does not match"), "{e}");
    assert_eq!(j.get("body").await.unwrap().unwrap().body_bytes, Some(5));
    tamper(
        dir.path(),
        "UPDATE hsm_bridge_imports SET answer = '{\"id\":\"forged\"}' WHERE token = 'answer'",
    );
    forged(claim(&j, entry("answer", 1)).await);
    tamper(
        dir.path(),
        "UPDATE hsm_bridge_imports SET state = 'unknown' WHERE token = 'state'",
    );
    forged(claim(&j, entry("state", 1)).await);
    tamper(
        dir.path(),
        "UPDATE hsm_bridge_imports SET mac = NULL WHERE token = 'nomac'",
    );
    let e = forged(claim(&j, entry("nomac", 1)).await);
    assert!(e.contains("no MAC"), "{e}");
    // a valid record copied under another request's token
    tamper(
        dir.path(),
        "INSERT INTO hsm_bridge_imports SELECT 'planted', caller, idempotency_key, operation, target, endpoint, algorithm, request_digest, state, body, source_key_label, source_key_id_hex, mode, wrapping_key_sha256, created_id, answer, opc_request_id, failure_status, failure_code, failure_message, NULL, 0, created_at, updated_at, mac FROM hsm_bridge_imports WHERE token = 'copied'",
    );
    forged(claim(&j, entry("planted", 1)).await);
    // a record made with another key (another deployment's, or an attacker's guess)
    let stranger = keyed(dir.path(), 1, 24, 2);
    forged(claim(&stranger, entry("copied", 1)).await);
    // and one whose request does not match is still told apart from a forged one
    assert!(matches!(
        claim(&j, entry("copied", 2)).await.unwrap(),
        Claimed::Mismatch
    ));
    forged(claim(&stranger, entry("copied", 2)).await);
}
