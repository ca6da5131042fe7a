//! The order handler: the order state machine, its read model, and the saga's decisions.
//!
//! | receives             | does                                        | emits               |
//! |----------------------|---------------------------------------------|---------------------|
//! | `orders.created`     | records the order as pending                | —                   |
//! | `inventory.reserved` | reserved, with the amount                   | —                   |
//! | `payments.succeeded` | paid, then confirmed                        | `orders.confirmed`  |
//! | `payments.failed`    | cancelled (payment_declined / _unavailable) | `orders.cancelled` (the stock handler releases the stock) |
//! | `orders.cancelled`   | cancelled with the stock handler's reason   | —                   |
//! | `orders.confirmed`   | confirmed (its own echo: nothing to do)     | —                   |
//!
//! The [`OrderSweeper`](crate::order_sweeper::OrderSweeper) cancels orders that did not
//! finish in time with the same [`cancel`] step.

use jetflow_runtime::{Delivery, TxError, TxHandler, UnitOfWork};
use jetflow_schemas::{
    AnyEvent, CancelReason, EventMeta, OrderCancelled, OrderConfirmed, PaymentFailed,
    PaymentFailureReason, PaymentSucceeded, Priority, Version,
};

use crate::events::outgoing;
use crate::handling::{Created, DomainError, created, span};
use crate::input::InboundEvent;
use crate::metrics::domain_metrics;
use crate::order_store::{self, Advance, Change, NewOrder, OrderStatus};

/// The inbox name of the order handler (shared by both lanes and all three streams).
pub const CONSUMER: &str = "orders";

/// The order handler (all its state is in the transaction it is given).
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderHandler;

impl TxHandler for OrderHandler {
    type Message = InboundEvent;

    async fn handle(
        &self,
        uow: &mut UnitOfWork,
        d: &Delivery<InboundEvent>,
    ) -> Result<(), TxError> {
        handle(uow, &d.message).await.map_err(TxError::from)
    }

    fn key(&self, d: &Delivery<InboundEvent>) -> String {
        d.message.key()
    }

    fn span(&self, target: &str, d: &Delivery<InboundEvent>) -> tracing::Span {
        span(target, &d.message, &d.meta)
    }
}

fn counted(status: OrderStatus) {
    domain_metrics()
        .orders
        .with_label_values(&[status.as_str()])
        .inc();
}

fn anomaly(kind: &str, order_id: &str, detail: &str) {
    domain_metrics()
        .saga_anomalies
        .with_label_values(&[kind])
        .inc();
    tracing::error!(%order_id, kind, detail, "saga anomaly");
}

async fn handle(uow: &mut UnitOfWork, input: &InboundEvent) -> Result<(), DomainError> {
    let lane = input.subject.lane;
    match &input.event {
        AnyEvent::OrderCreatedV1(_) | AnyEvent::OrderCreatedV2(_) => {
            if let Some(c) = created(&input.event) {
                on_created(uow, c).await?;
            }
        }
        AnyEvent::InventoryReserved(e) => {
            let order_id = e.meta.order_id.to_string();
            let change = Change {
                amount_cents: i64::try_from(e.amount_cents).ok(),
                correlation_id: Some(&e.meta.correlation_id),
                ..Change::default()
            };
            if order_store::advance(uow.conn(), &order_id, OrderStatus::Reserved, &change).await?
                == Advance::Applied
            {
                counted(OrderStatus::Reserved);
            }
        }
        AnyEvent::PaymentSucceeded(e) => on_paid(uow, e, lane).await?,
        AnyEvent::PaymentFailed(e) => on_payment_failed(uow, e, lane).await?,
        AnyEvent::OrderCancelled(e) => {
            let order_id = e.meta.order_id.to_string();
            let change = Change {
                reason: Some(e.reason.as_str()),
                detail: e.detail.as_deref(),
                correlation_id: Some(&e.meta.correlation_id),
                ..Change::default()
            };
            match order_store::advance(uow.conn(), &order_id, OrderStatus::Cancelled, &change)
                .await?
            {
                Advance::Applied => counted(OrderStatus::Cancelled),
                Advance::Stale(OrderStatus::Confirmed) => {
                    anomaly("cancelled_after_confirmed", &order_id, e.reason.as_str())
                }
                Advance::Stale(_) => {}
            }
        }
        AnyEvent::OrderConfirmed(e) => {
            let order_id = e.meta.order_id.to_string();
            let change = Change {
                amount_cents: i64::try_from(e.amount_cents).ok(),
                correlation_id: Some(&e.meta.correlation_id),
                ..Change::default()
            };
            if order_store::advance(uow.conn(), &order_id, OrderStatus::Confirmed, &change).await?
                == Advance::Applied
            {
                counted(OrderStatus::Confirmed);
            }
        }
        AnyEvent::InventoryReleased(_) => {}
    }
    Ok(())
}

async fn on_created(uow: &mut UnitOfWork, c: Created<'_>) -> Result<(), DomainError> {
    let new = NewOrder {
        order_id: c.meta.order_id.to_string(),
        customer_id: c.customer_id.to_string(),
        items: serde_json::to_value(c.items).unwrap_or_default(),
        priority: c.priority,
        shipping_address: c
            .shipping_address
            .and_then(|a| serde_json::to_value(a).ok()),
        correlation_id: c.meta.correlation_id.clone(),
        at: c.meta.occurred_at.timestamp_millis(),
    };
    if order_store::upsert_created(uow.conn(), &new).await? {
        counted(OrderStatus::Pending);
    }
    Ok(())
}

async fn on_paid(
    uow: &mut UnitOfWork,
    e: &PaymentSucceeded,
    lane: Priority,
) -> Result<(), DomainError> {
    let order_id = e.meta.order_id.to_string();
    let change = Change {
        amount_cents: i64::try_from(e.amount_cents).ok(),
        correlation_id: Some(&e.meta.correlation_id),
        ..Change::default()
    };
    match order_store::advance(uow.conn(), &order_id, OrderStatus::Paid, &change).await? {
        Advance::Applied => counted(OrderStatus::Paid),
        Advance::Stale(OrderStatus::Cancelled) => {
            anomaly(
                "paid_after_cancelled",
                &order_id,
                "payment succeeded for a cancelled order; it needs a refund",
            );
            return Ok(());
        }
        Advance::Stale(_) => return Ok(()),
    }
    // Paid orders are confirmed at once; the event tells the stock actor to mark the stock
    // sold.
    order_store::advance(uow.conn(), &order_id, OrderStatus::Confirmed, &change).await?;
    counted(OrderStatus::Confirmed);
    tracing::info!(%order_id, amount_cents = e.amount_cents, "order confirmed");
    let confirmed = OrderConfirmed {
        meta: EventMeta::caused_by(&e.meta),
        version: Version,
        amount_cents: e.amount_cents,
    };
    uow.emit(outgoing(&confirmed, lane)?);
    Ok(())
}

async fn on_payment_failed(
    uow: &mut UnitOfWork,
    e: &PaymentFailed,
    lane: Priority,
) -> Result<(), DomainError> {
    let reason = match e.reason {
        PaymentFailureReason::Declined => CancelReason::PaymentDeclined,
        PaymentFailureReason::Unavailable => CancelReason::PaymentUnavailable,
    };
    cancel(uow, &e.meta, reason, e.detail.clone(), lane)
        .await
        .map(|_| ())
}

/// Cancels an order if it is not finished, and emits `orders.cancelled` so that its stock is
/// released (and any charge voided). Returns whether it was cancelled now.
pub async fn cancel(
    uow: &mut UnitOfWork,
    cause: &EventMeta,
    reason: CancelReason,
    detail: Option<String>,
    lane: Priority,
) -> Result<bool, DomainError> {
    let order_id = cause.order_id.to_string();
    let change = Change {
        reason: Some(reason.as_str()),
        detail: detail.as_deref(),
        correlation_id: Some(&cause.correlation_id),
        ..Change::default()
    };
    match order_store::advance(uow.conn(), &order_id, OrderStatus::Cancelled, &change).await? {
        Advance::Applied => counted(OrderStatus::Cancelled),
        Advance::Stale(OrderStatus::Confirmed) => {
            anomaly("cancel_after_confirmed", &order_id, reason.as_str());
            return Ok(false);
        }
        Advance::Stale(_) => return Ok(false),
    }
    tracing::info!(%order_id, reason = reason.as_str(), "order cancelled");
    let event = OrderCancelled {
        meta: EventMeta::caused_by(cause),
        version: Version,
        reason,
        detail,
    };
    uow.emit(outgoing(&event, lane)?);
    Ok(true)
}
