//! The database writes of `POST /orders`, committed in groups with other requests' writes.
//!
//! Before its `orders.created` is published, an order is recorded as pending (so a `GET` right
//! after the 202 finds it) and its `Idempotency-Key`, if any, is claimed (the claim decides
//! the order id); once JetStream acknowledged the events, the key is marked published; if
//! they could not be stored, the order is withdrawn. The order handler finds the row
//! committed before the event exists, so the two never write the same row at once. Under
//! load, one commit serves many requests, and the orders of a group without an
//! `Idempotency-Key` are recorded in one statement; a lone request commits at once.

use futures::future::BoxFuture;
use jetflow_domain::idempotency_store::{self, Claim, IdempotencyRecord};
use jetflow_domain::order_store::{self, NewOrder};
use jetflow_runtime::Job;
use jetflow_runtime::db::Conn;

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

    fn run<'c>(&'c self, conn: Conn<'c>) -> BoxFuture<'c, Result<AcceptOutput, sqlx::Error>> {
        Box::pin(async move {
            let mut conn = conn;
            match self {
                AcceptWrite::Record { order, claim } => {
                    let result = match claim {
                        None => Claim::New,
                        Some(c) => idempotency_store::claim(conn.reborrow(), &c.0, &c.1).await?,
                    };
                    let inserted = match &result {
                        Claim::New => order_store::insert_pending(conn.reborrow(), order).await?,
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

    /// The orders of requests without a key (new ids the gateway just drew, which nothing
    /// else in the group can touch) are recorded in one statement; every other write runs on
    /// its own, in the group's order.
    fn run_group<'c>(
        jobs: &'c [&'c Self],
        conn: Conn<'c>,
    ) -> BoxFuture<'c, Result<Vec<AcceptOutput>, sqlx::Error>> {
        Box::pin(async move {
            let mut conn = conn;
            let keyless: Vec<&NewOrder> = jobs
                .iter()
                .filter_map(|job| match job {
                    AcceptWrite::Record { order, claim: None } => Some(&**order),
                    _ => None,
                })
                .collect();
            let inserted = if keyless.is_empty() {
                Default::default()
            } else {
                order_store::insert_pending_many(conn.reborrow(), &keyless).await?
            };
            let mut outputs = Vec::with_capacity(jobs.len());
            for job in jobs {
                outputs.push(match job {
                    AcceptWrite::Record { order, claim: None } => AcceptOutput::Recorded {
                        claim: Claim::New,
                        inserted: inserted.contains(&order.order_id),
                    },
                    other => other.run(conn.reborrow()).await?,
                });
            }
            Ok(outputs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetflow_domain::MIGRATIONS;
    use jetflow_runtime::db::query;
    use jetflow_runtime::testkit::TestKit;
    use jetflow_runtime::{Database, GroupCommit};
    use jetflow_schemas::Priority;

    fn record(order_id: &str, key: Option<&str>) -> AcceptWrite {
        let order = NewOrder {
            order_id: order_id.to_string(),
            customer_id: "c-1".to_string(),
            items: serde_json::json!([{"product_id": "p", "quantity": 1}]),
            priority: Priority::Standard,
            shipping_address: None,
            correlation_id: format!("corr-{order_id}"),
            at: 1,
        };
        let claim = key.map(|k| {
            Box::new((
                k.to_string(),
                IdempotencyRecord {
                    request: format!("request-{k}"),
                    order_id: order_id.to_string(),
                    correlation_id: format!("corr-{order_id}"),
                    messages: Vec::new(),
                    published: false,
                },
            ))
        });
        AcceptWrite::Record {
            order: Box::new(order),
            claim,
        }
    }

    async fn recorded(db: &Database) -> i64 {
        query("SELECT COUNT(*) FROM orders")
            .fetch_scalar(db.pool())
            .await
            .expect("count")
    }

    /// Keyless orders, keyed ones and an order already recorded share groups: each request
    /// learns whether its row is new, and every new order is recorded once.
    #[actix_rt::test]
    async fn a_group_records_its_keyless_orders_together_and_its_keyed_ones_alone() {
        let db: Database = TestKit::database().await;
        db.migrate(MIGRATIONS).await.expect("migrations");
        let writes = GroupCommit::start(db.clone(), 64);
        writes
            .submit(record("known", None))
            .await
            .expect("recorded");
        let jobs = (0..150).map(|i| {
            let writes = writes.clone();
            async move {
                let job = match i {
                    75 => record("known", None),
                    _ if i % 10 == 0 => record(&format!("keyed-{i}"), Some(&format!("k-{i}"))),
                    _ => record(&format!("order-{i}"), None),
                };
                (i, writes.submit(job).await)
            }
        });
        for (i, result) in futures::future::join_all(jobs).await {
            let Ok(AcceptOutput::Recorded { claim, inserted }) = result else {
                panic!("request {i}: {result:?}");
            };
            assert_eq!(claim, Claim::New, "request {i}");
            assert_eq!(inserted, i != 75, "request {i}");
        }
        assert_eq!(recorded(&db).await, 150);
        // The same key again: the claim answers what it stands for, and nothing is recorded.
        let again = writes
            .submit(record("keyed-again", Some("k-10")))
            .await
            .expect("answered");
        let AcceptOutput::Recorded {
            claim: Claim::Existing(existing),
            inserted: false,
        } = again
        else {
            panic!("{again:?}");
        };
        assert_eq!(existing.order_id, "keyed-10");
        assert_eq!(recorded(&db).await, 150);
    }
}
