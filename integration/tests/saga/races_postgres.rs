//! Races that only PostgreSQL shows (SQLite serialises writers, so they never happen there):
//! handlers of the same order running at once in two transactions, at READ COMMITTED, as two
//! replicas of a role would.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer};
use bytes::Bytes;
use jetflow_domain::config::SagaConfig;
use jetflow_domain::handling::Deps;
use jetflow_domain::order_actor::OrderHandler;
use jetflow_domain::order_store::{self, NewOrder};
use jetflow_domain::payment_actor::PaymentHandler;
use jetflow_domain::payment_client::PaymentClient;
use jetflow_domain::payment_store::{self, NewPayment, PaymentStatus};
use jetflow_domain::payment_voider::PaymentVoider;
use jetflow_domain::stock_actor::StockHandler;
use jetflow_domain::{MIGRATIONS, stock_store};
use jetflow_integration::TestDatabase;
use jetflow_integration::wait::eventually;
use jetflow_provider::ProviderState;
use jetflow_runtime::testkit::{RecordingPublisher, TestKit, TxProbe};
use jetflow_runtime::{
    BreakerActor, BreakerConfig, ConsumerSpec, Database, DbConfig, Decision, DeliveryMeta,
    OutboxRelay, RelayConfig, Supervisor, TxRoute, UnitOfWork, headers,
};
use jetflow_schemas::Priority;
use serde_json::json;
use uuid::Uuid;

fn event(order_id: Uuid, extra: serde_json::Value) -> (Bytes, DeliveryMeta) {
    let subject = if extra.get("items").is_some() {
        "orders.created.v2"
    } else {
        "orders.cancelled"
    };
    event_on(order_id, subject, extra)
}

/// An event about `order_id` on `subject`: the common fields, `extra`, and the `Nats-Msg-Id`
/// its producer would have given it.
fn event_on(order_id: Uuid, subject: &str, extra: serde_json::Value) -> (Bytes, DeliveryMeta) {
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

type Batch = Vec<(Bytes, DeliveryMeta)>;

/// Every batch of `forward` on replica `a` and of `backward` on replica `b`, all at once; then
/// whatever asked for a retry (a transaction that lost a race: a deadlock victim, a row
/// written meanwhile) is delivered again, as JetStream would. Nothing may be dead-lettered.
async fn race(a: &TxProbe, b: &TxProbe, forward: &[Batch], backward: &[Batch]) {
    let (on_a, on_b) = futures::join!(
        futures::future::join_all(forward.iter().map(|batch| a.deliver_batch(batch.clone()))),
        futures::future::join_all(backward.iter().map(|batch| b.deliver_batch(batch.clone())))
    );
    for (batches, outcomes) in [(forward, &on_a), (backward, &on_b)] {
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
    db.migrate(MIGRATIONS).await.expect("migrations");
    (pg, db)
}

/// 200 orders, each reserved and cancelled at the same moment on two "replicas": whichever
/// wins, a cancelled order never keeps stock reserved, and stock is conserved.
#[test]
fn a_cancellation_racing_a_reservation_never_leaks_stock() {
    jetflow_integration::run(async {
        let (_pg, db) = database().await;
        {
            let mut conn = db.acquire().await.expect("conn");
            stock_store::put(conn.conn(), "race", 1_000_000, 100)
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
        let held: i64 = jetflow_runtime::db::query(
            "SELECT COUNT(*) FROM reservations WHERE status NOT IN ('cancelled', 'released')",
        )
        .fetch_scalar(db.pool())
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
            let mut conn = db.acquire().await.expect("conn");
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
                    order_store::insert_pending(conn.conn(), &order)
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
            event_on(
                id,
                "payments.succeeded",
                json!({"version": 1, "payment_id": "p", "amount_cents": 100}),
            )
        };
        let declined = |id: Uuid| {
            event_on(
                id,
                "payments.failed",
                json!({"version": 1, "reason": "declined", "amount_cents": 100}),
            )
        };
        let forward: Vec<Batch> = orders
            .chunks(20)
            .map(|c| c.iter().map(|id| paid(*id)).collect())
            .collect();
        let backward: Vec<Batch> = orders
            .rchunks(20)
            .map(|c| c.iter().rev().map(|id| declined(*id)).collect())
            .collect();
        race(&a, &b, &forward, &backward).await;
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

/// 100 orders, each charged on one replica of the payment handler and cancelled on another at
/// the same moment (batches of 20, in opposite orders): whichever records first, no cancelled
/// order keeps a charge. Every charge the provider made is voided, no payment row is left
/// `succeeded`, and each order was charged at most once.
#[test]
fn a_charge_racing_a_cancellation_on_two_replicas_is_always_voided() {
    jetflow_integration::run(async {
        let (_pg, db) = database().await;
        let published = RecordingPublisher::new();
        let outbox = OutboxRelay::start(
            db.clone(),
            Arc::new(published.clone()),
            RelayConfig::default(),
        );
        let provider = ProviderState::default();
        let server = {
            let s = provider.clone();
            HttpServer::new(move || App::new().configure(jetflow_provider::configure(s.clone())))
                .workers(1)
                .disable_signals()
                .bind(("127.0.0.1", 0))
                .expect("bind")
        };
        let url = format!("http://{}", server.addrs()[0]);
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        jetflow_domain::payment_client::install_crypto_provider();
        let client = PaymentClient::new(&url, Duration::from_secs(5), None).expect("client");
        let deps = Deps {
            db: db.clone(),
            outbox: outbox.clone(),
            config: Arc::new(SagaConfig::default()),
            requests_first: None,
        };
        let (vdb, vclient) = (db.clone(), client.clone());
        let voider = Supervisor::new("voider-race")
            .start(move |_| PaymentVoider::new(vdb, vclient, Duration::from_millis(100)));
        let replica = || {
            let breaker = BreakerActor::start(BreakerConfig {
                name: format!("race-{}", Uuid::new_v4().simple()),
                failure_threshold: 1000,
                open_timeout: Duration::from_secs(30),
                call_timeout: Duration::from_secs(5),
            });
            TestKit::tx(
                TxRoute::new(
                    ConsumerSpec::new("INVENTORY", "payments-inventory", &[]),
                    PaymentHandler::new(deps.clone(), client.clone(), breaker, voider.clone()),
                    &outbox,
                )
                .inbox("payments"),
            )
        };
        let (a, b) = (replica(), replica());
        let orders: Vec<Uuid> = (0..100).map(|_| Uuid::new_v4()).collect();
        let reserved = |id: Uuid| {
            event_on(
                id,
                "inventory.reserved",
                json!({"version": 1, "customer_id": "c", "amount_cents": 300,
                       "items": [{"product_id": "p", "quantity": 1, "unit_price_cents": 300}]}),
            )
        };
        let cancelled = |id: Uuid| {
            event_on(
                id,
                "orders.cancelled",
                json!({"version": 1, "reason": "timed_out", "detail": "race"}),
            )
        };
        let forward: Vec<Batch> = orders
            .chunks(20)
            .map(|c| c.iter().map(|id| reserved(*id)).collect())
            .collect();
        let backward: Vec<Batch> = orders
            .rchunks(20)
            .map(|c| c.iter().rev().map(|id| cancelled(*id)).collect())
            .collect();
        race(&a, &b, &forward, &backward).await;
        // Every charge made is voided at the provider and recorded so, within a deadline (the
        // voider works after the commit).
        let unvoided = || {
            provider
                .accounts()
                .into_iter()
                .filter(|acc| {
                    acc.charges_made > 0
                        && acc.status != Some(jetflow_provider::ChargeStatus::Voided)
                })
                .collect::<Vec<_>>()
        };
        let open_rows = || async {
            jetflow_runtime::db::query(
                "SELECT COUNT(*) FROM payments WHERE status IN ('succeeded', 'void_pending')",
            )
            .fetch_scalar::<i64>(db.pool())
            .await
            .expect("count")
        };
        eventually(
            "every charge of a cancelled order to be voided",
            Duration::from_secs(20),
            || async {
                let (left, open) = (unvoided(), open_rows().await);
                if left.is_empty() && open == 0 {
                    Ok(())
                } else {
                    Err(format!(
                        "{left:?} at the provider, {open} rows succeeded or void_pending"
                    ))
                }
            },
        )
        .await;
        for acc in provider.accounts() {
            assert!(acc.charges_made <= 1, "charged twice: {acc:?}");
        }
        let rows: i64 = jetflow_runtime::db::query("SELECT COUNT(*) FROM payments")
            .fetch_scalar(db.pool())
            .await
            .expect("count");
        assert_eq!(rows, 100, "one payment row per order");
        handle.stop(false).await;
        db.close().await;
    })
}

/// The window the races above may or may not hit, opened by hand: a transaction reads an
/// order's payment and reservation rows as absent and records a charge and a tombstone; another
/// transaction writes both rows and commits first. The first one's commit must then be a
/// conflict (so the runtime applies its batch again and sees those rows), never a silent
/// success that would leave a charge unvoided or a cancellation unseen.
#[test]
fn a_row_written_since_the_book_read_it_makes_the_commit_a_conflict() {
    jetflow_integration::run(async {
        let (_pg, db) = database().await;
        let outbox = OutboxRelay::start(
            db.clone(),
            Arc::new(RecordingPublisher::new()),
            RelayConfig::default(),
        );
        for table in ["payments", "reservations"] {
            let id = Uuid::new_v4().to_string();
            let mut uow = UnitOfWork::begin(&db).await.expect("begin");
            let recorded = if table == "payments" {
                payment_store::record(
                    &mut uow,
                    &NewPayment {
                        order_id: &id,
                        status: PaymentStatus::Succeeded,
                        amount_cents: 300,
                        payment_id: Some("pay_1"),
                        attempts: 1,
                        detail: None,
                    },
                )
                .await
                .expect("record")
            } else {
                stock_store::tombstone(&mut uow, &id, "standard")
                    .await
                    .expect("tombstone")
            };
            assert!(recorded, "{table}: the row was absent when read");
            // Another transaction (a replica) writes the same order's row and commits first.
            let sql = if table == "payments" {
                "INSERT INTO payments (order_id, status, amount_cents, attempts, updated_at) \
                 VALUES ($1, 'cancelled', 0, 0, 1)"
            } else {
                "INSERT INTO reservations (order_id, status, lane, updated_at) \
                 VALUES ($1, 'reserved', 'standard', 1)"
            };
            jetflow_runtime::db::query(sql)
                .bind(id.as_str())
                .execute(db.pool())
                .await
                .expect("the other transaction");
            let Err(e) = uow.commit(&outbox).await else {
                panic!(
                    "{table}: the commit overwrote, or ignored, a row written since it was read"
                );
            };
            assert!(
                jetflow_runtime::db::is_conflict(&e),
                "{table}: not a conflict: {e}"
            );
        }
        db.close().await;
    })
}

/// A database made by the version before PostgreSQL's own steps existed takes them at the next
/// start: its rows stay, and its keys compare byte by byte from then on.
#[test]
fn a_database_of_the_previous_version_takes_the_postgres_steps_and_keeps_its_rows() {
    jetflow_integration::run(async {
        let pg = TestDatabase::create().await;
        let db = Database::connect_url(pg.url()).await.expect("PostgreSQL");
        // The reference system's migrations as the previous version ran them: both engines'
        // only, recorded in the same table.
        static PREVIOUS: sqlx::migrate::Migrator = sqlx::migrate!("../actors/domain/migrations");
        db.migrate(&PREVIOUS)
            .await
            .expect("the previous version's migrations");
        jetflow_runtime::db::query(
            "INSERT INTO orders (order_id, status, created_at, updated_at) VALUES ($1, 'pending', 1, 1)",
        )
        .bind("order-before")
        .execute(db.pool())
        .await
        .expect("an order of the previous version");
        let collation = || async {
            jetflow_runtime::db::query(
                "SELECT COALESCE(collation_name::text, 'default') FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = 'orders' AND column_name = 'order_id'",
            )
            .fetch_scalar::<String>(db.pool())
            .await
            .expect("the key's collation")
        };
        assert_eq!(collation().await, "default");
        db.migrate(MIGRATIONS)
            .await
            .expect("this version's migrations");
        assert_eq!(collation().await, "C");
        let kept: i64 = jetflow_runtime::db::query(
            "SELECT COUNT(*) FROM orders WHERE order_id = $1 AND status = 'pending'",
        )
        .bind("order-before")
        .fetch_scalar(db.pool())
        .await
        .expect("the order");
        assert_eq!(kept, 1);
        db.close().await;
    });
}

/// On PostgreSQL every text key of the framework's and the reference system's tables compares
/// byte by byte (PostgreSQL's own migration steps), whatever the database's collation, and
/// running the migrations again changes nothing.
#[test]
fn postgres_keys_compare_bytes_whatever_the_database_collation() {
    jetflow_integration::run(async {
        let (_pg, db) = database().await;
        db.migrate(MIGRATIONS).await.expect("migrations run again");
        let keys: Vec<(String, String, Option<String>)> = jetflow_runtime::db::query(
            "SELECT c.table_name::text, c.column_name::text, c.collation_name::text \
             FROM information_schema.table_constraints t \
             JOIN information_schema.key_column_usage k \
               ON k.constraint_name = t.constraint_name AND k.table_schema = t.table_schema \
             JOIN information_schema.columns c \
               ON c.table_schema = k.table_schema AND c.table_name = k.table_name \
              AND c.column_name = k.column_name \
             WHERE t.constraint_type = 'PRIMARY KEY' AND t.table_schema = current_schema() \
               AND c.data_type = 'text' ORDER BY 1, 2",
        )
        .fetch_all(db.pool())
        .await
        .expect("key columns")
        .iter()
        .map(|row| row.decode().expect("a key column"))
        .collect();
        for table in [
            "inbox",
            "outbox",
            "orders",
            "payments",
            "reservations",
            "products",
        ] {
            assert!(
                keys.iter().any(|(t, _, _)| t == table),
                "no text key found for {table}: {keys:?}"
            );
        }
        let language: Vec<_> = keys
            .iter()
            .filter(|(_, _, collation)| collation.as_deref() != Some("C"))
            .collect();
        assert!(
            language.is_empty(),
            "keys compared through the database's collation: {language:?}"
        );
        db.close().await;
    });
}
