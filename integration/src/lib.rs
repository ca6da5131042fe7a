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
pub mod gateway;
pub mod invariants;
pub mod load;
pub mod nats;
pub mod otlp;
pub mod pki;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod scenarios;
pub mod wait;

pub use app::{TestApp, TestAppBuilder};
pub use cluster::NatsCluster;
pub use nats::NatsServer;
pub use pki::TestPki;
pub use postgres::TestDatabase;
pub use process::JetflowProcess;
pub use wait::{eventually, eventually_sync, order_finished};

/// Logs to the test's output (captured unless `--nocapture`), filtered by `RUST_LOG`
/// (default `warn`). Idempotent.
pub fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    jetflow_domain::payment_client::install_crypto_provider();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// Runs an async test inside an actix system, the way `#[actix_web::test]` does, but with a
/// second (multi-thread) tokio runtime entered around it: when the system is dropped at the
/// end of the test, the futures of actors still in flight are dropped too, and a sqlx
/// connection dropped then needs a runtime to hand itself back to. Without one sqlx panics
/// inside a destructor and the whole test binary aborts.
pub fn run<F: std::future::Future<Output = ()>>(test: F) {
    init_tracing();
    let outer = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let guard = outer.enter();
    {
        let system = actix_rt::System::new();
        system.block_on(test);
    }
    drop(guard);
    outer.shutdown_background();
}
