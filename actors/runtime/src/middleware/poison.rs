//! Poison: a message that cannot be decoded is dead-lettered after a configured number of
//! deliveries (by default the first), so one bad payload never blocks a consumer.

use std::time::Duration;

use super::{BatchHandlerFn, HandlerFn, Inbound, Middleware, per_delivery};
use crate::outcome::{DeadLetterReason, Outcome};

/// Dead-letters undecodable messages once they were delivered `deliveries` times.
#[derive(Debug, Clone, Copy)]
pub struct Poison {
    deliveries: u32,
    delay: Duration,
}

impl Default for Poison {
    /// Dead-letter on the first delivery: a payload that does not decode never will.
    fn default() -> Self {
        Self::after_deliveries(1)
    }
}

impl Poison {
    /// Retries an undecodable message until its `deliveries`-th delivery, then dead-letters
    /// it (useful when producers and consumers deploy a new schema at different times).
    pub fn after_deliveries(deliveries: u32) -> Self {
        Self {
            deliveries: deliveries.max(1),
            delay: Duration::from_secs(1),
        }
    }

    /// The redelivery delay while waiting.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

impl Poison {
    fn apply(&self, outcome: Outcome, delivered: u32) -> Outcome {
        match outcome {
            Outcome::DeadLetter(DeadLetterReason::Poison(e)) if delivered < self.deliveries => {
                Outcome::retry_after(self.delay, format!("poison message: {e}"))
            }
            other => other,
        }
    }
}

impl Middleware for Poison {
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
    async fn default_dead_letters_at_once() {
        let h = Poison::default().wrap(always(Outcome::poison("not json")));
        assert_eq!(h(inbound("s", 1, 5)).await, Outcome::poison("not json"));
    }

    #[tokio::test]
    async fn configured_deliveries_retry_first() {
        let h = Poison::after_deliveries(3).wrap(always(Outcome::poison("x")));
        assert!(matches!(h(inbound("s", 2, 5)).await, Outcome::Retry { .. }));
        assert_eq!(h(inbound("s", 3, 5)).await, Outcome::poison("x"));
    }

    #[tokio::test]
    async fn other_outcomes_pass() {
        let h = Poison::default().wrap(always(Outcome::reject("no")));
        assert_eq!(h(inbound("s", 1, 5)).await, Outcome::reject("no"));
    }
}
