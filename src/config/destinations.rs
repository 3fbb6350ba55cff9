//! `[destinations.NAME]`: where imports may go, each a cloud, an account and a region (the
//! policy unit a caller is granted by name, `server.clients[].destinations`). A caller names
//! a destination, never an endpoint or an account: the daemon's signed requests and wrapped
//! keys go nowhere the operator did not write here. AWS KMS (src/aws/), Azure Key Vault or
//! Managed HSM (src/azure/) and Google Cloud KMS (src/gcp/); other clouds are refused by
//! name.

use std::path::PathBuf;

use serde::Deserialize;

/// One destination, by its `cloud`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "cloud", rename_all = "lowercase")]
pub(crate) enum Destination {
    Aws(AwsDestination),
    Azure(AzureDestination),
    Gcp(GcpDestination),
}

/// `cloud = "gcp"`: one Google Cloud KMS key ring, reached as one service account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GcpDestination {
    /// The project's id.
    pub project: String,
    /// The key ring's location (e.g. "us-east1", "global").
    pub location: String,
    /// The key ring's id: import jobs are made in it, and every key imported into is in it.
    pub key_ring: String,
    /// "HSM" (default) or "SOFTWARE": the import jobs' protection level, which a key
    /// imported into must have too.
    #[serde(default)]
    pub protection_level: GcpProtection,
    /// The import jobs' method, by Google's name (`RSA_OAEP_4096_SHA256_AES_256` by
    /// default): the wrapping key's size, the OAEP hash, hybrid or direct.
    #[serde(default = "default_import_method")]
    pub import_method: String,
    /// A service-account key file (JSON): requests carry a JWT it signs for Cloud KMS alone,
    /// and the key never leaves the daemon. Unset: tokens from the metadata server.
    pub credentials_file: Option<PathBuf>,
    /// The metadata server tokens are asked of without `credentials_file`; default
    /// `http://metadata.google.internal`. (`GCE_METADATA_HOST` is refused: the environment
    /// cannot choose where the daemon's tokens come from.)
    pub metadata_endpoint: Option<String>,
    /// The Cloud KMS endpoint; default `https://cloudkms.googleapis.com`. It must match
    /// `allowed_endpoints`.
    pub endpoint: Option<String>,
    /// Globs over `https://host[:port]` that `endpoint` must match; default Cloud KMS's
    /// global and regional endpoints.
    pub allowed_endpoints: Option<Vec<String>>,
    /// How long an import job may take to become ACTIVE (Google makes its key in the HSM).
    #[serde(default = "default_job_wait_ms")]
    pub job_wait_ms: u64,
    /// One call's time limit, connecting included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// A Google Cloud KMS protection level an import may use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub(crate) enum GcpProtection {
    #[default]
    #[serde(rename = "HSM")]
    Hsm,
    #[serde(rename = "SOFTWARE")]
    Software,
}

impl GcpProtection {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GcpProtection::Hsm => "HSM",
            GcpProtection::Software => "SOFTWARE",
        }
    }
}

fn default_import_method() -> String {
    "RSA_OAEP_4096_SHA256_AES_256".into()
}

fn default_job_wait_ms() -> u64 {
    120_000
}

/// Cloud KMS's public endpoints: global, and regional (`cloudkms.REGION.rep.googleapis.com`).
const GCP_HOSTS: [&str; 2] = [
    "https://cloudkms.googleapis.com",
    "https://cloudkms.*.rep.googleapis.com",
];

/// The metadata server of Google's VMs, GKE and Cloud Run.
pub(crate) const GCP_METADATA: &str = "http://metadata.google.internal";

impl GcpDestination {
    /// What `endpoint` must match.
    pub(crate) fn allowed(&self) -> Vec<String> {
        self.allowed_endpoints
            .clone()
            .unwrap_or_else(|| GCP_HOSTS.iter().map(|h| h.to_string()).collect())
    }

    /// The endpoint, normalised (`https://host[:port]`).
    pub(crate) fn endpoint_base(&self) -> Result<String, String> {
        let e = self.endpoint.as_deref().unwrap_or(GCP_HOSTS[0]);
        crate::oci::endpoint::check(e, &self.allowed())
            .map(|e| e.base)
            .map_err(|e| e.to_string())
    }

    /// `projects/P/locations/L/keyRings/R`.
    pub(crate) fn key_ring_name(&self) -> String {
        format!(
            "projects/{}/locations/{}/keyRings/{}",
            self.project, self.location, self.key_ring
        )
    }

    /// The wrapping format of the import method (`gcp:METHOD`).
    pub(crate) fn format(&self) -> Option<&'static crate::wrap::Format> {
        crate::wrap::Format::parse(&format!("gcp:{}", self.import_method)).ok()
    }

    fn validate(&self, at: &str, min_bits: u32) -> Result<(), String> {
        let project_ok = |p: &str| {
            // "my-project", or a domain-scoped "example.com:my-project"
            let id = p.rsplit_once(':').map_or(p, |(_, id)| id);
            (6..=30).contains(&id.len())
                && p.len() <= 100
                && id.starts_with(|c: char| c.is_ascii_lowercase())
                && p.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b':')
                })
        };
        if !project_ok(&self.project) {
            return Err(format!(
                "{at}.project = {:?} is not a project id (6 to 30 lower-case letters, digits and '-')",
                self.project.chars().take(64).collect::<String>()
            ));
        }
        if self.location.is_empty()
            || self.location.len() > 63
            || !self
                .location
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!(
                "{at}.location must be a Cloud KMS location (e.g. \"us-east1\", \"global\")"
            ));
        }
        if !crate::gcp::id_ok(&self.key_ring) {
            return Err(format!(
                "{at}.key_ring must be a key ring's id (1 to 63 letters, digits, '-' and '_')"
            ));
        }
        for p in self.allowed() {
            if !p.to_ascii_lowercase().starts_with("https://") {
                return Err(format!(
                    "{at}.allowed_endpoints: {p:?} must start with https:// (requests carry tokens and wrapped keys)"
                ));
            }
        }
        self.endpoint_base().map_err(|e| {
            format!("{at}.endpoint: {e}; nothing is sent there (list it in {at}.allowed_endpoints)")
        })?;
        let Some(format) = self.format() else {
            return Err(format!(
                "{at}.import_method = {:?}: give one of RSA_OAEP_3072_SHA1_AES_256, RSA_OAEP_4096_SHA1_AES_256, RSA_OAEP_3072_SHA256_AES_256, RSA_OAEP_4096_SHA256_AES_256, RSA_OAEP_3072_SHA256, RSA_OAEP_4096_SHA256",
                self.import_method.chars().take(64).collect::<String>()
            ));
        };
        if format.wrapping_bits.is_some_and(|b| b < min_bits) {
            return Err(format!(
                "{at}.import_method = {} wraps for RSA-{}, below policy.min_wrapping_key_bits = {min_bits}",
                self.import_method,
                format.wrapping_bits.unwrap_or_default()
            ));
        }
        match (&self.credentials_file, &self.metadata_endpoint) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{at}: give credentials_file or metadata_endpoint, not both"
                ));
            }
            (None, Some(m)) => {
                let m = m.to_ascii_lowercase();
                let rest = m.strip_prefix("http://").unwrap_or_default();
                if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
                    return Err(format!(
                        "{at}.metadata_endpoint must be http://host[:port] (the metadata server speaks plain HTTP on the host's own network)"
                    ));
                }
            }
            _ => {}
        }
        super::validate::in_range(&format!("{at}.timeout_ms"), self.timeout_ms, 100..=600_000)?;
        super::validate::in_range(
            &format!("{at}.job_wait_ms"),
            self.job_wait_ms,
            100..=3_600_000,
        )?;
        Ok(())
    }
}

/// `cloud = "azure"`: one Azure Key Vault (Premium) or Managed HSM, reached with one
/// Microsoft Entra ID application's credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AzureDestination {
    /// `https://NAME.vault.azure.net` or `https://NAME.managedhsm.azure.net`: where keys
    /// are imported, and where the key-exchange key must be.
    pub vault: String,
    /// "key_vault" or "managed_hsm"; default from the vault's host name (required for a
    /// host that says neither, such as the tests' emulator). A Managed HSM takes AES keys
    /// (oct-HSM); a Key Vault Premium does not.
    pub kind: Option<AzureKind>,
    /// The key-exchange key's versioned id (`{vault}/keys/NAME/VERSION`): every import is
    /// wrapped for exactly this key. Or `kek_name`.
    pub kek: Option<String>,
    /// The key-exchange key by name: its latest version is used; with `kek_create`, a
    /// caller that asks may have the daemon make it when the vault has none.
    pub kek_name: Option<String>,
    /// Whether a caller may ask the daemon to make the `kek_name` key (RSA-HSM,
    /// `kek_bits`, key operations `["import"]` only).
    #[serde(default)]
    pub kek_create: bool,
    /// The size of a key-exchange key the daemon makes: 2048, 3072 or 4096 (default).
    #[serde(default = "default_kek_bits")]
    pub kek_bits: u32,
    /// The Microsoft Entra ID tenant (directory) id.
    pub tenant: String,
    /// The application's (client) id.
    pub client_id: String,
    /// A file holding the application's client secret (only the secret; a final newline
    /// is dropped).
    pub client_secret_file: Option<PathBuf>,
    /// A PKCS#12 file holding the application's certificate and RSA private key.
    pub client_certificate_file: Option<PathBuf>,
    /// A file holding the PKCS#12 file's password, if it has one.
    pub client_certificate_password_file: Option<PathBuf>,
    /// Kubernetes workload identity: the service account token the kubelet projects
    /// (`federated_token_file`, default the `AZURE_FEDERATED_TOKEN_FILE` the webhook sets)
    /// is exchanged for a token.
    #[serde(default)]
    pub workload_identity: bool,
    pub federated_token_file: Option<PathBuf>,
    /// The Entra ID authority tokens are asked of; default
    /// `https://login.microsoftonline.com`. (`AZURE_AUTHORITY_HOST` is never used: the
    /// environment cannot send the daemon's credentials elsewhere.)
    pub authority: Option<String>,
    /// Globs over `https://host[:port]` that `vault` must match; default Azure's Key Vault
    /// and Managed HSM hosts.
    pub allowed_endpoints: Option<Vec<String>>,
    /// Globs over `https://host[:port]` that `authority` must match (where the client
    /// secret or assertion goes); default `https://login.microsoftonline.com`.
    pub allowed_authorities: Option<Vec<String>>,
    /// PEM certificates trusted besides the system's roots.
    pub ca_bundle: Option<PathBuf>,
    /// One call's time limit, connecting included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// What an Azure destination is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AzureKind {
    KeyVault,
    ManagedHsm,
}

impl AzureKind {
    /// The resource whose tokens the service takes (what its challenge names).
    pub(crate) fn resource(self) -> &'static str {
        match self {
            AzureKind::KeyVault => "https://vault.azure.net",
            AzureKind::ManagedHsm => "https://managedhsm.azure.net",
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            AzureKind::KeyVault => "an Azure Key Vault",
            AzureKind::ManagedHsm => "an Azure Managed HSM",
        }
    }
}

fn default_kek_bits() -> u32 {
    4096
}

/// Azure's public hosts for vaults and Managed HSMs.
const AZURE_HOSTS: [&str; 2] = [
    "https://*.vault.azure.net",
    "https://*.managedhsm.azure.net",
];

/// The public Entra ID authority.
pub(crate) const AZURE_AUTHORITY: &str = "https://login.microsoftonline.com";

impl AzureDestination {
    /// What `vault` must match.
    pub(crate) fn allowed(&self) -> Vec<String> {
        self.allowed_endpoints
            .clone()
            .unwrap_or_else(|| AZURE_HOSTS.iter().map(|h| h.to_string()).collect())
    }

    /// The vault, normalised (`https://host[:port]`).
    pub(crate) fn vault_base(&self) -> Result<String, String> {
        crate::oci::endpoint::check(&self.vault, &self.allowed())
            .map(|e| e.base)
            .map_err(|e| e.to_string())
    }

    /// What `authority` must match.
    pub(crate) fn allowed_authorities(&self) -> Vec<String> {
        self.allowed_authorities
            .clone()
            .unwrap_or_else(|| vec![AZURE_AUTHORITY.to_string()])
    }

    /// The authority, normalised.
    pub(crate) fn authority_base(&self) -> Result<String, String> {
        let a = self.authority.as_deref().unwrap_or(AZURE_AUTHORITY);
        crate::oci::endpoint::check(a, &self.allowed_authorities())
            .map(|e| e.base)
            .map_err(|e| e.to_string())
    }

    /// The kind the vault's host says, if it says one.
    fn kind_of_host(&self) -> Option<AzureKind> {
        let host = self.vault_base().ok()?;
        if host.ends_with(".managedhsm.azure.net") {
            Some(AzureKind::ManagedHsm)
        } else if host.ends_with(".vault.azure.net") {
            Some(AzureKind::KeyVault)
        } else {
            None
        }
    }

    /// The vault's kind: as configured, else from its host.
    pub(crate) fn kind(&self) -> Option<AzureKind> {
        self.kind.or_else(|| self.kind_of_host())
    }

    fn validate(&self, at: &str, min_bits: u32) -> Result<(), String> {
        for (field, list) in [
            ("allowed_endpoints", self.allowed()),
            ("allowed_authorities", self.allowed_authorities()),
        ] {
            for p in list {
                if !p.to_ascii_lowercase().starts_with("https://") {
                    return Err(format!(
                        "{at}.{field}: {p:?} must start with https:// (requests carry secrets, tokens and wrapped keys)"
                    ));
                }
            }
        }
        let vault = self.vault_base().map_err(|e| {
            format!("{at}.vault: {e}; nothing is sent there (list it in {at}.allowed_endpoints)")
        })?;
        self.authority_base().map_err(|e| {
            format!(
                "{at}.authority: {e}; no credential is sent there (list it in {at}.allowed_authorities)"
            )
        })?;
        if let (Some(said), Some(host)) = (self.kind, self.kind_of_host())
            && said != host
        {
            return Err(format!(
                "{at}.kind: {vault} is {}, not {}",
                host.describe(),
                said.describe()
            ));
        }
        if self.kind().is_none() {
            return Err(format!(
                "{at}.kind: {vault} is neither *.vault.azure.net nor *.managedhsm.azure.net: say kind = \"key_vault\" or \"managed_hsm\""
            ));
        }
        match (&self.kek, &self.kek_name) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{at}: give kek (a versioned key id) or kek_name, not both"
                ));
            }
            (None, None) => {
                return Err(format!(
                    "{at}: give kek (the key-exchange key's versioned id, {vault}/keys/NAME/VERSION) or kek_name"
                ));
            }
            (Some(kek), None) => {
                let id = crate::azure::KeyId::parse(kek).map_err(|e| format!("{at}.kek: {e}"))?;
                if id.vault != vault {
                    return Err(format!(
                        "{at}.kek: the key-exchange key is in {}, not in {vault}: Azure imports only with a key-exchange key of the same vault or Managed HSM",
                        id.vault
                    ));
                }
                if id.version.is_none() {
                    return Err(format!(
                        "{at}.kek must be the versioned id ({kek}/VERSION), or use kek_name for the latest version"
                    ));
                }
                if self.kek_create {
                    return Err(format!(
                        "{at}.kek_create needs kek_name (the daemon makes a key by name)"
                    ));
                }
            }
            (None, Some(name)) => {
                if !crate::azure::key_name_ok(name) {
                    return Err(format!(
                        "{at}.kek_name must be 1 to 127 letters, digits and '-'"
                    ));
                }
            }
        }
        if !matches!(self.kek_bits, 2048 | 3072 | 4096) {
            return Err(format!("{at}.kek_bits: give 2048, 3072 or 4096"));
        }
        if self.kek_create && self.kek_bits < min_bits {
            return Err(format!(
                "{at}.kek_bits = {} is below policy.min_wrapping_key_bits = {min_bits}",
                self.kek_bits
            ));
        }
        let guid = |s: &str| {
            let g: Vec<&str> = s.split('-').collect();
            g.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
                && g.iter().all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
        };
        let domain = |s: &str| {
            (1..=253).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        };
        if !guid(&self.tenant) && !domain(&self.tenant) {
            return Err(format!(
                "{at}.tenant must be the directory's id (a GUID) or its domain name"
            ));
        }
        if !guid(&self.client_id) {
            return Err(format!(
                "{at}.client_id must be the application's (client) id, a GUID"
            ));
        }
        let ways = [
            self.client_secret_file.is_some(),
            self.client_certificate_file.is_some(),
            self.workload_identity,
        ];
        if ways.iter().filter(|w| **w).count() != 1 {
            return Err(format!(
                "{at}: give exactly one of client_secret_file, client_certificate_file, workload_identity = true"
            ));
        }
        if self.client_certificate_password_file.is_some() && self.client_certificate_file.is_none()
        {
            return Err(format!(
                "{at}.client_certificate_password_file is for client_certificate_file"
            ));
        }
        if self.federated_token_file.is_some() && !self.workload_identity {
            return Err(format!(
                "{at}.federated_token_file is for workload_identity = true"
            ));
        }
        super::validate::in_range(&format!("{at}.timeout_ms"), self.timeout_ms, 100..=600_000)?;
        Ok(())
    }
}

/// `cloud = "aws"`: AWS KMS in one account and region.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AwsDestination {
    /// e.g. "us-east-1": the region requests are signed for and sent to.
    pub region: String,
    /// The 12-digit account: a key ARN in another account is refused, and so is a key id
    /// that KMS resolves to one.
    pub account: String,
    /// The KMS endpoint (a VPC or FIPS endpoint); default `https://kms.REGION.amazonaws.com`.
    /// It must match `allowed_endpoints`. Endpoints from the environment or the shared
    /// config (`AWS_ENDPOINT_URL*`, `endpoint_url`) are never used.
    pub endpoint: Option<String>,
    /// Globs over `https://host[:port]` that `endpoint` must match; default the region's
    /// public and FIPS endpoints.
    pub allowed_endpoints: Option<Vec<String>>,
    /// A profile of the shared config and credentials files; unset, the SDK's default
    /// chain (environment, shared files, web identity, container and instance metadata).
    pub profile: Option<String>,
    /// PEM certificates trusted besides the system's roots (a private CA in front of a VPC
    /// endpoint; the tests' emulator).
    pub ca_bundle: Option<PathBuf>,
    /// The wrapping key KMS is asked for: "RSA_2048", "RSA_3072" or "RSA_4096" (default).
    #[serde(default = "default_wrapping_key_spec")]
    pub wrapping_key_spec: String,
    /// One call's time limit, connecting included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_wrapping_key_spec() -> String {
    "RSA_4096".into()
}

fn default_timeout_ms() -> u64 {
    30_000
}

impl AwsDestination {
    /// The endpoint requests go to.
    pub(crate) fn endpoint_url(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| format!("https://kms.{}.amazonaws.com", self.region))
    }

    /// What `endpoint` must match.
    pub(crate) fn allowed(&self) -> Vec<String> {
        self.allowed_endpoints.clone().unwrap_or_else(|| {
            vec![
                format!("https://kms.{}.amazonaws.com", self.region),
                format!("https://kms-fips.{}.amazonaws.com", self.region),
            ]
        })
    }

    /// The wrapping key's size in bits.
    pub(crate) fn wrapping_bits(&self) -> u32 {
        match self.wrapping_key_spec.as_str() {
            "RSA_2048" => 2048,
            "RSA_3072" => 3072,
            _ => 4096,
        }
    }

    fn validate(&self, at: &str, min_bits: u32) -> Result<(), String> {
        let r = &self.region;
        if !crate::aws::region_ok(r) {
            return Err(format!(
                "{at}.region = {r:?} is not an AWS region (e.g. \"us-east-1\")"
            ));
        }
        if self.account.len() != 12 || !self.account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{at}.account must be the 12-digit AWS account id"));
        }
        for p in self.allowed() {
            if !p.to_ascii_lowercase().starts_with("https://") {
                return Err(format!(
                    "{at}.allowed_endpoints: {p:?} must start with https:// (requests carry signatures and wrapped keys)"
                ));
            }
        }
        crate::oci::endpoint::check(&self.endpoint_url(), &self.allowed()).map_err(|e| {
            format!("{at}.endpoint: {e}; nothing is sent there (list it in {at}.allowed_endpoints)")
        })?;
        if !matches!(
            self.wrapping_key_spec.as_str(),
            "RSA_2048" | "RSA_3072" | "RSA_4096"
        ) {
            return Err(format!(
                "{at}.wrapping_key_spec = {:?}: give RSA_2048, RSA_3072 or RSA_4096",
                self.wrapping_key_spec
            ));
        }
        if self.wrapping_bits() < min_bits {
            return Err(format!(
                "{at}.wrapping_key_spec = {:?} is below policy.min_wrapping_key_bits = {min_bits}: every import would be refused after KMS made its parameters",
                self.wrapping_key_spec
            ));
        }
        super::validate::in_range(&format!("{at}.timeout_ms"), self.timeout_ms, 100..=600_000)?;
        if let Some(p) = &self.profile
            && (p.is_empty() || p.len() > 64 || p.chars().any(char::is_control))
        {
            return Err(format!(
                "{at}.profile must be 1 to 64 characters without control characters"
            ));
        }
        Ok(())
    }
}

/// Longest destination name.
pub(crate) const MAX_NAME: usize = 64;

/// Whether `name` is a well-formed destination name: 1 to 64 letters, digits, '-', '_', '.'.
pub(crate) fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks every destination.
pub(super) fn validate(
    destinations: &std::collections::BTreeMap<String, Destination>,
    min_bits: u32,
) -> Result<(), String> {
    for (name, d) in destinations {
        if !name_ok(name) {
            return Err(format!(
                "destinations: {:?} is not a destination name (1 to {MAX_NAME} letters, digits, '-', '_', '.')",
                name.chars().take(80).collect::<String>()
            ));
        }
        let at = format!("destinations.{name}");
        match d {
            Destination::Aws(a) => a.validate(&at, min_bits)?,
            Destination::Azure(a) => a.validate(&at, min_bits)?,
            Destination::Gcp(g) => g.validate(&at, min_bits)?,
        }
    }
    Ok(())
}

/// Resolves the paths a destination names against the config's folder.
pub(super) fn resolve(
    destinations: &mut std::collections::BTreeMap<String, Destination>,
    fix: impl Fn(&mut PathBuf),
) {
    for d in destinations.values_mut() {
        match d {
            Destination::Aws(a) => {
                if let Some(ca) = a.ca_bundle.as_mut() {
                    fix(ca);
                }
            }
            Destination::Azure(a) => {
                for p in [
                    &mut a.ca_bundle,
                    &mut a.client_secret_file,
                    &mut a.client_certificate_file,
                    &mut a.client_certificate_password_file,
                    &mut a.federated_token_file,
                ]
                .into_iter()
                .flatten()
                {
                    fix(p);
                }
            }
            Destination::Gcp(g) => {
                if let Some(f) = g.credentials_file.as_mut() {
                    fix(f);
                }
            }
        }
    }
}
