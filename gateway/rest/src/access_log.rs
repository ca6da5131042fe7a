//! The access log: one structured line per request, at info, with method, route, status,
//! latency and correlation id (5xx at warn). The route is the matched pattern, so a line
//! never carries an id from the path.

use std::time::Instant;

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;

use crate::correlation::CorrelationId;

/// Middleware writing the line once the response is ready.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().clone();
    let peer = req.peer_addr().map(|a| a.ip());
    let result = next.call(req).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (status, route, correlation_id) = match &result {
        Ok(res) => (
            res.status().as_u16(),
            res.request().match_pattern(),
            res.request()
                .extensions()
                .get::<CorrelationId>()
                .map(|c| c.0.clone()),
        ),
        Err(e) => (e.as_response_error().status_code().as_u16(), None, None),
    };
    let route = route.unwrap_or_else(|| "unmatched".to_string());
    let correlation_id = correlation_id.unwrap_or_default();
    if status >= 500 {
        tracing::warn!(method = %method, route, status, latency_ms, %correlation_id, peer = ?peer, "request");
    } else {
        tracing::info!(method = %method, route, status, latency_ms, %correlation_id, peer = ?peer, "request");
    }
    result
}

/// The root span of every request (tracing-actix-web), without the raw path (ids in a path
/// would make every line about a request look like a line about that id) and without an
/// event of its own at the end: the access log line above says how the request went.
pub struct RequestSpan;

impl tracing_actix_web::RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &actix_web::dev::ServiceRequest) -> tracing::Span {
        let route = request
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_string());
        let span = tracing::info_span!(
            "request",
            method = %request.method(),
            route,
            request_id = %uuid::Uuid::new_v4(),
        );
        // When spans are exported, the caller's trace continues here.
        let caller = request
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok());
        jetflow_runtime::otel::continue_trace(&span, caller);
        span
    }

    fn on_request_end<B: MessageBody>(
        _span: tracing::Span,
        _outcome: &Result<ServiceResponse<B>, actix_web::Error>,
    ) {
    }
}
