//! The real `hsm-bridge serve` process for black-box tests: TLS material from
//! tests/make-test-certs.sh, a config around a test token, and gRPC clients.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use hsm_bridge::proto;
use hsm_bridge::proto::key_source_bridge_client::KeySourceBridgeClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{Fixture, process_dir, write_config};

/// Test certificates, made once per test process.
pub(crate) fn certs() -> &'static PathBuf {
    static CERTS: OnceLock<PathBuf> = OnceLock::new();
    CERTS.get_or_init(|| {
        let dir = process_dir("certs");
        make_certs(&dir);
        dir
    })
}

/// A fresh CA, server certificate and client certificates in `dir`
/// (tests/make-test-certs.sh).
pub(crate) fn make_certs(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/make-test-certs.sh");
    let out = Command::new("bash").arg(script).arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "make-test-certs.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The clients every TLS daemon config knows.
pub(crate) const CLIENTS: &str = r#"
[[server.clients]]
name = "cckm"
subject_cn = "cckm.example"
operations = ["list", "wrap", "import"]
keys = ["*"]

[[server.clients]]
name = "limited"
subject_cn = "limited.example"
operations = ["list", "wrap"]
keys = ["test-aes-*"]
"#;

/// The [server] lines of a TLS daemon on a free loopback port with the test certificates.
pub(crate) fn tls_server_lines() -> String {
    let c = certs();
    format!(
        "listen = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{}\"\n",
        c.join("server.pem").display(),
        c.join("server.key").display(),
        c.join("ca.pem").display()
    )
}

/// A [`daemon_config`] on `fx` whose caller `cckm` may import into the destinations
/// `grants`, with `tables` (the `[destinations.NAME]` tables, and any other) appended.
pub(crate) fn destinations_config(
    fx: &Fixture,
    name: &str,
    grants: &[&str],
    tables: &str,
) -> (PathBuf, PathBuf) {
    let (config, audit) = daemon_config(fx, name, "", None);
    let grants: Vec<String> = grants.iter().map(|g| format!("\"{g}\"")).collect();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "name = \"cckm\"\n",
        &format!("name = \"cckm\"\ndestinations = [{}]\n", grants.join(", ")),
    );
    std::fs::write(&config, format!("{text}\n{tables}")).unwrap();
    (config, audit)
}

/// A daemon config on `fx`'s token: `policy` lines go into [policy]; `server` replaces
/// the default TLS [server] lines. Returns the config and its audit log.
pub(crate) fn daemon_config(
    fx: &Fixture,
    name: &str,
    policy: &str,
    server: Option<&str>,
) -> (PathBuf, PathBuf) {
    let audit = fx.dir.join(format!("audit-{name}.jsonl"));
    let _ = std::fs::remove_file(&audit);
    let server = match server {
        Some(s) => s.to_string(),
        None => tls_server_lines(),
    };
    let config = write_config(fx, &format!("daemon-{name}.toml"), |base| {
        format!(
            "{base}{policy}\n\n[server]\n{server}\n{CLIENTS}\n[audit]\npath = \"{}\"\n",
            audit.display()
        )
    });
    (config, audit)
}

pub(crate) struct Daemon {
    child: Child,
    /// "127.0.0.1:PORT" or "unix:/path".
    pub addr: String,
    pub log: PathBuf,
    /// Where the client certificates and the CA are (the test certificates by default).
    pub tls: PathBuf,
}

impl Daemon {
    /// Starts `hsm-bridge serve` and waits for it to say where it listens; its stderr
    /// goes next to the config.
    pub(crate) fn start(config: &Path, extra_args: &[&str]) -> Daemon {
        Self::start_logging_to(config, extra_args, &config.with_extension("log"))
    }

    /// As [`Daemon::start`], with `env` set for the daemon.
    pub(crate) fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Daemon {
        Self::start_full(config, &[], &config.with_extension("log"), env)
    }

    /// As [`Daemon::start`], with stderr to `log`.
    pub(crate) fn start_logging_to(config: &Path, extra_args: &[&str], log: &Path) -> Daemon {
        Self::start_full(config, extra_args, log, &[])
    }

    /// As [`Daemon::start`], with both the soft and the hard `RLIMIT_NOFILE` at `files`
    /// (systemd's default is 1,024), set by util-linux's `prlimit`, which then becomes the
    /// daemon (same process).
    pub(crate) fn start_with_file_limit(config: &Path, files: u64) -> Daemon {
        let limit = format!("--nofile={files}:{files}");
        Self::start_cmd(
            Command::new("prlimit")
                .arg(limit)
                .arg("--")
                .arg(env!("CARGO_BIN_EXE_hsm-bridge")),
            config,
            &[],
            &config.with_extension("log"),
            &[],
        )
    }

    fn start_full(config: &Path, extra_args: &[&str], log: &Path, env: &[(&str, &str)]) -> Daemon {
        // HSM_BRIDGE_DAEMON_BIN: another build of the daemon, for A/B benchmarks
        // (BENCHMARKS.md); this build's own otherwise.
        let bin = std::env::var_os("HSM_BRIDGE_DAEMON_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_hsm-bridge").into());
        Self::start_cmd(&mut Command::new(bin), config, extra_args, log, env)
    }

    fn start_cmd(
        cmd: &mut Command,
        config: &Path,
        extra_args: &[&str],
        log: &Path,
        env: &[(&str, &str)],
    ) -> Daemon {
        let log = log.to_path_buf();
        // Held until the daemon listens, by which time it has logged in.
        let login = super::token_login_lock();
        let mut child = cmd
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(extra_args)
            .env_remove("SOFTHSM2_CONF")
            .env_remove("KRYOPTIC_CONF")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let line = super::first_lines(&mut child, 1, Duration::from_secs(60))
            .pop()
            .unwrap_or_default();
        drop(login);
        let Some(addr) = line.strip_prefix("hsm-bridge: listening on ") else {
            let _ = child.kill();
            panic!(
                "daemon did not start: {line:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Daemon {
            addr: addr.to_string(),
            child,
            log,
            tls: certs().clone(),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A TLS channel, with the client certificate `who` (e.g. "cckm") or none.
    pub(crate) async fn channel(
        &self,
        who: Option<&str>,
    ) -> Result<Channel, tonic::transport::Error> {
        let c = &self.tls;
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(
                std::fs::read(c.join("ca.pem")).unwrap(),
            ))
            .domain_name("localhost");
        if let Some(who) = who {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(c.join(format!("{who}.pem"))).unwrap(),
                std::fs::read(c.join(format!("{who}.key"))).unwrap(),
            ));
        }
        Endpoint::from_shared(format!("https://{}", self.addr))?
            .tls_config(tls)?
            .connect()
            .await
    }

    /// A KeySourceBridge client over mTLS as `who`.
    pub(crate) async fn client(&self, who: &str) -> KeySourceBridgeClient<Channel> {
        KeySourceBridgeClient::new(self.channel(Some(who)).await.expect("mTLS connect"))
    }

    /// A plain-text channel (loopback daemons with plaintext = true).
    pub(crate) async fn plain_channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A plain-text channel over the daemon's Unix socket ("unix:/path" daemons).
    pub(crate) async fn unix_channel(&self) -> Channel {
        let path = PathBuf::from(
            self.addr
                .strip_prefix("unix:")
                .expect("a Unix socket daemon"),
        );
        // The URI is not used: every connection goes to the socket.
        Endpoint::from_static("http://localhost")
            .connect_with_connector(UnixConnector(path))
            .await
            .unwrap()
    }

    /// Sends SIGHUP (reload).
    pub(crate) fn hangup(&self) {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.pid() as i32).unwrap(),
            rustix::process::Signal::HUP,
        )
        .unwrap();
    }

    /// Sends SIGTERM.
    pub(crate) fn terminate(&self) {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.pid() as i32).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
    }

    /// Waits for the process to exit (at most `within`).
    pub(crate) fn wait(&mut self, within: Duration) -> ExitStatus {
        let end = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < end,
                "daemon did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address of the listener whose log line says `what` (e.g. "metrics listening").
    pub(crate) fn side_addr(&self, what: &str) -> String {
        let log = self.log_text();
        log.lines()
            .find(|l| l.contains(what))
            .and_then(|l| l.split("addr=").nth(1))
            .map(|a| a.split_whitespace().next().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {what:?} in the log: {log}"))
    }

    /// The metrics listener's address, from the daemon's log.
    pub(crate) fn metrics_addr(&self) -> String {
        self.side_addr("metrics listening")
    }

    /// The plain-text health listener's address, from the daemon's log.
    pub(crate) fn health_addr(&self) -> String {
        self.side_addr("health probes listening")
    }

    /// GET /metrics on the daemon's metrics listener: the body.
    pub(crate) async fn scrape_metrics(&self) -> String {
        self.scrape_as(None).await.1
    }

    /// GET /metrics with `accept` as the Accept header: the content type and the body.
    pub(crate) async fn scrape_as(&self, accept: Option<&str>) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(self.metrics_addr())
            .await
            .unwrap();
        let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
        c.write_all(
            format!(
                "GET /metrics HTTP/1.1\r\nHost: localhost\r\n{accept}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        let ctype = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-type")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        (ctype, body.to_string())
    }
}

/// The value of the sample `name{labels}` (labels in the exporter's order), 0 if absent.
pub(crate) fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects every request to one Unix socket.
#[derive(Clone)]
struct UnixConnector(PathBuf);

impl tonic::codegen::Service<tonic::codegen::http::Uri> for UnixConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::codegen::http::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            Ok(hyper_util::rt::TokioIo::new(
                tokio::net::UnixStream::connect(path).await?,
            ))
        })
    }
}

/// The audit log's records.
pub(crate) fn audit_records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
        .collect()
}

/// Calls `call` until it answers: again 200 ms after each retryable refusal (UNAVAILABLE,
/// ABORTED, DEADLINE_EXCEEDED), for at most 90 s; any other refusal panics, naming `what`.
/// The answer, and how many calls it took.
pub(crate) async fn until_answered_by<T, F, Fut>(what: &str, call: F) -> (T, u32)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let end = std::time::Instant::now() + Duration::from_secs(90);
    let mut calls = 0;
    loop {
        calls += 1;
        match call().await {
            Ok(v) => return (v, calls),
            Err(e)
                if matches!(
                    e.code(),
                    tonic::Code::Unavailable | tonic::Code::Aborted | tonic::Code::DeadlineExceeded
                ) && std::time::Instant::now() < end =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{what}: {e:?}"),
        }
    }
}

impl Daemon {
    /// gRPC `Import` as `cckm`, with a 30 s deadline.
    pub(crate) async fn import(
        &self,
        req: proto::ImportRequest,
    ) -> Result<proto::ImportResponse, tonic::Status> {
        let mut r = tonic::Request::new(req);
        r.set_timeout(Duration::from_secs(30));
        self.client("cckm")
            .await
            .import(r)
            .await
            .map(|r| r.into_inner())
    }
}
