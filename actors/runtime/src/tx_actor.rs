//! The actor that applies a transactional route's deliveries: batches through a mailbox.
//!
//! A [`TxActor`] is an actix actor under the runtime's [`Supervisor`]. It owns one
//! [`PreparedTxHandler`] and receives [`Batch`]es of decoded deliveries through its
//! **bounded** mailbox, one batch at a time: it claims every delivery in the inbox, runs the
//! handler for each inside **one** transaction, writes what they emit to the outbox, commits
//! and replies with one [`Outcome`] per delivery, which the route acks or naks. A full mailbox
//! makes the route wait before it sends the next batch (and so before it pulls more): that
//! is the backpressure; nothing is dropped or reordered.
//!
//! Several instances of one actor make a [`TxActors`] pool. Deliveries are sharded over the
//! instances by [`PreparedTxHandler::shard_key`] (the key a service's state is kept under), so
//! the deliveries of one key always reach the same instance, in the order they were sent.
//!
//! A failing delivery never takes its neighbours down: the transaction is rolled back, that
//! delivery gets its own outcome (retry later, or dead letter), and the others are applied
//! again without it. A batch refused as a whole (a statement of `begin_batch` or of the
//! commit) is halved until the delivery to blame is alone, so only it is retried.
//!
//! **A panic is a bug, and restarts the actor.** Nothing of the batch is committed (the
//! transaction is rolled back), no delivery of it is acked (they come back after a short
//! delay), the key of the delivery that panicked is remembered as a *suspect*, and the actor
//! stops: its supervisor counts the panic and the restart and starts it again after its
//! backoff, with the same mailbox. When the deliveries come back, the restarted actor applies
//! the others together and each suspect alone, so a delivery that panics every time ends in
//! the dead-letter stream after its last attempt without holding its neighbours back. A
//! restart budget that is spent leaves the actor stopped and reports it to [`Health`].

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::FutureExt;
use tracing::Instrument;

use crate::actor_ref::{ActorRef, StopActor};
use crate::codec::Decode;
use crate::db::{self, Database};
use crate::delivery::{Delivery, DeliveryMeta};
use crate::health::Health;
use crate::inbox;
use crate::metrics::metrics;
use crate::middleware::{Inbound, Retry};
use crate::outcome::Outcome;
use crate::relay::OutboxHandle;
use crate::route::{BatchConfig, BatchHandlerFn, Route};
use crate::settle::{self, Verdict};
use crate::span;
use crate::supervisor::{RestartPolicy, Supervisor, panic_message};
use crate::topology::ConsumerSpec;
use crate::tx_route::{PreparedTxHandler, Preparing, TxError};
use crate::unit_of_work::UnitOfWork;

/// How long the deliveries of a batch abandoned by a panic wait before they come back (the
/// actor's first restart waits 50 ms).
const ABANDONED_DELAY: Duration = Duration::from_millis(250);
/// How long to wait before redelivering what an actor could not take (stopped for good).
const UNAVAILABLE_DELAY: Duration = Duration::from_secs(1);
/// How many suspects an actor remembers (a bound, not a target).
const MAX_SUSPECTS: usize = 4096;

/// A batch of decoded deliveries for a [`TxActor`]; the reply has one outcome per delivery,
/// in order.
#[derive(Debug)]
pub struct Batch<M> {
    /// The deliveries, in stream order.
    pub deliveries: Vec<Delivery<M>>,
}

impl<M: 'static> Message for Batch<M> {
    type Result = Vec<Outcome>;
}

/// What the instances of one pool share.
pub(crate) struct Inner<H> {
    pub(crate) handler: H,
    pub(crate) db: Database,
    pub(crate) outbox: OutboxHandle,
    pub(crate) inbox: String,
    pub(crate) name: String,
    pub(crate) retry: Retry,
    pub(crate) fault: Option<Fault>,
}

/// A fault to inject: true for the deliveries whose handling panics.
pub type Fault = Arc<dyn Fn(&DeliveryMeta) -> bool + Send + Sync>;

/// The state and the batch handling every transactional actor has: its handler (shared by
/// the instances of a pool), the keys of deliveries that panicked, and where its work runs.
/// An actor holds one and hands its [`Batch`]es to [`TxCore::handle`] (see [`BatchActor`]).
pub struct TxCore<H: PreparedTxHandler> {
    inner: Arc<Inner<H>>,
    /// Keys of deliveries that panicked: applied alone when they come back.
    suspects: HashSet<String>,
    /// Where a batch's work runs (the process's worker threads), awaited in the actor's
    /// context so that the actor handles one batch at a time.
    runtime: tokio::runtime::Handle,
}

impl<H: PreparedTxHandler> TxCore<H> {
    /// The actor's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Handles a batch inside the actor `A` whose core this is (`core` finds it): the
    /// transaction runs while the actor waits (it takes its next message only after the
    /// reply), and a panic stops the actor so that its supervisor restarts it.
    pub fn handle<A>(
        &mut self,
        batch: Batch<H::Message>,
        core: fn(&mut A) -> &mut TxCore<H>,
    ) -> AtomicResponse<A, Vec<Outcome>>
    where
        A: Actor<Context = Context<A>>,
    {
        // Only for a batch lost to a panic outside any delivery: its delivery counts.
        let delivered: Vec<u32> = batch.deliveries.iter().map(|d| d.meta.delivered).collect();
        let inner = Arc::clone(&self.inner);
        let suspects = self.suspects.clone();
        let task = self
            .runtime
            .spawn(async move { process(&inner, batch.deliveries, &suspects).await });
        AtomicResponse::new(Box::pin(actix::fut::wrap_future::<_, A>(task).map(
            move |joined, act, ctx| {
                let this = core(act);
                let handled = joined.unwrap_or_else(|e| {
                    let why = if e.is_panic() {
                        format!("the batch panicked: {}", panic_message(&e.into_panic()))
                    } else {
                        "the batch was cancelled".to_string()
                    };
                    tracing::error!(actor = %this.inner.name, %why);
                    Handled::abandoned(&this.inner, &delivered, &why)
                });
                for key in &handled.cleared {
                    this.suspects.remove(key);
                }
                if this.suspects.len() + handled.panicked.len() > MAX_SUSPECTS {
                    this.suspects.clear();
                }
                let restart = handled.restart;
                this.suspects.extend(handled.panicked);
                if restart {
                    tracing::error!(
                        actor = %this.inner.name,
                        "a delivery panicked: restarting the actor; the batch comes back"
                    );
                    ctx.stop();
                }
                handled.outcomes
            },
        )))
    }

    /// What a restart logs (call it from `Supervised::restarting`).
    pub fn restarting(&self) {
        tracing::warn!(
            actor = %self.inner.name,
            suspects = self.suspects.len(),
            "restarting; the suspects will be applied alone"
        );
    }
}

/// An actor that applies a transactional handler's batches: it owns a [`TxCore`], runs under
/// a [`Supervisor`], handles [`Batch`] (with [`TxCore::handle`]) and [`StopActor`]. The
/// runtime's own is [`TxActor`]; a service names its own to have a type of its own (see the
/// example of [`batch_actor!`]).
pub trait BatchActor:
    Actor<Context = Context<Self>>
    + Supervised
    + Handler<Batch<<Self::Handler as PreparedTxHandler>::Message>>
    + Handler<StopActor>
{
    /// The handler it applies.
    type Handler: PreparedTxHandler;

    /// The actor around its core.
    fn from_core(core: TxCore<Self::Handler>) -> Self;
}

/// The runtime's transactional actor, for any handler (see the [module](self)).
pub struct TxActor<H: PreparedTxHandler>(TxCore<H>);

impl<H: PreparedTxHandler> Actor for TxActor<H> {
    type Context = Context<Self>;
}

impl<H: PreparedTxHandler> Supervised for TxActor<H> {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.0.restarting();
    }
}

impl<H: PreparedTxHandler> Handler<StopActor> for TxActor<H> {
    type Result = ();

    fn handle(&mut self, _: StopActor, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl<H: PreparedTxHandler> Handler<Batch<H::Message>> for TxActor<H> {
    type Result = AtomicResponse<Self, Vec<Outcome>>;

    fn handle(&mut self, batch: Batch<H::Message>, _: &mut Context<Self>) -> Self::Result {
        self.0.handle(batch, |a: &mut Self| &mut a.0)
    }
}

impl<H: PreparedTxHandler> BatchActor for TxActor<H> {
    type Handler = H;

    fn from_core(core: TxCore<H>) -> Self {
        Self(core)
    }
}

/// Starts a pool of [`TxActor`]s: `TxActors::new(name, handler, &outbox)…start()`.
pub struct TxActorsBuilder<H> {
    name: String,
    handler: H,
    outbox: OutboxHandle,
    inbox: Option<String>,
    retry: Retry,
    instances: usize,
    /// What every instance is started under (name, budget, mailbox, health).
    supervisor: Supervisor,
    fault: Option<Fault>,
}

impl<H: PreparedTxHandler> TxActorsBuilder<H> {
    /// For tests of supervision: handling a delivery for which `when` is true panics inside
    /// the actor's transaction, as a bug in the handler would.
    pub fn panic_when(
        mut self,
        when: impl Fn(&DeliveryMeta) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.fault = Some(Arc::new(when));
        self
    }

    /// The inbox deliveries are claimed in (default: the pool's name). Pools that share an
    /// inbox apply a message once between them.
    pub fn inbox(mut self, inbox: impl Into<String>) -> Self {
        self.inbox = Some(inbox.into());
        self
    }

    /// The backoff of retries that name no delay.
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// How many instances (default 1); deliveries are sharded over them by
    /// [`PreparedTxHandler::shard_key`].
    pub fn instances(mut self, n: usize) -> Self {
        self.instances = n.max(1);
        self
    }

    /// Each instance's mailbox capacity, in batches (as [`Supervisor::mailbox_capacity`]).
    pub fn mailbox(mut self, capacity: usize) -> Self {
        self.supervisor = self.supervisor.mailbox_capacity(capacity);
        self
    }

    /// The restart budget of each instance (as [`Supervisor::policy`]).
    pub fn policy(mut self, policy: RestartPolicy) -> Self {
        self.supervisor = self.supervisor.policy(policy);
        self
    }

    /// Reports an instance that spent its restart budget (as [`Supervisor::health`]).
    pub fn health(mut self, health: Health) -> Self {
        self.supervisor = self.supervisor.health(health);
        self
    }

    /// Starts the instances of a [`TxActor`] on the current arbiter, each under its own
    /// supervisor.
    pub fn start(self) -> TxActors<TxActor<H>> {
        self.start_as()
    }

    /// Starts the instances of the actor `A` (a service's own named actor).
    pub fn start_as<A: BatchActor<Handler = H>>(self) -> TxActors<A> {
        let inbox = self.inbox.unwrap_or_else(|| self.name.clone());
        init_series(&self.name, &inbox);
        let inner = Arc::new(Inner {
            handler: self.handler,
            db: self.outbox.database().clone(),
            outbox: self.outbox,
            inbox,
            name: self.name.clone(),
            retry: self.retry,
            fault: self.fault,
        });
        let instances = (0..self.instances)
            .map(|i| {
                let inner = Arc::clone(&inner);
                self.supervisor
                    .clone()
                    .shard(i.to_string())
                    .start(move |_| {
                        A::from_core(TxCore {
                            inner,
                            suspects: HashSet::new(),
                            runtime: tokio::runtime::Handle::current(),
                        })
                    })
            })
            .collect();
        TxActors { inner, instances }
    }
}

/// Several instances of one [`BatchActor`], with deliveries sharded over them by key.
pub struct TxActors<A: BatchActor> {
    inner: Arc<Inner<A::Handler>>,
    instances: Arc<[ActorRef<A>]>,
}

impl<A: BatchActor> Clone for TxActors<A> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            instances: Arc::clone(&self.instances),
        }
    }
}

impl<A: BatchActor> std::fmt::Debug for TxActors<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxActors")
            .field("name", &self.inner.name)
            .field("instances", &self.instances.len())
            .finish()
    }
}

impl TxActors<TxActor<NoHandler>> {
    /// A pool called `name` (the `actor` label of its metrics) applying `handler`, committing
    /// to the database of `outbox`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new<H: PreparedTxHandler>(
        name: impl Into<String>,
        handler: H,
        outbox: &OutboxHandle,
    ) -> TxActorsBuilder<H> {
        let name = name.into();
        TxActorsBuilder {
            supervisor: Supervisor::new(&name),
            name,
            handler,
            outbox: outbox.clone(),
            inbox: None,
            retry: Retry::default(),
            instances: 1,
            fault: None,
        }
    }
}

impl<A: BatchActor> TxActors<A> {
    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The instances' addresses.
    pub fn instances(&self) -> &[ActorRef<A>] {
        &self.instances
    }

    /// Messages waiting in every instance's mailbox (or being handled), summed.
    pub fn mailbox_depth(&self) -> i64 {
        self.instances.iter().map(ActorRef::mailbox_depth).sum()
    }

    /// A route from `consumer` to this pool (batches as [`BatchConfig::default`]).
    pub fn route(&self, consumer: ConsumerSpec) -> Route {
        Route::batched(
            consumer,
            &self.inner.name,
            self.batch_handler(),
            BatchConfig::default(),
        )
    }

    /// Stops every instance for good.
    pub fn stop(&self) {
        for instance in self.instances.iter() {
            instance.stop();
        }
    }

    /// Which instance handles a delivery.
    fn shard_of(&self, delivery: &Delivery<MessageOf<A>>) -> usize {
        if self.instances.len() == 1 {
            return 0;
        }
        let mut hasher = std::hash::DefaultHasher::new();
        self.inner.handler.shard_key(delivery).hash(&mut hasher);
        (hasher.finish() % self.instances.len() as u64) as usize
    }

    /// Sends decoded deliveries to their instances (one [`Batch`] per instance that has any,
    /// all at once) and answers one outcome per delivery, in order.
    pub async fn deliver(&self, deliveries: Vec<Delivery<MessageOf<A>>>) -> Vec<Outcome> {
        let n = deliveries.len();
        let mut shards: Vec<Shard<A>> = (0..self.instances.len())
            .map(|_| Default::default())
            .collect();
        for (i, d) in deliveries.into_iter().enumerate() {
            let shard = &mut shards[self.shard_of(&d)];
            shard.0.push(i);
            shard.1.push(d);
        }
        let sends = shards
            .into_iter()
            .enumerate()
            .filter(|(_, (idx, _))| !idx.is_empty())
            .map(|(s, (idx, deliveries))| {
                let instance = &self.instances[s];
                let delivered: Vec<u32> = deliveries.iter().map(|d| d.meta.delivered).collect();
                async move {
                    let reply = instance.send_counted_by_caller(Batch { deliveries }).await;
                    let outcomes = match reply {
                        Ok(outcomes) if outcomes.len() == idx.len() => outcomes,
                        Ok(outcomes) => {
                            let why = format!(
                                "actor {} answered {} outcomes for {} deliveries",
                                self.inner.name,
                                outcomes.len(),
                                idx.len()
                            );
                            tracing::error!(%why);
                            counted(
                                &self.inner,
                                &delivered,
                                Outcome::retry_after(UNAVAILABLE_DELAY, why),
                            )
                        }
                        Err(e) => counted(
                            &self.inner,
                            &delivered,
                            Outcome::retry_after(
                                UNAVAILABLE_DELAY,
                                format!("actor {} did not answer: {e}", self.inner.name),
                            ),
                        ),
                    };
                    (idx, outcomes)
                }
            });
        let mut out: Vec<Option<Outcome>> = vec![None; n];
        for (idx, outcomes) in futures::future::join_all(sends).await {
            for (i, o) in idx.into_iter().zip(outcomes) {
                out[i] = Some(o);
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::retry("not handled")))
            .collect()
    }

    /// What a route runs for each batch it pulled: decode (what does not decode is poison,
    /// decided here), then [`deliver`](Self::deliver).
    pub(crate) fn batch_handler(&self) -> BatchHandlerFn {
        let pool = self.clone();
        Arc::new(move |batch: Vec<Inbound>| {
            let pool = pool.clone();
            Box::pin(async move { pool.decode_and_deliver(batch).await })
        })
    }

    async fn decode_and_deliver(&self, batch: Vec<Inbound>) -> Vec<Outcome> {
        let n = batch.len();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
        let mut decoded = Vec::with_capacity(n);
        let mut at = Vec::with_capacity(n);
        for (i, Inbound { payload, meta }) in batch.into_iter().enumerate() {
            match <MessageOf<A> as Decode>::decode(&meta.subject, &meta.headers, &payload) {
                Ok(message) => {
                    decoded.push(Delivery { message, meta });
                    at.push(i);
                }
                Err(e) => {
                    let outcome = Outcome::poison(e.to_string());
                    span::delivery_span(&self.inner.name, &meta)
                        .in_scope(|| span::log_outcome(&outcome));
                    count(&self.inner, &outcome);
                    outcomes[i] = Some(outcome);
                }
            }
        }
        if !decoded.is_empty() {
            for (i, o) in at.into_iter().zip(self.deliver(decoded).await) {
                outcomes[i] = Some(o);
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::retry("not handled")))
            .collect()
    }
}

/// The deliveries of a batch bound for one instance, with their places in the batch.
type Shard<A> = (Vec<usize>, Vec<Delivery<MessageOf<A>>>);

/// What the actor `A` receives in its batches.
type MessageOf<A> = <<A as BatchActor>::Handler as PreparedTxHandler>::Message;

/// Names the pool type in [`TxActors::new`] (which builds a pool of any handler).
#[doc(hidden)]
pub struct NoHandler;

impl crate::tx_route::TxHandler for NoHandler {
    type Message = crate::codec::Json<()>;

    async fn handle(&self, _: &mut UnitOfWork, _: &Delivery<Self::Message>) -> Result<(), TxError> {
        Ok(())
    }
}

/// Every series of a pool exists from its start, at 0.
fn init_series(name: &str, inbox: &str) {
    let m = metrics();
    for outcome in ["ack", "retry", "dead_letter"] {
        m.actor_messages.with_label_values(&[name, outcome]);
    }
    m.actor_handle_seconds.with_label_values(&[name]);
    m.batch_size.with_label_values(&[name]);
    m.inbox_duplicates.with_label_values(&[inbox]);
}

fn count<H>(inner: &Inner<H>, outcome: &Outcome) {
    metrics()
        .actor_messages
        .with_label_values(&[inner.name.as_str(), outcome.label()])
        .inc();
}

/// The same outcome for deliveries delivered so many times each, with the route's retry
/// policy applied, counted.
fn counted<H>(inner: &Inner<H>, delivered: &[u32], outcome: Outcome) -> Vec<Outcome> {
    delivered
        .iter()
        .map(|&delivered| {
            let o = inner.retry.apply(outcome.clone(), delivered);
            count(inner, &o);
            o
        })
        .collect()
}

/// What handling one batch came to.
struct Handled {
    outcomes: Vec<Outcome>,
    /// Keys that panicked (new suspects).
    panicked: Vec<String>,
    /// Suspects that were decided without a panic (no longer suspects).
    cleared: Vec<String>,
    /// Whether the actor must restart.
    restart: bool,
}

impl Handled {
    /// The batch as a whole was lost to a panic outside any delivery: nothing was acked.
    fn abandoned<H>(inner: &Inner<H>, delivered: &[u32], why: &str) -> Self {
        Self {
            outcomes: counted(inner, delivered, Outcome::retry_after(ABANDONED_DELAY, why)),
            panicked: Vec::new(),
            cleared: Vec::new(),
            restart: true,
        }
    }
}

/// One delivery of a batch.
struct Item<M, P> {
    delivery: Delivery<M>,
    key: String,
    span: tracing::Span,
    prepared: Option<P>,
}

/// What one attempt at a transaction came to.
enum Attempt {
    /// Committed: every item was applied or found a duplicate (these).
    Committed { duplicates: Vec<usize> },
    /// The handler failed on this item; everything was rolled back.
    ItemFailed { item: usize, outcome: Outcome },
    /// The handler panicked on this item; everything was rolled back.
    ItemPanicked { item: usize, message: String },
    /// `begin_batch` panicked: any of the items may be to blame; rolled back.
    BatchPanicked(String),
    /// The transaction itself failed (the connection, the pool); everything was rolled back.
    Failed(String),
    /// Something the whole batch does was refused (the database rejected a statement of
    /// `begin_batch` or of the commit, such as a deferred write, or a row did not decode;
    /// `begin_batch` failed): which delivery is to blame is unknown, so the batch is halved
    /// until it is alone.
    Rejected(String),
    /// The database chose this transaction as the victim of a conflict with another one
    /// (a deadlock, a serialization failure, a busy lock); everything was rolled back, and
    /// the attempt can be made again at once.
    Conflict(String),
}

/// The state of one batch being handled.
struct Run<'a, H: PreparedTxHandler> {
    inner: &'a Inner<H>,
    items: Vec<Item<H::Message, H::Prepared>>,
    outcomes: Vec<Option<Outcome>>,
    panicked: Vec<String>,
    /// The deliveries being settled now (abandoned together after a panic).
    settling: Vec<usize>,
}

impl<H: PreparedTxHandler> Run<'_, H> {
    /// Records a panic of item `i` (its key becomes a suspect).
    fn panicked(&mut self, i: usize, message: &str) {
        metrics()
            .actor_panics
            .with_label_values(&[self.inner.name.as_str()])
            .inc();
        self.items[i]
            .span
            .in_scope(|| tracing::error!(panic = %message, "handler panicked"));
        self.panicked.push(self.items[i].key.clone());
    }

    /// Everything of `group` not decided yet comes back after the restart.
    fn abandon(&mut self, group: &[usize], why: &str) {
        for &i in group {
            if self.outcomes[i].is_none() {
                self.outcomes[i] = Some(Outcome::retry_after(ABANDONED_DELAY, why));
            }
        }
    }

    /// Prepares `group` (outside any transaction): the items that are ready for their
    /// transaction, or `None` after a panic.
    async fn prepare(&mut self, group: &[usize]) -> Option<Vec<usize>> {
        let preparing: Vec<Preparing<'_, H::Message>> = group
            .iter()
            .map(|&i| Preparing {
                delivery: &self.items[i].delivery,
                span: &self.items[i].span,
            })
            .collect();
        let results = AssertUnwindSafe(self.inner.handler.prepare_batch(&preparing))
            .catch_unwind()
            .await;
        drop(preparing);
        let results = match results {
            Ok(results) if results.len() == group.len() => results,
            Ok(results) => {
                let reason = format!(
                    "prepare_batch returned {} results for {} deliveries",
                    results.len(),
                    group.len()
                );
                tracing::error!(route = %self.inner.name, %reason);
                group.iter().map(|_| Err(TxError::retry(&reason))).collect()
            }
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                for &i in group {
                    self.panicked(i, &message);
                }
                self.abandon(group, &format!("prepare panicked: {message}"));
                return None;
            }
        };
        let mut ready = Vec::with_capacity(group.len());
        let mut panic = None;
        for (&i, result) in group.iter().zip(results) {
            match result {
                Ok(p) => {
                    self.items[i].prepared = Some(p);
                    ready.push(i);
                }
                Err(TxError::Panicked(message)) => {
                    self.panicked(i, &message);
                    panic = Some(message);
                }
                Err(e) => self.outcomes[i] = Some(e.outcome()),
            }
        }
        if let Some(message) = panic {
            self.abandon(group, &format!("prepare panicked: {message}"));
            return None;
        }
        Some(ready)
    }

    /// Applies `pending` in one transaction, taking out each delivery that fails; a batch
    /// refused as a whole is halved until the delivery to blame is alone
    /// ([`settle`](crate::settle)). False after a panic.
    async fn apply(&mut self, pending: Vec<usize>) -> bool {
        self.settling = pending.clone();
        settle::settle(self, pending).await
    }
}

impl<H: PreparedTxHandler> settle::Group for Run<'_, H> {
    type Error = Outcome;

    async fn attempt(&mut self, members: &[usize]) -> Verdict<Outcome> {
        match attempt(self.inner, &self.items, members).await {
            Attempt::Committed { duplicates, .. } => {
                count_duplicates(self.inner, duplicates.len());
                Verdict::Done
            }
            Attempt::ItemFailed { item, outcome } => Verdict::Blame(item, outcome),
            Attempt::ItemPanicked { item, message } => {
                self.panicked(item, &message);
                let all = std::mem::take(&mut self.settling);
                self.abandon(&all, &format!("handler panicked: {message}"));
                Verdict::Halt
            }
            Attempt::BatchPanicked(message) => {
                for &i in members {
                    self.panicked(i, &message);
                }
                let all = std::mem::take(&mut self.settling);
                self.abandon(&all, &format!("begin_batch panicked: {message}"));
                Verdict::Halt
            }
            Attempt::Conflict(reason) => {
                tracing::debug!(route = %self.inner.name, %reason, "transaction lost a conflict; applying the batch again");
                Verdict::Conflict(Outcome::retry(reason))
            }
            Attempt::Rejected(reason) => {
                if members.len() > 1 {
                    tracing::debug!(route = %self.inner.name, %reason, deliveries = members.len(), "the batch was refused as a whole; applying its halves apart");
                }
                Verdict::Refused(Outcome::retry(reason))
            }
            Attempt::Failed(reason) => Verdict::Failed(Outcome::retry(reason)),
        }
    }

    fn done(&mut self, members: &[usize]) {
        for &i in members {
            self.outcomes[i] = Some(Outcome::Ack);
        }
    }

    fn failed(&mut self, member: usize, outcome: Outcome) {
        self.outcomes[member] = Some(outcome);
    }
}

/// Handles one batch: the deliveries that are not suspects together, then each suspect
/// alone. Outcomes have the route's retry policy applied, are logged and counted.
async fn process<H: PreparedTxHandler>(
    inner: &Inner<H>,
    deliveries: Vec<Delivery<H::Message>>,
    suspects: &HashSet<String>,
) -> Handled {
    let n = deliveries.len();
    metrics()
        .batch_size
        .with_label_values(&[inner.name.as_str()])
        .observe(n as f64);
    let items: Vec<Item<H::Message, H::Prepared>> = deliveries
        .into_iter()
        .map(|delivery| {
            let key = inner.handler.key(&delivery);
            let span = inner.handler.span(&inner.name, &delivery);
            Item {
                delivery,
                key,
                span,
                prepared: None,
            }
        })
        .collect();
    let (alone, together): (Vec<usize>, Vec<usize>) =
        (0..n).partition(|&i| suspects.contains(&items[i].key));
    let mut run = Run {
        inner,
        items,
        outcomes: vec![None; n],
        panicked: Vec::new(),
        settling: Vec::new(),
    };
    // The others together; if that panics, nothing more is tried before the restart.
    let ok = match run.prepare(&together).await {
        Some(ready) => run.apply(ready).await,
        None => false,
    };
    let mut restart = !ok;
    // Each suspect alone, each in its own transaction: one that panics again does not
    // hold the others back.
    let mut cleared = Vec::new();
    for &i in &alone {
        if !ok {
            run.abandon(&[i], "a delivery of its batch panicked");
            continue;
        }
        let alone_ok = match run.prepare(&[i]).await {
            Some(ready) => run.apply(ready).await,
            None => false,
        };
        if alone_ok {
            cleared.push(run.items[i].key.clone());
        } else {
            restart = true;
        }
    }
    // Decide, log and count each delivery.
    let mut outcomes = Vec::with_capacity(n);
    for (item, outcome) in run.items.iter().zip(run.outcomes) {
        let o = outcome.unwrap_or_else(|| Outcome::retry("not handled"));
        let o = inner.retry.apply(o, item.delivery.meta.delivered);
        item.span.in_scope(|| span::log_outcome(&o));
        count(inner, &o);
        outcomes.push(o);
    }
    // A suspect on its last delivery is dead-lettered: no need to remember it.
    let last: Vec<String> = run
        .items
        .iter()
        .filter(|it| it.delivery.meta.delivered >= it.delivery.meta.max_deliver)
        .map(|it| it.key.clone())
        .collect();
    cleared.extend(last);
    Handled {
        outcomes,
        restart,
        panicked: run.panicked,
        cleared,
    }
}

fn count_duplicates<H>(inner: &Inner<H>, n: usize) {
    if n > 0 {
        metrics()
            .inbox_duplicates
            .with_label_values(&[inner.inbox.as_str()])
            .inc_by(n as u64);
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
                TxError::Panicked(message) => Attempt::BatchPanicked(message),
                other => Attempt::Rejected(format!("begin_batch: {other}")),
            };
        }
        Err(panic) => {
            let _ = uow.rollback().await;
            return Attempt::BatchPanicked(panic_message(panic.as_ref()));
        }
    }
    let handle_seconds = metrics()
        .actor_handle_seconds
        .with_label_values(&[inner.name.as_str()]);
    for &p in &todo {
        let item = &items[p];
        let Some(prepared) = item.prepared.clone() else {
            continue;
        };
        uow.caused_by(Some((&item.delivery.meta, &item.key)));
        let started = Instant::now();
        let faulty = inner.fault.as_ref().is_some_and(|f| f(&item.delivery.meta));
        let work = async {
            if faulty {
                panic!("injected fault (panic_when)");
            }
            inner
                .handler
                .handle(&mut uow, &item.delivery, prepared)
                .await
        };
        let result = AssertUnwindSafe(work)
            .catch_unwind()
            .instrument(item.span.clone())
            .await;
        handle_seconds.observe(started.elapsed().as_secs_f64());
        let outcome = match result {
            Ok(Ok(())) => {
                continue;
            }
            Ok(Err(TxError::Database(e))) if db::is_conflict(&e) => {
                let _ = uow.rollback().await;
                return Attempt::Conflict(format!("database: {e}"));
            }
            Ok(Err(TxError::Panicked(message))) => {
                let _ = uow.rollback().await;
                return Attempt::ItemPanicked { item: p, message };
            }
            Ok(Err(e)) => e.outcome(),
            Err(panic) => {
                let _ = uow.rollback().await;
                return Attempt::ItemPanicked {
                    item: p,
                    message: panic_message(panic.as_ref()),
                };
            }
        };
        let _ = uow.rollback().await;
        return Attempt::ItemFailed { item: p, outcome };
    }
    uow.caused_by(None);
    match uow.commit(&inner.outbox).await {
        Ok(()) => Attempt::Committed { duplicates },
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

/// Declares a named transactional actor around a handler: the struct, `Actor`, `Supervised`,
/// `Handler<Batch<_>>`, `Handler<StopActor>` and [`BatchActor`], all delegating to a
/// [`TxCore`]. A service gets a type of its own for each actor (in logs, docs and
/// signatures) with the runtime's batch handling.
///
/// ```
/// use jetflow_runtime::prelude::*;
///
/// /// Applies nothing, in one transaction per batch.
/// struct Noop;
///
/// impl TxHandler for Noop {
///     type Message = Json<u32>;
///
///     async fn handle(&self, _: &mut UnitOfWork, _: &Delivery<Json<u32>>) -> Result<(), TxError> {
///         Ok(())
///     }
/// }
///
/// jetflow_runtime::batch_actor! {
///     /// The actor that applies [`Noop`].
///     struct NoopActor(Noop);
/// }
/// ```
#[macro_export]
macro_rules! batch_actor {
    ($(#[$attr:meta])* $vis:vis struct $name:ident($handler:ty);) => {
        $(#[$attr])*
        $vis struct $name($crate::TxCore<$handler>);

        impl $crate::__actix::Actor for $name {
            type Context = $crate::__actix::Context<Self>;
        }

        impl $crate::__actix::Supervised for $name {
            fn restarting(&mut self, _: &mut $crate::__actix::Context<Self>) {
                self.0.restarting();
            }
        }

        impl $crate::__actix::Handler<$crate::Batch<<$handler as $crate::PreparedTxHandler>::Message>>
            for $name
        {
            type Result = $crate::__actix::AtomicResponse<Self, ::std::vec::Vec<$crate::Outcome>>;

            fn handle(
                &mut self,
                batch: $crate::Batch<<$handler as $crate::PreparedTxHandler>::Message>,
                _: &mut $crate::__actix::Context<Self>,
            ) -> Self::Result {
                self.0.handle(batch, |actor: &mut Self| &mut actor.0)
            }
        }

        impl $crate::__actix::Handler<$crate::StopActor> for $name {
            type Result = ();

            fn handle(&mut self, _: $crate::StopActor, ctx: &mut $crate::__actix::Context<Self>) {
                $crate::__actix::ActorContext::stop(ctx);
            }
        }

        impl $crate::BatchActor for $name {
            type Handler = $handler;

            fn from_core(core: $crate::TxCore<$handler>) -> Self {
                Self(core)
            }
        }
    };
}
