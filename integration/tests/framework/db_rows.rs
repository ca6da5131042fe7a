//! The runtime's row helpers (`db::insert_rows`, `insert_absent`, `update_from_values`,
//! `fetch_in`, `execute_in`) and the outbox built on them, on both engines: values of every
//! kind survive the trip (quotes, Unicode, NULLs, the ends of `i64`, every byte); on
//! PostgreSQL an insert's text does not depend on how many rows it carries (each connection
//! prepares it once), and a batch's rows are found by index in a table big enough that
//! scanning it would be the wrong plan.

use std::collections::HashSet;

use jetflow_integration::postgres::TestDatabase;
use jetflow_runtime::db::{self, Database, DbConfig, Param};
use jetflow_runtime::outbox;
use jetflow_runtime::publisher::OutgoingMessage;

const TABLE: &str = "CREATE TABLE t (k TEXT PRIMARY KEY, n BIGINT, note TEXT, body BYTEA)";

fn row(k: &str, n: Option<i64>, note: Option<&str>, body: &[u8]) -> Vec<Param> {
    vec![k.into(), n.into(), note.into(), body.to_vec().into()]
}

const COLUMNS: [&str; 4] = ["k", "n", "note", "body"];

type Stored = (String, Option<i64>, Option<String>, Vec<u8>);

async fn stored(db: &Database) -> Vec<Stored> {
    jetflow_runtime::db::query("SELECT k, n, note, body FROM t ORDER BY k")
        .fetch_all(db.pool())
        .await
        .expect("read t")
        .iter()
        .map(|r| {
            (
                r.try_get("k").expect("k"),
                r.try_get("n").expect("n"),
                r.try_get("note").expect("note"),
                r.try_get::<Vec<u8>, _>("body").expect("body"),
            )
        })
        .collect()
}

/// The statements this connection has prepared whose text starts with `prefix`.
async fn prepared(conn: jetflow_runtime::db::Conn<'_>, prefix: &str) -> i64 {
    jetflow_runtime::db::query(
        "SELECT COUNT(*) AS n FROM pg_prepared_statements WHERE statement LIKE $1",
    )
    .bind(format!("{prefix}%"))
    .fetch_scalar(conn)
    .await
    .expect("pg_prepared_statements")
}

async fn round_trip(db: &Database) {
    jetflow_runtime::db::query(TABLE)
        .execute(db.pool())
        .await
        .expect("table");
    let every_byte: Vec<u8> = (0..=255).collect();
    let awkward = "it's \"quoted\", back\\slashed, ✓ Unicode, a\nnewline";
    let mut tx = db.begin().await.expect("tx");
    let returned = db::insert_rows(
        tx.conn(),
        "t",
        &COLUMNS,
        &[
            row("a", Some(i64::MAX), Some(awkward), &every_byte),
            row("b", None, None, &[]),
            row("c", Some(i64::MIN), Some(""), &[0]),
        ],
        "ON CONFLICT (k) DO NOTHING RETURNING k",
    )
    .await
    .expect("insert_rows");
    let keys: HashSet<String> = returned
        .iter()
        .map(|r| r.try_get("k").expect("k"))
        .collect();
    assert_eq!(keys, HashSet::from(["a", "b", "c"].map(String::from)));
    db::Database::commit(tx).await.expect("commit");
    // A key taken since it was read is a lost race (the runtime rolls the batch back).
    let mut tx = db.begin().await.expect("tx");
    let taken = db::insert_absent(
        tx.conn(),
        "t",
        &COLUMNS,
        &[row("d", Some(1), None, b"d"), row("a", Some(2), None, b"x")],
    )
    .await
    .expect_err("a taken key");
    assert!(db::is_conflict(&taken), "{taken}");
    tx.rollback().await.expect("rollback");

    let mut conn = db.acquire().await.expect("conn");
    db::insert_absent(conn.conn(), "t", &COLUMNS, &[row("d", Some(4), None, b"d")])
        .await
        .expect("insert_absent");
    db::update_from_values(
        conn.conn(),
        "t",
        &["k", "n", "note"],
        "n = t.n + moved.n, note = COALESCE(moved.note, t.note)",
        &[
            vec!["c".into(), 1.into(), Param::Text(None)],
            vec!["d".into(), 10.into(), "ten's".into()],
        ],
    )
    .await
    .expect("update_from_values");
    let missing = db::update_from_values(
        conn.conn(),
        "t",
        &["k", "n"],
        "n = moved.n",
        &[vec!["zz".into(), 1.into()]],
    )
    .await
    .expect_err("a row that is not there");
    assert!(matches!(missing, sqlx::Error::RowNotFound), "{missing}");
    assert_eq!(
        stored(db).await,
        vec![
            (
                "a".into(),
                Some(i64::MAX),
                Some(awkward.into()),
                every_byte.clone()
            ),
            ("b".into(), None, None, vec![]),
            ("c".into(), Some(i64::MIN + 1), Some(String::new()), vec![0]),
            ("d".into(), Some(14), Some("ten's".into()), b"d".to_vec()),
        ]
    );

    // Keys with quotes and commas, one of them absent, read and deleted by list.
    let found = db::fetch_in(conn.conn(), &["a", "it's, absent", "d"], |list| {
        format!("SELECT k FROM t WHERE k IN ({list}) ORDER BY k")
    })
    .await
    .expect("fetch_in");
    let found: Vec<String> = found.iter().map(|r| r.try_get("k").expect("k")).collect();
    assert_eq!(found, ["a", "d"]);
    let gone = db::execute_in(conn.conn(), &["b", "c", "it's, absent"], |list| {
        format!("DELETE FROM t WHERE k IN ({list})")
    })
    .await
    .expect("execute_in");
    assert_eq!(gone, 2);
    let nothing = db::fetch_in(conn.conn(), &[], |list| {
        format!("SELECT k FROM t WHERE k IN ({list})")
    })
    .await
    .expect("no keys, no statement");
    assert!(nothing.is_empty());

    // Nothing to write, no statement; a row of the wrong shape is refused before any SQL.
    let none: &[Vec<Param>] = &[];
    assert!(
        db::insert_rows(conn.conn(), "t", &COLUMNS, none, "RETURNING k")
            .await
            .expect("no rows")
            .is_empty()
    );
    db::insert_absent(conn.conn(), "t", &COLUMNS, none)
        .await
        .expect("no rows");
    db::update_from_values(conn.conn(), "t", &["k", "n"], "n = moved.n", none)
        .await
        .expect("no rows");
    assert_eq!(
        db::execute_in(conn.conn(), &[], |list| format!(
            "DELETE FROM t WHERE k IN ({list})"
        ))
        .await
        .expect("no keys"),
        0
    );
    let Err(short) = db::insert_rows(conn.conn(), "t", &["k", "n"], &[vec!["x".into()]], "").await
    else {
        panic!("a row a value short was written");
    };
    assert!(matches!(short, sqlx::Error::Encode(_)), "{short}");
    let Err(mixed) = db::insert_rows(
        conn.conn(),
        "t",
        &["k", "n"],
        &[vec!["x".into(), 1.into()], vec!["y".into(), "2".into()]],
        "",
    )
    .await
    else {
        panic!("text where row 0 has an integer was written");
    };
    assert!(mixed.to_string().contains("column n"), "{mixed}");

    // Quoted, mixed-case column names are written to the right columns.
    jetflow_runtime::db::query(r#"CREATE TABLE u ("Key" TEXT PRIMARY KEY, "Level" BIGINT)"#)
        .execute(conn.conn())
        .await
        .expect("table u");
    db::insert_rows(
        conn.conn(),
        "u",
        &[r#""Key""#, r#""Level""#],
        &[vec!["q".into(), 42.into()]],
        "",
    )
    .await
    .expect("quoted columns");
    let level: i64 =
        jetflow_runtime::db::query(r#"SELECT "Level" AS level FROM u WHERE "Key" = 'q'"#)
            .fetch_scalar(conn.conn())
            .await
            .expect("row of u");
    assert_eq!(level, 42);

    // The outbox keeps a message's bytes, whatever they are.
    let message = OutgoingMessage::new("s.x", "m-1", every_byte.clone()).correlation_id("c-1");
    let mut tx = db.begin().await.expect("tx");
    outbox::enqueue(tx.conn(), std::slice::from_ref(&message))
        .await
        .expect("enqueue");
    db::Database::commit(tx).await.expect("commit");
    let due = outbox::due(db, db::now_ms(), db::now_ms(), 10)
        .await
        .expect("due");
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].message, message);
    outbox::delete(db, &["m-1".to_string()])
        .await
        .expect("delete");
    assert_eq!(outbox::pending(db).await.expect("pending"), 0);
}

#[test]
fn rows_of_every_kind_round_trip_on_sqlite() {
    jetflow_integration::run(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::connect_url(&format!("sqlite://{}/rows.db", dir.path().display()))
            .await
            .expect("sqlite");
        round_trip(&db).await;
        db.close().await;
    });
}

#[test]
fn rows_of_every_kind_round_trip_on_postgres() {
    jetflow_integration::run(async {
        let pg = TestDatabase::create().await;
        let db = Database::connect_url(pg.url()).await.expect("postgres");
        round_trip(&db).await;
        db.close().await;
    });
}

/// However many rows a batch inserts, PostgreSQL sees one statement text per table: the
/// connection prepares it once (sqlx keeps it), not once per batch size.
#[test]
fn postgres_prepares_one_insert_whatever_the_batch_size() {
    jetflow_integration::run(async {
        let pg = TestDatabase::create().await;
        let db = Database::connect_url(pg.url()).await.expect("postgres");
        jetflow_runtime::db::query(TABLE)
            .execute(db.pool())
            .await
            .expect("table");
        let mut conn = db.acquire().await.expect("conn");
        let sizes = [1, 2, 3, 17, 300, 501];
        let mut next = 0;
        for size in sizes {
            let rows: Vec<Vec<Param>> = (next..next + size)
                .map(|i| row(&format!("k{i:05}"), Some(i), None, b"x"))
                .collect();
            next += size;
            db::insert_absent(conn.conn(), "t", &COLUMNS, &rows)
                .await
                .expect("insert_absent");
        }
        assert_eq!(stored(&db).await.len(), sizes.iter().sum::<i64>() as usize);
        assert_eq!(prepared(conn.conn(), "INSERT INTO t").await, 1);
        drop(conn);
        db.close().await;
    });
}

/// Sequential and index scans of table `t` so far, as the pool's one connection's statistics
/// say (flushed first, read afresh).
async fn scans(db: &Database) -> (i64, i64) {
    let mut conn = db.acquire().await.expect("the connection");
    jetflow_runtime::db::query("SELECT pg_stat_force_next_flush()")
        .execute(conn.conn())
        .await
        .expect("flush");
    jetflow_runtime::db::query("SELECT pg_stat_clear_snapshot()")
        .execute(conn.conn())
        .await
        .expect("fresh snapshot");
    let row = jetflow_runtime::db::query(
        "SELECT seq_scan, COALESCE(idx_scan, 0) AS idx_scan FROM pg_stat_user_tables \
         WHERE relname = 't'",
    )
    .fetch_one(conn.conn())
    .await
    .expect("pg_stat_user_tables");
    (
        row.try_get("seq_scan").expect("seq_scan"),
        row.try_get("idx_scan").expect("idx_scan"),
    )
}

/// A batch's few rows are read, locked, updated and deleted by index in a table big enough
/// that scanning it is the wrong plan (a scan costs CPU per row of the table, not per row of
/// the batch).
#[test]
fn postgres_reads_and_updates_a_batch_s_rows_by_index() {
    jetflow_integration::run(async {
        let pg = TestDatabase::create().await;
        // One connection, so that its own statistics are the table's.
        let config = DbConfig {
            max_connections: Some(1),
            ..DbConfig::new(pg.url())
        };
        let db = Database::connect(&config).await.expect("postgres");
        jetflow_runtime::db::query(TABLE)
            .execute(db.pool())
            .await
            .expect("table");
        jetflow_runtime::db::query(
            "INSERT INTO t (k, n, body) SELECT 'k' || i, i, '\\x00' FROM generate_series(1, 20000) i",
        )
        .execute(db.pool())
        .await
        .expect("20,000 rows");
        jetflow_runtime::db::query("ANALYZE t")
            .execute(db.pool())
            .await
            .expect("analyze");
        let before = scans(&db).await;
        for round in 0..8 {
            let keys = [format!("k{}", round + 1), format!("k{}", round + 100)];
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let mut tx = db.begin().await.expect("tx");
            let read = db::fetch_locked(tx.conn(), "t", "k", &["k", "n"], &keys)
                .await
                .expect("fetch_locked");
            assert_eq!(read.len(), 2);
            let moved: Vec<Vec<Param>> = keys.iter().map(|k| vec![(*k).into(), 1.into()]).collect();
            db::update_from_values(tx.conn(), "t", &["k", "n"], "n = t.n + moved.n", &moved)
                .await
                .expect("update_from_values");
            db::execute_in(tx.conn(), &keys, |list| {
                format!("DELETE FROM t WHERE k IN ({list})")
            })
            .await
            .expect("execute_in");
            tx.rollback().await.expect("rollback");
        }
        let after = scans(&db).await;
        assert_eq!(after.0, before.0, "no sequential scan of t");
        assert!(
            after.1 >= before.1 + 8 * 3,
            "read by index: {before:?} → {after:?}"
        );
        db.close().await;
    });
}

/// Every pooled PostgreSQL connection plans each statement for the values it is given (a
/// generic plan made while a table was small would scan it for every batch after).
#[test]
fn postgres_connections_plan_each_statement_for_its_values() {
    jetflow_integration::run(async {
        let pg = TestDatabase::create().await;
        let db = Database::connect_url(pg.url()).await.expect("postgres");
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(db.acquire().await.expect("a connection"));
        }
        for pooled in &mut held {
            let mode: String = db::query("SELECT current_setting('plan_cache_mode')")
                .fetch_scalar(pooled.conn())
                .await
                .expect("the setting");
            assert_eq!(mode, "force_custom_plan");
        }
        drop(held);
        db.close().await;
    });
}
