//! # jetflow integration harness
//!
//! Real parts for tests: nats-server processes on free loopback ports with their own stores
//! (single servers and 3-node clusters, killed and restarted at will), fresh PostgreSQL
//! databases, the application in-process ([`TestApp`], the `spawn_app` of Zero To Production)
//! or as `jetflow` processes ([`JetflowProcess`]), and the invariant checks every
//! fault-injection test ends with.

pub mod app;
pub mod binary;
pub mod cluster;
pub mod creds;
pub mod invariants;
pub mod load;
pub mod nats;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod scenarios;
pub mod wait;

pub use app::{TestApp, TestAppBuilder};
pub use cluster::NatsCluster;
pub use nats::NatsServer;
pub use postgres::TestDatabase;
pub use process::JetflowProcess;
pub use wait::{eventually, eventually_sync};

/// Logs to the test's output (captured unless `--nocapture`), filtered by `RUST_LOG`
/// (default `warn`). Idempotent.
pub fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}
