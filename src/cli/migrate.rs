//! `migrate`: many imports from a plan, in process, the operator as the caller. The plan
//! (TOML) names items: a source key (a label, a label glob, or a CKA_ID) to a
//! `[destinations.NAME]`, into a target key or a new key each. Each source key an item
//! matches is one import under an idempotency key derived from the plan's name, the item's
//! id and what it asks, so a second run of the same plan is the same requests: what the
//! first run finished is answered from the journal (nothing is sent again), and what it left
//! unfinished is retried under the same keys (the journal re-sends the recorded bytes or
//! finds what landed). Workers on several machines sharing one PostgreSQL journal can run one
//! plan: the journal's claim lets one of them do an import, and the others get its answer.
//! Idempotency keys belong to a caller (the operator in process, the certificate's caller
//! through a daemon): a plan resumes only the way it was run.
//!
//! `--dry-run` makes every check an import makes before the cloud is called (the key found
//! and allowed to leave, the destination, the cloud's rules for its shape, the format on this
//! token) and wraps nothing. A run keeps `--parallel` imports in flight, shows a progress
//! bar with rate and ETA on a terminal (JSON lines on stderr otherwise), and ends with a
//! summary table and a JSON report (every import: outcome, key and version ids, the reason
//! for a refusal); the exit status is non-zero if any item did not import.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use tonic::transport::Channel;

use super::audit::CliAudit;
use super::health::Connect;
use super::import::CliImport;
use super::{Error, MigrateArgs, io};
use crate::audit::Operation;
use crate::code::Code;
use crate::export::{
    Caller, Export, ExportError, Exporter, HsmPath, ImportAsk, ImportTo, KeyAdmitted,
};
use crate::hsm::KeyRef;
use crate::policy::glob_match;
use crate::proto::{self, key_source_bridge_client::KeySourceBridgeClient};

/// Largest plan file, and most imports one plan may name.
const MAX_PLAN_BYTES: u64 = 1 << 20;
const MAX_IMPORTS: usize = 100_000;

/// Attempts of one import within a run when it fails in a way a retry may mend.
const ATTEMPTS: u32 = 4;

/// The plan file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Plan {
    /// Names the plan: part of every idempotency key it derives.
    name: String,
    #[serde(default)]
    items: Vec<Item>,
}

/// One item: a source key, or every key a label glob matches, into one destination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    /// Names the item in the report and in its idempotency keys (default: its position,
    /// from 1: give ids to items of a plan that will be edited).
    #[serde(default)]
    id: Option<String>,
    /// A label, or a label glob (`*`, `?`, `[...]`).
    #[serde(default)]
    source: Option<String>,
    /// A CKA_ID, hex (instead of `source`).
    #[serde(default)]
    source_id: Option<String>,
    /// A `[destinations.NAME]`.
    to: String,
    /// The cloud's key that gets the new material; or `new_key`.
    #[serde(default)]
    target: Option<String>,
    /// A new key for each source key.
    #[serde(default)]
    new_key: bool,
    /// With `new_key`: the key usage ("" for the shape's default).
    #[serde(default)]
    key_usage: Option<String>,
    /// A format name ("" for the cloud's for the key's shape).
    #[serde(default)]
    format: Option<String>,
}

/// One import of a run.
#[derive(Debug, Clone)]
struct Unit {
    item: String,
    /// The key as the plan named it (a glob's match by its label).
    key: Option<KeyRef>,
    /// Why the item names no key, when it does not (a glob that matches none).
    unmatched: Option<String>,
    to: String,
    target: String,
    new_key: Option<String>,
    format: String,
    idempotency_key: String,
}

/// What became of one import, as the report gives it.
#[derive(Debug, Clone, Serialize)]
struct Row {
    item: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_key_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_key_id_hex: Option<String>,
    destination: String,
    target: String,
    /// imported, already-done, checked (dry run), refused, failed.
    outcome: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    key_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    version_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    attempts: u32,
    idempotency_key: String,
    millis: u64,
}

/// The JSON report.
#[derive(Debug, Serialize)]
struct Report {
    plan: String,
    dry_run: bool,
    parallel: usize,
    started: String,
    seconds: f64,
    summary: Summary,
    items: Vec<Row>,
}

#[derive(Debug, Default, Clone, Serialize)]
struct Summary {
    total: usize,
    imported: usize,
    already_done: usize,
    checked: usize,
    refused: usize,
    failed: usize,
}

impl Summary {
    fn add(&mut self, outcome: &str) {
        match outcome {
            "imported" => self.imported += 1,
            "already-done" => self.already_done += 1,
            "checked" => self.checked += 1,
            "refused" => self.refused += 1,
            _ => self.failed += 1,
        }
    }

    fn done(&self) -> usize {
        self.imported + self.already_done + self.checked + self.refused + self.failed
    }
}

/// Reads and checks the plan at `path`.
fn read_plan(path: &Path) -> Result<Plan, Error> {
    let usage = |why: String| Error::Usage(format!("plan {}: {why}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| usage(e.to_string()))?;
    if meta.len() > MAX_PLAN_BYTES {
        return Err(usage(format!(
            "{} bytes; at most {MAX_PLAN_BYTES}",
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| usage(e.to_string()))?;
    let plan: Plan = toml::from_str(&text).map_err(|e| usage(e.to_string()))?;
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 64
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    if !name_ok(&plan.name) {
        return Err(usage(
            "name must be 1 to 64 letters, digits, '-', '_' or '.'".into(),
        ));
    }
    if plan.items.is_empty() {
        return Err(usage("no [[items]]".into()));
    }
    let mut ids = std::collections::HashSet::new();
    for (i, item) in plan.items.iter().enumerate() {
        let at = |why: &str| usage(format!("item {}: {why}", i + 1));
        match (&item.source, &item.source_id) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => return Err(at("give source (a label or label glob) or source_id")),
        }
        match (&item.target, item.new_key) {
            (Some(_), false) | (None, true) => {}
            _ => return Err(at("give target or new_key = true")),
        }
        if item.key_usage.is_some() && !item.new_key {
            return Err(at("key_usage goes with new_key"));
        }
        let id = item_id(item, i);
        if id.is_empty() || id.len() > 64 || !ids.insert(id.clone()) {
            return Err(at(&format!(
                "id {id:?} must be 1 to 64 characters and unique"
            )));
        }
    }
    Ok(plan)
}

fn item_id(item: &Item, i: usize) -> String {
    item.id.clone().unwrap_or_else(|| (i + 1).to_string())
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The imports `plan` names, with the token's labels (one listing) for its globs.
fn units(plan: &Plan, labels: &[String]) -> Result<Vec<Unit>, Error> {
    let mut out = Vec::new();
    for (i, item) in plan.items.iter().enumerate() {
        let id = item_id(item, i);
        let mut keys: Vec<(String, Option<KeyRef>, Option<String>)> = Vec::new();
        match (&item.source, &item.source_id) {
            (Some(glob), _) if is_glob(glob) => {
                let mut matched: Vec<&String> =
                    labels.iter().filter(|l| glob_match(glob, l)).collect();
                matched.dedup();
                if matched.is_empty() {
                    keys.push((
                        id.clone(),
                        None,
                        Some(format!("no key on the token matches {glob:?}")),
                    ));
                }
                for l in matched {
                    let key = KeyRef::label(l).map_err(|e| Error::Usage(format!("{l:?}: {e}")))?;
                    keys.push((format!("{id}/{l}"), Some(key), None));
                }
            }
            (Some(label), _) => {
                let key = KeyRef::label(label)
                    .map_err(|e| Error::Usage(format!("item {id}: source: {e}")))?;
                keys.push((id.clone(), Some(key), None));
            }
            (None, Some(hex)) => {
                let key = KeyRef::id_hex(hex)
                    .map_err(|e| Error::Usage(format!("item {id}: source_id: {e}")))?;
                keys.push((id.clone(), Some(key), None));
            }
            (None, None) => unreachable!("checked by read_plan"),
        }
        for (unit_id, key, unmatched) in keys {
            let target = item.target.clone().unwrap_or_default();
            let new_key = item
                .new_key
                .then(|| item.key_usage.clone().unwrap_or_default());
            let format = item.format.clone().unwrap_or_default();
            let mut h = openssl::sha::Sha256::new();
            let key_text = key.as_ref().map(|k| k.to_string()).unwrap_or_default();
            let new_text = new_key.as_deref().map(|u| format!("new:{u}"));
            for part in [
                "hsm-bridge migrate v1",
                &plan.name,
                &unit_id,
                &key_text,
                &item.to,
                new_text.as_deref().unwrap_or(&target),
                &format,
            ] {
                h.update(part.as_bytes());
                h.update(b"\0");
            }
            out.push(Unit {
                item: unit_id,
                key,
                unmatched,
                to: item.to.clone(),
                target,
                new_key,
                format,
                idempotency_key: format!("migrate-{}", &crate::wrap::hex(&h.finish())[..32]),
            });
            if out.len() > MAX_IMPORTS {
                return Err(Error::Usage(format!(
                    "the plan names more than {MAX_IMPORTS} imports; split it"
                )));
            }
        }
    }
    Ok(out)
}

/// What the run's workers share.
struct Shared {
    way: Way,
    dry_run: bool,
    queue: Mutex<VecDeque<Unit>>,
    progress: Mutex<Progress>,
}

/// How a run's imports are made.
enum Way {
    /// In this process: the export core over the token, the operator as the caller,
    /// every attempt audited as `hsm-bridge import`'s is.
    InProcess {
        exporter: Exporter,
        destinations: Arc<crate::clouds::Clouds>,
        audit: CliAudit,
    },
    /// Through a running daemon's gRPC `Import`, as the caller its certificate names (the
    /// daemon audits).
    Daemon {
        client: KeySourceBridgeClient<Channel>,
        conn: Box<Connect>,
    },
}

/// What one attempt of an import gave.
struct Tried {
    /// The key and version ids made (empty for a dry run's check), or the refusal.
    made: Result<(String, String), (Code, String)>,
    /// An earlier run made it: the journal's answer.
    replayed: bool,
    label: Option<String>,
    id_hex: Option<String>,
}

/// The run's tally and how it is shown.
struct Progress {
    summary: Summary,
    rows: Vec<Row>,
    started: Instant,
    terminal: bool,
    /// When the bar was last drawn.
    drawn: Option<Instant>,
}

impl Progress {
    /// Notes `row` and shows the progress: the bar (at most every 100 ms, and at the end) on a
    /// terminal, else one JSON line per import.
    fn note(&mut self, row: Row) {
        self.summary.add(row.outcome);
        let (done, total) = (self.summary.done(), self.summary.total);
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        let eta = match rate > 0.0 {
            true => (total - done) as f64 / rate,
            false => 0.0,
        };
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let due = self
                .drawn
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
            if due || done == total {
                let width = 30;
                let full = (done * width).checked_div(total).unwrap_or(width);
                let _ = write!(
                    err,
                    "\r[{}{}] {done}/{total} {:.1}/s ETA {:.0}s ({} refused, {} failed) ",
                    "#".repeat(full),
                    "-".repeat(width - full),
                    rate,
                    eta,
                    self.summary.refused,
                    self.summary.failed
                );
                if done == total {
                    let _ = writeln!(err);
                }
                self.drawn = Some(Instant::now());
            }
        } else {
            let line = serde_json::json!({
                "done": done,
                "total": total,
                "rate": (rate * 10.0).round() / 10.0,
                "eta_seconds": eta.round(),
                "item": row.item,
                "outcome": row.outcome,
                "code": row.code,
            });
            let _ = writeln!(err, "{line}");
        }
        self.rows.push(row);
    }
}

/// Whether an import that failed with `code` may succeed if tried again in this run.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::Aborted | Code::ResourceExhausted | Code::DeadlineExceeded
    )
}

/// Whether `code` is a refusal of the request itself (the plan or the key), not a failure.
fn refusal(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::AlreadyExists
            | Code::OutOfRange
    )
}

impl Shared {
    /// One import (or its dry-run checks), retried within the run while its failure is one
    /// a retry may mend.
    async fn run(&self, unit: &Unit) -> Row {
        let started = Instant::now();
        let mut row = Row {
            item: unit.item.clone(),
            source_key_label: unit
                .key
                .as_ref()
                .and_then(|k| k.label_named().map(str::to_string)),
            source_key_id_hex: None,
            destination: unit.to.clone(),
            target: match &unit.new_key {
                Some(_) => "(new key)".into(),
                None => unit.target.clone(),
            },
            outcome: "failed",
            key_id: String::new(),
            version_id: String::new(),
            code: None,
            reason: None,
            attempts: 0,
            idempotency_key: unit.idempotency_key.clone(),
            millis: 0,
        };
        let Some(key) = &unit.key else {
            row.outcome = "refused";
            row.code = Some(Code::NotFound.name());
            row.reason = unit.unmatched.clone();
            return row;
        };
        let mut pause = Duration::from_millis(250);
        loop {
            row.attempts += 1;
            let tried = match &self.way {
                Way::InProcess {
                    exporter,
                    destinations,
                    audit,
                } => {
                    self.in_process(unit, key.clone(), (exporter, destinations, audit))
                        .await
                }
                Way::Daemon { client, conn } => {
                    through_daemon(unit, key, client.clone(), conn).await
                }
            };
            row.source_key_label = tried.label.or(row.source_key_label);
            row.source_key_id_hex = tried.id_hex.or(row.source_key_id_hex);
            match tried.made {
                Ok((key_id, version_id)) => {
                    row.outcome = match (self.dry_run, tried.replayed) {
                        (true, _) => "checked",
                        (false, true) => "already-done",
                        (false, false) => "imported",
                    };
                    (row.key_id, row.version_id) = (key_id, version_id);
                    (row.code, row.reason) = (None, None);
                    break;
                }
                Err((code, why)) => {
                    row.code = Some(code.name());
                    row.reason = Some(why);
                    if refusal(code) {
                        row.outcome = "refused";
                        break;
                    }
                    row.outcome = "failed";
                    if !retryable(code) || row.attempts >= ATTEMPTS {
                        break;
                    }
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
        row.millis = started.elapsed().as_millis() as u64;
        row
    }

    /// One attempt in this process: the import, or with `dry_run` its checks; audited (a dry
    /// run exports nothing and is not).
    async fn in_process(
        &self,
        unit: &Unit,
        key: KeyRef,
        (exporter, destinations, audit): (&Exporter, &Arc<crate::clouds::Clouds>, &CliAudit),
    ) -> Tried {
        let mut attempt = audit.attempt(Operation::Import);
        let result = async {
            let admitted: KeyAdmitted =
                Export::admit(Caller::operator(super::CLI_CALLER), Operation::Import)?
                    .key(key, attempt.record())?;
            let to = ImportTo {
                destination: &unit.to,
                target: &unit.target,
                create: unit.new_key.as_deref(),
                format: &unit.format,
                valid_to: None,
                key_ops: &[],
                create_kek: false,
            };
            let ask = ImportAsk {
                idempotency_key: Some(&unit.idempotency_key),
                wait: true,
                deadline: Some(Instant::now() + CALL_TIMEOUT),
            };
            if self.dry_run {
                exporter
                    .check_import_to(destinations, admitted, to, ask, &mut attempt)
                    .await?;
                return Ok((String::new(), String::new()));
            }
            let made = exporter
                .import_to(destinations, admitted, to, ask, &mut attempt)
                .await?;
            Ok::<_, ExportError>((made.key_id, made.version_id))
        }
        .await;
        let progress = attempt.record().export.clone();
        let written = match (self.dry_run, super::record(attempt)) {
            (true, _) => Ok(()),
            (false, Ok(rec)) => audit.write(
                rec,
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| (e.code(), e.message())),
            ),
            (false, Err(e)) => Err(e),
        };
        let made = match (result, written) {
            (_, Err(e)) => Err((Code::Internal, e.to_string())),
            (Ok(m), Ok(())) => Ok(m),
            (Err(e), Ok(())) => Err((e.code(), e.message())),
        };
        Tried {
            made,
            replayed: progress.replayed,
            label: progress.label,
            id_hex: progress.id_hex,
        }
    }
}

/// Longest wait for one import (the wait until the key is usable included).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// One attempt through the daemon: gRPC `Import` under the unit's idempotency key.
async fn through_daemon(
    unit: &Unit,
    key: &KeyRef,
    mut client: KeySourceBridgeClient<Channel>,
    conn: &Connect,
) -> Tried {
    let source = match key {
        KeyRef::Label(l) => proto::key_ref::Key::Label(l.clone()),
        KeyRef::Id(id) => proto::key_ref::Key::IdHex(crate::wrap::hex(id)),
        KeyRef::Uri(u) => proto::key_ref::Key::Pkcs11Uri(u.to_string()),
    };
    let mut req = tonic::Request::new(proto::ImportRequest {
        source_key: Some(proto::KeyRef { key: Some(source) }),
        destination: unit.to.clone(),
        target: unit.target.clone(),
        create: unit.new_key.as_ref().map(|u| proto::CreateOptions {
            key_usage: u.clone(),
        }),
        format: unit.format.clone(),
        idempotency_key: unit.idempotency_key.clone(),
        wait_for_enabled: true,
        valid_to_unix: 0,
        ..Default::default()
    });
    req.set_timeout(CALL_TIMEOUT);
    match client.import(req).await {
        Ok(r) => {
            let r = r.into_inner();
            Tried {
                made: Ok((r.key_id, r.version_id)),
                replayed: r.replayed,
                label: None,
                id_hex: None,
            }
        }
        Err(s) => {
            let code = crate::service::status::canonical(s.code());
            // A status the daemon sent has its headers; one made here, from a broken
            // connection, has none: say how we came.
            let why = match s.metadata().is_empty() {
                true => conn.refused(&s),
                false => s.message().to_string(),
            };
            Tried {
                made: Err((code, why)),
                replayed: false,
                label: None,
                id_hex: None,
            }
        }
    }
}

/// The labels of the keys the daemon lets its caller see, page by page.
async fn daemon_labels(
    client: &mut KeySourceBridgeClient<Channel>,
) -> Result<Vec<String>, tonic::Status> {
    let mut labels = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_source_keys(proto::ListSourceKeysRequest {
                page_size: 1000,
                page_token,
                exportable_only: false,
            })
            .await?
            .into_inner();
        labels.extend(page.keys.into_iter().map(|k| k.label));
        if page.next_page_token.is_empty() {
            return Ok(labels);
        }
        page_token = page.next_page_token;
    }
}

/// `migrate`: the plan's imports, `--parallel` at a time.
pub(super) fn migrate_cmd(a: MigrateArgs, out: &mut dyn Write) -> Result<(), Error> {
    if !(1..=256).contains(&a.parallel) {
        return Err(Error::Usage("--parallel must be 1 to 256".into()));
    }
    let plan = read_plan(&a.plan)?;
    let report_path = a.report.clone().unwrap_or_else(|| {
        let mut p = a.plan.clone().into_os_string();
        p.push(".report.json");
        PathBuf::from(p)
    });
    // The way, the runtime, the token's labels (for the globs), and what to close after.
    let daemon = a.addr.clone().map(|addr| Connect {
        addr,
        tls: a.tls.clone(),
    });
    let (way, rt, labels, hsm) = match (&a.config, daemon) {
        (Some(config), None) => {
            let cli = CliImport::open(config)?;
            let labels: Vec<String> = cli
                .hsm
                .list_keys(None)?
                .into_iter()
                .map(|k| k.label)
                .collect();
            let CliImport {
                cfg,
                audit,
                journal,
                hsm,
                rt,
            } = cli;
            let way = Way::InProcess {
                exporter: Exporter::new(HsmPath::Queued(
                    crate::export::queue::HsmQueue::new(&hsm, hsm.sessions(), a.parallel * 2),
                    hsm.clone(),
                )),
                destinations: Arc::new(crate::clouds::Clouds::new(
                    &cfg.destinations,
                    cfg.policy.min_wrapping_key_bits,
                    journal.clone(),
                )),
                audit,
            };
            (way, rt, labels, Some(hsm))
        }
        (None, Some(conn)) => {
            if a.dry_run {
                return Err(Error::Usage(
                    "--dry-run runs the checks in process: give --config instead of --addr".into(),
                ));
            }
            let rt = super::runtime()?;
            let (client, labels) = rt.block_on(async {
                let mut client = KeySourceBridgeClient::new(conn.channel(None).await?);
                let labels = daemon_labels(&mut client)
                    .await
                    .map_err(|s| Error::Io(conn.refused(&s)))?;
                Ok::<_, Error>((client, labels))
            })?;
            (
                Way::Daemon {
                    client,
                    conn: Box::new(conn),
                },
                rt,
                labels,
                None,
            )
        }
        _ => return Err(Error::Usage("give --config or --addr, not both".into())),
    };
    let units = units(&plan, &labels)?;
    let total = units.len();
    let started_at = crate::audit::now_rfc3339();
    let shared = Arc::new(Shared {
        way,
        dry_run: a.dry_run,
        queue: Mutex::new(units.into()),
        progress: Mutex::new(Progress {
            summary: Summary {
                total,
                ..Summary::default()
            },
            rows: Vec::with_capacity(total),
            started: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            drawn: None,
        }),
    });
    rt.block_on(async {
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..a.parallel.min(total) {
            let shared = shared.clone();
            workers.spawn(async move {
                loop {
                    let next = shared
                        .queue
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .pop_front();
                    let Some(unit) = next else { break };
                    let row = shared.run(&unit).await;
                    shared
                        .progress
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .note(row);
                }
            });
        }
        while workers.join_next().await.is_some() {}
    });
    drop(rt);
    let Shared { way, progress, .. } = Arc::try_unwrap(shared)
        .map_err(|_| Error::Io("a migrate worker outlived the run".into()))?;
    // The export core holds the token through its queue: gone before the token is closed.
    drop(way);
    if let Some(hsm) = hsm.and_then(|h| Arc::try_unwrap(h).ok()) {
        hsm.close();
    }
    let progress = progress.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut rows = progress.rows;
    rows.sort_by(|a, b| a.item.cmp(&b.item));
    let report = Report {
        plan: plan.name.clone(),
        dry_run: a.dry_run,
        parallel: a.parallel,
        started: started_at,
        seconds: (progress.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        summary: progress.summary.clone(),
        items: rows,
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| Error::Io(e.to_string()))?;
    std::fs::write(&report_path, format!("{json}\n"))
        .map_err(|e| Error::Io(format!("the report {}: {e}", report_path.display())))?;
    if a.json {
        writeln!(out, "{json}").map_err(io)?;
    } else {
        print_table(&report, out)?;
        writeln!(out, "report: {}", report_path.display()).map_err(io)?;
    }
    let s = &report.summary;
    if s.refused + s.failed > 0 {
        return Err(Error::Io(format!(
            "{} of {} imports of plan {} did not go through ({} refused, {} failed); the report is {}",
            s.refused + s.failed,
            s.total,
            plan.name,
            s.refused,
            s.failed,
            report_path.display()
        )));
    }
    Ok(())
}

/// The summary table: one line per import that did not go through, then the counts.
fn print_table(report: &Report, out: &mut dyn Write) -> Result<(), Error> {
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(io);
    for r in report
        .items
        .iter()
        .filter(|r| matches!(r.outcome, "refused" | "failed"))
    {
        w(
            out,
            format!(
                "{:<8} {:<32} {} -> {}: {} {}",
                r.outcome,
                r.item,
                r.source_key_label.as_deref().unwrap_or("-"),
                r.destination,
                r.code.unwrap_or(""),
                r.reason.as_deref().unwrap_or("")
            ),
        )?;
    }
    let s = &report.summary;
    w(
        out,
        format!(
            "plan {}: {} imports in {:.1} s: {} imported, {} already done, {} checked, {} refused, {} failed",
            report.plan,
            s.total,
            report.seconds,
            s.imported,
            s.already_done,
            s.checked,
            s.refused,
            s.failed
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Result<Plan, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("plan.toml");
        std::fs::write(&p, text).unwrap();
        read_plan(&p).map_err(|e| e.to_string())
    }

    #[test]
    fn plans_are_checked() {
        let ok = "name = \"q4\"\n[[items]]\nsource = \"a-*\"\nto = \"aws\"\nnew_key = true\n";
        assert!(plan(ok).is_ok());
        for (bad, says) in [
            (
                "name = \"q 4\"\n[[items]]\nsource = \"a\"\nto = \"x\"\nnew_key = true\n",
                "name",
            ),
            ("name = \"q4\"\n", "no [[items]]"),
            (
                "name = \"q4\"\n[[items]]\nto = \"x\"\nnew_key = true\n",
                "source",
            ),
            (
                "name = \"q4\"\n[[items]]\nsource = \"a\"\nto = \"x\"\ntarget = \"k\"\nnew_key = true\n",
                "target or new_key",
            ),
            (
                "name = \"q4\"\n[[items]]\nsource = \"a\"\nto = \"x\"\nnew_key = true\nid = \"2\"\n[[items]]\nsource = \"b\"\nto = \"x\"\nnew_key = true\n",
                "unique",
            ),
            ("name = \"q4\"\nother = 1\n", "unknown field"),
        ] {
            let e = plan(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn units_expand_globs_and_keep_their_keys_across_runs() {
        let p = plan(
            "name = \"q4\"\n[[items]]\nsource = \"a-*\"\nto = \"aws\"\nnew_key = true\n[[items]]\nid = \"one\"\nsource = \"b\"\nto = \"aws\"\ntarget = \"k\"\n[[items]]\nsource = \"none-*\"\nto = \"aws\"\nnew_key = true\n",
        )
        .unwrap();
        let labels: Vec<String> = ["a-1", "a-2", "b", "c"].map(String::from).to_vec();
        let u = units(&p, &labels).unwrap();
        let items: Vec<&str> = u.iter().map(|u| u.item.as_str()).collect();
        assert_eq!(items, ["1/a-1", "1/a-2", "one", "3"]);
        assert!(u[3].key.is_none() && u[3].unmatched.is_some());
        // The same plan, the same keys; another key, another idempotency key.
        let again = units(&p, &labels).unwrap();
        assert_eq!(u[0].idempotency_key, again[0].idempotency_key);
        assert_ne!(u[0].idempotency_key, u[1].idempotency_key);
        assert!(u.iter().all(|u| u.idempotency_key.len() == 40));
    }
}
