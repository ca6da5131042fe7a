//! Supervision that closes actix's gaps.
//!
//! actix's `Supervisor` restarts an actor when it stops, but a panic in a handler unwinds
//! through the task that runs the actor and kills it for good, and restarts are unbounded.
//! This supervisor drives the same `ContextFut` as actix's, but polls it inside
//! `catch_unwind`: a panic anywhere in the actor (handler, `started`, a future spawned in its
//! context) becomes a stop, the actor's `Supervised::restarting` hook runs, and the actor
//! starts again with the same address and mailbox. Restarts back off: each waits longer than
//! the one before (exponential, with jitter; messages wait in the mailbox meanwhile), and the
//! task yields while it waits, so a crash loop never pins a core. They are limited per time
//! window ([`RestartPolicy`]); an actor over its budget stays stopped, `jetflow_actor_failed`
//! says so and the [`Health`] registry reports the process as no longer live. An actor that
//! was [retired](crate::ActorRef::retire) stops for good at its next stop.
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
use crate::backoff::Backoff;
use crate::health::Health;
use crate::metrics::metrics;

/// How often, and how soon, an actor restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restarts allowed within `within`; one more and the actor stays stopped.
    pub max_restarts: u32,
    /// The sliding window the restarts are counted in.
    pub within: Duration,
    /// The wait before each restart, growing with consecutive restarts (an actor that ran
    /// longer than the longest wait starts over from the shortest).
    pub backoff: Backoff,
}

impl Default for RestartPolicy {
    /// Ten restarts a minute, the first after 50 ms, doubling up to 5 s: enough to ride out
    /// transient faults, few enough that a crash loop is reported rather than hidden.
    fn default() -> Self {
        Self {
            max_restarts: 10,
            within: Duration::from_secs(60),
            backoff: Backoff::exponential(Duration::from_millis(50), Duration::from_secs(5)),
        }
    }
}

impl RestartPolicy {
    /// Restart however often it takes (for actors whose stops are expected, such as a
    /// bridge that stops on every lost connection), never faster than the backoff.
    pub fn unlimited() -> Self {
        Self {
            max_restarts: u32::MAX,
            within: Duration::from_secs(1),
            backoff: Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }

    /// `max_restarts` within `within`, with the default backoff.
    pub fn at_most(max_restarts: u32, within: Duration) -> Self {
        Self {
            max_restarts,
            within,
            ..Self::default()
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
    shard: String,
}

impl Supervisor {
    /// A supervisor for an actor called `name` (the `actor` label of its metrics).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            policy: RestartPolicy::default(),
            health: None,
            mailbox_capacity: DEFAULT_MAILBOX_CAPACITY,
            shard: "0".to_string(),
        }
    }

    /// Which instance of a pool of actors of the same name this is (the `shard` label of the
    /// mailbox depth; default `0`).
    pub fn shard(mut self, shard: impl Into<String>) -> Self {
        self.shard = shard.into();
        self
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
        let stats = ActorStats::shard(&self.name, &self.shard);
        let mut ctx = Context::with_receiver(rx);
        ctx.set_mailbox_capacity(self.mailbox_capacity);
        let actor = f(&mut ctx);
        let fut = ctx.into_future(actor);
        actix_rt::spawn(SupervisedActor::new(fut, self, stats.clone()));
        ActorRef::from_parts(Addr::new(tx), stats)
    }

    /// Starts the actor on another arbiter (thread).
    pub fn start_in_arbiter<A, F>(self, arbiter: &ArbiterHandle, f: F) -> ActorRef<A>
    where
        A: Actor<Context = Context<A>> + Supervised,
        F: FnOnce(&mut Context<A>) -> A + Send + 'static,
    {
        let (tx, rx) = channel::channel(self.mailbox_capacity);
        let stats = ActorStats::shard(&self.name, &self.shard);
        let s = stats.clone();
        arbiter.spawn_fn(move || {
            let mut ctx = Context::with_receiver(rx);
            ctx.set_mailbox_capacity(self.mailbox_capacity);
            let actor = f(&mut ctx);
            let fut = ctx.into_future(actor);
            actix_rt::spawn(SupervisedActor::new(fut, self, s));
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
    stats: Arc<ActorStats>,
    restarts: VecDeque<Instant>,
    consecutive: u32,
    started_at: Instant,
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<A> SupervisedActor<A>
where
    A: Actor<Context = Context<A>> + Supervised,
{
    fn new(fut: ContextFut<A, Context<A>>, sup: Supervisor, stats: Arc<ActorStats>) -> Self {
        metrics()
            .actor_failed
            .with_label_values(&[sup.name.as_str()])
            .set(0);
        Self {
            fut,
            name: Arc::from(sup.name.as_str()),
            policy: sup.policy,
            health: sup.health,
            stats,
            restarts: VecDeque::new(),
            consecutive: 0,
            started_at: Instant::now(),
            waiting: None,
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

    /// Decides whether the actor restarts and, if so, arms the wait before it.
    fn schedule_restart(&mut self, why: &str) -> bool {
        if self.stats.retired.load(std::sync::atomic::Ordering::SeqCst) {
            tracing::debug!(actor = %self.name, "retired actor stopped");
            return false;
        }
        if !self.may_restart(why) {
            return false;
        }
        if self.started_at.elapsed() > self.policy.backoff.max {
            self.consecutive = 0;
        }
        self.consecutive = self.consecutive.saturating_add(1);
        let delay = self.policy.backoff.delay_for(self.consecutive);
        tracing::debug!(actor = %self.name, reason = why, restart_in_ms = delay.as_millis() as u64, "actor stopped; restarting after a wait");
        self.waiting = Some(Box::pin(tokio::time::sleep(delay)));
        true
    }

    /// Restarts the actor after its wait; false if nobody can reach it any more.
    fn restart_now(&mut self) -> bool {
        if !self.fut.restart() {
            // Every address is gone: nobody can send to the actor any more.
            tracing::debug!(actor = %self.name, "actor stopped with no addresses left");
            return false;
        }
        self.started_at = Instant::now();
        metrics()
            .actor_restarts
            .with_label_values(&[&*self.name])
            .inc();
        tracing::warn!(actor = %self.name, "actor restarted");
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
            if let Some(wait) = this.waiting.as_mut() {
                if wait.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.waiting = None;
                if !this.restart_now() {
                    return Poll::Ready(());
                }
            }
            let polled = catch_unwind(AssertUnwindSafe(|| Pin::new(&mut this.fut).poll(cx)));
            match polled {
                Ok(Poll::Pending) => return Poll::Pending,
                Ok(Poll::Ready(())) => {
                    if !this.schedule_restart("stopped") {
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
                    if !this.schedule_restart(&format!("panic: {message}")) {
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
        let policy = RestartPolicy::at_most(2, Duration::from_secs(60));
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
        let policy = RestartPolicy::at_most(1, Duration::from_millis(50));
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

    /// Panics as it starts, every time.
    struct Doomed;
    impl Actor for Doomed {
        type Context = Context<Self>;
        fn started(&mut self, _: &mut Context<Self>) {
            panic!("cannot start");
        }
    }
    impl Supervised for Doomed {}

    #[actix::test]
    async fn a_crash_loop_backs_off_instead_of_spinning() {
        let name = format!("doomed-{}", uuid::Uuid::new_v4());
        let policy = RestartPolicy {
            max_restarts: u32::MAX,
            within: Duration::from_secs(60),
            backoff: Backoff::exponential(Duration::from_millis(50), Duration::from_secs(5))
                .without_jitter(),
        };
        let _a = Supervisor::new(&name).policy(policy).start(|_| Doomed);
        let started = Instant::now();
        let restarts = || {
            metrics()
                .actor_restarts
                .with_label_values(&[name.as_str()])
                .get()
        };
        // Waits of 50, 100, 200, 400, 800 ms: five restarts take 1.55 s, where a loop that
        // never waits would restart many thousands of times.
        while restarts() < 5 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "it restarts at all"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1500),
            "five restarts took only {took:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(restarts(), 5, "the sixth waits 1.6 s");
    }

    #[actix::test]
    async fn a_bridge_that_cannot_connect_retries_with_backoff() {
        // No URL at all: every start fails at once; the supervisor must not spin on it.
        let health = Health::new();
        let config = crate::bridge::BridgeConfig::new(
            crate::connection::NatsConfig::new(""),
            crate::topology::Topology::new(),
        );
        let before = metrics()
            .actor_restarts
            .with_label_values(&["nats-bridge"])
            .get();
        let bridge = crate::bridge::NatsBridge::start(config, health.clone());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let restarts = metrics()
            .actor_restarts
            .with_label_values(&["nats-bridge"])
            .get()
            - before;
        assert!((1..=6).contains(&restarts), "{restarts} restarts in 1.5 s");
        assert!(!health.is_ready(), "and it says it is not ready");
        bridge.actor().retire();
    }

    /// Blocks its thread on each message until the test lets it go.
    struct Blocked {
        gate: std::sync::Arc<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>,
        handled: std::sync::Arc<std::sync::atomic::AtomicU32>,
    }
    impl Actor for Blocked {
        type Context = Context<Self>;
    }
    impl Supervised for Blocked {}
    impl Handler<Tick> for Blocked {
        type Result = u32;
        fn handle(&mut self, _: Tick, _: &mut Context<Self>) -> u32 {
            if let Ok(gate) = self.gate.lock() {
                let _ = gate.recv();
            }
            self.handled
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[actix::test]
    async fn mailbox_is_bounded() {
        let name = format!("bounded-{}", uuid::Uuid::new_v4());
        let (open, gate) = std::sync::mpsc::channel();
        let handled = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let h = handled.clone();
        let gate = std::sync::Arc::new(std::sync::Mutex::new(gate));
        let arbiter = actix::Arbiter::new();
        let a = Supervisor::new(&name)
            .mailbox_capacity(4)
            .start_in_arbiter(&arbiter.handle(), move |_| Blocked { gate, handled: h });
        // The actor is stuck on its first message: the mailbox takes `capacity` more (actix
        // counts one in hand besides), and then refuses instead of growing.
        let mut accepted = 0;
        for _ in 0..64 {
            if a.addr().try_send(Tick).is_ok() {
                accepted += 1;
            }
        }
        assert!(
            (4..=6).contains(&accepted),
            "{accepted} accepted by a mailbox of 4"
        );
        for _ in 0..accepted {
            open.send(()).expect("gate");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while handled.load(std::sync::atomic::Ordering::SeqCst) < accepted {
            assert!(
                Instant::now() < deadline,
                "every accepted message is handled"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(open);
        arbiter.stop();
    }
}
