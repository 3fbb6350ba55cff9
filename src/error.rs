//! The crate's top-level error: one variant per layer, each displayed as one line.

use crate::config::ConfigError;
use crate::hsm::HsmError;
use crate::wrap::WrapError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Hsm(#[from] HsmError),
    #[error(transparent)]
    Wrap(#[from] WrapError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditOpenError),
    #[error(transparent)]
    OciSetup(#[from] crate::oci::OciError),
    #[error(transparent)]
    SecretFile(#[from] crate::hardening::SecretFileError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Usage(String),
    /// An OCI call or its preparation failed (the gRPC code name and message).
    #[error("{0}")]
    Oci(String),
}

/// The causes of `e` (its `source()` chain, not `e` itself), each as ": cause": for one-line
/// messages that keep the reason a library error wraps, e.g. "connection refused".
pub(crate) fn causes(e: &dyn std::error::Error) -> String {
    let mut text = String::new();
    let mut last = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        // Libraries often wrap an error in one that says the same: said once.
        let said = c.to_string();
        if said != last && !last.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        last = said;
        cur = c.source();
    }
    text
}
