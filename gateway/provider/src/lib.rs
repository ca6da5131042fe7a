//! # The simulated payment provider (`jetflow payment-provider`)
//!
//! A stand-in for a real card processor, with the behaviours the saga must survive:
//! `POST /charges` succeeds, or declines (402) customers whose id starts with `declined-`;
//! `PUT /_control` makes it fail every call with 503, answer slowly, or charge and then
//! answer 502 (a proxy hiding a success), to exercise the circuit breaker and the handling of
//! uncertain answers. Like every real payment API it can have a rate limit (none unless asked:
//! `jetflow payment-provider --provider-rate-limit N`, or `{"rate_limit_per_s": N}` in
//! `PUT /_control`): a charge over it is answered `429` with `Retry-After` (whole seconds) and
//! charges nothing. Like a real processor it honours `Idempotency-Key`: a repeated key gets
//! the first answer and charges nothing more; without a key every call is a new charge.
//!
//! It counts what it is asked: `GET /charges/{order_id}` answers the order's status and how
//! many charge and void calls reached it, and how many charges it actually made, so a test
//! proves "charged at most once" by counting calls rather than reading a ledger keyed by the
//! very order it counts.

#![warn(missing_docs)]

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::{Deserialize, Serialize};

/// An error the provider answers, as JSON `{"error": "<code>", "message": "…"}` (the shape
/// jetflow's gateway answers too; the provider stands for another company's API, so it
/// shares no code with the gateway).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ProviderError {
    status: StatusCode,
    code: &'static str,
    message: String,
    allow: Option<&'static [&'static str]>,
}

impl ProviderError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            allow: None,
        }
    }

    /// 400.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 405, with `Allow`.
    pub fn method_not_allowed(methods: &'static [&'static str]) -> Self {
        Self {
            allow: Some(methods),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("this resource serves {}", methods.join(", ")),
            )
        }
    }
}

impl ResponseError for ProviderError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(methods) = self.allow {
            response.insert_header((header::ALLOW, methods.join(", ")));
        }
        response.json(serde_json::json!({"error": self.code, "message": self.message}))
    }
}

/// The fault switches of `PUT /_control`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    /// Charges accepted per second, as a real provider's rate limit (0: none). Over it a
    /// charge is answered `429` with `Retry-After` and nothing is charged.
    #[serde(default)]
    pub rate_limit_per_s: u32,
    /// Answer every charge and void with 503 (nothing is charged).
    #[serde(default)]
    pub fail: bool,
    /// Wait this long before answering a charge.
    #[serde(default)]
    pub latency_ms: u64,
    /// Charge, then answer 502 as a proxy in front of a failing gateway would.
    #[serde(default)]
    pub fail_after_charge: bool,
}

/// The body of `POST /charges`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChargeRequest {
    /// The order.
    pub order_id: String,
    /// The customer; `declined-*` is declined.
    pub customer_id: String,
    /// The amount.
    pub amount_cents: i64,
}

/// What became of an order's charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeStatus {
    /// Charged.
    Succeeded,
    /// Declined.
    Declined,
    /// Charged and given back, or refused because a void came first.
    Voided,
}

/// One order's account at the provider, as `GET /charges/{order_id}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Account {
    /// The order.
    pub order_id: String,
    /// The customer of the first charge.
    pub customer_id: String,
    /// The amount of the first charge.
    pub amount_cents: i64,
    /// Where the charge stands; absent while only failed calls were seen.
    pub status: Option<ChargeStatus>,
    /// The provider's reference of the charge.
    pub payment_id: Option<String>,
    /// Charge calls received for the order (replays of a key included).
    pub charge_calls: u64,
    /// Void calls received for the order.
    pub void_calls: u64,
    /// Charges actually made (more than one is a double charge).
    pub charges_made: u64,
    /// Charge calls that arrived and are not answered yet (a slow provider): what the
    /// account says is final only once this is 0.
    #[serde(default)]
    pub in_flight: u64,
    /// Charge calls answered `429` (over the rate limit; counted in `charge_calls` too).
    #[serde(default)]
    pub throttled_calls: u64,
}

impl Account {
    /// An account no call has reached yet.
    fn new(order_id: &str, customer_id: &str, amount_cents: i64) -> Self {
        Self {
            order_id: order_id.to_string(),
            customer_id: customer_id.to_string(),
            amount_cents,
            status: None,
            payment_id: None,
            charge_calls: 0,
            void_calls: 0,
            charges_made: 0,
            in_flight: 0,
            throttled_calls: 0,
        }
    }
}

#[derive(Default)]
struct Ledger {
    control: Control,
    /// The rate limiter of `control.rate_limit_per_s`, made anew when it changes.
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    accounts: HashMap<String, Account>,
    /// Which order an `Idempotency-Key` was first used for.
    keys: HashMap<String, String>,
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

    /// Every account, for tests and tools.
    pub fn accounts(&self) -> Vec<Account> {
        self.with(|l| l.accounts.values().cloned().collect())
    }

    /// A provider that accepts at most `per_second` charges per second (0: no limit).
    pub fn with_rate_limit(per_second: u32) -> Self {
        let state = Self::default();
        state.with(|l| {
            l.set_control(Control {
                rate_limit_per_s: per_second,
                ..Control::default()
            });
        });
        state
    }
}

impl Ledger {
    fn set_control(&mut self, control: Control) {
        if control.rate_limit_per_s != self.control.rate_limit_per_s || self.limiter.is_none() {
            self.limiter = NonZeroU32::new(control.rate_limit_per_s)
                .map(|rate| Arc::new(RateLimiter::direct(Quota::per_second(rate))));
        }
        self.control = control;
    }
}

/// How long until the limiter lets a charge through, in whole seconds as `Retry-After`
/// says it (at least 1), or `None` when it does now.
fn over_limit(limiter: Option<&Arc<DefaultDirectRateLimiter>>) -> Option<u64> {
    let not_until = limiter?.check().err()?;
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    Some(wait.as_secs_f64().ceil().max(1.0) as u64)
}

fn account<'l>(ledger: &'l mut Ledger, body: &ChargeRequest) -> &'l mut Account {
    ledger
        .accounts
        .entry(body.order_id.clone())
        .or_insert_with(|| Account::new(&body.order_id, &body.customer_id, body.amount_cents))
}

/// Counts a charge call in flight until it is answered, or dropped (the caller went away).
struct InFlight {
    state: web::Data<ProviderState>,
    order_id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.with(|l| {
            if let Some(a) = l.accounts.get_mut(&self.order_id) {
                a.in_flight = a.in_flight.saturating_sub(1);
            }
        });
    }
}

async fn charge(
    state: web::Data<ProviderState>,
    req: HttpRequest,
    body: web::Json<ChargeRequest>,
) -> Result<HttpResponse, ProviderError> {
    if body.amount_cents < 0 {
        return Err(ProviderError::bad_request(
            "invalid_field",
            "amount_cents must not be negative",
        ));
    }
    // The call counts when it arrives, whatever becomes of it; over the rate limit it is
    // answered at once, and nothing is charged.
    let (control, throttled) = state.with(|l| {
        let throttled = over_limit(l.limiter.as_ref());
        let acct = account(l, &body);
        acct.charge_calls += 1;
        if throttled.is_some() {
            acct.throttled_calls += 1;
        } else {
            acct.in_flight += 1;
        }
        (l.control, throttled)
    });
    if let Some(secs) = throttled {
        return Ok(HttpResponse::TooManyRequests()
            .insert_header(("Retry-After", secs.to_string()))
            .json(serde_json::json!({"status": "throttled", "reason": format!("over {} charges per second", control.rate_limit_per_s)})));
    }
    let _in_flight = InFlight {
        state: state.clone(),
        order_id: body.order_id.clone(),
    };
    if control.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(control.latency_ms)).await;
    }
    let key = req
        .headers()
        .get("Idempotency-Key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let outcome = state.with(|l| {
        if control.fail {
            return None;
        }
        let replay = key.as_ref().and_then(|k| l.keys.get(k)).is_some();
        if let Some(k) = &key {
            l.keys
                .entry(k.clone())
                .or_insert_with(|| body.order_id.clone());
        }
        let acct = account(l, &body);
        match acct.status {
            // A repeated key gets the first answer; a void that came first refuses it.
            Some(status) if replay || status == ChargeStatus::Voided => {}
            _ => {
                let declined = body.customer_id.starts_with("declined-");
                acct.status = Some(if declined {
                    ChargeStatus::Declined
                } else {
                    ChargeStatus::Succeeded
                });
                if !declined {
                    acct.charges_made += 1;
                    acct.payment_id = Some(format!("pay_{}", uuid::Uuid::new_v4().simple()));
                }
            }
        }
        Some(acct.clone())
    });
    let Some(acct) = outcome else {
        return Ok(HttpResponse::ServiceUnavailable().json(
            serde_json::json!({"status": "unavailable", "reason": "provider outage (simulated)"}),
        ));
    };
    if control.fail_after_charge {
        return Ok(HttpResponse::BadGateway()
            .json(serde_json::json!({"status": "unavailable", "reason": "bad gateway (simulated, after charging)"})));
    }
    Ok(match acct.status {
        Some(ChargeStatus::Voided) => HttpResponse::PaymentRequired()
            .json(serde_json::json!({"status": "declined", "reason": "the charge was voided"})),
        Some(ChargeStatus::Declined) => HttpResponse::PaymentRequired()
            .json(serde_json::json!({"status": "declined", "reason": "card declined (simulated)"})),
        _ => HttpResponse::Ok()
            .json(serde_json::json!({"status": "succeeded", "payment_id": acct.payment_id})),
    })
}

/// `POST /charges/{order_id}/void`: voids the charge made for this order (status `voided`:
/// the money goes back), or, if none was made yet, records a void so that a charge arriving
/// later is refused. Idempotent.
async fn void_charge(state: web::Data<ProviderState>, order_id: web::Path<String>) -> HttpResponse {
    let order_id = order_id.into_inner();
    let control = state.with(|l| l.control);
    let acct = state.with(|l| {
        let acct = l
            .accounts
            .entry(order_id.clone())
            .or_insert_with(|| Account::new(&order_id, "", 0));
        acct.void_calls += 1;
        if !control.fail && acct.status != Some(ChargeStatus::Declined) {
            acct.status = Some(ChargeStatus::Voided);
        }
        acct.clone()
    });
    if control.fail {
        return HttpResponse::ServiceUnavailable().json(
            serde_json::json!({"status": "unavailable", "reason": "provider outage (simulated)"}),
        );
    }
    tracing::info!(%order_id, status = ?acct.status, "void requested");
    HttpResponse::Ok().json(serde_json::json!({"status": acct.status}))
}

async fn get_account(
    state: web::Data<ProviderState>,
    order_id: web::Path<String>,
) -> Result<HttpResponse, ProviderError> {
    let order_id = order_id.into_inner();
    state
        .with(|l| l.accounts.get(&order_id).cloned())
        .map(|a| HttpResponse::Ok().json(a))
        .ok_or_else(|| {
            ProviderError::not_found(
                "charge_not_found",
                format!("no charge was ever asked for order {order_id:?}"),
            )
        })
}

async fn list_accounts(state: web::Data<ProviderState>) -> HttpResponse {
    let mut accounts = state.accounts();
    accounts.sort_by(|a, b| a.order_id.cmp(&b.order_id));
    HttpResponse::Ok().json(accounts)
}

async fn put_control(state: web::Data<ProviderState>, body: web::Json<Control>) -> HttpResponse {
    let control = body.into_inner();
    state.with(|l| l.set_control(control));
    tracing::warn!(
        fail = control.fail,
        latency_ms = control.latency_ms,
        fail_after_charge = control.fail_after_charge,
        rate_limit_per_s = control.rate_limit_per_s,
        "payment provider control changed"
    );
    HttpResponse::Ok().json(control)
}

async fn get_control(state: web::Data<ProviderState>) -> HttpResponse {
    HttpResponse::Ok().json(state.with(|l| l.control))
}

fn allow(
    methods: &'static [&'static str],
) -> impl Fn() -> std::future::Ready<Result<HttpResponse, ProviderError>> + Clone {
    move || std::future::ready(Err(ProviderError::method_not_allowed(methods)))
}

/// Mounts the provider's routes.
pub fn configure(state: ProviderState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::Data::new(state))
            .service(
                web::resource("/charges")
                    .route(web::post().to(charge))
                    .route(web::get().to(list_accounts))
                    .default_service(web::to(allow(&["GET", "POST"]))),
            )
            .service(
                web::resource("/charges/{order_id}")
                    .route(web::get().to(get_account))
                    .route(web::head().to(get_account))
                    .default_service(web::to(allow(&["GET", "HEAD"]))),
            )
            .service(
                web::resource("/charges/{order_id}/void")
                    .route(web::post().to(void_charge))
                    .default_service(web::to(allow(&["POST"]))),
            )
            .service(
                web::resource("/_control")
                    .route(web::put().to(put_control))
                    .route(web::get().to(get_control))
                    .default_service(web::to(allow(&["GET", "PUT"]))),
            );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{App, test};

    async fn post(
        app: &impl actix_web::dev::Service<
            actix_http::Request,
            Response = actix_web::dev::ServiceResponse,
            Error = actix_web::Error,
        >,
        key: Option<&str>,
        customer: &str,
    ) -> u16 {
        let mut req = test::TestRequest::post().uri("/charges").set_json(
            serde_json::json!({"order_id": "o-1", "customer_id": customer, "amount_cents": 100}),
        );
        if let Some(k) = key {
            req = req.insert_header(("Idempotency-Key", k));
        }
        test::call_service(app, req.to_request())
            .await
            .status()
            .as_u16()
    }

    #[actix_web::test]
    async fn over_its_rate_limit_it_answers_429_with_retry_after_and_charges_nothing() {
        let state = ProviderState::with_rate_limit(2);
        let app = test::init_service(App::new().configure(configure(state.clone()))).await;
        assert_eq!(post(&app, Some("k-1"), "c").await, 200);
        assert_eq!(post(&app, Some("k-2"), "c").await, 200);
        let req = test::TestRequest::post()
            .uri("/charges")
            .insert_header(("Idempotency-Key", "k-3"))
            .set_json(
                serde_json::json!({"order_id": "o-1", "customer_id": "c", "amount_cents": 100}),
            )
            .to_request();
        let over = test::call_service(&app, req).await;
        assert_eq!(over.status().as_u16(), 429);
        let retry_after = over
            .headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok());
        assert_eq!(retry_after, Some("1"), "whole seconds, at least one");
        let a = &state.accounts()[0];
        assert_eq!(
            (a.charge_calls, a.throttled_calls, a.charges_made),
            (3, 1, 2),
            "two keys charged, the third call charged nothing"
        );
        // No limit unless asked; PUT /_control sets one and lifts it.
        let lift = test::TestRequest::put()
            .uri("/_control")
            .set_json(serde_json::json!({"rate_limit_per_s": 0}))
            .to_request();
        assert_eq!(test::call_service(&app, lift).await.status().as_u16(), 200);
        for i in 0..20 {
            assert_eq!(post(&app, Some(&format!("free-{i}")), "c").await, 200);
        }
    }

    #[actix_web::test]
    async fn calls_and_charges_are_counted_apart() {
        let state = ProviderState::default();
        let app = test::init_service(App::new().configure(configure(state.clone()))).await;
        assert_eq!(post(&app, Some("o-1"), "c").await, 200);
        assert_eq!(post(&app, Some("o-1"), "c").await, 200, "a replay");
        let a = &state.accounts()[0];
        assert_eq!((a.charge_calls, a.charges_made), (2, 1));
        // Without a key, a call is a new charge: a double charge shows.
        assert_eq!(post(&app, None, "c").await, 200);
        assert_eq!(state.accounts()[0].charges_made, 2);
        let void = test::TestRequest::post()
            .uri("/charges/o-1/void")
            .to_request();
        assert_eq!(test::call_service(&app, void).await.status().as_u16(), 200);
        let a = &state.accounts()[0];
        assert_eq!((a.status, a.void_calls), (Some(ChargeStatus::Voided), 1));
        let get = test::TestRequest::get().uri("/charges/nope").to_request();
        assert_eq!(test::call_service(&app, get).await.status().as_u16(), 404);
    }

    #[actix_web::test]
    async fn a_void_first_refuses_the_charge() {
        let state = ProviderState::default();
        let app = test::init_service(App::new().configure(configure(state.clone()))).await;
        let void = test::TestRequest::post()
            .uri("/charges/o-1/void")
            .to_request();
        assert_eq!(test::call_service(&app, void).await.status().as_u16(), 200);
        assert_eq!(post(&app, Some("o-1"), "c").await, 402);
        let a = &state.accounts()[0];
        assert_eq!((a.charges_made, a.charge_calls, a.void_calls), (0, 1, 1));
    }
}
