//! The PostgreSQL journal, for replicas that share one. Each statement is atomic on its own
//! (no transaction spans a round trip), so one connection serves concurrent imports; it is
//! opened on first use, and again after it breaks. Times are the server's clock, so
//! replicas' clocks do not decide leases. The password comes from `journal.password_file`,
//! read at each connect.
//!
//! The network path: with `journal.ca_file` (required off loopback and Unix sockets) the
//! connection must be TLS (`sslmode=require`, whatever the URL says; a server that answers
//! "no TLS" gets nothing), the server's certificate must chain to that CA and name the
//! host, and SCRAM binds itself to the TLS channel when the server offers it. Without TLS
//! (loopback or a Unix socket, no `ca_file`) the password is given only to SCRAM-SHA-256:
//! a server that asks for it in clear text or as MD5 (a local process posing as the
//! server) is refused before anything is sent.
//!
//! The schema, its migrations and the reading of a record are `schema.rs`'s.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row};
use zeroize::Zeroizing;

use super::schema::{self, Dialect};
use super::{Backend, BoxFuture, Entry, JournalError, Made, Outcome, RawClaim, Record};

/// The server's time, in milliseconds since the epoch.
const NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";
/// Longest wait for a connection or one statement.
const TIMEOUT: Duration = Duration::from_secs(5);
pub(super) struct Postgres {
    config: tokio_postgres::Config,
    password_file: Option<PathBuf>,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
}

fn unavailable(e: impl std::fmt::Display) -> JournalError {
    JournalError::Unavailable(e.to_string())
}

/// A client library error with its causes ("error communicating with the server" says
/// nothing; the reason is below it).
fn pg_error(e: tokio_postgres::Error) -> JournalError {
    JournalError::Unavailable(format!("{e}{}", crate::text::causes(&e)))
}

/// Where the journal is, for logs: user, hosts, database; never a password.
pub(super) fn describe(pg: &tokio_postgres::Config) -> String {
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
    pub(super) fn new(
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
                // Never `prefer`: a server (or a man in the middle) that says "no TLS"
                // must not get a password in clear.
                cfg.ssl_mode(SslMode::Require);
                let (client, conn) = timed(cfg.connect(tls.clone())).await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::warn!("journal connection closed: {e}");
                    }
                });
                client
            }
            None => {
                let stream = match tokio::time::timeout(TIMEOUT, local_stream(&cfg)).await {
                    Ok(r) => r?,
                    Err(_) => return Err(unavailable("no answer within 5 s")),
                };
                let (client, conn) = timed(cfg.connect_raw(stream, NoTls)).await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::warn!("journal connection closed: {e}");
                    }
                });
                client
            }
        };
        schema::upgrade(&mut Migrating(&client)).await?;
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
                Err(pg_error(e))
            }
            Err(_) => {
                *self.client.lock().await = None;
                Err(unavailable("no answer within 5 s"))
            }
        }
    }
}

impl Postgres {
    /// The `said` column of the one row `sql` gives for `token`, if any.
    fn said<'a>(
        &'a self,
        sql: &'static str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, JournalError>> {
        Box::pin(async move {
            self.with(async |c| {
                let row = c.query_opt(sql, &[&token]).await?;
                row.map(|r| r.try_get(0)).transpose()
            })
            .await
        })
    }
}

async fn timed<T>(
    f: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, JournalError> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(r) => r.map_err(pg_error),
        Err(_) => Err(unavailable("no answer within 5 s")),
    }
}

/// A plain-text connection to the first of the URL's hosts that answers (loopback or a
/// Unix socket: the config allows nothing else without TLS), with [`ScramOnly`] on it.
async fn local_stream(cfg: &tokio_postgres::Config) -> Result<ScramOnly<Local>, JournalError> {
    let ports = cfg.get_ports();
    let port = |i: usize| match ports {
        [] => 5432,
        [p] => *p,
        many => many.get(i).copied().unwrap_or(5432),
    };
    let mut last = String::from("journal.url names no host");
    let addrs = cfg.get_hostaddrs();
    for (i, host) in cfg.get_hosts().iter().enumerate() {
        let r = match (addrs.get(i), host) {
            (Some(ip), _) => tokio::net::TcpStream::connect((*ip, port(i)))
                .await
                .map(Local::Tcp),
            (None, Host::Tcp(name)) => tokio::net::TcpStream::connect((name.as_str(), port(i)))
                .await
                .map(Local::Tcp),
            (None, Host::Unix(dir)) => {
                tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{}", port(i))))
                    .await
                    .map(Local::Unix)
            }
        };
        match r {
            Ok(s) => {
                if let Local::Tcp(t) = &s {
                    let _ = t.set_nodelay(true);
                }
                return Ok(ScramOnly::new(s));
            }
            Err(e) => last = format!("{host:?}: {e}"),
        }
    }
    Err(unavailable(last))
}

/// A socket to a server on this machine.
enum Local {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// Reads the server's messages until it has accepted the login, and fails the connection
/// (before the client can answer) if the server asks for the password in clear text or
/// as MD5: without TLS, the password goes only to SCRAM-SHA-256, which never reveals it.
struct ScramOnly<S> {
    io: S,
    /// Message header bytes seen so far (type and length).
    header: [u8; 5],
    have: usize,
    /// Bytes left of the current message's body, and its type.
    left: usize,
    kind: u8,
    /// The authentication code of an 'R' message, as it arrives.
    code: [u8; 4],
    have_code: usize,
    /// The login is done: nothing more is looked at.
    done: bool,
}

impl<S> ScramOnly<S> {
    fn new(io: S) -> ScramOnly<S> {
        ScramOnly {
            io,
            header: [0; 5],
            have: 0,
            left: 0,
            kind: 0,
            code: [0; 4],
            have_code: 0,
            done: false,
        }
    }

    /// Looks at bytes the server sent; an error names what it asked for.
    fn inspect(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !self.done && !bytes.is_empty() {
            if self.left == 0 && self.have < 5 {
                let n = (5 - self.have).min(bytes.len());
                self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have == 5 {
                    let len = u32::from_be_bytes(self.header[1..5].try_into().expect("4 bytes"));
                    if len < 4 {
                        return Err(std::io::Error::other("the server sent a malformed message"));
                    }
                    self.kind = self.header[0];
                    self.left = len as usize - 4;
                    self.have_code = 0;
                    if self.left == 0 {
                        self.have = 0;
                    }
                }
                continue;
            }
            let n = self.left.min(bytes.len());
            if self.kind == b'R' && self.have_code < 4 {
                let k = (4 - self.have_code).min(n);
                self.code[self.have_code..self.have_code + k].copy_from_slice(&bytes[..k]);
                self.have_code += k;
                if self.have_code == 4 {
                    match u32::from_be_bytes(self.code) {
                        0 => self.done = true,
                        3 => return Err(refused_auth("in clear text")),
                        5 => return Err(refused_auth("as an MD5 hash")),
                        _ => {}
                    }
                }
            }
            self.left -= n;
            bytes = &bytes[n..];
            if self.left == 0 {
                self.have = 0;
            }
        }
        Ok(())
    }
}

fn refused_auth(how: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!(
            "the server asked for the journal's password {how}; without TLS hsm-bridge gives it only to SCRAM-SHA-256 (set password_encryption = scram-sha-256 and the pg_hba.conf method scram-sha-256, or use TLS with journal.ca_file)"
        ),
    )
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for ScramOnly<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let me = &mut *self;
        match std::pin::Pin::new(&mut me.io).poll_read(cx, buf) {
            std::task::Poll::Ready(Ok(())) => {
                std::task::Poll::Ready(me.inspect(&buf.filled()[before..]))
            }
            other => other,
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for ScramOnly<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tokio::io::AsyncRead for Local {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Local::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Local::Unix(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Local {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Local::Tcp(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Local::Unix(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Local::Tcp(s) => std::pin::Pin::new(s).poll_flush(cx),
            Local::Unix(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Local::Tcp(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Local::Unix(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The password file's first line (a private file; at most 1 KiB).
fn read_password(path: &std::path::Path) -> Result<Zeroizing<Vec<u8>>, JournalError> {
    let mut f =
        crate::hardening::open_private(path, "journal password file").map_err(unavailable)?;
    // sized once: a buffer that grew would leave copies behind, unzeroed
    let mut buf = Zeroizing::new(Vec::with_capacity(1024));
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

/// The connection, as migrations see it.
struct Migrating<'c>(&'c Client);

impl schema::Database for Migrating<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn execute(&mut self, sql: &str) -> Result<(), JournalError> {
        timed(self.0.batch_execute(sql)).await
    }

    async fn number(&mut self, sql: &str) -> Result<i64, JournalError> {
        let row = timed(self.0.query_one(sql, &[])).await?;
        row.try_get(0).map_err(pg_error)
    }
}

/// A record's row, read without panicking whatever it holds.
impl schema::Row for Row {
    fn text(&self, i: usize) -> Result<Option<String>, String> {
        self.try_get(i).map_err(|e| e.to_string())
    }
    fn integer(&self, i: usize) -> Result<Option<i64>, String> {
        self.try_get(i).map_err(|e| e.to_string())
    }
    fn bytes(&self, i: usize) -> Result<Option<Vec<u8>>, String> {
        self.try_get(i).map_err(|e| e.to_string())
    }
}

/// What the claim statements found, before it is read as records.
enum Found {
    Inserted,
    Taken(Row),
    Held(Row),
}

impl Backend for Postgres {
    fn claim<'a>(
        &'a self,
        e: &'a Entry,
        mac: &'a [u8],
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<RawClaim, JournalError>> {
        Box::pin(async move {
            let lease_ms = lease.as_millis() as i64;
            let digest = &e.digest[..];
            let found = self.with(async |c| {
                // A record released (deleted) between the statements is free again: the next
                // round inserts it, or finds whoever did.
                loop {
                    let inserted = c
                        .execute(
                            &format!(
                                "INSERT INTO hsm_bridge_imports (token, caller, idempotency_key, operation, target, endpoint, algorithm, request_digest, state, lease_owner, lease_until, created_at, updated_at, mac)
                                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'claimed', $9, {NOW} + $10, {NOW}, {NOW}, $11)
                                 ON CONFLICT (token) DO NOTHING"
                            ),
                            &[&e.token, &e.caller, &e.idempotency_key, &e.operation, &e.target, &e.endpoint, &e.algorithm, &digest, &owner, &lease_ms, &mac],
                        )
                        .await?;
                    if inserted == 1 {
                        return Ok(Found::Inserted);
                    }
                    let taken = c
                        .query_opt(
                            &format!(
                                "UPDATE hsm_bridge_imports SET lease_owner = $2, lease_until = {NOW} + $3, updated_at = {NOW}
                                 WHERE token = $1 AND request_digest = $4 AND state IN ('claimed', 'prepared', 'unknown')
                                   AND (lease_owner IS NULL OR lease_until < {NOW})
                                 RETURNING {}",
                                schema::columns(true)
                            ),
                            &[&e.token, &owner, &lease_ms, &digest],
                        )
                        .await?;
                    if let Some(row) = taken {
                        return Ok(Found::Taken(row));
                    }
                    let held = c
                        .query_opt(
                            &format!("SELECT {} FROM hsm_bridge_imports WHERE token = $1", schema::columns(true)),
                            &[&e.token],
                        )
                        .await?;
                    if let Some(row) = held {
                        return Ok(Found::Held(row));
                    }
                }
            })
            .await?;
            Ok(match found {
                Found::Inserted => RawClaim::Inserted,
                Found::Taken(row) => RawClaim::Taken(schema::record(&row, true)?),
                Found::Held(row) => RawClaim::Held(schema::record(&row, true)?),
            })
        })
    }

    fn prepare<'a>(
        &'a self,
        token: &'a str,
        owner: &'a str,
        body: &'a [u8],
        made: &'a Made,
        mac: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, JournalError>> {
        Box::pin(async move {
            self.with(async |c| {
                let n = c
                    .execute(
                        &format!(
                            "UPDATE hsm_bridge_imports SET body = $3, state = 'prepared', source_key_label = $4, source_key_id_hex = $5,
                                 mode = $6, wrapping_key_sha256 = $7, mac = $8, updated_at = {NOW}
                             WHERE token = $1 AND lease_owner = $2 AND body IS NULL"
                        ),
                        &[&token, &owner, &body, &made.source_key_label, &made.source_key_id_hex, &made.mode, &made.wrapping_key_sha256, &mac],
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
        mac: &'a [u8],
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            let (sql, v) = super::sqlite::finish_values(outcome);
            // The same statement as SQLite's, in PostgreSQL's placeholders and clock.
            let sql = sql.replace("?10", NOW).replace('?', "$");
            let params: [&(dyn ToSql + Sync); 9] =
                [&token, &v.0, &v.1, &v.2, &v.3, &v.4, &v.5, &v.6, &mac];
            self.with(async |c| c.execute(&sql, &params).await.map(|_| ()))
                .await
        })
    }

    fn release<'a>(
        &'a self,
        token: &'a str,
        owner: &'a str,
        delete_unsent: bool,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            self.with(async |c| {
                if delete_unsent {
                    c.execute(
                        "DELETE FROM hsm_bridge_imports WHERE token = $1 AND lease_owner = $2 AND body IS NULL",
                        &[&token, &owner],
                    )
                    .await?;
                }
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
            let rows = self
                .with(async |c| {
                    c.query(
                        &format!("SELECT {} FROM hsm_bridge_imports {filter} ORDER BY created_at DESC LIMIT $1", schema::columns(false)),
                        &[&limit],
                    )
                    .await
                })
                .await?;
            rows.iter().map(|r| schema::record(r, false)).collect()
        })
    }

    fn get<'a>(
        &'a self,
        token: &'a str,
        with_body: bool,
    ) -> BoxFuture<'a, Result<Option<Record>, JournalError>> {
        Box::pin(async move {
            let row = self
                .with(async |c| {
                    c.query_opt(
                        &format!(
                            "SELECT {} FROM hsm_bridge_imports WHERE token = $1",
                            schema::columns(with_body)
                        ),
                        &[&token],
                    )
                    .await
                })
                .await?;
            row.map(|r| schema::record(&r, with_body)).transpose()
        })
    }

    fn pin_refusal<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, JournalError>> {
        self.said(
            "SELECT said FROM hsm_bridge_pin_refusals WHERE token = $1",
            token,
        )
    }

    fn set_pin_refusal<'a>(
        &'a self,
        token: &'a str,
        said: &'a str,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            self.with(async |c| {
                c.execute(
                    &format!(
                        "INSERT INTO hsm_bridge_pin_refusals (token, said, at) VALUES ($1, $2, {NOW})
                         ON CONFLICT (token) DO UPDATE SET said = $2, at = {NOW}"
                    ),
                    &[&token, &said],
                )
                .await
                .map(|_| ())
            })
            .await
        })
    }

    fn clear_pin_refusal<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, JournalError>> {
        self.said(
            "DELETE FROM hsm_bridge_pin_refusals WHERE token = $1 RETURNING said",
            token,
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn auth(code: u32, rest: &[u8]) -> Vec<u8> {
        let mut b = code.to_be_bytes().to_vec();
        b.extend_from_slice(rest);
        msg(b'R', &b)
    }

    /// Feeds `stream` in pieces of `step` bytes.
    fn feed(stream: &[u8], step: usize) -> std::io::Result<bool> {
        let mut g = ScramOnly::new(());
        for piece in stream.chunks(step) {
            g.inspect(piece)?;
        }
        Ok(g.done)
    }

    #[test]
    fn only_scram_gets_the_password_without_tls() {
        let scram = [
            auth(10, b"SCRAM-SHA-256\0\0"),
            auth(11, b"r=nonce,s=salt,i=4096"),
            auth(12, b"v=proof"),
            auth(0, b""),
            msg(b'S', b"server_version\x0015\0"),
            // after the login, nothing is looked at
            auth(3, b""),
        ]
        .concat();
        for step in [1, 2, 3, 7, 1000] {
            assert!(feed(&scram, step).unwrap(), "step {step}");
        }
        for (code, how) in [(3, "clear text"), (5, "MD5")] {
            let asked = [msg(b'N', b"notice"), auth(code, b"salt")].concat();
            for step in [1, 3, 1000] {
                let e = feed(&asked, step).unwrap_err();
                assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
                assert!(e.to_string().contains(how), "{e}");
            }
        }
        assert!(feed(&[b'R', 0, 0, 0, 2], 1).is_err(), "a length below 4");
    }
}
