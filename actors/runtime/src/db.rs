//! The database behind effectively-once handling: SQLite on a laptop, PostgreSQL in
//! production, one code path for both.
//!
//! Everything goes through sqlx's `Any` driver with portable SQL (TEXT, BIGINT, BYTEA, `$n`
//! parameters, `ON CONFLICT`, `RETURNING`). [`Database::connect`] runs the framework's own
//! migrations (the inbox and the outbox, recorded in `_jetflow_migrations`);
//! an application runs its own with [`Database::migrate`]. SQLite allows one writer at a
//! time, so its write transactions start with `BEGIN IMMEDIATE`: they queue for the write lock
//! (busy timeout) instead of failing half-way when two writers meet. TLS to PostgreSQL comes
//! from the URL (`sslmode`, `sslrootcert`), through rustls.

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use std::sync::Arc;

use sqlx::{Any, AnyConnection, AnyPool, Transaction};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::health::Health;
use crate::metrics::metrics;

/// The readiness component the database reports as.
pub const HEALTH_COMPONENT: &str = "database";

/// Where the framework records its own migrations (applications keep `_sqlx_migrations`).
pub const MIGRATIONS_TABLE: &str = "_jetflow_migrations";

/// Which engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite (a file, or memory).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL is not `sqlite:` or `postgres:`.
    #[error("DATABASE_URL {0:?} is neither sqlite:// nor postgres://")]
    UnsupportedUrl(String),
    /// The settings contradict each other.
    #[error("{0}")]
    Invalid(String),
    /// The SQLite file's directory could not be created.
    #[error("cannot create the directory of {path}: {source}")]
    CreateDir {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Connecting failed.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL, password hidden.
        url: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("database migration failed: {0}{hint}", hint = migrate_hint(.0))]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
}

fn migrate_hint(e: &sqlx::migrate::MigrateError) -> &'static str {
    match e {
        sqlx::migrate::MigrateError::VersionMismatch(_)
        | sqlx::migrate::MigrateError::VersionMissing(_) => {
            " (the database was made by another jetflow version: point DATABASE_URL at a fresh database, or remove ./data for the laptop default)"
        }
        _ => "",
    }
}

/// How to reach the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbConfig {
    /// `sqlite://path`, `sqlite::memory:` or `postgres://user@host/db?sslmode=...`.
    pub url: String,
    /// Most connections in the pool (default: 8 for SQLite, 16 for PostgreSQL; an in-memory
    /// SQLite database always has exactly one, since every connection would get its own).
    pub max_connections: Option<u32>,
    /// How long a query waits for a free connection.
    pub acquire_timeout: Duration,
}

impl DbConfig {
    /// The defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: None,
            acquire_timeout: Duration::from_secs(5),
        }
    }

    /// The engine the URL names.
    pub fn backend(&self) -> Result<Backend, DbError> {
        backend_of(&self.url)
    }

    /// Checks the settings without connecting.
    pub fn validate(&self) -> Result<(), DbError> {
        let backend = self.backend()?;
        if self.max_connections == Some(0) {
            return Err(DbError::Invalid(
                "the database pool needs at least one connection".into(),
            ));
        }
        if backend == Backend::Sqlite
            && is_sqlite_memory(&self.url)
            && self.max_connections.is_some_and(|n| n > 1)
        {
            return Err(DbError::Invalid(
                "an in-memory SQLite database can have only one connection (each connection would open its own empty database); drop the pool size or use a file".into(),
            ));
        }
        if self.acquire_timeout.is_zero() {
            return Err(DbError::Invalid(
                "the database acquire timeout must be positive".into(),
            ));
        }
        Ok(())
    }
}

fn backend_of(url: &str) -> Result<Backend, DbError> {
    if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Backend::Postgres)
    } else {
        Err(DbError::UnsupportedUrl(redact_url(url)))
    }
}

/// Whether a SQLite URL names an in-memory database.
pub fn is_sqlite_memory(url: &str) -> bool {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    path == ":memory:" || path.is_empty() || query.split('&').any(|kv| kv == "mode=memory")
}

/// A pool and the engine behind it.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
    url: String,
    /// SQLite has one writer at a time: write transactions of this process queue here, in
    /// the order they asked, instead of polling the file's lock.
    writer: Option<Arc<Semaphore>>,
}

/// A write transaction (it derefs to the connection for queries). On SQLite it holds the
/// process's turn to write until it commits or is dropped.
#[derive(Debug)]
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    _turn: Option<OwnedSemaphorePermit>,
}

impl WriteTx {
    /// Abandons every change.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

/// Hides the password of a URL (`postgres://u:***@h/db`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// The framework's migrations (inbox and outbox).
pub fn runtime_migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
}

impl Database {
    /// Connects (creating a SQLite file and its directory if needed) and runs the framework's
    /// migrations.
    pub async fn connect(config: &DbConfig) -> Result<Self, DbError> {
        config.validate()?;
        sqlx::any::install_default_drivers();
        let backend = config.backend()?;
        let memory = backend == Backend::Sqlite && is_sqlite_memory(&config.url);
        let url = match backend {
            Backend::Sqlite => prepare_sqlite_url(&config.url)?,
            Backend::Postgres => config.url.clone(),
        };
        let redacted = redact_url(&url);
        let options: AnyConnectOptions = url
            .parse()
            .map_err(|e| DbError::Invalid(format!("{redacted} cannot be used: {e}")))?;
        let max = match (backend, memory) {
            (Backend::Sqlite, true) => 1,
            (Backend::Sqlite, false) => config.max_connections.unwrap_or(8),
            (Backend::Postgres, _) => config.max_connections.unwrap_or(16),
        };
        // No ping before each use (a round trip per transaction): a broken connection fails
        // its statement, the transaction is retried, and the pool replaces the connection.
        let mut pool_options = AnyPoolOptions::new()
            .acquire_timeout(config.acquire_timeout)
            .test_before_acquire(false)
            .max_connections(max);
        if memory {
            // The database lives as long as its one connection: never let it go.
            pool_options = pool_options
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = pool_options
            .connect_with(options)
            .await
            .map_err(|source| DbError::Connect {
                url: redacted.clone(),
                source,
            })?;
        if backend == Backend::Sqlite && !memory {
            // WAL lets readers run beside the writer; it is a property of the file.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        let db = Self {
            pool,
            backend,
            url: redacted,
            writer: (backend == Backend::Sqlite).then(|| Arc::new(Semaphore::new(1))),
        };
        db.migrate(&runtime_migrator()).await?;
        tracing::info!(url = %db.url, max_connections = max, "database ready");
        Ok(db)
    }

    /// Connects to `url` with the default settings.
    pub async fn connect_url(url: &str) -> Result<Self, DbError> {
        Self::connect(&DbConfig::new(url)).await
    }

    /// Runs an application's migrations (each migrator keeps its own table, so the
    /// framework's and the application's never collide).
    pub async fn migrate(&self, migrator: &Migrator) -> Result<(), DbError> {
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// The pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The engine.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL with its password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Starts a write transaction (on SQLite, once it is this caller's turn to write).
    pub async fn begin(&self) -> Result<WriteTx, sqlx::Error> {
        let turn = match &self.writer {
            Some(writer) => Some(
                Arc::clone(writer)
                    .acquire_owned()
                    .await
                    .map_err(|_| sqlx::Error::PoolClosed)?,
            ),
            None => None,
        };
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(WriteTx { tx, _turn: turn })
    }

    /// Commits a write transaction and counts it in `jetflow_db_commits_total`.
    pub async fn commit(tx: WriteTx) -> Result<(), sqlx::Error> {
        tx.tx.commit().await?;
        metrics().db_commits.inc();
        Ok(())
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// Pings every `every` and reports the result as the `database` readiness component,
    /// until `stop` is cancelled.
    pub fn spawn_health_probe(
        &self,
        health: Health,
        every: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let db = self.clone();
        tokio::spawn(async move {
            loop {
                match tokio::time::timeout(Duration::from_secs(3), db.ping()).await {
                    Ok(Ok(())) => health.set_ready(HEALTH_COMPONENT, db.url.clone()),
                    Ok(Err(e)) => health.set_not_ready(HEALTH_COMPONENT, e.to_string()),
                    Err(_) => health.set_not_ready(HEALTH_COMPONENT, "no answer within 3s"),
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
    }

    /// Closes every connection (waits for the ones in use).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Makes sure a SQLite URL creates its file, and that the file's directory exists.
fn prepare_sqlite_url(url: &str) -> Result<String, DbError> {
    if is_sqlite_memory(url) {
        return Ok(url.to_string());
    }
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path != ":memory:"
        && !path.is_empty()
        && let Some(dir) = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|source| DbError::CreateDir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let query = match query {
        Some(q) if q.contains("mode=") => q.to_string(),
        Some(q) => format!("{q}&mode=rwc"),
        None => "mode=rwc".to_string(),
    };
    Ok(format!("sqlite://{path}?{query}"))
}

/// Whether the database refused `e` because of another transaction (a deadlock, a
/// serialization failure, a lock it could not wait for), so the same work can simply be
/// tried again.
pub fn is_conflict(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    matches!(
        db.code().as_deref(),
        // PostgreSQL: serialization_failure, deadlock_detected, lock_not_available.
        Some("40001" | "40P01" | "55P03")
        // SQLite: SQLITE_BUSY, SQLITE_LOCKED and their extended codes.
            | Some("5" | "6" | "261" | "262" | "517" | "773")
    )
}

/// The error for a write that finds the database changed by another transaction since this
/// one read it (a row it read as absent was written meanwhile, say): a conflict
/// ([`is_conflict`], SQLSTATE `40001`), so the runtime applies the batch again at once, and
/// the new attempt reads what the other transaction committed.
///
/// ```
/// let e = jetflow_runtime::db::lost_race("a row read as absent was written meanwhile");
/// assert!(jetflow_runtime::db::is_conflict(&e));
/// assert!(!jetflow_runtime::db::is_connection(&e));
/// ```
pub fn lost_race(what: impl Into<String>) -> sqlx::Error {
    sqlx::Error::Database(Box::new(LostRace(what.into())))
}

/// See [`lost_race`].
#[derive(Debug, thiserror::Error)]
#[error("lost a race with another transaction: {0}")]
struct LostRace(String);

impl sqlx::error::DatabaseError for LostRace {
    fn message(&self) -> &str {
        &self.0
    }

    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(std::borrow::Cow::Borrowed("40001"))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        sqlx::error::ErrorKind::Other
    }
}

/// Whether `e` is the connection's failure (the database unreachable, the pool exhausted or
/// closed), as opposed to the database refusing, or the code misreading, what was sent: the
/// same work may succeed once the connection is back.
pub fn is_connection(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Configuration(_)
    )
}

/// Milliseconds since the Unix epoch, the time format of every table.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A duration in milliseconds, as stored.
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Keys per statement of [`fetch_in`] and [`execute_in`]: far below the parameter limits of
/// both engines.
const IN_CHUNK: usize = 500;

/// A statement for the `Any` driver.
type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// The statements of a query over a list of keys, one per 500 keys, with the keys bound.
fn in_statements<'q>(keys: &[&'q str], sql: impl Fn(&str) -> String) -> Vec<AnyQuery<'q>> {
    keys.chunks(IN_CHUNK)
        .map(|chunk| {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql(&placeholders(1, chunk.len()))));
            for key in chunk {
                q = q.bind(*key);
            }
            q
        })
        .collect()
}

/// The rows of a query over a list of keys, one statement per 500 keys: `sql` is given the
/// placeholders of one chunk (`$1, $2, …`, for an `IN (…)` list) and returns the statement,
/// which runs with that chunk's keys bound in order. Only the generated placeholders reach the
/// SQL text, never a key.
///
/// ```no_run
/// # async fn f(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
/// use sqlx::Row;
/// let rows = jetflow_runtime::db::fetch_in(conn, &["a", "b"], |list| {
///     format!("SELECT id, level FROM readings WHERE id IN ({list})")
/// })
/// .await?;
/// let ids: Vec<String> = rows.iter().map(|r| r.try_get("id")).collect::<Result<_, _>>()?;
/// # Ok(()) }
/// ```
pub async fn fetch_in(
    conn: &mut sqlx::AnyConnection,
    keys: &[&str],
    sql: impl Fn(&str) -> String,
) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
    let mut rows = Vec::with_capacity(keys.len());
    for q in in_statements(keys, sql) {
        rows.extend(q.fetch_all(&mut *conn).await?);
    }
    Ok(rows)
}

/// Runs a statement over a list of keys as [`fetch_in`] does (an `UPDATE` or `DELETE …
/// WHERE key IN ({list})`), and returns how many rows it affected.
///
/// ```no_run
/// # async fn f(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
/// let gone = jetflow_runtime::db::execute_in(conn, &["a", "b"], |list| {
///     format!("DELETE FROM readings WHERE id IN ({list})")
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn execute_in(
    conn: &mut sqlx::AnyConnection,
    keys: &[&str],
    sql: impl Fn(&str) -> String,
) -> Result<u64, sqlx::Error> {
    let mut affected = 0;
    for q in in_statements(keys, sql) {
        affected += q.execute(&mut *conn).await?.rows_affected();
    }
    Ok(affected)
}

/// `" FOR UPDATE"` on PostgreSQL, nothing on SQLite (whose write transaction holds the whole
/// database): the end of a read that locks the rows it returns until the transaction ends.
pub fn for_update(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => " FOR UPDATE",
        Backend::Sqlite => "",
    }
}

/// Reads `columns` of the rows of `table` whose `key` is one of `keys`, in key order, locked
/// until the transaction ends on PostgreSQL ([`for_update`]): what a batch reads once, before
/// deciding in memory, so two batches touching the same rows wait for each other in the same
/// order instead of deadlocking. One statement per 500 keys ([`fetch_in`]). `table`, `key` and
/// `columns` are SQL written by the caller, never input.
///
/// ```no_run
/// # async fn f(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
/// use jetflow_runtime::db::{self, Backend};
/// let rows = db::fetch_locked(conn, Backend::Postgres, "readings", "id", &["id", "level"], &["a"])
///     .await?;
/// # Ok(()) }
/// ```
pub async fn fetch_locked(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    table: &str,
    key: &str,
    columns: &[&str],
    keys: &[&str],
) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
    let (columns, lock) = (columns.join(", "), for_update(backend));
    fetch_in(conn, keys, |list| {
        format!("SELECT {columns} FROM {table} WHERE {key} IN ({list}) ORDER BY {key}{lock}")
    })
    .await
}

/// A value bound to a statement that [`insert_rows`], [`insert_absent`] or
/// [`update_from_values`] generates.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// Text, or NULL.
    Text(Option<String>),
    /// A 64-bit integer, or NULL.
    Int(Option<i64>),
    /// Bytes (a `BYTEA` column; a `BLOB` on SQLite).
    Bytes(Vec<u8>),
}

impl From<&str> for Param {
    fn from(v: &str) -> Self {
        Param::Text(Some(v.to_string()))
    }
}

impl From<String> for Param {
    fn from(v: String) -> Self {
        Param::Text(Some(v))
    }
}

impl From<Option<&str>> for Param {
    fn from(v: Option<&str>) -> Self {
        Param::Text(v.map(str::to_string))
    }
}

impl From<Option<String>> for Param {
    fn from(v: Option<String>) -> Self {
        Param::Text(v)
    }
}

impl From<i64> for Param {
    fn from(v: i64) -> Self {
        Param::Int(Some(v))
    }
}

impl From<Option<i64>> for Param {
    fn from(v: Option<i64>) -> Self {
        Param::Int(v)
    }
}

impl From<Vec<u8>> for Param {
    fn from(v: Vec<u8>) -> Self {
        Param::Bytes(v)
    }
}

/// Most parameters in one generated statement: below SQLite's 32,766 and PostgreSQL's 65,535.
const MAX_PARAMS: usize = 30_000;

/// Rows per generated statement for rows of `width` values (500 at most).
fn rows_per_statement(width: usize) -> usize {
    (MAX_PARAMS / width.max(1)).clamp(1, 500)
}

fn bind_rows<'q>(mut q: AnyQuery<'q>, rows: &'q [Vec<Param>]) -> AnyQuery<'q> {
    for row in rows {
        for p in row {
            q = match p {
                Param::Text(v) => q.bind(v.as_deref()),
                Param::Int(v) => q.bind(*v),
                Param::Bytes(v) => q.bind(v.as_slice()),
            };
        }
    }
    q
}

/// The engine a connection talks to.
pub fn connection_backend(conn: &AnyConnection) -> Backend {
    if conn.backend_name() == <sqlx::Postgres as sqlx::Database>::NAME {
        Backend::Postgres
    } else {
        Backend::Sqlite
    }
}

/// A value as PostgreSQL's `json_to_recordset` reads it: bytes as hex, decoded by the
/// statement.
struct JsonValue<'a>(&'a Param);

impl serde::Serialize for JsonValue<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Param::Text(v) => v.serialize(s),
            Param::Int(v) => v.serialize(s),
            Param::Bytes(v) => s.serialize_str(&hex::encode(v)),
        }
    }
}

/// Rows as a JSON array of objects whose keys are the columns' positions (`c1`, `c2`, …):
/// `json_to_recordset` matches keys exactly, and positions do not depend on how the caller
/// spelled or quoted a column's name.
struct JsonRows<'a> {
    keys: &'a [String],
    rows: &'a [Vec<Param>],
}

impl serde::Serialize for JsonRows<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        struct Row<'a>(&'a [String], &'a [Param]);
        impl serde::Serialize for Row<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(Some(self.0.len()))?;
                for (key, value) in self.0.iter().zip(self.1) {
                    map.serialize_entry(key, &JsonValue(value))?;
                }
                map.end()
            }
        }
        let mut seq = s.serialize_seq(Some(self.rows.len()))?;
        for row in self.rows {
            seq.serialize_element(&Row(self.keys, row))?;
        }
        seq.end()
    }
}

/// Every row must give one value per column, of the kind the first row gives there (a NULL
/// is of its column's kind): the statements are built from the first row.
fn check_shape(columns: &[&str], rows: &[Vec<Param>]) -> Result<(), sqlx::Error> {
    let Some(first) = rows.first() else {
        return Ok(());
    };
    for (i, row) in rows.iter().enumerate() {
        if row.len() != columns.len() {
            return Err(sqlx::Error::Encode(
                format!(
                    "row {i} has {} values for the {} columns {columns:?}",
                    row.len(),
                    columns.len()
                )
                .into(),
            ));
        }
        let mismatch = row
            .iter()
            .zip(first)
            .zip(columns)
            .find(|((value, want), _)| {
                std::mem::discriminant(*value) != std::mem::discriminant(*want)
            });
        if let Some((_, column)) = mismatch {
            return Err(sqlx::Error::Encode(
                format!("row {i} gives column {column} another kind of value than row 0").into(),
            ));
        }
    }
    Ok(())
}

/// The statements inserting `rows` on PostgreSQL, as [`row_statements`] describes, except
/// that the rows travel as one JSON array: `rows` is `SELECT … FROM json_to_recordset($1::json)
/// AS given(c1 …, c2 …)`, the column types taken from the first row's values. The text is the
/// same however many rows there are (500 per statement, as on SQLite), so each connection
/// parses and plans it once instead of once per batch size. (Only for inserts: the planner expects 100 rows from the JSON, which can
/// make it scan a table to join a few rows with it.)
fn json_row_statements<'q>(
    columns: &[&str],
    rows: &[Vec<Param>],
    sql: impl Fn(&str, &str, &str) -> String,
) -> Result<Vec<(AnyQuery<'q>, usize)>, sqlx::Error> {
    let (Some(key), Some(first)) = (columns.first(), rows.first()) else {
        return Ok(Vec::new());
    };
    let keys: Vec<String> = (1..=columns.len()).map(|i| format!("c{i}")).collect();
    let (picked, types): (Vec<String>, Vec<String>) = keys
        .iter()
        .zip(first)
        .map(|(at, value)| match value {
            Param::Text(_) => (at.clone(), format!("{at} text")),
            Param::Int(_) => (at.clone(), format!("{at} bigint")),
            Param::Bytes(_) => (format!("decode({at}, 'hex')"), format!("{at} text")),
        })
        .unzip();
    let source = format!(
        "SELECT {} FROM json_to_recordset($1::json) AS given({})",
        picked.join(", "),
        types.join(", ")
    );
    let text = sql(key, &columns.join(", "), &source);
    rows.chunks(rows_per_statement(columns.len()))
        .map(|chunk| {
            let json = serde_json::to_string(&JsonRows {
                keys: &keys,
                rows: chunk,
            })
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
            Ok((
                sqlx::query(sqlx::AssertSqlSafe(text.clone())).bind(json),
                chunk.len(),
            ))
        })
        .collect()
}

/// The statements inserting `rows`: JSON on PostgreSQL, `VALUES` lists on SQLite.
fn insert_statements<'q>(
    conn: &AnyConnection,
    columns: &[&str],
    rows: &'q [Vec<Param>],
    sql: impl Fn(&str, &str, &str) -> String,
) -> Result<Vec<(AnyQuery<'q>, usize)>, sqlx::Error> {
    check_shape(columns, rows)?;
    match connection_backend(conn) {
        Backend::Postgres => json_row_statements(columns, rows, sql),
        Backend::Sqlite => Ok(row_statements(columns, rows, sql)),
    }
}

/// The statements writing `rows` (one value per column of `columns`, the first column the
/// key), as few as the parameter limits allow: for each chunk, the text `sql(key, columns,
/// rows)` makes (`columns` joined, `rows` the chunk's `VALUES (…), (…)` of placeholders)
/// with the chunk's values bound, and how many rows the chunk holds. No key, no statement.
fn row_statements<'q>(
    columns: &[&str],
    rows: &'q [Vec<Param>],
    sql: impl Fn(&str, &str, &str) -> String,
) -> Vec<(AnyQuery<'q>, usize)> {
    let Some(key) = columns.first() else {
        return Vec::new();
    };
    let names = columns.join(", ");
    rows.chunks(rows_per_statement(columns.len()))
        .map(|chunk| {
            let values = format!("VALUES {}", values_list(chunk.len(), columns.len()));
            let text = sql(key, &names, &values);
            (
                bind_rows(sqlx::query(sqlx::AssertSqlSafe(text)), chunk),
                chunk.len(),
            )
        })
        .collect()
}

fn values_list(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|i| format!("({})", placeholders(i * width + 1, width)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Inserts `rows` (one value per column of `columns`) into `table` and returns what the
/// statements return: `INSERT INTO <table> (<columns>) <rows> <tail>`, `tail` being, say,
/// `ON CONFLICT (…) DO NOTHING RETURNING …`, or nothing; none without rows. On PostgreSQL the
/// rows travel as one JSON array (`json_to_recordset`), so the statement's text is the same
/// for any number of rows and each connection parses and plans it once; on SQLite as `VALUES`
/// lists, in as few statements as the parameter limits allow; on both, 500 rows at most per
/// statement. Every row gives one value per column, of the same kind of [`Param`] in a column
/// (a row that does not fails the write with [`sqlx::Error::Encode`]). What a
/// [`Deferred`](crate::Deferred) gathered from a whole batch is written this way, one round
/// trip per 500 rows. `table`, `columns` and `tail` are SQL written by the caller, never input.
///
/// ```no_run
/// # async fn f(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
/// use jetflow_runtime::db::{self, Param};
/// let rows: Vec<Vec<Param>> = vec![vec!["a".into(), 7.into()], vec!["b".into(), 9.into()]];
/// db::insert_rows(conn, "readings", &["id", "level"], &rows, "ON CONFLICT (id) DO NOTHING")
///     .await?;
/// # Ok(()) }
/// ```
pub async fn insert_rows(
    conn: &mut sqlx::AnyConnection,
    table: &str,
    columns: &[&str],
    rows: &[Vec<Param>],
    tail: &str,
) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
    let statements = insert_statements(conn, columns, rows, |_, columns, values| {
        format!("INSERT INTO {table} ({columns}) {values} {tail}")
    })?;
    let mut returned = Vec::new();
    for (q, _) in statements {
        returned.extend(q.fetch_all(&mut *conn).await?);
    }
    Ok(returned)
}

/// Inserts `rows` (one value per column of `columns`, the first column the table's key) into
/// `table` as [`insert_rows`] does, each row only if its key is free: the rows a transaction
/// decided to create after reading their keys as absent. A key taken meanwhile (by another
/// transaction that committed since) fails the write with [`lost_race`], so the runtime
/// applies the batch again and the new attempt reads that row. `table` and `columns` are SQL
/// written by the caller, never input.
pub async fn insert_absent(
    conn: &mut sqlx::AnyConnection,
    table: &str,
    columns: &[&str],
    rows: &[Vec<Param>],
) -> Result<(), sqlx::Error> {
    let statements = insert_statements(conn, columns, rows, |key, columns, values| {
        format!(
            "INSERT INTO {table} ({columns}) {values} \
             ON CONFLICT ({key}) DO NOTHING RETURNING {key}"
        )
    })?;
    for (q, written) in statements {
        let inserted = q.fetch_all(&mut *conn).await?.len();
        if inserted != written {
            return Err(lost_race(format!(
                "{} of {written} {table} rows were written by another transaction since they were read",
                written - inserted,
            )));
        }
    }
    Ok(())
}

/// Updates, in as few statements as the parameter limits allow, the rows of `table` that a
/// transaction read (and locked) and changed: `WITH moved (<columns>) AS (VALUES <rows>)
/// UPDATE <table> SET <set> FROM moved WHERE <table>.<key> = moved.<key>`, the first column
/// being the key and `set` written over `moved.<column>` and the table's own columns. Every
/// row must be there to update: a row that is not (it cannot vanish while locked) fails the
/// write with [`sqlx::Error::RowNotFound`], and the runtime applies the batch one delivery at a
/// time. `table`, `columns` and `set` are SQL written by the caller, never input.
pub async fn update_from_values(
    conn: &mut sqlx::AnyConnection,
    table: &str,
    columns: &[&str],
    set: &str,
    rows: &[Vec<Param>],
) -> Result<(), sqlx::Error> {
    check_shape(columns, rows)?;
    let statements = row_statements(columns, rows, |key, columns, values| {
        format!(
            "WITH moved ({columns}) AS ({values}) UPDATE {table} SET {set} FROM moved \
             WHERE {table}.{key} = moved.{key}"
        )
    });
    for (q, moved) in statements {
        let updated = q.execute(&mut *conn).await?.rows_affected();
        if updated != moved as u64 {
            tracing::error!(
                table,
                updated,
                moved,
                "rows a transaction read and changed were not all there to update"
            );
            return Err(sqlx::Error::RowNotFound);
        }
    }
    Ok(())
}

/// `$from, $from+1, …` for `n` values: placeholders for a generated `IN (…)` or `VALUES` list.
pub fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows created only where their key is free (a taken key is a conflict), and changed
    /// rows updated from a values list (a missing one is an error), on a real database.
    #[tokio::test]
    async fn absent_rows_are_inserted_and_moved_rows_updated_or_the_write_fails() {
        let db = Database::connect_url("sqlite::memory:").await.unwrap();
        sqlx::query("CREATE TABLE t (k TEXT PRIMARY KEY, n BIGINT, note TEXT)")
            .execute(db.pool())
            .await
            .unwrap();
        let mut conn = db.pool().acquire().await.unwrap();
        let row = |k: &str, n: i64, note: Option<&str>| vec![k.into(), n.into(), note.into()];
        let cols = ["k", "n", "note"];
        insert_absent(
            &mut conn,
            "t",
            &cols,
            &[row("a", 1, None), row("b", 2, Some("x"))],
        )
        .await
        .unwrap();
        let taken = insert_absent(
            &mut conn,
            "t",
            &cols,
            &[row("c", 3, None), row("a", 9, None)],
        )
        .await
        .unwrap_err();
        assert!(is_conflict(&taken), "{taken}");
        update_from_values(
            &mut conn,
            "t",
            &cols,
            "n = moved.n, note = COALESCE(moved.note, t.note)",
            &[row("a", 10, Some("y")), row("b", 20, None)],
        )
        .await
        .unwrap();
        let rows: Vec<(String, i64, Option<String>)> =
            sqlx::query_as("SELECT k, n, note FROM t ORDER BY k")
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        let expected = vec![
            ("a".to_string(), 10, Some("y".to_string())),
            ("b".to_string(), 20, Some("x".to_string())),
            ("c".to_string(), 3, None),
        ];
        assert_eq!(rows, expected);
        let missing =
            update_from_values(&mut conn, "t", &cols, "n = moved.n", &[row("z", 1, None)])
                .await
                .unwrap_err();
        assert!(matches!(missing, sqlx::Error::RowNotFound), "{missing}");
    }

    #[test]
    fn connection_failures_are_told_from_refusals() {
        assert!(is_connection(&sqlx::Error::PoolTimedOut));
        assert!(is_connection(&sqlx::Error::Io(std::io::Error::other(
            "reset"
        ))));
        assert!(!is_connection(&sqlx::Error::RowNotFound));
        assert!(!is_connection(&sqlx::Error::Decode("bad JSON".into())));
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/jetflow"),
            "postgres://app:***@db:5432/jetflow"
        );
        assert_eq!(redact_url("sqlite://./data/x.db"), "sqlite://./data/x.db");
        assert_eq!(
            redact_url("postgres://app@db/jetflow"),
            "postgres://app@db/jetflow"
        );
    }

    #[test]
    fn sqlite_urls_create_their_file() {
        assert_eq!(
            prepare_sqlite_url("sqlite::memory:").unwrap(),
            "sqlite::memory:"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/j.db");
        let url = prepare_sqlite_url(&format!("sqlite://{}", path.display())).unwrap();
        assert!(url.ends_with("j.db?mode=rwc"));
        assert!(path.parent().unwrap().exists());
    }

    #[test]
    fn an_in_memory_database_with_a_larger_pool_is_refused() {
        let mut c = DbConfig::new("sqlite::memory:");
        assert!(c.validate().is_ok());
        c.max_connections = Some(8);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("in-memory"), "{e}");
        assert!(is_sqlite_memory("sqlite://x.db?mode=memory&cache=shared"));
        assert!(!is_sqlite_memory("sqlite://./data/x.db"));
        assert!(DbConfig::new("mysql://x").validate().is_err());
    }

    #[tokio::test]
    async fn an_in_memory_database_keeps_its_tables_across_queries() {
        let db = Database::connect_url("sqlite::memory:").await.unwrap();
        for _ in 0..5 {
            // Every query sees the framework's tables: one connection, one database.
            sqlx::query("SELECT COUNT(*) FROM outbox")
                .execute(db.pool())
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn migrations_run_on_sqlite_and_bad_urls_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::connect_url(&format!("sqlite://{}/j.db", dir.path().display()))
            .await
            .unwrap();
        db.ping().await.unwrap();
        // Running them again changes nothing.
        db.migrate(&runtime_migrator()).await.unwrap();
        let err = Database::connect_url("mysql://x")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("neither sqlite"), "{err}");
    }
}
