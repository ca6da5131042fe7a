//! `PUT /inventory/{product_id}` and `GET /inventory/{product_id}`.

use actix_web::{HttpRequest, HttpResponse, web};
use jetflow_domain::stock_store;
use jetflow_runtime::Database;
use serde::Serialize;
use serde_json::Value;

use crate::admin::AdminAccess;
use crate::error::{ApiError, ErrorBody};
use crate::order_request::json_integer;
use crate::routes::{MAX_BODY_BYTES, allow, read_body, require_json};
use crate::state::GatewayState;

/// Largest stock one product may be given.
pub const MAX_AVAILABLE: i64 = 1_000_000_000;
/// Largest unit price, in cents.
pub const MAX_PRICE_CENTS: i64 = 1_000_000_000_000;

/// The body of `PUT /inventory/{product_id}`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub struct SetStock {
    /// Units available to reserve (0 to 1 000 000 000).
    #[schema(minimum = 0, maximum = 1_000_000_000, example = 100)]
    pub available: i64,
    /// Unit price in cents (0 to 10^12).
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64, example = 1299)]
    pub price_cents: i64,
}

/// A product's stock.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StockView {
    /// The product.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]{1,64}$",
        example = "sku-1"
    )]
    pub product_id: String,
    /// Units that can be reserved.
    #[schema(minimum = 0)]
    pub available: i64,
    /// Units held by orders in progress.
    #[schema(minimum = 0)]
    pub reserved: i64,
    /// Units of confirmed orders.
    #[schema(minimum = 0)]
    pub sold: i64,
    /// Unit price in cents.
    #[schema(minimum = 0)]
    pub price_cents: i64,
}

fn view(p: stock_store::Product) -> StockView {
    StockView {
        product_id: p.product_id,
        available: p.available,
        reserved: p.reserved,
        sold: p.sold,
        price_cents: p.price_cents,
    }
}

fn product_id(raw: String) -> Result<String, ApiError> {
    let n = raw.chars().count();
    if n == 0 || n > 64 || raw.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_product_id",
            format!("product_id must be 1 to 64 characters without control characters, got {n}"),
        ));
    }
    Ok(raw)
}

fn bounded(obj: &serde_json::Map<String, Value>, name: &str, max: i64) -> Result<i64, ApiError> {
    match obj.get(name) {
        None => Err(ApiError::bad_request(
            "invalid_field",
            format!("{name} is required"),
        )),
        Some(Value::Number(n)) => match json_integer(n) {
            Some(v) if (0..=max).contains(&v) => Ok(v),
            _ => Err(ApiError::bad_request(
                "invalid_field",
                format!("{name} must be an integer from 0 to {max}, got {n}"),
            )),
        },
        Some(other) => Err(ApiError::bad_request(
            "invalid_field",
            format!("{name} must be an integer from 0 to {max}, got {other}"),
        )),
    }
}

/// `PUT /inventory/{product_id}`: set a product's available stock and price.
#[utoipa::path(put, path = "/inventory/{product_id}", tag = "inventory",
    params(("product_id" = String, Path, description = "The product: 1 to 64 characters, no control characters",
        min_length = 1, max_length = 64, pattern = r"^[^\u0000-\u001F\u007F-\u009F]{1,64}$", example = "sku-1")),
    request_body = SetStock,
    security((), ("admin_token" = [])),
    responses(
        (status = 200, description = "The product's stock now", body = StockView,
            links(("GetStock" = (operation_id = "get_stock",
                parameters(("product_id" = "$request.path.product_id")),
                description = "The product just stocked")))),
        (status = 400, description = "A bad product id, malformed JSON, a field missing, unknown or out of bounds", body = ErrorBody),
        (status = 401, description = "JETFLOW_ADMIN_TOKEN is set and no bearer token was given (WWW-Authenticate: Bearer)", body = ErrorBody),
        (status = 403, description = "Another bearer token than JETFLOW_ADMIN_TOKEN, or, with none set, a client that is not on loopback", body = ErrorBody),
        (status = 408, description = "The body did not arrive within 10 s", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 503, description = "The database is unreachable: nothing changed", body = ErrorBody),
    ))]
pub async fn put_stock(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<GatewayState>,
) -> Result<HttpResponse, ApiError> {
    AdminAccess::of(&req).check(&req)?;
    let product_id = product_id(path.into_inner())?;
    require_json(&req)?;
    let body = read_body(&req, payload, MAX_BODY_BYTES).await?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "malformed_json",
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(obj) = &value else {
        return Err(ApiError::bad_request(
            "invalid_field",
            "request body must be a JSON object",
        ));
    };
    if let Some(unknown) = obj
        .keys()
        .find(|k| *k != "available" && *k != "price_cents")
    {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("{unknown}: unknown field (allowed: available, price_cents)"),
        ));
    }
    let available = bounded(obj, "available", MAX_AVAILABLE)?;
    let price_cents = bounded(obj, "price_cents", MAX_PRICE_CENTS)?;
    let unavailable = |e: sqlx::Error| {
        ApiError::unavailable(
            "database_unavailable",
            format!("the stock store is unreachable: {e}"),
        )
    };
    let mut tx = state.db.begin().await.map_err(unavailable)?;
    let product = stock_store::put(tx.conn(), &product_id, available, price_cents)
        .await
        .map_err(unavailable)?;
    Database::commit(tx).await.map_err(unavailable)?;
    tracing::info!(%product_id, available, price_cents, "stock set");
    Ok(HttpResponse::Ok().json(view(product)))
}

/// `GET /inventory/{product_id}`: a product's stock.
#[utoipa::path(get, path = "/inventory/{product_id}", tag = "inventory",
    params(("product_id" = String, Path, description = "The product: 1 to 64 characters, no control characters",
        min_length = 1, max_length = 64, pattern = r"^[^\u0000-\u001F\u007F-\u009F]{1,64}$", example = "sku-1")),
    responses(
        (status = 200, description = "The product's stock", body = StockView),
        (status = 400, description = "A bad product id", body = ErrorBody),
        (status = 404, description = "No such product", body = ErrorBody),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
pub async fn get_stock(
    path: web::Path<String>,
    state: web::Data<GatewayState>,
) -> Result<HttpResponse, ApiError> {
    let product_id = product_id(path.into_inner())?;
    let product = stock_store::get(state.db.pool(), &product_id)
        .await
        .map_err(|e| {
            ApiError::unavailable(
                "database_unavailable",
                format!("the stock store is unreachable: {e}"),
            )
        })?
        .ok_or_else(|| {
            ApiError::not_found("product_not_found", format!("no product {product_id:?}"))
        })?;
    Ok(HttpResponse::Ok().json(view(product)))
}

/// Mounts the inventory routes (a wrong method answers 405 with `Allow`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/inventory/{product_id}")
            .route(web::put().to(put_stock))
            .route(web::get().to(get_stock))
            .route(web::head().to(get_stock))
            .default_service(web::to(allow(&["GET", "HEAD", "PUT"]))),
    );
}
