//! # jetflow schemas
//!
//! Every event of the order saga has a JSON Schema (draft 2020-12) per version, in a file at
//! this crate's root named after its subject and version (`orders.created.v1.json`). This
//! crate embeds those files, offers the Rust types that match them, and validates both ways:
//! producers [`encode`] (serialize, then validate before publishing), consumers [`decode`]
//! (validate, then deserialize). The tests prove the types and the files agree.

mod codec;
mod error;
mod event;
mod inventory_released;
mod inventory_reserved;
mod kind;
mod meta;
mod order_cancelled;
mod order_confirmed;
mod order_created;
mod payment_failed;
mod payment_succeeded;
mod subject;
mod validator;
mod version;

pub use codec::{decode, encode};
pub use error::{FieldError, SchemaError};
pub use event::{AnyEvent, Event};
pub use inventory_released::InventoryReleased;
pub use inventory_reserved::{InventoryReserved, ReservedItem};
pub use kind::EventKind;
pub use meta::EventMeta;
pub use order_cancelled::{CancelReason, OrderCancelled};
pub use order_confirmed::OrderConfirmed;
pub use order_created::{OrderCreatedV1, OrderCreatedV2, OrderItem, Priority, ShippingAddress};
pub use payment_failed::{PaymentFailed, PaymentFailureReason};
pub use payment_succeeded::PaymentSucceeded;
pub use subject::Subject;
pub use validator::{registry, schema_text, validate};
pub use version::Version;
