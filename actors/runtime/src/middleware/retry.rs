//! Retry: a retry that names no delay gets one from an exponential schedule with jitter
//! (computed by `backon`), by delivery count, so a failing dependency is not hammered.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use super::{HandlerFn, Inbound, Middleware};
use crate::outcome::Outcome;

/// Fills in retry delays: `min · 2^(delivered-1)`, capped at `max`, with jitter.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    min: Duration,
    max: Duration,
    jitter: bool,
}

impl Default for Retry {
    /// 500 ms, doubling, at most 30 s, with jitter.
    fn default() -> Self {
        Self {
            min: Duration::from_millis(500),
            max: Duration::from_secs(30),
            jitter: true,
        }
    }
}

impl Retry {
    /// A schedule from `min` doubling up to `max`.
    pub fn exponential(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            jitter: true,
        }
    }

    /// Turns jitter off (for deterministic tests).
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// The delay before redelivery number `delivered + 1`.
    pub fn delay_for(&self, delivered: u32) -> Duration {
        let mut builder = ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .without_max_times();
        if self.jitter {
            builder = builder.with_jitter();
        }
        let delay = builder
            .build()
            .nth(delivered.saturating_sub(1) as usize)
            .unwrap_or(self.max);
        // backon computes in floating point; whole milliseconds are what NATS gets anyway.
        Duration::from_millis(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
    }
}

impl Middleware for Retry {
    fn wrap(&self, next: HandlerFn) -> HandlerFn {
        let policy = *self;
        std::sync::Arc::new(move |inbound: Inbound| {
            let delivered = inbound.meta.delivered;
            let fut = next(inbound);
            Box::pin(async move {
                match fut.await {
                    Outcome::Retry {
                        delay: None,
                        reason,
                    } => Outcome::Retry {
                        delay: Some(policy.delay_for(delivered)),
                        reason,
                    },
                    other => other,
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn schedule_doubles_and_caps() {
        let r = Retry::exponential(Duration::from_millis(100), Duration::from_millis(500))
            .without_jitter();
        let delays: Vec<_> = (1..=5).map(|d| r.delay_for(d).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
    }

    #[test]
    fn jitter_stays_within_one_step() {
        let r = Retry::exponential(Duration::from_millis(100), Duration::from_secs(10));
        for _ in 0..50 {
            let d = r.delay_for(2);
            assert!(
                d >= Duration::from_millis(200) && d <= Duration::from_millis(400),
                "{d:?}"
            );
        }
    }

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
