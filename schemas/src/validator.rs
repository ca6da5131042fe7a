//! Validation against the embedded schemas, with errors that name the field.

use std::collections::HashMap;
use std::sync::LazyLock;

use jsonschema::Validator;
use jsonschema::paths::LocationSegment;
use serde_json::Value;

use crate::error::{FieldError, SchemaError};
use crate::kind::EventKind;

/// Every schema file, embedded at build time.
const SCHEMAS: &[(EventKind, u8, &str)] = &[
    (
        EventKind::OrderCreated,
        1,
        include_str!("../orders.created.v1.json"),
    ),
    (
        EventKind::OrderCreated,
        2,
        include_str!("../orders.created.v2.json"),
    ),
    (
        EventKind::OrderCancelled,
        1,
        include_str!("../orders.cancelled.v1.json"),
    ),
    (
        EventKind::OrderConfirmed,
        1,
        include_str!("../orders.confirmed.v1.json"),
    ),
    (
        EventKind::InventoryReserved,
        1,
        include_str!("../inventory.reserved.v1.json"),
    ),
    (
        EventKind::InventoryReleased,
        1,
        include_str!("../inventory.released.v1.json"),
    ),
    (
        EventKind::PaymentSucceeded,
        1,
        include_str!("../payments.succeeded.v1.json"),
    ),
    (
        EventKind::PaymentFailed,
        1,
        include_str!("../payments.failed.v1.json"),
    ),
];

/// The text of the schema of `kind` version `version`.
pub fn schema_text(kind: EventKind, version: u8) -> Option<&'static str> {
    SCHEMAS
        .iter()
        .find(|(k, v, _)| *k == kind && *v == version)
        .map(|(_, _, text)| *text)
}

/// The schema's name, e.g. `orders.created.v1`.
pub(crate) fn schema_name(kind: EventKind, version: u8) -> String {
    format!("{}.v{version}", kind.name())
}

static VALIDATORS: LazyLock<HashMap<(EventKind, u8), Validator>> = LazyLock::new(|| {
    SCHEMAS
        .iter()
        .map(|(kind, version, text)| {
            // The files are part of the build: one that does not parse or compile is a bug
            // caught by the tests, not an input error.
            let schema: Value = serde_json::from_str(text).expect("embedded schema is JSON");
            let validator = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .should_validate_formats(true)
                .build(&schema)
                .expect("embedded schema compiles");
            ((*kind, *version), validator)
        })
        .collect()
});

/// `/items/0/quantity` → `items[0].quantity`.
fn readable_path(location: &jsonschema::paths::Location) -> String {
    let mut out = String::new();
    for segment in location.iter() {
        match segment {
            LocationSegment::Property(name) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&name);
            }
            LocationSegment::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    if out.is_empty() {
        "(root)".to_string()
    } else {
        out
    }
}

/// Validates `value` against the schema of `kind` version `version`.
pub fn validate(kind: EventKind, version: u8, value: &Value) -> Result<(), SchemaError> {
    let name = schema_name(kind, version);
    let Some(validator) = VALIDATORS.get(&(kind, version)) else {
        return Err(SchemaError::UnknownSubject {
            subject: kind.name().to_string(),
            reason: format!("no schema {name}"),
        });
    };
    // The fast check first; the errors are collected only for what is invalid.
    if validator.is_valid(value) {
        return Ok(());
    }
    let errors: Vec<FieldError> = validator
        .iter_errors(value)
        .map(|e| FieldError {
            path: readable_path(e.instance_path()),
            message: e.to_string(),
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(SchemaError::Invalid {
            schema: name,
            errors,
        })
    }
}

/// Every (kind, version) that has a schema.
pub fn registry() -> impl Iterator<Item = (EventKind, u8)> {
    SCHEMAS.iter().map(|(k, v, _)| (*k, *v))
}
