//! Admission: the gateway accepts orders only while the saga keeps up.
//!
//! Under sustained overload an unbounded backlog only grows, and the orders at its end wait
//! longer than `JETFLOW_ORDER_TIMEOUT`, so the sweeper cancels orders that only waited in
//! line. With a bound (`JETFLOW_MAX_BACKLOG`), the gateway refuses new orders while the saga's
//! first step has more than that many `orders.created` events not yet handled: `503` with
//! `Retry-After`, decided before anything is stored, so the `503` means nothing happened. The
//! backlog is read from JetStream (the inventory consumers' pending and unacknowledged
//! messages) by [`Admission::watch`], so a gateway deployed apart from the saga sees it too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::{HttpRequest, web};

use crate::error::ApiError;

/// How long a refused client is asked to wait.
const RETRY_AFTER_SECS: u64 = 2;

/// The bound and the backlog last read (the app's data; without it, no bound).
#[derive(Debug, Clone)]
pub struct Admission {
    max: u64,
    backlog: Arc<AtomicU64>,
}

impl Admission {
    /// Orders are refused while more than `max` events wait for the saga (0: never).
    pub fn new(max: u64) -> Self {
        Self {
            max,
            backlog: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The events waiting for the saga, as last read.
    pub fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Records the backlog just read.
    pub fn set_backlog(&self, n: u64) {
        self.backlog.store(n, Ordering::Relaxed);
    }

    /// Whether a new order may be accepted now.
    pub fn check(&self) -> Result<(), ApiError> {
        let backlog = self.backlog();
        if self.max > 0 && backlog > self.max {
            return Err(ApiError::unavailable(
                "backlogged",
                format!(
                    "{backlog} orders wait for the saga (more than JETFLOW_MAX_BACKLOG = {}); nothing was stored, try again later",
                    self.max
                ),
            )
            .retry_after(RETRY_AFTER_SECS));
        }
        Ok(())
    }

    /// The app's admission (no bound when the app has none).
    pub fn of(req: &HttpRequest) -> Option<Self> {
        req.app_data::<web::Data<Admission>>()
            .map(|a| a.get_ref().clone())
    }

    /// Reads the backlog every `every` with `read` (the number of events waiting, or `None`
    /// when it cannot be read: the last figure stands) until the task is dropped.
    pub async fn watch<F, Fut>(self, every: Duration, mut read: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<u64>>,
    {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Some(n) = read().await {
                self.set_backlog(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_refused_only_past_the_bound_and_never_without_one() {
        let a = Admission::new(100);
        a.set_backlog(100);
        assert!(a.check().is_ok(), "at the bound");
        a.set_backlog(101);
        let e = a.check().expect_err("past it");
        assert_eq!(
            (e.status.as_u16(), e.code, e.retry_after),
            (503, "backlogged", Some(2))
        );
        let unbounded = Admission::new(0);
        unbounded.set_backlog(u64::MAX);
        assert!(unbounded.check().is_ok());
    }
}
