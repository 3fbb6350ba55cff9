//! The real `azure-kv-emulator` process for black-box tests: HTTPS on 127.0.0.1 with the
//! test certificates, a tenant and client id made for the start, the client secret in a
//! 0600 file (never on a command line), a client certificate (RSA) whose key may sign
//! client assertions, and its unauthenticated control API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::daemon::certs;
use super::emulator::{control, emulator_binary, http_client};

/// The Azure emulator's binary, built once per test process.
pub(crate) fn binary() -> &'static PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| emulator_binary("azure-kv-emulator"))
}

pub(crate) struct AzureEmulator {
    /// `https://localhost:PORT` (the test certificate names localhost): the vault URL, and
    /// the authority host tokens come from.
    pub base: String,
    pub port: u16,
    /// The tenant id (a random GUID).
    pub tenant: String,
    /// The client id (a random GUID).
    pub client_id: String,
    /// The client secret, alone in a 0600 file.
    pub secret_file: PathBuf,
    /// The client certificate (PEM) registered with `--client-cert`.
    pub client_cert: PathBuf,
    /// Its RSA private key then the certificate, PEM, in a 0600 file (what SDK certificate
    /// credentials read).
    pub client_key_and_cert: PathBuf,
    /// `https://vault.azure.net`, or `https://managedhsm.azure.net` for a Managed HSM.
    pub resource: String,
    child: Child,
    http: reqwest::Client,
}

/// A random version-4 GUID (the emulator's own UUIDs).
pub(crate) fn guid() -> String {
    oci_kms_emulator::aws::protocol::uuid()
}

/// A self-signed RSA-2048 certificate and its key, PEM.
fn client_certificate() -> (Vec<u8>, Vec<u8>) {
    use openssl::{asn1::Asn1Time, bn::BigNum, hash::MessageDigest, pkey::PKey, x509};
    let key = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let mut name = x509::X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "azure-emulator-client")
        .unwrap();
    let name = name.build();
    let mut b = x509::X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let serial = BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap();
    b.set_serial_number(&serial).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    (
        b.build().to_pem().unwrap(),
        key.private_key_to_pem_pkcs8().unwrap(),
    )
}

impl AzureEmulator {
    /// Starts the emulator on a free port with the test oracle on, as a Key Vault Premium
    /// or (`managed_hsm`) a Managed HSM; killed on drop.
    pub(crate) fn start(dir: &Path, managed_hsm: bool) -> AzureEmulator {
        static STARTS: AtomicU32 = AtomicU32::new(0);
        let n = STARTS.fetch_add(1, Ordering::Relaxed);
        let home = dir.join(format!("azure-emulator-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&home).unwrap();
        let (tenant, client_id) = (guid(), guid());
        let mut secret = [0u8; 30];
        openssl::rand::rand_bytes(&mut secret).unwrap();
        let secret = openssl::base64::encode_block(&secret);
        let secret_file = home.join("client-secret");
        super::write_private(&secret_file, secret.as_bytes());
        let (cert, key) = client_certificate();
        let client_cert = home.join("client-cert.pem");
        std::fs::write(&client_cert, &cert).unwrap();
        let client_key_and_cert = home.join("client-key-and-cert.pem");
        super::write_private(&client_key_and_cert, &[key, cert].concat());
        let c = certs();
        let log = home.join("emulator.log");
        let mut cmd = Command::new(binary());
        cmd.args(["--listen", "127.0.0.1:0", "--test-oracle"])
            .arg("--tls-cert")
            .arg(c.join("server.pem"))
            .arg("--tls-key")
            .arg(c.join("server.key"))
            .args(["--tenant", &tenant, "--client-id", &client_id])
            .arg("--client-secret-file")
            .arg(&secret_file)
            .arg("--client-cert")
            .arg(&client_cert);
        if managed_hsm {
            cmd.arg("--managed-hsm");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let lines = super::first_lines(&mut child, 1, Duration::from_secs(60));
        let Some(addr) = lines
            .first()
            .and_then(|l| l.strip_prefix("azure-kv-emulator: listening on https://"))
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "azure-kv-emulator did not start: {lines:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let port: u16 = addr.rsplit_once(':').unwrap().1.parse().unwrap();
        AzureEmulator {
            base: format!("https://localhost:{port}"),
            port,
            tenant,
            client_id,
            secret_file,
            client_cert,
            client_key_and_cert,
            resource: if managed_hsm {
                "https://managedhsm.azure.net"
            } else {
                "https://vault.azure.net"
            }
            .to_string(),
            child,
            http: http_client(),
        }
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        control(&self.http, &self.base, method, path, body).await
    }

    /// A key made through the control API (no token, and none of Key Vault's rules on
    /// `key_ops`, e.g. a bad key-exchange key with `["import", "wrapKey"]`); its KeyBundle.
    pub(crate) async fn create_key(
        &self,
        name: &str,
        kty: &str,
        size: u32,
        key_ops: &[&str],
    ) -> Value {
        self.control(
            reqwest::Method::POST,
            "keys",
            Some(json!({"name": name, "kty": kty, "key_size": size, "key_ops": key_ops})),
        )
        .await
    }

    /// A new RSA-HSM key-exchange key (`key_ops` exactly `["import"]`); its versioned kid.
    pub(crate) async fn kek(&self, name: &str, bits: u32) -> String {
        let b = self.create_key(name, "RSA-HSM", bits, &["import"]).await;
        b["key"]["kid"].as_str().unwrap().to_string()
    }

    /// A key: `{name, versions: [{version, kid, kty, key_ops, tags, created, enabled,
    /// imported}]}`, oldest first.
    pub(crate) async fn key(&self, name: &str) -> Value {
        self.control(reqwest::Method::GET, &format!("keys/{name}"), None)
            .await
    }

    /// The names of every key the emulator has.
    pub(crate) async fn names(&self) -> Vec<String> {
        match self.control(reqwest::Method::GET, "keys", None).await {
            Value::Array(v) => v.iter().map(|k| k.as_str().unwrap().to_string()).collect(),
            other => panic!("{other}"),
        }
    }

    /// What an imported version was given (PKCS#8 DER for RSA and EC, raw bytes for
    /// oct-HSM).
    pub(crate) async fn material(&self, name: &str, version: &str) -> Vec<u8> {
        let v = self
            .control(
                reqwest::Method::GET,
                &format!("material/{name}/{version}"),
                None,
            )
            .await;
        hsm_bridge::wrap::unhex(v["material_hex"].as_str().unwrap()).unwrap()
    }

    /// Adds a fault (or a JSON array of faults): `{op, name, count, status, code,
    /// raw_body, delay_ms, drop, processed, challenge_resource}`.
    pub(crate) async fn fault(&self, f: Value) {
        self.control(reqwest::Method::POST, "faults", Some(f)).await;
    }

    pub(crate) async fn clear_faults(&self) {
        self.control(reqwest::Method::DELETE, "faults", None).await;
    }

    /// The request log: `{op, name, version, status, code, token, client_auth, fault,
    /// request_id, ...}` per token or Key Vault call.
    pub(crate) async fn requests(&self) -> Vec<Value> {
        match self.control(reqwest::Method::GET, "requests", None).await {
            Value::Array(v) => v,
            other => panic!("{other}"),
        }
    }
}

impl Drop for AzureEmulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
