//! `[destinations.NAME]`: where imports may go, each a cloud, an account and a region (the
//! policy unit a caller is granted by name, `server.clients[].destinations`). A caller names
//! a destination, never an endpoint or an account: the daemon's signed requests and wrapped
//! keys go nowhere the operator did not write here. AWS KMS for now (src/aws/); the other
//! clouds' destinations are refused by name until they exist.

use std::path::PathBuf;

use serde::Deserialize;

/// One destination, by its `cloud`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "cloud", rename_all = "lowercase")]
pub(crate) enum Destination {
    Aws(AwsDestination),
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
        }
    }
}
