//! The kinds of events, with their names and the versions that exist.

use std::fmt;

/// A kind of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// `orders.created`
    OrderCreated,
    /// `orders.cancelled`
    OrderCancelled,
    /// `orders.confirmed`
    OrderConfirmed,
    /// `inventory.reserved`
    InventoryReserved,
    /// `inventory.released`
    InventoryReleased,
    /// `payments.succeeded`
    PaymentSucceeded,
    /// `payments.failed`
    PaymentFailed,
}

impl EventKind {
    /// Every kind.
    pub fn all() -> [EventKind; 7] {
        [
            EventKind::OrderCreated,
            EventKind::OrderCancelled,
            EventKind::OrderConfirmed,
            EventKind::InventoryReserved,
            EventKind::InventoryReleased,
            EventKind::PaymentSucceeded,
            EventKind::PaymentFailed,
        ]
    }

    /// The subject name, e.g. `orders.created`.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::OrderCreated => "orders.created",
            EventKind::OrderCancelled => "orders.cancelled",
            EventKind::OrderConfirmed => "orders.confirmed",
            EventKind::InventoryReserved => "inventory.reserved",
            EventKind::InventoryReleased => "inventory.released",
            EventKind::PaymentSucceeded => "payments.succeeded",
            EventKind::PaymentFailed => "payments.failed",
        }
    }

    /// The versions that have a schema.
    pub fn versions(self) -> &'static [u8] {
        match self {
            EventKind::OrderCreated => &[1, 2],
            _ => &[1],
        }
    }

    /// The kind named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::all().into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
