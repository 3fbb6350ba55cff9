//! The CLI's audit records, in the daemon's audit log and format.

use std::path::Path;
use std::sync::Arc;

use super::Error;
use crate::audit::{Attempt, Operation};
use crate::code::Code;
use crate::config::Config;
use crate::wrap;

/// The CLI's audit records, one per export attempt, like the daemon's: to `audit.path`,
/// or with `audit.path = "-"` to stderr for every export that happened (a refusal's one
/// line on stderr is its own record there: the command's error stays one line).
pub(super) struct CliAudit {
    audit: Arc<crate::audit::Audit>,
    to_stderr: bool,
}

impl CliAudit {
    pub(super) fn open(cfg: &Config) -> Result<CliAudit, Error> {
        Ok(CliAudit {
            audit: Arc::new(crate::audit::Audit::open(&cfg.audit.path)?),
            to_stderr: cfg.audit.path == Path::new("-"),
        })
    }

    /// The attempt of `operation` by this user, whose record [`Self::write`] writes.
    pub(super) fn attempt(&self, operation: Operation) -> Attempt {
        let mut id = [0u8; 8];
        let _ = getrandom::fill(&mut id);
        let mut attempt = Attempt::new(self.audit.clone(), wrap::hex(&id), operation);
        attempt.record().caller = format!("cli (uid {})", rustix::process::geteuid().as_raw());
        attempt
    }

    /// Writes `rec` with its outcome; `Err((code, why))` for a refusal. A failed write is an
    /// error: the export does not go ahead without its record.
    pub(super) fn write(
        &self,
        mut rec: crate::audit::Record,
        outcome: Result<(), (Code, String)>,
    ) -> Result<(), Error> {
        if self.to_stderr && outcome.is_err() {
            return Ok(());
        }
        rec.time = crate::audit::now_rfc3339();
        rec.conclude(outcome);
        self.audit.write(&rec).map_err(|e| {
            Error::Io(format!(
                "the audit log could not be written ({e}); nothing was exported"
            ))
        })
    }
}
