//! Races that only PostgreSQL shows (SQLite serialises writers, so they never happen there):
//! handlers of the same order running at once in two transactions, at READ COMMITTED, as two
//! replicas of a role would.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use jetflow_domain::stock_handler::StockHandler;
use jetflow_domain::{MIGRATOR, stock_store};
use jetflow_integration::TestDatabase;
use jetflow_runtime::testkit::{RecordingPublisher, TestKit};
use jetflow_runtime::{
    ConsumerSpec, Database, DbConfig, Decision, DeliveryMeta, OutboxRelay, RelayConfig, TxRoute,
    headers,
};
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

/// 200 orders, each reserved and cancelled at the same moment on two "replicas": whichever
/// wins, a cancelled order never keeps stock reserved, and stock is conserved.
#[test]
fn a_cancellation_racing_a_reservation_never_leaks_stock() {
    jetflow_integration::run(async {
        let pg = TestDatabase::create().await;
        let config = DbConfig {
            max_connections: Some(32),
            ..DbConfig::new(pg.url())
        };
        let db = Database::connect(&config).await.expect("PostgreSQL");
        db.migrate(&MIGRATOR).await.expect("migrations");
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
