//! Faults of the broker under a steady stream of orders: a single nats-server killed -9 and
//! restarted on the same store, and a 3-node cluster (R3 streams) losing a node mid-load and
//! then having another restarted. Each ends with the invariant check.

use std::collections::BTreeMap;
use std::time::Duration;

use jetflow_integration::invariants::{self, Expectations};
use jetflow_integration::load::{self, LoadConfig};
use jetflow_integration::{NatsCluster, NatsServer, TestApp, TestAppBuilder};

async fn stock(app: &TestApp, products: &[&str], each: i64) -> BTreeMap<String, i64> {
    let mut initial = BTreeMap::new();
    for p in products {
        app.put_stock(p, each, 199).await;
        initial.insert(p.to_string(), each);
    }
    initial
}

async fn ready_status(app: &TestApp) -> u16 {
    match app
        .client
        .get(format!("{}/ready", app.address))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[test]
fn nats_killed_and_restarted_on_its_store_loses_nothing() {
    jetflow_integration::run(async {
        let mut nats = NatsServer::builder().sync_always(true).start();
        let app = TestAppBuilder::new(&nats.url()).start().await;
        app.wait_ready().await;
        let products = ["sku-n1", "sku-n2"];
        let initial = stock(&app, &products, 60).await;

        let load = tokio::spawn(load::run(LoadConfig::new(
            &app.address,
            &products,
            Duration::from_secs(4),
        )));
        tokio::time::sleep(Duration::from_millis(1200)).await;
        nats.kill();
        // While it is down, /ready says so (and the load above sees prompt 503s).
        let mut saw_unready = false;
        for _ in 0..40 {
            if ready_status(&app).await == 503 {
                saw_unready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(saw_unready, "/ready never reported NATS down");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        nats.restart();
        let report = load.await.expect("the load ran");
        report.assert_clean(Duration::from_secs(6));
        assert!(
            report.unavailable > 0,
            "the outage was seen by clients: {report:?}"
        );
        assert_eq!(
            ready_status(&app).await,
            200,
            "the bridge reconnected by itself"
        );

        let result = invariants::check(&Expectations {
            api: app.address.clone(),
            provider: app.provider.clone().expect("provider"),
            initial_stock: initial,
            accepted: report.accepted.clone(),
            deadline: Duration::from_secs(60),
        })
        .await;
        assert!(result.count("confirmed") > 0, "{:?}", result.outcomes);
        invariants::check_outbox_drained(&app.address, Duration::from_secs(10)).await;
        invariants::check_dead_letters(&nats.url(), 0).await;
        app.stop().await;
    })
}

#[test]
fn a_three_node_cluster_survives_a_node_loss_and_a_restart() {
    jetflow_integration::run(async {
        let mut cluster = NatsCluster::start(3);
        let app = TestAppBuilder::new(&cluster.urls())
            .with(|s| s.saga.stream_replicas = 3)
            .start()
            .await;
        app.wait_ready().await;
        let products = ["sku-c1", "sku-c2"];
        let initial = stock(&app, &products, 60).await;

        let load = tokio::spawn(load::run(LoadConfig::new(
            &app.address,
            &products,
            Duration::from_secs(5),
        )));
        tokio::time::sleep(Duration::from_millis(1000)).await;
        // Kill whichever node this app is probably talking to, and the meta leader with it if
        // it is the same: the first seed.
        cluster.node(0).kill();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cluster.node(0).restart();
        tokio::time::sleep(Duration::from_millis(700)).await;
        // Then another node goes down and comes back.
        cluster.node(1).kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.node(1).restart();
        let report = load.await.expect("the load ran");
        report.assert_clean(Duration::from_secs(8));
        cluster.wait_ready();

        let result = invariants::check(&Expectations {
            api: app.address.clone(),
            provider: app.provider.clone().expect("provider"),
            initial_stock: initial,
            accepted: report.accepted.clone(),
            deadline: Duration::from_secs(90),
        })
        .await;
        assert!(result.count("confirmed") > 0, "{:?}", result.outcomes);
        invariants::check_outbox_drained(&app.address, Duration::from_secs(10)).await;
        invariants::check_dead_letters(&cluster.node(2).url(), 0).await;
        app.stop().await;
    })
}
