//! `StockActor`: reserves stock for new orders, releases it for cancelled ones, and turns it
//! into sold stock for confirmed ones.
//!
//! | receives            | does                                  | emits                                  |
//! |---------------------|---------------------------------------|----------------------------------------|
//! | `orders.created`    | reserves every item or none           | `inventory.reserved` or `orders.cancelled` (insufficient_stock, unknown_product) |
//! | `orders.cancelled`  | returns reserved stock                | `inventory.released` (if anything was held) |
//! | `orders.confirmed`  | reserved → sold                       | —                                      |
//!
//! Each delivery is one unit of work (inbox claim, stock change, outbox), so a redelivery
//! changes nothing. An order is reserved at most once, whichever copy of `orders.created`
//! (v1, v2, a replay) comes first; an order cancelled before its stock was reserved leaves a
//! tombstone, so a late `orders.created` does not reserve for a dead order.

use actix::prelude::*;
use jetflow_runtime::{Delivery, DeliveryMeta, Outcome};
use jetflow_schemas::{
    AnyEvent, CancelReason, EventMeta, InventoryReleased, InventoryReserved, OrderCancelled,
    OrderItem, Priority, ReservedItem, Version,
};

use crate::events::outgoing;
use crate::handling::{Created, Deps, DomainError, created, lane_name};
use crate::input::InboundEvent;
use crate::metrics::domain_metrics;
use crate::stock_store::{self, Reservation};
use crate::unit_of_work::UnitOfWork;

/// The inbox name of the stock actor.
pub const CONSUMER: &str = "inventory";

/// The stock actor.
pub struct StockActor {
    deps: Deps,
}

impl StockActor {
    /// A stock actor over `deps`.
    pub fn new(deps: Deps) -> Self {
        Self { deps }
    }
}

impl Actor for StockActor {
    type Context = Context<Self>;
}

impl Supervised for StockActor {}

impl Handler<Delivery<InboundEvent>> for StockActor {
    type Result = ResponseActFuture<Self, Outcome>;

    fn handle(&mut self, msg: Delivery<InboundEvent>, _: &mut Context<Self>) -> Self::Result {
        let deps = self.deps.clone();
        crate::handling::respond("stock", msg, move |input, meta| async move {
            handle(&deps, &input, &meta).await
        })
    }
}

async fn handle(
    deps: &Deps,
    input: &InboundEvent,
    meta: &DeliveryMeta,
) -> Result<Outcome, DomainError> {
    let lane = input.subject.lane;
    match &input.event {
        AnyEvent::OrderCreatedV1(_) | AnyEvent::OrderCreatedV2(_) => match created(&input.event) {
            Some(c) => on_created(deps, input, c, lane, meta).await,
            None => Ok(Outcome::Ack),
        },
        AnyEvent::OrderCancelled(e) => on_cancelled(deps, input, e, lane, meta).await,
        AnyEvent::OrderConfirmed(e) => on_confirmed(deps, input, &e.meta).await,
        // Other events share the consumer's subjects; they are not the stock actor's.
        _ => Ok(Outcome::Ack),
    }
}

async fn on_created(
    deps: &Deps,
    input: &InboundEvent,
    order: Created<'_>,
    lane: Priority,
    meta: &DeliveryMeta,
) -> Result<Outcome, DomainError> {
    let Some(mut uow) = UnitOfWork::begin(&deps.db, CONSUMER, &input.key()).await? else {
        return Ok(Outcome::Ack);
    };
    let order_id = order.meta.order_id.to_string();
    if let Some(status) = stock_store::reservation_status(uow.conn(), &order_id).await? {
        // Another copy of this order (the other schema version, a replay) got here first,
        // or the order was cancelled before we saw it.
        tracing::debug!(%order_id, %status, "order already handled by the stock actor");
        uow.commit(&deps.outbox).await?;
        return Ok(Outcome::Ack);
    }
    let items = stock_store::merge_items(
        order
            .items
            .iter()
            .map(|i| (i.product_id.as_str(), i64::from(i.quantity))),
    );
    let traceparent = meta.traceparent();
    let m = domain_metrics();
    match stock_store::reserve(uow.conn(), &order_id, lane_name(lane), &items).await? {
        Reservation::Reserved {
            items,
            amount_cents,
        } => {
            m.stock_reservations.with_label_values(&["reserved"]).inc();
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
            uow.emit(outgoing(&event, lane, traceparent)?);
        }
        Reservation::Insufficient {
            product_id,
            requested,
            available,
        } => {
            m.stock_reservations
                .with_label_values(&["insufficient_stock"])
                .inc();
            let detail = format!("{product_id}: {requested} requested, {available} available");
            uow.emit(cancel(
                order.meta,
                CancelReason::InsufficientStock,
                detail,
                lane,
                traceparent,
            )?);
        }
        Reservation::UnknownProduct { product_id } => {
            m.stock_reservations
                .with_label_values(&["unknown_product"])
                .inc();
            let detail = format!("unknown product {product_id}");
            uow.emit(cancel(
                order.meta,
                CancelReason::UnknownProduct,
                detail,
                lane,
                traceparent,
            )?);
        }
    }
    uow.commit(&deps.outbox).await?;
    Ok(Outcome::Ack)
}

fn cancel(
    cause: &EventMeta,
    reason: CancelReason,
    detail: String,
    lane: Priority,
    traceparent: Option<&str>,
) -> Result<jetflow_runtime::OutgoingMessage, DomainError> {
    let event = OrderCancelled {
        meta: EventMeta::caused_by(cause),
        version: Version,
        reason,
        detail: Some(detail),
    };
    Ok(outgoing(&event, lane, traceparent)?)
}

async fn on_cancelled(
    deps: &Deps,
    input: &InboundEvent,
    event: &OrderCancelled,
    lane: Priority,
    meta: &DeliveryMeta,
) -> Result<Outcome, DomainError> {
    let Some(mut uow) = UnitOfWork::begin(&deps.db, CONSUMER, &input.key()).await? else {
        return Ok(Outcome::Ack);
    };
    let order_id = event.meta.order_id.to_string();
    match stock_store::release(uow.conn(), &order_id).await? {
        Some(items) => {
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
            uow.emit(outgoing(&released, lane, meta.traceparent())?);
        }
        None => {
            if stock_store::reservation_status(uow.conn(), &order_id)
                .await?
                .is_none()
            {
                // Cancelled before we ever saw it: a tombstone keeps a late orders.created
                // from reserving stock for a dead order.
                stock_store::record(uow.conn(), &order_id, lane_name(lane), "cancelled", None)
                    .await?;
            }
        }
    }
    uow.commit(&deps.outbox).await?;
    Ok(Outcome::Ack)
}

async fn on_confirmed(
    deps: &Deps,
    input: &InboundEvent,
    meta: &EventMeta,
) -> Result<Outcome, DomainError> {
    let Some(mut uow) = UnitOfWork::begin(&deps.db, CONSUMER, &input.key()).await? else {
        return Ok(Outcome::Ack);
    };
    let order_id = meta.order_id.to_string();
    if stock_store::sell(uow.conn(), &order_id).await?.is_none() {
        let status = stock_store::reservation_status(uow.conn(), &order_id).await?;
        if status.as_deref() != Some("sold") {
            domain_metrics()
                .saga_anomalies
                .with_label_values(&["confirmed_without_reservation"])
                .inc();
            tracing::error!(%order_id, ?status, "order confirmed but its stock is not reserved");
        }
    }
    uow.commit(&deps.outbox).await?;
    Ok(Outcome::Ack)
}

/// Quantities in events are bounded by the schema (1..=1000 per item, 100 items).
fn quantity_of(q: i64) -> u32 {
    u32::try_from(q).unwrap_or(u32::MAX)
}

/// Amounts are never negative.
fn cents_of(c: i64) -> u64 {
    u64::try_from(c).unwrap_or(0)
}
