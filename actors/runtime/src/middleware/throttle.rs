//! Throttle: at most N deliveries per second start on a route, to protect a downstream that
//! cannot take the consumer's full speed. Excess deliveries wait (they are already counted
//! against `max_ack_pending`, so JetStream stops sending more).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{HandlerFn, Inbound, Middleware};

/// Spaces handler starts at least `1/per_second` apart.
#[derive(Debug, Clone)]
pub struct Throttle {
    interval: Duration,
    next_slot: Arc<Mutex<Option<Instant>>>,
}

impl Throttle {
    /// At most `per_second` starts per second (at least one).
    pub fn per_second(per_second: u32) -> Self {
        Self {
            interval: Duration::from_secs(1) / per_second.max(1),
            next_slot: Arc::new(Mutex::new(None)),
        }
    }

    /// Reserves the next start time.
    fn reserve(&self) -> Instant {
        let now = Instant::now();
        let mut slot = match self.next_slot.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let start = slot.map_or(now, |s| s.max(now));
        *slot = Some(start + self.interval);
        start
    }
}

impl Middleware for Throttle {
    fn wrap(&self, next: HandlerFn) -> HandlerFn {
        let throttle = self.clone();
        Arc::new(move |inbound: Inbound| {
            let start = throttle.reserve();
            let next = next.clone();
            Box::pin(async move {
                tokio::time::sleep_until(start.into()).await;
                next(inbound).await
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::outcome::Outcome;

    #[tokio::test]
    async fn spaces_starts_apart() {
        let t = Throttle::per_second(100); // 10 ms apart
        let h = t.wrap(always(Outcome::Ack));
        let begin = Instant::now();
        let runs: Vec<_> = (0..5).map(|_| h(inbound("s", 1, 5))).collect();
        for r in futures::future::join_all(runs).await {
            assert_eq!(r, Outcome::Ack);
        }
        // Five starts need at least four intervals.
        assert!(
            begin.elapsed() >= Duration::from_millis(40),
            "{:?}",
            begin.elapsed()
        );
    }
}
