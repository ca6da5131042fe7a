//! `PaymentActor`: charges reserved orders through the circuit breaker.
//!
//! | receives             | does                                   | emits                                   |
//! |----------------------|----------------------------------------|-----------------------------------------|
//! | `inventory.reserved` | charges the amount (idempotently)      | `payments.succeeded` or `payments.failed` |
//!
//! A decline is an answer: `payments.failed` (declined). An unreachable, failing or slow
//! provider, or an open circuit, is not: the delivery is retried later with a growing delay
//! (nak), and on its last allowed delivery the order fails as `unavailable`, which cancels
//! it and releases its stock. The charge uses the order id as idempotency key, so a retry
//! after a lost answer never charges twice.

use std::time::Duration;

use actix::prelude::*;
use jetflow_runtime::{ActorRef, BreakerActor, BreakerError, Delivery, DeliveryMeta, Outcome};
use jetflow_schemas::{
    AnyEvent, EventMeta, InventoryReserved, PaymentFailed, PaymentFailureReason, PaymentSucceeded,
    Version,
};

use crate::events::outgoing;
use crate::handling::{Deps, DomainError};
use crate::input::InboundEvent;
use crate::metrics::domain_metrics;
use crate::payment_client::{ChargeResult, PaymentClient, ProviderError};
use crate::payment_store;
use crate::unit_of_work::UnitOfWork;

/// The inbox name of the payment actor.
pub const CONSUMER: &str = "payments";

/// The payment actor.
pub struct PaymentActor {
    deps: Deps,
    client: PaymentClient,
    breaker: ActorRef<BreakerActor>,
}

impl PaymentActor {
    /// A payment actor calling `client` through `breaker`.
    pub fn new(deps: Deps, client: PaymentClient, breaker: ActorRef<BreakerActor>) -> Self {
        Self {
            deps,
            client,
            breaker,
        }
    }
}

impl Actor for PaymentActor {
    type Context = Context<Self>;
}

impl Supervised for PaymentActor {}

impl Handler<Delivery<InboundEvent>> for PaymentActor {
    type Result = ResponseActFuture<Self, Outcome>;

    fn handle(&mut self, msg: Delivery<InboundEvent>, _: &mut Context<Self>) -> Self::Result {
        let deps = self.deps.clone();
        let client = self.client.clone();
        let breaker = self.breaker.clone();
        crate::handling::respond("payment", msg, move |input, meta| async move {
            match &input.event {
                AnyEvent::InventoryReserved(e) => {
                    charge(&deps, &client, &breaker, &input, e, &meta).await
                }
                AnyEvent::OrderCancelled(e) => {
                    void_if_charged(&deps, &client, &e.meta.order_id.to_string(), &meta).await
                }
                _ => Ok(Outcome::Ack),
            }
        })
    }
}

/// An order was cancelled (for whatever reason: declined, out of stock, timed out). If a
/// charge was made for it, or may have been (an attempt without a clear answer), it is voided
/// at the provider, so a cancelled order never stays charged. Voiding is idempotent; until the
/// provider answers, the delivery is retried (and dead-lettered when retries run out).
async fn void_if_charged(
    deps: &Deps,
    client: &PaymentClient,
    order_id: &str,
    meta: &DeliveryMeta,
) -> Result<Outcome, DomainError> {
    let recorded = payment_store::get(deps.db.pool(), order_id).await?;
    let charged = recorded.as_ref().is_some_and(|p| p.status == "succeeded");
    let uncertain = payment_store::was_uncertain(deps.db.pool(), order_id).await?;
    if !charged && !uncertain {
        if recorded.is_none() {
            // Nothing charged: leave a tombstone so a late `inventory.reserved` (a redelivery
            // after the cancellation) is not charged either.
            let mut conn = deps.db.pool().acquire().await?;
            payment_store::record(
                &mut conn,
                order_id,
                "cancelled",
                0,
                None,
                0,
                Some("order cancelled before any charge"),
            )
            .await?;
        }
        return Ok(Outcome::Ack);
    }
    match client.void(order_id).await {
        Ok(()) => {
            if charged {
                payment_store::mark_voided(deps.db.pool(), order_id).await?;
            }
            domain_metrics()
                .payments
                .with_label_values(&["voided"])
                .inc();
            tracing::warn!(%order_id, charged, uncertain, "cancelled order's charge voided");
            Ok(Outcome::Ack)
        }
        Err(e) => {
            let delay = retry_delay(
                deps.config.payment_retry_base,
                deps.config.payment_retry_max,
                meta.delivered,
            );
            Ok(Outcome::retry_after(
                delay,
                format!(
                    "order {order_id} is cancelled but its charge could not be voided yet: {e}"
                ),
            ))
        }
    }
}

/// The delay before payment retry number `delivered + 1`: base · 2^(delivered-1), capped.
pub fn retry_delay(base: Duration, max: Duration, delivered: u32) -> Duration {
    let factor = 1u32 << delivered.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(max)
}

async fn charge(
    deps: &Deps,
    client: &PaymentClient,
    breaker: &ActorRef<BreakerActor>,
    input: &InboundEvent,
    reserved: &InventoryReserved,
    meta: &DeliveryMeta,
) -> Result<Outcome, DomainError> {
    let order_id = reserved.meta.order_id.to_string();
    let amount = i64::try_from(reserved.amount_cents).unwrap_or(i64::MAX);
    if payment_store::get(deps.db.pool(), &order_id)
        .await?
        .is_some()
    {
        // Already decided (a redelivery or the other lane's copy): the inbox of that
        // decision holds its event; nothing to do.
        return Ok(Outcome::Ack);
    }
    let call = {
        let client = client.clone();
        let order_id = order_id.clone();
        let customer = reserved.customer_id.clone();
        async move { client.charge(&order_id, &customer, amount).await }
    };
    let m = domain_metrics();
    let (result, reason, payment_id, detail) = match breaker.call(call).await {
        Ok(ChargeResult::Succeeded { payment_id }) => ("succeeded", None, Some(payment_id), None),
        Ok(ChargeResult::Declined { reason }) => (
            "declined",
            Some(PaymentFailureReason::Declined),
            None,
            Some(reason.unwrap_or_else(|| "declined by the provider".to_string())),
        ),
        Err(err) => {
            let (why, uncertain) = match &err {
                BreakerError::Open { .. } => ("circuit open".to_string(), false),
                BreakerError::Timeout(d) => (format!("provider timed out after {d:?}"), true),
                BreakerError::Failed(ProviderError::Unavailable(e)) => (e.clone(), false),
                BreakerError::Failed(ProviderError::Uncertain(e)) => (e.clone(), true),
                BreakerError::Failed(ProviderError::Unexpected(e)) => (e.clone(), true),
            };
            if uncertain {
                payment_store::mark_uncertain(deps.db.pool(), &order_id).await?;
            }
            if !meta.is_last_delivery() {
                m.payments.with_label_values(&["retried"]).inc();
                let delay = retry_delay(
                    deps.config.payment_retry_base,
                    deps.config.payment_retry_max,
                    meta.delivered,
                );
                tracing::info!(%order_id, delivered = meta.delivered, retry_in_ms = delay.as_millis() as u64, reason = %why, "payment provider unavailable; retrying later");
                return Ok(Outcome::retry_after(
                    delay,
                    format!("payment provider unavailable: {why}"),
                ));
            }
            // Giving up. If an attempt may have charged, void it first: a cancelled order
            // must not stay charged. If that fails too, the message is dead-lettered (replay
            // it once the provider is back) rather than cancelling a possibly charged order.
            let mut detail = format!("gave up after {} attempts: {why}", meta.delivered);
            if payment_store::was_uncertain(deps.db.pool(), &order_id).await? {
                if let Err(e) = client.void(&order_id).await {
                    tracing::error!(%order_id, error = %e, "cannot void a possibly made charge; the delivery is retried or dead-lettered");
                    return Ok(Outcome::retry(format!(
                        "order {order_id} may have been charged and the charge could not be voided ({e}); replay this message once the payment provider is reachable"
                    )));
                }
                m.payments.with_label_values(&["voided"]).inc();
                detail.push_str("; any charge made was voided");
            }
            (
                "unavailable",
                Some(PaymentFailureReason::Unavailable),
                None,
                Some(detail),
            )
        }
    };
    let Some(mut uow) = UnitOfWork::begin(&deps.db, CONSUMER, &input.key()).await? else {
        return Ok(Outcome::Ack);
    };
    if !payment_store::record(
        uow.conn(),
        &order_id,
        result,
        amount,
        payment_id.as_deref(),
        meta.delivered,
        detail.as_deref(),
    )
    .await?
    {
        // A concurrent delivery recorded the payment first.
        uow.rollback().await?;
        return Ok(Outcome::Ack);
    }
    let lane = input.subject.lane;
    let traceparent = meta.traceparent();
    let cause = EventMeta::caused_by(&reserved.meta);
    match (reason, payment_id) {
        (None, Some(payment_id)) => {
            let event = PaymentSucceeded {
                meta: cause,
                version: Version,
                amount_cents: reserved.amount_cents,
                payment_id,
            };
            uow.emit(outgoing(&event, lane, traceparent)?);
        }
        (reason, _) => {
            let event = PaymentFailed {
                meta: cause,
                version: Version,
                amount_cents: reserved.amount_cents,
                reason: reason.unwrap_or(PaymentFailureReason::Unavailable),
                detail,
            };
            uow.emit(outgoing(&event, lane, traceparent)?);
        }
    }
    uow.commit(&deps.outbox).await?;
    m.payments.with_label_values(&[result]).inc();
    tracing::info!(%order_id, result, amount_cents = amount, "payment decided");
    Ok(Outcome::Ack)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_and_cap() {
        let b = Duration::from_secs(2);
        let m = Duration::from_secs(30);
        let d: Vec<u64> = (1..=6).map(|n| retry_delay(b, m, n).as_secs()).collect();
        assert_eq!(d, vec![2, 4, 8, 16, 30, 30]);
    }
}
