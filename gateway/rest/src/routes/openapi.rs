//! `GET /openapi.json`: the OpenAPI 3 document of the REST interface, generated from the
//! handlers and types themselves so it cannot disagree with them.
//!
//! What every route shares, because middleware does it, is added by [`Middleware`]: the
//! optional `X-Correlation-ID` request header (a malformed one answers 400 on any route) and
//! its echo on the response, the per-client rate limit (429 with `Retry-After`, on every
//! route but the probes and metrics), and `Retry-After` on every 503 of an [`ApiError`].
//! `.ci/check-api.sh` checks the running server against this document with schemathesis.
//!
//! [`ApiError`]: crate::error::ApiError

use actix_web::{HttpResponse, web};
use serde_json::json;
use utoipa::openapi::path::{Operation, Parameter, PathItem};
use utoipa::openapi::{self, RefOr};
use utoipa::{Modify, OpenApi};

use crate::error::ErrorBody;
use crate::order_request::{CreateOrderRequest, OrderItemRequest, ShippingAddressRequest};
use crate::routes::allow;
use crate::routes::health::{ComponentView, HealthView, Liveness, Readiness, ReadyView};
use crate::routes::inventory::{SetStock, StockView};
use crate::routes::orders::{
    CancelReasonView, HistoryItem, OrderAccepted, OrderItemView, OrderStatusView, OrderView,
    PriorityView,
};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "jetflow",
        description = "The jetflow order pipeline: orders are accepted once stored in NATS JetStream, then reserved, charged and confirmed (or cancelled with a reason) by a saga of actors. Every error is JSON: {\"error\": code, \"message\": text}. A method a path does not serve answers 405 with `Allow`; HEAD is served wherever GET is.",
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
        CreateOrderRequest, OrderItemRequest, ShippingAddressRequest, PriorityView,
        OrderAccepted, OrderView, OrderStatusView, CancelReasonView, OrderItemView, HistoryItem,
        SetStock, StockView,
        HealthView, Liveness, ReadyView, Readiness, ComponentView,
        ErrorBody
    )),
    modifiers(&Middleware),
    tags(
        (name = "orders", description = "Placing and following orders"),
        (name = "inventory", description = "Stock and prices"),
        (name = "operations", description = "Probes and metrics"),
    )
)]
pub struct ApiDoc;

/// Paths the rate limit never applies to (as `rate_limit::middleware` has it; a test checks).
pub const RATE_LIMIT_EXEMPT: &[&str] = &["/health", "/ready", "/metrics"];

/// Request bodies that refuse unknown fields (`order_request::parse`, `inventory::put_stock`).
pub const CLOSED_OBJECTS: &[&str] = &[
    "CreateOrderRequest",
    "OrderItemRequest",
    "ShippingAddressRequest",
    "SetStock",
];

/// `X-Correlation-ID` as `correlation::is_valid` takes it: 1 to 128 visible ASCII characters.
fn correlation_id_schema() -> serde_json::Value {
    json!({
        "type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[!-~]{1,128}$",
        "example": "checkout-7f3a"
    })
}

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("a well-formed OpenAPI object")
}

/// Marks a response header `required` (sent on every such response). utoipa's `Header` has no
/// field for it, so it goes in with the extensions, which are serialized inline.
fn require(header: &mut openapi::header::Header) {
    header
        .extensions
        .get_or_insert_with(Default::default)
        .insert("required".into(), json!(true));
}

fn response_header(description: &str, schema: serde_json::Value) -> RefOr<openapi::header::Header> {
    let mut header: openapi::header::Header =
        from_json(json!({"description": description, "schema": schema}));
    require(&mut header);
    RefOr::T(header)
}

fn component_ref(kind: &str, name: &str) -> openapi::Ref {
    openapi::Ref::new(format!("#/components/{kind}/{name}"))
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

fn error_response(description: &str) -> RefOr<openapi::Response> {
    RefOr::T(from_json(json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    })))
}

fn has_error_body(response: &openapi::Response) -> bool {
    response.content.values().any(|c| match c {
        RefOr::T(content) => matches!(&content.schema, Some(RefOr::Ref(r)) if r.ref_location == "#/components/schemas/ErrorBody"),
        RefOr::Ref(_) => false,
    })
}

/// Adds what the middleware of every route does (see the module documentation).
pub struct Middleware;

impl Modify for Middleware {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            openapi::security::SecurityScheme::Http(
                openapi::security::HttpBuilder::new()
                    .scheme(openapi::security::HttpAuthScheme::Bearer)
                    .description(Some(
                        "JETFLOW_ADMIN_TOKEN, for writes other than order submission; with none set, those writes are accepted from loopback clients only",
                    ))
                    .build(),
            ),
        );
        components.parameters.insert(
            "CorrelationId".into(),
            RefOr::T(from_json::<Parameter>(json!({
                "name": "X-Correlation-ID", "in": "header", "required": false,
                "description": "Joins the logs of every role and is carried on every event of an order; made up (a UUID) when absent, echoed on the response. 1 to 128 visible ASCII characters, else 400.",
                "schema": correlation_id_schema(),
            }))),
        );
        components.headers.insert(
            "X-Correlation-ID".into(),
            response_header(
                "The request's X-Correlation-ID, or the one made up for it",
                correlation_id_schema(),
            ),
        );
        components.headers.insert(
            "Retry-After".into(),
            response_header(
                "Seconds to wait before retrying",
                json!({"type": "integer", "minimum": 1}),
            ),
        );
        for name in CLOSED_OBJECTS {
            if let Some(RefOr::T(openapi::Schema::Object(object))) =
                components.schemas.get_mut(*name)
            {
                object.additional_properties = Some(Box::new(
                    openapi::schema::AdditionalProperties::FreeForm(false),
                ));
            }
        }

        for (path, item) in doc.paths.paths.iter_mut() {
            let limited = !RATE_LIMIT_EXEMPT.contains(&path.as_str());
            for operation in operations_mut(item) {
                operation
                    .parameters
                    .get_or_insert_with(Vec::new)
                    .push(RefOr::Ref(component_ref("parameters", "CorrelationId")));
                let responses = &mut operation.responses.responses;
                match responses.get_mut("400") {
                    Some(RefOr::T(bad)) => {
                        bad.description
                            .push_str(", or a malformed X-Correlation-ID");
                    }
                    Some(RefOr::Ref(_)) => {}
                    None => {
                        responses.insert(
                            "400".into(),
                            error_response(
                                "X-Correlation-ID is not 1 to 128 visible ASCII characters",
                            ),
                        );
                    }
                }
                if limited && !responses.contains_key("429") {
                    responses.insert(
                        "429".into(),
                        error_response(
                            "This client exceeded its rate limit: wait Retry-After seconds",
                        ),
                    );
                }
                for (status, response) in responses.iter_mut() {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    // Every header documented on a response is sent with it.
                    for header in response.headers.values_mut() {
                        if let RefOr::T(header) = header {
                            require(header);
                        }
                    }
                    // The answer to a malformed X-Correlation-ID cannot echo it.
                    if status != "400" {
                        response.headers.insert(
                            "X-Correlation-ID".into(),
                            RefOr::Ref(component_ref("headers", "X-Correlation-ID")),
                        );
                    }
                    if (status == "429" || status == "503") && has_error_body(response) {
                        response.headers.insert(
                            "Retry-After".into(),
                            RefOr::Ref(component_ref("headers", "Retry-After")),
                        );
                    }
                }
            }
        }
    }
}

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object)))]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

/// Mounts the document (GET and HEAD; any other method answers 405 with `Allow`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/openapi.json")
            .route(web::get().to(openapi_json))
            .route(web::head().to(openapi_json))
            .default_service(web::to(allow(&["GET", "HEAD"]))),
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use jetflow_domain::order_store::OrderStatus;
    use jetflow_schemas::{CancelReason, Priority};
    use serde_json::Value;

    use super::*;
    use crate::order_request::{MAX_ID_CHARS, MAX_ITEMS, MAX_QUANTITY};
    use crate::routes::orders::{reason_view, status_view};

    fn document() -> Value {
        serde_json::to_value(ApiDoc::openapi()).expect("serializable")
    }

    /// Every `$ref` in `value`, with where it was found.
    fn refs<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push((at.clone(), r)),
                        _ => refs(v, format!("{at}/{key}"), out),
                    }
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    refs(v, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    fn enum_of(doc: &Value, schema: &str) -> Vec<String> {
        doc["components"]["schemas"][schema]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{schema} is not an enum"))
            .iter()
            .map(|v| v.as_str().expect("string variants").to_string())
            .collect()
    }

    fn schema<'a>(doc: &'a Value, pointer: &str) -> &'a Value {
        doc.pointer(&format!("/components/schemas/{pointer}"))
            .unwrap_or_else(|| panic!("no schema at {pointer}"))
    }

    #[test]
    fn every_ref_resolves_to_a_registered_component() {
        let doc = document();
        let mut found = Vec::new();
        refs(&doc, String::new(), &mut found);
        assert!(
            found.len() > 20,
            "the document has hardly any $ref: {found:?}"
        );
        let unresolved: Vec<_> = found
            .iter()
            .filter(|(_, r)| {
                !r.starts_with("#/components/") || doc.pointer(r.trim_start_matches('#')).is_none()
            })
            .collect();
        assert!(unresolved.is_empty(), "unresolved $ref: {unresolved:?}");
        // And no schema is registered twice under another name, or left unused.
        let used: BTreeSet<_> = found.iter().map(|(_, r)| *r).collect();
        for name in doc["components"]["schemas"]
            .as_object()
            .expect("schemas")
            .keys()
        {
            assert!(
                used.contains(format!("#/components/schemas/{name}").as_str()),
                "schema {name} is registered but never used"
            );
        }
    }

    #[test]
    fn the_status_enum_is_what_the_server_can_answer() {
        let doc = document();
        let documented = enum_of(&doc, "OrderStatusView");
        let stored: Vec<String> = OrderStatus::ALL
            .iter()
            .map(|s| s.as_str().to_string())
            .collect();
        assert_eq!(documented, stored);
        for status in &documented {
            let view = status_view(status).expect("every stored status has a view");
            assert_eq!(
                serde_json::to_value(view).unwrap(),
                Value::from(status.as_str())
            );
        }
    }

    #[test]
    fn the_reason_and_priority_enums_are_what_the_server_can_answer() {
        let doc = document();
        let every_reason = [
            CancelReason::InsufficientStock,
            CancelReason::UnknownProduct,
            CancelReason::PaymentDeclined,
            CancelReason::PaymentUnavailable,
            CancelReason::TimedOut,
        ];
        // A new reason fails to compile here: add it to `every_reason` and `CancelReasonView`.
        for reason in every_reason {
            match reason {
                CancelReason::InsufficientStock
                | CancelReason::UnknownProduct
                | CancelReason::PaymentDeclined
                | CancelReason::PaymentUnavailable
                | CancelReason::TimedOut => {}
            }
        }
        let reasons: Vec<String> = every_reason
            .iter()
            .map(|r| r.as_str().to_string())
            .collect();
        assert_eq!(enum_of(&doc, "CancelReasonView"), reasons);
        for reason in &reasons {
            let view = reason_view(reason).expect("every reason has a view");
            assert_eq!(
                serde_json::to_value(view).unwrap(),
                Value::from(reason.as_str())
            );
        }
        let priorities: Vec<String> = Priority::ALL
            .iter()
            .map(|p| p.as_str().to_string())
            .collect();
        assert_eq!(enum_of(&doc, "PriorityView"), priorities);
        // The request takes the same values, and not null.
        let priority = schema(&doc, "CreateOrderRequest/properties/priority");
        assert_eq!(
            priority["$ref"], "#/components/schemas/PriorityView",
            "{priority}"
        );
    }

    #[test]
    fn bounds_match_the_validation() {
        let doc = document();
        let request = schema(&doc, "CreateOrderRequest/properties");
        assert_eq!(request["customer_id"]["minLength"], 1);
        assert_eq!(request["customer_id"]["maxLength"], MAX_ID_CHARS);
        assert_eq!(request["items"]["minItems"], 1);
        assert_eq!(request["items"]["maxItems"], MAX_ITEMS);
        let item = schema(&doc, "OrderItemRequest/properties");
        assert_eq!(item["product_id"]["maxLength"], MAX_ID_CHARS);
        assert_eq!(item["quantity"]["minimum"], 1);
        assert_eq!(item["quantity"]["maximum"], MAX_QUANTITY);
        let stock = schema(&doc, "SetStock/properties");
        assert_eq!(
            stock["available"]["maximum"],
            crate::routes::inventory::MAX_AVAILABLE
        );
        assert_eq!(
            stock["price_cents"]["maximum"],
            crate::routes::inventory::MAX_PRICE_CENTS
        );
        for name in CLOSED_OBJECTS {
            assert_eq!(schema(&doc, name)["additionalProperties"], false, "{name}");
        }
        let post = &doc["paths"]["/orders"]["post"];
        let key = post["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .find(|p| p["name"] == "Idempotency-Key")
            .expect("Idempotency-Key documented");
        assert_eq!(key["required"], false);
        assert_eq!(key["schema"]["type"], "string", "not nullable: {key}");
        assert_eq!(key["schema"]["maxLength"], 255);
        let corr = &doc["components"]["parameters"]["CorrelationId"]["schema"];
        assert_eq!(corr["maxLength"], 128);
    }

    #[test]
    fn every_operation_documents_the_middleware_answers() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let responses = op["responses"].as_object().expect("responses");
                assert!(responses.contains_key("400"), "{method} {path}: no 400");
                assert_eq!(
                    responses.contains_key("429"),
                    !RATE_LIMIT_EXEMPT.contains(&path.as_str()),
                    "{method} {path}: 429"
                );
                for (status, response) in responses {
                    assert!(
                        response.get("content").is_some(),
                        "{method} {path} {status}: no content documented"
                    );
                    if status != "400" {
                        assert!(
                            response["headers"].get("X-Correlation-ID").is_some(),
                            "{method} {path} {status}: no X-Correlation-ID"
                        );
                    }
                }
            }
        }
        let retry = &doc["paths"]["/orders"]["post"]["responses"]["503"]["headers"]["Retry-After"];
        assert_eq!(retry["$ref"], "#/components/headers/Retry-After");
        assert_eq!(
            doc["components"]["headers"]["Retry-After"]["required"],
            true
        );
    }

    #[actix_rt::test]
    async fn the_rate_limit_applies_where_429_is_documented() {
        use actix_web::middleware::from_fn;
        use actix_web::{App, test};

        let app = test::init_service(
            App::new()
                .wrap(from_fn(crate::rate_limit::middleware))
                .app_data(web::Data::new(crate::rate_limit::RateLimiter::new(
                    1,
                    1,
                    Vec::new(),
                )))
                .default_service(web::to(HttpResponse::Ok)),
        )
        .await;
        let doc = document();
        let mut client = 0u8;
        for (path, item) in doc["paths"].as_object().expect("paths") {
            let uri = path
                .replace("{id}", "7b3e2c1a-9f04-4d6e-8a51-2f0c9d3b6e17")
                .replace("{product_id}", "sku-1");
            for (method, op) in item.as_object().expect("path item") {
                client += 1;
                let peer = format!("10.0.0.{client}:40000").parse().unwrap();
                let method = actix_web::http::Method::from_bytes(method.to_uppercase().as_bytes())
                    .expect("a method");
                let mut last = None;
                for _ in 0..2 {
                    let req = test::TestRequest::default()
                        .method(method.clone())
                        .uri(&uri)
                        .peer_addr(peer)
                        .to_request();
                    last = Some(test::call_service(&app, req).await.status().as_u16());
                }
                let limited = last == Some(429);
                let documented = op["responses"].get("429").is_some();
                assert_eq!(
                    limited, documented,
                    "{method} {path}: limited {limited}, 429 documented {documented}"
                );
            }
        }
    }

    #[test]
    fn accepted_orders_link_to_the_order() {
        let doc = document();
        let link = &doc["paths"]["/orders"]["post"]["responses"]["202"]["links"]["GetOrder"];
        assert_eq!(link["operationId"], "get_order");
        assert_eq!(link["parameters"]["id"], "$response.body#/order_id");
        let get = &doc["paths"]["/orders/{id}"]["get"];
        assert_eq!(get["operationId"], "get_order");
        assert_eq!(get["parameters"][0]["name"], "id");
        assert_eq!(get["parameters"][0]["schema"]["format"], "uuid");
        let order_id = schema(&doc, "OrderAccepted/properties/order_id");
        assert_eq!(order_id["format"], "uuid");
        let link = &doc["paths"]["/inventory/{product_id}"]["put"]["responses"]["200"]["links"]["GetStock"];
        assert_eq!(link["operationId"], "get_stock");
    }
}
