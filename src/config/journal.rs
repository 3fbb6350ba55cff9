//! `[journal]`: where the import journal lives (docs/ARCHITECTURE.md, "The import
//! journal"). SQLite by default, next to the config; PostgreSQL when replicas share one.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

/// The label of the token's record key when `journal.mac_key_label` is not set.
pub(crate) const DEFAULT_MAC_KEY_LABEL: &str = "hsm-bridge-journal-mac";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// `sqlite:PATH` (relative to the config file) or `postgres://USER@HOST[:PORT]/DB`
    /// (no password: that comes from `password_file`).
    #[serde(default = "default_url")]
    pub url: String,
    /// PostgreSQL: the file holding the password (mode 0600 or 0400).
    pub password_file: Option<PathBuf>,
    /// PostgreSQL: the CA certificates (PEM) that the server's certificate must chain to.
    /// Required when the server is not on loopback or a Unix socket: the connection then
    /// uses TLS and verifies the server's certificate and name.
    pub ca_file: Option<PathBuf>,
    /// Records older than this are purged (OCI keeps a retry token for 24 hours).
    #[serde(default = "default_retention")]
    pub retention_hours: u64,
    /// How long a claim on an idempotency key holds without being renewed: a replica that
    /// dies holding one delays a retry of that key at most this long.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    /// The label of the token's generic secret key that authenticates journal records
    /// (HMAC-SHA256 in the HSM; default `hsm-bridge-journal-mac`). Replicas share the
    /// token, so they share the key.
    pub mac_key_label: Option<String>,
    /// Instead of a key on the token: a private file of at least 32 random bytes that
    /// authenticates journal records (every replica needs the same file).
    pub mac_key_file: Option<PathBuf>,
    /// The marker that a refused PIN leaves (default: `hsm-bridge.pin-refused` next to
    /// the SQLite journal, or next to the config file for PostgreSQL).
    pub pin_marker: Option<PathBuf>,
    /// The parsed `url`, set when the config is loaded.
    #[serde(skip)]
    pub store: Option<JournalStore>,
}

/// Which database the journal is in.
#[derive(Debug, Clone)]
pub enum JournalStore {
    Sqlite(PathBuf),
    Postgres(Box<tokio_postgres::Config>),
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            url: default_url(),
            password_file: None,
            ca_file: None,
            retention_hours: default_retention(),
            lease_secs: default_lease(),
            mac_key_label: None,
            mac_key_file: None,
            pin_marker: None,
            store: None,
        }
    }
}

fn default_url() -> String {
    "sqlite:hsm-bridge-journal.sqlite".into()
}
fn default_retention() -> u64 {
    24
}
fn default_lease() -> u64 {
    15
}

impl JournalConfig {
    /// Parses `url` (relative SQLite paths against `base`), resolves the other paths and
    /// picks the PIN marker's place.
    pub(super) fn resolve(
        &mut self,
        base: &Path,
        fix: impl Fn(&mut PathBuf),
    ) -> Result<(), String> {
        self.password_file.as_mut().map(&fix);
        self.ca_file.as_mut().map(&fix);
        self.pin_marker.as_mut().map(&fix);
        self.mac_key_file.as_mut().map(&fix);
        let store = parse_url(&self.url, base)?;
        if self.pin_marker.is_none() {
            let dir = match &store {
                JournalStore::Sqlite(p) => p.parent().unwrap_or(base).to_path_buf(),
                JournalStore::Postgres(_) => base.to_path_buf(),
            };
            self.pin_marker = Some(dir.join("hsm-bridge.pin-refused"));
        }
        self.store = Some(store);
        Ok(())
    }

    /// The label of the token's record key (when no `mac_key_file` is set).
    pub fn mac_key_label(&self) -> &str {
        self.mac_key_label
            .as_deref()
            .unwrap_or(DEFAULT_MAC_KEY_LABEL)
    }

    /// Whether the PostgreSQL journal must use TLS: with `ca_file`, or when a host is not on
    /// this machine (which `validate` refuses without `ca_file`).
    pub fn postgres_tls(&self) -> bool {
        match &self.store {
            Some(JournalStore::Postgres(pg)) => self.ca_file.is_some() || !on_this_machine(pg),
            _ => false,
        }
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        super::validate::in_range("journal.retention_hours", self.retention_hours, 1..=720)?;
        if self.mac_key_label.is_some() && self.mac_key_file.is_some() {
            return Err(
                "journal.mac_key_label and journal.mac_key_file exclude each other: the records' key is on the token or in a file".into(),
            );
        }
        if let Some(l) = &self.mac_key_label {
            crate::keyref::KeyRef::label(l).map_err(|e| format!("journal.mac_key_label: {e}"))?;
        }
        super::validate::in_range("journal.lease_secs", self.lease_secs, 1..=300)?;
        match &self.store {
            Some(JournalStore::Postgres(pg)) => {
                if !on_this_machine(pg) && self.ca_file.is_none() {
                    return Err("journal.url names a PostgreSQL server that is not on loopback or a Unix socket: set journal.ca_file (the connection then uses TLS and verifies the server's certificate)".into());
                }
                let mode = url_sslmode(&self.url);
                match mode.as_deref() {
                    Some(m @ ("disable" | "allow" | "prefer")) if self.postgres_tls() => Err(format!(
                        "journal.url has sslmode={m}, which lets anyone on the network path turn TLS off and read the password: remove it (with journal.ca_file the journal always requires TLS and verifies the server) or write sslmode=require"
                    )),
                    Some("require" | "verify-ca" | "verify-full") if self.ca_file.is_none() => Err(
                        "journal.url asks for TLS (sslmode): set journal.ca_file, the CA certificates the server's certificate must chain to"
                            .into(),
                    ),
                    _ if pg.get_ssl_mode() == tokio_postgres::config::SslMode::Disable
                        && self.postgres_tls() =>
                    {
                        Err("journal.url turns TLS off, which journal.ca_file requires".into())
                    }
                    _ => Ok(()),
                }
            }
            Some(JournalStore::Sqlite(_)) => {
                if self.password_file.is_some() || self.ca_file.is_some() {
                    return Err(
                        "journal.password_file and journal.ca_file are for a PostgreSQL journal"
                            .into(),
                    );
                }
                Ok(())
            }
            None => Err("journal.url was not parsed".into()),
        }
    }
}

/// `sqlite:PATH` or a PostgreSQL URL without a password.
fn parse_url(url: &str, base: &Path) -> Result<JournalStore, String> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err("journal.url = \"sqlite:\" needs a file path, e.g. sqlite:/var/lib/hsm-bridge/journal.sqlite".into());
        }
        let p = PathBuf::from(path);
        return Ok(JournalStore::Sqlite(if p.is_relative() {
            base.join(p)
        } else {
            p
        }));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        // tokio-postgres knows disable, prefer and require; the journal always verifies the
        // server's certificate and name when it uses TLS, which is what libpq's verify-ca
        // and verify-full ask for.
        let url = url
            .replace("sslmode=verify-full", "sslmode=require")
            .replace("sslmode=verify-ca", "sslmode=require");
        let pg = tokio_postgres::Config::from_str(&url).map_err(|e| {
            // The URL may hold a password after all: never quoted.
            format!("journal.url is not a PostgreSQL URL tokio-postgres accepts ({e})")
        })?;
        if pg.get_password().is_some() {
            return Err(
                "journal.url must not hold a password: put it in journal.password_file".into(),
            );
        }
        if pg.get_user().is_none() {
            return Err("journal.url must name the database user (postgres://USER@HOST/DB)".into());
        }
        if pg.get_dbname().is_none() {
            return Err("journal.url must name the database (postgres://USER@HOST/DB)".into());
        }
        return Ok(JournalStore::Postgres(Box::new(pg)));
    }
    Err(format!(
        "journal.url must start with sqlite: or postgres:// (got {:?})",
        url.chars().take(12).collect::<String>()
    ))
}

/// The `sslmode` a PostgreSQL URL names, lower case, if it names one.
fn url_sslmode(url: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("sslmode="))
        .map(str::to_ascii_lowercase)
}

/// Whether every host the URL names is loopback or a Unix socket.
pub(crate) fn on_this_machine(pg: &tokio_postgres::Config) -> bool {
    use tokio_postgres::config::Host;
    !pg.get_hosts().is_empty()
        && pg.get_hosts().iter().all(|h| match h {
            Host::Unix(_) => true,
            Host::Tcp(name) => {
                name == "localhost"
                    || name
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        })
        && pg.get_hostaddrs().iter().all(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(url: &str) -> Result<JournalStore, String> {
        parse_url(url, Path::new("/etc/hsm-bridge"))
    }

    #[test]
    fn urls() {
        match store("sqlite:journal.sqlite").unwrap() {
            JournalStore::Sqlite(p) => assert_eq!(p, Path::new("/etc/hsm-bridge/journal.sqlite")),
            other => panic!("{other:?}"),
        }
        match store("sqlite:///var/lib/j.sqlite").unwrap() {
            JournalStore::Sqlite(p) => assert_eq!(p, Path::new("/var/lib/j.sqlite")),
            other => panic!("{other:?}"),
        }
        assert!(store("sqlite:").is_err());
        let pw = store("postgres://bridge:s3cret@127.0.0.1/journal").unwrap_err();
        assert!(
            pw.contains("password_file") && !pw.contains("s3cret"),
            "{pw}"
        );
        assert!(store("postgres://127.0.0.1/journal").is_err());
        assert!(store("postgres://bridge@127.0.0.1").is_err());
        assert!(store("mysql://x").is_err());
        let JournalStore::Postgres(local) = store("postgres://bridge@127.0.0.1:5433/j").unwrap()
        else {
            panic!()
        };
        assert!(on_this_machine(&local));
        let JournalStore::Postgres(far) = store("postgres://bridge@db.example/j").unwrap() else {
            panic!()
        };
        assert!(!on_this_machine(&far));
        let JournalStore::Postgres(sock) =
            store("postgresql://bridge@%2Fvar%2Frun%2Fpostgresql/j").unwrap()
        else {
            panic!()
        };
        assert!(on_this_machine(&sock));
    }

    fn validated(url: &str, ca: bool) -> Result<JournalConfig, String> {
        let mut c = JournalConfig {
            url: url.into(),
            password_file: Some("/etc/hsm-bridge/pw".into()),
            ca_file: ca.then(|| "/etc/hsm-bridge/ca.pem".into()),
            ..JournalConfig::default()
        };
        c.store = Some(parse_url(url, Path::new("/etc/hsm-bridge"))?);
        c.validate().map(|()| c)
    }

    #[test]
    fn tls_cannot_be_turned_off_where_it_is_required() {
        // off this machine: TLS, which needs a CA
        assert!(validated("postgres://b@db.example/j", false).is_err());
        assert!(
            validated("postgres://b@db.example/j", true)
                .unwrap()
                .postgres_tls()
        );
        // a CA file means TLS, on loopback too
        assert!(
            validated("postgres://b@127.0.0.1/j", true)
                .unwrap()
                .postgres_tls()
        );
        assert!(
            !validated("postgres://b@127.0.0.1/j", false)
                .unwrap()
                .postgres_tls()
        );
        for mode in ["disable", "prefer"] {
            for host in ["db.example", "127.0.0.1"] {
                let e =
                    validated(&format!("postgres://b@{host}/j?sslmode={mode}"), true).unwrap_err();
                assert!(e.contains(&format!("sslmode={mode}")), "{e}");
            }
        }
        for mode in ["require", "verify-ca", "verify-full"] {
            assert!(validated(&format!("postgres://b@db.example/j?sslmode={mode}"), true).is_ok());
            let e =
                validated(&format!("postgres://b@127.0.0.1/j?sslmode={mode}"), false).unwrap_err();
            assert!(e.contains("journal.ca_file"), "{e}");
        }
        // plain text on loopback without a CA stays possible (SCRAM only: postgres.rs)
        assert!(validated("postgres://b@127.0.0.1/j?sslmode=disable", false).is_ok());
    }
}
