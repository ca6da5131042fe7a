//! Circuit breaker: a route whose handler keeps failing (a downstream that is down) stops
//! being called for a while, so the downstream gets room to recover.
//!
//! Every call of the handler goes through a [`BreakerActor`] (which counts, opens, probes and
//! exports `jetflow_breaker_state`). A call fails when it answers a retry (a dead letter or an
//! ack means the handler worked). While the circuit is open the handler is not called: the
//! delivery is held (its in-progress acks keep it alive, so it spends no delivery attempt)
//! until the breaker lets a call through again, for at most the layer's hold (60 s by
//! default), after which it is answered "retry later". On a batched route a batch is one call,
//! and it fails when every delivery in it asks for a retry; a batch the breaker cuts short
//! (its call timeout) is abandoned as a whole, like [`Timeout`] does.
//!
//! [`Timeout`]: super::Timeout

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{BatchHandlerFn, HandlerFn, Inbound, Middleware, all};
use crate::actor_ref::ActorRef;
use crate::breaker::{BreakerActor, BreakerConfig, BreakerError};
use crate::outcome::Outcome;

/// The least delay asked of JetStream for a delivery refused by an open circuit.
const MIN_RETRY: Duration = Duration::from_millis(100);
/// How long a delivery is held by an open circuit by default.
const HOLD: Duration = Duration::from_secs(60);

/// Calls the handler through a circuit breaker; clones (and routes given the same breaker)
/// share the circuit.
#[derive(Clone)]
pub struct CircuitBreaker {
    breaker: ActorRef<BreakerActor>,
    name: String,
    hold: Duration,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .finish()
    }
}

impl CircuitBreaker {
    /// Starts a supervised breaker with `config` (call inside an actix system).
    pub fn new(config: BreakerConfig) -> Self {
        let name = config.name.clone();
        Self {
            breaker: BreakerActor::start(config),
            name,
            hold: HOLD,
        }
    }

    /// How long a delivery waits for an open circuit before it is answered "retry later"
    /// (spending a delivery attempt); 60 s unless told.
    pub fn hold(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }

    /// Uses a breaker that is already running (shared with other callers of the downstream).
    pub fn with(breaker: ActorRef<BreakerActor>, name: impl Into<String>) -> Self {
        Self {
            breaker,
            name: name.into(),
            hold: HOLD,
        }
    }

    /// The breaker actor.
    pub fn breaker(&self) -> &ActorRef<BreakerActor> {
        &self.breaker
    }
}

/// The outcome for a delivery whose call the breaker did not let finish.
fn refused(name: &str, e: &BreakerError<()>) -> Outcome {
    match e {
        BreakerError::Open { retry_in } => Outcome::retry_after(
            (*retry_in).max(MIN_RETRY),
            format!("circuit {name} is open; handler not called"),
        ),
        BreakerError::Timeout(d) => Outcome::retry(format!(
            "circuit {name}: the handler took longer than {d:?}"
        )),
        BreakerError::Failed(()) => Outcome::retry(format!("circuit {name}: the call failed")),
    }
}

/// Calls `call()` through `breaker` until it is let through, holding while the circuit is
/// open for at most `hold`; `refuse` builds the answer for a call that never went.
async fn through<T, F, Fut>(
    breaker: &ActorRef<BreakerActor>,
    hold: Duration,
    call: F,
    refuse: impl Fn(BreakerError<()>) -> T,
) -> T
where
    T: Send + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, T>> + Send + 'static,
{
    let held_since = Instant::now();
    loop {
        match breaker.call(call()).await {
            Ok(o) | Err(BreakerError::Failed(o)) => return o,
            Err(BreakerError::Timeout(d)) => return refuse(BreakerError::Timeout(d)),
            Err(BreakerError::Open { retry_in }) => {
                let wait = retry_in.max(MIN_RETRY);
                if held_since.elapsed() + wait > hold {
                    return refuse(BreakerError::Open { retry_in });
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

impl Middleware for CircuitBreaker {
    fn wrap(&self, next: HandlerFn) -> HandlerFn {
        let (breaker, name) = (self.breaker.clone(), Arc::<str>::from(self.name.as_str()));
        let hold = self.hold;
        Arc::new(move |inbound: Inbound| {
            let (next, breaker, name) = (next.clone(), breaker.clone(), Arc::clone(&name));
            Box::pin(async move {
                // The handler is called inside the breaker's call: not at all while open.
                let call = || {
                    let (next, inbound) = (next.clone(), inbound.clone());
                    async move {
                        match next(inbound).await {
                            o @ Outcome::Retry { .. } => Err(o),
                            o => Ok(o),
                        }
                    }
                };
                through(&breaker, hold, call, |e| refused(&name, &e)).await
            })
        })
    }

    fn wrap_batch(&self, next: BatchHandlerFn) -> Result<BatchHandlerFn, &'static str> {
        let (breaker, name) = (self.breaker.clone(), Arc::<str>::from(self.name.as_str()));
        let hold = self.hold;
        Ok(Arc::new(move |batch: Vec<Inbound>| {
            let n = batch.len();
            let (next, breaker, name) = (next.clone(), breaker.clone(), Arc::clone(&name));
            Box::pin(async move {
                let call = || {
                    let (next, batch) = (next.clone(), batch.clone());
                    async move {
                        let outcomes = next(batch).await;
                        if !outcomes.is_empty()
                            && outcomes.iter().all(|o| matches!(o, Outcome::Retry { .. }))
                        {
                            Err(outcomes)
                        } else {
                            Ok(outcomes)
                        }
                    }
                };
                through(&breaker, hold, call, |e| all(n, &refused(&name, &e))).await
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::super::test_support::*;
    use super::*;
    use crate::breaker::BreakerState;

    fn config(threshold: u32, open: Duration) -> BreakerConfig {
        BreakerConfig {
            name: format!("layer-{}", uuid::Uuid::new_v4().simple()),
            failure_threshold: threshold,
            open_timeout: open,
            call_timeout: Duration::from_secs(2),
        }
    }

    /// A batch handler that counts its calls and answers `ok` or a retry for every delivery.
    fn counting(calls: Arc<AtomicUsize>, ok: Arc<std::sync::atomic::AtomicBool>) -> BatchHandlerFn {
        Arc::new(move |batch: Vec<Inbound>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let o = if ok.load(Ordering::SeqCst) {
                Outcome::Ack
            } else {
                Outcome::retry("downstream down")
            };
            Box::pin(async move { vec![o; batch.len()] })
        })
    }

    #[actix::test]
    async fn an_open_circuit_holds_a_batch_without_calling_the_handler_until_a_probe_goes() {
        let open = Duration::from_millis(300);
        let layer = CircuitBreaker::new(config(3, open));
        let calls = Arc::new(AtomicUsize::new(0));
        let ok = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let h = layer
            .wrap_batch(counting(calls.clone(), ok.clone()))
            .expect("a batch form");
        for _ in 0..3 {
            let out = h(vec![inbound("s", 1, 5), inbound("s", 1, 5)]).await;
            assert!(
                out.iter()
                    .all(|o| matches!(o, Outcome::Retry { delay: None, .. }))
            );
        }
        assert_eq!(layer.breaker().state().await.ok(), Some(BreakerState::Open));
        let opened = std::time::Instant::now();
        // The downstream is back; the next batch waits for the probe instead of being
        // answered "retry" (which would spend a delivery attempt), then is handled.
        ok.store(true, Ordering::SeqCst);
        let out = h(vec![inbound("s", 1, 5), inbound("s", 1, 5)]).await;
        assert_eq!(out, vec![Outcome::Ack, Outcome::Ack]);
        assert!(opened.elapsed() >= open / 2, "held: {:?}", opened.elapsed());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "no call while open, then one probe"
        );
        assert_eq!(
            layer.breaker().state().await.ok(),
            Some(BreakerState::Closed)
        );
    }

    #[actix::test]
    async fn a_batch_that_partly_succeeds_is_not_a_failure() {
        let layer = CircuitBreaker::new(config(1, Duration::from_secs(60)));
        let h = layer
            .wrap_batch(Arc::new(|batch: Vec<Inbound>| {
                Box::pin(async move {
                    let mut out = vec![Outcome::retry("one key is busy"); batch.len()];
                    out[0] = Outcome::Ack;
                    out
                })
            }))
            .expect("a batch form");
        for _ in 0..3 {
            h(vec![inbound("s", 1, 5), inbound("s", 1, 5)]).await;
        }
        assert_eq!(
            layer.breaker().state().await.ok(),
            Some(BreakerState::Closed)
        );
    }

    #[actix::test]
    async fn one_delivery_at_a_time_dead_letters_do_not_open_the_circuit() {
        let layer = CircuitBreaker::new(config(2, Duration::from_millis(200)))
            .hold(Duration::from_millis(700));
        let poison = layer.wrap(always(Outcome::poison("bad json")));
        for _ in 0..3 {
            assert!(matches!(
                poison(inbound("s", 1, 5)).await,
                Outcome::DeadLetter(_)
            ));
        }
        assert_eq!(
            layer.breaker().state().await.ok(),
            Some(BreakerState::Closed)
        );
        let failing = layer.wrap(always(Outcome::retry("down")));
        failing(inbound("s", 1, 5)).await;
        failing(inbound("s", 1, 5)).await;
        assert_eq!(layer.breaker().state().await.ok(), Some(BreakerState::Open));
        // Held until the probe, which is a real call: it fails, and that is the answer.
        let started = std::time::Instant::now();
        let out = failing(inbound("s", 1, 5)).await;
        assert!(
            matches!(&out, Outcome::Retry { reason, .. } if reason == "down"),
            "{out:?}"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
        // A circuit that stays open longer than the hold answers "retry later" at once.
        let long = CircuitBreaker::new(config(1, Duration::from_secs(60)))
            .hold(Duration::from_millis(300));
        let failing = long.wrap(always(Outcome::retry("down")));
        failing(inbound("s", 1, 5)).await;
        let out = failing(inbound("s", 1, 5)).await;
        assert!(
            matches!(&out, Outcome::Retry { delay: Some(_), reason } if reason.contains("open")),
            "{out:?}"
        );
    }
}
