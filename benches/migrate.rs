//! What `hsm-bridge migrate` achieves against a cloud that takes `--latency-ms` to answer
//! every call: a plan of `--imports` items (the SoftHSM2 test fixture's AES-256 key, a new
//! AWS KMS key each) with `--parallel` in flight, run in process (`--config`) and through
//! the release daemon (`--addr`, mTLS), each against a fresh `aws-kms-emulator` that delays
//! every signed call. Reports imports/s against the latency bound (in flight / (calls per
//! import × latency); the calls per import counted from the emulator's request log), and the
//! RSS of the process that does the work (the migrate process in process, the daemon through
//! it) sampled every second. A measurement: it asserts nothing.
//!
//!     ./softhsm-setup.sh && cargo bench --bench migrate [-- --imports 1000 --parallel 64 --latency-ms 300]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "../tests/common/mod.rs"]
mod common;

use common::aws_rig::{DEST, Rig, rig};
use common::daemon::certs;

struct Args {
    imports: usize,
    parallel: usize,
    latency_ms: u64,
}

fn args() -> Args {
    let mut a = Args {
        imports: 1000,
        parallel: 64,
        latency_ms: 300,
    };
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--imports" => a.imports = value() as usize,
            "--parallel" => a.parallel = value() as usize,
            "--latency-ms" => a.latency_ms = value(),
            other => panic!("unknown argument {other:?}; use --imports, --parallel, --latency-ms"),
        }
    }
    a
}

/// A plan of `n` items, the fixture's AES-256 key into a new key each.
fn plan(dir: &Path, name: &str, n: usize) -> std::path::PathBuf {
    let mut text = format!("name = \"{name}\"\n");
    for i in 0..n {
        text.push_str(&format!(
            "\n[[items]]\nid = \"{i}\"\nsource = \"test-aes-256\"\nto = \"{DEST}\"\nnew_key = true\nformat = \"aws:RSAES_OAEP_SHA_1\"\n"
        ));
    }
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

struct Run {
    wall: f64,
    seconds: f64,
    imported: u64,
    calls_per_import: f64,
    rss: Vec<f64>,
}

/// One run of the plan; `via`: the migrate arguments that say how (`--config` or `--addr`),
/// `watch`: the process whose RSS is sampled (`None`: the migrate process).
fn run(
    rig: &Rig,
    rt: &tokio::runtime::Runtime,
    a: &Args,
    via: &[String],
    watch: Option<u32>,
    name: &str,
) -> Run {
    let dir = rig.config.parent().unwrap().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let plan = plan(&dir, name, a.imports);
    let report = dir.join("report.json");
    rt.block_on(
        rig.emu
            .fault(json!({"delay_ms": a.latency_ms, "count": 100_000_000})),
    );
    let before = rt.block_on(rig.emu.requests()).len();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hsm-bridge"));
    cmd.arg("migrate")
        .args(via)
        .arg("--plan")
        .arg(&plan)
        .arg("--report")
        .arg(&report)
        .args(["--parallel", &a.parallel.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in &rig.env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let pid = watch.unwrap_or(child.id());
    let mut rss = Vec::new();
    let mut sampled: Option<Instant> = None;
    while child.try_wait().unwrap().is_none() {
        // (0 before the process has its memory, or once it has exited: no sample.)
        if sampled.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
            && let (kib @ 1.., _) = common::proc::rss_kib(pid)
        {
            rss.push(kib as f64 / 1024.0);
            sampled = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall = started.elapsed().as_secs_f64();
    rt.block_on(rig.emu.clear_faults());
    let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let imported = report["summary"]["imported"].as_u64().unwrap_or(0);
    // The run itself, from the first import to the last (the report's), without opening the
    // token and listing it.
    let seconds = report["seconds"].as_f64().unwrap_or(wall);
    // The emulator keeps its newest log entries: count the calls of the run's last imports
    // where the whole run does not fit.
    let log = rt.block_on(rig.emu.requests());
    let calls = log.len().saturating_sub(before);
    let imports_in_log = log[before.min(log.len())..]
        .iter()
        .filter(|r| r["op"] == "ImportKeyMaterial")
        .count()
        .max(1);
    Run {
        wall,
        seconds,
        imported,
        calls_per_import: calls as f64 / imports_in_log as f64,
        rss,
    }
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let fx = common::softhsm();
    println!(
        "migrate: {} imports (AES-256 into a new AWS KMS key each), {} in flight, {} ms per call",
        a.imports, a.parallel, a.latency_ms
    );
    println!(
        "| way | seconds (process) | seconds (imports) | imports/s | calls per import | bound/s | of the bound | RSS MiB first / max / last |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for way in ["in process", "through the daemon"] {
        let name = way.replace(' ', "-");
        let rig = rig(fx, &format!("bench-migrate-{name}"), &[], None);
        let (via, daemon) = match way {
            "in process" => (
                vec!["--config".into(), rig.config.display().to_string()],
                None,
            ),
            _ => {
                let text = std::fs::read_to_string(&rig.config).unwrap().replace(
                    "[server]\n",
                    &format!("[server]\nmax_queue = {}\n", a.parallel * 2),
                );
                std::fs::write(&rig.config, text).unwrap();
                let d = rig.daemon();
                let c = certs();
                let via = vec![
                    "--addr".into(),
                    d.addr.clone(),
                    "--ca".into(),
                    c.join("ca.pem").display().to_string(),
                    "--cert".into(),
                    c.join("cckm.pem").display().to_string(),
                    "--key".into(),
                    c.join("cckm.key").display().to_string(),
                    "--server-name".into(),
                    "localhost".into(),
                ];
                (via, Some(d))
            }
        };
        let pid = daemon.as_ref().map(|d| d.pid());
        let r = run(&rig, &rt, &a, &via, pid, &name);
        drop(daemon);
        let rate = r.imported as f64 / r.seconds;
        let bound = a.parallel as f64 / (r.calls_per_import * a.latency_ms as f64 / 1000.0);
        let (first, max, last) = (
            r.rss.first().copied().unwrap_or(0.0),
            r.rss.iter().copied().fold(0.0, f64::max),
            r.rss.last().copied().unwrap_or(0.0),
        );
        println!(
            "| {way} | {:.1} | {:.1} | {rate:.1} | {:.1} | {bound:.1} | {:.2} | {first:.0} / {max:.0} / {last:.0} |",
            r.wall,
            r.seconds,
            r.calls_per_import,
            rate / bound
        );
    }
}
