//! The order saga end to end on SQLite (the laptop default), against a real nats-server.

use jetflow_integration::scenarios::{self, Backend};

const DB: Backend = Backend::Sqlite;

#[actix_web::test]
async fn happy_path_confirms_with_the_right_amount() {
    scenarios::happy_path(DB).await;
}

#[actix_web::test]
async fn insufficient_stock_and_unknown_product_cancel_at_once() {
    scenarios::stock_failures(DB).await;
}

#[actix_web::test]
async fn a_declined_payment_cancels_and_releases_stock() {
    scenarios::declined_payment_releases_stock(DB).await;
}

#[actix_web::test]
async fn the_same_idempotency_key_makes_one_order() {
    scenarios::idempotency_key(DB).await;
}

#[actix_web::test]
async fn concurrent_buyers_never_oversell() {
    scenarios::concurrent_buyers(DB, 120, 45).await;
}

#[actix_web::test]
async fn v1_and_v2_events_are_processed_and_dual_publishing_handles_an_order_once() {
    scenarios::schema_versions(DB).await;
}

#[actix_web::test]
async fn an_express_order_overtakes_a_backlog() {
    scenarios::express_overtakes_backlog(DB, 300).await;
}

#[actix_web::test]
async fn poison_goes_to_the_dlq_and_replay_completes_an_exhausted_order() {
    scenarios::poison_and_replay(DB).await;
}
