//! The payment actor: charges reserved orders through the circuit breaker, and makes sure a
//! cancelled order never stays charged.
//!
//! | receives             | does                                   | emits                                   |
//! |----------------------|----------------------------------------|-----------------------------------------|
//! | `inventory.reserved` | charges the amount (idempotently)      | `payments.succeeded` or `payments.failed` |
//! | `orders.cancelled`   | asks for any charge to be voided       | —                                       |
//!
//! The charge is made in `prepare`, outside the transaction (with the order id as the
//! provider's idempotency key, so a retry never charges twice), after one read of the
//! payments already recorded for the whole batch; its answer is recorded in the transaction.
//! A decline is an answer: `payments.failed` (declined). An unreachable, failing or slow
//! provider, or an open circuit, is not: the delivery is retried later with a growing delay,
//! and on its last allowed delivery the order fails as `unavailable`, which cancels it.
//!
//! A 5xx, a timeout or a broken connection does not prove that nothing was charged (a proxy's
//! 502 can hide a real charge): such an attempt is remembered as uncertain. The payment row is
//! where charging and cancelling meet: whichever of the two comes second sees the other, and
//! a charge that met (or may have met) a cancellation is marked `void_pending`, which the
//! [`PaymentVoider`](crate::payment_voider::PaymentVoider) carries out at the provider.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;

use jetflow_runtime::pacing::{Paced, Pacer};
use jetflow_runtime::supervisor::panic_message;
use jetflow_runtime::{
    ActorRef, BreakerActor, BreakerError, Delivery, DeliveryMeta, PreparedTxHandler, Preparing,
    TxError, UnitOfWork,
};
use jetflow_schemas::{
    AnyEvent, EventMeta, InventoryReserved, PaymentFailed, PaymentFailureReason, PaymentSucceeded,
    Version,
};
use tracing::Instrument;

use crate::events::outgoing;
use crate::handling::{Deps, DomainError, count_on_commit, span};
use crate::input::InboundEvent;
use crate::metrics::domain_metrics;
use crate::payment_client::{ChargeResult, PaymentClient, ProviderError};
use crate::payment_store::{self, NewPayment, PaymentRecord, PaymentStatus};
use crate::payment_voider::{PaymentVoider, Wake};

/// The inbox name of the payment handler (shared by both lanes and both streams).
pub const CONSUMER: &str = "payments";

jetflow_runtime::batch_actor! {
    /// The payment actor: charges reserved orders through the breaker, paced at the rate the
    /// provider grants, and voids the charges of cancelled orders. [`PaymentHandler`] charges
    /// a [`Batch`](jetflow_runtime::Batch) outside the transaction, then records it in one,
    /// emitting `payments.succeeded` or `payments.failed`.
    pub struct PaymentActor(PaymentHandler);
}

/// The downstream's name in the pacing metrics.
const PROVIDER: &str = "payment-provider";
/// Charges in flight at first, and at most (a batch's worth).
const PACE_INITIAL: usize = 16;
const PACE_MAX: usize = 256;

/// The payment handler.
#[derive(Clone)]
pub struct PaymentHandler {
    deps: Deps,
    client: PaymentClient,
    breaker: ActorRef<BreakerActor>,
    voider: ActorRef<PaymentVoider>,
    /// Paces the charges at the rate the provider grants (shared by both lanes).
    pacer: Pacer,
}

impl PaymentHandler {
    /// A payment handler calling `client` through `breaker`, paced at the rate the
    /// provider grants; `voider` voids charges of cancelled orders.
    pub fn new(
        deps: Deps,
        client: PaymentClient,
        breaker: ActorRef<BreakerActor>,
        voider: ActorRef<PaymentVoider>,
    ) -> Self {
        Self {
            deps,
            client,
            breaker,
            voider,
            pacer: Pacer::new(PROVIDER, PACE_INITIAL, PACE_MAX),
        }
    }
}

impl PaymentHandler {
    /// Reads the payments recorded for `ids` (one query), then records, before any call, that
    /// the orders with none are about to be charged (one statement): if the transaction that
    /// would record the answer is lost, a cancellation still knows to void the charge.
    async fn read_and_mark(
        &self,
        ids: &[&str],
    ) -> Result<HashMap<String, PaymentRecord>, sqlx::Error> {
        let mut pooled = self.deps.db.acquire().await?;
        let found = payment_store::get_many(pooled.conn(), ids).await?;
        let mut to_charge: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !found.contains_key(*id))
            .collect();
        to_charge.sort_unstable();
        to_charge.dedup();
        payment_store::mark_attempted(pooled.conn(), &to_charge).await?;
        Ok(found)
    }
}

/// What `prepare` found out, outside the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do (not a payment event, or the payment was decided before).
    Nothing,
    /// The order was cancelled before its payment was recorded, and an earlier attempt may
    /// have charged it: void.
    VoidTombstoned,
    /// The provider charged.
    Charged {
        /// The provider's reference.
        payment_id: String,
    },
    /// The provider declined.
    Declined {
        /// Its reason.
        detail: String,
    },
    /// No answer on the last allowed delivery: the order fails as `unavailable`.
    GaveUp {
        /// Why.
        detail: String,
        /// Whether an attempt may have charged (then the charge is voided).
        uncertain: bool,
    },
    /// The order was cancelled.
    Cancelled {
        /// Whether an attempt may have charged without being recorded.
        uncertain: bool,
    },
}

impl PreparedTxHandler for PaymentHandler {
    type Message = InboundEvent;
    type Prepared = Step;

    async fn prepare(&self, d: &Delivery<InboundEvent>) -> Result<Step, TxError> {
        let recorded = match &d.message.event {
            AnyEvent::InventoryReserved(e) => {
                let id = e.meta.order_id.to_string();
                self.read_and_mark(&[id.as_str()]).await?.remove(&id)
            }
            _ => None,
        };
        self.prepare_one(d, recorded).await
    }

    /// Reads the payments of every reserved order of the batch in one query, then charges
    /// them at once, each in its span.
    async fn prepare_batch(
        &self,
        batch: &[Preparing<'_, InboundEvent>],
    ) -> Vec<Result<Step, TxError>> {
        let reserved: Vec<String> = batch
            .iter()
            .filter_map(|p| match &p.delivery.message.event {
                AnyEvent::InventoryReserved(e) => Some(e.meta.order_id.to_string()),
                _ => None,
            })
            .collect();
        let ids: Vec<&str> = reserved.iter().map(String::as_str).collect();
        let recorded = if ids.is_empty() {
            HashMap::new()
        } else {
            match self.read_and_mark(&ids).await {
                Ok(found) => found,
                Err(e) => {
                    let reason = format!("database: {e}");
                    return batch.iter().map(|_| Err(TxError::retry(&reason))).collect();
                }
            }
        };
        // Every copy of an order's event in the batch sees what was recorded for it.
        futures::future::join_all(batch.iter().map(|p| {
            let known = match &p.delivery.message.event {
                AnyEvent::InventoryReserved(e) => {
                    recorded.get(&e.meta.order_id.to_string()).cloned()
                }
                _ => None,
            };
            let prepared = AssertUnwindSafe(self.prepare_one(p.delivery, known)).catch_unwind();
            async move {
                match prepared.await {
                    Ok(result) => result,
                    Err(panic) => Err(TxError::Panicked(panic_message(panic.as_ref()))),
                }
            }
            .instrument(p.span.clone())
        }))
        .await
    }

    /// Reads the payment rows of every order of the batch in one query (locked on
    /// PostgreSQL), into the transaction's book of payments:
    /// each delivery records or voids against it, and the rows are written at commit.
    async fn begin_batch(
        &self,
        uow: &mut UnitOfWork,
        deliveries: &[&Delivery<InboundEvent>],
    ) -> Result<(), TxError> {
        let ids = InboundEvent::order_ids(deliveries);
        payment_store::load(uow, ids.iter().map(String::as_str)).await?;
        Ok(())
    }

    async fn handle(
        &self,
        uow: &mut UnitOfWork,
        d: &Delivery<InboundEvent>,
        step: Step,
    ) -> Result<(), TxError> {
        let result = match &d.message.event {
            AnyEvent::InventoryReserved(e) => self.record(uow, d, e, step).await,
            AnyEvent::OrderCancelled(e) => {
                self.on_cancelled(uow, &e.meta.order_id.to_string(), step)
                    .await
            }
            _ => Ok(()),
        };
        result.map_err(TxError::from)
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

/// The delay before payment retry number `delivered + 1`: base · 2^(delivered-1), capped.
pub fn retry_delay(base: Duration, max: Duration, delivered: u32) -> Duration {
    let factor = 1u32 << delivered.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(max)
}

/// Why a charge could not be answered in `prepare`.
enum PrepareError {
    Db(sqlx::Error),
    Retry(Duration, String),
}

impl From<sqlx::Error> for PrepareError {
    fn from(e: sqlx::Error) -> Self {
        PrepareError::Db(e)
    }
}

impl From<PrepareError> for TxError {
    fn from(e: PrepareError) -> Self {
        match e {
            PrepareError::Db(e) => TxError::Database(e),
            PrepareError::Retry(delay, reason) => TxError::retry_after(delay, reason),
        }
    }
}

impl PaymentHandler {
    /// What to do about one delivery, given the payment recorded for its order (if it is an
    /// `inventory.reserved`).
    async fn prepare_one(
        &self,
        d: &Delivery<InboundEvent>,
        recorded: Option<PaymentRecord>,
    ) -> Result<Step, TxError> {
        match &d.message.event {
            AnyEvent::InventoryReserved(e) => {
                self.charge(e, &d.meta, recorded).await.map_err(Into::into)
            }
            AnyEvent::OrderCancelled(e) => {
                let order_id = e.meta.order_id.to_string();
                let uncertain = payment_store::was_uncertain(self.deps.db.pool(), &order_id)
                    .await
                    .map_err(TxError::Database)?;
                Ok(Step::Cancelled { uncertain })
            }
            _ => Ok(Step::Nothing),
        }
    }

    /// Charges the order (outside any transaction), unless its payment was decided before
    /// (`recorded`).
    async fn charge(
        &self,
        reserved: &InventoryReserved,
        meta: &DeliveryMeta,
        recorded: Option<PaymentRecord>,
    ) -> Result<Step, PrepareError> {
        let pool = self.deps.db.pool();
        let order_id = reserved.meta.order_id.to_string();
        match recorded {
            Some(p) if p.status == PaymentStatus::Cancelled => {
                // Cancelled before we recorded anything. If an earlier attempt may have
                // charged (it timed out, or it charged and met the cancellation), void it.
                return Ok(if payment_store::was_uncertain(pool, &order_id).await? {
                    Step::VoidTombstoned
                } else {
                    Step::Nothing
                });
            }
            // Decided before (a redelivery, or the other lane's copy): nothing to do.
            Some(_) => return Ok(Step::Nothing),
            None => {}
        }
        let amount = i64::try_from(reserved.amount_cents).unwrap_or(i64::MAX);
        // A push-back (429) is no failure: the pacer slows down and makes the call again,
        // inside this delivery, and the breaker saw an answer.
        let answer = self
            .pacer
            .run(|| {
                let call = {
                    let client = self.client.clone();
                    let order_id = order_id.clone();
                    let customer = reserved.customer_id.clone();
                    async move { client.charge(&order_id, &customer, amount).await }
                };
                async move {
                    match self.breaker.call(call).await {
                        Ok(ChargeResult::Throttled { retry_after }) => Paced::SlowDown(retry_after),
                        other => Paced::Done(other),
                    }
                }
            })
            .await;
        let m = domain_metrics();
        let err = match answer {
            Ok(ChargeResult::Succeeded { payment_id }) => return Ok(Step::Charged { payment_id }),
            Ok(ChargeResult::Declined { reason }) => {
                return Ok(Step::Declined {
                    detail: reason.unwrap_or_else(|| "declined by the provider".to_string()),
                });
            }
            // The pacer makes a pushed-back call again; were one to come through, it is
            // retried like an unavailable provider.
            Ok(ChargeResult::Throttled { .. }) => {
                BreakerError::Failed(ProviderError::Unavailable("pushed back".to_string()))
            }
            Err(err) => err,
        };
        let (why, uncertain) = match &err {
            BreakerError::Open { .. } => ("circuit open".to_string(), false),
            BreakerError::Timeout(d) => (format!("provider timed out after {d:?}"), true),
            BreakerError::Failed(ProviderError::Unavailable(e)) => (e.clone(), false),
            BreakerError::Failed(ProviderError::Uncertain(e)) => (e.clone(), true),
            BreakerError::Failed(ProviderError::Unexpected(e)) => (e.clone(), true),
        };
        if uncertain {
            payment_store::mark_uncertain(pool, &order_id).await?;
        }
        if !meta.is_last_delivery() {
            m.payments.with_label_values(&["retried"]).inc();
            let config = &self.deps.config;
            let delay = retry_delay(
                config.payment_retry_base,
                config.payment_retry_max,
                meta.delivered,
            );
            tracing::info!(%order_id, delivered = meta.delivered, retry_in_ms = delay.as_millis() as u64, reason = %why, "payment provider unavailable; retrying later");
            return Err(PrepareError::Retry(
                delay,
                format!("payment provider unavailable: {why}"),
            ));
        }
        let uncertain = uncertain || payment_store::was_uncertain(pool, &order_id).await?;
        let mut detail = format!("gave up after {} attempts: {why}", meta.delivered);
        if uncertain {
            detail.push_str("; a charge the provider may have made is voided");
        }
        Ok(Step::GaveUp { detail, uncertain })
    }

    /// Records the outcome of the charge, with its event, in the transaction.
    async fn record(
        &self,
        uow: &mut UnitOfWork,
        d: &Delivery<InboundEvent>,
        reserved: &InventoryReserved,
        step: Step,
    ) -> Result<(), DomainError> {
        let order_id = reserved.meta.order_id.to_string();
        let amount = i64::try_from(reserved.amount_cents).unwrap_or(i64::MAX);
        let (status, payment_id, detail) = match &step {
            Step::Nothing | Step::Cancelled { .. } => return Ok(()),
            Step::VoidTombstoned => {
                self.void(uow, &order_id, &[PaymentStatus::Cancelled])
                    .await?;
                return Ok(());
            }
            Step::Charged { payment_id } => {
                (PaymentStatus::Succeeded, Some(payment_id.as_str()), None)
            }
            Step::Declined { detail } => (PaymentStatus::Declined, None, Some(detail.as_str())),
            Step::GaveUp { detail, uncertain } => (
                if *uncertain {
                    PaymentStatus::VoidPending
                } else {
                    PaymentStatus::Unavailable
                },
                None,
                Some(detail.as_str()),
            ),
        };
        let new = NewPayment {
            order_id: &order_id,
            status,
            amount_cents: amount,
            payment_id,
            attempts: d.meta.delivered,
            detail,
        };
        if !payment_store::record(uow, &new).await? {
            // Recorded before: by a concurrent delivery (nothing to do), or as cancelled while
            // we were charging, in which case what we charged is given back.
            if matches!(step, Step::Charged { .. }) {
                if self
                    .void(uow, &order_id, &[PaymentStatus::Cancelled])
                    .await?
                {
                    tracing::warn!(%order_id, "the order was cancelled while it was charged; voiding the charge");
                }
            } else if matches!(
                step,
                Step::GaveUp {
                    uncertain: true,
                    ..
                }
            ) {
                self.void(uow, &order_id, &[PaymentStatus::Cancelled])
                    .await?;
            }
            return Ok(());
        }
        if status == PaymentStatus::VoidPending {
            self.wake_voider(uow, &order_id);
        }
        let cause = EventMeta::caused_by(&reserved.meta);
        let lane = d.message.subject.lane;
        match step {
            Step::Charged { payment_id } => {
                let event = PaymentSucceeded {
                    meta: cause,
                    version: Version,
                    amount_cents: reserved.amount_cents,
                    payment_id,
                };
                uow.emit(outgoing(&event, lane)?);
            }
            _ => {
                let reason = if status == PaymentStatus::Declined {
                    PaymentFailureReason::Declined
                } else {
                    PaymentFailureReason::Unavailable
                };
                let event = PaymentFailed {
                    meta: cause,
                    version: Version,
                    amount_cents: reserved.amount_cents,
                    reason,
                    detail: detail.map(str::to_string),
                };
                uow.emit(outgoing(&event, lane)?);
            }
        }
        let result = match status {
            PaymentStatus::VoidPending => "unavailable",
            other => other.as_str(),
        };
        count_on_commit(uow, domain_metrics().payments.with_label_values(&[result]));
        tracing::info!(%order_id, result, amount_cents = amount, "payment decided");
        Ok(())
    }

    /// An order was cancelled (for whatever reason: declined, out of stock, timed out). If it
    /// was charged, or may have been, the charge is voided; if nothing was recorded yet, a
    /// tombstone makes a late charge void itself.
    async fn on_cancelled(
        &self,
        uow: &mut UnitOfWork,
        order_id: &str,
        step: Step,
    ) -> Result<(), DomainError> {
        let uncertain = matches!(step, Step::Cancelled { uncertain: true });
        let tombstone = NewPayment {
            order_id,
            status: if uncertain {
                PaymentStatus::VoidPending
            } else {
                PaymentStatus::Cancelled
            },
            amount_cents: 0,
            payment_id: None,
            attempts: 0,
            detail: Some("order cancelled before any charge was recorded"),
        };
        if payment_store::record(uow, &tombstone).await? {
            if uncertain {
                self.wake_voider(uow, order_id);
            }
            return Ok(());
        }
        let mut from = vec![PaymentStatus::Succeeded];
        if uncertain {
            from.push(PaymentStatus::Unavailable);
        }
        if self.void(uow, order_id, &from).await? {
            tracing::warn!(%order_id, "cancelled order's charge to be voided");
        }
        Ok(())
    }

    /// Marks the order's charge `void_pending` if its payment is in one of `from`, and wakes
    /// the voider once the transaction commits.
    async fn void(
        &self,
        uow: &mut UnitOfWork,
        order_id: &str,
        from: &[PaymentStatus],
    ) -> Result<bool, DomainError> {
        let requested = payment_store::request_void(uow, order_id, from).await?;
        if requested {
            self.wake_voider(uow, order_id);
        }
        Ok(requested)
    }

    fn wake_voider(&self, uow: &mut UnitOfWork, order_id: &str) {
        let voider = self.voider.clone();
        let order_id = order_id.to_string();
        uow.after_commit(move || voider.addr().do_send(Wake(order_id)));
    }
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
