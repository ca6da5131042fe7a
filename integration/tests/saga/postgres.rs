//! The order saga end to end on PostgreSQL (the production database), against a real
//! nats-server; plus two inventory replicas sharing the role's durable consumers.

use jetflow_integration::scenarios::{self, Backend};

jetflow_integration::saga_suite!(Backend::Postgres);

#[test]
fn two_inventory_replicas_never_oversell() {
    jetflow_integration::run(async {
        scenarios::inventory_replicas(Backend::Postgres, 120, 45).await;
    })
}
