//! `orders.cancelled`: an order will not be fulfilled; its stock is released if held.

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::kind::EventKind;
use crate::meta::EventMeta;
use crate::version::Version;

/// Why an order was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// A product had too little stock.
    InsufficientStock,
    /// A product does not exist.
    UnknownProduct,
    /// The payment provider declined.
    PaymentDeclined,
    /// The payment provider could not be reached in time.
    PaymentUnavailable,
    /// The order did not finish within the order timeout.
    TimedOut,
}

impl CancelReason {
    /// The reason as written in events and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::InsufficientStock => "insufficient_stock",
            CancelReason::UnknownProduct => "unknown_product",
            CancelReason::PaymentDeclined => "payment_declined",
            CancelReason::PaymentUnavailable => "payment_unavailable",
            CancelReason::TimedOut => "timed_out",
        }
    }
}

/// `orders.cancelled` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    /// Common fields.
    #[serde(flatten)]
    pub meta: EventMeta,
    /// Always 1.
    pub version: Version<1>,
    /// Why.
    pub reason: CancelReason,
    /// More about why, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Event for OrderCancelled {
    const KIND: EventKind = EventKind::OrderCancelled;
    const VERSION: u8 = 1;
    fn meta(&self) -> &EventMeta {
        &self.meta
    }
}
