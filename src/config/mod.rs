//! The typed TOML config (reference: config/hsm-bridge.toml): parsing, `${VAR}` expansion, path resolution
//! and validation. Every error names the file, and where it can, the line and the key.
//!
//! The config holds paths to secrets (PIN file), never the secrets themselves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {file}: {msg}")]
    Invalid { file: String, msg: String },
    /// The listener, TLS and client settings do not go together (see listen.rs).
    #[error("{0}")]
    Listen(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    pub hsm: HsmConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub oci: OciConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub journal: JournalConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[destinations.NAME]`: where imports by destination name go (destinations.rs).
    #[serde(default)]
    pub(crate) destinations: BTreeMap<String, Destination>,
    /// The file this was loaded from.
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM) for client certificates; reloaded with SIGHUP,
    /// and then checked against open connections too.
    pub client_crl: Option<PathBuf>,
    #[serde(default)]
    pub plaintext: bool,
    /// Calls that may wait for an HSM session beyond those being served; past this a
    /// call gets RESOURCE_EXHAUSTED at once.
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    /// How long SIGTERM/SIGINT waits for calls in flight before the daemon exits anyway.
    #[serde(default = "default_grace")]
    pub shutdown_grace_secs: u64,
    /// Connections open at once, once their TLS handshake is done and their certificate
    /// names a client; one more is closed. At most what the file limit allows beside the
    /// HSM module's share (the start-up log says what it is).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections open at once from one peer address.
    #[serde(default = "default_per_address")]
    pub max_connections_per_address: usize,
    /// TLS handshakes in progress at once (a quarter of them from one address); a new one
    /// pushes out the oldest when full.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    /// A TLS handshake not finished within this is dropped.
    #[serde(default = "default_handshake_timeout")]
    pub tls_handshake_timeout_secs: u64,
    /// A connection with no call in progress and no byte either way for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// A connection is asked to go away (HTTP/2 GOAWAY; calls in progress finish) after this
    /// long; clients reconnect.
    #[serde(default = "default_max_connection_age")]
    pub max_connection_age_secs: u64,
    /// HTTP/2 streams (calls) one connection may have open at once.
    #[serde(default = "default_streams")]
    pub max_concurrent_streams: u32,
    /// Threads for the network side (connections, TLS, gRPC, audit); the HSM work runs on
    /// threads of its own, one per session.
    #[serde(default = "default_io_threads")]
    pub io_threads: usize,
    #[serde(default)]
    pub(crate) clients: Vec<ClientConfig>,
    /// `IP:PORT` of a plain-text listener that serves only `grpc.health.v1.Health` (for
    /// probes that cannot do mutual TLS, e.g. Kubernetes' gRPC probes); unset: none.
    pub health_listen: Option<String>,
}

fn default_max_connections() -> usize {
    256
}
fn default_per_address() -> usize {
    64
}
fn default_max_handshakes() -> usize {
    64
}
fn default_handshake_timeout() -> u64 {
    5
}
fn default_idle_timeout() -> u64 {
    300
}
fn default_max_connection_age() -> u64 {
    3600
}
fn default_streams() -> u32 {
    100
}
/// One: a call's network work is tens of microseconds, far below its HSM work, and every
/// further thread adds wake-ups between threads to each call (BENCHMARKS.md, "The daemon's
/// own CPU per call").
fn default_io_threads() -> usize {
    1
}

fn default_max_queue() -> usize {
    64
}
fn default_grace() -> u64 {
    30
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            client_crl: None,
            plaintext: false,
            max_queue: default_max_queue(),
            shutdown_grace_secs: default_grace(),
            max_connections: default_max_connections(),
            max_connections_per_address: default_per_address(),
            max_handshakes: default_max_handshakes(),
            tls_handshake_timeout_secs: default_handshake_timeout(),
            idle_timeout_secs: default_idle_timeout(),
            max_connection_age_secs: default_max_connection_age(),
            max_concurrent_streams: default_streams(),
            io_threads: default_io_threads(),
            clients: Vec::new(),
            health_listen: None,
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:50051".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientConfig {
    pub name: String,
    /// TLS callers: the client certificate's subject CN.
    #[serde(default)]
    pub subject_cn: Option<String>,
    /// Unix-socket callers: the peer process's uid (SO_PEERCRED).
    #[serde(default)]
    pub unix_uid: Option<u32>,
    /// Plain-text TCP on loopback: every local process is this caller (at most one entry).
    #[serde(default)]
    pub loopback: bool,
    pub operations: Vec<Operation>,
    #[serde(default)]
    pub keys: Vec<String>,
    /// Vault management endpoints (globs, as `oci.allowed_endpoints`) this caller may import
    /// into; unset = every allowed endpoint. An endpoint must be on both lists.
    #[serde(default)]
    pub oci_endpoints: Option<Vec<String>>,
    /// Compartment OCIDs (globs) this caller's imports may land in; unset = any.
    #[serde(default)]
    pub oci_compartments: Option<Vec<String>>,
    /// `[destinations.NAME]` names this caller may import into (`Import`); unset = none.
    #[serde(default)]
    pub destinations: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Operation {
    List,
    Wrap,
    Import,
    /// New material generated in the HSM and imported (`RotateKey`, `hsm-bridge rotate`);
    /// the new key's label must match the caller's `keys`.
    Rotate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    /// The PKCS#11 library.
    pub module: PathBuf,
    /// Environment set before the module loads. Values that start with `./` or `../` are
    /// paths relative to the config file.
    #[serde(default)]
    pub module_env: BTreeMap<String, String>,
    /// The token's label; or, instead, `token`: a PKCS#11 URI naming it by any of token,
    /// manufacturer, serial, model, slot-id (RFC 7512).
    #[serde(default)]
    pub token_label: String,
    pub token: Option<String>,
    pub pin_file: Option<PathBuf>,
    pub pin_env: Option<String>,
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    #[serde(default)]
    pub(crate) wrap_mode: WrapModeSetting,
    /// Least time between two re-initialisations of the module (C_Finalize, C_Initialize,
    /// login, new sessions) after device-level errors.
    #[serde(default = "default_reinit_interval")]
    pub reinit_interval_secs: u64,
    /// The role to log in as: "user" (`CKU_USER`; Luna's Crypto Officer) or a vendor
    /// number (e.g. Luna's Crypto User, 0x80000001).
    #[serde(default)]
    pub(crate) user_type: UserType,
    /// The marker a refused PIN leaves (`journal.pin_marker`): while it exists, nothing
    /// logs in. Set when the config is loaded.
    #[serde(skip)]
    pub pin_marker: Option<PathBuf>,
}

impl HsmConfig {
    /// What the token must match.
    pub(crate) fn token_match(
        &self,
    ) -> Result<crate::keyref::uri::TokenMatch, crate::keyref::uri::UriError> {
        match &self.token {
            Some(uri) => crate::keyref::uri::TokenMatch::parse(uri),
            None => Ok(crate::keyref::uri::TokenMatch::label(&self.token_label)),
        }
    }

    /// The token as messages name it: its label, or the URI.
    pub(crate) fn token_name(&self) -> &str {
        self.token.as_deref().unwrap_or(&self.token_label)
    }
}

/// `hsm.user_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(untagged)]
pub(crate) enum UserType {
    #[default]
    #[serde(skip)]
    User,
    /// "user", or a number.
    Named(UserTypeName),
    Number(cryptoki_sys::CK_USER_TYPE),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum UserTypeName {
    User,
}

impl UserType {
    /// The `CK_USER_TYPE` to log in as.
    pub(crate) fn ck_user_type(self) -> cryptoki_sys::CK_USER_TYPE {
        match self {
            UserType::User | UserType::Named(UserTypeName::User) => cryptoki_sys::CKU_USER,
            UserType::Number(n) => n,
        }
    }
}

fn default_sessions() -> usize {
    4
}

fn default_reinit_interval() -> u64 {
    30
}

/// `hsm.wrap_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum WrapModeSetting {
    #[default]
    Auto,
    HsmNative,
    HsmTwoStep,
    Hybrid,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Label globs of keys that may leave; the key must also be CKA_EXTRACTABLE.
    /// Default: none.
    #[serde(default)]
    pub exportable: Vec<String>,
    #[serde(default)]
    pub caller_wrapping_keys: CallerWrappingKeys,
    #[serde(default)]
    pub pinned_wrapping_keys: Vec<String>,
    /// PEM public keys whose fingerprints are pinned too (read at start).
    #[serde(default)]
    pub pinned_wrapping_key_files: Vec<PathBuf>,
    #[serde(default = "yes")]
    pub allow_hybrid: bool,
    #[serde(default = "default_min_bits")]
    pub min_wrapping_key_bits: u32,
    /// OCI protection modes an import may create or add a version to.
    #[serde(default = "default_protection_modes")]
    pub(crate) protection_modes: Vec<ProtectionMode>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            exportable: Vec::new(),
            caller_wrapping_keys: CallerWrappingKeys::default(),
            pinned_wrapping_keys: Vec::new(),
            pinned_wrapping_key_files: Vec::new(),
            allow_hybrid: true,
            min_wrapping_key_bits: default_min_bits(),
            protection_modes: default_protection_modes(),
        }
    }
}

/// An OCI key protection mode (`EXTERNAL` keys cannot be imported into).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum ProtectionMode {
    Hsm,
    Software,
}

impl ProtectionMode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ProtectionMode::Hsm => "HSM",
            ProtectionMode::Software => "SOFTWARE",
        }
    }

    /// OCI's name; an empty one is OCI's default, HSM.
    pub(crate) fn parse(s: &str) -> Option<ProtectionMode> {
        match s {
            "" | "HSM" => Some(ProtectionMode::Hsm),
            "SOFTWARE" => Some(ProtectionMode::Software),
            _ => None,
        }
    }
}

fn default_protection_modes() -> Vec<ProtectionMode> {
    vec![ProtectionMode::Hsm]
}

fn yes() -> bool {
    true
}
fn default_min_bits() -> u32 {
    2048
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallerWrappingKeys {
    Any,
    Pinned,
    #[default]
    None,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciConfig {
    #[serde(default = "default_endpoints")]
    pub allowed_endpoints: Vec<String>,
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    #[serde(default)]
    pub connections: BTreeMap<String, OciConnection>,
}

impl Default for OciConfig {
    fn default() -> Self {
        OciConfig {
            allowed_endpoints: default_endpoints(),
            ca_bundle: None,
            timeout_ms: default_timeout_ms(),
            max_attempts: default_attempts(),
            connections: BTreeMap::new(),
        }
    }
}

fn default_endpoints() -> Vec<String> {
    vec!["https://*.kms.*.oraclecloud.com".into()]
}
fn default_timeout_ms() -> u64 {
    30_000
}
fn default_attempts() -> u32 {
    5
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciConnection {
    pub config_file: PathBuf,
    #[serde(default = "default_profile")]
    pub profile: String,
}

fn default_profile() -> String {
    "DEFAULT".into()
}

/// `[metrics]`: Prometheus metrics on a listener of their own (src/metrics.rs).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `IP:PORT` for `GET /metrics` (plain HTTP: keep it on loopback or a private network);
    /// unset: no listener.
    pub listen: Option<String>,
    /// Also count exports by key label (cardinality grows with the keys, and key names can
    /// be sensitive).
    #[serde(default)]
    pub key_labels: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// JSON-lines file, or "-" for stderr.
    #[serde(default = "default_audit")]
    pub path: PathBuf,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: default_audit(),
        }
    }
}

fn default_audit() -> PathBuf {
    "-".into()
}

impl Config {
    /// Reads, expands, resolves and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let err = |msg: String| ConfigError::Invalid {
            file: file.clone(),
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::parse(&text, path)
    }

    /// Parses config text as if it came from `path` (relative paths resolve against its
    /// folder). Errors are one line naming the file: `line:col: message` where the position
    /// is known.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Self::parse_text(text, path).map_err(|msg| ConfigError::Invalid {
            file: path.display().to_string(),
            msg,
        })
    }

    fn parse_text(text: &str, path: &Path) -> Result<Config, String> {
        // First pass on the text itself, so unknown keys and wrong types come with a line.
        if let Err(e) = toml::from_str::<Config>(text) {
            return Err(one_line_toml_error(text, &e));
        }
        let mut value: toml::Value =
            toml::from_str(text).map_err(|e| one_line_toml_error(text, &e))?;
        expand_vars(&mut value, &mut Vec::new())?;
        let mut cfg = Config::deserialize(value).map_err(|e| e.message().to_string())?;
        cfg.path = path.to_path_buf();
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        cfg.resolve_paths(&base)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) -> Result<(), String> {
        let fix = |p: &mut PathBuf| {
            if let Ok(rest) = p.strip_prefix("~") {
                if let Some(home) = std::env::var_os("HOME") {
                    *p = PathBuf::from(home).join(rest);
                }
            } else if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.hsm.module);
        for v in self.hsm.module_env.values_mut() {
            if v.starts_with("./") || v.starts_with("../") {
                *v = base.join(&*v).display().to_string();
            }
        }
        self.hsm.pin_file.as_mut().map(fix);
        self.server.tls_cert.as_mut().map(fix);
        self.server.tls_key.as_mut().map(fix);
        self.server.client_ca.as_mut().map(fix);
        self.server.client_crl.as_mut().map(fix);
        self.policy
            .pinned_wrapping_key_files
            .iter_mut()
            .for_each(fix);
        if let Some(ca) = self.oci.ca_bundle.as_mut() {
            if ca.as_os_str().is_empty() {
                self.oci.ca_bundle = None;
            } else {
                fix(ca);
            }
        }
        for c in self.oci.connections.values_mut() {
            fix(&mut c.config_file);
        }
        if self.audit.path != Path::new("-") {
            fix(&mut self.audit.path);
        }
        destinations::resolve(&mut self.destinations, fix);
        self.journal.resolve(base, fix)?;
        self.hsm.pin_marker = self.journal.pin_marker.clone();
        Ok(())
    }
}

fn one_line_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {col}: {msg}")
        }
        None => msg,
    }
}

/// Replaces `${NAME}` in every string value with the environment variable NAME. An unset
/// variable is an error that names it and the key.
fn expand_vars(v: &mut toml::Value, at: &mut Vec<String>) -> Result<(), String> {
    match v {
        toml::Value::String(s) if s.contains("${") => {
            *s = expand_str(s).map_err(|var| {
                format!("{}: environment variable {var} is not set", at.join("."))
            })?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                at.push(i.to_string());
                expand_vars(item, at)?;
                at.pop();
            }
        }
        toml::Value::Table(t) => {
            for (k, item) in t.iter_mut() {
                at.push(k.clone());
                expand_vars(item, at)?;
                at.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_str(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        let value = std::env::var(name).map_err(|_| name.to_string())?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

mod destinations;
mod journal;
mod listen;
mod validate;
pub(crate) use destinations::{
    AwsDestination, AzureDestination, AzureKind, Destination, GCP_METADATA, GcpDestination,
};
pub use journal::{JournalConfig, JournalStore};
pub(crate) use listen::Listen;

#[cfg(test)]
mod tests;
