//! An import's journal writes, timed, for the benchmarks (benches/journal.rs,
//! benches/fleet.rs): the journal in this process, on the fixture token's record key.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hsm_bridge::config::Config;
use hsm_bridge::journal::{Claimed, Entry, Journal, Made, Outcome};

/// The journal of a config whose `[journal]` holds `journal_lines`.
pub(crate) fn journal(dir: &Path, name: &str, journal_lines: &str) -> Arc<Journal> {
    let text = format!(
        "[hsm]\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken_label = \"x\"\npin_env = \"UNUSED\"\n\n[journal]\n{journal_lines}"
    );
    let cfg =
        Config::parse(&text, &dir.join(format!("{name}.toml"))).unwrap_or_else(|e| panic!("{e}"));
    Journal::new(&cfg.journal).unwrap()
}

/// How many imports' writes are made, and not timed, before the `n` that are.
const WARM_UP: usize = 20;

/// `n` imports' journal writes (claim, commit of a body of OCI's size, the answer), made
/// by `in_flight` tasks at once: each import's time, from its ticket to its answer
/// recorded.
pub(crate) async fn journal_writes(
    j: &Arc<Journal>,
    tag: &str,
    n: usize,
    in_flight: usize,
) -> Vec<Duration> {
    let in_flight = in_flight.max(1);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let (j, tag, next) = (j.clone(), tag.to_string(), next.clone());
            tokio::spawn(async move {
                let mut times = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n + WARM_UP {
                        return times;
                    }
                    let took = one_import(&j, &tag, i).await;
                    if i >= WARM_UP {
                        times.push(took);
                    }
                }
            })
        })
        .collect();
    let mut times = Vec::with_capacity(n);
    for t in tasks {
        times.extend(t.await.unwrap());
    }
    times
}

/// One import's three journal writes, timed.
async fn one_import(j: &Arc<Journal>, tag: &str, i: usize) -> Duration {
    let body = Arc::new(zeroize::Zeroizing::new(vec![0x5au8; 740]));
    let made = Made {
        source_key_label: Some("bench-aes-256".into()),
        source_key_id_hex: Some("0b01".into()),
        mode: Some("hybrid".into()),
        wrapping_key_sha256: Some("00".repeat(32)),
    };
    let entry = Entry {
        token: format!("{tag}-{i:08}"),
        caller: "bench".into(),
        idempotency_key: Some(format!("bench-{i}")),
        operation: "ImportKeyVersion".into(),
        target: "ocid1.key.oc1..bench".into(),
        endpoint: "https://localhost:1".into(),
        algorithm: "RSA_OAEP_AES_SHA256".into(),
        digest: [7u8; 32],
    };
    let t = Instant::now();
    let ticket = j.ticket(entry).await.unwrap();
    let Claimed::Fresh(mut lease) = j.claim(&ticket).await.unwrap() else {
        panic!("a new token is fresh")
    };
    lease.prepare(body, &made).await.unwrap();
    lease
        .finish(&Outcome::Accepted {
            created_id: format!("ocid1.keyversion.oc1..{i}"),
            answer: "{\"id\":\"x\"}".into(),
            opc_request_id: "bench".into(),
        })
        .await;
    t.elapsed()
}
