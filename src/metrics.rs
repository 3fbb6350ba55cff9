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

// The label sets recorded on every call hold `&'static str`: a lookup allocates nothing.

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExportLabels {
    operation: &'static str,
    outcome: &'static str,
    key_type: &'static str,
    mode: &'static str,
    format: &'static str,
    /// `Import`: the destination's cloud and its `[destinations]` name; else "none".
    cloud: &'static str,
    destination: &'static str,
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

/// `name` as a `&'static str`, kept once per distinct name: for destination names, which
/// only the config makes (a handful; a reload that renames them adds a few bytes).
fn intern(name: &str) -> &'static str {
    static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = names.iter().find(|n| **n == name) {
        return n;
    }
    let n: &'static str = Box::leak(name.to_string().into_boxed_str());
    names.push(n);
    n
}

/// Most distinct key labels the per-key family keeps; attempts on keys past them are
/// counted under `key="(other)"`.
pub(crate) const MAX_KEY_LABELS: usize = 256;
/// How long one encoding of the exposition serves the scrapes that come after it (a flood
/// of scrapes costs one encoding per interval, and they share its bytes); a scrape that
/// arrives while an encoding is made gets that one.
const ENCODE_EVERY: Duration = Duration::from_millis(100);

/// Every metric the daemon keeps.
pub(crate) struct Metrics {
    registry: Registry,
    key_labels: AtomicBool,
    /// The key labels the per-key family has, bounded by [`MAX_KEY_LABELS`].
    labels_seen: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The latest encoding of each format, and when it was made.
    encoded: std::sync::Mutex<[Option<(Instant, bytes::Bytes)>; 2]>,
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
pub(crate) fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::default();
        let m = Metrics {
            key_labels: AtomicBool::new(false),
            labels_seen: std::sync::Mutex::new(std::collections::HashSet::new()),
            encoded: std::sync::Mutex::new([None, None]),
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
            "Export attempts (WrapKey, ImportKeyVersion, ImportKey, Import, RotateKey, CLI), by operation, outcome, key type, wrap mode, format, cloud and destination",
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
    pub(crate) fn set_key_labels(&self, on: bool) {
        self.key_labels.store(on, Ordering::Relaxed);
    }

    /// One export attempt, as its audit record says, with `outcome`. The key's label only
    /// for a key the token has (never a label a caller merely asked for); the destination
    /// only once it is one the config names (the record has its cloud).
    pub(crate) fn export(&self, rec: &crate::audit::Record, outcome: &'static str) {
        let key = rec.export.label.as_deref().filter(|_| rec.export.on_token);
        let operation = rec.operation.as_str();
        let destination = match (rec.cloud, rec.destination.as_deref()) {
            (Some(_), Some(d)) => intern(d),
            _ => "none",
        };
        self.exports
            .get_or_create(&ExportLabels {
                operation,
                outcome,
                key_type: rec.export.key_type.unwrap_or("unknown"),
                mode: rec.export.mode.unwrap_or("none"),
                format: rec.format.unwrap_or("none"),
                cloud: rec.cloud.unwrap_or("none"),
                destination,
            })
            .inc();
        if let (true, Some(key)) = (self.key_labels.load(Ordering::Relaxed), key) {
            let key = {
                let mut seen = self.labels_seen.lock().unwrap_or_else(|p| p.into_inner());
                if seen.contains(key) || seen.len() < MAX_KEY_LABELS {
                    seen.insert(key.to_string());
                    key
                } else {
                    "(other)"
                }
            };
            self.exports_by_key
                .get_or_create(&KeyLabels {
                    operation: operation.into(),
                    outcome: outcome.into(),
                    key: key.into(),
                })
                .inc();
        }
    }

    pub(crate) fn hsm_wrap(&self, mode: &'static str, took: Duration) {
        self.hsm_wrap
            .get_or_create(&ModeLabel { mode })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn oci_call(&self, operation: &str, took: Duration) {
        self.oci_call
            .get_or_create(&OpLabel {
                operation: operation.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// One HTTP attempt to OCI and its status (0: no answer); `retried`: another follows.
    pub(crate) fn oci_attempt(&self, operation: &str, status: u16, retried: bool) {
        let l = OciLabels {
            operation: operation.into(),
            status: status.to_string(),
        };
        self.oci_attempts.get_or_create(&l).inc();
        if retried {
            self.oci_retries.get_or_create(&l).inc();
        }
    }

    pub(crate) fn hsm_error(&self, ckr: &str) {
        self.hsm_errors
            .get_or_create(&CkrLabel { ckr: ckr.into() })
            .inc();
    }

    pub(crate) fn queue_enter(&self) {
        self.queue.inc();
    }
    pub(crate) fn queue_leave(&self) {
        self.queue.dec();
    }
    pub(crate) fn session_leased(&self) {
        self.sessions_in_use.inc();
    }
    pub(crate) fn session_returned(&self) {
        self.sessions_in_use.dec();
    }
    pub(crate) fn audit_failed(&self) {
        self.audit_failures.inc();
    }
    pub(crate) fn journal(&self, ok: bool) {
        if !ok {
            self.journal_failures.inc();
        }
        self.journal_up.set(i64::from(ok));
    }
    pub(crate) fn journal_forged(&self) {
        self.journal_forged.inc();
    }
    pub(crate) fn reinitialised(&self) {
        self.reinits.inc();
    }
    pub(crate) fn serving(&self, yes: bool) {
        self.serving.set(i64::from(yes));
    }

    /// The text a scrape gets.
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Observes the time from its creation to its drop into `hsm_bridge_rpc_seconds`.
pub(crate) struct RpcTimer {
    method: &'static str,
    started: Instant,
}

impl RpcTimer {
    pub(crate) fn start(method: &'static str) -> RpcTimer {
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

/// The longest a metrics connection stays open, whatever it is doing (a scraper that reads
/// slowly, or not at all, lets go of its connection then).
pub(crate) const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// Longest wait for a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The two expositions: the classic text format (0.0.4), and OpenMetrics 1.0 for a scraper
/// that asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Text,
    OpenMetrics,
}

impl Format {
    /// What an `Accept` header asks for: OpenMetrics when it names it, else the classic
    /// text (Prometheus asks for both, OpenMetrics first; promtool and curl for neither).
    pub(crate) fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

impl Metrics {
    /// The exposition in `format`: one encoding at a time, which the scrapes that waited
    /// for it, and those within [`ENCODE_EVERY`] of it, share.
    pub(crate) fn exposition(&self, format: Format) -> bytes::Bytes {
        let asked = Instant::now();
        let slot = format as usize;
        let mut cache = self.encoded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((made, body)) = &cache[slot]
            && (*made >= asked || made.elapsed() < ENCODE_EVERY)
        {
            return body.clone();
        }
        let made = Instant::now();
        let open = self.text();
        let body = bytes::Bytes::from(match format {
            Format::OpenMetrics => open,
            Format::Text => classic(&open),
        });
        cache[slot] = Some((made, body.clone()));
        body
    }
}

/// The classic text format (0.0.4) of an OpenMetrics exposition: a counter's family is
/// named after its samples (`x_total`), there is no `# UNIT` and no `# EOF`. Everything
/// else is written alike in both.
pub(crate) fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Serves `GET /metrics` on the connections of `incoming` until the process ends: HTTP/1.1
/// by hyper, one request per connection, its head within 5 s, the whole connection within
/// [`CONNECTION_LIFETIME`] (the listener's tracker closes it then); anything else is 404
/// or 405.
pub(crate) async fn serve<S>(
    mut incoming: tokio_stream::wrappers::ReceiverStream<Result<S, std::io::Error>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio_stream::StreamExt;
    while let Some(conn) = incoming.next().await {
        let Ok(conn) = conn else { continue };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req| async move {
                Ok::<_, std::convert::Infallible>(respond(&req))
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .max_buf_size(8192)
                .serve_connection(hyper_util::rt::TokioIo::new(conn), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, served).await;
        });
    }
}

type Body = http_body_util::Full<bytes::Bytes>;

fn respond<B>(req: &hyper::Request<B>) -> hyper::Response<Body> {
    let plain = |status: hyper::StatusCode, text: &'static str| {
        let mut r = hyper::Response::new(Body::new(bytes::Bytes::from_static(text.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.uri().path() != "/metrics" {
        return plain(hyper::StatusCode::NOT_FOUND, "GET /metrics\n");
    }
    if req.method() != hyper::Method::GET {
        return plain(hyper::StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
    }
    let accept = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    let mut r = hyper::Response::new(Body::new(get().exposition(format)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(format.content_type()),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_key_family_is_bounded() {
        let m = Metrics::new();
        m.set_key_labels(true);
        for i in 0..MAX_KEY_LABELS + 50 {
            let mut rec = crate::audit::Record::default();
            rec.export.key_type = Some("AES");
            rec.export.mode = Some("hybrid");
            rec.format = Some("oci:RSA_OAEP_AES_SHA256");
            rec.export.label = Some(format!("k{i}"));
            rec.export.on_token = true;
            m.export(&rec, "allowed");
        }
        // a label a caller only asked for is never recorded
        let mut asked = crate::audit::Record::default();
        asked.export.label = Some("asked".into());
        m.export(&asked, "refused");
        let text = m.text();
        let series = text
            .lines()
            .filter(|l| l.starts_with("hsm_bridge_exports_by_key_total{"))
            .count();
        assert_eq!(series, MAX_KEY_LABELS + 1, "{text}");
        assert!(text.contains("key=\"(other)\"} 50"), "{text}");
        assert!(!text.contains("key=\"unknown\""), "{text}");
    }

    #[test]
    fn the_classic_format_names_counters_after_their_samples() {
        let open = "# HELP a_things Things.\n# TYPE a_things counter\na_things_total{x=\"1\"} 2\n# HELP b Gauge.\n# TYPE b gauge\n# UNIT b seconds\nb 1\n# EOF\n";
        assert_eq!(
            classic(open),
            "# HELP a_things_total Things.\n# TYPE a_things_total counter\na_things_total{x=\"1\"} 2\n# HELP b Gauge.\n# TYPE b gauge\nb 1\n"
        );
        assert_eq!(Format::negotiate(None), Format::Text);
        // one encoding serves every scrape within the interval, and they share its bytes
        let (a, b) = (
            get().exposition(Format::Text),
            get().exposition(Format::Text),
        );
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert!(!a.is_empty());
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Text);
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
    }
}
