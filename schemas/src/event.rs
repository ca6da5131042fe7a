//! What all events have in common, and one enum for any of them.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::kind::EventKind;
use crate::meta::EventMeta;
use crate::{
    InventoryReleased, InventoryReserved, OrderCancelled, OrderConfirmed, OrderCreatedV1,
    OrderCreatedV2, PaymentFailed, PaymentSucceeded,
};

/// An event type with a schema.
pub trait Event: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// Its kind.
    const KIND: EventKind;
    /// Its schema version.
    const VERSION: u8;
    /// Its common fields.
    fn meta(&self) -> &EventMeta;
}

/// Any event of the saga, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyEvent {
    /// `orders.created` v1.
    OrderCreatedV1(OrderCreatedV1),
    /// `orders.created` v2.
    OrderCreatedV2(OrderCreatedV2),
    /// `orders.cancelled` v1.
    OrderCancelled(OrderCancelled),
    /// `orders.confirmed` v1.
    OrderConfirmed(OrderConfirmed),
    /// `inventory.reserved` v1.
    InventoryReserved(InventoryReserved),
    /// `inventory.released` v1.
    InventoryReleased(InventoryReleased),
    /// `payments.succeeded` v1.
    PaymentSucceeded(PaymentSucceeded),
    /// `payments.failed` v1.
    PaymentFailed(PaymentFailed),
}

impl AnyEvent {
    /// The common fields.
    pub fn meta(&self) -> &EventMeta {
        match self {
            AnyEvent::OrderCreatedV1(e) => &e.meta,
            AnyEvent::OrderCreatedV2(e) => &e.meta,
            AnyEvent::OrderCancelled(e) => &e.meta,
            AnyEvent::OrderConfirmed(e) => &e.meta,
            AnyEvent::InventoryReserved(e) => &e.meta,
            AnyEvent::InventoryReleased(e) => &e.meta,
            AnyEvent::PaymentSucceeded(e) => &e.meta,
            AnyEvent::PaymentFailed(e) => &e.meta,
        }
    }

    /// The kind.
    pub fn kind(&self) -> EventKind {
        match self {
            AnyEvent::OrderCreatedV1(_) | AnyEvent::OrderCreatedV2(_) => EventKind::OrderCreated,
            AnyEvent::OrderCancelled(_) => EventKind::OrderCancelled,
            AnyEvent::OrderConfirmed(_) => EventKind::OrderConfirmed,
            AnyEvent::InventoryReserved(_) => EventKind::InventoryReserved,
            AnyEvent::InventoryReleased(_) => EventKind::InventoryReleased,
            AnyEvent::PaymentSucceeded(_) => EventKind::PaymentSucceeded,
            AnyEvent::PaymentFailed(_) => EventKind::PaymentFailed,
        }
    }

    /// The schema version.
    pub fn version(&self) -> u8 {
        match self {
            AnyEvent::OrderCreatedV2(_) => 2,
            _ => 1,
        }
    }
}
