//! The checks a parsed config must pass before anything uses it: ranges, the HSM and
//! policy settings, and the client list. Each error names the key.

use super::*;

impl Config {
    pub(super) fn validate(&self) -> Result<(), String> {
        self.validate_hsm()?;
        self.validate_policy()?;
        let s = &self.server;
        in_range("server.max_connections", s.max_connections, 1..=65_536)?;
        in_range(
            "server.max_connections_per_address",
            s.max_connections_per_address,
            1..=65_536,
        )?;
        in_range("server.max_handshakes", s.max_handshakes, 4..=4096)?;
        in_range("server.idle_timeout_secs", s.idle_timeout_secs, 1..=86_400)?;
        in_range(
            "server.max_connection_age_secs",
            s.max_connection_age_secs,
            10..=604_800,
        )?;
        in_range(
            "server.tls_handshake_timeout_secs",
            s.tls_handshake_timeout_secs,
            1..=300,
        )?;
        in_range(
            "server.max_concurrent_streams",
            s.max_concurrent_streams,
            1..=1024,
        )?;
        in_range("server.io_threads", s.io_threads, 1..=64)?;
        self.journal.validate()?;
        super::destinations::validate(&self.destinations, self.policy.min_wrapping_key_bits)?;
        if let Some(l) = &self.server.health_listen {
            l.parse::<std::net::SocketAddr>()
                .map_err(|_| format!("server.health_listen = {l:?} is not IP:PORT"))?;
        }
        if let Some(l) = &self.metrics.listen {
            l.parse::<std::net::SocketAddr>()
                .map_err(|_| format!("metrics.listen = {l:?} is not IP:PORT"))?;
        }
        self.validate_clients()
    }

    fn validate_hsm(&self) -> Result<(), String> {
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
        match &h.token {
            Some(_) if !h.token_label.is_empty() => {
                return Err("give hsm.token_label or hsm.token (a PKCS#11 URI), not both".into());
            }
            Some(_) => {
                h.token_match().map_err(|e| format!("hsm.token: {e}"))?;
            }
            None if h.token_label.is_empty() || h.token_label.len() > 32 => {
                return Err(
                    "hsm.token_label must be 1 to 32 bytes (or give hsm.token, a PKCS#11 URI)"
                        .into(),
                );
            }
            None => {}
        }
        in_range("hsm.sessions", h.sessions, 1..=256)?;
        if let UserType::Number(n) = h.user_type
            && n != cryptoki_sys::CKU_USER
            && n < 0x8000_0000
        {
            return Err(format!(
                "hsm.user_type = {n:#x}: give \"user\" (CKU_USER) or a vendor role number (0x80000000 or more, e.g. Luna's Crypto User 0x80000001); the security officer and context-specific logins are not for this daemon"
            ));
        }
        in_range("hsm.reinit_interval_secs", h.reinit_interval_secs, 1..=3600)?;
        if h.wrap_mode == WrapModeSetting::Hybrid && !self.policy.allow_hybrid {
            return Err("hsm.wrap_mode = \"hybrid\" but policy.allow_hybrid = false".into());
        }
        Ok(())
    }

    fn validate_policy(&self) -> Result<(), String> {
        let p = &self.policy;
        if p.min_wrapping_key_bits < 2048 {
            return Err(format!(
                "policy.min_wrapping_key_bits = {} is below 2048, which is not allowed",
                p.min_wrapping_key_bits
            ));
        }
        for fp in &p.pinned_wrapping_keys {
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
        if p.exportable.iter().any(String::is_empty) {
            return Err("policy.exportable: empty pattern".into());
        }
        if p.protection_modes.is_empty() {
            return Err(
                "policy.protection_modes is empty: no import could run (default [\"HSM\"])".into(),
            );
        }
        Ok(())
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
            for d in &c.destinations {
                if !self.destinations.contains_key(d) {
                    return Err(format!(
                        "{at}: destinations names {:?}, which is no [destinations.NAME] here",
                        d.chars().take(80).collect::<String>()
                    ));
                }
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

/// `key = value` must lie in `range`.
pub(super) fn in_range<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), String> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{key} = {value} is out of range {}..={}",
            range.start(),
            range.end()
        ))
    }
}
