//! The PostgreSQL journal, for replicas that share one. Each statement is atomic on its own
//! (no transaction spans a round trip), so one connection serves concurrent imports; it is
//! opened on first use, and again after it breaks. Times are the server's clock, so
//! replicas' clocks do not decide leases. The password comes from `journal.password_file`,
//! read at each connect; off loopback the connection uses TLS and verifies the server.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row};
use zeroize::Zeroizing;

use super::{
    Backend, BoxFuture, COLUMNS, Entry, Failure, JournalError, Made, Outcome, RawClaim, Record,
    State,
};

/// The server's time, in milliseconds since the epoch.
const NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";
/// Longest wait for a connection or one statement.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Serialises the schema's creation among replicas that start together.
const SCHEMA_LOCK: i64 = 0x6873_6d62_7264_676a;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS hsm_bridge_imports (
    token TEXT PRIMARY KEY,
    caller TEXT NOT NULL,
    idempotency_key TEXT,
    operation TEXT NOT NULL,
    target TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    request_digest BYTEA NOT NULL,
    state TEXT NOT NULL,
    body BYTEA,
    source_key_label TEXT,
    source_key_id_hex TEXT,
    mode TEXT,
    wrapping_key_sha256 TEXT,
    created_id TEXT,
    answer TEXT,
    opc_request_id TEXT,
    failure_status BIGINT,
    failure_code TEXT,
    failure_message TEXT,
    lease_owner TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS hsm_bridge_imports_created ON hsm_bridge_imports (created_at);
";

pub struct Postgres {
    config: tokio_postgres::Config,
    password_file: Option<PathBuf>,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
}

fn unavailable(e: impl std::fmt::Display) -> JournalError {
    JournalError::Unavailable(e.to_string())
}

/// Where the journal is, for logs: user, hosts, database; never a password.
pub fn describe(pg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(n) => n.clone(),
            Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        pg.get_user().unwrap_or("?"),
        hosts.join(","),
        pg.get_dbname().unwrap_or("?")
    )
}

impl Postgres {
    pub fn new(
        config: tokio_postgres::Config,
        password_file: Option<PathBuf>,
        ca_file: Option<PathBuf>,
    ) -> Result<Postgres, JournalError> {
        let tls = match &ca_file {
            Some(ca) => Some(tls(ca)?),
            None => None,
        };
        Ok(Postgres {
            config,
            password_file,
            tls,
            client: tokio::sync::Mutex::new(None),
        })
    }

    /// The connection, opened (and the schema made) if there is none or it broke.
    async fn client(&self) -> Result<Arc<Client>, JournalError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        *slot = None;
        let mut cfg = self.config.clone();
        cfg.connect_timeout(TIMEOUT);
        cfg.application_name("hsm-bridge");
        if let Some(f) = &self.password_file {
            cfg.password(read_password(f)?.as_slice());
        }
        let client = match &self.tls {
            Some(tls) => {
                let (client, conn) = timed(cfg.connect(tls.clone())).await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::warn!("journal connection closed: {e}");
                    }
                });
                client
            }
            None => {
                let (client, conn) = timed(cfg.connect(NoTls)).await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::warn!("journal connection closed: {e}");
                    }
                });
                client
            }
        };
        timed(client.batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {SCHEMA} COMMIT;"
        )))
        .await?;
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Runs one statement's worth of work on the connection; after an error the connection
    /// is dropped when it is the connection's fault (a closed socket, a timeout).
    async fn with<T>(
        &self,
        f: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, JournalError> {
        let c = self.client().await?;
        match tokio::time::timeout(TIMEOUT, f(&c)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if c.is_closed() || e.is_closed() {
                    *self.client.lock().await = None;
                }
                Err(unavailable(e))
            }
            Err(_) => {
                *self.client.lock().await = None;
                Err(unavailable("no answer within 5 s"))
            }
        }
    }
}

async fn timed<T>(
    f: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, JournalError> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(r) => r.map_err(unavailable),
        Err(_) => Err(unavailable("no answer within 5 s")),
    }
}

/// The password file's first line (a private file; at most 1 KiB).
fn read_password(path: &std::path::Path) -> Result<Zeroizing<Vec<u8>>, JournalError> {
    let mut f =
        crate::hardening::open_private(path, "journal password file").map_err(unavailable)?;
    let mut buf = Zeroizing::new(Vec::new());
    (&mut f)
        .take(1024)
        .read_to_end(&mut buf)
        .map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
    let end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let mut line = Zeroizing::new(buf[..end].to_vec());
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(line)
}

/// TLS for the connection: the server's certificate must chain to `ca` and name the host.
fn tls(ca: &std::path::Path) -> Result<tokio_postgres_rustls::MakeRustlsConnect, JournalError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .and_then(|i| i.collect())
        .map_err(|e| unavailable(format!("journal.ca_file {}: {e}", ca.display())))?;
    for c in certs {
        roots
            .add(c)
            .map_err(|e| unavailable(format!("journal.ca_file {}: {e}", ca.display())))?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(unavailable)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(cfg))
}

fn record(r: &Row, with_body: bool) -> Result<Record, tokio_postgres::Error> {
    let state: String = r.try_get(8)?;
    let failure = r.try_get::<_, Option<i64>>(16)?.map(|status| Failure {
        status: status as u16,
        code: r.get::<_, Option<String>>(17).unwrap_or_default(),
        message: r.get::<_, Option<String>>(18).unwrap_or_default(),
    });
    Ok(Record {
        token: r.try_get(0)?,
        caller: r.try_get(1)?,
        idempotency_key: r.try_get(2)?,
        operation: r.try_get(3)?,
        target: r.try_get(4)?,
        endpoint: r.try_get(5)?,
        algorithm: r.try_get(6)?,
        digest: r.try_get(7)?,
        // an unknown state reads as unknown: a retry re-sends, which is always safe
        state: State::parse(&state).unwrap_or(State::Unknown),
        made: Made {
            source_key_label: r.try_get(9)?,
            source_key_id_hex: r.try_get(10)?,
            mode: r.try_get(11)?,
            wrapping_key_sha256: r.try_get(12)?,
        },
        created_id: r.try_get(13)?,
        answer: r.try_get(14)?,
        opc_request_id: r.try_get(15)?,
        failure,
        lease_owner: r.try_get(19)?,
        lease_until_ms: r.try_get(20)?,
        created_at_ms: r.try_get(21)?,
        updated_at_ms: r.try_get(22)?,
        body_bytes: r.try_get::<_, Option<i32>>(23)?.map(|n| n as u64),
        body: if with_body {
            r.try_get::<_, Option<Vec<u8>>>(24)?
                .map(|b| Arc::new(Zeroizing::new(b)))
        } else {
            None
        },
    })
}

impl Backend for Postgres {
    fn claim<'a>(
        &'a self,
        e: &'a Entry,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<RawClaim, JournalError>> {
        Box::pin(async move {
            let lease_ms = lease.as_millis() as i64;
            let digest = &e.digest[..];
            self.with(async |c| {
                // A record released (deleted) between the statements is free again: the next
                // round inserts it, or finds whoever did.
                loop {
                    let inserted = c
                        .execute(
                            &format!(
                                "INSERT INTO hsm_bridge_imports (token, caller, idempotency_key, operation, target, endpoint, algorithm, request_digest, state, lease_owner, lease_until, created_at, updated_at)
                                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'claimed', $9, {NOW} + $10, {NOW}, {NOW})
                                 ON CONFLICT (token) DO NOTHING"
                            ),
                            &[&e.token, &e.caller, &e.idempotency_key, &e.operation, &e.target, &e.endpoint, &e.algorithm, &digest, &owner, &lease_ms],
                        )
                        .await?;
                    if inserted == 1 {
                        return Ok(RawClaim::Inserted);
                    }
                    let taken = c
                        .query_opt(
                            &format!(
                                "UPDATE hsm_bridge_imports SET lease_owner = $2, lease_until = {NOW} + $3, updated_at = {NOW}
                                 WHERE token = $1 AND request_digest = $4 AND state IN ('claimed', 'prepared', 'unknown')
                                   AND (lease_owner IS NULL OR lease_until < {NOW})
                                 RETURNING {COLUMNS}, body"
                            ),
                            &[&e.token, &owner, &lease_ms, &digest],
                        )
                        .await?;
                    if let Some(row) = taken {
                        return Ok(RawClaim::Taken(record(&row, true)?));
                    }
                    let held = c
                        .query_opt(
                            &format!("SELECT {COLUMNS} FROM hsm_bridge_imports WHERE token = $1"),
                            &[&e.token],
                        )
                        .await?;
                    if let Some(row) = held {
                        return Ok(RawClaim::Held(record(&row, false)?));
                    }
                }
            })
            .await
        })
    }

    fn prepare<'a>(
        &'a self,
        token: &'a str,
        owner: &'a str,
        body: &'a [u8],
        made: &'a Made,
    ) -> BoxFuture<'a, Result<bool, JournalError>> {
        Box::pin(async move {
            self.with(async |c| {
                let n = c
                    .execute(
                        &format!(
                            "UPDATE hsm_bridge_imports SET body = $3, state = 'prepared', source_key_label = $4, source_key_id_hex = $5,
                                 mode = $6, wrapping_key_sha256 = $7, updated_at = {NOW}
                             WHERE token = $1 AND lease_owner = $2 AND body IS NULL"
                        ),
                        &[&token, &owner, &body, &made.source_key_label, &made.source_key_id_hex, &made.mode, &made.wrapping_key_sha256],
                    )
                    .await?;
                Ok(n == 1)
            })
            .await
        })
    }

    fn renew<'a>(
        &'a self,
        token: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, JournalError>> {
        Box::pin(async move {
            let lease_ms = lease.as_millis() as i64;
            self.with(async |c| {
                let n = c
                    .execute(
                        &format!("UPDATE hsm_bridge_imports SET lease_until = {NOW} + $3 WHERE token = $1 AND lease_owner = $2"),
                        &[&token, &owner, &lease_ms],
                    )
                    .await?;
                Ok(n == 1)
            })
            .await
        })
    }

    fn finish<'a>(
        &'a self,
        token: &'a str,
        outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            let (sql, v) = super::sqlite::finish_values(outcome);
            // The same statement as SQLite's, in PostgreSQL's placeholders and clock.
            let sql = sql.replace("?9", NOW).replace('?', "$");
            let params: [&(dyn ToSql + Sync); 8] =
                [&token, &v.0, &v.1, &v.2, &v.3, &v.4, &v.5, &v.6];
            self.with(async |c| c.execute(&sql, &params).await.map(|_| ()))
                .await
        })
    }

    fn release<'a>(
        &'a self,
        token: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            self.with(async |c| {
                c.execute(
                    "DELETE FROM hsm_bridge_imports WHERE token = $1 AND lease_owner = $2 AND body IS NULL",
                    &[&token, &owner],
                )
                .await?;
                c.execute(
                    "UPDATE hsm_bridge_imports SET lease_owner = NULL, lease_until = 0 WHERE token = $1 AND lease_owner = $2",
                    &[&token, &owner],
                )
                .await
                .map(|_| ())
            })
            .await
        })
    }

    fn list(
        &self,
        limit: u32,
        unresolved: bool,
    ) -> BoxFuture<'_, Result<Vec<Record>, JournalError>> {
        Box::pin(async move {
            let filter = if unresolved {
                "WHERE state IN ('prepared', 'unknown')".to_string()
            } else {
                String::new()
            };
            let limit = limit as i64;
            self.with(async |c| {
                let rows = c
                    .query(
                        &format!("SELECT {COLUMNS} FROM hsm_bridge_imports {filter} ORDER BY created_at DESC LIMIT $1"),
                        &[&limit],
                    )
                    .await?;
                rows.iter().map(|r| record(r, false)).collect()
            })
            .await
        })
    }

    fn get<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<Record>, JournalError>> {
        Box::pin(async move {
            self.with(async |c| {
                let row = c
                    .query_opt(
                        &format!("SELECT {COLUMNS} FROM hsm_bridge_imports WHERE token = $1"),
                        &[&token],
                    )
                    .await?;
                row.map(|r| record(&r, false)).transpose()
            })
            .await
        })
    }

    fn purge(&self, age: Duration) -> BoxFuture<'_, Result<u64, JournalError>> {
        Box::pin(async move {
            let age_ms = age.as_millis() as i64;
            self.with(async |c| {
                c.execute(
                    &format!("DELETE FROM hsm_bridge_imports WHERE created_at < {NOW} - $1 AND (lease_owner IS NULL OR lease_until < {NOW})"),
                    &[&age_ms],
                )
                .await
            })
            .await
        })
    }
}
