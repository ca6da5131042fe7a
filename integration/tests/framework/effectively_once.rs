//! The framework's effectively-once pieces against a real nats-server: the outbox relay with
//! messages JetStream refuses for good, and the inbox absorbing a re-publish that comes after
//! the stream's duplicate window.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jetflow_integration::{NatsServer, eventually};
use jetflow_runtime::backoff::Backoff;
use jetflow_runtime::prelude::*;
use jetflow_runtime::{Discard, PublishError, PublishReceipt, metrics::metrics, outbox};

async fn bridge_on(nats: &NatsServer, streams: Vec<StreamSpec>) -> Bridge {
    let mut topology = Topology::new();
    for s in streams {
        topology = topology.stream(s);
    }
    let bridge = NatsBridge::start(
        BridgeConfig::new(NatsConfig::new(&nats.url()), topology),
        Health::new(),
    );
    eventually("the bridge to connect", Duration::from_secs(15), || async {
        bridge.jetstream().map(|_| ()).ok_or("not yet".to_string())
    })
    .await;
    bridge
}

/// A relay that sweeps every `sweep`, retries from `retry` (up to 4 times that) and
/// dead-letters a permanent refusal after 3 attempts.
fn quick_relay(sweep: Duration, retry: Duration) -> RelayConfig {
    RelayConfig {
        sweep_every: sweep,
        min_age: Duration::ZERO,
        max_attempts: 3,
        retry: Backoff::exponential(retry, retry * 4),
        ..RelayConfig::default()
    }
}

/// 500 rows nobody can store (no stream has their subject) neither block the rows that can
/// be stored nor stay forever: their attempts and errors are recorded, and after the bound
/// they go to the dead-letter stream with their reason.
#[test]
fn messages_jetstream_refuses_are_counted_and_dead_lettered_without_blocking_the_rest() {
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let bridge = bridge_on(&nats, vec![StreamSpec::new("GOOD", &["good.>"])]).await;
        let db = Database::connect(&DbConfig::new("sqlite::memory:"))
            .await
            .expect("db");
        let config = quick_relay(Duration::from_millis(100), Duration::from_millis(50));
        let dead_before = metrics().outbox_dead_letters.get();
        let relay = OutboxRelay::start(db.clone(), Arc::new(bridge.clone()), config);
        // The bad rows first (the oldest), then the good ones: the good ones must not wait.
        let mut uow = UnitOfWork::begin(&db).await.expect("tx");
        for i in 0..500 {
            uow.emit(OutgoingMessage::new("nowhere.x", format!("bad-{i}"), "{}"));
        }
        uow.commit(&relay).await.expect("commit");
        let mut uow = UnitOfWork::begin(&db).await.expect("tx");
        for i in 0..5 {
            uow.emit(OutgoingMessage::new(
                format!("good.{i}"),
                format!("good-{i}"),
                "{}",
            ));
        }
        // Committed without the fast path: only the sweep can publish these.
        uow.commit(&relay).await.expect("commit");
        let js = bridge.jetstream().expect("connected");
        eventually(
            "the good rows to be stored",
            Duration::from_secs(10),
            || async {
                let n = js
                    .get_stream("GOOD")
                    .await
                    .map_err(|e| e.to_string())?
                    .info()
                    .await
                    .map_err(|e| e.to_string())?
                    .state
                    .messages;
                if n == 5 {
                    Ok(())
                } else {
                    Err(format!("{n} stored"))
                }
            },
        )
        .await;
        eventually(
            "the bad rows to be dead-lettered",
            Duration::from_secs(30),
            || async {
                let left = outbox::pending(&db).await.map_err(|e| e.to_string())?;
                if left == 0 {
                    Ok(())
                } else {
                    Err(format!("{left} left"))
                }
            },
        )
        .await;
        let letters = jetflow_runtime::dead_letter::list(&js).await.expect("DLQ");
        assert_eq!(letters.len(), 500);
        assert!(
            letters
                .iter()
                .all(|l| l.reason == "unpublishable" && l.subject == "nowhere.x")
        );
        // Each letter says how often it was refused, and JetStream's last word.
        assert!(
            letters[0]
                .error
                .contains("refused the outbox message 3 times")
                && letters[0].error.contains("no stream"),
            "{:?}",
            letters[0]
        );
        assert_eq!(metrics().outbox_dead_letters.get() - dead_before, 500);
        bridge.close().await;
    })
}

/// A full stream that refuses new messages (`discard: new`) refuses for now, not for good:
/// the relay keeps its rows (with backoff) however many times it is refused, and publishes
/// them once there is room, instead of dead-lettering saga events after its attempts.
#[test]
fn a_full_stream_refuses_for_now_and_the_outbox_waits_for_room_without_dead_lettering() {
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        // Room for one small message only.
        let full = StreamSpec::new("FULL", &["full.>"]).max_bytes(Some(200), Discard::New);
        let bridge = bridge_on(&nats, vec![full]).await;
        let db = Database::connect(&DbConfig::new("sqlite::memory:"))
            .await
            .expect("db");
        let config = quick_relay(Duration::from_millis(50), Duration::from_millis(20));
        let dead_before = metrics().outbox_dead_letters.get();
        let relay = OutboxRelay::start(db.clone(), Arc::new(bridge.clone()), config);
        let mut uow = UnitOfWork::begin(&db).await.expect("tx");
        for i in 0..3 {
            uow.emit(OutgoingMessage::new(
                format!("full.{i}"),
                format!("full-{i}"),
                "x".repeat(60),
            ));
        }
        uow.commit(&relay).await.expect("commit");
        // Refused well past the attempts that dead-letter a permanent refusal.
        eventually(
            "the rows to be refused more than max_attempts times",
            Duration::from_secs(15),
            || async {
                let attempts: i64 =
                    jetflow_runtime::db::query("SELECT COALESCE(MIN(attempts), 0) FROM outbox")
                        .fetch_scalar(db.pool())
                        .await
                        .map_err(|e| e.to_string())?;
                let left = outbox::pending(&db).await.map_err(|e| e.to_string())?;
                let dead = metrics().outbox_dead_letters.get() - dead_before;
                if attempts > 6 {
                    Ok(())
                } else {
                    Err(format!(
                        "{attempts} attempts, {left} rows left, {dead} dead-lettered"
                    ))
                }
            },
        )
        .await;
        let left = outbox::pending(&db).await.expect("pending");
        assert!(left >= 1, "the refused rows are kept");
        assert_eq!(
            metrics().outbox_dead_letters.get(),
            dead_before,
            "nothing dead-lettered"
        );
        // Room again: everything is published.
        let js = bridge.jetstream().expect("connected");
        let mut cfg = js
            .get_stream("FULL")
            .await
            .expect("stream")
            .cached_info()
            .config
            .clone();
        cfg.max_bytes = -1;
        js.update_stream(cfg).await.expect("more room");
        eventually(
            "the rows to be published",
            Duration::from_secs(15),
            || async {
                match outbox::pending(&db).await.map_err(|e| e.to_string())? {
                    0 => Ok(()),
                    n => Err(format!("{n} left")),
                }
            },
        )
        .await;
        let stored = jetflow_integration::nats::stored(&js, "FULL").await;
        assert_eq!(stored, 3);
        assert!(
            jetflow_runtime::dead_letter::list(&js)
                .await
                .expect("DLQ")
                .is_empty()
        );
        bridge.close().await;
    })
}

/// More PubAcks awaited at once than async-nats keeps (5,000): a pipelined publish of 6,000
/// (a relay catching up after an outage) beside a stream of single publishes (requests).
/// Every one is stored; none fails with "max ack pending" and nothing waits for ever.
/// Before, publishes past the 5,000th failed at once.
#[test]
fn a_huge_pipelined_publish_beside_single_publishes_stores_every_message() {
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let bridge = bridge_on(&nats, vec![StreamSpec::new("MANY", &["many.>"])]).await;
        let batch: Vec<OutgoingMessage> = (0..6_000)
            .map(|i| OutgoingMessage::new(format!("many.batch.{i}"), format!("b-{i}"), "x"))
            .collect();
        let singles = (0..200).map(|i| {
            let bridge = bridge.clone();
            async move {
                bridge
                    .publish(OutgoingMessage::new(
                        format!("many.single.{i}"),
                        format!("s-{i}"),
                        "y",
                    ))
                    .await
            }
        });
        let (batch, singles) = tokio::time::timeout(
            Duration::from_secs(60),
            futures::future::join(
                bridge.publish_many(batch),
                futures::future::join_all(singles),
            ),
        )
        .await
        .expect("every publish ends");
        let failed: Vec<String> = batch
            .iter()
            .chain(singles.iter())
            .filter_map(|r| r.as_ref().err().map(ToString::to_string))
            .collect();
        assert!(
            failed.is_empty(),
            "{} failed, first: {:?}",
            failed.len(),
            failed.first()
        );
        let js = bridge.jetstream().expect("connected");
        assert_eq!(jetflow_integration::nats::stored(&js, "MANY").await, 6_200);
        bridge.close().await;
    })
}

/// Counts the publishes the relay makes through it.
struct Counting {
    inner: Bridge,
    publishes: Arc<AtomicUsize>,
}

impl Publisher for Counting {
    fn publish(
        &self,
        message: OutgoingMessage,
    ) -> futures::future::BoxFuture<'static, Result<PublishReceipt, PublishError>> {
        self.publishes.fetch_add(1, Ordering::SeqCst);
        self.inner.publish(message)
    }
}

/// A row too large for any message cannot be published, and neither can a dead letter that
/// carries it: the letter goes without the payload (its size in a header), the row stays in
/// the outbox parked, with its error, and the relay stops trying (before, it published the
/// row and its letter every sweep, for ever).
#[test]
fn a_row_too_large_for_any_message_is_dead_lettered_without_its_payload_and_parked() {
    jetflow_integration::run(async {
        let nats = NatsServer::builder()
            .config_extra("max_payload: 4096\n")
            .start();
        let bridge = bridge_on(&nats, vec![StreamSpec::new("BIG", &["big.>"])]).await;
        let db = Database::connect(&DbConfig::new("sqlite::memory:"))
            .await
            .expect("db");
        let publishes = Arc::new(AtomicUsize::new(0));
        let counting = Counting {
            inner: bridge.clone(),
            publishes: publishes.clone(),
        };
        let config = quick_relay(Duration::from_millis(50), Duration::from_millis(20));
        let relay = OutboxRelay::start(db.clone(), Arc::new(counting), config);
        let mut uow = UnitOfWork::begin(&db).await.expect("tx");
        uow.emit(OutgoingMessage::new("big.1", "big-1", "x".repeat(5000)));
        uow.emit(OutgoingMessage::new("big.2", "big-2", "small"));
        uow.commit(&relay).await.expect("commit");
        let js = bridge.jetstream().expect("connected");
        eventually("the dead letter", Duration::from_secs(15), || async {
            match jetflow_runtime::dead_letter::list(&js).await {
                Ok(letters) if !letters.is_empty() => Ok(()),
                Ok(_) => Err(format!(
                    "none yet; {} publishes",
                    publishes.load(Ordering::SeqCst)
                )),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
        let letters = jetflow_runtime::dead_letter::list(&js).await.expect("DLQ");
        assert_eq!(letters.len(), 1, "{letters:?}");
        let letter = &letters[0];
        assert_eq!(letter.subject, "big.1");
        assert_eq!(letter.reason, "unpublishable");
        assert!(letter.error.contains("5000 bytes"), "{}", letter.error);
        assert!(letter.raw_payload.is_empty(), "the payload stays behind");
        assert_eq!(
            jetflow_integration::nats::stored(&js, "BIG").await,
            1,
            "the small row"
        );
        // The big row is parked with its error, not waiting, and no longer tried.
        let row = jetflow_runtime::db::query(
            "SELECT next_attempt_at, last_error FROM outbox WHERE id = 'big-1'",
        )
        .fetch_one(db.pool())
        .await
        .expect("the row is kept");
        let parked: i64 = row.try_get("next_attempt_at").expect("next_attempt_at");
        let error: String = row.try_get("last_error").expect("last_error");
        assert_eq!(parked, outbox::PARKED);
        assert!(error.contains("parked"), "{error}");
        assert_eq!(outbox::pending(&db).await.expect("pending"), 0);
        let after = publishes.load(Ordering::SeqCst);
        for _ in 0..3 {
            relay.sweep_now().await;
        }
        assert_eq!(
            publishes.load(Ordering::SeqCst),
            after,
            "a parked row is not tried again"
        );
        bridge.close().await;
    })
}

/// A handler that counts what it applied.
struct Count(Arc<AtomicUsize>);

impl TxHandler for Count {
    type Message = Json<serde_json::Value>;

    async fn handle(&self, _: &mut UnitOfWork, _: &Delivery<Self::Message>) -> Result<(), TxError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// JetStream drops a re-publish only within its duplicate window; one that comes later (an
/// outbox row published again after a long outage) is stored and delivered again, and the
/// consumer's inbox is what makes it change nothing.
#[test]
fn a_re_publish_after_the_duplicate_window_is_absorbed_by_the_inbox() {
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let mut stream = StreamSpec::new("SHORT", &["short.>"]);
        stream.duplicate_window = Duration::from_secs(1);
        let bridge = bridge_on(&nats, vec![stream]).await;
        let db = Database::connect(&DbConfig::new("sqlite::memory:"))
            .await
            .expect("db");
        let relay =
            OutboxRelay::start(db.clone(), Arc::new(bridge.clone()), RelayConfig::default());
        let applied = Arc::new(AtomicUsize::new(0));
        let route = TxRoute::new(
            ConsumerSpec::new("SHORT", "counter", &["short.>"]),
            Count(applied.clone()),
            &relay,
        );
        bridge.subscribe(route).await.expect("subscribe");
        let js = bridge.jetstream().expect("connected");
        let publish = || async {
            bridge
                .publish(OutgoingMessage::new("short.a", "evt-1", r#"{"n":1}"#))
                .await
                .expect("stored")
        };
        assert!(!publish().await.duplicate);
        assert!(
            publish().await.duplicate,
            "within the window JetStream drops it"
        );
        eventually(
            "the message to be applied",
            Duration::from_secs(10),
            || async {
                match applied.load(Ordering::SeqCst) {
                    1 => Ok(()),
                    n => Err(format!("{n}")),
                }
            },
        )
        .await;
        // After the window the same message is stored again and delivered again ...
        eventually(
            "the duplicate window to pass",
            Duration::from_secs(10),
            || async {
                if publish().await.duplicate {
                    Err("still a duplicate".to_string())
                } else {
                    Ok(())
                }
            },
        )
        .await;
        let stored = jetflow_integration::nats::stored(&js, "SHORT").await;
        assert_eq!(stored, 2, "JetStream kept the late copy");
        // ... and the inbox absorbs it: acked, never applied twice.
        eventually("the copy to be acked", Duration::from_secs(10), || async {
            let info = js
                .get_stream("SHORT")
                .await
                .map_err(|e| e.to_string())?
                .consumer_info("counter")
                .await
                .map_err(|e| e.to_string())?;
            if info.ack_floor.stream_sequence == 2 {
                Ok(())
            } else {
                Err(format!("{info:?}"))
            }
        })
        .await;
        assert_eq!(applied.load(Ordering::SeqCst), 1);
        assert!(
            metrics()
                .inbox_duplicates
                .with_label_values(&["counter"])
                .get()
                >= 1,
            "the duplicate was counted"
        );
        bridge.drain(Duration::from_secs(5)).await;
        bridge.close().await;
    })
}
