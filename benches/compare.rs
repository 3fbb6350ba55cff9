//! The daemon against the HSM's own limit, on one token of its own, in one run:
//!
//! - **floor**: the chosen wrap mode called in-process on the same session pool, N threads
//!   (N = `--sessions`), no gRPC;
//! - **daemon**: `hsm-bridge serve` on 127.0.0.1 with mutual TLS, C concurrent `WrapKey`
//!   callers for T seconds (C = N, 16, 64): ops/s, p50/p99/max, errors, daemon peak RSS; the
//!   AES-256 run at 16 callers lasts `--soak` seconds and samples the daemon's RSS;
//! - **recipe**: the openssl command-line recipe from OCI's documentation, per wrap;
//! - **token size**: daemon p50 at 1 caller with 10 and with `--fillers` extra objects;
//!
//! for an AES-256 and an RSA-3072 source key, wrapped for an RSA-4096 key (a vault's size).
//! Prints a table and the targets of issue 6; `--json` prints the same as JSON on stdout
//! (the table then goes to stderr). A measurement: it asserts nothing.
//!
//!     ./softhsm-setup.sh && cargo bench --bench compare [-- --json --seconds 10 --soak 60]
//!
//! The token is the test suite's fixture (tests/common/mod.rs), made fresh each run under
//! target/tmp/ (never the dev token); the daemon runs as the test suite starts it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hsm_bridge::config::Config;
use hsm_bridge::hsm::{Hsm, KeyRef};
use hsm_bridge::proto::key_source_bridge_client::KeySourceBridgeClient;
use hsm_bridge::proto::{self, WrapKeyRequest};
use hsm_bridge::wrap::{Algorithm, WrappingKey};
use serde_json::{Value, json};
use tonic::transport::Channel;

#[path = "../tests/common/mod.rs"]
mod common;

use common::Fixture;
use common::daemon::{self, Daemon};

const KEYS: [(&str, &str); 2] = [("AES-256", "test-aes-256"), ("RSA-3072", "test-rsa-3072")];
const FEW_FILLERS: usize = 10;

struct Args {
    json: bool,
    seconds: u64,
    soak: u64,
    sessions: usize,
    fillers: usize,
}

fn args() -> Args {
    let mut a = Args {
        json: false,
        seconds: 10,
        soak: 60,
        sessions: 4,
        fillers: 5000,
    };
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(flag) = it.next() {
        let mut num = |name: &str| -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match flag.as_str() {
            "--json" => a.json = true,
            "--seconds" => a.seconds = num("--seconds"),
            "--soak" => a.soak = num("--soak"),
            "--sessions" => a.sessions = num("--sessions") as usize,
            "--fillers" => a.fillers = num("--fillers") as usize,
            other => panic!(
                "unknown argument {other:?}; use --json, --seconds N, --soak N, --sessions N, --fillers N"
            ),
        }
    }
    a
}

/// Where the report goes: stdout, or stderr when stdout carries JSON.
fn say(json: bool, line: &str) {
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The daemon config of the benchmark on the fixture's token: `sessions` sessions, the
/// test client `cckm` over mutual TLS, any wrapping key.
fn bench_config(fx: &Fixture, sessions: usize) -> PathBuf {
    let (config, _audit) = daemon::daemon_config(
        fx,
        "compare",
        "caller_wrapping_keys = \"any\"",
        Some(&format!("{}max_queue = 256\n", daemon::tls_server_lines())),
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace("sessions = 2\n", &format!("sessions = {sessions}\n"));
    std::fs::write(&config, text).unwrap();
    config
}

/// Adds `n` token data objects (labels `filler-K`) to the fixture's token, in this process.
fn add_fillers(fx: &Fixture, from: usize, n: usize) {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::object::{Attribute, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    // SOFTHSM2_CONF was set in main, before any other thread started.
    let p = Pkcs11::new(&fx.module).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = p
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| p.get_token_info(*s).unwrap().label().trim_end() == common::TOKEN)
        .unwrap();
    let s = p.open_rw_session(slot).unwrap();
    s.login(UserType::User, Some(&AuthPin::new(common::PIN.into())))
        .unwrap();
    for i in from..from + n {
        s.create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Label(format!("filler-{i}").into_bytes()),
            Attribute::Value(vec![0u8; 16]),
        ])
        .unwrap();
    }
    s.logout().ok();
    drop(s);
    p.finalize().ok();
}

#[derive(Default)]
struct Stats {
    ops: usize,
    errors: usize,
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

impl Stats {
    fn from(mut lat: Vec<Duration>, errors: usize, elapsed: Duration) -> Stats {
        lat.sort();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let pick = |q: f64| {
            lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
                .map_or(0.0, |&d| us(d))
        };
        Stats {
            ops: lat.len(),
            errors,
            ops_per_s: lat.len() as f64 / elapsed.as_secs_f64(),
            p50_us: pick(0.50),
            p99_us: pick(0.99),
            max_us: lat.last().map_or(0.0, |&d| us(d)),
        }
    }

    fn json(&self) -> Value {
        json!({"ops": self.ops, "errors": self.errors, "ops_per_s": round(self.ops_per_s),
               "p50_us": round(self.p50_us), "p99_us": round(self.p99_us), "max_us": round(self.max_us)})
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// This process's resident set, KiB.
fn self_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// In-process wraps on `threads` threads for `secs`.
fn floor(hsm: &Arc<Hsm>, label: &str, wk: &Arc<WrappingKey>, threads: usize, secs: u64) -> Stats {
    let key = KeyRef::Label(label.into());
    for _ in 0..50 {
        hsm.wrap(&key, wk, Algorithm::RsaOaepAesSha256, None)
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (hsm, wk, key, stop) = (hsm.clone(), wk.clone(), key.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(100_000);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    std::hint::black_box(
                        hsm.wrap(&key, &wk, Algorithm::RsaOaepAesSha256, None)
                            .unwrap(),
                    );
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let lat: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    Stats::from(lat, 0, started.elapsed())
}

/// A process's (current RSS, peak RSS) in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `n` mutual-TLS channels to the daemon, as the test client `cckm`.
async fn channels(d: &Daemon, n: usize) -> Vec<Channel> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(d.channel(Some("cckm")).await.expect("mTLS connect"));
    }
    out
}

/// `callers` concurrent WrapKey loops for `secs`; with `rss`, the daemon's RSS each second.
async fn load(
    channels: &[Channel],
    label: &str,
    pem: &str,
    callers: usize,
    secs: u64,
    rss: Option<(&Daemon, &mut Vec<u64>)>,
) -> Stats {
    let req = WrapKeyRequest {
        source_key: Some(proto::KeyRef {
            key: Some(proto::key_ref::Key::Label(label.into())),
        }),
        wrapping_public_key_pem: pem.into(),
        algorithm: proto::WrappingAlgorithm::RsaOaepAesSha256 as i32,
    };
    // warm up every connection
    for ch in channels {
        KeySourceBridgeClient::new(ch.clone())
            .wrap_key(req.clone())
            .await
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let mut c = KeySourceBridgeClient::new(channels[i % channels.len()].clone());
            let (req, stop, errors) = (req.clone(), stop.clone(), errors.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(50_000);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match c.wrap_key(req.clone()).await {
                        Ok(r) => {
                            std::hint::black_box(r);
                            lat.push(t.elapsed());
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                lat
            })
        })
        .collect();
    match rss {
        Some((d, samples)) => {
            for _ in 0..secs {
                tokio::time::sleep(Duration::from_secs(1)).await;
                samples.push(rss_kib(d.pid()).0);
            }
        }
        None => tokio::time::sleep(Duration::from_secs(secs)).await,
    }
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    Stats::from(
        lat,
        errors.load(Ordering::Relaxed) as usize,
        started.elapsed(),
    )
}

/// One wrap with the openssl command-line recipe of OCI's documentation (a process per
/// step; the key in clear in a file, which is what hsm-bridge exists to avoid).
fn recipe_once(dir: &Path, wrapping_pem: &Path, kind: &str) {
    let f = |n: &str| dir.join(n);
    run(Command::new("openssl")
        .args(["rand", "-out"])
        .arg(f("temp_aes_key"))
        .arg("32"));
    run(Command::new("openssl")
        .args(["pkeyutl", "-encrypt", "-in"])
        .arg(f("temp_aes_key"))
        .args(["-pubin", "-inkey"])
        .arg(wrapping_pem)
        .args(["-out"])
        .arg(f("wrapped_temp_aes_key"))
        .args([
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha256",
            "-pkeyopt",
            "rsa_mgf1_md:sha256",
        ]));
    let target = if kind == "RSA-3072" {
        run(Command::new("openssl")
            .args([
                "pkcs8", "-topk8", "-nocrypt", "-inform", "PEM", "-outform", "DER", "-in",
            ])
            .arg(f("private_key.pem"))
            .arg("-out")
            .arg(f("private_key.der")));
        f("private_key.der")
    } else {
        f("target_key.bin")
    };
    let hex = run(Command::new("hexdump")
        .args(["-v", "-e", "/1 \"%02x\""])
        .arg(f("temp_aes_key")));
    run(Command::new("openssl")
        .args(["enc", "-id-aes256-wrap-pad", "-iv", "A65959A6", "-K"])
        .arg(String::from_utf8(hex).unwrap())
        .arg("-in")
        .arg(target)
        .arg("-out")
        .arg(f("wrapped_target_key")));
    let material = std::fs::File::create(f("wrapped_key_material")).unwrap();
    run(Command::new("cat")
        .arg(f("wrapped_temp_aes_key"))
        .arg(f("wrapped_target_key"))
        .stdout(material));
}

/// Median milliseconds per recipe wrap over `n` runs.
fn recipe(dir: &Path, wrapping_pem: &Path, kind: &str, n: usize) -> f64 {
    let d = dir.join(format!("recipe-{kind}"));
    std::fs::create_dir_all(&d).unwrap();
    if kind == "RSA-3072" {
        run(Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:3072",
                "-out",
            ])
            .arg(d.join("private_key.pem")));
    } else {
        let mut k = [0u8; 32];
        openssl::rand::rand_bytes(&mut k).unwrap();
        common::write_private(&d.join("target_key.bin"), &k);
    }
    let mut times: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            recipe_once(&d, wrapping_pem, kind);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[n / 2]
}

/// What one run measured.
#[derive(Default)]
struct Measured {
    mode: String,
    floors: BTreeMap<&'static str, Stats>,
    /// This process's RSS growth per in-process wrap, bytes.
    floor_growth: BTreeMap<&'static str, f64>,
    daemon: BTreeMap<(&'static str, usize), Stats>,
    /// Daemon p50 at one caller with FEW_FILLERS and with `--fillers` extra objects.
    p50_few: BTreeMap<&'static str, f64>,
    p50_many: BTreeMap<&'static str, f64>,
    recipes: BTreeMap<&'static str, f64>,
    soak_rss: Vec<u64>,
    peak_kib: u64,
}

fn main() {
    let a = args();
    let out = |l: &str| say(a.json, l);
    let t0 = Instant::now();
    out(&format!(
        "hsm-bridge compare: {} cores, sessions {}, {} s per load point, {} s soak, token {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        a.sessions,
        a.seconds,
        a.soak,
        common::TOKEN
    ));
    let fx = common::softhsm();
    let config = bench_config(fx, a.sessions);
    // The token's config for this process's own module loads (fillers, floor): set now,
    // while this is the only thread.
    let conf = fx.conf.to_string_lossy().into_owned();
    hsm_bridge::hsm::raw::set_module_env([(&"SOFTHSM2_CONF".to_string(), &conf)]);
    add_fillers(fx, 0, FEW_FILLERS);
    let wk_path = fx.wk.wk4096.public_pem.clone();
    let pem = std::fs::read_to_string(&wk_path).unwrap();

    let mut m = Measured::default();
    measure_floor(&a, &config, &pem, &mut m);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(measure_daemon(&a, &config, &pem, &mut m));
    for (kind, _) in KEYS {
        let ms = recipe(&fx.dir, &wk_path, kind, 21);
        out(&format!(
            "recipe  {kind:<8} openssl command line: {ms:.1} ms per wrap"
        ));
        m.recipes.insert(kind, ms);
    }
    let t = Instant::now();
    add_fillers(fx, FEW_FILLERS, a.fillers - FEW_FILLERS);
    out(&format!(
        "token   {} extra objects added in {:.1} s",
        a.fillers - FEW_FILLERS,
        t.elapsed().as_secs_f64()
    ));
    rt.block_on(measure_token_size(&a, &config, &pem, &mut m));
    let report = report(&a, &m);
    out(&format!("total {:.0} s", t0.elapsed().as_secs_f64()));
    if a.json {
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut stdout, &report).unwrap();
        writeln!(stdout).unwrap();
    }
}

/// The in-process floor for each key, on the daemon config's token and session count.
fn measure_floor(a: &Args, config: &Path, pem: &str, m: &mut Measured) {
    let wk = Arc::new(WrappingKey::from_pem(pem.as_bytes(), 2048).unwrap());
    let cfg = Config::load(config).unwrap_or_else(|e| panic!("{e}"));
    let hsm = Arc::new(Hsm::open(&cfg.hsm, &cfg.policy).unwrap_or_else(|e| panic!("{e}")));
    m.mode = hsm.mode().to_string();
    for (kind, label) in KEYS {
        let before = self_rss_kib();
        let s = floor(&hsm, label, &wk, a.sessions, a.seconds);
        // Growth of this process per in-process wrap (no gRPC, no daemon): the token's own.
        let per_wrap = (self_rss_kib().saturating_sub(before) * 1024) as f64 / s.ops as f64;
        say(
            a.json,
            &format!(
                "floor   {kind:<8} {} threads: {:>8.0} ops/s  p50 {:>7.0} µs  p99 {:>7.0} µs  RSS +{per_wrap:.0} bytes per wrap",
                a.sessions, s.ops_per_s, s.p50_us, s.p99_us
            ),
        );
        m.floor_growth.insert(kind, per_wrap);
        m.floors.insert(kind, s);
    }
    Arc::try_unwrap(hsm).ok().expect("no other owner").close();
}

/// The daemon at 1, N, 16 and 64 callers for each key; the AES-256 run at 16 callers is the
/// soak, with the daemon's RSS sampled each second.
async fn measure_daemon(a: &Args, config: &Path, pem: &str, m: &mut Measured) {
    let d = Daemon::start(config, &[]);
    let channels = channels(&d, 8).await;
    for (kind, label) in KEYS {
        for callers in [1, a.sessions, 16, 64] {
            let (secs, rss) = if kind == "AES-256" && callers == 16 {
                (a.soak.max(a.seconds), Some((&d, &mut m.soak_rss)))
            } else if callers == 1 {
                (a.seconds.div_ceil(2), None)
            } else {
                (a.seconds, None)
            };
            let s = load(&channels, label, pem, callers, secs, rss).await;
            say(
                a.json,
                &format!(
                    "daemon  {kind:<8} {callers:>2} callers: {:>8.0} ops/s  p50 {:>7.0} µs  p99 {:>7.0} µs  max {:>7.0} µs  errors {}",
                    s.ops_per_s, s.p50_us, s.p99_us, s.max_us, s.errors
                ),
            );
            if callers == 1 {
                m.p50_few.insert(kind, s.p50_us);
            }
            m.daemon.insert((kind, callers), s);
        }
    }
    m.peak_kib = rss_kib(d.pid()).1;
}

/// Daemon p50 at one caller on the token with `--fillers` extra objects.
async fn measure_token_size(a: &Args, config: &Path, pem: &str, m: &mut Measured) {
    let d = Daemon::start(config, &[]);
    let channels = channels(&d, 1).await;
    for (kind, label) in KEYS {
        let s = load(&channels, label, pem, 1, a.seconds.div_ceil(2), None).await;
        say(
            a.json,
            &format!(
                "daemon  {kind:<8}  1 caller, {} extra objects: p50 {:>7.0} µs  p99 {:>7.0} µs  errors {}",
                a.fillers, s.p50_us, s.p99_us, s.errors
            ),
        );
        m.p50_many.insert(kind, s.p50_us);
    }
}

/// A target: its name, the measured value, the limit, and whether it was met.
fn target(name: String, value: f64, limit: f64, at_least: bool) -> Value {
    let met = if at_least {
        value >= limit
    } else {
        value <= limit
    };
    json!({"target": name, "value": round(value), "limit": limit, "met": met})
}

/// The targets of one key: [daemon/floor ops/s, ops/s at 16, p99 µs at 64, errors at 64,
/// many/few-objects p50, recipe/daemon per wrap].
fn key_targets(a: &Args, kind: &str, values: [f64; 6]) -> Vec<Value> {
    let [
        ratio,
        d16_ops,
        d64_p99_us,
        d64_errors,
        size_ratio,
        recipe_ratio,
    ] = values;
    let mut out = Vec::new();
    out.push(target(
        format!("{kind}: daemon ops/s / floor ops/s (≥ 0.7)"),
        ratio,
        0.7,
        true,
    ));
    if kind == "AES-256" {
        out.push(target(
            "AES-256: daemon ops/s at 16 callers (≥ 4000)".into(),
            d16_ops,
            4000.0,
            true,
        ));
    }
    out.push(target(
        format!("{kind}: p99 ms at 64 callers (≤ 20)"),
        d64_p99_us / 1e3,
        20.0,
        false,
    ));
    out.push(target(
        format!("{kind}: errors at 64 callers (0)"),
        d64_errors,
        0.0,
        false,
    ));
    out.push(target(
        format!("{kind}: p50 {} objects / {FEW_FILLERS} (≤ 1.2)", a.fillers),
        size_ratio,
        1.2,
        false,
    ));
    out.push(target(
        format!("{kind}: recipe / daemon per wrap (≥ 50)"),
        recipe_ratio,
        50.0,
        true,
    ));
    out
}

/// The table and the per-key JSON; adds each key's targets to `targets`.
fn key_table(a: &Args, m: &Measured, targets: &mut Vec<Value>) -> BTreeMap<&'static str, Value> {
    let out = |l: &str| say(a.json, l);
    out("");
    out(&format!(
        "| key | floor ops/s ({n} thr) | daemon ops/s ({n} / 16 / 64 callers) | daemon / floor | p50 / p99 / max µs at 16 | p99 µs at 64 | recipe ms | recipe / daemon per wrap (/ p50 at 1) | p50 µs at 1 caller: {FEW_FILLERS} → {} objects | ratio |",
        a.fillers,
        n = a.sessions
    ));
    out("|---|---|---|---|---|---|---|---|---|---|");
    let mut keys_json = BTreeMap::new();
    for (kind, _) in KEYS {
        let f = &m.floors[kind];
        let dn = &m.daemon[&(kind, a.sessions)];
        let d16 = &m.daemon[&(kind, 16)];
        let d64 = &m.daemon[&(kind, 64)];
        let best = dn.ops_per_s.max(d16.ops_per_s);
        let size_ratio = m.p50_many[kind] / m.p50_few[kind];
        // The daemon's time per wrap: its cost under load (1 / ops/s at 16 callers), and
        // the latency of one call alone (p50 at 1 caller).
        let per_wrap_us = 1e6 / d16.ops_per_s;
        let recipe_ratio = m.recipes[kind] * 1e3 / per_wrap_us;
        let recipe_latency_ratio = m.recipes[kind] * 1e3 / m.daemon[&(kind, 1)].p50_us;
        out(&format!(
            "| {kind} | {:.0} | {:.0} / {:.0} / {:.0} | {:.2} | {:.0} / {:.0} / {:.0} | {:.0} | {:.1} | {:.0} | {:.0} → {:.0} | {:.2} |",
            f.ops_per_s,
            dn.ops_per_s,
            d16.ops_per_s,
            d64.ops_per_s,
            best / f.ops_per_s,
            d16.p50_us,
            d16.p99_us,
            d16.max_us,
            d64.p99_us,
            m.recipes[kind],
            recipe_ratio,
            m.p50_few[kind],
            m.p50_many[kind],
            size_ratio
        ));
        let ratio = best / f.ops_per_s;
        targets.extend(key_targets(
            a,
            kind,
            [
                ratio,
                d16.ops_per_s,
                d64.p99_us,
                d64.errors as f64,
                size_ratio,
                recipe_ratio,
            ],
        ));
        keys_json.insert(kind, json!({
            "floor": f.json(),
            "floor_rss_growth_bytes_per_wrap": round(m.floor_growth[kind]),
            "daemon": {"1": m.daemon[&(kind, 1)].json(), a.sessions.to_string(): dn.json(), "16": d16.json(), "64": d64.json()},
            "recipe_ms_per_wrap": round(m.recipes[kind]),
            "p50_us_1_caller": {FEW_FILLERS.to_string(): round(m.p50_few[kind]), a.fillers.to_string(): round(m.p50_many[kind])},
            "ratios": {"daemon_over_floor": round(ratio * 100.0) / 100.0,
                       "recipe_over_daemon_per_wrap": round(recipe_ratio),
                       "recipe_over_daemon_p50_1_caller": round(recipe_latency_ratio),
                       "p50_many_over_few": round(size_ratio * 100.0) / 100.0},
        }));
    }
    keys_json
}

/// Prints the table, the memory figures and the targets; returns the JSON report.
fn report(a: &Args, m: &Measured) -> Value {
    let out = |l: &str| say(a.json, l);
    let mut targets = Vec::new();
    let keys_json = key_table(a, m, &mut targets);
    let errors: usize = m.daemon.values().map(|s| s.errors).sum();
    let soak = &m.soak_rss;
    let tenth = (soak.len() / 6).max(1);
    let first = soak.iter().take(tenth).max().copied().unwrap_or(0);
    let last = soak.iter().rev().take(tenth).max().copied().unwrap_or(0);
    targets.push(target(
        "daemon peak RSS MiB (≤ 64)".into(),
        m.peak_kib as f64 / 1024.0,
        64.0,
        false,
    ));
    targets.push(target(
        format!("daemon RSS growth, last vs first {tenth} s of the soak, MiB (≤ 1)"),
        (last as f64 - first as f64) / 1024.0,
        1.0,
        false,
    ));
    targets.push(target(
        "errors, all daemon runs (0)".into(),
        errors as f64,
        0.0,
        false,
    ));
    let soak_ops = m.daemon[&("AES-256", 16)].ops as f64;
    out("");
    out(&format!(
        "daemon RSS growth over the soak: {:.0} bytes per wrap (in-process floor: {:.0})",
        (last as f64 - first as f64) * 1024.0
            / (soak_ops * (1.0 - tenth as f64 / soak.len().max(1) as f64)),
        m.floor_growth["AES-256"]
    ));
    out(&format!(
        "daemon peak RSS {:.1} MiB; soak RSS first {tenth} s max {:.1} MiB, last {tenth} s max {:.1} MiB; mode {}",
        m.peak_kib as f64 / 1024.0,
        first as f64 / 1024.0,
        last as f64 / 1024.0,
        m.mode
    ));
    for t in &targets {
        out(&format!(
            "{} {} = {}",
            if t["met"] == true { "MET " } else { "MISS" },
            t["target"].as_str().unwrap(),
            t["value"]
        ));
    }
    json!({
        "mode": m.mode,
        "sessions": a.sessions,
        "seconds": a.seconds,
        "soak_seconds": a.soak,
        "keys": keys_json,
        "daemon_peak_rss_kib": m.peak_kib,
        "soak_rss_kib": soak,
        "targets": targets,
    })
}
