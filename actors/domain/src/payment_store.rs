//! Payments in the database: one row per order, written with the event it produces.

use sqlx::{AnyConnection, Row};

use crate::db::now_ms;

/// A recorded payment outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRecord {
    /// `succeeded`, `declined` or `unavailable`.
    pub status: String,
    /// The amount.
    pub amount_cents: i64,
    /// The provider's reference.
    pub payment_id: Option<String>,
}

/// The payment of an order, if one was recorded.
pub async fn get<'c, E>(executor: E, order_id: &str) -> Result<Option<PaymentRecord>, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let row =
        sqlx::query("SELECT status, amount_cents, payment_id FROM payments WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(executor)
            .await?;
    row.map(|r| {
        Ok(PaymentRecord {
            status: r.try_get("status")?,
            amount_cents: r.try_get("amount_cents")?,
            payment_id: r.try_get("payment_id")?,
        })
    })
    .transpose()
}

/// Records an order's payment outcome; false if one was recorded already.
pub async fn record(
    conn: &mut AnyConnection,
    order_id: &str,
    status: &str,
    amount_cents: i64,
    payment_id: Option<&str>,
    attempts: u32,
    detail: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "INSERT INTO payments (order_id, status, amount_cents, payment_id, attempts, detail, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(status)
    .bind(amount_cents)
    .bind(payment_id)
    .bind(i64::from(attempts))
    .bind(detail)
    .bind(now_ms())
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Remembers that a charge attempt for `order_id` ended without a clear answer (it may have
/// gone through at the provider).
pub async fn mark_uncertain<'c, E>(executor: E, order_id: &str) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO payment_attempts (order_id, uncertain_at) VALUES ($1, $2) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(now_ms())
    .execute(executor)
    .await?;
    Ok(())
}

/// Whether any charge attempt for `order_id` ended without a clear answer.
pub async fn was_uncertain<'c, E>(executor: E, order_id: &str) -> Result<bool, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let row = sqlx::query("SELECT order_id FROM payment_attempts WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(executor)
        .await?;
    Ok(row.is_some())
}

/// Marks a recorded payment as voided (its charge given back after the order was cancelled).
pub async fn mark_voided<'c, E>(executor: E, order_id: &str) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    sqlx::query("UPDATE payments SET status = 'voided', updated_at = $2 WHERE order_id = $1")
        .bind(order_id)
        .bind(now_ms())
        .execute(executor)
        .await?;
    Ok(())
}
