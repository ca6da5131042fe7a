//! The simulated payment provider (`jetflow payment-provider`).
//!
//! A stand-in for a real card processor, with the behaviours the saga must survive:
//! `POST /charges` succeeds, or declines (402) customers whose id starts with `declined-`;
//! `PUT /_control` makes it fail every call with 503 or answer slowly, to exercise the
//! circuit breaker. Like a real processor it honours `Idempotency-Key`: a repeated key gets
//! the first answer and charges nothing more; without a key every call is a new charge.
//! `GET /charges` lists the charges made, so tests can prove nothing was charged twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// The fault switches of `PUT /_control`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Control {
    /// Answer every charge with 503.
    #[serde(default)]
    pub fail: bool,
    /// Wait this long before answering.
    #[serde(default)]
    pub latency_ms: u64,
}

/// The body of `POST /charges`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ChargeRequest {
    /// The order.
    pub order_id: String,
    /// The customer; `declined-*` is declined.
    pub customer_id: String,
    /// The amount.
    pub amount_cents: i64,
}

/// One charge the provider made (or declined).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Charge {
    /// The order.
    pub order_id: String,
    /// The customer.
    pub customer_id: String,
    /// The amount.
    pub amount_cents: i64,
    /// `succeeded`, `declined`, or `voided` (charged and given back, or refused because a
    /// void came first).
    pub status: String,
    /// The provider's reference.
    pub payment_id: Option<String>,
    /// How many calls carried this charge's idempotency key.
    pub calls: u64,
}

#[derive(Default)]
struct Ledger {
    control: Control,
    by_key: HashMap<String, usize>,
    charges: Vec<Charge>,
}

/// The provider's state, shared by its workers.
#[derive(Clone, Default)]
pub struct ProviderState {
    inner: Arc<Mutex<Ledger>>,
}

impl ProviderState {
    fn with<T>(&self, f: impl FnOnce(&mut Ledger) -> T) -> T {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut guard)
    }
}

async fn charge(
    state: web::Data<ProviderState>,
    req: HttpRequest,
    body: web::Json<ChargeRequest>,
) -> Result<HttpResponse, ApiError> {
    let control = state.with(|l| l.control);
    if control.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(control.latency_ms)).await;
    }
    if control.fail {
        return Ok(HttpResponse::ServiceUnavailable().json(
            serde_json::json!({"status": "unavailable", "reason": "provider outage (simulated)"}),
        ));
    }
    if body.amount_cents < 0 {
        return Err(ApiError::bad_request(
            "invalid_field",
            "amount_cents must not be negative",
        ));
    }
    let key = req
        .headers()
        .get("Idempotency-Key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let charge = state.with(|l| {
        if let Some(k) = &key {
            if let Some(&i) = l.by_key.get(k) {
                l.charges[i].calls += 1;
                return l.charges[i].clone();
            }
        }
        // A void that came first (the client gave up on a slow request) refuses the charge.
        if let Some(&i) = l.by_key.get(&body.order_id) {
            if l.charges[i].status == "voided" {
                l.charges[i].calls += 1;
                return l.charges[i].clone();
            }
        }
        let declined = body.customer_id.starts_with("declined-");
        let c = Charge {
            order_id: body.order_id.clone(),
            customer_id: body.customer_id.clone(),
            amount_cents: body.amount_cents,
            status: if declined { "declined" } else { "succeeded" }.to_string(),
            payment_id: (!declined).then(|| format!("pay_{}", uuid::Uuid::new_v4().simple())),
            calls: 1,
        };
        l.charges.push(c.clone());
        if let Some(k) = key {
            l.by_key.insert(k, l.charges.len() - 1);
        }
        c
    });
    Ok(if charge.status == "voided" {
        HttpResponse::PaymentRequired()
            .json(serde_json::json!({"status": "declined", "reason": "the charge was voided"}))
    } else if charge.status == "declined" {
        HttpResponse::PaymentRequired()
            .json(serde_json::json!({"status": "declined", "reason": "card declined (simulated)"}))
    } else {
        HttpResponse::Ok()
            .json(serde_json::json!({"status": "succeeded", "payment_id": charge.payment_id}))
    })
}

/// `POST /charges/{order_id}/void`: voids the charge made under this order's idempotency key
/// (status `voided`: the money goes back), or, if none was made yet, records a void so that a
/// charge arriving later is refused. Idempotent.
async fn void_charge(state: web::Data<ProviderState>, order_id: web::Path<String>) -> HttpResponse {
    let control = state.with(|l| l.control);
    if control.fail {
        return HttpResponse::ServiceUnavailable().json(
            serde_json::json!({"status": "unavailable", "reason": "provider outage (simulated)"}),
        );
    }
    let order_id = order_id.into_inner();
    let charge = state.with(|l| match l.by_key.get(&order_id) {
        Some(&i) => {
            if l.charges[i].status == "succeeded" {
                l.charges[i].status = "voided".to_string();
            }
            l.charges[i].clone()
        }
        None => {
            let c = Charge {
                order_id: order_id.clone(),
                customer_id: String::new(),
                amount_cents: 0,
                status: "voided".to_string(),
                payment_id: None,
                calls: 0,
            };
            l.charges.push(c.clone());
            l.by_key.insert(order_id.clone(), l.charges.len() - 1);
            c
        }
    });
    tracing::info!(%order_id, status = %charge.status, "void requested");
    HttpResponse::Ok().json(serde_json::json!({"status": charge.status}))
}

async fn list_charges(state: web::Data<ProviderState>) -> HttpResponse {
    HttpResponse::Ok().json(state.with(|l| l.charges.clone()))
}

async fn put_control(state: web::Data<ProviderState>, body: web::Json<Control>) -> HttpResponse {
    let control = body.into_inner();
    state.with(|l| l.control = control);
    tracing::warn!(
        fail = control.fail,
        latency_ms = control.latency_ms,
        "payment provider control changed"
    );
    HttpResponse::Ok().json(control)
}

async fn get_control(state: web::Data<ProviderState>) -> HttpResponse {
    HttpResponse::Ok().json(state.with(|l| l.control))
}

/// Mounts the provider's routes.
pub fn configure(state: ProviderState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::Data::new(state))
            .route("/charges", web::post().to(charge))
            .route("/charges/{order_id}/void", web::post().to(void_charge))
            .route("/charges", web::get().to(list_charges))
            .route("/_control", web::put().to(put_control))
            .route("/_control", web::get().to(get_control));
    }
}
