//! Races that only PostgreSQL shows (SQLite serialises writers, so they never happen there):
//! handlers of the same order running at once in two transactions, at READ COMMITTED, as two
//! replicas of a role would.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use jetflow_domain::order_handler::OrderHandler;
use jetflow_domain::order_store::{self, NewOrder};
use jetflow_domain::stock_handler::StockHandler;
use jetflow_domain::{MIGRATOR, stock_store};
use jetflow_integration::TestDatabase;
use jetflow_runtime::testkit::{RecordingPublisher, TestKit};
use jetflow_runtime::{
    ConsumerSpec, Database, DbConfig, Decision, DeliveryMeta, OutboxRelay, RelayConfig, TxRoute,
    headers,
};
use jetflow_schemas::Priority;
use serde_json::json;
use uuid::Uuid;

fn event(order_id: Uuid, extra: serde_json::Value) -> (Bytes, DeliveryMeta) {
    let event_id = Uuid::now_v7();
    let mut body = json!({
        "event_id": event_id, "order_id": order_id, "correlation_id": "race",
        "occurred_at": "2026-11-25T10:00:00Z"
    });
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    let subject = if body.get("items").is_some() {
        "orders.created.v2"
    } else {
        "orders.cancelled"
    };
    (
        Bytes::from(serde_json::to_vec(&body).expect("JSON")),
        DeliveryMeta::new(subject).with_header(headers::MSG_ID, &event_id.to_string()),
    )
}

/// A fresh database with the reference system's schema, and a pool large enough for every
/// transaction the test runs at once.
async fn database() -> (TestDatabase, Database) {
    let pg = TestDatabase::create().await;
    let config = DbConfig {
        max_connections: Some(32),
        ..DbConfig::new(pg.url())
    };
    let db = Database::connect(&config).await.expect("PostgreSQL");
    db.migrate(&MIGRATOR).await.expect("migrations");
    (pg, db)
}

/// 200 orders, each reserved and cancelled at the same moment on two "replicas": whichever
/// wins, a cancelled order never keeps stock reserved, and stock is conserved.
#[test]
fn a_cancellation_racing_a_reservation_never_leaks_stock() {
    jetflow_integration::run(async {
        let (_pg, db) = database().await;
        {
            let mut conn = db.pool().acquire().await.expect("conn");
            stock_store::put(&mut conn, "race", 1_000_000, 100)
                .await
                .expect("stock");
        }
        let outbox = OutboxRelay::start(
            db.clone(),
            Arc::new(RecordingPublisher::new()),
            RelayConfig::default(),
        );
        let replica = || {
            TestKit::tx(
                TxRoute::new(
                    ConsumerSpec::new("ORDERS", "inventory-orders", &[]),
                    StockHandler,
                    &outbox,
                )
                .inbox("inventory"),
            )
        };
        let (a, b) = (replica(), replica());
        let orders: Vec<Uuid> = (0..200).map(|_| Uuid::new_v4()).collect();
        let pairs = orders.iter().enumerate().map(|(i, id)| {
            let created = event(
                *id,
                json!({"version": 2, "customer_id": "c", "priority": "standard",
                       "items": [{"product_id": "race", "quantity": 3}]}),
            );
            let cancelled = event(
                *id,
                json!({"version": 1, "reason": "timed_out", "detail": "race"}),
            );
            // Alternate which replica gets which, so both orders of arrival happen.
            let (first, second) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
            async move {
                let (r, c) = futures::join!(
                    first.deliver_batch(vec![created]),
                    second.deliver_batch(vec![cancelled])
                );
                (r, c)
            }
        });
        let results = futures::future::join_all(pairs).await;
        // A transaction that lost a race may ask for a retry; none may be dead-lettered, and
        // the retries are delivered again, as JetStream would.
        for (i, (r, c)) in results.iter().enumerate() {
            for d in r.iter().chain(c) {
                assert!(
                    !matches!(d.decision, Decision::DeadLetter(_)),
                    "{:?}",
                    d.outcome
                );
            }
            let id = orders[i];
            if r.iter().any(|d| d.decision != Decision::Ack) {
                let again = event(
                    id,
                    json!({"version": 2, "customer_id": "c", "priority": "standard",
                           "items": [{"product_id": "race", "quantity": 3}]}),
                );
                a.deliver_batch(vec![again]).await[0].assert_ack();
            }
            if c.iter().any(|d| d.decision != Decision::Ack) {
                let again = event(
                    id,
                    json!({"version": 1, "reason": "timed_out", "detail": "race"}),
                );
                a.deliver_batch(vec![again]).await[0].assert_ack();
            }
        }
        let p = stock_store::get(db.pool(), "race")
            .await
            .expect("read")
            .expect("product");
        assert_eq!(
            (p.available, p.reserved, p.sold),
            (1_000_000, 0, 0),
            "every order was cancelled: nothing may stay reserved"
        );
        let held: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM reservations WHERE status NOT IN ('cancelled', 'released')",
        )
        .fetch_one(db.pool())
        .await
        .expect("count");
        assert_eq!(held, 0, "a cancelled order holds a reservation");
        let report = outbox.flush(Duration::from_secs(10)).await;
        assert_eq!(report.left, 0);
        db.close().await;
    })
}

/// 200 pending orders, each paid on one replica of the order handler and declined on another
/// at the same moment, in batches of 20 that hold the orders in opposite orders: whichever
/// wins, every order ends confirmed or cancelled, never both, and exactly one of
/// `orders.confirmed` and `orders.cancelled` is emitted for it.
#[test]
fn a_payment_racing_a_decline_on_two_replicas_finishes_each_order_once() {
    jetflow_integration::run(async {
        let (_pg, db) = database().await;
        let orders: Vec<Uuid> = (0..200).map(|_| Uuid::new_v4()).collect();
        {
            let mut conn = db.pool().acquire().await.expect("conn");
            for id in &orders {
                let order = NewOrder {
                    order_id: id.to_string(),
                    customer_id: "c".to_string(),
                    items: json!([{"product_id": "race", "quantity": 1}]),
                    priority: Priority::Standard,
                    shipping_address: None,
                    correlation_id: "race".to_string(),
                    at: 1,
                };
                assert!(
                    order_store::insert_pending(&mut conn, &order)
                        .await
                        .expect("insert")
                );
            }
        }
        let published = RecordingPublisher::new();
        let outbox = OutboxRelay::start(
            db.clone(),
            Arc::new(published.clone()),
            RelayConfig::default(),
        );
        let replica = || {
            TestKit::tx(
                TxRoute::new(
                    ConsumerSpec::new("PAYMENTS", "orders-payments", &[]),
                    OrderHandler,
                    &outbox,
                )
                .inbox("orders"),
            )
        };
        let (a, b) = (replica(), replica());
        let paid = |id: Uuid| {
            payment_event(
                id,
                "payments.succeeded",
                json!({"version": 1, "payment_id": "p", "amount_cents": 100}),
            )
        };
        let declined = |id: Uuid| {
            payment_event(
                id,
                "payments.failed",
                json!({"version": 1, "reason": "declined", "amount_cents": 100}),
            )
        };
        let forward: Vec<Vec<(Bytes, DeliveryMeta)>> = orders
            .chunks(20)
            .map(|c| c.iter().map(|id| paid(*id)).collect())
            .collect();
        let backward: Vec<Vec<(Bytes, DeliveryMeta)>> = orders
            .rchunks(20)
            .map(|c| c.iter().rev().map(|id| declined(*id)).collect())
            .collect();
        let (on_a, on_b) = futures::join!(
            futures::future::join_all(forward.iter().map(|batch| a.deliver_batch(batch.clone()))),
            futures::future::join_all(backward.iter().map(|batch| b.deliver_batch(batch.clone())))
        );
        // A transaction that lost a race (a deadlock victim, say) asks for a retry; none may be
        // dead-lettered, and the retries are delivered again, as JetStream would.
        for (batches, outcomes) in [(&forward, &on_a), (&backward, &on_b)] {
            for (batch, delivered) in batches.iter().zip(outcomes) {
                for (event, d) in batch.iter().zip(delivered) {
                    assert!(
                        !matches!(d.decision, Decision::DeadLetter(_)),
                        "{:?}",
                        d.outcome
                    );
                    if d.decision != Decision::Ack {
                        a.deliver_batch(vec![event.clone()]).await[0].assert_ack();
                    }
                }
            }
        }
        let report = outbox.flush(Duration::from_secs(10)).await;
        assert_eq!(report.left, 0);
        let mut finished: HashMap<String, Vec<String>> = HashMap::new();
        for m in published.published() {
            let body: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON");
            let id = body["order_id"].as_str().expect("order_id").to_string();
            finished.entry(id).or_default().push(m.subject.clone());
        }
        for id in &orders {
            let record = order_store::get(db.pool(), &id.to_string())
                .await
                .expect("read")
                .expect("order");
            let emitted = finished.get(&id.to_string()).cloned().unwrap_or_default();
            let expected = match record.status.as_str() {
                "confirmed" => "orders.confirmed",
                "cancelled" => "orders.cancelled",
                other => panic!("order {id} ended {other}"),
            };
            assert_eq!(emitted, [expected], "order {id}");
            let history: Vec<&str> = record.history.iter().map(|h| h.status.as_str()).collect();
            assert!(
                !(history.contains(&"confirmed") && history.contains(&"cancelled")),
                "order {id}: {history:?}"
            );
        }
        db.close().await;
    })
}

fn payment_event(order_id: Uuid, subject: &str, extra: serde_json::Value) -> (Bytes, DeliveryMeta) {
    let event_id = Uuid::now_v7();
    let mut body = json!({
        "event_id": event_id, "order_id": order_id, "correlation_id": "race",
        "occurred_at": "2026-11-25T10:00:00Z"
    });
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    (
        Bytes::from(serde_json::to_vec(&body).expect("JSON")),
        DeliveryMeta::new(subject).with_header(headers::MSG_ID, &event_id.to_string()),
    )
}
