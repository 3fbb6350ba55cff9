//! The export core: one way from an admitted request to its answer, for the daemon and the
//! command line alike (docs/ARCHITECTURE.md, "An import, through the files"). Admission
//! (the caller's operation, the key against its patterns, the format), the destination's
//! own checks and wrapping key, the HSM wrap in the format, the journal (claim, commit,
//! record), the send and the wait, in that order. It knows nothing of gRPC: its errors say
//! their canonical code (src/code.rs), and `service/status.rs` turns that into a status.
//!
//! An `idempotency_key` belongs to the caller that sent it (the journal token is derived
//! from the caller's name, the operation, the endpoint and the target). Every import goes
//! through the journal (src/journal/): one call at a time, in any process sharing it, holds
//! a key's claim, from before the wrap until the destination has answered; a second call
//! with the same key waits for it (or, past its deadline, gets a retryable `ABORTED`). The
//! body is committed before its first send; a retry gets the recorded answer, or re-sends
//! exactly the recorded bytes under the same token, so nothing new is made; but only after
//! the retry has passed every check a fresh import passes, the source key's included.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::audit::{Attempt, Operation, Record};
use crate::code::Code;
use crate::hsm::{Hsm, HsmError, KeyInfo, KeyRef, NewKey, Wrapped};
use crate::journal::JournalError;
use crate::oci::kms::KmsError;
use crate::wrap::{self, Format, WrappingKey};

pub(crate) mod aws;
pub(crate) mod azure;
pub(crate) mod caller;
mod destination;
pub(crate) mod gcp;
mod journal;
pub(crate) mod oci;
pub(crate) mod queue;
mod rotate;
mod to;

pub(crate) use crate::audit::Progress;
pub(crate) use caller::Caller;
pub(crate) use destination::Destination;
use queue::{HsmQueue, Refused};
pub(crate) use rotate::RotateTo;
pub(crate) use to::{ImportTo, Made};

/// Why an export stopped, for the caller: each says its canonical code (src/code.rs).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// Policy or the caller's grants refuse it.
    #[error("{0}")]
    Denied(String),
    /// The daemon is not configured for it (e.g. no such OCI connection).
    #[error("{0}")]
    NotConfigured(String),
    /// Another call holds the idempotency key.
    #[error("{0}")]
    InProgress(String),
    /// The import was made but did not become `ENABLED` in time.
    #[error("{0}")]
    NotEnabled(String),
    /// OCI refused, or did not answer.
    #[error(transparent)]
    Oci(#[from] KmsError),
    /// The HSM (the CLI's own wrap; the daemon's goes through its queue).
    #[error(transparent)]
    Hsm(#[from] crate::hsm::HsmError),
    /// The import journal could not be written: nothing was sent.
    #[error("{0}; nothing was sent")]
    Journal(#[from] JournalError),
    /// The import body could not be made.
    #[error("{0}")]
    Body(String),
    /// The HSM queue is full.
    #[error("{0}")]
    Busy(String),
    /// The daemon is shutting down.
    #[error("the daemon is shutting down")]
    Stopping,
    /// A worker of the HSM queue, or the task sending an import, failed.
    #[error("HSM worker failed")]
    WorkerFailed,
    /// The caller's deadline passed while the destination was answering.
    #[error("{0}")]
    AnswerLate(String),
}

impl ExportError {
    /// The canonical code for this refusal (src/code.rs).
    pub fn code(&self) -> Code {
        match self {
            ExportError::Invalid(_) => Code::InvalidArgument,
            ExportError::Denied(_) => Code::PermissionDenied,
            ExportError::NotConfigured(_) => Code::FailedPrecondition,
            ExportError::InProgress(_) => Code::Aborted,
            ExportError::NotEnabled(_) | ExportError::AnswerLate(_) => Code::DeadlineExceeded,
            ExportError::Oci(k) => k.code(),
            ExportError::Hsm(h) => h.code(),
            ExportError::Body(_) | ExportError::WorkerFailed => Code::Internal,
            ExportError::Busy(_) => Code::ResourceExhausted,
            ExportError::Stopping => Code::Unavailable,
            ExportError::Journal(JournalError::Unavailable(_) | JournalError::NoKey(_)) => {
                Code::Unavailable
            }
            ExportError::Journal(JournalError::LeaseLost) => Code::Aborted,
            // Not the caller's fault, and no retry mends it: an operator must look at the record.
            ExportError::Journal(JournalError::Forged { .. }) => Code::DataLoss,
        }
    }

    /// What a caller is told (OCI's details for OCI's refusals).
    pub fn message(&self) -> String {
        match self {
            ExportError::Oci(k) => k.message(),
            other => other.to_string(),
        }
    }

    pub(crate) fn invalid(m: impl Into<String>) -> Self {
        ExportError::Invalid(m.into())
    }
    pub(crate) fn denied(m: impl Into<String>) -> Self {
        ExportError::Denied(m.into())
    }
    pub(crate) fn not_configured(m: impl Into<String>) -> Self {
        ExportError::NotConfigured(m.into())
    }
    pub(crate) fn in_progress(m: impl Into<String>) -> Self {
        ExportError::InProgress(m.into())
    }
    pub(crate) fn not_enabled(m: impl Into<String>) -> Self {
        ExportError::NotEnabled(m.into())
    }
}

/// `idempotency_key`: empty (none) or 1..=128 printable ASCII characters.
pub(crate) fn check_idempotency_key(k: &str) -> Result<Option<&str>, ExportError> {
    if k.is_empty() {
        return Ok(None);
    }
    if k.len() > 128 || !k.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ExportError::invalid(
            "idempotency_key must be 1 to 128 printable ASCII characters",
        ));
    }
    Ok(Some(k))
}

/// Longest wait for another call's claim on an idempotency key when the caller gave no
/// deadline.
const MAX_CLAIM_WAIT: Duration = Duration::from_secs(60);

/// How the HSM is reached: the daemon's bounded queue of worker threads, or (the command
/// line, one call at a time) directly.
pub(crate) enum HsmPath {
    /// The queue, and the token it serves (for what needs no session).
    Queued(HsmQueue, Arc<Hsm>),
    Direct(Arc<Hsm>),
}

impl HsmPath {
    /// The token, for what needs no session: the self-test's findings, checks of a request.
    pub(crate) fn token(&self) -> &Arc<Hsm> {
        match self {
            HsmPath::Queued(_, hsm) | HsmPath::Direct(hsm) => hsm,
        }
    }

    /// Runs `work` on the HSM, giving up at `deadline`. Through the queue: only if it has
    /// room, and a call still waiting at its deadline never reaches the HSM.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        deadline: Option<Instant>,
        work: impl FnOnce(&Hsm, Option<Instant>) -> Result<T, HsmError> + Send + 'static,
    ) -> Result<T, ExportError> {
        match self {
            HsmPath::Direct(hsm) => Ok(work(hsm, deadline)?),
            HsmPath::Queued(queue, _) => queue
                .run(deadline, work)
                .await
                .map_err(|r| match r {
                    Refused::Full { capacity } => ExportError::Busy(format!(
                        "the HSM queue is full ({capacity} calls in progress or waiting; server.max_queue); retry with backoff"
                    )),
                    Refused::Deadline => ExportError::Hsm(HsmError::DeadlineExceeded),
                    Refused::Closed => ExportError::Stopping,
                    Refused::Failed => ExportError::WorkerFailed,
                })?
                .map_err(ExportError::Hsm),
        }
    }

    /// Waits until every queued or running HSM call has finished (for shutdown).
    pub(crate) async fn drain(&self, within: Duration) -> bool {
        match self {
            HsmPath::Direct(_) => true,
            HsmPath::Queued(queue, _) => queue.drain(within).await,
        }
    }
}

/// An export being admitted: the caller may do the operation; the key and the format are
/// next ([`Admission::key`], [`KeyAdmitted::format`]).
pub(crate) struct Admission {
    caller: Caller,
    operation: Operation,
}

/// An admitted export: who asked, which operation, for which key, in which format.
#[derive(Clone)]
pub(crate) struct Export {
    pub caller: Caller,
    pub operation: Operation,
    pub key: KeyRef,
    pub format: &'static Format,
    /// A rotation: the key is made in the HSM, once per request, before its first wrap
    /// (`key` names it by the id [`NewKey`] carries; src/export/rotate.rs).
    pub make: Option<Arc<NewKey>>,
}

impl Export {
    /// The first check of every export: `caller` may do `operation`.
    pub(crate) fn admit(caller: Caller, operation: Operation) -> Result<Admission, ExportError> {
        if !caller.may_export(operation) {
            return Err(ExportError::denied(format!(
                "{} may not call {}; the operator grants operations in server.clients",
                caller.display,
                operation.as_str()
            )));
        }
        Ok(Admission { caller, operation })
    }
}

impl Admission {
    /// The key asked for, recorded in `rec`: a label must match the caller's patterns (a key
    /// named otherwise is checked once found, before anything is wrapped).
    pub(crate) fn key(self, key: KeyRef, rec: &mut Record) -> Result<KeyAdmitted, ExportError> {
        rec.export.label = key.label_named().map(str::to_string);
        rec.export.id_hex = key.id_named().map(wrap::hex);
        if let Some(l) = key.label_named()
            && !self.caller.may_touch(l)
        {
            return Err(ExportError::Hsm(self.caller.may_not_touch(l).into()));
        }
        Ok(KeyAdmitted {
            admission: self,
            key,
        })
    }
}

/// An export whose caller and key are admitted; the format is next.
pub(crate) struct KeyAdmitted {
    admission: Admission,
    key: KeyRef,
}

impl KeyAdmitted {
    /// The format asked for, recorded in `rec`: the export is admitted.
    pub(crate) fn format(self, format: &'static Format, rec: &mut Record) -> Export {
        rec.algorithm = Some(format.algorithm());
        rec.format = Some(format.name);
        Export {
            caller: self.admission.caller,
            operation: self.admission.operation,
            key: self.key,
            format,
            make: None,
        }
    }
}

/// What an import asks beyond its export and destination.
#[derive(Clone, Copy)]
pub(crate) struct ImportAsk<'a> {
    pub idempotency_key: Option<&'a str>,
    /// Wait until what the import made is usable.
    pub wait: bool,
    pub deadline: Option<Instant>,
}

/// The export core over one way to the HSM.
pub(crate) struct Exporter {
    hsm: HsmPath,
}

impl Exporter {
    pub(crate) fn new(hsm: HsmPath) -> Exporter {
        Exporter { hsm }
    }

    /// The way to the HSM (for the key listings, which export nothing).
    pub(crate) fn hsm(&self) -> &HsmPath {
        &self.hsm
    }

    /// Wraps the export's key for `wk` in its format, on the HSM: what needs no token (the
    /// wrapping key against policy and the format) is refused before the HSM is asked; a key
    /// named other than by label must still match the caller's patterns once found.
    /// `started` is set when the HSM starts on it.
    pub(crate) async fn wrap(
        &self,
        export: &Export,
        wk: Arc<WrappingKey>,
        deadline: Option<Instant>,
        started: Arc<AtomicBool>,
    ) -> Result<Wrapped, ExportError> {
        let Export {
            caller,
            key,
            format,
            ..
        } = export.clone();
        self.hsm.token().precheck(&wk, format)?;
        self.hsm
            .run(deadline, move |hsm, d| {
                started.store(true, Ordering::SeqCst);
                hsm.wrap_if(&key, &wk, format, d, |info| caller.permit(info))
                    .map_err(|e| caller::hide_by_id(&key, e))
            })
            .await
    }

    /// The shape of the key `admitted` names, found on the token, allowed by the caller's
    /// patterns and able to leave (policy, token attributes): what a destination's format
    /// and key follow from, known before any cloud is called.
    pub(crate) async fn shape(
        &self,
        admitted: &KeyAdmitted,
        deadline: Option<Instant>,
    ) -> Result<wrap::KeyShape, ExportError> {
        let (key, caller) = (admitted.key.clone(), admitted.admission.caller.clone());
        self.hsm
            .run(deadline, move |hsm, d| {
                let info = hsm
                    .find_key(&key, d)
                    .map_err(|e| caller::hide_by_id(&key, e))?;
                caller
                    .permit(&info)
                    .map_err(|e| caller::hide_by_id(&key, e.into()))?;
                hsm.exportable(&info)
            })
            .await
    }

    /// For bytes recorded for an idempotency key: the key checks of [`Self::wrap`] without
    /// the wrap.
    async fn recheck(&self, export: &Export, deadline: Option<Instant>) -> Result<(), ExportError> {
        let Export {
            caller,
            key,
            format,
            ..
        } = export.clone();
        self.hsm
            .run(deadline, move |hsm, d| {
                hsm.check_export(&key, format, d, |info| caller.permit(info))
                    .map(|_| ())
                    .map_err(|e| caller::hide_by_id(&key, e))
            })
            .await
    }

    /// For a rotation: the key `new` describes, found on the token (made by an earlier
    /// attempt of the same request) or generated now, once the caller's patterns and
    /// `policy.exportable` allow its label. Whether it was made now.
    async fn make_key(
        &self,
        export: &Export,
        new: Arc<NewKey>,
        deadline: Option<Instant>,
    ) -> Result<(KeyInfo, bool), ExportError> {
        let caller = export.caller.clone();
        self.hsm
            .run(deadline, move |hsm, d| {
                hsm.find_or_generate(&new, d, |label| match caller.may_touch(label) {
                    true => Ok(()),
                    false => Err(caller.may_not_touch(label)),
                })
            })
            .await
    }

    /// Imports the export's key into `dest`: the destination's checks, then the journal's
    /// claim (a recorded answer, refusal or body for a retry; else the destination's
    /// wrapping key, the HSM wrap and the body, committed), the send, and with
    /// `ask.wait` the wait until what was made is usable. What happens is noted in
    /// `attempt`'s record, also on failure.
    pub(crate) async fn import<D: Destination>(
        &self,
        export: &Export,
        dest: Arc<D>,
        ask: ImportAsk<'_>,
        attempt: &mut Attempt,
    ) -> Result<D::Answer, ExportError> {
        dest.admit(&export.caller, attempt.record()).await?;
        let described = describe(export, dest.as_ref());
        let mut progress = Progress::default();
        let prepared = journal::prepare(
            self,
            export,
            dest.as_ref(),
            ask,
            &described,
            &mut progress,
            attempt.hsm_started.clone(),
        )
        .await;
        attempt.record().export.merge(&progress);
        let answer = send(dest.clone(), prepared?, progress, attempt, ask.deadline).await;
        if let Some(rec) = attempt.rec.as_mut() {
            let created = rec.export.created_id.clone();
            dest.record_made(rec, created.as_deref());
        }
        let answer = answer?;
        if !ask.wait {
            return Ok(answer);
        }
        dest.poll(answer, ask.deadline).await
    }
}

/// Sends a prepared import from a task of its own, and waits for the answer until
/// `deadline`. The task holds the audit record (and the idempotency claim) until the
/// destination has answered: a caller that cancels, or whose deadline passes first, still
/// gets a record of what the destination did, with the id it made.
async fn send<D: Destination>(
    dest: Arc<D>,
    prepared: journal::Prepared,
    mut progress: Progress,
    attempt: &mut Attempt,
    deadline: Option<Instant>,
) -> Result<D::Answer, ExportError> {
    let mut carried = attempt.hand_off();
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        // The journal's record is freed once the answer is in it.
        let answer = journal::send(prepared, &mut progress, dest.as_ref()).await;
        carried.record().export.merge(&progress);
        carried.answered = Some(
            answer
                .as_ref()
                .map(|_| ())
                .map_err(|e| (e.code(), e.message())),
        );
        // With the caller gone, `carried` is dropped here and writes the record.
        let _ = tx.send((answer, carried));
    });
    let lost = || ExportError::WorkerFailed;
    let (answer, carried) = match deadline {
        None => rx.await.map_err(|_| lost())?,
        Some(d) => match tokio::time::timeout_at(d.into(), &mut rx).await {
            Ok(r) => r.map_err(|_| lost())?,
            Err(_) => {
                rx.close();
                rx.try_recv().map_err(|_| {
                    ExportError::AnswerLate(
                        "the deadline passed while the destination was answering the import: its answer goes to the audit log, and a retry with the same idempotency_key returns it without importing again".into(),
                    )
                })?
            }
        },
    };
    attempt.take_back(carried);
    answer
}

/// What an idempotency key is bound to, and what the journal records of the request.
pub(crate) struct Described {
    /// Caller, operation, endpoint and target: with the idempotency key, derives the
    /// journal token, so one caller's key never names another caller's import.
    pub(crate) scope: String,
    /// SHA-256 of everything asked (scope, source key, algorithm, details): a key reused
    /// with a different request is refused.
    pub(crate) digest: [u8; 32],
    pub(crate) caller: String,
    pub(crate) operation: Operation,
    pub(crate) target: String,
    pub(crate) endpoint: String,
    pub(crate) algorithm: &'static str,
}

/// Caller, operation, endpoint and target of `export` into `dest`: with the idempotency
/// key, what the journal token is derived from.
fn scope<D: Destination>(export: &Export, dest: &D) -> String {
    scope_of(&export.caller, export.operation, dest)
}

/// The scope of `caller`'s `operation` into `dest`.
fn scope_of<D: Destination>(caller: &Caller, operation: Operation, dest: &D) -> String {
    format!(
        "{} {} {} {}",
        caller.name,
        operation.as_str(),
        dest.endpoint(),
        dest.target()
    )
}

/// What `export` into `dest` is bound to.
fn describe<D: Destination>(export: &Export, dest: &D) -> Described {
    let key = match &export.key {
        KeyRef::Label(l) => format!("label:{l}"),
        KeyRef::Id(id) => format!("id:{}", wrap::hex(id)),
        KeyRef::Uri(u) => format!("uri:{u}"),
    };
    let scope = scope(export, dest);
    let mut h = openssl::sha::Sha256::new();
    // The cloud's own algorithm name: for OCI's formats, the digest is what it always was.
    for part in [&scope, &key, export.format.algorithm(), &dest.details()] {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    Described {
        digest: h.finish(),
        scope,
        caller: export.caller.name.clone(),
        operation: export.operation,
        target: dest.target().to_string(),
        endpoint: dest.endpoint().to_string(),
        algorithm: export.format.algorithm(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_checked() {
        assert_eq!(check_idempotency_key("").unwrap(), None);
        assert_eq!(
            check_idempotency_key("rotation-1").unwrap(),
            Some("rotation-1")
        );
        assert!(check_idempotency_key(&"x".repeat(129)).is_err());
        assert!(check_idempotency_key("has space").is_err());
    }
}
