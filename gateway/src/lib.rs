//! # jetflow gateway and binary
//!
//! The actix-web REST gateway of the order system, the composition root that starts any set
//! of roles ([`startup::Application`]), the simulated payment provider and the operator
//! tools (`dlq`, `bench`), behind one binary, `jetflow`.

pub mod bench;
pub mod cli;
pub mod configuration;
pub mod correlation;
pub mod dlq;
pub mod error;
pub mod http_metrics;
pub mod local_nats;
pub mod order_request;
pub mod payment_provider;
pub mod probe;
pub mod rate_limit;
pub mod routes;
pub mod run;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod traceparent;
