//! A route: one durable consumer and what handles its deliveries.
//!
//! The route is where the untyped world (bytes on a subject) meets the typed one. Most routes
//! hand each delivery to an actor (a `Delivery<M>` in its mailbox, decoded with `M`'s
//! [`Decode`], with the middleware stack around it, several at once). A batched route hands
//! over what is waiting, one batch at a time, to a handler that answers an [`Outcome`] per
//! delivery: that is how [`TxRoute`](crate::TxRoute) commits a whole batch in one
//! transaction.

use std::sync::Arc;
use std::time::Duration;

use actix::MailboxError;
use futures::future::BoxFuture;

use crate::actor_ref::TrackedRecipient;
use crate::codec::Decode;
use crate::delivery::Delivery;
use crate::middleware::{
    HandlerFn, Inbound, LayerRefused, Middleware, compose, default_batch_stack, default_stack,
    handler_fn,
};
use crate::outcome::Outcome;
use crate::topology::ConsumerSpec;

/// How long to wait before redelivering a message whose actor could not take it.
const ACTOR_UNAVAILABLE_DELAY: Duration = Duration::from_secs(1);

/// A handler of a whole batch of raw deliveries: one outcome per delivery, in order.
pub type BatchHandlerFn =
    Arc<dyn Fn(Vec<Inbound>) -> BoxFuture<'static, Vec<Outcome>> + Send + Sync>;

/// How a batched route gathers its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most deliveries in one batch.
    pub max: usize,
    /// How long to wait for more deliveries once some arrived, but only while the consumer is
    /// busy (the previous batch had more than one delivery): an idle consumer hands a lone
    /// delivery over at once.
    pub linger: Duration,
}

impl Default for BatchConfig {
    /// Up to 256 deliveries, lingering 1 ms under load.
    fn default() -> Self {
        Self {
            max: 256,
            linger: Duration::from_millis(1),
        }
    }
}

/// How a route hands its deliveries over.
#[derive(Clone)]
pub(crate) enum Handling {
    /// One at a time each, up to `concurrency` at once.
    Each {
        handler: HandlerFn,
        concurrency: usize,
    },
    /// In batches, one batch at a time (so deliveries keep their stream order).
    Batch {
        handler: BatchHandlerFn,
        config: BatchConfig,
    },
}

/// A consumer and the handler of its deliveries.
#[derive(Clone)]
pub struct Route {
    /// The durable consumer the route reads (created or updated when the route starts).
    pub consumer: ConsumerSpec,
    pub(crate) handling: Handling,
    target: String,
    double_ack: bool,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Route");
        d.field("consumer", &self.consumer.durable)
            .field("stream", &self.consumer.stream)
            .field("target", &self.target);
        match &self.handling {
            Handling::Each { concurrency, .. } => d.field("concurrency", concurrency),
            Handling::Batch { config, .. } => d.field("batch", config),
        };
        d.field("double_ack", &self.double_ack).finish()
    }
}

/// The terminal handler of a route: decode, deliver to the actor, return its verdict.
pub fn deliver_to<M>(recipient: TrackedRecipient<Delivery<M>>) -> HandlerFn
where
    M: Decode,
{
    handler_fn(move |inbound: Inbound| {
        let recipient = recipient.clone();
        async move {
            let Inbound { payload, meta } = inbound;
            let message = match M::decode(&meta.subject, &meta.headers, &payload) {
                Ok(m) => m,
                Err(e) => return Outcome::poison(e.to_string()),
            };
            match recipient.send(Delivery { message, meta }).await {
                Ok(outcome) => outcome,
                Err(MailboxError::Closed) => Outcome::retry_after(
                    ACTOR_UNAVAILABLE_DELAY,
                    format!(
                        "actor {} stopped before replying (restarting or panicked)",
                        recipient.name()
                    ),
                ),
                Err(MailboxError::Timeout) => Outcome::retry_after(
                    ACTOR_UNAVAILABLE_DELAY,
                    format!("actor {} did not reply in time", recipient.name()),
                ),
            }
        }
    })
}

/// The terminal handler of a batched route into a plain actor: decode each delivery (one
/// that does not decode is dead-lettered alone), send the rest as one [`Batch`], answer the
/// actor's outcome per delivery.
///
/// [`Batch`]: crate::Batch
pub fn deliver_batches_to<M>(
    recipient: TrackedRecipient<crate::tx_actor::Batch<M>>,
) -> BatchHandlerFn
where
    M: Decode,
{
    Arc::new(move |batch: Vec<Inbound>| {
        let recipient = recipient.clone();
        Box::pin(async move {
            let n = batch.len();
            let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
            let mut sent = Vec::with_capacity(n);
            let mut deliveries = Vec::with_capacity(n);
            for (i, Inbound { payload, meta }) in batch.into_iter().enumerate() {
                match M::decode(&meta.subject, &meta.headers, &payload) {
                    Ok(message) => {
                        sent.push(i);
                        deliveries.push(Delivery { message, meta });
                    }
                    Err(e) => outcomes[i] = Some(Outcome::poison(e.to_string())),
                }
            }
            if !sent.is_empty() {
                let reply = recipient.send(crate::tx_actor::Batch { deliveries }).await;
                let answered = match reply {
                    Ok(answered) if answered.len() == sent.len() => answered,
                    Ok(answered) => {
                        let why = format!(
                            "actor {} answered {} outcomes for {} deliveries",
                            recipient.name(),
                            answered.len(),
                            sent.len()
                        );
                        vec![Outcome::retry(why); sent.len()]
                    }
                    Err(_) => vec![
                        Outcome::retry_after(
                            ACTOR_UNAVAILABLE_DELAY,
                            format!("actor {} could not take the batch", recipient.name()),
                        );
                        sent.len()
                    ],
                };
                for (i, o) in sent.into_iter().zip(answered) {
                    outcomes[i] = Some(o);
                }
            }
            outcomes
                .into_iter()
                .map(|o| o.unwrap_or_else(|| Outcome::retry("not handled")))
                .collect()
        })
    })
}

/// A shared middleware as a layer of its own.
struct ArcLayer(Arc<dyn Middleware>);

impl Middleware for ArcLayer {
    fn wrap(&self, next: HandlerFn) -> HandlerFn {
        self.0.wrap(next)
    }

    fn wrap_batch(&self, next: BatchHandlerFn) -> Result<BatchHandlerFn, &'static str> {
        self.0.wrap_batch(next)
    }

    fn name(&self) -> &'static str {
        self.0.name()
    }
}

impl Route {
    /// A route from `consumer` to the actor behind `recipient`, with the default middleware.
    pub fn new<M>(consumer: ConsumerSpec, recipient: TrackedRecipient<Delivery<M>>) -> Self
    where
        M: Decode,
    {
        let target = recipient.name().to_string();
        let handler = compose(deliver_to(recipient), &default_stack());
        Self::from_handler(consumer, &target, handler)
    }

    /// A batched route from `consumer` to a plain actor that handles [`Batch<M>`] (answering
    /// one outcome per delivery, in order), with the default batch stack: the actor gets
    /// what is waiting, up to `config.max`, one batch at a time, and every delivery is acked
    /// after the batch.
    ///
    /// [`Batch<M>`]: crate::Batch
    pub fn batches<M>(
        consumer: ConsumerSpec,
        recipient: TrackedRecipient<crate::tx_actor::Batch<M>>,
        config: BatchConfig,
    ) -> Self
    where
        M: Decode,
    {
        let target = recipient.name().to_string();
        Self::batched(consumer, &target, deliver_batches_to(recipient), config)
    }

    /// A route with a hand-made handler and no middleware.
    pub fn from_handler(consumer: ConsumerSpec, target: &str, handler: HandlerFn) -> Self {
        Self {
            consumer,
            handling: Handling::Each {
                handler,
                concurrency: 32,
            },
            target: target.to_string(),
            double_ack: false,
        }
    }

    /// A route that hands over batches (see [`TxRoute`](crate::TxRoute), which builds one),
    /// with the [default batch stack](crate::middleware::default_batch_stack).
    pub fn batched(
        consumer: ConsumerSpec,
        target: &str,
        handler: BatchHandlerFn,
        config: BatchConfig,
    ) -> Self {
        let handler = default_batch_stack()
            .iter()
            .rev()
            .fold(handler, |next, mw| match mw.wrap_batch(next.clone()) {
                Ok(wrapped) => wrapped,
                // Every default has a batch form (tested); none is skipped in practice.
                Err(_) => next,
            });
        Self {
            consumer,
            handling: Handling::Batch {
                handler,
                config: BatchConfig {
                    max: config.max.max(1),
                    linger: config.linger,
                },
            },
            target: target.to_string(),
            double_ack: false,
        }
    }

    /// Wraps the handler in one more middleware (it becomes the outermost), on any route:
    /// one that cannot apply to a batched route is refused with an error that names it,
    /// never skipped.
    pub fn layer(mut self, middleware: impl Middleware) -> Result<Self, LayerRefused> {
        match &mut self.handling {
            Handling::Each { handler, .. } => *handler = middleware.wrap(handler.clone()),
            Handling::Batch { handler, .. } => match middleware.wrap_batch(handler.clone()) {
                Ok(wrapped) => *handler = wrapped,
                Err(why) => {
                    return Err(LayerRefused {
                        route: self.target.clone(),
                        layer: middleware.name(),
                        why,
                    });
                }
            },
        }
        Ok(self)
    }

    /// Wraps the handler in a whole stack (first element outermost), as [`layer`](Self::layer)
    /// does each.
    pub fn stack(mut self, stack: &[Arc<dyn Middleware>]) -> Result<Self, LayerRefused> {
        for middleware in stack.iter().rev() {
            self = self.layer(ArcLayer(Arc::clone(middleware)))?;
        }
        Ok(self)
    }

    /// Sets how many deliveries are handled at once (routes that handle one at a time).
    pub fn concurrency(mut self, n: usize) -> Self {
        if let Handling::Each { concurrency, .. } = &mut self.handling {
            *concurrency = n.max(1);
        }
        self
    }

    /// Sets how batches are gathered (batched routes).
    pub fn batch(mut self, batch: BatchConfig) -> Self {
        if let Handling::Batch { config, .. } = &mut self.handling {
            *config = BatchConfig {
                max: batch.max.max(1),
                linger: batch.linger,
            };
        }
        self
    }

    /// Waits for JetStream to confirm every ack (a "double ack"). Off by default: a lost
    /// ack only means a redelivery, which the inbox absorbs.
    pub fn double_ack(mut self, on: bool) -> Self {
        self.double_ack = on;
        self
    }

    /// Whether the route hands over one delivery at a time (not batches).
    pub(crate) fn is_each(&self) -> bool {
        matches!(self.handling, Handling::Each { .. })
    }

    /// Whether acks are confirmed.
    pub fn acks_confirmed(&self) -> bool {
        self.double_ack
    }

    /// The name of the actor or handler the route delivers to.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The composed handler, for routes that handle one delivery at a time.
    pub fn handler(&self) -> Option<HandlerFn> {
        match &self.handling {
            Handling::Each { handler, .. } => Some(Arc::clone(handler)),
            Handling::Batch { .. } => None,
        }
    }

    /// The batch handler, for batched routes.
    pub fn batch_handler(&self) -> Option<BatchHandlerFn> {
        match &self.handling {
            Handling::Batch { handler, .. } => Some(Arc::clone(handler)),
            Handling::Each { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::middleware::{
        ConcurrencyLimit, Correlation, Poison, Recoverer, Retry, Throttle, Timeout,
    };

    fn batch_route() -> Route {
        Route::batched(
            ConsumerSpec::new("S", "d", &[]),
            "t",
            Arc::new(|batch: Vec<Inbound>| {
                Box::pin(async move { vec![Outcome::Ack; batch.len()] })
            }),
            BatchConfig::default(),
        )
    }

    /// A policy with no batch form.
    struct OneAtATime;

    impl Middleware for OneAtATime {
        fn wrap(&self, next: HandlerFn) -> HandlerFn {
            next
        }
    }

    #[test]
    fn every_policy_of_the_runtime_applies_to_a_batched_route() {
        let stack: Vec<Arc<dyn Middleware>> = vec![
            Arc::new(Correlation),
            Arc::new(Poison::default()),
            Arc::new(Retry::default()),
            Arc::new(Timeout(Duration::from_secs(1))),
            Arc::new(Recoverer),
            Arc::new(Throttle::per_second(10)),
            Arc::new(ConcurrencyLimit::new(2)),
        ];
        assert!(batch_route().stack(&stack).is_ok());
        for mw in default_batch_stack().iter().chain(&default_stack()) {
            assert!(
                mw.wrap_batch(batch_route().batch_handler().expect("batched"))
                    .is_ok()
            );
        }
    }

    #[test]
    fn a_policy_without_a_batch_form_is_refused_by_name() {
        let refused = batch_route().layer(OneAtATime).expect_err("refused");
        assert_eq!(
            refused.to_string(),
            "route t: the OneAtATime layer cannot apply: it has no batch form"
        );
    }
}
