//! One import's path through the journal (src/journal/): claim the record, wrap, commit the
//! body, send, record the destination's answer. A retry of a key finds the record and gets the recorded
//! answer or refusal, or re-sends the recorded bytes; every one only after the checks a
//! fresh import passes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::AtomicBool;

use zeroize::Zeroizing;

use super::{
    Described, Destination, Export, ExportError, Exporter, ImportAsk, MAX_CLAIM_WAIT, Progress,
};
use crate::audit::Operation;
use crate::hsm::WrapMode;
use crate::journal::{
    Claimed, Entry, Failure, Journal, JournalError, Lease, Made, Outcome, Record, Ticket,
};
use crate::oci::kms::{self, Answer, KmsError};
use crate::wrap;

/// What an import does next.
pub(super) enum Prepared {
    /// Send `body` with `token`; `lease` holds the record until the answer is in it.
    /// `resent`: the body was sent before and its answer lost.
    Send {
        token: String,
        body: Arc<Zeroizing<Vec<u8>>>,
        lease: Lease,
        resent: bool,
    },
    /// The destination accepted this key's import before: its recorded answer, no new call.
    Answered(Box<Record>),
}

/// Claims the import's journal record and gets what to do: the recorded answer or
/// refusal, the recorded bytes to send again, or (nothing sent before) a fresh wrap whose
/// body is committed before this returns. A call that finds the record claimed elsewhere
/// waits for it within `call.deadline`, then gets a retryable `ABORTED`. A journal that
/// cannot be written refuses the import here, before anything is wrapped or sent.
pub(super) async fn prepare<D: Destination>(
    exporter: &Exporter,
    export: &Export,
    dest: &D,
    ask: ImportAsk<'_>,
    request: &Described,
    progress: &mut Progress,
    hsm_started: Arc<AtomicBool>,
) -> Result<Prepared, ExportError> {
    let idempotency_key = ask.idempotency_key;
    let token = kms::retry_token(idempotency_key, &request.scope);
    let entry = Entry {
        token: token.clone(),
        caller: request.caller.clone(),
        idempotency_key: idempotency_key.map(str::to_string),
        operation: request.operation.as_str().to_string(),
        target: request.target.clone(),
        endpoint: request.endpoint.clone(),
        algorithm: request.algorithm.to_string(),
        digest: request.digest,
    };
    let until = ask
        .deadline
        .unwrap_or_else(|| Instant::now() + MAX_CLAIM_WAIT);
    let journal = dest.journal();
    let ticket = journal.ticket(entry).await?;
    let mut lease = match claim(journal, &ticket, until).await? {
        Next::Fresh(lease) => lease,
        Next::Recorded(lease, r) => {
            // A recorded import: as allowed now as a fresh one would be, or nothing is returned.
            exporter.recheck(export, ask.deadline).await?;
            progress.replayed = true;
            progress.merge(&made_progress(&r));
            progress.on_token = true;
            return match lease {
                Some(lease) => match r.body.clone() {
                    Some(body) => Ok(Prepared::Send {
                        token,
                        body,
                        lease,
                        resent: true,
                    }),
                    None => Err(ExportError::from(JournalError::Unavailable(
                        "a recorded import has no body".into(),
                    ))),
                },
                None if r.failure.is_some() => Err(ExportError::Oci(recorded_refusal(&r))),
                None => Ok(Prepared::Answered(r)),
            };
        }
    };
    let wk = dest.wrapping_key(&token, progress).await?;
    // recorded now: a refused wrap is audited with the wrapping key it was for
    let fp = wk.fingerprint();
    progress.wrapping_key_sha256 = Some(fp.clone());
    if let Some(new) = export.make.clone() {
        // A rotation's key: made once per request (an earlier attempt's is found by its id),
        // after the destination gave its wrapping key and before the body is committed.
        let (info, made) = exporter.make_key(export, new, ask.deadline).await?;
        progress.label = Some(info.label.clone());
        progress.id_hex = Some(wrap::hex(&info.id));
        progress.generated = Some(made);
    }
    let wrapped = exporter.wrap(export, wk, ask.deadline, hsm_started).await?;
    let body = Arc::new(Zeroizing::new(dest.body(&token, &wrapped)?));
    let made = Progress {
        wrapping_key_sha256: Some(fp),
        mode: Some(wrapped.mode.as_str()),
        key_type: Some(wrapped.shape.algorithm.as_str()),
        label: Some(wrapped.key.label.clone()),
        id_hex: Some(wrap::hex(&wrapped.key.id)),
        on_token: true,
        ..Progress::default()
    };
    lease.prepare(body.clone(), &journal_made(&made)).await?;
    progress.merge(&made);
    Ok(Prepared::Send {
        token,
        body,
        lease,
        resent: false,
    })
}

/// What a claim found: nothing sent before (this call holds the lease), or a record (with
/// the lease when its bytes are to be sent again).
enum Next {
    Fresh(Lease),
    Recorded(Option<Lease>, Box<Record>),
}

/// Claims `ticket`'s record, waiting (until `until`) while another call or replica holds it.
async fn claim(
    journal: &Arc<Journal>,
    ticket: &Ticket,
    until: Instant,
) -> Result<Next, ExportError> {
    let mut pause = Duration::from_millis(20);
    loop {
        match journal.claim(ticket).await? {
            Claimed::Fresh(lease) => return Ok(Next::Fresh(lease)),
            Claimed::Resend(lease, r) => return Ok(Next::Recorded(Some(lease), Box::new(r))),
            Claimed::Accepted(r) | Claimed::Failed(r) => {
                return Ok(Next::Recorded(None, Box::new(r)));
            }
            Claimed::Mismatch => {
                return Err(ExportError::invalid(
                    "idempotency_key was already used for a different request (source key, algorithm, target or details); use a new key",
                ));
            }
            Claimed::Busy => {
                if Instant::now() + pause >= until {
                    return Err(ExportError::in_progress(
                        "an import with this idempotency_key is in progress (in this daemon or on another replica); retry with the same key",
                    ));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(250));
            }
        }
    }
}

/// Sends a prepared import to `dest` and records its answer in the journal, or returns the
/// answer recorded before. For bytes sent before whose answer was lost, the destination is
/// asked first for what that send made. `progress` learns the request id, the attempts and
/// what was made.
pub(super) async fn send<D: Destination>(
    prepared: Prepared,
    progress: &mut Progress,
    dest: &D,
) -> Result<D::Answer, ExportError> {
    match prepared {
        Prepared::Answered(r) => {
            let value: D::Answer = r
                .answer
                .as_deref()
                .and_then(|a| serde_json::from_str(a).ok())
                .ok_or_else(|| {
                    JournalError::Unavailable(format!(
                        "the recorded answer of import {} cannot be read",
                        r.token
                    ))
                })?;
            progress.created_id = r.created_id.clone();
            progress.opc_request_id = r.opc_request_id.clone();
            Ok(value)
        }
        Prepared::Send {
            token,
            body,
            lease,
            resent,
        } => {
            let found = match resent {
                true => dest.find_lost(&token, &body).await.transpose(),
                false => None,
            };
            let answer = match found {
                Some(found) => found,
                None => dest.send(body, token).await,
            };
            note(progress, &answer);
            lease.finish(&outcome::<D>(&answer)).await;
            let value = answer?.value;
            progress.created_id = Some(D::created_id(&value).to_string());
            Ok(value)
        }
    }
}

/// Whether OCI's error status refuses the import itself, for good: a retry of the same
/// bytes would get the same answer. Not: authentication (401, 403; an operator may fix the
/// API key), timeouts (408), conflicts (409: retry-token in use), throttling (429), a
/// cancelled call (499: Google's CANCELLED), 5xx.
fn definitive(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 401 | 403 | 408 | 409 | 429 | 499)
}

/// What the journal records of the destination's answer.
fn outcome<D: Destination>(answer: &Result<Answer<D::Answer>, KmsError>) -> Outcome {
    match answer {
        Ok(a) => match serde_json::to_string(&a.value) {
            Ok(json) => Outcome::Accepted {
                created_id: D::created_id(&a.value).to_string(),
                answer: json,
                opc_request_id: a.opc_request_id.clone(),
            },
            // Not expected; unknown is always safe: a retry re-sends, OCI answers the same.
            Err(_) => Outcome::Unknown {
                opc_request_id: Some(a.opc_request_id.clone()),
            },
        },
        Err(KmsError::Service {
            status,
            code,
            message,
            opc_request_id,
            ..
        }) if definitive(*status) => Outcome::Failed {
            failure: Failure {
                status: *status,
                code: code.clone(),
                message: message.clone(),
            },
            opc_request_id: opc_request_id.clone(),
        },
        Err(e) => Outcome::Unknown {
            opc_request_id: e.opc_request_id().map(str::to_string),
        },
    }
}

/// OCI's refusal as recorded, as OCI gave it.
fn recorded_refusal(r: &Record) -> KmsError {
    let f = r.failure.clone().unwrap_or(Failure {
        status: 400,
        code: String::new(),
        message: String::new(),
    });
    KmsError::Service {
        op: Operation::parse(&r.operation)
            .unwrap_or(Operation::ImportKeyVersion)
            .as_str(),
        status: f.status,
        code: f.code,
        message: format!("{} (recorded at {})", f.message, r.updated_at()),
        opc_request_id: r.opc_request_id.clone().unwrap_or_default(),
        attempts: 0,
    }
}

/// Records the answer in `progress`.
fn note<T>(progress: &mut Progress, r: &Result<Answer<T>, KmsError>) {
    match r {
        Ok(a) => {
            progress.opc_request_id = Some(a.opc_request_id.clone());
            progress.attempts = a.attempts;
        }
        Err(e) => note_error(progress, e),
    }
}

/// A failed call as the export's error, its request id and attempts noted in `progress`.
pub(super) fn noted(progress: &mut Progress) -> impl FnOnce(KmsError) -> super::ExportError + '_ {
    |e| {
        note_error(progress, &e);
        super::ExportError::Oci(e)
    }
}

/// Notes a failed call's request id and attempts in `progress` (for the audit record).
pub(super) fn note_error(progress: &mut Progress, e: &KmsError) {
    progress.opc_request_id = e.opc_request_id().map(str::to_string);
    progress.attempts = e.attempts();
}

fn journal_made(p: &Progress) -> Made {
    Made {
        source_key_label: p.label.clone(),
        source_key_id_hex: p.id_hex.clone(),
        mode: p.mode.map(str::to_string),
        wrapping_key_sha256: p.wrapping_key_sha256.clone(),
    }
}

/// What a record says of how its body was made, for the audit record.
fn made_progress(r: &Record) -> Progress {
    Progress {
        label: r.made.source_key_label.clone(),
        id_hex: r.made.source_key_id_hex.clone(),
        mode: r.made.mode.as_deref().and_then(|m| {
            [WrapMode::HsmNative, WrapMode::HsmTwoStep, WrapMode::Hybrid]
                .into_iter()
                .map(WrapMode::as_str)
                .find(|s| *s == m)
        }),
        wrapping_key_sha256: r.made.wrapping_key_sha256.clone(),
        ..Progress::default()
    }
}
