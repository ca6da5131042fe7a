//! `OrderSweeper`: no order stays unfinished forever.
//!
//! Every `order_sweep_interval` it cancels the orders that did not finish within
//! `order_timeout` (`timed_out`), which releases their stock and voids any charge, even when
//! one of their events was dead-lettered. It also refreshes `jetflow_orders_by_status`. Two
//! sweepers (two replicas of the orders role) are harmless: a cancellation is a conditional
//! update, and only the one that applies it emits `orders.cancelled`.

use actix::prelude::*;
use jetflow_runtime::{StopActor, UnitOfWork};
use jetflow_schemas::{CancelReason, EventMeta};
use uuid::Uuid;

use crate::handling::{Deps, DomainError, lane_of};
use crate::metrics::domain_metrics;
use crate::now_ms;
use crate::order_actor::cancel;
use crate::order_store::{self, OrderStatus};

/// Orders cancelled by one sweep at most (the next sweep takes the rest).
const SWEEP_LIMIT: i64 = 100;

/// The sweeper actor.
pub struct OrderSweeper {
    deps: Deps,
    sweeping: bool,
}

impl OrderSweeper {
    /// A sweeper over `deps`.
    pub fn new(deps: Deps) -> Self {
        Self {
            deps,
            sweeping: false,
        }
    }
}

impl Actor for OrderSweeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.sweeping = false;
        ctx.run_interval(self.deps.config.order_sweep_interval, |act, ctx| {
            if act.sweeping {
                return;
            }
            act.sweeping = true;
            let deps = act.deps.clone();
            ctx.spawn(
                async move {
                    let swept = sweep(&deps).await;
                    refresh_status_gauge(&deps).await;
                    swept
                }
                .into_actor(act)
                .map(|result, act, _| {
                    act.sweeping = false;
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "order timeout sweep failed");
                    }
                }),
            );
        });
    }
}

impl Supervised for OrderSweeper {}

impl Handler<StopActor> for OrderSweeper {
    type Result = ();

    fn handle(&mut self, _: StopActor, ctx: &mut Context<Self>) {
        jetflow_runtime::actor_ref::stop_actor(ctx);
    }
}

async fn refresh_status_gauge(deps: &Deps) {
    if let Ok(counts) = order_store::count_by_status(deps.db.pool()).await {
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

/// Cancels orders that did not finish in time (one transaction each). Returns how many.
pub async fn sweep(deps: &Deps) -> Result<usize, DomainError> {
    let timeout = i64::try_from(deps.config.order_timeout.as_millis()).unwrap_or(i64::MAX);
    let overdue = order_store::stale(
        deps.db.pool(),
        now_ms().saturating_sub(timeout),
        SWEEP_LIMIT,
    )
    .await?;
    let mut cancelled = 0;
    for (order_id, priority) in overdue {
        let Ok(id) = Uuid::try_parse(&order_id) else {
            continue;
        };
        let correlation_id = order_store::get(deps.db.pool(), &order_id)
            .await?
            .and_then(|r| r.correlation_id)
            .unwrap_or_else(|| order_id.clone());
        let cause = EventMeta::new(id, correlation_id);
        let lane = lane_of(priority.as_deref().unwrap_or_default());
        let detail = format!(
            "not finished within {}",
            humantime::format_duration(deps.config.order_timeout)
        );
        let mut uow = UnitOfWork::begin(&deps.db).await?;
        if cancel(&mut uow, &cause, CancelReason::TimedOut, Some(detail), lane).await? {
            cancelled += 1;
            tracing::warn!(%order_id, "order timed out; cancelled");
        }
        uow.commit(&deps.outbox).await?;
    }
    Ok(cancelled)
}
