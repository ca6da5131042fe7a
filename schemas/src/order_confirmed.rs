//! `orders.confirmed`: an order was paid; its reserved stock becomes sold.

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::kind::EventKind;
use crate::meta::EventMeta;
use crate::version::Version;

/// `orders.confirmed` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderConfirmed {
    /// Common fields.
    #[serde(flatten)]
    pub meta: EventMeta,
    /// Always 1.
    pub version: Version<1>,
    /// The amount charged.
    pub amount_cents: u64,
}

impl Event for OrderConfirmed {
    const KIND: EventKind = EventKind::OrderConfirmed;
    const VERSION: u8 = 1;
    fn meta(&self) -> &EventMeta {
        &self.meta
    }
}
