//! Concurrency limit: at most N deliveries of a route (or of every route sharing the limit)
//! are handled at once, to protect a downstream that takes only so many calls in flight. A
//! batch takes as many places as it has deliveries (at most N), and waits for them.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::{BatchHandlerFn, HandlerFn, Inbound, Middleware};

/// At most `n` deliveries in flight; clones share the places.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit {
    places: Arc<Semaphore>,
    n: u32,
}

impl ConcurrencyLimit {
    /// At most `n` (at least one) deliveries at once.
    pub fn new(n: u32) -> Self {
        let n = n.max(1);
        Self {
            places: Arc::new(Semaphore::new(n as usize)),
            n,
        }
    }

    /// Deliveries in flight now.
    pub fn in_flight(&self) -> usize {
        self.n as usize - self.places.available_permits()
    }
}

impl Middleware for ConcurrencyLimit {
    fn wrap(&self, next: HandlerFn) -> HandlerFn {
        let places = Arc::clone(&self.places);
        Arc::new(move |inbound: Inbound| {
            let (places, next) = (Arc::clone(&places), next.clone());
            Box::pin(async move {
                // The semaphore is never closed.
                let _place = places.acquire_owned().await.ok();
                next(inbound).await
            })
        })
    }

    fn wrap_batch(&self, next: BatchHandlerFn) -> Result<BatchHandlerFn, &'static str> {
        let (places, n) = (Arc::clone(&self.places), self.n);
        Ok(Arc::new(move |batch: Vec<Inbound>| {
            let (places, next) = (Arc::clone(&places), next.clone());
            let wanted = u32::try_from(batch.len()).unwrap_or(u32::MAX).clamp(1, n);
            Box::pin(async move {
                let _places = places.acquire_many_owned(wanted).await.ok();
                next(batch).await
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::super::test_support::*;
    use super::*;
    use crate::outcome::Outcome;

    #[tokio::test]
    async fn batches_share_the_places_and_never_exceed_them() {
        let limit = ConcurrencyLimit::new(4);
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (n, m) = (now.clone(), most.clone());
        let h = limit
            .wrap_batch(Arc::new(move |batch: Vec<Inbound>| {
                let (n, m) = (n.clone(), m.clone());
                Box::pin(async move {
                    let here = n.fetch_add(batch.len(), Ordering::SeqCst) + batch.len();
                    m.fetch_max(here, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    n.fetch_sub(batch.len(), Ordering::SeqCst);
                    vec![Outcome::Ack; batch.len()]
                })
            }))
            .expect("a batch form");
        let batches = (0..6).map(|_| h(vec![inbound("s", 1, 5), inbound("s", 1, 5)]));
        futures::future::join_all(batches).await;
        assert_eq!(
            most.load(Ordering::SeqCst),
            4,
            "two batches of two at a time"
        );
        assert_eq!(limit.in_flight(), 0);
    }
}
