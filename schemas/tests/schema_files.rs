//! The schema files themselves: valid 2020-12 schemas, no orphans, examples that the Rust
//! types accept (schema → types).

use std::collections::BTreeSet;

use jetflow_schemas::{EventKind, Subject, decode, registry, schema_text, validate};
use serde_json::Value;

#[test]
fn every_schema_is_a_valid_2020_12_schema_with_an_id_and_examples() {
    for (kind, version) in registry() {
        let text = schema_text(kind, version).unwrap();
        let schema: Value = serde_json::from_str(text).unwrap();
        jsonschema::meta::validate(&schema).unwrap_or_else(|e| panic!("{kind} v{version}: {e}"));
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(
            schema["$id"],
            format!(
                "https://jetflow.dev/schemas/{}.v{version}.json",
                kind.name()
            )
        );
        assert_eq!(
            schema["additionalProperties"], false,
            "{kind} v{version} must be closed"
        );
        for (name, prop) in schema["properties"].as_object().unwrap() {
            assert!(
                prop.get("description").is_some(),
                "{kind} v{version}: {name} has no description"
            );
        }
        assert!(!schema["examples"].as_array().unwrap().is_empty());
    }
}

#[test]
fn the_files_on_disk_are_exactly_the_registry() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".json"))
        .collect();
    let registered: BTreeSet<String> = registry()
        .map(|(k, v)| format!("{}.v{v}.json", k.name()))
        .collect();
    assert_eq!(on_disk, registered);
    // Every kind has its versions registered.
    for kind in EventKind::all() {
        for v in kind.versions() {
            assert!(schema_text(kind, *v).is_some(), "{kind} v{v} has no file");
        }
    }
}

#[test]
fn every_example_validates_decodes_and_round_trips() {
    for (kind, version) in registry() {
        let schema: Value = serde_json::from_str(schema_text(kind, version).unwrap()).unwrap();
        for example in schema["examples"].as_array().unwrap() {
            validate(kind, version, example).unwrap();
            let subject = Subject {
                kind,
                version,
                lane: Default::default(),
            }
            .to_string();
            let (parsed, event) = decode(&subject, example.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{kind} v{version} example: {e}"));
            assert_eq!(parsed.kind, kind);
            assert_eq!(event.kind(), kind);
            assert_eq!(event.version(), version);
            // The typed value serializes back to the same JSON (nothing lost or invented).
            let back = match &event {
                jetflow_schemas::AnyEvent::OrderCreatedV1(e) => serde_json::to_value(e),
                jetflow_schemas::AnyEvent::OrderCreatedV2(e) => serde_json::to_value(e),
                jetflow_schemas::AnyEvent::OrderCancelled(e) => serde_json::to_value(e),
                jetflow_schemas::AnyEvent::OrderConfirmed(e) => serde_json::to_value(e),
                jetflow_schemas::AnyEvent::InventoryReserved(e) => serde_json::to_value(e),
                jetflow_schemas::AnyEvent::InventoryReleased(e) => serde_json::to_value(e),
                jetflow_schemas::AnyEvent::PaymentSucceeded(e) => serde_json::to_value(e),
                jetflow_schemas::AnyEvent::PaymentFailed(e) => serde_json::to_value(e),
            }
            .unwrap();
            validate(kind, version, &back).unwrap();
            let mut a = example.clone();
            let mut b = back.clone();
            // Timestamps may be re-formatted (same instant); compare them as instants.
            for v in [&mut a, &mut b] {
                let t = chrono::DateTime::parse_from_rfc3339(v["occurred_at"].as_str().unwrap())
                    .unwrap();
                v["occurred_at"] = Value::String(t.to_rfc3339());
            }
            assert_eq!(a, b, "{kind} v{version}");
        }
    }
}
