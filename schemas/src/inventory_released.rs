//! `inventory.released`: the stock of a cancelled order went back to available.

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::kind::EventKind;
use crate::meta::EventMeta;
use crate::order_cancelled::CancelReason;
use crate::order_created::OrderItem;
use crate::version::Version;

/// `inventory.released` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryReleased {
    /// Common fields.
    #[serde(flatten)]
    pub meta: EventMeta,
    /// Always 1.
    pub version: Version<1>,
    /// What went back.
    pub items: Vec<OrderItem>,
    /// Why the order was cancelled.
    pub reason: CancelReason,
}

impl Event for InventoryReleased {
    const KIND: EventKind = EventKind::InventoryReleased;
    const VERSION: u8 = 1;
    fn meta(&self) -> &EventMeta {
        &self.meta
    }
}
