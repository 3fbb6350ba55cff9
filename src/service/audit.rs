//! The audit record of a gRPC call (src/audit.rs has the log and its records): identified
//! first, written once with the call's result, also when the caller leaves before the
//! answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tonic::{Request, Status};

use super::request::request_id;
use super::status::canonical;
use crate::audit::{Audit, Operation, Outcome, Record, now_rfc3339};

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
                Outcome::of(canonical(s.code())),
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
                Err(s) if s.code() == tonic::Code::Unauthenticated => {
                    format!("unauthenticated: {}", s.message())
                }
                _ => "unknown".into(),
            };
        }
        rec.conclude(match &result {
            Ok(_) => Ok(()),
            Err(s) => Err((canonical(s.code()), s.message().to_string())),
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
