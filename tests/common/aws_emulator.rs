//! The real `aws-kms-emulator` process for black-box tests: HTTPS on 127.0.0.1 with the
//! test certificates, an access key made for the start (its secret in a 0600 file and in an
//! AWS shared credentials file, never on a command line), and its unsigned control API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::daemon::certs;
use super::emulator::{control, emulator_binary, http_client};

/// The profile the credentials file holds.
pub(crate) const PROFILE: &str = "hsm-bridge";

/// The AWS emulator's binary, built once per test process.
pub(crate) fn binary() -> &'static PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| emulator_binary("aws-kms-emulator"))
}

pub(crate) struct AwsEmulator {
    /// `https://localhost:PORT` (the test certificate names localhost).
    pub base: String,
    pub port: u16,
    pub region: String,
    pub account: String,
    pub access_key_id: String,
    /// The secret access key, alone in a 0600 file.
    pub secret_file: PathBuf,
    /// An AWS shared credentials file with a `[hsm-bridge]` profile holding the access key.
    pub credentials_file: PathBuf,
    pub profile: String,
    child: Child,
    http: reqwest::Client,
}

/// `n` random characters of `alphabet`.
fn random_text(n: usize, alphabet: &[u8]) -> String {
    let mut b = vec![0u8; n];
    openssl::rand::rand_bytes(&mut b).unwrap();
    b.iter()
        .map(|x| alphabet[*x as usize % alphabet.len()] as char)
        .collect()
}

/// The value of `--name` in `args`, if given.
fn arg_value<'a>(args: &[&'a str], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| *a == name)
        .and_then(|i| args.get(i + 1).copied())
}

impl AwsEmulator {
    /// Starts the emulator on a free port with the test oracle on; killed on drop.
    pub(crate) fn start(dir: &Path) -> AwsEmulator {
        Self::start_with(dir, &[])
    }

    /// As [`AwsEmulator::start`], with more command-line options (e.g. `--region`,
    /// `--import-token-ttl-secs`).
    pub(crate) fn start_with(dir: &Path, extra_args: &[&str]) -> AwsEmulator {
        static STARTS: AtomicU32 = AtomicU32::new(0);
        let n = STARTS.fetch_add(1, Ordering::Relaxed);
        let home = dir.join(format!("aws-emulator-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&home).unwrap();
        let access_key_id = format!(
            "AKIA{}",
            random_text(16, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
        );
        let secret = random_text(
            40,
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        );
        let secret_file = home.join("secret-access-key");
        super::write_private(&secret_file, secret.as_bytes());
        let credentials_file = home.join("credentials");
        super::write_private(
            &credentials_file,
            format!(
                "[{PROFILE}]\naws_access_key_id = {access_key_id}\naws_secret_access_key = {secret}\n"
            )
            .as_bytes(),
        );
        let c = certs();
        let log = home.join("emulator.log");
        let mut child = Command::new(binary())
            .args(["--listen", "127.0.0.1:0", "--test-oracle"])
            .arg("--tls-cert")
            .arg(c.join("server.pem"))
            .arg("--tls-key")
            .arg(c.join("server.key"))
            .args(["--access-key-id", &access_key_id])
            .arg("--secret-access-key-file")
            .arg(&secret_file)
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let lines = super::first_lines(&mut child, 1, Duration::from_secs(60));
        let Some(addr) = lines
            .first()
            .and_then(|l| l.strip_prefix("aws-kms-emulator: listening on https://"))
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "aws-kms-emulator did not start: {lines:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let port: u16 = addr.rsplit_once(':').unwrap().1.parse().unwrap();
        AwsEmulator {
            base: format!("https://localhost:{port}"),
            port,
            region: arg_value(extra_args, "--region")
                .unwrap_or("us-east-1")
                .to_string(),
            account: arg_value(extra_args, "--account")
                .unwrap_or("111122223333")
                .to_string(),
            access_key_id,
            secret_file,
            credentials_file,
            profile: PROFILE.to_string(),
            child,
            http: http_client(),
        }
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        control(&self.http, &self.base, method, path, body).await
    }

    /// An EXTERNAL key of `spec` and `usage`, made through the control API; its
    /// `KeyMetadata`.
    pub(crate) async fn create_key(&self, spec: &str, usage: &str) -> Value {
        self.control(
            reqwest::Method::POST,
            "keys",
            Some(json!({"KeySpec": spec, "KeyUsage": usage, "Origin": "EXTERNAL"})),
        )
        .await
    }

    /// A key of any origin, made through the control API with `body` ({KeySpec, KeyUsage,
    /// Origin}); its `KeyMetadata`.
    pub(crate) async fn create_key_with(&self, body: Value) -> Value {
        self.control(reqwest::Method::POST, "keys", Some(body))
            .await
    }

    /// A key, by id or ARN: `KeyMetadata`, `materials`, `rotate_on_demand_calls`,
    /// `import_calls`.
    pub(crate) async fn key(&self, key_id: &str) -> Value {
        self.control(
            reqwest::Method::GET,
            &format!("keys/{}", bare(key_id)),
            None,
        )
        .await
    }

    /// The ids of every key the emulator has.
    pub(crate) async fn key_ids(&self) -> Vec<String> {
        match self.control(reqwest::Method::GET, "keys", None).await {
            Value::Array(v) => v.iter().map(|k| k.as_str().unwrap().to_string()).collect(),
            other => panic!("{other}"),
        }
    }

    /// The plaintext a key material (of a key by id or ARN) was imported as (32 bytes for AES, PKCS#8 DER for RSA
    /// and EC).
    pub(crate) async fn material(&self, key_id: &str, key_material_id: &str) -> Vec<u8> {
        let v = self
            .control(
                reqwest::Method::GET,
                &format!("material/{}/{key_material_id}", bare(key_id)),
                None,
            )
            .await;
        hsm_bridge::wrap::unhex(v["material_hex"].as_str().unwrap()).unwrap()
    }

    /// Adds a fault (or a JSON array of faults).
    pub(crate) async fn fault(&self, f: Value) {
        self.control(reqwest::Method::POST, "faults", Some(f)).await;
    }

    pub(crate) async fn clear_faults(&self) {
        self.control(reqwest::Method::DELETE, "faults", None).await;
    }

    /// The request log: `{op, key_id, status, code, fault, request_id, ...}` per signed call.
    pub(crate) async fn requests(&self) -> Vec<Value> {
        match self.control(reqwest::Method::GET, "requests", None).await {
            Value::Array(v) => v,
            other => panic!("{other}"),
        }
    }
}

impl Drop for AwsEmulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A key id from a key id or ARN (`arn:aws:kms:REGION:ACCOUNT:key/ID`).
fn bare(key: &str) -> &str {
    key.rsplit_once("key/").map_or(key, |(_, id)| id)
}
