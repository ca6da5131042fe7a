//! A steady stream of orders, as a well-behaved client sends them while things break: the
//! load generator of `jetflow bench` ([`jetflow_bench::load`]) at its test pace (one order every
//! 25 ms, each retried with its `Idempotency-Key` on a 503 or a lost connection, so the set
//! of accepted orders is exact). The fault tests assert that every answer is a 202 or a 503
//! ([`LoadReport::assert_clean`]).

pub use jetflow_bench::load::{LoadConfig, LoadReport, Pace, run};
