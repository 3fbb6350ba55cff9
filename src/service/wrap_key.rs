//! WrapKey: the request turned into the export core's types (src/export/), the wrap, and
//! the answer in the format asked for.

use tonic::{Request, Status};

use super::Bridge;
use super::request::{azure_kek, format, key_ref, proto_algorithm, shape};
use crate::audit::{Attempt, Operation};
use crate::export::Export;
use crate::proto;
use crate::wrap;

impl Bridge {
    pub(super) async fn wrap_key_inner(
        &self,
        req: Request<proto::WrapKeyRequest>,
        guard: &mut Attempt,
    ) -> Result<proto::WrapKeyResponse, Status> {
        let (settings, caller, deadline) = self.begin(&req, guard)?;
        let rec = guard.record();
        let body = req.get_ref();
        let export = Export::admit(caller, Operation::WrapKey)?
            .key(key_ref(body.source_key.as_ref())?, rec)?
            .format(format(&body.format, body.algorithm)?, rec);
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
        let wrapped = self
            .exporter
            .wrap(&export, wk, deadline, guard.hsm_started.clone())
            .await?;
        let material = wrapped
            .format
            .seal(wrapped.material, kek.as_ref(), &self.hsm.generator())
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
}
