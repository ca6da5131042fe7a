//! Instrumented addresses: every message sent to a jetflow actor is counted and timed.
//!
//! actix does not expose how full a mailbox is, so the runtime measures at the only place it
//! can: the sender. An [`ActorRef`] wraps an `Addr` and keeps `jetflow_actor_mailbox_depth`
//! (sent minus replied, live), `jetflow_actor_messages_total{outcome}` and
//! `jetflow_actor_handle_seconds` (enqueue to reply). Messages go through `Addr::send`, which
//! waits while the bounded mailbox is full, so a slow actor pushes back on its senders.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use prometheus::{Histogram, IntGauge};

use crate::metrics::metrics;
use crate::outcome::ReplyOutcome;

/// Per-actor metric handles, resolved once, and the actor's retirement flag.
#[derive(Debug)]
pub(crate) struct ActorStats {
    pub(crate) name: String,
    depth: IntGauge,
    handle_seconds: Histogram,
    /// Set when the actor's next stop is final (its supervisor does not restart it).
    pub(crate) retired: AtomicBool,
}

impl ActorStats {
    pub(crate) fn new(name: &str) -> Arc<Self> {
        Self::shard(name, "0")
    }

    /// The stats of one instance of a pool of actors of one name: the depth gauge is per
    /// instance (`shard` label), the rest per name.
    pub(crate) fn shard(name: &str, shard: &str) -> Arc<Self> {
        let m = metrics();
        // Every actor's series exist from its start (at 0), so dashboards and alerts see
        // "no restarts" rather than "no data".
        m.actor_restarts.with_label_values(&[name]);
        m.actor_panics.with_label_values(&[name]);
        m.actor_failed.with_label_values(&[name]);
        Arc::new(Self {
            name: name.to_string(),
            depth: m.actor_mailbox_depth.with_label_values(&[name, shard]),
            handle_seconds: m.actor_handle_seconds.with_label_values(&[name]),
            retired: AtomicBool::new(false),
        })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.depth.inc();
        InFlight {
            stats: Arc::clone(self),
            started: Instant::now(),
            done: false,
        }
    }
}

/// One message between send and reply. Dropping it unfinished (the sender gave up) still
/// takes it out of the depth gauge, so the gauge cannot drift.
struct InFlight {
    stats: Arc<ActorStats>,
    started: Instant,
    done: bool,
}

impl InFlight {
    fn finish(mut self, outcome: &'static str) {
        self.leave();
        metrics()
            .actor_messages
            .with_label_values(&[self.stats.name.as_str(), outcome])
            .inc();
    }

    /// Out of the mailbox, timed, without counting an outcome (the caller counts them).
    fn leave(&mut self) {
        self.done = true;
        self.stats.depth.dec();
        self.stats
            .handle_seconds
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            self.stats.depth.dec();
            metrics()
                .actor_messages
                .with_label_values(&[self.stats.name.as_str(), "cancelled"])
                .inc();
        }
    }
}

async fn tracked<R, F>(stats: &Arc<ActorStats>, request: F) -> Result<R, MailboxError>
where
    F: std::future::Future<Output = Result<R, MailboxError>>,
    R: ReplyOutcome,
{
    let flight = stats.begin();
    let result = request.await;
    let label = match &result {
        Ok(reply) => reply.outcome_label(),
        Err(MailboxError::Closed) => "mailbox_closed",
        Err(MailboxError::Timeout) => "timeout",
    };
    flight.finish(label);
    result
}

/// The address of a supervised, instrumented actor.
pub struct ActorRef<A: Actor> {
    addr: Addr<A>,
    stats: Arc<ActorStats>,
}

impl<A: Actor> Clone for ActorRef<A> {
    fn clone(&self) -> Self {
        Self {
            addr: self.addr.clone(),
            stats: Arc::clone(&self.stats),
        }
    }
}

impl<A: Actor> std::fmt::Debug for ActorRef<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorRef")
            .field("actor", &self.stats.name)
            .finish()
    }
}

impl<A: Actor> ActorRef<A> {
    /// Wraps an address under `name` (the `actor` label of the metrics).
    pub fn new(name: &str, addr: Addr<A>) -> Self {
        Self {
            addr,
            stats: ActorStats::new(name),
        }
    }

    pub(crate) fn from_parts(addr: Addr<A>, stats: Arc<ActorStats>) -> Self {
        Self { addr, stats }
    }

    /// The actor's name.
    pub fn name(&self) -> &str {
        &self.stats.name
    }

    /// The raw actix address. Messages sent through it are not counted.
    pub fn addr(&self) -> &Addr<A> {
        &self.addr
    }

    /// Whether the actor can still receive messages.
    pub fn connected(&self) -> bool {
        self.addr.connected()
    }

    /// Messages sent and not yet replied to, as the gauge shows it.
    pub fn mailbox_depth(&self) -> i64 {
        self.stats.depth.get()
    }

    /// Makes the actor's next stop final: its supervisor lets it go instead of restarting
    /// it (for a clean shutdown).
    pub fn retire(&self) {
        self.stats.retired.store(true, Ordering::SeqCst);
    }

    /// Stops the actor for good (its supervisor does not restart it).
    pub fn stop(&self)
    where
        A: Actor<Context = Context<A>> + Handler<StopActor>,
    {
        self.retire();
        self.addr.do_send(StopActor);
    }

    /// Sends a message and waits for the reply; waits for room while the mailbox is full.
    pub async fn send<M>(&self, msg: M) -> Result<M::Result, MailboxError>
    where
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
        M: Message + Send + 'static,
        M::Result: Send + ReplyOutcome,
    {
        tracked(&self.stats, self.addr.send(msg)).await
    }

    /// As [`send`](Self::send), but the reply's outcomes are the caller's to count (a batch
    /// carries one outcome per delivery): the depth gauge and the handling time are kept.
    pub(crate) async fn send_counted_by_caller<M>(&self, msg: M) -> Result<M::Result, MailboxError>
    where
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        let mut flight = self.stats.begin();
        let result = self.addr.send(msg).await;
        flight.leave();
        result
    }

    /// A type-erased, still instrumented, handle for one message type.
    pub fn recipient<M>(&self) -> TrackedRecipient<M>
    where
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        TrackedRecipient {
            recipient: self.addr.clone().recipient(),
            stats: Arc::clone(&self.stats),
        }
    }
}

/// Asks an actor to stop (see [`ActorRef::stop`]); implement `Handler<StopActor>` with
/// [`stop_actor`] to make an actor stoppable this way.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct StopActor;

/// The usual handling of [`StopActor`]: `ctx.stop()`.
pub fn stop_actor<A: Actor<Context = Context<A>>>(ctx: &mut Context<A>) {
    ctx.stop();
}

/// A [`Recipient`] that keeps its actor's metrics.
pub struct TrackedRecipient<M>
where
    M: Message + Send,
    M::Result: Send,
{
    recipient: Recipient<M>,
    stats: Arc<ActorStats>,
}

impl<M> Clone for TrackedRecipient<M>
where
    M: Message + Send,
    M::Result: Send,
{
    fn clone(&self) -> Self {
        Self {
            recipient: self.recipient.clone(),
            stats: Arc::clone(&self.stats),
        }
    }
}

impl<M> TrackedRecipient<M>
where
    M: Message + Send + 'static,
    M::Result: Send + ReplyOutcome,
{
    /// The receiving actor's name.
    pub fn name(&self) -> &str {
        &self.stats.name
    }

    /// Sends and waits for the reply, counted like [`ActorRef::send`].
    pub async fn send(&self, msg: M) -> Result<M::Result, MailboxError> {
        tracked(&self.stats, self.recipient.send(msg)).await
    }

    /// Whether the actor can still receive messages.
    pub fn connected(&self) -> bool {
        self.recipient.connected()
    }
}
