//! The saga's scenarios, written once and run against SQLite and against PostgreSQL
//! (`tests/saga/sqlite.rs`, `tests/saga/postgres.rs`). Each one starts from a fresh nats-server
//! and a fresh database, drives the system only through its public interfaces (REST, NATS
//! subjects, the DLQ) and ends with the invariant check.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use serde_json::{Value, json};

use crate::invariants::{self, Expectations, Report};
use crate::{NatsServer, TestApp, TestAppBuilder, TestDatabase, eventually};

/// Which database the application uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A fresh SQLite file.
    Sqlite,
    /// A fresh PostgreSQL database.
    Postgres,
}

/// A nats-server, a database and the application on them.
pub struct Env {
    /// The broker.
    pub nats: NatsServer,
    /// The app (every role).
    pub app: TestApp,
    /// The PostgreSQL database, when the backend is PostgreSQL.
    pub pg: Option<TestDatabase>,
    /// What was put in stock, for the invariant check.
    pub initial: BTreeMap<String, i64>,
    /// Every accepted order.
    pub accepted: Vec<String>,
}

impl Env {
    /// Starts everything with the test defaults, changed by `tweak`.
    pub async fn start(
        backend: Backend,
        tweak: impl FnOnce(TestAppBuilder) -> TestAppBuilder,
    ) -> Self {
        let nats = NatsServer::start();
        let mut builder = TestAppBuilder::new(&nats.url());
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let db = TestDatabase::create().await;
                builder = builder.database(db.url());
                Some(db)
            }
        };
        let app = tweak(builder).start().await;
        app.wait_ready().await;
        Self {
            nats,
            app,
            pg,
            initial: BTreeMap::new(),
            accepted: Vec::new(),
        }
    }

    /// Sets a product's stock (and remembers it as the initial stock).
    pub async fn stock(&mut self, product: &str, available: i64, price_cents: i64) {
        self.app.put_stock(product, available, price_cents).await;
        self.initial.insert(product.to_string(), available);
    }

    /// Places an order (asserting 202) and remembers it.
    pub async fn order(&mut self, customer: &str, items: &[(&str, u32)]) -> String {
        let items: Vec<Value> = items
            .iter()
            .map(|(p, q)| json!({"product_id": p, "quantity": q}))
            .collect();
        let r = self
            .app
            .post_order(&json!({"customer_id": customer, "items": items}))
            .await;
        let status = r.status().as_u16();
        let body: Value = r.json().await.expect("JSON");
        assert_eq!(status, 202, "{body}");
        let id = body["order_id"].as_str().expect("order_id").to_string();
        self.accepted.push(id.clone());
        id
    }

    /// `buyers` customers each order one unit of `product`, all at once (each asserted 202).
    pub async fn buy_concurrently(&mut self, product: &str, buyers: usize) {
        let app = &self.app;
        let posts = (0..buyers).map(|i| async move {
            let r = app
                .post_order(&json!({"customer_id": format!("c-{i}"), "items": [{"product_id": product, "quantity": 1}]}))
                .await;
            assert_eq!(r.status().as_u16(), 202);
            r.json::<Value>().await.expect("JSON")["order_id"]
                .as_str()
                .expect("id")
                .to_string()
        });
        let ids = futures::future::join_all(posts).await;
        self.accepted.extend(ids);
    }

    /// A JetStream context on the test's broker.
    pub async fn js(&self) -> jetstream::Context {
        let client = async_nats::connect(self.nats.url()).await.expect("NATS");
        jetstream::new(client)
    }

    /// Runs the invariant check over everything accepted so far.
    pub async fn check(&self) -> Report {
        invariants::check(&Expectations {
            api: self.app.address.clone(),
            provider: self
                .app
                .provider
                .clone()
                .expect("the app runs the provider"),
            initial_stock: self.initial.clone(),
            accepted: self.accepted.clone(),
            deadline: Duration::from_secs(40),
        })
        .await
    }

    /// How many messages the stream holds on `subject`.
    pub async fn count_on(&self, stream: &str, subject: &str) -> u64 {
        let js = self.js().await;
        let s = js.get_stream(stream).await.expect("stream");
        let info = s
            .info_with_subjects(subject)
            .await
            .expect("stream info with subjects");
        let mut total = 0;
        let mut subjects = info;
        while let Some(Ok((_, n))) = futures::StreamExt::next(&mut subjects).await {
            total += n as u64;
        }
        total
    }
}

fn statuses(order: &Value) -> Vec<String> {
    order["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|e| e["status"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The history starts `pending`, ends with the last of `expected` and follows its order. A
/// middle step may be missing: events of different streams race (the order actor can hear
/// `payments.failed` before `inventory.reserved`), and a status never moves backwards.
fn assert_history(order: &Value, expected: &[&str]) {
    let seen = statuses(order);
    assert_eq!(
        seen.first().map(String::as_str),
        expected.first().copied(),
        "{order}"
    );
    assert_eq!(
        seen.last().map(String::as_str),
        expected.last().copied(),
        "{order}"
    );
    let mut rest = expected.iter();
    for s in &seen {
        assert!(
            rest.any(|e| e == s),
            "{s} out of order or unexpected in {order}"
        );
    }
}

/// Reserve → charge → confirm, with the right amount, history, correlation id and stock.
pub async fn happy_path(backend: Backend) {
    let mut env = Env::start(backend, |b| b).await;
    env.stock("sku-happy", 10, 1299).await;
    let r = env
        .app
        .client
        .post(format!("{}/orders", env.app.address))
        .header("X-Correlation-ID", "corr-happy")
        .json(&json!({"customer_id": "c-1", "items": [{"product_id": "sku-happy", "quantity": 2}]}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 202);
    let id = r.json::<Value>().await.expect("JSON")["order_id"]
        .as_str()
        .expect("id")
        .to_string();
    env.accepted.push(id.clone());
    let order = env.app.wait_finished(&id, Duration::from_secs(30)).await;
    assert_eq!(order["status"], "confirmed", "{order}");
    assert_eq!(order["amount_cents"], 2598, "{order}");
    assert_eq!(order["correlation_id"], "corr-happy", "{order}");
    assert_eq!(order["customer_id"], "c-1");
    assert_eq!(order["items"][0]["product_id"], "sku-happy");
    assert_history(&order, &["pending", "reserved", "paid", "confirmed"]);
    for entry in order["history"].as_array().expect("history") {
        assert!(
            chrono::DateTime::parse_from_rfc3339(entry["at"].as_str().unwrap_or_default()).is_ok(),
            "every history entry has a time: {entry}"
        );
    }
    // The stock actor turns the reservation into a sale when it sees orders.confirmed.
    eventually("the sale", Duration::from_secs(20), || async {
        let s = env.app.stock("sku-happy").await;
        if (&s["available"], &s["reserved"], &s["sold"]) == (&json!(8), &json!(0), &json!(2)) {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;
    let report = env.check().await;
    assert_eq!(report.count("confirmed"), 1);
    let charges = env.app.charges().await;
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0]["amount_cents"], 2598);
}

/// Not enough stock, an unknown product, and an order whose second item fails: cancelled at
/// once, nothing reserved, nothing charged (all-or-nothing across items).
pub async fn stock_failures(backend: Backend) {
    let mut env = Env::start(backend, |b| b).await;
    env.stock("sku-few", 1, 500).await;
    env.stock("sku-many", 100, 100).await;
    let short = env.order("c-1", &[("sku-few", 2)]).await;
    let unknown = env.order("c-2", &[("sku-nope", 1)]).await;
    let mixed = env.order("c-3", &[("sku-many", 5), ("sku-few", 3)]).await;
    let mixed_unknown = env.order("c-4", &[("sku-many", 5), ("sku-ghost", 1)]).await;
    for (id, reason) in [
        (&short, "insufficient_stock"),
        (&unknown, "unknown_product"),
        (&mixed, "insufficient_stock"),
        (&mixed_unknown, "unknown_product"),
    ] {
        let order = env.app.wait_finished(id, Duration::from_secs(30)).await;
        assert_eq!(order["status"], "cancelled", "{order}");
        assert_eq!(order["reason"], reason, "{order}");
        assert_eq!(statuses(&order), ["pending", "cancelled"], "{order}");
    }
    let many = env.app.stock("sku-many").await;
    assert_eq!(many["available"], 100, "all-or-nothing: {many}");
    let report = env.check().await;
    assert_eq!(report.count("cancelled:insufficient_stock"), 2);
    assert_eq!(report.count("cancelled:unknown_product"), 2);
    assert!(env.app.charges().await.is_empty());
}

/// A declined card cancels the order and releases its stock with `inventory.released`.
pub async fn declined_payment_releases_stock(backend: Backend) {
    let mut env = Env::start(backend, |b| b).await;
    env.stock("sku-d", 5, 700).await;
    let id = env.order("declined-c9", &[("sku-d", 3)]).await;
    let order = env.app.wait_finished(&id, Duration::from_secs(30)).await;
    assert_eq!(order["status"], "cancelled", "{order}");
    assert_eq!(order["reason"], "payment_declined", "{order}");
    assert_history(&order, &["pending", "reserved", "cancelled"]);
    eventually("the release", Duration::from_secs(20), || async {
        let s = env.app.stock("sku-d").await;
        if s["available"] == 5 && s["reserved"] == 0 {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;
    assert_eq!(env.count_on("INVENTORY", "inventory.released").await, 1);
    let report = env.check().await;
    assert_eq!(report.count("cancelled:payment_declined"), 1);
    let charges = env.app.charges().await;
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0]["status"], "declined");
}

/// The same `Idempotency-Key` again and again, one after the other and all at once: one
/// order id, one event, one order per key.
pub async fn idempotency_key(backend: Backend) {
    let mut env = Env::start(backend, |b| b).await;
    env.stock("sku-i", 10, 100).await;
    let body = json!({"customer_id": "c-i", "items": [{"product_id": "sku-i", "quantity": 1}]});
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = env
            .app
            .client
            .post(format!("{}/orders", env.app.address))
            .header("Idempotency-Key", "key-123")
            .json(&body)
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status().as_u16(), 202);
        ids.push(r.json::<Value>().await.expect("JSON")["order_id"].clone());
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    // A different body under the same key is a client error, not a second order.
    let r = env
        .app
        .client
        .post(format!("{}/orders", env.app.address))
        .header("Idempotency-Key", "key-123")
        .json(&json!({"customer_id": "c-other", "items": [{"product_id": "sku-i", "quantity": 9}]}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 422, "{:?}", r.text().await);
    let id = ids[0].as_str().expect("id").to_string();
    env.accepted.push(id.clone());
    env.app.wait_finished(&id, Duration::from_secs(30)).await;
    // The same key 16 times at once (on PostgreSQL the gateway's writers commit side by
    // side, so the claims race in different transactions): still one order.
    let posts = (0..16).map(|_| {
        env.app
            .client
            .post(format!("{}/orders", env.app.address))
            .header("Idempotency-Key", "key-456")
            .json(&body)
            .send()
    });
    let mut racing = Vec::new();
    for r in futures::future::join_all(posts).await {
        let r = r.expect("POST");
        assert_eq!(r.status().as_u16(), 202);
        racing.push(r.json::<Value>().await.expect("JSON")["order_id"].clone());
    }
    assert!(racing.windows(2).all(|w| w[0] == w[1]), "{racing:?}");
    let raced = racing[0].as_str().expect("id").to_string();
    assert_ne!(raced, id);
    env.accepted.push(raced.clone());
    env.app.wait_finished(&raced, Duration::from_secs(30)).await;
    assert_eq!(env.count_on("ORDERS", "orders.created.v2").await, 2);
    let report = env.check().await;
    assert_eq!(report.stock["sku-i"]["sold"], 2, "{:?}", report.stock);
}

/// Many buyers at once, less stock than buyers: never oversold, stock conserved.
pub async fn concurrent_buyers(backend: Backend, buyers: usize, stock: i64) {
    let mut env = Env::start(backend, |b| b).await;
    env.stock("sku-hot", stock, 250).await;
    env.buy_concurrently("sku-hot", buyers).await;
    let report = env.check().await;
    assert_eq!(
        report.count("confirmed") as i64,
        stock,
        "{:?}",
        report.outcomes
    );
    assert_eq!(
        report.count("cancelled:insufficient_stock"),
        buyers - stock as usize,
        "{:?}",
        report.outcomes
    );
    let s = &report.stock["sku-hot"];
    assert_eq!(
        (s["available"].as_i64(), s["sold"].as_i64()),
        (Some(0), Some(stock))
    );
}

/// `orders.created` v1 and v2 published straight to their subjects are both processed; with
/// dual publishing on, the gateway emits both and the order is still handled once.
pub async fn schema_versions(backend: Backend) {
    let mut env = Env::start(backend, |b| {
        b.with(|s| s.saga.created_versions = vec![1, 2])
    })
    .await;
    env.stock("sku-v", 10, 100).await;
    let js = env.js().await;
    for (version, subject) in [(1, "orders.created"), (2, "orders.created.v2")] {
        let order_id = uuid::Uuid::new_v4();
        let event_id = uuid::Uuid::now_v7();
        let mut event = json!({
            "event_id": event_id, "order_id": order_id, "correlation_id": format!("corr-v{version}"),
            "version": version, "occurred_at": chrono::Utc::now().to_rfc3339(),
            "customer_id": format!("c-v{version}"),
            "items": [{"product_id": "sku-v", "quantity": 1}], "priority": "standard"
        });
        if version == 2 {
            event["shipping_address"] = json!({"recipient": "A. Buyer", "line1": "1 Main St",
                "city": "Springfield", "postal_code": "12345", "country": "US"});
        }
        let payload = serde_json::to_vec(&event).expect("JSON");
        jetflow_schemas::decode(subject, &payload).expect("a valid event");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event_id.to_string().as_str());
        js.publish_with_headers(subject.to_string(), headers, payload.into())
            .await
            .expect("publish")
            .await
            .expect("PubAck");
        env.accepted.push(order_id.to_string());
    }
    // Through the gateway, dual-published: one v1 and one v2 event for the same order.
    let id = env.order("c-dual", &[("sku-v", 2)]).await;
    env.app.wait_finished(&id, Duration::from_secs(30)).await;
    assert_eq!(env.count_on("ORDERS", "orders.created").await, 2);
    assert_eq!(env.count_on("ORDERS", "orders.created.v2").await, 2);
    let report = env.check().await;
    assert_eq!(report.count("confirmed"), 3, "{:?}", report.outcomes);
    assert_eq!(
        report.stock["sku-v"]["sold"], 4,
        "the dual order was reserved once"
    );
    assert_eq!(env.app.charges().await.len(), 3);
}

/// An express order placed behind a backlog of standard orders finishes before most of them.
pub async fn express_overtakes_backlog(backend: Backend, backlog: usize) {
    // The gateway alone first, so a backlog builds up with nobody consuming it.
    let nats = NatsServer::start();
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(TestDatabase::create().await),
    };
    let gateway_builder = TestAppBuilder::new(&nats.url()).roles(jetflow_app::startup::Roles {
        gateway: true,
        ..Default::default()
    });
    let db_url = match &pg {
        Some(db) => db.url().to_string(),
        None => gateway_builder.database_url(),
    };
    let gateway = gateway_builder.database(&db_url).start().await;
    gateway.wait_ready().await;
    gateway.put_stock("sku-x", backlog as i64 + 10, 100).await;
    let mut standard = Vec::new();
    for chunk in (0..backlog).collect::<Vec<_>>().chunks(50) {
        let gateway = &gateway;
        let posts = chunk.iter().map(|i| async move {
            gateway
                .post_order(&json!({"customer_id": format!("c-{i}"),
                    "items": [{"product_id": "sku-x", "quantity": 1}]}))
                .await
        });
        for r in futures::future::join_all(posts).await {
            assert_eq!(r.status().as_u16(), 202);
            standard.push(
                r.json::<Value>().await.expect("JSON")["order_id"]
                    .as_str()
                    .expect("id")
                    .to_string(),
            );
        }
    }
    let r = gateway
        .post_order(&json!({"customer_id": "c-vip", "priority": "express",
            "items": [{"product_id": "sku-x", "quantity": 1}]}))
        .await;
    assert_eq!(r.status().as_u16(), 202);
    let express = r.json::<Value>().await.expect("JSON")["order_id"]
        .as_str()
        .expect("id")
        .to_string();

    // Now the workers start and face the backlog and the express order at once. Few handlers
    // in flight per consumer make the backlog take a while, as it would on a loaded system.
    let workers = TestAppBuilder::new(&nats.url())
        .database(&db_url)
        .with(|s| s.saga.batch.max = 4)
        .roles(jetflow_app::startup::Roles {
            gateway: false,
            ..jetflow_app::startup::Roles::all()
        })
        .start()
        .await;
    let done = gateway
        .wait_finished(&express, Duration::from_secs(60))
        .await;
    assert_eq!(done["status"], "confirmed", "{done}");
    let mut accepted = standard.clone();
    accepted.push(express.clone());
    let mut initial = BTreeMap::new();
    initial.insert("sku-x".to_string(), backlog as i64 + 10);
    let report = invariants::check(&Expectations {
        api: gateway.address.clone(),
        provider: workers
            .provider
            .clone()
            .expect("the workers run the provider"),
        initial_stock: initial,
        accepted,
        deadline: Duration::from_secs(90),
    })
    .await;
    // Compare when each order finished (the last entry of its history).
    let finished_at = |o: &Value| -> String {
        o["history"]
            .as_array()
            .and_then(|h| h.last())
            .and_then(|e| e["at"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let express_at = finished_at(&report.orders[&express]);
    let before = standard
        .iter()
        .filter(|id| finished_at(&report.orders[*id]) < express_at)
        .count();
    assert!(
        before < backlog / 2,
        "the express order finished after {before} of {backlog} standard orders"
    );
    workers.stop().await;
    gateway.stop().await;
}

/// A poison event (not JSON, wrong schema, wrong version) goes to the DLQ with its reason and
/// the consumer keeps going; an event dead-lettered because the database was broken is
/// replayed after the repair and completes its order.
pub async fn poison_and_replay(backend: Backend) {
    let mut env = Env::start(backend, |b| b.with(|s| s.saga.max_deliver = 2)).await;
    env.stock("sku-p", 10, 100).await;
    let js = env.js().await;
    let poison: [(&str, &[u8]); 3] = [
        ("orders.created.v2", b"this is not json"),
        ("orders.created.v2", br#"{"order_id": 42}"#),
        (
            "orders.created.v2",
            br#"{"event_id":"0190a0e0-0000-7000-8000-000000000001","order_id":"0190a0e0-0000-7000-8000-000000000002","correlation_id":"c","version":7,"occurred_at":"2026-01-01T00:00:00Z","customer_id":"c","items":[{"product_id":"sku-p","quantity":1}],"priority":"standard"}"#,
        ),
    ];
    for (subject, payload) in poison {
        js.publish(subject.to_string(), payload.to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("PubAck");
    }
    // The consumer keeps going: a good order behind the poison completes.
    let good = env.order("c-good", &[("sku-p", 1)]).await;
    let order = env.app.wait_finished(&good, Duration::from_secs(30)).await;
    assert_eq!(order["status"], "confirmed");
    // Both the orders role and the inventory role consume orders.created and dead-letter what
    // they cannot read; the DLQ keeps one letter per bad message (its id is stream + sequence).
    let letters = eventually("the poison in the DLQ", Duration::from_secs(30), || async {
        let l = jetflow_runtime::dead_letter::list(&js)
            .await
            .map_err(|e| e.to_string())?;
        if l.len() >= 3 {
            Ok(l)
        } else {
            Err(format!("{} so far", l.len()))
        }
    })
    .await;
    assert_eq!(letters.len(), 3, "{letters:#?}");
    for l in &letters {
        assert_eq!(l.subject, "orders.created.v2");
        assert_eq!(l.reason, "poison", "{l:?}");
        assert!(l.sequence.is_some() && l.deliveries.is_some(), "{l:?}");
    }
    assert!(
        letters.iter().any(|l| l.error.contains("version")),
        "{letters:#?}"
    );

    // A valid order whose handling cannot commit (a table is missing) is retried, then
    // dead-lettered as exhausted; after the repair, replaying it completes the order.
    let db = env.app.db().clone();
    let sql = |q: &'static str| jetflow_runtime::db::query(q).execute(db.pool());
    sql("ALTER TABLE reservations RENAME TO reservations_broken")
        .await
        .expect("break the database");
    let broken = env.order("c-broken", &[("sku-p", 2)]).await;
    let exhausted = eventually(
        "the order exhausted into the DLQ",
        Duration::from_secs(40),
        || async {
            let l = jetflow_runtime::dead_letter::list(&js)
                .await
                .map_err(|e| e.to_string())?;
            l.into_iter()
                .find(|l| l.reason == "exhausted" && l.payload.contains(&broken))
                .ok_or_else(|| "not yet".to_string())
        },
    )
    .await;
    assert_eq!(exhausted.deliveries, Some(2), "{exhausted:?}");
    assert!(exhausted.error.contains("database"), "{exhausted:?}");
    sql("ALTER TABLE reservations_broken RENAME TO reservations")
        .await
        .expect("repair the database");
    jetflow_runtime::dead_letter::replay(&js, exhausted.dlq_sequence)
        .await
        .expect("replay");
    let order = env
        .app
        .wait_finished(&broken, Duration::from_secs(30))
        .await;
    assert_eq!(order["status"], "confirmed", "{order}");
    env.check().await;
    invariants::check_dead_letters(&env.nats.url(), 3).await;
}

/// Reads a counter's value for `labels` out of a Prometheus text page (sum over matching
/// lines): the same reading as `jetflow bench`'s.
pub use jetflow_bench::command::metric_sum;

/// Two inventory replicas (this app and a `jetflow inventory` process) share the inventory
/// role's durable consumers: both do work, nothing is done twice, nothing is oversold.
pub async fn inventory_replicas(backend: Backend, buyers: usize, stock: i64) {
    let mut env = Env::start(backend, |b| b).await;
    let db_url = env.app.settings.database.url.clone();
    let replica = crate::JetflowProcess::start(
        &["inventory"],
        &[
            ("NATS_URL", env.nats.url().as_str()),
            ("DATABASE_URL", db_url.as_str()),
            ("JETFLOW_ACK_WAIT", "2s"),
        ],
    );
    let mut replica = replica;
    replica.wait_ready();
    env.stock("sku-rep", stock, 100).await;
    env.buy_concurrently("sku-rep", buyers).await;
    let report = env.check().await;
    assert_eq!(
        report.count("confirmed") as i64,
        stock,
        "{:?}",
        report.outcomes
    );
    let replica_metrics = crate::nats::http_get(replica.port(), "/metrics")
        .expect("the replica's /metrics")
        .1;
    let handled_by_replica = metric_sum(
        &replica_metrics,
        "jetflow_actor_messages_total",
        &[("actor", "stock")],
    );
    let handled_here = metric_sum(
        &env.app.metrics().await,
        "jetflow_actor_messages_total",
        &[("actor", "stock")],
    );
    assert!(
        handled_by_replica > 0.0 && handled_here > 0.0,
        "both replicas work: here {handled_here}, replica {handled_by_replica}"
    );
}

/// The saga suite for one database: `saga_suite!(Backend::Sqlite)` in a test file expands to
/// one test per scenario, each run by [`crate::run`].
#[macro_export]
macro_rules! saga_suite {
    ($backend:expr) => {
        #[test]
        fn happy_path_confirms_with_the_right_amount() {
            $crate::run(async {
                $crate::scenarios::happy_path($backend).await;
            })
        }

        #[test]
        fn insufficient_stock_and_unknown_product_cancel_at_once() {
            $crate::run(async {
                $crate::scenarios::stock_failures($backend).await;
            })
        }

        #[test]
        fn a_declined_payment_cancels_and_releases_stock() {
            $crate::run(async {
                $crate::scenarios::declined_payment_releases_stock($backend).await;
            })
        }

        #[test]
        fn the_same_idempotency_key_makes_one_order() {
            $crate::run(async {
                $crate::scenarios::idempotency_key($backend).await;
            })
        }

        #[test]
        fn concurrent_buyers_never_oversell() {
            $crate::run(async {
                $crate::scenarios::concurrent_buyers($backend, 120, 45).await;
            })
        }

        #[test]
        fn v1_and_v2_events_are_processed_and_dual_publishing_handles_an_order_once() {
            $crate::run(async {
                $crate::scenarios::schema_versions($backend).await;
            })
        }

        #[test]
        fn an_express_order_overtakes_a_backlog() {
            $crate::run(async {
                $crate::scenarios::express_overtakes_backlog($backend, 300).await;
            })
        }

        #[test]
        fn poison_goes_to_the_dlq_and_replay_completes_an_exhausted_order() {
            $crate::run(async {
                $crate::scenarios::poison_and_replay($backend).await;
            })
        }
    };
}
