//! From schema events to JetStream messages, and the keys that identify them.
//!
//! Every event is validated against its JSON Schema before it is published (`encode`),
//! published on the subject of its kind, version and lane, with its event id as
//! `Nats-Msg-Id` and the correlation id as a header.

use jetflow_runtime::OutgoingMessage;
use jetflow_schemas::{Event, Priority, SchemaError, Subject};
use uuid::Uuid;

/// The key of one version of an event: its `Nats-Msg-Id` and its inbox key.
///
/// Version 1 uses the bare event id; later versions add `.v<N>`, so that the copies of a
/// dual-published event are distinct messages in one stream (JetStream would drop the second
/// as a duplicate otherwise) while a redelivery or replay of either copy keeps its key.
pub fn event_key(event_id: Uuid, version: u8) -> String {
    if version <= 1 {
        event_id.to_string()
    } else {
        format!("{event_id}.v{version}")
    }
}

/// The message that publishes `event` on `lane`, after checking it against its schema. (When
/// it is emitted while handling a delivery, the runtime adds the trace context.)
pub fn outgoing<E: Event>(event: &E, lane: Priority) -> Result<OutgoingMessage, SchemaError> {
    let subject = Subject {
        kind: E::KIND,
        version: E::VERSION,
        lane,
    };
    let payload = jetflow_schemas::encode(event)?;
    let meta = event.meta();
    Ok(OutgoingMessage::new(
        subject.to_string(),
        event_key(meta.event_id, E::VERSION),
        payload,
    )
    .correlation_id(meta.correlation_id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_twins_have_distinct_keys() {
        let id = Uuid::now_v7();
        assert_eq!(event_key(id, 1), id.to_string());
        assert_eq!(event_key(id, 2), format!("{id}.v2"));
    }
}
