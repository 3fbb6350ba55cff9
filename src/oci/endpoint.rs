//! Where signed requests may go. A caller names the vault's management endpoint; it must be
//! `https://`, a plain host (DNS name or IP) with an optional port and no user info, path,
//! query or fragment, and match one of `oci.allowed_endpoints` (globs over
//! `https://host[:port]`, the port written only when it is not 443). Otherwise nothing is
//! sent: a caller cannot point the daemon, its signed requests and wrapped keys elsewhere.

use super::OciError;
use crate::policy::host_glob_match;

/// A checked endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `https://host[:port]`, normalised (lower case, default port dropped).
    pub base: String,
    pub host: String,
    pub port: u16,
}

fn refuse(url: &str, why: &'static str) -> OciError {
    OciError::Url {
        url: shown(url),
        why,
    }
}

/// A caller's URL as a refusal (which is also audited) quotes it: only when it is short
/// printable text.
fn shown(url: &str) -> String {
    if url.len() <= 100 && !url.chars().any(char::is_control) {
        url.to_string()
    } else {
        format!("({} bytes, not shown)", url.len())
    }
}

/// Longest endpoint URL considered (a host name is at most 253 bytes).
const MAX_URL: usize = 300;

/// Parses and checks `url` against the allow-list.
pub(crate) fn check(url: &str, allowed: &[String]) -> Result<Endpoint, OciError> {
    if url.len() > MAX_URL {
        return Err(refuse(url, "longer than any OCI endpoint"));
    }
    let rest = url
        .get(..8)
        .filter(|s| s.eq_ignore_ascii_case("https://"))
        .map(|_| &url[8..])
        .ok_or_else(|| refuse(url, "OCI endpoints must be https://"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', '\\', '%']) {
        return Err(refuse(
            url,
            "give only https://host[:port], without user info, path, query or escapes",
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && (!h.starts_with('[') || h.ends_with(']')) => {
            let port: u16 = Some(p)
                .filter(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| refuse(url, "the port is not a number"))?;
            (h, port)
        }
        _ => (authority, 443),
    };
    let host = host.to_ascii_lowercase();
    let valid_host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    if !valid_host || port == 0 {
        return Err(refuse(url, "the host is not a DNS name or an IP address"));
    }
    let base = if port == 443 {
        format!("https://{host}")
    } else {
        format!("https://{host}:{port}")
    };
    if !allowed_by(allowed, &base) {
        return Err(OciError::NotAllowed(base));
    }
    Ok(Endpoint { base, host, port })
}

/// Whether the normalised `base` (`https://host[:port]`) matches one of `patterns`, each
/// `*` inside one DNS label.
pub(crate) fn allowed_by(patterns: &[String], base: &str) -> bool {
    patterns
        .iter()
        .any(|p| host_glob_match(&p.to_ascii_lowercase(), base))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default() -> Vec<String> {
        vec!["https://*.kms.*.oraclecloud.com".into()]
    }

    #[test]
    fn oci_management_endpoints_pass() {
        let e = check(
            "https://exampleaaacu2-management.kms.us-ashburn-1.oraclecloud.com",
            &default(),
        )
        .unwrap();
        assert_eq!(
            e.base,
            "https://exampleaaacu2-management.kms.us-ashburn-1.oraclecloud.com"
        );
        assert_eq!(e.port, 443);
        let e = check(
            "HTTPS://X-Management.KMS.eu-frankfurt-1.oraclecloud.com:443/",
            &default(),
        )
        .unwrap();
        assert_eq!(
            e.base,
            "https://x-management.kms.eu-frankfurt-1.oraclecloud.com"
        );
    }

    #[test]
    fn everything_else_is_refused_before_sending() {
        let refused = |u: &str| check(u, &default()).is_err();
        assert!(
            refused("http://x-management.kms.us-ashburn-1.oraclecloud.com"),
            "plain http"
        );
        assert!(refused(
            "https://x-management.kms.us-ashburn-1.oraclecloud.com.evil.net"
        ));
        assert!(refused("https://evil.net/x.kms.y.oraclecloud.com"));
        assert!(refused("https://x.kms.y.oraclecloud.com@evil.net"));
        assert!(
            refused("https://x.kms.y.oraclecloud.com:8443"),
            "another port is another endpoint"
        );
        assert!(refused("https://x.kms.y.oraclecloud.com/20180608/keys"));
        assert!(refused("https://x.kms.y.oraclecloud.com?a=b"));
        assert!(refused("https://x%2ekms.y.oraclecloud.com"));
        assert!(refused("https://"));
        assert!(refused("https://x.kms.y.oraclecloud.com:99999"));
        assert!(refused("https://-x.kms.y.oraclecloud.com"));
        assert!(refused("ftp://x.kms.y.oraclecloud.com"));
        // `*` is one DNS label: a vault in any tenancy's sub-domain is not a vault endpoint.
        assert!(refused("https://a.b.kms.y.oraclecloud.com"));
        assert!(refused("https://x.kms.y.z.oraclecloud.com"));
        // strict port digits
        assert!(refused("https://x.kms.y.oraclecloud.com:+443"));
        assert!(check("https://127.0.0.1:+8443", &["https://127.0.0.1:*".into()]).is_err());
    }

    #[test]
    fn ports_and_addresses_in_patterns() {
        let local = vec!["https://127.0.0.1:*".into(), "https://[::1]:8443".into()];
        assert_eq!(check("https://127.0.0.1:9443", &local).unwrap().port, 9443);
        assert!(
            check("https://127.0.0.1", &local).is_err(),
            "443 is written without a port"
        );
        assert!(check("https://[::1]:8443", &local).is_ok());
        assert!(check("https://[::1]:8444", &local).is_err());
        assert!(check("https://127.0.0.2:9443", &local).is_err());
    }
}
