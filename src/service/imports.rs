//! ImportKeyVersion and ImportKey as RPCs: the checks of the request and its destination,
//! then the import module (src/import/) for the wrap and the body, the send from a task of
//! its own that outlives a caller who leaves, and the wait for ENABLED.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Status};

use super::audit::AuditOnDrop;
use super::auth::Caller;
use super::request::algorithm;
use super::status;
use super::wrap_key::Export;
use super::{Bridge, Settings};
use crate::audit::{INVALID, Record, bounded};
use crate::config::{Operation, ProtectionMode};
use crate::import;
use crate::oci::kms::{Answer, Call, KmsError};
use crate::proto;
use crate::wrap::Format;

/// Most bytes of a refused endpoint kept in an audit record.
const MAX_AUDITED_URL: usize = 255;

impl Bridge {
    /// The checks every import starts with: those of every export, the request's own
    /// `fields` (checked and recorded by it; it returns the idempotency key), then the OCI
    /// connection and endpoint, which must be on the allow-list and on the caller's own.
    /// Nothing has touched the HSM or the network yet.
    fn import_preamble<'r>(
        &self,
        settings: Arc<Settings>,
        caller: Caller,
        rec: &mut Record,
        ask: ImportAsk<'_>,
        fields: impl FnOnce(&Caller, &Settings, &mut Record) -> Result<Option<&'r str>, Status>,
    ) -> Result<(ImportStart, Option<&'r str>), Status> {
        let ImportAsk {
            op,
            key,
            alg,
            oci,
            deadline,
        } = ask;
        let export = self.admit_export(caller, rec, (Operation::Import, op), key, || {
            algorithm(alg).map(Format::oci)
        })?;
        // The request's own fields, before any configuration is consulted.
        let idem = fields(&export.caller, &settings, rec)?;
        let target = oci.ok_or_else(|| {
            Status::invalid_argument(
                "oci.management_endpoint is required (the vault's management endpoint)",
            )
        })?;
        let endpoint = settings
            .oci
            .endpoint(&target.management_endpoint)
            .inspect_err(|_| {
                rec.oci_endpoint = Some(bounded(&target.management_endpoint, MAX_AUDITED_URL));
            })?;
        rec.oci_endpoint = Some(endpoint.base.clone());
        let (connection, identity) = settings.oci.identity(&target.connection)?;
        rec.oci_connection = Some(connection);
        if !export.caller.may_send_to(&endpoint.base) {
            return Err(Status::permission_denied(format!(
                "{} may not import into {} (its oci_endpoints in server.clients); nothing was sent",
                export.caller.display, endpoint.base
            )));
        }
        Ok((
            ImportStart {
                settings,
                export,
                dest: Destination {
                    identity,
                    endpoint,
                    request_id: rec.request_id.clone(),
                    deadline,
                },
            },
            idem,
        ))
    }

    /// ImportKeyVersion adds to a key that exists: OCI's own record of it (GetKey) must show
    /// a protection mode in `policy.protection_modes` and a compartment the caller may use,
    /// before anything is wrapped or sent.
    async fn check_existing_key(
        &self,
        settings: &Settings,
        rec: &mut Record,
        caller: &Caller,
        call: &Call<'_>,
        key_id: &str,
    ) -> Result<(), Status> {
        let mut progress = import::Progress::default();
        let key = import::existing_key(
            &settings.oci,
            call,
            key_id,
            &settings.protection_modes,
            &mut progress,
        )
        .await
        .inspect_err(|_| rec.export.merge(&progress))?;
        rec.compartment_id = Some(bounded(&key.compartment_id, 255));
        rec.protection_mode = Some(bounded(&key.protection_mode, 32));
        if !caller.may_use_compartment(&key.compartment_id) {
            return Err(Status::permission_denied(format!(
                "{} may not import into compartment {} (its oci_compartments in server.clients); nothing was wrapped or sent",
                caller.display,
                bounded(&key.compartment_id, 255)
            )));
        }
        Ok(())
    }

    /// The bytes an import sends (see [`import::prepare`]): recorded ones for an
    /// idempotency key used before (after the key checks), or the vault's wrapping key
    /// fetched, the HSM wrap for `start` on the queue, and `build`'s body around it. What
    /// happened is noted in the audit record, also on failure; the progress is returned for
    /// OCI's answer.
    async fn prepare_import(
        &self,
        guard: &mut AuditOnDrop,
        start: &ImportStart,
        call: &Call<'_>,
        idempotency_key: Option<&str>,
        described: &import::Described,
        build: impl FnOnce(&crate::hsm::Wrapped) -> Result<Vec<u8>, Status>,
    ) -> Result<(import::Prepared, import::Progress), Status> {
        let (export, hsm_started) = (start.export.clone(), guard.hsm_started.clone());
        let again = start.export.clone();
        let steps = import::Steps {
            recheck: move || -> CheckFuture<'_> { Box::pin(self.recheck(again, call.deadline)) },
            wrap: move |wk| -> WrapFuture<'_> {
                Box::pin(self.wrap_for(export, wk, call.deadline, hsm_started))
            },
            build,
        };
        let mut progress = import::Progress::default();
        let prepared = import::prepare(
            &start.settings.oci,
            call,
            idempotency_key,
            described,
            &mut progress,
            steps,
        )
        .await;
        guard.record().export.merge(&progress);
        Ok((prepared?, progress))
    }

    /// Sends a prepared import from a task of its own, and waits for OCI's answer until the
    /// caller's deadline. The task holds the audit record (and the idempotency claim) until
    /// OCI has answered: a caller that cancels, or whose deadline passes first, still gets a
    /// record of what OCI did, with the id it created.
    async fn send_import<T, F, Fut>(
        &self,
        oci: Arc<import::OciSide>,
        guard: &mut AuditOnDrop,
        prepared: import::Prepared,
        mut progress: import::Progress,
        send: F,
        created: fn(&T) -> &String,
    ) -> Result<T, Status>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
        F: FnOnce(Arc<import::OciSide>, Arc<zeroize::Zeroizing<Vec<u8>>>, String) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = Result<Answer<T>, KmsError>> + Send + 'static,
    {
        let mut carried = guard.hand_off();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            // The journal's record is freed once OCI's answer is in it.
            let answer = import::send(
                prepared,
                &mut progress,
                |body, token| send(oci, body, token),
                created,
            )
            .await;
            carried.record().export.merge(&progress);
            let result = answer.map_err(|e| status::import(&e));
            carried.answered = Some(result.as_ref().map(|_| ()).map_err(Clone::clone));
            // With the caller gone, `carried` is dropped here and writes the record.
            let _ = tx.send((result, carried));
        });
        let got = match guard.deadline {
            None => rx
                .await
                .map_err(|_| Status::internal("the import task failed"))?,
            Some(d) => match tokio::time::timeout_at(d.into(), &mut rx).await {
                Ok(r) => r.map_err(|_| Status::internal("the import task failed"))?,
                Err(_) => {
                    rx.close();
                    rx.try_recv().map_err(|_| {
                        Status::deadline_exceeded(
                            "the deadline passed while OCI was answering the import: its answer goes to the audit log, and a retry with the same idempotency_key returns it without importing again",
                        )
                    })?
                }
            },
        };
        let (result, carried) = got;
        guard.take_back(carried);
        result
    }

    pub(super) async fn import_key_version_inner(
        &self,
        req: Request<proto::ImportKeyVersionRequest>,
        guard: &mut AuditOnDrop,
    ) -> Result<proto::ImportKeyVersionResponse, Status> {
        let (settings, caller, deadline) = self.begin(&req, guard)?;
        let rec = guard.record();
        let body = req.get_ref();
        let (start, idem) = self.import_preamble(
            settings,
            caller,
            rec,
            ImportAsk {
                op: "ImportKeyVersion",
                key: body.source_key.as_ref(),
                alg: body.algorithm,
                oci: body.oci.as_ref(),
                deadline,
            },
            |_, _, rec| {
                import::check_key_ocid(&body.oci_key_id)
                    .inspect_err(|_| rec.oci_key_id = Some(INVALID.into()))?;
                rec.oci_key_id = Some(body.oci_key_id.clone());
                Ok(import::check_idempotency_key(&body.idempotency_key)?)
            },
        )?;
        let call = start.dest.call();
        self.check_existing_key(
            &start.settings,
            guard.record(),
            &start.export.caller,
            &call,
            &body.oci_key_id,
        )
        .await?;
        let described = import::describe(&import::Ask {
            caller: &start.export.caller.name,
            op: "ImportKeyVersion",
            target: &body.oci_key_id,
            key: &start.export.key,
            format: start.export.format,
            endpoint: &start.dest.endpoint,
            details: "",
        });
        let (prepared, progress) = self
            .prepare_import(guard, &start, &call, idem, &described, |w| {
                serde_json::to_vec(&crate::oci::kms::ImportKeyVersionDetails {
                    wrapped_import_key: import::wrapped_import_key(w),
                })
                .map_err(|e| Status::internal(e.to_string()))
            })
            .await?;
        let (dest, key_id) = (start.dest.clone(), body.oci_key_id.clone());
        let mut version = self
            .send_import(
                start.settings.oci.clone(),
                guard,
                prepared,
                progress,
                move |oci, body, token| async move {
                    let call = dest.call();
                    oci.kms
                        .import_key_version(&call, &key_id, &body, &token)
                        .await
                },
                |v: &crate::oci::kms::KeyVersion| &v.id,
            )
            .await?;
        if body.wait_for_enabled {
            let kms = &start.settings.oci.kms;
            version = import::wait(
                &start.settings.oci,
                || kms.get_key_version(&call, &version.key_id, &version.id),
                |v: &crate::oci::kms::KeyVersion| v.lifecycle_state.as_str(),
                deadline,
                &format!("key version {}", version.id),
            )
            .await?;
        }
        Ok(proto::ImportKeyVersionResponse {
            key_version: Some(proto_version(&version)),
        })
    }

    pub(super) async fn import_key_inner(
        &self,
        req: Request<proto::ImportKeyRequest>,
        guard: &mut AuditOnDrop,
    ) -> Result<proto::ImportKeyResponse, Status> {
        let (settings, caller, deadline) = self.begin(&req, guard)?;
        let rec = guard.record();
        let body = req.get_ref();
        let (start, idem) = self.import_preamble(
            settings,
            caller,
            rec,
            ImportAsk {
                op: "ImportKey",
                key: body.source_key.as_ref(),
                alg: body.algorithm,
                oci: body.oci.as_ref(),
                deadline,
            },
            |caller, settings, rec| self.import_key_fields(settings, caller, rec, body),
        )?;
        let described = import::describe(&import::Ask {
            caller: &start.export.caller.name,
            op: "ImportKey",
            target: &body.compartment_id,
            key: &start.export.key,
            format: start.export.format,
            endpoint: &start.dest.endpoint,
            details: &import_key_details(body),
        });
        let call = start.dest.call();
        let (prepared, progress) = self
            .prepare_import(guard, &start, &call, idem, &described, |w| {
                import_key_body(body, w)
            })
            .await?;
        let dest = start.dest.clone();
        let key = self
            .send_import(
                start.settings.oci.clone(),
                guard,
                prepared,
                progress,
                move |oci, body, token| async move {
                    let call = dest.call();
                    oci.kms.import_key(&call, &body, &token).await
                },
                |k: &crate::oci::kms::Key| &k.id,
            )
            .await;
        if let Some(rec) = guard.rec.as_mut() {
            rec.oci_key_id = rec.export.created_id.clone();
        }
        let mut key = key?;
        if body.wait_for_enabled {
            let kms = &start.settings.oci.kms;
            key = import::wait(
                &start.settings.oci,
                || kms.get_key(&call, &key.id),
                |k: &crate::oci::kms::Key| k.lifecycle_state.as_str(),
                deadline,
                &format!("key {}", key.id),
            )
            .await?;
        }
        Ok(proto::ImportKeyResponse {
            key: Some(proto_key(&key)),
        })
    }

    /// ImportKey's own fields, each recorded once checked: compartment OCID (one the caller
    /// may use), display name, protection mode (one `policy.protection_modes` allows), tags
    /// (OCI's limits), idempotency key (returned).
    fn import_key_fields<'r>(
        &self,
        settings: &Settings,
        caller: &Caller,
        rec: &mut Record,
        body: &'r proto::ImportKeyRequest,
    ) -> Result<Option<&'r str>, Status> {
        if !import::is_ocid(&body.compartment_id, "ocid1.") {
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
        import::check_tags(
            &body.freeform_tags,
            body.defined_tags.iter().map(|(ns, t)| (ns, &t.tags)),
        )?;
        let idem = import::check_idempotency_key(&body.idempotency_key)?;
        import::protection_allowed(
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
}

type WrapFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<crate::hsm::Wrapped, Status>> + Send + 'a>,
>;
type CheckFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Status>> + Send + 'a>>;

/// What an import request asks for, as the caller sent it.
struct ImportAsk<'a> {
    op: &'static str,
    key: Option<&'a proto::KeyRef>,
    alg: i32,
    oci: Option<&'a proto::OciTarget>,
    deadline: Option<Instant>,
}

/// Where an import goes and as whom: owned, so that the task sending it can outlive the call.
#[derive(Clone)]
struct Destination {
    identity: Arc<crate::oci::Identity>,
    endpoint: crate::oci::endpoint::Endpoint,
    request_id: String,
    deadline: Option<Instant>,
}

impl Destination {
    /// The OCI calls' context: this identity and endpoint, the caller's request id (if OCI
    /// accepts it as `opc-request-id`) and deadline.
    fn call(&self) -> Call<'_> {
        Call {
            identity: &self.identity,
            endpoint: &self.endpoint,
            request_id: import::opc_request_id(&self.request_id),
            deadline: self.deadline,
        }
    }
}

/// What an import has established before it touches the HSM or the network.
struct ImportStart {
    /// The settings it runs under (the ones at its start).
    settings: Arc<Settings>,
    export: Export,
    dest: Destination,
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

/// What an ImportKey asks beyond the source key and target, in a stable order: bound to its
/// idempotency key.
fn import_key_details(body: &proto::ImportKeyRequest) -> String {
    let freeform: std::collections::BTreeMap<_, _> = body.freeform_tags.iter().collect();
    let defined: std::collections::BTreeMap<_, std::collections::BTreeMap<_, _>> = body
        .defined_tags
        .iter()
        .map(|(ns, t)| (ns, t.tags.iter().collect()))
        .collect();
    format!(
        "{:?} {:?} {freeform:?} {defined:?}",
        body.display_name,
        protection_mode(body)
    )
}

/// The protection mode asked for (`None`: OCI's default).
fn protection_mode(body: &proto::ImportKeyRequest) -> Option<String> {
    match body.protection_mode.as_str() {
        "" => None,
        m => Some(m.to_string()),
    }
}

/// ImportKey's JSON body around the wrapped key `w`.
fn import_key_body(
    body: &proto::ImportKeyRequest,
    w: &crate::hsm::Wrapped,
) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(&crate::oci::kms::ImportKeyDetails {
        compartment_id: body.compartment_id.clone(),
        display_name: body.display_name.clone(),
        key_shape: crate::oci::kms::KeyShapeJson {
            algorithm: w.shape.algorithm.as_str().into(),
            length: w.shape.length as u32,
        },
        wrapped_import_key: import::wrapped_import_key(w),
        protection_mode: protection_mode(body),
        freeform_tags: body.freeform_tags.clone(),
        defined_tags: body
            .defined_tags
            .iter()
            .map(|(ns, t)| (ns.clone(), t.tags.clone()))
            .collect(),
    })
    .map_err(|e| Status::internal(e.to_string()))
}
