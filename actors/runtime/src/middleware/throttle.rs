//! Throttle: at most N deliveries per second start on a route, to protect a downstream that
//! cannot take the consumer's full speed (a GCRA rate limiter from `governor`). Excess
//! deliveries wait (they are already counted against `max_ack_pending`, so JetStream stops
//! sending more); a batch waits until the rate allows all its deliveries.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::{BatchHandlerFn, HandlerFn, Inbound, Middleware};

/// At most `per_second` deliveries start per second, in bursts of at most `per_second`.
#[derive(Debug, Clone)]
pub struct Throttle {
    limiter: Arc<DefaultDirectRateLimiter>,
    burst: NonZeroU32,
}

impl Throttle {
    /// At most `per_second` starts per second (at least one).
    pub fn per_second(per_second: u32) -> Self {
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: Arc::new(RateLimiter::direct(Quota::per_second(rate))),
            burst: rate,
        }
    }

    /// Waits until `n` deliveries may start (in bursts the quota allows).
    async fn admit(&self, mut n: u32) {
        while n > 0 {
            let take = n.min(self.burst.get());
            if let Some(k) = NonZeroU32::new(take) {
                // `take` never exceeds the burst, so the capacity always suffices.
                let _ = self.limiter.until_n_ready(k).await;
            }
            n -= take;
        }
    }
}

impl Middleware for Throttle {
    fn wrap(&self, next: HandlerFn) -> HandlerFn {
        let throttle = self.clone();
        Arc::new(move |inbound: Inbound| {
            let (throttle, next) = (throttle.clone(), next.clone());
            Box::pin(async move {
                throttle.admit(1).await;
                next(inbound).await
            })
        })
    }

    fn wrap_batch(&self, next: BatchHandlerFn) -> Result<BatchHandlerFn, &'static str> {
        let throttle = self.clone();
        Ok(Arc::new(move |batch: Vec<Inbound>| {
            let (throttle, next) = (throttle.clone(), next.clone());
            Box::pin(async move {
                throttle
                    .admit(u32::try_from(batch.len()).unwrap_or(u32::MAX))
                    .await;
                next(batch).await
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::test_support::*;
    use super::*;
    use crate::outcome::Outcome;

    #[tokio::test]
    async fn spaces_starts_apart() {
        let t = Throttle::per_second(100);
        let h = t.wrap(always(Outcome::Ack));
        let begin = Instant::now();
        // The first 100 pass at once (the burst); the next 5 need about 10 ms each.
        let runs: Vec<_> = (0..105).map(|_| h(inbound("s", 1, 5))).collect();
        for r in futures::future::join_all(runs).await {
            assert_eq!(r, Outcome::Ack);
        }
        assert!(
            begin.elapsed() >= Duration::from_millis(40),
            "{:?}",
            begin.elapsed()
        );
    }

    #[tokio::test]
    async fn a_batch_waits_for_the_rate_of_all_its_deliveries() {
        let t = Throttle::per_second(50);
        let h = t
            .wrap_batch(Arc::new(|batch: Vec<Inbound>| {
                Box::pin(async move { vec![Outcome::Ack; batch.len()] })
            }))
            .expect("a batch form");
        let begin = Instant::now();
        // 50 at once, then 25 more at 50/s: about half a second.
        assert_eq!(
            h((0..50).map(|_| inbound("s", 1, 5)).collect()).await.len(),
            50
        );
        assert_eq!(
            h((0..25).map(|_| inbound("s", 1, 5)).collect()).await.len(),
            25
        );
        let took = begin.elapsed();
        assert!(took >= Duration::from_millis(400), "{took:?}");
    }
}
