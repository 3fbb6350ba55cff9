//! Export policy: which keys may leave the HSM, and for whom. A key leaves only if the
//! token marks it `CKA_EXTRACTABLE` and its label matches one of `policy.exportable`; a
//! caller's own wrapping key is used only as `policy.caller_wrapping_keys` allows.

use crate::config::{CallerWrappingKeys, PolicyConfig};

/// Which caller-supplied wrapping keys an export may use (`WrapKey`, `hsm-bridge wrap`).
#[derive(Debug, Clone)]
pub(crate) struct WrappingKeyPolicy {
    setting: CallerWrappingKeys,
    /// Lower-case hex SPKI SHA-256: `pinned_wrapping_keys` and the keys in
    /// `pinned_wrapping_key_files`.
    pinned: Vec<String>,
}

impl WrappingKeyPolicy {
    /// From the config; reads each pinned key file (an error names it).
    pub(crate) fn load(p: &PolicyConfig) -> Result<WrappingKeyPolicy, PolicyError> {
        let mut pinned: Vec<String> = p
            .pinned_wrapping_keys
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect();
        for f in &p.pinned_wrapping_key_files {
            let bad = |why: String| PolicyError::PinnedFile {
                path: f.display().to_string(),
                why,
            };
            let pem = std::fs::read(f).map_err(|e| bad(e.to_string()))?;
            let wk = crate::wrap::WrappingKey::from_pem(&pem, p.min_wrapping_key_bits)
                .map_err(|e| bad(e.to_string()))?;
            pinned.push(wk.fingerprint());
        }
        Ok(WrappingKeyPolicy {
            setting: p.caller_wrapping_keys,
            pinned,
        })
    }

    /// Whether a caller may have a key wrapped for the public key with fingerprint `fp`;
    /// the refusal says which setting decided.
    pub(crate) fn allows(&self, fp: &str) -> Result<(), WrappingKeyRefused> {
        match self.setting {
            CallerWrappingKeys::Any => Ok(()),
            CallerWrappingKeys::None => Err(WrappingKeyRefused::Off),
            CallerWrappingKeys::Pinned if self.pinned.iter().any(|p| p == fp) => Ok(()),
            CallerWrappingKeys::Pinned => Err(WrappingKeyRefused::NotPinned(fp.to_string())),
        }
    }
}

/// The policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy.pinned_wrapping_key_files: {path}: {why}")]
    PinnedFile { path: String, why: String },
}

/// Why a caller's wrapping key may not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WrappingKeyRefused {
    #[error(
        "wrapping for a caller's key is off (policy.caller_wrapping_keys = \"none\"); use ImportKeyVersion, which fetches the vault's key itself"
    )]
    Off,
    #[error(
        "wrapping key sha256:{0} is not pinned (policy.pinned_wrapping_keys, policy.pinned_wrapping_key_files)"
    )]
    NotPinned(String),
}

/// Glob match with `*` (any run, including empty) and `?` (one character).
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    glob(pattern, text, &[])
}

/// Glob match over `https://host[:port]` where `*` and `?` stay inside one DNS label (and
/// inside the host or the port): `https://*.kms.*.oraclecloud.com` matches one vault
/// prefix and one region, never `a.b.kms...` or a host that merely ends so.
pub(crate) fn host_glob_match(pattern: &str, text: &str) -> bool {
    glob(pattern, text, &['.', ':', '/'])
}

/// `*` and `?` match no character of `stop`.
fn glob(pattern: &str, text: &str, stop: &[char]) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && ((p[pi] == '?' && !stop.contains(&t[ti])) || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star
            && !stop.contains(&t[st])
        {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Whether `label` matches any of `patterns`.
pub(crate) fn any_match(patterns: &[String], label: &str) -> bool {
    patterns.iter().any(|p| glob_match(p, label))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "demo-aes-256"));
        assert!(glob_match("demo-aes-*", "demo-aes-256"));
        assert!(!glob_match("demo-aes-*", "demo-rsa-3072"));
        assert!(glob_match("demo-?sa-*", "demo-rsa-3072"));
        assert!(glob_match("*-256", "demo-aes-256"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(!glob_match("demo", "demo-aes"));
        assert!(!glob_match("", "x"));
        assert!(any_match(&["x".into(), "demo-*".into()], "demo-1"));
        assert!(!any_match(&[], "demo-1"));
    }

    #[test]
    fn host_globs_stay_inside_one_label() {
        let p = "https://*.kms.*.oraclecloud.com";
        assert!(host_glob_match(
            p,
            "https://v1-management.kms.us-ashburn-1.oraclecloud.com"
        ));
        assert!(glob_match(p, "https://a.b.kms.evil.kms.x.oraclecloud.com"));
        assert!(!host_glob_match(
            p,
            "https://a.b.kms.evil.kms.x.oraclecloud.com"
        ));
        assert!(!host_glob_match(p, "https://v.kms.us.evil.oraclecloud.com"));
        assert!(host_glob_match(
            "https://127.0.0.1:*",
            "https://127.0.0.1:9443"
        ));
        assert!(!host_glob_match(
            "https://127.0.0.1*",
            "https://127.0.0.1:9443"
        ));
        assert!(!host_glob_match("https://?", "https://."));
    }
}
