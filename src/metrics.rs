//! Prometheus metrics (OpenMetrics text), served on a listener of their own when
//! `[metrics] listen` is set (off by default). Recording is a few atomic operations and
//! always on; only the listener is optional. No label carries a key's label unless
//! `metrics.key_labels = true` (cardinality, and key names can be sensitive).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// The label sets recorded on every call hold `&'static str`: a lookup allocates nothing.

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExportLabels {
    operation: &'static str,
    outcome: &'static str,
    key_type: &'static str,
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    operation: String,
    outcome: String,
    key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CkrLabel {
    ckr: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OciLabels {
    operation: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

type Seconds<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    // 100 µs to about 52 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// Every metric the daemon keeps.
pub struct Metrics {
    registry: Registry,
    key_labels: AtomicBool,
    exports: Family<ExportLabels, Counter>,
    exports_by_key: Family<KeyLabels, Counter>,
    hsm_wrap: Seconds<ModeLabel>,
    oci_call: Seconds<OpLabel>,
    rpc: Seconds<MethodLabel>,
    hsm_errors: Family<CkrLabel, Counter>,
    oci_attempts: Family<OciLabels, Counter>,
    oci_retries: Family<OciLabels, Counter>,
    queue: Gauge,
    sessions_in_use: Gauge,
    audit_failures: Counter,
    journal_failures: Counter,
    journal_forged: Counter,
    journal_up: Gauge,
    reinits: Counter,
    serving: Gauge,
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::default();
        let m = Metrics {
            key_labels: AtomicBool::new(false),
            exports: Family::default(),
            exports_by_key: Family::default(),
            hsm_wrap: Family::new_with_constructor(seconds),
            oci_call: Family::new_with_constructor(seconds),
            rpc: Family::new_with_constructor(seconds),
            hsm_errors: Family::default(),
            oci_attempts: Family::default(),
            oci_retries: Family::default(),
            queue: Gauge::default(),
            sessions_in_use: Gauge::default(),
            audit_failures: Counter::default(),
            journal_failures: Counter::default(),
            journal_forged: Counter::default(),
            journal_up: Gauge::default(),
            reinits: Counter::default(),
            serving: Gauge::default(),
            registry: Registry::default(),
        };
        m.register(&mut r);
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        r.register("hsm_bridge_build_info", "The build: its version", build);
        m.journal_up.set(1);
        Metrics { registry: r, ..m }
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "hsm_bridge_exports",
            "Export attempts (WrapKey, ImportKeyVersion, ImportKey, CLI), by operation, outcome, key type and wrap mode",
            self.exports.clone(),
        );
        r.register(
            "hsm_bridge_exports_by_key",
            "Export attempts by key label (only with metrics.key_labels = true)",
            self.exports_by_key.clone(),
        );
        r.register(
            "hsm_bridge_hsm_wrap_seconds",
            "Time of one HSM wrap, by wrap mode",
            self.hsm_wrap.clone(),
        );
        r.register(
            "hsm_bridge_oci_call_seconds",
            "Time of one OCI call, retries included, by operation",
            self.oci_call.clone(),
        );
        r.register(
            "hsm_bridge_rpc_seconds",
            "Time of one gRPC call, by method",
            self.rpc.clone(),
        );
        r.register(
            "hsm_bridge_hsm_errors",
            "PKCS#11 errors that reached a caller, by CKR name",
            self.hsm_errors.clone(),
        );
        r.register(
            "hsm_bridge_oci_attempts",
            "HTTP attempts to OCI, by operation and the status answered (0: no answer)",
            self.oci_attempts.clone(),
        );
        r.register(
            "hsm_bridge_oci_retries",
            "Retries of OCI calls, by operation and the status that caused them",
            self.oci_retries.clone(),
        );
        r.register(
            "hsm_bridge_hsm_queue_calls",
            "Calls holding or waiting for an HSM session",
            self.queue.clone(),
        );
        r.register(
            "hsm_bridge_hsm_sessions_in_use",
            "HSM sessions leased right now",
            self.sessions_in_use.clone(),
        );
        r.register(
            "hsm_bridge_audit_write_failures",
            "Audit records that could not be written (each refused its export)",
            self.audit_failures.clone(),
        );
        r.register(
            "hsm_bridge_journal_failures",
            "Import journal operations that failed (imports refused or answers unrecorded)",
            self.journal_failures.clone(),
        );
        r.register(
            "hsm_bridge_journal_forged_records",
            "Import journal records refused because their MAC did not match (planted or changed in the database)",
            self.journal_forged.clone(),
        );
        r.register(
            "hsm_bridge_journal_up",
            "1 when the import journal's last operation succeeded, 0 when it is down",
            self.journal_up.clone(),
        );
        r.register(
            "hsm_bridge_module_reinitialisations",
            "Re-initialisations of the PKCS#11 module after device errors",
            self.reinits.clone(),
        );
        r.register(
            "hsm_bridge_health_serving",
            "1 while health is SERVING, 0 otherwise",
            self.serving.clone(),
        );
    }

    /// Whether the per-key family is kept (`metrics.key_labels`).
    pub fn set_key_labels(&self, on: bool) {
        self.key_labels.store(on, Ordering::Relaxed);
    }

    /// One export attempt, as its audit record says.
    pub fn export(
        &self,
        operation: &'static str,
        outcome: &'static str,
        key_type: Option<&'static str>,
        mode: Option<&'static str>,
        key: Option<&str>,
    ) {
        self.exports
            .get_or_create(&ExportLabels {
                operation,
                outcome,
                key_type: key_type.unwrap_or("unknown"),
                mode: mode.unwrap_or("none"),
            })
            .inc();
        if self.key_labels.load(Ordering::Relaxed) {
            self.exports_by_key
                .get_or_create(&KeyLabels {
                    operation: operation.into(),
                    outcome: outcome.into(),
                    key: key.unwrap_or("unknown").into(),
                })
                .inc();
        }
    }

    pub fn hsm_wrap(&self, mode: &'static str, took: Duration) {
        self.hsm_wrap
            .get_or_create(&ModeLabel { mode })
            .observe(took.as_secs_f64());
    }

    pub fn oci_call(&self, operation: &str, took: Duration) {
        self.oci_call
            .get_or_create(&OpLabel {
                operation: operation.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// One HTTP attempt to OCI and its status (0: no answer); `retried`: another follows.
    pub fn oci_attempt(&self, operation: &str, status: u16, retried: bool) {
        let l = OciLabels {
            operation: operation.into(),
            status: status.to_string(),
        };
        self.oci_attempts.get_or_create(&l).inc();
        if retried {
            self.oci_retries.get_or_create(&l).inc();
        }
    }

    pub fn hsm_error(&self, ckr: &str) {
        self.hsm_errors
            .get_or_create(&CkrLabel { ckr: ckr.into() })
            .inc();
    }

    pub fn queue_enter(&self) {
        self.queue.inc();
    }
    pub fn queue_leave(&self) {
        self.queue.dec();
    }
    pub fn session_leased(&self) {
        self.sessions_in_use.inc();
    }
    pub fn session_returned(&self) {
        self.sessions_in_use.dec();
    }
    pub fn audit_failed(&self) {
        self.audit_failures.inc();
    }
    pub fn journal(&self, ok: bool) {
        if !ok {
            self.journal_failures.inc();
        }
        self.journal_up.set(i64::from(ok));
    }
    pub fn journal_forged(&self) {
        self.journal_forged.inc();
    }
    pub fn reinitialised(&self) {
        self.reinits.inc();
    }
    pub fn serving(&self, yes: bool) {
        self.serving.set(i64::from(yes));
    }

    /// The text a scrape gets.
    pub fn text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Observes the time from its creation to its drop into `hsm_bridge_rpc_seconds`.
pub struct RpcTimer {
    method: &'static str,
    started: Instant,
}

impl RpcTimer {
    pub fn start(method: &'static str) -> RpcTimer {
        RpcTimer {
            method,
            started: Instant::now(),
        }
    }
}

impl Drop for RpcTimer {
    fn drop(&mut self) {
        get()
            .rpc
            .get_or_create(&MethodLabel {
                method: self.method,
            })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// Serves `GET /metrics` on `listener` until the process ends: HTTP/1.1, one request per
/// connection, at most 8 KiB of request and 5 s to send it; anything else is 404 or 400.
pub async fn serve(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                    let n = conn.read(&mut chunk).await?;
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let line = buf.split(|&b| b == b'\n').next().unwrap_or(&[]);
            let line = String::from_utf8_lossy(line);
            let mut words = line.split_whitespace();
            let (status, ctype, body) = match (words.next(), words.next()) {
                (Some("GET"), Some("/metrics")) => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    get().text(),
                ),
                (Some(_), Some(_)) => ("404 Not Found", "text/plain", "GET /metrics\n".into()),
                _ => ("400 Bad Request", "text/plain", "GET /metrics\n".into()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}
