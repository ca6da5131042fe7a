//! # jetflow gateway
//!
//! The actix-web REST API of the order system, as a library: the routes (`POST /orders`,
//! `GET /orders/{id}`, `PUT`/`GET /inventory/{product_id}`, the probes, `/metrics` and
//! `/openapi.json`), their validation and JSON errors, and the middleware every server of
//! the binary shares (correlation id, access log, HTTP metrics, per-client rate limit). The
//! `jetflow` binary composes it into servers (`gateway/cli`).

#![warn(missing_docs)]

pub mod accept_writes;
pub mod access_log;
pub mod admin;
pub mod admission;
pub mod correlation;
pub mod error;
pub mod http_metrics;
pub mod order_request;
pub mod rate_limit;
pub mod requests_first;
pub mod routes;
pub mod state;

pub use state::GatewayState;
