//! The `KeySourceBridge` gRPC service: authenticates the caller, applies per-caller and
//! export policy, queues HSM work with a bound, and writes the audit record of every
//! export attempt before answering. `tonic::Status` is built here and nowhere below.
//!
//! The service never sees key material in clear: the HSM layer returns ciphertext.

pub mod audit;
pub mod auth;
pub mod import;
pub mod queue;
pub mod server;
pub mod status;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tonic::{Code, Request, Response, Status};

use crate::config::{CallerWrappingKeys, Operation};
use crate::hsm::{Hsm, HsmError, KeyInfo, KeyRef};
use crate::oci::kms::Call;
use crate::proto::{self, key_source_bridge_server::KeySourceBridge};
use crate::wrap::{self, Algorithm, WrappingKey};
use audit::{Audit, Record, now_rfc3339};
use auth::{Authenticator, Caller};
use queue::{HsmQueue, Refused};

/// Everything a call needs, shared by all calls.
pub struct Bridge {
    hsm: Arc<Hsm>,
    auth: Authenticator,
    audit: Arc<Audit>,
    /// Admission to the HSM: bounded, fair, deadline-aware.
    queue: HsmQueue,
    caller_wrapping_keys: CallerWrappingKeys,
    pinned: Vec<String>,
    /// Callers' wrapping keys, parsed once each.
    wrapping_keys: wrap::wrapping_key::ParsedKeys,
    oci: Arc<import::OciSide>,
}

/// Default and largest ListSourceKeys page.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

impl Bridge {
    pub fn new(
        hsm: Arc<Hsm>,
        auth: Authenticator,
        audit: Arc<Audit>,
        max_queue: usize,
        policy: &crate::config::PolicyConfig,
        oci: import::OciSide,
    ) -> Bridge {
        Bridge {
            queue: HsmQueue::new(hsm.sessions(), max_queue),
            wrapping_keys: wrap::wrapping_key::ParsedKeys::new(hsm.min_wrapping_key_bits()),
            hsm,
            auth,
            audit,
            caller_wrapping_keys: policy.caller_wrapping_keys,
            pinned: policy
                .pinned_wrapping_keys
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            oci: Arc::new(oci),
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

    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        self.auth.identify(req).map_err(|why| {
            Status::unauthenticated(format!(
                "{why}; ask the operator to add your certificate's CN to server.clients"
            ))
        })
    }
}

/// The audit record of an export attempt in progress. If the call is dropped before it
/// answers (the caller cancelled, or its deadline passed on its side), the record is still
/// written, saying whether the HSM had started on it.
struct AuditOnDrop {
    audit: Arc<Audit>,
    rec: Option<Record>,
    /// Set by the HSM worker when it starts.
    hsm_started: Arc<AtomicBool>,
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
        }
    }

    fn record(&mut self) -> &mut Record {
        self.rec
            .as_mut()
            .expect("the record is taken only once, at the end")
    }

    /// The record, for the normal path that writes it with the call's result.
    fn take(&mut self) -> Record {
        self.rec
            .take()
            .expect("the record is taken only once, at the end")
    }
}

impl Drop for AuditOnDrop {
    fn drop(&mut self) {
        let Some(mut rec) = self.rec.take() else {
            return;
        };
        rec.time = now_rfc3339();
        rec.outcome = "refused";
        rec.code = "CANCELLED";
        rec.reason = Some(if self.hsm_started.load(Ordering::SeqCst) {
            "the caller cancelled or its deadline passed while the HSM was working; the result was discarded".into()
        } else {
            "the caller cancelled or its deadline passed before an HSM session was free; the HSM did no work for this call".into()
        });
        if rec.caller.is_empty() {
            rec.caller = "unknown".into();
        }
        if let Err(e) = self.audit.write(&rec) {
            tracing::error!(request_id = %rec.request_id, "audit log write failed: {e}");
        }
    }
}

/// The call's deadline from `grpc-timeout`, moved earlier by a quarter of the timeout (at
/// most 100 ms): the client's and the transport's own timers answer CANCELLED at the
/// deadline, so this service must answer DEADLINE_EXCEEDED, and have it arrive, first.
fn deadline<T>(req: &Request<T>) -> Option<Instant> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    let margin = (timeout / 4).min(Duration::from_millis(100));
    Some(Instant::now() + timeout - margin)
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
    /// write turns success into a refusal: nothing leaves without its record.
    fn audit<T>(&self, mut rec: Record, result: Result<T, Status>) -> Result<T, Status> {
        rec.time = now_rfc3339();
        if rec.caller.is_empty() {
            // The caller was never identified: say why.
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
                rec.outcome = match s.code() {
                    Code::Internal | Code::Unavailable | Code::Unknown => "failed",
                    _ => "refused",
                };
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
        let hsm_started = guard.hsm_started.clone();
        let rec = guard.record();
        let deadline = deadline(&req);
        let body = req.get_ref();
        let export = self.admit_export(
            &req,
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
        match self.caller_wrapping_keys {
            CallerWrappingKeys::Any => {}
            CallerWrappingKeys::None => {
                return Err(Status::permission_denied(
                    "WrapKey with a caller's wrapping key is off (policy.caller_wrapping_keys = \"none\"); use ImportKeyVersion, which fetches the vault's key itself",
                ));
            }
            CallerWrappingKeys::Pinned if self.pinned.contains(&fp) => {}
            CallerWrappingKeys::Pinned => {
                return Err(Status::permission_denied(format!(
                    "wrapping key sha256:{fp} is not in policy.pinned_wrapping_keys"
                )));
            }
        }
        let wrapped = self.wrap_for(export, wk, deadline, hsm_started).await?;
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

    /// The checks every export starts with, each recorded as it passes: the caller and its
    /// `op`eration, the source key (against the caller's label patterns), the algorithm.
    fn admit_export<T>(
        &self,
        req: &Request<T>,
        rec: &mut Record,
        (op, name): (Operation, &'static str),
        key: Option<&proto::KeyRef>,
        alg: i32,
    ) -> Result<Export, Status> {
        let caller = self.caller(req)?;
        rec.caller = caller.display.clone();
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
            hsm.wrap_if(&key, &wk, alg, d, |info| {
                if caller.may_touch(&info.label) {
                    Ok(())
                } else {
                    Err(may_not_touch(&caller, &info.label))
                }
            })
        })
        .await
    }

    /// The checks every import starts with: those of every export, the request's own
    /// `fields` (whose value it returns), then OCI connection and endpoint. Nothing has
    /// touched the HSM or the network yet.
    fn import_preamble<T, F>(
        &self,
        req: &Request<T>,
        rec: &mut Record,
        ask: ImportAsk<'_>,
        fields: impl FnOnce() -> Result<F, Status>,
    ) -> Result<(ImportStart, F), Status> {
        let ImportAsk { op, key, alg, oci } = ask;
        let export = self.admit_export(req, rec, (Operation::Import, op), key, alg)?;
        // The request's own fields, before any configuration is consulted.
        let fields = fields()?;
        let target = oci.ok_or_else(|| {
            Status::invalid_argument(
                "oci.management_endpoint is required (the vault's management endpoint)",
            )
        })?;
        let identity = self.oci.identity(&target.connection)?;
        rec.oci_endpoint = Some(target.management_endpoint.clone());
        let endpoint = self.oci.endpoint(&target.management_endpoint)?;
        Ok((
            ImportStart {
                export,
                identity,
                endpoint,
            },
            fields,
        ))
    }

    /// The bytes an import sends (see [`import::prepare`]): kept ones for a replayed
    /// idempotency key, or the vault's wrapping key fetched, the HSM wrap for `start` on the
    /// queue, and `build`'s body around it. What happened is noted in the audit record,
    /// also on failure; the progress is returned for OCI's answer.
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
        let wrap = move |wk| -> WrapFuture<'_> {
            Box::pin(self.wrap_for(export, wk, call.deadline, hsm_started))
        };
        let mut progress = import::Progress::default();
        let prepared = import::prepare(
            &self.oci,
            call,
            idempotency_key,
            described,
            &mut progress,
            wrap,
            build,
        )
        .await;
        note_progress(guard.record(), &progress);
        Ok((prepared?, progress))
    }

    async fn import_key_version_inner(
        &self,
        req: Request<proto::ImportKeyVersionRequest>,
        guard: &mut AuditOnDrop,
    ) -> Result<proto::ImportKeyVersionResponse, Status> {
        let deadline = deadline(&req);
        let rec = guard.record();
        let request_id = rec.request_id.clone();
        let body = req.get_ref();
        rec.oci_key_id = Some(body.oci_key_id.clone());
        let (start, idem) = self.import_preamble(
            &req,
            rec,
            ImportAsk {
                op: "ImportKeyVersion",
                key: body.source_key.as_ref(),
                alg: body.algorithm,
                oci: body.oci.as_ref(),
            },
            || {
                import::check_key_ocid(&body.oci_key_id)?;
                import::check_idempotency_key(&body.idempotency_key)
            },
        )?;
        let described = import::describe(
            "ImportKeyVersion",
            &body.oci_key_id,
            &start.export.key,
            start.export.alg,
            &start.endpoint,
            "",
        );
        let call = start.call(&request_id, deadline);
        let (prepared, mut progress) = self
            .prepare_import(guard, &start, &call, idem, &described, |w| {
                serde_json::to_vec(&crate::oci::kms::ImportKeyVersionDetails {
                    wrapped_import_key: import::wrapped_import_key(w),
                })
                .map_err(|e| Status::internal(e.to_string()))
            })
            .await?;
        let kms = &self.oci.kms;
        let answer = kms
            .import_key_version(&call, &body.oci_key_id, &prepared.body, &prepared.token)
            .await;
        let mut version = answered(guard.record(), &mut progress, answer, |v| &v.id)?;
        if body.wait_for_enabled {
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
            key_version: Some(import::proto_version(&version)),
        })
    }

    async fn import_key_inner(
        &self,
        req: Request<proto::ImportKeyRequest>,
        guard: &mut AuditOnDrop,
    ) -> Result<proto::ImportKeyResponse, Status> {
        let deadline = deadline(&req);
        let rec = guard.record();
        let request_id = rec.request_id.clone();
        let body = req.get_ref();
        let (start, idem) = self.import_preamble(
            &req,
            rec,
            ImportAsk {
                op: "ImportKey",
                key: body.source_key.as_ref(),
                alg: body.algorithm,
                oci: body.oci.as_ref(),
            },
            || import_key_fields(body),
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
        let described = import::describe(
            "ImportKey",
            &body.compartment_id,
            &start.export.key,
            start.export.alg,
            &start.endpoint,
            &format!(
                "{:?} {:?} {freeform:?} {defined:?}",
                body.display_name, protection_mode
            ),
        );
        let call = start.call(&request_id, deadline);
        let (prepared, mut progress) = self
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
        let kms = &self.oci.kms;
        let answer = kms.import_key(&call, &prepared.body, &prepared.token).await;
        let rec = guard.record();
        let answer = answered(rec, &mut progress, answer, |k| &k.id);
        rec.oci_key_id = progress.created_id.clone();
        let mut key = answer?;
        if body.wait_for_enabled {
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
            key: Some(import::proto_key(&key)),
        })
    }
}

type WrapFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<crate::hsm::Wrapped, Status>> + Send + 'a>,
>;

/// ImportKey's own fields: compartment OCID, display name, protection mode, idempotency key
/// (returned).
fn import_key_fields(body: &proto::ImportKeyRequest) -> Result<Option<&str>, Status> {
    if !import::is_ocid(&body.compartment_id, "ocid1.") {
        return Err(Status::invalid_argument(
            "compartment_id must be a compartment or tenancy OCID (ocid1.…)",
        ));
    }
    if body.display_name.is_empty()
        || body.display_name.len() > 255
        || body.display_name.chars().any(char::is_control)
    {
        return Err(Status::invalid_argument(
            "display_name must be 1 to 255 bytes without control characters",
        ));
    }
    if !matches!(body.protection_mode.as_str(), "" | "HSM" | "SOFTWARE") {
        return Err(Status::invalid_argument(format!(
            "protection_mode {:?}: HSM or SOFTWARE",
            body.protection_mode.chars().take(32).collect::<String>()
        )));
    }
    import::check_idempotency_key(&body.idempotency_key)
}

/// What an import request asks for, as the caller sent it.
struct ImportAsk<'a> {
    op: &'static str,
    key: Option<&'a proto::KeyRef>,
    alg: i32,
    oci: Option<&'a proto::OciTarget>,
}

/// An admitted export: who asked, for which key, with which algorithm.
#[derive(Clone)]
struct Export {
    caller: Caller,
    key: KeyRef,
    alg: Algorithm,
}

/// What an import has established before it touches the HSM or the network.
struct ImportStart {
    export: Export,
    identity: Arc<crate::oci::Identity>,
    endpoint: crate::oci::endpoint::Endpoint,
}

impl ImportStart {
    /// The OCI calls' context: this identity and endpoint, the caller's request id (if OCI
    /// accepts it as `opc-request-id`) and deadline.
    fn call<'a>(&'a self, request_id: &'a str, deadline: Option<Instant>) -> Call<'a> {
        Call {
            identity: &self.identity,
            endpoint: &self.endpoint,
            request_id: import::opc_request_id(request_id),
            deadline,
        }
    }
}

/// Records OCI's answer to an import (request id, attempts, what it created) and returns
/// its value or the failure as a status.
fn answered<T>(
    rec: &mut Record,
    progress: &mut import::Progress,
    answer: Result<crate::oci::kms::Answer<T>, crate::oci::kms::KmsError>,
    created: impl Fn(&T) -> &String,
) -> Result<T, Status> {
    import::note(progress, &answer);
    let result = match answer {
        Ok(a) => {
            progress.created_id = Some(created(&a.value).clone());
            Ok(a.value)
        }
        Err(e) => Err(import::kms_status(&e)),
    };
    note_progress(rec, progress);
    result
}

fn note_progress(rec: &mut Record, p: &import::Progress) {
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
        let deadline = deadline(&req);
        let caller = self.caller(&req)?;
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
        let deadline = deadline(&req);
        let caller = self.caller(&req)?;
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
            .on_hsm(deadline, move |hsm, d| hsm.find_key(&key, d))
            .await?;
        if !caller.may_touch(&info.label) {
            return Err(Status::permission_denied(may_not_touch(
                &caller,
                &info.label,
            )));
        }
        Ok(Response::new(source_key(&self.hsm, &info)))
    }

    async fn wrap_key(
        &self,
        req: Request<proto::WrapKeyRequest>,
    ) -> Result<Response<proto::WrapKeyResponse>, Status> {
        let mut guard = AuditOnDrop::new(self.audit.clone(), &req, "WrapKey");
        let result = self.wrap_key_inner(req, &mut guard).await;
        self.audit(guard.take(), result).map(Response::new)
    }

    async fn import_key_version(
        &self,
        req: Request<proto::ImportKeyVersionRequest>,
    ) -> Result<Response<proto::ImportKeyVersionResponse>, Status> {
        let mut guard = AuditOnDrop::new(self.audit.clone(), &req, "ImportKeyVersion");
        let result = self.import_key_version_inner(req, &mut guard).await;
        self.audit(guard.take(), result).map(Response::new)
    }

    async fn import_key(
        &self,
        req: Request<proto::ImportKeyRequest>,
    ) -> Result<Response<proto::ImportKeyResponse>, Status> {
        let mut guard = AuditOnDrop::new(self.audit.clone(), &req, "ImportKey");
        let result = self.import_key_inner(req, &mut guard).await;
        self.audit(guard.take(), result).map(Response::new)
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
