//! hsm-bridge: moves keys out of a PKCS#11 HSM into OCI Vault, wrapped for the vault
//! without the key ever in clear outside the HSM.
//!
//! A tour, in the order a request flows:
//! - [`config`]: the typed TOML config and its validation.
//! - [`hsm`]: the PKCS#11 module, token login, session pool, key lookup, the start-up
//!   self-test that proves which wrap mechanisms are real, and the three wrap modes.
//! - [`wrap`]: pure functions: OCI's envelope, wrapping-key parsing, software OAEP / KWP.
//! - [`oci`]: Oracle Cloud: request signing, identities, the endpoint allow-list, the KMS
//!   management client with safe retries.
//! - [`import`]: ImportKeyVersion / ImportKey for the daemon and the CLI: wrapping-key fetch,
//!   HSM wrap, one body and retry token per import, idempotency claims, waiting for ENABLED.
//! - [`policy`]: which keys may leave, and for whom.
//! - [`service`]: the gRPC daemon: caller identity, per-caller policy, bounded HSM queue,
//!   audit, health, reflection, graceful shutdown.
//! - [`cli`]: the `hsm-bridge` subcommands.
//! - [`hardening`]: no core dumps, non-dumpable process.

// Unsafe code only where it is documented and needed: src/hsm/raw.rs (raw PKCS#11 calls)
// and src/hardening.rs (locked memory, OpenSSL's secure heap); each allows it itself.
#![deny(unsafe_code)]

pub mod audit;
pub mod cli;
pub mod code;
pub mod codec;
pub mod config;
pub mod error;
pub mod hardening;
pub mod hsm;
pub(crate) mod import;
pub mod journal;
pub(crate) mod memo;
pub mod metrics;
pub mod oci;
pub(crate) mod policy;
pub(crate) mod service;
pub mod text;
pub mod time;
pub mod wrap;

pub use error::Error;

/// The gRPC API (`proto/hsmbridge/v1/bridge.proto`), generated at build time.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("hsmbridge.v1");

    /// The encoded descriptor set of the API, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/hsmbridge_descriptor.bin"));
}
