//! `OrderActor`: the order state machine, its read model, and the saga's decisions.
//!
//! | receives             | does                                        | emits               |
//! |----------------------|---------------------------------------------|---------------------|
//! | `orders.created`     | records the order as pending                | —                   |
//! | `inventory.reserved` | reserved, with the amount                   | —                   |
//! | `payments.succeeded` | paid, then confirmed                        | `orders.confirmed`  |
//! | `payments.failed`    | cancelled (payment_declined / _unavailable) | `orders.cancelled` (the stock actor releases the stock) |
//! | `orders.cancelled`   | cancelled with the stock actor's reason     | —                   |
//! | `orders.confirmed`   | confirmed (its own echo: nothing to do)     | —                   |
//!
//! It also sweeps: an order that has not finished within the order timeout is cancelled
//! (`timed_out`), which releases its stock, so no order stays unfinished forever even when
//! one of its events was dead-lettered.

use std::time::Duration;

use actix::prelude::*;
use jetflow_runtime::{Delivery, DeliveryMeta, Outcome};
use jetflow_schemas::{
    AnyEvent, CancelReason, EventMeta, OrderCancelled, OrderConfirmed, PaymentFailed,
    PaymentFailureReason, PaymentSucceeded, Priority, Version,
};
use uuid::Uuid;

use crate::db::now_ms;
use crate::events::outgoing;
use crate::handling::{Created, Deps, DomainError, created, lane_name, lane_of};
use crate::input::InboundEvent;
use crate::metrics::domain_metrics;
use crate::order_store::{self, Advance, Change, NewOrder, OrderStatus};
use crate::unit_of_work::UnitOfWork;

/// The inbox name of the order actor.
pub const CONSUMER: &str = "orders";

/// How often the sweeper looks for overdue orders.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

/// The order actor.
pub struct OrderActor {
    deps: Deps,
    sweeps: bool,
    sweeping: bool,
}

impl OrderActor {
    /// An order actor over `deps` that also sweeps overdue orders.
    pub fn new(deps: Deps) -> Self {
        Self {
            deps,
            sweeps: true,
            sweeping: false,
        }
    }

    /// An order actor that only handles events (the express lane's: one sweeper is enough).
    pub fn without_sweeper(deps: Deps) -> Self {
        Self {
            sweeps: false,
            ..Self::new(deps)
        }
    }
}

impl Actor for OrderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.sweeping = false;
        if !self.sweeps {
            return;
        }
        ctx.run_interval(SWEEP_EVERY, |act, ctx| {
            if act.sweeping {
                return;
            }
            act.sweeping = true;
            let deps = act.deps.clone();
            ctx.spawn(
                async move { sweep(&deps).await }
                    .into_actor(act)
                    .map(|result, act, _| {
                        act.sweeping = false;
                        if let Err(e) = result {
                            tracing::warn!(error = %e, "order timeout sweep failed");
                        }
                    }),
            );
        });
        ctx.run_interval(Duration::from_secs(5), |act, ctx| {
            let db = act.deps.db.clone();
            ctx.spawn(
                async move {
                    if let Ok(counts) = order_store::count_by_status(db.pool()).await {
                        let gauge = &domain_metrics().orders_by_status;
                        for status in OrderStatus::ALL {
                            let n = counts
                                .iter()
                                .find(|(s, _)| s == status.as_str())
                                .map_or(0, |(_, n)| *n);
                            gauge.with_label_values(&[status.as_str()]).set(n);
                        }
                    }
                }
                .into_actor(act),
            );
        });
    }
}

impl Supervised for OrderActor {}

impl Handler<Delivery<InboundEvent>> for OrderActor {
    type Result = ResponseActFuture<Self, Outcome>;

    fn handle(&mut self, msg: Delivery<InboundEvent>, _: &mut Context<Self>) -> Self::Result {
        let deps = self.deps.clone();
        crate::handling::respond("order", msg, move |input, meta| async move {
            handle(&deps, &input, &meta).await
        })
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

async fn handle(
    deps: &Deps,
    input: &InboundEvent,
    meta: &DeliveryMeta,
) -> Result<Outcome, DomainError> {
    let Some(mut uow) = UnitOfWork::begin(&deps.db, CONSUMER, &input.key()).await? else {
        return Ok(Outcome::Ack);
    };
    let lane = input.subject.lane;
    let traceparent = meta.traceparent();
    match &input.event {
        AnyEvent::OrderCreatedV1(_) | AnyEvent::OrderCreatedV2(_) => {
            if let Some(c) = created(&input.event) {
                on_created(&mut uow, c).await?;
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
        AnyEvent::PaymentSucceeded(e) => on_paid(&mut uow, e, lane, traceparent).await?,
        AnyEvent::PaymentFailed(e) => on_payment_failed(&mut uow, e, lane, traceparent).await?,
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
    uow.commit(&deps.outbox).await?;
    Ok(Outcome::Ack)
}

async fn on_created(uow: &mut UnitOfWork, c: Created<'_>) -> Result<(), DomainError> {
    let order_id = c.meta.order_id.to_string();
    let new = NewOrder {
        order_id: &order_id,
        customer_id: c.customer_id,
        items: serde_json::to_value(c.items).unwrap_or_default(),
        priority: lane_name(c.priority),
        shipping_address: c
            .shipping_address
            .and_then(|a| serde_json::to_value(a).ok()),
        correlation_id: &c.meta.correlation_id,
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
    traceparent: Option<&str>,
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
    let confirmed = OrderConfirmed {
        meta: EventMeta::caused_by(&e.meta),
        version: Version,
        amount_cents: e.amount_cents,
    };
    uow.emit(outgoing(&confirmed, lane, traceparent)?);
    Ok(())
}

async fn on_payment_failed(
    uow: &mut UnitOfWork,
    e: &PaymentFailed,
    lane: Priority,
    traceparent: Option<&str>,
) -> Result<(), DomainError> {
    let reason = match e.reason {
        PaymentFailureReason::Declined => CancelReason::PaymentDeclined,
        PaymentFailureReason::Unavailable => CancelReason::PaymentUnavailable,
    };
    cancel(uow, &e.meta, reason, e.detail.clone(), lane, traceparent).await
}

/// Cancels an order if it is not finished, and emits `orders.cancelled` so that its stock is
/// released.
async fn cancel(
    uow: &mut UnitOfWork,
    cause: &EventMeta,
    reason: CancelReason,
    detail: Option<String>,
    lane: Priority,
    traceparent: Option<&str>,
) -> Result<(), DomainError> {
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
            return Ok(());
        }
        Advance::Stale(_) => return Ok(()),
    }
    let event = OrderCancelled {
        meta: EventMeta::caused_by(cause),
        version: Version,
        reason,
        detail,
    };
    uow.emit(outgoing(&event, lane, traceparent)?);
    Ok(())
}

/// Cancels orders that did not finish in time. Returns how many.
pub async fn sweep(deps: &Deps) -> Result<usize, DomainError> {
    let timeout = i64::try_from(deps.config.order_timeout.as_millis()).unwrap_or(i64::MAX);
    let overdue = order_store::stale(deps.db.pool(), now_ms().saturating_sub(timeout), 100).await?;
    let mut cancelled = 0;
    for (order_id, priority) in overdue {
        let Ok(id) = Uuid::try_parse(&order_id) else {
            continue;
        };
        let record = order_store::get(deps.db.pool(), &order_id).await?;
        let correlation_id = record
            .and_then(|r| r.correlation_id)
            .unwrap_or_else(|| order_id.clone());
        let cause = EventMeta::new(id, correlation_id);
        let mut uow = UnitOfWork::begin_command(&deps.db).await?;
        let lane = lane_of(priority.as_deref().unwrap_or("standard"));
        let detail = format!(
            "not finished within {}s",
            deps.config.order_timeout.as_secs()
        );
        cancel(
            &mut uow,
            &cause,
            CancelReason::TimedOut,
            Some(detail),
            lane,
            None,
        )
        .await?;
        if !uow.events().is_empty() {
            cancelled += 1;
            tracing::warn!(%order_id, "order timed out; cancelled");
        }
        uow.commit(&deps.outbox).await?;
    }
    Ok(cancelled)
}
