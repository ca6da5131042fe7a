//! HTTP metrics of every role: `jetflow_http_requests_total{method,route,status}` and
//! `jetflow_http_request_seconds{method,route}`. The route label is the matched pattern
//! (`/orders/{id}`), never the raw path, so ids cannot explode the label set.

use std::sync::LazyLock;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

struct HttpMetrics {
    requests: IntCounterVec,
    seconds: HistogramVec,
}

static METRICS: LazyLock<HttpMetrics> = LazyLock::new(|| {
    let requests = IntCounterVec::new(
        Opts::new(
            "jetflow_http_requests_total",
            "HTTP requests, by method, route and status.",
        ),
        &["method", "route", "status"],
    )
    .expect("valid metric");
    let seconds = HistogramVec::new(
        HistogramOpts::new(
            "jetflow_http_request_seconds",
            "HTTP request latency, by method and route.",
        )
        .buckets(jetflow_runtime::metrics::LATENCY_BUCKETS.to_vec()),
        &["method", "route"],
    )
    .expect("valid metric");
    prometheus::register(Box::new(requests.clone())).expect("registered once");
    prometheus::register(Box::new(seconds.clone())).expect("registered once");
    HttpMetrics { requests, seconds }
});

/// Registers the metrics so they show before the first request.
pub fn init() {
    LazyLock::force(&METRICS);
}

/// Middleware recording every request.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().as_str().to_string();
    let result = next.call(req).await;
    // The route is known only once the router matched the request.
    let (status, route) = match &result {
        Ok(res) => (res.status().as_u16(), res.request().match_pattern()),
        Err(e) => (e.as_response_error().status_code().as_u16(), None),
    };
    let route = route.unwrap_or_else(|| "unmatched".to_string());
    let m = &*METRICS;
    m.requests
        .with_label_values(&[method.as_str(), route.as_str(), &status.to_string()])
        .inc();
    m.seconds
        .with_label_values(&[method.as_str(), route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    result
}
