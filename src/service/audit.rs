//! The audit log: one JSON line per export attempt (WrapKey, ImportKeyVersion, ImportKey),
//! allowed or refused, written before the answer goes out. Never key material.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;
use tonic::{Code, Request, Status};

use super::request::request_id;
use super::status;

enum Sink {
    File(File),
    Stderr,
}

pub struct Audit {
    sink: Mutex<Sink>,
}

/// The export an audit record is about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum Operation {
    #[default]
    WrapKey,
    ImportKeyVersion,
    ImportKey,
}

/// How an export attempt ended: `allowed` (the material left: returned, or sent to OCI),
/// `refused` (by policy, the request, or the caller leaving), or `failed` (the daemon or a
/// service below it failed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allowed,
    #[default]
    Refused,
    Failed,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::WrapKey => "WrapKey",
            Operation::ImportKeyVersion => "ImportKeyVersion",
            Operation::ImportKey => "ImportKey",
        }
    }
}

impl Record {
    /// Sets the outcome, code and reason of an attempt that ended with `result`. An export
    /// that made something at the destination (`export.created_id`) is `allowed` whatever
    /// came after (e.g. a version that was not ENABLED within the deadline): the key left.
    pub fn conclude(&mut self, result: Result<(), (Code, String)>) {
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
                self.code = status::code_name(code);
                self.reason = Some(why);
            }
        }
    }
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }

    /// The outcome a gRPC code stands for.
    pub fn of(c: Code) -> Outcome {
        match c {
            Code::Ok => Outcome::Allowed,
            Code::Internal | Code::Unavailable | Code::Unknown => Outcome::Failed,
            _ => Outcome::Refused,
        }
    }
}

/// One export attempt.
#[derive(Debug, Default, Serialize)]
pub struct Record {
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
    pub export: crate::import::Progress,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<&'static str>,
    pub outcome: Outcome,
    /// The gRPC status code name.
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What an audit record says of a caller-supplied value that failed its check: the raw
/// bytes never reach the log.
pub const INVALID: &str = "invalid";

/// `value` if it is at most `max` bytes of printable text, else [`INVALID`]. For values
/// recorded before (or without) a stricter check.
pub fn bounded(value: &str, max: usize) -> String {
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
    pub fn open(path: &Path) -> Result<Audit, AuditOpenError> {
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
    pub fn write(&self, record: &Record) -> std::io::Result<()> {
        let r = self.write_line(record);
        let outcome = if r.is_ok() {
            record.outcome.as_str()
        } else {
            crate::metrics::get().audit_failed();
            "refused"
        };
        crate::metrics::get().export(
            record.operation.as_str(),
            outcome,
            record.export.key_type,
            record.export.mode,
            record
                .export
                .label
                .as_deref()
                .filter(|_| record.export.on_token),
        );
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

pub use crate::time::now_rfc3339;

// ---- the record of one export attempt in progress, and writing it with the call's result

/// The audit record of an export attempt in progress. If the call is dropped before it
/// answers (the caller cancelled, or its deadline passed on its side), the record is still
/// written, saying how far the export got: whether the HSM had started, and, for an import
/// OCI answered, what OCI answered (an import OCI accepted is recorded as allowed, with the
/// id it created).
pub(super) struct AuditOnDrop {
    audit: Arc<Audit>,
    pub(super) rec: Option<Record>,
    /// Set by the HSM worker when it starts.
    pub(super) hsm_started: Arc<AtomicBool>,
    /// The call's deadline, once read.
    pub(super) deadline: Option<Instant>,
    /// OCI's answer to the import, as the caller would have seen it.
    pub(super) answered: Option<Result<(), Status>>,
}

impl AuditOnDrop {
    /// The record of `operation` asked for by `req`.
    pub(super) fn new<T>(audit: Arc<Audit>, req: &Request<T>, operation: Operation) -> Self {
        AuditOnDrop {
            audit,
            rec: Some(Record {
                request_id: request_id(req),
                operation,
                ..Record::default()
            }),
            hsm_started: Arc::new(AtomicBool::new(false)),
            deadline: None,
            answered: None,
        }
    }

    pub(super) fn record(&mut self) -> &mut Record {
        self.rec
            .as_mut()
            .expect("the record is with the handler except while an import is being sent")
    }

    /// The record and its duty to be written, for the task that sends an import: written
    /// by whoever holds it last.
    pub(super) fn hand_off(&mut self) -> AuditOnDrop {
        AuditOnDrop {
            audit: self.audit.clone(),
            rec: self.rec.take(),
            hsm_started: self.hsm_started.clone(),
            deadline: self.deadline,
            answered: None,
        }
    }

    pub(super) fn take_back(&mut self, mut from: AuditOnDrop) {
        self.rec = from.rec.take();
        self.answered = from.answered.take();
    }
}

impl Drop for AuditOnDrop {
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
            Some(Err(s)) => (
                Outcome::of(s.code()),
                format!(
                    "the caller cancelled or its deadline passed; OCI answered: {}",
                    s.message()
                ),
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

impl super::Bridge {
    /// What every export does first: identify the caller (before any other header or field
    /// is read) and record it, then read the deadline, which the guard keeps.
    pub(super) fn begin<T>(
        &self,
        req: &Request<T>,
        guard: &mut AuditOnDrop,
    ) -> Result<(Arc<super::Settings>, super::auth::Caller, Option<Instant>), Status> {
        // The settings at the call's start serve it to the end, a reload notwithstanding.
        let settings = self.settings();
        let caller = self.caller(&settings, req, Some(guard.record()))?;
        guard.deadline = super::request::deadline(req);
        Ok((settings, caller, guard.deadline))
    }

    /// Writes the audit record for an export attempt that ends with `result`. A failed
    /// write turns success into a refusal: nothing leaves without its record. A record the
    /// handler no longer holds (an import whose answer the deadline cut off) is written by
    /// the task that sent the import, with OCI's answer.
    pub(super) fn audit<T>(
        &self,
        guard: &mut AuditOnDrop,
        result: Result<T, Status>,
    ) -> Result<T, Status> {
        let Some(mut rec) = guard.rec.take() else {
            return result;
        };
        rec.time = now_rfc3339();
        if rec.caller.is_empty() {
            // The caller was never identified: say why (bounded text, see auth.rs).
            rec.caller = match &result {
                Err(s) if s.code() == Code::Unauthenticated => {
                    format!("unauthenticated: {}", s.message())
                }
                _ => "unknown".into(),
            };
        }
        rec.conclude(match &result {
            Ok(_) => Ok(()),
            Err(s) => Err((s.code(), s.message().to_string())),
        });
        if let Err(e) = self.audit.write(&rec) {
            tracing::error!(request_id = %rec.request_id, "audit log write failed: {e}");
            if result.is_ok() {
                return Err(Status::unavailable(
                    if rec.operation == Operation::WrapKey {
                        format!("the audit log could not be written ({e}); the export was refused")
                    } else {
                        // The material already went to the vault: say so, and how to learn more.
                        format!(
                            "the audit log could not be written ({e}); the answer is withheld, but OCI accepted the import ({}); with an idempotency_key, a retry with the same key returns it without importing again",
                            rec.export.created_id.as_deref().unwrap_or("id unknown")
                        )
                    },
                ));
            }
        }
        result
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
