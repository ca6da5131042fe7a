//! Stock and reservations in the database.
//!
//! A batch's transaction first reads every product it will move into a [`StockLedger`]
//! ([`load`]): on PostgreSQL with `FOR UPDATE`, in product order, so two batches (two lanes,
//! two replicas) sharing products wait for each other instead of deadlocking, and no other
//! transaction changes those rows until it commits; SQLite's write transaction holds the
//! whole database. A reservation takes every item of an order or none, decided against the
//! ledger (`available >= quantity` for every item), and every move changes the ledger; the
//! ledger is written back when the transaction commits, in one statement (per 500 products on SQLite),
//! each product moved updated once however many orders of the batch share it. Neither
//! concurrency nor replicas can oversell, and every move keeps `available + reserved + sold`
//! constant.
//!
//! Whatever happens to an order starts from its reservation row, read with the batch's other
//! rows into a reservation book (locked on PostgreSQL, before the products): a
//! reservation or a cancellation writes the row if the order has none ([`reserve`],
//! [`tombstone`]), so a late `orders.created` finds a cancelled order's tombstone; a sale or
//! release moves it out of `reserved`. The new rows are inserted, and the moved ones updated,
//! in one statement each at commit; a row another transaction wrote meanwhile makes the
//! transaction a conflict, applied again (see reservation book). The row also keeps the
//! items it holds (JSON), so a sale or release needs no other read.

use std::collections::{BTreeMap, BTreeSet};

use futures::future::BoxFuture;
use jetflow_runtime::db::{self, Conn, Executor, Param, Row, query};
use jetflow_runtime::{Deferred, Lookup, UnitOfWork};
use serde::Serialize;

use crate::book::{self, Book, Kept};
use crate::now_ms;

/// One product's stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Product {
    /// The product id.
    pub product_id: String,
    /// Units that can be reserved.
    pub available: i64,
    /// Units held by orders not yet confirmed.
    pub reserved: i64,
    /// Units of confirmed orders.
    pub sold: i64,
    /// Unit price in cents.
    pub price_cents: i64,
}

fn product_of(row: &jetflow_runtime::db::Row) -> Result<Product, sqlx::Error> {
    Ok(Product {
        product_id: row.try_get("product_id")?,
        available: row.try_get("available")?,
        reserved: row.try_get("reserved")?,
        sold: row.try_get("sold")?,
        price_cents: row.try_get("price_cents")?,
    })
}

/// A product's stock.
pub async fn get<'c, E>(executor: E, product_id: &str) -> Result<Option<Product>, sqlx::Error>
where
    E: Executor<'c>,
{
    let row = query(
        "SELECT product_id, available, reserved, sold, price_cents FROM products WHERE product_id = $1",
    )
    .bind(product_id)
    .fetch_optional(executor)
    .await?;
    row.as_ref().map(product_of).transpose()
}

/// Sets a product's available stock and price (creating it), keeping what is reserved and
/// sold.
pub async fn put(
    mut conn: Conn<'_>,
    product_id: &str,
    available: i64,
    price_cents: i64,
) -> Result<Product, sqlx::Error> {
    query(
        "INSERT INTO products (product_id, available, reserved, sold, price_cents, updated_at) \
         VALUES ($1, $2, 0, 0, $3, $4) \
         ON CONFLICT (product_id) DO UPDATE SET available = excluded.available, \
         price_cents = excluded.price_cents, updated_at = excluded.updated_at",
    )
    .bind(product_id)
    .bind(available)
    .bind(price_cents)
    .bind(now_ms())
    .execute(conn.reborrow())
    .await?;
    get(conn.reborrow(), product_id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)
}

/// What a reservation attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// Every item is held; prices as of now.
    Reserved {
        /// Product, quantity, unit price.
        items: Vec<(String, i64, i64)>,
        /// The order's amount.
        amount_cents: i64,
    },
    /// A product has too little stock.
    Insufficient {
        /// The product.
        product_id: String,
        /// What the order asked for.
        requested: i64,
        /// What was available.
        available: i64,
    },
    /// A product does not exist.
    UnknownProduct {
        /// The product.
        product_id: String,
    },
}

/// The status of the order's reservation row, if the stock handler has seen the order, as
/// this transaction sees it (read into its reservation book).
pub async fn reservation_status(
    uow: &mut UnitOfWork,
    order_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    load_reservations(uow, [order_id]).await?;
    Ok(uow
        .deferred::<ReservationBook>()
        .rows
        .get(order_id)
        .map(|r| r.status.clone()))
}

/// The reservation rows a transaction is about, read once and decided in memory.
///
/// [`load_reservations`] reads the rows of a batch's orders in one query (on PostgreSQL with
/// `FOR UPDATE`, in order id order, before any product is locked). Whatever happens to an
/// order starts from its row: a reservation or a cancellation writes it if the order has
/// none ([`reserve`], [`tombstone`]); a sale or a release moves it out of `reserved`
/// ([`sell`], [`release`]). When the transaction commits, the new rows are inserted in one
/// statement and the moved ones updated in another. A row another transaction inserted
/// since it was read as absent (a reservation and a cancellation of the same order racing on
/// two replicas) makes the insert find it: the transaction is then a conflict
/// ([`jetflow_runtime::db::lost_race`]) and is applied again, reading the other's row, so a
/// cancelled order is never left holding stock and a reserved one is always released.
pub(crate) type ReservationBook = Book<Booked>;

/// A reservation row in the book.
#[derive(Debug)]
pub(crate) struct Booked {
    status: String,
    /// The items held (JSON), `None` for a row from before the items column.
    items: Option<String>,
    /// Set for a row this transaction writes: inserted at commit.
    new: Option<NewRow>,
    /// An existing row whose status this transaction changed: updated at commit.
    moved: bool,
}

#[derive(Debug)]
struct NewRow {
    lane: String,
    amount_cents: Option<i64>,
}

impl Book<Booked> {
    fn insert(&mut self, order_id: &str, status: &str, lane: &str, held: Option<(i64, String)>) {
        let (amount_cents, items) = held.unzip();
        self.rows.insert(
            order_id,
            Booked {
                status: status.to_string(),
                items,
                new: Some(NewRow {
                    lane: lane.to_string(),
                    amount_cents,
                }),
                moved: false,
            },
        );
    }
}

impl Kept for Booked {
    const TABLE: &'static str = "reservations";
    const READ: &'static [&'static str] = &["order_id", "status", "items"];
    const INSERT: &'static [&'static str] = &[
        "order_id",
        "status",
        "lane",
        "amount_cents",
        "items",
        "updated_at",
    ];
    const UPDATE: (&'static [&'static str], &'static str) = book::STATUS_MOVES;

    fn read(row: &Row) -> Result<Self, sqlx::Error> {
        Ok(Booked {
            status: row.try_get("status")?,
            items: row.try_get("items")?,
            new: None,
            moved: false,
        })
    }

    fn inserted(&self, order_id: &str, now: i64) -> Option<Vec<Param>> {
        self.new.as_ref().map(|n| {
            vec![
                order_id.into(),
                self.status.as_str().into(),
                n.lane.as_str().into(),
                n.amount_cents.into(),
                self.items.as_deref().into(),
                now.into(),
            ]
        })
    }

    fn updated(&self, order_id: &str, now: i64) -> Option<Vec<Param>> {
        self.moved
            .then(|| book::status_moved(order_id, self.status.as_str(), now))
    }
}

/// Reads into the unit of work's book the reservation rows of the orders it has not looked
/// for yet (locking them on PostgreSQL, in order id order): one statement on PostgreSQL, one
/// per 500 orders on SQLite.
pub async fn load_reservations<'a>(
    uow: &mut UnitOfWork,
    order_ids: impl IntoIterator<Item = &'a str>,
) -> Result<(), sqlx::Error> {
    book::load::<Booked>(uow, order_ids).await
}

/// Records that the order was cancelled before any reservation: true if it was (nothing is
/// held; the row is written when the transaction commits), false if the order has a
/// reservation row already.
pub async fn tombstone(
    uow: &mut UnitOfWork,
    order_id: &str,
    lane: &str,
) -> Result<bool, sqlx::Error> {
    load_reservations(uow, [order_id]).await?;
    let book = uow.deferred::<ReservationBook>();
    if book.rows.get(order_id).is_some() {
        return Ok(false);
    }
    book.insert(order_id, "cancelled", lane, None);
    Ok(true)
}

/// Sums quantities per product, in product order.
pub fn merge_items<'a>(items: impl IntoIterator<Item = (&'a str, i64)>) -> BTreeMap<String, i64> {
    let mut merged = BTreeMap::new();
    for (product, quantity) in items {
        *merged.entry(product.to_string()).or_insert(0) += quantity;
    }
    merged
}

/// Reserves every item of a new order or none, and records the outcome in the order's
/// reservation row; `None` if the order was handled before (another copy of
/// `orders.created`, or a cancellation that came first: its row exists). `items` must be
/// merged. The decision is made against the unit of work's [`StockLedger`] (read now if it
/// does not hold a product yet), which takes the stock only once the row is written.
pub async fn reserve(
    uow: &mut UnitOfWork,
    order_id: &str,
    lane: &str,
    items: &BTreeMap<String, i64>,
) -> Result<Option<Reservation>, sqlx::Error> {
    load_reservations(uow, [order_id]).await?;
    if uow
        .deferred::<ReservationBook>()
        .rows
        .get(order_id)
        .is_some()
    {
        return Ok(None);
    }
    load(uow, items.keys()).await?;
    let ledger = uow.deferred::<StockLedger>();
    // An unknown product is the reason even if another item is short.
    let refused = if let Some(unknown) = items.keys().find(|p| ledger.products.get(p).is_none()) {
        Some(Reservation::UnknownProduct {
            product_id: unknown.clone(),
        })
    } else {
        items.iter().find_map(|(product_id, quantity)| {
            let available = ledger.products.get(product_id).map_or(0, |s| s.available());
            (available < *quantity).then(|| Reservation::Insufficient {
                product_id: product_id.clone(),
                requested: *quantity,
                available,
            })
        })
    };
    if let Some(refused) = refused {
        uow.deferred::<ReservationBook>()
            .insert(order_id, "rejected", lane, None);
        return Ok(Some(refused));
    }
    let priced: Vec<(String, i64, i64)> = items
        .iter()
        .map(|(product_id, quantity)| {
            let price = ledger.products.get(product_id).map_or(0, |s| s.price_cents);
            (product_id.clone(), *quantity, price)
        })
        .collect();
    let amount_cents = priced
        .iter()
        .map(|(_, q, p)| q.saturating_mul(*p))
        .fold(0i64, i64::saturating_add);
    let held = serde_json::to_string(&priced).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    uow.deferred::<ReservationBook>().insert(
        order_id,
        "reserved",
        lane,
        Some((amount_cents, held)),
    );
    let ledger = uow.deferred::<StockLedger>();
    for (product_id, quantity) in items {
        if let Some(stock) = ledger.products.get_mut(product_id) {
            stock.moved.available -= quantity;
            stock.moved.reserved += quantity;
        }
    }
    uow.deferred::<HeldItems>().0.extend(
        priced
            .iter()
            .map(|(p, q, c)| (order_id.to_string(), p.clone(), *q, *c)),
    );
    Ok(Some(Reservation::Reserved {
        items: priced,
        amount_cents,
    }))
}

/// The products held by these orders' reservations (read into the reservation book).
pub async fn products_of_orders(
    uow: &mut UnitOfWork,
    order_ids: &[&str],
) -> Result<BTreeSet<String>, sqlx::Error> {
    load_reservations(uow, order_ids.iter().copied()).await?;
    let reserved: Vec<(String, Option<String>)> = {
        let book = uow.deferred::<ReservationBook>();
        order_ids
            .iter()
            .filter_map(|id| book.rows.get(id).map(|b| (id, b)))
            .filter(|(_, b)| b.status == "reserved")
            .map(|(id, b)| ((*id).to_string(), b.items.clone()))
            .collect()
    };
    let mut products = BTreeSet::new();
    for (order_id, items) in reserved {
        let items = held_items(uow.conn(), &order_id, items).await?;
        products.extend(items.into_iter().map(|(product_id, _)| product_id));
    }
    Ok(products)
}

/// The stock of the products a batch moves: read once at the start of its transaction (and
/// on PostgreSQL locked, in product order, so that transactions sharing products wait for
/// each other instead of deadlocking; SQLite's write transaction holds the whole database),
/// moved in memory by each delivery, and written back in one statement (per 500 products on SQLite)
/// when the transaction commits. However many orders of a batch share a product, its row
/// is updated once.
#[derive(Debug, Default)]
pub struct StockLedger {
    products: Lookup<Stock>,
}

/// One product in the ledger: as read, and how far it moved since.
#[derive(Debug)]
struct Stock {
    available: i64,
    price_cents: i64,
    moved: Moved,
}

impl Stock {
    fn available(&self) -> i64 {
        self.available + self.moved.available
    }
}

/// Units moved between a product's columns.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Moved {
    available: i64,
    reserved: i64,
    sold: i64,
}

impl Deferred for StockLedger {
    fn write(self, conn: Conn<'_>) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let now = now_ms();
            let moved: Vec<Vec<Param>> = self
                .products
                .iter()
                .filter(|(_, stock)| stock.moved != Moved::default())
                .map(|(product_id, stock)| {
                    vec![
                        product_id.as_str().into(),
                        stock.moved.available.into(),
                        stock.moved.reserved.into(),
                        stock.moved.sold.into(),
                        now.into(),
                    ]
                })
                .collect();
            db::update_from_values(
                conn,
                "products",
                &["product_id", "available", "reserved", "sold", "at"],
                "available = products.available + moved.available, \
                 reserved = products.reserved + moved.reserved, \
                 sold = products.sold + moved.sold, updated_at = moved.at",
                &moved,
            )
            .await
        })
    }
}

/// The items of the reservations a batch made, also written to `reservation_items` (one
/// statement; per 500 items on SQLite), where the version before the items were kept on the
/// reservation row looks for them: replicas of both versions run side by side during a
/// rolling upgrade, and either can sell or release what the other reserved.
#[derive(Debug, Default)]
struct HeldItems(Vec<(String, String, i64, i64)>);

impl Deferred for HeldItems {
    fn write(self, conn: Conn<'_>) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let rows: Vec<Vec<Param>> = self
                .0
                .into_iter()
                .map(|(order_id, product_id, quantity, price)| {
                    vec![
                        order_id.into(),
                        product_id.into(),
                        quantity.into(),
                        price.into(),
                    ]
                })
                .collect();
            db::insert_rows(
                conn,
                "reservation_items",
                &["order_id", "product_id", "quantity", "unit_price_cents"],
                &rows,
                "",
            )
            .await?;
            Ok(())
        })
    }
}

/// Reads into the unit of work's [`StockLedger`] (locking them on PostgreSQL, in product
/// order) the products it does not hold yet.
pub async fn load<'a>(
    uow: &mut UnitOfWork,
    products: impl IntoIterator<Item = &'a String>,
) -> Result<(), sqlx::Error> {
    let missing = uow
        .deferred::<StockLedger>()
        .products
        .unread(products.into_iter().map(String::as_str));
    if missing.is_empty() {
        return Ok(());
    }
    let rows = db::fetch_locked(
        uow.conn(),
        "products",
        "product_id",
        &["product_id", "available", "price_cents"],
        &missing,
    )
    .await?;
    let mut found = Vec::with_capacity(rows.len());
    for row in rows {
        let product_id: String = row.try_get("product_id")?;
        let stock = Stock {
            available: row.try_get("available")?,
            price_cents: row.try_get("price_cents")?,
            moved: Moved::default(),
        };
        found.push((product_id, stock));
    }
    uow.deferred::<StockLedger>().products.read(&missing, found);
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Move {
    /// reserved → available
    Release,
    /// reserved → sold
    Sell,
}

/// The items held for an order, in product order, from its reservation row's `items`
/// (`None` for a reservation made before they were kept there: then from
/// `reservation_items`).
async fn held_items(
    conn: Conn<'_>,
    order_id: &str,
    items: Option<String>,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    if let Some(items) = items {
        let priced: Vec<(String, i64, i64)> =
            serde_json::from_str(&items).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        return Ok(priced.into_iter().map(|(p, q, _)| (p, q)).collect());
    }
    let rows = query(
        "SELECT product_id, quantity FROM reservation_items WHERE order_id = $1 ORDER BY product_id",
    )
    .bind(order_id)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("product_id")?, r.try_get("quantity")?)))
        .collect()
}

/// Returns a reserved order's stock; `None` unless the order was `reserved`.
pub async fn release(
    uow: &mut UnitOfWork,
    order_id: &str,
) -> Result<Option<Vec<(String, i64)>>, sqlx::Error> {
    finish(uow, order_id, Move::Release, "released").await
}

/// Turns a reserved order's stock into sold stock; `None` unless the order was `reserved`.
pub async fn sell(
    uow: &mut UnitOfWork,
    order_id: &str,
) -> Result<Option<Vec<(String, i64)>>, sqlx::Error> {
    finish(uow, order_id, Move::Sell, "sold").await
}

async fn finish(
    uow: &mut UnitOfWork,
    order_id: &str,
    how: Move,
    to: &str,
) -> Result<Option<Vec<(String, i64)>>, sqlx::Error> {
    // The row was read locked: of two concurrent finishes, the second reads it once the
    // first committed, no longer `reserved`.
    load_reservations(uow, [order_id]).await?;
    let held = match uow.deferred::<ReservationBook>().rows.get_mut(order_id) {
        Some(booked) if booked.status == "reserved" => {
            booked.status = to.to_string();
            booked.moved = booked.new.is_none();
            booked.items.clone()
        }
        _ => return Ok(None),
    };
    let items = held_items(uow.conn(), order_id, held).await?;
    load(uow, items.iter().map(|(product_id, _)| product_id)).await?;
    let ledger = uow.deferred::<StockLedger>();
    for (product_id, quantity) in &items {
        let Some(stock) = ledger.products.get_mut(product_id) else {
            // A reservation holds only products that existed, and products are never
            // deleted: retry, loudly.
            tracing::error!(%order_id, %product_id, "a reserved product is missing");
            return Err(sqlx::Error::RowNotFound);
        };
        stock.moved.reserved -= quantity;
        match how {
            Move::Release => stock.moved.available += quantity,
            Move::Sell => stock.moved.sold += quantity,
        }
    }
    Ok(Some(items))
}

/// Totals over all products, for invariant checks: (available, reserved, sold).
pub async fn totals<'c, E>(executor: E) -> Result<(i64, i64, i64), sqlx::Error>
where
    E: Executor<'c>,
{
    let row = query(
        "SELECT CAST(COALESCE(SUM(available), 0) AS BIGINT) AS a, CAST(COALESCE(SUM(reserved), 0) AS BIGINT) AS r, \
         CAST(COALESCE(SUM(sold), 0) AS BIGINT) AS s FROM products",
    )
    .fetch_one(executor)
    .await?;
    Ok((row.try_get("a")?, row.try_get("r")?, row.try_get("s")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_merged_and_sorted() {
        let m = merge_items([("b", 1), ("a", 2), ("b", 3)]);
        assert_eq!(
            m.into_iter().collect::<Vec<_>>(),
            vec![("a".to_string(), 2), ("b".to_string(), 4)]
        );
    }
}
