//! Faults of jetflow's own processes under a steady stream of orders: `jetflow all` killed -9
//! mid-flight and restarted (redeliveries are harmless, the outbox publishes what was committed
//! but not sent), and every role as its own process, each killed and restarted in turn,
//! including one of two inventory replicas. Each ends with the invariant check.

use std::collections::BTreeMap;
use std::time::Duration;

use jetflow_integration::invariants::{self, Expectations};
use jetflow_integration::load::{self, LoadConfig};
use jetflow_integration::{JetflowProcess, NatsServer, TestDatabase, eventually};

async fn put_stock(api: &str, products: &[&str], each: i64) -> BTreeMap<String, i64> {
    let client = reqwest::Client::new();
    let mut initial = BTreeMap::new();
    for p in products {
        jetflow_integration::gateway::put_stock(&client, api, p, each, 350).await;
        initial.insert(p.to_string(), each);
    }
    initial
}

#[test]
fn jetflow_killed_mid_flight_and_restarted_loses_nothing_and_does_nothing_twice() {
    jetflow_integration::run(async {
        let nats = NatsServer::builder().sync_always(true).start();
        let provider = JetflowProcess::provider();
        let dir = tempfile::tempdir().expect("temp dir");
        let db_path = dir.path().join("jetflow.db");
        let db_url = format!("sqlite://{}", db_path.display());
        let nats_url = nats.url();
        let provider_url = provider.url();
        let mut app = JetflowProcess::start(
            &["all"],
            &[
                ("NATS_URL", nats_url.as_str()),
                ("DATABASE_URL", db_url.as_str()),
                ("PAYMENT_PROVIDER_URL", provider_url.as_str()),
                ("JETFLOW_ACK_WAIT", "2s"),
            ],
        );
        app.until("/ready").await;
        let products = ["sku-k1", "sku-k2"];
        let initial = put_stock(&app.url(), &products, 80).await;

        let load = tokio::spawn(load::run(LoadConfig::new(
            &app.url(),
            &products,
            Duration::from_secs(4),
        )));
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(1300)).await;
            app.kill();
            tokio::time::sleep(Duration::from_millis(300)).await;
            app.respawn();
            app.until("/ready").await;
        }
        let report = load.await.expect("the load ran");
        report.assert_clean(Duration::from_secs(8));
        assert!(
            report.connection_errors > 0,
            "the kill was seen by clients: {report:?}"
        );

        let result = invariants::check(&Expectations {
            api: app.url(),
            provider: provider_url.clone(),
            initial_stock: initial,
            accepted: report.accepted.clone(),
            deadline: Duration::from_secs(60),
        })
        .await;
        assert!(result.count("confirmed") > 0, "{:?}", result.outcomes);
        // The outbox drains: everything committed is published, then deleted.
        let pool = sqlx::SqlitePool::connect(&db_url).await.expect("sqlite");
        eventually("the outbox to drain", Duration::from_secs(15), || async {
            let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
                .fetch_one(&pool)
                .await
                .map_err(|e| e.to_string())?;
            if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} outbox rows left"))
            }
        })
        .await;
        invariants::check_dead_letters(&nats_url, 0).await;
    })
}

#[test]
fn every_role_as_its_own_process_each_killed_and_restarted() {
    jetflow_integration::run(async {
        let nats = NatsServer::builder().sync_always(true).start();
        let db = TestDatabase::create().await;
        let provider = JetflowProcess::provider();
        let nats_url = nats.url();
        let provider_url = provider.url();
        let env = [
            ("NATS_URL", nats_url.as_str()),
            ("DATABASE_URL", db.url()),
            ("PAYMENT_PROVIDER_URL", provider_url.as_str()),
            ("JETFLOW_ACK_WAIT", "2s"),
        ];
        let mut gateway = JetflowProcess::start(&["gateway"], &env);
        let mut orders = JetflowProcess::start(&["orders"], &env);
        let mut inventory_a = JetflowProcess::start(&["inventory"], &env);
        let inventory_b = JetflowProcess::start(&["inventory"], &env);
        let mut payments = JetflowProcess::start(&["payments"], &env);
        for p in [&gateway, &orders, &inventory_a, &inventory_b, &payments] {
            p.until("/ready").await;
        }
        let products = ["sku-r1", "sku-r2", "sku-r3"];
        let initial = put_stock(&gateway.url(), &products, 70).await;

        let load = tokio::spawn(load::run(LoadConfig::new(
            &gateway.url(),
            &products,
            Duration::from_secs(5),
        )));
        let pause = Duration::from_millis(400);
        for victim in [&mut inventory_a, &mut payments, &mut orders, &mut gateway] {
            tokio::time::sleep(Duration::from_millis(700)).await;
            victim.kill();
            tokio::time::sleep(pause).await;
            victim.respawn();
            victim.until("/ready").await;
        }
        let report = load.await.expect("the load ran");
        report.assert_clean(Duration::from_secs(8));

        let result = invariants::check(&Expectations {
            api: gateway.url(),
            provider: provider_url.clone(),
            initial_stock: initial,
            accepted: report.accepted.clone(),
            deadline: Duration::from_secs(90),
        })
        .await;
        assert!(result.count("confirmed") > 0, "{:?}", result.outcomes);
        invariants::check_dead_letters(&nats_url, 0).await;
        drop(inventory_b);
    })
}
