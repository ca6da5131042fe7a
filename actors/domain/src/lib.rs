//! # The jetflow reference system
//!
//! An order pipeline on the jetflow runtime: the gateway publishes `orders.created`; the
//! [`StockActor`](stock_actor::StockActor) reserves stock, the
//! [`PaymentActor`](payment_actor::PaymentActor) charges through a circuit breaker, the
//! [`OrderActor`](order_actor::OrderActor) confirms or cancels, and compensations release
//! stock. Every actor handles each event in one [`UnitOfWork`](unit_of_work::UnitOfWork):
//! inbox claim, state change and outbox in a single transaction.

pub mod config;
pub mod db;
pub mod events;
pub mod handling;
pub mod idempotency_store;
pub mod inbox;
pub mod input;
pub mod metrics;
pub mod order_actor;
pub mod order_store;
pub mod outbox;
pub mod payment_actor;
pub mod payment_client;
pub mod payment_store;
pub mod service;
pub mod stock_actor;
pub mod stock_store;
pub mod topology;
pub mod unit_of_work;

pub use config::SagaConfig;
pub use db::Database;
pub use handling::Deps;
pub use input::InboundEvent;
pub use outbox::{OutboxHandle, OutboxRelay, RelayConfig};
pub use topology::Role;
