//! The real `oci-kms-emulator` process for black-box tests: HTTPS on 127.0.0.1 with the
//! test certificates, an API key made for the test, and its unsigned control API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::daemon::certs;
use super::{KeyPair, keypair};

/// The OCI emulator's binary: `HSM_BRIDGE_EMULATOR_BIN` (another build of it, e.g. an
/// optimised one for benches/fleet.rs), or [`emulator_binary`]'s.
pub(crate) fn binary() -> &'static PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("HSM_BRIDGE_EMULATOR_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => emulator_binary("oci-kms-emulator"),
    })
}

/// Binary `name` of the workspace member `emulator/`, built into this workspace's target
/// folder (a no-op when `cargo test` has built it already).
pub(crate) fn emulator_binary(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO"))
        .current_dir(root)
        .args([
            "build",
            "--locked",
            "-q",
            "-p",
            "oci-kms-emulator",
            "--bin",
            name,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target/tmp is inside the target folder")
        .to_path_buf();
    target.join("debug").join(name)
}

/// An OCI API identity for tests: key pair and an ~/.oci/config-style file.
pub(crate) struct ApiIdentity {
    pub key: KeyPair,
    pub config: PathBuf,
    pub fingerprint: String,
    pub tenancy: String,
    pub user: String,
}

pub(crate) fn api_identity(dir: &Path, name: &str) -> ApiIdentity {
    let key = keypair(
        dir,
        name,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
    );
    std::fs::set_permissions(
        &key.private_pem,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let pkey = openssl::pkey::PKey::private_key_from_pem(&std::fs::read(&key.private_pem).unwrap())
        .unwrap();
    let fingerprint = hsm_bridge::oci::signer::fingerprint(&pkey).unwrap();
    let (tenancy, user) = (
        format!("ocid1.tenancy.oc1..{name}"),
        format!("ocid1.user.oc1..{name}"),
    );
    let config = dir.join(format!("{name}.oci-config"));
    std::fs::write(
        &config,
        format!(
            "[DEFAULT]\nuser={user}\nfingerprint={fingerprint}\ntenancy={tenancy}\nregion=us-ashburn-1\nkey_file={}\n",
            key.private_pem.display()
        ),
    )
    .unwrap();
    ApiIdentity {
        key,
        config,
        fingerprint,
        tenancy,
        user,
    }
}

pub(crate) struct Emulator {
    child: Child,
    /// `https://localhost:PORT`: what the daemon is given (the certificate names localhost).
    pub base: String,
    pub port: u16,
    /// Seeded keys: name -> OCID.
    pub keys: std::collections::HashMap<String, String>,
    http: reqwest::Client,
}

/// A client that trusts the test CA.
pub(crate) fn http_client() -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(certs().join("ca.pem")).unwrap();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .build()
        .unwrap()
}

use rustls::pki_types::pem::PemObject;

/// A call to an emulator's unsigned control API, `{base}/_emulator/{path}`; its JSON
/// answer, which must be a success.
pub(crate) async fn control(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let mut b = http.request(method, format!("{base}/_emulator/{path}"));
    if let Some(v) = body {
        b = b.body(v.to_string());
    }
    let r = b.send().await.unwrap();
    let status = r.status();
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert!(status.is_success(), "emulator control {path}: {status} {v}");
    v
}

impl Emulator {
    /// An ImportKeyVersion of the fixture's test-aes-256 into this emulator's key `key`
    /// (RSA_OAEP_AES_SHA256, the default connection).
    pub(crate) fn import_request(
        &self,
        key: &str,
        idempotency_key: String,
        wait: bool,
    ) -> hsm_bridge::proto::ImportKeyVersionRequest {
        use hsm_bridge::proto;
        proto::ImportKeyVersionRequest {
            source_key: Some(proto::KeyRef {
                key: Some(proto::key_ref::Key::Label("test-aes-256".into())),
            }),
            oci_key_id: self.keys[key].clone(),
            oci: Some(proto::OciTarget {
                connection: String::new(),
                management_endpoint: self.base.clone(),
            }),
            algorithm: proto::WrappingAlgorithm::RsaOaepAesSha256 as i32,
            idempotency_key,
            wait_for_enabled: wait,
        }
    }

    /// Starts the emulator on a free port, accepting `api_keys` (public PEM files), with
    /// `keys` seeded (`NAME=SHAPE`), and the test oracle on.
    pub(crate) fn start(dir: &Path, api_keys: &[&Path], keys: &[&str]) -> Emulator {
        Self::start_with(dir, api_keys, keys, 150)
    }

    /// As [`Emulator::start`], with new versions CREATING for `enable_after_ms`.
    pub(crate) fn start_with(
        dir: &Path,
        api_keys: &[&Path],
        keys: &[&str],
        enable_after_ms: u64,
    ) -> Emulator {
        Self::start_full(dir, api_keys, keys, enable_after_ms, None)
    }

    /// As [`Emulator::start_with`], the vault's wrapping key being `wrapping_private_pem`
    /// (so that a test can wrap for it as anyone could with the public half).
    pub(crate) fn start_with_wrapping_key(
        dir: &Path,
        api_keys: &[&Path],
        keys: &[&str],
        enable_after_ms: u64,
        wrapping_private_pem: &Path,
    ) -> Emulator {
        Self::start_full(
            dir,
            api_keys,
            keys,
            enable_after_ms,
            Some(wrapping_private_pem),
        )
    }

    fn start_full(
        dir: &Path,
        api_keys: &[&Path],
        keys: &[&str],
        enable_after_ms: u64,
        wrapping_key: Option<&Path>,
    ) -> Emulator {
        let c = certs();
        let enable_after_ms = enable_after_ms.to_string();
        let mut cmd = Command::new(binary());
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--test-oracle",
            "--enable-after-ms",
            &enable_after_ms,
        ])
        .arg("--tls-cert")
        .arg(c.join("server.pem"))
        .arg("--tls-key")
        .arg(c.join("server.key"));
        for k in api_keys {
            cmd.arg("--api-key").arg(k);
        }
        if let Some(w) = wrapping_key {
            cmd.arg("--wrapping-key").arg(w);
        }
        for k in keys {
            cmd.args(["--key", k]);
        }
        let log = dir.join(format!("emulator-{}.log", std::process::id()));
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let lines = super::first_lines(&mut child, keys.len() + 1, Duration::from_secs(60));
        let addr = lines
            .first()
            .and_then(|l| l.strip_prefix("oci-kms-emulator: listening on https://"))
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!(
                    "emulator did not start: {lines:?}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_string();
        let port: u16 = addr.rsplit_once(':').unwrap().1.parse().unwrap();
        let keys = lines[1..]
            .iter()
            .filter_map(|l| {
                let mut p = l.split(' ');
                (p.next() == Some("key"))
                    .then(|| (p.next().unwrap().to_string(), p.next().unwrap().to_string()))
            })
            .collect();
        Emulator {
            child,
            base: format!("https://localhost:{port}"),
            port,
            keys,
            http: http_client(),
        }
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        control(&self.http, &self.base, method, path, body).await
    }

    /// The emulator's process id (a benchmark reads its CPU time).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The request log.
    pub(crate) async fn requests(&self) -> Vec<Value> {
        match self.control(reqwest::Method::GET, "requests", None).await {
            Value::Array(v) => v,
            other => panic!("{other}"),
        }
    }

    pub(crate) async fn fault(&self, f: Value) {
        self.control(reqwest::Method::POST, "faults", Some(f)).await;
    }

    /// A key, with `versionIds`.
    pub(crate) async fn key(&self, id: &str) -> Value {
        self.control(reqwest::Method::GET, &format!("keys/{id}"), None)
            .await
    }

    /// The material a version was imported with.
    pub(crate) async fn material(&self, version_id: &str) -> Vec<u8> {
        let v = self
            .control(
                reqwest::Method::GET,
                &format!("material/{version_id}"),
                None,
            )
            .await;
        hsm_bridge::wrap::unhex(v["hex"].as_str().unwrap()).unwrap()
    }

    /// The `[oci]` section (with a `default` connection) for a daemon config.
    pub(crate) fn oci_config(&self, identity: &ApiIdentity, max_attempts: u32) -> String {
        format!(
            "\n[oci]\nallowed_endpoints = [\"https://localhost:{}\"]\nca_bundle = \"{}\"\ntimeout_ms = 5000\nmax_attempts = {max_attempts}\n\n[oci.connections.default]\nconfig_file = \"{}\"\n",
            self.port,
            certs().join("ca.pem").display(),
            identity.config.display()
        )
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
