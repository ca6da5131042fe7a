//! # jetflow benchmarks
//!
//! Measurements that always come with a baseline measured on the same broker in the same run,
//! because these machines are shared and noisy: only ratios travel.
//!
//! * [`bridge`]: publishing with PubAck and consuming with ack, through the jetflow bridge and
//!   through raw async-nats.
//! * [`saga`]: a hand-written async-nats 4-event saga (created → reserved → paid → confirmed,
//!   no HTTP, no database): the ceiling of the order pipeline on a broker.
//! * [`report`]: percentiles and throughput.
//! * [`load`]: orders posted to a gateway, by clients as fast as they are answered or at a
//!   steady pace with retries (the fault tests use it too).
//! * [`command`]: `jetflow bench` (`bridge`, `orders`, `accept`): the command line of these,
//!   and the orders benchmark, which starts a whole system (a nats-server, a database, a
//!   `jetflow all` process) and measures it end to end, with [`cpu_use`] for the CPU an
//!   order costs.

#![warn(missing_docs)]

pub mod bridge;
pub mod command;
pub mod cpu_use;
pub mod load;
pub mod report;
pub mod saga;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BenchError(pub String);

impl BenchError {
    /// An error with this message.
    pub fn new(message: impl std::fmt::Display) -> Self {
        Self(message.to_string())
    }
}
