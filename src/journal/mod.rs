//! The import journal: what every import sent and what OCI answered, durable across
//! crashes, restarts and replicas (docs/ARCHITECTURE.md, "The import journal").
//!
//! A record is keyed by the import's `opc-retry-token`, which is derived from the caller,
//! the operation, the endpoint, the target and the caller's idempotency key. Before anything
//! is wrapped, a call claims the record (an insert, or a lease on an unfinished record whose
//! holder went away); before the first send, it commits the exact body bytes; after OCI
//! answers, the state becomes accepted, failed or unknown. Only one call at a time, in any
//! process on any machine sharing the database, holds a record's lease, and a record's body,
//! once committed, never changes: every attempt for one key sends the same bytes under the
//! same token. The body is wrapped for the vault's key: only the vault can open it.
//!
//! Two backends behind [`Backend`]: SQLite (`sqlite.rs`, the default) and PostgreSQL
//! (`postgres.rs`, for replicas), one schema (`schema.rs`: the tables, their versioned
//! migrations, and the one decoder of a record's row). If the journal cannot be written, an
//! import is refused before anything is wrapped or sent.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use zeroize::Zeroizing;

use crate::config::{JournalConfig, JournalStore};

mod postgres;
pub mod schema;
pub(crate) mod seal;
mod sqlite;

pub use seal::RecordKey;
use seal::Sealed;

/// A future a backend returns.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why the journal could not do what was asked. Every one refuses an import that has not
/// been sent yet; none affects WrapKey or listing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// The database cannot be opened, reached or written.
    #[error("the import journal is unavailable: {0}")]
    Unavailable(String),
    /// The lease on a record was lost (another process took it over after it expired).
    #[error("the claim on this import was lost to another call; retry with the same key")]
    LeaseLost,
    /// The key that authenticates records is missing or unusable.
    #[error("the import journal has no record key: {0}")]
    NoKey(String),
    /// A record's MAC does not match what it holds: someone who can write the database
    /// planted or changed it. It is never sent or replayed.
    #[error(
        "the journal record of this import ({token}) failed its integrity check: {why}; it was written or changed by someone without the daemon's record key, so nothing was sent or replayed; the record is kept for an operator (hsm-bridge journal show {token})"
    )]
    Forged { token: String, why: String },
}

/// What a record is about: everything a claim writes.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The `opc-retry-token` (the primary key).
    pub token: String,
    pub caller: String,
    pub idempotency_key: Option<String>,
    pub operation: String,
    /// ImportKeyVersion: the key OCID; ImportKey: the compartment OCID.
    pub target: String,
    pub endpoint: String,
    pub algorithm: String,
    /// SHA-256 of everything asked: a key reused for another request is refused.
    pub digest: [u8; 32],
}

/// Where a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Claimed; no body yet, so nothing was sent.
    Claimed,
    /// The body is committed; it may have been sent.
    Prepared,
    /// OCI created the key version or key.
    Accepted,
    /// OCI refused the import, definitively.
    Failed,
    /// Sent, and OCI's answer was lost.
    Unknown,
}

impl State {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Claimed => "claimed",
            State::Prepared => "prepared",
            State::Accepted => "accepted",
            State::Failed => "failed",
            State::Unknown => "unknown",
        }
    }

    /// The state `s` names, if it names one.
    fn parse(s: &str) -> Option<State> {
        Some(match s {
            "claimed" => State::Claimed,
            "prepared" => State::Prepared,
            "accepted" => State::Accepted,
            "failed" => State::Failed,
            "unknown" => State::Unknown,
            _ => return None,
        })
    }
}

/// How the body was made.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Made {
    pub source_key_label: Option<String>,
    pub source_key_id_hex: Option<String>,
    pub mode: Option<String>,
    pub wrapping_key_sha256: Option<String>,
}

/// OCI's definitive refusal, replayed to a retry.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub status: u16,
    pub code: String,
    pub message: String,
}

/// A record as stored. `body` is read only where it is needed (a re-send).
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub token: String,
    pub caller: String,
    pub idempotency_key: Option<String>,
    pub operation: String,
    pub target: String,
    pub endpoint: String,
    pub algorithm: String,
    pub state: State,
    #[serde(flatten)]
    pub made: Made,
    /// Bytes of the body (never the body itself in listings).
    pub body_bytes: Option<u64>,
    #[serde(skip)]
    pub body: Option<Arc<Zeroizing<Vec<u8>>>>,
    #[serde(skip)]
    pub digest: Vec<u8>,
    pub created_id: Option<String>,
    /// OCI's answer (the key version or key, JSON), for an accepted import.
    #[serde(skip)]
    pub answer: Option<String>,
    pub opc_request_id: Option<String>,
    pub failure: Option<Failure>,
    pub lease_owner: Option<String>,
    /// HMAC-SHA256 of what the record holds (src/journal/seal.rs); `None` in a record
    /// written without one.
    #[serde(skip)]
    pub mac: Option<Vec<u8>>,
    /// Milliseconds since the epoch.
    pub lease_until_ms: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl Record {
    /// When the record was made, RFC 3339.
    pub(crate) fn created_at(&self) -> String {
        rfc3339_ms(self.created_at_ms)
    }
    pub(crate) fn updated_at(&self) -> String {
        rfc3339_ms(self.updated_at_ms)
    }
}

fn rfc3339_ms(ms: i64) -> String {
    crate::time::rfc3339(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

/// What a backend found when asked for a claim. Records come with their body and MAC.
pub enum RawClaim {
    /// A new record, claimed.
    Inserted,
    /// An unfinished record whose lease was free or expired, now claimed.
    Taken(Record),
    /// A record that cannot be claimed now: finished, held, or for another request.
    Held(Record),
}

/// OCI's answer, as the journal records it.
pub enum Outcome {
    Accepted {
        created_id: String,
        answer: String,
        opc_request_id: String,
    },
    Failed {
        failure: Failure,
        opc_request_id: String,
    },
    /// The answer was lost (or OCI asked for a retry): a retry re-sends the same bytes.
    Unknown { opc_request_id: Option<String> },
}

impl Outcome {
    /// What the record holds once this outcome is written, as its MAC covers it.
    fn sealed<'a>(
        &'a self,
        entry: &'a Entry,
        body: Option<&'a [u8]>,
        made: &'a Made,
    ) -> Sealed<'a> {
        let mut s = Sealed::unanswered(entry, State::Unknown, body, made);
        match self {
            Outcome::Accepted {
                created_id,
                answer,
                opc_request_id,
            } => {
                s.state = State::Accepted;
                s.created_id = Some(created_id);
                s.answer = Some(answer);
                s.opc_request_id = Some(opc_request_id);
            }
            Outcome::Failed {
                failure,
                opc_request_id,
            } => {
                s.state = State::Failed;
                s.opc_request_id = Some(opc_request_id);
                s.failure = Some(failure);
            }
            Outcome::Unknown { opc_request_id } => s.opc_request_id = opc_request_id.as_deref(),
        }
        s
    }
}

/// One small interface, two databases. Times are the database's own where it has one to
/// share (PostgreSQL), so replicas' clocks do not decide leases. Every write of what a
/// record holds carries the MAC of the result (src/journal/seal.rs), made above this
/// interface; a backend stores and returns it, and never decides by it.
pub trait Backend: Send + Sync {
    /// Inserts `entry` claimed by `owner` (with `mac`, the MAC of a fresh claimed record),
    /// or takes the lease of its unfinished record if the lease is free or expired and the
    /// request digest matches; else returns the record.
    fn claim<'a>(
        &'a self,
        entry: &'a Entry,
        mac: &'a [u8],
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<RawClaim, JournalError>>;
    /// Commits the body, if `owner` holds the lease and no body was committed before.
    fn prepare<'a>(
        &'a self,
        token: &'a str,
        owner: &'a str,
        body: &'a [u8],
        made: &'a Made,
        mac: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, JournalError>>;
    /// Extends `owner`'s lease; false if it no longer holds it.
    fn renew<'a>(
        &'a self,
        token: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, JournalError>>;
    /// Records OCI's answer and frees the lease. An accepted answer replaces anything; a
    /// failure or an unknown one never replaces an accepted one.
    fn finish<'a>(
        &'a self,
        token: &'a str,
        outcome: &'a Outcome,
        mac: &'a [u8],
    ) -> BoxFuture<'a, Result<(), JournalError>>;
    /// Frees `owner`'s lease; with `delete_unsent`, a record with no body (nothing sent)
    /// is deleted.
    fn release<'a>(
        &'a self,
        token: &'a str,
        owner: &'a str,
        delete_unsent: bool,
    ) -> BoxFuture<'a, Result<(), JournalError>>;
    /// The newest `limit` records (without bodies), newest first; with `unresolved`, only
    /// prepared or unknown ones (sent, or about to be, with no answer recorded).
    fn list(
        &self,
        limit: u32,
        unresolved: bool,
    ) -> BoxFuture<'_, Result<Vec<Record>, JournalError>>;
    /// One record, with its answer; with its body if `with_body`.
    fn get<'a>(
        &'a self,
        token: &'a str,
        with_body: bool,
    ) -> BoxFuture<'a, Result<Option<Record>, JournalError>>;
    /// Deletes records made more than `age` ago whose lease is free or expired.
    fn purge(&self, age: Duration) -> BoxFuture<'_, Result<u64, JournalError>>;
    /// What a refusal of the PIN recorded for the token `token`, if anything.
    fn pin_refusal<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, JournalError>>;
    /// Records (replacing any) that the token `token` refused the PIN: `said` is when and why.
    fn set_pin_refusal<'a>(
        &'a self,
        token: &'a str,
        said: &'a str,
    ) -> BoxFuture<'a, Result<(), JournalError>>;
    /// Removes the record for `token`; what it said, if there was one.
    fn clear_pin_refusal<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, JournalError>>;
}

/// What a claim on an import's record gives the caller.
pub enum Claimed {
    /// Nothing was ever sent under this token: wrap, then [`Lease::prepare`].
    Fresh(Lease),
    /// A body was committed (and maybe sent): send exactly it again.
    Resend(Lease, Record),
    /// OCI accepted it: the recorded answer.
    Accepted(Record),
    /// OCI refused it: the recorded refusal.
    Failed(Record),
    /// Another call, here or on another replica, holds the claim.
    Busy,
    /// The idempotency key was used for a different request.
    Mismatch,
}

/// An import's request, with the MAC of its fresh claim made once for every attempt to
/// claim it.
pub struct Ticket {
    entry: Arc<Entry>,
    mac: [u8; 32],
}

/// The import journal of this process.
pub struct Journal {
    backend: Arc<dyn Backend>,
    /// This process's name in leases: random per process.
    owner: String,
    lease: Duration,
    retention: Duration,
    what: String,
    down: AtomicBool,
    /// What authenticates records; until it is set, imports are refused (listing works).
    key: OnceLock<Arc<RecordKey>>,
}

impl Journal {
    /// The journal `cfg` names. Nothing is opened yet: a database that is down refuses
    /// imports when they come, not the daemon's start. Imports need [`Journal::set_key`]
    /// first.
    pub fn new(cfg: &JournalConfig) -> Result<Arc<Journal>, JournalError> {
        let (backend, what): (Arc<dyn Backend>, String) = match &cfg.store {
            Some(JournalStore::Sqlite(path)) => (
                Arc::new(sqlite::Sqlite::new(path.clone())),
                format!("sqlite:{}", path.display()),
            ),
            Some(JournalStore::Postgres(pg)) => (
                Arc::new(postgres::Postgres::new(
                    (**pg).clone(),
                    cfg.password_file.clone(),
                    cfg.ca_file.clone(),
                )?),
                postgres::describe(pg),
            ),
            None => {
                return Err(JournalError::Unavailable(
                    "journal.url was not parsed".into(),
                ));
            }
        };
        let mut id = [0u8; 8];
        let _ = getrandom::fill(&mut id);
        Ok(Arc::new(Journal {
            backend,
            owner: format!(
                "{}/{}/{}",
                rustix::system::uname().nodename().to_string_lossy(),
                std::process::id(),
                crate::wrap::hex(&id)
            ),
            lease: Duration::from_secs(cfg.lease_secs),
            retention: Duration::from_secs(cfg.retention_hours * 3600),
            what,
            down: AtomicBool::new(false),
            key: OnceLock::new(),
        }))
    }

    /// The journal `cfg` names, for a command that only reads it or clears a record: `None`
    /// for a SQLite journal whose file does not exist yet (a command run by another user,
    /// root say, must not create the daemon's journal; SQLite itself gives the files it
    /// adds to an existing one the database's owner).
    pub(crate) fn if_there(cfg: &JournalConfig) -> Result<Option<Arc<Journal>>, JournalError> {
        match &cfg.store {
            Some(JournalStore::Sqlite(path)) if !path.exists() => Ok(None),
            _ => Journal::new(cfg).map(Some),
        }
    }

    /// The key that authenticates records from now on (once; later calls change nothing).
    pub fn set_key(&self, key: RecordKey) {
        tracing::info!(journal = %self.what, key = %key.describe(), "import journal records are authenticated");
        let _ = self.key.set(Arc::new(key));
    }

    /// The record key `cfg` names: the token's secret key by label (`hsm`), or a secret
    /// file. Fails with the reason, and what to do, when it is missing or unfit.
    pub fn key_from(
        cfg: &JournalConfig,
        hsm: &Arc<crate::hsm::Hsm>,
    ) -> Result<RecordKey, JournalError> {
        match &cfg.mac_key_file {
            Some(path) => RecordKey::file(path),
            None => RecordKey::token(hsm, cfg.mac_key_label()),
        }
    }

    /// The backend itself, below the journal's checks: for the journal's rule tests
    /// (tests/journal_rules.rs), which play a stale holder and a purge of every age with it.
    #[doc(hidden)]
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// Where the journal is (no password).
    pub(crate) fn describe(&self) -> &str {
        &self.what
    }

    /// Notes whether the journal answered: one log line when it goes down, one when it is
    /// back. A record the backend could not read (src/journal/schema.rs `record`) is
    /// counted and logged as a forged one: the journal answered, the record is not used.
    fn health<T>(&self, r: Result<T, JournalError>) -> Result<T, JournalError> {
        crate::metrics::get().journal(!matches!(r, Err(JournalError::Unavailable(_))));
        match &r {
            Err(JournalError::Unavailable(why)) => {
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::error!(journal = %self.what, "the import journal is down; imports are refused until it is back: {why}");
                }
            }
            _ => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::warn!(journal = %self.what, "the import journal is back; imports resume");
                }
            }
        }
        if let Err(JournalError::Forged { token, why }) = &r {
            crate::metrics::get().journal_forged();
            tracing::error!(journal = %self.what, token = %token,
                "a journal record cannot be read ({why}): it is not used; someone who can write the database planted or changed it");
        }
        r
    }

    /// The MAC of `sealed` under the record key.
    async fn mac(&self, sealed: &Sealed<'_>) -> Result<[u8; 32], JournalError> {
        let key = self.key.get().ok_or_else(|| {
            JournalError::NoKey(
                "none was loaded (journal.mac_key_label or journal.mac_key_file)".into(),
            )
        })?;
        key.mac(sealed.encode()).await
    }

    /// Checks a stored record's MAC against what it holds. A record that fails is counted
    /// and logged, and the error says why; nothing in it may be used.
    async fn verify(&self, r: &Record) -> Result<(), JournalError> {
        let why = match seal::entry_of(r) {
            Err(JournalError::Forged { why, .. }) => Some(why),
            Err(e) => return Err(e),
            Ok(entry) => match &r.mac {
                None => Some("it has no MAC".to_string()),
                Some(stored) => {
                    let want = self.mac(&seal::sealed_record(r, &entry)).await?;
                    let same = stored.len() == want.len() && openssl::memcmp::eq(&want, stored);
                    (!same).then(|| "its MAC does not match what it holds".to_string())
                }
            },
        };
        match why {
            None => Ok(()),
            Some(why) => {
                crate::metrics::get().journal_forged();
                tracing::error!(journal = %self.what, token = %r.token, caller = %r.caller,
                    state = %r.state.as_str(), "a journal record failed its integrity check ({why}): it is not used; someone who can write the database planted or changed it");
                Err(JournalError::Forged {
                    token: r.token.clone(),
                    why,
                })
            }
        }
    }

    /// `entry`, ready to be claimed: the MAC of its fresh record is made here, once.
    pub async fn ticket(&self, entry: Entry) -> Result<Ticket, JournalError> {
        let mac = self
            .mac(&Sealed::unanswered(
                &entry,
                State::Claimed,
                None,
                &Made::default(),
            ))
            .await?;
        Ok(Ticket {
            entry: Arc::new(entry),
            mac,
        })
    }

    /// Claims the ticket's record for this call. A record found is used only if its MAC
    /// verifies: otherwise the claim is refused ([`JournalError::Forged`]), and a lease
    /// taken on it is given back without touching the record.
    pub async fn claim(self: &Arc<Self>, t: &Ticket) -> Result<Claimed, JournalError> {
        let raw = self.health(
            self.backend
                .claim(&t.entry, &t.mac, &self.owner, self.lease)
                .await,
        );
        if let Err(JournalError::Forged { .. }) = &raw {
            // A record that cannot be read: a lease the backend took on it is given back.
            self.free_refused(&t.entry.token).await;
        }
        let raw = raw?;
        Ok(match raw {
            RawClaim::Inserted => Claimed::Fresh(self.lease_on(t.entry.clone(), None)),
            RawClaim::Taken(r) => {
                if let Err(e) = self.verify(&r).await {
                    self.free_refused(&r.token).await;
                    return Err(e);
                }
                match r.body.clone() {
                    None => Claimed::Fresh(self.lease_on(t.entry.clone(), None)),
                    Some(body) => {
                        let sent = (body, r.made.clone());
                        Claimed::Resend(self.lease_on(t.entry.clone(), Some(sent)), r)
                    }
                }
            }
            RawClaim::Held(r) if r.digest != t.entry.digest => {
                self.verify(&r).await?;
                Claimed::Mismatch
            }
            RawClaim::Held(r) if matches!(r.state, State::Accepted | State::Failed) => {
                self.verify(&r).await?;
                if r.state == State::Accepted {
                    Claimed::Accepted(r)
                } else {
                    Claimed::Failed(r)
                }
            }
            RawClaim::Held(_) => Claimed::Busy,
        })
    }

    /// Gives back this process's lease on the refused record `token`, if it holds one,
    /// without touching what the record holds.
    async fn free_refused(&self, token: &str) {
        if let Err(free) = self.backend.release(token, &self.owner, false).await {
            tracing::warn!(token = %token, "freeing the claim on a refused record (it expires by itself): {free}");
        }
    }

    /// A lease on `entry`'s record, with the body and its making when one was committed.
    fn lease_on(
        self: &Arc<Self>,
        entry: Arc<Entry>,
        sent: Option<(Arc<Zeroizing<Vec<u8>>>, Made)>,
    ) -> Lease {
        let (journal, token2) = (self.clone(), entry.token.clone());
        // Renewed at a third of its life while the call holds it.
        let heartbeat = tokio::spawn(async move {
            let every = journal.lease / 3;
            loop {
                tokio::time::sleep(every).await;
                match journal
                    .backend
                    .renew(&token2, &journal.owner, journal.lease)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(token = %token2, "an import's claim was taken over after it expired");
                        return;
                    }
                    Err(e) => tracing::warn!(token = %token2, "renewing an import's claim: {e}"),
                }
            }
        });
        let (body, made) = match sent {
            Some((b, m)) => (Some(b), m),
            None => (None, Made::default()),
        };
        Lease {
            journal: self.clone(),
            entry,
            body,
            made,
            heartbeat,
            finished: false,
        }
    }

    /// The newest records.
    pub async fn list(&self, limit: u32) -> Result<Vec<Record>, JournalError> {
        self.health(self.backend.list(limit, false).await)
    }

    /// Records left prepared or unknown: by a crash, or in flight right now (here or on
    /// another replica; `lease_owner` says which). A caller's retry resolves them.
    pub async fn unresolved(&self) -> Result<Vec<Record>, JournalError> {
        self.health(self.backend.list(1000, true).await)
    }

    pub async fn get(&self, token: &str) -> Result<Option<Record>, JournalError> {
        self.health(self.backend.get(token, false).await)
    }

    /// One record, if it passes its integrity check (its MAC, which covers the body, is the
    /// record key's); returned without its body.
    pub(crate) async fn get_verified(&self, token: &str) -> Result<Option<Record>, JournalError> {
        let Some(mut r) = self.health(self.backend.get(token, true).await)? else {
            return Ok(None);
        };
        self.verify(&r).await?;
        r.body = None;
        Ok(Some(r))
    }

    /// Deletes records older than `journal.retention_hours`.
    pub async fn purge(&self) -> Result<u64, JournalError> {
        self.health(self.backend.purge(self.retention).await)
    }

    /// The start-up report: one line listing the records a crash left unresolved, and
    /// the purge of expired ones. Failures are logged: the daemon starts anyway.
    pub(crate) async fn report_at_start(&self) {
        match self.purge().await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(journal = %self.what, purged = n, "expired import records purged")
            }
            Err(e) => tracing::error!("{e}"),
        }
        match self.unresolved().await {
            Ok(r) if r.is_empty() => {
                tracing::info!(journal = %self.what, "import journal open; no unresolved imports")
            }
            Ok(r) => {
                let list: Vec<String> = r
                    .iter()
                    .map(|r| {
                        format!(
                            "{} ({} {} by {}, key {}, {})",
                            r.token,
                            r.operation,
                            r.target,
                            r.caller,
                            r.idempotency_key.as_deref().unwrap_or("-"),
                            r.state.as_str()
                        )
                    })
                    .collect();
                tracing::warn!(
                    journal = %self.what,
                    count = r.len(),
                    "imports left unresolved by a crash (sent or about to be, answer unknown); a retry with the same idempotency_key resolves each: {}",
                    list.join("; ")
                );
            }
            Err(e) => tracing::error!("{e}"),
        }
    }

    /// Purges expired records every hour, for as long as the process runs.
    pub(crate) fn spawn_purge(self: &Arc<Self>) {
        let journal = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                if let Err(e) = journal.purge().await {
                    tracing::error!("{e}");
                }
            }
        });
    }
}

/// Refused PINs, shared by every replica of the journal (a table of their own: one row per
/// token label, when and why, never the PIN). The HSM layer asks from wherever it logs in
/// (at start, before any runtime; or on a worker thread), so each question runs to its end
/// on a thread and a runtime of its own.
impl crate::hsm::SharedRefusal for Journal {
    fn get(&self, token: &str) -> Result<Option<String>, String> {
        blocking(self.backend.pin_refusal(token)).map_err(|e| e.to_string())
    }

    fn set(&self, token: &str, said: &str) -> Result<(), String> {
        blocking(self.backend.set_pin_refusal(token, said)).map_err(|e| e.to_string())
    }

    fn describe(&self) -> String {
        format!("the import journal ({})", self.what)
    }
}

impl Journal {
    /// Removes the record of a refused PIN for `token` (`hsm-bridge pin-reset`); what it
    /// said, if there was one.
    pub(crate) fn clear_pin_refusal(&self, token: &str) -> Result<Option<String>, JournalError> {
        blocking(self.backend.clear_pin_refusal(token))
    }
}

/// Runs `work` to its end on a thread of its own, in a runtime of its own.
fn blocking<T: Send>(work: BoxFuture<'_, Result<T, JournalError>>) -> Result<T, JournalError> {
    std::thread::scope(|s| {
        s.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| JournalError::Unavailable(format!("a runtime: {e}")))?;
            rt.block_on(work)
        })
        .join()
        .unwrap_or_else(|_| {
            Err(JournalError::Unavailable(
                "the journal's thread failed".into(),
            ))
        })
    })
}

/// This call's claim on a record. Renewed while held; dropped without [`Lease::finish`]
/// (the wrap failed, or the call gave up before sending), it is freed, and a record with
/// no body is deleted. It knows what the record holds, to make the MAC of each write.
pub struct Lease {
    journal: Arc<Journal>,
    entry: Arc<Entry>,
    /// The committed body, once there is one.
    body: Option<Arc<Zeroizing<Vec<u8>>>>,
    made: Made,
    heartbeat: tokio::task::JoinHandle<()>,
    finished: bool,
}

impl Lease {
    /// Commits the body before its first send.
    pub async fn prepare(
        &mut self,
        body: Arc<Zeroizing<Vec<u8>>>,
        made: &Made,
    ) -> Result<(), JournalError> {
        let j = &self.journal;
        let mac = j
            .mac(&Sealed::unanswered(
                &self.entry,
                State::Prepared,
                Some(body.as_slice()),
                made,
            ))
            .await?;
        let token = &self.entry.token;
        match j.health(j.backend.prepare(token, &j.owner, &body, made, &mac).await)? {
            true => {
                self.body = Some(body);
                self.made = made.clone();
                Ok(())
            }
            false => Err(JournalError::LeaseLost),
        }
    }

    /// Records OCI's answer; a failure to write it is logged (the answer still reaches the
    /// caller, and a retry re-sends the same bytes, which OCI answers the same way).
    pub async fn finish(mut self, outcome: &Outcome) {
        self.heartbeat.abort();
        let j = self.journal.clone();
        let token = &self.entry.token;
        let body = self.body.as_deref().map(|b| b.as_slice());
        let written = match j.mac(&outcome.sealed(&self.entry, body, &self.made)).await {
            Ok(mac) => j.health(j.backend.finish(token, outcome, &mac).await),
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => self.finished = true,
            Err(e) => {
                tracing::error!(token = %token, "OCI's answer could not be recorded: {e}")
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.heartbeat.abort();
        if self.finished {
            return;
        }
        let (journal, token) = (self.journal.clone(), self.entry.token.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = journal.backend.release(&token, &journal.owner, true).await {
                    tracing::warn!(%token, "freeing an import's claim (it expires by itself): {e}");
                }
            });
        }
    }
}

/// Milliseconds since the epoch, by this machine's clock.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests;
