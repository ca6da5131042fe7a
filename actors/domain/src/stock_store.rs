//! Stock and reservations in the database.
//!
//! A reservation takes every item of an order or none: each item is a conditional update
//! (`available >= quantity`) inside one transaction, items in product order, and a failed
//! item undoes the ones before it in the same transaction. A batch of deliveries first locks
//! every product it will touch, in product order ([`lock_products`]), so two batches never
//! wait on each other's rows in opposite order. Neither concurrency nor replicas can oversell: the
//! database checks the condition under the row's write lock. Every move keeps
//! `available + reserved + sold` constant.
//!
//! Whatever happens to an order starts by claiming its reservation row with an insert that
//! does nothing on conflict ([`claim`], [`tombstone`]): of a reservation and a cancellation
//! racing in two transactions (two replicas, at READ COMMITTED), the second waits for the
//! first to commit and then sees its row, so a cancelled order is never left holding stock
//! and a reserved one is always released. Later moves are conditional updates on the row's
//! status. The row also keeps the items it holds (JSON), so a reservation is one write of its
//! row and a sale or release reads its items back from the update that wins.

use std::collections::{BTreeMap, BTreeSet};

use jetflow_runtime::Backend;

use serde::Serialize;
use sqlx::{AnyConnection, Row};

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

fn product_of(row: &sqlx::any::AnyRow) -> Result<Product, sqlx::Error> {
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
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let row = sqlx::query(
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
    conn: &mut AnyConnection,
    product_id: &str,
    available: i64,
    price_cents: i64,
) -> Result<Product, sqlx::Error> {
    sqlx::query(
        "INSERT INTO products (product_id, available, reserved, sold, price_cents, updated_at) \
         VALUES ($1, $2, 0, 0, $3, $4) \
         ON CONFLICT (product_id) DO UPDATE SET available = excluded.available, \
         price_cents = excluded.price_cents, updated_at = excluded.updated_at",
    )
    .bind(product_id)
    .bind(available)
    .bind(price_cents)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    get(&mut *conn, product_id)
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

/// The status of the order's reservation record, if the stock handler has seen the order.
pub async fn reservation_status(
    conn: &mut AnyConnection,
    order_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    let row = sqlx::query("SELECT status FROM reservations WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(conn)
        .await?;
    row.map(|r| r.try_get("status")).transpose()
}

async fn insert_status(
    conn: &mut AnyConnection,
    order_id: &str,
    lane: &str,
    status: &str,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "INSERT INTO reservations (order_id, status, lane, amount_cents, updated_at) VALUES ($1, $2, $3, NULL, $4) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(status)
    .bind(lane)
    .bind(now_ms())
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Claims the order for a reservation: true if this transaction is the first to see the
/// order (it now holds the row until it commits); false if the order was handled before
/// (another copy of `orders.created`, or a cancellation that came first).
pub async fn claim(
    conn: &mut AnyConnection,
    order_id: &str,
    lane: &str,
) -> Result<bool, sqlx::Error> {
    insert_status(conn, order_id, lane, "pending").await
}

/// Records that the order was cancelled before any reservation: true if it was (nothing is
/// held), false if a reservation record exists already.
pub async fn tombstone(
    conn: &mut AnyConnection,
    order_id: &str,
    lane: &str,
) -> Result<bool, sqlx::Error> {
    insert_status(conn, order_id, lane, "cancelled").await
}

async fn set_status(
    conn: &mut AnyConnection,
    order_id: &str,
    status: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE reservations SET status = $2, updated_at = $3 WHERE order_id = $1")
        .bind(order_id)
        .bind(status)
        .bind(now_ms())
        .execute(conn)
        .await?;
    Ok(())
}

/// Sums quantities per product, in product order.
pub fn merge_items<'a>(items: impl IntoIterator<Item = (&'a str, i64)>) -> BTreeMap<String, i64> {
    let mut merged = BTreeMap::new();
    for (product, quantity) in items {
        *merged.entry(product.to_string()).or_insert(0) += quantity;
    }
    merged
}

/// Reserves every item or none, and records the outcome on the order's row, which the
/// caller has [`claim`]ed in this transaction. `items` must be merged.
pub async fn reserve(
    conn: &mut AnyConnection,
    order_id: &str,
    items: &BTreeMap<String, i64>,
) -> Result<Reservation, sqlx::Error> {
    // Take stock item by item (one statement each, reading the price as it goes); on the
    // first item that cannot be taken, undo the ones before it and say why.
    let mut priced: Vec<(String, i64, i64)> = Vec::with_capacity(items.len());
    for (product_id, quantity) in items {
        let price: Option<i64> = sqlx::query_scalar(
            "UPDATE products SET available = available - $1, reserved = reserved + $1, updated_at = $3 \
             WHERE product_id = $2 AND available >= $1 RETURNING price_cents",
        )
        .bind(*quantity)
        .bind(product_id)
        .bind(now_ms())
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(price) = price {
            priced.push((product_id.clone(), *quantity, price));
            continue;
        }
        for (undo_id, undo_qty, _) in &priced {
            move_stock(conn, undo_id, *undo_qty, Move::Release).await?;
        }
        set_status(conn, order_id, "rejected").await?;
        // An unknown product is the reason even if an earlier item was short.
        for unknown in items.keys() {
            if get(&mut *conn, unknown).await?.is_none() {
                return Ok(Reservation::UnknownProduct {
                    product_id: unknown.clone(),
                });
            }
        }
        let available = get(&mut *conn, product_id)
            .await?
            .map(|p| p.available)
            .unwrap_or(0);
        return Ok(Reservation::Insufficient {
            product_id: product_id.clone(),
            requested: *quantity,
            available,
        });
    }
    let amount_cents = priced
        .iter()
        .map(|(_, q, p)| q.saturating_mul(*p))
        .fold(0i64, i64::saturating_add);
    // The status, the amount and the items in one write of the row the caller claimed.
    let held = serde_json::to_string(&priced).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "UPDATE reservations SET status = 'reserved', amount_cents = $2, items = $3, updated_at = $4 \
         WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(amount_cents)
    .bind(held)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(Reservation::Reserved {
        items: priced,
        amount_cents,
    })
}

/// The products held by these orders' reservations.
pub async fn products_of_orders(
    conn: &mut AnyConnection,
    order_ids: &[&str],
) -> Result<BTreeSet<String>, sqlx::Error> {
    let mut products = BTreeSet::new();
    if order_ids.is_empty() {
        return Ok(products);
    }
    // Only generated placeholders are interpolated: no input reaches the SQL text.
    let sql = format!(
        "SELECT order_id, items FROM reservations WHERE status = 'reserved' AND order_id IN ({})",
        jetflow_runtime::db::placeholders(1, order_ids.len())
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for id in order_ids {
        q = q.bind(*id);
    }
    for row in q.fetch_all(&mut *conn).await? {
        let order_id: String = row.try_get("order_id")?;
        let items = held_items(conn, &order_id, row.try_get("items")?).await?;
        products.extend(items.into_iter().map(|(product_id, _)| product_id));
    }
    Ok(products)
}

/// Locks these products' rows, in product order, until the transaction ends (PostgreSQL;
/// SQLite's write transaction holds the whole database already). Transactions that lock
/// what they will update this way first wait for each other instead of deadlocking.
pub async fn lock_products(
    conn: &mut AnyConnection,
    backend: Backend,
    products: &BTreeSet<String>,
) -> Result<(), sqlx::Error> {
    if backend != Backend::Postgres || products.is_empty() {
        return Ok(());
    }
    // Only generated placeholders are interpolated: no input reaches the SQL text.
    let sql = format!(
        "SELECT product_id FROM products WHERE product_id IN ({}) ORDER BY product_id FOR UPDATE",
        jetflow_runtime::db::placeholders(1, products.len())
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for p in products {
        q = q.bind(p.as_str());
    }
    q.fetch_all(conn).await?;
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Move {
    /// reserved → available
    Release,
    /// reserved → sold
    Sell,
}

async fn move_stock(
    conn: &mut AnyConnection,
    product_id: &str,
    quantity: i64,
    how: Move,
) -> Result<(), sqlx::Error> {
    let sql = match how {
        Move::Release => {
            "UPDATE products SET available = available + $1, reserved = reserved - $1, updated_at = $3 WHERE product_id = $2"
        }
        Move::Sell => {
            "UPDATE products SET sold = sold + $1, reserved = reserved - $1, updated_at = $3 WHERE product_id = $2"
        }
    };
    sqlx::query(sql)
        .bind(quantity)
        .bind(product_id)
        .bind(now_ms())
        .execute(conn)
        .await?;
    Ok(())
}

/// The items held for an order, in product order, from its reservation row's `items`
/// (`None` for a reservation made before they were kept there: then from
/// `reservation_items`).
async fn held_items(
    conn: &mut AnyConnection,
    order_id: &str,
    items: Option<String>,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    if let Some(items) = items {
        let priced: Vec<(String, i64, i64)> =
            serde_json::from_str(&items).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        return Ok(priced.into_iter().map(|(p, q, _)| (p, q)).collect());
    }
    let rows = sqlx::query(
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
    conn: &mut AnyConnection,
    order_id: &str,
) -> Result<Option<Vec<(String, i64)>>, sqlx::Error> {
    finish(conn, order_id, Move::Release, "released").await
}

/// Turns a reserved order's stock into sold stock; `None` unless the order was `reserved`.
pub async fn sell(
    conn: &mut AnyConnection,
    order_id: &str,
) -> Result<Option<Vec<(String, i64)>>, sqlx::Error> {
    finish(conn, order_id, Move::Sell, "sold").await
}

async fn finish(
    conn: &mut AnyConnection,
    order_id: &str,
    how: Move,
    to: &str,
) -> Result<Option<Vec<(String, i64)>>, sqlx::Error> {
    // The conditional status change is the lock: of two concurrent finishes one wins; it
    // returns the items held.
    let won = sqlx::query(
        "UPDATE reservations SET status = $2, updated_at = $3 WHERE order_id = $1 AND status = 'reserved' \
         RETURNING items",
    )
    .bind(order_id)
    .bind(to)
    .bind(now_ms())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = won else {
        return Ok(None);
    };
    let items = held_items(conn, order_id, row.try_get("items")?).await?;
    for (product_id, quantity) in &items {
        move_stock(conn, product_id, *quantity, how).await?;
    }
    Ok(Some(items))
}

/// Totals over all products, for invariant checks: (available, reserved, sold).
pub async fn totals<'c, E>(executor: E) -> Result<(i64, i64, i64), sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let row = sqlx::query(
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
