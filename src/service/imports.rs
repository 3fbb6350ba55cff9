//! ImportKeyVersion, ImportKey and Import as RPCs: each request turned into the export
//! core's types (src/export/: the export, OCI's destination or a destination by name, what
//! the import asks), the one import function, and its answer as the RPC's.

use std::sync::Arc;

use tonic::{Request, Status};

use super::auth::Caller;
use super::request::{algorithm, key_ref};
use super::{Bridge, Settings};
use crate::audit::{Attempt, INVALID, Operation, Record};
use crate::config::ProtectionMode;
use crate::export::oci::{self, KeyDetails, NewKey, NewVersion, Vault};
use crate::export::{Export, ImportAsk, ImportTo, Made, RotateTo, check_idempotency_key};
use crate::hsm::KeyRef;
use crate::proto;
use crate::wrap::Format;

impl Bridge {
    /// What every import starts with: the export admitted (caller, key, OCI's format for
    /// `algorithm`), the request's own `fields` (checked and recorded by it; it returns the
    /// idempotency key), then the vault: the connection and the endpoint, which must be on
    /// the allow-list. Nothing has touched the HSM or the network yet.
    fn import_start<'r>(
        &self,
        (settings, caller): (&Settings, Caller),
        (operation, key, alg): (Operation, Option<&proto::KeyRef>, i32),
        target: Option<&proto::OciTarget>,
        guard: &mut Attempt,
        fields: impl FnOnce(&Caller, &mut Record) -> Result<Option<&'r str>, Status>,
    ) -> Result<(Export, Vault, Option<&'r str>), Status> {
        let rec = guard.record();
        let export = Export::admit(caller, operation)?
            .key(key_ref(key)?, rec)?
            .format(Format::oci(algorithm(alg)?), rec);
        // The request's own fields, before any configuration is consulted.
        let idem = fields(&export.caller, rec)?;
        let target = target.ok_or_else(|| {
            Status::invalid_argument(
                "oci.management_endpoint is required (the vault's management endpoint)",
            )
        })?;
        let request_id = rec.request_id.clone();
        let vault = Vault::new(
            settings.oci.clone(),
            (&target.management_endpoint, &target.connection),
            (request_id, guard.deadline),
            settings.protection_modes.clone(),
            guard.record(),
        )?;
        Ok((export, vault, idem))
    }

    pub(super) async fn import_key_version_inner(
        &self,
        req: Request<proto::ImportKeyVersionRequest>,
        guard: &mut Attempt,
    ) -> Result<proto::ImportKeyVersionResponse, Status> {
        let (settings, caller, deadline) = self.begin(&req, guard)?;
        let body = req.get_ref();
        let (export, vault, idem) = self.import_start(
            (&settings, caller),
            (
                Operation::ImportKeyVersion,
                body.source_key.as_ref(),
                body.algorithm,
            ),
            body.oci.as_ref(),
            guard,
            |_, rec| {
                oci::check_key_ocid(&body.oci_key_id)
                    .inspect_err(|_| rec.oci_key_id = Some(INVALID.into()))?;
                rec.oci_key_id = Some(body.oci_key_id.clone());
                Ok(check_idempotency_key(&body.idempotency_key)?)
            },
        )?;
        let dest = NewVersion {
            vault,
            key_id: body.oci_key_id.clone(),
        };
        let ask = ImportAsk {
            idempotency_key: idem,
            wait: body.wait_for_enabled,
            deadline,
        };
        let version = self
            .exporter
            .import(&export, Arc::new(dest), ask, guard)
            .await?;
        Ok(proto::ImportKeyVersionResponse {
            key_version: Some(proto_version(&version)),
        })
    }

    pub(super) async fn import_key_inner(
        &self,
        req: Request<proto::ImportKeyRequest>,
        guard: &mut Attempt,
    ) -> Result<proto::ImportKeyResponse, Status> {
        let (settings, caller, deadline) = self.begin(&req, guard)?;
        let body = req.get_ref();
        let (export, vault, idem) = self.import_start(
            (&settings, caller),
            (
                Operation::ImportKey,
                body.source_key.as_ref(),
                body.algorithm,
            ),
            body.oci.as_ref(),
            guard,
            |caller, rec| import_key_fields(&settings, caller, rec, body),
        )?;
        let dest = NewKey {
            vault,
            details: KeyDetails {
                compartment_id: body.compartment_id.clone(),
                display_name: body.display_name.clone(),
                protection_mode: protection_mode(body),
                freeform_tags: body.freeform_tags.clone(),
                defined_tags: body
                    .defined_tags
                    .iter()
                    .map(|(ns, t)| (ns.clone(), t.tags.clone()))
                    .collect(),
            },
        };
        let ask = ImportAsk {
            idempotency_key: idem,
            wait: body.wait_for_enabled,
            deadline,
        };
        let key = self
            .exporter
            .import(&export, Arc::new(dest), ask, guard)
            .await?;
        Ok(proto::ImportKeyResponse {
            key: Some(proto_key(&key)),
        })
    }
}

impl Bridge {
    /// `Import`: the export admitted (caller, key), then the export core's import into the
    /// destination the request names (src/export/to.rs).
    pub(super) async fn import_inner(
        &self,
        req: Request<proto::ImportRequest>,
        guard: &mut Attempt,
    ) -> Result<proto::ImportResponse, Status> {
        let (settings, caller, deadline) = self.begin(&req, guard)?;
        let body = req.get_ref();
        let admitted = Export::admit(caller, Operation::Import)?
            .key(key_ref(body.source_key.as_ref())?, guard.record())?;
        let idem = check_idempotency_key(&body.idempotency_key)?;
        let to = ImportTo {
            destination: &body.destination,
            target: &body.target,
            create: body.create.as_ref().map(|c| c.key_usage.as_str()),
            format: &body.format,
            valid_to: (body.valid_to_unix != 0).then_some(body.valid_to_unix),
            key_ops: &body.key_ops,
            create_kek: body.create_kek,
        };
        let ask = ImportAsk {
            idempotency_key: idem,
            wait: body.wait_for_enabled,
            deadline,
        };
        let made = self
            .exporter
            .import_to(&settings.destinations, admitted, to, ask, guard)
            .await?;
        Ok(proto_made(made, guard.record().export.replayed))
    }

    /// `RotateKey`: the export core's rotation (src/export/rotate.rs), and the key it made
    /// as the token describes it now.
    pub(super) async fn rotate_key_inner(
        &self,
        req: Request<proto::RotateKeyRequest>,
        guard: &mut Attempt,
    ) -> Result<proto::RotateKeyResponse, Status> {
        let (settings, caller, deadline) = self.begin(&req, guard)?;
        let body = req.get_ref();
        let idem = check_idempotency_key(&body.idempotency_key)?;
        let to = RotateTo {
            destination: &body.destination,
            target: &body.target,
            base: &body.base_label,
            format: &body.format,
        };
        let ask = ImportAsk {
            idempotency_key: idem,
            wait: body.wait_for_enabled,
            deadline,
        };
        let rotated = self
            .exporter
            .rotate_to(&settings.destinations, caller, to, ask, guard)
            .await?;
        let id = crate::wrap::unhex(&rotated.id_hex).unwrap_or_default();
        let info = self
            .on_hsm(deadline, move |hsm, d| hsm.find_key(&KeyRef::Id(id), d))
            .await?;
        Ok(proto::RotateKeyResponse {
            new_key: Some(super::keys::source_key(&self.hsm, &info)),
            generated: rotated.generated,
            import: Some(proto_made(rotated.made, guard.record().export.replayed)),
        })
    }
}

/// What an import into a destination made (`replayed`: an earlier call did), as the RPC
/// answers it.
fn proto_made(made: Made, replayed: bool) -> proto::ImportResponse {
    proto::ImportResponse {
        cloud: made.cloud.into(),
        destination: made.destination,
        key_id: made.key_id,
        version_id: made.version_id,
        state: made.state,
        version_state: made.version_state,
        time_created: made.time_created,
        created_key: made.created_key,
        format: made.format.into(),
        replayed,
    }
}

/// ImportKey's own fields, each recorded once checked: compartment OCID (one the caller
/// may use), display name, protection mode (one `policy.protection_modes` allows), tags
/// (OCI's limits), idempotency key (returned).
fn import_key_fields<'r>(
    settings: &Settings,
    caller: &Caller,
    rec: &mut Record,
    body: &'r proto::ImportKeyRequest,
) -> Result<Option<&'r str>, Status> {
    if !crate::oci::is_ocid(&body.compartment_id, "ocid1.") {
        rec.compartment_id = Some(INVALID.into());
        return Err(Status::invalid_argument(
            "compartment_id must be a compartment or tenancy OCID (ocid1.…)",
        ));
    }
    rec.compartment_id = Some(body.compartment_id.clone());
    if body.display_name.is_empty()
        || body.display_name.len() > 255
        || crate::text::has_deceptive(&body.display_name)
    {
        rec.display_name = Some(INVALID.into());
        return Err(Status::invalid_argument(
            "display_name must be 1 to 255 bytes without control characters",
        ));
    }
    rec.display_name = Some(body.display_name.clone());
    if ProtectionMode::parse(&body.protection_mode).is_none() {
        rec.protection_mode = Some(INVALID.into());
        return Err(Status::invalid_argument(format!(
            "protection_mode {:?}: HSM or SOFTWARE",
            body.protection_mode.chars().take(32).collect::<String>()
        )));
    }
    rec.protection_mode = Some(match body.protection_mode.as_str() {
        "" => "HSM (default)".into(),
        m => m.into(),
    });
    oci::check_tags(
        &body.freeform_tags,
        body.defined_tags.iter().map(|(ns, t)| (ns, &t.tags)),
    )?;
    let idem = check_idempotency_key(&body.idempotency_key)?;
    oci::protection_allowed(
        &settings.protection_modes,
        &body.protection_mode,
        "the key asked for",
    )?;
    if !caller.may_use_compartment(&body.compartment_id) {
        return Err(Status::permission_denied(format!(
            "{} may not import into compartment {} (its oci_compartments in server.clients); nothing was sent",
            caller.display, body.compartment_id
        )));
    }
    Ok(idem)
}

fn proto_version(v: &crate::oci::kms::KeyVersion) -> proto::KeyVersion {
    proto::KeyVersion {
        version_id: v.id.clone(),
        key_id: v.key_id.clone(),
        vault_id: v.vault_id.clone(),
        compartment_id: v.compartment_id.clone(),
        time_created: v.time_created.clone(),
        lifecycle_state: v.lifecycle_state.clone(),
        origin: v.origin.clone(),
        is_primary: v.is_primary,
    }
}

fn proto_key(k: &crate::oci::kms::Key) -> proto::Key {
    proto::Key {
        key_id: k.id.clone(),
        compartment_id: k.compartment_id.clone(),
        vault_id: k.vault_id.clone(),
        display_name: k.display_name.clone(),
        current_key_version: k.current_key_version.clone(),
        shape: Some(proto::KeyShape {
            algorithm: k.key_shape.algorithm.clone(),
            length: k.key_shape.length,
        }),
        protection_mode: k.protection_mode.clone(),
        lifecycle_state: k.lifecycle_state.clone(),
        time_created: k.time_created.clone(),
    }
}

/// The protection mode asked for (`None`: OCI's default).
fn protection_mode(body: &proto::ImportKeyRequest) -> Option<String> {
    match body.protection_mode.as_str() {
        "" => None,
        m => Some(m.to_string()),
    }
}
