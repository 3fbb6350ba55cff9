//! An import into a destination the config names (`[destinations.NAME]`), for the gRPC
//! `Import` and `hsm-bridge import` alike: the destination by name, the source key's shape
//! from the token (the key found and allowed to leave, before any cloud is called), the
//! format (the caller's, or the cloud's for that shape; either must take the key), then the
//! export core's import into the cloud's destination (src/export/aws.rs).

use std::sync::Arc;

use super::aws::{self, AwsImport, Target};
use super::{ExportError, Exporter, ImportAsk, KeyAdmitted};
use crate::audit::{Attempt, bounded};
use crate::aws::AwsSide;
use crate::wrap::{Cloud, Format};

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
        attempt.record().destination = Some(bounded(to.destination, 64));
        // The grant first: a caller learns nothing of destinations it may not use.
        aws::granted(&admitted.admission.caller, to.destination)?;
        let kms = destinations.get(to.destination).cloned().ok_or_else(|| {
            ExportError::not_configured(format!(
                "no destination {:?} in the daemon's [destinations]",
                bounded(to.destination, 64),
            ))
        })?;
        attempt.record().cloud = Some(Cloud::Aws.as_str());
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
        let format = match to.format {
            "" => aws::default_format(shape),
            f => Format::parse(f).map_err(|e| ExportError::invalid(e.to_string()))?,
        };
        if format.cloud != Cloud::Aws {
            return Err(ExportError::invalid(format!(
                "format {} is not AWS's; destination {} is AWS KMS",
                format.name, kms.name
            )));
        }
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
        let made = self.import(&export, Arc::new(dest), ask, attempt).await?;
        attempt.record().cloud_key_id = Some(made.key_arn.clone());
        Ok(Made {
            cloud: Cloud::Aws.as_str(),
            destination: kms.name.clone(),
            key_id: made.key_arn,
            version_id: made.key_material_id,
            state: made.key_state,
            version_state: made.material_state,
            time_created: made.key_created,
            created_key: made.created_key,
            format: format.name,
        })
    }
}
