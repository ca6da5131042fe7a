//! `payments.succeeded`: an order was charged.

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::kind::EventKind;
use crate::meta::EventMeta;
use crate::version::Version;

/// `payments.succeeded` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentSucceeded {
    /// Common fields.
    #[serde(flatten)]
    pub meta: EventMeta,
    /// Always 1.
    pub version: Version<1>,
    /// The amount charged.
    pub amount_cents: u64,
    /// The provider's reference.
    pub payment_id: String,
}

impl Event for PaymentSucceeded {
    const KIND: EventKind = EventKind::PaymentSucceeded;
    const VERSION: u8 = 1;
    fn meta(&self) -> &EventMeta {
        &self.meta
    }
}
