//! Circuit breaker: a route whose handler keeps failing (a downstream that is down) stops
//! being called for a while, so the downstream gets room to recover and the deliveries wait
//! in the stream instead of burning their attempts.
//!
//! Every call of the handler goes through a [`BreakerActor`] (which counts, opens, probes and
//! exports `jetflow_breaker_state`). A call fails when it answers a retry (a dead letter or an
//! ack means the handler worked). While the circuit is open the handler is not called: each
//! delivery is answered "retry when the circuit lets a probe through". On a batched route a
//! batch is one call, and it fails when every delivery in it asks for a retry; a batch the
//! breaker cuts short (its call timeout) is abandoned as a whole, like [`Timeout`] does.
//!
//! [`Timeout`]: super::Timeout

use std::sync::Arc;
use std::time::Duration;

use super::{BatchHandlerFn, HandlerFn, Inbound, Middleware, all};
use crate::actor_ref::ActorRef;
use crate::breaker::{BreakerActor, BreakerConfig, BreakerError};
use crate::outcome::Outcome;

/// The least delay asked of JetStream for a delivery refused by an open circuit.
const MIN_RETRY: Duration = Duration::from_millis(100);

/// Calls the handler through a circuit breaker; clones (and routes given the same breaker)
/// share the circuit.
#[derive(Clone)]
pub struct CircuitBreaker {
    breaker: ActorRef<BreakerActor>,
    name: String,
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
        }
    }

    /// Uses a breaker that is already running (shared with other callers of the downstream).
    pub fn with(breaker: ActorRef<BreakerActor>, name: impl Into<String>) -> Self {
        Self {
            breaker,
            name: name.into(),
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

impl Middleware for CircuitBreaker {
    fn wrap(&self, next: HandlerFn) -> HandlerFn {
        let (breaker, name) = (self.breaker.clone(), Arc::<str>::from(self.name.as_str()));
        Arc::new(move |inbound: Inbound| {
            let (next, breaker, name) = (next.clone(), breaker.clone(), Arc::clone(&name));
            Box::pin(async move {
                // The handler is called inside the breaker's call: not at all while open.
                let call = async move {
                    match next(inbound).await {
                        o @ Outcome::Retry { .. } => Err(o),
                        o => Ok(o),
                    }
                };
                match breaker.call(call).await {
                    Ok(o) | Err(BreakerError::Failed(o)) => o,
                    Err(BreakerError::Open { retry_in }) => {
                        refused(&name, &BreakerError::Open { retry_in })
                    }
                    Err(BreakerError::Timeout(d)) => refused(&name, &BreakerError::Timeout(d)),
                }
            })
        })
    }

    fn wrap_batch(&self, next: BatchHandlerFn) -> Result<BatchHandlerFn, &'static str> {
        let (breaker, name) = (self.breaker.clone(), Arc::<str>::from(self.name.as_str()));
        Ok(Arc::new(move |batch: Vec<Inbound>| {
            let n = batch.len();
            let (next, breaker, name) = (next.clone(), breaker.clone(), Arc::clone(&name));
            Box::pin(async move {
                let call = async move {
                    let outcomes = next(batch).await;
                    if !outcomes.is_empty()
                        && outcomes.iter().all(|o| matches!(o, Outcome::Retry { .. }))
                    {
                        Err(outcomes)
                    } else {
                        Ok(outcomes)
                    }
                };
                match breaker.call(call).await {
                    Ok(o) | Err(BreakerError::Failed(o)) => o,
                    Err(BreakerError::Open { retry_in }) => {
                        all(n, &refused(&name, &BreakerError::Open { retry_in }))
                    }
                    Err(BreakerError::Timeout(d)) => {
                        all(n, &refused(&name, &BreakerError::Timeout(d)))
                    }
                }
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
    async fn an_open_circuit_stops_calling_the_batch_handler_then_a_probe_closes_it() {
        let layer = CircuitBreaker::new(config(3, Duration::from_millis(300)));
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
        // Open: the handler is not called; each delivery waits for the probe.
        let out = h(vec![inbound("s", 1, 5), inbound("s", 1, 5)]).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3, "no call while open");
        assert_eq!(out.len(), 2);
        for o in &out {
            match o {
                Outcome::Retry {
                    delay: Some(d),
                    reason,
                } => {
                    assert!(*d >= MIN_RETRY && *d <= Duration::from_millis(300), "{d:?}");
                    assert!(reason.contains("open"), "{reason}");
                }
                other => panic!("expected a delayed retry, got {other:?}"),
            }
        }
        // After the open timeout one probe goes through; its success closes the circuit.
        ok.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let out = h(vec![inbound("s", 1, 5)]).await;
            if out == vec![Outcome::Ack] {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the circuit never closed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 4, "exactly one probe call");
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
        let layer = CircuitBreaker::new(config(2, Duration::from_secs(60)));
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
        let out = failing(inbound("s", 1, 5)).await;
        assert!(
            matches!(&out, Outcome::Retry { delay: Some(_), reason } if reason.contains("open")),
            "{out:?}"
        );
    }
}
