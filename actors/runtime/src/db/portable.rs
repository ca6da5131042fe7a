//! Statements that run on either engine with the same text: a connection of either kind
//! ([`Conn`]), values bound by kind ([`Param`]), and rows read by column name ([`Row`]).
//!
//! Each engine is reached through its own sqlx driver (not through sqlx's `any` driver), so the
//! framework's batch statements can use what PostgreSQL does best (arrays, see
//! [`insert_rows`](super::insert_rows)), while a handler's own SQL, written once with `$1`,
//! `$2`, … placeholders, runs unchanged on SQLite and PostgreSQL.

use sqlx::postgres::{PgArguments, PgConnection, PgRow};
use sqlx::sqlite::{SqliteArguments, SqliteConnection, SqliteRow};
use sqlx::{ColumnIndex, Decode, FromRow, Postgres, SqlSafeStr, SqlStr, Sqlite, Type};

use futures::future::BoxFuture;

use super::{Backend, Database, Pool};

/// A connection to either engine, for the length of a borrow: a write transaction's
/// ([`WriteTx::conn`](super::WriteTx::conn), [`UnitOfWork::conn`](crate::UnitOfWork::conn)) or
/// a pooled one's ([`Database::acquire`](super::Database::acquire)).
#[derive(Debug)]
pub enum Conn<'c> {
    /// A PostgreSQL connection.
    Postgres(&'c mut PgConnection),
    /// A SQLite connection.
    Sqlite(&'c mut SqliteConnection),
}

impl Conn<'_> {
    /// The engine behind the connection.
    pub fn backend(&self) -> Backend {
        match self {
            Conn::Postgres(_) => Backend::Postgres,
            Conn::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// The same connection, borrowed for less long.
    pub fn reborrow(&mut self) -> Conn<'_> {
        match self {
            Conn::Postgres(c) => Conn::Postgres(c),
            Conn::Sqlite(c) => Conn::Sqlite(c),
        }
    }
}

/// A value bound to a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// Text, or NULL.
    Text(Option<String>),
    /// A 64-bit integer, or NULL.
    Int(Option<i64>),
    /// A double, or NULL.
    Float(Option<f64>),
    /// Bytes (a `BYTEA` column; a `BLOB` on SQLite).
    Bytes(Vec<u8>),
}

impl From<&str> for Param {
    fn from(v: &str) -> Self {
        Param::Text(Some(v.to_string()))
    }
}

impl From<&String> for Param {
    fn from(v: &String) -> Self {
        Param::Text(Some(v.clone()))
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

impl From<f64> for Param {
    fn from(v: f64) -> Self {
        Param::Float(Some(v))
    }
}

impl From<Option<f64>> for Param {
    fn from(v: Option<f64>) -> Self {
        Param::Float(v)
    }
}

impl From<Vec<u8>> for Param {
    fn from(v: Vec<u8>) -> Self {
        Param::Bytes(v)
    }
}

impl From<&[u8]> for Param {
    fn from(v: &[u8]) -> Self {
        Param::Bytes(v.to_vec())
    }
}

/// A value a [`Row`] can be read as on both engines (text, integers, doubles, bytes, and
/// their `Option`s).
pub trait Value<'r>:
    Decode<'r, Postgres> + Type<Postgres> + Decode<'r, Sqlite> + Type<Sqlite>
{
}

impl<'r, T> Value<'r> for T where
    T: Decode<'r, Postgres> + Type<Postgres> + Decode<'r, Sqlite> + Type<Sqlite>
{
}

/// A type a whole [`Row`] can be read as on both engines ([`Row::decode`]): a tuple of
/// [`Value`]s, read by position, or a struct that derives `sqlx::FromRow`.
pub trait Record: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> {}

impl<T> Record for T where T: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> {}

/// A row a statement returned, from either engine.
#[derive(Debug)]
pub enum Row {
    /// From PostgreSQL.
    Postgres(PgRow),
    /// From SQLite.
    Sqlite(SqliteRow),
}

impl Row {
    /// The value of a column, by name (or position).
    pub fn try_get<'r, T, I>(&'r self, index: I) -> Result<T, sqlx::Error>
    where
        T: Value<'r>,
        I: ColumnIndex<PgRow> + ColumnIndex<SqliteRow>,
    {
        use sqlx::Row as _;
        match self {
            Row::Postgres(r) => r.try_get(index),
            Row::Sqlite(r) => r.try_get(index),
        }
    }

    /// The whole row as a [`Record`] (a tuple, say: `row.decode::<(String, i64)>()`).
    pub fn decode<T: Record>(&self) -> Result<T, sqlx::Error> {
        match self {
            Row::Postgres(r) => T::from_row(r),
            Row::Sqlite(r) => T::from_row(r),
        }
    }
}

/// What a statement that returns no rows did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Executed {
    rows_affected: u64,
}

impl Executed {
    /// How many rows it inserted, updated or deleted.
    pub fn rows_affected(&self) -> u64 {
        self.rows_affected
    }
}

/// A statement with its values, to run on either engine ([`query`]).
#[derive(Debug, Clone)]
#[must_use = "a statement does nothing until it is executed or fetched"]
pub struct Query {
    sql: SqlStr,
    params: Vec<Param>,
}

/// A statement to run on a [`Conn`] of either engine: SQL both engines take (`$1`, `$2`, …
/// for the values), then [`Query::bind`] for each value in order. A `&'static str` is taken
/// as it is; SQL built at run time must be wrapped in [`sqlx::AssertSqlSafe`], which says
/// that no input reached its text.
///
/// ```
/// # async fn f() -> Result<(), sqlx::Error> {
/// use jetflow_runtime::db::{Database, query};
/// let db = Database::connect_url("sqlite::memory:").await.map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
/// let mut tx = db.begin().await?;
/// query("CREATE TABLE readings (id TEXT PRIMARY KEY, level BIGINT)").execute(tx.conn()).await?;
/// query("INSERT INTO readings (id, level) VALUES ($1, $2)")
///     .bind("a")
///     .bind(7_i64)
///     .execute(tx.conn())
///     .await?;
/// Database::commit(tx).await?;
/// // Outside a transaction, the pool lends a connection for the statement.
/// let row = query("SELECT level FROM readings WHERE id = $1").bind("a").fetch_one(&db).await?;
/// assert_eq!(row.try_get::<i64, _>("level")?, 7);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(f()).unwrap();
/// ```
pub fn query(sql: impl SqlSafeStr) -> Query {
    Query {
        sql: sql.into_sql_str(),
        params: Vec::new(),
    }
}

type PgQuery = sqlx::query::Query<'static, Postgres, PgArguments>;
type SqliteQuery = sqlx::query::Query<'static, Sqlite, SqliteArguments>;

fn bind_pg(mut q: PgQuery, params: Vec<Param>) -> PgQuery {
    for p in params {
        q = match p {
            Param::Text(v) => q.bind(v),
            Param::Int(v) => q.bind(v),
            Param::Float(v) => q.bind(v),
            Param::Bytes(v) => q.bind(v),
        };
    }
    q
}

fn bind_sqlite(mut q: SqliteQuery, params: Vec<Param>) -> SqliteQuery {
    for p in params {
        q = match p {
            Param::Text(v) => q.bind(v),
            Param::Int(v) => q.bind(v),
            Param::Float(v) => q.bind(v),
            Param::Bytes(v) => q.bind(v),
        };
    }
    q
}

impl Query {
    /// Binds the next value (`$1` first).
    pub fn bind(mut self, value: impl Into<Param>) -> Self {
        self.params.push(value.into());
        self
    }

    /// Runs the statement; returns how many rows it changed.
    pub async fn execute<'e>(self, on: impl Executor<'e>) -> Result<Executed, sqlx::Error> {
        on.execute(self).await
    }

    /// Every row the statement returns.
    pub async fn fetch_all<'e>(self, on: impl Executor<'e>) -> Result<Vec<Row>, sqlx::Error> {
        on.fetch_all(self).await
    }

    /// The first row the statement returns, if any.
    pub async fn fetch_optional<'e>(
        self,
        on: impl Executor<'e>,
    ) -> Result<Option<Row>, sqlx::Error> {
        on.fetch_optional(self).await
    }

    /// The first row the statement returns ([`sqlx::Error::RowNotFound`] without one).
    pub async fn fetch_one<'e>(self, on: impl Executor<'e>) -> Result<Row, sqlx::Error> {
        on.fetch_optional(self)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// The first column of the first row ([`sqlx::Error::RowNotFound`] without one): a count,
    /// say.
    pub async fn fetch_scalar<'e, T>(self, on: impl Executor<'e>) -> Result<T, sqlx::Error>
    where
        T: for<'r> Value<'r>,
    {
        self.fetch_one(on).await?.try_get(0)
    }

    /// The first column of the first row, if there is a row.
    pub async fn fetch_optional_scalar<'e, T>(
        self,
        on: impl Executor<'e>,
    ) -> Result<Option<T>, sqlx::Error>
    where
        T: for<'r> Value<'r>,
    {
        match on.fetch_optional(self).await? {
            Some(row) => Ok(Some(row.try_get(0)?)),
            None => Ok(None),
        }
    }

    async fn execute_on(self, conn: &mut Conn<'_>) -> Result<Executed, sqlx::Error> {
        let rows_affected = match conn {
            Conn::Postgres(c) => bind_pg(sqlx::query(self.sql), self.params)
                .execute(&mut **c)
                .await?
                .rows_affected(),
            Conn::Sqlite(c) => bind_sqlite(sqlx::query(self.sql), self.params)
                .execute(&mut **c)
                .await?
                .rows_affected(),
        };
        Ok(Executed { rows_affected })
    }

    async fn fetch_all_on(self, conn: &mut Conn<'_>) -> Result<Vec<Row>, sqlx::Error> {
        Ok(match conn {
            Conn::Postgres(c) => bind_pg(sqlx::query(self.sql), self.params)
                .fetch_all(&mut **c)
                .await?
                .into_iter()
                .map(Row::Postgres)
                .collect(),
            Conn::Sqlite(c) => bind_sqlite(sqlx::query(self.sql), self.params)
                .fetch_all(&mut **c)
                .await?
                .into_iter()
                .map(Row::Sqlite)
                .collect(),
        })
    }

    async fn fetch_optional_on(self, conn: &mut Conn<'_>) -> Result<Option<Row>, sqlx::Error> {
        Ok(match conn {
            Conn::Postgres(c) => bind_pg(sqlx::query(self.sql), self.params)
                .fetch_optional(&mut **c)
                .await?
                .map(Row::Postgres),
            Conn::Sqlite(c) => bind_sqlite(sqlx::query(self.sql), self.params)
                .fetch_optional(&mut **c)
                .await?
                .map(Row::Sqlite),
        })
    }
}

/// Where a [`Query`] runs: a connection ([`Conn`], by value or borrowed), or the pool
/// ([`Database`], [`Pool`]), which lends one for the statement.
pub trait Executor<'e>: Send {
    /// Runs `q`; returns how many rows it changed.
    fn execute(self, q: Query) -> BoxFuture<'e, Result<Executed, sqlx::Error>>;
    /// Every row `q` returns.
    fn fetch_all(self, q: Query) -> BoxFuture<'e, Result<Vec<Row>, sqlx::Error>>;
    /// The first row `q` returns, if any.
    fn fetch_optional(self, q: Query) -> BoxFuture<'e, Result<Option<Row>, sqlx::Error>>;
}

impl<'c> Executor<'c> for Conn<'c> {
    fn execute(mut self, q: Query) -> BoxFuture<'c, Result<Executed, sqlx::Error>> {
        Box::pin(async move { q.execute_on(&mut self).await })
    }

    fn fetch_all(mut self, q: Query) -> BoxFuture<'c, Result<Vec<Row>, sqlx::Error>> {
        Box::pin(async move { q.fetch_all_on(&mut self).await })
    }

    fn fetch_optional(mut self, q: Query) -> BoxFuture<'c, Result<Option<Row>, sqlx::Error>> {
        Box::pin(async move { q.fetch_optional_on(&mut self).await })
    }
}

impl<'e, 'c: 'e> Executor<'e> for &'e mut Conn<'c> {
    fn execute(self, q: Query) -> BoxFuture<'e, Result<Executed, sqlx::Error>> {
        Box::pin(q.execute_on(self))
    }

    fn fetch_all(self, q: Query) -> BoxFuture<'e, Result<Vec<Row>, sqlx::Error>> {
        Box::pin(q.fetch_all_on(self))
    }

    fn fetch_optional(self, q: Query) -> BoxFuture<'e, Result<Option<Row>, sqlx::Error>> {
        Box::pin(q.fetch_optional_on(self))
    }
}

impl<'e> Executor<'e> for &'e Pool {
    fn execute(self, q: Query) -> BoxFuture<'e, Result<Executed, sqlx::Error>> {
        Box::pin(async move { q.execute_on(&mut self.acquire().await?.conn()).await })
    }

    fn fetch_all(self, q: Query) -> BoxFuture<'e, Result<Vec<Row>, sqlx::Error>> {
        Box::pin(async move { q.fetch_all_on(&mut self.acquire().await?.conn()).await })
    }

    fn fetch_optional(self, q: Query) -> BoxFuture<'e, Result<Option<Row>, sqlx::Error>> {
        Box::pin(async move { q.fetch_optional_on(&mut self.acquire().await?.conn()).await })
    }
}

impl<'e> Executor<'e> for &'e Database {
    fn execute(self, q: Query) -> BoxFuture<'e, Result<Executed, sqlx::Error>> {
        self.pool().execute(q)
    }

    fn fetch_all(self, q: Query) -> BoxFuture<'e, Result<Vec<Row>, sqlx::Error>> {
        self.pool().fetch_all(q)
    }

    fn fetch_optional(self, q: Query) -> BoxFuture<'e, Result<Option<Row>, sqlx::Error>> {
        self.pool().fetch_optional(q)
    }
}
