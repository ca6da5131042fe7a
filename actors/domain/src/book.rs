//! The saga's books: the rows of one table, keyed by order id, that a unit of work reads once
//! for its whole batch, decides every delivery against in memory, and writes back when it
//! commits. One [`Book`] serves the orders ([`crate::order_store::OrderBook`]), the
//! reservations ([`crate::stock_store::ReservationBook`]) and the payments
//! ([`crate::payment_store::PaymentBook`]); what differs is the table's [`Kept`] row.
//!
//! [`load`] reads the rows a batch is about in one statement (locked on PostgreSQL, in order id
//! order, so that two transactions sharing orders, an actor's lanes and replicas, the sweeper,
//! wait for each other instead of deadlocking; SQLite's write transaction holds the whole
//! database). When the transaction commits, the rows it added are inserted in one statement,
//! unless another transaction inserted one since it was read as absent (then the batch lost a
//! race and is applied again, reading that row: [`jetflow_runtime::db::lost_race`]), and the
//! rows it changed are updated in one statement.

use futures::future::BoxFuture;
use jetflow_runtime::db::{self, Conn, Param, Row};
use jetflow_runtime::{Deferred, Lookup, UnitOfWork};

use crate::now_ms;

/// A row of a table kept in a [`Book`]: how it is read, and what of it is written back.
pub(crate) trait Kept: Send + 'static {
    /// The table.
    const TABLE: &'static str;
    /// The columns a read takes, `order_id` first.
    const READ: &'static [&'static str];
    /// The columns a new row is inserted with, `order_id` first.
    const INSERT: &'static [&'static str];
    /// The columns of an update, `order_id` first, and what it sets from them
    /// (`moved.<column>`, and the table's own columns).
    const UPDATE: (&'static [&'static str], &'static str);

    /// The row as read (its `order_id` is read by the book).
    fn read(row: &Row) -> Result<Self, sqlx::Error>
    where
        Self: Sized;

    /// The values of [`Kept::INSERT`] if this transaction created the row.
    fn inserted(&self, order_id: &str, now: i64) -> Option<Vec<Param>>;

    /// The values of [`Kept::UPDATE`] if this transaction changed a row it read.
    fn updated(&self, order_id: &str, now: i64) -> Option<Vec<Param>>;
}

/// [`Kept::UPDATE`] of a row whose status alone moves (its `updated_at` stamped), with
/// [`status_moved`] for its values.
pub(crate) const STATUS_MOVES: (&[&str], &str) = (
    &["order_id", "status", "at"],
    "status = moved.status, updated_at = moved.at",
);

/// The values of a [`STATUS_MOVES`] update.
pub(crate) fn status_moved(order_id: &str, status: &str, now: i64) -> Vec<Param> {
    vec![order_id.into(), status.into(), now.into()]
}

/// The rows of one table that a unit of work read, created and changed, by order id.
#[derive(Debug)]
pub struct Book<R> {
    pub(crate) rows: Lookup<R>,
}

impl<R> Default for Book<R> {
    fn default() -> Self {
        Self {
            rows: Lookup::default(),
        }
    }
}

impl<R: Kept> Deferred for Book<R> {
    fn write(self, mut conn: Conn<'_>) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let now = now_ms();
            let (mut new, mut moved) = (Vec::new(), Vec::new());
            for (order_id, row) in self.rows.iter() {
                new.extend(row.inserted(order_id, now));
                moved.extend(row.updated(order_id, now));
            }
            db::insert_absent(conn.reborrow(), R::TABLE, R::INSERT, &new).await?;
            let (columns, set) = R::UPDATE;
            db::update_from_values(conn, R::TABLE, columns, set, &moved).await
        })
    }
}

/// Reads into the unit of work's [`Book`] of `R` the rows of the orders it has not looked for
/// yet (locking them on PostgreSQL, in order id order): one statement on PostgreSQL, one per
/// 500 orders on SQLite.
pub(crate) async fn load<'a, R: Kept>(
    uow: &mut UnitOfWork,
    order_ids: impl IntoIterator<Item = &'a str>,
) -> Result<(), sqlx::Error> {
    let missing = uow.deferred::<Book<R>>().rows.unread(order_ids);
    if missing.is_empty() {
        return Ok(());
    }
    let rows = db::fetch_locked(uow.conn(), R::TABLE, "order_id", R::READ, &missing).await?;
    let found = rows
        .iter()
        .map(|row| Ok((row.try_get::<String, _>("order_id")?, R::read(row)?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    uow.deferred::<Book<R>>().rows.read(&missing, found);
    Ok(())
}
