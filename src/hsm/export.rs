//! Which keys may leave the token: the cloud must take the key in the format asked for, the
//! token must let it out, and `policy.exportable` must list it. Checked before every wrap,
//! and before a recorded import is answered again.

use super::{ExportRefusal, Hsm, HsmError, KeyInfo};
use crate::wrap::{Format, KeyShape};

impl Hsm {
    /// Why `info` may not leave in `format`, or `Ok` if it may: the cloud must take it in
    /// that format, the token must allow it out, and policy must list it.
    pub(crate) fn export_check(
        &self,
        info: &KeyInfo,
        format: &Format,
    ) -> Result<KeyShape, HsmError> {
        let refuse = |refusal, why: String| HsmError::NotExportable {
            key: info.name(),
            why,
            refusal,
        };
        let shape = info
            .shape()
            .ok_or_else(|| refuse(ExportRefusal::Shape, format.takes_no(&info.describe())))?;
        format
            .takes(shape)
            .map_err(|why| refuse(ExportRefusal::Shape, why))?;
        if !info.extractable {
            return Err(refuse(
                ExportRefusal::Token,
                "the token marks it not extractable (CKA_EXTRACTABLE = false)".into(),
            ));
        }
        if info.wrap_with_trusted {
            return Err(refuse(ExportRefusal::Token, "it is CKA_WRAP_WITH_TRUSTED and the cloud's wrapping key is not a trusted key on this token".into(),
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
    pub(crate) fn exportable_by_policy(&self, info: &KeyInfo) -> bool {
        self.exportable_label(&info.label)
    }

    /// Whether `policy.exportable` lists `label`.
    pub(crate) fn exportable_label(&self, label: &str) -> bool {
        crate::policy::any_match(&self.exportable, label)
    }
}
