//! What an operator runs and sees: Prometheus scraping a loaded `jetflow all` and the JSON
//! logs, `jetflow dlq`, `jetflow bench` as a smoke test of the benchmarks, and one order as one
//! OpenTelemetry trace at a real OTLP receiver.

mod bench_cli;
mod dlq_cli;
mod observability;
mod traces;
