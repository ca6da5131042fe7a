//! The fields every event carries.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Identity and provenance of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMeta {
    /// This event's id (also its `Nats-Msg-Id`).
    pub event_id: Uuid,
    /// The order it belongs to.
    pub order_id: Uuid,
    /// The correlation id of the order's flow.
    pub correlation_id: String,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
}

impl EventMeta {
    /// A new event of `order_id` (time-ordered UUIDv7 id, now).
    pub fn new(order_id: Uuid, correlation_id: impl Into<String>) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            order_id,
            correlation_id: correlation_id.into(),
            occurred_at: Utc::now(),
        }
    }

    /// A new event caused by `cause`: same order and correlation id, new id, now.
    pub fn caused_by(cause: &EventMeta) -> Self {
        Self::new(cause.order_id, cause.correlation_id.clone())
    }
}
