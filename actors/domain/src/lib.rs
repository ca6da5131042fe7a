//! # The jetflow reference system
//!
//! An order pipeline on the jetflow runtime: the gateway publishes `orders.created`; the
//! [`StockHandler`](stock_handler::StockHandler) reserves stock, the
//! [`PaymentHandler`](payment_handler::PaymentHandler) charges through a circuit breaker, the
//! [`OrderHandler`](order_handler::OrderHandler) confirms or cancels, and compensations
//! release stock and void charges. Every handler runs on a transactional route of the
//! runtime: a batch of deliveries, its inbox claims, state changes and outgoing events commit
//! in one transaction. This crate holds only the order, stock and payment logic and their
//! tables.

#![warn(missing_docs)]

pub mod config;
pub mod events;
pub mod handling;
pub mod idempotency_store;
pub mod input;
pub mod metrics;
pub mod order_handler;
pub mod order_store;
pub mod order_sweeper;
pub mod payment_client;
pub mod payment_handler;
pub mod payment_store;
pub mod payment_voider;
pub mod service;
pub mod stock_handler;
pub mod stock_store;
pub mod topology;

pub use config::SagaConfig;
pub use handling::Deps;
pub use input::InboundEvent;
pub use jetflow_runtime::db::now_ms;
pub use topology::Role;

/// The order system's migrations (its own tables; the runtime brings the inbox and outbox).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
