//! An import into a destination the config names (`[destinations.NAME]`), for the gRPC
//! `Import` and `hsm-bridge import` alike: the destination by name, the source key's shape
//! from the token (the key found and allowed to leave, before any cloud is called), the
//! format (the caller's, or the cloud's for that shape; either must take the key), then the
//! export core's import into the cloud's destination (src/export/aws.rs).

use std::sync::Arc;

use super::aws::{self, AwsImport, Imported, Target};
use super::{Caller, ExportError, Exporter, ImportAsk, KeyAdmitted};
use crate::audit::{Attempt, bounded};
use crate::aws::{AwsSide, Kms};
use crate::wrap::{Cloud, Format, KeyShape};

/// What an import into a destination asks, beyond the key and the journal's terms.
pub(crate) struct ImportTo<'a> {
    pub destination: &'a str,
    /// The cloud's key; empty with `create`.
    pub target: &'a str,
    /// A new key, with this key usage ("" for the shape's default).
    pub create: Option<&'a str>,
    /// A format name; "" for the cloud's format for the key's shape.
    pub format: &'a str,
    /// When the material expires (seconds since 1970); `None`: never.
    pub valid_to: Option<i64>,
}

/// What an import into a destination made.
#[derive(Debug, Clone)]
pub(crate) struct Made {
    pub cloud: &'static str,
    pub destination: String,
    pub key_id: String,
    pub version_id: String,
    pub state: String,
    pub version_state: String,
    pub time_created: String,
    pub created_key: bool,
    pub format: &'static str,
}

impl Exporter {
    /// Imports the admitted key into the destination `to` names.
    pub(crate) async fn import_to(
        &self,
        destinations: &Arc<AwsSide>,
        admitted: KeyAdmitted,
        to: ImportTo<'_>,
        ask: ImportAsk<'_>,
        attempt: &mut Attempt,
    ) -> Result<Made, ExportError> {
        let checked = self
            .check_import_to(destinations, admitted, to, ask, attempt)
            .await?;
        let made = self
            .import(&checked.export, Arc::new(checked.dest), ask, attempt)
            .await?;
        Ok(Made::aws(
            &checked.kms,
            made,
            checked.export.format,
            attempt,
        ))
    }

    /// Everything [`Self::import_to`] checks before the import itself, without calling the
    /// cloud or wrapping: the grant, the destination, the target, the source key (found,
    /// allowed to leave), the format for its shape, the cloud's rules for that shape, and
    /// whether the token can wrap in that format. What the import would be.
    pub(crate) async fn check_import_to(
        &self,
        destinations: &Arc<AwsSide>,
        admitted: KeyAdmitted,
        to: ImportTo<'_>,
        ask: ImportAsk<'_>,
        attempt: &mut Attempt,
    ) -> Result<Checked, ExportError> {
        let kms = destination(
            destinations,
            &admitted.admission.caller,
            to.destination,
            attempt,
        )?;
        let target = match (to.create, to.target) {
            (Some(_), t) if !t.is_empty() => {
                return Err(ExportError::invalid(
                    "give a target key or create a new key, not both",
                ));
            }
            (None, "") => {
                return Err(ExportError::invalid(
                    "target is required (the key ARN or id), or ask for a new key",
                ));
            }
            (Some(usage), _) => Target::New {
                usage: usage.to_string(),
            },
            (None, t) => Target::Key(t.to_string()),
        };
        let shape = self.shape(&admitted, ask.deadline).await?;
        let format = format_for(to.format, shape, &kms)?;
        let target = match target {
            Target::New { usage } if usage.is_empty() => Target::New {
                usage: aws::default_usage(shape).to_string(),
            },
            t => t,
        };
        let export = admitted.format(format, attempt.record());
        let dest = AwsImport::new(
            destinations.clone(),
            kms.clone(),
            target,
            (shape, format),
            to.valid_to,
            ask.deadline,
        )?;
        // The token can wrap in it (the self-test's finding): else refused here, before a
        // key is created or parameters are asked for.
        self.hsm.token().mode_for(format)?;
        Ok(Checked { export, dest, kms })
    }
}

/// An import into a destination that passed every check made before the cloud is called.
pub(crate) struct Checked {
    export: super::Export,
    dest: AwsImport,
    kms: Arc<Kms>,
}

/// The destination `name`, for `caller` (granted it first: a caller learns nothing of
/// destinations it may not use), noted in `attempt`'s record.
pub(super) fn destination(
    destinations: &AwsSide,
    caller: &Caller,
    name: &str,
    attempt: &mut Attempt,
) -> Result<Arc<Kms>, ExportError> {
    attempt.record().destination = Some(bounded(name, 64));
    aws::granted(caller, name)?;
    let kms = destinations.get(name).cloned().ok_or_else(|| {
        ExportError::not_configured(format!(
            "no destination {:?} in the daemon's [destinations]",
            bounded(name, 64),
        ))
    })?;
    attempt.record().cloud = Some(Cloud::Aws.as_str());
    Ok(kms)
}

/// The format `name` names (for `kms`'s cloud), or the cloud's for a key of `shape`.
pub(super) fn format_for(
    name: &str,
    shape: KeyShape,
    kms: &Kms,
) -> Result<&'static Format, ExportError> {
    let format = match name {
        "" => aws::default_format(shape),
        f => Format::parse(f).map_err(|e| ExportError::invalid(e.to_string()))?,
    };
    if format.cloud != Cloud::Aws {
        return Err(ExportError::invalid(format!(
            "format {} is not AWS's; destination {} is AWS KMS",
            format.name, kms.name
        )));
    }
    Ok(format)
}

impl Made {
    /// What an import into AWS destination `kms` made, noted in `attempt`'s record.
    pub(super) fn aws(
        kms: &Kms,
        made: Imported,
        format: &'static Format,
        attempt: &mut Attempt,
    ) -> Made {
        attempt.record().cloud_key_id = Some(made.key_arn.clone());
        Made {
            cloud: Cloud::Aws.as_str(),
            destination: kms.name.clone(),
            key_id: made.key_arn,
            version_id: made.key_material_id,
            state: made.key_state,
            version_state: made.material_state,
            time_created: made.key_created,
            created_key: made.created_key,
            format: format.name,
        }
    }
}
