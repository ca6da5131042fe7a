//! What an operator runs and sees: Prometheus scraping a loaded `jetflow all` and the JSON
//! logs, `jetflow dlq`, and `jetflow bench` as a smoke test of the benchmarks.

mod bench_cli;
mod dlq_cli;
mod observability;
