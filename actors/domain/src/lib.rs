//! # The jetflow reference system
//!
//! An order pipeline on the jetflow runtime: the gateway publishes `orders.created`; the
//! [`StockActor`] reserves stock, the [`PaymentActor`] charges through a circuit breaker
//! (a `BreakerActor`), the [`OrderActor`] confirms or cancels, and compensations release
//! stock and void charges. Each is a supervised actix actor with a bounded mailbox: the
//! bridge's routes send it batches of decoded events, and it applies each batch (inbox
//! claims, state changes, outgoing events) in one transaction. This crate holds only the
//! order, stock and payment logic and their tables.

#![warn(missing_docs)]

mod book;
pub mod config;
pub mod events;
pub mod handling;
pub mod idempotency_store;
pub mod input;
pub mod metrics;
pub mod order_actor;
pub mod order_store;
pub mod order_sweeper;
pub mod payment_actor;
pub mod payment_client;
pub mod payment_store;
pub mod payment_voider;
pub mod service;
pub mod stock_actor;
pub mod stock_store;
pub mod topology;

pub use config::SagaConfig;
pub use handling::Deps;
pub use input::InboundEvent;
pub use jetflow_runtime::db::now_ms;
pub use order_actor::OrderActor;
pub use payment_actor::PaymentActor;
pub use stock_actor::StockActor;
pub use topology::Role;

/// The order system's migrations (its own tables; the runtime brings the inbox and outbox):
/// the ones both engines run, and PostgreSQL's own steps.
pub static MIGRATIONS: jetflow_runtime::db::Migrations =
    jetflow_runtime::db::Migrations::new(&BOTH_ENGINES).postgres(&POSTGRES_ONLY);

static BOTH_ENGINES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
static POSTGRES_ONLY: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
