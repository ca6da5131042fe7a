//! The database behind effectively-once handling: SQLite on a laptop, PostgreSQL in
//! production, one code path for both.
//!
//! Each engine is reached through its own sqlx driver. A handler's SQL is written once, in the
//! SQL both take (TEXT, BIGINT, BYTEA, `$n` parameters, `ON CONFLICT`, `RETURNING`), and runs
//! on either through [`query`] and a [`Conn`]; the statements over a batch's keys and rows
//! ([`fetch_locked`], [`insert_rows`], [`update_from_values`], …) are written for each engine:
//! on PostgreSQL a batch's keys and rows travel as arrays (`UNNEST($1::text[])`), so one
//! statement whose text never changes serves any batch; on SQLite as `IN` and `VALUES` lists.
//! [`Database::connect`] runs the framework's own
//! migrations (the inbox and the outbox, recorded in `_jetflow_migrations`);
//! an application runs its own with [`Database::migrate`]. SQLite allows one writer at a
//! time, so its write transactions start with `BEGIN IMMEDIATE`: they queue for the write lock
//! (busy timeout) instead of failing half-way when two writers meet. TLS to PostgreSQL comes
//! from the URL (`sslmode`, `sslrootcert`), through rustls.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::str::FromStr;
use std::sync::Arc;

use sqlx::migrate::Migrator;
use sqlx::pool::{PoolConnection, PoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use sqlx::{Postgres, Sqlite, Transaction};
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

/// A SQLite URL's path and query (`sqlite://data/j.db?mode=rwc` → `data/j.db`, `mode=rwc`).
fn sqlite_parts(url: &str) -> (&str, Option<&str>) {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    }
}

/// Whether a SQLite URL names an in-memory database.
pub fn is_sqlite_memory(url: &str) -> bool {
    let (path, query) = sqlite_parts(url);
    path == ":memory:"
        || path.is_empty()
        || query.is_some_and(|q| q.split('&').any(|kv| kv == "mode=memory"))
}

/// The file of a SQLite URL (`sqlite://data/j.db?mode=rwc` → `data/j.db`); `None` for an
/// in-memory database or another engine.
pub fn sqlite_file(url: &str) -> Option<PathBuf> {
    let sqlite = url.starts_with("sqlite:");
    (sqlite && !is_sqlite_memory(url)).then(|| PathBuf::from(sqlite_parts(url).0))
}

/// The connections to one database, of either engine.
#[derive(Debug, Clone)]
pub enum Pool {
    /// PostgreSQL's.
    Postgres(PgPool),
    /// SQLite's.
    Sqlite(SqlitePool),
}

impl Pool {
    /// Takes a connection, for reads outside a write transaction.
    pub async fn acquire(&self) -> Result<Pooled, sqlx::Error> {
        Ok(match self {
            Pool::Postgres(p) => Pooled::Postgres(p.acquire().await?),
            Pool::Sqlite(p) => Pooled::Sqlite(p.acquire().await?),
        })
    }

    /// The PostgreSQL pool, if that is the engine.
    pub fn postgres(&self) -> Option<&PgPool> {
        match self {
            Pool::Postgres(p) => Some(p),
            Pool::Sqlite(_) => None,
        }
    }

    /// The SQLite pool, if that is the engine.
    pub fn sqlite(&self) -> Option<&SqlitePool> {
        match self {
            Pool::Sqlite(p) => Some(p),
            Pool::Postgres(_) => None,
        }
    }
}

/// A connection taken from the pool (back to it when dropped), for reads outside a write
/// transaction.
#[derive(Debug)]
pub enum Pooled {
    /// A PostgreSQL connection.
    Postgres(PoolConnection<Postgres>),
    /// A SQLite connection.
    Sqlite(PoolConnection<Sqlite>),
}

impl Pooled {
    /// The connection, for [`query`] and the batch statements.
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Pooled::Postgres(c) => Conn::Postgres(c),
            Pooled::Sqlite(c) => Conn::Sqlite(c),
        }
    }
}

/// A pool and the engine behind it.
#[derive(Debug, Clone)]
pub struct Database {
    pool: Pool,
    backend: Backend,
    url: String,
    /// SQLite has one writer at a time: write transactions of this process queue here, in
    /// the order they asked, instead of polling the file's lock.
    writer: Option<Arc<Semaphore>>,
}

/// A write transaction ([`WriteTx::conn`] for its queries). On SQLite it holds the
/// process's turn to write until it commits or is dropped; dropped without a commit, it rolls
/// back.
#[derive(Debug)]
pub struct WriteTx {
    tx: Tx,
    _turn: Option<OwnedSemaphorePermit>,
}

#[derive(Debug)]
enum Tx {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>),
}

impl WriteTx {
    /// The transaction's connection.
    pub fn conn(&mut self) -> Conn<'_> {
        match &mut self.tx {
            Tx::Postgres(t) => Conn::Postgres(t),
            Tx::Sqlite(t) => Conn::Sqlite(t),
        }
    }

    /// Abandons every change.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self.tx {
            Tx::Postgres(t) => t.rollback().await,
            Tx::Sqlite(t) => t.rollback().await,
        }
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

/// The framework's migrations (inbox and outbox), both engines' and PostgreSQL's own steps.
fn runtime_migrations(backend: Backend) -> Result<Migrator, DbError> {
    let mut both = sqlx::migrate!("./migrations");
    both.dangerous_set_table_name(MIGRATIONS_TABLE);
    match backend {
        Backend::Postgres => merged(&both, &sqlx::migrate!("./migrations/postgres")),
        Backend::Sqlite => Ok(both),
    }
}

/// An application's migrations: the ones both engines run, and optionally steps only
/// PostgreSQL runs (a collation, an index type SQLite lacks), kept in a directory of their
/// own. Both sets are applied in the order of their versions and recorded in the first set's
/// table, so each version must be unique across the two.
///
/// ```
/// use jetflow_runtime::db::Migrations;
/// use sqlx::migrate::Migrator;
///
/// static BOTH: Migrator = sqlx::migrate!("./migrations");
/// static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");
/// static MIGRATIONS: Migrations = Migrations::new(&BOTH).postgres(&POSTGRES);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    both: &'static Migrator,
    postgres: Option<&'static Migrator>,
}

impl Migrations {
    /// Migrations that both engines run.
    pub const fn new(both: &'static Migrator) -> Self {
        Self {
            both,
            postgres: None,
        }
    }

    /// Adds steps that only PostgreSQL runs.
    pub const fn postgres(self, only: &'static Migrator) -> Self {
        Self {
            postgres: Some(only),
            ..self
        }
    }

    /// Runs what `db`'s engine runs.
    async fn run(&self, db: &Database) -> Result<(), DbError> {
        match (db.backend, self.postgres) {
            (Backend::Postgres, Some(only)) => db.run_migrations(&merged(self.both, only)?).await,
            _ => db.run_migrations(self.both).await,
        }
    }
}

impl From<&'static Migrator> for Migrations {
    fn from(both: &'static Migrator) -> Self {
        Self::new(both)
    }
}

/// `both` and `only` as one migrator, in version order, recorded where `both` records.
fn merged(both: &Migrator, only: &Migrator) -> Result<Migrator, DbError> {
    let mut all: Vec<_> = both.iter().chain(only.iter()).cloned().collect();
    all.sort_by_key(|m| (m.version, m.migration_type.is_down_migration()));
    // Two steps of one version (whatever their kind, save an up and its down) would both run
    // and the second be refused by the migrations table.
    if let Some(pair) = all.windows(2).find(|w| {
        w[0].version == w[1].version
            && w[0].migration_type.is_down_migration() == w[1].migration_type.is_down_migration()
    }) {
        return Err(DbError::Invalid(format!(
            "migration version {} is both in the migrations both engines run and in PostgreSQL's own",
            pair[0].version
        )));
    }
    let mut migrator = Migrator::with_migrations(all);
    migrator.dangerous_set_table_name(both.table_name.clone());
    migrator.ignore_missing = both.ignore_missing;
    migrator.locking = both.locking;
    migrator.no_tx = both.no_tx;
    migrator.create_schemas = both.create_schemas.clone();
    Ok(migrator)
}

impl Database {
    /// Connects (creating a SQLite file and its directory if needed) and runs the framework's
    /// migrations.
    pub async fn connect(config: &DbConfig) -> Result<Self, DbError> {
        config.validate()?;
        let backend = config.backend()?;
        let memory = backend == Backend::Sqlite && is_sqlite_memory(&config.url);
        let url = match backend {
            Backend::Sqlite => prepare_sqlite_url(&config.url)?,
            Backend::Postgres => config.url.clone(),
        };
        let redacted = redact_url(&url);
        let unusable = |e: sqlx::Error| DbError::Invalid(format!("{redacted} cannot be used: {e}"));
        let connect_failed = |source| DbError::Connect {
            url: redacted.clone(),
            source,
        };
        let max = match (backend, memory) {
            (Backend::Sqlite, true) => 1,
            (Backend::Sqlite, false) => config.max_connections.unwrap_or(8),
            (Backend::Postgres, _) => config.max_connections.unwrap_or(16),
        };
        let pool = match backend {
            Backend::Postgres => {
                let options = PgConnectOptions::from_str(&url).map_err(unusable)?;
                Pool::Postgres(
                    pool_options(config, max, memory)
                        .after_connect(|conn, _| Box::pin(plan_each_statement(conn)))
                        .connect_with(options)
                        .await
                        .map_err(connect_failed)?,
                )
            }
            Backend::Sqlite => {
                let options = SqliteConnectOptions::from_str(&url).map_err(unusable)?;
                let pool: SqlitePool = pool_options(config, max, memory)
                    .connect_with(options)
                    .await
                    .map_err(connect_failed)?;
                if !memory {
                    // WAL lets readers run beside the writer; it is a property of the file.
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&pool)
                        .await?;
                }
                Pool::Sqlite(pool)
            }
        };
        let db = Self {
            pool,
            backend,
            url: redacted,
            writer: (backend == Backend::Sqlite).then(|| Arc::new(Semaphore::new(1))),
        };
        db.run_migrations(&runtime_migrations(backend)?).await?;
        tracing::info!(url = %db.url, max_connections = max, "database ready");
        Ok(db)
    }

    /// Connects to `url` with the default settings.
    pub async fn connect_url(url: &str) -> Result<Self, DbError> {
        Self::connect(&DbConfig::new(url)).await
    }

    /// Runs an application's migrations (each migrator keeps its own table, so the
    /// framework's and the application's never collide), with PostgreSQL's own steps on
    /// PostgreSQL ([`Migrations`]).
    pub async fn migrate(&self, migrations: impl Into<Migrations>) -> Result<(), DbError> {
        migrations.into().run(self).await
    }

    async fn run_migrations(&self, migrator: &Migrator) -> Result<(), DbError> {
        match &self.pool {
            Pool::Postgres(p) => migrator.run(p).await?,
            Pool::Sqlite(p) => migrator.run(p).await?,
        }
        Ok(())
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Takes a connection from the pool, for reads outside a write transaction.
    pub async fn acquire(&self) -> Result<Pooled, sqlx::Error> {
        self.pool.acquire().await
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
        let tx = match &self.pool {
            Pool::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Pool::Postgres(p) => Tx::Postgres(p.begin().await?),
        };
        Ok(WriteTx { tx, _turn: turn })
    }

    /// Commits a write transaction and counts it in `jetflow_db_commits_total`.
    pub async fn commit(tx: WriteTx) -> Result<(), sqlx::Error> {
        match tx.tx {
            Tx::Postgres(t) => t.commit().await?,
            Tx::Sqlite(t) => t.commit().await?,
        }
        metrics().db_commits.inc();
        Ok(())
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        query("SELECT 1").execute(self).await.map(|_| ())
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
        match &self.pool {
            Pool::Postgres(p) => p.close().await,
            Pool::Sqlite(p) => p.close().await,
        }
    }
}

/// Has PostgreSQL plan every statement of `conn` for the values it is given: a batch's keys
/// and rows are arrays, and a plan made once for any array (PostgreSQL's generic plan, cached
/// after five executions) guesses their length and the table's size when it was made, so one
/// made while a table was small scans it ever after. Parsing is still done once per
/// connection. A server that does not know the setting (before PostgreSQL 12) or a pooler
/// that does not keep it plans as it always did: the statements are right either way.
async fn plan_each_statement(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    use sqlx::Executor as _;
    if let Err(e) = conn
        .execute("SET plan_cache_mode = force_custom_plan")
        .await
    {
        tracing::warn!(error = %e, "PostgreSQL keeps its generic plans (plan_cache_mode is not set)");
    }
    Ok(())
}

/// The pool's settings: no ping before each use (a round trip per transaction: a broken
/// connection fails its statement, the transaction is retried, and the pool replaces the
/// connection); an in-memory SQLite database lives as long as its one connection, which is
/// never let go.
fn pool_options<DB: sqlx::Database>(config: &DbConfig, max: u32, memory: bool) -> PoolOptions<DB> {
    let options = PoolOptions::<DB>::new()
        .acquire_timeout(config.acquire_timeout)
        .test_before_acquire(false)
        .max_connections(max);
    if memory {
        options
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    } else {
        options
    }
}

/// Makes sure a SQLite URL creates its file, and that the file's directory exists.
fn prepare_sqlite_url(url: &str) -> Result<String, DbError> {
    if is_sqlite_memory(url) {
        return Ok(url.to_string());
    }
    let (path, query) = sqlite_parts(url);
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

/// Rows a pruning statement deletes at most: each chunk is a write transaction of its own, so
/// a writer waits for one chunk at most, never for a whole day's rows (on SQLite a long delete
/// holds the only write lock, and writers beside it fail with `SQLITE_BUSY`).
pub const PRUNE_CHUNK: i64 = 1_000;

/// Deletes the rows of `table` whose `column` is below `before`, [`PRUNE_CHUNK`] rows at a
/// time, each chunk in a write transaction of its own (taking its turn with the other writers
/// of this process); `key` is the table's primary key (`a` or `a, b`). Returns how many rows
/// went. `table`, `key` and `column` are identifiers written in the code, never input.
pub async fn delete_older_than(
    db: &Database,
    table: &str,
    key: &str,
    column: &str,
    before: i64,
) -> Result<u64, sqlx::Error> {
    let sql = format!(
        "DELETE FROM {table} WHERE ({key}) IN \
         (SELECT {key} FROM {table} WHERE {column} < $1 LIMIT {PRUNE_CHUNK})"
    );
    let mut total = 0;
    loop {
        let mut tx = db.begin().await?;
        let n = query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(before)
            .execute(tx.conn())
            .await?
            .rows_affected();
        Database::commit(tx).await?;
        total += n;
        if n < PRUNE_CHUNK as u64 {
            return Ok(total);
        }
        // Let the writers that waited for this chunk go first.
        tokio::task::yield_now().await;
    }
}

/// A duration in milliseconds, as stored.
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

mod portable;
mod statements;

pub use portable::{Conn, Executed, Executor, Param, Query, Record, Row, Value, query};
pub use statements::{
    execute_in, fetch_in, fetch_locked, for_update, insert_absent, insert_rows, placeholders,
    update_from_values,
};

#[cfg(test)]
mod tests {
    use super::*;

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
            query("SELECT COUNT(*) FROM outbox")
                .execute(&db)
                .await
                .unwrap();
        }
    }

    #[test]
    fn postgres_steps_join_the_common_ones_in_version_order_and_where_they_are_recorded() {
        let pg = runtime_migrations(Backend::Postgres).unwrap();
        let sqlite = runtime_migrations(Backend::Sqlite).unwrap();
        assert_eq!(pg.table_name, MIGRATIONS_TABLE);
        assert!(pg.iter().count() > sqlite.iter().count());
        let versions: Vec<i64> = pg.iter().map(|m| m.version).collect();
        assert!(versions.is_sorted(), "{versions:?}");
        // The same version in both sets is refused, not run twice or skipped.
        let both = sqlx::migrate!("./migrations");
        let err = merged(&both, &both).unwrap_err().to_string();
        assert!(err.contains("both in the migrations"), "{err}");
    }

    #[test]
    fn a_sqlite_url_names_its_file() {
        assert_eq!(
            sqlite_file("sqlite://data/j.db?mode=rwc"),
            Some(PathBuf::from("data/j.db"))
        );
        assert_eq!(
            sqlite_file("sqlite:/tmp/x.db"),
            Some(PathBuf::from("/tmp/x.db"))
        );
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("sqlite://x.db?mode=memory"), None);
        assert_eq!(sqlite_file("postgres://u@h/db"), None);
    }

    #[tokio::test]
    async fn migrations_run_on_sqlite_and_bad_urls_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::connect_url(&format!("sqlite://{}/j.db", dir.path().display()))
            .await
            .unwrap();
        db.ping().await.unwrap();
        // Running them again changes nothing.
        db.run_migrations(&runtime_migrations(Backend::Sqlite).unwrap())
            .await
            .unwrap();
        let err = Database::connect_url("mysql://x")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("neither sqlite"), "{err}");
    }
}
