//! Faults under a steady stream of orders, each ending with the invariant check: the broker
//! (kill -9, a frozen server, a cluster losing nodes), poison events and a database outage,
//! jetflow's own processes killed, and the payment provider down, slow or rate-limited.

mod nats;
mod poison_and_database;
mod process;
mod provider;

/// The in-process apps of these tests share the process's metrics: a test that reads them
/// (the provider's breaker and mailbox depths) runs alone, the others side by side.
static PROCESS_METRICS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Held by a test that reads process-wide metrics: no other test of this binary runs meanwhile.
fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    PROCESS_METRICS
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Held by a test that starts an in-process app: it runs beside the others, never beside one
/// that holds [`alone`].
fn beside_others() -> std::sync::RwLockReadGuard<'static, ()> {
    PROCESS_METRICS
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
