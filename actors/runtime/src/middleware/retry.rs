//! Retry: a retry that names no delay gets one from an exponential schedule with jitter
//! ([`Backoff`]), by delivery count, so a failing dependency is not hammered.

use std::time::Duration;

use super::{BatchHandlerFn, HandlerFn, Inbound, Middleware, per_delivery};
use crate::backoff::Backoff;
use crate::outcome::Outcome;

/// Fills in retry delays: `min · 2^(delivered-1)`, capped at `max`, with jitter.
#[derive(Debug, Clone, Copy)]
pub struct Retry(Backoff);

impl Default for Retry {
    /// 500 ms, doubling, at most 30 s, with jitter.
    fn default() -> Self {
        Self::exponential(Duration::from_millis(500), Duration::from_secs(30))
    }
}

impl Retry {
    /// A schedule from `min` doubling up to `max`.
    pub fn exponential(min: Duration, max: Duration) -> Self {
        Self(Backoff::exponential(min, max))
    }

    /// Turns jitter off (for deterministic tests).
    pub fn without_jitter(self) -> Self {
        Self(self.0.without_jitter())
    }

    /// The delay before redelivery number `delivered + 1`.
    pub fn delay_for(&self, delivered: u32) -> Duration {
        self.0.delay_for(delivered)
    }

    /// `outcome` with a delay filled in, if it is a retry without one.
    pub fn apply(&self, outcome: Outcome, delivered: u32) -> Outcome {
        match outcome {
            Outcome::Retry {
                delay: None,
                reason,
            } => Outcome::Retry {
                delay: Some(self.delay_for(delivered)),
                reason,
            },
            other => other,
        }
    }
}

impl Middleware for Retry {
    fn wrap(&self, next: HandlerFn) -> HandlerFn {
        let policy = *self;
        std::sync::Arc::new(move |inbound: Inbound| {
            let delivered = inbound.meta.delivered;
            let fut = next(inbound);
            Box::pin(async move { policy.apply(fut.await, delivered) })
        })
    }

    fn wrap_batch(&self, next: BatchHandlerFn) -> Result<BatchHandlerFn, &'static str> {
        let policy = *self;
        Ok(per_delivery(next, move |o, meta| {
            policy.apply(o, meta.delivered)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[tokio::test]
    async fn fills_in_missing_delays_only() {
        let r =
            Retry::exponential(Duration::from_millis(100), Duration::from_secs(1)).without_jitter();
        let h = r.wrap(always(Outcome::retry("db down")));
        assert_eq!(
            h(inbound("s", 3, 5)).await,
            Outcome::retry_after(Duration::from_millis(400), "db down")
        );
        let explicit = Outcome::retry_after(Duration::from_secs(7), "breaker open");
        let h = r.wrap(always(explicit.clone()));
        assert_eq!(h(inbound("s", 1, 5)).await, explicit);
    }
}
