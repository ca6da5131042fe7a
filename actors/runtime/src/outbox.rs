//! The transactional outbox: messages written in the same transaction as the state change
//! that produced them, so they exist exactly when the change does.
//!
//! A row is published by the [`OutboxRelay`](crate::relay::OutboxRelay) with its id as
//! `Nats-Msg-Id` and deleted once JetStream acknowledged it. A row JetStream keeps refusing
//! counts its attempts and keeps the last error, waits longer before each new attempt (so a
//! few bad rows never hold up the good ones) and is moved to the dead-letter stream after a
//! bound.

use crate::db::{Conn, Database, Param, Row, execute_in, insert_rows, millis, now_ms, query};
use crate::publisher::OutgoingMessage;

/// A row waiting to be published.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    /// The message (its `msg_id` is the row id).
    pub message: OutgoingMessage,
    /// When it was committed (Unix milliseconds).
    pub created_at: i64,
    /// Failed publishes so far.
    pub attempts: u32,
    /// The error of the last failed publish.
    pub last_error: Option<String>,
}

/// Writes `messages` to the outbox inside the caller's transaction.
pub async fn enqueue(conn: Conn<'_>, messages: &[OutgoingMessage]) -> Result<(), sqlx::Error> {
    let now = now_ms();
    let rows: Vec<Vec<Param>> = messages
        .iter()
        .map(|m| {
            let headers = serde_json::to_string(&m.headers).unwrap_or_else(|_| "[]".into());
            vec![
                m.msg_id.as_str().into(),
                m.subject.as_str().into(),
                m.payload.to_vec().into(),
                headers.into(),
                now.into(),
            ]
        })
        .collect();
    insert_rows(
        conn,
        "outbox",
        &["id", "subject", "payload", "headers", "created_at"],
        &rows,
        "",
    )
    .await?;
    Ok(())
}

fn row_of(row: &Row) -> Result<OutboxRow, sqlx::Error> {
    let headers: Vec<(String, String)> =
        serde_json::from_str(&row.try_get::<String, _>("headers")?).unwrap_or_default();
    Ok(OutboxRow {
        message: OutgoingMessage {
            subject: row.try_get("subject")?,
            payload: row.try_get::<Vec<u8>, _>("payload")?.into(),
            msg_id: row.try_get("id")?,
            headers,
        },
        created_at: row.try_get("created_at")?,
        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
        last_error: row.try_get("last_error")?,
    })
}

/// Rows due for a publish attempt: committed at or before `committed_before`, and past
/// their retry delay at `now`; oldest attempt first.
pub async fn due(
    db: &Database,
    committed_before: i64,
    now: i64,
    limit: usize,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    query(
        "SELECT id, subject, payload, headers, created_at, attempts, last_error FROM outbox \
         WHERE created_at <= $1 AND next_attempt_at <= $2 ORDER BY next_attempt_at, created_at LIMIT $3",
    )
    .bind(committed_before)
    .bind(now)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(db)
    .await?
    .iter()
    .map(row_of)
    .collect()
}

/// Deletes published rows, in as few statements as possible.
pub async fn delete(db: &Database, ids: &[String]) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = ids.iter().map(String::as_str).collect();
    execute_in(db.acquire().await?.conn(), &keys, |list| {
        format!("DELETE FROM outbox WHERE id IN ({list})")
    })
    .await?;
    Ok(())
}

/// Records a failed publish of row `id`: one more attempt, its error, and when to try again.
pub async fn record_failure(
    db: &Database,
    id: &str,
    error: &str,
    retry_in: std::time::Duration,
) -> Result<(), sqlx::Error> {
    query(
        "UPDATE outbox SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3 WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .bind(now_ms().saturating_add(millis(retry_in)))
    .execute(db)
    .await?;
    Ok(())
}

/// `next_attempt_at` of a parked row: never due again.
pub const PARKED: i64 = i64::MAX;

/// Parks row `id`: it is never published again and stays in the table, with `error`, for an
/// operator (`SELECT * FROM outbox WHERE next_attempt_at = 9223372036854775807`).
pub async fn park(db: &Database, id: &str, error: &str) -> Result<(), sqlx::Error> {
    query(
        "UPDATE outbox SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3 WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .bind(PARKED)
    .execute(db)
    .await?;
    Ok(())
}

/// Rows waiting in the outbox (parked rows are not waiting).
pub async fn pending(db: &Database) -> Result<i64, sqlx::Error> {
    query("SELECT COUNT(*) AS n FROM outbox WHERE next_attempt_at < 9223372036854775807")
        .fetch_one(db)
        .await?
        .try_get::<i64, _>("n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn rows_round_trip_and_failures_push_them_back() {
        let db = Database::connect_url("sqlite::memory:").await.unwrap();
        let mut tx = db.begin().await.unwrap();
        let messages: Vec<OutgoingMessage> = (0..450)
            .map(|i| {
                OutgoingMessage::new(format!("s.{i}"), format!("id-{i}"), vec![0u8, 1, 255])
                    .correlation_id("c")
            })
            .collect();
        enqueue(tx.conn(), &messages).await.unwrap();
        Database::commit(tx).await.unwrap();
        assert_eq!(pending(&db).await.unwrap(), 450);
        let rows = due(&db, now_ms(), now_ms(), 1000).await.unwrap();
        assert_eq!(rows.len(), 450);
        let first = rows.iter().find(|r| r.message.msg_id == "id-0").unwrap();
        assert_eq!(
            first.message, messages[0],
            "payload bytes and headers survive"
        );
        record_failure(&db, "id-0", "no stream", Duration::from_secs(60))
            .await
            .unwrap();
        let rows = due(&db, now_ms(), now_ms(), 1000).await.unwrap();
        assert_eq!(rows.len(), 449, "a failed row waits for its retry");
        let later = due(&db, now_ms(), now_ms() + 61_000, 1000).await.unwrap();
        assert_eq!(later.len(), 450);
        assert_eq!(
            later.last().map(|r| r.message.msg_id.as_str()),
            Some("id-0"),
            "rows never tried come before a row that keeps failing"
        );
        let failed = later.last().unwrap();
        assert_eq!(failed.attempts, 1);
        assert_eq!(failed.last_error.as_deref(), Some("no stream"));
        let ids: Vec<String> = messages.iter().map(|m| m.msg_id.clone()).collect();
        delete(&db, &ids).await.unwrap();
        assert_eq!(pending(&db).await.unwrap(), 0);
    }
}
