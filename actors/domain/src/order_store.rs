//! The order read model: status, reason, amount and history of every order.
//!
//! Events about one order can arrive out of order (they come from three streams through
//! separate consumers), so the status only moves forward: `pending` < `reserved` < `paid` <
//! `confirmed` | `cancelled`, and a terminal status never changes. A transaction reads the
//! orders it is about into its book of orders (locked on PostgreSQL), decides each move against
//! it, and writes the moved orders back when it commits, so concurrent consumers and replicas
//! cannot interleave a read and a write. Fields arrive with whichever event brings them first
//! and are never overwritten with nothing.

use std::collections::HashSet;

use futures::future::BoxFuture;
use jetflow_runtime::db::{self, Conn, Executor, Param, Row, query};
use jetflow_runtime::{Deferred, UnitOfWork};
use jetflow_schemas::Priority;
use serde::Serialize;

use crate::book::{self, Book, Kept};
use crate::now_ms;

/// An order's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Accepted, waiting for stock.
    Pending,
    /// Stock held, waiting for payment.
    Reserved,
    /// Charged.
    Paid,
    /// Done.
    Confirmed,
    /// Cancelled, with a reason.
    Cancelled,
}

impl OrderStatus {
    /// Every status.
    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::Pending,
        OrderStatus::Reserved,
        OrderStatus::Paid,
        OrderStatus::Confirmed,
        OrderStatus::Cancelled,
    ];

    /// The status as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Reserved => "reserved",
            OrderStatus::Paid => "paid",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    /// Parses a stored status.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    fn rank(self) -> u8 {
        match self {
            OrderStatus::Pending => 0,
            OrderStatus::Reserved => 1,
            OrderStatus::Paid => 2,
            OrderStatus::Confirmed | OrderStatus::Cancelled => 3,
        }
    }

    /// Whether the saga is over for this order.
    pub fn is_terminal(self) -> bool {
        self.rank() == 3
    }

    /// Whether an order at `self` may move to `to`: only forward, and never from a terminal
    /// status.
    pub fn can_move_to(self, to: OrderStatus) -> bool {
        !self.is_terminal() && self.rank() < to.rank()
    }
}

/// One entry of an order's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// The status reached.
    pub status: String,
    /// When (Unix milliseconds).
    pub at: i64,
}

/// An order as `GET /orders/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderRecord {
    /// The order id.
    pub order_id: String,
    /// The customer.
    pub customer_id: Option<String>,
    /// The items, as JSON.
    pub items: Option<serde_json::Value>,
    /// `standard` or `express`.
    pub priority: String,
    /// The shipping address, as JSON (orders.created v2).
    pub shipping_address: Option<serde_json::Value>,
    /// The status.
    pub status: String,
    /// Why it was cancelled.
    pub reason: Option<String>,
    /// More about the reason.
    pub detail: Option<String>,
    /// The amount, once stock is reserved.
    pub amount_cents: Option<i64>,
    /// The correlation id of the flow.
    pub correlation_id: Option<String>,
    /// When it was first seen (Unix milliseconds).
    pub created_at: i64,
    /// When it last changed.
    pub updated_at: i64,
    /// Each status with its time, in order.
    pub history: Vec<HistoryEntry>,
}

/// The facts of a newly created order.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOrder {
    /// The order id.
    pub order_id: String,
    /// The customer.
    pub customer_id: String,
    /// The items, as JSON.
    pub items: serde_json::Value,
    /// `standard` or `express`.
    pub priority: Priority,
    /// The shipping address, as JSON.
    pub shipping_address: Option<serde_json::Value>,
    /// The correlation id.
    pub correlation_id: String,
    /// When it was accepted (Unix milliseconds).
    pub at: i64,
}

/// Records a new order as pending, unless it is known already. Returns true if it was new.
/// The gateway calls this before it publishes the order's `orders.created`, so the order
/// handler finds the row there and has nothing to write.
pub async fn insert_pending(conn: Conn<'_>, order: &NewOrder) -> Result<bool, sqlx::Error> {
    // Its `pending` entry is its creation time: no history row needed.
    Ok(insert_pending_many(conn, &[order])
        .await?
        .contains(&order.order_id))
}

/// Records new orders as pending in one statement (per 500 on SQLite; the gateway's accepted
/// orders of one group commit), skipping those known already. Returns the ids inserted.
pub async fn insert_pending_many(
    conn: Conn<'_>,
    orders: &[&NewOrder],
) -> Result<HashSet<String>, sqlx::Error> {
    let rows: Vec<Vec<Param>> = orders
        .iter()
        .map(|order| {
            vec![
                order.order_id.as_str().into(),
                order.customer_id.as_str().into(),
                order.items.to_string().into(),
                order.priority.as_str().into(),
                order
                    .shipping_address
                    .as_ref()
                    .map(|v| v.to_string())
                    .into(),
                "pending".into(),
                order.correlation_id.as_str().into(),
                order.at.into(),
                order.at.into(),
            ]
        })
        .collect();
    db::insert_rows(
        conn,
        "orders",
        &[
            "order_id",
            "customer_id",
            "items",
            "priority",
            "shipping_address",
            "status",
            "correlation_id",
            "created_at",
            "updated_at",
        ],
        &rows,
        "ON CONFLICT (order_id) DO NOTHING RETURNING order_id",
    )
    .await?
    .iter()
    .map(|row| row.try_get::<String, _>("order_id"))
    .collect()
}

/// Records an order from its `orders.created` event: nothing to do if the gateway recorded
/// it; a new pending order otherwise; or, if a later event created a bare record first, the
/// fields only `orders.created` brings. Returns true if the order was new. The order is read
/// through the unit of work's book of orders (one query for a whole batch, see [`load`]).
pub async fn record_created(uow: &mut UnitOfWork, order: &NewOrder) -> Result<bool, sqlx::Error> {
    load(uow, [order.order_id.as_str()]).await?;
    match uow.deferred::<OrderBook>().rows.get(&order.order_id) {
        Some(held) if held.full => Ok(false),
        Some(_) => {
            query(
                "UPDATE orders SET customer_id = COALESCE(customer_id, $2), items = COALESCE(items, $3), \
                 priority = $4, shipping_address = COALESCE(shipping_address, $5), \
                 correlation_id = COALESCE(correlation_id, $6) WHERE order_id = $1",
            )
            .bind(order.order_id.as_str())
            .bind(order.customer_id.as_str())
            .bind(order.items.to_string())
            .bind(order.priority.as_str())
            .bind(order.shipping_address.as_ref().map(|v| v.to_string()))
            .bind(order.correlation_id.as_str())
            .execute(uow.conn())
            .await?;
            if let Some(held) = uow.deferred::<OrderBook>().rows.get_mut(&order.order_id) {
                held.full = true;
            }
            Ok(false)
        }
        None => {
            if insert_pending(uow.conn(), order).await? {
                hold(uow, &order.order_id, OrderStatus::Pending, true);
                Ok(true)
            } else {
                // Created by another transaction since it was read: read it again (locked).
                reload(uow, &order.order_id).await?;
                Box::pin(record_created(uow, order)).await
            }
        }
    }
}

/// Removes an order that was recorded but never accepted (its `orders.created` could not be
/// stored), as long as nothing happened to it since. Returns true if it was removed.
pub async fn withdraw(mut conn: Conn<'_>, order_id: &str) -> Result<bool, sqlx::Error> {
    let removed = query("DELETE FROM orders WHERE order_id = $1 AND status = 'pending'")
        .bind(order_id)
        .execute(conn.reborrow())
        .await?
        .rows_affected()
        == 1;
    if removed {
        // Nothing but `pending` happened to it, so it has no history rows; old databases
        // kept one.
        query("DELETE FROM order_history WHERE order_id = $1")
            .bind(order_id)
            .execute(conn.reborrow())
            .await?;
    }
    Ok(removed)
}

/// History entries gathered in a unit of work and inserted together when it commits (one
/// statement, per 500 entries on SQLite, however many orders its batch moved).
#[derive(Debug, Default)]
pub struct History(Vec<(String, OrderStatus, i64)>);

impl History {
    fn add(&mut self, order_id: &str, status: OrderStatus, at: i64) {
        self.0.push((order_id.to_string(), status, at));
    }
}

impl Deferred for History {
    fn write(self, conn: Conn<'_>) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let rows: Vec<Vec<Param>> = self
                .0
                .into_iter()
                .map(|(order_id, status, at)| {
                    vec![order_id.into(), status.as_str().into(), at.into()]
                })
                .collect();
            db::insert_rows(
                conn,
                "order_history",
                &["order_id", "status", "at"],
                &rows,
                "ON CONFLICT (order_id, status) DO NOTHING",
            )
            .await?;
            Ok(())
        })
    }
}

/// What an attempted status change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advance {
    /// The order moved to the new status.
    Applied,
    /// The order was already at or past it; nothing changed.
    Stale(OrderStatus),
}

/// Extra facts that go with a status change.
#[derive(Debug, Clone, Default)]
pub struct Change<'a> {
    /// Cancellation reason.
    pub reason: Option<&'a str>,
    /// Cancellation detail.
    pub detail: Option<&'a str>,
    /// The amount.
    pub amount_cents: Option<i64>,
    /// The correlation id (for an order first seen through a later event).
    pub correlation_id: Option<&'a str>,
}

/// The orders a unit of work reads, moves and writes back (a [`Book`]).
///
/// [`load`] reads the orders a batch is about in one query (locked on PostgreSQL, in order
/// id order). Each status change is then decided against the book, in delivery order, and the
/// orders that moved are written back in one statement when the transaction commits, however
/// many of the batch's events moved them. An order the book does not hold is read (and
/// locked) when it is first asked about. Orders are created by their own statements (the
/// gateway's, or [`advance`] for one first heard of through a later event), never by the book.
pub(crate) type OrderBook = Book<Held>;

/// An order in the book: its status (as moved), and what is to be written back.
#[derive(Debug)]
pub(crate) struct Held {
    status: OrderStatus,
    /// Recorded with everything `orders.created` brings.
    full: bool,
    moved: Option<Moved>,
}

/// The fields a status change writes; `None` keeps what the row has.
#[derive(Debug, Default)]
struct Moved {
    reason: Option<String>,
    detail: Option<String>,
    amount_cents: Option<i64>,
    at: i64,
}

impl Kept for Held {
    const TABLE: &'static str = "orders";
    const READ: &'static [&'static str] = &["order_id", "status", "customer_id"];
    const INSERT: &'static [&'static str] = &[];
    const UPDATE: (&'static [&'static str], &'static str) = (
        &[
            "order_id",
            "status",
            "reason",
            "detail",
            "amount_cents",
            "at",
        ],
        "status = moved.status, reason = COALESCE(moved.reason, orders.reason), \
         detail = COALESCE(moved.detail, orders.detail), \
         amount_cents = COALESCE(moved.amount_cents, orders.amount_cents), \
         updated_at = moved.at",
    );

    fn read(row: &Row) -> Result<Self, sqlx::Error> {
        let status: String = row.try_get("status")?;
        let customer_id: Option<String> = row.try_get("customer_id")?;
        Ok(Held {
            // A status this version does not know is treated as finished: never moved.
            status: OrderStatus::parse(&status).unwrap_or(OrderStatus::Cancelled),
            full: customer_id.is_some(),
            moved: None,
        })
    }

    fn inserted(&self, _: &str, _: i64) -> Option<Vec<Param>> {
        None
    }

    fn updated(&self, order_id: &str, _: i64) -> Option<Vec<Param>> {
        self.moved.as_ref().map(|m| {
            vec![
                order_id.into(),
                self.status.as_str().into(),
                m.reason.as_deref().into(),
                m.detail.as_deref().into(),
                m.amount_cents.into(),
                m.at.into(),
            ]
        })
    }
}

fn hold(uow: &mut UnitOfWork, order_id: &str, status: OrderStatus, full: bool) {
    uow.deferred::<OrderBook>().rows.insert(
        order_id,
        Held {
            status,
            full,
            moved: None,
        },
    );
}

/// Reads into the unit of work's book the orders it does not hold yet (locking them on
/// PostgreSQL, in order id order): one statement on PostgreSQL, one per 500 orders on SQLite.
pub async fn load<'a>(
    uow: &mut UnitOfWork,
    order_ids: impl IntoIterator<Item = &'a str>,
) -> Result<(), sqlx::Error> {
    book::load::<Held>(uow, order_ids).await
}

/// Reads an order the book took for absent, once another transaction created it.
async fn reload(uow: &mut UnitOfWork, order_id: &str) -> Result<(), sqlx::Error> {
    uow.deferred::<OrderBook>().rows.forget_absent(order_id);
    load(uow, [order_id]).await
}

/// Moves an order forward to `to` if it is behind it (creating a minimal record if no event
/// about the order was seen yet).
pub async fn advance(
    uow: &mut UnitOfWork,
    order_id: &str,
    to: OrderStatus,
    change: &Change<'_>,
) -> Result<Advance, sqlx::Error> {
    advance_via(uow, order_id, None, to, change).await
}

/// Moves an order forward to `to` through `via` in one step (both enter the history), if it
/// is behind `via`; an order already at `via` moves on to `to`. The change is decided against
/// the unit of work's book of orders and written, with the history entries, when `uow`
/// commits.
pub async fn advance_via(
    uow: &mut UnitOfWork,
    order_id: &str,
    via: Option<OrderStatus>,
    to: OrderStatus,
    change: &Change<'_>,
) -> Result<Advance, sqlx::Error> {
    let now = now_ms();
    let steps: Vec<OrderStatus> = via.into_iter().chain([to]).collect();
    load(uow, [order_id]).await?;
    if let Some(held) = uow.deferred::<OrderBook>().rows.get_mut(order_id) {
        if !held.status.can_move_to(to) {
            return Ok(Advance::Stale(held.status));
        }
        held.status = to;
        let moved = held.moved.get_or_insert_with(Moved::default);
        if let Some(reason) = change.reason {
            moved.reason = Some(reason.to_string());
        }
        if let Some(detail) = change.detail {
            moved.detail = Some(detail.to_string());
        }
        if change.amount_cents.is_some() {
            moved.amount_cents = change.amount_cents;
        }
        moved.at = now;
        record_history(uow, order_id, &steps, now);
        return Ok(Advance::Applied);
    }
    // First news of this order: record it at the new status.
    let inserted = query(
        "INSERT INTO orders (order_id, status, reason, detail, amount_cents, correlation_id, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(to.as_str())
    .bind(change.reason)
    .bind(change.detail)
    .bind(change.amount_cents)
    .bind(change.correlation_id)
    .bind(now)
    .execute(uow.conn())
    .await?
    .rows_affected()
        == 1;
    if inserted {
        hold(uow, order_id, to, false);
        record_history(uow, order_id, &steps, now);
        Ok(Advance::Applied)
    } else {
        // Created by another transaction since it was read: read it again (locked).
        reload(uow, order_id).await?;
        Box::pin(advance_via(uow, order_id, via, to, change)).await
    }
}

fn record_history(uow: &mut UnitOfWork, order_id: &str, steps: &[OrderStatus], at: i64) {
    let history = uow.deferred::<History>();
    for status in steps {
        history.add(order_id, *status, at);
    }
}

/// One order with its history.
pub async fn get<'c, E>(executor: E, order_id: &str) -> Result<Option<OrderRecord>, sqlx::Error>
where
    E: Executor<'c> + Copy,
{
    let Some(row) = query(
        "SELECT order_id, customer_id, items, priority, shipping_address, status, reason, detail, amount_cents, \
         correlation_id, created_at, updated_at FROM orders WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(executor)
    .await?
    else {
        return Ok(None);
    };
    let history =
        query("SELECT status, at FROM order_history WHERE order_id = $1 ORDER BY at, status")
            .bind(order_id)
            .fetch_all(executor)
            .await?
            .iter()
            .map(|r| {
                Ok(HistoryEntry {
                    status: r.try_get("status")?,
                    at: r.try_get("at")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let json = |name: &str| -> Result<Option<serde_json::Value>, sqlx::Error> {
        let text: Option<String> = row.try_get(name)?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    };
    let mut history = history;
    // Every order starts pending when it is created; that entry has no row of its own.
    if !history
        .iter()
        .any(|h| h.status == OrderStatus::Pending.as_str())
    {
        history.push(HistoryEntry {
            status: OrderStatus::Pending.as_str().to_string(),
            at: row.try_get("created_at")?,
        });
    }
    history.sort_by_key(|h| {
        (
            h.at,
            OrderStatus::parse(&h.status).map(|s| s.rank()).unwrap_or(9),
        )
    });
    Ok(Some(OrderRecord {
        order_id: row.try_get("order_id")?,
        customer_id: row.try_get("customer_id")?,
        items: json("items")?,
        priority: row.try_get("priority")?,
        shipping_address: json("shipping_address")?,
        status: row.try_get("status")?,
        reason: row.try_get("reason")?,
        detail: row.try_get("detail")?,
        amount_cents: row.try_get("amount_cents")?,
        correlation_id: row.try_get("correlation_id")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        history,
    }))
}

/// Orders per status.
pub async fn count_by_status<'c, E>(executor: E) -> Result<Vec<(String, i64)>, sqlx::Error>
where
    E: Executor<'c>,
{
    query("SELECT status, COUNT(*) AS n FROM orders GROUP BY status")
        .fetch_all(executor)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
        .collect()
}

/// Orders not finished whose last change is older than `before_ms`, oldest first.
pub async fn stale<'c, E>(
    executor: E,
    before_ms: i64,
    limit: i64,
) -> Result<Vec<(String, Option<String>)>, sqlx::Error>
where
    E: Executor<'c>,
{
    query(
        "SELECT order_id, priority FROM orders WHERE status IN ('pending', 'reserved', 'paid') AND updated_at < $1 \
         ORDER BY updated_at LIMIT $2",
    )
    .bind(before_ms)
    .bind(limit)
    .fetch_all(executor)
    .await?
    .iter()
    .map(|r| Ok((r.try_get("order_id")?, r.try_get("priority")?)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_only_move_forward() {
        use OrderStatus::*;
        assert!(Pending.can_move_to(Paid) && Reserved.can_move_to(Paid));
        assert!(!Paid.can_move_to(Paid) && !Confirmed.can_move_to(Paid));
        assert!(Paid.can_move_to(Cancelled) && !Confirmed.can_move_to(Cancelled));
        assert!(!Cancelled.can_move_to(Confirmed) && !Reserved.can_move_to(Pending));
        assert!(OrderStatus::ALL.iter().all(|s| !s.can_move_to(Pending)));
    }
}
