//! The audit log: one JSON line per export attempt (WrapKey, ImportKeyVersion, ImportKey),
//! allowed or refused, written before the answer goes out, by the daemon and the command
//! line alike. Never key material. It knows no gRPC: an attempt ends with a canonical code
//! (src/code.rs).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;

use crate::code::Code;

enum Sink {
    File(File),
    Stderr,
}

pub(crate) struct Audit {
    sink: Mutex<Sink>,
}

/// The export an audit record is about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) enum Operation {
    #[default]
    WrapKey,
    ImportKeyVersion,
    ImportKey,
    /// An import into a `[destinations.NAME]` (gRPC `Import`, `hsm-bridge import`).
    Import,
    /// New material generated in the HSM and imported into a `[destinations.NAME]` (gRPC
    /// `RotateKey`, `hsm-bridge rotate`).
    RotateKey,
}

/// How an export attempt ended: `allowed` (the material left: returned, or sent to OCI),
/// `refused` (by policy, the request, or the caller leaving), or `failed` (the daemon or a
/// service below it failed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Outcome {
    Allowed,
    #[default]
    Refused,
    Failed,
}

impl Operation {
    /// The operation `name` names (as [`Self::as_str`] gives it), e.g. in a journal record.
    pub(crate) fn parse(name: &str) -> Option<Operation> {
        [
            Operation::WrapKey,
            Operation::ImportKeyVersion,
            Operation::ImportKey,
            Operation::Import,
            Operation::RotateKey,
        ]
        .into_iter()
        .find(|o| o.as_str() == name)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Operation::WrapKey => "WrapKey",
            Operation::ImportKeyVersion => "ImportKeyVersion",
            Operation::ImportKey => "ImportKey",
            Operation::Import => "Import",
            Operation::RotateKey => "RotateKey",
        }
    }
}

impl Record {
    /// Sets the outcome, code and reason of an attempt that ended with `result`. An export
    /// that made something at the destination (`export.created_id`) is `allowed` whatever
    /// came after (e.g. a version that was not ENABLED within the deadline): the key left.
    pub(crate) fn conclude(&mut self, result: Result<(), (Code, String)>) {
        match result {
            Ok(()) => {
                self.outcome = Outcome::Allowed;
                self.code = "OK";
            }
            Err((code, why)) => {
                self.outcome = if self.export.created_id.is_some() {
                    Outcome::Allowed
                } else {
                    Outcome::of(code)
                };
                self.code = code.name();
                self.reason = Some(why);
            }
        }
    }
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }

    /// The outcome a code stands for.
    pub(crate) fn of(c: Code) -> Outcome {
        match c {
            Code::Ok => Outcome::Allowed,
            c if c.is_failure() => Outcome::Failed,
            _ => Outcome::Refused,
        }
    }
}

/// One export attempt.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Record {
    pub time: String,
    pub request_id: String,
    /// The caller's configured name and certificate CN, or why it is unknown.
    pub caller: String,
    pub operation: Operation,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oci_key_id: Option<String>,
    /// The vault management endpoint the import went to (normalised), or "invalid".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oci_endpoint: Option<String>,
    /// `Import`: the `[destinations.NAME]` it went to, and that destination's cloud.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud: Option<&'static str>,
    /// `Import`: the cloud's key (an AWS key ARN), the one named or the one made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_key_id: Option<String>,
    /// The `[oci.connections]` identity the import was signed with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oci_connection: Option<String>,
    /// ImportKey: the compartment, protection mode and display name asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compartment_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protection_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The source key, vault key and mode of the export; for an import, OCI's answer.
    #[serde(flatten)]
    pub export: Progress,
    /// The cloud's own name for the format (OCI's `wrappingAlgorithm` for OCI's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<&'static str>,
    /// The format, CLOUD:NAME (src/wrap/format.rs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<&'static str>,
    pub outcome: Outcome,
    /// The gRPC status code name.
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What an audit record says of a caller-supplied value that failed its check: the raw
/// bytes never reach the log.
pub(crate) const INVALID: &str = "invalid";

/// `value` if it is at most `max` bytes of printable text, else [`INVALID`]. For values
/// recorded before (or without) a stricter check.
pub(crate) fn bounded(value: &str, max: usize) -> String {
    if value.len() <= max && !crate::text::has_deceptive(value) {
        value.to_string()
    } else {
        INVALID.to_string()
    }
}

impl Audit {
    /// Opens `path` for appending, or stderr for "-". A new file is created with mode 0600. A
    /// symbolic link at `path` is refused (`O_NOFOLLOW`), and so is, checked on the opened
    /// descriptor, a regular file that another user owns or that group or others may write
    /// (or others read); character devices (`/dev/null`, only root makes them) are taken.
    pub(crate) fn open(path: &Path) -> Result<Audit, AuditOpenError> {
        let sink = if path == Path::new("-") {
            Sink::Stderr
        } else {
            let bad = |why: String| AuditOpenError {
                path: path.display().to_string(),
                why,
            };
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(path)
                .map_err(|e| {
                    bad(
                        if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                            "is a symbolic link; give the real path".into()
                        } else {
                            e.to_string()
                        },
                    )
                })?;
            let meta = f.metadata().map_err(|e| bad(e.to_string()))?;
            check_file(&meta).map_err(bad)?;
            Sink::File(f)
        };
        Ok(Audit {
            sink: Mutex::new(sink),
        })
    }

    /// Writes one record as a JSON line and flushes it to the kernel. An error here must
    /// stop the export (fail closed).
    pub(crate) fn write(&self, record: &Record) -> std::io::Result<()> {
        let r = self.write_line(record);
        let outcome = if r.is_ok() {
            record.outcome.as_str()
        } else {
            crate::metrics::get().audit_failed();
            "refused"
        };
        crate::metrics::get().export(record, outcome);
        r
    }

    fn write_line(&self, record: &Record) -> std::io::Result<()> {
        let mut line = crate::text::json_line(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        match &mut *self.sink.lock().unwrap_or_else(|p| p.into_inner()) {
            Sink::File(f) => {
                f.write_all(&line)?;
                f.flush()
            }
            Sink::Stderr => {
                let mut e = std::io::stderr().lock();
                e.write_all(&line)?;
                e.flush()
            }
        }
    }
}

/// The audit log could not be opened as it must be.
#[derive(Debug, thiserror::Error)]
#[error("audit log {path}: {why}")]
pub struct AuditOpenError {
    path: String,
    why: String,
}

/// The owner and mode rules of [`Audit::open`].
fn check_file(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if meta.file_type().is_char_device() {
        return Ok(());
    }
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    crate::hardening::check_owner(meta).map_err(|e| e.to_string())?;
    let mode = meta.mode() & 0o777;
    if mode & 0o026 != 0 {
        return Err(format!(
            "mode {mode:04o} lets group or others write it, or others read it; run chmod 600 on it"
        ));
    }
    Ok(())
}

pub(crate) use crate::time::now_rfc3339;

/// What an export did, learnt along the way: the one record of it that the audit record
/// embeds (these are its field names) and the CLI prints; the journal keeps how a body was
/// made from it (`journal::Made`).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct Progress {
    #[serde(rename = "source_key_label", skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(rename = "source_key_id_hex", skip_serializing_if = "Option::is_none")]
    pub id_hex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrapping_key_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    /// "AES" or "RSA", for metrics (the audit record has the label and id).
    #[serde(skip)]
    pub key_type: Option<&'static str>,
    /// `label` is that of a key the token has (found for a wrap, or by the re-check of a
    /// recorded import), not only what a caller asked for: only such labels reach the
    /// per-key metrics.
    #[serde(skip)]
    pub on_token: bool,
    /// OCI's id of the final answer, when OCI answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opc_request_id: Option<String>,
    /// HTTP attempts the import took (retries included).
    #[serde(rename = "oci_attempts", skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// The key version (ImportKeyVersion) or key (ImportKey) OCI created.
    #[serde(rename = "oci_created_id", skip_serializing_if = "Option::is_none")]
    pub created_id: Option<String>,
    /// A recorded import: the journal's answer, refusal or bytes for this idempotency key
    /// (no new wrap).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    /// A rotation: whether this attempt generated the key in the HSM (`false`: an earlier
    /// attempt of the same request had).
    #[serde(rename = "generated_key", skip_serializing_if = "Option::is_none")]
    pub generated: Option<bool>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Progress {
    /// Takes what `later` knows: each fact it has replaces this one's (a key named in the
    /// request is replaced by the key found; the latest OCI answer by a newer one).
    pub(crate) fn merge(&mut self, later: &Progress) {
        fn take<T: Clone>(mine: &mut Option<T>, theirs: &Option<T>) {
            if theirs.is_some() {
                mine.clone_from(theirs);
            }
        }
        take(&mut self.label, &later.label);
        take(&mut self.id_hex, &later.id_hex);
        take(&mut self.wrapping_key_sha256, &later.wrapping_key_sha256);
        take(&mut self.mode, &later.mode);
        take(&mut self.key_type, &later.key_type);
        take(&mut self.opc_request_id, &later.opc_request_id);
        take(&mut self.created_id, &later.created_id);
        take(&mut self.generated, &later.generated);
        if later.attempts > 0 {
            self.attempts = later.attempts;
        }
        self.replayed |= later.replayed;
        self.on_token |= later.on_token;
    }
}

// ---- one attempt in progress, written once, also when its caller leaves

/// The audit record of an export attempt in progress. If the call is dropped before it
/// answers (the caller cancelled, or its deadline passed on its side), the record is still
/// written, saying how far the export got: whether the HSM had started, and, for an import
/// OCI answered, what OCI answered (an import OCI accepted is recorded as allowed, with the
/// id it created).
pub(crate) struct Attempt {
    audit: Arc<Audit>,
    pub rec: Option<Record>,
    /// Set by the HSM worker when it starts.
    pub hsm_started: Arc<AtomicBool>,
    /// The call's deadline, once read.
    pub deadline: Option<Instant>,
    /// The destination's answer to the import, as the caller would have seen it.
    pub answered: Option<Result<(), (Code, String)>>,
}

impl Attempt {
    /// The record of `operation`, asked for under `request_id`.
    pub(crate) fn new(audit: Arc<Audit>, request_id: String, operation: Operation) -> Self {
        Attempt {
            audit,
            rec: Some(Record {
                request_id,
                operation,
                ..Record::default()
            }),
            hsm_started: Arc::new(AtomicBool::new(false)),
            deadline: None,
            answered: None,
        }
    }

    pub(crate) fn record(&mut self) -> &mut Record {
        self.rec
            .as_mut()
            .expect("the record is with the handler except while an import is being sent")
    }

    /// The record and its duty to be written, for the task that sends an import: written
    /// by whoever holds it last.
    pub(crate) fn hand_off(&mut self) -> Attempt {
        Attempt {
            audit: self.audit.clone(),
            rec: self.rec.take(),
            hsm_started: self.hsm_started.clone(),
            deadline: self.deadline,
            answered: None,
        }
    }

    pub(crate) fn take_back(&mut self, mut from: Attempt) {
        self.rec = from.rec.take();
        self.answered = from.answered.take();
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let Some(mut rec) = self.rec.take() else {
            return;
        };
        rec.time = now_rfc3339();
        rec.code = if self.deadline.is_some_and(|d| Instant::now() >= d) {
            "DEADLINE_EXCEEDED"
        } else {
            "CANCELLED"
        };
        let (outcome, reason) = match &self.answered {
            Some(Ok(())) => (
                Outcome::Allowed,
                format!(
                    "OCI accepted the import ({}), but the caller cancelled or its deadline passed before the answer reached it",
                    rec.export.created_id.as_deref().unwrap_or("id unknown")
                ),
            ),
            Some(Err((code, message))) => (
                Outcome::of(*code),
                format!("the caller cancelled or its deadline passed; OCI answered: {message}"),
            ),
            None if self.hsm_started.load(Ordering::SeqCst) => (
                Outcome::Refused,
                "the caller cancelled or its deadline passed while the HSM was working; the result was discarded".into(),
            ),
            None => (
                Outcome::Refused,
                "the caller cancelled or its deadline passed before an HSM session was free; the HSM did no work for this call".into(),
            ),
        };
        // something made at the destination is an export that happened
        rec.outcome = if rec.export.created_id.is_some() {
            Outcome::Allowed
        } else {
            outcome
        };
        rec.reason = Some(reason);
        if rec.caller.is_empty() {
            rec.caller = "unknown".into();
        }
        if let Err(e) = self.audit.write(&rec) {
            tracing::error!(request_id = %rec.request_id, "audit log write failed: {e}");
        }
    }
}

impl Attempt {
    /// Writes the record of an attempt that ends with `result` (a code and the message the
    /// caller gets). A record this attempt no longer holds (an import whose answer the
    /// deadline cut off) is written by the task that sent the import. A failed write of an
    /// export that succeeded is an error, with what the caller is to be told: nothing
    /// leaves without its record.
    pub(crate) fn finish(&mut self, result: Result<(), (Code, String)>) -> Result<(), String> {
        let Some(mut rec) = self.rec.take() else {
            return Ok(());
        };
        rec.time = now_rfc3339();
        if rec.caller.is_empty() {
            // The caller was never identified: say why (bounded text, service/auth.rs).
            rec.caller = match &result {
                Err((Code::Unauthenticated, message)) => format!("unauthenticated: {message}"),
                _ => "unknown".into(),
            };
        }
        let succeeded = result.is_ok();
        rec.conclude(result);
        match self.audit.write(&rec) {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::error!(request_id = %rec.request_id, "audit log write failed: {e}");
                if !succeeded {
                    return Ok(());
                }
                Err(if rec.operation == Operation::WrapKey {
                    format!("the audit log could not be written ({e}); the export was refused")
                } else {
                    // The material already went to the vault: say so, and how to learn more.
                    format!(
                        "the audit log could not be written ({e}); the answer is withheld, but OCI accepted the import ({}); with an idempotency_key, a retry with the same key returns it without importing again",
                        rec.export.created_id.as_deref().unwrap_or("id unknown")
                    )
                })
            }
        }
    }

    /// The record, no longer to be written by this attempt (the command line writes its
    /// own, to stderr or not).
    pub(crate) fn into_record(mut self) -> Option<Record> {
        self.rec.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_json_lines_in_a_0600_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let a = Audit::open(&path).unwrap();
        let r = Record {
            request_id: "r1".into(),
            operation: Operation::WrapKey,
            outcome: Outcome::Refused,
            code: "PERMISSION_DENIED",
            ..Record::default()
        };
        a.write(&r).unwrap();
        a.write(&r).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["code"], "PERMISSION_DENIED");
        assert!(v.get("wrapping_key_sha256").is_none());
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_planted_link_or_a_writable_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // A link planted where the log goes would make the daemon append to its target.
        let target = dir.path().join("victim");
        std::fs::write(&target, "untouched\n").unwrap();
        let link = dir.path().join("audit.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = Audit::open(&link).err().unwrap().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched\n");
        // A file others may write.
        let open = dir.path().join("open.jsonl");
        std::fs::write(&open, "").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = Audit::open(&open).err().unwrap().to_string();
        assert!(e.contains("0666") && e.contains("chmod 600"), "{e}");
        // A file another user owns (as root, the tests can make one).
        if rustix::process::geteuid().is_root() {
            let theirs = dir.path().join("theirs.jsonl");
            std::fs::write(&theirs, "").unwrap();
            std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
            let e = Audit::open(&theirs).err().unwrap().to_string();
            assert!(e.contains("owned by uid 65534"), "{e}");
        }
        // Bounded values: control bytes and long text never reach the log.
        assert_eq!(bounded("ocid1.key.oc1..x", 255), "ocid1.key.oc1..x");
        assert_eq!(bounded("a\u{1b}[2J", 255), INVALID);
        assert_eq!(bounded(&"x".repeat(300), 255), INVALID);
    }
}
