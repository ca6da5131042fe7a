//! What the gateway's handlers share.

use std::sync::Arc;

use jetflow_domain::SagaConfig;
use jetflow_runtime::{Backend, Database, GroupCommit, Publisher};

use crate::accept_writes::AcceptWrite;

/// The gateway's dependencies.
#[derive(Clone)]
pub struct GatewayState {
    /// The database (read model, stock, idempotency keys), for reads and rare writes.
    pub db: Database,
    /// The writes of the accept path, committed in groups.
    pub writes: GroupCommit<AcceptWrite>,
    /// Publishes `orders.created` and waits for the PubAck.
    pub publisher: Arc<dyn Publisher>,
    /// The saga's settings (which `orders.created` versions to publish).
    pub saga: Arc<SagaConfig>,
    /// Where an order's events go when their publish may have been stored but was not
    /// confirmed (a PubAck that timed out): the relay publishes them again with the same ids.
    pub outbox: Option<jetflow_runtime::OutboxHandle>,
}

impl GatewayState {
    /// The state over `db` and `publisher`, with its group-commit writers (each committing up
    /// to 256 requests' writes together; two take turns on PostgreSQL, so a request waits
    /// for one commit, not for the one in progress and then its own).
    pub fn new(db: Database, publisher: Arc<dyn Publisher>, saga: Arc<SagaConfig>) -> Self {
        let writers = match db.backend() {
            Backend::Postgres => 2,
            Backend::Sqlite => 1,
        };
        Self {
            writes: GroupCommit::start_writers(db.clone(), 256, writers),
            db,
            publisher,
            saga,
            outbox: None,
        }
    }

    /// Hands unconfirmed publishes to `outbox` instead of refusing their orders.
    pub fn with_outbox(mut self, outbox: jetflow_runtime::OutboxHandle) -> Self {
        self.outbox = Some(outbox);
        self
    }
}
