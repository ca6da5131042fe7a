//! Supervision that closes actix's gaps.
//!
//! actix's `Supervisor` restarts an actor when it stops, but a panic in a handler unwinds
//! through the task that runs the actor and kills it for good, and restarts are unbounded.
//! This supervisor drives the same `ContextFut` as actix's, but polls it inside
//! `catch_unwind`: a panic anywhere in the actor (handler, `started`, a future spawned in its
//! context) becomes a stop, the actor's `Supervised::restarting` hook runs, and the actor
//! starts again with the same address and mailbox. Restarts are limited per time window
//! ([`RestartPolicy`]); an actor over its budget stays stopped, `jetflow_actor_failed` says so
//! and the [`Health`] registry reports the process as no longer live.
//!
//! Futures returned as `ResponseFuture` run on their own task, outside the actor: a panic
//! there fails only that message (its sender sees `MailboxError::Closed`). Use
//! `ResponseActFuture` (the future runs inside the actor's context) to have it supervised.

use std::any::Any;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use actix::dev::{ContextFut, channel};
use actix::prelude::*;
use actix_rt::ArbiterHandle;

use crate::actor_ref::{ActorRef, ActorStats};
use crate::health::Health;
use crate::metrics::metrics;

/// How often an actor may restart before the supervisor gives up on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restarts allowed within `within`; one more and the actor stays stopped.
    pub max_restarts: u32,
    /// The sliding window the restarts are counted in.
    pub within: Duration,
}

impl Default for RestartPolicy {
    /// Ten restarts a minute: enough to ride out transient faults, few enough that a crash
    /// loop is reported rather than hidden.
    fn default() -> Self {
        Self {
            max_restarts: 10,
            within: Duration::from_secs(60),
        }
    }
}

impl RestartPolicy {
    /// Restart however often it takes (for actors whose stops are expected, such as a
    /// bridge that stops on every lost connection).
    pub fn unlimited() -> Self {
        Self {
            max_restarts: u32::MAX,
            within: Duration::from_secs(1),
        }
    }
}

/// The mailbox capacity used unless a supervisor is told otherwise.
pub const DEFAULT_MAILBOX_CAPACITY: usize = 64;

/// Starts actors under jetflow supervision.
#[derive(Debug, Clone)]
pub struct Supervisor {
    name: String,
    policy: RestartPolicy,
    health: Option<Health>,
    mailbox_capacity: usize,
}

impl Supervisor {
    /// A supervisor for an actor called `name` (the `actor` label of its metrics).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            policy: RestartPolicy::default(),
            health: None,
            mailbox_capacity: DEFAULT_MAILBOX_CAPACITY,
        }
    }

    /// Sets the restart budget.
    pub fn policy(mut self, policy: RestartPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Reports an exhausted restart budget to this registry (as component `actor:<name>`).
    pub fn health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    /// Bounds the mailbox: senders wait while it holds this many messages.
    pub fn mailbox_capacity(mut self, capacity: usize) -> Self {
        self.mailbox_capacity = capacity.max(1);
        self
    }

    /// Starts the actor on the current arbiter.
    pub fn start<A, F>(self, f: F) -> ActorRef<A>
    where
        A: Actor<Context = Context<A>> + Supervised,
        F: FnOnce(&mut Context<A>) -> A + 'static,
    {
        let (tx, rx) = channel::channel(self.mailbox_capacity);
        let stats = ActorStats::new(&self.name);
        let mut ctx = Context::with_receiver(rx);
        ctx.set_mailbox_capacity(self.mailbox_capacity);
        let actor = f(&mut ctx);
        let fut = ctx.into_future(actor);
        actix_rt::spawn(SupervisedActor::new(fut, self));
        ActorRef::from_parts(Addr::new(tx), stats)
    }

    /// Starts the actor on another arbiter (thread).
    pub fn start_in_arbiter<A, F>(self, arbiter: &ArbiterHandle, f: F) -> ActorRef<A>
    where
        A: Actor<Context = Context<A>> + Supervised,
        F: FnOnce(&mut Context<A>) -> A + Send + 'static,
    {
        let (tx, rx) = channel::channel(self.mailbox_capacity);
        let stats = ActorStats::new(&self.name);
        arbiter.spawn_fn(move || {
            let mut ctx = Context::with_receiver(rx);
            ctx.set_mailbox_capacity(self.mailbox_capacity);
            let actor = f(&mut ctx);
            let fut = ctx.into_future(actor);
            actix_rt::spawn(SupervisedActor::new(fut, self));
        });
        ActorRef::from_parts(Addr::new(tx), stats)
    }
}

/// The future that runs one supervised actor.
struct SupervisedActor<A>
where
    A: Actor<Context = Context<A>> + Supervised,
{
    fut: ContextFut<A, Context<A>>,
    name: Arc<str>,
    policy: RestartPolicy,
    health: Option<Health>,
    restarts: VecDeque<Instant>,
}

impl<A> SupervisedActor<A>
where
    A: Actor<Context = Context<A>> + Supervised,
{
    fn new(fut: ContextFut<A, Context<A>>, sup: Supervisor) -> Self {
        metrics()
            .actor_failed
            .with_label_values(&[sup.name.as_str()])
            .set(0);
        Self {
            fut,
            name: Arc::from(sup.name.as_str()),
            policy: sup.policy,
            health: sup.health,
            restarts: VecDeque::new(),
        }
    }

    /// Records a restart and says whether the budget still allows it.
    fn may_restart(&mut self, why: &str) -> bool {
        let now = Instant::now();
        while let Some(first) = self.restarts.front() {
            if now.duration_since(*first) > self.policy.within {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        if self.restarts.len() as u64 >= u64::from(self.policy.max_restarts) {
            tracing::error!(
                actor = %self.name,
                reason = why,
                max_restarts = self.policy.max_restarts,
                within_secs = self.policy.within.as_secs_f64(),
                "actor exceeded its restart budget; leaving it stopped"
            );
            metrics()
                .actor_failed
                .with_label_values(&[&*self.name])
                .set(1);
            if let Some(health) = &self.health {
                health.set_dead(
                    &format!("actor:{}", self.name),
                    format!(
                        "restart budget exhausted ({} restarts within {:?}); last: {why}",
                        self.policy.max_restarts, self.policy.within
                    ),
                );
            }
            return false;
        }
        self.restarts.push_back(now);
        true
    }

    fn restart(&mut self, why: &str) -> bool {
        if !self.may_restart(why) {
            return false;
        }
        if !self.fut.restart() {
            // Every address is gone: nobody can send to the actor any more.
            tracing::debug!(actor = %self.name, "actor stopped with no addresses left");
            return false;
        }
        metrics()
            .actor_restarts
            .with_label_values(&[&*self.name])
            .inc();
        tracing::warn!(actor = %self.name, reason = why, "actor restarted");
        true
    }
}

/// The text of a panic payload, when it has one.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

impl<A> Future for SupervisedActor<A>
where
    A: Actor<Context = Context<A>> + Supervised,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let polled = catch_unwind(AssertUnwindSafe(|| Pin::new(&mut this.fut).poll(cx)));
            match polled {
                Ok(Poll::Pending) => return Poll::Pending,
                Ok(Poll::Ready(())) => {
                    if !this.restart("stopped") {
                        return Poll::Ready(());
                    }
                }
                Err(payload) => {
                    let message = panic_message(payload.as_ref());
                    metrics()
                        .actor_panics
                        .with_label_values(&[&*this.name])
                        .inc();
                    tracing::error!(actor = %this.name, panic = %message, "actor panicked");
                    if !this.restart(&format!("panic: {message}")) {
                        return Poll::Ready(());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts messages; panics on `Boom`.
    struct Counter {
        seen: u32,
        started: std::sync::Arc<std::sync::atomic::AtomicU32>,
    }
    impl Actor for Counter {
        type Context = Context<Self>;
        fn started(&mut self, _: &mut Context<Self>) {
            self.started
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    impl Supervised for Counter {
        fn restarting(&mut self, _: &mut Context<Self>) {
            self.seen = 0;
        }
    }

    #[derive(Message)]
    #[rtype(result = "u32")]
    struct Tick;
    impl ReplyOutcome for u32 {
        fn outcome_label(&self) -> &'static str {
            "ok"
        }
    }
    impl Handler<Tick> for Counter {
        type Result = u32;
        fn handle(&mut self, _: Tick, _: &mut Context<Self>) -> u32 {
            self.seen += 1;
            self.seen
        }
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Boom;
    impl Handler<Boom> for Counter {
        type Result = ();
        fn handle(&mut self, _: Boom, _: &mut Context<Self>) {
            panic!("boom");
        }
    }

    use crate::outcome::ReplyOutcome;

    fn counter(
        name: &str,
        policy: RestartPolicy,
        health: Health,
    ) -> (
        ActorRef<Counter>,
        std::sync::Arc<std::sync::atomic::AtomicU32>,
    ) {
        let started = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let s = started.clone();
        let a = Supervisor::new(name)
            .policy(policy)
            .health(health)
            .start(move |_| Counter {
                seen: 0,
                started: s,
            });
        (a, started)
    }

    #[actix::test]
    async fn a_panic_restarts_the_actor_and_the_next_message_is_handled() {
        let name = format!("counter-{}", uuid::Uuid::new_v4());
        let (a, started) = counter(&name, RestartPolicy::default(), Health::new());
        assert_eq!(a.send(Tick).await.unwrap(), 1);
        assert_eq!(a.send(Tick).await.unwrap(), 2);
        // The panicking message fails for its sender only.
        assert!(matches!(a.send(Boom).await, Err(MailboxError::Closed)));
        // Same address, fresh state, started again.
        assert_eq!(a.send(Tick).await.unwrap(), 1);
        assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 2);
        let m = metrics();
        assert_eq!(m.actor_panics.with_label_values(&[name.as_str()]).get(), 1);
        assert_eq!(
            m.actor_restarts.with_label_values(&[name.as_str()]).get(),
            1
        );
        assert_eq!(a.mailbox_depth(), 0);
    }

    #[actix::test]
    async fn over_budget_the_actor_stays_stopped_and_liveness_fails() {
        let name = format!("crashy-{}", uuid::Uuid::new_v4());
        let health = Health::new();
        let policy = RestartPolicy {
            max_restarts: 2,
            within: Duration::from_secs(60),
        };
        let (a, _) = counter(&name, policy, health.clone());
        for _ in 0..2 {
            assert!(a.send(Boom).await.is_err());
            assert_eq!(a.send(Tick).await.unwrap(), 1, "restarted within budget");
        }
        assert!(a.send(Boom).await.is_err());
        // The third panic exceeds the budget: the actor is gone for good.
        assert!(matches!(a.send(Tick).await, Err(MailboxError::Closed)));
        assert!(!health.is_live());
        assert_eq!(
            metrics()
                .actor_failed
                .with_label_values(&[name.as_str()])
                .get(),
            1
        );
        assert_eq!(
            metrics()
                .actor_restarts
                .with_label_values(&[name.as_str()])
                .get(),
            2
        );
    }

    #[actix::test]
    async fn restarts_outside_the_window_do_not_count() {
        let name = format!("window-{}", uuid::Uuid::new_v4());
        let policy = RestartPolicy {
            max_restarts: 1,
            within: Duration::from_millis(50),
        };
        let (a, _) = counter(&name, policy, Health::new());
        assert!(a.send(Boom).await.is_err());
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(a.send(Boom).await.is_err());
        assert_eq!(
            a.send(Tick).await.unwrap(),
            1,
            "second restart allowed after the window"
        );
    }

    #[actix::test]
    async fn mailbox_is_bounded() {
        let name = format!("bounded-{}", uuid::Uuid::new_v4());
        let started = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let a = Supervisor::new(&name)
            .mailbox_capacity(4)
            .start(move |_| Counter { seen: 0, started });
        // try_send past capacity is refused; send waits for room instead of growing the queue.
        let mut refused = false;
        for _ in 0..64 {
            if a.addr().try_send(Tick).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused, "a bounded mailbox refuses try_send when full");
    }
}
