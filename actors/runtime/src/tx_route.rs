//! Transactional routes: effectively-once handling, in batches.
//!
//! A [`TxRoute`] reads a durable consumer and gives its [`TxHandler`] what is waiting (up to
//! a maximum, lingering a moment only while the consumer is busy), in **one** transaction:
//! the runtime claims every delivery in the inbox, the handler changes state and emits
//! messages through the [`UnitOfWork`], the runtime writes them to the outbox, commits once,
//! then acks the whole batch and hands the messages to the relay, which publishes them at
//! once. A delivery the inbox knows already is acked without being handled again.
//!
//! A delivery that fails (an error, a panic) never takes its neighbours down: the
//! transaction is rolled back, that delivery gets its own outcome (retry later, or dead
//! letter), and the others are handled again without it in a new transaction. A failure
//! that cannot be pinned on one delivery but is not the connection's (a statement of
//! `begin_batch` or of the commit refused, such as a deferred write) has the deliveries
//! applied one at a time, each in its own transaction, so only the one to blame is retried;
//! the database unreachable retries the whole batch. Deliveries of a batch are handled in
//! stream order, one batch at a time, so a route keeps the order of what it consumes.
//!
//! Work that must not run inside a transaction (a call to another service) goes in
//! [`PreparedTxHandler::prepare`], which runs for every delivery of the batch concurrently
//! before the transaction opens.

use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tracing::Instrument;

use crate::codec::Decode;
use crate::db::{self, Database};
use crate::delivery::{Delivery, DeliveryMeta};
use crate::headers;
use crate::inbox;
use crate::metrics::metrics;
use crate::middleware::{Inbound, Retry};
use crate::outcome::Outcome;
use crate::relay::OutboxHandle;
use crate::route::{BatchConfig, BatchHandlerFn, Route};
use crate::span;
use crate::supervisor::panic_message;
use crate::topology::ConsumerSpec;
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
///         sqlx::query("UPDATE greetings SET n = n + 1 WHERE name = $1")
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
                        Err(TxError::retry(format!(
                            "prepare panicked: {}",
                            panic_message(panic.as_ref())
                        )))
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
        }
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
        let inner = Arc::new(Inner {
            handler: self.handler,
            db: self.outbox.database().clone(),
            outbox: self.outbox,
            inbox: self.inbox.unwrap_or_else(|| self.consumer.durable.clone()),
            name: name.clone(),
            retry: self.retry,
        });
        init_series(&name, &inner.inbox);
        let handler: BatchHandlerFn = Arc::new(move |batch| {
            let inner = Arc::clone(&inner);
            Box::pin(async move { process(&inner, batch).await })
        });
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

/// Every series of a handler exists from its start, at 0.
fn init_series(name: &str, inbox: &str) {
    let m = metrics();
    for outcome in ["ack", "retry", "dead_letter"] {
        m.actor_messages.with_label_values(&[name, outcome]);
    }
    m.actor_mailbox_depth.with_label_values(&[name]);
    m.actor_handle_seconds.with_label_values(&[name]);
    m.actor_restarts.with_label_values(&[name]);
    m.actor_panics.with_label_values(&[name]);
    m.actor_failed.with_label_values(&[name]);
    m.batch_size.with_label_values(&[name]);
    m.inbox_duplicates.with_label_values(&[inbox]);
}

struct Inner<H> {
    handler: H,
    db: Database,
    outbox: OutboxHandle,
    inbox: String,
    name: String,
    retry: Retry,
}

/// One decoded delivery of a batch.
struct Item<M, P> {
    index: usize,
    delivery: Delivery<M>,
    key: String,
    span: tracing::Span,
    prepared: Option<P>,
}

/// What one attempt at the batch's transaction came to.
enum Attempt {
    /// Committed: these items were applied, those were duplicates.
    Committed {
        applied: Vec<usize>,
        duplicates: Vec<usize>,
    },
    /// The handler failed on this item; everything was rolled back.
    ItemFailed { item: usize, outcome: Outcome },
    /// The transaction itself failed (the connection, the pool); everything was rolled back.
    Failed(String),
    /// Something the whole batch does was refused (the database rejected a statement of
    /// `begin_batch` or of the commit, such as a deferred write, or a row did not decode;
    /// `begin_batch` failed or panicked): which delivery is to blame is unknown, so they are
    /// applied one at a time.
    Rejected(String),
    /// The database chose this transaction as the victim of a conflict with another one
    /// (a deadlock, a serialization failure, a busy lock); everything was rolled back, and
    /// the attempt can be made again at once.
    Conflict(String),
}

/// How many times in a row a batch is applied again at once after losing a conflict,
/// before its deliveries are left to the route's backoff.
const CONFLICT_RETRIES: u32 = 3;

async fn process<H: PreparedTxHandler>(inner: &Inner<H>, batch: Vec<Inbound>) -> Vec<Outcome> {
    let m = metrics();
    let n = batch.len();
    m.batch_size
        .with_label_values(&[inner.name.as_str()])
        .observe(n as f64);
    let depth = m
        .actor_mailbox_depth
        .with_label_values(&[inner.name.as_str()]);
    depth.add(n as i64);
    let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
    let mut metas: Vec<DeliveryMeta> = Vec::with_capacity(n);

    // 1. Decode: what does not decode is poison, decided at once.
    let mut items: Vec<Item<H::Message, H::Prepared>> = Vec::with_capacity(n);
    for (index, inbound) in batch.into_iter().enumerate() {
        let Inbound { payload, meta } = inbound;
        metas.push(meta.clone());
        match <H::Message as Decode>::decode(&meta.subject, &meta.headers, &payload) {
            Ok(message) => {
                let delivery = Delivery { message, meta };
                let key = inner.handler.key(&delivery);
                let span = inner.handler.span(&inner.name, &delivery);
                items.push(Item {
                    index,
                    delivery,
                    key,
                    span,
                    prepared: None,
                });
            }
            Err(e) => outcomes[index] = Some(Outcome::poison(e.to_string())),
        }
    }

    // 2. Prepare, every delivery at once, outside the transaction.
    let preparing: Vec<Preparing<'_, H::Message>> = items
        .iter()
        .map(|it| Preparing {
            delivery: &it.delivery,
            span: &it.span,
        })
        .collect();
    let prepared = match AssertUnwindSafe(inner.handler.prepare_batch(&preparing))
        .catch_unwind()
        .await
    {
        Ok(results) if results.len() == items.len() => results,
        Ok(results) => {
            let reason = format!(
                "prepare_batch returned {} results for {} deliveries",
                results.len(),
                items.len()
            );
            tracing::error!(route = %inner.name, %reason);
            items.iter().map(|_| Err(TxError::retry(&reason))).collect()
        }
        Err(panic) => {
            let reason = format!("prepare panicked: {}", panic_message(panic.as_ref()));
            items.iter().map(|_| Err(TxError::retry(&reason))).collect()
        }
    };
    drop(preparing);
    let mut pending = Vec::with_capacity(items.len());
    for (i, (item, result)) in items.iter_mut().zip(prepared).enumerate() {
        match result {
            Ok(p) => {
                item.prepared = Some(p);
                pending.push(i);
            }
            Err(e) => outcomes[item.index] = Some(e.outcome()),
        }
    }

    // 3. One transaction for everything prepared; a failing delivery is taken out and the
    //    rest applied again without it; a batch refused as a whole is applied one by one.
    let mut conflicts = 0;
    while !pending.is_empty() {
        match attempt(inner, &items, &pending).await {
            Attempt::Committed {
                applied,
                duplicates,
            } => {
                count_duplicates(inner, duplicates.len());
                for i in applied.into_iter().chain(duplicates) {
                    outcomes[items[i].index] = Some(Outcome::Ack);
                }
                break;
            }
            Attempt::ItemFailed { item, outcome } => {
                outcomes[items[item].index] = Some(outcome);
                pending.retain(|&p| p != item);
            }
            Attempt::Conflict(reason) if conflicts < CONFLICT_RETRIES => {
                conflicts += 1;
                tracing::debug!(route = %inner.name, %reason, conflicts, "transaction lost a conflict; applying the batch again");
            }
            Attempt::Rejected(reason) if pending.len() > 1 => {
                tracing::debug!(route = %inner.name, %reason, deliveries = pending.len(), "the batch was refused as a whole; applying its deliveries one at a time");
                for p in std::mem::take(&mut pending) {
                    outcomes[items[p].index] = Some(apply_alone(inner, &items, p).await);
                }
            }
            Attempt::Failed(reason) | Attempt::Conflict(reason) | Attempt::Rejected(reason) => {
                for &p in &pending {
                    outcomes[items[p].index] = Some(Outcome::retry(reason.clone()));
                }
                break;
            }
        }
    }

    // 4. Decide, log and count each delivery.
    let outcomes: Vec<Outcome> = outcomes
        .into_iter()
        .zip(&metas)
        .map(|(o, meta)| {
            let o = o.unwrap_or_else(|| Outcome::retry("not handled"));
            inner.retry.apply(o, meta.delivered)
        })
        .collect();
    let mut spans: Vec<Option<tracing::Span>> = vec![None; n];
    for item in items {
        spans[item.index] = Some(item.span);
    }
    for ((outcome, span), meta) in outcomes.iter().zip(spans).zip(&metas) {
        let span = span.unwrap_or_else(|| span::delivery_span(&inner.name, meta));
        span.in_scope(|| span::log_outcome(outcome));
        m.actor_messages
            .with_label_values(&[inner.name.as_str(), outcome.label()])
            .inc();
    }
    depth.sub(n as i64);
    outcomes
}

fn count_duplicates<H>(inner: &Inner<H>, n: usize) {
    if n > 0 {
        metrics()
            .inbox_duplicates
            .with_label_values(&[inner.inbox.as_str()])
            .inc_by(n as u64);
    }
}

/// Applies one delivery in a transaction of its own: its outcome.
async fn apply_alone<H: PreparedTxHandler>(
    inner: &Inner<H>,
    items: &[Item<H::Message, H::Prepared>],
    p: usize,
) -> Outcome {
    let mut conflicts = 0;
    loop {
        match attempt(inner, items, &[p]).await {
            Attempt::Committed { duplicates, .. } => {
                count_duplicates(inner, duplicates.len());
                return Outcome::Ack;
            }
            Attempt::ItemFailed { outcome, .. } => return outcome,
            Attempt::Conflict(_) if conflicts < CONFLICT_RETRIES => conflicts += 1,
            Attempt::Failed(reason) | Attempt::Conflict(reason) | Attempt::Rejected(reason) => {
                return Outcome::retry(reason);
            }
        }
    }
}

async fn attempt<H: PreparedTxHandler>(
    inner: &Inner<H>,
    items: &[Item<H::Message, H::Prepared>],
    pending: &[usize],
) -> Attempt {
    let mut uow = match UnitOfWork::begin(&inner.db).await {
        Ok(uow) => uow,
        Err(e) => return failed(&e),
    };
    let keys: Vec<&str> = pending.iter().map(|&p| items[p].key.as_str()).collect();
    let claimed = match inbox::claim_all(uow.conn(), &inner.inbox, &keys).await {
        Ok(c) => c,
        Err(e) => {
            let _ = uow.rollback().await;
            return failed(&e);
        }
    };
    // Which deliveries are new: the first of each claimed key.
    let mut seen = HashSet::with_capacity(pending.len());
    let mut todo = Vec::with_capacity(pending.len());
    let mut duplicates = Vec::new();
    for &p in pending {
        let item = &items[p];
        if claimed.contains(&item.key) && seen.insert(item.key.as_str()) && item.prepared.is_some()
        {
            todo.push(p);
        } else {
            duplicates.push(p);
        }
    }
    let deliveries: Vec<&Delivery<H::Message>> = todo.iter().map(|&p| &items[p].delivery).collect();
    match AssertUnwindSafe(inner.handler.begin_batch(&mut uow, &deliveries))
        .catch_unwind()
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = uow.rollback().await;
            return match e {
                TxError::Database(e) => failed(&e),
                other => Attempt::Rejected(format!("begin_batch: {other}")),
            };
        }
        Err(panic) => {
            let _ = uow.rollback().await;
            return Attempt::Rejected(format!(
                "begin_batch panicked: {}",
                panic_message(panic.as_ref())
            ));
        }
    }
    let mut applied = Vec::with_capacity(todo.len());
    let handle_seconds = metrics()
        .actor_handle_seconds
        .with_label_values(&[inner.name.as_str()]);
    for &p in &todo {
        let item = &items[p];
        let Some(prepared) = item.prepared.clone() else {
            continue;
        };
        uow.caused_by(Some(&item.delivery.meta));
        let started = Instant::now();
        let result = AssertUnwindSafe(inner.handler.handle(&mut uow, &item.delivery, prepared))
            .catch_unwind()
            .instrument(item.span.clone())
            .await;
        handle_seconds.observe(started.elapsed().as_secs_f64());
        let outcome = match result {
            Ok(Ok(())) => {
                applied.push(p);
                continue;
            }
            Ok(Err(TxError::Database(e))) if db::is_conflict(&e) => {
                let _ = uow.rollback().await;
                return Attempt::Conflict(format!("database: {e}"));
            }
            Ok(Err(e)) => e.outcome(),
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                metrics()
                    .actor_panics
                    .with_label_values(&[inner.name.as_str()])
                    .inc();
                item.span
                    .in_scope(|| tracing::error!(panic = %message, "handler panicked"));
                Outcome::retry(format!("handler panicked: {message}"))
            }
        };
        let _ = uow.rollback().await;
        return Attempt::ItemFailed { item: p, outcome };
    }
    uow.caused_by(None);
    match uow.commit(&inner.outbox).await {
        Ok(()) => Attempt::Committed {
            applied,
            duplicates,
        },
        Err(e) if db::is_conflict(&e) => Attempt::Conflict(format!("commit failed: {e}")),
        Err(e) if db::is_connection(&e) => Attempt::Failed(format!("commit failed: {e}")),
        Err(e) => Attempt::Rejected(format!("commit failed: {e}")),
    }
}

/// A database error that failed the whole attempt: a conflict, the connection, or something
/// the batch holds (a statement refused, a row that does not decode).
fn failed(e: &sqlx::Error) -> Attempt {
    if db::is_conflict(e) {
        Attempt::Conflict(format!("database: {e}"))
    } else if db::is_connection(e) {
        Attempt::Failed(format!("database: {e}"))
    } else {
        Attempt::Rejected(format!("database: {e}"))
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
        let db = TestKit::database().await;
        let published = RecordingPublisher::new();
        let outbox = OutboxRelay::start(db, Arc::new(published.clone()), RelayConfig::default());
        let route = TxRoute::new(ConsumerSpec::new("TEST", "doubler", &[]), handler, &outbox);
        (TestKit::tx(route), published, outbox)
    }

    fn batch(numbers: &[u32]) -> Vec<(bytes::Bytes, DeliveryMeta)> {
        numbers
            .iter()
            .map(|n| {
                let meta = DeliveryMeta::new("n").with_header(headers::MSG_ID, &format!("n-{n}"));
                (bytes::Bytes::from(n.to_string()), meta)
            })
            .collect()
    }

    /// Rows that cannot be written when one of them is 66.
    #[derive(Default)]
    struct Doomed(bool);

    impl crate::Deferred for Doomed {
        fn write(
            self,
            conn: &mut sqlx::AnyConnection,
        ) -> futures::future::BoxFuture<'_, Result<(), sqlx::Error>> {
            Box::pin(async move {
                if self.0 {
                    sqlx::query("INSERT INTO no_such_table (n) VALUES (66)")
                        .execute(&mut *conn)
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
    async fn a_batch_refused_as_a_whole_is_applied_one_at_a_time() {
        let (probe, published, outbox) = probe(Picky).await;
        let out = probe.deliver_batch(batch(&[1, 66, 2, 13, 3])).await;
        out[0].assert_ack();
        out[1].assert_retry();
        out[2].assert_ack();
        out[3].assert_retry();
        out[4].assert_ack();
        assert_eq!(outbox.flush(Duration::from_secs(5)).await.left, 0);
        assert_eq!(payloads(&published, "seen"), ["1@1", "2@1", "3@1"]);
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
    async fn a_panicking_or_refusing_prepare_fails_only_its_own_delivery() {
        let (probe, published, outbox) = probe(Doubler).await;
        let out = probe.deliver_batch(batch(&[1, 13, 7, 2])).await;
        out[0].assert_ack();
        out[1].assert_retry();
        assert!(matches!(
            out[2].assert_dead_letter(),
            crate::DeadLetterReason::Rejected(_)
        ));
        out[3].assert_ack();
        assert_eq!(outbox.flush(Duration::from_secs(5)).await.left, 0);
        let payloads: Vec<String> = published
            .on_subject("doubled")
            .iter()
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect();
        assert_eq!(payloads, vec!["2", "4"]);
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
