//! The `KeySourceBridge` gRPC service: identifies the caller first, applies per-caller and
//! export policy, queues HSM work with a bound, and writes the audit record of every
//! export attempt before answering. `tonic::Status` is built here and nowhere below.
//!
//! The service never sees key material in clear: the HSM layer returns ciphertext. Nothing a
//! caller sends is recorded before it is checked (an audit record says "invalid" instead).

pub mod audit;
pub mod auth;
pub mod limit;
pub mod queue;
pub mod server;
pub mod status;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tonic::{Code, Request, Response, Status};

use crate::config::{Operation, PolicyConfig, ProtectionMode};
use crate::hsm::{Hsm, HsmError, KeyInfo, KeyRef};
use crate::import;
use crate::oci::kms::{Answer, Call, KmsError};
use crate::policy::WrappingKeyPolicy;
use crate::proto::{self, key_source_bridge_server::KeySourceBridge};
use crate::wrap::{self, Algorithm, WrappingKey};
use audit::{Audit, INVALID, Record, bounded, now_rfc3339};
use auth::{Authenticator, Caller};
use queue::{HsmQueue, Refused};

/// Everything a call needs, shared by all calls.
pub struct Bridge {
    hsm: Arc<Hsm>,
    auth: Authenticator,
    audit: Arc<Audit>,
    /// Admission to the HSM: bounded, fair, deadline-aware.
    queue: HsmQueue,
    /// Which caller-supplied wrapping keys `WrapKey` may use.
    wrapping_policy: WrappingKeyPolicy,
    /// Callers' wrapping keys, parsed once each.
    wrapping_keys: wrap::wrapping_key::ParsedKeys,
    oci: Arc<import::OciSide>,
    /// `policy.protection_modes`: what an import may create or add a version to.
    protection_modes: Vec<ProtectionMode>,
}

/// Default and largest ListSourceKeys page.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// The latest deadline a caller can ask for: `grpc-timeout` is read saturating and capped.
const MAX_DEADLINE: Duration = Duration::from_secs(24 * 3600);
/// Most bytes of a refused endpoint kept in an audit record.
const MAX_AUDITED_URL: usize = 255;

impl Bridge {
    pub fn new(
        hsm: Arc<Hsm>,
        auth: Authenticator,
        audit: Arc<Audit>,
        max_queue: usize,
        policy: &PolicyConfig,
        wrapping_policy: WrappingKeyPolicy,
        oci: import::OciSide,
    ) -> Bridge {
        Bridge {
            queue: HsmQueue::new(hsm.sessions(), max_queue),
            wrapping_keys: wrap::wrapping_key::ParsedKeys::new(hsm.min_wrapping_key_bits()),
            hsm,
            auth,
            audit,
            wrapping_policy,
            oci: Arc::new(oci),
            protection_modes: policy.protection_modes.clone(),
        }
    }

    /// Waits until every queued or running HSM call has finished (for shutdown).
    pub async fn drain(&self, within: Duration) -> bool {
        self.queue.drain(within).await
    }

    /// Runs `work` on a blocking thread with an HSM session, if the queue has room; gives
    /// up at the call's deadline. A call still waiting for a session at its deadline never
    /// reaches the HSM.
    async fn on_hsm<T: Send + 'static>(
        &self,
        deadline: Option<Instant>,
        work: impl FnOnce(&Hsm, Option<Instant>) -> Result<T, HsmError> + Send + 'static,
    ) -> Result<T, Status> {
        let admission = self.queue.admit(deadline).await.map_err(|r| match r {
            Refused::Full { capacity } => Status::resource_exhausted(format!(
                "the HSM queue is full ({capacity} calls in progress or waiting; server.max_queue); retry with backoff"
            )),
            Refused::Deadline => status::status(&HsmError::DeadlineExceeded),
            Refused::Closed => Status::unavailable("the daemon is shutting down"),
        })?;
        let hsm = self.hsm.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _admission = admission;
            work(&hsm, deadline)
        });
        let joined = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), task)
                .await
                .map_err(|_| status::status(&HsmError::DeadlineExceeded))?,
            None => task.await,
        };
        joined
            .map_err(|e| Status::internal(format!("HSM worker failed: {e}")))?
            .map_err(|e| status::status(&e))
    }

    /// The caller of `req`, recorded in `rec`: the first thing every call does, before any
    /// other header or field is read.
    fn caller<T>(&self, req: &Request<T>, rec: Option<&mut Record>) -> Result<Caller, Status> {
        let caller = self.auth.identify(req).map_err(|why| {
            Status::unauthenticated(format!(
                "{why}; ask the operator to add you to server.clients"
            ))
        })?;
        if let Some(rec) = rec {
            rec.caller = caller.display.clone();
        }
        Ok(caller)
    }
}

/// The audit record of an export attempt in progress. If the call is dropped before it
/// answers (the caller cancelled, or its deadline passed on its side), the record is still
/// written, saying how far the export got: whether the HSM had started, and, for an import
/// OCI answered, what OCI answered (an import OCI accepted is recorded as allowed, with the
/// id it created).
struct AuditOnDrop {
    audit: Arc<Audit>,
    rec: Option<Record>,
    /// Set by the HSM worker when it starts.
    hsm_started: Arc<AtomicBool>,
    /// The call's deadline, once read.
    deadline: Option<Instant>,
    /// OCI's answer to the import, as the caller would have seen it.
    answered: Option<Result<(), Status>>,
}

impl AuditOnDrop {
    /// The record of `operation` asked for by `req`.
    fn new<T>(audit: Arc<Audit>, req: &Request<T>, operation: &'static str) -> Self {
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

    fn record(&mut self) -> &mut Record {
        self.rec
            .as_mut()
            .expect("the record is with the handler except while an import is being sent")
    }

    /// The record and its duty to be written, for the task that sends an import: written
    /// by whoever holds it last.
    fn hand_off(&mut self) -> AuditOnDrop {
        AuditOnDrop {
            audit: self.audit.clone(),
            rec: self.rec.take(),
            hsm_started: self.hsm_started.clone(),
            deadline: self.deadline,
            answered: None,
        }
    }

    fn take_back(&mut self, mut from: AuditOnDrop) {
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
                "allowed",
                format!(
                    "OCI accepted the import ({}), but the caller cancelled or its deadline passed before the answer reached it",
                    rec.oci_created_id.as_deref().unwrap_or("id unknown")
                ),
            ),
            Some(Err(s)) => (
                outcome_of(s.code()),
                format!(
                    "the caller cancelled or its deadline passed; OCI answered: {}",
                    s.message()
                ),
            ),
            None if self.hsm_started.load(Ordering::SeqCst) => (
                "refused",
                "the caller cancelled or its deadline passed while the HSM was working; the result was discarded".into(),
            ),
            None => (
                "refused",
                "the caller cancelled or its deadline passed before an HSM session was free; the HSM did no work for this call".into(),
            ),
        };
        rec.outcome = outcome;
        rec.reason = Some(reason);
        if rec.caller.is_empty() {
            rec.caller = "unknown".into();
        }
        if let Err(e) = self.audit.write(&rec) {
            tracing::error!(request_id = %rec.request_id, "audit log write failed: {e}");
        }
    }
}

/// "failed" for the codes that mean the daemon or a service below it failed, else "refused".
fn outcome_of(c: Code) -> &'static str {
    match c {
        Code::Internal | Code::Unavailable | Code::Unknown => "failed",
        _ => "refused",
    }
}

/// The call's deadline from `grpc-timeout`, moved earlier by a quarter of the timeout (at
/// most 100 ms): the client's and the transport's own timers answer CANCELLED at the
/// deadline, so this service must answer DEADLINE_EXCEEDED, and have it arrive, first.
/// Read saturating: digits only, any number of them capped at [`MAX_DEADLINE`], so no
/// header can overflow the clock.
fn deadline<T>(req: &Request<T>) -> Option<Instant> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 32 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().unwrap_or(u64::MAX);
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    }
    .min(MAX_DEADLINE);
    let margin = (timeout / 4).min(Duration::from_millis(100));
    Instant::now().checked_add(timeout - margin)
}

/// `x-request-id` if it is short printable text, else a fresh random id.
fn request_id<T>(req: &Request<T>) -> String {
    if let Some(v) = req
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        && !v.is_empty()
        && v.len() <= 64
        && v.bytes().all(|b| b.is_ascii_graphic())
    {
        return v.to_string();
    }
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    wrap::hex(&b)
}

fn key_ref(k: Option<&proto::KeyRef>) -> Result<KeyRef, Status> {
    match k.and_then(|k| k.key.as_ref()) {
        Some(proto::key_ref::Key::Label(l)) => KeyRef::label(l)
            .map_err(|why| Status::invalid_argument(format!("source_key.label: {why}"))),
        Some(proto::key_ref::Key::IdHex(h)) => KeyRef::id_hex(h)
            .map_err(|why| Status::invalid_argument(format!("source_key.id_hex: {why}"))),
        None => Err(Status::invalid_argument(
            "source_key: give a label or an id_hex",
        )),
    }
}

fn algorithm(v: i32) -> Result<Algorithm, Status> {
    match proto::WrappingAlgorithm::try_from(v) {
        Ok(proto::WrappingAlgorithm::Unspecified | proto::WrappingAlgorithm::RsaOaepAesSha256) => {
            Ok(Algorithm::RsaOaepAesSha256)
        }
        Ok(proto::WrappingAlgorithm::RsaOaepSha256) => Ok(Algorithm::RsaOaepSha256),
        Err(_) => Err(Status::invalid_argument(format!(
            "algorithm {v} is not a WrappingAlgorithm"
        ))),
    }
}

fn proto_algorithm(a: Algorithm) -> proto::WrappingAlgorithm {
    match a {
        Algorithm::RsaOaepAesSha256 => proto::WrappingAlgorithm::RsaOaepAesSha256,
        Algorithm::RsaOaepSha256 => proto::WrappingAlgorithm::RsaOaepSha256,
    }
}

fn shape(s: wrap::KeyShape) -> proto::KeyShape {
    proto::KeyShape {
        algorithm: s.algorithm.as_str().into(),
        length: s.length as u32,
    }
}

fn source_key(hsm: &Hsm, k: &KeyInfo) -> proto::SourceKey {
    let check = hsm.export_check(k);
    proto::SourceKey {
        label: k.label.clone(),
        id_hex: wrap::hex(&k.id),
        shape: k.shape().map(shape),
        key_type: k.key_type_name(),
        extractable: k.extractable,
        sensitive: k.sensitive,
        exportable: check.is_ok(),
        not_exportable_reason: check.err().map(|e| e.to_string()).unwrap_or_default(),
    }
}

fn denied(op: &str, caller: &Caller) -> Status {
    Status::permission_denied(format!(
        "{} may not call {op}; the operator grants operations in server.clients",
        caller.display
    ))
}

fn may_not_touch(caller: &Caller, label: &str) -> String {
    format!(
        "{} may not touch key {label:?} (its key patterns: {})",
        caller.display,
        caller.keys.join(", ")
    )
}

/// The key `caller` found, if its patterns allow it.
fn permit(caller: &Caller, info: &KeyInfo) -> Result<(), String> {
    if caller.may_touch(&info.label) {
        Ok(())
    } else {
        Err(may_not_touch(caller, &info.label))
    }
}

/// A key named by id that is missing, or that the caller may not touch, gets one answer
/// that names no key: probing ids learns neither labels nor which ids exist.
fn hide_by_id(key: &KeyRef, e: HsmError) -> HsmError {
    match (key, &e) {
        (KeyRef::Id(id), HsmError::KeyNotFound(_) | HsmError::Denied(_)) => {
            HsmError::NoKeyYouMayUse(format!("CKA_ID {}", wrap::hex(id)))
        }
        _ => e,
    }
}

fn proto_version(v: &crate::oci::kms::KeyVersion) -> proto::KeyVersion {
    proto::KeyVersion {
        version_id: v.id.clone(),
        key_id: v.key_id.clone(),
        vault_id: v.vault_id.clone(),
        compartment_id: v.compartment_id.clone(),
        time_created: v.time_created.clone(),
        lifecycle_state: v.lifecycle_state.clone(),
        origin: v.origin.clone(),
        is_primary: v.is_primary,
    }
}

fn proto_key(k: &crate::oci::kms::Key) -> proto::Key {
    proto::Key {
        key_id: k.id.clone(),
        compartment_id: k.compartment_id.clone(),
        vault_id: k.vault_id.clone(),
        display_name: k.display_name.clone(),
        current_key_version: k.current_key_version.clone(),
        shape: Some(proto::KeyShape {
            algorithm: k.key_shape.algorithm.clone(),
            length: k.key_shape.length,
        }),
        protection_mode: k.protection_mode.clone(),
        lifecycle_state: k.lifecycle_state.clone(),
        time_created: k.time_created.clone(),
    }
}

/// Page token: hex of the last key's label and id, so paging is stable when keys come and go.
fn page_token(k: &KeyInfo) -> String {
    format!("{}.{}", wrap::hex(k.label.as_bytes()), wrap::hex(&k.id))
}

fn parse_page_token(t: &str) -> Result<Option<(String, Vec<u8>)>, Status> {
    if t.is_empty() {
        return Ok(None);
    }
    let bad = || Status::invalid_argument("page_token is not one this service returned");
    let (l, i) = t.split_once('.').ok_or_else(bad)?;
    let label = String::from_utf8(wrap::unhex(l).ok_or_else(bad)?).map_err(|_| bad())?;
    Ok(Some((label, wrap::unhex(i).ok_or_else(bad)?)))
}

impl Bridge {
    /// Writes the audit record for an export attempt that ends with `result`. A failed
    /// write turns success into a refusal: nothing leaves without its record. A record the
    /// handler no longer holds (an import whose answer the deadline cut off) is written by
    /// the task that sent the import, with OCI's answer.
    fn audit<T>(&self, guard: &mut AuditOnDrop, result: Result<T, Status>) -> Result<T, Status> {
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
        match &result {
            Ok(_) => {
                rec.outcome = "allowed";
                rec.code = "OK";
            }
            Err(s) => {
                rec.outcome = outcome_of(s.code());
                rec.code = status::code_name(s.code());
                rec.reason = Some(s.message().to_string());
            }
        }
        if let Err(e) = self.audit.write(&rec) {
            tracing::error!(request_id = %rec.request_id, "audit log write failed: {e}");
            if result.is_ok() {
                return Err(Status::unavailable(if rec.operation == "WrapKey" {
                    format!("the audit log could not be written ({e}); the export was refused")
                } else {
                    // The material already went to the vault: say so, and how to learn more.
                    format!(
                        "the audit log could not be written ({e}); the answer is withheld, but OCI accepted the import ({}); with an idempotency_key, a retry with the same key returns it without importing again",
                        rec.oci_created_id.as_deref().unwrap_or("id unknown")
                    )
                }));
            }
        }
        result
    }

    async fn wrap_key_inner(
        &self,
        req: Request<proto::WrapKeyRequest>,
        guard: &mut AuditOnDrop,
    ) -> Result<proto::WrapKeyResponse, Status> {
        let caller = self.caller(&req, Some(guard.record()))?;
        let deadline = deadline(&req);
        guard.deadline = deadline;
        let hsm_started = guard.hsm_started.clone();
        let rec = guard.record();
        let body = req.get_ref();
        let export = self.admit_export(
            caller,
            rec,
            (Operation::Wrap, "WrapKey"),
            body.source_key.as_ref(),
            body.algorithm,
        )?;
        let wk = self
            .wrapping_keys
            .get(body.wrapping_public_key_pem.as_bytes())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let fp = wk.fingerprint();
        rec.wrapping_key_sha256 = Some(fp.clone());
        self.wrapping_policy
            .allows(&fp)
            .map_err(Status::permission_denied)?;
        let wrapped = self.wrap_for(export, wk, deadline, hsm_started).await?;
        let rec = guard.record();
        rec.source_key_label = Some(wrapped.key.label.clone());
        rec.source_key_id_hex = Some(wrap::hex(&wrapped.key.id));
        rec.mode = Some(wrapped.mode.as_str());
        Ok(proto::WrapKeyResponse {
            wrapped_key_material: wrapped.material,
            shape: Some(shape(wrapped.shape)),
            wrapping_key_sha256: fp,
            mode: wrapped.mode.as_str().into(),
            algorithm: proto_algorithm(wrapped.algorithm) as i32,
        })
    }

    /// The checks every export starts with, after the caller is known, each recorded as it
    /// passes: its `op`eration, the source key (against its label patterns), the algorithm.
    fn admit_export(
        &self,
        caller: Caller,
        rec: &mut Record,
        (op, name): (Operation, &'static str),
        key: Option<&proto::KeyRef>,
        alg: i32,
    ) -> Result<Export, Status> {
        if !caller.may(op) {
            return Err(denied(name, &caller));
        }
        let key = key_ref(key)?;
        match &key {
            KeyRef::Label(l) => rec.source_key_label = Some(l.clone()),
            KeyRef::Id(id) => rec.source_key_id_hex = Some(wrap::hex(id)),
        }
        if let KeyRef::Label(l) = &key
            && !caller.may_touch(l)
        {
            return Err(Status::permission_denied(may_not_touch(&caller, l)));
        }
        let alg = algorithm(alg)?;
        rec.algorithm = Some(alg.as_str());
        Ok(Export { caller, key, alg })
    }

    /// Wraps the export's key for `wk` on an HSM session; a key named by id must still match
    /// the caller's label patterns.
    async fn wrap_for(
        &self,
        export: Export,
        wk: Arc<WrappingKey>,
        deadline: Option<Instant>,
        hsm_started: Arc<AtomicBool>,
    ) -> Result<crate::hsm::Wrapped, Status> {
        let Export { caller, key, alg } = export;
        self.on_hsm(deadline, move |hsm, d| {
            hsm_started.store(true, Ordering::SeqCst);
            hsm.wrap_if(&key, &wk, alg, d, |info| permit(&caller, info))
                .map_err(|e| hide_by_id(&key, e))
        })
        .await
    }

    /// For bytes recorded for an idempotency key: the key checks of [`Self::wrap_for`]
    /// without the wrap.
    async fn recheck(&self, export: Export, deadline: Option<Instant>) -> Result<(), Status> {
        let Export { caller, key, .. } = export;
        self.on_hsm(deadline, move |hsm, d| {
            hsm.check_export(&key, d, |info| permit(&caller, info))
                .map(|_| ())
                .map_err(|e| hide_by_id(&key, e))
        })
        .await
    }

    /// The checks every import starts with: those of every export, the request's own
    /// `fields` (checked and recorded by it; it returns the idempotency key), then the OCI
    /// connection and endpoint, which must be on the allow-list and on the caller's own.
    /// Nothing has touched the HSM or the network yet.
    fn import_preamble<'r>(
        &self,
        caller: Caller,
        rec: &mut Record,
        ask: ImportAsk<'_>,
        fields: impl FnOnce(&Caller, &mut Record) -> Result<Option<&'r str>, Status>,
    ) -> Result<(ImportStart, Option<&'r str>), Status> {
        let ImportAsk {
            op,
            key,
            alg,
            oci,
            deadline,
        } = ask;
        let export = self.admit_export(caller, rec, (Operation::Import, op), key, alg)?;
        // The request's own fields, before any configuration is consulted.
        let idem = fields(&export.caller, rec)?;
        let target = oci.ok_or_else(|| {
            Status::invalid_argument(
                "oci.management_endpoint is required (the vault's management endpoint)",
            )
        })?;
        let endpoint = self
            .oci
            .endpoint(&target.management_endpoint)
            .inspect_err(|_| {
                rec.oci_endpoint = Some(bounded(&target.management_endpoint, MAX_AUDITED_URL));
            })?;
        rec.oci_endpoint = Some(endpoint.base.clone());
        let (connection, identity) = self.oci.identity(&target.connection)?;
        rec.oci_connection = Some(connection);
        if !export.caller.may_send_to(&endpoint.base) {
            return Err(Status::permission_denied(format!(
                "{} may not import into {} (its oci_endpoints in server.clients); nothing was sent",
                export.caller.display, endpoint.base
            )));
        }
        Ok((
            ImportStart {
                export,
                dest: Destination {
                    identity,
                    endpoint,
                    request_id: rec.request_id.clone(),
                    deadline,
                },
            },
            idem,
        ))
    }

    /// ImportKeyVersion adds to a key that exists: OCI's own record of it (GetKey) must show
    /// a protection mode in `policy.protection_modes` and a compartment the caller may use,
    /// before anything is wrapped or sent.
    async fn check_existing_key(
        &self,
        rec: &mut Record,
        caller: &Caller,
        call: &Call<'_>,
        key_id: &str,
    ) -> Result<(), Status> {
        let mut progress = import::Progress::default();
        let key = import::existing_key(
            &self.oci,
            call,
            key_id,
            &self.protection_modes,
            &mut progress,
        )
        .await
        .inspect_err(|_| note_progress(rec, &progress))?;
        rec.compartment_id = Some(bounded(&key.compartment_id, 255));
        rec.protection_mode = Some(bounded(&key.protection_mode, 32));
        if !caller.may_use_compartment(&key.compartment_id) {
            return Err(Status::permission_denied(format!(
                "{} may not import into compartment {} (its oci_compartments in server.clients); nothing was wrapped or sent",
                caller.display,
                bounded(&key.compartment_id, 255)
            )));
        }
        Ok(())
    }

    /// The bytes an import sends (see [`import::prepare`]): recorded ones for an
    /// idempotency key used before (after the key checks), or the vault's wrapping key
    /// fetched, the HSM wrap for `start` on the queue, and `build`'s body around it. What
    /// happened is noted in the audit record, also on failure; the progress is returned for
    /// OCI's answer.
    async fn prepare_import(
        &self,
        guard: &mut AuditOnDrop,
        start: &ImportStart,
        call: &Call<'_>,
        idempotency_key: Option<&str>,
        described: &import::Described,
        build: impl FnOnce(&crate::hsm::Wrapped) -> Result<Vec<u8>, Status>,
    ) -> Result<(import::Prepared, import::Progress), Status> {
        let (export, hsm_started) = (start.export.clone(), guard.hsm_started.clone());
        let again = start.export.clone();
        let steps = import::Steps {
            recheck: move || -> CheckFuture<'_> { Box::pin(self.recheck(again, call.deadline)) },
            wrap: move |wk| -> WrapFuture<'_> {
                Box::pin(self.wrap_for(export, wk, call.deadline, hsm_started))
            },
            build,
        };
        let mut progress = import::Progress::default();
        let prepared = import::prepare(
            &self.oci,
            call,
            idempotency_key,
            described,
            &mut progress,
            steps,
        )
        .await;
        note_progress(guard.record(), &progress);
        Ok((prepared?, progress))
    }

    /// Sends a prepared import from a task of its own, and waits for OCI's answer until the
    /// caller's deadline. The task holds the audit record (and the idempotency claim) until
    /// OCI has answered: a caller that cancels, or whose deadline passes first, still gets a
    /// record of what OCI did, with the id it created.
    async fn send_import<T, F, Fut>(
        &self,
        guard: &mut AuditOnDrop,
        prepared: import::Prepared,
        mut progress: import::Progress,
        send: F,
        created: fn(&T) -> &String,
    ) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(Arc<import::OciSide>, Arc<zeroize::Zeroizing<Vec<u8>>>, String) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = Result<Answer<T>, KmsError>> + Send + 'static,
    {
        let import::Prepared { token, body, claim } = prepared;
        let mut carried = guard.hand_off();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let oci = self.oci.clone();
        tokio::spawn(async move {
            let answer = send(oci, body, token).await;
            // Released once OCI has answered: a retry now re-sends these bytes.
            drop(claim);
            let result = answered(carried.record(), &mut progress, answer, created);
            carried.answered = Some(result.as_ref().map(|_| ()).map_err(Clone::clone));
            // With the caller gone, `carried` is dropped here and writes the record.
            let _ = tx.send((result, carried));
        });
        let got = match guard.deadline {
            None => rx
                .await
                .map_err(|_| Status::internal("the import task failed"))?,
            Some(d) => match tokio::time::timeout_at(d.into(), &mut rx).await {
                Ok(r) => r.map_err(|_| Status::internal("the import task failed"))?,
                Err(_) => {
                    rx.close();
                    rx.try_recv().map_err(|_| {
                        Status::deadline_exceeded(
                            "the deadline passed while OCI was answering the import: its answer goes to the audit log, and a retry with the same idempotency_key returns it without importing again",
                        )
                    })?
                }
            },
        };
        let (result, carried) = got;
        guard.take_back(carried);
        result
    }

    async fn import_key_version_inner(
        &self,
        req: Request<proto::ImportKeyVersionRequest>,
        guard: &mut AuditOnDrop,
    ) -> Result<proto::ImportKeyVersionResponse, Status> {
        let caller = self.caller(&req, Some(guard.record()))?;
        let deadline = deadline(&req);
        guard.deadline = deadline;
        let rec = guard.record();
        let body = req.get_ref();
        let (start, idem) = self.import_preamble(
            caller,
            rec,
            ImportAsk {
                op: "ImportKeyVersion",
                key: body.source_key.as_ref(),
                alg: body.algorithm,
                oci: body.oci.as_ref(),
                deadline,
            },
            |_, rec| {
                import::check_key_ocid(&body.oci_key_id)
                    .inspect_err(|_| rec.oci_key_id = Some(INVALID.into()))?;
                rec.oci_key_id = Some(body.oci_key_id.clone());
                Ok(import::check_idempotency_key(&body.idempotency_key)?)
            },
        )?;
        let call = start.dest.call();
        self.check_existing_key(
            guard.record(),
            &start.export.caller,
            &call,
            &body.oci_key_id,
        )
        .await?;
        let described = import::describe(&import::Ask {
            caller: &start.export.caller.name,
            op: "ImportKeyVersion",
            target: &body.oci_key_id,
            key: &start.export.key,
            alg: start.export.alg,
            endpoint: &start.dest.endpoint,
            details: "",
        });
        let (prepared, progress) = self
            .prepare_import(guard, &start, &call, idem, &described, |w| {
                serde_json::to_vec(&crate::oci::kms::ImportKeyVersionDetails {
                    wrapped_import_key: import::wrapped_import_key(w),
                })
                .map_err(|e| Status::internal(e.to_string()))
            })
            .await?;
        let (dest, key_id) = (start.dest.clone(), body.oci_key_id.clone());
        let mut version = self
            .send_import(
                guard,
                prepared,
                progress,
                move |oci, body, token| async move {
                    let call = dest.call();
                    oci.kms
                        .import_key_version(&call, &key_id, &body, &token)
                        .await
                },
                |v: &crate::oci::kms::KeyVersion| &v.id,
            )
            .await?;
        if body.wait_for_enabled {
            let kms = &self.oci.kms;
            version = import::wait(
                &self.oci,
                || kms.get_key_version(&call, &version.key_id, &version.id),
                |v: &crate::oci::kms::KeyVersion| v.lifecycle_state.as_str(),
                deadline,
                &format!("key version {}", version.id),
            )
            .await?;
        }
        Ok(proto::ImportKeyVersionResponse {
            key_version: Some(proto_version(&version)),
        })
    }

    async fn import_key_inner(
        &self,
        req: Request<proto::ImportKeyRequest>,
        guard: &mut AuditOnDrop,
    ) -> Result<proto::ImportKeyResponse, Status> {
        let caller = self.caller(&req, Some(guard.record()))?;
        let deadline = deadline(&req);
        guard.deadline = deadline;
        let rec = guard.record();
        let body = req.get_ref();
        let (start, idem) = self.import_preamble(
            caller,
            rec,
            ImportAsk {
                op: "ImportKey",
                key: body.source_key.as_ref(),
                alg: body.algorithm,
                oci: body.oci.as_ref(),
                deadline,
            },
            |caller, rec| self.import_key_fields(caller, rec, body),
        )?;
        let protection_mode = match body.protection_mode.as_str() {
            "" => None,
            m => Some(m.to_string()),
        };
        let freeform: std::collections::BTreeMap<_, _> = body.freeform_tags.iter().collect();
        let defined: std::collections::BTreeMap<_, std::collections::BTreeMap<_, _>> = body
            .defined_tags
            .iter()
            .map(|(ns, t)| (ns, t.tags.iter().collect()))
            .collect();
        let described = import::describe(&import::Ask {
            caller: &start.export.caller.name,
            op: "ImportKey",
            target: &body.compartment_id,
            key: &start.export.key,
            alg: start.export.alg,
            endpoint: &start.dest.endpoint,
            details: &format!(
                "{:?} {:?} {freeform:?} {defined:?}",
                body.display_name, protection_mode
            ),
        });
        let call = start.dest.call();
        let (prepared, progress) = self
            .prepare_import(guard, &start, &call, idem, &described, |w| {
                serde_json::to_vec(&crate::oci::kms::ImportKeyDetails {
                    compartment_id: body.compartment_id.clone(),
                    display_name: body.display_name.clone(),
                    key_shape: crate::oci::kms::KeyShapeJson {
                        algorithm: w.shape.algorithm.as_str().into(),
                        length: w.shape.length as u32,
                    },
                    wrapped_import_key: import::wrapped_import_key(w),
                    protection_mode: protection_mode.clone(),
                    freeform_tags: body.freeform_tags.clone(),
                    defined_tags: body
                        .defined_tags
                        .iter()
                        .map(|(ns, t)| (ns.clone(), t.tags.clone()))
                        .collect(),
                })
                .map_err(|e| Status::internal(e.to_string()))
            })
            .await?;
        let dest = start.dest.clone();
        let key = self
            .send_import(
                guard,
                prepared,
                progress,
                move |oci, body, token| async move {
                    let call = dest.call();
                    oci.kms.import_key(&call, &body, &token).await
                },
                |k: &crate::oci::kms::Key| &k.id,
            )
            .await;
        if let Some(rec) = guard.rec.as_mut() {
            rec.oci_key_id = rec.oci_created_id.clone();
        }
        let mut key = key?;
        if body.wait_for_enabled {
            let kms = &self.oci.kms;
            key = import::wait(
                &self.oci,
                || kms.get_key(&call, &key.id),
                |k: &crate::oci::kms::Key| k.lifecycle_state.as_str(),
                deadline,
                &format!("key {}", key.id),
            )
            .await?;
        }
        Ok(proto::ImportKeyResponse {
            key: Some(proto_key(&key)),
        })
    }

    /// ImportKey's own fields, each recorded once checked: compartment OCID (one the caller
    /// may use), display name, protection mode (one `policy.protection_modes` allows), tags
    /// (OCI's limits), idempotency key (returned).
    fn import_key_fields<'r>(
        &self,
        caller: &Caller,
        rec: &mut Record,
        body: &'r proto::ImportKeyRequest,
    ) -> Result<Option<&'r str>, Status> {
        if !import::is_ocid(&body.compartment_id, "ocid1.") {
            rec.compartment_id = Some(INVALID.into());
            return Err(Status::invalid_argument(
                "compartment_id must be a compartment or tenancy OCID (ocid1.…)",
            ));
        }
        rec.compartment_id = Some(body.compartment_id.clone());
        if body.display_name.is_empty()
            || body.display_name.len() > 255
            || body.display_name.chars().any(char::is_control)
        {
            rec.display_name = Some(INVALID.into());
            return Err(Status::invalid_argument(
                "display_name must be 1 to 255 bytes without control characters",
            ));
        }
        rec.display_name = Some(body.display_name.clone());
        if ProtectionMode::parse(&body.protection_mode).is_none() {
            rec.protection_mode = Some(INVALID.into());
            return Err(Status::invalid_argument(format!(
                "protection_mode {:?}: HSM or SOFTWARE",
                body.protection_mode.chars().take(32).collect::<String>()
            )));
        }
        rec.protection_mode = Some(match body.protection_mode.as_str() {
            "" => "HSM (default)".into(),
            m => m.into(),
        });
        import::check_tags(
            &body.freeform_tags,
            body.defined_tags.iter().map(|(ns, t)| (ns, &t.tags)),
        )?;
        let idem = import::check_idempotency_key(&body.idempotency_key)?;
        import::protection_allowed(
            &self.protection_modes,
            &body.protection_mode,
            "the key asked for",
        )?;
        if !caller.may_use_compartment(&body.compartment_id) {
            return Err(Status::permission_denied(format!(
                "{} may not import into compartment {} (its oci_compartments in server.clients); nothing was sent",
                caller.display, body.compartment_id
            )));
        }
        Ok(idem)
    }
}

type WrapFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<crate::hsm::Wrapped, Status>> + Send + 'a>,
>;
type CheckFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Status>> + Send + 'a>>;

/// What an import request asks for, as the caller sent it.
struct ImportAsk<'a> {
    op: &'static str,
    key: Option<&'a proto::KeyRef>,
    alg: i32,
    oci: Option<&'a proto::OciTarget>,
    deadline: Option<Instant>,
}

/// An admitted export: who asked, for which key, with which algorithm.
#[derive(Clone)]
struct Export {
    caller: Caller,
    key: KeyRef,
    alg: Algorithm,
}

/// Where an import goes and as whom: owned, so that the task sending it can outlive the call.
#[derive(Clone)]
struct Destination {
    identity: Arc<crate::oci::Identity>,
    endpoint: crate::oci::endpoint::Endpoint,
    request_id: String,
    deadline: Option<Instant>,
}

impl Destination {
    /// The OCI calls' context: this identity and endpoint, the caller's request id (if OCI
    /// accepts it as `opc-request-id`) and deadline.
    fn call(&self) -> Call<'_> {
        Call {
            identity: &self.identity,
            endpoint: &self.endpoint,
            request_id: import::opc_request_id(&self.request_id),
            deadline: self.deadline,
        }
    }
}

/// What an import has established before it touches the HSM or the network.
struct ImportStart {
    export: Export,
    dest: Destination,
}

/// Records OCI's answer to an import (request id, attempts, what it created) and returns
/// its value or the failure as a status.
fn answered<T>(
    rec: &mut Record,
    progress: &mut import::Progress,
    answer: Result<Answer<T>, KmsError>,
    created: impl Fn(&T) -> &String,
) -> Result<T, Status> {
    import::note(progress, &answer);
    let result = match answer {
        Ok(a) => {
            progress.created_id = Some(created(&a.value).clone());
            Ok(a.value)
        }
        Err(e) => Err(status::kms(&e)),
    };
    note_progress(rec, progress);
    result
}

/// What `p` tells the audit record `rec` (the daemon's and the CLI's).
pub fn note_progress(rec: &mut Record, p: &import::Progress) {
    if p.wrapping_key_sha256.is_some() {
        rec.wrapping_key_sha256 = p.wrapping_key_sha256.clone();
    }
    if p.mode.is_some() {
        rec.mode = p.mode;
    }
    if p.label.is_some() {
        rec.source_key_label = p.label.clone();
        rec.source_key_id_hex = p.id_hex.clone();
    }
    rec.opc_request_id = p.opc_request_id.clone();
    rec.oci_attempts = (p.attempts > 0).then_some(p.attempts);
    rec.oci_created_id = p.created_id.clone();
    rec.replayed = p.replayed;
}

#[tonic::async_trait]
impl KeySourceBridge for Bridge {
    async fn list_source_keys(
        &self,
        req: Request<proto::ListSourceKeysRequest>,
    ) -> Result<Response<proto::ListSourceKeysResponse>, Status> {
        let caller = self.caller(&req, None)?;
        let deadline = deadline(&req);
        if !caller.may(Operation::List) {
            return Err(denied("ListSourceKeys", &caller));
        }
        let body = req.into_inner();
        let page = match body.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let after = parse_page_token(&body.page_token)?;
        let keys = self.on_hsm(deadline, |hsm, d| hsm.list_keys(d)).await?;
        let mut visible = keys
            .iter()
            .filter(|k| caller.may_touch(&k.label))
            .filter(|k| !body.exportable_only || self.hsm.export_check(k).is_ok())
            .filter(|k| {
                after
                    .as_ref()
                    .is_none_or(|(l, i)| (&k.label, &k.id) > (l, i))
            })
            .peekable();
        let out: Vec<&KeyInfo> = visible.by_ref().take(page).collect();
        let next_page_token = match (visible.peek(), out.last()) {
            (Some(_), Some(last)) => page_token(last),
            _ => String::new(),
        };
        Ok(Response::new(proto::ListSourceKeysResponse {
            keys: out.into_iter().map(|k| source_key(&self.hsm, k)).collect(),
            next_page_token,
        }))
    }

    async fn get_source_key(
        &self,
        req: Request<proto::GetSourceKeyRequest>,
    ) -> Result<Response<proto::SourceKey>, Status> {
        let caller = self.caller(&req, None)?;
        let deadline = deadline(&req);
        if !caller.may(Operation::List) {
            return Err(denied("GetSourceKey", &caller));
        }
        let key = key_ref(req.get_ref().source_key.as_ref())?;
        if let KeyRef::Label(l) = &key
            && !caller.may_touch(l)
        {
            return Err(Status::permission_denied(may_not_touch(&caller, l)));
        }
        let info = self
            .on_hsm(deadline, move |hsm, d| {
                hsm.find_key(&key, d)
                    .and_then(|info| {
                        permit(&caller, &info).map_err(HsmError::Denied)?;
                        Ok(info)
                    })
                    .map_err(|e| hide_by_id(&key, e))
            })
            .await?;
        Ok(Response::new(source_key(&self.hsm, &info)))
    }

    async fn wrap_key(
        &self,
        req: Request<proto::WrapKeyRequest>,
    ) -> Result<Response<proto::WrapKeyResponse>, Status> {
        let mut guard = AuditOnDrop::new(self.audit.clone(), &req, "WrapKey");
        let result = self.wrap_key_inner(req, &mut guard).await;
        self.audit(&mut guard, result).map(Response::new)
    }

    async fn import_key_version(
        &self,
        req: Request<proto::ImportKeyVersionRequest>,
    ) -> Result<Response<proto::ImportKeyVersionResponse>, Status> {
        let mut guard = AuditOnDrop::new(self.audit.clone(), &req, "ImportKeyVersion");
        let result = self.import_key_version_inner(req, &mut guard).await;
        self.audit(&mut guard, result).map(Response::new)
    }

    async fn import_key(
        &self,
        req: Request<proto::ImportKeyRequest>,
    ) -> Result<Response<proto::ImportKeyResponse>, Status> {
        let mut guard = AuditOnDrop::new(self.audit.clone(), &req, "ImportKey");
        let result = self.import_key_inner(req, &mut guard).await;
        self.audit(&mut guard, result).map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_parsing() {
        // 250 ms, answered a quarter early: 187.5 ms left.
        let mut r = Request::new(());
        assert!(deadline(&r).is_none());
        r.metadata_mut()
            .insert("grpc-timeout", "250m".parse().unwrap());
        let d = deadline(&r).unwrap();
        let left = d - Instant::now();
        assert!(
            left <= Duration::from_millis(188) && left > Duration::from_millis(150),
            "{left:?}"
        );
        r.metadata_mut()
            .insert("grpc-timeout", "bogus".parse().unwrap());
        assert!(deadline(&r).is_none());
        // Far past what the clock can add (tonic passes over-long values on): capped at
        // 24 hours, never an overflow.
        for huge in [
            "9999999999999999999S",
            "99999999999999999999999H",
            "18446744073709551615n",
        ] {
            r.metadata_mut()
                .insert("grpc-timeout", huge.parse().unwrap());
            let left = deadline(&r).unwrap() - Instant::now();
            assert!(left <= MAX_DEADLINE, "{huge}: {left:?}");
        }
        for bad in ["+5S", "-5S", "5 S", "S", "5"] {
            r.metadata_mut()
                .insert("grpc-timeout", bad.parse().unwrap());
            assert!(deadline(&r).is_none(), "{bad}");
        }
    }

    #[test]
    fn request_ids() {
        let mut r = Request::new(());
        assert_eq!(request_id(&r).len(), 16);
        r.metadata_mut()
            .insert("x-request-id", "abc-123".parse().unwrap());
        assert_eq!(request_id(&r), "abc-123");
        r.metadata_mut()
            .insert("x-request-id", "has space".parse().unwrap());
        assert_ne!(request_id(&r), "has space");
    }

    #[test]
    fn page_tokens_round_trip() {
        assert_eq!(parse_page_token("").unwrap(), None);
        let t = format!("{}.{}", wrap::hex(b"demo-aes-256"), "0103");
        assert_eq!(
            parse_page_token(&t).unwrap(),
            Some(("demo-aes-256".into(), vec![1, 3]))
        );
        assert_eq!(
            parse_page_token("zz").unwrap_err().code(),
            Code::InvalidArgument
        );
    }
}
