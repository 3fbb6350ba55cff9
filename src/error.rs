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
