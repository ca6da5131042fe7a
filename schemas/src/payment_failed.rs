//! `payments.failed`: an order could not be charged (declined, or the provider was
//! unavailable for every allowed attempt).

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::kind::EventKind;
use crate::meta::EventMeta;
use crate::version::Version;

/// Why a payment failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentFailureReason {
    /// The provider said no.
    Declined,
    /// The provider could not be reached in time.
    Unavailable,
}

/// `payments.failed` v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailed {
    /// Common fields.
    #[serde(flatten)]
    pub meta: EventMeta,
    /// Always 1.
    pub version: Version<1>,
    /// The amount that was to be charged.
    pub amount_cents: u64,
    /// Why.
    pub reason: PaymentFailureReason,
    /// More about why, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Event for PaymentFailed {
    const KIND: EventKind = EventKind::PaymentFailed;
    const VERSION: u8 = 1;
    fn meta(&self) -> &EventMeta {
        &self.meta
    }
}
