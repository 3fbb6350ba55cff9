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
//! The token lives in target/tmp/bench-compare/ (made fresh each run, never the dev token).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hsm_bridge::config::Config;
use hsm_bridge::hsm::{Hsm, KeyRef};
use hsm_bridge::proto::key_source_bridge_client::KeySourceBridgeClient;
use hsm_bridge::proto::{self, WrapKeyRequest};
use hsm_bridge::wrap::{Algorithm, WrappingKey};
use serde_json::{Value, json};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const TOKEN: &str = "hsm-bridge-bench";
const KEYS: [(&str, &str); 2] = [("AES-256", "bench-aes-256"), ("RSA-3072", "bench-rsa-3072")];
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

fn module() -> String {
    std::env::var("HSM_BRIDGE_PKCS11_MODULE")
        .unwrap_or_else(|_| "/usr/lib/softhsm/libsofthsm2.so".into())
}

fn write_private(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// A fresh SoftHSM token with the two source keys, TLS material and a daemon config.
fn make_token(dir: &Path, sessions: usize) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("tokens")).unwrap();
    std::fs::write(
        dir.join("softhsm2.conf"),
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            dir.join("tokens").display()
        ),
    )
    .unwrap();
    let mut pin = [0u8; 12];
    openssl::rand::rand_bytes(&mut pin).unwrap();
    let pin = hsm_bridge::wrap::hex(&pin);
    write_private(&dir.join("user-pin"), pin.as_bytes());
    let conf = dir.join("softhsm2.conf");
    run(Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            TOKEN,
            "--so-pin",
            &pin,
            "--pin",
            &pin,
        ]));
    let p11 = |args: &[&str]| {
        run(Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", &conf)
            .args([
                "--module",
                &module(),
                "--token-label",
                TOKEN,
                "--login",
                "--pin",
                &pin,
            ])
            .args(args));
    };
    p11(&[
        "--label",
        "bench-aes-256",
        "--id",
        "0b01",
        "--keygen",
        "--key-type",
        "AES:32",
        "--extractable",
        "--sensitive",
        "--usage-decrypt",
    ]);
    p11(&[
        "--label",
        "bench-rsa-3072",
        "--id",
        "0b02",
        "--keypairgen",
        "--key-type",
        "rsa:3072",
        "--extractable",
        "--sensitive",
    ]);
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/make-test-certs.sh");
    run(Command::new("bash").arg(certs).arg(dir.join("tls")));
    let config = dir.join("bench.toml");
    let tls = dir.join("tls");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
tls_cert = "{tls}/server.pem"
tls_key = "{tls}/server.key"
client_ca = "{tls}/ca.pem"
max_queue = 256

[[server.clients]]
name = "bench"
subject_cn = "cckm.example"
operations = ["list", "wrap"]
keys = ["bench-*"]

[hsm]
module = "{module}"
module_env = {{ SOFTHSM2_CONF = "./softhsm2.conf" }}
token_label = "{TOKEN}"
pin_file = "./user-pin"
sessions = {sessions}
wrap_mode = "auto"

[policy]
exportable = ["bench-*"]
caller_wrapping_keys = "any"

[audit]
path = "./audit.jsonl"
"#,
            tls = tls.display(),
            module = module(),
        ),
    )
    .unwrap();
    config
}

/// Adds `n` token data objects (labels `filler-K`) in this process, with the token's PIN.
fn add_fillers(dir: &Path, from: usize, n: usize) {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::object::{Attribute, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    // SOFTHSM2_CONF was set in main, before any other thread started.
    let pin = std::fs::read_to_string(dir.join("user-pin")).unwrap();
    let p = Pkcs11::new(module()).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = p
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| p.get_token_info(*s).unwrap().label().trim_end() == TOKEN)
        .unwrap();
    let s = p.open_rw_session(slot).unwrap();
    s.login(UserType::User, Some(&AuthPin::new(pin.trim().into())))
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

struct Daemon {
    child: Child,
    addr: String,
}

impl Daemon {
    fn start(config: &Path) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hsm-bridge"))
            .args(["serve", "--config"])
            .arg(config)
            .env(
                "HSM_BRIDGE_LOG",
                std::env::var("HSM_BRIDGE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("hsm-bridge: listening on ")
            .unwrap_or_else(|| panic!("daemon did not start: {line:?}"))
            .to_string();
        Daemon { child, addr }
    }

    /// (current RSS, peak RSS) in KiB.
    fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    async fn channels(&self, n: usize, tls_dir: &Path) -> Vec<Channel> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(
                std::fs::read(tls_dir.join("ca.pem")).unwrap(),
            ))
            .identity(Identity::from_pem(
                std::fs::read(tls_dir.join("cckm.pem")).unwrap(),
                std::fs::read(tls_dir.join("cckm.key")).unwrap(),
            ))
            .domain_name("localhost");
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(
                Endpoint::from_shared(format!("https://{}", self.addr))
                    .unwrap()
                    .tls_config(tls.clone())
                    .unwrap()
                    .connect()
                    .await
                    .unwrap(),
            );
        }
        out
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
                samples.push(d.rss_kib().0);
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
        write_private(&d.join("target_key.bin"), &k);
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

fn main() {
    let a = args();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-compare");
    let out = |l: &str| say(a.json, l);
    let t0 = Instant::now();
    out(&format!(
        "hsm-bridge compare: {} cores, sessions {}, {} s per load point, {} s soak, token {TOKEN}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        a.sessions,
        a.seconds,
        a.soak
    ));
    let config = make_token(&dir, a.sessions);
    // The bench token's config for this process's own module loads (fillers, floor): set
    // now, while this is the only thread.
    let conf = dir.join("softhsm2.conf").to_string_lossy().into_owned();
    hsm_bridge::hsm::raw::set_module_env([(&"SOFTHSM2_CONF".to_string(), &conf)]);
    add_fillers(&dir, 0, FEW_FILLERS);
    let wk_private =
        openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(4096).unwrap()).unwrap();
    let pem = String::from_utf8(wk_private.public_key_to_pem().unwrap()).unwrap();
    let wk_path = dir.join("wrapping.pub.pem");
    std::fs::write(&wk_path, &pem).unwrap();
    let wk = Arc::new(WrappingKey::from_pem(pem.as_bytes(), 2048).unwrap());

    let mut report: BTreeMap<&str, Value> = BTreeMap::new();
    // --- floor ---
    let cfg = Config::load(&config).unwrap_or_else(|e| panic!("{e}"));
    let hsm = Arc::new(Hsm::open(&cfg.hsm, &cfg.policy).unwrap_or_else(|e| panic!("{e}")));
    let mode = hsm.mode().to_string();
    let mut floors = BTreeMap::new();
    let mut floor_growth = BTreeMap::new();
    for (kind, label) in KEYS {
        let before = self_rss_kib();
        let s = floor(&hsm, label, &wk, a.sessions, a.seconds);
        // Growth of this process per in-process wrap (no gRPC, no daemon): the token's own.
        let per_wrap = (self_rss_kib().saturating_sub(before) * 1024) as f64 / s.ops as f64;
        out(&format!(
            "floor   {kind:<8} {} threads: {:>8.0} ops/s  p50 {:>7.0} µs  p99 {:>7.0} µs  RSS +{per_wrap:.0} bytes per wrap",
            a.sessions, s.ops_per_s, s.p50_us, s.p99_us
        ));
        floor_growth.insert(kind, per_wrap);
        floors.insert(kind, s);
    }
    Arc::try_unwrap(hsm).ok().expect("no other owner").close();

    // --- daemon, 10 extra objects ---
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tls = dir.join("tls");
    let mut daemon_stats: BTreeMap<(&str, usize), Stats> = BTreeMap::new();
    let mut p50_few = BTreeMap::new();
    let mut soak_rss = Vec::new();
    let peak_kib;
    {
        let d = Daemon::start(&config);
        rt.block_on(async {
            let channels = d.channels(8, &tls).await;
            for (kind, label) in KEYS {
                for callers in [1, a.sessions, 16, 64] {
                    let (secs, rss) = if kind == "AES-256" && callers == 16 {
                        (a.soak.max(a.seconds), Some((&d, &mut soak_rss)))
                    } else if callers == 1 {
                        (a.seconds.div_ceil(2), None)
                    } else {
                        (a.seconds, None)
                    };
                    let s = load(&channels, label, &pem, callers, secs, rss).await;
                    out(&format!(
                        "daemon  {kind:<8} {callers:>2} callers: {:>8.0} ops/s  p50 {:>7.0} µs  p99 {:>7.0} µs  max {:>7.0} µs  errors {}",
                        s.ops_per_s, s.p50_us, s.p99_us, s.max_us, s.errors
                    ));
                    if callers == 1 {
                        p50_few.insert(kind, s.p50_us);
                    }
                    daemon_stats.insert((kind, callers), s);
                }
            }
        });
        peak_kib = d.rss_kib().1;
    }
    // --- recipe ---
    let mut recipes = BTreeMap::new();
    for (kind, _) in KEYS {
        let ms = recipe(&dir, &wk_path, kind, 21);
        out(&format!(
            "recipe  {kind:<8} openssl command line: {ms:.1} ms per wrap"
        ));
        recipes.insert(kind, ms);
    }
    // --- token size ---
    let t = Instant::now();
    add_fillers(&dir, FEW_FILLERS, a.fillers - FEW_FILLERS);
    out(&format!(
        "token   {} extra objects added in {:.1} s",
        a.fillers - FEW_FILLERS,
        t.elapsed().as_secs_f64()
    ));
    let mut p50_many = BTreeMap::new();
    {
        let d = Daemon::start(&config);
        rt.block_on(async {
            let channels = d.channels(1, &tls).await;
            for (kind, label) in KEYS {
                let s = load(&channels, label, &pem, 1, a.seconds.div_ceil(2), None).await;
                out(&format!(
                    "daemon  {kind:<8}  1 caller, {} extra objects: p50 {:>7.0} µs  p99 {:>7.0} µs  errors {}",
                    a.fillers, s.p50_us, s.p99_us, s.errors
                ));
                p50_many.insert(kind, s.p50_us);
            }
        });
    }

    // --- table, ratios, targets ---
    out("");
    out(&format!(
        "| key | floor ops/s ({n} thr) | daemon ops/s ({n} / 16 / 64 callers) | daemon / floor | p50 / p99 / max µs at 16 | p99 µs at 64 | recipe ms | recipe / daemon per wrap (/ p50 at 1) | p50 µs at 1 caller: {FEW_FILLERS} → {} objects | ratio |",
        a.fillers,
        n = a.sessions
    ));
    out("|---|---|---|---|---|---|---|---|---|---|");
    let mut targets = Vec::new();
    let mut target = |name: String, value: f64, limit: f64, at_least: bool| {
        let met = if at_least {
            value >= limit
        } else {
            value <= limit
        };
        targets.push(json!({"target": name, "value": round(value), "limit": limit, "met": met}));
    };
    let mut keys_json = BTreeMap::new();
    for (kind, _) in KEYS {
        let f = &floors[kind];
        let dn = &daemon_stats[&(kind, a.sessions)];
        let d16 = &daemon_stats[&(kind, 16)];
        let d64 = &daemon_stats[&(kind, 64)];
        let best = dn.ops_per_s.max(d16.ops_per_s);
        let size_ratio = p50_many[kind] / p50_few[kind];
        // The daemon's time per wrap: its cost under load (1 / ops/s at 16 callers), and
        // the latency of one call alone (p50 at 1 caller).
        let per_wrap_us = 1e6 / d16.ops_per_s;
        let recipe_ratio = recipes[kind] * 1e3 / per_wrap_us;
        let recipe_latency_ratio = recipes[kind] * 1e3 / daemon_stats[&(kind, 1)].p50_us;
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
            recipes[kind],
            recipe_ratio,
            p50_few[kind],
            p50_many[kind],
            size_ratio
        ));
        target(
            format!("{kind}: daemon ops/s / floor ops/s (≥ 0.7)"),
            best / f.ops_per_s,
            0.7,
            true,
        );
        if kind == "AES-256" {
            target(
                "AES-256: daemon ops/s at 16 callers (≥ 4000)".into(),
                d16.ops_per_s,
                4000.0,
                true,
            );
        }
        target(
            format!("{kind}: p99 ms at 64 callers (≤ 20)"),
            d64.p99_us / 1e3,
            20.0,
            false,
        );
        target(
            format!("{kind}: errors at 64 callers (0)"),
            d64.errors as f64,
            0.0,
            false,
        );
        target(
            format!("{kind}: p50 {} objects / {FEW_FILLERS} (≤ 1.2)", a.fillers),
            size_ratio,
            1.2,
            false,
        );
        target(
            format!("{kind}: recipe / daemon per wrap (≥ 50)"),
            recipe_ratio,
            50.0,
            true,
        );
        keys_json.insert(kind, json!({
            "floor": f.json(),
            "floor_rss_growth_bytes_per_wrap": round(floor_growth[kind]),
            "daemon": {"1": daemon_stats[&(kind, 1)].json(), a.sessions.to_string(): dn.json(), "16": d16.json(), "64": d64.json()},
            "recipe_ms_per_wrap": round(recipes[kind]),
            "p50_us_1_caller": {FEW_FILLERS.to_string(): round(p50_few[kind]), a.fillers.to_string(): round(p50_many[kind])},
            "ratios": {"daemon_over_floor": round(best / f.ops_per_s * 100.0) / 100.0,
                       "recipe_over_daemon_per_wrap": round(recipe_ratio),
                       "recipe_over_daemon_p50_1_caller": round(recipe_latency_ratio),
                       "p50_many_over_few": round(size_ratio * 100.0) / 100.0},
        }));
    }
    let errors: usize = daemon_stats.values().map(|s| s.errors).sum();
    let tenth = (soak_rss.len() / 6).max(1);
    let first = soak_rss.iter().take(tenth).max().copied().unwrap_or(0);
    let last = soak_rss
        .iter()
        .rev()
        .take(tenth)
        .max()
        .copied()
        .unwrap_or(0);
    target(
        "daemon peak RSS MiB (≤ 64)".into(),
        peak_kib as f64 / 1024.0,
        64.0,
        false,
    );
    target(
        format!(
            "daemon RSS growth, last vs first {} s of the soak, MiB (≤ 1)",
            tenth
        ),
        (last as f64 - first as f64) / 1024.0,
        1.0,
        false,
    );
    target(
        "errors, all daemon runs (0)".into(),
        errors as f64,
        0.0,
        false,
    );
    let soak_ops = daemon_stats[&("AES-256", 16)].ops as f64;
    out("");
    out(&format!(
        "daemon RSS growth over the soak: {:.0} bytes per wrap (in-process floor: {:.0})",
        (last as f64 - first as f64) * 1024.0
            / (soak_ops * (1.0 - tenth as f64 / soak_rss.len().max(1) as f64)),
        floor_growth["AES-256"]
    ));
    out(&format!(
        "daemon peak RSS {:.1} MiB; soak RSS first {tenth} s max {:.1} MiB, last {tenth} s max {:.1} MiB; mode {mode}",
        peak_kib as f64 / 1024.0,
        first as f64 / 1024.0,
        last as f64 / 1024.0
    ));
    for t in &targets {
        out(&format!(
            "{} {} = {}",
            if t["met"] == true { "MET " } else { "MISS" },
            t["target"].as_str().unwrap(),
            t["value"]
        ));
    }
    out(&format!("total {:.0} s", t0.elapsed().as_secs_f64()));
    report.insert("mode", json!(mode));
    report.insert("sessions", json!(a.sessions));
    report.insert("seconds", json!(a.seconds));
    report.insert("soak_seconds", json!(a.soak));
    report.insert("keys", json!(keys_json));
    report.insert("daemon_peak_rss_kib", json!(peak_kib));
    report.insert("soak_rss_kib", json!(soak_rss));
    report.insert("targets", json!(targets));
    if a.json {
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut stdout, &report).unwrap();
        writeln!(stdout).unwrap();
    }
}
