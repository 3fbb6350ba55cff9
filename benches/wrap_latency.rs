//! Wrap latency per key type, in process, against the token of a config file (default: the
//! dev token of config/hsm-bridge.toml). A measurement, not a test: it asserts nothing.
//!
//!     cargo bench --bench wrap_latency [-- CONFIG [ITERATIONS]]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hsm_bridge::config::Config;
use hsm_bridge::hsm::{Hsm, KeyRef};
use hsm_bridge::wrap::{Algorithm, Format, WrappingKey};
use openssl::pkey::PKey;
use openssl::rsa::Rsa;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let config = args.first().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/hsm-bridge.toml")
    });
    let iterations: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(300);
    let cfg = Config::load(&config).unwrap_or_else(|e| panic!("{e}"));

    let started = Instant::now();
    let hsm = Hsm::open(&cfg.hsm, &cfg.policy).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "token {}: open + login + self-test {:.1} ms; mode {}",
        hsm.token_label(),
        started.elapsed().as_secs_f64() * 1e3,
        hsm.mode()
    );
    let pem = PKey::from_rsa(Rsa::generate(4096).unwrap())
        .unwrap()
        .public_key_to_pem()
        .unwrap();
    let wk = WrappingKey::from_pem(&pem, 2048).unwrap();

    println!(
        "{:<16} {:<20} {:>10} {:>10} {:>10} {:>9}",
        "key", "algorithm", "median µs", "p99 µs", "mean µs", "ops/s"
    );
    let algorithms = [Algorithm::RsaOaepAesSha256, Algorithm::RsaOaepSha256];
    for label in [
        "demo-aes-128",
        "demo-aes-192",
        "demo-aes-256",
        "demo-rsa-2048",
        "demo-rsa-3072",
        "demo-rsa-4096",
    ] {
        let key = KeyRef::Label(label.into());
        for alg in algorithms {
            if let Err(e) = hsm.wrap(&key, &wk, Format::oci(alg), None) {
                println!("{label:<16} {:<20} refused: {e}", alg.as_str());
                continue;
            }
            for _ in 0..20 {
                hsm.wrap(&key, &wk, Format::oci(alg), None).unwrap();
            }
            let mut times: Vec<Duration> = (0..iterations)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(hsm.wrap(&key, &wk, Format::oci(alg), None).unwrap());
                    t.elapsed()
                })
                .collect();
            times.sort();
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            let mean = times.iter().map(|&d| us(d)).sum::<f64>() / times.len() as f64;
            println!(
                "{label:<16} {:<20} {:>10.0} {:>10.0} {:>10.0} {:>9.0}",
                alg.as_str(),
                us(times[times.len() / 2]),
                us(times[times.len() * 99 / 100]),
                mean,
                1e6 / mean
            );
        }
    }
    hsm.close();
}
