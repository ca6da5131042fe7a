//! Policies around a route's handler, one file each, composed like Watermill's router
//! middleware and tower's layers.
//!
//! A route's handler is a [`HandlerFn`] (raw delivery in, [`Outcome`] out) or, on a batched
//! route, a [`BatchHandlerFn`] (a batch in, one outcome per delivery out). A [`Middleware`]
//! wraps either into another of its kind: every policy here applies to both, and one that
//! cannot apply to a batch says so ([`Middleware::wrap_batch`]), so `Route::layer` refuses it
//! when the route is built instead of skipping it. Routes get [`default_stack`] (or
//! [`default_batch_stack`]) unless told otherwise; a service adds policies per route with
//! `Route::layer`.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::delivery::DeliveryMeta;
use crate::outcome::Outcome;
pub use crate::route::BatchHandlerFn;

mod circuit;
mod concurrency;
mod correlation;
mod poison;
mod recoverer;
mod retry;
mod throttle;
mod timeout;

pub use circuit::CircuitBreaker;
pub use concurrency::ConcurrencyLimit;
pub use correlation::Correlation;
pub use poison::Poison;
pub use recoverer::Recoverer;
pub use retry::Retry;
pub use throttle::Throttle;
pub use timeout::Timeout;

/// A delivery before decoding: what middleware sees.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The raw payload.
    pub payload: Bytes,
    /// Facts about the delivery.
    pub meta: DeliveryMeta,
}

/// A handler of raw deliveries.
pub type HandlerFn = Arc<dyn Fn(Inbound) -> BoxFuture<'static, Outcome> + Send + Sync>;

/// A policy that wraps a handler.
pub trait Middleware: Send + Sync + 'static {
    /// Returns a handler that applies this policy around `next`.
    fn wrap(&self, next: HandlerFn) -> HandlerFn;

    /// Returns a batch handler that applies this policy around `next`, or why it cannot
    /// (then a batched route refuses the layer when it is built).
    fn wrap_batch(&self, next: BatchHandlerFn) -> Result<BatchHandlerFn, &'static str> {
        let _ = next;
        Err("it has no batch form")
    }

    /// The policy's name, for errors.
    fn name(&self) -> &'static str {
        let full = std::any::type_name::<Self>();
        full.rsplit("::").next().unwrap_or(full)
    }
}

/// A layer that a route could not take: a start-up error with one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route {route}: the {layer} layer cannot apply: {why}")]
pub struct LayerRefused {
    /// The route's target.
    pub route: String,
    /// The layer.
    pub layer: &'static str,
    /// Why.
    pub why: &'static str,
}

/// A batch handler that maps each delivery's outcome with `f` (policies that decide per
/// delivery, such as [`Retry`] and [`Poison`]).
pub(crate) fn per_delivery(
    next: BatchHandlerFn,
    f: impl Fn(Outcome, &DeliveryMeta) -> Outcome + Send + Sync + 'static,
) -> BatchHandlerFn {
    let f = Arc::new(f);
    Arc::new(move |batch: Vec<Inbound>| {
        let metas: Vec<DeliveryMeta> = batch.iter().map(|i| i.meta.clone()).collect();
        let fut = next(batch);
        let f = Arc::clone(&f);
        Box::pin(async move {
            fut.await
                .into_iter()
                .zip(&metas)
                .map(|(o, m)| f(o, m))
                .collect()
        })
    })
}

/// The same outcome for every delivery of a batch of `n`.
pub(crate) fn all(n: usize, outcome: &Outcome) -> Vec<Outcome> {
    vec![outcome.clone(); n]
}

/// Builds a [`HandlerFn`] from a closure.
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn
where
    F: Fn(Inbound) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    Arc::new(move |inbound| Box::pin(f(inbound)))
}

/// The stack every route gets by default, outermost first: correlation (a tracing span with
/// the correlation id), poison (decode failures dead-lettered at once), retry (exponential
/// backoff with jitter for retries that name no delay), timeout (30 s), recoverer (a panic
/// becomes a retry).
pub fn default_stack() -> Vec<Arc<dyn Middleware>> {
    vec![
        Arc::new(Correlation),
        Arc::new(Poison::default()),
        Arc::new(Retry::default()),
        Arc::new(Timeout::default()),
        Arc::new(Recoverer),
    ]
}

/// The stack every batched route gets by default: timeout (30 s: a batch that takes longer
/// is abandoned, its deliveries come back), recoverer (a panic in the route becomes a retry
/// of the batch). Decoding, retry delays and panics inside the actor are the actor's.
pub fn default_batch_stack() -> Vec<Arc<dyn Middleware>> {
    vec![Arc::new(Timeout::default()), Arc::new(Recoverer)]
}

/// Wraps `handler` in `stack` (the first element ends up outermost).
pub fn compose(handler: HandlerFn, stack: &[Arc<dyn Middleware>]) -> HandlerFn {
    stack.iter().rev().fold(handler, |next, mw| mw.wrap(next))
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// An inbound message on `subject`, delivery `delivered` of `max_deliver`.
    pub fn inbound(subject: &str, delivered: u32, max_deliver: u32) -> Inbound {
        let mut meta = DeliveryMeta::new(subject);
        meta.delivered = delivered;
        meta.max_deliver = max_deliver;
        Inbound {
            payload: Bytes::from_static(b"{}"),
            meta,
        }
    }

    /// A handler that always answers `outcome`.
    pub fn always(outcome: Outcome) -> HandlerFn {
        handler_fn(move |_| {
            let o = outcome.clone();
            async move { o }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[tokio::test]
    async fn compose_puts_the_first_middleware_outermost() {
        // Poison outside Retry: a poison outcome is not touched by Retry, and Poison at
        // delivery 1 of a 3-delivery poison policy turns it into a retry.
        let stack: Vec<Arc<dyn Middleware>> = vec![
            Arc::new(Poison::after_deliveries(3)),
            Arc::new(Retry::default()),
        ];
        let h = compose(always(Outcome::poison("bad")), &stack);
        let out = h(inbound("s", 1, 5)).await;
        assert!(
            matches!(out, Outcome::Retry { delay: Some(_), .. }),
            "{out:?}"
        );
    }
}
