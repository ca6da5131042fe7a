//! Subject naming: every kind × version × lane formats and parses back; malformed subjects
//! are refused.

use jetflow_schemas::{EventKind, Priority, Subject};

#[test]
fn every_subject_round_trips() {
    let mut seen = std::collections::HashSet::new();
    for kind in EventKind::all() {
        for &version in kind.versions() {
            for lane in [Priority::Standard, Priority::Express] {
                let s = Subject {
                    kind,
                    version,
                    lane,
                };
                let text = s.to_string();
                assert_eq!(Subject::parse(&text).unwrap(), s, "{text}");
                assert!(seen.insert(text.clone()), "{text} is not unique");
            }
        }
    }
    assert_eq!(Subject::parse("orders.created").unwrap().version, 1);
    assert_eq!(
        Subject::parse("orders.created.v2.express").unwrap().lane,
        Priority::Express
    );
    assert_eq!(
        Subject {
            kind: EventKind::InventoryReserved,
            version: 1,
            lane: Priority::Express
        }
        .to_string(),
        "inventory.reserved.express"
    );
}

#[test]
fn malformed_subjects_are_refused() {
    for bad in [
        "orders.created.v3",
        "orders.unknown",
        "orders.created.express.v2",
        "orders.created.v2.express.x",
        "orders.cancelled.v2",
        "orders.created.v1",
        "orders",
        "",
        "dlq.orders.created",
    ] {
        assert!(Subject::parse(bad).is_err(), "{bad} should be refused");
    }
}
