//! WrapKey, and what every export shares: admission (the caller's operation, the key
//! against its patterns, the format) and the HSM wrap under the caller's patterns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tonic::{Request, Status};

use super::Bridge;
use super::audit::AuditOnDrop;
use super::auth::Caller;
use super::keys::{denied, hide_by_id, may_not_touch, permit};
use super::request::{azure_kek, format, key_ref, proto_algorithm, shape};
use crate::audit::Record;
use crate::config::Operation;
use crate::hsm::KeyRef;
use crate::proto;
use crate::wrap::{self, Format, WrappingKey};

/// An admitted export: who asked, for which key, in which format.
#[derive(Clone)]
pub(super) struct Export {
    pub(super) caller: Caller,
    pub(super) key: KeyRef,
    pub(super) format: &'static Format,
}

impl Bridge {
    pub(super) async fn wrap_key_inner(
        &self,
        req: Request<proto::WrapKeyRequest>,
        guard: &mut AuditOnDrop,
    ) -> Result<proto::WrapKeyResponse, Status> {
        let (settings, caller, deadline) = self.begin(&req, guard)?;
        let hsm_started = guard.hsm_started.clone();
        let rec = guard.record();
        let body = req.get_ref();
        let export = self.admit_export(
            caller,
            rec,
            (Operation::Wrap, "WrapKey"),
            body.source_key.as_ref(),
            || format(&body.format, body.algorithm),
        )?;
        let kek = azure_kek(export.format, &body.azure_kek_id)?;
        let wk = self
            .wrapping_keys
            .get(body.wrapping_public_key_pem.as_bytes())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let fp = wk.fingerprint();
        rec.export.wrapping_key_sha256 = Some(fp.clone());
        settings
            .wrapping_policy
            .allows(&fp)
            .map_err(|e| super::status::refused_wrapping_key(&e))?;
        let generator = self.hsm.generator();
        let wrapped = self.wrap_for(export, wk, deadline, hsm_started).await?;
        let material = wrapped
            .format
            .seal(wrapped.material, kek.as_ref(), &generator)
            .map_err(|e| Status::internal(e.to_string()))?;
        let rec = guard.record();
        rec.export.label = Some(wrapped.key.label.clone());
        rec.export.on_token = true;
        rec.export.id_hex = Some(wrap::hex(&wrapped.key.id));
        rec.export.mode = Some(wrapped.mode.as_str());
        rec.export.key_type = Some(wrapped.shape.algorithm.as_str());
        Ok(proto::WrapKeyResponse {
            wrapped_key_material: material,
            shape: Some(shape(wrapped.shape)),
            wrapping_key_sha256: fp,
            mode: wrapped.mode.as_str().into(),
            algorithm: wrapped
                .format
                .oci_algorithm()
                .map_or(0, |a| proto_algorithm(a) as i32),
            format: wrapped.format.name.into(),
        })
    }

    /// The checks every export starts with, after the caller is known, each recorded as it
    /// passes: its `op`eration, the source key (against its label patterns), the format
    /// (`format` reads it from the request).
    pub(super) fn admit_export(
        &self,
        caller: Caller,
        rec: &mut Record,
        (op, name): (Operation, &'static str),
        key: Option<&proto::KeyRef>,
        format: impl FnOnce() -> Result<&'static Format, Status>,
    ) -> Result<Export, Status> {
        if !caller.may(op) {
            return Err(denied(name, &caller));
        }
        let key = key_ref(key)?;
        rec.export.label = key.label_named().map(str::to_string);
        rec.export.id_hex = key.id_named().map(wrap::hex);
        if let Some(l) = key.label_named()
            && !caller.may_touch(l)
        {
            return Err(Status::permission_denied(
                may_not_touch(&caller, l).to_string(),
            ));
        }
        let format = format()?;
        rec.algorithm = Some(format.algorithm());
        rec.format = Some(format.name);
        Ok(Export {
            caller,
            key,
            format,
        })
    }

    /// Wraps the export's key for `wk` on an HSM session; a key named by id must still match
    /// the caller's label patterns.
    pub(super) async fn wrap_for(
        &self,
        export: Export,
        wk: Arc<WrappingKey>,
        deadline: Option<Instant>,
        hsm_started: Arc<AtomicBool>,
    ) -> Result<crate::hsm::Wrapped, Status> {
        let Export {
            caller,
            key,
            format,
        } = export;
        // What needs no token is refused before the HSM queue.
        self.hsm
            .precheck(&wk, format)
            .map_err(|e| super::status::status(&e))?;
        self.on_hsm(deadline, move |hsm, d| {
            hsm_started.store(true, Ordering::SeqCst);
            hsm.wrap_if(&key, &wk, format, d, |info| permit(&caller, info))
                .map_err(|e| hide_by_id(&key, e))
        })
        .await
    }

    /// For bytes recorded for an idempotency key: the key checks of [`Self::wrap_for`]
    /// without the wrap.
    pub(super) async fn recheck(
        &self,
        export: Export,
        deadline: Option<Instant>,
    ) -> Result<(), Status> {
        let Export {
            caller,
            key,
            format,
        } = export;
        self.on_hsm(deadline, move |hsm, d| {
            hsm.check_export(&key, format, d, |info| permit(&caller, info))
                .map(|_| ())
                .map_err(|e| hide_by_id(&key, e))
        })
        .await
    }
}
