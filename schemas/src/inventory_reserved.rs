//! `inventory.reserved`: every item of an order is held, at a known price.

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::kind::EventKind;
use crate::meta::EventMeta;
use crate::version::Version;

/// One reserved item and its unit price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservedItem {
    /// The product.
    pub product_id: String,
    /// How many.
    pub quantity: u32,
    /// Unit price in cents.
    pub unit_price_cents: u64,
}

/// `inventory.reserved` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryReserved {
    /// Common fields.
    #[serde(flatten)]
    pub meta: EventMeta,
    /// Always 1.
    pub version: Version<1>,
    /// The customer to charge.
    pub customer_id: String,
    /// What is held.
    pub items: Vec<ReservedItem>,
    /// The amount to charge.
    pub amount_cents: u64,
}

impl Event for InventoryReserved {
    const KIND: EventKind = EventKind::InventoryReserved;
    const VERSION: u8 = 1;
    fn meta(&self) -> &EventMeta {
        &self.meta
    }
}
