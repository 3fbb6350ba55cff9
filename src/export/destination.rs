//! Where an import goes: the seam between the export core and a cloud. A destination
//! gives the wrapping key its import needs, builds the body around the wrapped key, sends it
//! exactly once per journal token, finds the result of an import whose answer was lost, and
//! polls what it made until it is usable. OCI (src/export/oci.rs) and AWS KMS
//! (src/export/aws.rs) implement it; a new cloud is a module that implements this, and one
//! registration where the daemon and the command line turn requests into destinations
//! (src/export/to.rs; docs/ARCHITECTURE.md, "Adding a cloud").

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use super::{Caller, ExportError};
use crate::audit::{Progress, Record};
use crate::hsm::Wrapped;
use crate::journal::Journal;
use crate::oci::kms::{Answer, KmsError};
use crate::wrap::WrappingKey;

/// A cloud's side of one import.
pub(crate) trait Destination: Send + Sync + 'static {
    /// What the cloud answers an import with (OCI: the key version, or the key), as the
    /// journal records it for a retry.
    type Answer: Serialize + DeserializeOwned + Send + 'static;

    /// The journal this destination's imports are recorded in.
    fn journal(&self) -> &Arc<Journal>;

    /// Where the import goes (the endpoint), as the journal and the idempotency scope name it.
    fn endpoint(&self) -> &str;

    /// What the import names there (a key, or where a new key goes).
    fn target(&self) -> &str;

    /// What else the request asks, as stable text: bound to the idempotency key, so that the
    /// same key with other details is refused.
    fn details(&self) -> String;

    /// The destination's checks before anything is wrapped: the caller may reach it, and
    /// what it names may receive the key (OCI: the key's protection mode and compartment).
    /// What it learns goes into `rec`.
    fn admit(
        &self,
        caller: &Caller,
        rec: &mut Record,
    ) -> impl Future<Output = Result<(), ExportError>> + Send;

    /// The wrapping key for this import (OCI: the vault's; AWS: one handed out for this
    /// import alone), noted in `progress`. `token` is the journal's token for the import,
    /// for a destination that leaves a mark with what it makes.
    fn wrapping_key(
        &self,
        token: &str,
        progress: &mut Progress,
    ) -> impl Future<Output = Result<Arc<WrappingKey>, ExportError>> + Send;

    /// The import call's body around the wrapped key (what the journal records and
    /// [`Self::send`] sends), for the import under `token`.
    fn body(&self, token: &str, wrapped: &Wrapped) -> Result<Vec<u8>, ExportError>;

    /// The result of an earlier send of `body` under `token` whose answer was lost, if the
    /// cloud can tell (a cloud without a retry token leaves a mark to find), finishing what
    /// that send left undone; `None` to send the recorded bytes again. OCI's retry token
    /// makes a second send safe, so OCI says `None`.
    fn find_lost(
        &self,
        token: &str,
        body: &[u8],
    ) -> impl Future<Output = Result<Option<Answer<Self::Answer>>, KmsError>> + Send;

    /// Sends `body` under `token`: the cloud imports once however often one token is sent.
    fn send(
        &self,
        body: Arc<Zeroizing<Vec<u8>>>,
        token: String,
    ) -> impl Future<Output = Result<Answer<Self::Answer>, KmsError>> + Send;

    /// The id of what an answer says was made.
    fn created_id(answer: &Self::Answer) -> &str;

    /// Notes in the audit record what the import made, where the destination names it
    /// apart from the export's own fields (OCI's ImportKey: the new key is the record's
    /// key). Called whether or not the import succeeded; `created` is the id made, if any.
    fn record_made(&self, _rec: &mut Record, _created: Option<&str>) {}

    /// Waits until what `answer` made is usable (OCI: `ENABLED`), at most until `deadline`.
    fn poll(
        &self,
        answer: Self::Answer,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<Self::Answer, ExportError>> + Send;
}

/// The mark an import leaves where its cloud has no retry token (AWS: new material's
/// `KeyMaterialDescription`; Azure: the version's `hsm-bridge-request` tag): the journal
/// token and a nonce of this wrap (recorded in the body, which the journal MACs), so that an
/// idempotency key reused after its record expired never finds an earlier import's.
pub(super) fn mark(token: &str) -> Result<String, ExportError> {
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce)
        .map_err(|e| ExportError::Body(format!("no random bytes for the import's mark: {e}")))?;
    Ok(format!("hsm-bridge {token} {}", crate::wrap::hex(&nonce)))
}

/// A modulus as hex, without leading zero bytes (PKCS#11 and OpenSSL may differ there): what
/// a retry compares a cloud's public key with.
pub(super) fn modulus_hex(n: &[u8]) -> String {
    let first = n.iter().position(|b| *b != 0).unwrap_or(n.len());
    crate::wrap::hex(&n[first..])
}

/// An import body as the journal recorded it (`op` names the call it is for).
pub(super) fn recorded<T: DeserializeOwned>(op: &'static str, bytes: &[u8]) -> Result<T, KmsError> {
    serde_json::from_slice(bytes).map_err(|e| KmsError::Local {
        op,
        why: format!("the recorded import cannot be read: {e}"),
    })
}

/// A base64 member of a recorded import body.
pub(super) fn unbase64(op: &'static str, s: &str) -> Result<Vec<u8>, KmsError> {
    openssl::base64::decode_block(s).map_err(|_| KmsError::Local {
        op,
        why: "the recorded import is not base64".into(),
    })
}

/// How long a search for a lost answer's import waits before it looks a second time and
/// says none was made: a send cut off by a timeout, or by a crash, may be landing still.
pub(super) const LOST_SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// What `look` finds, and if it finds nothing, what it finds once more after
/// [`LOST_SETTLE`]: the search for what a send whose answer was lost made, in a cloud that
/// makes something new on every call that lands (Azure, Google Cloud KMS).
pub(super) async fn looked_for_twice<T, F>(look: impl Fn() -> F) -> Result<Option<T>, KmsError>
where
    F: Future<Output = Result<Option<T>, KmsError>>,
{
    if let Some(found) = look().await? {
        return Ok(Some(found));
    }
    tokio::time::sleep(LOST_SETTLE).await;
    look().await
}

/// Whether a cloud's error answer to an import refuses it for good, so that nothing it
/// made need be looked for: a 4xx but authentication (401, 403), a timeout (408), a
/// conflict (409), throttling (429) and a cancelled call (499).
pub(super) fn refused_for_good(e: &KmsError) -> bool {
    matches!(e, KmsError::Service { status, .. }
        if (400..500).contains(status) && !matches!(status, 401 | 403 | 408 | 409 | 429 | 499))
}
