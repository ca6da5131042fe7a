//! Statements over a batch's keys and rows, on either engine: reads of a key list (locked
//! or not), inserts of the rows a batch gathered, updates of the rows it changed, each in as
//! few round trips as the parameter limits allow. Tables, columns and clauses are SQL written
//! by the caller; keys and values are always bound.

use sqlx::AnyConnection;

use super::{Backend, connection_backend, lost_race};

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
/// use jetflow_runtime::db;
/// let rows = db::fetch_locked(conn, "readings", "id", &["id", "level"], &["a"]).await?;
/// # Ok(()) }
/// ```
pub async fn fetch_locked(
    conn: &mut sqlx::AnyConnection,
    table: &str,
    key: &str,
    columns: &[&str],
    keys: &[&str],
) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
    let (columns, lock) = (columns.join(", "), for_update(connection_backend(conn)));
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
    use crate::db::{Database, is_conflict};

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
}
