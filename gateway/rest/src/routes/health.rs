//! `/health` (liveness), `/ready` (readiness) and `/metrics`, served by every role.

use actix_web::{HttpResponse, web};
use jetflow_runtime::Health;

use crate::routes::allow;

/// `GET /health`: 200 while the process is alive (no actor gave up), else 503.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "alive"), (status = 503, description = "an actor exhausted its restart budget")))]
pub async fn health(health: web::Data<Health>) -> HttpResponse {
    let snap = health.snapshot();
    let body = serde_json::json!({
        "status": if snap.live { "ok" } else { "dead" },
        "components": snap.components.iter().filter(|(_, c)| !c.live).map(|(n, c)| (n.clone(), c.detail.clone())).collect::<std::collections::BTreeMap<_, _>>(),
    });
    if snap.live {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /ready`: 200 when NATS and the database are reachable, else 503 naming what is not.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, description = "ready"), (status = 503, description = "a dependency is unreachable")))]
pub async fn ready(health: web::Data<Health>) -> HttpResponse {
    let snap = health.snapshot();
    let body = serde_json::json!({
        "status": if snap.ready { "ready" } else { "not_ready" },
        "components": snap.components,
    });
    if snap.ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus metrics", content_type = "text/plain")))]
pub async fn metrics() -> HttpResponse {
    match jetflow_runtime::metrics::render() {
        Ok(text) => HttpResponse::Ok()
            .content_type(jetflow_runtime::metrics::content_type())
            .body(text),
        Err(e) => HttpResponse::InternalServerError()
            .json(serde_json::json!({"error": "metrics_unavailable", "message": e.to_string()})),
    }
}

/// Mounts the probes and metrics (GET and HEAD; any other method answers 405).
pub fn configure(cfg: &mut web::ServiceConfig) {
    const GET: &[&str] = &["GET", "HEAD"];
    cfg.service(
        web::resource("/health")
            .route(web::get().to(health))
            .route(web::head().to(health))
            .default_service(web::to(allow(GET))),
    )
    .service(
        web::resource("/ready")
            .route(web::get().to(ready))
            .route(web::head().to(ready))
            .default_service(web::to(allow(GET))),
    )
    .service(
        web::resource("/metrics")
            .route(web::get().to(metrics))
            .route(web::head().to(metrics))
            .default_service(web::to(allow(GET))),
    );
}
