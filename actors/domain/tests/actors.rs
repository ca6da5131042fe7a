//! Unit tests of the three saga actors with the runtime's test kit: no NATS. Most send raw
//! JSON through the same pipeline a live route runs (decode, then the actor: prepare, inbox,
//! handler, outbox, commit) on a real SQLite database; the `*_actor_*` tests at the end send
//! typed `Batch` messages to `OrderActor`, `StockActor` and `PaymentActor` themselves,
//! including a duplicate delivery and a panic that restarts the actor. They assert the ack
//! decision, the state, and the events published (through the outbox relay, to a
//! `RecordingPublisher`). Payments talk to the real simulated provider over HTTP, which counts
//! the calls it gets.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer};
use bytes::Bytes;
use jetflow_domain::order_actor::OrderHandler;
use jetflow_domain::payment_actor::PaymentHandler;
use jetflow_domain::payment_client::PaymentClient;
use jetflow_domain::payment_voider::PaymentVoider;
use jetflow_domain::stock_actor::StockHandler;
use jetflow_domain::{
    Deps, InboundEvent, MIGRATIONS, OrderActor, PaymentActor, SagaConfig, StockActor, order_store,
    stock_store,
};
use jetflow_provider::ProviderState;
use jetflow_runtime::testkit::{RecordingPublisher, TestKit, TxProbe};
use jetflow_runtime::{
    BatchActor, BreakerActor, BreakerConfig, ConsumerSpec, Database, DeadLetterReason, Decode,
    Delivery, DeliveryMeta, HeaderMap, OutboxHandle, OutboxRelay, PreparedTxHandler, RelayConfig,
    Supervisor, TxActors, TxRoute, headers,
};
use serde_json::{Value, json};
use uuid::Uuid;

struct Kit {
    deps: Deps,
    outbox: OutboxHandle,
    published: RecordingPublisher,
}

async fn kit() -> Kit {
    let db: Database = TestKit::database().await;
    db.migrate(MIGRATIONS).await.expect("migrations");
    let published = RecordingPublisher::new();
    let outbox = OutboxRelay::start(
        db.clone(),
        Arc::new(published.clone()),
        RelayConfig::default(),
    );
    let config = SagaConfig {
        payment_retry_base: Duration::from_millis(100),
        payment_retry_max: Duration::from_millis(400),
        ..SagaConfig::default()
    };
    Kit {
        deps: Deps {
            db,
            outbox: outbox.clone(),
            config: Arc::new(config),
            requests_first: None,
        },
        outbox,
        published,
    }
}

impl Kit {
    fn probe<H: PreparedTxHandler>(&self, inbox: &str, handler: H) -> TxProbe {
        TestKit::tx(
            TxRoute::new(ConsumerSpec::new("TEST", inbox, &[]), handler, &self.outbox).inbox(inbox),
        )
    }

    async fn put(&self, product: &str, available: i64, price: i64) {
        let mut conn = self.deps.db.acquire().await.expect("conn");
        stock_store::put(conn.conn(), product, available, price)
            .await
            .expect("put");
    }

    async fn product(&self, product: &str) -> stock_store::Product {
        stock_store::get(self.deps.db.pool(), product)
            .await
            .expect("get")
            .expect("exists")
    }

    async fn order(&self, id: &str) -> order_store::OrderRecord {
        order_store::get(self.deps.db.pool(), id)
            .await
            .expect("get")
            .expect("exists")
    }

    /// The statuses of an order's rows in `table` (reservations, payments): one at most.
    async fn statuses(&self, table: &str, order_id: &str) -> Vec<String> {
        let sql = format!("SELECT status FROM {table} WHERE order_id = $1");
        jetflow_runtime::db::query(sqlx::AssertSqlSafe(sql))
            .bind(order_id)
            .fetch_all(self.deps.db.pool())
            .await
            .expect("read")
            .iter()
            .map(|r| r.try_get("status").expect("status"))
            .collect()
    }

    /// Everything committed so far is published (the relay has nothing in flight): the
    /// subjects published, in order.
    async fn subjects(&self) -> Vec<String> {
        let report = self.outbox.flush(Duration::from_secs(5)).await;
        assert_eq!(report.left, 0, "the outbox drained");
        self.published.subjects()
    }
}

fn meta(order_id: &str) -> Value {
    json!({
        "event_id": Uuid::now_v7(), "order_id": order_id, "correlation_id": "corr-unit",
        "occurred_at": "2026-11-25T10:00:00Z"
    })
}

fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().expect("object") {
        base[k] = v.clone();
    }
    base
}

fn bytes(v: Value) -> Bytes {
    Bytes::from(serde_json::to_vec(&v).expect("JSON"))
}

fn created(order_id: &str, items: Value) -> Bytes {
    bytes(with(
        meta(order_id),
        json!({"version": 2, "customer_id": "c-1", "items": items, "priority": "standard"}),
    ))
}

fn cancelled(order_id: &str, reason: &str) -> Bytes {
    bytes(with(
        meta(order_id),
        json!({"version": 1, "reason": reason, "detail": "unit test"}),
    ))
}

/// A delivery of `subject` with the `Nats-Msg-Id` its producer would have given it.
fn on(subject: &str, payload: &Bytes) -> (Bytes, DeliveryMeta) {
    let v: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
    let id = v["event_id"].as_str().unwrap_or("no-id").to_string();
    (
        payload.clone(),
        DeliveryMeta::new(subject).with_header(headers::MSG_ID, &id),
    )
}

async fn deliver(
    probe: &TxProbe,
    subject: &str,
    payload: &Bytes,
) -> jetflow_runtime::testkit::Delivered {
    let (p, m) = on(subject, payload);
    probe.deliver_raw_with(p, m).await
}

#[actix_rt::test]
async fn stock_reserves_all_items_once_and_ignores_a_redelivery() {
    let k = kit().await;
    k.put("a", 5, 100).await;
    k.put("b", 5, 250).await;
    let probe = k.probe("inventory", StockHandler);
    let order = Uuid::new_v4().to_string();
    let payload = created(
        &order,
        json!([{"product_id": "a", "quantity": 2}, {"product_id": "b", "quantity": 1}]),
    );
    deliver(&probe, "orders.created.v2", &payload)
        .await
        .assert_ack();
    assert_eq!(k.subjects().await, ["inventory.reserved"]);
    let reserved: Value =
        serde_json::from_slice(&k.published.published()[0].payload).expect("JSON");
    assert_eq!(reserved["amount_cents"], 450, "{reserved}");
    let a = k.product("a").await;
    assert_eq!((a.available, a.reserved), (3, 2));

    // The same event again (a redelivery): acked, nothing changes, nothing more published.
    deliver(&probe, "orders.created.v2", &payload)
        .await
        .assert_ack();
    assert_eq!(k.subjects().await.len(), 1);
    assert_eq!(k.product("a").await.available, 3);
}

#[actix_rt::test]
async fn stock_cancels_all_or_nothing_for_short_stock_and_unknown_products() {
    let k = kit().await;
    k.put("a", 5, 100).await;
    k.put("few", 1, 100).await;
    let probe = k.probe("inventory", StockHandler);
    let short = created(
        &Uuid::new_v4().to_string(),
        json!([{"product_id": "a", "quantity": 2}, {"product_id": "few", "quantity": 2}]),
    );
    deliver(&probe, "orders.created.v2", &short)
        .await
        .assert_ack();
    let unknown = created(
        &Uuid::new_v4().to_string(),
        json!([{"product_id": "ghost", "quantity": 1}]),
    );
    deliver(&probe, "orders.created.v2", &unknown)
        .await
        .assert_ack();
    assert_eq!(k.subjects().await, ["orders.cancelled", "orders.cancelled"]);
    let reasons: Vec<Value> = k
        .published
        .published()
        .iter()
        .map(|m| serde_json::from_slice::<Value>(&m.payload).expect("JSON")["reason"].clone())
        .collect();
    assert_eq!(
        reasons,
        [json!("insufficient_stock"), json!("unknown_product")]
    );
    let a = k.product("a").await;
    assert_eq!(
        (a.available, a.reserved),
        (5, 0),
        "nothing of the order was held"
    );
}

#[actix_rt::test]
async fn stock_releases_on_cancel_and_sells_on_confirm() {
    let k = kit().await;
    k.put("a", 10, 100).await;
    let probe = k.probe("inventory", StockHandler);
    let (keep, drop) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    for id in [&keep, &drop] {
        let c = created(id, json!([{"product_id": "a", "quantity": 3}]));
        deliver(&probe, "orders.created.v2", &c).await.assert_ack();
    }
    let cancel = cancelled(&drop, "payment_declined");
    deliver(&probe, "orders.cancelled", &cancel)
        .await
        .assert_ack();
    let confirmed = bytes(with(
        meta(&keep),
        json!({"version": 1, "amount_cents": 300}),
    ));
    deliver(&probe, "orders.confirmed", &confirmed)
        .await
        .assert_ack();
    let subjects = k.subjects().await;
    assert_eq!(
        subjects
            .iter()
            .filter(|s| *s == "inventory.released")
            .count(),
        1,
        "{subjects:?}"
    );
    let a = k.product("a").await;
    assert_eq!((a.available, a.reserved, a.sold), (7, 0, 3));
    // A second cancel (a replay of the same event) releases nothing more.
    deliver(&probe, "orders.cancelled", &cancel)
        .await
        .assert_ack();
    assert_eq!(k.subjects().await.len(), subjects.len());
    assert_eq!(k.product("a").await.available, 7);
}

/// An order's whole life in one batch, decided against the rows the batch writes: reserved
/// then released, cancelled before it was seen then created (the tombstone holds), reserved
/// then sold; each reservation row is written once, with its last status.
#[actix_rt::test]
async fn a_batch_reserves_and_finishes_orders_it_holds_from_first_to_last_event() {
    let k = kit().await;
    k.put("a", 10, 100).await;
    let probe = k.probe("inventory", StockHandler);
    let (released, tombstoned, sold) = (
        Uuid::new_v4().to_string(),
        Uuid::new_v4().to_string(),
        Uuid::new_v4().to_string(),
    );
    let two = json!([{"product_id": "a", "quantity": 2}]);
    let confirmed = bytes(with(
        meta(&sold),
        json!({"version": 1, "amount_cents": 200}),
    ));
    let batch = vec![
        on("orders.created.v2", &created(&released, two.clone())),
        on(
            "orders.cancelled",
            &cancelled(&released, "payment_declined"),
        ),
        on("orders.cancelled", &cancelled(&tombstoned, "timed_out")),
        on("orders.created.v2", &created(&tombstoned, two.clone())),
        on("orders.created.v2", &created(&sold, two.clone())),
        on("orders.confirmed", &confirmed),
    ];
    for d in probe.deliver_batch(batch).await {
        d.assert_ack();
    }
    let mut subjects = k.subjects().await;
    subjects.sort();
    assert_eq!(
        subjects,
        [
            "inventory.released",
            "inventory.reserved",
            "inventory.reserved"
        ]
    );
    let a = k.product("a").await;
    assert_eq!((a.available, a.reserved, a.sold), (8, 0, 2));
    assert_eq!(k.statuses("reservations", &released).await, ["released"]);
    assert_eq!(k.statuses("reservations", &tombstoned).await, ["cancelled"]);
    assert_eq!(k.statuses("reservations", &sold).await, ["sold"]);
}

/// One batch of orders sharing a product: the stock is decided order by order against what
/// the batch took before it (no oversell), and a sale and a release in a later batch move it
/// on.
#[actix_rt::test]
async fn a_batch_of_orders_sharing_a_product_never_oversells() {
    let k = kit().await;
    k.put("a", 5, 100).await;
    k.put("b", 1, 50).await;
    let probe = k.probe("inventory", StockHandler);
    let ids: Vec<String> = (0..4).map(|_| Uuid::new_v4().to_string()).collect();
    let mut batch: Vec<(Bytes, DeliveryMeta)> = ids
        .iter()
        .map(|id| {
            on(
                "orders.created.v2",
                &created(id, json!([{"product_id": "a", "quantity": 2}])),
            )
        })
        .collect();
    // An order of two products, one of them short: it takes neither.
    let mixed = Uuid::new_v4().to_string();
    batch.push(on(
        "orders.created.v2",
        &created(
            &mixed,
            json!([{"product_id": "a", "quantity": 1}, {"product_id": "b", "quantity": 2}]),
        ),
    ));
    for d in probe.deliver_batch(batch).await {
        d.assert_ack();
    }
    let subjects = k.subjects().await;
    assert_eq!(
        subjects
            .iter()
            .filter(|s| *s == "inventory.reserved")
            .count(),
        2,
        "{subjects:?}"
    );
    assert_eq!(
        subjects.iter().filter(|s| *s == "orders.cancelled").count(),
        3,
        "{subjects:?}"
    );
    let cancels = k.published.on_subject("orders.cancelled");
    let detail: Value = serde_json::from_slice(&cancels[0].payload).expect("JSON");
    assert_eq!(detail["detail"], "a: 2 requested, 1 available");
    let a = k.product("a").await;
    assert_eq!((a.available, a.reserved, a.sold), (1, 4, 0));
    assert_eq!(
        k.product("b").await.available,
        1,
        "the mixed order took nothing"
    );
    // The items are also where the previous version looks for them (a rolling upgrade).
    let held: Vec<(String, i64)> = jetflow_runtime::db::query(
        "SELECT product_id, quantity FROM reservation_items WHERE order_id = $1",
    )
    .bind(ids[0].as_str())
    .fetch_all(k.deps.db.pool())
    .await
    .expect("items")
    .iter()
    .map(|r| r.decode().expect("an item"))
    .collect();
    assert_eq!(held, [("a".to_string(), 2)]);
    // Confirm the first, cancel the second, in one batch.
    let batch = vec![
        on(
            "orders.confirmed",
            &bytes(with(
                meta(&ids[0]),
                json!({"version": 1, "amount_cents": 200}),
            )),
        ),
        on("orders.cancelled", &cancelled(&ids[1], "payment_declined")),
    ];
    for d in probe.deliver_batch(batch).await {
        d.assert_ack();
    }
    let a = k.product("a").await;
    assert_eq!((a.available, a.reserved, a.sold), (3, 0, 2));
}

/// Reservations made before their items were kept on the reservation row (items NULL, the
/// items in `reservation_items`) are still sold and released.
#[actix_rt::test]
async fn a_reservation_from_before_the_items_column_is_sold_and_released() {
    let k = kit().await;
    k.put("a", 10, 100).await;
    let (keep, drop) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    {
        let mut conn = k.deps.db.acquire().await.expect("conn");
        for id in [&keep, &drop] {
            jetflow_runtime::db::query("UPDATE products SET available = available - 3, reserved = reserved + 3 WHERE product_id = 'a'")
                .execute(conn.conn())
                .await
                .expect("hold");
            jetflow_runtime::db::query("INSERT INTO reservations (order_id, status, lane, amount_cents, updated_at) VALUES ($1, 'reserved', 'standard', 300, 0)")
                .bind(id.as_str())
                .execute(conn.conn())
                .await
                .expect("reservation");
            jetflow_runtime::db::query("INSERT INTO reservation_items (order_id, product_id, quantity, unit_price_cents) VALUES ($1, 'a', 3, 100)")
                .bind(id.as_str())
                .execute(conn.conn())
                .await
                .expect("items");
        }
    }
    let probe = k.probe("inventory", StockHandler);
    let confirmed = bytes(with(
        meta(&keep),
        json!({"version": 1, "amount_cents": 300}),
    ));
    deliver(&probe, "orders.confirmed", &confirmed)
        .await
        .assert_ack();
    deliver(
        &probe,
        "orders.cancelled",
        &cancelled(&drop, "payment_declined"),
    )
    .await
    .assert_ack();
    let a = k.product("a").await;
    assert_eq!((a.available, a.reserved, a.sold), (7, 0, 3));
    k.subjects().await;
    let released: Vec<Value> = k
        .published
        .on_subject("inventory.released")
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("JSON"))
        .collect();
    assert_eq!(released.len(), 1);
    assert_eq!(
        released[0]["items"],
        json!([{"product_id": "a", "quantity": 3}])
    );
}

#[actix_rt::test]
async fn a_cancellation_before_the_order_leaves_a_tombstone_that_a_late_order_respects() {
    let k = kit().await;
    k.put("a", 10, 100).await;
    let probe = k.probe("inventory", StockHandler);
    let id = Uuid::new_v4().to_string();
    deliver(&probe, "orders.cancelled", &cancelled(&id, "timed_out"))
        .await
        .assert_ack();
    let late = created(&id, json!([{"product_id": "a", "quantity": 3}]));
    deliver(&probe, "orders.created.v2", &late)
        .await
        .assert_ack();
    assert!(
        k.subjects().await.is_empty(),
        "nothing reserved, nothing released"
    );
    assert_eq!(k.product("a").await.available, 10);
}

#[actix_rt::test]
async fn poison_is_dead_lettered_by_the_pipeline_without_reaching_the_handler() {
    let k = kit().await;
    let probe = k.probe("inventory", StockHandler);
    let d = probe
        .deliver_raw("orders.created.v2", "e-1", &b"{not json"[..])
        .await;
    assert!(
        matches!(d.assert_dead_letter(), DeadLetterReason::Poison(_)),
        "{d:?}"
    );
    let wrong_version = created(
        &Uuid::new_v4().to_string(),
        json!([{"product_id": "a", "quantity": 1}]),
    );
    let d = deliver(&probe, "orders.created", &wrong_version).await;
    assert!(
        matches!(d.assert_dead_letter(), DeadLetterReason::Poison(_)),
        "a v2 payload on the v1 subject: {d:?}"
    );
    assert!(k.subjects().await.is_empty());
}

#[actix_rt::test]
async fn a_batch_commits_its_good_deliveries_around_a_poison_one_and_applies_a_twin_once() {
    let k = kit().await;
    k.put("a", 10, 100).await;
    let probe = k.probe("inventory", StockHandler);
    let one = created(
        &Uuid::new_v4().to_string(),
        json!([{"product_id": "a", "quantity": 1}]),
    );
    let two = created(
        &Uuid::new_v4().to_string(),
        json!([{"product_id": "a", "quantity": 2}]),
    );
    let outcomes = probe
        .deliver_batch(vec![
            on("orders.created.v2", &one),
            (
                Bytes::from_static(b"{not json"),
                DeliveryMeta::new("orders.created.v2"),
            ),
            on("orders.created.v2", &two),
            // The same event twice in one batch: applied once.
            on("orders.created.v2", &one),
        ])
        .await;
    outcomes[0].assert_ack();
    outcomes[1].assert_dead_letter();
    outcomes[2].assert_ack();
    outcomes[3].assert_ack();
    assert_eq!(
        k.subjects().await,
        ["inventory.reserved", "inventory.reserved"]
    );
    let a = k.product("a").await;
    assert_eq!((a.available, a.reserved), (7, 3));
}

#[actix_rt::test]
async fn orders_follow_the_saga_and_never_go_back() {
    let k = kit().await;
    let probe = k.probe("orders", OrderHandler);
    let id = Uuid::new_v4().to_string();
    let c = created(&id, json!([{"product_id": "a", "quantity": 1}]));
    deliver(&probe, "orders.created.v2", &c).await.assert_ack();
    assert_eq!(k.order(&id).await.status, "pending");
    let reserved = reserved_for(&id, "c-1");
    deliver(&probe, "inventory.reserved", &reserved)
        .await
        .assert_ack();
    let paid = bytes(with(
        meta(&id),
        json!({"version": 1, "payment_id": "pay_1", "amount_cents": 300}),
    ));
    deliver(&probe, "payments.succeeded", &paid)
        .await
        .assert_ack();
    assert_eq!(k.subjects().await, ["orders.confirmed"]);
    let order = k.order(&id).await;
    assert_eq!(
        (order.status.as_str(), order.amount_cents),
        ("confirmed", Some(300))
    );
    let statuses: Vec<&str> = order.history.iter().map(|h| h.status.as_str()).collect();
    assert_eq!(statuses, ["pending", "reserved", "paid", "confirmed"]);
    // A late, redelivered `inventory.reserved` does not move a confirmed order back.
    let (p, m) = on("inventory.reserved", &reserved);
    probe
        .deliver_raw_with(p, m.with_delivered(2))
        .await
        .assert_ack();
    assert_eq!(k.order(&id).await.status, "confirmed");
}

#[actix_rt::test]
async fn orders_cancel_on_a_failed_payment() {
    let k = kit().await;
    let probe = k.probe("orders", OrderHandler);
    let id = Uuid::new_v4().to_string();
    let c = created(&id, json!([{"product_id": "a", "quantity": 1}]));
    deliver(&probe, "orders.created.v2", &c).await.assert_ack();
    let failed = bytes(with(
        meta(&id),
        json!({"version": 1, "reason": "declined", "detail": "card declined", "amount_cents": 300}),
    ));
    deliver(&probe, "payments.failed", &failed)
        .await
        .assert_ack();
    assert_eq!(k.subjects().await, ["orders.cancelled"]);
    let order = k.order(&id).await;
    assert_eq!(
        (order.status.as_str(), order.reason.as_deref()),
        ("cancelled", Some("payment_declined"))
    );
}

/// One batch moves many orders, some of them several times, decided in memory against the
/// orders it read and written back at commit: every order ends where the events, applied in
/// delivery order, take it, with its history, and only what a terminal status allows.
#[actix_rt::test]
async fn a_batch_moves_each_order_through_every_event_it_holds_in_order() {
    let k = kit().await;
    let probe = k.probe("orders", OrderHandler);
    let ids: Vec<String> = (0..4).map(|_| Uuid::new_v4().to_string()).collect();
    let item = json!([{"product_id": "a", "quantity": 1}]);
    // Recorded before the batch: the last two.
    for id in &ids[2..] {
        deliver(&probe, "orders.created.v2", &created(id, item.clone()))
            .await
            .assert_ack();
    }
    let paid = |id: &str| {
        bytes(with(
            meta(id),
            json!({"version": 1, "payment_id": "pay_1", "amount_cents": 300}),
        ))
    };
    let declined = bytes(with(
        meta(&ids[2]),
        json!({"version": 1, "reason": "declined", "detail": "card declined", "amount_cents": 300}),
    ));
    let anomalies = || {
        jetflow_domain::metrics::domain_metrics()
            .saga_anomalies
            .with_label_values(&["cancelled_after_confirmed"])
            .get()
    };
    let anomalies_before = anomalies();
    let batch = vec![
        // 0: created, reserved and paid in one batch.
        on("orders.created.v2", &created(&ids[0], item.clone())),
        on("inventory.reserved", &reserved_for(&ids[0], "c-1")),
        on("payments.succeeded", &paid(&ids[0])),
        // 1: first known through `inventory.reserved`; its `orders.created` fills it in.
        on("inventory.reserved", &reserved_for(&ids[1], "c-1")),
        on("orders.created.v2", &created(&ids[1], item.clone())),
        // 2: declined, then a late `inventory.reserved` that must not revive it.
        on("payments.failed", &declined),
        on("inventory.reserved", &reserved_for(&ids[2], "c-1")),
        // 3: confirmed, then a cancellation that must not undo it.
        on("payments.succeeded", &paid(&ids[3])),
        on("orders.cancelled", &cancelled(&ids[3], "timed_out")),
    ];
    for d in probe.deliver_batch(batch).await {
        d.assert_ack();
    }
    let mut subjects = k.subjects().await;
    subjects.sort();
    assert_eq!(
        subjects,
        ["orders.cancelled", "orders.confirmed", "orders.confirmed"]
    );
    let history = |o: &order_store::OrderRecord| -> Vec<String> {
        o.history.iter().map(|h| h.status.clone()).collect()
    };
    let first = k.order(&ids[0]).await;
    assert_eq!(
        (
            first.status.as_str(),
            first.amount_cents,
            first.customer_id.as_deref()
        ),
        ("confirmed", Some(300), Some("c-1"))
    );
    assert_eq!(
        history(&first),
        ["pending", "reserved", "paid", "confirmed"]
    );
    let second = k.order(&ids[1]).await;
    assert_eq!(
        (
            second.status.as_str(),
            second.amount_cents,
            second.customer_id.as_deref()
        ),
        ("reserved", Some(300), Some("c-1"))
    );
    assert!(second.items.is_some(), "orders.created filled in the items");
    let third = k.order(&ids[2]).await;
    assert_eq!(
        (
            third.status.as_str(),
            third.reason.as_deref(),
            third.detail.as_deref()
        ),
        ("cancelled", Some("payment_declined"), Some("card declined"))
    );
    assert_eq!(history(&third), ["pending", "cancelled"]);
    let fourth = k.order(&ids[3]).await;
    assert_eq!(
        (fourth.status.as_str(), fourth.reason.as_deref()),
        ("confirmed", None)
    );
    assert_eq!(
        anomalies() - anomalies_before,
        1,
        "the late cancellation is an anomaly"
    );
}

/// The simulated provider over real HTTP, and the state it counts with.
async fn provider() -> (String, ProviderState, actix_web::dev::ServerHandle) {
    provider_with(ProviderState::default()).await
}

async fn provider_with(
    state: ProviderState,
) -> (String, ProviderState, actix_web::dev::ServerHandle) {
    let s = state.clone();
    let server =
        HttpServer::new(move || App::new().configure(jetflow_provider::configure(s.clone())))
            .workers(1)
            .disable_signals()
            .bind(("127.0.0.1", 0))
            .expect("bind");
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    (format!("http://{addr}"), state, handle)
}

fn payments(k: &Kit, url: &str) -> PaymentHandler {
    jetflow_domain::payment_client::install_crypto_provider();
    let client = PaymentClient::new(url, Duration::from_secs(2), None).expect("client");
    let breaker = BreakerActor::start(BreakerConfig {
        name: format!("unit-{}", Uuid::new_v4().simple()),
        failure_threshold: 2,
        open_timeout: Duration::from_secs(30),
        call_timeout: Duration::from_secs(1),
    });
    let (db, c) = (k.deps.db.clone(), client.clone());
    let voider = Supervisor::new("voider-unit")
        .start(move |_| PaymentVoider::new(db, c, Duration::from_millis(100)));
    PaymentHandler::new(k.deps.clone(), client, breaker, voider)
}

fn reserved_for(id: &str, customer: &str) -> Bytes {
    bytes(with(
        meta(id),
        json!({"version": 1, "items": [{"product_id": "a", "quantity": 1, "unit_price_cents": 300}], "amount_cents": 300, "customer_id": customer}),
    ))
}

fn account(state: &ProviderState, id: &str) -> Option<jetflow_provider::Account> {
    state.accounts().into_iter().find(|a| a.order_id == id)
}

/// Waits (5 s at most) until `f` holds of the provider's state.
async fn until_provider(state: &ProviderState, what: &str, f: impl Fn(&ProviderState) -> bool) {
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while !f(state) {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}: {:?}",
            state.accounts()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_rt::test]
async fn payments_charge_once_and_report_declines() {
    let k = kit().await;
    let (url, state, handle) = provider().await;
    let probe = k.probe("payments", payments(&k, &url));
    let ok = Uuid::new_v4().to_string();
    let payload = reserved_for(&ok, "c-1");
    deliver(&probe, "inventory.reserved", &payload)
        .await
        .assert_ack();
    deliver(&probe, "inventory.reserved", &payload)
        .await
        .assert_ack();
    let declined = Uuid::new_v4().to_string();
    deliver(
        &probe,
        "inventory.reserved",
        &reserved_for(&declined, "declined-7"),
    )
    .await
    .assert_ack();
    assert_eq!(
        k.subjects().await,
        ["payments.succeeded", "payments.failed"]
    );
    let a = account(&state, &ok).expect("charged");
    assert_eq!(
        (a.charge_calls, a.charges_made),
        (1, 1),
        "the redelivery did not even call the provider again"
    );
    let d = account(&state, &declined).expect("asked");
    assert_eq!((d.charge_calls, d.charges_made), (1, 0));
    handle.stop(false).await;
}

/// A batch reads the payments it already knows in one query: other copies of a paid order's
/// `inventory.reserved` (new event ids, two in the same batch) do not call the provider, a new
/// order in the same batch is charged.
#[actix_rt::test]
async fn a_batch_charges_only_the_orders_whose_payment_is_not_recorded() {
    let k = kit().await;
    let (url, state, handle) = provider().await;
    let probe = k.probe("payments", payments(&k, &url));
    let paid = Uuid::new_v4().to_string();
    deliver(&probe, "inventory.reserved", &reserved_for(&paid, "c-1"))
        .await
        .assert_ack();
    let new = Uuid::new_v4().to_string();
    // Two more copies of the paid order's event (new event ids) in one batch with a new order.
    let batch = vec![
        on("inventory.reserved", &reserved_for(&paid, "c-1")),
        on("inventory.reserved", &reserved_for(&new, "c-2")),
        on("inventory.reserved", &reserved_for(&paid, "c-1")),
    ];
    for d in probe.deliver_batch(batch).await {
        d.assert_ack();
    }
    assert_eq!(
        k.subjects().await,
        ["payments.succeeded", "payments.succeeded"]
    );
    let a = account(&state, &paid).expect("charged");
    assert_eq!(
        (a.charge_calls, a.charges_made),
        (1, 1),
        "the copies did not call the provider"
    );
    let b = account(&state, &new).expect("charged");
    assert_eq!((b.charge_calls, b.charges_made), (1, 1));
    handle.stop(false).await;
}

#[actix_rt::test]
async fn payments_retry_while_the_provider_is_down_and_give_up_on_the_last_delivery() {
    let k = kit().await;
    // Nothing listens on this port: every call fails before it is sent (certainly no charge).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let probe = k.probe(
        "payments",
        payments(&k, &format!("http://127.0.0.1:{port}")),
    );
    let id = Uuid::new_v4().to_string();
    let payload = reserved_for(&id, "c-1");
    let first = deliver(&probe, "inventory.reserved", &payload).await;
    assert!(first.assert_retry() > Duration::ZERO);
    assert!(k.subjects().await.is_empty(), "nothing decided yet");
    let (p, m) = on("inventory.reserved", &payload);
    let last = probe
        .deliver_raw_with(p, m.with_delivered(5).with_max_deliver(5))
        .await;
    last.assert_ack();
    assert_eq!(k.subjects().await, ["payments.failed"]);
    let failed: Value = serde_json::from_slice(&k.published.published()[0].payload).expect("JSON");
    assert_eq!(failed["reason"], "unavailable", "{failed}");
}

#[actix_rt::test]
async fn a_cancelled_order_is_voided_and_never_charged_after_a_cancel() {
    let k = kit().await;
    let (url, state, handle) = provider().await;
    let probe = k.probe("payments", payments(&k, &url));
    // Charged, then cancelled (e.g. timed out): the charge is voided.
    let charged = Uuid::new_v4().to_string();
    deliver(&probe, "inventory.reserved", &reserved_for(&charged, "c-1"))
        .await
        .assert_ack();
    deliver(
        &probe,
        "orders.cancelled",
        &cancelled(&charged, "timed_out"),
    )
    .await
    .assert_ack();
    // Cancelled before any charge, then a late inventory.reserved: never charged.
    let early = Uuid::new_v4().to_string();
    deliver(&probe, "orders.cancelled", &cancelled(&early, "timed_out"))
        .await
        .assert_ack();
    deliver(&probe, "inventory.reserved", &reserved_for(&early, "c-2"))
        .await
        .assert_ack();
    until_provider(&state, "the charge to be voided", |s| {
        account(s, &charged)
            .is_some_and(|a| a.status == Some(jetflow_provider::ChargeStatus::Voided))
    })
    .await;
    let a = account(&state, &charged).expect("charged");
    assert_eq!((a.charges_made, a.void_calls), (1, 1), "{a:?}");
    assert!(
        account(&state, &early).is_none(),
        "the late order was never sent to the provider"
    );
    handle.stop(false).await;
}

#[actix_rt::test]
async fn a_charge_that_lands_after_the_cancellation_is_voided() {
    let k = kit().await;
    let (url, state, handle) = provider().await;
    let handler = payments(&k, &url);
    let probe = k.probe("payments", handler);
    // One order's events reach one actor instance in order, so the race needs a second
    // replica of the payments role: its own actor, the same database.
    let replica = k.probe("payments", payments(&k, &url));
    let id = Uuid::new_v4().to_string();
    // The charge is slow; the cancellation arrives at the other replica and commits while
    // the charge is in flight.
    let control = reqwest::Client::new();
    control
        .put(format!("{url}/_control"))
        .json(&json!({"latency_ms": 300}))
        .send()
        .await
        .expect("control");
    let charge = {
        let probe = probe.clone();
        let payload = reserved_for(&id, "c-1");
        actix_rt::spawn(async move { deliver(&probe, "inventory.reserved", &payload).await })
    };
    until_provider(&state, "the charge to reach the provider", |s| {
        account(s, &id).is_some_and(|a| a.charge_calls == 1)
    })
    .await;
    deliver(&replica, "orders.cancelled", &cancelled(&id, "timed_out"))
        .await
        .assert_ack();
    charge.await.expect("the charge delivery").assert_ack();
    until_provider(&state, "the late charge to be voided", |s| {
        account(s, &id).is_some_and(|a| a.status == Some(jetflow_provider::ChargeStatus::Voided))
    })
    .await;
    // The cancellation knew a charge was being attempted and voided at once: the void
    // either refused the charge when it landed or gave the money back after it.
    let a = account(&state, &id).expect("charged");
    assert_eq!(a.void_calls, 1, "{a:?}");
    assert!(a.charges_made <= 1, "{a:?}");
    let subjects = k.subjects().await;
    assert!(
        subjects.is_empty(),
        "a charge for a cancelled order confirms nothing: {subjects:?}"
    );
    handle.stop(false).await;
}

/// One batch charges two orders and then holds the cancellation of one of them: the
/// cancellation sees the charge the same batch recorded (not yet written) and has it voided;
/// both charges were made, in delivery order, before the cancellation, so both successes are
/// emitted; each order is charged once at the provider.
#[actix_rt::test]
async fn a_cancellation_in_the_batch_that_charged_the_order_voids_the_charge() {
    let k = kit().await;
    let (url, state, handle) = provider().await;
    let probe = k.probe("payments", payments(&k, &url));
    let (kept, dropped) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let batch = vec![
        on("inventory.reserved", &reserved_for(&kept, "c-1")),
        on("inventory.reserved", &reserved_for(&dropped, "c-2")),
        on("orders.cancelled", &cancelled(&dropped, "timed_out")),
    ];
    for d in probe.deliver_batch(batch).await {
        d.assert_ack();
    }
    until_provider(&state, "the cancelled order's charge to be voided", |s| {
        account(s, &dropped)
            .is_some_and(|a| a.status == Some(jetflow_provider::ChargeStatus::Voided))
    })
    .await;
    let (k1, d1) = (
        account(&state, &kept).expect("charged"),
        account(&state, &dropped).expect("charged"),
    );
    assert_eq!((k1.charge_calls, k1.void_calls), (1, 0), "{k1:?}");
    assert_eq!((d1.charge_calls, d1.void_calls), (1, 1), "{d1:?}");
    assert_eq!(
        k.subjects().await,
        ["payments.succeeded", "payments.succeeded"]
    );
    assert_eq!(k.statuses("payments", &kept).await, ["succeeded"]);
    assert_eq!(k.statuses("payments", &dropped).await, ["voided"]);
    handle.stop(false).await;
}

#[actix_rt::test]
async fn a_5xx_is_not_proof_of_no_charge_and_the_order_it_gives_up_on_is_voided() {
    let k = kit().await;
    let (url, state, handle) = provider().await;
    let probe = k.probe("payments", payments(&k, &url));
    // The provider charges, then answers 502 (a proxy in front of it failing).
    reqwest::Client::new()
        .put(format!("{url}/_control"))
        .json(&json!({"fail_after_charge": true}))
        .send()
        .await
        .expect("control");
    let id = Uuid::new_v4().to_string();
    let payload = reserved_for(&id, "c-1");
    deliver(&probe, "inventory.reserved", &payload)
        .await
        .assert_retry();
    let (p, m) = on("inventory.reserved", &payload);
    probe
        .deliver_raw_with(p, m.with_delivered(5).with_max_deliver(5))
        .await
        .assert_ack();
    assert_eq!(k.subjects().await, ["payments.failed"]);
    until_provider(&state, "the possible charge to be voided", |s| {
        account(s, &id).is_some_and(|a| a.status == Some(jetflow_provider::ChargeStatus::Voided))
    })
    .await;
    let a = account(&state, &id).expect("charged");
    assert_eq!(a.charges_made, 1, "{a:?}");
    handle.stop(false).await;
}

// ---- The actors themselves: typed batches, duplicates, panics ----

/// A typed delivery of `payload` on `subject`, its `delivered`th.
fn typed(subject: &str, payload: &Bytes, delivered: u32) -> Delivery<InboundEvent> {
    let (p, meta) = on(subject, payload);
    let message = InboundEvent::decode(subject, &HeaderMap::new(), &p).expect("a valid event");
    Delivery {
        message,
        meta: meta.with_delivered(delivered),
    }
}

/// The event id (`Nats-Msg-Id`) of a payload.
fn event_id(payload: &Bytes) -> String {
    on("any", payload).1.msg_id().expect("an id").to_string()
}

/// Starts the actor `A` alone, called `name` (metrics are per name, and tests run at once),
/// with two instances, panicking on the first delivery of the event `panic_on`, if any.
fn start<A: BatchActor>(
    k: &Kit,
    name: &str,
    inbox: &str,
    handler: A::Handler,
    panic_on: Option<String>,
) -> TxActors<A> {
    let mut builder = TxActors::new(name, handler, &k.outbox)
        .inbox(inbox)
        .instances(2);
    if let Some(id) = panic_on {
        builder = builder.panic_when(move |m| m.msg_id() == Some(id.as_str()) && m.delivered == 1);
    }
    builder.start_as::<A>()
}

fn panics(name: &str) -> u64 {
    jetflow_runtime::metrics::metrics()
        .actor_panics
        .with_label_values(&[name])
        .get()
}

#[actix_rt::test]
async fn the_order_actor_confirms_an_order_from_a_typed_batch_and_ignores_a_duplicate() {
    let k = kit().await;
    let actor = start::<OrderActor>(&k, "order-unit", "orders", OrderHandler, None);
    let id = Uuid::new_v4().to_string();
    let paid = bytes(with(
        meta(&id),
        json!({"version": 1, "payment_id": "pay_1", "amount_cents": 300}),
    ));
    let batch = vec![
        typed(
            "orders.created.v2",
            &created(&id, json!([{"product_id": "a", "quantity": 1}])),
            1,
        ),
        typed("inventory.reserved", &reserved_for(&id, "c-1"), 1),
        typed("payments.succeeded", &paid, 1),
    ];
    for d in TestKit::send_batch(&actor, batch).await {
        d.assert_ack();
    }
    assert_eq!(k.subjects().await, ["orders.confirmed"]);
    let order = k.order(&id).await;
    let statuses: Vec<&str> = order.history.iter().map(|h| h.status.as_str()).collect();
    assert_eq!(statuses, ["pending", "reserved", "paid", "confirmed"]);
    // The same event again (a redelivery): acked, nothing moves, nothing is emitted.
    for d in TestKit::send_batch(&actor, vec![typed("payments.succeeded", &paid, 2)]).await {
        d.assert_ack();
    }
    assert_eq!(k.subjects().await, ["orders.confirmed"]);
    assert_eq!(k.order(&id).await.history.len(), 4);
    assert_eq!(actor.mailbox_depth(), 0);
}

#[actix_rt::test]
async fn the_order_actor_restarts_after_a_panic_and_applies_its_batch_once_after() {
    let k = kit().await;
    let (x, y) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let item = json!([{"product_id": "a", "quantity": 1}]);
    let (cx, cy) = (created(&x, item.clone()), created(&y, item));
    let name = "order-unit-panic";
    let actor = start::<OrderActor>(&k, name, "orders", OrderHandler, Some(event_id(&cx)));
    let batch = |n| {
        vec![
            typed("orders.created.v2", &cx, n),
            typed("orders.created.v2", &cy, n),
        ]
    };
    // Both orders on one instance or not, the panic leaves its batch unacked and stored
    // nothing of it.
    let out = TestKit::send_batch(&actor, batch(1)).await;
    out[0].assert_retry();
    TestKit::restarted(name, 1).await;
    assert_eq!(panics(name), 1);
    assert!(
        order_store::get(k.deps.db.pool(), &x)
            .await
            .expect("read")
            .is_none()
    );
    // They come back after the restart: each applied once.
    for d in TestKit::send_batch(&actor, batch(2)).await {
        d.assert_ack();
    }
    for id in [&x, &y] {
        let order = k.order(id).await;
        assert_eq!((order.status.as_str(), order.history.len()), ("pending", 1));
    }
}

#[actix_rt::test]
async fn the_stock_actor_reserves_from_a_typed_batch_once_despite_a_duplicate_and_a_panic() {
    let k = kit().await;
    k.put("a", 5, 100).await;
    let (x, y) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let two = json!([{"product_id": "a", "quantity": 2}]);
    let (cx, cy) = (created(&x, two.clone()), created(&y, two));
    let name = "stock-unit";
    let actor = start::<StockActor>(&k, name, "inventory", StockHandler, Some(event_id(&cy)));
    // x is reserved; y panics the first time (nothing of its batch is kept).
    for d in TestKit::send_batch(&actor, vec![typed("orders.created.v2", &cx, 1)]).await {
        d.assert_ack();
    }
    let out = TestKit::send_batch(&actor, vec![typed("orders.created.v2", &cy, 1)]).await;
    out[0].assert_retry();
    TestKit::restarted(name, 1).await;
    let p = k.product("a").await;
    assert_eq!((p.available, p.reserved), (3, 2), "only x is reserved");
    // After the restart: y comes back, and x again (a duplicate): each reserved once.
    let again = vec![
        typed("orders.created.v2", &cy, 2),
        typed("orders.created.v2", &cx, 2),
    ];
    for d in TestKit::send_batch(&actor, again).await {
        d.assert_ack();
    }
    let p = k.product("a").await;
    assert_eq!((p.available, p.reserved), (1, 4));
    assert_eq!(
        k.subjects().await,
        ["inventory.reserved", "inventory.reserved"]
    );
    assert_eq!(panics(name), 1);
}

/// A payment actor `name` on a fresh provider whose handling panics right after it charged
/// one order's `inventory.reserved` (delivery 1, answered "retry"), and that was restarted.
/// Returns the actor, the order id and its event, and the provider.
async fn charged_then_panicked(
    k: &Kit,
    name: &str,
) -> (
    TxActors<PaymentActor>,
    (String, Bytes),
    (ProviderState, actix_web::dev::ServerHandle),
) {
    let (url, state, handle) = provider().await;
    let id = Uuid::new_v4().to_string();
    let reserved = reserved_for(&id, "c-1");
    let actor = start::<PaymentActor>(
        k,
        name,
        "payments",
        payments(k, &url),
        Some(event_id(&reserved)),
    );
    let out = TestKit::send_batch(&actor, vec![typed("inventory.reserved", &reserved, 1)]).await;
    out[0].assert_retry();
    TestKit::restarted(name, 1).await;
    (actor, (id, reserved), (state, handle))
}

#[actix_rt::test]
async fn the_payment_actor_charges_once_despite_a_duplicate_and_a_panic_after_the_charge() {
    let k = kit().await;
    // The charge is made (prepare), then handling panics: nothing is recorded or acked.
    let (actor, (id, reserved), (state, handle)) = charged_then_panicked(&k, "payment-unit").await;
    assert!(k.subjects().await.is_empty());
    // It comes back, and once more as a duplicate: one charge at the provider, one success.
    for n in [2, 3] {
        for d in TestKit::send_batch(&actor, vec![typed("inventory.reserved", &reserved, n)]).await
        {
            d.assert_ack();
        }
    }
    let a = account(&state, &id).expect("charged");
    assert_eq!(a.charges_made, 1, "charged once: {a:?}");
    assert_eq!(k.subjects().await, ["payments.succeeded"]);
    assert_eq!(k.statuses("payments", &id).await, ["succeeded"]);
    handle.stop(false).await;
}

/// A provider with a rate limit answers 429 to what is over it: the payment actor slows down
/// and makes those charges again inside the same deliveries (nothing is retried by
/// JetStream, nothing counts as a failure), so every order is charged once and succeeds.
#[actix_rt::test]
async fn the_payment_actor_slows_down_to_a_rate_limited_provider_without_failing_anything() {
    let k = kit().await;
    let (url, state, handle) = provider_with(ProviderState::with_rate_limit(10)).await;
    let handler = payments(&k, &url);
    let actor = start::<PaymentActor>(&k, "payment-paced", "payments", handler, None);
    let ids: Vec<String> = (0..25).map(|_| Uuid::new_v4().to_string()).collect();
    let batch = ids
        .iter()
        .map(|id| typed("inventory.reserved", &reserved_for(id, "c-1"), 1))
        .collect();
    for d in TestKit::send_batch(&actor, batch).await {
        d.assert_ack();
    }
    let accounts = state.accounts();
    assert_eq!(accounts.len(), 25);
    assert!(
        accounts.iter().all(|a| a.charges_made == 1),
        "each charged once: {accounts:?}"
    );
    let throttled: u64 = accounts.iter().map(|a| a.throttled_calls).sum();
    assert!(throttled > 0, "25 charges at 10/s were pushed back");
    let subjects = k.subjects().await;
    assert_eq!(subjects.len(), 25);
    assert!(
        subjects.iter().all(|s| s == "payments.succeeded"),
        "{subjects:?}"
    );
    handle.stop(false).await;
}

/// A charge made inside a batch whose transaction is then lost (here a panic after the
/// charge; a failed commit or a last delivery dead-lettered alike) left no payment row: the
/// cancellation of that order must still void the charge at the provider, and the charge's
/// redelivery must not charge again.
#[actix_rt::test]
async fn a_charge_whose_batch_was_lost_is_voided_when_its_order_is_cancelled() {
    let k = kit().await;
    let (actor, (id, reserved), (state, handle)) = charged_then_panicked(&k, "payment-lost").await;
    assert_eq!(account(&state, &id).expect("charged").charges_made, 1);
    assert!(
        k.statuses("payments", &id).await.is_empty(),
        "nothing recorded"
    );
    // The order is cancelled (timed out, say) before the charge comes back.
    let cancel = cancelled(&id, "timed_out");
    for d in TestKit::send_batch(&actor, vec![typed("orders.cancelled", &cancel, 1)]).await {
        d.assert_ack();
    }
    until_provider(&state, "the lost charge to be voided", |s| {
        account(s, &id).is_some_and(|a| a.status == Some(jetflow_provider::ChargeStatus::Voided))
    })
    .await;
    // The charge's delivery comes back: nothing more is charged or confirmed.
    for d in TestKit::send_batch(&actor, vec![typed("inventory.reserved", &reserved, 2)]).await {
        d.assert_ack();
    }
    let a = account(&state, &id).expect("charged");
    assert_eq!((a.charges_made, a.void_calls), (1, 1), "{a:?}");
    assert!(
        !k.subjects().await.iter().any(|s| s == "payments.succeeded"),
        "a cancelled order is never paid"
    );
    handle.stop(false).await;
}

#[actix_rt::test]
async fn charge_attempts_are_forgotten_after_their_retention() {
    let k = kit().await;
    let mut conn = k.deps.db.acquire().await.expect("conn");
    jetflow_domain::payment_store::mark_attempted(conn.conn(), &["fresh", "old"])
        .await
        .expect("marked");
    jetflow_runtime::db::query(
        "UPDATE payment_attempts SET uncertain_at = uncertain_at - 7200000 WHERE order_id = 'old'",
    )
    .execute(conn.conn())
    .await
    .expect("aged");
    drop(conn);
    let purged =
        jetflow_domain::payment_store::purge_attempts(&k.deps.db, Duration::from_secs(3600))
            .await
            .expect("purged");
    assert_eq!(purged, 1);
    let pool = k.deps.db.pool();
    assert!(
        jetflow_domain::payment_store::was_uncertain(pool, "fresh")
            .await
            .expect("read")
    );
    assert!(
        !jetflow_domain::payment_store::was_uncertain(pool, "old")
            .await
            .expect("read")
    );
}
