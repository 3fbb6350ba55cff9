//! Many imports at a cloud's latency, in one run:
//!
//! - **imports**: the release daemon (`hsm-bridge serve`, mutual TLS, the SQLite journal, as
//!   the tests start it) against the OCI emulator, every call to which is answered
//!   `--latency-ms` late (one fault of the emulator's own list, `delay_ms` on every
//!   request); `--imports` ImportKeyVersion calls (a fresh idempotency key each, into one
//!   OCI key) from this process, `--in-flight` at once over `--connections` connections.
//!   Imports per second against the latency bound, in-flight / (OCI calls per import ×
//!   latency), the calls per import counted in the emulator's request log; the caller's
//!   p50/p99; the daemon's mean OCI call time by operation and its HSM queue's peak (its
//!   metrics); the daemon's and the emulator's CPU;
//! - **RSS**: the daemon's, sampled every second of the run;
//! - **journal**: one import's three journal writes (claim, body commit, answer, each with
//!   its record MAC in the fixture token), in this process, on SQLite as the daemon keeps
//!   it: one at a time as benches/journal.rs measures them, and `--in-flight` at once. The
//!   daemon exports no journal timing.
//!
//! A measurement: it asserts nothing.
//!
//!     cargo bench --bench fleet [-- --imports 1000 --in-flight 64 --latency-ms 300
//!         --connections 8 --sessions N --max-queue N --io-threads N --wait]
//!
//! `--sessions`, `--max-queue` and `--io-threads` set `hsm.sessions`, `server.max_queue` and
//! `server.io_threads` (default: the test fixture's 2 sessions and the daemon's defaults);
//! `--wait` asks each import to wait for ENABLED (more calls: GetKeyVersion polls).
//! The emulator is the tests' debug build unless `HSM_BRIDGE_EMULATOR_BIN` names another
//! (BENCHMARKS.md, "Many imports at cloud latency", builds an optimised one).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hsm_bridge::config::Config;
use hsm_bridge::hsm::Hsm;
use hsm_bridge::journal::Journal;
use hsm_bridge::proto::key_source_bridge_client::KeySourceBridgeClient;
use serde_json::{Value, json};
use tonic::transport::Channel;

#[path = "../tests/common/mod.rs"]
mod common;

use common::daemon::{self, Daemon, sample};
use common::emulator::{Emulator, api_identity};
use common::journal::{journal, journal_writes};
use common::proc::{cpu_seconds, rss_kib, threads};

struct Args {
    imports: usize,
    in_flight: usize,
    latency_ms: u64,
    connections: usize,
    sessions: Option<usize>,
    max_queue: Option<usize>,
    io_threads: Option<usize>,
    wait: bool,
}

fn args() -> Args {
    let mut a = Args {
        imports: 1000,
        in_flight: 64,
        latency_ms: 300,
        connections: 8,
        sessions: None,
        max_queue: None,
        io_threads: None,
        wait: false,
    };
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(flag) = it.next() {
        let mut number = || -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--imports" => a.imports = number().max(1),
            "--in-flight" => a.in_flight = number().max(1),
            "--latency-ms" => a.latency_ms = number() as u64,
            "--connections" => a.connections = number().max(1),
            "--sessions" => a.sessions = Some(number()),
            "--max-queue" => a.max_queue = Some(number()),
            "--io-threads" => a.io_threads = Some(number()),
            "--wait" => a.wait = true,
            other => panic!(
                "unknown argument {other:?}; use --imports N --in-flight N --latency-ms N --connections N --sessions N --max-queue N --io-threads N --wait"
            ),
        }
    }
    a
}

/// (p50, p99) in milliseconds.
fn quantiles(mut v: Vec<Duration>) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e3;
    (at(0.50), at(0.99))
}

/// The daemon config: the fixture's token, mTLS, its own SQLite journal, metrics on
/// loopback, the emulator as the OCI endpoint, and the chosen sizes.
fn fleet_config(
    a: &Args,
    emu: &Emulator,
    identity: &common::emulator::ApiIdentity,
) -> std::path::PathBuf {
    let fx = common::softhsm();
    let mut server = daemon::tls_server_lines();
    if let Some(q) = a.max_queue {
        server.push_str(&format!("max_queue = {q}\n"));
    }
    if let Some(t) = a.io_threads {
        server.push_str(&format!("io_threads = {t}\n"));
    }
    let policy = format!(
        "\n[metrics]\nlisten = \"127.0.0.1:0\"\n{}",
        emu.oci_config(identity, 3)
    );
    // (the fixture, and so the journal beside its config, is made afresh by each run)
    let (config, _audit) = daemon::daemon_config(fx, "fleet", &policy, Some(&server));
    if let Some(s) = a.sessions {
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(
            &config,
            text.replace("sessions = 2\n", &format!("sessions = {s}\n")),
        )
        .unwrap();
    }
    config
}

/// What one load gave.
struct Load {
    latencies: Vec<Duration>,
    /// Refusals by gRPC code.
    errors: BTreeMap<String, usize>,
    elapsed: Duration,
    /// The daemon's RSS (KiB) at the start and then every second.
    rss: Vec<u64>,
    /// The highest `hsm_bridge_hsm_queue_calls` seen in the per-second scrapes.
    queue_peak: f64,
    /// The daemon's thread count, each second.
    threads: Vec<u64>,
}

/// `n` imports, `in_flight` at once, each idempotency key `{tag}-{i}`.
async fn load(
    d: &Daemon,
    emu: &Emulator,
    channels: &[Channel],
    a: &Args,
    n: usize,
    tag: &str,
    sample_every_second: bool,
) -> Load {
    let next = Arc::new(AtomicUsize::new(0));
    let done = AtomicBool::new(false);
    let started = Instant::now();
    let tasks: Vec<_> = (0..a.in_flight)
        .map(|w| {
            let mut client = KeySourceBridgeClient::new(channels[w % channels.len()].clone());
            let (next, tag) = (next.clone(), tag.to_string());
            let template = emu.import_request("k", String::new(), a.wait);
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), BTreeMap::<String, usize>::new());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return (lat, errors);
                    }
                    let mut req = template.clone();
                    req.idempotency_key = format!("{tag}-{i}");
                    let mut r = tonic::Request::new(req);
                    r.set_timeout(Duration::from_secs(60));
                    let t = Instant::now();
                    match client.import_key_version(r).await {
                        Ok(_) => lat.push(t.elapsed()),
                        Err(e) => *errors.entry(format!("{:?}", e.code())).or_default() += 1,
                    }
                }
            })
        })
        .collect();
    let mut rss = vec![rss_kib(d.pid()).0];
    let mut queue_peak = 0f64;
    let mut thread_counts = vec![threads(d.pid())];
    let sampler = async {
        while sample_every_second && !done.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if done.load(Ordering::Relaxed) {
                break;
            }
            rss.push(rss_kib(d.pid()).0);
            thread_counts.push(threads(d.pid()));
            let m = d.scrape_metrics().await;
            queue_peak = queue_peak.max(sample(&m, "hsm_bridge_hsm_queue_calls"));
        }
    };
    let work = async {
        let mut latencies = Vec::with_capacity(n);
        let mut errors = BTreeMap::new();
        for t in tasks {
            let (l, e) = t.await.unwrap();
            latencies.extend(l);
            for (k, v) in e {
                *errors.entry(k).or_default() += v;
            }
        }
        done.store(true, Ordering::Relaxed);
        (latencies, errors, started.elapsed())
    };
    let ((latencies, errors, elapsed), ()) = tokio::join!(work, sampler);
    rss.push(rss_kib(d.pid()).0);
    Load {
        latencies,
        errors,
        elapsed,
        rss,
        queue_peak,
        threads: thread_counts,
    }
}

/// The OCI operation a logged request was, from its method and path.
fn operation(method: &str, path: &str) -> String {
    let rest = path.strip_prefix("/20180608/").unwrap_or(path);
    let parts: Vec<&str> = rest.split('/').collect();
    match (method, parts.as_slice()) {
        ("GET", ["wrappingKeys"]) => "GetWrappingKey".into(),
        ("GET", ["keys", _]) => "GetKey".into(),
        ("POST", ["keys", "import"]) => "ImportKey".into(),
        ("POST", ["keys", _, "keyVersions", "import"]) => "ImportKeyVersion".into(),
        ("GET", ["keys", _, "keyVersions", _]) => "GetKeyVersion".into(),
        _ => format!("{method} {rest}"),
    }
}

/// The emulator's logged requests after sequence number `after`, by operation; and whether
/// the log (10,000 entries) still held all of them.
fn requests_since(log: &[Value], after: u64) -> (BTreeMap<String, usize>, bool) {
    let mut by_op = BTreeMap::new();
    let mut first = None;
    for e in log {
        let seq = e["seq"].as_u64().unwrap();
        if seq <= after {
            continue;
        }
        first = Some(first.map_or(seq, |f: u64| f.min(seq)));
        let op = operation(e["method"].as_str().unwrap(), e["path"].as_str().unwrap());
        *by_op.entry(op).or_default() += 1;
    }
    let complete = first.is_none_or(|f| f == after + 1);
    (by_op, complete)
}

fn last_seq(log: &[Value]) -> u64 {
    log.iter()
        .filter_map(|e| e["seq"].as_u64())
        .max()
        .unwrap_or(0)
}

/// The sum of every sample of `name` in a scrape whose labels hold `labels` (e.g.
/// `operation="GetKey"`; "" for all).
fn total(scrape: &str, name: &str, labels: &str) -> f64 {
    scrape
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (series, value) = rest.rsplit_once(' ')?;
            let ours = (series.is_empty() || series.starts_with('{')) && series.contains(labels);
            ours.then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The mean of histogram `name` (its series holding `labels`) between two scrapes, in
/// milliseconds, and how many observations it is over.
fn mean_ms(before: &str, after: &str, name: &str, labels: &str) -> (f64, f64) {
    let of = |s: &str| {
        (
            total(s, &format!("{name}_sum"), labels),
            total(s, &format!("{name}_count"), labels),
        )
    };
    let ((s0, c0), (s1, c1)) = (of(before), of(after));
    ((s1 - s0) / (c1 - c0) * 1e3, c1 - c0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() {
    let a = args();
    let fx = common::softhsm();
    let dir = fx.dir.join("bench-fleet");
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "hsm-bridge fleet bench: {} ImportKeyVersion, {} in flight over {} connections, {} ms per OCI call{}",
        a.imports,
        a.in_flight,
        a.connections,
        a.latency_ms,
        if a.wait { ", waiting for ENABLED" } else { "" }
    );

    println!("emulator {}", common::emulator::binary().display());
    let identity = api_identity(&dir, "api");
    let emu = Emulator::start(&dir, &[identity.key.public_pem.as_path()], &["k=AES-256"]);
    if a.latency_ms > 0 {
        // every request, control ones aside, answered this late (u32::MAX of them)
        rt.block_on(emu.fault(json!({"count": u32::MAX, "delay_ms": a.latency_ms})));
    }
    let config = fleet_config(&a, &emu, &identity);
    let d = Daemon::start(&config, &[]);
    let text = std::fs::read_to_string(&config).unwrap();
    let setting = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name} = ")))
            .map_or("(default)".to_string(), |l| l.to_string())
    };
    println!(
        "daemon {} (pid {}): {}, {}, {}",
        std::env::var("HSM_BRIDGE_DAEMON_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_hsm-bridge").into()),
        d.pid(),
        setting("sessions"),
        setting("max_queue"),
        setting("io_threads")
    );

    let channels: Vec<Channel> = rt.block_on(async {
        let mut out = Vec::new();
        for _ in 0..a.connections {
            out.push(d.channel(Some("cckm")).await.expect("mTLS connect"));
        }
        out
    });
    let tag = format!("fleet-{}", std::process::id());
    // Warm-up, not counted: the vault's wrapping key fetched, the daemon's connections to
    // the emulator and the callers' to the daemon open.
    let warm = rt.block_on(load(
        &d,
        &emu,
        &channels,
        &a,
        a.in_flight,
        &format!("{tag}-w"),
        false,
    ));
    assert!(warm.errors.is_empty(), "warm-up: {:?}", warm.errors);

    let (log_before, scrape_before) =
        rt.block_on(async { (emu.requests().await, d.scrape_metrics().await) });
    let after = last_seq(&log_before);
    let (cpu_d, cpu_e) = (
        cpu_seconds(&d.pid().to_string()),
        cpu_seconds(&emu.pid().to_string()),
    );
    let run = rt.block_on(load(&d, &emu, &channels, &a, a.imports, &tag, true));
    let cpu_d = cpu_seconds(&d.pid().to_string()) - cpu_d;
    let cpu_e = cpu_seconds(&emu.pid().to_string()) - cpu_e;
    let (log_after, scrape_after) =
        rt.block_on(async { (emu.requests().await, d.scrape_metrics().await) });
    let peak_kib = rss_kib(d.pid()).1;
    let (by_op, complete) = requests_since(&log_after, after);
    drop(channels);
    drop(d);
    drop(emu);

    let ok = run.latencies.len();
    let secs = run.elapsed.as_secs_f64();
    let rate = ok as f64 / secs;
    let calls: usize = by_op.values().sum();
    let per_import = calls as f64 / a.imports as f64;
    let latency = a.latency_ms as f64 / 1e3;
    let bound = a.in_flight as f64 / (per_import * latency);
    let (p50, p99) = quantiles(run.latencies);
    println!();
    println!(
        "imports: {ok} answered, errors {:?}, in {secs:.2} s: {rate:.1} imports/s",
        run.errors
    );
    println!(
        "OCI requests in the emulator's log during the run: {calls} ({per_import:.2} per import){}: {by_op:?}",
        if complete {
            ""
        } else {
            " (the log had rolled over: undercounted)"
        }
    );
    if a.latency_ms > 0 {
        println!(
            "bound: {} in flight / ({per_import:.2} calls × {latency:.3} s) = {bound:.1} imports/s; measured / bound = {:.3}",
            a.in_flight,
            rate / bound
        );
    }
    println!(
        "caller's time per import: p50 {p50:.1} ms, p99 {p99:.1} ms ({:.1} ms of it OCI latency)",
        per_import * a.latency_ms as f64
    );
    let mean = |name: &str, labels: &str| mean_ms(&scrape_before, &scrape_after, name, labels);
    for op in [
        "GetKey",
        "GetWrappingKey",
        "ImportKeyVersion",
        "GetKeyVersion",
    ] {
        let (ms, calls) = mean(
            "hsm_bridge_oci_call_seconds",
            &format!("operation=\"{op}\""),
        );
        if calls > 0.0 {
            println!("daemon's mean OCI {op} call: {ms:.1} ms over {calls} calls");
        }
    }
    let (rpc, _) = mean("hsm_bridge_rpc_seconds", "method=\"ImportKeyVersion\"");
    let (wrap, wraps) = mean("hsm_bridge_hsm_wrap_seconds", "");
    println!(
        "daemon's mean ImportKeyVersion call, from its handler's start to its answer: {rpc:.1} ms; mean HSM wrap {wrap:.2} ms over {wraps} wraps"
    );
    println!(
        "daemon's HSM queue (calls holding or waiting), peak of the per-second scrapes: {}; its threads each second: {:?}",
        run.queue_peak, run.threads
    );
    println!(
        "CPU over the run: daemon {cpu_d:.2} s ({:.2} ms per import, {:.0} % of one core), emulator {cpu_e:.2} s ({:.0} % of one core)",
        cpu_d / ok.max(1) as f64 * 1e3,
        cpu_d / secs * 100.0,
        cpu_e / secs * 100.0
    );
    let (first, last) = (run.rss[0], *run.rss.last().unwrap());
    let max = run.rss.iter().copied().max().unwrap();
    println!(
        "daemon RSS, {} samples (start, each second, end): first {:.1} MiB, max {:.1} MiB, last {:.1} MiB (peak {:.1} MiB); {:.0} bytes per import; samples {:?}",
        run.rss.len(),
        mib(first),
        mib(max),
        mib(last),
        mib(peak_kib),
        (last as f64 - first as f64) * 1024.0 / ok.max(1) as f64,
        run.rss
    );

    // The journal, in this process, on the fixture's token (the daemon has stopped).
    let conf = fx.conf.to_string_lossy().into_owned();
    hsm_bridge::hsm::raw::set_module_env([(&"SOFTHSM2_CONF".to_string(), &conf)]);
    let cfg = Config::load(&fx.config).unwrap_or_else(|e| panic!("{e}"));
    let hsm = Arc::new(Hsm::open(&cfg.hsm, &cfg.policy).unwrap_or_else(|e| panic!("{e}")));
    let j = journal(&dir, "sqlite", "url = \"sqlite:./fleet-journal.sqlite\"\n");
    j.set_key(Journal::key_from(&cfg.journal, &hsm).unwrap_or_else(|e| panic!("{e}")));
    let n = a.imports.min(1000);
    let one = quantiles(rt.block_on(journal_writes(&j, &format!("{tag}-j1"), n, 1)));
    let many = quantiles(rt.block_on(journal_writes(&j, &format!("{tag}-jn"), n, a.in_flight)));
    println!(
        "journal per import (SQLite, 3 commits, 3 MACs; {n} imports, {} HSM sessions in this process): one at a time p50 {:.2} ms, p99 {:.2} ms; {} at once p50 {:.2} ms, p99 {:.2} ms",
        cfg.hsm.sessions, one.0, one.1, a.in_flight, many.0, many.1
    );
    drop(j);
    if let Ok(hsm) = Arc::try_unwrap(hsm) {
        hsm.close();
    }

    println!();
    println!("| figure | measured | goal |");
    println!("|---|---|---|");
    if a.latency_ms > 0 {
        println!(
            "| imports/s ({} in flight, {} ms per call, {per_import:.2} calls per import) | {rate:.1} | ≥ 0.9 × {bound:.1} = {:.1} (ratio {:.3}) |",
            a.in_flight,
            a.latency_ms,
            0.9 * bound,
            rate / bound
        );
    } else {
        println!(
            "| imports/s ({} in flight, no added latency) | {rate:.1} | — |",
            a.in_flight
        );
    }
    println!("| caller's p50 / p99 ms | {p50:.1} / {p99:.1} | — |");
    println!(
        "| journal p50 / p99 ms, one at a time | {:.2} / {:.2} | p99 ≤ 2 |",
        one.0, one.1
    );
    println!(
        "| journal p50 / p99 ms, {} at once | {:.2} / {:.2} | — |",
        a.in_flight, many.0, many.1
    );
    println!(
        "| daemon RSS first / max / last MiB | {:.1} / {:.1} / {:.1} | flat |",
        mib(first),
        mib(max),
        mib(last)
    );
}
