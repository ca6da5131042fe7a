//! What the saga's books of rows keyed by order id ([`crate::stock_store::ReservationBook`],
//! [`crate::payment_store::PaymentBook`]) write back when the transaction commits: the rows the
//! batch added, inserted in one statement unless another transaction inserted them since they
//! were read as absent (then the batch lost a race and is applied again), and the rows whose
//! status moved, updated in one statement.

use jetflow_runtime::db::Conn;
use jetflow_runtime::db::{self, Param};

/// Inserts `new` (rows of `columns`, the first being `order_id`) where absent, and moves the
/// status of the `moved` orders, stamping `updated_at` with `now`.
pub(crate) async fn write_back(
    mut conn: Conn<'_>,
    table: &str,
    columns: &[&str],
    new: &[Vec<Param>],
    moved: Vec<(&str, &str)>,
    now: i64,
) -> Result<(), sqlx::Error> {
    db::insert_absent(conn.reborrow(), table, columns, new).await?;
    let moved: Vec<Vec<Param>> = moved
        .into_iter()
        .map(|(order_id, status)| vec![order_id.into(), status.into(), now.into()])
        .collect();
    db::update_from_values(
        conn,
        table,
        &["order_id", "status", "at"],
        "status = moved.status, updated_at = moved.at",
        &moved,
    )
    .await
}
