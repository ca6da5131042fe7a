//! The bridge's conformance suite, after Watermill's `pubsub/tests/test_pubsub.go`: one set of
//! scenarios with exact counts, against a real nats-server. Messages are consumed by a
//! transactional route whose handler records every application in the database, so "nothing
//! lost" and "nothing applied twice" are counted, not assumed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jetflow_integration::{NatsServer, eventually};
use jetflow_runtime::middleware::Inbound;
use jetflow_runtime::prelude::*;
use jetflow_runtime::route::BatchHandlerFn;
use jetflow_runtime::{RequestsFirst, YieldTo};
use serde::Deserialize;

const STREAM: &str = "CONFORMANCE";

#[derive(Debug, Deserialize)]
struct Msg {
    key: String,
    /// Fail this many deliveries before applying.
    #[serde(default)]
    fail: u32,
    /// Reject (dead-letter) instead of applying.
    #[serde(default)]
    reject: bool,
    /// Panic (a bug) instead of applying.
    #[serde(default)]
    panic: bool,
}

/// Records every application of a message in `applied` (one row each, no key: a second
/// application would show as a second row).
#[derive(Clone)]
struct Recorder(String);

impl TxHandler for Recorder {
    type Message = Json<Msg>;

    async fn handle(&self, uow: &mut UnitOfWork, d: &Delivery<Json<Msg>>) -> Result<(), TxError> {
        let m = &d.message.0;
        if m.reject {
            return Err(TxError::reject(format!("{} refused", m.key)));
        }
        if m.panic {
            panic!("{} is a bug", m.key);
        }
        if d.meta.delivered <= m.fail {
            return Err(TxError::retry_after(
                Duration::from_millis(50),
                format!("{} fails delivery {}", m.key, d.meta.delivered),
            ));
        }
        jetflow_runtime::db::query(
            "INSERT INTO applied (message_key, consumer, delivered) VALUES ($1, $2, $3)",
        )
        .bind(&m.key)
        .bind(&self.0)
        .bind(i64::from(d.meta.delivered))
        .execute(uow.conn())
        .await?;
        Ok(())
    }
}

struct Setup {
    nats: NatsServer,
    db: Database,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn new(nats: NatsServer) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("jetflow-db-")
            .tempdir()
            .expect("dir");
        let db = Database::connect(&DbConfig::new(format!(
            "sqlite://{}/c.db",
            dir.path().display()
        )))
        .await
        .expect("db");
        jetflow_runtime::db::query("CREATE TABLE applied (message_key TEXT NOT NULL, consumer TEXT NOT NULL, delivered BIGINT NOT NULL)")
            .execute(db.pool())
            .await
            .expect("table");
        Self {
            nats,
            db,
            _dir: dir,
        }
    }

    fn consumer(&self) -> ConsumerSpec {
        ConsumerSpec::new(STREAM, "conformance", &["conformance.>"])
            .ack_wait(Duration::from_secs(2))
            .max_deliver(5)
    }

    async fn bridge(&self) -> Bridge {
        let topology = Topology::new().stream(StreamSpec::new(STREAM, &["conformance.>"]));
        let bridge = NatsBridge::start(
            BridgeConfig::new(NatsConfig::new(&self.nats.url()), topology),
            Health::new(),
        );
        eventually("the bridge to connect", Duration::from_secs(15), || async {
            bridge.jetstream().map(|_| ()).ok_or("not yet".to_string())
        })
        .await;
        bridge
    }

    /// A bridge with a transactional route of the recorder (called `worker`) on the shared
    /// durable consumer.
    async fn subscriber_named(&self, worker: &str) -> (Bridge, OutboxHandle) {
        let bridge = self.bridge().await;
        let outbox = OutboxRelay::start(
            self.db.clone(),
            Arc::new(bridge.clone()),
            RelayConfig::default(),
        );
        bridge
            .subscribe(
                TxRoute::new(self.consumer(), Recorder(worker.to_string()), &outbox)
                    .inbox("conformance"),
            )
            .await
            .expect("subscribe");
        (bridge, outbox)
    }

    async fn subscriber(&self) -> (Bridge, OutboxHandle) {
        self.subscriber_named("w").await
    }

    /// Applications per message key.
    async fn applied(&self) -> HashMap<String, i64> {
        jetflow_runtime::db::query(
            "SELECT message_key, COUNT(*) AS n FROM applied GROUP BY message_key",
        )
        .fetch_all(self.db.pool())
        .await
        .expect("count")
        .iter()
        .map(|r| {
            (
                r.try_get::<String, _>("message_key").expect("message_key"),
                r.try_get::<i64, _>("n").expect("n"),
            )
        })
        .collect()
    }

    async fn wait_applied(&self, n: usize, deadline: Duration) -> HashMap<String, i64> {
        eventually(&format!("{n} messages applied"), deadline, || async {
            let a = self.applied().await;
            if a.len() >= n {
                Ok(a)
            } else {
                Err(format!("{} applied", a.len()))
            }
        })
        .await
    }
}

/// Publishes until JetStream stores it (the same id each time: a retry never duplicates).
async fn publish_until_stored(bridge: &Bridge, subject: &str, id: &str, body: &str) {
    let started = std::time::Instant::now();
    loop {
        match bridge
            .publish(OutgoingMessage::new(subject, id, body.to_string()))
            .await
        {
            Ok(_) => return,
            Err(e) if started.elapsed() < Duration::from_secs(60) => {
                tracing::debug!(error = %e, "publish failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{id} never stored: {e}"),
        }
    }
}

fn assert_once(applied: &HashMap<String, i64>, n: usize) {
    assert_eq!(applied.len(), n, "messages lost");
    let twice: Vec<_> = applied.iter().filter(|(_, c)| **c != 1).collect();
    assert!(twice.is_empty(), "applied more than once: {twice:?}");
}

#[test]
fn reconnect_10000_messages_from_many_publishers_through_two_broker_restarts() {
    jetflow_integration::run(async {
        let mut setup = Setup::new(NatsServer::builder().sync_always(true).start()).await;
        let (subscriber, _outbox) = setup.subscriber().await;
        let publisher = setup.bridge().await;
        let total = 10_000usize;
        let publishers = 20usize;
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..publishers)
            .map(|p| {
                let (bridge, sent) = (publisher.clone(), sent.clone());
                tokio::spawn(async move {
                    for i in 0..total / publishers {
                        let key = format!("p{p}-{i}");
                        let body = format!(r#"{{"key":"{key}"}}"#);
                        publish_until_stored(&bridge, &format!("conformance.{p}"), &key, &body)
                            .await;
                        sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for at in [total / 3, total / 2] {
            let sent = sent.clone();
            eventually(
                "publishing to reach the restart point",
                Duration::from_secs(120),
                || async {
                    let n = sent.load(std::sync::atomic::Ordering::SeqCst);
                    if n >= at {
                        Ok(())
                    } else {
                        Err(format!("{n} sent"))
                    }
                },
            )
            .await;
            setup.nats.restart();
        }
        for t in tasks {
            t.await.expect("publisher");
        }
        let applied = setup.wait_applied(total, Duration::from_secs(180)).await;
        assert_once(&applied, total);
        subscriber.drain(Duration::from_secs(5)).await;
        subscriber.close().await;
        publisher.close().await;
    })
}

#[test]
fn a_failing_handler_gets_the_message_again_until_it_is_applied_once() {
    jetflow_integration::run(async {
        let setup = Setup::new(NatsServer::start()).await;
        let (subscriber, _outbox) = setup.subscriber().await;
        for i in 0..50 {
            let fail = i % 3; // 0, 1 or 2 failed deliveries first
            let body = format!(r#"{{"key":"k{i}","fail":{fail}}}"#);
            publish_until_stored(&subscriber, "conformance.a", &format!("k{i}"), &body).await;
        }
        let applied = setup.wait_applied(50, Duration::from_secs(30)).await;
        assert_once(&applied, 50);
        let deliveries: Vec<(String, i64)> =
            jetflow_runtime::db::query("SELECT message_key, delivered FROM applied")
                .fetch_all(setup.db.pool())
                .await
                .expect("rows")
                .iter()
                .map(|r| {
                    (
                        r.try_get("message_key").expect("message_key"),
                        r.try_get("delivered").expect("delivered"),
                    )
                })
                .collect();
        for (key, delivered) in deliveries {
            let i: i64 = key.trim_start_matches('k').parse().expect("index");
            assert_eq!(
                delivered,
                i % 3 + 1,
                "{key} applied on the delivery after its failures"
            );
        }
        subscriber.close().await;
    })
}

#[test]
fn an_unacked_message_is_delivered_again_after_the_ack_wait() {
    jetflow_integration::run(async {
        let setup = Setup::new(NatsServer::start()).await;
        let bridge = setup.bridge().await;
        publish_until_stored(&bridge, "conformance.a", "lonely", r#"{"key":"lonely"}"#).await;
        // A consumer that takes the message and dies without acking it.
        let js = bridge.jetstream().expect("connected");
        let consumer = jetflow_runtime::topology::ensure_consumer(&js, &setup.consumer())
            .await
            .expect("consumer");
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .messages()
            .await
            .expect("fetch");
        let taken = batch.next().await.expect("a message").expect("ok");
        assert_eq!(taken.info().expect("info").delivered, 1);
        drop(batch);
        drop(taken);
        let outbox = OutboxRelay::start(
            setup.db.clone(),
            Arc::new(bridge.clone()),
            RelayConfig::default(),
        );
        bridge
            .subscribe(
                TxRoute::new(setup.consumer(), Recorder("w".into()), &outbox).inbox("conformance"),
            )
            .await
            .expect("subscribe");
        let applied = setup.wait_applied(1, Duration::from_secs(15)).await;
        assert_once(&applied, 1);
        let delivered: i64 = jetflow_runtime::db::query("SELECT delivered FROM applied")
            .fetch_scalar(setup.db.pool())
            .await
            .expect("row");
        assert_eq!(delivered, 2, "it came back after the ack wait");
        bridge.close().await;
    })
}

#[test]
fn the_consumer_keeps_going_after_errors() {
    jetflow_integration::run(async {
        let setup = Setup::new(NatsServer::start()).await;
        let (subscriber, _outbox) = setup.subscriber().await;
        for i in 0..100 {
            let body = if i % 10 == 0 {
                format!(r#"{{"key":"k{i}","reject":true}}"#)
            } else if i % 10 == 5 {
                "not json at all".to_string()
            } else {
                format!(r#"{{"key":"k{i}"}}"#)
            };
            publish_until_stored(&subscriber, "conformance.a", &format!("k{i}"), &body).await;
        }
        let applied = setup.wait_applied(80, Duration::from_secs(30)).await;
        assert_once(&applied, 80);
        let js = subscriber.jetstream().expect("connected");
        let letters = eventually("20 dead letters", Duration::from_secs(15), || async {
            let l = jetflow_runtime::dead_letter::list(&js)
                .await
                .map_err(|e| e.to_string())?;
            if l.len() == 20 {
                Ok(l)
            } else {
                Err(format!("{}", l.len()))
            }
        })
        .await;
        assert_eq!(
            letters.iter().filter(|l| l.reason == "rejected").count(),
            10
        );
        assert_eq!(letters.iter().filter(|l| l.reason == "poison").count(), 10);
        subscriber.close().await;
    })
}

impl Setup {
    /// A bridge whose route feeds a pool of two recorder actors called `name`, restarted
    /// within `policy`, reporting to `health`.
    async fn actors(&self, name: &str, policy: RestartPolicy, health: &Health) -> Bridge {
        let bridge = self.bridge().await;
        let outbox = OutboxRelay::start(
            self.db.clone(),
            Arc::new(bridge.clone()),
            RelayConfig::default(),
        );
        let actors = TxActors::new(name, Recorder("w".to_string()), &outbox)
            .inbox("conformance")
            .instances(2)
            .policy(policy)
            .health(health.clone())
            .start();
        bridge
            .subscribe(actors.route(self.consumer()))
            .await
            .expect("subscribe");
        bridge
    }
}

fn restarts(name: &str) -> u64 {
    jetflow_runtime::metrics::metrics()
        .actor_restarts
        .with_label_values(&[name])
        .get()
}

#[test]
fn a_delivery_that_panics_every_time_is_dead_lettered_and_its_neighbours_are_applied_once() {
    jetflow_integration::run(async {
        let setup = Setup::new(NatsServer::start()).await;
        let name = "conformance-panics";
        let health = Health::new();
        let bridge = setup
            .actors(
                name,
                RestartPolicy::at_most(20, Duration::from_secs(60)),
                &health,
            )
            .await;
        for i in 0..40 {
            let body = format!(r#"{{"key":"k{i}","panic":{}}}"#, i == 17);
            publish_until_stored(&bridge, "conformance.a", &format!("k{i}"), &body).await;
        }
        let applied = setup.wait_applied(39, Duration::from_secs(30)).await;
        assert_once(&applied, 39);
        assert!(!applied.contains_key("k17"));
        let js = bridge.jetstream().expect("connected");
        let letters = eventually("k17 dead-lettered", Duration::from_secs(30), || async {
            let l = jetflow_runtime::dead_letter::list(&js)
                .await
                .map_err(|e| e.to_string())?;
            if l.is_empty() {
                Err("none yet".to_string())
            } else {
                Ok(l)
            }
        })
        .await;
        assert_eq!(letters.len(), 1, "{letters:?}");
        assert_eq!(
            (letters[0].reason.as_str(), letters[0].deliveries),
            ("exhausted", Some(5)),
            "{letters:?}"
        );
        // One panic and one restart per delivery of k17 (alone after the first); the last
        // restart comes after its backoff.
        let panics = jetflow_runtime::metrics::metrics()
            .actor_panics
            .with_label_values(&[name])
            .get();
        assert_eq!(panics, 5);
        jetflow_runtime::testkit::TestKit::restarted(name, 5).await;
        assert_eq!(restarts(name), 5);
        assert!(health.is_live(), "within the budget");
        // Every neighbour was applied on its first or second delivery, never held back
        // until its last.
        let late: i64 =
            jetflow_runtime::db::query("SELECT COUNT(*) FROM applied WHERE delivered > 2")
                .fetch_scalar(setup.db.pool())
                .await
                .expect("count");
        assert_eq!(late, 0);
        bridge.close().await;
    })
}

#[test]
fn an_actor_that_spends_its_restart_budget_is_reported_dead_and_does_not_spin() {
    jetflow_integration::run(async {
        let setup = Setup::new(NatsServer::start()).await;
        let name = "conformance-budget";
        let health = Health::new();
        let bridge = setup
            .actors(
                name,
                RestartPolicy::at_most(2, Duration::from_secs(60)),
                &health,
            )
            .await;
        publish_until_stored(
            &bridge,
            "conformance.a",
            "bug",
            r#"{"key":"bug","panic":true}"#,
        )
        .await;
        let (component, why) = tokio::time::timeout(Duration::from_secs(30), health.dead())
            .await
            .expect("reported dead in time");
        assert!(
            component.starts_with("actor:conformance-budget"),
            "{component}"
        );
        assert!(why.contains("restart budget exhausted"), "{why}");
        assert_eq!(restarts(name), 2);
        // Left stopped: what comes now is redelivered slowly, not handled in a loop.
        publish_until_stored(&bridge, "conformance.a", "k1", r#"{"key":"k1"}"#).await;
        let before = jetflow_runtime::metrics::metrics()
            .nats_consumed
            .with_label_values(&["conformance.a", "retry"])
            .get();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let naks = jetflow_runtime::metrics::metrics()
            .nats_consumed
            .with_label_values(&["conformance.a", "retry"])
            .get()
            - before;
        // Two messages, each redelivered about once a second; a loop would be hundreds.
        assert!(naks <= 10, "{naks} naks in 2 s: a loop");
        assert_eq!(restarts(name), 2);
        bridge.close().await;
    })
}

#[test]
fn several_subscribers_on_one_durable_consumer_share_the_work_and_apply_each_message_once() {
    jetflow_integration::run(async {
        let setup = Setup::new(NatsServer::start()).await;
        let mut subscribers = Vec::new();
        for w in ["w1", "w2", "w3"] {
            subscribers.push(setup.subscriber_named(w).await);
        }
        let publisher = setup.bridge().await;
        let total = 3000;
        let publishes = (0..total).map(|i| {
            let publisher = publisher.clone();
            async move {
                let body = format!(r#"{{"key":"k{i}"}}"#);
                publish_until_stored(&publisher, "conformance.a", &format!("k{i}"), &body).await;
            }
        });
        futures::stream::iter(publishes)
            .buffer_unordered(64)
            .collect::<Vec<()>>()
            .await;
        let applied = setup.wait_applied(total, Duration::from_secs(60)).await;
        assert_once(&applied, total);
        let per_worker: Vec<(String, i64)> = jetflow_runtime::db::query(
            "SELECT consumer, COUNT(*) AS n FROM applied GROUP BY consumer ORDER BY consumer",
        )
        .fetch_all(setup.db.pool())
        .await
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r.try_get("consumer").expect("consumer"),
                r.try_get("n").expect("n"),
            )
        })
        .collect();
        assert_eq!(
            per_worker.len(),
            3,
            "every subscriber did some of the work: {per_worker:?}"
        );
        for (bridge, _) in &subscribers {
            bridge.close().await;
        }
        publisher.close().await;
    })
}

/// Two batched routes whose handlers take 100 ms and count how many of them run at once.
struct Overlap {
    running: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
    handled: std::sync::atomic::AtomicUsize,
}

impl Overlap {
    /// A route that yields to `requests`.
    fn route(self: &Arc<Self>, durable: &str, subject: &str, requests: &RequestsFirst) -> Route {
        use std::sync::atomic::Ordering::SeqCst;
        let me = self.clone();
        let handler: BatchHandlerFn = Arc::new(move |batch: Vec<Inbound>| {
            let me = me.clone();
            Box::pin(async move {
                let now = me.running.fetch_add(1, SeqCst) + 1;
                me.most.fetch_max(now, SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                me.running.fetch_sub(1, SeqCst);
                me.handled.fetch_add(batch.len(), SeqCst);
                vec![Outcome::Ack; batch.len()]
            })
        });
        Route::batched(
            ConsumerSpec::new(STREAM, durable, &[subject]),
            durable,
            handler,
            BatchConfig {
                max: 2,
                linger: Duration::ZERO,
            },
        )
        .layer(YieldTo(requests.clone()))
        .expect("requests first has a batch form")
    }

    async fn wait_handled(&self, n: usize) {
        eventually(&format!("{n} handled"), Duration::from_secs(30), || async {
            match self.handled.load(std::sync::atomic::Ordering::SeqCst) {
                h if h >= n => Ok(()),
                h => Err(format!("{h} handled")),
            }
        })
        .await;
    }
}

/// The consumer `durable`'s state once nothing is pending an ack and `done` holds (20 s at
/// most).
async fn settled(
    js: &async_nats::jetstream::Context,
    durable: &str,
    done: impl Fn(&async_nats::jetstream::consumer::Info) -> bool,
) -> async_nats::jetstream::consumer::Info {
    eventually(
        &format!("{durable}'s deliveries to be acked"),
        Duration::from_secs(20),
        || async {
            let info = js
                .get_stream(STREAM)
                .await
                .map_err(|e| e.to_string())?
                .consumer_info(durable)
                .await
                .map_err(|e| e.to_string())?;
            if info.num_ack_pending == 0 && done(&info) {
                Ok(info)
            } else {
                Err(format!("{info:?}"))
            }
        },
    )
    .await
}

/// A bridge on `nats`.
fn plain_bridge(nats: &NatsServer) -> Bridge {
    let topology = Topology::new().stream(StreamSpec::new(STREAM, &["conformance.>"]));
    NatsBridge::start(
        BridgeConfig::new(NatsConfig::new(&nats.url()), topology),
        Health::new(),
    )
}

#[test]
fn consumers_take_turns_while_requests_are_in_flight_and_run_side_by_side_after() {
    use std::sync::atomic::Ordering::SeqCst;
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let requests = RequestsFirst::new(2, 1.0);
        let bridge = plain_bridge(&nats);
        let overlap = Arc::new(Overlap {
            running: 0.into(),
            most: 0.into(),
            handled: 0.into(),
        });
        for (durable, subject) in [("turn-a", "conformance.a"), ("turn-b", "conformance.b")] {
            bridge
                .subscribe(overlap.route(durable, subject, &requests))
                .await
                .expect("subscribe");
        }
        eventually("the bridge to connect", Duration::from_secs(15), || async {
            bridge.jetstream().map(|_| ()).ok_or("not yet".to_string())
        })
        .await;

        // Six messages on each route; returns how many batches ran at once at most.
        let round = |from: usize| {
            let (bridge, overlap) = (&bridge, &overlap);
            async move {
                overlap.most.store(0, SeqCst);
                for i in from..from + 6 {
                    for subject in ["conformance.a", "conformance.b"] {
                        publish_until_stored(bridge, subject, &format!("{subject}-{i}"), "{}")
                            .await;
                    }
                }
                overlap.wait_handled(2 * (from + 6)).await;
                overlap.most.load(SeqCst)
            }
        };
        // Requests in flight: the two routes' batches run one at a time.
        let request = (requests.enter(), requests.enter());
        assert_eq!(round(0).await, 1, "batches overlapped while busy");
        // No requests in flight: they run side by side again.
        drop(request);
        assert_eq!(round(6).await, 2, "idle, the routes still took turns");
        bridge.close().await;
    })
}

/// A delivery waiting for its turn behind a long batch keeps telling JetStream it is being
/// worked on: it is not redelivered, though it waits longer than the ack wait.
#[test]
fn a_delivery_waiting_for_its_turn_is_not_redelivered() {
    use std::sync::Mutex;
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let requests = RequestsFirst::new(2, 1.0);
        let bridge = plain_bridge(&nats);
        // Every delivery's (subject, delivered) as its handler saw it.
        let seen = Arc::new(Mutex::new(Vec::<(String, u32)>::new()));
        for (durable, subject, takes) in [
            ("long", "conformance.long", Duration::from_millis(3000)),
            ("short", "conformance.short", Duration::ZERO),
        ] {
            let seen = seen.clone();
            let handler: BatchHandlerFn = Arc::new(move |batch: Vec<Inbound>| {
                let seen = seen.clone();
                Box::pin(async move {
                    for d in &batch {
                        if let Ok(mut s) = seen.lock() {
                            s.push((d.meta.subject.clone(), d.meta.delivered));
                        }
                    }
                    tokio::time::sleep(takes).await;
                    vec![Outcome::Ack; batch.len()]
                })
            });
            let spec = ConsumerSpec::new(STREAM, durable, &[subject])
                .ack_wait(Duration::from_secs(1))
                .max_deliver(5);
            bridge
                .subscribe(
                    Route::batched(spec, durable, handler, BatchConfig::default())
                        .layer(YieldTo(requests.clone()))
                        .expect("requests first has a batch form"),
                )
                .await
                .expect("subscribe");
        }
        eventually("the bridge to connect", Duration::from_secs(15), || async {
            bridge.jetstream().map(|_| ()).ok_or("not yet".to_string())
        })
        .await;
        let _busy = (requests.enter(), requests.enter());
        publish_until_stored(&bridge, "conformance.long", "long-1", "{}").await;
        eventually(
            "the long batch to start",
            Duration::from_secs(10),
            || async {
                let started = seen.lock().map(|s| !s.is_empty()).unwrap_or(false);
                started.then_some(()).ok_or("not yet".to_string())
            },
        )
        .await;
        // Waits about 3 s for its turn, three times the ack wait.
        publish_until_stored(&bridge, "conformance.short", "short-1", "{}").await;
        let short = |s: &[(String, u32)]| {
            s.iter()
                .filter(|(subject, _)| subject == "conformance.short")
                .map(|(_, delivered)| *delivered)
                .collect::<Vec<u32>>()
        };
        eventually(
            "the short delivery to be handled",
            Duration::from_secs(20),
            || async {
                let handled = seen.lock().map(|s| short(&s)).unwrap_or_default();
                (!handled.is_empty())
                    .then_some(())
                    .ok_or("not yet".to_string())
            },
        )
        .await;
        // Once acked, JetStream's own count says how often it delivered the message: a
        // redelivery past the ack wait, handled or still buffered, would make it 2.
        let js = bridge.jetstream().expect("connected");
        let info = settled(&js, "short", |i| i.ack_floor.consumer_sequence >= 1).await;
        assert_eq!(
            info.delivered.consumer_sequence, 1,
            "JetStream delivered it again: {info:?}"
        );
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(short(&seen), vec![1], "redelivered while waiting: {seen:?}");
        bridge.close().await;
    })
}

/// Messages that arrive while a batch is handled (longer than the ack wait) are read into
/// the next batch and kept alive with in-progress acks: none is redelivered behind the
/// route's back, however long the batch before it takes.
#[test]
fn what_arrives_during_a_long_batch_is_kept_alive_and_delivered_once() {
    use std::sync::Mutex;
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let bridge = plain_bridge(&nats);
        let seen = Arc::new(Mutex::new(Vec::<(String, u32)>::new()));
        let recorder = seen.clone();
        let handler: BatchHandlerFn = Arc::new(move |batch: Vec<Inbound>| {
            let seen = recorder.clone();
            Box::pin(async move {
                let first = batch.iter().any(|d| d.meta.subject == "conformance.first");
                for d in &batch {
                    if let Ok(mut s) = seen.lock() {
                        s.push((d.meta.subject.clone(), d.meta.delivered));
                    }
                }
                if first {
                    // Three times the ack wait.
                    tokio::time::sleep(Duration::from_millis(3000)).await;
                }
                vec![Outcome::Ack; batch.len()]
            })
        });
        let spec = ConsumerSpec::new(STREAM, "during", &["conformance.>"])
            .ack_wait(Duration::from_secs(1))
            .max_deliver(5);
        bridge
            .subscribe(Route::batched(
                spec,
                "during",
                handler,
                BatchConfig::default(),
            ))
            .await
            .expect("subscribe");
        eventually("the bridge to connect", Duration::from_secs(15), || async {
            bridge.jetstream().map(|_| ()).ok_or("not yet".to_string())
        })
        .await;
        publish_until_stored(&bridge, "conformance.first", "first", "{}").await;
        eventually(
            "the long batch to start",
            Duration::from_secs(10),
            || async {
                let started = seen.lock().map(|s| !s.is_empty()).unwrap_or(false);
                started.then_some(()).ok_or("not yet".to_string())
            },
        )
        .await;
        for i in 0..5 {
            publish_until_stored(&bridge, "conformance.later", &format!("later-{i}"), "{}").await;
        }
        let js = bridge.jetstream().expect("connected");
        let info = settled(&js, "during", |i| i.ack_floor.stream_sequence >= 6).await;
        assert_eq!(
            info.delivered.consumer_sequence, 6,
            "JetStream delivered something again: {info:?}"
        );
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(seen.len(), 6, "{seen:?}");
        assert!(
            seen.iter().all(|(_, delivered)| *delivered == 1),
            "{seen:?}"
        );
        bridge.close().await;
    })
}
