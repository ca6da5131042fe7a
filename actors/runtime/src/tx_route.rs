//! Transactional routes: effectively-once handling, in batches.
//!
//! A [`TxHandler`] applies one delivery inside a transaction: it changes state and emits
//! messages through the [`UnitOfWork`]. The runtime runs it inside a supervised
//! [`TxActor`](crate::TxActor): a [`TxRoute`] reads a durable consumer, decodes what is
//! waiting (up to a maximum, lingering a moment only while the consumer is busy) and sends it
//! as one [`Batch`](crate::Batch) message to the actor's bounded mailbox; the actor claims
//! every delivery in the inbox, runs the handler for each, writes what they emit to the
//! outbox, commits **once** and replies; the route then acks the batch and the relay
//! publishes the messages at once. A delivery the inbox knows already is acked without being
//! handled again. See [`tx_actor`](crate::tx_actor) for failures and panics.
//!
//! Work that must not run inside a transaction (a call to another service) goes in
//! [`PreparedTxHandler::prepare`], which runs for every delivery of the batch concurrently
//! before the transaction opens.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tracing::Instrument;

use crate::codec::Decode;
use crate::delivery::{Delivery, DeliveryMeta};
use crate::headers;
use crate::middleware::Retry;
use crate::outcome::Outcome;
use crate::relay::OutboxHandle;
use crate::route::{BatchConfig, BatchHandlerFn, Route};
use crate::span;
use crate::supervisor::panic_message;
use crate::topology::ConsumerSpec;
use crate::tx_actor::TxActors;
use crate::unit_of_work::UnitOfWork;

/// Why a handler could not apply a delivery. Whatever it did in the transaction is rolled
/// back.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// It may work later: redeliver (after `delay`, or the route's backoff).
    #[error("{reason}")]
    Retry {
        /// How long to wait, if the handler knows.
        delay: Option<Duration>,
        /// Why.
        reason: String,
    },
    /// It can never work: dead-letter it.
    #[error("{0}")]
    Reject(String),
    /// The database failed: redeliver later.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The work panicked (a bug): nothing of the batch is committed, the actor restarts and
    /// the delivery is applied alone when it comes back.
    #[error("panicked: {0}")]
    Panicked(String),
}

impl TxError {
    /// Retry later, after the route's backoff.
    pub fn retry(reason: impl Into<String>) -> Self {
        TxError::Retry {
            delay: None,
            reason: reason.into(),
        }
    }

    /// Retry after `delay`.
    pub fn retry_after(delay: Duration, reason: impl Into<String>) -> Self {
        TxError::Retry {
            delay: Some(delay),
            reason: reason.into(),
        }
    }

    /// Dead-letter: this message can never be applied.
    pub fn reject(reason: impl Into<String>) -> Self {
        TxError::Reject(reason.into())
    }

    /// The outcome of the delivery that failed with this error.
    pub fn outcome(&self) -> Outcome {
        match self {
            TxError::Retry { delay, reason } => Outcome::Retry {
                delay: *delay,
                reason: reason.clone(),
            },
            TxError::Reject(reason) => Outcome::reject(reason.clone()),
            TxError::Database(e) => Outcome::retry(format!("database: {e}")),
            TxError::Panicked(message) => Outcome::retry(format!("panicked: {message}")),
        }
    }
}

/// The inbox key of a delivery unless the handler says otherwise: the original
/// `Nats-Msg-Id` (kept when a dead letter is replayed), else the `Nats-Msg-Id`, else the
/// stream and sequence.
pub fn default_key(meta: &DeliveryMeta) -> String {
    meta.header(headers::ORIGINAL_MSG_ID)
        .or_else(|| meta.msg_id())
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}:{}", meta.stream, meta.stream_sequence))
}

/// Applies one delivery inside the batch's transaction.
///
/// ```
/// use jetflow_runtime::prelude::*;
///
/// /// Counts greetings per name and answers each with `greeted.<name>`.
/// struct Greeter;
///
/// impl TxHandler for Greeter {
///     type Message = Json<String>;
///
///     async fn handle(&self, uow: &mut UnitOfWork, d: &Delivery<Json<String>>) -> Result<(), TxError> {
///         let name = &d.message.0;
///         query("UPDATE greetings SET n = n + 1 WHERE name = $1")
///             .bind(name)
///             .execute(uow.conn())
///             .await?;
///         uow.emit(OutgoingMessage::new(format!("greeted.{name}"), format!("greeted-{name}-{}", d.meta.stream_sequence), "{}"));
///         Ok(())
///     }
/// }
/// ```
pub trait TxHandler: Send + Sync + 'static {
    /// What the route decodes each delivery into.
    type Message: Decode + Sync;

    /// Changes state through `uow.conn()` and emits messages with `uow.emit`; an error rolls
    /// back what this delivery did and decides its fate.
    fn handle(
        &self,
        uow: &mut UnitOfWork,
        delivery: &Delivery<Self::Message>,
    ) -> impl Future<Output = Result<(), TxError>> + Send;

    /// Runs once in each transaction, after the inbox claims and before the first delivery is
    /// handled, with the deliveries it is about to handle: the place to lock, in one fixed
    /// order, the rows the batch will update, so that routes or replicas that share hot rows
    /// wait for each other instead of deadlocking. By default it does nothing.
    fn begin_batch(
        &self,
        uow: &mut UnitOfWork,
        deliveries: &[&Delivery<Self::Message>],
    ) -> impl Future<Output = Result<(), TxError>> + Send {
        let _ = (uow, deliveries);
        std::future::ready(Ok(()))
    }

    /// The inbox key: two deliveries with the same key are applied once.
    fn key(&self, delivery: &Delivery<Self::Message>) -> String {
        default_key(&delivery.meta)
    }

    /// Which instance of a [`TxActors`](crate::TxActors) pool applies the delivery:
    /// deliveries with the same shard key reach the same instance, in order. By default the
    /// inbox key (no order between deliveries); a service keys by what its state is keyed by
    /// (an order's id).
    fn shard_key(&self, delivery: &Delivery<Self::Message>) -> String {
        self.key(delivery)
    }

    /// The span the delivery is handled in (add fields of your own by returning a span with
    /// them; the runtime's fields come from [`span::delivery_span`]).
    fn span(&self, target: &str, delivery: &Delivery<Self::Message>) -> tracing::Span {
        span::delivery_span(target, &delivery.meta)
    }
}

/// A delivery about to be prepared, with the span it is handled in.
#[derive(Debug)]
pub struct Preparing<'a, M> {
    /// The delivery.
    pub delivery: &'a Delivery<M>,
    /// Its span: instrument the delivery's own work with it.
    pub span: &'a tracing::Span,
}

/// A [`TxHandler`] with a step before the transaction: [`prepare`](Self::prepare) runs for
/// every delivery of the batch at once, outside any transaction (calls to other services
/// belong here), and its result is handed to [`handle`](Self::handle).
pub trait PreparedTxHandler: Send + Sync + 'static {
    /// What the route decodes each delivery into.
    type Message: Decode + Sync;
    /// What `prepare` hands to `handle` (cloned if the batch must be applied again).
    type Prepared: Clone + Send + Sync + 'static;

    /// Work outside the transaction; an error decides the delivery's fate at once.
    fn prepare(
        &self,
        delivery: &Delivery<Self::Message>,
    ) -> impl Future<Output = Result<Self::Prepared, TxError>> + Send;

    /// Prepares the whole batch, one result per delivery in the batch's order. By default it
    /// runs [`prepare`](Self::prepare) for every delivery at once, each in its span, and a
    /// panic fails only its own delivery. Override it to read in one query what each
    /// `prepare` would read on its own.
    fn prepare_batch(
        &self,
        batch: &[Preparing<'_, Self::Message>],
    ) -> impl Future<Output = Vec<Result<Self::Prepared, TxError>>> + Send {
        futures::future::join_all(batch.iter().map(|p| {
            AssertUnwindSafe(self.prepare(p.delivery))
                .catch_unwind()
                .instrument(p.span.clone())
                .map(|result| {
                    result.unwrap_or_else(|panic| {
                        Err(TxError::Panicked(panic_message(panic.as_ref())))
                    })
                })
        }))
    }

    /// As [`TxHandler::handle`], with what `prepare` found.
    fn handle(
        &self,
        uow: &mut UnitOfWork,
        delivery: &Delivery<Self::Message>,
        prepared: Self::Prepared,
    ) -> impl Future<Output = Result<(), TxError>> + Send;

    /// As [`TxHandler::begin_batch`].
    fn begin_batch(
        &self,
        uow: &mut UnitOfWork,
        deliveries: &[&Delivery<Self::Message>],
    ) -> impl Future<Output = Result<(), TxError>> + Send {
        let _ = (uow, deliveries);
        std::future::ready(Ok(()))
    }

    /// As [`TxHandler::key`].
    fn key(&self, delivery: &Delivery<Self::Message>) -> String {
        default_key(&delivery.meta)
    }

    /// As [`TxHandler::shard_key`].
    fn shard_key(&self, delivery: &Delivery<Self::Message>) -> String {
        self.key(delivery)
    }

    /// As [`TxHandler::span`].
    fn span(&self, target: &str, delivery: &Delivery<Self::Message>) -> tracing::Span {
        span::delivery_span(target, &delivery.meta)
    }
}

impl<H: TxHandler> PreparedTxHandler for H {
    type Message = H::Message;
    type Prepared = ();

    fn prepare(
        &self,
        _: &Delivery<Self::Message>,
    ) -> impl Future<Output = Result<(), TxError>> + Send {
        std::future::ready(Ok(()))
    }

    /// Nothing to prepare: no future per delivery.
    fn prepare_batch(
        &self,
        batch: &[Preparing<'_, Self::Message>],
    ) -> impl Future<Output = Vec<Result<(), TxError>>> + Send {
        std::future::ready(batch.iter().map(|_| Ok(())).collect())
    }

    fn handle(
        &self,
        uow: &mut UnitOfWork,
        delivery: &Delivery<Self::Message>,
        _: (),
    ) -> impl Future<Output = Result<(), TxError>> + Send {
        TxHandler::handle(self, uow, delivery)
    }

    fn begin_batch(
        &self,
        uow: &mut UnitOfWork,
        deliveries: &[&Delivery<Self::Message>],
    ) -> impl Future<Output = Result<(), TxError>> + Send {
        TxHandler::begin_batch(self, uow, deliveries)
    }

    fn key(&self, delivery: &Delivery<Self::Message>) -> String {
        TxHandler::key(self, delivery)
    }

    fn shard_key(&self, delivery: &Delivery<Self::Message>) -> String {
        TxHandler::shard_key(self, delivery)
    }

    fn span(&self, target: &str, delivery: &Delivery<Self::Message>) -> tracing::Span {
        TxHandler::span(self, target, delivery)
    }
}

/// A route whose handler applies deliveries effectively once, in batches.
pub struct TxRoute<H> {
    consumer: ConsumerSpec,
    handler: H,
    outbox: OutboxHandle,
    name: Option<String>,
    inbox: Option<String>,
    batch: BatchConfig,
    retry: Retry,
    double_ack: bool,
    instances: usize,
}

impl<H: PreparedTxHandler> TxRoute<H> {
    /// A route from `consumer` to `handler`, committing to the database of `outbox`.
    pub fn new(consumer: ConsumerSpec, handler: H, outbox: &OutboxHandle) -> Self {
        Self {
            consumer,
            handler,
            outbox: outbox.clone(),
            name: None,
            inbox: None,
            batch: BatchConfig::default(),
            retry: Retry::default(),
            double_ack: false,
            instances: 1,
        }
    }

    /// How many instances of the route's [`TxActor`](crate::TxActor) apply its batches
    /// (default 1), sharded by [`TxHandler::shard_key`]. Routes that share a pool of actors
    /// are made with [`TxActors::route`](crate::TxActors::route).
    pub fn instances(mut self, n: usize) -> Self {
        self.instances = n.max(1);
        self
    }

    /// The handler's name in metrics and logs (default: the consumer's durable name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The inbox the deliveries are claimed in (default: the consumer's durable name).
    /// Routes that share an inbox apply a message once between them.
    pub fn inbox(mut self, inbox: impl Into<String>) -> Self {
        self.inbox = Some(inbox.into());
        self
    }

    /// How batches are gathered.
    pub fn batch(mut self, batch: BatchConfig) -> Self {
        self.batch = batch;
        self
    }

    /// The backoff of retries that name no delay.
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Waits for JetStream to confirm every ack (see [`Route::double_ack`]).
    pub fn double_ack(mut self, on: bool) -> Self {
        self.double_ack = on;
        self
    }

    /// The batch handler alone (what the bridge runs; the test kit feeds it by hand).
    pub fn batch_handler(self) -> BatchHandlerFn {
        self.split().1
    }

    fn split(self) -> (Route, BatchHandlerFn) {
        let name = self.name.unwrap_or_else(|| self.consumer.durable.clone());
        let inbox = self.inbox.unwrap_or_else(|| self.consumer.durable.clone());
        let actors = TxActors::new(name.clone(), self.handler, &self.outbox)
            .inbox(inbox)
            .retry(self.retry)
            .instances(self.instances)
            .start();
        let handler = actors.batch_handler();
        let route = Route::batched(self.consumer, &name, handler.clone(), self.batch)
            .double_ack(self.double_ack);
        (route, handler)
    }
}

impl<H: PreparedTxHandler> From<TxRoute<H>> for Route {
    fn from(route: TxRoute<H>) -> Route {
        route.split().0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_key_survives_a_replay() {
        let meta = DeliveryMeta::new("s").with_header(headers::MSG_ID, "evt-1");
        assert_eq!(default_key(&meta), "evt-1");
        let replayed = DeliveryMeta::new("s")
            .with_header(headers::MSG_ID, "replay:DLQ:7")
            .with_header(headers::ORIGINAL_MSG_ID, "evt-1");
        assert_eq!(default_key(&replayed), "evt-1");
        let bare = DeliveryMeta::new("s").with_sequence("S", 9);
        assert_eq!(default_key(&bare), "S:9");
    }

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::codec::Json;
    use crate::relay::{OutboxRelay, RelayConfig};
    use crate::testkit::{RecordingPublisher, TestKit, TxProbe};

    /// Doubles a number in `prepare` (panicking on 13, refusing 7) and records it.
    struct Doubler;

    impl PreparedTxHandler for Doubler {
        type Message = Json<u32>;
        type Prepared = u32;

        async fn prepare(&self, d: &Delivery<Json<u32>>) -> Result<u32, TxError> {
            match d.message.0 {
                13 => panic!("unlucky"),
                7 => Err(TxError::reject("seven")),
                n => Ok(n * 2),
            }
        }

        async fn handle(
            &self,
            uow: &mut UnitOfWork,
            d: &Delivery<Json<u32>>,
            doubled: u32,
        ) -> Result<(), TxError> {
            uow.emit(crate::OutgoingMessage::new(
                "doubled",
                format!("doubled-{}", d.message.0),
                doubled.to_string(),
            ));
            Ok(())
        }
    }

    /// Prepares a batch at once: counts its calls, and answers one result short when asked.
    struct BatchDoubler {
        calls: Arc<AtomicUsize>,
    }

    impl PreparedTxHandler for BatchDoubler {
        type Message = Json<u32>;
        type Prepared = u32;

        async fn prepare(&self, _: &Delivery<Json<u32>>) -> Result<u32, TxError> {
            unreachable!("the batch is prepared at once")
        }

        async fn prepare_batch(
            &self,
            batch: &[Preparing<'_, Json<u32>>],
        ) -> Vec<Result<u32, TxError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let short = batch.iter().any(|p| p.delivery.message.0 == 0);
            batch
                .iter()
                .skip(usize::from(short))
                .map(|p| Ok(p.delivery.message.0 * 2))
                .collect()
        }

        async fn handle(
            &self,
            uow: &mut UnitOfWork,
            d: &Delivery<Json<u32>>,
            doubled: u32,
        ) -> Result<(), TxError> {
            Doubler.handle(uow, d, doubled).await
        }
    }

    async fn probe<H: PreparedTxHandler>(
        handler: H,
    ) -> (TxProbe, RecordingPublisher, OutboxHandle) {
        named_probe("doubler", handler).await
    }

    /// A probe whose actor is called `name` (metrics are per name, and tests run at once).
    async fn named_probe<H: PreparedTxHandler>(
        name: &str,
        handler: H,
    ) -> (TxProbe, RecordingPublisher, OutboxHandle) {
        let db = TestKit::database().await;
        let published = RecordingPublisher::new();
        let outbox = OutboxRelay::start(db, Arc::new(published.clone()), RelayConfig::default());
        let route = TxRoute::new(ConsumerSpec::new("TEST", name, &[]), handler, &outbox);
        (TestKit::tx(route), published, outbox)
    }

    fn batch(numbers: &[u32]) -> Vec<(bytes::Bytes, DeliveryMeta)> {
        delivered(numbers, 1)
    }

    /// The numbers as the `n`th delivery of each.
    fn delivered(numbers: &[u32], n: u32) -> Vec<(bytes::Bytes, DeliveryMeta)> {
        numbers
            .iter()
            .map(|number| {
                let meta = DeliveryMeta::new("n")
                    .with_header(headers::MSG_ID, &format!("n-{number}"))
                    .with_delivered(n);
                (bytes::Bytes::from(number.to_string()), meta)
            })
            .collect()
    }

    fn restarts(name: &str) -> u64 {
        crate::metrics::metrics()
            .actor_restarts
            .with_label_values(&[name])
            .get()
    }

    async fn restarted(name: &str, n: u64) {
        TestKit::restarted(name, n).await;
    }

    /// Rows that cannot be written when one of them is 66.
    #[derive(Default)]
    struct Doomed(bool);

    impl crate::Deferred for Doomed {
        fn write(
            self,
            conn: crate::db::Conn<'_>,
        ) -> futures::future::BoxFuture<'_, Result<(), sqlx::Error>> {
            Box::pin(async move {
                if self.0 {
                    crate::db::query("INSERT INTO no_such_table (n) VALUES (66)")
                        .execute(conn)
                        .await?;
                }
                Ok(())
            })
        }
    }

    /// Whole-batch failures: `begin_batch` panics when the batch holds 13, and 66 makes the
    /// deferred write fail at commit. Emits each number with its position in the transaction
    /// (from the unit of work's state).
    struct Picky;

    impl TxHandler for Picky {
        type Message = Json<u32>;

        async fn begin_batch(
            &self,
            _: &mut UnitOfWork,
            deliveries: &[&Delivery<Json<u32>>],
        ) -> Result<(), TxError> {
            if deliveries.iter().any(|d| d.message.0 == 13) {
                panic!("13 in the batch");
            }
            Ok(())
        }

        async fn handle(
            &self,
            uow: &mut UnitOfWork,
            d: &Delivery<Json<u32>>,
        ) -> Result<(), TxError> {
            let n = d.message.0;
            if n == 7 {
                return Err(TxError::retry("seven"));
            }
            if n == 66 {
                uow.deferred::<Doomed>().0 = true;
            }
            let position = uow.state::<u32>();
            *position += 1;
            let position = *position;
            uow.emit(crate::OutgoingMessage::new(
                "seen",
                format!("seen-{n}"),
                format!("{n}@{position}"),
            ));
            Ok(())
        }
    }

    fn payloads(published: &RecordingPublisher, subject: &str) -> Vec<String> {
        published
            .on_subject(subject)
            .iter()
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect()
    }

    #[actix::test]
    async fn a_batch_refused_as_a_whole_is_halved_until_the_delivery_to_blame_is_alone() {
        let (probe, published, outbox) = named_probe("picky-refused", Picky).await;
        let out = probe.deliver_batch(batch(&[1, 66, 2, 3])).await;
        out[0].assert_ack();
        out[1].assert_retry();
        out[2].assert_ack();
        out[3].assert_ack();
        assert_eq!(outbox.flush(Duration::from_secs(5)).await.left, 0);
        // [1, 66] and [2, 3] apart, then [1] and [66]: 2 and 3 still share a transaction.
        assert_eq!(payloads(&published, "seen"), ["1@1", "2@1", "3@2"]);
        assert_eq!(restarts("picky-refused"), 0, "a refusal is no panic");
    }

    #[actix::test]
    async fn a_panicking_begin_batch_restarts_the_actor_and_the_batch_comes_back_one_by_one() {
        let name = "picky-panic";
        let (probe, published, outbox) = named_probe(name, Picky).await;
        for d in probe.deliver_batch(batch(&[1, 13, 2])).await {
            d.assert_retry();
        }
        restarted(name, 1).await;
        assert_eq!(outbox.flush(Duration::from_secs(5)).await.left, 0);
        assert!(published.on_subject("seen").is_empty(), "nothing committed");
        // Any of them may be to blame: each is applied alone when they come back.
        let out = probe.deliver_batch(delivered(&[1, 13, 2], 2)).await;
        out[0].assert_ack();
        out[1].assert_retry();
        out[2].assert_ack();
        restarted(name, 2).await;
        assert_eq!(outbox.flush(Duration::from_secs(5)).await.left, 0);
        assert_eq!(payloads(&published, "seen"), ["1@1", "2@1"]);
    }

    #[actix::test]
    async fn a_batch_applied_again_starts_from_a_fresh_state() {
        let (probe, published, outbox) = probe(Picky).await;
        let out = probe.deliver_batch(batch(&[1, 7, 2])).await;
        out[0].assert_ack();
        out[1].assert_retry();
        out[2].assert_ack();
        assert_eq!(outbox.flush(Duration::from_secs(5)).await.left, 0);
        assert_eq!(
            payloads(&published, "seen"),
            ["1@1", "2@2"],
            "the second transaction counts from 1 again"
        );
    }

    #[actix::test]
    async fn a_panic_restarts_the_actor_and_the_culprit_is_applied_alone_until_dead_lettered() {
        let name = "doubler-panic";
        let (probe, published, outbox) = named_probe(name, Doubler).await;
        let panics = || {
            crate::metrics::metrics()
                .actor_panics
                .with_label_values(&[name])
                .get()
        };
        // 1. The first delivery: nothing is acked (7 is refused for good, which is decided
        //    without the transaction), the actor restarts.
        let out = probe.deliver_batch(batch(&[1, 13, 7, 2])).await;
        out[0].assert_retry();
        out[1].assert_retry();
        assert!(matches!(
            out[2].assert_dead_letter(),
            crate::DeadLetterReason::Rejected(_)
        ));
        out[3].assert_retry();
        restarted(name, 1).await;
        assert_eq!(panics(), 1);
        assert_eq!(outbox.flush(Duration::from_secs(5)).await.left, 0);
        assert!(
            published.on_subject("doubled").is_empty(),
            "nothing committed"
        );
        // 2. They come back: the neighbours are applied, the suspect alone panics again.
        let out = probe.deliver_batch(delivered(&[1, 13, 2], 2)).await;
        out[0].assert_ack();
        out[1].assert_retry();
        out[2].assert_ack();
        restarted(name, 2).await;
        // 3. Its last delivery goes to the dead letters; the neighbours are never held back.
        let out = probe.deliver_batch(delivered(&[13, 3], 5)).await;
        assert!(matches!(
            out[0].assert_dead_letter(),
            crate::DeadLetterReason::Exhausted { .. }
        ));
        out[1].assert_ack();
        restarted(name, 3).await;
        assert_eq!(panics(), 3);
        assert_eq!(outbox.flush(Duration::from_secs(5)).await.left, 0);
        assert_eq!(payloads(&published, "doubled"), ["2", "4", "6"]);
    }

    #[actix::test]
    async fn an_overridden_prepare_batch_runs_once_per_batch_and_a_short_answer_retries_it() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (probe, published, outbox) = probe(BatchDoubler {
            calls: calls.clone(),
        })
        .await;
        for d in probe.deliver_batch(batch(&[1, 2, 3])).await {
            d.assert_ack();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one call for the batch");
        for d in probe.deliver_batch(batch(&[0, 4])).await {
            d.assert_retry();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(outbox.flush(Duration::from_secs(5)).await.left, 0);
        assert_eq!(
            published.on_subject("doubled").len(),
            3,
            "nothing of the short batch"
        );
    }

    #[test]
    fn errors_become_outcomes() {
        assert!(matches!(
            TxError::retry("x").outcome(),
            Outcome::Retry { delay: None, .. }
        ));
        assert!(matches!(
            TxError::reject("x").outcome(),
            Outcome::DeadLetter(_)
        ));
        assert!(matches!(
            TxError::Database(sqlx::Error::PoolTimedOut).outcome(),
            Outcome::Retry { .. }
        ));
    }
}
