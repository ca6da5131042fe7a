//! `GET /openapi.json`: the OpenAPI 3 document of the REST interface, generated from the
//! handlers and types themselves so it cannot disagree with them.

use actix_web::{HttpResponse, web};
use utoipa::OpenApi;

use crate::error::ErrorBody;
use crate::order_request::{CreateOrderRequest, OrderItemRequest, ShippingAddressRequest};
use crate::routes::inventory::{SetStock, StockView};
use crate::routes::orders::{HistoryItem, OrderAccepted, OrderView};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "jetflow",
        description = "The jetflow order pipeline: orders are accepted once stored in NATS JetStream, then reserved, charged and confirmed (or cancelled with a reason) by a saga of actors. Every error is JSON: {\"error\": code, \"message\": text}.",
        license(name = "Apache-2.0")
    ),
    paths(
        crate::routes::orders::create_order,
        crate::routes::orders::get_order,
        crate::routes::inventory::put_stock,
        crate::routes::inventory::get_stock,
        crate::routes::health::health,
        crate::routes::health::ready,
        crate::routes::health::metrics,
        openapi_json,
    ),
    components(schemas(
        CreateOrderRequest, OrderItemRequest, ShippingAddressRequest, OrderAccepted, OrderView, HistoryItem,
        SetStock, StockView, ErrorBody
    )),
    tags(
        (name = "orders", description = "Placing and following orders"),
        (name = "inventory", description = "Stock and prices"),
        (name = "operations", description = "Probes and metrics"),
    )
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document")))]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

/// Mounts the document.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/openapi.json", web::get().to(openapi_json));
}
