//! `/health` (liveness), `/ready` (readiness) and `/metrics`, served by every role.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use jetflow_runtime::Health;
use jetflow_runtime::health::ComponentStatus;
use serde::Serialize;

use crate::routes::allow;

/// Whether the process is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// Every component is alive.
    Ok,
    /// A component exhausted its restart budget: restart the process.
    Dead,
}

/// The body of `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct HealthView {
    /// `ok` or `dead`.
    pub status: Liveness,
    /// The components that are not alive, each with what it last reported (empty when `ok`).
    pub components: BTreeMap<String, String>,
}

/// Whether the process can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// Every component is ready.
    Ready,
    /// A component (e.g. NATS, the database) is not ready.
    NotReady,
}

/// One component's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ComponentView {
    /// Whether it can do its work now.
    pub ready: bool,
    /// Whether it is alive (`false`: the process should be restarted).
    pub live: bool,
    /// A short explanation for people, e.g. the last connection error.
    pub detail: String,
}

impl From<ComponentStatus> for ComponentView {
    fn from(c: ComponentStatus) -> Self {
        Self {
            ready: c.ready,
            live: c.live,
            detail: c.detail,
        }
    }
}

/// The body of `GET /ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ReadyView {
    /// `ready` or `not_ready`.
    pub status: Readiness,
    /// Every component by name.
    pub components: BTreeMap<String, ComponentView>,
}

/// `GET /health`: 200 while the process is alive (no actor gave up), else 503.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses(
        (status = 200, description = "Alive", body = HealthView),
        (status = 503, description = "A component exhausted its restart budget", body = HealthView),
    ))]
pub async fn health(health: web::Data<Health>) -> HttpResponse {
    let snap = health.snapshot();
    let body = HealthView {
        status: if snap.live {
            Liveness::Ok
        } else {
            Liveness::Dead
        },
        components: snap
            .components
            .into_iter()
            .filter(|(_, c)| !c.live)
            .map(|(n, c)| (n, c.detail))
            .collect(),
    };
    if snap.live {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /ready`: 200 when NATS and the database are reachable, else 503 naming what is not.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = ReadyView),
        (status = 503, description = "A dependency is unreachable", body = ReadyView),
    ))]
pub async fn ready(health: web::Data<Health>) -> HttpResponse {
    let snap = health.snapshot();
    let body = ReadyView {
        status: if snap.ready {
            Readiness::Ready
        } else {
            Readiness::NotReady
        },
        components: snap
            .components
            .into_iter()
            .map(|(n, c)| (n, c.into()))
            .collect(),
    };
    if snap.ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus metrics (text exposition format 0.0.4)",
        body = String, content_type = "text/plain")))]
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
