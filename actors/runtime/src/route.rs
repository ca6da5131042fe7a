//! A route: one durable consumer, delivering typed messages to one actor.
//!
//! The route is where the untyped world (bytes on a subject) meets the typed one (a
//! `Delivery<M>` in an actor's mailbox): it decodes with `M`'s [`Decode`], sends to the
//! actor through its instrumented address and returns the actor's [`Outcome`], with the
//! middleware stack around it.

use std::sync::Arc;
use std::time::Duration;

use actix::MailboxError;

use crate::actor_ref::TrackedRecipient;
use crate::codec::Decode;
use crate::delivery::Delivery;
use crate::middleware::{HandlerFn, Inbound, Middleware, compose, default_stack, handler_fn};
use crate::outcome::Outcome;
use crate::topology::ConsumerSpec;

/// How long to wait before redelivering a message whose actor could not take it.
const ACTOR_UNAVAILABLE_DELAY: Duration = Duration::from_secs(1);

/// A consumer and the handler of its deliveries.
#[derive(Clone)]
pub struct Route {
    /// The durable consumer the route reads (created or updated when the route starts).
    pub consumer: ConsumerSpec,
    /// Deliveries handled at once; also the pull batch size (backpressure).
    pub concurrency: usize,
    handler: HandlerFn,
    target: String,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("consumer", &self.consumer.durable)
            .field("stream", &self.consumer.stream)
            .field("target", &self.target)
            .field("concurrency", &self.concurrency)
            .finish()
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

impl Route {
    /// A route from `consumer` to the actor behind `recipient`, with the default middleware.
    pub fn new<M>(consumer: ConsumerSpec, recipient: TrackedRecipient<Delivery<M>>) -> Self
    where
        M: Decode,
    {
        let target = recipient.name().to_string();
        Self::from_handler(consumer, &target, deliver_to(recipient)).stack(&default_stack())
    }

    /// A route with a hand-made handler and no middleware.
    pub fn from_handler(consumer: ConsumerSpec, target: &str, handler: HandlerFn) -> Self {
        Self {
            consumer,
            concurrency: 32,
            handler,
            target: target.to_string(),
        }
    }

    /// Wraps the handler in one more middleware (it becomes the outermost).
    pub fn layer(mut self, middleware: impl Middleware) -> Self {
        self.handler = middleware.wrap(self.handler);
        self
    }

    /// Wraps the handler in a whole stack (first element outermost).
    pub fn stack(mut self, stack: &[Arc<dyn Middleware>]) -> Self {
        self.handler = compose(self.handler, stack);
        self
    }

    /// Sets how many deliveries are handled at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The name of the actor the route delivers to.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The composed handler.
    pub fn handler(&self) -> HandlerFn {
        Arc::clone(&self.handler)
    }
}
