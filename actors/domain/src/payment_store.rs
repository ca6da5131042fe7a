//! Payments in the database: one row per order, written with the event it produces, and a
//! marker for charge attempts whose outcome is unknown.
//!
//! The row is the serialisation point between charging and cancelling: the charge records
//! `succeeded` and the cancellation records a `cancelled` tombstone, each only if the order
//! has no row, so whichever comes second sees the first and knows a charge must be voided. A
//! batch reads its rows once (locked) into a book and writes them at commit.

use std::collections::HashMap;

use jetflow_runtime::UnitOfWork;
use jetflow_runtime::db::{self, Conn, Executor, Param, Row, query};

use crate::book::{self, Book, Kept};
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
    E: Executor<'c>,
{
    let row = query("SELECT status, amount_cents, payment_id FROM payments WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(executor)
        .await?;
    row.as_ref().map(record_of).transpose()
}

fn record_of(r: &jetflow_runtime::db::Row) -> Result<PaymentRecord, sqlx::Error> {
    let status: String = r.try_get("status")?;
    Ok(PaymentRecord {
        status: PaymentStatus::parse(&status).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown payment status {status:?}").into())
        })?,
        amount_cents: r.try_get("amount_cents")?,
        payment_id: r.try_get("payment_id")?,
    })
}

/// The payments recorded for these orders, by order id (one statement; per 500 orders on
/// SQLite).
pub async fn get_many(
    conn: Conn<'_>,
    order_ids: &[&str],
) -> Result<HashMap<String, PaymentRecord>, sqlx::Error> {
    let rows = db::fetch_in(conn, order_ids, |list| {
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

/// The payment rows a transaction is about, read once and decided in memory.
///
/// [`load`] reads the rows of a batch's orders in one query (on PostgreSQL with `FOR UPDATE`,
/// in order id order, so two batches, lanes or replicas, wait for each other instead of
/// deadlocking, and the voider waits for the batch). A charge's outcome and a cancellation's
/// tombstone are recorded only for an order without a row ([`record`]), so whichever comes
/// second sees the first and knows a charge must be voided; [`request_void`] moves a row to
/// `void_pending`. When the transaction commits, the new rows are inserted in one statement
/// and the moved ones updated in another. A row another transaction inserted since it was read
/// as absent makes the transaction a conflict ([`jetflow_runtime::db::lost_race`]), applied
/// again, reading that row.
pub(crate) type PaymentBook = Book<Booked>;

/// A payment row in the book.
#[derive(Debug)]
pub(crate) struct Booked {
    status: PaymentStatus,
    /// Set for a row this transaction inserts at commit.
    new: Option<NewRow>,
    /// An existing row whose status this transaction changed: updated at commit.
    moved: bool,
}

#[derive(Debug)]
struct NewRow {
    amount_cents: i64,
    payment_id: Option<String>,
    attempts: i64,
    detail: Option<String>,
}

impl Kept for Booked {
    const TABLE: &'static str = "payments";
    const READ: &'static [&'static str] = &["order_id", "status"];
    const INSERT: &'static [&'static str] = &[
        "order_id",
        "status",
        "amount_cents",
        "payment_id",
        "attempts",
        "detail",
        "updated_at",
    ];
    const UPDATE: (&'static [&'static str], &'static str) = book::STATUS_MOVES;

    fn read(row: &Row) -> Result<Self, sqlx::Error> {
        let status: String = row.try_get("status")?;
        let status = PaymentStatus::parse(&status).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown payment status {status:?}").into())
        })?;
        Ok(Booked {
            status,
            new: None,
            moved: false,
        })
    }

    fn inserted(&self, order_id: &str, now: i64) -> Option<Vec<Param>> {
        self.new.as_ref().map(|n| {
            vec![
                order_id.into(),
                self.status.as_str().into(),
                n.amount_cents.into(),
                n.payment_id.as_deref().into(),
                n.attempts.into(),
                n.detail.as_deref().into(),
                now.into(),
            ]
        })
    }

    fn updated(&self, order_id: &str, now: i64) -> Option<Vec<Param>> {
        self.moved
            .then(|| book::status_moved(order_id, self.status.as_str(), now))
    }
}

/// Reads into the unit of work's book the payment rows of the orders it has not looked for
/// yet (locking them on PostgreSQL, in order id order): one statement on PostgreSQL, one per
/// 500 orders on SQLite.
pub async fn load<'a>(
    uow: &mut UnitOfWork,
    order_ids: impl IntoIterator<Item = &'a str>,
) -> Result<(), sqlx::Error> {
    book::load::<Booked>(uow, order_ids).await
}

/// Records an order's payment outcome (written when the transaction commits); false if one
/// was recorded already.
pub async fn record(uow: &mut UnitOfWork, p: &NewPayment<'_>) -> Result<bool, sqlx::Error> {
    load(uow, [p.order_id]).await?;
    let book = uow.deferred::<PaymentBook>();
    if book.rows.get(p.order_id).is_some() {
        return Ok(false);
    }
    book.rows.insert(
        p.order_id,
        Booked {
            status: p.status,
            new: Some(NewRow {
                amount_cents: p.amount_cents,
                payment_id: p.payment_id.map(str::to_string),
                attempts: i64::from(p.attempts),
                detail: p.detail.map(str::to_string),
            }),
            moved: false,
        },
    );
    Ok(true)
}

/// Remembers that a charge for `order_id` may exist at the provider without being recorded
/// here (an answer that never came, or a charge that met a cancellation): a cancelled order
/// with this marker has its charge voided.
pub async fn mark_uncertain<'c, E>(executor: E, order_id: &str) -> Result<(), sqlx::Error>
where
    E: Executor<'c>,
{
    query(
        "INSERT INTO payment_attempts (order_id, uncertain_at) VALUES ($1, $2) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(now_ms())
    .execute(executor)
    .await?;
    Ok(())
}

/// Records, before the provider is called, that these orders' charges are about to be
/// attempted (one statement): whatever becomes of the transaction that would record the
/// answer (a failed commit, a panic, a last delivery dead-lettered), a cancellation then
/// knows a charge may exist and has it voided.
pub async fn mark_attempted(conn: Conn<'_>, order_ids: &[&str]) -> Result<(), sqlx::Error> {
    if order_ids.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let rows: Vec<Vec<db::Param>> = order_ids
        .iter()
        .map(|id| vec![db::Param::from(*id), db::Param::Int(Some(now))])
        .collect();
    db::insert_rows(
        conn,
        "payment_attempts",
        &["order_id", "uncertain_at"],
        &rows,
        "ON CONFLICT (order_id) DO NOTHING",
    )
    .await?;
    Ok(())
}

/// Forgets charge attempts older than `retention` (housekeeping): by then every order they
/// belong to has long finished, confirmed or cancelled and voided.
pub async fn purge_attempts(
    db: &jetflow_runtime::Database,
    retention: std::time::Duration,
) -> Result<u64, sqlx::Error> {
    let before = now_ms().saturating_sub(db::millis(retention));
    db::delete_older_than(db, "payment_attempts", "order_id", "uncertain_at", before).await
}

/// Whether a charge for `order_id` may exist that was never recorded.
pub async fn was_uncertain<'c, E>(executor: E, order_id: &str) -> Result<bool, sqlx::Error>
where
    E: Executor<'c>,
{
    let row = query("SELECT order_id FROM payment_attempts WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(executor)
        .await?;
    Ok(row.is_some())
}

/// Asks for the order's charge to be voided, if its payment is in one of `from` (as this
/// transaction sees it): true if it was.
pub async fn request_void(
    uow: &mut UnitOfWork,
    order_id: &str,
    from: &[PaymentStatus],
) -> Result<bool, sqlx::Error> {
    load(uow, [order_id]).await?;
    match uow.deferred::<PaymentBook>().rows.get_mut(order_id) {
        Some(booked) if from.contains(&booked.status) => {
            booked.status = PaymentStatus::VoidPending;
            booked.moved = booked.new.is_none();
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Orders whose charge waits to be voided, oldest first.
pub async fn void_pending<'c, E>(executor: E, limit: i64) -> Result<Vec<String>, sqlx::Error>
where
    E: Executor<'c>,
{
    query(
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
    E: Executor<'c>,
{
    Ok(query(
        "UPDATE payments SET status = 'voided', updated_at = $2 WHERE order_id = $1 AND status = 'void_pending'",
    )
    .bind(order_id)
    .bind(now_ms())
    .execute(executor)
    .await?
    .rows_affected()
        == 1)
}
