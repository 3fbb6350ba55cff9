//! hsm-bridge: moves keys out of a PKCS#11 HSM into OCI Vault, wrapped for the vault
//! without the key ever in clear outside the HSM.
//!
//! A tour, in the order a request flows:
//! - [`config`]: the typed TOML config and its validation.
//! - [`hsm`]: the PKCS#11 module, token login, session pool, key lookup, the start-up
//!   self-test that proves which wrap mechanisms are real, and the three wrap modes.
//! - [`wrap`]: pure functions: OCI's envelope, wrapping-key parsing, software OAEP / KWP.
//! - [`policy`]: which keys may leave.
//! - [`cli`]: the `hsm-bridge` subcommands.
//! - [`hardening`]: no core dumps, non-dumpable process.

pub mod cli;
pub mod config;
pub mod error;
pub mod hardening;
pub mod hsm;
pub mod policy;
pub mod wrap;

pub use error::Error;
