//! The gRPC daemon, black-box: the real `hsm-bridge serve` process, real mutual TLS on
//! 127.0.0.1, a real SoftHSM2 token. Wrapped keys are opened with the openssl command line.

mod common;

use std::time::{Duration, Instant};

use common::daemon::{Daemon, audit_records, certs, daemon_config};
use common::*;
use hsm_bridge::proto::key_source_bridge_client::KeySourceBridgeClient;
use hsm_bridge::proto::{self, WrapKeyRequest, key_ref::Key};
use tonic::Code;
use tonic::transport::Channel;

/// The timing-sensitive tests (overload, deadline, SIGTERM) run alone; the others share.
static SCHEDULE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

async fn exclusive() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    SCHEDULE.write().await
}

async fn shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    SCHEDULE.read().await
}

fn by_label(l: &str) -> Option<proto::KeyRef> {
    Some(proto::KeyRef {
        key: Some(Key::Label(l.into())),
    })
}

fn by_id(id: &str) -> Option<proto::KeyRef> {
    Some(proto::KeyRef {
        key: Some(Key::IdHex(id.into())),
    })
}

fn pem(kp: &KeyPair) -> String {
    std::fs::read_to_string(&kp.public_pem).unwrap()
}

fn wrap_req(
    key: Option<proto::KeyRef>,
    wk: &KeyPair,
    alg: proto::WrappingAlgorithm,
) -> WrapKeyRequest {
    WrapKeyRequest {
        source_key: key,
        wrapping_public_key_pem: pem(wk),
        algorithm: alg as i32,
        ..Default::default()
    }
}

fn with_request_id<T>(body: T, id: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.metadata_mut().insert("x-request-id", id.parse().unwrap());
    r
}

/// WrapKey as `c`, with `x-request-id` when given.
async fn wrap(
    c: &mut KeySourceBridgeClient<Channel>,
    key: Option<proto::KeyRef>,
    wk: &KeyPair,
    alg: proto::WrappingAlgorithm,
    request_id: Option<&str>,
) -> Result<proto::WrapKeyResponse, tonic::Status> {
    let body = wrap_req(key, wk, alg);
    let req = match request_id {
        Some(id) => with_request_id(body, id),
        None => tonic::Request::new(body),
    };
    c.wrap_key(req).await.map(tonic::Response::into_inner)
}

use common::open_material as open;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_caller_wraps_and_every_attempt_is_audited() {
    let _shared = shared().await;
    let fx = softhsm();
    let (config, audit) = daemon_config(fx, "mtls", "caller_wrapping_keys = \"any\"", None);
    let d = Daemon::start(&config, &[]);
    assert!(
        d.log_text()
            .contains("policy.caller_wrapping_keys = \"any\": any caller"),
        "the daemon warns that callers choose the wrapping key: {}",
        d.log_text()
    );
    let wk = &fx.wk.wk4096;

    // An AES key and an RSA key (by id) for the full caller: opened by openssl.
    let mut cckm = d.client("cckm").await;
    let r = wrap(
        &mut cckm,
        by_label("test-aes-256"),
        wk,
        proto::WrappingAlgorithm::Unspecified,
        Some("aes-ok"),
    )
    .await
    .unwrap();
    assert_eq!(
        r.algorithm,
        proto::WrappingAlgorithm::RsaOaepAesSha256 as i32
    );
    assert_eq!(
        r.shape,
        Some(proto::KeyShape {
            algorithm: "AES".into(),
            length: 32
        })
    );
    assert_eq!(r.mode, "hybrid");
    assert_eq!(
        open(&r.wrapped_key_material, wk, 512, "RSA_OAEP_AES_SHA256"),
        fx.aes["test-aes-256"]
    );
    let r = wrap(
        &mut cckm,
        by_id("2002"),
        wk,
        proto::WrappingAlgorithm::RsaOaepAesSha256,
        None,
    )
    .await
    .unwrap();
    let der = open(&r.wrapped_key_material, wk, 512, "RSA_OAEP_AES_SHA256");
    assert_eq!(
        pkcs8_modulus(&der),
        token_modulus(|a| p11(fx, a), "test-rsa-3072")
    );

    // The limited caller: its own keys yes, others no, by label or by id.
    let mut limited = d.client("limited").await;
    let ok = wrap(
        &mut limited,
        by_label("test-aes-128"),
        wk,
        proto::WrappingAlgorithm::RsaOaepAesSha256,
        Some("limited-ok"),
    )
    .await
    .unwrap();
    assert_eq!(
        open(&ok.wrapped_key_material, wk, 512, "RSA_OAEP_AES_SHA256"),
        fx.aes["test-aes-128"]
    );
    let e = wrap(
        &mut limited,
        by_label("test-rsa-3072"),
        wk,
        proto::WrappingAlgorithm::RsaOaepAesSha256,
        Some("limited-no"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("test-rsa-3072") && e.message().contains("test-aes-*"),
        "{}",
        e.message()
    );
    let e = wrap(
        &mut limited,
        by_id("2002"),
        wk,
        proto::WrappingAlgorithm::RsaOaepAesSha256,
        Some("limited-by-id"),
    )
    .await
    .unwrap_err();
    // By id, the key's real label decides, and the refusal names no key: an id the caller
    // may not use and an id nobody has get the same answer (probing ids learns nothing).
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(e.message(), "no key you may use has CKA_ID 2002");
    let missing = wrap(
        &mut limited,
        by_id("7777"),
        wk,
        proto::WrappingAlgorithm::RsaOaepAesSha256,
        Some("limited-missing-id"),
    )
    .await
    .unwrap_err();
    assert_eq!(missing.code(), e.code());
    assert_eq!(
        missing.message().replace("7777", "2002"),
        e.message(),
        "a missing id and a forbidden one answer alike"
    );

    // Refusals keep their codes over the wire.
    let e = wrap(
        &mut cckm,
        by_label("test-locked-aes-256"),
        wk,
        proto::WrappingAlgorithm::RsaOaepAesSha256,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("not extractable"));
    let e = wrap(
        &mut cckm,
        by_label("nope"),
        wk,
        proto::WrappingAlgorithm::RsaOaepAesSha256,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = wrap(
        &mut cckm,
        by_label("other-aes-256"),
        wk,
        proto::WrappingAlgorithm::RsaOaepAesSha256,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "policy.exportable: {e:?}");
    let e = wrap(
        &mut cckm,
        by_label("test-rsa-2048"),
        wk,
        proto::WrappingAlgorithm::RsaOaepSha256,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = wrap(
        &mut cckm,
        by_label("test-aes-256"),
        &fx.wk.wk1024,
        proto::WrappingAlgorithm::RsaOaepAesSha256,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = wrap(
        &mut cckm,
        None,
        wk,
        proto::WrappingAlgorithm::RsaOaepAesSha256,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = cckm
        .wrap_key(WrapKeyRequest {
            algorithm: 99,
            ..wrap_req(
                by_label("test-aes-256"),
                wk,
                proto::WrappingAlgorithm::Unspecified,
            )
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // The audit log holds each attempt, with the caller, before the answer went out.
    let records = audit_records(&audit);
    let find = |id: &str| {
        records
            .iter()
            .find(|r| r["request_id"] == id)
            .unwrap_or_else(|| panic!("no audit record {id}: {records:?}"))
            .clone()
    };
    let r = find("limited-ok");
    assert_eq!(r["caller"], "limited (CN=limited.example)");
    assert_eq!(r["outcome"], "allowed");
    assert_eq!(r["source_key_label"], "test-aes-128");
    assert_eq!(r["mode"], "hybrid");
    assert_eq!(r["wrapping_key_sha256"].as_str().unwrap().len(), 64);
    let r = find("limited-no");
    assert_eq!(r["caller"], "limited (CN=limited.example)");
    assert_eq!(r["outcome"], "refused");
    assert_eq!(r["code"], "PERMISSION_DENIED");
    let r = find("limited-by-id");
    assert_eq!(r["source_key_id_hex"], "2002");
    assert!(
        !r.to_string().contains("test-rsa-3072"),
        "the refusal by id names no key: {r}"
    );
    assert_eq!(find("aes-ok")["caller"], "cckm (CN=cckm.example)");
    assert_eq!(
        records.len(),
        13,
        "one record per WrapKey attempt: {records:#?}"
    );
    for r in &records {
        let text = r.to_string();
        assert!(
            !text.contains("BEGIN"),
            "no key material or PEM in audit: {text}"
        );
        assert!(r["time"].as_str().unwrap().ends_with('Z'));
    }
    println!("audit line: {}", find("limited-ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_callers_without_a_known_certificate() {
    let _shared = shared().await;
    let fx = softhsm();
    let (config, audit) = daemon_config(fx, "tls-refusals", "caller_wrapping_keys = \"any\"", None);
    let d = Daemon::start(&config, &[]);
    let req = || {
        wrap_req(
            by_label("test-aes-256"),
            &fx.wk.wk2048,
            proto::WrappingAlgorithm::RsaOaepAesSha256,
        )
    };

    // No client certificate, and a certificate from another CA (same CN as a listed
    // caller): the TLS handshake fails, the service is never reached.
    for who in [None, Some("rogue")] {
        let refused = match d.channel(who).await {
            Err(_) => true,
            Ok(ch) => KeySourceBridgeClient::new(ch)
                .wrap_key(req())
                .await
                .is_err(),
        };
        assert!(refused, "{who:?} must be refused");
    }
    // Known CA, CN not listed: UNAUTHENTICATED, and the attempt is audited.
    let e = d
        .client("unlisted")
        .await
        .wrap_key(with_request_id(req(), "unlisted"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("unlisted.example"), "{}", e.message());
    let records = audit_records(&audit);
    assert_eq!(
        records.len(),
        1,
        "only the call that reached the service: {records:?}"
    );
    assert_eq!(records[0]["request_id"], "unlisted");
    assert_eq!(records[0]["code"], "UNAUTHENTICATED");
    assert!(
        records[0]["caller"]
            .as_str()
            .unwrap()
            .contains("unlisted.example")
    );
    assert!(records[0].get("mode").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_policy_refuses_unlisted_wrapping_keys() {
    let _shared = shared().await;
    let fx = softhsm();
    let fp = spki_sha256_hex(&fx.wk.wk2048.public_pem);
    let policy = format!("caller_wrapping_keys = \"pinned\"\npinned_wrapping_keys = [\"{fp}\"]");
    let (config, _) = daemon_config(fx, "pinned", &policy, None);
    let d = Daemon::start(&config, &[]);
    let mut c = d.client("cckm").await;
    let e = wrap(
        &mut c,
        by_label("test-aes-256"),
        &fx.wk.wk4096,
        proto::WrappingAlgorithm::RsaOaepAesSha256,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("pinned_wrapping_keys"),
        "{}",
        e.message()
    );
    let r = wrap(
        &mut c,
        by_label("test-aes-256"),
        &fx.wk.wk2048,
        proto::WrappingAlgorithm::RsaOaepAesSha256,
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.wrapping_key_sha256, fp);
    assert_eq!(
        open(
            &r.wrapped_key_material,
            &fx.wk.wk2048,
            256,
            "RSA_OAEP_AES_SHA256"
        ),
        fx.aes["test-aes-256"]
    );

    let (config, _) = daemon_config(
        fx,
        "no-caller-keys",
        "caller_wrapping_keys = \"none\"",
        None,
    );
    let d = Daemon::start(&config, &[]);
    let e = wrap(
        &mut d.client("cckm").await,
        by_label("test-aes-256"),
        &fx.wk.wk2048,
        proto::WrappingAlgorithm::RsaOaepAesSha256,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("caller_wrapping_keys"),
        "{}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_get_follow_paging_and_the_callers_patterns() {
    let _shared = shared().await;
    let fx = softhsm();
    let (config, _) = daemon_config(fx, "list", "", None);
    let d = Daemon::start(&config, &[]);
    let mut c = d.client("cckm").await;
    let mut labels = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = c
            .list_source_keys(proto::ListSourceKeysRequest {
                page_size: 3,
                page_token: token.clone(),
                exportable_only: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.keys.len() <= 3);
        labels.extend(r.keys.iter().map(|k| k.label.clone()));
        pages += 1;
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    // 12 source keys and the journal's record key (listed; never exportable)
    assert_eq!(labels.len(), 13, "{labels:?}");
    assert!(labels.iter().any(|l| l == common::RECORD_KEY), "{labels:?}");
    assert_eq!(pages, 5);
    let mut sorted = labels.clone();
    sorted.sort();
    assert_eq!(labels, sorted);

    let all = c
        .list_source_keys(proto::ListSourceKeysRequest {
            exportable_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let exportable: Vec<_> = all.keys.iter().map(|k| k.label.as_str()).collect();
    // The two test-dup keys are each exportable (by id; only their label is ambiguous).
    assert_eq!(
        exportable,
        [
            "test-aes-128",
            "test-aes-192",
            "test-aes-256",
            "test-dup",
            "test-dup",
            "test-rsa-2048",
            "test-rsa-3072",
            "test-rsa-4096"
        ]
    );

    let k = c
        .get_source_key(proto::GetSourceKeyRequest {
            source_key: by_label("test-locked-aes-256"),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!k.exportable && !k.extractable && k.sensitive);
    assert!(k.not_exportable_reason.contains("not extractable"));
    assert_eq!(
        k.shape,
        Some(proto::KeyShape {
            algorithm: "AES".into(),
            length: 32
        })
    );
    let k = c
        .get_source_key(proto::GetSourceKeyRequest {
            source_key: by_label("test-ec-p256"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (k.shape, k.key_type.as_str(), k.exportable),
        (None, "EC", false)
    );
    let e = c
        .get_source_key(proto::GetSourceKeyRequest {
            source_key: by_label("test-dup"),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    let mut limited = d.client("limited").await;
    let r = limited
        .list_source_keys(proto::ListSourceKeysRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.keys.iter().all(|k| k.label.starts_with("test-aes-")),
        "{:?}",
        r.keys
    );
    assert_eq!(r.keys.len(), 3);
    // Probing every id names no key: a forbidden id and a missing one answer alike.
    for id in ["2001", "3004", "7777"] {
        let e = limited
            .get_source_key(proto::GetSourceKeyRequest {
                source_key: by_id(id),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{id}");
        assert_eq!(e.message(), format!("no key you may use has CKA_ID {id}"));
    }
    let e = c
        .list_source_keys(proto::ListSourceKeysRequest {
            page_token: "junk".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

/// Every label a walk through ListSourceKeys in pages of `page` lists, in order, with the
/// number of pages; `between(n)` runs after page n when another page follows.
async fn walk_pages(
    c: &mut KeySourceBridgeClient<Channel>,
    page: u32,
    mut between: impl FnMut(usize),
) -> (Vec<(String, String)>, usize) {
    let mut keys = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = c
            .list_source_keys(proto::ListSourceKeysRequest {
                page_size: page,
                page_token: token.clone(),
                exportable_only: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.keys.len() <= page as usize);
        keys.extend(r.keys.into_iter().map(|k| (k.label, k.id_hex)));
        pages += 1;
        if r.next_page_token.is_empty() {
            return (keys, pages);
        }
        between(pages);
        token = r.next_page_token;
    }
}

/// A token of its own with the keys `page-00` to `page-19` (ids 0001 to 0014).
fn paging_token(name: &str) -> Fixture {
    let fx = common::bare_softhsm(name);
    for i in 0..20 {
        write_aes(
            &fx,
            &format!("page-{i:02}"),
            &format!("{:04x}", i + 1),
            &random(16),
            true,
        );
    }
    fx
}

fn delete_key(fx: &Fixture, label: &str) {
    let out = p11(
        fx,
        &["--delete-object", "--type", "secrkey", "--label", label],
    );
    assert!(
        out.status.success(),
        "delete {label}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A walk through the listing while keys are added and removed between its pages: each key
/// there throughout is listed once, in order; one added past the cursor is listed, one
/// added before it is not; one removed before the walk reaches it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_lists_each_key_once_while_keys_come_and_go() {
    let _shared = shared().await;
    // A token of its own: other tests count the fixture's keys.
    let fx = paging_token("paging");
    let (config, _) = daemon_config(&fx, "paging", "", None);
    let d = Daemon::start(&config, &[]);
    let mut c = d.client("cckm").await;
    let (keys, pages) = walk_pages(&mut c, 5, |page| match page {
        // The cursor is at page-03.
        1 => {
            write_aes(&fx, "page-10a", "0101", &random(16), true);
            write_aes(&fx, "page-01a", "0102", &random(16), true);
            delete_key(&fx, "page-15");
        }
        // The cursor is at page-08 (id 0009): the same label sorts by id around it.
        2 => {
            delete_key(&fx, "page-05");
            write_aes(&fx, "page-08", "0000", &random(16), true);
            write_aes(&fx, "page-08", "ffff", &random(16), true);
            write_aes(&fx, "page-99", "0103", &random(16), true);
        }
        _ => {}
    })
    .await;
    let mut want: Vec<(String, String)> = vec![(RECORD_KEY.into(), "0f01".into())];
    for (i, label) in (0..20).map(|i| (i, format!("page-{i:02}"))) {
        if i == 15 {
            continue;
        }
        want.push((label.clone(), format!("{:04x}", i + 1)));
        match i {
            8 => want.push((label, "ffff".into())),
            10 => want.push(("page-10a".into(), "0101".into())),
            _ => {}
        }
    }
    want.push(("page-99".into(), "0103".into()));
    assert_eq!(keys, want);
    assert_eq!(pages, 5);

    // A walk begun afterwards lists the keys added before the old cursor, and not the
    // removed ones.
    let (keys, _) = walk_pages(&mut c, 1000, |_| {}).await;
    let has = |l: &str, id: &str| keys.iter().any(|k| k.0 == l && k.1 == id);
    assert!(
        has("page-01a", "0102") && has("page-08", "0000"),
        "{keys:?}"
    );
    assert!(
        !has("page-05", "0006") && !has("page-15", "0010"),
        "{keys:?}"
    );
    assert_eq!(keys.len(), 24);
}

/// The later pages of a listing reuse what its first page read of the keys still there, so
/// a walk through a large token reads each key once, not once per page (BENCHMARKS.md,
/// "Listing a large token page by page").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_pages_read_only_the_keys_they_have_not_seen() {
    let _shared = shared().await;
    let fx = paging_token("paging-reads");
    let (config, _) = daemon_config(&fx, "paging-reads", "", None);
    let log = common::fault::route_config(&fx, &config, "paging-reads");
    let d = Daemon::start(&config, &[]);
    let mut c = d.client("cckm").await;
    let reads = || common::fault::calls(&log, "C_GetAttributeValue");
    let mut at_page = Vec::new();
    let before = reads();
    let (keys, pages) = walk_pages(&mut c, 5, |page| {
        at_page.push(reads());
        if page == 2 {
            write_aes(&fx, "page-10a", "0101", &random(16), true);
            write_aes(&fx, "page-10b", "0102", &random(16), true);
        }
    })
    .await;
    assert_eq!((keys.len(), pages), (23, 5));
    // The first page reads every object on the token (21 keys); each later page reads
    // only what was added since (one call per object, a few more if a value were longer
    // than the room the daemon gives it).
    let first = at_page[0] - before;
    assert!((21..=42).contains(&first), "first page: {first} reads");
    let later = reads() - at_page[0];
    assert!(later <= 4, "later pages: {later} reads for 2 new keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_are_authorised_and_audited_before_anything_is_sent() {
    let _shared = shared().await;
    let fx = softhsm();
    // No [oci] section: no connection, and only OCI's own endpoints allowed.
    let (config, audit) = daemon_config(fx, "import", "", None);
    let d = Daemon::start(&config, &[]);
    let target = |endpoint: &str| {
        Some(proto::OciTarget {
            connection: String::new(),
            management_endpoint: endpoint.into(),
        })
    };
    let req = proto::ImportKeyVersionRequest {
        source_key: by_label("test-aes-256"),
        oci_key_id: "ocid1.key.oc1..x".into(),
        oci: target("https://x-management.kms.us-ashburn-1.oraclecloud.com"),
        ..Default::default()
    };
    let e = d
        .client("cckm")
        .await
        .import_key_version(req.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("no OCI connection \"default\""),
        "{}",
        e.message()
    );
    let e = d
        .client("limited")
        .await
        .import_key_version(req)
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::PermissionDenied,
        "limited has no import operation"
    );
    let e = d
        .client("cckm")
        .await
        .import_key(proto::ImportKeyRequest {
            source_key: by_label("test-aes-256"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "no OCI target: {e:?}");
    let records = audit_records(&audit);
    assert_eq!(records.len(), 3);
    assert_eq!(records[0]["oci_key_id"], "ocid1.key.oc1..x");
    assert_eq!(records[0]["code"], "FAILED_PRECONDITION");
    assert_eq!(records[1]["code"], "PERMISSION_DENIED");
    assert_eq!(records[2]["code"], "INVALID_ARGUMENT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_and_reflection_lists_the_service() {
    let _shared = shared().await;
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let fx = softhsm();
    let (config, _) = daemon_config(fx, "health", "", None);
    let d = Daemon::start(&config, &[]);
    let ch = d.channel(Some("cckm")).await.unwrap();
    let mut health = HealthClient::new(ch.clone());
    for service in ["", "hsmbridge.v1.KeySourceBridge"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let mut refl = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("{resp:?}")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"hsmbridge.v1.KeySourceBridge"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    // The same answer for a person, with no code: `hsm-bridge health`.
    let c = certs();
    let path = |f: &str| c.join(f).to_string_lossy().into_owned();
    let (ca, cert, key) = (path("ca.pem"), path("cckm.pem"), path("cckm.key"));
    let probe = |addr: &str| {
        hsm_bridge(&[
            "health",
            "--addr",
            addr,
            "--ca",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "--server-name",
            "localhost",
            "--timeout-secs",
            "3",
        ])
    };
    let out = probe(&d.addr);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");
    drop(d);
    let out = probe(&addr_of_nothing());
    assert!(!out.status.success(), "exit 0 only when SERVING");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing listens on"));
}

/// A loopback address where nothing listens.
fn addr_of_nothing() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Fires `n` RSA-4096 wraps at once; returns each call's result and when it ended.
async fn burst(
    c: &KeySourceBridgeClient<Channel>,
    wk: &KeyPair,
    n: usize,
) -> Vec<(Result<(), tonic::Status>, Instant)> {
    let calls = (0..n).map(|_| {
        let mut c = c.clone();
        let req = wrap_req(
            by_label("test-rsa-4096"),
            wk,
            proto::WrappingAlgorithm::RsaOaepAesSha256,
        );
        tokio::spawn(async move { (c.wrap_key(req).await.map(|_| ()), Instant::now()) })
    });
    let mut out = Vec::new();
    for h in calls.collect::<Vec<_>>() {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_gets_resource_exhausted_not_a_hang() {
    let _alone = exclusive().await;
    let fx = softhsm();
    let (config, _) = daemon_config(fx, "overload", "caller_wrapping_keys = \"any\"", None);
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("sessions = 2", "sessions = 1")
            + "",
    )
    .unwrap();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[server]\n", "[server]\nmax_queue = 1\n");
    std::fs::write(&config, text).unwrap();
    let d = Daemon::start(&config, &[]);
    let c = d.client("cckm").await;
    let results = tokio::time::timeout(Duration::from_secs(120), burst(&c, &fx.wk.wk4096, 64))
        .await
        .expect("no call may hang");
    let exhausted = results
        .iter()
        .filter(|(r, _)| matches!(r, Err(s) if s.code() == Code::ResourceExhausted))
        .count();
    let ok = results.iter().filter(|(r, _)| r.is_ok()).count();
    assert!(
        exhausted > 0,
        "64 calls on 1 session + 1 queue slot must overflow"
    );
    assert!(ok > 0);
    assert_eq!(
        ok + exhausted,
        64,
        "every call either ran or was refused at once: {results:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_call_past_its_deadline_never_reaches_the_hsm() {
    let _alone = exclusive().await;
    let fx = softhsm();
    let (config, audit) = daemon_config(fx, "deadline", "caller_wrapping_keys = \"any\"", None);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("sessions = 2", "sessions = 1")
        .replace("[server]\n", "[server]\nmax_queue = 2000\n");
    std::fs::write(&config, text).unwrap();
    let d = Daemon::start(&config, &[]);
    let c = d.client("cckm").await;
    // Load queues RSA-4096 wraps on the one session (about a second of HSM work for 400
    // in this debug build); a call sent behind them with a 300 ms deadline waits in the
    // fair queue and expires there. The load runs on its own runtime and connections so it
    // does not starve the probe's client. If the probe was served in time anyway (the
    // load reached the daemon too slowly, e.g. with other tests running), the load is
    // doubled and the probe sent again.
    for (attempt, n) in [400usize, 800, 1600].into_iter().enumerate() {
        let load = {
            // Several connections: one would be capped by the server's HTTP/2 stream limit,
            // and the daemon's queue would never hold more than that.
            let mut clients = Vec::new();
            for _ in 0..8 {
                clients.push(d.client("cckm").await);
            }
            let req = wrap_req(
                by_label("test-rsa-4096"),
                &fx.wk.wk4096,
                proto::WrappingAlgorithm::RsaOaepAesSha256,
            );
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let calls: Vec<_> = (0..n)
                        .map(|i| {
                            let mut c = clients[i % clients.len()].clone();
                            let req = req.clone();
                            tokio::spawn(async move { c.wrap_key(req).await.is_ok() })
                        })
                        .collect();
                    let mut ok = 0;
                    for h in calls {
                        ok += usize::from(h.await.unwrap());
                    }
                    ok
                })
            })
        };
        tokio::time::sleep(Duration::from_millis(150)).await;
        let id = format!("deadline-probe-{attempt}");
        let mut probe = with_request_id(
            wrap_req(
                by_label("test-aes-256"),
                &fx.wk.wk4096,
                proto::WrappingAlgorithm::RsaOaepAesSha256,
            ),
            &id,
        );
        probe.set_timeout(Duration::from_millis(300));
        let outcome = c.clone().wrap_key(probe).await;
        assert_eq!(load.join().unwrap(), n, "the queued calls all complete");
        let Err(e) = outcome else {
            println!("attempt {attempt}: the probe was served within its deadline; more load");
            continue;
        };
        // The daemon answers DEADLINE_EXCEEDED ahead of the deadline; on this 2-core machine
        // under load its answer can still arrive after the tonic client's own timer, which
        // then reports CANCELLED "Timeout expired" itself. Either way the call expired in
        // the queue, as the audit record says (the deterministic proof is in
        // src/export/queue.rs's unit tests).
        let client_timer = e.code() == Code::Cancelled && e.message().contains("Timeout expired");
        assert!(e.code() == Code::DeadlineExceeded || client_timer, "{e:?}");
        println!("the probe saw {:?}", e.code());
        let records = audit_records(&audit);
        let r = records
            .iter()
            .find(|r| r["request_id"] == id.as_str())
            .expect("the expired call is audited");
        assert!(
            r["code"] == "DEADLINE_EXCEEDED" || r["code"] == "CANCELLED",
            "{r}"
        );
        assert!(r.get("mode").is_none(), "it was never wrapped: {r}");
        assert!(
            r["reason"]
                .as_str()
                .unwrap()
                .contains("the HSM did no work"),
            "{r}"
        );
        return;
    }
    panic!("the probe never expired behind 1600 queued calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_calls_in_flight_finish_and_exits_0() {
    let _alone = exclusive().await;
    let fx = softhsm();
    let (config, _) = daemon_config(fx, "sigterm", "caller_wrapping_keys = \"any\"", None);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("sessions = 2", "sessions = 1")
        // every call of the burst open on the connection at SIGTERM (none queued in the
        // client, where GOAWAY would refuse it)
        .replace(
            "[server]\n",
            "[server]\nmax_queue = 1000\nmax_concurrent_streams = 256\n",
        );
    std::fs::write(&config, text).unwrap();
    let mut d = Daemon::start(&config, &["--log-json"]);
    let c = d.client("cckm").await;
    let wk = fx.wk.wk4096.public_pem.clone();
    let calls = tokio::spawn({
        let c = c.clone();
        async move {
            let kp = KeyPair {
                private_pem: Default::default(),
                public_pem: wk,
            };
            burst(&c, &kp, 200).await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let signalled = Instant::now();
    d.terminate();
    let results = calls.await.unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let s = d.wait(Duration::from_secs(60));
        (s, d.log_text())
    })
    .await
    .unwrap();
    assert!(
        results.iter().all(|(r, _)| r.is_ok()),
        "every call in flight completes: {:?}",
        results.iter().find(|(r, _)| r.is_err())
    );
    assert!(
        results.iter().any(|(_, t)| *t > signalled),
        "some calls were still in flight at SIGTERM"
    );
    assert!(
        status.0.success(),
        "exit status {:?}\n{}",
        status.0,
        status.1
    );
    // --log-json: every log line is JSON; the shutdown steps are logged.
    for line in status.1.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    assert!(
        status.1.contains("SIGTERM") && status.1.contains("module finalised"),
        "{}",
        status.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_only_on_loopback_and_unix_sockets() {
    let _shared = shared().await;
    let fx = softhsm();
    // Off loopback: refuses to start, naming the setting.
    let (config, _) = daemon_config(
        fx,
        "plain-public",
        "",
        Some("listen = \"0.0.0.0:0\"\nplaintext = true\n"),
    );
    let l = hsm_bridge_refuses(&["serve", "--config", config.to_str().unwrap()]);
    assert!(
        l.contains("server.plaintext") && l.contains("0.0.0.0"),
        "{l}"
    );
    // TLS without the client CA: refuses to start.
    let c = certs();
    let server = format!(
        "listen = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        c.join("server.pem").display(),
        c.join("server.key").display()
    );
    let (config, _) = daemon_config(fx, "no-ca", "", Some(&server));
    let l = hsm_bridge_refuses(&["serve", "--config", config.to_str().unwrap()]);
    assert!(l.contains("server.client_ca"), "{l}");
    // A key file larger than any key: refused before it is parsed, read no further.
    let huge = fx.dir.join("huge-tls.key");
    write_private(&huge, &vec![b'A'; 70 << 10]);
    let server = format!(
        "listen = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{}\"\n",
        c.join("server.pem").display(),
        huge.display(),
        c.join("ca.pem").display()
    );
    let (config, _) = daemon_config(fx, "huge-key", "", Some(&server));
    let l = hsm_bridge_refuses(&["serve", "--config", config.to_str().unwrap()]);
    assert!(l.contains("server.tls_key") && l.contains("64 KiB"), "{l}");
    // Loopback plain text: no entry, no caller. (Every local user once got every operation
    // on every key here.)
    let (config, audit) = daemon_config(
        fx,
        "plain-loopback-nobody",
        "caller_wrapping_keys = \"any\"",
        Some("listen = \"127.0.0.1:0\"\nplaintext = true\n"),
    );
    let d = Daemon::start(&config, &[]);
    assert!(
        d.log_text().contains("every call will be UNAUTHENTICATED"),
        "{}",
        d.log_text()
    );
    let mut c = KeySourceBridgeClient::new(d.plain_channel().await);
    for key in ["test-aes-192", "test-rsa-2048"] {
        let e = wrap(
            &mut c,
            by_label(key),
            &fx.wk.wk2048,
            proto::WrappingAlgorithm::RsaOaepAesSha256,
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(e.message().contains("loopback = true"), "{}", e.message());
    }
    let e = c
        .list_source_keys(proto::ListSourceKeysRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        audit_records(&audit)
            .iter()
            .all(|r| r["code"] == "UNAUTHENTICATED")
    );
    drop(d);
    // With an entry, a loopback caller gets exactly what it grants.
    let local = "listen = \"127.0.0.1:0\"\nplaintext = true\n\n[[server.clients]]\nname = \"local-ops\"\nloopback = true\noperations = [\"list\", \"wrap\"]\nkeys = [\"test-aes-*\"]\n";
    let (config, audit) = daemon_config(
        fx,
        "plain-loopback",
        "caller_wrapping_keys = \"any\"",
        Some(local),
    );
    let d = Daemon::start(&config, &[]);
    let mut c = KeySourceBridgeClient::new(d.plain_channel().await);
    let r = wrap(
        &mut c,
        by_label("test-aes-192"),
        &fx.wk.wk2048,
        proto::WrappingAlgorithm::RsaOaepAesSha256,
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        open(
            &r.wrapped_key_material,
            &fx.wk.wk2048,
            256,
            "RSA_OAEP_AES_SHA256"
        ),
        fx.aes["test-aes-192"]
    );
    let e = wrap(
        &mut c,
        by_label("test-rsa-2048"),
        &fx.wk.wk2048,
        proto::WrappingAlgorithm::RsaOaepAesSha256,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(audit_records(&audit)[0]["caller"], "local-ops (loopback)");
    // A Unix socket: created with mode 0600; the caller is the entry of its uid.
    use std::os::unix::fs::PermissionsExt;
    let uid = rustix::process::geteuid().as_raw();
    let sock = fx.dir.join("hb.sock");
    let unix = |uid: u32| {
        format!(
            "listen = \"unix:{}\"\nplaintext = true\n\n[[server.clients]]\nname = \"ops-user\"\nunix_uid = {uid}\noperations = [\"list\"]\nkeys = [\"test-aes-*\"]\n",
            sock.display()
        )
    };
    let (config, _) = daemon_config(fx, "unix", "", Some(&unix(uid)));
    let d = Daemon::start(&config, &[]);
    assert_eq!(d.addr, format!("unix:{}", sock.display()));
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut c = KeySourceBridgeClient::new(d.unix_channel().await);
    let keys = c
        .list_source_keys(proto::ListSourceKeysRequest::default())
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 3, "the test-aes-* keys its entry grants");
    let e = wrap(
        &mut c,
        by_label("test-aes-192"),
        &fx.wk.wk2048,
        proto::WrappingAlgorithm::RsaOaepAesSha256,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "list only: {e:?}");
    drop(d);
    // A uid no entry names gets nothing.
    let (config, _) = daemon_config(fx, "unix-other", "", Some(&unix(uid + 12345)));
    let d = Daemon::start(&config, &[]);
    let e = KeySourceBridgeClient::new(d.unix_channel().await)
        .list_source_keys(proto::ListSourceKeysRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(
        e.message().contains(&format!("uid {uid} has no")),
        "{}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_whose_audit_record_cannot_be_written_is_refused() {
    let _shared = shared().await;
    let fx = softhsm();
    let (config, _) = daemon_config(fx, "audit-full", "caller_wrapping_keys = \"any\"", None);
    // /dev/full accepts the open and fails every write with ENOSPC.
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(
        &text[text.find("[audit]").unwrap()..],
        "[audit]\npath = \"/dev/full\"\n",
    );
    std::fs::write(&config, text).unwrap();
    let d = Daemon::start(&config, &[]);
    let e = wrap(
        &mut d.client("cckm").await,
        by_label("test-aes-256"),
        &fx.wk.wk2048,
        proto::WrappingAlgorithm::RsaOaepAesSha256,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("audit log could not be written"),
        "{}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_is_refused_cheaply() {
    let _shared = shared().await;
    let fx = softhsm();
    let (config, audit) = daemon_config(fx, "big", "caller_wrapping_keys = \"any\"", None);
    let d = Daemon::start(&config, &[]);
    let mut c = d.client("cckm").await;
    let req = WrapKeyRequest {
        source_key: by_label("test-aes-256"),
        wrapping_public_key_pem: "A".repeat(100 * 1024),
        algorithm: 0,
        ..Default::default()
    };
    let e = c.wrap_key(req).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{e:?}"
    );
    assert!(
        audit_records(&audit).is_empty(),
        "refused before the service decoded it"
    );
}

#[test]
fn proto_compiles_with_protoc() {
    // The calling service is not written in Rust: the proto must build with the standard
    // compiler too (Debian protobuf-compiler, installed by softhsm-setup.sh).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let r = std::process::Command::new("protoc")
        .current_dir(root)
        .args(["-Iproto", "--include_imports"])
        .arg(format!(
            "--descriptor_set_out={}",
            out.path().join("d.pb").display()
        ))
        .arg(format!("--cpp_out={}", out.path().display()))
        .arg("proto/hsmbridge/v1/bridge.proto")
        .output()
        .expect("protoc not found: run ./softhsm-setup.sh");
    assert!(
        r.status.success(),
        "protoc: {}",
        String::from_utf8_lossy(&r.stderr)
    );
}

/// Every hostile input of the first attack review (SECURITY.md) that the daemon can see:
/// INVALID_ARGUMENT with a reason, and one audit record per export asked for. (All of them
/// are refused before the HSM queue: the checks run before `on_hsm`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_are_refused_with_a_reason_and_audited() {
    use openssl::bn::BigNum;
    use openssl::rsa::Rsa;
    let _shared = shared().await;
    let fx = softhsm();
    let (config, audit) = daemon_config(fx, "hostile", "caller_wrapping_keys = \"any\"", None);
    // Through the fault module, to count what reaches the token.
    let log = common::fault::route_config(fx, &config, "hostile");
    let d = Daemon::start(&config, &[]);
    let mut c = d.client("cckm").await;
    let counted = common::fault::COUNTED;
    let before = counted.map(|f| common::fault::calls(&log, f));
    assert!(before[3] > 0, "the fault module logs the start-up's calls");
    let good_pem = pem(&fx.wk.wk2048);
    let rsa = Rsa::generate(2048).unwrap();
    let e1 = Rsa::from_public_components(rsa.n().to_owned().unwrap(), BigNum::from_u32(1).unwrap())
        .unwrap()
        .public_key_to_pem()
        .unwrap();
    let mut n = rsa.n().to_owned().unwrap();
    n.clear_bit(0).unwrap();
    let even = Rsa::from_public_components(n, BigNum::from_u32(65537).unwrap())
        .unwrap()
        .public_key_to_pem()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    let private = std::fs::read_to_string(&fx.wk.wk2048.private_pem).unwrap();
    let certificate = std::fs::read_to_string(certs().join("ca.pem")).unwrap();
    let label = |l: &str| by_label(l);
    let id = |h: &str| by_id(h);
    let cases: Vec<(&str, Option<proto::KeyRef>, String, i32, &str)> = vec![
        (
            "empty label",
            label(""),
            good_pem.clone(),
            1,
            "label is empty",
        ),
        (
            "long label",
            label(&"a".repeat(129)),
            good_pem.clone(),
            1,
            "at most 128",
        ),
        (
            "glob label",
            label("test-*"),
            good_pem.clone(),
            1,
            "glob characters",
        ),
        (
            "control label",
            label("test-aes-256\n"),
            good_pem.clone(),
            1,
            "control characters",
        ),
        ("non-hex id", id("zz"), good_pem.clone(), 1, "not hex"),
        // from_str_radix alone read "+1+3" as 0103
        ("signed hex id", id("+1+3"), good_pem.clone(), 1, "not hex"),
        ("odd hex id", id("103"), good_pem.clone(), 1, "not hex"),
        (
            "long id",
            id(&"00".repeat(65)),
            good_pem.clone(),
            1,
            "at most 128",
        ),
        (
            "no key",
            None,
            good_pem.clone(),
            1,
            "give a label, an id_hex or a pkcs11_uri",
        ),
        (
            "malformed PEM",
            label("test-aes-256"),
            "-----BEGIN PUBLIC KEY-----\nAAAA!!!!\n-----END PUBLIC KEY-----\n".into(),
            1,
            "does not parse",
        ),
        (
            "private key PEM",
            label("test-aes-256"),
            private,
            1,
            "private key",
        ),
        (
            "certificate PEM",
            label("test-aes-256"),
            certificate,
            1,
            "unsupported PEM block",
        ),
        ("exponent 1", label("test-aes-256"), text(e1), 1, "exponent"),
        (
            "even modulus",
            label("test-aes-256"),
            text(even),
            1,
            "modulus is even",
        ),
        (
            "oversized PEM",
            label("test-aes-256"),
            "A".repeat(20 * 1024),
            1,
            "limit is 16384",
        ),
        (
            "unknown algorithm",
            label("test-aes-256"),
            good_pem.clone(),
            99,
            "not a WrappingAlgorithm",
        ),
    ];
    for (name, key, pem, alg, reason) in &cases {
        let e = c
            .wrap_key(WrapKeyRequest {
                source_key: key.clone(),
                wrapping_public_key_pem: pem.clone(),
                algorithm: *alg,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e:?}");
        assert!(e.message().contains(reason), "{name}: {}", e.message());
    }

    // Imports: the request's own fields are checked before any configuration or network.
    let version = |ocid: &str, idem: &str, alg: i32| proto::ImportKeyVersionRequest {
        source_key: by_label("test-aes-256"),
        oci_key_id: ocid.into(),
        oci: Some(proto::OciTarget {
            connection: String::new(),
            management_endpoint: "https://x-management.kms.us-ashburn-1.oraclecloud.com".into(),
        }),
        algorithm: alg,
        idempotency_key: idem.into(),
        wait_for_enabled: false,
    };
    for (name, req, reason) in [
        ("empty OCID", version("", "", 0), "not a key OCID"),
        (
            "vault OCID",
            version("ocid1.vault.oc1..x", "", 0),
            "not a key OCID",
        ),
        (
            "OCID with a path",
            version("ocid1.key.oc1..x/../y", "", 0),
            "not a key OCID",
        ),
        (
            "long idempotency key",
            version("ocid1.key.oc1..x", &"k".repeat(129), 0),
            "idempotency_key",
        ),
        (
            "unknown algorithm",
            version("ocid1.key.oc1..x", "", 7),
            "not a WrappingAlgorithm",
        ),
        (
            "port with a sign",
            proto::ImportKeyVersionRequest {
                oci: Some(proto::OciTarget {
                    connection: String::new(),
                    management_endpoint:
                        "https://x-management.kms.us-ashburn-1.oraclecloud.com:+443".into(),
                }),
                ..version("ocid1.key.oc1..x", "", 0)
            },
            "port",
        ),
    ] {
        let e = c.import_key_version(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e:?}");
        assert!(e.message().contains(reason), "{name}: {}", e.message());
    }
    let key = |compartment: &str, name: &str, mode: &str| proto::ImportKeyRequest {
        source_key: by_label("test-aes-256"),
        compartment_id: compartment.into(),
        display_name: name.into(),
        protection_mode: mode.into(),
        ..Default::default()
    };
    for (name, req, reason) in [
        ("compartment", key("x", "k", ""), "compartment_id"),
        (
            "display name",
            key("ocid1.compartment.oc1..c", "a\u{7}b", ""),
            "display_name",
        ),
        (
            "protection mode",
            key("ocid1.compartment.oc1..c", "k", "EXTERNAL"),
            "protection_mode",
        ),
        // Tags were unchecked and kept twice per replay entry (719 KiB of RSS a call).
        (
            "too many tags",
            proto::ImportKeyRequest {
                freeform_tags: (0..65).map(|i| (format!("t{i}"), "v".into())).collect(),
                ..key("ocid1.compartment.oc1..c", "k", "")
            },
            "at most 64",
        ),
        (
            "long tag value",
            proto::ImportKeyRequest {
                freeform_tags: [("t".to_string(), "v".repeat(257))].into(),
                ..key("ocid1.compartment.oc1..c", "k", "")
            },
            "values at most 256",
        ),
        (
            "control byte in a defined tag",
            proto::ImportKeyRequest {
                defined_tags: [(
                    "ns".to_string(),
                    proto::DefinedTags {
                        tags: [("k\u{1b}".to_string(), "v".to_string())].into(),
                    },
                )]
                .into(),
                ..key("ocid1.compartment.oc1..c", "k", "")
            },
            "control characters",
        ),
    ] {
        let e = c.import_key(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e:?}");
        assert!(e.message().contains(reason), "{name}: {}", e.message());
    }

    // No key lookup, no wrap, no session reached the token. The health probe may have run
    // meanwhile: one C_GetTokenInfo and one C_WrapKey each.
    let [finds, wraps, opens, probes] =
        [0, 1, 2, 3].map(|i| common::fault::calls(&log, counted[i]) - before[i]);
    assert_eq!((finds, opens), (0, 0), "no key lookup, no new session");
    assert_eq!(wraps, probes, "no C_WrapKey but the health probe's");

    let records = audit_records(&audit);
    assert_eq!(
        records.len(),
        cases.len() + 6 + 6,
        "one record per export asked for"
    );
    for r in &records {
        assert_eq!(r["code"], "INVALID_ARGUMENT", "{r}");
        assert_eq!(r["outcome"], "refused");
        assert!(r.get("mode").is_none(), "no wrap happened: {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_named_by_pkcs11_uri_follow_the_same_rules() {
    let _shared = shared().await;
    let fx = softhsm();
    let (config, audit) = daemon_config(fx, "uri", "caller_wrapping_keys = \"any\"", None);
    let d = Daemon::start(&config, &[]);
    let uri = |u: &str| {
        Some(proto::KeyRef {
            key: Some(Key::Pkcs11Uri(u.into())),
        })
    };
    let wk = &fx.wk.wk4096;
    let alg = proto::WrappingAlgorithm::RsaOaepAesSha256;
    let mut cckm = d.client("cckm").await;
    let r = wrap(
        &mut cckm,
        uri("pkcs11:object=test-aes-256;type=secret-key"),
        wk,
        alg,
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        open(&r.wrapped_key_material, wk, 512, "RSA_OAEP_AES_SHA256"),
        fx.aes["test-aes-256"]
    );
    let e = wrap(
        &mut cckm,
        uri("pkcs11:object=x?pin-value=1234"),
        wk,
        alg,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("pkcs11_uri") && !e.message().contains("1234"),
        "{e:?}"
    );
    // the caller's label patterns hold for a label in a URI, before the token is asked
    let mut limited = d.client("limited").await;
    let e = wrap(
        &mut limited,
        uri("pkcs11:object=test-rsa-2048"),
        wk,
        alg,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // and for a key named by id only, the one answer that names no key
    let e = wrap(&mut limited, uri("pkcs11:id=%20%01"), wk, alg, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let recs = audit_records(&audit);
    assert_eq!(recs[0]["source_key_label"], "test-aes-256");
    assert_eq!(recs[0]["outcome"], "allowed");
}

/// Revokes `who`'s certificate in the CA of `dir` (tests/make-test-certs.sh) with the
/// openssl command line; returns the CRL's path.
fn revoke(dir: &std::path::Path, who: &str) -> std::path::PathBuf {
    let ca = dir.join("crl-ca");
    std::fs::create_dir_all(&ca).unwrap();
    std::fs::write(ca.join("index.txt"), "").unwrap();
    std::fs::write(ca.join("crlnumber"), "01\n").unwrap();
    let cnf = ca.join("ca.cnf");
    std::fs::write(
        &cnf,
        format!(
            "[ca]\ndefault_ca = d\n[d]\ndatabase = {}\ncrlnumber = {}\ndefault_md = sha256\ndefault_crl_days = 2\n",
            ca.join("index.txt").display(),
            ca.join("crlnumber").display()
        ),
    )
    .unwrap();
    let (key, cert) = (dir.join("ca.key"), dir.join("ca.pem"));
    let base = [
        "-config",
        cnf.to_str().unwrap(),
        "-keyfile",
        key.to_str().unwrap(),
        "-cert",
        cert.to_str().unwrap(),
    ];
    let victim = dir.join(format!("{who}.pem"));
    let mut revoke = vec!["ca"];
    revoke.extend(base);
    revoke.extend(["-revoke", victim.to_str().unwrap()]);
    openssl_ok(&revoke);
    let crl = dir.join("crl.pem");
    let mut make = vec!["ca"];
    make.extend(base);
    make.extend(["-gencrl", "-out", crl.to_str().unwrap()]);
    openssl_ok(&make);
    crl
}

/// Waits until the daemon has logged its `n`th reload.
async fn reloaded(d: &Daemon, n: usize) {
    let end = Instant::now() + Duration::from_secs(10);
    while d.log_text().matches("SIGHUP: reloaded").count() < n {
        assert!(Instant::now() < end, "{}", d.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGHUP with new TLS files: new connections get the new certificate and client CA, and a
/// connection opened before under the old CA can export nothing more (it once could: a
/// rotated CA did not reach open connections). A reload that changes no CA leaves open
/// connections serving; a CRL reaches open connections too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_tls_certificate_and_client_ca_for_every_connection() {
    let _shared = shared().await;
    let fx = softhsm();
    let (config, audit) = daemon_config(fx, "rotate", "caller_wrapping_keys = \"any\"", None);
    let mut d = Daemon::start(&config, &[]);
    let wk = &fx.wk.wk4096;
    let alg = proto::WrappingAlgorithm::RsaOaepAesSha256;
    let mut before = d.client("cckm").await;
    wrap(&mut before, by_label("test-aes-256"), wk, alg, None)
        .await
        .unwrap();
    // a reload that changes nothing: the open connection serves on
    d.hangup();
    reloaded(&d, 1).await;
    wrap(&mut before, by_label("test-aes-256"), wk, alg, None)
        .await
        .expect("the same client CA still vouches for the connection");

    // A new CA, server certificate and client certificates.
    let fresh = fx.dir.join("rotated-certs");
    common::daemon::make_certs(&fresh);
    let old = certs().clone();
    let text = std::fs::read_to_string(&config).unwrap();
    let rotated = text.replace(old.to_str().unwrap(), fresh.to_str().unwrap());
    std::fs::write(&config, &rotated).unwrap();
    d.hangup();
    reloaded(&d, 2).await;

    // the connection opened under the old CA exports nothing more
    let e = wrap(&mut before, by_label("test-aes-256"), wk, alg, None)
        .await
        .expect_err("an open connection from a CA the reload removed must not export");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("reloaded"), "{}", e.message());
    let last = audit_records(&audit).pop().unwrap();
    assert_eq!(last["code"], "UNAUTHENTICATED", "{last}");
    // new connections: the old CA's material no longer works, the new one does
    assert!(
        d.channel(Some("cckm")).await.is_err(),
        "the old CA must not be trusted any more"
    );
    d.tls = fresh.clone();
    let mut after = d.client("cckm").await;
    wrap(&mut after, by_label("test-aes-256"), wk, alg, None)
        .await
        .expect("the rotated certificate and client CA serve new connections");
    let mut limited = d.client("limited").await;
    wrap(&mut limited, by_label("test-aes-256"), wk, alg, None)
        .await
        .unwrap();

    // server.client_crl: cckm's new certificate revoked, its open connection refused
    let crl = revoke(&fresh, "cckm");
    std::fs::write(
        &config,
        rotated.replace(
            "[server]\n",
            &format!("[server]\nclient_crl = \"{}\"\n", crl.display()),
        ),
    )
    .unwrap();
    d.hangup();
    reloaded(&d, 3).await;
    let e = wrap(&mut after, by_label("test-aes-256"), wk, alg, None)
        .await
        .expect_err("a revoked certificate's open connection must not export");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(
        e.message().to_lowercase().contains("revoked"),
        "{}",
        e.message()
    );
    wrap(&mut limited, by_label("test-aes-256"), wk, alg, None)
        .await
        .expect("a certificate the CRL does not list serves on");
}

/// Low 8: SIGHUP silently kept `policy.allow_hybrid` and WrapKey's
/// `policy.min_wrapping_key_bits` as they were, and a reload to `caller_wrapping_keys =
/// "any"` warned nothing. Now the log names each setting that takes a restart, and the
/// reload warns as the start does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_names_what_takes_a_restart_and_warns_as_the_start_does() {
    let fx = softhsm();
    let (config, _) = daemon_config(fx, "reload-warns", "caller_wrapping_keys = \"none\"", None);
    let d = Daemon::start(&config, &[]);
    assert!(!d.log_text().contains("caller_wrapping_keys = \"any\""));
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "caller_wrapping_keys = \"none\"",
            "caller_wrapping_keys = \"any\"\nallow_hybrid = false\nmin_wrapping_key_bits = 3072",
        ),
    )
    .unwrap();
    d.hangup();
    let end = Instant::now() + Duration::from_secs(10);
    while !d.log_text().contains("SIGHUP: reloaded") {
        assert!(Instant::now() < end, "{}", d.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = d.log_text();
    let restart = log
        .lines()
        .find(|l| l.contains("takes a restart"))
        .unwrap_or_else(|| panic!("no restart warning: {log}"));
    assert!(
        restart.contains("policy.allow_hybrid") && restart.contains("policy.min_wrapping_key_bits"),
        "{restart}"
    );
    assert!(
        !restart.contains("server.listen"),
        "only what changed: {restart}"
    );
    assert!(
        log.matches("any caller with the wrap operation can export keys")
            .count()
            == 1,
        "the reload warns of \"any\" as a start does: {log}"
    );
}

/// `hsm-bridge health` invoked the wrong ways says what to do, once, in one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_what_to_do_when_invoked_wrongly() {
    let fx = softhsm();
    let server = common::daemon::tls_server_lines() + "health_listen = \"127.0.0.1:0\"\n";
    let (config, _) = daemon_config(fx, "health-cli", "", Some(&server));
    let d = Daemon::start(&config, &[]);
    let c = certs();
    let f = |name: &str| c.join(name).to_str().unwrap().to_string();
    let plain = d.health_addr();
    let free = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--addr".into(), free.clone()], "nothing listens on"),
        (
            vec!["--addr".into(), d.addr.clone()],
            "it speaks TLS: pass --ca",
        ),
        (
            vec!["--addr".into(), d.addr.clone(), "--ca".into(), f("ca.pem")],
            "asks for a client certificate: pass --cert and --key",
        ),
        (
            vec![
                "--addr".into(),
                d.addr.clone(),
                "--ca".into(),
                f("rogue-ca.pem"),
                "--cert".into(),
                f("cckm.pem"),
                "--key".into(),
                f("cckm.key"),
            ],
            "not one --ca vouches for",
        ),
        (
            vec![
                "--addr".into(),
                d.addr.clone(),
                "--ca".into(),
                f("ca.pem"),
                "--cert".into(),
                f("rogue.pem"),
                "--key".into(),
                f("rogue.key"),
            ],
            "refused the client certificate",
        ),
        (
            vec!["--addr".into(), plain.clone(), "--ca".into(), f("ca.pem")],
            "does not speak TLS there: leave out --ca",
        ),
    ];
    for (args, says) in cases {
        let mut all = vec!["health"];
        all.extend(args.iter().map(String::as_str));
        let line = hsm_bridge_refuses(&all);
        assert!(line.contains(says), "{args:?}: {line}");
        // each cause once
        for w in line.split(": ").collect::<Vec<_>>().windows(2) {
            assert_ne!(w[0], w[1], "{line}");
        }
    }
    // and the right ways answer
    let ok = hsm_bridge_ok(&["health", "--addr", &plain]);
    assert_eq!(ok.trim(), "SERVING");
    let ok = hsm_bridge_ok(&[
        "health",
        "--addr",
        &d.addr,
        "--ca",
        &f("ca.pem"),
        "--cert",
        &f("cckm.pem"),
        "--key",
        &f("cckm.key"),
    ]);
    assert_eq!(ok.trim(), "SERVING");
}
