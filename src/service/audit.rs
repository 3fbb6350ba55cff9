//! The audit record of a gRPC call (src/audit.rs has the log, its records and the
//! [`Attempt`] that writes one per export): the caller identified first, the record
//! written once with the call's result.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Status};

use super::status::canonical;
use crate::audit::Attempt;

impl super::Bridge {
    /// What every export does first: identify the caller (before any other header or field
    /// is read) and record it, then read the deadline, which the guard keeps.
    pub(super) fn begin<T>(
        &self,
        req: &Request<T>,
        guard: &mut Attempt,
    ) -> Result<(Arc<super::Settings>, super::auth::Caller, Option<Instant>), Status> {
        // The settings at the call's start serve it to the end, a reload notwithstanding.
        let settings = self.settings();
        let caller = self.caller(&settings, req, Some(guard.record()))?;
        guard.deadline = super::request::deadline(req);
        Ok((settings, caller, guard.deadline))
    }

    /// Writes the audit record for an export attempt that ends with `result`
    /// ([`Attempt::finish`]): a failed write turns success into `UNAVAILABLE`.
    pub(super) fn audit<T>(
        &self,
        guard: &mut Attempt,
        result: Result<T, Status>,
    ) -> Result<T, Status> {
        let outcome = match &result {
            Ok(_) => Ok(()),
            Err(s) => Err((canonical(s.code()), s.message().to_string())),
        };
        guard.finish(outcome).map_err(Status::unavailable)?;
        result
    }
}
