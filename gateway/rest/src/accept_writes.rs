//! The database writes of `POST /orders`, committed in groups with other requests' writes.
//!
//! An order with an `Idempotency-Key` claims the key before its events are published (the
//! claim decides the order id); once JetStream acknowledged them, the order enters the read
//! model (so a `GET` right after the 202 finds it) and the key is marked published. Under load,
//! one commit serves many requests; a lone request commits at once.

use futures::future::BoxFuture;
use jetflow_domain::idempotency_store::{self, Claim, IdempotencyRecord};
use jetflow_domain::order_store::{self, NewOrder};
use jetflow_runtime::Job;
use sqlx::AnyConnection;

/// One request's write.
#[derive(Debug, Clone)]
pub enum AcceptWrite {
    /// Claim an `Idempotency-Key` for this order, or learn what it stands for.
    Claim {
        /// The key.
        key: String,
        /// What it will stand for if it is new.
        record: IdempotencyRecord,
    },
    /// The order's events are stored: record it, and mark its key published.
    Accepted {
        /// The order.
        order: NewOrder,
        /// Its `Idempotency-Key`, if it has one.
        key: Option<String>,
    },
}

/// What a write answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptOutput {
    /// The claim's result.
    Claim(Claim),
    /// Recorded.
    Recorded,
}

impl Job for AcceptWrite {
    type Output = AcceptOutput;

    fn run<'c>(
        &'c self,
        conn: &'c mut AnyConnection,
    ) -> BoxFuture<'c, Result<AcceptOutput, sqlx::Error>> {
        Box::pin(async move {
            match self {
                AcceptWrite::Claim { key, record } => idempotency_store::claim(conn, key, record)
                    .await
                    .map(AcceptOutput::Claim),
                AcceptWrite::Accepted { order, key } => {
                    order_store::upsert_created(conn, order).await?;
                    if let Some(key) = key {
                        idempotency_store::mark_published(conn, key).await?;
                    }
                    Ok(AcceptOutput::Recorded)
                }
            }
        })
    }
}
