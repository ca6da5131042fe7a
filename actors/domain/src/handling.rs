//! What the three domain actors share: their dependencies, their error type, and how an
//! error becomes an [`Outcome`].

use std::sync::Arc;

use jetflow_runtime::{DeliveryMeta, Outcome};
use jetflow_schemas::{AnyEvent, EventMeta, OrderItem, Priority, SchemaError, ShippingAddress};

use crate::config::SagaConfig;
use crate::db::Database;
use crate::outbox::OutboxHandle;

/// Everything a domain actor needs.
#[derive(Clone)]
pub struct Deps {
    /// The database.
    pub db: Database,
    /// Where committed events go to be published.
    pub outbox: OutboxHandle,
    /// The saga's settings.
    pub config: Arc<SagaConfig>,
}

/// Why a domain handler could not finish.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The database failed (transient: retried).
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// An event we produce does not match its schema (a bug: dead-lettered).
    #[error("outgoing event invalid: {0}")]
    Schema(#[from] SchemaError),
}

/// Turns a handler's result into the delivery's outcome.
pub fn outcome(result: Result<Outcome, DomainError>, meta: &DeliveryMeta) -> Outcome {
    match result {
        Ok(outcome) => outcome,
        Err(DomainError::Db(e)) => {
            tracing::warn!(subject = %meta.subject, delivered = meta.delivered, error = %e, "database error; will retry");
            Outcome::retry(format!("database: {e}"))
        }
        Err(e @ DomainError::Schema(_)) => {
            tracing::error!(subject = %meta.subject, error = %e, "cannot build the outgoing event");
            Outcome::reject(e.to_string())
        }
    }
}

/// The lane as stored.
pub fn lane_name(lane: Priority) -> &'static str {
    match lane {
        Priority::Standard => "standard",
        Priority::Express => "express",
    }
}

/// The lane of a stored name.
pub fn lane_of(name: &str) -> Priority {
    if name == "express" {
        Priority::Express
    } else {
        Priority::Standard
    }
}

/// The fields every version of `orders.created` has.
#[derive(Debug, Clone, Copy)]
pub struct Created<'a> {
    /// Common event fields.
    pub meta: &'a EventMeta,
    /// The customer.
    pub customer_id: &'a str,
    /// The items.
    pub items: &'a [OrderItem],
    /// The lane.
    pub priority: Priority,
    /// The shipping address (v2).
    pub shipping_address: Option<&'a ShippingAddress>,
}

/// The `orders.created` fields of an event, if it is one.
pub fn created(event: &AnyEvent) -> Option<Created<'_>> {
    match event {
        AnyEvent::OrderCreatedV1(e) => Some(Created {
            meta: &e.meta,
            customer_id: &e.customer_id,
            items: &e.items,
            priority: e.priority,
            shipping_address: None,
        }),
        AnyEvent::OrderCreatedV2(e) => Some(Created {
            meta: &e.meta,
            customer_id: &e.customer_id,
            items: &e.items,
            priority: e.priority,
            shipping_address: e.shipping_address.as_ref(),
        }),
        _ => None,
    }
}

/// The span every handling of an event runs in: each log line about it carries the order id,
/// the correlation id and the W3C trace id of the flow, whichever actor writes it.
pub fn span(
    actor: &'static str,
    input: &crate::input::InboundEvent,
    meta: &DeliveryMeta,
) -> tracing::Span {
    let m = input.event.meta();
    let trace_id = meta
        .traceparent()
        .and_then(|t| t.split('-').nth(1))
        .unwrap_or_default();
    tracing::info_span!(
        "handle",
        actor,
        subject = %meta.subject,
        order_id = %m.order_id,
        correlation_id = %m.correlation_id,
        trace_id,
        delivered = meta.delivered,
    )
}

/// Logs what became of an event (inside its [`span`]).
pub fn log_outcome(outcome: &Outcome) {
    match outcome {
        Outcome::Ack => tracing::info!(outcome = "ack", "event handled"),
        Outcome::Retry { reason, .. } => {
            tracing::warn!(outcome = "retry", %reason, "event to be retried")
        }
        Outcome::DeadLetter(reason) => {
            tracing::error!(outcome = "dead_letter", ?reason, "event dead-lettered")
        }
    }
}

/// Runs one delivery's handling as every domain actor does: inside its [`span`], its result
/// turned into an [`Outcome`] and logged. `work` gets the event and its delivery facts.
pub fn respond<A, F, Fut>(
    actor_name: &'static str,
    msg: jetflow_runtime::Delivery<crate::input::InboundEvent>,
    work: F,
) -> actix::ResponseActFuture<A, Outcome>
where
    A: actix::Actor,
    F: FnOnce(crate::input::InboundEvent, DeliveryMeta) -> Fut,
    Fut: std::future::Future<Output = Result<Outcome, DomainError>> + 'static,
{
    use tracing::Instrument;
    let span = span(actor_name, &msg.message, &msg.meta);
    let meta = msg.meta.clone();
    let fut = work(msg.message, msg.meta);
    Box::pin(actix::fut::wrap_future::<_, A>(
        async move {
            let outcome = outcome(fut.await, &meta);
            log_outcome(&outcome);
            outcome
        }
        .instrument(span),
    ))
}
