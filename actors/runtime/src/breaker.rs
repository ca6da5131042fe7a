//! `BreakerActor`: a circuit breaker for one downstream, as an actor.
//!
//! Calls go through the actor as futures ([`Call`]). Closed, they run (concurrently) with a
//! timeout, and consecutive failures are counted; at the threshold the circuit opens and
//! every call is answered [`BreakerError::Open`] at once, without touching the downstream.
//! After the open timeout one probe call is let through (half-open): its success closes the
//! circuit, its failure opens it again. The state is exported as `jetflow_breaker_state`
//! (0 closed, 1 half-open, 2 open). Being an actor, the state needs no locks, and a caller
//! cannot forget to record a result: the breaker records it itself when the future ends.

use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::future::BoxFuture;

use crate::actor_ref::ActorRef;
use crate::metrics::metrics;
use crate::outcome::ReplyOutcome;
use crate::supervisor::Supervisor;

/// The state of a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// One probe call passes; the others are refused.
    HalfOpen,
    /// Calls are refused at once.
    Open,
}

impl BreakerState {
    /// The value of `jetflow_breaker_state`.
    pub fn gauge_value(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }

    fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

impl ReplyOutcome for BreakerState {
    fn outcome_label(&self) -> &'static str {
        "ok"
    }
}

/// How a breaker behaves.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// The breaker's name (the `breaker` label).
    pub name: String,
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open before a probe.
    pub open_timeout: Duration,
    /// How long one call may take; a slower call counts as a failure.
    pub call_timeout: Duration,
}

impl BreakerConfig {
    /// Five failures, 10 s open, 2 s per call.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            failure_threshold: 5,
            open_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(2),
        }
    }
}

/// Why a call through the breaker did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakerError<E> {
    /// The circuit is open: the call was not made.
    #[error("circuit open; next probe in {retry_in:?}")]
    Open {
        /// When a call may be let through again.
        retry_in: Duration,
    },
    /// The call took longer than the call timeout.
    #[error("call timed out after {0:?}")]
    Timeout(Duration),
    /// The call failed.
    #[error("call failed: {0}")]
    Failed(E),
}

/// A call to make through the breaker: `Ok` is a success, `Err` a failure.
pub struct Call<T, E> {
    fut: BoxFuture<'static, Result<T, E>>,
}

impl<T, E> Call<T, E> {
    /// Wraps the call's future.
    pub fn new<F>(fut: F) -> Self
    where
        F: std::future::Future<Output = Result<T, E>> + Send + 'static,
    {
        Self { fut: Box::pin(fut) }
    }
}

impl<T: 'static, E: 'static> Message for Call<T, E> {
    type Result = Result<T, BreakerError<E>>;
}

/// Asks for the current state.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "BreakerState")]
pub struct GetBreakerState;

/// Asks how long until an open circuit lets a probe through (zero when it would now).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Duration")]
pub struct GetRetryIn;

/// The circuit breaker actor.
pub struct BreakerActor {
    config: BreakerConfig,
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Instant,
    probe_in_flight: bool,
}

impl BreakerActor {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        metrics()
            .breaker_state
            .with_label_values(&[config.name.as_str()])
            .set(0);
        Self {
            config,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            opened_at: Instant::now(),
            probe_in_flight: false,
        }
    }

    /// Starts a supervised breaker.
    pub fn start(config: BreakerConfig) -> ActorRef<BreakerActor> {
        let name = format!("breaker:{}", config.name);
        Supervisor::new(name).start(move |_| BreakerActor::new(config))
    }

    fn transition(&mut self, to: BreakerState) {
        if self.state == to {
            return;
        }
        tracing::warn!(breaker = %self.config.name, from = self.state.label(), to = to.label(), "circuit breaker state changed");
        self.state = to;
        let m = metrics();
        m.breaker_state
            .with_label_values(&[self.config.name.as_str()])
            .set(to.gauge_value());
        m.breaker_transitions
            .with_label_values(&[self.config.name.as_str(), to.label()])
            .inc();
        match to {
            BreakerState::Open => {
                self.opened_at = Instant::now();
                self.probe_in_flight = false;
            }
            BreakerState::Closed => {
                self.consecutive_failures = 0;
                self.probe_in_flight = false;
            }
            BreakerState::HalfOpen => {}
        }
    }

    /// Decides whether a call may go now; `Ok(true)` marks it as the half-open probe.
    fn admit(&mut self) -> Result<bool, Duration> {
        match self.state {
            BreakerState::Closed => Ok(false),
            BreakerState::Open => {
                let elapsed = self.opened_at.elapsed();
                if elapsed >= self.config.open_timeout {
                    self.transition(BreakerState::HalfOpen);
                    self.probe_in_flight = true;
                    Ok(true)
                } else {
                    Err(self.config.open_timeout - elapsed)
                }
            }
            BreakerState::HalfOpen => {
                if self.probe_in_flight {
                    Err(self.config.call_timeout)
                } else {
                    self.probe_in_flight = true;
                    Ok(true)
                }
            }
        }
    }

    fn record(&mut self, probe: bool, success: bool) {
        match (self.state, probe, success) {
            (BreakerState::HalfOpen, true, true) => self.transition(BreakerState::Closed),
            (BreakerState::HalfOpen, true, false) => self.transition(BreakerState::Open),
            (BreakerState::Closed, _, true) => self.consecutive_failures = 0,
            (BreakerState::Closed, _, false) => {
                self.consecutive_failures += 1;
                if self.consecutive_failures >= self.config.failure_threshold {
                    self.transition(BreakerState::Open);
                }
            }
            // A call admitted before the circuit opened, ending late, changes nothing.
            _ => {}
        }
    }
}

impl Actor for BreakerActor {
    type Context = Context<Self>;
}

impl Supervised for BreakerActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // In-flight calls died with the old incarnation; start from a clean, closed state.
        self.transition(BreakerState::Closed);
    }
}

impl<T: 'static, E: 'static> Handler<Call<T, E>> for BreakerActor {
    type Result = ResponseActFuture<Self, Result<T, BreakerError<E>>>;

    fn handle(&mut self, msg: Call<T, E>, _: &mut Context<Self>) -> Self::Result {
        let name = self.config.name.clone();
        let probe = match self.admit() {
            Ok(probe) => probe,
            Err(retry_in) => {
                metrics()
                    .breaker_calls
                    .with_label_values(&[name.as_str(), "rejected"])
                    .inc();
                return Box::pin(actix::fut::ready(Err(BreakerError::Open { retry_in })));
            }
        };
        let limit = self.config.call_timeout;
        Box::pin(
            async move { tokio::time::timeout(limit, msg.fut).await }
                .into_actor(self)
                .map(move |result, act, _| {
                    let (label, outcome) = match result {
                        Ok(Ok(v)) => ("success", Ok(v)),
                        Ok(Err(e)) => ("failure", Err(BreakerError::Failed(e))),
                        Err(_) => ("timeout", Err(BreakerError::Timeout(limit))),
                    };
                    metrics()
                        .breaker_calls
                        .with_label_values(&[name.as_str(), label])
                        .inc();
                    act.record(probe, outcome.is_ok());
                    outcome
                }),
        )
    }
}

impl Handler<GetBreakerState> for BreakerActor {
    type Result = MessageResult<GetBreakerState>;

    fn handle(&mut self, _: GetBreakerState, _: &mut Context<Self>) -> Self::Result {
        // An open circuit whose timeout passed reports half-open only once probed; say open.
        MessageResult(self.state)
    }
}

impl Handler<GetRetryIn> for BreakerActor {
    type Result = MessageResult<GetRetryIn>;

    fn handle(&mut self, _: GetRetryIn, _: &mut Context<Self>) -> Self::Result {
        MessageResult(match self.state {
            BreakerState::Open => self
                .config
                .open_timeout
                .saturating_sub(self.opened_at.elapsed()),
            _ => Duration::ZERO,
        })
    }
}

impl ActorRef<BreakerActor> {
    /// Runs `fut` through the breaker.
    pub async fn call<T, E, F>(&self, fut: F) -> Result<T, BreakerError<E>>
    where
        T: Send + 'static,
        E: Send + 'static,
        F: std::future::Future<Output = Result<T, E>> + Send + 'static,
    {
        match self.send(Call::new(fut)).await {
            Ok(result) => result,
            // The breaker restarted mid-call: the call's fate is unknown; report a timeout.
            Err(_) => Err(BreakerError::Timeout(Duration::ZERO)),
        }
    }

    /// The breaker's state.
    pub async fn state(&self) -> Result<BreakerState, MailboxError> {
        self.send(GetBreakerState).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(threshold: u32, open_ms: u64, call_ms: u64) -> BreakerConfig {
        BreakerConfig {
            name: format!("test-{}", uuid::Uuid::new_v4()),
            failure_threshold: threshold,
            open_timeout: Duration::from_millis(open_ms),
            call_timeout: Duration::from_millis(call_ms),
        }
    }

    async fn fail(b: &ActorRef<BreakerActor>) -> Result<(), BreakerError<&'static str>> {
        b.call(async { Err::<(), _>("down") }).await
    }

    async fn succeed(b: &ActorRef<BreakerActor>) -> Result<(), BreakerError<&'static str>> {
        b.call(async { Ok::<(), &'static str>(()) }).await
    }

    #[actix::test]
    async fn opens_after_threshold_and_fails_fast() {
        let b = BreakerActor::start(config(3, 60_000, 1000));
        for _ in 0..2 {
            assert_eq!(fail(&b).await, Err(BreakerError::Failed("down")));
            assert_eq!(b.state().await.unwrap(), BreakerState::Closed);
        }
        assert_eq!(fail(&b).await, Err(BreakerError::Failed("down")));
        assert_eq!(b.state().await.unwrap(), BreakerState::Open);
        // Open: the downstream is not called at all.
        let called = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let c = called.clone();
        let r = b
            .call(async move {
                c.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok::<(), &'static str>(())
            })
            .await;
        assert!(matches!(r, Err(BreakerError::Open { .. })), "{r:?}");
        assert!(!called.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[actix::test]
    async fn a_success_resets_the_failure_count() {
        let b = BreakerActor::start(config(2, 60_000, 1000));
        fail(&b).await.unwrap_err();
        succeed(&b).await.unwrap();
        fail(&b).await.unwrap_err();
        assert_eq!(b.state().await.unwrap(), BreakerState::Closed);
    }

    #[actix::test]
    async fn half_open_probe_success_closes() {
        let b = BreakerActor::start(config(1, 50, 1000));
        fail(&b).await.unwrap_err();
        assert_eq!(b.state().await.unwrap(), BreakerState::Open);
        // Refused at once while open: the downstream is not called.
        assert!(matches!(succeed(&b).await, Err(BreakerError::Open { .. })));
        let retry_in = b.send(GetRetryIn).await.unwrap();
        tokio::time::sleep(retry_in + Duration::from_millis(1)).await;
        succeed(&b).await.unwrap();
        assert_eq!(b.state().await.unwrap(), BreakerState::Closed);
    }

    #[actix::test]
    async fn half_open_probe_failure_reopens_and_only_one_probe_goes() {
        let b = BreakerActor::start(config(1, 50, 1000));
        fail(&b).await.unwrap_err();
        let retry_in = b.send(GetRetryIn).await.unwrap();
        tokio::time::sleep(retry_in + Duration::from_millis(1)).await;
        // A probe that waits for the test to let it finish is in flight; a second call
        // meanwhile is refused.
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        let probe = {
            let b = b.clone();
            actix_rt::spawn(async move {
                b.call(async {
                    let _ = gate.await;
                    Err::<(), _>("still down")
                })
                .await
            })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.state().await.unwrap() != BreakerState::HalfOpen {
            assert!(Instant::now() < deadline, "the probe never started");
            tokio::task::yield_now().await;
        }
        assert!(matches!(succeed(&b).await, Err(BreakerError::Open { .. })));
        let _ = release.send(());
        assert_eq!(
            probe.await.unwrap(),
            Err(BreakerError::Failed("still down"))
        );
        assert_eq!(b.state().await.unwrap(), BreakerState::Open);
    }

    #[actix::test]
    async fn slow_calls_time_out_and_count_as_failures() {
        let b = BreakerActor::start(config(1, 60_000, 30));
        let r = b
            .call(async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<(), &'static str>(())
            })
            .await;
        assert_eq!(r, Err(BreakerError::Timeout(Duration::from_millis(30))));
        assert_eq!(b.state().await.unwrap(), BreakerState::Open);
    }

    #[actix::test]
    async fn state_is_exported_as_a_gauge() {
        let cfg = config(1, 60_000, 1000);
        let name = cfg.name.clone();
        let b = BreakerActor::start(cfg);
        fail(&b).await.unwrap_err();
        let g = metrics()
            .breaker_state
            .with_label_values(&[name.as_str()])
            .get();
        assert_eq!(g, 2);
    }
}
