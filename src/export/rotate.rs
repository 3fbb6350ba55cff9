//! A rotation (gRPC `RotateKey`, `hsm-bridge rotate`): new material generated inside the
//! HSM and imported as a destination key's new version, as one journaled unit. The new
//! key's CKA_ID is derived from the request's journal token (src/hsm/generate.rs), and the
//! export names the key by that id: the journal's claim comes first, the key is made (or an
//! earlier attempt's found) after it, then the wrap and the body's commit, then the send.
//! A crash before the key is made leaves nothing; after it, the retry finds the key by its
//! id and imports it; after the body's commit, the retry is any import's retry (the
//! recorded bytes, or the destination's own record of what landed). Never two HSM keys,
//! never two versions for one request.
//!
//! A rotation needs an idempotency key: without one, a retry after a lost answer could
//! only be a second rotation.

use std::sync::Arc;

use super::aws::{AwsImport, Target};
use super::to::{Made, destination, format_for};
use super::{Caller, Export, ExportError, Exporter, ImportAsk, scope_of};
use crate::audit::{Attempt, Operation};
use crate::clouds::Clouds;
use crate::hsm::{KeyRef, NewKey, check_base, rotation_id};
use crate::wrap::{KeyAlgorithm, KeyShape};

/// What a rotation asks.
pub(crate) struct RotateTo<'a> {
    pub destination: &'a str,
    /// The cloud's key that gets the new version.
    pub target: &'a str,
    /// The new HSM key is labelled `BASE-N`.
    pub base: &'a str,
    /// A format name; "" for the cloud's format for the key's shape.
    pub format: &'a str,
}

/// What a rotation made: the HSM key and the destination's new version.
pub(crate) struct Rotated {
    pub made: Made,
    pub label: String,
    pub id_hex: String,
    /// Whether this call generated the key (`false`: an earlier attempt of the request did).
    pub generated: bool,
}

/// The shape of the key a rotation makes for an AWS destination: KMS takes new material
/// only for symmetric keys, AES-256.
const AWS_ROTATION_SHAPE: KeyShape = KeyShape {
    algorithm: KeyAlgorithm::Aes,
    length: 32,
};

impl Exporter {
    /// Rotates `to.target` in `to.destination` for `caller`: every check an import makes
    /// (the operation, the destination's grant, the key at the cloud, the format on this
    /// token) before anything is generated, then the import of a key made in the HSM.
    pub(crate) async fn rotate_to(
        &self,
        destinations: &Arc<Clouds>,
        caller: Caller,
        to: RotateTo<'_>,
        ask: ImportAsk<'_>,
        attempt: &mut Attempt,
    ) -> Result<Rotated, ExportError> {
        let admission = Export::admit(caller, Operation::RotateKey)?;
        check_base(to.base).map_err(ExportError::invalid)?;
        let Some(idem) = ask.idempotency_key else {
            return Err(ExportError::invalid(
                "a rotation needs an idempotency_key: a retry after a lost answer or a crash must name the same request, or it would generate a second key",
            ));
        };
        let caller = admission.caller.clone();
        // The label's first form, checked before the cloud is called; the label itself is
        // checked again when the key is made.
        let first = format!("{}-1", to.base);
        if !caller.may_touch(&first) {
            return Err(ExportError::Hsm(caller.may_not_touch(&first).into()));
        }
        if !self.hsm.token().exportable_label(&first) {
            return Err(ExportError::denied(format!(
                "a key labelled {first:?} matches no pattern in policy.exportable: a key made for export under base {:?} could not leave; nothing was generated",
                to.base
            )));
        }
        let kms = destination(destinations, &caller, to.destination, attempt)?;
        if to.target.is_empty() {
            return Err(ExportError::invalid(
                "target is required: the key ARN or id whose new version the rotation makes",
            ));
        }
        let shape = AWS_ROTATION_SHAPE;
        let format = format_for(to.format, shape, &kms)?;
        let dest = AwsImport::new(
            destinations.clone(),
            kms.clone(),
            Target::Key(to.target.to_string()),
            (shape, format),
            None,
            ask.deadline,
        )?;
        self.hsm.token().mode_for(format)?;
        // The key is named by the id its request derives: the journal token's scope is the
        // caller, the operation, the endpoint and the target.
        let token = crate::oci::kms::retry_token(
            Some(idem),
            &scope_of(&caller, Operation::RotateKey, &dest),
        );
        let id = rotation_id(&token, to.base);
        let mut export = admission
            .key(KeyRef::Id(id.clone()), attempt.record())?
            .format(format, attempt.record());
        export.make = Some(Arc::new(NewKey {
            base: to.base.to_string(),
            id,
            shape,
        }));
        let made = self.import(&export, Arc::new(dest), ask, attempt).await?;
        let made = Made::aws(&kms, made, format, attempt);
        let p = &attempt.record().export;
        Ok(Rotated {
            made,
            label: p.label.clone().unwrap_or_default(),
            id_hex: p.id_hex.clone().unwrap_or_default(),
            generated: p.generated.unwrap_or(false),
        })
    }
}
