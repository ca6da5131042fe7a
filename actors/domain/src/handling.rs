//! What the three handlers share: their dependencies, their error type and how it maps onto
//! the runtime's, the view of `orders.created` every version offers, and the span that puts
//! the order id on every log line about an event.

use std::sync::Arc;

use jetflow_runtime::{Database, DeliveryMeta, OutboxHandle, TxError, UnitOfWork, span};
use jetflow_schemas::{AnyEvent, EventMeta, OrderItem, Priority, SchemaError, ShippingAddress};

use crate::config::SagaConfig;
use crate::input::InboundEvent;

/// Everything a handler needs.
#[derive(Clone)]
pub struct Deps {
    /// The database.
    pub db: Database,
    /// Where committed events go to be published (for commands outside a delivery, such as
    /// the timeout sweep).
    pub outbox: OutboxHandle,
    /// The saga's settings.
    pub config: Arc<SagaConfig>,
    /// Requests in flight that the consumers yield to (requests first, when the process
    /// also serves them).
    pub requests_first: Option<LaneTurns>,
}

/// Requests first, per lane: both lanes count the same requests, and each takes its own
/// turns, so the express lane never waits behind standard work.
#[derive(Debug, Clone)]
pub struct LaneTurns {
    /// The standard lane's turns (the HTTP middleware counts requests on it).
    pub standard: jetflow_runtime::RequestsFirst,
    /// The express lane's turns.
    pub express: jetflow_runtime::RequestsFirst,
}

impl LaneTurns {
    /// Both lanes of `requests`.
    pub fn new(requests: jetflow_runtime::RequestsFirst) -> Self {
        Self {
            express: requests.lane(),
            standard: requests,
        }
    }
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

impl From<DomainError> for TxError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::Db(e) => TxError::Database(e),
            DomainError::Schema(e) => TxError::reject(format!("outgoing event invalid: {e}")),
        }
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

/// The lane of a stored name (`standard` when unknown).
pub fn lane_of(name: &str) -> Priority {
    name.parse().unwrap_or_default()
}

/// The span every handling of an event runs in: the runtime's delivery span (subject,
/// sequence, correlation id, trace id) with the order id added, so every line about an order
/// carries it, whichever handler writes it.
pub fn span(target: &str, input: &InboundEvent, meta: &DeliveryMeta) -> tracing::Span {
    let parent = span::delivery_span(target, meta);
    let order_id = input.event.meta().order_id;
    tracing::info_span!(parent: &parent, "event", %order_id, kind = %input.subject.kind)
}

/// Adds one to `counter` once the transaction of `uow` committed: a batch that is rolled
/// back and applied again counts each change once.
pub fn count_on_commit(uow: &mut UnitOfWork, counter: prometheus::IntCounter) {
    uow.after_commit(move || counter.inc());
}
