//! What the import flow keeps between calls: the bytes sent for each idempotency key (24
//! hours, bounded in number and bytes) and the claim a call holds on a key while it wraps
//! and sends. Never key material in clear: the bodies are wrapped for the vault's key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use zeroize::Zeroizing;

use super::{ImportError, OciSide};

/// How long a sent import body is kept for the caller's retries (OCI's retry-token life).
const REPLAY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Most bodies kept, and most bytes of them.
const REPLAY_MAX: usize = 10_000;
const REPLAY_MAX_BYTES: usize = 64 * 1024 * 1024;

/// An import body and how it was made (vault key, mode, source key).
#[derive(Clone)]
pub(super) struct Sent {
    pub(super) body: Arc<Zeroizing<Vec<u8>>>,
    pub(super) made: super::Progress,
}

/// A body sent for an idempotency key, kept for the caller's retries.
struct Kept {
    /// SHA-256 of what was asked (source key, algorithm, target, details), to refuse a key
    /// reused for another request. A digest: the request's fields are not kept twice.
    request: [u8; 32],
    at: Instant,
    sent: Sent,
}

enum Slot {
    /// A call holds the claim; waiters see the channel close when it lets go.
    InFlight(watch::Receiver<()>),
    Kept(Kept),
}

#[derive(Default)]
pub(super) struct Store {
    slots: HashMap<String, Slot>,
    /// Body bytes of the kept entries.
    bytes: usize,
}

impl Store {
    /// Makes room for one more body of `len` bytes: expired entries go first, then the
    /// oldest, until both bounds hold. Claims in flight are never evicted.
    fn make_room(&mut self, len: usize) {
        let full = |s: &Store| s.slots.len() >= REPLAY_MAX || s.bytes + len > REPLAY_MAX_BYTES;
        if !full(self) {
            return;
        }
        let mut freed = 0;
        self.slots.retain(|_, slot| match slot {
            Slot::Kept(k) if k.at.elapsed() >= REPLAY_TTL => {
                freed += k.sent.body.len();
                false
            }
            _ => true,
        });
        self.bytes -= freed;
        while full(self) {
            let oldest = self
                .slots
                .iter()
                .filter_map(|(t, s)| match s {
                    Slot::Kept(k) => Some((k.at, t.clone())),
                    Slot::InFlight(_) => None,
                })
                .min();
            let Some((_, token)) = oldest else { return };
            if let Some(Slot::Kept(k)) = self.slots.remove(&token) {
                self.bytes -= k.sent.body.len();
            }
        }
    }
}

impl OciSide {
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a call with `token` for `request` does next.
    pub(super) fn claim(
        self: &Arc<Self>,
        token: &str,
        request: [u8; 32],
    ) -> Result<Claim, ImportError> {
        let mut store = self.lock();
        match store.slots.get(token) {
            Some(Slot::Kept(k)) if k.at.elapsed() < REPLAY_TTL => {
                if k.request != request {
                    return Err(ImportError::invalid(
                        "idempotency_key was already used for a different request (source key, algorithm, target or details); use a new key",
                    ));
                }
                return Ok(Claim::Replay(k.sent.clone()));
            }
            Some(Slot::InFlight(rx)) => return Ok(Claim::Wait(rx.clone())),
            _ => {}
        }
        let (tx, rx) = watch::channel(());
        if let Some(Slot::Kept(old)) = store.slots.insert(token.to_string(), Slot::InFlight(rx)) {
            store.bytes -= old.sent.body.len();
        }
        Ok(Claim::Mine(ClaimGuard {
            oci: self.clone(),
            token: token.to_string(),
            request,
            sent: None,
            _release: tx,
        }))
    }
}

pub(super) enum Claim {
    /// Bytes sent before for this key: re-send them.
    Replay(Sent),
    /// Another call holds the claim.
    Wait(watch::Receiver<()>),
    /// This call holds it.
    Mine(ClaimGuard),
}

/// A call's claim on an idempotency key. Dropped after OCI answered (or when the call
/// gives up): what was sent is kept for retries, and waiting calls go on.
pub struct ClaimGuard {
    oci: Arc<OciSide>,
    token: String,
    request: [u8; 32],
    pub(super) sent: Option<Sent>,
    /// Dropped last: waiters wake once the slot says what happened.
    _release: watch::Sender<()>,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let mut store = self.oci.lock();
        store.slots.remove(&self.token);
        if let Some(sent) = self.sent.take() {
            store.make_room(sent.body.len());
            store.bytes += sent.body.len();
            store.slots.insert(
                std::mem::take(&mut self.token),
                Slot::Kept(Kept {
                    request: self.request,
                    at: Instant::now(),
                    sent,
                }),
            );
        }
    }
}
