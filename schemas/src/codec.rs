//! Producers encode (serialize, then validate before publishing); consumers decode
//! (parse, check the version against the subject, validate, then deserialize).

use serde_json::Value;

use crate::error::SchemaError;
use crate::event::{AnyEvent, Event};
use crate::kind::EventKind;
use crate::subject::Subject;
use crate::validator::validate;

/// Serializes an event and validates it against its schema.
pub fn encode<E: Event>(event: &E) -> Result<Vec<u8>, SchemaError> {
    let value = serde_json::to_value(event).map_err(|e| SchemaError::Serialize(e.to_string()))?;
    validate(E::KIND, E::VERSION, &value)?;
    serde_json::to_vec(&value).map_err(|e| SchemaError::Serialize(e.to_string()))
}

fn typed<E: Event>(value: Value, wrap: fn(E) -> AnyEvent) -> Result<AnyEvent, SchemaError> {
    // After validation this cannot fail unless a type and its schema disagree (the tests
    // prove they do not); report it as a violation rather than panic.
    serde_json::from_value::<E>(value)
        .map(wrap)
        .map_err(|e| SchemaError::Invalid {
            schema: format!("{}.v{}", E::KIND.name(), E::VERSION),
            errors: vec![crate::error::FieldError {
                path: "(root)".to_string(),
                message: e.to_string(),
            }],
        })
}

/// Decodes a payload published on `subject`.
pub fn decode(subject: &str, payload: &[u8]) -> Result<(Subject, AnyEvent), SchemaError> {
    let parsed = Subject::parse(subject)?;
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| SchemaError::NotJson(e.to_string()))?;
    let found = value.get("version").and_then(Value::as_i64);
    if found != Some(i64::from(parsed.version)) {
        return Err(SchemaError::VersionMismatch {
            subject: subject.to_string(),
            expected: parsed.version,
            found,
        });
    }
    validate(parsed.kind, parsed.version, &value)?;
    let event = match (parsed.kind, parsed.version) {
        (EventKind::OrderCreated, 1) => typed(value, AnyEvent::OrderCreatedV1)?,
        (EventKind::OrderCreated, _) => typed(value, AnyEvent::OrderCreatedV2)?,
        (EventKind::OrderCancelled, _) => typed(value, AnyEvent::OrderCancelled)?,
        (EventKind::OrderConfirmed, _) => typed(value, AnyEvent::OrderConfirmed)?,
        (EventKind::InventoryReserved, _) => typed(value, AnyEvent::InventoryReserved)?,
        (EventKind::InventoryReleased, _) => typed(value, AnyEvent::InventoryReleased)?,
        (EventKind::PaymentSucceeded, _) => typed(value, AnyEvent::PaymentSucceeded)?,
        (EventKind::PaymentFailed, _) => typed(value, AnyEvent::PaymentFailed)?,
    };
    Ok((parsed, event))
}
