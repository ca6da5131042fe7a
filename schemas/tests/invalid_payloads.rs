//! Each kind of invalid payload is refused, with a message naming the field.

use jetflow_schemas::{SchemaError, decode};
use serde_json::{Value, json};

fn valid_created() -> Value {
    json!({
        "event_id": "0193a5e0-7a1c-7cc3-9b9e-3f2a1d4c5b6a",
        "order_id": "4f1c2b3a-9d8e-4f7a-8b6c-5d4e3f2a1b0c",
        "correlation_id": "req-1",
        "version": 1,
        "occurred_at": "2026-11-24T13:23:00Z",
        "customer_id": "c-42",
        "items": [{"product_id": "sku-1", "quantity": 2}],
        "priority": "standard"
    })
}

fn rejected(subject: &str, payload: &Value) -> SchemaError {
    decode(subject, payload.to_string().as_bytes()).expect_err("must be rejected")
}

fn rejected_with(mutate: impl FnOnce(&mut Value), field: &str) {
    let mut v = valid_created();
    mutate(&mut v);
    let err = rejected("orders.created", &v);
    let text = err.to_string();
    assert_eq!(err.kind_code(), "schema_violation", "{text}");
    assert!(
        text.contains(field),
        "message {text:?} should name {field:?}"
    );
    assert!(text.starts_with("orders.created.v1: "), "{text}");
}

#[test]
fn the_valid_sample_is_valid() {
    decode("orders.created", valid_created().to_string().as_bytes()).unwrap();
}

#[test]
fn missing_required_fields_are_named() {
    rejected_with(
        |v| drop(v.as_object_mut().unwrap().remove("customer_id")),
        "customer_id",
    );
    rejected_with(
        |v| drop(v["items"][0].as_object_mut().unwrap().remove("quantity")),
        "quantity",
    );
}

#[test]
fn wrong_types_are_named() {
    rejected_with(|v| v["customer_id"] = json!(42), "customer_id");
    rejected_with(
        |v| v["items"][0]["quantity"] = json!("2"),
        "items[0].quantity",
    );
    rejected_with(|v| v["items"] = json!({}), "items");
}

#[test]
fn bounds_are_enforced() {
    rejected_with(|v| v["customer_id"] = json!(""), "customer_id");
    rejected_with(|v| v["customer_id"] = json!("x".repeat(65)), "customer_id");
    rejected_with(
        |v| v["items"][0]["quantity"] = json!(0),
        "items[0].quantity",
    );
    rejected_with(
        |v| v["items"][0]["quantity"] = json!(1001),
        "items[0].quantity",
    );
    rejected_with(
        |v| v["items"][0]["quantity"] = json!(1.5),
        "items[0].quantity",
    );
    rejected_with(|v| v["items"] = json!([]), "items");
    rejected_with(
        |v| v["items"] = Value::Array(vec![json!({"product_id": "p", "quantity": 1}); 101]),
        "items",
    );
    rejected_with(
        |v| v["correlation_id"] = json!("has space"),
        "correlation_id",
    );
}

#[test]
fn unexpected_properties_are_named() {
    rejected_with(|v| v["surprise"] = json!(1), "surprise");
    rejected_with(|v| v["items"][0]["colour"] = json!("red"), "colour");
}

#[test]
fn formats_and_enums_are_checked() {
    rejected_with(|v| v["event_id"] = json!("not-a-uuid"), "event_id");
    rejected_with(|v| v["order_id"] = json!("12345"), "order_id");
    rejected_with(|v| v["occurred_at"] = json!("yesterday"), "occurred_at");
    rejected_with(|v| v["priority"] = json!("urgent"), "priority");
}

#[test]
fn versions_must_match_the_subject() {
    let mut v = valid_created();
    v["version"] = json!(2);
    let err = rejected("orders.created", &v);
    assert_eq!(err.kind_code(), "version_mismatch");
    assert!(
        err.to_string().contains("v1") && err.to_string().contains("version 2"),
        "{err}"
    );
    let mut v = valid_created();
    v.as_object_mut().unwrap().remove("version");
    assert_eq!(
        rejected("orders.created", &v).kind_code(),
        "version_mismatch"
    );
    // A v1 payload on the v2 subject.
    let err = rejected("orders.created.v2", &valid_created());
    assert_eq!(err.kind_code(), "version_mismatch");
}

#[test]
fn garbage_and_unknown_subjects_are_refused() {
    let err = decode("orders.created", b"not json at all").unwrap_err();
    assert_eq!(err.kind_code(), "not_json");
    assert!(err.to_string().contains("not JSON"));
    let err = decode("orders.unknown", valid_created().to_string().as_bytes()).unwrap_err();
    assert_eq!(err.kind_code(), "unknown_subject");
    assert!(err.to_string().contains("orders.unknown"));
}

#[test]
fn every_error_is_listed() {
    let mut v = valid_created();
    v["customer_id"] = json!("");
    v["items"][0]["quantity"] = json!(0);
    match rejected("orders.created", &v) {
        SchemaError::Invalid { errors, .. } => {
            let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
            assert!(
                paths.contains(&"customer_id") && paths.contains(&"items[0].quantity"),
                "{paths:?}"
            );
        }
        other => panic!("{other}"),
    }
}

#[test]
fn other_kinds_reject_bad_enums_too() {
    let cancelled = json!({
        "event_id": "0193a5e0-7a1c-7cc3-9b9e-3f2a1d4c5b6a",
        "order_id": "4f1c2b3a-9d8e-4f7a-8b6c-5d4e3f2a1b0c",
        "correlation_id": "c", "version": 1, "occurred_at": "2026-11-24T13:23:00Z",
        "reason": "bored"
    });
    let err = rejected("orders.cancelled.express", &cancelled);
    assert!(err.to_string().contains("reason"), "{err}");
    let failed = json!({
        "event_id": "0193a5e0-7a1c-7cc3-9b9e-3f2a1d4c5b6a",
        "order_id": "4f1c2b3a-9d8e-4f7a-8b6c-5d4e3f2a1b0c",
        "correlation_id": "c", "version": 1, "occurred_at": "2026-11-24T13:23:00Z",
        "amount_cents": -1, "reason": "declined"
    });
    let err = rejected("payments.failed", &failed);
    assert!(err.to_string().contains("amount_cents"), "{err}");
}
