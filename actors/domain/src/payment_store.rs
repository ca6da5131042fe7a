//! Payments in the database: one row per order, written with the event it produces, and a
//! marker for charge attempts whose outcome is unknown.
//!
//! The row's primary key is the serialisation point between charging and cancelling: the
//! charge records `succeeded` and the cancellation records a `cancelled` tombstone, both with
//! an insert that does nothing on conflict, so whichever comes second sees the first and
//! knows a charge must be voided.

use std::collections::HashMap;

use sqlx::{AnyConnection, Row};

use crate::now_ms;

/// What became of an order's payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    /// Charged.
    Succeeded,
    /// The provider declined the customer.
    Declined,
    /// The provider could not be reached in time; the order was cancelled.
    Unavailable,
    /// The order was cancelled before any charge was recorded (a tombstone).
    Cancelled,
    /// Charged (or possibly charged) for an order that was cancelled: the voider gives it
    /// back at the provider.
    VoidPending,
    /// Charged, then given back because the order was cancelled.
    Voided,
}

impl PaymentStatus {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Declined => "declined",
            PaymentStatus::Unavailable => "unavailable",
            PaymentStatus::Cancelled => "cancelled",
            PaymentStatus::VoidPending => "void_pending",
            PaymentStatus::Voided => "voided",
        }
    }

    /// Parses a stored status.
    pub fn parse(text: &str) -> Option<Self> {
        [
            PaymentStatus::Succeeded,
            PaymentStatus::Declined,
            PaymentStatus::Unavailable,
            PaymentStatus::Cancelled,
            PaymentStatus::VoidPending,
            PaymentStatus::Voided,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// A recorded payment outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRecord {
    /// The outcome.
    pub status: PaymentStatus,
    /// The amount.
    pub amount_cents: i64,
    /// The provider's reference.
    pub payment_id: Option<String>,
}

/// A payment outcome to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPayment<'a> {
    /// The order.
    pub order_id: &'a str,
    /// The outcome.
    pub status: PaymentStatus,
    /// The amount.
    pub amount_cents: i64,
    /// The provider's reference, when charged.
    pub payment_id: Option<&'a str>,
    /// Deliveries it took.
    pub attempts: u32,
    /// Why, for anything but a success.
    pub detail: Option<&'a str>,
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
    row.as_ref().map(record_of).transpose()
}

fn record_of(r: &sqlx::any::AnyRow) -> Result<PaymentRecord, sqlx::Error> {
    let status: String = r.try_get("status")?;
    Ok(PaymentRecord {
        status: PaymentStatus::parse(&status).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown payment status {status:?}").into())
        })?,
        amount_cents: r.try_get("amount_cents")?,
        payment_id: r.try_get("payment_id")?,
    })
}

/// The payments recorded for these orders, by order id (one statement per 500 orders).
pub async fn get_many(
    conn: &mut AnyConnection,
    order_ids: &[&str],
) -> Result<HashMap<String, PaymentRecord>, sqlx::Error> {
    let rows = jetflow_runtime::db::fetch_in(conn, order_ids, |list| {
        format!(
            "SELECT order_id, status, amount_cents, payment_id FROM payments WHERE order_id IN ({list})"
        )
    })
    .await?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in rows {
        found.insert(row.try_get("order_id")?, record_of(&row)?);
    }
    Ok(found)
}

/// Records an order's payment outcome; false if one was recorded already (see [`get`]).
pub async fn record(conn: &mut AnyConnection, p: &NewPayment<'_>) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "INSERT INTO payments (order_id, status, amount_cents, payment_id, attempts, detail, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(p.order_id)
    .bind(p.status.as_str())
    .bind(p.amount_cents)
    .bind(p.payment_id)
    .bind(i64::from(p.attempts))
    .bind(p.detail)
    .bind(now_ms())
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Remembers that a charge for `order_id` may exist at the provider without being recorded
/// here (an answer that never came, or a charge that met a cancellation): a cancelled order
/// with this marker has its charge voided.
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

/// Whether a charge for `order_id` may exist that was never recorded.
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

/// Asks for the order's charge to be voided, if its payment is in one of `from`: true if it
/// was.
pub async fn request_void(
    conn: &mut AnyConnection,
    order_id: &str,
    from: &[PaymentStatus],
) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "UPDATE payments SET status = 'void_pending', updated_at = $2 WHERE order_id = $1 AND status IN ({})",
        jetflow_runtime::db::placeholders(3, from.len())
    );
    // Only generated placeholders are interpolated: no input reaches the SQL text.
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(order_id)
        .bind(now_ms());
    for status in from {
        q = q.bind(status.as_str());
    }
    Ok(q.execute(conn).await?.rows_affected() == 1)
}

/// Orders whose charge waits to be voided, oldest first.
pub async fn void_pending<'c, E>(executor: E, limit: i64) -> Result<Vec<String>, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    sqlx::query(
        "SELECT order_id FROM payments WHERE status = 'void_pending' ORDER BY updated_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(executor)
    .await?
    .iter()
    .map(|r| r.try_get("order_id"))
    .collect()
}

/// Records that the provider voided the order's charge: true if it was waiting for that.
pub async fn mark_voided<'c, E>(executor: E, order_id: &str) -> Result<bool, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    Ok(sqlx::query(
        "UPDATE payments SET status = 'voided', updated_at = $2 WHERE order_id = $1 AND status = 'void_pending'",
    )
    .bind(order_id)
    .bind(now_ms())
    .execute(executor)
    .await?
    .rows_affected()
        == 1)
}
