//! The SQLite journal (the default): one file, WAL, every commit synchronous, created 0600.
//! rusqlite is blocking, so every statement runs on tokio's blocking threads, one at a time
//! per process; the daemon and the CLI may share the file (SQLite's own locks, a 5 s busy
//! wait). Times are this machine's clock. The schema, its migrations and the reading of
//! a record are `schema.rs`'s.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use zeroize::Zeroizing;

use super::schema::{self, Dialect, Migration};
use super::{Backend, BoxFuture, Entry, JournalError, Made, Outcome, RawClaim, Record, now_ms};

pub(super) struct Sqlite {
    path: PathBuf,
    conn: Arc<Mutex<Option<Connection>>>,
}

fn unavailable(e: impl std::fmt::Display) -> JournalError {
    JournalError::Unavailable(e.to_string())
}

impl Sqlite {
    pub(super) fn new(path: PathBuf) -> Sqlite {
        Sqlite {
            path,
            conn: Arc::new(Mutex::new(None)),
        }
    }

    /// Runs `f` on the connection (opened first if need be) on a blocking thread. After an
    /// error the connection is closed, so the next call opens the file afresh.
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> BoxFuture<'_, Result<T, JournalError>> {
        let (conn, path) = (self.conn.clone(), self.path.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
                if guard.is_none() {
                    *guard = Some(open(&path)?);
                }
                let c = guard.as_mut().expect("opened above");
                let r = f(c);
                if r.is_err() {
                    *guard = None;
                }
                r.map_err(|e| unavailable(format!("{}: {e}", path.display())))
            })
            .await
            .map_err(unavailable)?
        })
    }

    /// As [`Sqlite::run`], for work that also reads records: a record that cannot be read
    /// is that record's error, and leaves the connection open.
    fn run_read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<Result<T, JournalError>> + Send + 'static,
    ) -> BoxFuture<'_, Result<T, JournalError>> {
        let ran = self.run(f);
        Box::pin(async move { ran.await? })
    }
}

impl Sqlite {
    /// The `said` column of the one row `sql` gives for `token`, if any.
    fn said(
        &self,
        sql: &'static str,
        token: &str,
    ) -> BoxFuture<'_, Result<Option<String>, JournalError>> {
        let token = token.to_string();
        self.run(move |c| c.query_row(sql, [token], |r| r.get(0)).optional())
    }
}

/// Opens (creating, mode 0600) the journal file: never through a symbolic link, never a
/// file that others may write.
fn open(path: &Path) -> Result<Connection, JournalError> {
    let at = |e: &dyn std::fmt::Display| unavailable(format!("{}: {e}", path.display()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| at(&e))?;
    let meta = f.metadata().map_err(|e| at(&e))?;
    if !meta.is_file() {
        return Err(at(&"not a regular file"));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(at(&"group or others may write it; chmod 600 it"));
    }
    drop(f);
    let c = Connection::open(path).map_err(|e| at(&e))?;
    c.busy_timeout(Duration::from_secs(5)).map_err(|e| at(&e))?;
    let mode: String = c
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| at(&e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(at(&format!("journal_mode is {mode}, not WAL")));
    }
    c.execute_batch("PRAGMA synchronous=FULL;")
        .map_err(|e| at(&e))?;
    upgrade(&c, path)?;
    Ok(c)
}

/// Brings the file's schema to [`schema::VERSION`] (src/journal/schema.rs).
fn upgrade(c: &Connection, path: &Path) -> Result<(), JournalError> {
    migrate(c, path, schema::MIGRATIONS)
}

/// Brings the file's schema to the last of `migrations`.
fn migrate(c: &Connection, path: &Path, migrations: &[Migration]) -> Result<(), JournalError> {
    let mut db = Migrating { c, path };
    let mut upgrade = std::pin::pin!(schema::upgrade_with(&mut db, migrations));
    // Every statement is synchronous: the migration is done when first polled.
    match upgrade
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => Err(unavailable("the schema's migration did not complete")),
    }
}

/// The connection to the file at `path`, as migrations see it.
struct Migrating<'c> {
    c: &'c Connection,
    path: &'c Path,
}

impl Migrating<'_> {
    /// A database error, with the file's name.
    fn failed(&self, e: rusqlite::Error) -> JournalError {
        unavailable(format!("{}: {e}", self.path.display()))
    }
}

impl schema::Database for Migrating<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn execute(&mut self, sql: &str) -> Result<(), JournalError> {
        self.c.execute_batch(sql).map_err(|e| self.failed(e))
    }

    async fn number(&mut self, sql: &str) -> Result<i64, JournalError> {
        self.c
            .query_row(sql, [], |r| r.get(0))
            .map_err(|e| self.failed(e))
    }
}

/// A record's row, read without panicking whatever it holds.
impl schema::Row for rusqlite::Row<'_> {
    fn text(&self, i: usize) -> Result<Option<String>, String> {
        self.get(i).map_err(|e| e.to_string())
    }
    fn integer(&self, i: usize) -> Result<Option<i64>, String> {
        self.get(i).map_err(|e| e.to_string())
    }
    fn bytes(&self, i: usize) -> Result<Option<Vec<u8>>, String> {
        self.get(i).map_err(|e| e.to_string())
    }
}

/// The record of `token`, if there is one; whether it could be read is the inner result.
fn select_one(
    c: &Connection,
    token: &str,
    with_body: bool,
) -> rusqlite::Result<Option<Result<Record, JournalError>>> {
    let columns = schema::columns(with_body);
    c.query_row(
        &format!("SELECT {columns} FROM hsm_bridge_imports WHERE token = ?1"),
        [token],
        |r| Ok(schema::record(r, with_body)),
    )
    .optional()
}

impl Backend for Sqlite {
    fn claim<'a>(
        &'a self,
        entry: &'a Entry,
        mac: &'a [u8],
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<RawClaim, JournalError>> {
        let (e, owner, mac) = (entry.clone(), owner.to_string(), mac.to_vec());
        self.run_read(move |c| {
            let now = now_ms();
            let until = now + lease.as_millis() as i64;
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let inserted = tx.execute(
                "INSERT INTO hsm_bridge_imports (token, caller, idempotency_key, operation, target, endpoint, algorithm, request_digest, state, lease_owner, lease_until, created_at, updated_at, mac)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'claimed', ?9, ?10, ?11, ?11, ?12)
                 ON CONFLICT (token) DO NOTHING",
                params![e.token, e.caller, e.idempotency_key, e.operation, e.target, e.endpoint, e.algorithm, &e.digest[..], owner, until, now, mac],
            )?;
            let out = if inserted == 1 {
                RawClaim::Inserted
            } else {
                let taken = tx.execute(
                    "UPDATE hsm_bridge_imports SET lease_owner = ?2, lease_until = ?3, updated_at = ?4
                     WHERE token = ?1 AND request_digest = ?5 AND state IN ('claimed', 'prepared', 'unknown')
                       AND (lease_owner IS NULL OR lease_until < ?4)",
                    params![e.token, owner, until, now, &e.digest[..]],
                )?;
                let r = match select_one(&tx, &e.token, true)? {
                    Some(Ok(r)) => r,
                    // unreadable: the transaction (and the lease taken) is rolled back
                    Some(Err(unreadable)) => return Ok(Err(unreadable)),
                    // deleted between the two statements: impossible inside the transaction
                    None => return Err(rusqlite::Error::QueryReturnedNoRows),
                };
                if taken == 1 {
                    RawClaim::Taken(r)
                } else {
                    RawClaim::Held(r)
                }
            };
            tx.commit()?;
            Ok(Ok(out))
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
        let (token, owner, made) = (token.to_string(), owner.to_string(), made.clone());
        let (body, mac) = (Zeroizing::new(body.to_vec()), mac.to_vec());
        self.run(move |c| {
            let n = c.execute(
                "UPDATE hsm_bridge_imports SET body = ?3, state = 'prepared', source_key_label = ?4, source_key_id_hex = ?5,
                     mode = ?6, wrapping_key_sha256 = ?7, updated_at = ?8, mac = ?9
                 WHERE token = ?1 AND lease_owner = ?2 AND body IS NULL",
                params![token, owner, &body[..], made.source_key_label, made.source_key_id_hex, made.mode, made.wrapping_key_sha256, now_ms(), mac],
            )?;
            Ok(n == 1)
        })
    }

    fn renew<'a>(
        &'a self,
        token: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, JournalError>> {
        let (token, owner) = (token.to_string(), owner.to_string());
        self.run(move |c| {
            let n = c.execute(
                "UPDATE hsm_bridge_imports SET lease_until = ?3 WHERE token = ?1 AND lease_owner = ?2",
                params![token, owner, now_ms() + lease.as_millis() as i64],
            )?;
            Ok(n == 1)
        })
    }

    fn finish<'a>(
        &'a self,
        token: &'a str,
        outcome: &'a Outcome,
        mac: &'a [u8],
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        let (token, mac) = (token.to_string(), mac.to_vec());
        let (sql, values) = finish_values(outcome);
        self.run(move |c| {
            c.execute(
                sql,
                params![
                    token,
                    values.0,
                    values.1,
                    values.2,
                    values.3,
                    values.4,
                    values.5,
                    values.6,
                    mac,
                    now_ms()
                ],
            )?;
            Ok(())
        })
    }

    fn release<'a>(
        &'a self,
        token: &'a str,
        owner: &'a str,
        delete_unsent: bool,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        let (token, owner) = (token.to_string(), owner.to_string());
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if delete_unsent {
                tx.execute(
                    "DELETE FROM hsm_bridge_imports WHERE token = ?1 AND lease_owner = ?2 AND body IS NULL",
                    params![token, owner],
                )?;
            }
            tx.execute(
                "UPDATE hsm_bridge_imports SET lease_owner = NULL, lease_until = 0 WHERE token = ?1 AND lease_owner = ?2",
                params![token, owner],
            )?;
            tx.commit()
        })
    }

    fn list(
        &self,
        limit: u32,
        unresolved: bool,
    ) -> BoxFuture<'_, Result<Vec<Record>, JournalError>> {
        self.run_read(move |c| {
            let filter = if unresolved {
                "WHERE state IN ('prepared', 'unknown')"
            } else {
                ""
            };
            let columns = schema::columns(false);
            let mut st = c.prepare(&format!(
                "SELECT {columns} FROM hsm_bridge_imports {filter} ORDER BY created_at DESC LIMIT ?1"
            ))?;
            let rows = st.query_map(params![limit], |r| Ok(schema::record(r, false)))?;
            let read: Vec<Result<Record, JournalError>> = rows.collect::<rusqlite::Result<_>>()?;
            Ok(read.into_iter().collect())
        })
    }

    fn get<'a>(
        &'a self,
        token: &'a str,
        with_body: bool,
    ) -> BoxFuture<'a, Result<Option<Record>, JournalError>> {
        let token = token.to_string();
        self.run_read(move |c| select_one(c, &token, with_body).map(Option::transpose))
    }

    fn pin_refusal<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, JournalError>> {
        self.said(
            "SELECT said FROM hsm_bridge_pin_refusals WHERE token = ?1",
            token,
        )
    }

    fn set_pin_refusal<'a>(
        &'a self,
        token: &'a str,
        said: &'a str,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        let (token, said) = (token.to_string(), said.to_string());
        self.run(move |c| {
            c.execute(
                "INSERT INTO hsm_bridge_pin_refusals (token, said, at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (token) DO UPDATE SET said = ?2, at = ?3",
                params![token, said, now_ms()],
            )
            .map(|_| ())
        })
    }

    fn clear_pin_refusal<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, JournalError>> {
        self.said(
            "DELETE FROM hsm_bridge_pin_refusals WHERE token = ?1 RETURNING said",
            token,
        )
    }

    fn purge(&self, age: Duration) -> BoxFuture<'_, Result<u64, JournalError>> {
        self.run(move |c| {
            let now = now_ms();
            let n = c.execute(
                "DELETE FROM hsm_bridge_imports WHERE created_at < ?1 AND (lease_owner IS NULL OR lease_until < ?2)",
                params![now - age.as_millis() as i64, now],
            )?;
            Ok(n as u64)
        })
    }
}

/// The `finish` statement for `outcome` and its values after the token: state, created id,
/// answer, opc-request-id, failure status, code, message (then the MAC and the time). An accepted
/// answer replaces anything; a failure or an unknown one never an accepted one.
#[allow(clippy::type_complexity)]
pub(super) fn finish_values(
    outcome: &Outcome,
) -> (
    &'static str,
    (
        &'static str,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<String>,
        Option<String>,
    ),
) {
    const ANY: &str = "UPDATE hsm_bridge_imports SET state = ?2, created_id = ?3, answer = ?4, opc_request_id = ?5,
             failure_status = ?6, failure_code = ?7, failure_message = ?8, lease_owner = NULL, lease_until = 0, mac = ?9, updated_at = ?10
         WHERE token = ?1";
    const UNLESS_ACCEPTED: &str = "UPDATE hsm_bridge_imports SET state = ?2, created_id = ?3, answer = ?4, opc_request_id = ?5,
             failure_status = ?6, failure_code = ?7, failure_message = ?8, lease_owner = NULL, lease_until = 0, mac = ?9, updated_at = ?10
         WHERE token = ?1 AND state <> 'accepted'";
    match outcome {
        Outcome::Accepted {
            created_id,
            answer,
            opc_request_id,
        } => (
            ANY,
            (
                "accepted",
                Some(created_id.clone()),
                Some(answer.clone()),
                Some(opc_request_id.clone()),
                None,
                None,
                None,
            ),
        ),
        Outcome::Failed {
            failure,
            opc_request_id,
        } => (
            UNLESS_ACCEPTED,
            (
                "failed",
                None,
                None,
                Some(opc_request_id.clone()),
                Some(failure.status as i64),
                Some(failure.code.clone()),
                Some(failure.message.clone()),
            ),
        ),
        Outcome::Unknown { opc_request_id } => (
            UNLESS_ACCEPTED,
            (
                "unknown",
                None,
                None,
                opc_request_id.clone(),
                None,
                None,
                None,
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::schema::Step;

    const ONE: Migration = Migration {
        version: 1,
        steps: &[Step::Sql(
            "CREATE TABLE hsm_bridge_schema_version (version {integer} PRIMARY KEY);
             CREATE TABLE a (x {integer});",
        )],
    };
    const TWO: Migration = Migration {
        version: 2,
        steps: &[
            Step::Sql("INSERT INTO a VALUES (2)"),
            Step::AddColumn {
                table: "a",
                column: "y",
                ty: "{bytes}",
            },
            Step::AddColumn {
                table: "a",
                column: "y",
                ty: "{bytes}",
            },
        ],
    };
    const BROKEN: Migration = Migration {
        version: 3,
        steps: &[
            Step::Sql("INSERT INTO a (x) VALUES (3)"),
            Step::Sql("no such statement"),
        ],
    };

    /// The first column of the one row `sql` gives, as text.
    fn one(c: &Connection, sql: &str) -> String {
        c.query_row(sql, [], |r| r.get::<_, i64>(0))
            .unwrap()
            .to_string()
    }

    #[test]
    fn migrations_apply_in_order_each_in_a_transaction_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sqlite");
        let c = Connection::open(&path).unwrap();
        let e = migrate(&c, &path, &[ONE, TWO, BROKEN]).unwrap_err();
        assert!(e.to_string().contains("no such statement"), "{e}");
        // the first two are recorded; the broken one left nothing behind
        let version = "SELECT max(version) FROM hsm_bridge_schema_version";
        assert_eq!(one(&c, version), "2");
        assert_eq!(
            one(&c, "SELECT count(*) FROM hsm_bridge_schema_version"),
            "2"
        );
        assert_eq!(one(&c, "SELECT sum(x) FROM a"), "2");
        assert_eq!(
            one(
                &c,
                "SELECT count(*) FROM pragma_table_info('a') WHERE name = 'y'"
            ),
            "1"
        );
        // up to date: nothing runs again
        migrate(&c, &path, &[ONE, TWO]).unwrap();
        assert_eq!(one(&c, "SELECT count(*) FROM a"), "1");
        // code that knows only version 1 refuses it, and changes nothing
        let e = migrate(&c, &path, &[ONE]).unwrap_err().to_string();
        assert!(
            e.contains("schema version 2") && e.contains("version 1, the newest"),
            "{e}"
        );
        assert_eq!(one(&c, version), "2");
        assert!(c.is_autocommit(), "no transaction left open");
    }

    #[test]
    fn a_new_file_is_made_at_the_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        let c = open(&path).unwrap();
        assert_eq!(
            one(&c, "SELECT max(version) FROM hsm_bridge_schema_version"),
            schema::VERSION.to_string()
        );
        drop(c);
        let c = open(&path).unwrap();
        assert_eq!(
            one(&c, "SELECT count(*) FROM hsm_bridge_schema_version"),
            "1"
        );
    }
}
