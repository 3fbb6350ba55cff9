//! The `KeySourceBridge` gRPC service: identifies the caller first, applies per-caller and
//! export policy, queues HSM work with a bound, and writes the audit record of every
//! export attempt before answering. `tonic::Status` is built here and nowhere below.
//!
//! The service never sees key material in clear: the HSM layer returns ciphertext. Nothing a
//! caller sends is recorded before it is checked (an audit record says "invalid" instead).
//!
//! Here: the service's state and the RPC entry points. Beside it, by responsibility:
//! `request.rs` (what a call carries, parsed), `auth.rs` (who calls), `keys.rs`
//! (ListSourceKeys, GetSourceKey, what a caller may see), `wrap_key.rs` (WrapKey and the
//! admission every export shares), `imports.rs` (ImportKeyVersion, ImportKey), `audit.rs`
//! (the caller identified first, the record written with the call's result), `limit.rs`,
//! `server.rs`, and `status.rs`, the one mapping of errors to gRPC codes.

pub(crate) mod audit;
pub(crate) mod auth;
mod imports;
mod keys;
pub(crate) mod limit;
mod notify;
mod reload;
mod request;
pub(crate) mod server;
pub(crate) mod status;
pub(crate) mod tls;
mod wrap_key;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use crate::audit::{self as audit_log, Attempt, Audit, Record};
use crate::config::{PolicyConfig, ProtectionMode};
use crate::export::oci::OciSide;
use crate::export::queue::HsmQueue;
use crate::export::{Exporter, HsmPath};
use crate::hsm::{Hsm, HsmError};
use crate::policy::WrappingKeyPolicy;
use crate::proto::{self, key_source_bridge_server::KeySourceBridge};
use crate::wrap;
use auth::{Authenticator, Caller};

/// What SIGHUP may replace (`server.rs`, `reload`): a call takes the settings current at
/// its start and keeps them to its end.
pub(crate) struct Settings {
    auth: Authenticator,
    /// Which caller-supplied wrapping keys `WrapKey` may use.
    wrapping_policy: WrappingKeyPolicy,
    /// The OCI client, identities and endpoint allow-list (and the shared journal).
    oci: Arc<OciSide>,
    /// `policy.protection_modes`: what an import may create or add a version to.
    protection_modes: Vec<ProtectionMode>,
    /// The `[destinations]` (AWS KMS for now) and their clients.
    destinations: Arc<crate::clouds::Clouds>,
}

impl Settings {
    pub(crate) fn new(
        auth: Authenticator,
        policy: &PolicyConfig,
        wrapping_policy: WrappingKeyPolicy,
        (oci, destinations): (OciSide, crate::clouds::Clouds),
    ) -> Settings {
        Settings {
            auth,
            wrapping_policy,
            oci: Arc::new(oci),
            protection_modes: policy.protection_modes.clone(),
            destinations: Arc::new(destinations),
        }
    }
}

/// Everything a call needs, shared by all calls.
pub(crate) struct Bridge {
    hsm: Arc<Hsm>,
    audit: Arc<Audit>,
    /// The export core, over the HSM queue (bounded, fair, deadline-aware).
    exporter: Exporter,
    /// Callers' wrapping keys, parsed once each.
    wrapping_keys: wrap::wrapping_key::ParsedKeys,
    settings: std::sync::RwLock<Arc<Settings>>,
    /// The daemon's TLS, when it speaks TLS: every call's connection must still be vouched
    /// for by the client CA in place now (a reload may have replaced it).
    tls: Option<tls::TlsState>,
}

#[tonic::async_trait]
impl KeySourceBridge for Bridge {
    async fn list_source_keys(
        &self,
        req: Request<proto::ListSourceKeysRequest>,
    ) -> Result<Response<proto::ListSourceKeysResponse>, Status> {
        let _timer = crate::metrics::RpcTimer::start("ListSourceKeys");
        self.list_source_keys_inner(req).await
    }

    async fn get_source_key(
        &self,
        req: Request<proto::GetSourceKeyRequest>,
    ) -> Result<Response<proto::SourceKey>, Status> {
        let _timer = crate::metrics::RpcTimer::start("GetSourceKey");
        self.get_source_key_inner(req).await
    }

    async fn wrap_key(
        &self,
        req: Request<proto::WrapKeyRequest>,
    ) -> Result<Response<proto::WrapKeyResponse>, Status> {
        let _timer = crate::metrics::RpcTimer::start(audit_log::Operation::WrapKey.as_str());
        let mut guard = Attempt::new(
            self.audit.clone(),
            request::request_id(&req),
            audit_log::Operation::WrapKey,
        );
        let result = self.wrap_key_inner(req, &mut guard).await;
        self.audit(&mut guard, result).map(Response::new)
    }

    async fn import_key_version(
        &self,
        req: Request<proto::ImportKeyVersionRequest>,
    ) -> Result<Response<proto::ImportKeyVersionResponse>, Status> {
        let _timer =
            crate::metrics::RpcTimer::start(audit_log::Operation::ImportKeyVersion.as_str());
        let mut guard = Attempt::new(
            self.audit.clone(),
            request::request_id(&req),
            audit_log::Operation::ImportKeyVersion,
        );
        let result = self.import_key_version_inner(req, &mut guard).await;
        self.audit(&mut guard, result).map(Response::new)
    }

    async fn import_key(
        &self,
        req: Request<proto::ImportKeyRequest>,
    ) -> Result<Response<proto::ImportKeyResponse>, Status> {
        let _timer = crate::metrics::RpcTimer::start(audit_log::Operation::ImportKey.as_str());
        let mut guard = Attempt::new(
            self.audit.clone(),
            request::request_id(&req),
            audit_log::Operation::ImportKey,
        );
        let result = self.import_key_inner(req, &mut guard).await;
        self.audit(&mut guard, result).map(Response::new)
    }

    async fn import(
        &self,
        req: Request<proto::ImportRequest>,
    ) -> Result<Response<proto::ImportResponse>, Status> {
        let _timer = crate::metrics::RpcTimer::start(audit_log::Operation::Import.as_str());
        let mut guard = Attempt::new(
            self.audit.clone(),
            request::request_id(&req),
            audit_log::Operation::Import,
        );
        let result = self.import_inner(req, &mut guard).await;
        self.audit(&mut guard, result).map(Response::new)
    }

    async fn rotate_key(
        &self,
        req: Request<proto::RotateKeyRequest>,
    ) -> Result<Response<proto::RotateKeyResponse>, Status> {
        let _timer = crate::metrics::RpcTimer::start(audit_log::Operation::RotateKey.as_str());
        let mut guard = Attempt::new(
            self.audit.clone(),
            request::request_id(&req),
            audit_log::Operation::RotateKey,
        );
        let result = self.rotate_key_inner(req, &mut guard).await;
        self.audit(&mut guard, result).map(Response::new)
    }
}

impl Bridge {
    pub(crate) fn new(
        hsm: Arc<Hsm>,
        audit: Arc<Audit>,
        max_queue: usize,
        settings: Settings,
        tls: Option<tls::TlsState>,
    ) -> Bridge {
        Bridge {
            exporter: Exporter::new(HsmPath::Queued(
                HsmQueue::new(&hsm, hsm.sessions(), max_queue),
                hsm.clone(),
            )),
            wrapping_keys: wrap::wrapping_key::ParsedKeys::new(hsm.min_wrapping_key_bits()),
            hsm,
            audit,
            settings: std::sync::RwLock::new(Arc::new(settings)),
            tls,
        }
    }

    /// Whether a client certificate (DER) names a `[[server.clients]]` entry now: a TLS
    /// connection whose certificate does not is closed after its handshake.
    pub(crate) fn lists_certificate(&self, leaf: &[u8]) -> bool {
        self.settings().auth.lists_certificate(leaf)
    }

    /// The settings now (a call keeps the ones it started with).
    fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts `new` in place for calls that start from now on.
    pub(crate) fn replace_settings(&self, new: Settings) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
    }

    /// Waits until every queued or running HSM call has finished (for shutdown).
    pub(crate) async fn drain(&self, within: Duration) -> bool {
        self.exporter.hsm().drain(within).await
    }

    /// Runs `work` on an HSM worker (which has a session), if the queue has room; gives up
    /// at the call's deadline. A call still waiting for a worker at its deadline never
    /// reaches the HSM.
    async fn on_hsm<T: Send + 'static>(
        &self,
        deadline: Option<Instant>,
        work: impl FnOnce(&Hsm, Option<Instant>) -> Result<T, HsmError> + Send + 'static,
    ) -> Result<T, Status> {
        self.exporter
            .hsm()
            .run(deadline, work)
            .await
            .map_err(|e| status::export(&e))
    }

    /// The caller of `req`, recorded in `rec`: the first thing every call does, before any
    /// other header or field is read.
    fn caller<T>(
        &self,
        settings: &Settings,
        req: &Request<T>,
        rec: Option<&mut Record>,
    ) -> Result<Caller, Status> {
        let caller = settings.auth.identify(req).map_err(|why| {
            Status::unauthenticated(format!(
                "{why}; ask the operator to add you to server.clients"
            ))
        })?;
        if let Some(tls) = &self.tls {
            let conn = req.extensions().get::<limit::ConnHandle>();
            let chain = req.peer_certs().unwrap_or_default();
            tls.vouches(conn.map(|c| &*c.0), &chain[..])
                .map_err(Status::unauthenticated)?;
        }
        if let Some(rec) = rec {
            rec.caller = caller.display.clone();
        }
        Ok(caller)
    }
}
