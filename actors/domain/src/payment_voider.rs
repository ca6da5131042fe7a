//! `PaymentVoider`: gives back the charges of cancelled orders.
//!
//! The payment handler marks a payment `void_pending` in the transaction that learns the
//! order was cancelled while it was (or may have been) charged, and wakes the voider once
//! that transaction committed. The voider calls the provider's void (idempotent) and records
//! the payment `voided`. What it cannot void now (the provider is down) it tries again at
//! every scan, so a cancelled order's charge is given back as soon as the provider answers,
//! whichever process is alive then. `jetflow_payment_voids_pending` shows what waits.

use std::collections::HashSet;
use std::time::Duration;

use actix::prelude::*;
use jetflow_runtime::{Database, StopActor};

use crate::metrics::domain_metrics;
use crate::payment_client::PaymentClient;
use crate::payment_store;

/// Payments voided per scan at most.
const SCAN_LIMIT: i64 = 200;

/// Void this order's charge now.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Wake(pub String);

/// The voider actor.
pub struct PaymentVoider {
    db: Database,
    client: PaymentClient,
    scan_every: Duration,
    voiding: HashSet<String>,
    scanning: bool,
}

impl PaymentVoider {
    /// A voider of `db`'s pending voids, calling `client`, scanning every `scan_every`.
    pub fn new(db: Database, client: PaymentClient, scan_every: Duration) -> Self {
        Self {
            db,
            client,
            scan_every,
            voiding: HashSet::new(),
            scanning: false,
        }
    }

    fn void(&mut self, order_id: String, ctx: &mut Context<Self>) {
        if !self.voiding.insert(order_id.clone()) {
            return;
        }
        let (db, client) = (self.db.clone(), self.client.clone());
        let id = order_id.clone();
        let fut = async move {
            client.void(&id).await.map_err(|e| e.to_string())?;
            payment_store::mark_voided(db.pool(), &id)
                .await
                .map_err(|e| e.to_string())
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, _| {
            act.voiding.remove(&order_id);
            let m = domain_metrics();
            match result {
                Ok(true) => {
                    m.payments.with_label_values(&["voided"]).inc();
                    tracing::warn!(%order_id, "charge of a cancelled order voided");
                }
                Ok(false) => {}
                Err(e) => {
                    m.payments.with_label_values(&["void_failed"]).inc();
                    tracing::warn!(%order_id, error = %e, "voiding a cancelled order's charge failed; retrying at the next scan");
                }
            }
        }));
    }

    fn scan(&mut self, ctx: &mut Context<Self>) {
        if self.scanning {
            return;
        }
        self.scanning = true;
        let db = self.db.clone();
        let fut = async move { payment_store::void_pending(db.pool(), SCAN_LIMIT).await };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
            act.scanning = false;
            match result {
                Ok(ids) => {
                    domain_metrics()
                        .payment_voids_pending
                        .set(i64::try_from(ids.len()).unwrap_or(i64::MAX));
                    for id in ids {
                        act.void(id, ctx);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "scanning for pending voids failed"),
            }
        }));
    }
}

impl Actor for PaymentVoider {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.voiding.clear();
        self.scanning = false;
        self.scan(ctx);
        ctx.run_interval(self.scan_every, |act, ctx| act.scan(ctx));
    }
}

impl Supervised for PaymentVoider {}

impl Handler<Wake> for PaymentVoider {
    type Result = ();

    fn handle(&mut self, msg: Wake, ctx: &mut Context<Self>) {
        self.void(msg.0, ctx);
    }
}

impl Handler<StopActor> for PaymentVoider {
    type Result = ();

    fn handle(&mut self, _: StopActor, ctx: &mut Context<Self>) {
        jetflow_runtime::actor_ref::stop_actor(ctx);
    }
}
