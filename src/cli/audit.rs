//! The CLI's audit records, in the daemon's audit log and format.

use std::path::Path;

use tonic::Code;

use super::Error;
use crate::config::Config;
use crate::hsm::KeyRef;
use crate::service::audit::{Operation, Outcome};
use crate::wrap::{self, Algorithm};

/// The CLI's audit records: to `audit.path` when it is a file (stderr is for the one-line
/// error), one per export attempt, like the daemon's.
pub(super) struct CliAudit(Option<crate::service::audit::Audit>);

impl CliAudit {
    pub(super) fn open(cfg: &Config) -> Result<CliAudit, Error> {
        if cfg.audit.path == Path::new("-") {
            return Ok(CliAudit(None));
        }
        Ok(CliAudit(Some(crate::service::audit::Audit::open(
            &cfg.audit.path,
        )?)))
    }

    /// A record of `operation` on `key`, by this user.
    pub(super) fn record(
        &self,
        operation: Operation,
        key: &KeyRef,
        alg: Algorithm,
    ) -> crate::service::audit::Record {
        let mut id = [0u8; 8];
        let _ = getrandom::fill(&mut id);
        let mut rec = crate::service::audit::Record {
            request_id: wrap::hex(&id),
            caller: format!("cli (uid {})", rustix::process::geteuid().as_raw()),
            operation,
            algorithm: Some(alg.as_str()),
            ..Default::default()
        };
        rec.export.label = key.label_named().map(str::to_string);
        rec.export.id_hex = key.id_named().map(wrap::hex);
        rec
    }

    /// Writes `rec` with its outcome; `Err((code, why))` for a refusal. A failed write is an
    /// error: the export does not go ahead without its record.
    pub(super) fn write(
        &self,
        mut rec: crate::service::audit::Record,
        outcome: Result<(), (Code, String)>,
    ) -> Result<(), Error> {
        let Some(audit) = &self.0 else { return Ok(()) };
        rec.time = crate::service::audit::now_rfc3339();
        match outcome {
            Ok(()) => {
                rec.outcome = Outcome::Allowed;
                rec.code = "OK";
            }
            Err((code, why)) => {
                rec.outcome = Outcome::of(code);
                rec.code = crate::service::status::code_name(code);
                rec.reason = Some(why);
            }
        }
        audit.write(&rec).map_err(|e| {
            Error::Io(format!(
                "the audit log could not be written ({e}); nothing was exported"
            ))
        })
    }
}
