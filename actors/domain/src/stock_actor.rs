//! The stock actor: reserves stock for new orders, releases it for cancelled ones, and
//! turns it into sold stock for confirmed ones.
//!
//! | receives            | does                                  | emits                                  |
//! |---------------------|---------------------------------------|----------------------------------------|
//! | `orders.created`    | reserves every item or none           | `inventory.reserved` or `orders.cancelled` (insufficient_stock, unknown_product) |
//! | `orders.cancelled`  | returns reserved stock                | `inventory.released` (if anything was held) |
//! | `orders.confirmed`  | reserved → sold                       | —                                      |
//!
//! Each delivery is applied once (the runtime's inbox, in the same transaction as the stock
//! change). An order is reserved at most once, whichever copy of `orders.created` (v1, v2, a
//! replay) comes first; an order cancelled before its stock was reserved leaves a tombstone,
//! so a late `orders.created` does not reserve for a dead order. Both write the order's
//! reservation row (insert-or-nothing) before any stock moves, so a reservation and a
//! cancellation racing on two replicas are serialised by the database (see [`stock_store`]).

use std::collections::BTreeSet;

use jetflow_runtime::{Delivery, TxError, TxHandler, UnitOfWork};
use jetflow_schemas::{
    AnyEvent, CancelReason, EventMeta, InventoryReleased, InventoryReserved, OrderCancelled,
    OrderItem, Priority, ReservedItem, Version,
};

use crate::events::outgoing;
use crate::handling::{Created, DomainError, count_on_commit, created, span};
use crate::input::InboundEvent;
use crate::metrics::domain_metrics;
use crate::stock_store::{self, Reservation};

/// The inbox name of the stock handler (shared by both lanes).
pub const CONSUMER: &str = "inventory";

jetflow_runtime::batch_actor! {
    /// The stock actor: stock levels and reservations. Its bounded mailbox takes
    /// [`Batch`](jetflow_runtime::Batch)es of `orders.created`, `orders.cancelled` and
    /// `orders.confirmed`, which [`StockHandler`] turns into reservations, releases and sales
    /// in one transaction each, emitting `inventory.reserved`, `inventory.released` or
    /// `orders.cancelled` (no stock).
    pub struct StockActor(StockHandler);
}

/// The stock handler (all its state is in the transaction it is given).
#[derive(Debug, Clone, Copy, Default)]
pub struct StockHandler;

impl TxHandler for StockHandler {
    type Message = InboundEvent;

    async fn handle(
        &self,
        uow: &mut UnitOfWork,
        d: &Delivery<InboundEvent>,
    ) -> Result<(), TxError> {
        let input = &d.message;
        let lane = input.subject.lane;
        match &input.event {
            AnyEvent::OrderCreatedV1(_) | AnyEvent::OrderCreatedV2(_) => {
                if let Some(c) = created(&input.event) {
                    on_created(uow, c, lane).await?;
                }
            }
            AnyEvent::OrderCancelled(e) => on_cancelled(uow, e, lane).await?,
            AnyEvent::OrderConfirmed(e) => on_confirmed(uow, &e.meta).await?,
            // Other events share the consumer's subjects; they are not the stock handler's.
            _ => {}
        }
        Ok(())
    }

    /// Reads every product the batch will move into the transaction's [`StockLedger`]
    /// (locked on PostgreSQL, in product order): the products of new orders, and those held
    /// by orders that are cancelled or confirmed.
    ///
    /// [`StockLedger`]: stock_store::StockLedger
    async fn begin_batch(
        &self,
        uow: &mut UnitOfWork,
        deliveries: &[&Delivery<InboundEvent>],
    ) -> Result<(), TxError> {
        let mut products = BTreeSet::new();
        let mut finishing = Vec::new();
        for d in deliveries {
            match &d.message.event {
                AnyEvent::OrderCancelled(e) => finishing.push(e.meta.order_id.to_string()),
                AnyEvent::OrderConfirmed(e) => finishing.push(e.meta.order_id.to_string()),
                event => {
                    if let Some(c) = created(event) {
                        products.extend(c.items.iter().map(|i| i.product_id.clone()));
                    }
                }
            }
        }
        // Reservation rows first, then products: every transaction locks in that order.
        let orders = InboundEvent::order_ids(deliveries);
        stock_store::load_reservations(uow, orders.iter().map(String::as_str)).await?;
        let finishing: Vec<&str> = finishing.iter().map(String::as_str).collect();
        products.extend(stock_store::products_of_orders(uow, &finishing).await?);
        stock_store::load(uow, &products).await?;
        Ok(())
    }

    fn key(&self, d: &Delivery<InboundEvent>) -> String {
        d.message.key()
    }

    /// One order's events reach one instance of the actor, in order.
    fn shard_key(&self, d: &Delivery<InboundEvent>) -> String {
        d.message.order_id()
    }

    fn span(&self, target: &str, d: &Delivery<InboundEvent>) -> tracing::Span {
        span(target, &d.message, &d.meta)
    }
}

async fn on_created(
    uow: &mut UnitOfWork,
    order: Created<'_>,
    lane: Priority,
) -> Result<(), DomainError> {
    let order_id = order.meta.order_id.to_string();
    let items = stock_store::merge_items(
        order
            .items
            .iter()
            .map(|i| (i.product_id.as_str(), i64::from(i.quantity))),
    );
    let m = domain_metrics();
    let Some(reservation) = stock_store::reserve(uow, &order_id, lane.as_str(), &items).await?
    else {
        // Another copy of this order (the other schema version, a replay) got here first,
        // or the order was cancelled before we saw it.
        tracing::debug!(%order_id, "order already handled by the stock handler");
        return Ok(());
    };
    match reservation {
        Reservation::Reserved {
            items,
            amount_cents,
        } => {
            count_on_commit(uow, m.stock_reservations.with_label_values(&["reserved"]));
            tracing::info!(%order_id, amount_cents, "stock reserved");
            let event = InventoryReserved {
                meta: EventMeta::caused_by(order.meta),
                version: Version,
                customer_id: order.customer_id.to_string(),
                items: items
                    .into_iter()
                    .map(|(product_id, quantity, unit_price_cents)| ReservedItem {
                        product_id,
                        quantity: quantity_of(quantity),
                        unit_price_cents: cents_of(unit_price_cents),
                    })
                    .collect(),
                amount_cents: cents_of(amount_cents),
            };
            uow.emit(outgoing(&event, lane)?);
        }
        Reservation::Insufficient {
            product_id,
            requested,
            available,
        } => {
            count_on_commit(
                uow,
                m.stock_reservations
                    .with_label_values(&["insufficient_stock"]),
            );
            let detail = format!("{product_id}: {requested} requested, {available} available");
            tracing::info!(%order_id, %detail, "not enough stock");
            uow.emit(cancel(
                order.meta,
                CancelReason::InsufficientStock,
                detail,
                lane,
            )?);
        }
        Reservation::UnknownProduct { product_id } => {
            count_on_commit(
                uow,
                m.stock_reservations.with_label_values(&["unknown_product"]),
            );
            let detail = format!("unknown product {product_id}");
            tracing::info!(%order_id, %detail, "unknown product");
            uow.emit(cancel(
                order.meta,
                CancelReason::UnknownProduct,
                detail,
                lane,
            )?);
        }
    }
    Ok(())
}

fn cancel(
    cause: &EventMeta,
    reason: CancelReason,
    detail: String,
    lane: Priority,
) -> Result<jetflow_runtime::OutgoingMessage, DomainError> {
    let event = OrderCancelled {
        meta: EventMeta::caused_by(cause),
        version: Version,
        reason,
        detail: Some(detail),
    };
    Ok(outgoing(&event, lane)?)
}

async fn on_cancelled(
    uow: &mut UnitOfWork,
    event: &OrderCancelled,
    lane: Priority,
) -> Result<(), DomainError> {
    let order_id = event.meta.order_id.to_string();
    if stock_store::tombstone(uow, &order_id, lane.as_str()).await? {
        // Cancelled before we ever saw it: the tombstone keeps a late orders.created from
        // reserving stock for a dead order.
        tracing::debug!(%order_id, "order cancelled before any reservation");
        return Ok(());
    }
    if let Some(items) = stock_store::release(uow, &order_id).await? {
        tracing::info!(%order_id, reason = event.reason.as_str(), "stock released");
        let released = InventoryReleased {
            meta: EventMeta::caused_by(&event.meta),
            version: Version,
            items: items
                .into_iter()
                .map(|(product_id, quantity)| OrderItem {
                    product_id,
                    quantity: quantity_of(quantity),
                })
                .collect(),
            reason: event.reason,
        };
        uow.emit(outgoing(&released, lane)?);
    }
    Ok(())
}

async fn on_confirmed(uow: &mut UnitOfWork, meta: &EventMeta) -> Result<(), DomainError> {
    let order_id = meta.order_id.to_string();
    if stock_store::sell(uow, &order_id).await?.is_none() {
        let status = stock_store::reservation_status(uow, &order_id).await?;
        if status.as_deref() != Some("sold") {
            count_on_commit(
                uow,
                domain_metrics()
                    .saga_anomalies
                    .with_label_values(&["confirmed_without_reservation"]),
            );
            tracing::error!(%order_id, ?status, "order confirmed but its stock is not reserved");
        }
    }
    Ok(())
}

/// Quantities in events are bounded by the schema (1..=1000 per item, 100 items).
fn quantity_of(q: i64) -> u32 {
    u32::try_from(q).unwrap_or(u32::MAX)
}

/// Amounts are never negative.
fn cents_of(c: i64) -> u64 {
    u64::try_from(c).unwrap_or(0)
}
