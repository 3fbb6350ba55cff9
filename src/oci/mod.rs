//! Oracle Cloud: request signing (OCI HTTP Signature version 1), API-key identities from
//! `~/.oci/config`-style files, the endpoint allow-list, and the KMS management client with
//! OCI's retry rules.
//!
//! Holds the operator's API private key; never logs it or anything derived from it but the
//! public fingerprint.

pub(crate) mod endpoint;
pub(crate) mod identity;
pub(crate) mod kms;
pub mod signer;

pub(crate) use identity::Identity;
pub use signer::{RequestParts, RequestSigner};

/// Whether `id` looks like an OCID starting with `prefix` (e.g. "ocid1.key."): at most 255
/// characters of letters, digits, '.', '-' and '_'.
pub(crate) fn is_ocid(id: &str, prefix: &str) -> bool {
    id.starts_with(prefix)
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("OCI API key: {0}")]
    Key(String),
    #[error("URL {url:?}: {why}")]
    Url { url: String, why: &'static str },
    #[error("endpoint {0:?} is not in oci.allowed_endpoints")]
    NotAllowed(String),
    #[error("signing: {0}")]
    Sign(String),
    /// The HTTPS client could not be set up (TLS roots, `oci.ca_bundle`).
    #[error("{0}")]
    Client(String),
    /// An `[oci.connections.NAME]` identity could not be loaded.
    #[error("oci.connections.{name}: {err}")]
    Connection { name: String, err: Box<OciError> },
}
