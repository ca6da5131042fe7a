//! The inbox: which input events a consumer has already applied.
//!
//! Claiming an event inserts its key in the same transaction as the state change it causes.
//! A redelivered event finds its key and changes nothing; if the transaction rolls back, the
//! claim goes with it, so the event is applied exactly when its effects are.

use sqlx::AnyConnection;

use crate::db::now_ms;

/// Claims `event_key` for `consumer`. `false`: it was applied before, do nothing.
pub async fn claim(
    conn: &mut AnyConnection,
    consumer: &str,
    event_key: &str,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO inbox (consumer, event_key, processed_at) VALUES ($1, $2, $3) \
         ON CONFLICT (consumer, event_key) DO NOTHING",
    )
    .bind(consumer)
    .bind(event_key)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}
