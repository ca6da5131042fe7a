//! Decoding what the domain actors receive: any event of the saga, validated against its
//! JSON Schema. A payload that fails becomes a poison dead letter with the schema's message.

use jetflow_runtime::{Decode, DecodeError, Delivery, HeaderMap};
use jetflow_schemas::{AnyEvent, Subject};

use crate::events::event_key;

/// A decoded, schema-valid event and the subject it came on.
#[derive(Debug, Clone)]
pub struct InboundEvent {
    /// Kind, version and lane, from the subject.
    pub subject: Subject,
    /// The typed event.
    pub event: AnyEvent,
}

impl InboundEvent {
    /// The inbox key of this event (event id and version).
    pub fn key(&self) -> String {
        event_key(self.event.meta().event_id, self.event.version())
    }

    /// The order this event is about, as stored.
    pub fn order_id(&self) -> String {
        self.event.meta().order_id.to_string()
    }

    /// The orders a batch of deliveries is about, as stored (what `begin_batch` reads).
    pub fn order_ids(deliveries: &[&Delivery<InboundEvent>]) -> Vec<String> {
        deliveries.iter().map(|d| d.message.order_id()).collect()
    }
}

impl Decode for InboundEvent {
    fn decode(subject: &str, _headers: &HeaderMap, payload: &[u8]) -> Result<Self, DecodeError> {
        let (subject, event) = jetflow_schemas::decode(subject, payload)
            .map_err(|e| DecodeError::new(e.to_string()))?;
        Ok(Self { subject, event })
    }
}
