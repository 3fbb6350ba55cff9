//! hsm-bridge: moves keys out of a PKCS#11 HSM into a cloud's key-management service,
//! wrapped for the cloud without the key ever in clear outside the HSM.
//!
//! A tour, in the order a request flows (docs/ARCHITECTURE.md has the files):
//! - `service`: the gRPC daemon: caller identity, listeners and their limits, requests into
//!   the export core, canonical codes into gRPC statuses, health, reflection, shutdown.
//! - [`cli`]: the `hsm-bridge` subcommands, into the same export core.
//! - `export`: the export core: admission, the wrap, the journal, the `Destination` seam
//!   (OCI's first), the HSM queue.
//! - [`hsm`]: the PKCS#11 module, token login, session pool, key lookup, the start-up
//!   self-test that proves which wrap mechanisms are real, and the three wrap modes.
//! - [`wrap`]: pure functions: the clouds' formats, layouts and envelopes, wrapping-key
//!   parsing, software OAEP / KWP.
//! - [`journal`]: the import journal (SQLite, PostgreSQL).
//! - [`oci`]: Oracle Cloud's client: request signing, identities, the endpoint allow-list,
//!   the KMS management client with safe retries.
//! - `audit`, `code`, `policy`: the audit log, the canonical codes, which keys may leave.
//! - [`config`], [`hardening`], [`time`]: the typed config, process hardening, times.
//!
//! Everything is the crate's own unless the tests, the benchmarks, the emulator or `main.rs`
//! use it: the public modules hold only those items public, the rest `pub(crate)`
//! (`unreachable_pub` is on: Cargo.toml `[lints]`).

// Unsafe code only where it is documented and needed: src/hsm/raw.rs (raw PKCS#11 calls)
// and src/hardening.rs (locked memory, OpenSSL's secure heap); each allows it itself.
#![deny(unsafe_code)]

pub(crate) mod audit;
pub(crate) mod aws;
pub(crate) mod azure;
pub mod cli;
pub(crate) mod clouds;
pub(crate) mod code;
pub(crate) mod codec;
pub mod config;
pub(crate) mod error;
pub(crate) mod export;
pub(crate) mod gcp;
pub mod hardening;
pub mod hsm;
pub mod journal;
pub(crate) mod keyref;
pub(crate) mod memo;
pub(crate) mod metrics;
pub mod oci;
pub(crate) mod policy;
pub(crate) mod service;
pub(crate) mod text;
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
