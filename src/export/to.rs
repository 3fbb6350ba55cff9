//! An import into a destination the config names (`[destinations.NAME]`), for the gRPC
//! `Import` and `hsm-bridge import` alike: the destination by name, the source key's shape
//! from the token (the key found and allowed to leave, before any cloud is called), the
//! format (the caller's, or the cloud's for that shape; either must take the key), then the
//! export core's import into the cloud's destination (src/export/aws.rs,
//! src/export/azure.rs, src/export/gcp.rs).

use std::sync::Arc;

use super::aws::{self, AwsImport, Imported, Target};
use super::azure::{self as az, AzureImport};
use super::gcp::{self as gc, GcpImport};
use super::{Caller, ExportError, Exporter, ImportAsk, KeyAdmitted};
use crate::audit::{Attempt, bounded};
use crate::aws::Kms;
use crate::azure::Vault;
use crate::clouds::{Clouds, Dest};
use crate::gcp::KeyRing;
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
    /// When the material expires (seconds since 1970); `None`: never. (AWS)
    pub valid_to: Option<i64>,
    /// The key operations of what the import makes; empty: the key type's. (Azure)
    pub key_ops: &'a [String],
    /// Make the destination's key-exchange key if it has none, where the destination
    /// allows it. (Azure)
    pub create_kek: bool,
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
        destinations: &Arc<Clouds>,
        admitted: KeyAdmitted,
        to: ImportTo<'_>,
        ask: ImportAsk<'_>,
        attempt: &mut Attempt,
    ) -> Result<Made, ExportError> {
        let checked = self
            .check_import_to(destinations, admitted, to, ask, attempt)
            .await?;
        let format = checked.export.format;
        match checked.dest {
            CheckedDest::Aws(dest, kms) => {
                let made = self
                    .import(&checked.export, Arc::new(dest), ask, attempt)
                    .await?;
                Ok(Made::aws(&kms, made, format, attempt))
            }
            CheckedDest::Azure(dest, vault) => {
                let made = self
                    .import(&checked.export, Arc::new(dest), ask, attempt)
                    .await?;
                Ok(Made::azure(&vault, made, format, attempt))
            }
            CheckedDest::Gcp(dest, ring) => {
                let made = self
                    .import(&checked.export, Arc::new(dest), ask, attempt)
                    .await?;
                Ok(Made::gcp(&ring, made, format, attempt))
            }
        }
    }

    /// Everything [`Self::import_to`] checks before the import itself, without calling the
    /// cloud or wrapping: the grant, the destination, the target, the source key (found,
    /// allowed to leave), the format for its shape, the cloud's rules for that shape, and
    /// whether the token can wrap in that format. What the import would be.
    pub(crate) async fn check_import_to(
        &self,
        destinations: &Arc<Clouds>,
        admitted: KeyAdmitted,
        to: ImportTo<'_>,
        ask: ImportAsk<'_>,
        attempt: &mut Attempt,
    ) -> Result<Checked, ExportError> {
        let dest = destination_of(
            destinations,
            &admitted.admission.caller,
            to.destination,
            attempt,
        )?;
        let kms = match dest {
            Dest::Aws(kms) => kms.clone(),
            Dest::Azure(vault) => {
                let vault = vault.clone();
                return self
                    .check_azure(destinations, vault, admitted, to, ask, attempt)
                    .await;
            }
            Dest::Gcp(ring) => {
                let ring = ring.clone();
                return self
                    .check_gcp(destinations, ring, admitted, to, ask, attempt)
                    .await;
            }
        };
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
        Ok(Checked {
            export,
            dest: CheckedDest::Aws(dest, kms),
        })
    }

    /// [`Self::check_import_to`] for an Azure destination: the key name, the source key's
    /// shape against the vault's kind (AES only into a Managed HSM), `azure:byok`, the key
    /// operations, the token's mode for the format.
    async fn check_azure(
        &self,
        destinations: &Arc<Clouds>,
        vault: Arc<Vault>,
        admitted: KeyAdmitted,
        to: ImportTo<'_>,
        ask: ImportAsk<'_>,
        attempt: &mut Attempt,
    ) -> Result<Checked, ExportError> {
        if to.target.is_empty() {
            return Err(ExportError::invalid(
                "target is required: the Key Vault key's name (a new version of it, or with create a new key of that name)",
            ));
        }
        if to.valid_to.is_some() {
            return Err(ExportError::invalid(
                "valid_to is AWS's; an Azure key's expiry is not set by an import",
            ));
        }
        if to.create.is_some_and(|u| !u.is_empty()) {
            return Err(ExportError::invalid(
                "key_usage is AWS's; give an Azure key's operations as key_ops",
            ));
        }
        let shape = self.shape(&admitted, ask.deadline).await?;
        let format = match to.format {
            "" => az::default_format(),
            f => Format::parse(f).map_err(|e| ExportError::invalid(e.to_string()))?,
        };
        if format.cloud != Cloud::Azure {
            return Err(ExportError::invalid(format!(
                "format {} is not Azure's; destination {} is {} (azure:byok)",
                format.name,
                vault.name,
                vault.kind.describe()
            )));
        }
        let export = admitted.format(format, attempt.record());
        let dest = AzureImport::new(
            destinations.clone(),
            vault.clone(),
            (to.target, to.create.is_some(), to.create_kek),
            (shape, format),
            to.key_ops,
            self.hsm.token().generator(),
            ask.deadline,
        )?;
        self.hsm.token().mode_for(format)?;
        Ok(Checked {
            export,
            dest: CheckedDest::Azure(dest, vault),
        })
    }
}

impl Exporter {
    /// [`Self::check_import_to`] for a Google Cloud KMS destination: the key (its id or
    /// resource name in the key ring), the purpose of a new key, the format (the
    /// destination's import method; a caller may name it, no other), the token's mode for
    /// it.
    async fn check_gcp(
        &self,
        destinations: &Arc<Clouds>,
        ring: Arc<KeyRing>,
        admitted: KeyAdmitted,
        to: ImportTo<'_>,
        ask: ImportAsk<'_>,
        attempt: &mut Attempt,
    ) -> Result<Checked, ExportError> {
        if to.target.is_empty() {
            return Err(ExportError::invalid(
                "target is required: the Cloud KMS key's id or resource name (a new version of it, or with create a new key of that id)",
            ));
        }
        if to.valid_to.is_some() {
            return Err(ExportError::invalid(
                "valid_to is AWS's; a Cloud KMS version does not expire by an import",
            ));
        }
        if !to.key_ops.is_empty() || to.create_kek {
            return Err(ExportError::invalid(
                "key_ops and create_kek are Azure's; a Cloud KMS key's use is its purpose (key_usage with create)",
            ));
        }
        let shape = self.shape(&admitted, ask.deadline).await?;
        // The destination's method only: the operator chooses the OAEP hash and the
        // wrapping key's size, not the caller.
        let format = gc::default_format(&ring)?;
        if !to.format.is_empty() && to.format != format.name {
            return Err(ExportError::invalid(format!(
                "destination {} imports in {} (its import_method); format {:?} is not taken",
                ring.name,
                format.name,
                bounded(to.format, 64)
            )));
        }
        let export = admitted.format(format, attempt.record());
        let dest = GcpImport::new(
            destinations.clone(),
            ring.clone(),
            (to.target, to.create),
            (shape, format),
            ask.deadline,
        )?;
        self.hsm.token().mode_for(format)?;
        Ok(Checked {
            export,
            dest: CheckedDest::Gcp(dest, ring),
        })
    }
}

/// An import into a destination that passed every check made before the cloud is called.
pub(crate) struct Checked {
    export: super::Export,
    dest: CheckedDest,
}

enum CheckedDest {
    Aws(AwsImport, Arc<Kms>),
    Azure(AzureImport, Arc<Vault>),
    Gcp(GcpImport, Arc<KeyRing>),
}

/// The destination `name`, for `caller` (granted it first: a caller learns nothing of
/// destinations it may not use), noted in `attempt`'s record.
fn destination_of<'a>(
    destinations: &'a Clouds,
    caller: &Caller,
    name: &str,
    attempt: &mut Attempt,
) -> Result<&'a Dest, ExportError> {
    attempt.record().destination = Some(bounded(name, 64));
    aws::granted(caller, name)?;
    let dest = destinations.get(name).ok_or_else(|| {
        ExportError::not_configured(format!(
            "no destination {:?} in the daemon's [destinations]",
            bounded(name, 64),
        ))
    })?;
    attempt.record().cloud = Some(match dest {
        Dest::Aws(_) => Cloud::Aws.as_str(),
        Dest::Azure(_) => Cloud::Azure.as_str(),
        Dest::Gcp(_) => Cloud::Gcp.as_str(),
    });
    Ok(dest)
}

/// The AWS destination `name`, for `caller`, noted in `attempt`'s record: what a rotation
/// imports into (AWS KMS only).
pub(super) fn destination(
    destinations: &Clouds,
    caller: &Caller,
    name: &str,
    attempt: &mut Attempt,
) -> Result<Arc<Kms>, ExportError> {
    match destination_of(destinations, caller, name, attempt)? {
        Dest::Aws(kms) => Ok(kms.clone()),
        Dest::Azure(_) | Dest::Gcp(_) => Err(ExportError::not_configured(format!(
            "destination {:?} is not AWS KMS: a rotation imports into AWS KMS only",
            bounded(name, 64)
        ))),
    }
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
    /// What an import into Google Cloud KMS destination `ring` made, noted in `attempt`'s
    /// record.
    pub(super) fn gcp(
        ring: &KeyRing,
        made: gc::Imported,
        format: &'static Format,
        attempt: &mut Attempt,
    ) -> Made {
        attempt.record().cloud_key_id = Some(made.key.clone());
        Made {
            cloud: Cloud::Gcp.as_str(),
            destination: ring.name.clone(),
            key_id: made.key,
            version_id: made.version,
            state: made.state.clone(),
            version_state: made.state,
            time_created: made.created,
            created_key: made.created_key,
            format: format.name,
        }
    }

    /// What an import into Azure destination `vault` made, noted in `attempt`'s record.
    pub(super) fn azure(
        vault: &Vault,
        made: az::Imported,
        format: &'static Format,
        attempt: &mut Attempt,
    ) -> Made {
        attempt.record().cloud_key_id = Some(made.key_id.clone());
        let state = if made.enabled { "Enabled" } else { "Disabled" };
        Made {
            cloud: Cloud::Azure.as_str(),
            destination: vault.name.clone(),
            key_id: made.key_id,
            version_id: made.version,
            state: state.to_string(),
            version_state: state.to_string(),
            time_created: made.created,
            created_key: made.created_key,
            format: format.name,
        }
    }

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
