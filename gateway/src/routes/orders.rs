//! `POST /orders` and `GET /orders/{id}`.
//!
//! An order is accepted (202) only once JetStream acknowledged its `orders.created` event:
//! before that, nothing happened, and a 503 says so. `Idempotency-Key` makes retries safe:
//! the key stands for one order id and one set of events, re-published with the same
//! `Nats-Msg-Id` until one publish is acknowledged.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use jetflow_domain::idempotency_store::{self, Claim, IdempotencyRecord, StoredMessage};
use jetflow_domain::order_store::{self, NewOrder};
use jetflow_domain::{db::now_ms, events::outgoing};
use jetflow_runtime::{OutgoingMessage, PublishError};
use jetflow_schemas::{EventMeta, OrderCreatedV1, OrderCreatedV2, Priority, Version};
use serde::Serialize;
use uuid::Uuid;

use crate::correlation::CorrelationId;
use crate::error::{ApiError, ErrorBody};
use crate::order_request::{self, CreateOrderRequest, ValidOrder};
use crate::routes::{MAX_BODY_BYTES, read_body, require_json, rfc3339};
use crate::state::GatewayState;
use crate::traceparent;

/// The answer to an accepted order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderAccepted {
    /// The new order's id.
    pub order_id: String,
    /// Always `pending`.
    pub status: String,
    /// The correlation id carried by every event of the order.
    pub correlation_id: String,
}

/// One history entry.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryItem {
    /// The status reached.
    pub status: String,
    /// When (RFC 3339).
    pub at: String,
}

/// An order as `GET /orders/{id}` shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    /// The order id.
    pub order_id: String,
    /// `pending`, `reserved`, `paid`, `confirmed` or `cancelled`.
    pub status: String,
    /// Why it was cancelled: `insufficient_stock`, `unknown_product`, `payment_declined`,
    /// `payment_unavailable` or `timed_out`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// More about the reason (e.g. which product).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The customer.
    pub customer_id: Option<String>,
    /// The items.
    #[schema(value_type = Object)]
    pub items: Option<serde_json::Value>,
    /// `standard` or `express`.
    pub priority: String,
    /// The shipping address, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub shipping_address: Option<serde_json::Value>,
    /// The amount, once stock is reserved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount_cents: Option<i64>,
    /// The correlation id.
    pub correlation_id: Option<String>,
    /// When it was accepted (RFC 3339).
    pub created_at: String,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
    /// Each status with its time.
    pub history: Vec<HistoryItem>,
}

/// Idempotency keys: 1 to 255 visible ASCII characters.
fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or("");
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(ApiError::bad_request(
            "invalid_header",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(Some(key.to_string()))
}

/// The `orders.created` events of an order, one per configured schema version.
fn created_events(
    order_id: Uuid,
    order: &ValidOrder,
    correlation_id: &str,
    versions: &[u8],
    traceparent: &str,
) -> Result<Vec<OutgoingMessage>, ApiError> {
    let meta = EventMeta {
        event_id: Uuid::now_v7(),
        order_id,
        correlation_id: correlation_id.to_string(),
        occurred_at: Utc::now(),
    };
    let internal = |e: jetflow_schemas::SchemaError| {
        tracing::error!(error = %e, "a validated order does not fit its event schema");
        ApiError::bad_request("invalid_field", e.to_string())
    };
    versions
        .iter()
        .map(|v| match v {
            1 => outgoing(
                &OrderCreatedV1 {
                    meta: meta.clone(),
                    version: Version,
                    customer_id: order.customer_id.clone(),
                    items: order.items.clone(),
                    priority: order.priority,
                },
                order.priority,
                Some(traceparent),
            )
            .map_err(internal),
            _ => outgoing(
                &OrderCreatedV2 {
                    meta: meta.clone(),
                    version: Version,
                    customer_id: order.customer_id.clone(),
                    items: order.items.clone(),
                    priority: order.priority,
                    shipping_address: order.shipping_address.clone(),
                },
                order.priority,
                Some(traceparent),
            )
            .map_err(internal),
        })
        .collect()
}

async fn publish_all(state: &GatewayState, messages: Vec<OutgoingMessage>) -> Result<(), ApiError> {
    let publishes = messages.into_iter().map(|m| state.publisher.publish(m));
    futures::future::try_join_all(publishes)
        .await
        .map(|_| ())
        .map_err(|e| {
            let why = match e {
                PublishError::NotConnected | PublishError::BridgeGone => "the event stream is unreachable",
                PublishError::Timeout(_) => "the event stream did not confirm in time",
                PublishError::Failed(_) => "the event stream refused the event",
            };
            tracing::warn!(error = %e, "orders.created not stored");
            ApiError::unavailable(
                "event_store_unavailable",
                format!("{why}; the order was not accepted. Retrying with the same Idempotency-Key is safe"),
            )
        })
}

/// `POST /orders`: accept an order.
#[utoipa::path(post, path = "/orders", tag = "orders",
    request_body = CreateOrderRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Same key, same order: 1 to 255 visible ASCII characters"),
        ("X-Correlation-ID" = Option<String>, Header, description = "Carried on every event of the order; generated when absent"),
    ),
    responses(
        (status = 202, description = "Stored in JetStream; the saga runs", body = OrderAccepted,
            headers(("Location" = String, description = "/orders/{order_id}"), ("X-Correlation-ID" = String))),
        (status = 400, description = "Malformed JSON, a field out of bounds, a bad header", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Idempotency-Key reused with another body", body = ErrorBody),
        (status = 429, description = "Rate limit of this client exceeded", body = ErrorBody),
        (status = 503, description = "The event could not be stored: nothing was accepted", body = ErrorBody),
    ))]
pub async fn create_order(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<GatewayState>,
    correlation: Option<web::ReqData<CorrelationId>>,
) -> Result<HttpResponse, ApiError> {
    require_json(&req)?;
    let body = read_body(&req, payload, MAX_BODY_BYTES).await?;
    let order = order_request::parse(&body)?;
    let key = idempotency_key(&req)?;
    let correlation_id = correlation
        .map(|c| c.into_inner().0)
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    let parent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok());
    let traceparent = traceparent::child_of(parent);
    let order_id = Uuid::new_v4();
    let messages = created_events(
        order_id,
        &order,
        &correlation_id,
        &state.saga.created_versions,
        &traceparent,
    )?;

    let (order_id, correlation_id) = match &key {
        None => {
            publish_all(&state, messages).await?;
            (order_id.to_string(), correlation_id)
        }
        Some(key) => {
            let record = IdempotencyRecord {
                request: order.canonical(),
                order_id: order_id.to_string(),
                correlation_id: correlation_id.clone(),
                messages: messages.iter().map(StoredMessage::from).collect(),
                published: false,
            };
            let claim = idempotency_store::claim(&state.db, key, &record)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "idempotency store unavailable");
                    ApiError::unavailable(
                        "database_unavailable",
                        "the idempotency store is unreachable; the order was not accepted. Retrying with the same Idempotency-Key is safe",
                    )
                })?;
            let record = match claim {
                Claim::New => record,
                Claim::Existing(existing) if existing.request != record.request => {
                    return Err(ApiError::idempotency_conflict());
                }
                Claim::Existing(existing) => existing,
            };
            if !record.published {
                let stored: Vec<OutgoingMessage> =
                    record.messages.iter().cloned().map(Into::into).collect();
                publish_all(&state, stored).await?;
                if let Err(e) = idempotency_store::mark_published(&state.db, key).await {
                    tracing::warn!(error = %e, "could not mark an idempotency key published (a repeat will re-publish harmlessly)");
                }
            }
            (record.order_id, record.correlation_id)
        }
    };

    // Best effort: the order actor records it too; this makes GET right after 202 find it.
    let items = serde_json::to_value(&order.items).unwrap_or_default();
    let new = NewOrder {
        order_id: &order_id,
        customer_id: &order.customer_id,
        items,
        priority: match order.priority {
            Priority::Standard => "standard",
            Priority::Express => "express",
        },
        shipping_address: order
            .shipping_address
            .as_ref()
            .and_then(|a| serde_json::to_value(a).ok()),
        correlation_id: &correlation_id,
        at: now_ms(),
    };
    if let Ok(mut conn) = state.db.pool().acquire().await {
        if let Err(e) = order_store::upsert_created(&mut conn, &new).await {
            tracing::debug!(error = %e, %order_id, "read model insert skipped");
        }
    }

    tracing::info!(%order_id, %correlation_id, items = order.items.len(), priority = ?order.priority, "order accepted");
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/orders/{order_id}")))
        .json(OrderAccepted {
            order_id,
            status: "pending".to_string(),
            correlation_id,
        }))
}

/// `GET /orders/{id}`: an order's status and history.
#[utoipa::path(get, path = "/orders/{id}", tag = "orders",
    params(("id" = String, Path, description = "The order id (a UUID)")),
    responses(
        (status = 200, description = "The order", body = OrderView),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
pub async fn get_order(
    path: web::Path<String>,
    state: web::Data<GatewayState>,
) -> Result<HttpResponse, ApiError> {
    let raw = path.into_inner();
    let id = Uuid::try_parse(&raw).map_err(|_| {
        ApiError::bad_request(
            "invalid_order_id",
            format!("order id must be a UUID, got {raw:?}"),
        )
    })?;
    let record = order_store::get(state.db.pool(), &id.to_string())
        .await
        .map_err(|e| {
            ApiError::unavailable(
                "database_unavailable",
                format!("the order store is unreachable: {e}"),
            )
        })?
        .ok_or_else(|| ApiError::not_found("order_not_found", format!("no order with id {id}")))?;
    Ok(HttpResponse::Ok().json(OrderView {
        order_id: record.order_id,
        status: record.status,
        reason: record.reason,
        detail: record.detail,
        customer_id: record.customer_id,
        items: record.items,
        priority: record.priority,
        shipping_address: record.shipping_address,
        amount_cents: record.amount_cents,
        correlation_id: record.correlation_id,
        created_at: rfc3339(record.created_at),
        updated_at: rfc3339(record.updated_at),
        history: record
            .history
            .into_iter()
            .map(|h| HistoryItem {
                status: h.status,
                at: rfc3339(h.at),
            })
            .collect(),
    }))
}

/// Mounts the order routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/orders", web::post().to(create_order))
        .route("/orders/{id}", web::get().to(get_order));
}
