//! Backoff, in one place: every wait before a new attempt in the runtime (a redelivery, an
//! actor restart, an outbox retry, a reconnect) comes from here, computed by `backon`:
//! exponential from a minimum, capped, with jitter so that many retriers do not move in step.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// An exponential schedule: `min · 2^(attempt-1)`, at most `max`, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub min: Duration,
    /// The longest delay.
    pub max: Duration,
    /// Whether to add up to one more step at random.
    pub jitter: bool,
}

impl Backoff {
    /// A schedule from `min` doubling up to `max`, with jitter.
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

    /// The builder for `backon`'s `Retryable` (unlimited attempts).
    pub fn builder(&self) -> ExponentialBuilder {
        let builder = ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .without_max_times();
        if self.jitter {
            builder.with_jitter()
        } else {
            builder
        }
    }

    /// The delay before attempt `attempt + 1` (attempt 1 waits `min`).
    pub fn delay_for(&self, attempt: u32) -> Duration {
        let delay = self
            .builder()
            .build()
            .nth(attempt.saturating_sub(1) as usize)
            .unwrap_or(self.max);
        // backon computes in floating point; whole milliseconds are what timers and NATS get.
        Duration::from_millis(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_doubles_and_caps() {
        let b = Backoff::exponential(Duration::from_millis(100), Duration::from_millis(500))
            .without_jitter();
        let delays: Vec<_> = (1..=5).map(|d| b.delay_for(d).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
    }

    #[test]
    fn jitter_stays_within_one_step() {
        let b = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10));
        for _ in 0..50 {
            let d = b.delay_for(2);
            assert!(
                d >= Duration::from_millis(200) && d <= Duration::from_millis(400),
                "{d:?}"
            );
        }
    }
}
