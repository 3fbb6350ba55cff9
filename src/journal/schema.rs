//! The journal's schema, one for SQLite and PostgreSQL: the tables and their migrations,
//! the columns a record is read from, and the one decoder that makes a [`Record`] of a row.
//! The backends (`sqlite.rs`, `postgres.rs`) only connect, run statements and hand over
//! rows through [`Row`].
//!
//! A database records the migrations it has had in `hsm_bridge_schema_version` (one row
//! per migration). One without that table is at version 0: empty, or made by hsm-bridge
//! before the schema had versions (with or without the `mac` column and the table of
//! refused PINs, which were added to it later). Each migration runs in a transaction of
//! its own, which also records its version, under a lock that holds back any other process
//! migrating the same database. A database at a version newer than this code's is refused
//! and left as it is.

use std::sync::{Arc, LazyLock};

use zeroize::Zeroizing;

use super::{Failure, JournalError, Made, Record, State};

/// The schema version this code makes and reads.
pub const VERSION: i64 = 1;

/// The table that records the migrations a database has had.
pub(crate) const VERSION_TABLE: &str = "hsm_bridge_schema_version";

/// Serialises migrations among PostgreSQL clients that start together (an advisory lock).
const PG_LOCK: i64 = 0x6873_6d62_7264_676a;

/// The SQL of one database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The type of a byte-string column.
    fn bytes(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BLOB",
            Dialect::Postgres => "BYTEA",
        }
    }

    /// The type of an integer column (SQLite's integers are 64 bits).
    fn integer(self) -> &'static str {
        match self {
            Dialect::Sqlite => "INTEGER",
            Dialect::Postgres => "BIGINT",
        }
    }

    /// Opens a migration's transaction, holding the database's write lock (SQLite) or the
    /// migrations' advisory lock (PostgreSQL) until it ends.
    fn begin(self) -> String {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE".into(),
            Dialect::Postgres => format!("BEGIN; SELECT pg_advisory_xact_lock({PG_LOCK})"),
        }
    }

    /// A query of 1 if `table` exists, else 0.
    fn has_table(self, table: &str) -> String {
        match self {
            Dialect::Sqlite => format!(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{table}'"
            ),
            Dialect::Postgres => format!(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = '{table}'"
            ),
        }
    }

    /// A query of 1 if `table` has `column`, else 0.
    fn has_column(self, table: &str, column: &str) -> String {
        match self {
            Dialect::Sqlite => {
                format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name = '{column}'")
            }
            Dialect::Postgres => format!(
                "SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = '{table}' AND column_name = '{column}'"
            ),
        }
    }

    /// `sql` with `{bytes}` and `{integer}` in this dialect's types.
    fn types(self, sql: &str) -> String {
        sql.replace("{bytes}", self.bytes())
            .replace("{integer}", self.integer())
    }
}

/// One step of a migration.
#[derive(Debug)]
pub(crate) enum Step {
    /// Statements, with `{bytes}` and `{integer}` for the dialect's types.
    Sql(&'static str),
    /// Adds a column (with `{bytes}` or `{integer}` in its type) unless the table has it.
    AddColumn {
        table: &'static str,
        column: &'static str,
        ty: &'static str,
    },
}

/// The steps that bring a database from the version before to `version`.
#[derive(Debug)]
pub(crate) struct Migration {
    pub(crate) version: i64,
    pub(crate) steps: &'static [Step],
}

/// Every migration, oldest first; the last one's version is [`VERSION`].
pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    steps: &[
        // The tables as hsm-bridge made them before the schema had versions: created where
        // they are missing, kept where they are there.
        Step::Sql(
            "CREATE TABLE IF NOT EXISTS hsm_bridge_imports (
                token TEXT PRIMARY KEY,
                caller TEXT NOT NULL,
                idempotency_key TEXT,
                operation TEXT NOT NULL,
                target TEXT NOT NULL,
                endpoint TEXT NOT NULL,
                algorithm TEXT NOT NULL,
                request_digest {bytes} NOT NULL,
                state TEXT NOT NULL,
                body {bytes},
                source_key_label TEXT,
                source_key_id_hex TEXT,
                mode TEXT,
                wrapping_key_sha256 TEXT,
                created_id TEXT,
                answer TEXT,
                opc_request_id TEXT,
                failure_status {integer},
                failure_code TEXT,
                failure_message TEXT,
                lease_owner TEXT,
                lease_until {integer} NOT NULL DEFAULT 0,
                created_at {integer} NOT NULL,
                updated_at {integer} NOT NULL,
                mac {bytes}
            );
            CREATE INDEX IF NOT EXISTS hsm_bridge_imports_created ON hsm_bridge_imports (created_at);
            CREATE TABLE IF NOT EXISTS hsm_bridge_pin_refusals (
                token TEXT PRIMARY KEY,
                said TEXT NOT NULL,
                at {integer} NOT NULL
            );
            CREATE TABLE hsm_bridge_schema_version (version {integer} PRIMARY KEY);",
        ),
        // A journal made before records carried a MAC; its old records, without one, are
        // refused when used (and expire).
        Step::AddColumn {
            table: "hsm_bridge_imports",
            column: "mac",
            ty: "{bytes}",
        },
    ],
}];

/// A database as migrations see it: statements run inside the transaction the migration
/// opened. Each backend implements it on its connection.
pub(crate) trait Database {
    /// Which SQL it speaks.
    fn dialect(&self) -> Dialect;
    /// Runs `sql` (one or more statements, no parameters).
    async fn execute(&mut self, sql: &str) -> Result<(), JournalError>;
    /// The integer in the first column of the one row `sql` gives.
    async fn number(&mut self, sql: &str) -> Result<i64, JournalError>;
}

/// Brings `db` to [`VERSION`], one migration (and one transaction) at a time. A database
/// at a newer version is refused and left untouched.
pub(crate) async fn upgrade(db: &mut impl Database) -> Result<(), JournalError> {
    upgrade_with(db, MIGRATIONS).await
}

/// Brings `db` to the last of `migrations`.
pub(crate) async fn upgrade_with(
    db: &mut impl Database,
    migrations: &[Migration],
) -> Result<(), JournalError> {
    loop {
        db.execute(&db.dialect().begin()).await?;
        match apply_next(db, migrations).await {
            Ok(applied) => {
                db.execute("COMMIT").await?;
                if !applied {
                    return Ok(());
                }
            }
            Err(e) => {
                // The error says why; a failed rollback ends with the connection anyway.
                let _ = db.execute("ROLLBACK").await;
                return Err(e);
            }
        }
    }
}

/// Applies the first migration `db` has not had and records its version; false if it has
/// had them all.
async fn apply_next(
    db: &mut impl Database,
    migrations: &[Migration],
) -> Result<bool, JournalError> {
    let found = version(db).await?;
    let known = migrations.last().map_or(0, |m| m.version);
    if found > known {
        return Err(JournalError::Unavailable(format!(
            "the journal's database is at schema version {found}, newer than version {known}, the newest this hsm-bridge knows: a newer hsm-bridge upgraded it; it was left as it is (run that newer hsm-bridge, or point journal.url at another database)"
        )));
    }
    let Some(next) = migrations.iter().find(|m| m.version > found) else {
        return Ok(false);
    };
    for step in next.steps {
        run_step(db, step).await?;
    }
    db.execute(&format!(
        "INSERT INTO {VERSION_TABLE} (version) VALUES ({})",
        next.version
    ))
    .await?;
    Ok(true)
}

/// The version `db` is at: 0 without the version table.
pub(crate) async fn version(db: &mut impl Database) -> Result<i64, JournalError> {
    let dialect = db.dialect();
    if db.number(&dialect.has_table(VERSION_TABLE)).await? == 0 {
        return Ok(0);
    }
    db.number(&format!(
        "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM {VERSION_TABLE}"
    ))
    .await
}

/// Runs one step of a migration.
async fn run_step(db: &mut impl Database, step: &Step) -> Result<(), JournalError> {
    let dialect = db.dialect();
    match step {
        Step::Sql(sql) => db.execute(&dialect.types(sql)).await,
        Step::AddColumn { table, column, ty } => {
            if db.number(&dialect.has_column(table, column)).await? == 0 {
                let ty = dialect.types(ty);
                db.execute(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))
                    .await?;
            }
            Ok(())
        }
    }
}

/// A column a record is read from: its name, and what the SELECT lists for it.
struct Column {
    name: &'static str,
    select: &'static str,
}

/// A column selected by its own name.
const fn named(name: &'static str) -> Column {
    Column { name, select: name }
}

/// The columns of a record, in the order every SELECT of a record lists them.
const RECORD_COLUMNS: [Column; 25] = [
    named("token"),
    named("caller"),
    named("idempotency_key"),
    named("operation"),
    named("target"),
    named("endpoint"),
    named("algorithm"),
    named("request_digest"),
    named("state"),
    named("source_key_label"),
    named("source_key_id_hex"),
    named("mode"),
    named("wrapping_key_sha256"),
    named("created_id"),
    named("answer"),
    named("opc_request_id"),
    named("failure_status"),
    named("failure_code"),
    named("failure_message"),
    named("lease_owner"),
    named("lease_until"),
    named("created_at"),
    named("updated_at"),
    // the same on both: PostgreSQL's length() is a 32-bit integer
    Column {
        name: "body_bytes",
        select: "CAST(length(body) AS BIGINT)",
    },
    named("mac"),
];

/// The body, selected after [`RECORD_COLUMNS`] when a record is read with it.
const BODY: Column = named("body");

/// What a SELECT of a record lists: [`RECORD_COLUMNS`], and the body after them if asked.
pub(crate) fn columns(with_body: bool) -> &'static str {
    static WITHOUT: LazyLock<String> = LazyLock::new(|| select_list(false));
    static WITH: LazyLock<String> = LazyLock::new(|| select_list(true));
    if with_body { &WITH } else { &WITHOUT }
}

/// The select list of a record.
fn select_list(with_body: bool) -> String {
    let body = with_body.then_some(&BODY);
    let all: Vec<&str> = RECORD_COLUMNS
        .iter()
        .chain(body)
        .map(|c| c.select)
        .collect();
    all.join(", ")
}

/// A row a backend read, its values by position. A value of another type than asked is
/// an error that says so, never a panic.
pub(crate) trait Row {
    fn text(&self, i: usize) -> Result<Option<String>, String>;
    fn integer(&self, i: usize) -> Result<Option<i64>, String>;
    fn bytes(&self, i: usize) -> Result<Option<Vec<u8>>, String>;
}

/// Reads a row's columns by name, each error naming the column.
struct Reader<'r, R: Row + ?Sized> {
    row: &'r R,
}

impl<R: Row + ?Sized> Reader<'_, R> {
    /// Where the column `name` is in the select list.
    fn at(&self, name: &str) -> Result<usize, String> {
        if name == BODY.name {
            return Ok(RECORD_COLUMNS.len());
        }
        RECORD_COLUMNS
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| format!("the column {name} is not selected"))
    }

    fn cannot(name: &str) -> impl FnOnce(String) -> String {
        move |e| format!("its column {name} cannot be read ({e})")
    }

    fn text(&self, name: &str) -> Result<Option<String>, String> {
        self.row.text(self.at(name)?).map_err(Self::cannot(name))
    }

    fn integer(&self, name: &str) -> Result<Option<i64>, String> {
        self.row.integer(self.at(name)?).map_err(Self::cannot(name))
    }

    fn bytes(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        self.row.bytes(self.at(name)?).map_err(Self::cannot(name))
    }

    /// A column every record has a value in.
    fn required<T>(&self, name: &str, v: Result<Option<T>, String>) -> Result<T, String> {
        v?.ok_or_else(|| format!("its column {name} is NULL"))
    }

    fn text_required(&self, name: &str) -> Result<String, String> {
        self.required(name, self.text(name))
    }

    fn integer_required(&self, name: &str) -> Result<i64, String> {
        self.required(name, self.integer(name))
    }
}

/// A row selected with [`columns`] as a record, checked: a row this code could not have
/// written (a state it does not know, a NULL where every record has a value, a value of
/// the wrong type or out of range) is [`JournalError::Forged`] naming the column, on every
/// backend alike; it is never used, and never guessed at.
pub(crate) fn record(row: &(impl Row + ?Sized), with_body: bool) -> Result<Record, JournalError> {
    let r = Reader { row };
    read(&r, with_body).map_err(|why| JournalError::Forged {
        token: r
            .text("token")
            .ok()
            .flatten()
            .unwrap_or_else(|| "(unreadable)".into()),
        why,
    })
}

/// The record the row holds, or what is wrong with it.
fn read<R: Row + ?Sized>(r: &Reader<'_, R>, with_body: bool) -> Result<Record, String> {
    Ok(Record {
        token: r.text_required("token")?,
        caller: r.text_required("caller")?,
        idempotency_key: r.text("idempotency_key")?,
        operation: r.text_required("operation")?,
        target: r.text_required("target")?,
        endpoint: r.text_required("endpoint")?,
        algorithm: r.text_required("algorithm")?,
        digest: r.required("request_digest", r.bytes("request_digest"))?,
        state: state(&r.text_required("state")?)?,
        made: Made {
            source_key_label: r.text("source_key_label")?,
            source_key_id_hex: r.text("source_key_id_hex")?,
            mode: r.text("mode")?,
            wrapping_key_sha256: r.text("wrapping_key_sha256")?,
        },
        body_bytes: body_bytes(r.integer("body_bytes")?)?,
        body: match with_body {
            true => r.bytes(BODY.name)?.map(|b| Arc::new(Zeroizing::new(b))),
            false => None,
        },
        created_id: r.text("created_id")?,
        answer: r.text("answer")?,
        opc_request_id: r.text("opc_request_id")?,
        failure: failure(r)?,
        lease_owner: r.text("lease_owner")?,
        mac: r.bytes("mac")?,
        lease_until_ms: r.integer_required("lease_until")?,
        created_at_ms: r.integer_required("created_at")?,
        updated_at_ms: r.integer_required("updated_at")?,
    })
}

/// The state a `state` column holds.
fn state(s: &str) -> Result<State, String> {
    State::parse(s).ok_or_else(|| format!("its column state holds {s:?}, which is no state"))
}

/// The body's length, which a database never gives as negative.
fn body_bytes(n: Option<i64>) -> Result<Option<u64>, String> {
    n.map(|n| u64::try_from(n).map_err(|_| format!("its body has {n} bytes")))
        .transpose()
}

/// OCI's refusal, when the record has one: a status is recorded with its code and message.
fn failure<R: Row + ?Sized>(r: &Reader<'_, R>) -> Result<Option<Failure>, String> {
    let Some(status) = r.integer("failure_status")? else {
        return Ok(None);
    };
    Ok(Some(Failure {
        status: u16::try_from(status)
            .map_err(|_| format!("its column failure_status holds {status}, no HTTP status"))?,
        code: r.text_required("failure_code")?,
        message: r.text_required("failure_message")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of values by position, as a test writes it.
    struct Values(Vec<Value>);

    #[derive(Clone)]
    enum Value {
        Null,
        Text(&'static str),
        Integer(i64),
        Bytes(Vec<u8>),
    }

    impl Values {
        /// A failed record as a backend returns it, with its body.
        fn failed() -> Values {
            let mut v = vec![Value::Text("x"); RECORD_COLUMNS.len() + 1];
            let mut set = |name: &str, value: Value| {
                let i = RECORD_COLUMNS
                    .iter()
                    .chain([&BODY])
                    .position(|c| c.name == name)
                    .unwrap();
                v[i] = value;
            };
            set("idempotency_key", Value::Null);
            set("request_digest", Value::Bytes(vec![7; 32]));
            set("state", Value::Text("failed"));
            set("failure_status", Value::Integer(400));
            for n in ["lease_until", "created_at", "updated_at", "body_bytes"] {
                set(n, Value::Integer(4));
            }
            set("mac", Value::Bytes(vec![1; 32]));
            set("body", Value::Bytes(b"body".to_vec()));
            Values(v)
        }

        fn with(mut self, name: &str, value: Value) -> Values {
            let i = Reader { row: &self }.at(name).unwrap();
            self.0[i] = value;
            self
        }

        fn get(&self, i: usize) -> Result<&Value, String> {
            self.0.get(i).ok_or_else(|| format!("no column {i}"))
        }
    }

    impl Row for Values {
        fn text(&self, i: usize) -> Result<Option<String>, String> {
            match self.get(i)? {
                Value::Null => Ok(None),
                Value::Text(s) => Ok(Some(s.to_string())),
                _ => Err("not text".into()),
            }
        }
        fn integer(&self, i: usize) -> Result<Option<i64>, String> {
            match self.get(i)? {
                Value::Null => Ok(None),
                Value::Integer(n) => Ok(Some(*n)),
                _ => Err("not an integer".into()),
            }
        }
        fn bytes(&self, i: usize) -> Result<Option<Vec<u8>>, String> {
            match self.get(i)? {
                Value::Null => Ok(None),
                Value::Bytes(b) => Ok(Some(b.clone())),
                _ => Err("not bytes".into()),
            }
        }
    }

    /// Why `row` is refused.
    fn refused(row: &Values) -> String {
        match record(row, true) {
            Err(JournalError::Forged { token, why }) => {
                assert_eq!(token, "x");
                why
            }
            Err(e) => panic!("want a refused record, got {e}"),
            Ok(r) => panic!("want a refused record, got {r:?}"),
        }
    }

    #[test]
    fn a_row_reads_as_its_record() {
        let r = record(&Values::failed(), true).unwrap();
        assert_eq!(r.token, "x");
        assert_eq!(r.idempotency_key, None);
        assert_eq!(r.state, State::Failed);
        assert_eq!(r.digest, vec![7; 32]);
        let f = r.failure.unwrap();
        assert_eq!(
            (f.status, f.code.as_str(), f.message.as_str()),
            (400, "x", "x")
        );
        assert_eq!(r.body_bytes, Some(4));
        assert_eq!(r.body.as_deref().map(|b| b.as_slice()), Some(&b"body"[..]));
        assert_eq!(r.mac, Some(vec![1; 32]));
        assert!(record(&Values::failed(), false).unwrap().body.is_none());
        let no_failure = Values::failed().with("failure_status", Value::Null);
        assert!(record(&no_failure, false).unwrap().failure.is_none());
    }

    #[test]
    fn a_row_this_code_could_not_have_written_is_refused_naming_the_column() {
        let cases = [
            (
                "state",
                Value::Text("bogus"),
                "column state holds \"bogus\"",
            ),
            ("caller", Value::Null, "column caller is NULL"),
            (
                "request_digest",
                Value::Null,
                "column request_digest is NULL",
            ),
            ("created_at", Value::Null, "column created_at is NULL"),
            ("failure_code", Value::Null, "column failure_code is NULL"),
            (
                "failure_status",
                Value::Integer(70000),
                "failure_status holds 70000",
            ),
            ("body_bytes", Value::Integer(-1), "body has -1 bytes"),
            (
                "lease_until",
                Value::Text("soon"),
                "column lease_until cannot be read",
            ),
            ("mac", Value::Text("x"), "column mac cannot be read"),
            ("answer", Value::Integer(1), "column answer cannot be read"),
        ];
        for (column, value, says) in cases {
            let why = refused(&Values::failed().with(column, value));
            assert!(why.contains(says), "{column}: {why}");
        }
        let short = Values(Values::failed().0[..10].to_vec());
        assert!(refused(&short).contains("column source_key_id_hex"));
    }

    #[test]
    fn the_select_list_names_every_column_once() {
        let list = columns(false);
        assert_eq!(list.split(", ").count(), RECORD_COLUMNS.len());
        assert!(list.starts_with("token, caller,") && list.ends_with(", mac"));
        assert_eq!(columns(true), format!("{list}, body"));
        let mut names: Vec<&str> = RECORD_COLUMNS.iter().map(|c| c.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), RECORD_COLUMNS.len());
    }

    #[test]
    fn migrations_are_numbered_one_by_one_up_to_the_version() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(VERSION));
    }
}
