//! `POST /orders` and `GET /orders/{id}`.
//!
//! An order is accepted (202) only once JetStream acknowledged its `orders.created` event:
//! before that, nothing happened, and a 503 says so. `Idempotency-Key` makes retries safe:
//! the key stands for one order id and one set of events, re-published with the same
//! `Nats-Msg-Id` until one publish is acknowledged.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use jetflow_domain::events::outgoing;
use jetflow_domain::idempotency_store::{Claim, IdempotencyRecord, StoredMessage};
use jetflow_domain::metrics::domain_metrics;
use jetflow_domain::now_ms;
use jetflow_domain::order_store::{self, NewOrder, OrderRecord, OrderStatus};
use jetflow_runtime::{OutgoingMessage, PublishError, headers, trace};
use jetflow_schemas::{EventMeta, OrderCreatedV1, OrderCreatedV2, Priority, Version};
use serde::Serialize;
use uuid::Uuid;

use crate::accept_writes::{AcceptOutput, AcceptWrite};
use crate::admission::Admission;
use crate::correlation::CorrelationId;
use crate::error::{ApiError, ErrorBody};
use crate::order_request::{self, CreateOrderRequest, ShippingAddressRequest, ValidOrder};
use crate::routes::{MAX_BODY_BYTES, allow, read_body, require_json};
use crate::state::GatewayState;

/// The answer to an accepted order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderAccepted {
    /// The new order's id.
    #[schema(value_type = String, format = Uuid)]
    pub order_id: Uuid,
    /// Always `pending`.
    pub status: OrderStatusView,
    /// The correlation id carried by every event of the order: the request's
    /// `X-Correlation-ID`, or a new UUID.
    #[schema(min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")]
    pub correlation_id: String,
}

/// An order's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatusView {
    /// Accepted, waiting for stock.
    Pending,
    /// Stock held, waiting for payment.
    Reserved,
    /// Charged.
    Paid,
    /// Done.
    Confirmed,
    /// Cancelled; `reason` says why.
    Cancelled,
}

/// Why an order was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelReasonView {
    /// A product had too little stock.
    InsufficientStock,
    /// A product does not exist.
    UnknownProduct,
    /// The payment provider declined.
    PaymentDeclined,
    /// The payment provider could not be reached in time.
    PaymentUnavailable,
    /// The order did not finish within the order timeout.
    TimedOut,
}

/// An order's lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PriorityView {
    /// The default lane.
    Standard,
    /// Its own lane: never queued behind standard orders.
    Express,
}

/// One item of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct OrderItemView {
    /// The product.
    #[schema(min_length = 1, max_length = 64)]
    pub product_id: String,
    /// How many.
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: u32,
}

/// One history entry.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryItem {
    /// The status reached.
    pub status: OrderStatusView,
    /// When.
    #[schema(value_type = String, format = DateTime)]
    pub at: DateTime<Utc>,
}

/// An order as `GET /orders/{id}` shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    /// The order id.
    #[schema(value_type = String, format = Uuid)]
    pub order_id: Uuid,
    /// Where the order is.
    pub status: OrderStatusView,
    /// Why it was cancelled (only when cancelled).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reason: Option<CancelReasonView>,
    /// More about the reason (e.g. which product; only when cancelled).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub detail: Option<String>,
    /// The customer (null only for an order first seen through a later event).
    #[schema(required = true)]
    pub customer_id: Option<String>,
    /// The items (null only for an order first seen through a later event).
    #[schema(required = true)]
    pub items: Option<Vec<OrderItemView>>,
    /// The lane.
    pub priority: PriorityView,
    /// The shipping address, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub shipping_address: Option<ShippingAddressRequest>,
    /// The amount, once stock is reserved.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, nullable = false)]
    pub amount_cents: Option<i64>,
    /// The correlation id (null only for an order first seen through a later event).
    #[schema(required = true)]
    pub correlation_id: Option<String>,
    /// When it was accepted.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: DateTime<Utc>,
    /// Each status with its time, in order.
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

/// An order about to be published: its id, correlation id and `orders.created` events.
struct Draft {
    order_id: Uuid,
    correlation_id: String,
    messages: Vec<OutgoingMessage>,
}

/// The `orders.created` events of an order, one per configured schema version, continuing
/// the caller's trace.
#[tracing::instrument(level = "debug", skip_all)]
fn draft(
    state: &GatewayState,
    order: &ValidOrder,
    correlation_id: String,
    parent_trace: Option<&str>,
) -> Result<Draft, ApiError> {
    let order_id = Uuid::new_v4();
    let meta = EventMeta {
        event_id: Uuid::now_v7(),
        order_id,
        correlation_id: correlation_id.clone(),
        occurred_at: Utc::now(),
    };
    let traceparent = trace::for_message(parent_trace);
    let internal = |e: jetflow_schemas::SchemaError| {
        tracing::error!(error = %e, "a validated order does not fit its event schema");
        ApiError::bad_request("invalid_field", e.to_string())
    };
    let messages = state
        .saga
        .created_versions
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
            ),
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
            ),
        })
        .map(|m| {
            m.map(|m| m.header(headers::TRACEPARENT, traceparent.clone()))
                .map_err(internal)
        })
        .collect::<Result<_, _>>()?;
    Ok(Draft {
        order_id,
        correlation_id,
        messages,
    })
}

/// Why an order's events were not all acknowledged.
enum NotStored {
    /// None of them can have been stored (nothing was sent, or JetStream refused them).
    Surely(ApiError),
    /// Some may have been: a PubAck that did not come in time, or some were acknowledged.
    Maybe(PublishError),
}

/// Stores the events in JetStream (all pipelined).
#[tracing::instrument(level = "debug", skip_all)]
async fn publish(state: &GatewayState, messages: Vec<OutgoingMessage>) -> Result<(), NotStored> {
    let results = state.publisher.publish_many(messages).await;
    let stored_some = results.iter().any(Result::is_ok);
    let Some(e) = results.into_iter().find_map(Result::err) else {
        return Ok(());
    };
    if stored_some || matches!(e, PublishError::Timeout(_)) {
        return Err(NotStored::Maybe(e));
    }
    let why = match e {
        PublishError::NotConnected | PublishError::BridgeGone => "the event stream is unreachable",
        PublishError::Timeout(_) => "the event stream did not confirm in time",
        PublishError::Rejected(_) | PublishError::Failed(_) => "the event stream refused the event",
    };
    tracing::warn!(error = %e, "orders.created not stored");
    Err(NotStored::Surely(ApiError::unavailable(
        "event_store_unavailable",
        format!(
            "{why}; the order was not accepted. Retrying with the same Idempotency-Key is safe"
        ),
    )))
}

/// Events whose publish may have been stored: the outbox publishes them again with the same
/// ids (JetStream keeps one of each), so the order stands and is accepted. Fails only when
/// the outbox cannot take them.
async fn hand_to_outbox(
    state: &GatewayState,
    messages: Vec<OutgoingMessage>,
    why: &PublishError,
) -> Result<(), ApiError> {
    let Some(outbox) = &state.outbox else {
        return Err(uncertain(why));
    };
    let enqueued = async {
        let mut tx = state.db.begin().await?;
        jetflow_runtime::outbox::enqueue(tx.conn(), &messages).await?;
        jetflow_runtime::Database::commit(tx).await
    }
    .await;
    match enqueued {
        Ok(()) => {
            tracing::warn!(error = %why, "orders.created not confirmed; handed to the outbox");
            outbox.committed(messages);
            Ok(())
        }
        Err(e) => {
            tracing::warn!(error = %e, "orders.created not confirmed, and the outbox is unreachable");
            Err(uncertain(why))
        }
    }
}

/// The answer when an order's events may or may not be stored and nothing can make sure.
fn uncertain(why: &PublishError) -> ApiError {
    ApiError::unavailable(
        "event_store_uncertain",
        format!(
            "the event stream did not confirm the order ({why}); it may still be accepted. \
             Retry with the same Idempotency-Key: it answers with this order, never a second one"
        ),
    )
}

fn store_unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "order store unavailable");
    ApiError::unavailable(
        "database_unavailable",
        "the order store is unreachable; the order was not accepted. Retrying with the same Idempotency-Key is safe",
    )
}

/// The read-model row of a drafted order.
fn new_order(order: &ValidOrder, draft: &Draft) -> NewOrder {
    NewOrder {
        order_id: draft.order_id.to_string(),
        customer_id: order.customer_id.clone(),
        items: serde_json::to_value(&order.items).unwrap_or_default(),
        priority: order.priority,
        shipping_address: order
            .shipping_address
            .as_ref()
            .and_then(|a| serde_json::to_value(a).ok()),
        correlation_id: draft.correlation_id.clone(),
        at: now_ms(),
    }
}

/// Records the order (claiming its key, if any), publishes its events unless the key's were
/// stored before, and withdraws the record if they could not be stored. Returns the order id
/// and correlation id given out.
#[tracing::instrument(level = "debug", skip_all)]
async fn accept(
    state: &GatewayState,
    key: Option<String>,
    order: &ValidOrder,
    draft: Draft,
) -> Result<(Uuid, String), ApiError> {
    let claim = key.as_ref().map(|key| {
        (
            key.clone(),
            IdempotencyRecord {
                request: order.canonical(),
                order_id: draft.order_id.to_string(),
                correlation_id: draft.correlation_id.clone(),
                messages: draft.messages.iter().map(StoredMessage::from).collect(),
                published: false,
            },
        )
    });
    let request = claim.as_ref().map(|(_, r)| r.request.clone());
    let recorded = state
        .writes
        .submit(AcceptWrite::Record {
            order: Box::new(new_order(order, &draft)),
            claim: claim.map(Box::new),
        })
        .await
        .map_err(store_unavailable)?;
    let AcceptOutput::Recorded { claim, inserted } = recorded else {
        return Err(store_unavailable("unexpected answer"));
    };
    let (order_id, correlation_id, messages, published) = match claim {
        Claim::New => (draft.order_id, draft.correlation_id, draft.messages, false),
        Claim::Existing(existing) if Some(&existing.request) != request.as_ref() => {
            return Err(ApiError::idempotency_conflict());
        }
        Claim::Existing(existing) => (
            Uuid::try_parse(&existing.order_id).map_err(store_unavailable)?,
            existing.correlation_id,
            existing.messages.into_iter().map(Into::into).collect(),
            existing.published,
        ),
    };
    if !published {
        match publish(state, messages.clone()).await {
            Ok(()) => {}
            Err(NotStored::Surely(refused)) => {
                if inserted {
                    let withdraw = AcceptWrite::Withdraw {
                        order_id: order_id.to_string(),
                    };
                    if let Err(e) = state.writes.submit(withdraw).await {
                        // The order sweeper cancels it once it timed out.
                        tracing::warn!(error = %e, %order_id, "cannot withdraw the order that was not accepted");
                    }
                }
                return Err(refused);
            }
            // The saga may already run this order: it stands (never withdrawn), and its
            // events are made sure of through the outbox.
            Err(NotStored::Maybe(e)) => hand_to_outbox(state, messages, &e).await?,
        }
        if let Some(key) = key
            && let Err(e) = state.writes.submit(AcceptWrite::Published { key }).await
        {
            // A retry with the key publishes the same events again, which JetStream and the
            // consumers' inboxes drop.
            tracing::debug!(error = %e, %order_id, "key not marked published");
        }
    }
    if inserted {
        domain_metrics()
            .orders
            .with_label_values(&[OrderStatus::Pending.as_str()])
            .inc();
    }
    Ok((order_id, correlation_id))
}

/// `POST /orders`: accept an order.
#[utoipa::path(post, path = "/orders", tag = "orders",
    request_body = CreateOrderRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255, pattern = "^[!-~]{1,255}$",
            description = "Same key, same order: a retry with the same key and body answers the same order \
                and creates nothing new. 1 to 255 visible ASCII characters"),
    ),
    responses(
        (status = 202, description = "Stored in JetStream; the saga runs (the X-Correlation-ID of the request, or a new one, is on every event of the order)",
            body = OrderAccepted,
            headers(("Location" = String, description = "`/orders/{order_id}`")),
            links(("GetOrder" = (operation_id = "get_order",
                parameters(("id" = "$response.body#/order_id")),
                description = "The order just accepted (found at once: it is recorded before the 202)")))),
        (status = 400, description = "Malformed JSON, a field missing, unknown or out of bounds, or a malformed Idempotency-Key", body = ErrorBody),
        (status = 408, description = "The body did not arrive within 10 s", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 422, description = "Idempotency-Key reused with another body", body = ErrorBody),
        (status = 503, description = "The event or the order could not be stored, or more orders wait for the saga than JETFLOW_MAX_BACKLOG (`backlogged`, with Retry-After): nothing was accepted; retrying with the same Idempotency-Key is safe", body = ErrorBody),
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
        .get(headers::TRACEPARENT)
        .and_then(|v| v.to_str().ok());
    if let Some(admission) = Admission::of(&req) {
        admission.check()?;
    }
    let draft = draft(&state, &order, correlation_id, parent)?;
    let (order_id, correlation_id) = accept(&state, key, &order, draft).await?;
    tracing::info!(%order_id, %correlation_id, items = order.items.len(), priority = %order.priority, "order accepted");
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/orders/{order_id}")))
        .json(OrderAccepted {
            order_id,
            status: OrderStatusView::Pending,
            correlation_id,
        }))
}

fn internal(what: &str) -> ApiError {
    ApiError::internal(format!("the stored order has {what}"))
}

pub(crate) fn status_view(s: &str) -> Result<OrderStatusView, ApiError> {
    Ok(match s {
        "pending" => OrderStatusView::Pending,
        "reserved" => OrderStatusView::Reserved,
        "paid" => OrderStatusView::Paid,
        "confirmed" => OrderStatusView::Confirmed,
        "cancelled" => OrderStatusView::Cancelled,
        _ => return Err(internal("an unknown status")),
    })
}

pub(crate) fn reason_view(s: &str) -> Result<CancelReasonView, ApiError> {
    Ok(match s {
        "insufficient_stock" => CancelReasonView::InsufficientStock,
        "unknown_product" => CancelReasonView::UnknownProduct,
        "payment_declined" => CancelReasonView::PaymentDeclined,
        "payment_unavailable" => CancelReasonView::PaymentUnavailable,
        "timed_out" => CancelReasonView::TimedOut,
        _ => return Err(internal("an unknown cancel reason")),
    })
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn view(record: OrderRecord) -> Result<OrderView, ApiError> {
    let order_id = Uuid::try_parse(&record.order_id).map_err(|_| internal("a bad id"))?;
    let status = status_view(&record.status)?;
    let reason = match (&record.reason, status) {
        (Some(r), OrderStatusView::Cancelled) => Some(reason_view(r)?),
        _ => None,
    };
    let items = record
        .items
        .map(serde_json::from_value::<Vec<OrderItemView>>)
        .transpose()
        .map_err(|_| internal("unreadable items"))?;
    let shipping_address = record
        .shipping_address
        .map(serde_json::from_value::<ShippingAddressRequest>)
        .transpose()
        .map_err(|_| internal("an unreadable address"))?;
    Ok(OrderView {
        order_id,
        status,
        reason,
        detail: record.detail.filter(|_| reason.is_some()),
        customer_id: record.customer_id,
        items,
        priority: match record.priority.parse().unwrap_or_default() {
            Priority::Standard => PriorityView::Standard,
            Priority::Express => PriorityView::Express,
        },
        shipping_address,
        amount_cents: record.amount_cents.filter(|a| *a >= 0),
        correlation_id: record.correlation_id,
        created_at: time(record.created_at),
        updated_at: time(record.updated_at),
        history: record
            .history
            .into_iter()
            .map(|h| {
                Ok(HistoryItem {
                    status: status_view(&h.status)?,
                    at: time(h.at),
                })
            })
            .collect::<Result<_, ApiError>>()?,
    })
}

/// `GET /orders/{id}`: an order's status and history.
#[utoipa::path(get, path = "/orders/{id}", tag = "orders",
    params(("id" = String, Path, format = Uuid, description = "The order id (a UUID)",
        example = "7b3e2c1a-9f04-4d6e-8a51-2f0c9d3b6e17")),
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
    Ok(HttpResponse::Ok().json(view(record)?))
}

/// Mounts the order routes (a wrong method answers 405 with `Allow`; HEAD works wherever GET
/// does).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/orders")
            .route(web::post().to(create_order))
            .default_service(web::to(allow(&["POST"]))),
    )
    .service(
        web::resource("/orders/{id}")
            .route(web::get().to(get_order))
            .route(web::head().to(get_order))
            .default_service(web::to(allow(&["GET", "HEAD"]))),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_map_onto_the_documented_enums() {
        assert_eq!(status_view("paid").unwrap(), OrderStatusView::Paid);
        assert!(status_view("weird").is_err());
        assert_eq!(
            reason_view("timed_out").unwrap(),
            CancelReasonView::TimedOut
        );
    }
}
