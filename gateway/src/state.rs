//! What the gateway's handlers share.

use std::sync::Arc;

use jetflow_domain::{Database, SagaConfig};
use jetflow_runtime::Publisher;

/// The gateway's dependencies.
#[derive(Clone)]
pub struct GatewayState {
    /// The database (read model, stock, idempotency keys).
    pub db: Database,
    /// Publishes `orders.created` and waits for the PubAck.
    pub publisher: Arc<dyn Publisher>,
    /// The saga's settings (which `orders.created` versions to publish).
    pub saga: Arc<SagaConfig>,
}
