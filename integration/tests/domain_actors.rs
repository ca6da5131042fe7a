//! Actor-level unit tests of the three domain actors with the runtime's test kit: no NATS.
//! Each actor gets typed events (raw JSON through the same decode-and-middleware pipeline a
//! live route uses), and the tests assert the ack decision, the state in a real SQLite
//! database, and the events it published (through its outbox, to a `RecordingPublisher`).

use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer};
use jetflow_domain::order_actor::OrderActor;
use jetflow_domain::payment_actor::PaymentActor;
use jetflow_domain::payment_client::PaymentClient;
use jetflow_domain::stock_actor::StockActor;
use jetflow_domain::{
    Database, Deps, InboundEvent, OutboxRelay, RelayConfig, order_store, stock_store,
};
use jetflow_gateway::payment_provider::{self, ProviderState};
use jetflow_integration::app::test_saga;
use jetflow_runtime::testkit::{RecordingPublisher, TestKit};
use jetflow_runtime::{
    ActorRef, BreakerActor, BreakerConfig, DeadLetterReason, DeliveryMeta, Supervisor,
};
use serde_json::{Value, json};
use uuid::Uuid;

struct Kit {
    deps: Deps,
    published: RecordingPublisher,
    _dir: tempfile::TempDir,
}

async fn kit() -> Kit {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Database::connect(&format!("sqlite://{}/t.db", dir.path().display()))
        .await
        .expect("sqlite");
    let published = RecordingPublisher::new();
    let outbox = OutboxRelay::start(
        db.clone(),
        Arc::new(published.clone()),
        RelayConfig::default(),
    );
    Kit {
        deps: Deps {
            db,
            outbox,
            config: Arc::new(test_saga()),
        },
        published,
        _dir: dir,
    }
}

impl Kit {
    async fn put(&self, product: &str, available: i64, price: i64) {
        let mut conn = self.deps.db.pool().acquire().await.expect("conn");
        stock_store::put(&mut conn, product, available, price)
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

    /// Waits for `n` published events in total and returns their subjects.
    async fn subjects(&self, n: usize) -> Vec<String> {
        self.published.wait_for(n, Duration::from_secs(5)).await;
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

fn created(order_id: &str, items: Value) -> Vec<u8> {
    serde_json::to_vec(&with(
        meta(order_id),
        json!({"version": 2, "customer_id": "c-1", "items": items, "priority": "standard"}),
    ))
    .expect("JSON")
}

fn stock_actor(k: &Kit) -> ActorRef<StockActor> {
    let d = k.deps.clone();
    Supervisor::new("stock-unit").start(move |_| StockActor::new(d))
}

fn order_actor(k: &Kit) -> ActorRef<OrderActor> {
    let d = k.deps.clone();
    Supervisor::new("order-unit").start(move |_| OrderActor::without_sweeper(d))
}

#[test]
fn stock_actor_reserves_all_items_once_and_ignores_a_redelivery() {
    jetflow_integration::run(async {
        let k = kit().await;
        k.put("a", 5, 100).await;
        k.put("b", 5, 250).await;
        let probe = TestKit::route::<_, InboundEvent>(&stock_actor(&k));
        let order = Uuid::new_v4().to_string();
        let payload = created(
            &order,
            json!([{"product_id": "a", "quantity": 2}, {"product_id": "b", "quantity": 1}]),
        );
        probe
            .deliver_raw("orders.created.v2", payload.clone())
            .await
            .assert_ack();
        assert_eq!(k.subjects(1).await, ["inventory.reserved"]);
        let reserved: Value =
            serde_json::from_slice(&k.published.published()[0].payload).expect("JSON");
        assert_eq!(reserved["amount_cents"], 450, "{reserved}");
        assert_eq!(
            (
                k.product("a").await.available,
                k.product("a").await.reserved
            ),
            (3, 2)
        );

        // The same event again (a redelivery): acked, nothing changes, nothing more published.
        probe
            .deliver_raw("orders.created.v2", payload)
            .await
            .assert_ack();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(k.published.published().len(), 1);
        assert_eq!(k.product("a").await.available, 3);
    })
}

#[test]
fn stock_actor_cancels_all_or_nothing_for_short_stock_and_unknown_products() {
    jetflow_integration::run(async {
        let k = kit().await;
        k.put("a", 5, 100).await;
        k.put("few", 1, 100).await;
        let probe = TestKit::route::<_, InboundEvent>(&stock_actor(&k));
        let short = Uuid::new_v4().to_string();
        probe
        .deliver_raw(
            "orders.created.v2",
            created(
                &short,
                json!([{"product_id": "a", "quantity": 2}, {"product_id": "few", "quantity": 2}]),
            ),
        )
        .await
        .assert_ack();
        let unknown = Uuid::new_v4().to_string();
        probe
            .deliver_raw(
                "orders.created.v2",
                created(&unknown, json!([{"product_id": "ghost", "quantity": 1}])),
            )
            .await
            .assert_ack();
        assert_eq!(
            k.subjects(2).await,
            ["orders.cancelled", "orders.cancelled"]
        );
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
    })
}

#[test]
fn stock_actor_releases_on_cancel_and_sells_on_confirm() {
    jetflow_integration::run(async {
        let k = kit().await;
        k.put("a", 10, 100).await;
        let probe = TestKit::route::<_, InboundEvent>(&stock_actor(&k));
        let (keep, drop) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
        for id in [&keep, &drop] {
            probe
                .deliver_raw(
                    "orders.created.v2",
                    created(id, json!([{"product_id": "a", "quantity": 3}])),
                )
                .await
                .assert_ack();
        }
        let cancelled = serde_json::to_vec(&with(
            meta(&drop),
            json!({"version": 1, "reason": "payment_declined", "detail": "card declined"}),
        ))
        .expect("JSON");
        probe
            .deliver_raw("orders.cancelled", cancelled.clone())
            .await
            .assert_ack();
        let confirmed = serde_json::to_vec(&with(
            meta(&keep),
            json!({"version": 1, "amount_cents": 300}),
        ))
        .expect("JSON");
        probe
            .deliver_raw("orders.confirmed", confirmed)
            .await
            .assert_ack();
        let subjects = k.subjects(3).await;
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
        // A second cancel (a replay) releases nothing more.
        probe
            .deliver_raw("orders.cancelled", cancelled)
            .await
            .assert_ack();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(k.product("a").await.available, 7);
    })
}

#[test]
fn poison_is_dead_lettered_by_the_pipeline_without_reaching_the_actor() {
    jetflow_integration::run(async {
        let k = kit().await;
        let probe = TestKit::route::<_, InboundEvent>(&stock_actor(&k));
        let d = probe
            .deliver_raw("orders.created.v2", &b"{not json"[..])
            .await;
        assert!(
            matches!(d.assert_dead_letter(), DeadLetterReason::Poison(_)),
            "{d:?}"
        );
        let wrong_version = created(
            &Uuid::new_v4().to_string(),
            json!([{"product_id": "a", "quantity": 1}]),
        );
        let d = probe.deliver_raw("orders.created", wrong_version).await;
        assert!(
            matches!(d.assert_dead_letter(), DeadLetterReason::Poison(_)),
            "a v2 payload on the v1 subject: {d:?}"
        );
        assert!(k.published.published().is_empty());
    })
}

#[test]
fn order_actor_follows_the_saga_and_never_goes_back() {
    jetflow_integration::run(async {
        let k = kit().await;
        let actor = order_actor(&k);
        let probe = TestKit::route::<_, InboundEvent>(&actor);
        let id = Uuid::new_v4().to_string();
        probe
            .deliver_raw(
                "orders.created.v2",
                created(&id, json!([{"product_id": "a", "quantity": 1}])),
            )
            .await
            .assert_ack();
        assert_eq!(k.order(&id).await.status, "pending");
        let reserved = serde_json::to_vec(&with(
        meta(&id),
        json!({"version": 1, "items": [{"product_id": "a", "quantity": 1, "unit_price_cents": 300}], "amount_cents": 300, "customer_id": "c-1"}),
    ))
    .expect("JSON");
        probe
            .deliver_raw("inventory.reserved", reserved.clone())
            .await
            .assert_ack();
        let paid = serde_json::to_vec(&with(
            meta(&id),
            json!({"version": 1, "payment_id": "pay_1", "amount_cents": 300}),
        ))
        .expect("JSON");
        probe
            .deliver_raw("payments.succeeded", paid)
            .await
            .assert_ack();
        assert_eq!(k.subjects(1).await, ["orders.confirmed"]);
        let order = k.order(&id).await;
        assert_eq!(
            (order.status.as_str(), order.amount_cents),
            ("confirmed", Some(300))
        );
        // A late, redelivered `inventory.reserved` does not move a confirmed order back.
        probe
            .deliver_raw("inventory.reserved", reserved)
            .await
            .assert_ack();
        assert_eq!(k.order(&id).await.status, "confirmed");
    })
}

#[test]
fn order_actor_cancels_on_a_failed_payment() {
    jetflow_integration::run(async {
        let k = kit().await;
        let probe = TestKit::route::<_, InboundEvent>(&order_actor(&k));
        let id = Uuid::new_v4().to_string();
        probe
            .deliver_raw(
                "orders.created.v2",
                created(&id, json!([{"product_id": "a", "quantity": 1}])),
            )
            .await
            .assert_ack();
        let failed = serde_json::to_vec(&with(
        meta(&id),
        json!({"version": 1, "reason": "declined", "detail": "card declined", "amount_cents": 300}),
    ))
    .expect("JSON");
        probe
            .deliver_raw("payments.failed", failed)
            .await
            .assert_ack();
        assert_eq!(k.subjects(1).await, ["orders.cancelled"]);
        let order = k.order(&id).await;
        assert_eq!(
            (order.status.as_str(), order.reason.as_deref()),
            ("cancelled", Some("payment_declined"))
        );
    })
}

async fn provider() -> (String, actix_web::dev::ServerHandle) {
    let state = ProviderState::default();
    let server =
        HttpServer::new(move || App::new().configure(payment_provider::configure(state.clone())))
            .workers(1)
            .bind(("127.0.0.1", 0))
            .expect("bind");
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    (format!("http://{addr}"), handle)
}

fn payment_actor(k: &Kit, url: &str) -> ActorRef<PaymentActor> {
    let client = PaymentClient::new(url, Duration::from_secs(2)).expect("client");
    let breaker = BreakerActor::start(BreakerConfig {
        name: format!("unit-{}", Uuid::new_v4().simple()),
        failure_threshold: 2,
        open_timeout: Duration::from_secs(30),
        call_timeout: Duration::from_secs(1),
    });
    let d = k.deps.clone();
    Supervisor::new("payment-unit").start(move |_| PaymentActor::new(d, client, breaker))
}

fn reserved_for(id: &str, customer: &str) -> Vec<u8> {
    serde_json::to_vec(&with(
        meta(id),
        json!({"version": 1, "items": [{"product_id": "a", "quantity": 1, "unit_price_cents": 300}], "amount_cents": 300, "customer_id": customer}),
    ))
    .expect("JSON")
}

#[test]
fn payment_actor_charges_once_and_reports_declines() {
    jetflow_integration::run(async {
        let k = kit().await;
        let (url, handle) = provider().await;
        let probe = TestKit::route::<_, InboundEvent>(&payment_actor(&k, &url));
        let ok = Uuid::new_v4().to_string();
        let payload = reserved_for(&ok, "c-1");
        probe
            .deliver_raw("inventory.reserved", payload.clone())
            .await
            .assert_ack();
        probe
            .deliver_raw("inventory.reserved", payload)
            .await
            .assert_ack();
        let declined = Uuid::new_v4().to_string();
        probe
            .deliver_raw("inventory.reserved", reserved_for(&declined, "declined-7"))
            .await
            .assert_ack();
        assert_eq!(
            k.subjects(2).await,
            ["payments.succeeded", "payments.failed"]
        );
        let charges: Vec<Value> = reqwest::get(format!("{url}/charges"))
            .await
            .expect("charges")
            .json()
            .await
            .expect("JSON");
        assert_eq!(
            charges.len(),
            2,
            "the redelivery did not charge again: {charges:?}"
        );
        handle.stop(false).await;
    })
}

#[test]
fn payment_actor_retries_while_the_provider_is_down_and_gives_up_on_the_last_delivery() {
    jetflow_integration::run(async {
        let k = kit().await;
        // Nothing listens on this port: every call fails.
        let url = format!(
            "http://127.0.0.1:{}",
            jetflow_integration::ports::free_port()
        );
        let probe = TestKit::route::<_, InboundEvent>(&payment_actor(&k, &url));
        let id = Uuid::new_v4().to_string();
        let first = probe
            .deliver_raw("inventory.reserved", reserved_for(&id, "c-1"))
            .await;
        let delay = first.assert_retry();
        assert!(delay > Duration::ZERO);
        assert!(k.published.published().is_empty(), "nothing decided yet");
        let last = probe
            .deliver_raw_with(
                reserved_for(&id, "c-1"),
                DeliveryMeta::new("inventory.reserved")
                    .with_delivered(5)
                    .with_max_deliver(5),
            )
            .await;
        last.assert_ack();
        assert_eq!(k.subjects(1).await, ["payments.failed"]);
        let failed: Value =
            serde_json::from_slice(&k.published.published()[0].payload).expect("JSON");
        assert_eq!(failed["reason"], "unavailable", "{failed}");
    })
}

#[test]
fn payment_actor_voids_the_charge_of_a_cancelled_order_and_never_charges_after_a_cancel() {
    jetflow_integration::run(async {
        let k = kit().await;
        let (url, handle) = provider().await;
        let probe = TestKit::route::<_, InboundEvent>(&payment_actor(&k, &url));
        let cancelled = |id: &str| {
            serde_json::to_vec(&with(
                meta(id),
                json!({"version": 1, "reason": "timed_out", "detail": "took too long"}),
            ))
            .expect("JSON")
        };
        // Charged, then cancelled (e.g. timed out): the charge is voided.
        let charged = Uuid::new_v4().to_string();
        probe
            .deliver_raw("inventory.reserved", reserved_for(&charged, "c-1"))
            .await
            .assert_ack();
        probe
            .deliver_raw("orders.cancelled", cancelled(&charged))
            .await
            .assert_ack();
        // Cancelled before any charge, then a late inventory.reserved: never charged.
        let early = Uuid::new_v4().to_string();
        probe
            .deliver_raw("orders.cancelled", cancelled(&early))
            .await
            .assert_ack();
        probe
            .deliver_raw("inventory.reserved", reserved_for(&early, "c-2"))
            .await
            .assert_ack();
        let charges: Vec<Value> = reqwest::get(format!("{url}/charges"))
            .await
            .expect("charges")
            .json()
            .await
            .expect("JSON");
        assert_eq!(charges.len(), 1, "{charges:?}");
        assert_eq!(charges[0]["order_id"], charged.as_str());
        assert_eq!(charges[0]["status"], "voided", "{charges:?}");
        handle.stop(false).await;
    })
}
