//! `orders.created`: the gateway accepted an order. v2 adds the shipping address.

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::kind::EventKind;
use crate::meta::EventMeta;
use crate::version::Version;

/// The lane of an order: express orders travel on subjects and consumers of their own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// The default lane.
    #[default]
    Standard,
    /// The express lane.
    Express,
}

impl Priority {
    /// Both lanes.
    pub const ALL: [Priority; 2] = [Priority::Standard, Priority::Express];

    /// `standard` or `express`, as in JSON and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Standard => "standard",
            Priority::Express => "express",
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Priority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "standard" => Ok(Priority::Standard),
            "express" => Ok(Priority::Express),
            other => Err(format!(
                "priority must be \"standard\" or \"express\", got {other:?}"
            )),
        }
    }
}

/// One ordered item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    /// The product, 1 to 64 characters.
    pub product_id: String,
    /// How many, 1 to 1000.
    pub quantity: u32,
}

/// Where to ship an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShippingAddress {
    /// Who receives it.
    pub recipient: String,
    /// First line.
    pub line1: String,
    /// Second line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    /// City.
    pub city: String,
    /// Postal code.
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
}

/// `orders.created` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreatedV1 {
    /// Common fields.
    #[serde(flatten)]
    pub meta: EventMeta,
    /// Always 1.
    pub version: Version<1>,
    /// The customer.
    pub customer_id: String,
    /// 1 to 100 items.
    pub items: Vec<OrderItem>,
    /// The lane.
    pub priority: Priority,
}

/// `orders.created` v2: v1 and an optional shipping address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreatedV2 {
    /// Common fields.
    #[serde(flatten)]
    pub meta: EventMeta,
    /// Always 2.
    pub version: Version<2>,
    /// The customer.
    pub customer_id: String,
    /// 1 to 100 items.
    pub items: Vec<OrderItem>,
    /// The lane.
    pub priority: Priority,
    /// Where to ship it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipping_address: Option<ShippingAddress>,
}

impl Event for OrderCreatedV1 {
    const KIND: EventKind = EventKind::OrderCreated;
    const VERSION: u8 = 1;
    fn meta(&self) -> &EventMeta {
        &self.meta
    }
}

impl Event for OrderCreatedV2 {
    const KIND: EventKind = EventKind::OrderCreated;
    const VERSION: u8 = 2;
    fn meta(&self) -> &EventMeta {
        &self.meta
    }
}
