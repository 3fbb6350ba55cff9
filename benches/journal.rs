//! What the import journal costs per import, next to what surrounds it, in one run:
//!
//! - **journal**: one import's three journal writes (claim, body commit, OCI's answer), each
//!   with its record MAC made in the HSM (the fixture token's record key, as the daemon
//!   does), in process, on SQLite (WAL, synchronous=FULL, on this machine's disk) and on PostgreSQL (a
//!   throw-away server on 127.0.0.1, as the tests start one; fsync off there, so its figure
//!   is the round trips and the server's work, not a disk's);
//! - **HSM wrap**: `Hsm::wrap` of an AES-256 key for an RSA-4096 key on the SoftHSM2 test
//!   fixture, in process; and one record MAC (`CKM_SHA256_HMAC` over a record of OCI's size);
//! - **import**: the daemon's whole ImportKeyVersion over mTLS against the local OCI
//!   emulator (GetKey, the wrap, the journal, the signed POST), once per journal backend.
//!
//! p50 and p99 of each. A measurement: it asserts nothing.
//!
//!     ./softhsm-setup.sh --with-postgres && cargo bench --bench journal [-- --imports N]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hsm_bridge::config::Config;
use hsm_bridge::hsm::{Hsm, KeyRef};
use hsm_bridge::journal::Journal;
use hsm_bridge::wrap::{Algorithm, Format, WrappingKey};

#[path = "../tests/common/mod.rs"]
mod common;

use common::daemon::{Daemon, daemon_config};
use common::emulator::{Emulator, api_identity};
use common::journal::{journal, journal_writes};
use common::postgres::Postgres;

fn args() -> usize {
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut imports = 1000;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--imports" => {
                imports = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--imports needs a number")
            }
            other => panic!("unknown argument {other:?}; use --imports N"),
        }
    }
    imports
}

/// (p50, p99) in microseconds.
fn quantiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e6;
    (at(0.50), at(0.99))
}

fn report(what: &str, v: Vec<Duration>) -> (f64, f64) {
    let n = v.len();
    let (p50, p99) = quantiles(v);
    println!("{what:<44} n {n:>5}  p50 {p50:>9.0} µs  p99 {p99:>9.0} µs");
    (p50, p99)
}

/// The daemon's ImportKeyVersion, `n` times, each with a fresh idempotency key (`tag` in
/// it: two daemons with journals of their own must not share keys, or the second re-wraps
/// under the first's retry token and OCI refuses it).
async fn imports(d: &Daemon, emu: &Emulator, tag: &str, n: usize) -> Vec<Duration> {
    let mut c = d.client("cckm").await;
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 5 {
        let req = emu.import_request(
            "k",
            format!("bench-{tag}-{}-{i}", std::process::id()),
            false,
        );
        let t = Instant::now();
        c.import_key_version(req).await.expect("import");
        if i >= 5 {
            times.push(t.elapsed());
        }
    }
    times
}

/// The daemon's whole ImportKeyVersion against the emulator, with each journal backend.
fn whole_imports(
    rt: &tokio::runtime::Runtime,
    fx: &common::Fixture,
    dir: &Path,
    pg: &Postgres,
    n: usize,
) -> Vec<(&'static str, (f64, f64))> {
    let identity = api_identity(dir, "api");
    let emu = Emulator::start(dir, &[identity.key.public_pem.as_path()], &["k=AES-256"]);
    let mut whole = Vec::new();
    for (name, lines) in [
        (
            "sqlite",
            "url = \"sqlite:./journal-daemon-bench-sqlite.sqlite\"\n".to_string(),
        ),
        ("postgres", pg.journal_lines("benchd")),
    ] {
        let (config, _) = daemon_config(
            fx,
            &format!("bench-{name}"),
            &emu.oci_config(&identity, 3),
            None,
        );
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text.replace(
            &format!("url = \"sqlite:./journal-daemon-bench-{name}.sqlite\"\n"),
            &lines,
        );
        std::fs::write(&config, text).unwrap();
        let d = Daemon::start(&config, &[]);
        let count = n.min(300);
        let times = rt.block_on(imports(&d, &emu, name, count));
        whole.push((
            name,
            report(
                &format!("daemon ImportKeyVersion, journal on {name}"),
                times,
            ),
        ));
    }
    whole
}

fn main() {
    let n = args();
    let fx = common::softhsm();
    let dir = fx.dir.join("bench-journal");
    std::fs::create_dir_all(&dir).unwrap();
    let pg = Postgres::start("bench").expect("PostgreSQL: ./softhsm-setup.sh --with-postgres");
    pg.create_db("bench");
    pg.create_db("benchd");
    // the fixture token's config for this process's own module load
    let conf = fx.conf.to_string_lossy().into_owned();
    hsm_bridge::hsm::raw::set_module_env([(&"SOFTHSM2_CONF".to_string(), &conf)]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("hsm-bridge journal bench: {n} imports per journal figure");

    let cfg = Config::load(&fx.config).unwrap_or_else(|e| panic!("{e}"));
    let hsm = Arc::new(Hsm::open(&cfg.hsm, &cfg.policy).unwrap_or_else(|e| panic!("{e}")));
    let sqlite = journal(&dir, "sqlite", "url = \"sqlite:./bench-journal.sqlite\"\n");
    let postgres = journal(&dir, "postgres", &pg.journal_lines("bench"));
    for j in [&sqlite, &postgres] {
        j.set_key(Journal::key_from(&cfg.journal, &hsm).unwrap_or_else(|e| panic!("{e}")));
    }
    let tag = format!("b{}", std::process::id());
    let j_sqlite = report(
        "journal, SQLite (3 synchronous commits, 3 MACs)",
        rt.block_on(journal_writes(&sqlite, &format!("{tag}s"), n, 1)),
    );
    let j_pg = report(
        "journal, PostgreSQL on loopback (3 statements, 3 MACs)",
        rt.block_on(journal_writes(&postgres, &format!("{tag}p"), n, 1)),
    );

    let record = vec![0x5au8; 1100];
    let macs: Vec<Duration> = (0..n.min(500) + 20)
        .map(|_| {
            let t = Instant::now();
            hsm.record_mac(cfg.journal.mac_key_label(), &record)
                .unwrap();
            t.elapsed()
        })
        .skip(20)
        .collect();
    let mac = report("record MAC (CKM_SHA256_HMAC), in process", macs);
    let wk =
        WrappingKey::from_pem(&std::fs::read(&fx.wk.wk4096.public_pem).unwrap(), 2048).unwrap();
    let key = KeyRef::Label("test-aes-256".into());
    let wraps: Vec<Duration> = (0..n.min(500) + 20)
        .map(|_| {
            let t = Instant::now();
            hsm.wrap(&key, &wk, Format::oci(Algorithm::RsaOaepAesSha256), None)
                .unwrap();
            t.elapsed()
        })
        .skip(20)
        .collect();
    let wrap = report(&format!("HSM wrap ({}), in process", hsm.mode()), wraps);
    drop((sqlite, postgres));
    if let Ok(hsm) = Arc::try_unwrap(hsm) {
        hsm.close();
    }

    let whole = whole_imports(&rt, fx, &dir, &pg, n);
    println!();
    println!("| per import | p50 µs | p99 µs |");
    println!("|---|---|---|");
    println!(
        "| journal, SQLite | {:.0} | {:.0} |",
        j_sqlite.0, j_sqlite.1
    );
    println!(
        "| journal, PostgreSQL (loopback) | {:.0} | {:.0} |",
        j_pg.0, j_pg.1
    );
    println!("| HSM wrap | {:.0} | {:.0} |", wrap.0, wrap.1);
    println!("| record MAC in the HSM | {:.0} | {:.0} |", mac.0, mac.1);
    for (name, (p50, p99)) in &whole {
        println!(
            "| whole import (emulator on loopback), journal on {name} | {p50:.0} | {p99:.0} |"
        );
    }
}
