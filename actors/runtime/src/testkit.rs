//! A test kit for one actor or one transactional handler, with no NATS.
//!
//! Users unit-test a handler the way the bridge drives it: [`TestKit::deliver`] sends a typed
//! `Delivery` to an actor and returns its [`Outcome`] together with the [`Decision`] the
//! bridge would take (ack, nak with delay, dead letter); [`TestKit::route`] pushes raw bytes
//! through the same decode-and-middleware pipeline as a live route, so poison handling is
//! tested too. [`TestKit::tx`] runs a [`TxRoute`]'s whole pipeline (decode, prepare, inbox,
//! handler, outbox, commit) on a real database, one delivery or a whole batch at a time.
//! [`RecordingPublisher`] stands in for the bridge on the publishing side and records every
//! message published; it can be told to fail, to exercise the paths where NATS is away.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use futures::future::BoxFuture;

use crate::actor_ref::ActorRef;
use crate::codec::Decode;
use crate::db::{Database, DbConfig};
use crate::delivery::{Delivery, DeliveryMeta};
use crate::headers;
use crate::middleware::{HandlerFn, Inbound};
use crate::outcome::{DeadLetterReason, Decision, Outcome, decide};
use crate::publisher::{OutgoingMessage, PublishError, PublishReceipt, Publisher};
use crate::route::BatchHandlerFn;
use crate::route::Route;
use crate::topology::ConsumerSpec;
use crate::tx_actor::{BatchActor, TxActors};
use crate::tx_route::{PreparedTxHandler, TxRoute};

/// What became of one test delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    /// The handler's verdict.
    pub outcome: Outcome,
    /// What the bridge would do with the JetStream message.
    pub decision: Decision,
}

impl Delivered {
    fn new(outcome: Outcome, meta: &DeliveryMeta) -> Self {
        Self {
            decision: decide(outcome.clone(), meta.delivered, meta.max_deliver),
            outcome,
        }
    }

    /// What became of each delivery of a batch (panics unless there is one outcome each).
    fn each(outcomes: Vec<Outcome>, metas: &[DeliveryMeta]) -> Vec<Self> {
        assert_eq!(outcomes.len(), metas.len(), "one outcome per delivery");
        outcomes
            .into_iter()
            .zip(metas)
            .map(|(o, m)| Self::new(o, m))
            .collect()
    }

    /// Panics unless the bridge would ack.
    #[track_caller]
    pub fn assert_ack(&self) {
        assert_eq!(
            self.decision,
            Decision::Ack,
            "expected an ack, got {:?}",
            self.outcome
        );
    }

    /// Panics unless the bridge would nak for a redelivery; returns the delay.
    #[track_caller]
    pub fn assert_retry(&self) -> Duration {
        match self.decision {
            Decision::Nak(d) => d,
            _ => panic!(
                "expected a retry, got {:?} ({:?})",
                self.decision, self.outcome
            ),
        }
    }

    /// Panics unless the bridge would dead-letter; returns the reason.
    #[track_caller]
    pub fn assert_dead_letter(&self) -> &DeadLetterReason {
        match &self.decision {
            Decision::DeadLetter(r) => r,
            _ => panic!(
                "expected a dead letter, got {:?} ({:?})",
                self.decision, self.outcome
            ),
        }
    }
}

/// Drives one actor as the bridge would.
#[derive(Debug, Clone, Copy, Default)]
pub struct TestKit;

impl TestKit {
    /// Delivers `message` as the first delivery on `subject`.
    pub async fn deliver<A, M>(actor: &ActorRef<A>, subject: &str, message: M) -> Delivered
    where
        A: Actor + Handler<Delivery<M>>,
        A::Context: ToEnvelope<A, Delivery<M>>,
        M: Send + 'static,
    {
        Self::deliver_with(actor, message, DeliveryMeta::new(subject)).await
    }

    /// Delivers `message` with the given delivery facts (e.g. the last allowed attempt).
    pub async fn deliver_with<A, M>(
        actor: &ActorRef<A>,
        message: M,
        meta: DeliveryMeta,
    ) -> Delivered
    where
        A: Actor + Handler<Delivery<M>>,
        A::Context: ToEnvelope<A, Delivery<M>>,
        M: Send + 'static,
    {
        let outcome = match actor
            .send(Delivery {
                message,
                meta: meta.clone(),
            })
            .await
        {
            Ok(outcome) => outcome,
            Err(e) => Outcome::retry(format!("actor unavailable: {e}")),
        };
        Delivered::new(outcome, &meta)
    }

    /// A fresh in-memory SQLite database with the framework's tables (run your own
    /// migrations on it with [`Database::migrate`]).
    pub async fn database() -> Database {
        match Database::connect(&DbConfig::new("sqlite::memory:")).await {
            Ok(db) => db,
            Err(e) => panic!("an in-memory SQLite database: {e}"),
        }
    }

    /// The pipeline of a live transactional route, fed by hand.
    pub fn tx<H: PreparedTxHandler>(route: TxRoute<H>) -> TxProbe {
        TxProbe {
            handler: route.batch_handler(),
        }
    }

    /// Sends typed deliveries to a pool of transactional actors, as its routes do (sharded,
    /// one [`Batch`](crate::Batch) per instance), and answers what became of each.
    pub async fn send_batch<A: BatchActor>(
        actors: &TxActors<A>,
        deliveries: Vec<Delivery<<A::Handler as PreparedTxHandler>::Message>>,
    ) -> Vec<Delivered> {
        let metas: Vec<DeliveryMeta> = deliveries.iter().map(|d| d.meta.clone()).collect();
        Delivered::each(actors.deliver(deliveries).await, &metas)
    }

    /// Waits (at most 5 s) until the actor called `name` has been restarted `n` times in
    /// all (`jetflow_actor_restarts_total`), and panics if it has not.
    pub async fn restarted(name: &str, n: u64) {
        let restarts = || {
            crate::metrics::metrics()
                .actor_restarts
                .with_label_values(&[name])
                .get()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while restarts() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} restarted {} times, not {n}",
                restarts()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The pipeline of a live route to `actor` (decode, default middleware), for raw bytes.
    pub fn route<A, M>(actor: &ActorRef<A>) -> RouteProbe
    where
        A: Actor + Handler<Delivery<M>>,
        A::Context: ToEnvelope<A, Delivery<M>>,
        M: Decode,
    {
        let route = Route::new(
            ConsumerSpec::new("TEST", "test", &[]),
            actor.recipient::<Delivery<M>>(),
        );
        match route.handler() {
            Some(handler) => RouteProbe { handler },
            None => unreachable!("an actor route handles one delivery at a time"),
        }
    }
}

/// A route's pipeline, fed by hand.
#[derive(Clone)]
pub struct RouteProbe {
    handler: HandlerFn,
}

impl RouteProbe {
    /// Pushes a raw payload (first delivery of five) on `subject`.
    pub async fn deliver_raw(&self, subject: &str, payload: impl Into<bytes::Bytes>) -> Delivered {
        self.deliver_raw_with(payload, DeliveryMeta::new(subject))
            .await
    }

    /// Pushes a raw payload with the given delivery facts.
    pub async fn deliver_raw_with(
        &self,
        payload: impl Into<bytes::Bytes>,
        meta: DeliveryMeta,
    ) -> Delivered {
        let outcome = (self.handler)(Inbound {
            payload: payload.into(),
            meta: meta.clone(),
        })
        .await;
        Delivered::new(outcome, &meta)
    }
}

/// A transactional route's pipeline, fed by hand.
#[derive(Clone)]
pub struct TxProbe {
    handler: BatchHandlerFn,
}

impl TxProbe {
    /// Delivers one raw payload (first delivery of five) on `subject`, with `Nats-Msg-Id`
    /// `msg_id`.
    pub async fn deliver_raw(
        &self,
        subject: &str,
        msg_id: &str,
        payload: impl Into<bytes::Bytes>,
    ) -> Delivered {
        let meta = DeliveryMeta::new(subject).with_header(headers::MSG_ID, msg_id);
        self.deliver_raw_with(payload, meta).await
    }

    /// Delivers one raw payload with the given delivery facts.
    pub async fn deliver_raw_with(
        &self,
        payload: impl Into<bytes::Bytes>,
        meta: DeliveryMeta,
    ) -> Delivered {
        let mut out = self.deliver_batch(vec![(payload.into(), meta)]).await;
        match out.pop() {
            Some(d) => d,
            None => panic!("the batch handler answered no outcome"),
        }
    }

    /// Delivers a whole batch at once (one transaction, as a live route would).
    pub async fn deliver_batch(&self, batch: Vec<(bytes::Bytes, DeliveryMeta)>) -> Vec<Delivered> {
        let metas: Vec<DeliveryMeta> = batch.iter().map(|(_, m)| m.clone()).collect();
        let inbound = batch
            .into_iter()
            .map(|(payload, meta)| Inbound { payload, meta })
            .collect();
        Delivered::each((self.handler)(inbound).await, &metas)
    }
}

/// A [`Publisher`] that records instead of publishing.
#[derive(Debug, Clone, Default)]
pub struct RecordingPublisher {
    published: Arc<Mutex<Vec<OutgoingMessage>>>,
    failures_left: Arc<AtomicUsize>,
    sequence: Arc<AtomicUsize>,
}

impl RecordingPublisher {
    /// A publisher that accepts everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `n` publishes fail with `NotConnected`.
    pub fn fail_next(&self, n: usize) {
        self.failures_left.store(n, Ordering::SeqCst);
    }

    /// Every message published so far.
    pub fn published(&self) -> Vec<OutgoingMessage> {
        match self.published.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The subjects published so far, in order.
    pub fn subjects(&self) -> Vec<String> {
        self.published().into_iter().map(|m| m.subject).collect()
    }

    /// The messages published on `subject`.
    pub fn on_subject(&self, subject: &str) -> Vec<OutgoingMessage> {
        self.published()
            .into_iter()
            .filter(|m| m.subject == subject)
            .collect()
    }

    /// Forgets what was published.
    pub fn clear(&self) {
        match self.published.lock() {
            Ok(mut g) => g.clear(),
            Err(p) => p.into_inner().clear(),
        }
    }

    /// Waits until at least `n` messages were published, at most `deadline`.
    pub async fn wait_for(&self, n: usize, deadline: Duration) -> Vec<OutgoingMessage> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let now = self.published();
            if now.len() >= n || tokio::time::Instant::now() >= until {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Publisher for RecordingPublisher {
    fn publish(
        &self,
        message: OutgoingMessage,
    ) -> BoxFuture<'static, Result<PublishReceipt, PublishError>> {
        let failed = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failed {
            return Box::pin(futures::future::ready(Err(PublishError::NotConnected)));
        }
        let duplicate = {
            let mut g = match self.published.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let dup = g.iter().any(|m| m.msg_id == message.msg_id);
            if !dup {
                g.push(message);
            }
            dup
        };
        let sequence = self.sequence.fetch_add(1, Ordering::SeqCst) as u64 + 1;
        Box::pin(futures::future::ready(Ok(PublishReceipt {
            stream: "TEST".into(),
            sequence,
            duplicate,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Json;
    use crate::supervisor::Supervisor;

    /// A tiny actor: acks even numbers, retries odd ones, dead-letters zero.
    struct Parity;
    impl Actor for Parity {
        type Context = Context<Self>;
    }
    impl Supervised for Parity {}
    impl Handler<Delivery<Json<u32>>> for Parity {
        type Result = Outcome;
        fn handle(&mut self, msg: Delivery<Json<u32>>, _: &mut Context<Self>) -> Outcome {
            match msg.message.0 {
                0 => Outcome::reject("zero"),
                n if n % 2 == 0 => Outcome::Ack,
                _ => Outcome::retry_after(Duration::from_millis(250), "odd"),
            }
        }
    }

    #[actix::test]
    async fn decisions_follow_outcomes_and_delivery_counts() {
        let a = Supervisor::new("parity").start(|_| Parity);
        TestKit::deliver(&a, "n", Json(2)).await.assert_ack();
        assert_eq!(
            TestKit::deliver(&a, "n", Json(3)).await.assert_retry(),
            Duration::from_millis(250)
        );
        let last = DeliveryMeta::new("n").with_delivered(5).with_max_deliver(5);
        let d = TestKit::deliver_with(&a, Json(3), last).await;
        assert!(matches!(
            d.assert_dead_letter(),
            DeadLetterReason::Exhausted { deliveries: 5, .. }
        ));
        let d = TestKit::deliver(&a, "n", Json(0)).await;
        assert!(matches!(
            d.assert_dead_letter(),
            DeadLetterReason::Rejected(_)
        ));
    }

    #[actix::test]
    async fn raw_route_dead_letters_poison() {
        let a = Supervisor::new("parity-raw").start(|_| Parity);
        let probe = TestKit::route::<Parity, Json<u32>>(&a);
        probe.deliver_raw("n", "4").await.assert_ack();
        let d = probe.deliver_raw("n", "not a number").await;
        assert!(matches!(
            d.assert_dead_letter(),
            DeadLetterReason::Poison(_)
        ));
    }

    #[actix::test]
    async fn recording_publisher_records_dedups_and_fails_on_demand() {
        let p = RecordingPublisher::new();
        p.publish(OutgoingMessage::new("a", "1", "x"))
            .await
            .unwrap();
        let dup = p
            .publish(OutgoingMessage::new("a", "1", "x"))
            .await
            .unwrap();
        assert!(dup.duplicate);
        p.fail_next(1);
        assert_eq!(
            p.publish(OutgoingMessage::new("b", "2", "y")).await,
            Err(PublishError::NotConnected)
        );
        p.publish(OutgoingMessage::new("b", "2", "y"))
            .await
            .unwrap();
        assert_eq!(p.subjects(), vec!["a", "b"]);
    }
}
