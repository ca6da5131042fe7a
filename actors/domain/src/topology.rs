//! The order system's streams, subjects and durable consumers.
//!
//! Every event has a standard and an express subject (`orders.created` and
//! `orders.created.express`), and every role reads each stream through two consumers, one per
//! lane, so a backlog of standard orders never sits in front of an express one at any hop.
//! `orders.created` v2 adds a `.v2` token (`orders.created.v2`, `orders.created.v2.express`).

use jetflow_runtime::{ConsumerSpec, StreamSpec, Topology};
use jetflow_schemas::{EventKind, Priority, Subject};

use crate::config::SagaConfig;

/// The stream of order events.
pub const ORDERS: &str = "ORDERS";
/// The stream of inventory events.
pub const INVENTORY: &str = "INVENTORY";
/// The stream of payment events.
pub const PAYMENTS: &str = "PAYMENTS";

/// A service role of the order system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The order state machine and read model.
    Orders,
    /// Stock and reservations.
    Inventory,
    /// Payments through the provider.
    Payments,
}

impl Role {
    /// The role's name, also the prefix of its consumers.
    pub fn name(self) -> &'static str {
        match self {
            Role::Orders => "orders",
            Role::Inventory => "inventory",
            Role::Payments => "payments",
        }
    }
}

/// The three streams of the saga, with the configured replicas, age and size limits.
pub fn streams(config: &SagaConfig) -> Vec<StreamSpec> {
    [
        (
            ORDERS,
            "orders.>",
            "order events: created, cancelled, confirmed",
        ),
        (
            INVENTORY,
            "inventory.>",
            "inventory events: reserved, released",
        ),
        (PAYMENTS, "payments.>", "payment events: succeeded, failed"),
    ]
    .into_iter()
    .map(|(name, subjects, description)| {
        let mut spec = StreamSpec::new(name, &[subjects])
            .replicas(config.stream_replicas)
            .description(description)
            .max_age(config.stream_max_age)
            .max_bytes(config.stream_max_bytes, config.stream_discard);
        spec.duplicate_window = crate::config::DUPLICATE_WINDOW;
        spec
    })
    .collect()
}

/// Every stream and no consumer (roles bring their consumers as routes).
pub fn topology(config: &SagaConfig) -> Topology {
    Topology {
        streams: streams(config),
        consumers: Vec::new(),
    }
}

/// The subjects of every version of these kinds, in one lane.
fn subjects_of(kinds: &[EventKind], lane: Priority) -> Vec<String> {
    kinds
        .iter()
        .flat_map(|&kind| {
            kind.versions().iter().map(move |&version| {
                Subject {
                    kind,
                    version,
                    lane,
                }
                .to_string()
            })
        })
        .collect()
}

fn filters(stream: &str, role: Role, lane: Priority) -> Vec<String> {
    let express = lane == Priority::Express;
    let lane_suffix = if express { ".express" } else { "" };
    match (stream, role) {
        // The order handler needs neither its own orders.confirmed nor inventory.released.
        (ORDERS, Role::Orders) => {
            subjects_of(&[EventKind::OrderCreated, EventKind::OrderCancelled], lane)
        }
        (INVENTORY, Role::Orders) => subjects_of(&[EventKind::InventoryReserved], lane),
        (ORDERS, Role::Payments) => vec![format!("orders.cancelled{lane_suffix}")],
        (ORDERS, _) => vec![
            if express {
                "orders.*.express".to_string()
            } else {
                "orders.*".to_string()
            },
            format!("orders.created.v2{lane_suffix}"),
        ],
        (INVENTORY, Role::Payments) => vec![format!("inventory.reserved{lane_suffix}")],
        (INVENTORY, _) => vec![if express {
            "inventory.*.express".into()
        } else {
            "inventory.*".into()
        }],
        (PAYMENTS, _) => vec![if express {
            "payments.*.express".into()
        } else {
            "payments.*".into()
        }],
        _ => Vec::new(),
    }
}

/// The durable consumer of `role` on `stream` for `lane`.
pub fn consumer(config: &SagaConfig, role: Role, stream: &str, lane: Priority) -> ConsumerSpec {
    let mut durable = format!("{}-{}", role.name(), stream.to_ascii_lowercase());
    if lane == Priority::Express {
        durable.push_str("-express");
    }
    let filters = filters(stream, role, lane);
    let filter_refs: Vec<&str> = filters.iter().map(String::as_str).collect();
    let max_deliver = if role == Role::Payments {
        config.payment_max_deliver
    } else {
        config.max_deliver
    };
    ConsumerSpec::new(stream, durable, &filter_refs)
        .ack_wait(config.ack_wait)
        .max_deliver(max_deliver)
        .doubling_backoff()
        .description(format!("jetflow {} role, {:?} lane", role.name(), lane))
}

/// The streams a role reads.
pub fn sources(role: Role) -> &'static [&'static str] {
    match role {
        Role::Orders => &[ORDERS, INVENTORY, PAYMENTS],
        Role::Inventory => &[ORDERS],
        // orders.cancelled: a cancelled order's charge, if any was made, is voided.
        Role::Payments => &[INVENTORY, ORDERS],
    }
}

/// Every subject the saga publishes on (each kind, version and lane).
pub fn subjects() -> Vec<String> {
    let mut out = Vec::new();
    for kind in jetflow_schemas::EventKind::all() {
        for version in kind.versions() {
            for lane in Priority::ALL {
                out.push(
                    jetflow_schemas::Subject {
                        kind,
                        version: *version,
                        lane,
                    }
                    .to_string(),
                );
            }
        }
    }
    out
}

/// Every consumer of a role, both lanes.
pub fn consumers(config: &SagaConfig, role: Role) -> Vec<ConsumerSpec> {
    let mut out = Vec::new();
    for stream in sources(role) {
        for lane in [Priority::Standard, Priority::Express] {
            out.push(consumer(config, role, stream, lane));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_have_their_own_consumers_and_disjoint_filters() {
        let c = SagaConfig::default();
        let std = consumer(&c, Role::Inventory, ORDERS, Priority::Standard);
        let exp = consumer(&c, Role::Inventory, ORDERS, Priority::Express);
        assert_eq!(std.durable, "inventory-orders");
        assert_eq!(exp.durable, "inventory-orders-express");
        assert_eq!(std.filter_subjects, vec!["orders.*", "orders.created.v2"]);
        assert_eq!(
            exp.filter_subjects,
            vec!["orders.*.express", "orders.created.v2.express"]
        );
        assert!(std.validate().is_ok() && exp.validate().is_ok());
        let pay = consumer(&c, Role::Payments, INVENTORY, Priority::Express);
        assert_eq!(pay.filter_subjects, vec!["inventory.reserved.express"]);
        assert_eq!(consumers(&c, Role::Orders).len(), 6);
        let orders = consumer(&c, Role::Orders, ORDERS, Priority::Standard);
        assert_eq!(
            orders.filter_subjects,
            vec!["orders.created", "orders.created.v2", "orders.cancelled"]
        );
        let orders = consumer(&c, Role::Orders, INVENTORY, Priority::Express);
        assert_eq!(orders.filter_subjects, vec!["inventory.reserved.express"]);
    }
}
