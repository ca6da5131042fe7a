//! The order actor: the order state machine, its read model, and the saga's decisions.
//!
//! | receives             | does                                        | emits               |
//! |----------------------|---------------------------------------------|---------------------|
//! | `orders.created`     | records the order as pending                | —                   |
//! | `inventory.reserved` | reserved, with the amount                   | —                   |
//! | `payments.succeeded` | paid, then confirmed                        | `orders.confirmed`  |
//! | `payments.failed`    | cancelled (payment_declined / _unavailable) | `orders.cancelled` (the stock handler releases the stock) |
//! | `orders.cancelled`   | cancelled with the stock handler's reason   | —                   |
//! | `orders.confirmed`   | nothing (its own echo)                      | —                   |
//!
//! Counts and log lines about what changed are emitted once the transaction committed, so a
//! batch that is rolled back and applied again counts each change once.
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

jetflow_runtime::batch_actor! {
    /// The order actor: the order state machine and read model. A supervised actix actor
    /// whose bounded mailbox takes [`Batch`](jetflow_runtime::Batch)es of `orders.created`,
    /// `inventory.reserved`, `payments.*` and `orders.cancelled`, each applied by
    /// [`OrderHandler`] in one transaction; it emits `orders.confirmed` and `orders.cancelled`.
    pub struct OrderActor(OrderHandler);
}

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

    /// Reads, in one query, every order the batch is about into the transaction's
    /// book of orders (locked on PostgreSQL): the orders the gateway
    /// recorded cost their `orders.created` nothing, and each status change is decided in
    /// memory and written back with the others at commit.
    async fn begin_batch(
        &self,
        uow: &mut UnitOfWork,
        deliveries: &[&Delivery<InboundEvent>],
    ) -> Result<(), TxError> {
        let ids = InboundEvent::order_ids(deliveries);
        order_store::load(uow, ids.iter().map(String::as_str)).await?;
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

/// Counts an order reaching `status`, once the transaction committed.
fn counted(uow: &mut UnitOfWork, status: OrderStatus) {
    uow.after_commit(move || {
        domain_metrics()
            .orders
            .with_label_values(&[status.as_str()])
            .inc();
    });
}

/// Counts and logs something the saga should never see, once the transaction committed.
fn anomaly(uow: &mut UnitOfWork, kind: &'static str, order_id: &str, detail: &str) {
    let (order_id, detail) = (order_id.to_string(), detail.to_string());
    let span = tracing::Span::current();
    uow.after_commit(move || {
        domain_metrics()
            .saga_anomalies
            .with_label_values(&[kind])
            .inc();
        span.in_scope(|| tracing::error!(%order_id, kind, %detail, "saga anomaly"));
    });
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
            if order_store::advance(uow, &order_id, OrderStatus::Reserved, &change).await?
                == Advance::Applied
            {
                counted(uow, OrderStatus::Reserved);
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
            match order_store::advance(uow, &order_id, OrderStatus::Cancelled, &change).await? {
                Advance::Applied => counted(uow, OrderStatus::Cancelled),
                Advance::Stale(OrderStatus::Confirmed) => anomaly(
                    uow,
                    "cancelled_after_confirmed",
                    &order_id,
                    e.reason.as_str(),
                ),
                Advance::Stale(_) => {}
            }
        }
        // Its own echo: the order was confirmed in the transaction that emitted it.
        AnyEvent::OrderConfirmed(_) => {}
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
    if order_store::record_created(uow, &new).await? {
        counted(uow, OrderStatus::Pending);
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
    // Paid orders are confirmed at once (one step, both in the history); the event tells the
    // stock handler to mark the stock sold.
    let step = order_store::advance_via(
        uow,
        &order_id,
        Some(OrderStatus::Paid),
        OrderStatus::Confirmed,
        &change,
    )
    .await?;
    match step {
        Advance::Applied => {
            counted(uow, OrderStatus::Paid);
            counted(uow, OrderStatus::Confirmed);
        }
        Advance::Stale(OrderStatus::Cancelled) => {
            anomaly(
                uow,
                "paid_after_cancelled",
                &order_id,
                "payment succeeded for a cancelled order; it needs a refund",
            );
            return Ok(());
        }
        Advance::Stale(_) => return Ok(()),
    }
    let (amount_cents, span) = (e.amount_cents, tracing::Span::current());
    let logged_id = order_id.clone();
    uow.after_commit(move || {
        span.in_scope(|| tracing::info!(order_id = %logged_id, amount_cents, "order confirmed"));
    });
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
    match order_store::advance(uow, &order_id, OrderStatus::Cancelled, &change).await? {
        Advance::Applied => counted(uow, OrderStatus::Cancelled),
        Advance::Stale(OrderStatus::Confirmed) => {
            anomaly(uow, "cancel_after_confirmed", &order_id, reason.as_str());
            return Ok(false);
        }
        Advance::Stale(_) => return Ok(false),
    }
    let span = tracing::Span::current();
    let logged_id = order_id.clone();
    uow.after_commit(move || {
        span.in_scope(
            || tracing::info!(order_id = %logged_id, reason = reason.as_str(), "order cancelled"),
        );
    });
    let event = OrderCancelled {
        meta: EventMeta::caused_by(cause),
        version: Version,
        reason,
        detail,
    };
    uow.emit(outgoing(&event, lane)?);
    Ok(true)
}
