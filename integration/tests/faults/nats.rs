//! Faults of the broker under a steady stream of orders: a single nats-server killed -9 and
//! restarted on the same store, and a 3-node cluster (R3 streams) losing a node mid-load and
//! then having another restarted. Each ends with the invariant check.

use std::collections::BTreeMap;
use std::sync::Arc;
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

/// The end of every test here: every accepted order finished (some confirmed), stock and
/// charges add up, the outbox drained, no dead letter on the server at `nats_url`.
async fn check_settled(
    app: &TestApp,
    report: &load::LoadReport,
    initial: BTreeMap<String, i64>,
    nats_url: &str,
    deadline: Duration,
) {
    let result = invariants::check(&Expectations {
        api: app.address.clone(),
        provider: app.provider.clone().expect("provider"),
        initial_stock: initial,
        accepted: report.accepted.clone(),
        deadline,
    })
    .await;
    assert!(result.count("confirmed") > 0, "{:?}", result.outcomes);
    invariants::check_outbox_drained(&app.address, Duration::from_secs(10)).await;
    invariants::check_dead_letters(nats_url, 0).await;
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
    let _shared = super::beside_others();
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

        check_settled(&app, &report, initial, &nats.url(), Duration::from_secs(60)).await;
        app.stop().await;
    })
}

#[test]
fn a_three_node_cluster_survives_a_node_loss_and_a_restart() {
    let _shared = super::beside_others();
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

        let url = cluster.node(2).url();
        check_settled(&app, &report, initial, &url, Duration::from_secs(90)).await;
        app.stop().await;
    })
}

/// While an R3 stream elects a new leader (its leader was killed), publishing to it is
/// answered "no responders", which async-nats reports as "stream not found". The outbox relay
/// treats that as a refusal for now (the stream exists: JetStream says so), waits and
/// publishes once a leader is elected, and dead-letters nothing, even with a bound of three
/// attempts that an election outlasts. Before, such rows went to the dead-letter stream.
#[test]
fn rows_published_while_a_stream_elects_its_leader_are_stored_not_dead_lettered() {
    let _shared = super::beside_others();
    use jetflow_runtime::backoff::Backoff;
    use jetflow_runtime::prelude::*;
    jetflow_integration::run(async {
        let mut cluster = NatsCluster::start(3);
        let stream = StreamSpec::new("ELECT", &["elect.>"]).replicas(3);
        let bridge = NatsBridge::start(
            BridgeConfig::new(
                NatsConfig::new(&cluster.urls()),
                Topology::new().stream(stream),
            ),
            Health::new(),
        );
        jetflow_integration::eventually("the bridge", Duration::from_secs(30), || async {
            bridge.jetstream().map(|_| ()).ok_or("not yet".to_string())
        })
        .await;
        let js = bridge.jetstream().expect("connected");
        let db = Database::connect(&DbConfig::new("sqlite::memory:"))
            .await
            .expect("db");
        let config = RelayConfig {
            sweep_every: Duration::from_millis(50),
            min_age: Duration::ZERO,
            max_attempts: 3,
            retry: Backoff::exponential(Duration::from_millis(20), Duration::from_millis(80)),
            ..RelayConfig::default()
        };
        let relay = OutboxRelay::start(db.clone(), Arc::new(bridge.clone()), config);
        let dead_before = jetflow_runtime::metrics::metrics()
            .outbox_dead_letters
            .get();
        let mut elect = js.get_stream("ELECT").await.expect("stream");
        let leader = elect
            .info()
            .await
            .expect("info")
            .cluster
            .clone()
            .and_then(|c| c.leader)
            .expect("a leader");
        let node = (0..cluster.len())
            .find(|&i| cluster.node(i).name() == leader)
            .expect("the leader is a node");
        // Rows committed before, during and after the election.
        let mut emitted = 0;
        for round in 0..30 {
            if round == 10 {
                cluster.node(node).kill();
            }
            let mut uow = UnitOfWork::begin(&db).await.expect("tx");
            for _ in 0..5 {
                emitted += 1;
                uow.emit(OutgoingMessage::new(
                    format!("elect.{emitted}"),
                    format!("elect-{emitted}"),
                    "x",
                ));
            }
            uow.commit(&relay).await.expect("commit");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        jetflow_integration::eventually("every row stored", Duration::from_secs(60), || async {
            let left = jetflow_runtime::outbox::pending(&db)
                .await
                .map_err(|e| e.to_string())?;
            let dead = jetflow_runtime::metrics::metrics()
                .outbox_dead_letters
                .get()
                - dead_before;
            match left {
                0 => Ok(()),
                n => Err(format!("{n} rows left, {dead} dead-lettered so far")),
            }
        })
        .await;
        let stored = jetflow_integration::nats::stored(&js, "ELECT").await;
        assert_eq!(stored, emitted as u64, "every row stored once");
        assert_eq!(
            jetflow_runtime::metrics::metrics()
                .outbox_dead_letters
                .get()
                - dead_before,
            0,
            "nothing dead-lettered"
        );
        cluster.node(node).restart();
        bridge.close().await;
    })
}

/// nats-server frozen (SIGSTOP) for 3 s under a stream of orders: publishes wait past their
/// PubAck timeout. An order whose event may have been stored is accepted through the outbox
/// (202) and completes; a 503 leaves nothing behind. Counted: every accepted order ends, the
/// orders table holds exactly the accepted orders, stock and charges add up, nothing is
/// dead-lettered.
#[test]
fn nats_paused_mid_load_every_202_completes_and_a_503_leaves_nothing() {
    let _shared = super::beside_others();
    jetflow_integration::run(async {
        let mut nats = NatsServer::start();
        let app = TestApp::spawn(&nats.url()).await;
        app.wait_ready().await;
        let products = ["sku-p1", "sku-p2"];
        let initial = stock(&app, &products, 80).await;
        let load = tokio::spawn(load::run(LoadConfig::new(
            &app.address,
            &products,
            Duration::from_secs(6),
        )));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        nats.pause();
        tokio::time::sleep(Duration::from_secs(3)).await;
        nats.resume();
        let report = load.await.expect("the load ran");
        report.assert_clean(Duration::from_secs(8));
        check_settled(&app, &report, initial, &nats.url(), Duration::from_secs(90)).await;
        let orders: i64 = jetflow_runtime::db::query("SELECT COUNT(*) FROM orders")
            .fetch_scalar(app.db().pool())
            .await
            .expect("count");
        assert_eq!(
            orders as usize,
            report.accepted.len(),
            "only accepted orders exist ({} answers were 503)",
            report.unavailable
        );
        app.stop().await;
    })
}
