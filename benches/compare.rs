//! The daemon against the HSM's own limit, on one token of its own, in one run:
//!
//! - **floor**: the chosen wrap mode called in-process on the same session pool, N threads
//!   (N = `--sessions`), no gRPC: ops/s and this process's CPU per wrap;
//! - **CPU per call**: in `--rounds` rounds, each of the floor, a plaintext daemon and an
//!   mTLS daemon in turn (`--cpu-seconds` each, 16 callers): the daemon process's CPU
//!   (user + system, `/proc/PID/stat`, so the load generator in this process does not count)
//!   per call against the floor's CPU per wrap in the same round;
//! - **daemon**: `hsm-bridge serve` on 127.0.0.1 with mutual TLS, C concurrent `WrapKey`
//!   callers for T seconds (C = N, 16, 64): ops/s, p50/p99/max, errors, CPU per call, daemon
//!   peak RSS; the AES-256 run at 16 callers lasts `--soak` seconds and samples the daemon's
//!   RSS; the same soak on a kryoptic token (which frees session objects) where it is built;
//! - **recipe**: the openssl command-line recipe from OCI's documentation, per wrap;
//! - **token size**: daemon p50 at 1 caller with 10 and with `--fillers` extra objects;
//!
//! for an AES-256 and an RSA-3072 source key, wrapped for an RSA-4096 key (a vault's size).
//! Prints a table and the targets (BENCHMARKS.md, "Targets"); `--json` prints the same as
//! JSON on stdout (the table then goes to stderr). A measurement: it asserts nothing.
//!
//!     ./softhsm-setup.sh --with-kryoptic && cargo bench --bench compare [-- --json
//!         --seconds 10 --soak 60 --rounds 3 --cpu-seconds 5 --perf DIR]
//!
//! `--cpu-only` stops after the CPU points (their table only). `--perf DIR` records the
//! daemon with `perf record` during the first round of each CPU
//! point (DIR/perf-KEY-{floor,plaintext,mTLS}.data; perf's own CPU is outside the daemon's figure).
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
use hsm_bridge::wrap::{Algorithm, Format, WrappingKey};
use serde_json::{Value, json};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[path = "../tests/common/mod.rs"]
mod common;

use common::Fixture;
use common::daemon::{self, Daemon};
use common::proc::{cpu_seconds, rss_kib};

const KEYS: [(&str, &str); 2] = [("AES-256", "test-aes-256"), ("RSA-3072", "test-rsa-3072")];
const FEW_FILLERS: usize = 10;

struct Args {
    json: bool,
    seconds: u64,
    soak: u64,
    sessions: usize,
    fillers: usize,
    rounds: usize,
    cpu_seconds: u64,
    perf: Option<PathBuf>,
    cpu_only: bool,
}

fn args() -> Args {
    let mut a = Args {
        json: false,
        seconds: 10,
        soak: 60,
        sessions: 4,
        fillers: 5000,
        rounds: 3,
        cpu_seconds: 5,
        perf: None,
        cpu_only: false,
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
            "--rounds" => a.rounds = (num("--rounds") as usize).max(1),
            "--cpu-seconds" => a.cpu_seconds = num("--cpu-seconds"),
            "--cpu-only" => a.cpu_only = true,
            "--perf" => a.perf = Some(PathBuf::from(it.next().expect("--perf needs a folder"))),
            other => panic!(
                "unknown argument {other:?}; use --json, --seconds N, --soak N, --sessions N, --fillers N, --rounds N, --cpu-seconds N, --perf DIR, --cpu-only"
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

/// How the benchmark's callers reach the daemon.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Transport {
    /// Plain HTTP/2 on loopback, the caller known by `loopback = true`: no TLS cost.
    Plaintext,
    /// Mutual TLS as the test client `cckm`.
    Mtls,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Plaintext => "plaintext",
            Transport::Mtls => "mTLS",
        }
    }
}

/// The daemon config of the benchmark on the fixture's token: `sessions` sessions, any
/// wrapping key, the callers over `transport`.
fn bench_config(fx: &Fixture, sessions: usize, transport: Transport) -> PathBuf {
    let server = match transport {
        Transport::Mtls => format!("{}max_queue = 256\n", daemon::tls_server_lines()),
        Transport::Plaintext => "listen = \"127.0.0.1:0\"\nplaintext = true\nmax_queue = 256\n\n\
             [[server.clients]]\nname = \"bench-local\"\nloopback = true\n\
             operations = [\"list\", \"wrap\"]\nkeys = [\"*\"]\n"
            .to_string(),
    };
    let (config, _audit) = daemon::daemon_config(
        fx,
        &format!("compare-{}", transport.name()),
        "caller_wrapping_keys = \"any\"",
        Some(&server),
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

/// What one load point measured, before the statistics.
#[derive(Default)]
struct Run {
    lat: Vec<Duration>,
    errors: usize,
    elapsed: Duration,
    /// CPU seconds (user + system) of the process doing the wraps: this one for the floor,
    /// the daemon's for a load.
    cpu_s: f64,
    /// That process's context switches.
    switches: u64,
    /// Of `cpu_s`, the daemon's HSM workers' (0 for the floor).
    hsm_cpu_s: f64,
}

impl Run {
    /// This run and `other` as one (rounds of the same point).
    fn join(mut self, other: Run) -> Run {
        self.lat.extend(other.lat);
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.cpu_s += other.cpu_s;
        self.switches += other.switches;
        self.hsm_cpu_s += other.hsm_cpu_s;
        self
    }
}

#[derive(Default)]
struct Stats {
    ops: usize,
    errors: usize,
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    /// CPU µs per completed call (or wrap), errors included in the calls.
    cpu_us: f64,
    /// Context switches per call (or wrap).
    switches: f64,
    /// Of `cpu_us`, the daemon's HSM workers'.
    hsm_cpu_us: f64,
}

impl Stats {
    fn from(run: Run) -> Stats {
        let Run {
            mut lat,
            errors,
            elapsed,
            cpu_s,
            switches,
            hsm_cpu_s,
        } = run;
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
            cpu_us: cpu_s * 1e6 / (lat.len() + errors).max(1) as f64,
            switches: switches as f64 / (lat.len() + errors).max(1) as f64,
            hsm_cpu_us: hsm_cpu_s * 1e6 / (lat.len() + errors).max(1) as f64,
        }
    }

    fn json(&self) -> Value {
        json!({"ops": self.ops, "errors": self.errors, "ops_per_s": round(self.ops_per_s),
               "p50_us": round(self.p50_us), "p99_us": round(self.p99_us), "max_us": round(self.max_us),
               "cpu_us_per_call": round(self.cpu_us), "switches_per_call": round(self.switches)})
    }
}

/// `x` to two decimals, for the JSON and the target lines (a ratio to one decimal would say
/// 1.3 for a 1.25 that met its target).
fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// CPU seconds so far of a process's threads named `hsm-worker-*` (the daemon's HSM
/// workers, src/service/queue.rs); the rest of its CPU is the network side's.
fn hsm_worker_cpu_seconds(pid: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ticks: u64 = tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.starts_with("hsm-worker-"))
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|stat| {
            let f: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

/// A process's context switches so far, voluntary and not, summed over its threads
/// (`/proc/PID/task/*/status`; threads that have exited are not counted).
fn switches(pid: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks.flatten().map(|t| switches_of(&t.path())).sum()
}

/// One thread's context switches so far (`DIR/status` of a `/proc` thread folder).
fn switches_of(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("status"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("ctxt_switches:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
        .sum()
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

/// In-process wraps on `threads` threads for `secs`, with this process's CPU over them;
/// with `perf`, this process recorded by `perf record` into that file meanwhile.
fn floor(
    hsm: &Arc<Hsm>,
    (label, wk): (&str, &Arc<WrappingKey>),
    threads: usize,
    secs: u64,
    perf: Option<PathBuf>,
) -> Run {
    let key = KeyRef::Label(label.into());
    for _ in 0..50 {
        hsm.wrap(&key, wk, Format::oci(Algorithm::RsaOaepAesSha256), None)
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let cpu = cpu_seconds("self");
    let started = Instant::now();
    // Counted over the wrapping threads (they are gone once joined).
    let switched = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (hsm, wk, key, stop) = (hsm.clone(), wk.clone(), key.clone(), stop.clone());
            let switched = switched.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(100_000);
                let before = switches_of(Path::new("/proc/thread-self"));
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    std::hint::black_box(
                        hsm.wrap(&key, &wk, Format::oci(Algorithm::RsaOaepAesSha256), None)
                            .unwrap(),
                    );
                    lat.push(t.elapsed());
                }
                switched.fetch_add(
                    switches_of(Path::new("/proc/thread-self")) - before,
                    Ordering::Relaxed,
                );
                lat
            })
        })
        .collect();
    let recorder = perf.map(|out| perf_record(&std::process::id().to_string(), &out, secs));
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let lat: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let run = Run {
        lat,
        errors: 0,
        elapsed: started.elapsed(),
        cpu_s: cpu_seconds("self") - cpu,
        switches: switched.load(Ordering::Relaxed),
        hsm_cpu_s: 0.0,
    };
    if let Some(mut p) = recorder {
        p.wait().expect("perf record");
    }
    run
}

/// `perf record` of process `pid` into `out` for most of the next `secs`.
fn perf_record(pid: &str, out: &Path, secs: u64) -> std::process::Child {
    Command::new("perf")
        .args([
            "record",
            "-e",
            "cpu-clock",
            "-F",
            "499",
            "--call-graph",
            "dwarf,16384",
        ])
        .args(["-q", "-p", pid, "-o"])
        .arg(out)
        .args(["--", "sleep", &secs.saturating_sub(1).max(1).to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("perf record (install linux-perf)")
}

/// `n` channels to the daemon: mutual TLS as the test client `cckm`, or plain text.
async fn channels(d: &Daemon, transport: Transport, n: usize) -> Vec<Channel> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(match transport {
            Transport::Mtls => d.channel(Some("cckm")).await.expect("mTLS connect"),
            Transport::Plaintext => d.plain_channel().await,
        });
    }
    out
}

/// What a load's callers ask for.
#[derive(Clone)]
enum Ask {
    /// WrapKey of this source key label for this PEM wrapping key.
    Wrap(WrapKeyRequest),
    /// grpc.health.v1 Check: the server's cost of a call with no HSM work, no audit.
    Health,
}

impl Ask {
    fn wrap(label: &str, pem: &str) -> Ask {
        Ask::Wrap(WrapKeyRequest {
            source_key: Some(proto::KeyRef {
                key: Some(proto::key_ref::Key::Label(label.into())),
            }),
            wrapping_public_key_pem: pem.into(),
            algorithm: proto::WrappingAlgorithm::RsaOaepAesSha256 as i32,
            ..Default::default()
        })
    }

    async fn call(&self, ch: &Channel) -> Result<(), tonic::Status> {
        match self {
            Ask::Wrap(req) => KeySourceBridgeClient::new(ch.clone())
                .wrap_key(req.clone())
                .await
                .map(|r| drop(std::hint::black_box(r))),
            Ask::Health => HealthClient::new(ch.clone())
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| drop(std::hint::black_box(r))),
        }
    }
}

/// `callers` concurrent loops of `ask` for `secs` against `d`, with the daemon's CPU over
/// them; with `rss`, the daemon's RSS each second; with `perf`, the daemon recorded by
/// `perf record` into that file meanwhile.
async fn load(
    d: &Daemon,
    channels: &[Channel],
    ask: &Ask,
    callers: usize,
    secs: u64,
    rss: Option<&mut Vec<u64>>,
    perf: Option<PathBuf>,
) -> Run {
    // warm up every connection
    for ch in channels {
        ask.call(ch).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let pid = d.pid().to_string();
    let cpu = cpu_seconds(&pid);
    let hsm_cpu = hsm_worker_cpu_seconds(&pid);
    let switched = switches(&pid);
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let ch = channels[i % channels.len()].clone();
            let (ask, stop, errors) = (ask.clone(), stop.clone(), errors.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(50_000);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match ask.call(&ch).await {
                        Ok(()) => lat.push(t.elapsed()),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                lat
            })
        })
        .collect();
    let recorder = perf.map(|out| perf_record(&pid, &out, secs));
    match rss {
        Some(samples) => {
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
    let run = Run {
        lat,
        errors: errors.load(Ordering::Relaxed) as usize,
        elapsed: started.elapsed(),
        cpu_s: cpu_seconds(&pid) - cpu,
        switches: switches(&pid).saturating_sub(switched),
        hsm_cpu_s: hsm_worker_cpu_seconds(&pid) - hsm_cpu,
    };
    if let Some(mut p) = recorder {
        p.wait().expect("perf record");
    }
    run
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

/// The callers of the CPU-per-call points (the figure of the first measurement in
/// BENCHMARKS.md, "The daemon's own CPU per call").
const CPU_CALLERS: usize = 16;

/// One round of a CPU point: CPU µs per wrap (floor) or per call (daemons), and ops/s.
#[derive(Clone, Copy, Default)]
struct CpuRound {
    floor_us: f64,
    floor_ops: f64,
    floor_switches: f64,
    daemon_us: [f64; 2],
    daemon_ops: [f64; 2],
    daemon_switches: [f64; 2],
    /// Of `daemon_us`, the HSM workers'.
    daemon_hsm_us: [f64; 2],
    /// CPU µs per health check (no HSM work, no audit), each transport.
    health_us: [f64; 2],
    health_switches: [f64; 2],
}

/// What one run measured.
#[derive(Default)]
struct Measured {
    mode: String,
    floors: BTreeMap<&'static str, Stats>,
    /// This process's RSS growth per in-process wrap, bytes.
    floor_growth: BTreeMap<&'static str, f64>,
    /// The CPU rounds of each key, in order.
    cpu: BTreeMap<&'static str, Vec<CpuRound>>,
    daemon: BTreeMap<(&'static str, usize), Stats>,
    /// Daemon p50 at one caller with FEW_FILLERS and with `--fillers` extra objects.
    p50_few: BTreeMap<&'static str, f64>,
    p50_many: BTreeMap<&'static str, f64>,
    recipes: BTreeMap<&'static str, f64>,
    soak_rss: Vec<u64>,
    peak_kib: u64,
    /// The soak on kryoptic: its mode, its stats, its RSS samples; None where not built.
    kryoptic: Option<(String, Stats, Vec<u64>, u64)>,
}

const TRANSPORTS: [Transport; 2] = [Transport::Plaintext, Transport::Mtls];

fn main() {
    let a = args();
    let out = |l: &str| say(a.json, l);
    let t0 = Instant::now();
    out(&format!(
        "hsm-bridge compare: {} cores, sessions {}, {} s per load point, {} rounds of {} s per CPU point, {} s soak, token {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        a.sessions,
        a.seconds,
        a.rounds,
        a.cpu_seconds,
        a.soak,
        common::TOKEN
    ));
    let fx = common::softhsm();
    let kx = kryoptic_fixture(&a);
    // The token's config for this process's own module loads (fillers, floor): set now,
    // while this is the only thread.
    let conf = fx.conf.to_string_lossy().into_owned();
    hsm_bridge::hsm::raw::set_module_env([(&"SOFTHSM2_CONF".to_string(), &conf)]);
    add_fillers(fx, 0, FEW_FILLERS);
    let wk_path = fx.wk.wk4096.public_pem.clone();
    let pem = std::fs::read_to_string(&wk_path).unwrap();
    if let Some(dir) = &a.perf {
        std::fs::create_dir_all(dir).unwrap();
    }

    let mut m = Measured::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    measure_cpu(&a, fx, &pem, &rt, &mut m);
    if a.cpu_only {
        cpu_table(&a, &m, &mut Vec::new());
        return;
    }
    let config = bench_config(fx, a.sessions, Transport::Mtls);
    rt.block_on(measure_daemon(&a, &config, &pem, &mut m));
    if let Some(kx) = kx {
        rt.block_on(measure_kryoptic(&a, kx, &pem, &mut m));
    }
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

/// The kryoptic fixture, where the module is built (`./softhsm-setup.sh --with-kryoptic`);
/// otherwise the soak there is skipped, saying so.
fn kryoptic_fixture(a: &Args) -> Option<&'static Fixture> {
    if common::kryoptic_module().is_file() {
        common::kryoptic()
    } else {
        say(
            a.json,
            "kryoptic: not built (./softhsm-setup.sh --with-kryoptic); its soak is skipped",
        );
        None
    }
}

/// The floor and the daemon's CPU per call, round by round: for each key, the floor, then
/// the plaintext daemon, then the mTLS daemon, each `--cpu-seconds`, so that each round's
/// ratio compares neighbours in time. The floor's stats are all its rounds together.
fn measure_cpu(a: &Args, fx: &Fixture, pem: &str, rt: &tokio::runtime::Runtime, m: &mut Measured) {
    let wk = Arc::new(WrappingKey::from_pem(pem.as_bytes(), 2048).unwrap());
    let floor_config = bench_config(fx, a.sessions, Transport::Mtls);
    let cfg = Config::load(&floor_config).unwrap_or_else(|e| panic!("{e}"));
    let hsm = Arc::new(Hsm::open(&cfg.hsm, &cfg.policy).unwrap_or_else(|e| panic!("{e}")));
    m.mode = hsm.mode().to_string();
    let daemons: Vec<(Daemon, Vec<Channel>)> = TRANSPORTS
        .iter()
        .map(|&t| {
            let d = Daemon::start(&bench_config(fx, a.sessions, t), &[]);
            let ch = rt.block_on(channels(&d, t, 8));
            (d, ch)
        })
        .collect();
    for (kind, label) in KEYS {
        let mut floor_all = Run::default();
        let mut growth = 0u64;
        let mut rounds = Vec::new();
        for r in 0..a.rounds {
            let before = self_rss_kib();
            let perf = |what: &str| {
                a.perf
                    .as_ref()
                    .filter(|_| r == 0)
                    .map(|dir| dir.join(format!("perf-{kind}-{what}.data")))
            };
            let f = floor(&hsm, (label, &wk), a.sessions, a.cpu_seconds, perf("floor"));
            growth += self_rss_kib().saturating_sub(before) * 1024;
            let mut round = CpuRound::default();
            let fs = Stats::from(Run {
                lat: f.lat.clone(),
                ..f
            });
            (round.floor_us, round.floor_ops, round.floor_switches) =
                (fs.cpu_us, fs.ops_per_s, fs.switches);
            floor_all = floor_all.join(f);
            for (i, (d, ch)) in daemons.iter().enumerate() {
                let run = rt.block_on(load(
                    d,
                    ch,
                    &Ask::wrap(label, pem),
                    CPU_CALLERS,
                    a.cpu_seconds,
                    None,
                    perf(TRANSPORTS[i].name()),
                ));
                let s = Stats::from(run);
                (
                    round.daemon_us[i],
                    round.daemon_ops[i],
                    round.daemon_switches[i],
                    round.daemon_hsm_us[i],
                ) = (s.cpu_us, s.ops_per_s, s.switches, s.hsm_cpu_us);
                let health = rt.block_on(load(
                    d,
                    ch,
                    &Ask::Health,
                    CPU_CALLERS,
                    a.cpu_seconds.div_ceil(2),
                    None,
                    perf(&format!("{}-health", TRANSPORTS[i].name())),
                ));
                let health = Stats::from(health);
                round.health_us[i] = health.cpu_us;
                round.health_switches[i] = health.switches;
            }
            say(
                a.json,
                &format!(
                    "cpu     {kind:<8} round {}: floor {:>6.1} µs/wrap ({:.0} ops/s, {:.2} switches); daemon {CPU_CALLERS} callers plaintext {:>6.1} µs/call (HSM workers {:.1}; {:.0} ops/s, {:.2} switches) = {:.2}×; mTLS {:>6.1} µs/call (HSM workers {:.1}; {:.0} ops/s, {:.2} switches) = {:.2}×; health check {:.1} / {:.1} µs/call ({:.2} / {:.2} switches)",
                    r + 1,
                    round.floor_us,
                    round.floor_ops,
                    round.floor_switches,
                    round.daemon_us[0],
                    round.daemon_hsm_us[0],
                    round.daemon_ops[0],
                    round.daemon_switches[0],
                    round.daemon_us[0] / round.floor_us,
                    round.daemon_us[1],
                    round.daemon_hsm_us[1],
                    round.daemon_ops[1],
                    round.daemon_switches[1],
                    round.daemon_us[1] / round.floor_us,
                    round.health_us[0],
                    round.health_us[1],
                    round.health_switches[0],
                    round.health_switches[1],
                ),
            );
            rounds.push(round);
        }
        let s = Stats::from(floor_all);
        // Growth of this process per in-process wrap (no gRPC, no daemon): the token's own.
        let per_wrap = growth as f64 / s.ops as f64;
        say(
            a.json,
            &format!(
                "floor   {kind:<8} {} threads: {:>8.0} ops/s  p50 {:>7.0} µs  p99 {:>7.0} µs  {:.1} µs CPU per wrap  RSS +{per_wrap:.0} bytes per wrap",
                a.sessions, s.ops_per_s, s.p50_us, s.p99_us, s.cpu_us
            ),
        );
        m.floor_growth.insert(kind, per_wrap);
        m.floors.insert(kind, s);
        m.cpu.insert(kind, rounds);
    }
    drop(daemons);
    Arc::try_unwrap(hsm).ok().expect("no other owner").close();
}

/// The daemon at 1, N, 16 and 64 callers for each key; the AES-256 run at 16 callers is the
/// soak, with the daemon's RSS sampled each second.
async fn measure_daemon(a: &Args, config: &Path, pem: &str, m: &mut Measured) {
    let d = Daemon::start(config, &[]);
    let channels = channels(&d, Transport::Mtls, 8).await;
    for (kind, label) in KEYS {
        for callers in [1, a.sessions, 16, 64] {
            let (secs, rss) = if kind == "AES-256" && callers == 16 {
                (a.soak.max(a.seconds), Some(&mut m.soak_rss))
            } else if callers == 1 {
                (a.seconds.div_ceil(2), None)
            } else {
                (a.seconds, None)
            };
            let run = load(
                &d,
                &channels,
                &Ask::wrap(label, pem),
                callers,
                secs,
                rss,
                None,
            )
            .await;
            let s = Stats::from(run);
            say(
                a.json,
                &format!(
                    "daemon  {kind:<8} {callers:>2} callers: {:>8.0} ops/s  p50 {:>7.0} µs  p99 {:>7.0} µs  max {:>7.0} µs  {:>6.1} µs CPU per call  errors {}",
                    s.ops_per_s, s.p50_us, s.p99_us, s.max_us, s.cpu_us, s.errors
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

/// The AES-256 soak (16 callers, mTLS, `--soak` s) on a kryoptic token, which frees session
/// objects: the daemon's own memory behaviour without SoftHSM 2.6.1's growth.
async fn measure_kryoptic(a: &Args, kx: &Fixture, pem: &str, m: &mut Measured) {
    let config = bench_config(kx, a.sessions, Transport::Mtls);
    let d = Daemon::start(&config, &[]);
    let channels = channels(&d, Transport::Mtls, 8).await;
    let mut rss = Vec::new();
    let label = KEYS[0].1;
    let run = load(
        &d,
        &channels,
        &Ask::wrap(label, pem),
        16,
        a.soak,
        Some(&mut rss),
        None,
    )
    .await;
    let s = Stats::from(run);
    let mode = d
        .log_text()
        .lines()
        .find_map(|l| l.split("mode=").nth(1))
        .map(|v| {
            v.split_whitespace()
                .next()
                .unwrap_or("")
                .trim_matches('"')
                .to_string()
        })
        .unwrap_or_else(|| "auto".into());
    say(
        a.json,
        &format!(
            "kryoptic AES-256 16 callers, {} s soak: {:>8.0} ops/s  p50 {:>7.0} µs  p99 {:>7.0} µs  {:>6.1} µs CPU per call  errors {}",
            a.soak, s.ops_per_s, s.p50_us, s.p99_us, s.cpu_us, s.errors
        ),
    );
    let peak = rss_kib(d.pid()).1;
    m.kryoptic = Some((mode, s, rss, peak));
}

/// Daemon p50 at one caller on the token with `--fillers` extra objects.
async fn measure_token_size(a: &Args, config: &Path, pem: &str, m: &mut Measured) {
    let d = Daemon::start(config, &[]);
    let channels = channels(&d, Transport::Mtls, 1).await;
    for (kind, label) in KEYS {
        let run = load(
            &d,
            &channels,
            &Ask::wrap(label, pem),
            1,
            a.seconds.div_ceil(2),
            None,
            None,
        )
        .await;
        let s = Stats::from(run);
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

/// The median of `v` (the upper one of an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The CPU-per-call table (median of the rounds' ratios, with their range) and its targets.
fn cpu_table(a: &Args, m: &Measured, targets: &mut Vec<Value>) -> Value {
    let out = |l: &str| say(a.json, l);
    out("");
    out(&format!(
        "| key | floor CPU µs per wrap ({n} thr) | daemon plaintext CPU µs per call ({CPU_CALLERS} callers; HSM workers + the rest) | plaintext / floor (rounds) | daemon mTLS CPU µs per call | mTLS / floor (rounds) | health check CPU µs per call, plaintext / mTLS |",
        n = a.sessions
    ));
    out("|---|---|---|---|---|---|---|");
    let mut keys = BTreeMap::new();
    for (kind, _) in KEYS {
        let rounds = &m.cpu[kind];
        let floor = median(rounds.iter().map(|r| r.floor_us).collect());
        let mut cells = Vec::new();
        let mut json_t = BTreeMap::new();
        for (i, t) in TRANSPORTS.iter().enumerate() {
            let per_call = median(rounds.iter().map(|r| r.daemon_us[i]).collect());
            let ratios: Vec<f64> = rounds.iter().map(|r| r.daemon_us[i] / r.floor_us).collect();
            let ratio = median(ratios.clone());
            let (lo, hi) = ratios
                .iter()
                .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
            let hsm = median(rounds.iter().map(|r| r.daemon_hsm_us[i]).collect());
            cells.push(format!(
                "{per_call:.0} ({hsm:.0} + {:.0}) | **{ratio:.2}** ({lo:.2}–{hi:.2})",
                per_call - hsm
            ));
            let health = median(rounds.iter().map(|r| r.health_us[i]).collect());
            json_t.insert(t.name(), json!({
                "cpu_us_per_call": round(per_call),
                "hsm_workers_cpu_us_per_call": round(hsm),
                "health_check_cpu_us_per_call": round(health),
                "over_floor": round(ratio * 100.0) / 100.0,
                "rounds_over_floor": ratios.iter().map(|r| round(r * 100.0) / 100.0).collect::<Vec<_>>(),
                "ops_per_s": round(median(rounds.iter().map(|r| r.daemon_ops[i]).collect())),
            }));
            if kind == "AES-256" && *t == Transport::Plaintext {
                targets.push(target(
                    "AES-256: daemon CPU per call / floor CPU per wrap, plaintext (≤ 1.25; goal 1.1)".into(),
                    ratio,
                    1.25,
                    false,
                ));
            }
        }
        let health = |i: usize| median(rounds.iter().map(|r| r.health_us[i]).collect());
        out(&format!(
            "| {kind} | {floor:.0} | {} | {:.0} / {:.0} |",
            cells.join(" | "),
            health(0),
            health(1)
        ));
        keys.insert(
            kind,
            json!({
                "floor_cpu_us_per_wrap": round(floor),
                "floor_ops_per_s": round(median(rounds.iter().map(|r| r.floor_ops).collect())),
                "daemon": json_t,
            }),
        );
    }
    json!({"callers": CPU_CALLERS, "rounds": a.rounds, "seconds_per_point": a.cpu_seconds, "keys": keys})
}

/// RSS samples' growth: (window in samples, max of the first window, max of the last), KiB.
fn growth(samples: &[u64]) -> (usize, u64, u64) {
    let window = (samples.len() / 6).max(1);
    let first = samples.iter().take(window).max().copied().unwrap_or(0);
    let last = samples
        .iter()
        .rev()
        .take(window)
        .max()
        .copied()
        .unwrap_or(0);
    (window, first, last)
}

/// The kryoptic soak's lines and targets; its JSON (null where skipped).
fn kryoptic_report(a: &Args, m: &Measured, targets: &mut Vec<Value>) -> Value {
    let Some((mode, s, rss, peak)) = &m.kryoptic else {
        return Value::Null;
    };
    let (window, first, last) = growth(rss);
    say(
        a.json,
        &format!(
            "kryoptic soak ({mode}): daemon RSS first {window} s max {:.1} MiB, last {window} s max {:.1} MiB, peak {:.1} MiB, {:.0} bytes per wrap over {} wraps",
            first as f64 / 1024.0,
            last as f64 / 1024.0,
            *peak as f64 / 1024.0,
            (last as f64 - first as f64) * 1024.0 / s.ops.max(1) as f64,
            s.ops
        ),
    );
    targets.push(target(
        format!("kryoptic: daemon RSS growth, last vs first {window} s of the soak, MiB (≤ 1)"),
        (last as f64 - first as f64) / 1024.0,
        1.0,
        false,
    ));
    json!({"mode": mode, "stats": s.json(), "soak_rss_kib": rss, "peak_rss_kib": peak})
}

/// Prints the table, the memory figures and the targets; returns the JSON report.
fn report(a: &Args, m: &Measured) -> Value {
    let out = |l: &str| say(a.json, l);
    let mut targets = Vec::new();
    let cpu_json = cpu_table(a, m, &mut targets);
    let keys_json = key_table(a, m, &mut targets);
    let errors: usize = m.daemon.values().map(|s| s.errors).sum();
    let soak = &m.soak_rss;
    let (tenth, first, last) = growth(soak);
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
    let kryoptic_json = kryoptic_report(a, m, &mut targets);
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
        "cpu_per_call": cpu_json,
        "keys": keys_json,
        "kryoptic_soak": kryoptic_json,
        "daemon_peak_rss_kib": m.peak_kib,
        "soak_rss_kib": soak,
        "targets": targets,
    })
}
