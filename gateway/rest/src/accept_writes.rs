//! The database writes of `POST /orders`, committed in groups with other requests' writes.
//!
//! Before its `orders.created` is published, an order is recorded as pending (so a `GET` right
//! after the 202 finds it) and its `Idempotency-Key`, if any, is claimed (the claim decides
//! the order id); once JetStream acknowledged the events, the key is marked published; if
//! they could not be stored, the order is withdrawn. The order handler finds the row
//! committed before the event exists, so the two never write the same row at once. Under
//! load, one commit serves many requests; a lone request commits at once.

use futures::future::BoxFuture;
use jetflow_domain::idempotency_store::{self, Claim, IdempotencyRecord};
use jetflow_domain::order_store::{self, NewOrder};
use jetflow_runtime::Job;
use sqlx::AnyConnection;

/// One request's write.
#[derive(Debug, Clone)]
pub enum AcceptWrite {
    /// Before publishing: record the order as pending (so a `GET` right after the 202 finds
    /// it, and the order handler has nothing to write) and, with an `Idempotency-Key`, claim
    /// the key, or learn what it stands for.
    Record {
        /// The order.
        order: Box<NewOrder>,
        /// Its `Idempotency-Key` and what the key will stand for if it is new.
        claim: Option<Box<(String, IdempotencyRecord)>>,
    },
    /// After publishing: the key's events are stored.
    Published {
        /// The key.
        key: String,
    },
    /// The events could not be stored: the order was not accepted.
    Withdraw {
        /// The order.
        order_id: String,
    },
}

/// What a write answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptOutput {
    /// Recorded: the claim's result (`Claim::New` without a key), and whether the order row
    /// is new.
    Recorded {
        /// What the key stands for.
        claim: Claim,
        /// Whether this write created the order's row.
        inserted: bool,
    },
    /// Done.
    Done,
}

impl Job for AcceptWrite {
    type Output = AcceptOutput;

    fn run<'c>(
        &'c self,
        conn: &'c mut AnyConnection,
    ) -> BoxFuture<'c, Result<AcceptOutput, sqlx::Error>> {
        Box::pin(async move {
            match self {
                AcceptWrite::Record { order, claim } => {
                    let result = match claim {
                        None => Claim::New,
                        Some(c) => idempotency_store::claim(conn, &c.0, &c.1).await?,
                    };
                    let inserted = match &result {
                        Claim::New => order_store::insert_pending(conn, order).await?,
                        // A retry of a request whose events were never stored: the key's order
                        // is recorded again (the same request, so the same order but its id).
                        Claim::Existing(existing)
                            if !existing.published
                                && claim
                                    .as_ref()
                                    .is_some_and(|c| c.1.request == existing.request) =>
                        {
                            let mut again = NewOrder::clone(order);
                            again.order_id.clone_from(&existing.order_id);
                            again.correlation_id.clone_from(&existing.correlation_id);
                            order_store::insert_pending(conn, &again).await?
                        }
                        Claim::Existing(_) => false,
                    };
                    Ok(AcceptOutput::Recorded {
                        claim: result,
                        inserted,
                    })
                }
                AcceptWrite::Published { key } => {
                    idempotency_store::mark_published(conn, key).await?;
                    Ok(AcceptOutput::Done)
                }
                AcceptWrite::Withdraw { order_id } => {
                    order_store::withdraw(conn, order_id).await?;
                    Ok(AcceptOutput::Done)
                }
            }
        })
    }
}
