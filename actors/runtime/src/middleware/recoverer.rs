//! Recoverer: a panic while handling a delivery becomes a retry, never a dead consumer.
//!
//! Panics inside a supervised actor already restart that actor; this catches the ones that
//! happen in the route itself (a decoder, a middleware, a `ResponseFuture`).

use std::panic::AssertUnwindSafe;

use futures::FutureExt;

use super::{BatchHandlerFn, HandlerFn, Inbound, Middleware, all};
use crate::outcome::Outcome;
use crate::supervisor::panic_message;

/// Turns a panic into `Outcome::Retry`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Recoverer;

impl Middleware for Recoverer {
    fn wrap(&self, next: HandlerFn) -> HandlerFn {
        std::sync::Arc::new(move |inbound: Inbound| {
            let subject = inbound.meta.subject.clone();
            let next = next.clone();
            Box::pin(async move {
                let attempt = std::panic::catch_unwind(AssertUnwindSafe(|| next(inbound)));
                let result = match attempt {
                    Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
                    Err(payload) => Err(payload),
                };
                match result {
                    Ok(outcome) => outcome,
                    Err(payload) => {
                        let message = panic_message(payload.as_ref());
                        tracing::error!(%subject, panic = %message, "handler panicked");
                        Outcome::retry(format!("handler panicked: {message}"))
                    }
                }
            })
        })
    }

    fn wrap_batch(&self, next: BatchHandlerFn) -> Result<BatchHandlerFn, &'static str> {
        Ok(std::sync::Arc::new(move |batch: Vec<Inbound>| {
            let n = batch.len();
            let next = next.clone();
            Box::pin(async move {
                let attempt = std::panic::catch_unwind(AssertUnwindSafe(|| next(batch)));
                let result = match attempt {
                    Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
                    Err(payload) => Err(payload),
                };
                result.unwrap_or_else(|payload| {
                    let message = panic_message(payload.as_ref());
                    tracing::error!(panic = %message, deliveries = n, "batch route panicked");
                    all(n, &Outcome::retry(format!("route panicked: {message}")))
                })
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::handler_fn;
    use super::super::test_support::*;
    use super::*;

    #[tokio::test]
    async fn a_panicking_future_becomes_a_retry() {
        let h = Recoverer.wrap(handler_fn(|_| async { panic!("boom") }));
        match h(inbound("s", 1, 5)).await {
            Outcome::Retry { reason, .. } => assert!(reason.contains("boom"), "{reason}"),
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_call_becomes_a_retry() {
        let h: HandlerFn = std::sync::Arc::new(|_| panic!("sync boom"));
        let h = Recoverer.wrap(h);
        assert!(matches!(h(inbound("s", 1, 5)).await, Outcome::Retry { .. }));
    }
}
