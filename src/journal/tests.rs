//! The journal's rules on a real SQLite file: claims, leases, bodies, answers, purges.

use super::*;

fn journal(dir: &std::path::Path, lease_secs: u64, retention_hours: u64) -> Arc<Journal> {
    let cfg = JournalConfig {
        lease_secs,
        retention_hours,
        store: Some(JournalStore::Sqlite(dir.join("j.sqlite"))),
        ..JournalConfig::default()
    };
    Journal::new(&cfg).unwrap()
}

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

/// A second process's view of the same file: another owner.
fn other(dir: &std::path::Path, lease_secs: u64) -> Arc<Journal> {
    journal(dir, lease_secs, 24)
}

#[tokio::test]
async fn one_claim_one_body_then_the_recorded_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (journal(dir.path(), 15, 24), other(dir.path(), 15));
    let Claimed::Fresh(lease) = a.claim(&entry("t1", 1)).await.unwrap() else {
        panic!("fresh")
    };
    // another process, same key, while held: busy; another request: refused
    assert!(matches!(
        b.claim(&entry("t1", 1)).await.unwrap(),
        Claimed::Busy
    ));
    assert!(matches!(
        b.claim(&entry("t1", 2)).await.unwrap(),
        Claimed::Mismatch
    ));
    lease.prepare(b"body-1", &Made::default()).await.unwrap();
    // a body is committed once
    assert!(matches!(
        lease.prepare(b"body-2", &Made::default()).await,
        Err(JournalError::LeaseLost)
    ));
    lease
        .finish(&Outcome::Accepted {
            created_id: "v1".into(),
            answer: "{}".into(),
            opc_request_id: "r1".into(),
        })
        .await;
    match b.claim(&entry("t1", 1)).await.unwrap() {
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
        )
        .await
        .unwrap();
    assert_eq!(b.get("t1").await.unwrap().unwrap().state, State::Accepted);
}

#[tokio::test]
async fn a_lapsed_lease_is_taken_over_with_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (journal(dir.path(), 1, 24), other(dir.path(), 1));
    let Claimed::Fresh(lease) = a.claim(&entry("t2", 1)).await.unwrap() else {
        panic!()
    };
    lease.prepare(b"the-bytes", &Made::default()).await.unwrap();
    // the holder dies: no renewals, no release
    lease.heartbeat.abort();
    std::mem::forget(lease);
    assert!(matches!(
        b.claim(&entry("t2", 1)).await.unwrap(),
        Claimed::Busy
    ));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    match b.claim(&entry("t2", 1)).await.unwrap() {
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
    let Claimed::Fresh(lease) = j.claim(&entry("t3", 1)).await.unwrap() else {
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
    let Claimed::Fresh(lease) = j.claim(&entry("t4", 1)).await.unwrap() else {
        panic!()
    };
    lease.prepare(b"x", &Made::default()).await.unwrap();
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
        j.claim(&entry("t4", 1)).await.unwrap(),
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
