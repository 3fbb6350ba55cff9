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
    #[serde(default)]
    pub plaintext: bool,
    /// Calls that may wait for an HSM session beyond those being served; past this a
    /// call gets RESOURCE_EXHAUSTED at once.
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    /// How long SIGTERM/SIGINT waits for calls in flight before the daemon exits anyway.
    #[serde(default = "default_grace")]
    pub shutdown_grace_secs: u64,
    /// Connections open at once (TLS handshakes included); one more is closed at accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A TLS handshake not finished within this is dropped.
    #[serde(default = "default_handshake_timeout")]
    pub tls_handshake_timeout_secs: u64,
    /// HTTP/2 streams (calls) one connection may have open at once.
    #[serde(default = "default_streams")]
    pub max_concurrent_streams: u32,
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
}

fn default_max_connections() -> usize {
    256
}
fn default_handshake_timeout() -> u64 {
    10
}
fn default_streams() -> u32 {
    100
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
            plaintext: false,
            max_queue: default_max_queue(),
            shutdown_grace_secs: default_grace(),
            max_connections: default_max_connections(),
            tls_handshake_timeout_secs: default_handshake_timeout(),
            max_concurrent_streams: default_streams(),
            clients: Vec::new(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:50051".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    List,
    Wrap,
    Import,
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
    pub token_label: String,
    pub pin_file: Option<PathBuf>,
    pub pin_env: Option<String>,
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    #[serde(default)]
    pub wrap_mode: WrapModeSetting,
    /// Least time between two re-initialisations of the module (C_Finalize, C_Initialize,
    /// login, new sessions) after device-level errors.
    #[serde(default = "default_reinit_interval")]
    pub reinit_interval_secs: u64,
    /// The role to log in as: "user" (`CKU_USER`; Luna's Crypto Officer) or a vendor
    /// number (e.g. Luna's Crypto User, 0x80000001).
    #[serde(default)]
    pub user_type: UserType,
}

/// `hsm.user_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(untagged)]
pub enum UserType {
    #[default]
    #[serde(skip)]
    User,
    /// "user", or a number.
    Named(UserTypeName),
    Number(cryptoki_sys::CK_USER_TYPE),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserTypeName {
    User,
}

impl UserType {
    /// The `CK_USER_TYPE` to log in as.
    pub fn ck_user_type(self) -> cryptoki_sys::CK_USER_TYPE {
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
pub enum WrapModeSetting {
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
    pub protection_modes: Vec<ProtectionMode>,
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
pub enum ProtectionMode {
    Hsm,
    Software,
}

impl ProtectionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProtectionMode::Hsm => "HSM",
            ProtectionMode::Software => "SOFTWARE",
        }
    }

    /// OCI's name; an empty one is OCI's default, HSM.
    pub fn parse(s: &str) -> Option<ProtectionMode> {
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
        Self::parse(&text, path).map_err(err)
    }

    /// Parses config text as if it came from `path` (relative paths resolve against its
    /// folder). Errors are one line: `line:col: message` where the position is known.
    pub fn parse(text: &str, path: &Path) -> Result<Config, String> {
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
        cfg.resolve_paths(&base);
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
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
    }

    fn validate(&self) -> Result<(), String> {
        let h = &self.hsm;
        match (&h.pin_file, &h.pin_env) {
            (Some(_), Some(_)) => {
                return Err("hsm: set pin_file or pin_env, not both".into());
            }
            (None, None) => {
                return Err("hsm: set pin_file (a file of mode 0600) or pin_env".into());
            }
            _ => {}
        }
        if h.token_label.is_empty() || h.token_label.len() > 32 {
            return Err("hsm.token_label must be 1 to 32 bytes".into());
        }
        if !(1..=256).contains(&h.sessions) {
            return Err(format!(
                "hsm.sessions = {} is out of range 1..=256",
                h.sessions
            ));
        }
        if let UserType::Number(n) = h.user_type
            && n != cryptoki_sys::CKU_USER
            && n < 0x8000_0000
        {
            return Err(format!(
                "hsm.user_type = {n:#x}: give \"user\" (CKU_USER) or a vendor role number (0x80000000 or more, e.g. Luna's Crypto User 0x80000001); the security officer and context-specific logins are not for this daemon"
            ));
        }
        if !(1..=3600).contains(&h.reinit_interval_secs) {
            return Err(format!(
                "hsm.reinit_interval_secs = {} is out of range 1..=3600",
                h.reinit_interval_secs
            ));
        }
        if self.policy.min_wrapping_key_bits < 2048 {
            return Err(format!(
                "policy.min_wrapping_key_bits = {} is below 2048, which is not allowed",
                self.policy.min_wrapping_key_bits
            ));
        }
        if h.wrap_mode == WrapModeSetting::Hybrid && !self.policy.allow_hybrid {
            return Err("hsm.wrap_mode = \"hybrid\" but policy.allow_hybrid = false".into());
        }
        for fp in &self.policy.pinned_wrapping_keys {
            if fp.len() != 64 || crate::wrap::unhex(fp).is_none() {
                return Err(format!(
                    "policy.pinned_wrapping_keys: {fp:?} is not a hex SHA-256 (64 hex digits)"
                ));
            }
        }
        for pattern in &self.oci.allowed_endpoints {
            if !pattern.to_ascii_lowercase().starts_with("https://") {
                return Err(format!(
                    "oci.allowed_endpoints: {pattern:?} must start with https:// (requests carry signatures and wrapped keys)"
                ));
            }
        }
        for pattern in self.policy.exportable.iter() {
            if pattern.is_empty() {
                return Err("policy.exportable: empty pattern".into());
            }
        }
        if self.policy.protection_modes.is_empty() {
            return Err(
                "policy.protection_modes is empty: no import could run (default [\"HSM\"])".into(),
            );
        }
        let s = &self.server;
        if !(1..=65_536).contains(&s.max_connections) {
            return Err(format!(
                "server.max_connections = {} is out of range 1..=65536",
                s.max_connections
            ));
        }
        if !(1..=300).contains(&s.tls_handshake_timeout_secs) {
            return Err(format!(
                "server.tls_handshake_timeout_secs = {} is out of range 1..=300",
                s.tls_handshake_timeout_secs
            ));
        }
        if !(1..=1024).contains(&s.max_concurrent_streams) {
            return Err(format!(
                "server.max_concurrent_streams = {} is out of range 1..=1024",
                s.max_concurrent_streams
            ));
        }
        self.validate_clients()
    }

    /// Each `[[server.clients]]` entry names one identity (a certificate CN, a Unix uid, or
    /// loopback), no two entries the same one or the same name; destination lists are
    /// well-formed.
    fn validate_clients(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        let mut cns = std::collections::HashSet::new();
        let mut uids = std::collections::HashSet::new();
        let mut loopback = 0;
        for c in &self.server.clients {
            let at = format!("server.clients {:?}", c.name);
            if c.name.is_empty() || c.name.len() > 64 || c.name.chars().any(char::is_control) {
                return Err(format!(
                    "{at}: name must be 1 to 64 bytes without control characters"
                ));
            }
            if !names.insert(&c.name) {
                return Err(format!("two [[server.clients]] have name = {:?}", c.name));
            }
            let kinds = [c.subject_cn.is_some(), c.unix_uid.is_some(), c.loopback];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return Err(format!(
                    "{at}: set exactly one of subject_cn (TLS), unix_uid (Unix socket) or loopback = true (plain text on loopback)"
                ));
            }
            if let Some(cn) = &c.subject_cn
                && !cns.insert(cn)
            {
                return Err(format!("two [[server.clients]] have subject_cn = {cn:?}"));
            }
            if let Some(uid) = c.unix_uid
                && !uids.insert(uid)
            {
                return Err(format!("two [[server.clients]] have unix_uid = {uid}"));
            }
            loopback += usize::from(c.loopback);
            if loopback > 1 {
                return Err("more than one [[server.clients]] has loopback = true".into());
            }
            for p in c.oci_endpoints.iter().flatten() {
                if !p.to_ascii_lowercase().starts_with("https://") {
                    return Err(format!(
                        "{at}: oci_endpoints {p:?} must start with https://"
                    ));
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "t"
pin_file = "pin"
"#;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/hb/hsm-bridge.toml"))
    }

    #[test]
    fn minimal_config_and_defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.hsm.pin_file.as_deref(), Some(Path::new("/etc/hb/pin")));
        assert_eq!(c.hsm.sessions, 4);
        assert_eq!(c.hsm.wrap_mode, WrapModeSetting::Auto);
        assert!(
            c.policy.exportable.is_empty(),
            "nothing leaves unless configured"
        );
        assert_eq!(c.policy.caller_wrapping_keys, CallerWrappingKeys::None);
        assert_eq!(c.policy.min_wrapping_key_bits, 2048);
        assert_eq!(c.audit.path, Path::new("-"));
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = parse(&format!("{MIN}pin = \"1234\"\n")).unwrap_err();
        assert!(e.contains("unknown field `pin`"), "{e}");
        assert!(e.contains("line 6"), "{e}");
        let e = parse(&format!("{MIN}[policy]\nexportables = []\n")).unwrap_err();
        assert!(e.contains("exportables"), "{e}");
        let e = Config::load(Path::new("/nonexistent/x.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/x.toml"), "{e}");
    }

    #[test]
    fn bad_values() {
        let e = parse(&MIN.replace("pin_file = \"pin\"", "pin_file = \"p\"\npin_env = \"X\""))
            .unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let e = parse(&format!("{MIN}wrap_mode = \"fast\"\n")).unwrap_err();
        assert!(e.contains("fast"), "{e}");
        let e = parse(&format!("{MIN}sessions = 0\n")).unwrap_err();
        assert!(e.contains("sessions"), "{e}");
        let e = parse(&format!("{MIN}reinit_interval_secs = 0\n")).unwrap_err();
        assert!(e.contains("reinit_interval_secs"), "{e}");
        let e = parse(&format!("{MIN}[policy]\nmin_wrapping_key_bits = 1024\n")).unwrap_err();
        assert!(e.contains("1024"), "{e}");
        let e = parse(&format!(
            "{MIN}[policy]\npinned_wrapping_keys = [\"abc\"]\n"
        ))
        .unwrap_err();
        assert!(e.contains("abc"), "{e}");
        let e = parse(&format!("{MIN}[oci]\nallowed_endpoints = [\"http://*\"]\n")).unwrap_err();
        assert!(e.contains("https://"), "{e}");
    }

    #[test]
    fn login_roles() {
        assert_eq!(parse(MIN).unwrap().hsm.user_type.ck_user_type(), 1);
        let c = parse(&format!("{MIN}user_type = \"user\"\n")).unwrap();
        assert_eq!(c.hsm.user_type.ck_user_type(), 1);
        let c = parse(&format!("{MIN}user_type = 0x80000001\n")).unwrap();
        assert_eq!(c.hsm.user_type.ck_user_type(), 0x8000_0001);
        let e = parse(&format!("{MIN}user_type = 0\n")).unwrap_err();
        assert!(
            e.contains("hsm.user_type") && e.contains("security officer"),
            "{e}"
        );
        assert!(parse(&format!("{MIN}user_type = \"officer\"\n")).is_err());
    }

    #[test]
    fn env_expansion_and_relative_paths() {
        // SAFETY (test only): a variable no other test reads.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("HB_TEST_TOKEN_LABEL", "from-env")
        };
        let text = MIN.replace("\"t\"", "\"${HB_TEST_TOKEN_LABEL}\"")
            + "module_env = { SOFTHSM2_CONF = \"../s/softhsm2.conf\", OTHER = \"plain\" }\n";
        let c = parse(&text).unwrap();
        assert_eq!(c.hsm.token_label, "from-env");
        assert_eq!(
            c.hsm.module_env["SOFTHSM2_CONF"],
            "/etc/hb/../s/softhsm2.conf"
        );
        assert_eq!(c.hsm.module_env["OTHER"], "plain");
        let e = parse(&MIN.replace("\"t\"", "\"${HB_TEST_SURELY_UNSET}\"")).unwrap_err();
        assert!(
            e.contains("HB_TEST_SURELY_UNSET") && e.contains("hsm.token_label"),
            "{e}"
        );
    }
}

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl ServerConfig {
    /// Checks that the listener, TLS and clients settings make a safe combination:
    /// plain text only on loopback or a Unix socket and only with `plaintext = true`; TLS
    /// needs a certificate, its key and a client CA, because callers are identified by
    /// their certificate. Errors name the setting.
    pub fn listen(&self) -> Result<Listen, String> {
        let listen = match self.listen.strip_prefix("unix:") {
            Some("") => return Err("server.listen = \"unix:\" names no socket path".into()),
            Some(path) => Listen::Unix(PathBuf::from(path)),
            None => Listen::Tcp(self.listen.parse().map_err(|_| {
                format!(
                    "server.listen = {:?} is not host:port with an IP address (e.g. \"127.0.0.1:50051\") or unix:/path",
                    self.listen
                )
            })?),
        };
        let tls_set = self.tls_cert.is_some() || self.tls_key.is_some() || self.client_ca.is_some();
        match (&listen, self.plaintext) {
            (Listen::Unix(_), false) => Err(
                "server.listen is a Unix socket, which is served in plain text only: set server.plaintext = true (the socket is created with mode 0600)".into(),
            ),
            (_, true) if tls_set => Err(
                "server.plaintext = true together with tls_cert/tls_key/client_ca: choose one".into(),
            ),
            (Listen::Tcp(addr), true) if !addr.ip().is_loopback() => Err(format!(
                "server.plaintext = true is allowed only on loopback addresses or Unix sockets, not {addr}"
            )),
            (_, true) => Ok(listen),
            (Listen::Tcp(_), false) => {
                let missing: Vec<&str> = [
                    ("server.tls_cert", self.tls_cert.is_none()),
                    ("server.tls_key", self.tls_key.is_none()),
                    ("server.client_ca", self.client_ca.is_none()),
                ]
                .into_iter()
                .filter_map(|(name, absent)| absent.then_some(name))
                .collect();
                if !missing.is_empty() {
                    return Err(format!(
                        "TLS listener needs {} (callers are identified by client certificate); or, on loopback only, set server.plaintext = true",
                        missing.join(", ")
                    ));
                }
                if !self.clients.iter().any(|c| c.subject_cn.is_some()) {
                    return Err("server.client_ca is set but no [[server.clients]] has a subject_cn: no caller could do anything".into());
                }
                Ok(listen)
            }
        }
    }
}

#[cfg(test)]
mod listen_tests {
    use super::*;

    fn server(listen: &str, plaintext: bool, tls: bool) -> ServerConfig {
        let mut s = ServerConfig {
            listen: listen.into(),
            plaintext,
            ..ServerConfig::default()
        };
        if tls {
            s.tls_cert = Some("c".into());
            s.tls_key = Some("k".into());
            s.client_ca = Some("ca".into());
            s.clients.push(ClientConfig {
                name: "a".into(),
                subject_cn: Some("a".into()),
                unix_uid: None,
                loopback: false,
                operations: vec![Operation::List],
                keys: vec!["*".into()],
                oci_endpoints: None,
                oci_compartments: None,
            });
        }
        s
    }

    #[test]
    fn listener_combinations() {
        assert!(server("127.0.0.1:1", true, false).listen().is_ok());
        assert!(server("[::1]:1", true, false).listen().is_ok());
        assert!(server("unix:/run/hb.sock", true, false).listen().is_ok());
        assert!(server("0.0.0.0:1", false, true).listen().is_ok());
        let e = server("0.0.0.0:1", true, false).listen().unwrap_err();
        assert!(
            e.contains("server.plaintext") && e.contains("0.0.0.0:1"),
            "{e}"
        );
        let e = server("unix:/run/hb.sock", false, false)
            .listen()
            .unwrap_err();
        assert!(e.contains("server.plaintext = true"), "{e}");
        let e = server("127.0.0.1:1", false, false).listen().unwrap_err();
        assert!(
            e.contains("server.tls_cert") && e.contains("server.client_ca"),
            "{e}"
        );
        let e = server("127.0.0.1:1", true, true).listen().unwrap_err();
        assert!(e.contains("choose one"), "{e}");
        let e = server("localhost:50051", true, false).listen().unwrap_err();
        assert!(e.contains("IP address"), "{e}");
        let mut no_cn = server("0.0.0.0:1", false, true);
        no_cn.clients[0].subject_cn = None;
        no_cn.clients[0].loopback = true;
        assert!(no_cn.listen().unwrap_err().contains("subject_cn"));
    }
}
