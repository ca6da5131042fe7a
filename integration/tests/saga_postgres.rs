//! The order saga end to end on PostgreSQL (the production database), against a real
//! nats-server; plus two inventory replicas sharing the role's durable consumers.

use jetflow_integration::scenarios::{self, Backend};

jetflow_integration::saga_suite!(Backend::Postgres);

#[actix_web::test]
async fn two_inventory_replicas_never_oversell() {
    scenarios::inventory_replicas(Backend::Postgres, 120, 45).await;
}
