//! The real `gcp-kms-emulator` process for black-box tests: HTTPS on 127.0.0.1 with the
//! test certificates, a fresh service-account key (RSA-2048) in a 0600 JSON file (never on
//! a command line) whose self-signed JWTs it accepts, a key ring made at start, its
//! metadata server on another port, and its unauthenticated control API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::daemon::certs;
use super::emulator::{control, emulator_binary, http_client};

/// The GCP emulator's binary, built once per test process.
pub(crate) fn binary() -> &'static PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| emulator_binary("gcp-kms-emulator"))
}

pub(crate) struct GcpEmulator {
    /// `https://localhost:PORT` (the test certificate names localhost): the API endpoint.
    pub base: String,
    pub port: u16,
    /// `http://127.0.0.1:PORT`: the metadata server.
    pub metadata: String,
    /// The key ring made at start, `projects/{project}/locations/global/keyRings/ring`.
    pub key_ring: String,
    pub project: String,
    /// The service account's email and key id.
    pub email: String,
    pub key_id: String,
    /// The service-account key file (JSON, 0600).
    pub sa_file: PathBuf,
    child: Child,
    http: reqwest::Client,
}

impl GcpEmulator {
    /// Starts the emulator on free ports with the test oracle on; killed on drop.
    pub(crate) fn start(dir: &Path) -> GcpEmulator {
        static STARTS: AtomicU32 = AtomicU32::new(0);
        let n = STARTS.fetch_add(1, Ordering::Relaxed);
        let home = dir.join(format!("gcp-emulator-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&home).unwrap();
        let project = format!("emu-{}", &hsm_bridge::wrap::hex(&super::random(4)));
        let email = format!("importer@{project}.iam.gserviceaccount.com");
        let key_id = hsm_bridge::wrap::hex(&super::random(20));
        let key =
            openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
        let sa = json!({
            "type": "service_account",
            "project_id": project,
            "private_key_id": key_id,
            "private_key": String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap(),
            "client_email": email,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": "https://oauth2.googleapis.com/token",
            "universe_domain": "googleapis.com",
        });
        let sa_file = home.join("service-account.json");
        super::write_private(&sa_file, sa.to_string().as_bytes());
        let key_ring = format!("projects/{project}/locations/global/keyRings/ring");
        let c = certs();
        let log = home.join("emulator.log");
        let mut child = Command::new(binary())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--metadata-listen",
                "127.0.0.1:0",
            ])
            .arg("--test-oracle")
            .arg("--tls-cert")
            .arg(c.join("server.pem"))
            .arg("--tls-key")
            .arg(c.join("server.key"))
            .arg("--service-account")
            .arg(&sa_file)
            .args(["--key-ring", &key_ring])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let lines = super::first_lines(&mut child, 2, Duration::from_secs(60));
        let port = |prefix: &str| -> Option<u16> {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok())
        };
        let (Some(port), Some(md)) = (
            port("gcp-kms-emulator: listening on https://"),
            port("gcp-kms-emulator: metadata on http://"),
        ) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "gcp-kms-emulator did not start: {lines:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        GcpEmulator {
            base: format!("https://localhost:{port}"),
            port,
            metadata: format!("http://127.0.0.1:{md}"),
            key_ring,
            project,
            email,
            key_id,
            sa_file,
            child,
            http: http_client(),
        }
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        control(&self.http, &self.base, method, path, body).await
    }

    /// Adds a fault (or a JSON array of faults): `{op, resource, count, status, code,
    /// message, raw_body, delay_ms, drop, processed, commit_after_ms}`.
    pub(crate) async fn fault(&self, f: Value) {
        self.control(reqwest::Method::POST, "faults", Some(f)).await;
    }

    /// Arms one-shot faults for the next import job or import: `{job_stays_pending,
    /// job_key_bits, job_expired, import_fails}`.
    pub(crate) async fn job_faults(&self, f: Value) {
        self.control(reqwest::Method::POST, "job-faults", Some(f))
            .await;
    }

    /// Clears both kinds of faults.
    pub(crate) async fn clear_faults(&self) {
        self.control(reqwest::Method::DELETE, "faults", None).await;
    }

    /// The request log: `{seq, time, op, resource, status, code, auth, principal, jwt_aud,
    /// jwt_scope, scopes, fault}` per call.
    pub(crate) async fn requests(&self) -> Vec<Value> {
        match self.control(reqwest::Method::GET, "requests", None).await {
            Value::Array(v) => v,
            other => panic!("{other}"),
        }
    }

    /// What a version was imported as (raw bytes, or PKCS#8 DER), by its resource name.
    pub(crate) async fn material(&self, version: &str) -> Vec<u8> {
        let v = self
            .control(reqwest::Method::GET, &format!("material/{version}"), None)
            .await;
        hsm_bridge::wrap::unhex(v["material_hex"].as_str().unwrap()).unwrap()
    }
}

impl GcpEmulator {
    /// A self-signed JWT of the service account for Cloud KMS, as the daemon's client
    /// makes them.
    fn jwt(&self) -> String {
        use oci_kms_emulator::azure::protocol::b64url;
        let sa: Value = serde_json::from_slice(&std::fs::read(&self.sa_file).unwrap()).unwrap();
        let key = openssl::pkey::PKey::private_key_from_pem(
            sa["private_key"].as_str().unwrap().as_bytes(),
        )
        .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": self.key_id});
        let claims = json!({
            "iss": self.email, "sub": self.email,
            "aud": "https://cloudkms.googleapis.com/",
            "iat": now, "exp": now + 600,
        });
        let signed = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let mut signer =
            openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
        signer.update(signed.as_bytes()).unwrap();
        format!("{signed}.{}", b64url(&signer.sign_to_vec().unwrap()))
    }

    /// A Cloud KMS call (`path` after `/v1/`) as the service account, enums as names; the
    /// answer, which must be a success.
    pub(crate) async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.base))
            .bearer_auth(self.jwt());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let rsp = req.send().await.unwrap();
        let status = rsp.status();
        let body: Value = rsp.json().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    /// A resource (a key, a version, a job) by its name.
    pub(crate) async fn get(&self, name: &str) -> Value {
        self.api(reqwest::Method::GET, name, None).await
    }

    /// The versions of key `key` (its resource name); none if there is no such key.
    pub(crate) async fn versions(&self, key: &str) -> Vec<Value> {
        let rsp = self
            .http
            .get(format!(
                "{}/v1/{key}/cryptoKeyVersions?pageSize=1000",
                self.base
            ))
            .bearer_auth(self.jwt())
            .send()
            .await
            .unwrap();
        if rsp.status() == reqwest::StatusCode::NOT_FOUND {
            return Vec::new();
        }
        let body: Value = rsp.json().await.unwrap();
        body["cryptoKeyVersions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Makes import-only key `id` in the key ring, without a first version.
    pub(crate) async fn create_key(
        &self,
        id: &str,
        purpose: &str,
        protection: &str,
        algorithm: &str,
    ) -> Value {
        self.api(
            reqwest::Method::POST,
            &format!(
                "{}/cryptoKeys?cryptoKeyId={id}&skipInitialVersionCreation=true",
                self.key_ring
            ),
            Some(json!({
                "purpose": purpose,
                "importOnly": true,
                "versionTemplate": {"protectionLevel": protection, "algorithm": algorithm},
            })),
        )
        .await
    }
}

impl Drop for GcpEmulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
