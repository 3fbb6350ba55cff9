//! Which keys may leave the token: OCI must be able to import the key, the token must let
//! it out, and `policy.exportable` must list it. Checked before every wrap, and before a
//! recorded import is answered again.

use super::{ExportRefusal, Hsm, HsmError, KeyInfo};
use crate::wrap::KeyShape;

impl Hsm {
    /// Why `info` may not leave, or `Ok` if it may: OCI must be able to import it, the
    /// token must allow it out, and policy must list it.
    pub fn export_check(&self, info: &KeyInfo) -> Result<KeyShape, HsmError> {
        let refuse = |refusal, why: String| HsmError::NotExportable {
            key: info.name(),
            why,
            refusal,
        };
        let shape = info.shape().ok_or_else(|| {
            refuse(
                ExportRefusal::Shape,
                format!(
                    "it is {}; OCI imports only AES and RSA keys",
                    info.describe()
                ),
            )
        })?;
        if !shape.importable() {
            return Err(refuse(
                ExportRefusal::Shape,
                format!(
                    "it is {}; OCI imports AES-128/192/256 and RSA-2048/3072/4096",
                    shape.describe()
                ),
            ));
        }
        if !info.extractable {
            return Err(refuse(
                ExportRefusal::Token,
                "the token marks it not extractable (CKA_EXTRACTABLE = false)".into(),
            ));
        }
        if info.wrap_with_trusted {
            return Err(refuse(ExportRefusal::Token, "it is CKA_WRAP_WITH_TRUSTED and OCI's wrapping key is not a trusted key on this token".into(),
            ));
        }
        if !self.exportable_by_policy(info) {
            return Err(refuse(
                ExportRefusal::Policy,
                format!(
                    "its label {:?} matches no pattern in policy.exportable",
                    info.label
                ),
            ));
        }
        Ok(shape)
    }

    /// Whether `policy.exportable` lists the key's label.
    pub fn exportable_by_policy(&self, info: &KeyInfo) -> bool {
        crate::policy::any_match(&self.exportable, &info.label)
    }
}
