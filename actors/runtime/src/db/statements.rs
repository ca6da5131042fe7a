//! Statements over a batch's keys and rows, written for each engine: reads of a key list
//! (locked or not), inserts of the rows a batch gathered, updates of the rows it changed. On
//! PostgreSQL the keys and each column's values travel as one array parameter (`IN (SELECT
//! UNNEST($1::text[]))`, `SELECT * FROM UNNEST(…)`), so one statement, whose text is the same
//! for any number of rows and is parsed once per connection, serves a whole batch; on SQLite
//! as `IN` and `VALUES` lists, in as few statements as its parameter limit allows. Tables, columns and clauses are
//! SQL written by the caller; keys and values are always bound.

use sqlx::postgres::PgArguments;
use sqlx::sqlite::SqliteArguments;
use sqlx::{AssertSqlSafe, Postgres, Sqlite};

use super::portable::{Conn, Param, Row};
use super::{Backend, lost_race};

/// Keys per statement of [`fetch_in`] and [`execute_in`] on SQLite: far below its parameter
/// limit.
const IN_CHUNK: usize = 500;

/// A PostgreSQL statement whose array parameters borrow the keys or rows they carry (encoded
/// once, when bound).
type PgRowsQuery<'a> = sqlx::query::Query<'a, Postgres, PgArguments>;
type SqliteQuery = sqlx::query::Query<'static, Sqlite, SqliteArguments>;

/// The key list as PostgreSQL reads it: one array parameter, whatever its length.
const PG_KEY_LIST: &str = "SELECT UNNEST($1::text[])";

/// The statements of a query over a list of keys on SQLite, one per 500 keys, with the keys
/// bound.
fn sqlite_in_statements(keys: &[&str], sql: &impl Fn(&str) -> String) -> Vec<SqliteQuery> {
    keys.chunks(IN_CHUNK)
        .map(|chunk| {
            let mut q = sqlx::query(AssertSqlSafe(sql(&placeholders(1, chunk.len()))));
            for key in chunk {
                q = q.bind(key.to_string());
            }
            q
        })
        .collect()
}

/// The statement of a query over a list of keys on PostgreSQL: the keys as one `text[]`.
fn pg_in_statement<'a>(keys: &'a [&'a str], sql: &impl Fn(&str) -> String) -> PgRowsQuery<'a> {
    sqlx::query(AssertSqlSafe(sql(PG_KEY_LIST))).bind(keys)
}

/// The rows of a query over a list of keys: `sql` is given the list to put inside `IN (…)`
/// and returns the statement, which runs with the keys bound. On PostgreSQL the list is one
/// array parameter (`SELECT UNNEST($1::text[])`) and the statement runs once; on SQLite it is
/// placeholders (`$1, $2, …`), one statement per 500 keys. Only the generated list reaches
/// the SQL text, never a key; no keys, no statement.
///
/// ```no_run
/// # async fn f(conn: jetflow_runtime::db::Conn<'_>) -> Result<(), sqlx::Error> {
/// let rows = jetflow_runtime::db::fetch_in(conn, &["a", "b"], |list| {
///     format!("SELECT id, level FROM readings WHERE id IN ({list})")
/// })
/// .await?;
/// let ids: Vec<String> = rows.iter().map(|r| r.try_get("id")).collect::<Result<_, _>>()?;
/// # Ok(()) }
/// ```
pub async fn fetch_in(
    mut conn: Conn<'_>,
    keys: &[&str],
    sql: impl Fn(&str) -> String,
) -> Result<Vec<Row>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    match &mut conn {
        Conn::Postgres(c) => Ok(pg_in_statement(keys, &sql)
            .fetch_all(&mut **c)
            .await?
            .into_iter()
            .map(Row::Postgres)
            .collect()),
        Conn::Sqlite(c) => {
            let mut rows = Vec::with_capacity(keys.len());
            for q in sqlite_in_statements(keys, &sql) {
                rows.extend(q.fetch_all(&mut **c).await?.into_iter().map(Row::Sqlite));
            }
            Ok(rows)
        }
    }
}

/// Runs a statement over a list of keys as [`fetch_in`] does (an `UPDATE` or `DELETE …
/// WHERE key IN ({list})`), and returns how many rows it affected.
///
/// ```no_run
/// # async fn f(conn: jetflow_runtime::db::Conn<'_>) -> Result<(), sqlx::Error> {
/// let gone = jetflow_runtime::db::execute_in(conn, &["a", "b"], |list| {
///     format!("DELETE FROM readings WHERE id IN ({list})")
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn execute_in(
    mut conn: Conn<'_>,
    keys: &[&str],
    sql: impl Fn(&str) -> String,
) -> Result<u64, sqlx::Error> {
    if keys.is_empty() {
        return Ok(0);
    }
    match &mut conn {
        Conn::Postgres(c) => Ok(pg_in_statement(keys, &sql)
            .execute(&mut **c)
            .await?
            .rows_affected()),
        Conn::Sqlite(c) => {
            let mut affected = 0;
            for q in sqlite_in_statements(keys, &sql) {
                affected += q.execute(&mut **c).await?.rows_affected();
            }
            Ok(affected)
        }
    }
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
/// order instead of deadlocking. One statement on PostgreSQL, one per 500 keys on SQLite
/// ([`fetch_in`]). `table`, `key` and `columns` are SQL written by the caller, never input.
///
/// ```no_run
/// # async fn f(conn: jetflow_runtime::db::Conn<'_>) -> Result<(), sqlx::Error> {
/// use jetflow_runtime::db;
/// let rows = db::fetch_locked(conn, "readings", "id", &["id", "level"], &["a"]).await?;
/// # Ok(()) }
/// ```
pub async fn fetch_locked(
    conn: Conn<'_>,
    table: &str,
    key: &str,
    columns: &[&str],
    keys: &[&str],
) -> Result<Vec<Row>, sqlx::Error> {
    let (columns, lock) = (columns.join(", "), for_update(conn.backend()));
    fetch_in(conn, keys, |list| {
        format!("SELECT {columns} FROM {table} WHERE {key} IN ({list}) ORDER BY {key}{lock}")
    })
    .await
}

/// Most parameters in one generated SQLite statement: below its limit of 32,766.
const MAX_PARAMS: usize = 30_000;

/// Rows per generated SQLite statement for rows of `width` values (500 at most).
fn rows_per_statement(width: usize) -> usize {
    (MAX_PARAMS / width.max(1)).clamp(1, 500)
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

/// One column of a batch's rows, as one PostgreSQL array of the rows' own values (encoded
/// once, when bound, never copied before).
enum Column<'a> {
    Text(Vec<Option<&'a str>>),
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Bytes(Vec<&'a [u8]>),
}

impl<'a> Column<'a> {
    fn of(kind: &Param, rows: usize) -> Self {
        match kind {
            Param::Text(_) => Column::Text(Vec::with_capacity(rows)),
            Param::Int(_) => Column::Int(Vec::with_capacity(rows)),
            Param::Float(_) => Column::Float(Vec::with_capacity(rows)),
            Param::Bytes(_) => Column::Bytes(Vec::with_capacity(rows)),
        }
    }

    fn array_type(&self) -> &'static str {
        match self {
            Column::Text(_) => "text[]",
            Column::Int(_) => "bigint[]",
            Column::Float(_) => "double precision[]",
            Column::Bytes(_) => "bytea[]",
        }
    }

    /// Adds a value, of the column's kind ([`check_shape`] makes sure of it).
    fn push(&mut self, value: &'a Param) -> Result<(), sqlx::Error> {
        match (self, value) {
            (Column::Text(c), Param::Text(v)) => c.push(v.as_deref()),
            (Column::Int(c), Param::Int(v)) => c.push(*v),
            (Column::Float(c), Param::Float(v)) => c.push(*v),
            (Column::Bytes(c), Param::Bytes(v)) => c.push(v.as_slice()),
            (_, v) => {
                return Err(sqlx::Error::Encode(
                    format!("{v:?} in a column of another kind").into(),
                ));
            }
        }
        Ok(())
    }

    fn bind(self, q: PgRowsQuery<'a>) -> PgRowsQuery<'a> {
        match self {
            Column::Text(v) => q.bind(v),
            Column::Int(v) => q.bind(v),
            Column::Float(v) => q.bind(v),
            Column::Bytes(v) => q.bind(v),
        }
    }
}

/// The statement writing `rows` on PostgreSQL: `sql(key, columns, rows)`, `rows` being
/// `SELECT * FROM UNNEST($1::text[], $2::bigint[], …)`, one array per column (its type from
/// the first row's values), bound. The text is the same for any number of rows.
fn pg_rows_statement<'a>(
    columns: &[&str],
    rows: &'a [Vec<Param>],
    sql: impl Fn(&str, &str, &str) -> String,
) -> Result<Option<PgRowsQuery<'a>>, sqlx::Error> {
    let (Some(key), Some(first)) = (columns.first(), rows.first()) else {
        return Ok(None);
    };
    let mut arrays: Vec<Column> = first.iter().map(|p| Column::of(p, rows.len())).collect();
    for row in rows {
        for (array, value) in arrays.iter_mut().zip(row) {
            array.push(value)?;
        }
    }
    let unnest = arrays
        .iter()
        .enumerate()
        .map(|(i, a)| format!("${}::{}", i + 1, a.array_type()))
        .collect::<Vec<_>>()
        .join(", ");
    let text = sql(
        key,
        &columns.join(", "),
        &format!("SELECT * FROM UNNEST({unnest})"),
    );
    Ok(Some(
        arrays
            .into_iter()
            .fold(sqlx::query(AssertSqlSafe(text)), |q, a| a.bind(q)),
    ))
}

/// The statements writing `rows` on SQLite (one value per column of `columns`, the first
/// column the key), as few as its parameter limit allows: for each chunk, the text `sql(key,
/// columns, rows)` makes (`rows` the chunk's `VALUES (…), (…)` of placeholders) with the
/// chunk's values bound, and how many rows the chunk holds. No key, no statement.
fn sqlite_row_statements(
    columns: &[&str],
    rows: &[Vec<Param>],
    sql: impl Fn(&str, &str, &str) -> String,
) -> Vec<(SqliteQuery, usize)> {
    let Some(key) = columns.first() else {
        return Vec::new();
    };
    let names = columns.join(", ");
    rows.chunks(rows_per_statement(columns.len()))
        .map(|chunk| {
            let values = format!("VALUES {}", values_list(chunk.len(), columns.len()));
            let mut q = sqlx::query(AssertSqlSafe(sql(key, &names, &values)));
            for value in chunk.iter().flatten() {
                q = match value {
                    Param::Text(v) => q.bind(v.clone()),
                    Param::Int(v) => q.bind(*v),
                    Param::Float(v) => q.bind(*v),
                    Param::Bytes(v) => q.bind(v.clone()),
                };
            }
            (q, chunk.len())
        })
        .collect()
}

fn values_list(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|i| format!("({})", placeholders(i * width + 1, width)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs the statements writing `rows` (see [`pg_rows_statement`] and
/// [`sqlite_row_statements`]) and returns, for each, how many rows it carried and the rows it
/// returned (or, with `returning` false, as many empty lists with the rows it affected).
async fn write_rows(
    mut conn: Conn<'_>,
    columns: &[&str],
    rows: &[Vec<Param>],
    returning: bool,
    sql: impl Fn(&str, &str, &str) -> String,
) -> Result<Vec<(usize, Written)>, sqlx::Error> {
    check_shape(columns, rows)?;
    let mut done = Vec::new();
    match &mut conn {
        Conn::Postgres(c) => {
            if let Some(q) = pg_rows_statement(columns, rows, sql)? {
                let written = if returning {
                    Written::Rows(
                        q.fetch_all(&mut **c)
                            .await?
                            .into_iter()
                            .map(Row::Postgres)
                            .collect(),
                    )
                } else {
                    Written::Affected(q.execute(&mut **c).await?.rows_affected())
                };
                done.push((rows.len(), written));
            }
        }
        Conn::Sqlite(c) => {
            for (q, n) in sqlite_row_statements(columns, rows, sql) {
                let written = if returning {
                    Written::Rows(
                        q.fetch_all(&mut **c)
                            .await?
                            .into_iter()
                            .map(Row::Sqlite)
                            .collect(),
                    )
                } else {
                    Written::Affected(q.execute(&mut **c).await?.rows_affected())
                };
                done.push((n, written));
            }
        }
    }
    Ok(done)
}

/// What a statement of [`write_rows`] gave back.
enum Written {
    Rows(Vec<Row>),
    Affected(u64),
}

/// Inserts `rows` (one value per column of `columns`) into `table` and returns what the
/// statements return: `INSERT INTO <table> (<columns>) <rows> <tail>`, `tail` being, say,
/// `ON CONFLICT (…) DO NOTHING RETURNING …`, or nothing; none without rows. On PostgreSQL
/// the rows travel as one array per column (`SELECT * FROM UNNEST($1::text[], …)`): one
/// statement, whose text is the same for any number of rows, so each connection parses it
/// once; on SQLite as `VALUES` lists, 500 rows at most per statement. Every row
/// gives one value per column, of the same kind of [`Param`] in a column (a row that does not
/// fails the write with [`sqlx::Error::Encode`]). What a [`Deferred`](crate::Deferred)
/// gathered from a whole batch is written this way. `table`, `columns` and `tail` are SQL
/// written by the caller, never input.
///
/// ```no_run
/// # async fn f(conn: jetflow_runtime::db::Conn<'_>) -> Result<(), sqlx::Error> {
/// use jetflow_runtime::db::{self, Param};
/// let rows: Vec<Vec<Param>> = vec![vec!["a".into(), 7.into()], vec!["b".into(), 9.into()]];
/// db::insert_rows(conn, "readings", &["id", "level"], &rows, "ON CONFLICT (id) DO NOTHING")
///     .await?;
/// # Ok(()) }
/// ```
pub async fn insert_rows(
    conn: Conn<'_>,
    table: &str,
    columns: &[&str],
    rows: &[Vec<Param>],
    tail: &str,
) -> Result<Vec<Row>, sqlx::Error> {
    let written = write_rows(conn, columns, rows, true, |_, columns, values| {
        format!("INSERT INTO {table} ({columns}) {values} {tail}")
    })
    .await?;
    let mut returned = Vec::new();
    for (_, w) in written {
        if let Written::Rows(rows) = w {
            returned.extend(rows);
        }
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
    conn: Conn<'_>,
    table: &str,
    columns: &[&str],
    rows: &[Vec<Param>],
) -> Result<(), sqlx::Error> {
    let written = write_rows(conn, columns, rows, false, |key, columns, values| {
        format!("INSERT INTO {table} ({columns}) {values} ON CONFLICT ({key}) DO NOTHING")
    })
    .await?;
    for (carried, w) in written {
        let inserted = match w {
            Written::Affected(n) => n,
            Written::Rows(r) => r.len() as u64,
        };
        if inserted != carried as u64 {
            return Err(lost_race(format!(
                "{} of {carried} {table} rows were written by another transaction since they were read",
                carried as u64 - inserted,
            )));
        }
    }
    Ok(())
}

/// Updates the rows of `table` that a transaction read (and locked) and changed: `WITH moved
/// (<columns>) AS (<rows>) UPDATE <table> SET <set> FROM moved WHERE <table>.<key> =
/// moved.<key>`, the first column being the key and `set` written over `moved.<column>` and
/// the table's own columns; `<rows>` is one array per column on PostgreSQL (one statement),
/// `VALUES` lists on SQLite. Every row must be there to update: a row that is not (it cannot
/// vanish while locked) fails the write with [`sqlx::Error::RowNotFound`], and the runtime
/// applies the batch one delivery at a time. `table`, `columns` and `set` are SQL written by
/// the caller, never input.
pub async fn update_from_values(
    conn: Conn<'_>,
    table: &str,
    columns: &[&str],
    set: &str,
    rows: &[Vec<Param>],
) -> Result<(), sqlx::Error> {
    let written = write_rows(conn, columns, rows, false, |key, columns, values| {
        format!(
            "WITH moved ({columns}) AS ({values}) UPDATE {table} SET {set} FROM moved \
             WHERE {table}.{key} = moved.{key}"
        )
    })
    .await?;
    for (moved, w) in written {
        let updated = match w {
            Written::Affected(n) => n,
            Written::Rows(r) => r.len() as u64,
        };
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
    use crate::db::{Database, is_conflict};

    /// Rows created only where their key is free (a taken key is a conflict), and changed
    /// rows updated from a values list (a missing one is an error), on a real database.
    #[tokio::test]
    async fn absent_rows_are_inserted_and_moved_rows_updated_or_the_write_fails() {
        let db = Database::connect_url("sqlite::memory:").await.unwrap();
        let mut pooled = db.acquire().await.unwrap();
        crate::db::query("CREATE TABLE t (k TEXT PRIMARY KEY, n BIGINT, note TEXT)")
            .execute(pooled.conn())
            .await
            .unwrap();
        let row = |k: &str, n: i64, note: Option<&str>| vec![k.into(), n.into(), note.into()];
        let cols = ["k", "n", "note"];
        insert_absent(
            pooled.conn(),
            "t",
            &cols,
            &[row("a", 1, None), row("b", 2, Some("x"))],
        )
        .await
        .unwrap();
        let taken = insert_absent(
            pooled.conn(),
            "t",
            &cols,
            &[row("c", 3, None), row("a", 9, None)],
        )
        .await
        .unwrap_err();
        assert!(is_conflict(&taken), "{taken}");
        update_from_values(
            pooled.conn(),
            "t",
            &cols,
            "n = moved.n, note = COALESCE(moved.note, t.note)",
            &[row("a", 10, Some("y")), row("b", 20, None)],
        )
        .await
        .unwrap();
        let rows: Vec<(String, i64, Option<String>)> =
            crate::db::query("SELECT k, n, note FROM t ORDER BY k")
                .fetch_all(pooled.conn())
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r.try_get("k").unwrap(),
                        r.try_get("n").unwrap(),
                        r.try_get("note").unwrap(),
                    )
                })
                .collect();
        let expected = vec![
            ("a".to_string(), 10, Some("y".to_string())),
            ("b".to_string(), 20, Some("x".to_string())),
            ("c".to_string(), 3, None),
        ];
        assert_eq!(rows, expected);
        let missing = update_from_values(
            pooled.conn(),
            "t",
            &cols,
            "n = moved.n",
            &[row("z", 1, None)],
        )
        .await
        .unwrap_err();
        assert!(matches!(missing, sqlx::Error::RowNotFound), "{missing}");
    }
}
