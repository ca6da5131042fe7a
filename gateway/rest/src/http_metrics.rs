//! HTTP metrics of every role: `jetflow_http_requests_total{method,route,status}` and
//! `jetflow_http_request_seconds{method,route}`. No label takes a value from the client: the
//! route is the matched pattern (`/orders/{id}`, or `unmatched`), never the raw path, and the
//! method is one of the known methods or `other`, so requests cannot grow the label set.

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

/// The `method` label: a known method, or `other`.
pub fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Middleware recording every request.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = method_label(req.method());
    let result = next.call(req).await;
    // The route is known only once the router matched the request.
    let (status, route) = match &result {
        Ok(res) => (res.status().as_u16(), res.request().match_pattern()),
        Err(e) => (e.as_response_error().status_code().as_u16(), None),
    };
    let route = route.unwrap_or_else(|| "unmatched".to_string());
    let m = &*METRICS;
    m.requests
        .with_label_values(&[method, route.as_str(), &status.to_string()])
        .inc();
    m.seconds
        .with_label_values(&[method, route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::Method;

    #[test]
    fn invented_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        let invented = Method::from_bytes(b"BREW").unwrap();
        let another = Method::from_bytes(b"XYZZY").unwrap();
        assert_eq!(method_label(&invented), "other");
        assert_eq!(method_label(&another), "other");
    }
}
