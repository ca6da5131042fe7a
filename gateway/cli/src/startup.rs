//! The composition root: the roles a process runs, as one [`Service`] of the runtime (the
//! same one a user's service is built on), plus the HTTP servers.
//!
//! [`Application::build`] checks the settings and starts the service: it connects (database,
//! NATS), starts each role as a part of it ([`RolePart`]: the role's saga actors and routes)
//! and its housekeeping, then binds the HTTP servers, returning before serving so a caller
//! (the binary, or a test) learns the bound ports. [`Application::run`] serves until its
//! shutdown future resolves (a signal, or a test's stop), then the service stops in the order
//! the design gives:
//!
//! 1. `/ready` answers 503 (load balancers take the process out);
//! 2. every HTTP server stops accepting and finishes its requests (all at once);
//! 3. the consumers stop pulling, and what they pulled is handled and acknowledged;
//! 4. the outbox is flushed (what was committed is published);
//! 5. NATS and the database connections close;
//!
//! all within `JETFLOW_SHUTDOWN_TIMEOUT`. The caller then stops a child nats-server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::{ErrorHandlers, from_fn};
use actix_web::{App, HttpServer, web};
use jetflow_domain::handling::LaneTurns;
use jetflow_domain::service::{PaymentSettings, RolePart};
use jetflow_domain::{Role, topology};
use jetflow_gateway::admin::AdminAccess;
use jetflow_gateway::admission::Admission;
use jetflow_gateway::rate_limit::RateLimiter;
use jetflow_gateway::routes;
use jetflow_gateway::{GatewayState, access_log, correlation, error, http_metrics};
use jetflow_provider::ProviderState;
use jetflow_runtime::{
    Bridge, Database, DbError, Health, OutboxHandle, Running, Service, ServiceError,
    priority::RequestsFirst,
};
use jetflow_schemas::Priority;
use tracing_actix_web::TracingLogger;

use crate::settings::{ConfigError, Settings, Uses};

/// Which roles a process runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Roles {
    /// The REST gateway.
    pub gateway: bool,
    /// The order handler and sweeper.
    pub orders: bool,
    /// The stock handler.
    pub inventory: bool,
    /// The payment handler and voider.
    pub payments: bool,
    /// The simulated payment provider.
    pub provider: bool,
}

impl Roles {
    /// Everything (`jetflow all`).
    pub fn all() -> Self {
        Self {
            gateway: true,
            orders: true,
            inventory: true,
            payments: true,
            provider: true,
        }
    }

    fn consumes(&self) -> bool {
        self.orders || self.inventory || self.payments
    }

    fn needs_nats(&self) -> bool {
        self.gateway || self.consumes()
    }

    /// What of the settings these roles use.
    pub fn uses(&self) -> Uses {
        Uses {
            nats: self.needs_nats(),
            database: self.gateway || self.consumes(),
            consumers: self.consumes(),
            payments: self.payments,
            http: true,
        }
    }
}

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A setting that cannot work (exit code 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database.
    #[error(transparent)]
    Database(DbError),
    /// The service could not start.
    #[error(transparent)]
    Service(ServiceError),
    /// An HTTP address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl From<DbError> for StartupError {
    fn from(e: DbError) -> Self {
        match &e {
            DbError::UnsupportedUrl(_) | DbError::Invalid(_) => StartupError::Config(ConfigError {
                setting: "DATABASE_URL",
                message: e.to_string(),
            }),
            DbError::Connect {
                source: sqlx::Error::Configuration(why),
                ..
            } => StartupError::Config(ConfigError {
                setting: "DATABASE_URL",
                message: why.to_string(),
            }),
            _ => StartupError::Database(e),
        }
    }
}

/// How a stop went (the runtime's: every role stops as a [`Service`] does).
///
/// [`Service`]: jetflow_runtime::Service
pub use jetflow_runtime::service::StopReport;

/// A built application, not serving yet.
pub struct Application {
    running: Running,
    servers: Vec<Server>,
    /// The embedded simulated provider: a dependency of payments, stopped after the drain.
    provider_server: Option<Server>,
    http_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    provider_addr: Option<SocketAddr>,
}

impl From<ServiceError> for StartupError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Config { setting, message } => {
                StartupError::Config(ConfigError { setting, message })
            }
            ServiceError::Connect(e) => e.into(),
            other => StartupError::Service(other),
        }
    }
}

/// The service that runs `roles`: its connections, and each consuming role as a part.
fn service(settings: &Settings, roles: Roles, requests_first: Option<&RequestsFirst>) -> Service {
    let saga = settings.saga();
    let mut service = Service::new(&settings.role_name)
        .shutdown_timeout(settings.http.shutdown_timeout)
        .retention(settings.retention)
        .relay(settings.relay.clone());
    service = if roles.uses().database {
        service
            .database_config(settings.database.clone())
            .connect_patience(Duration::from_secs(30))
            .migrations(jetflow_domain::MIGRATIONS)
    } else {
        service.without_database()
    };
    service = if roles.needs_nats() {
        let name = format!("jetflow-{}", settings.role_name);
        service
            .nats(settings.nats.connection(&name))
            .publish_timeout(settings.nats.publish_timeout)
            .topology(topology::topology(&saga))
    } else {
        service.without_nats()
    };
    let lanes = requests_first.cloned().map(LaneTurns::new);
    if roles.orders {
        service = service.part(RolePart::orders(saga.clone(), lanes.clone()));
    }
    if roles.inventory {
        service = service.part(RolePart::inventory(saga.clone(), lanes.clone()));
    }
    if roles.payments {
        let provider = PaymentSettings {
            provider_url: settings.provider.url(),
            provider_ca: settings.provider.ca.clone(),
            call_timeout: settings.provider.timeout,
            breaker_threshold: settings.provider.breaker_threshold,
            breaker_open: settings.provider.breaker_open,
        };
        service = service.part(RolePart::payments(saga.clone(), lanes, provider));
    }
    if roles.gateway {
        let retention = saga.idempotency_retention;
        service = service.housekeeping(
            "idempotency_keys",
            Arc::new(move |db: Database| {
                Box::pin(async move {
                    jetflow_domain::idempotency_store::purge_expired(&db, retention).await
                })
            }),
        );
    }
    service
}

impl Application {
    /// Checks the settings, starts the service (connections, roles) and binds the HTTP
    /// servers.
    pub async fn build(settings: Settings, roles: Roles) -> Result<Self, StartupError> {
        settings.validate(roles.uses())?;
        crate::telemetry::register_metrics();
        // One process that answers requests and consumes: each lane's consumers take turns
        // (their own) while requests are in flight (`jetflow_runtime::priority`).
        let requests_first = (settings.requests_first > 0 && roles.gateway && roles.consumes())
            .then(|| RequestsFirst::new(settings.requests_first as usize, settings.consumer_share));
        let running = service(&settings, roles, requests_first.as_ref())
            .start()
            .await?;
        match Self::serve(&settings, roles, running, requests_first) {
            Ok(app) => Ok(app),
            Err((running, e)) => {
                running.stop().await;
                Err(e)
            }
        }
    }

    /// Binds the HTTP servers of `roles` beside the running service.
    #[allow(clippy::result_large_err)]
    fn serve(
        settings: &Settings,
        roles: Roles,
        mut running: Running,
        requests_first: Option<RequestsFirst>,
    ) -> Result<Self, (Running, StartupError)> {
        let settings = settings.clone();
        let saga = settings.saga();
        let health = running.health().clone();
        let background = running.background();
        let db = running.database().cloned();
        let bridge = running.bridge().cloned();
        let gateway = match (&db, &bridge) {
            (Some(db), Some(bridge)) if roles.gateway => {
                let state = GatewayState::new(db.clone(), Arc::new(bridge.clone()), saga.clone());
                // Events whose PubAck did not come go through the outbox (the same ids).
                match running.outbox("gateway") {
                    Ok(outbox) => Some(state.with_outbox(outbox)),
                    Err(e) => return Err((running, e.into())),
                }
            }
            _ => None,
        };
        let limiter = RateLimiter::new(
            settings.http.rate_limit,
            settings.http.rate_burst,
            settings.http.trusted_proxies.clone(),
        );
        limiter.spawn_pruning(background.clone());

        let provider_only = roles.provider && !roles.needs_nats();
        let provider_state = ProviderState::with_rate_limit(settings.provider.rate_limit_per_s);
        let probes_on_main = settings.http.admin_addr.is_none();
        let h = health.clone();
        let main_provider = provider_only.then(|| provider_state.clone());
        let foreground = requests_first.clone();
        let admin = AdminAccess::new(settings.admin_token.clone());
        let admission = Admission::new(settings.max_backlog);
        if let (Some(_), Some(bridge), true) = (&gateway, &bridge, settings.max_backlog > 0) {
            let (bridge, stop) = (bridge.clone(), background.clone());
            let lanes: Vec<String> = [Priority::Standard, Priority::Express]
                .into_iter()
                .map(|lane| {
                    topology::consumer(&saga, Role::Inventory, topology::ORDERS, lane).durable
                })
                .collect();
            let watch = admission.clone().watch(Duration::from_secs(1), move || {
                let (bridge, lanes) = (bridge.clone(), lanes.clone());
                async move { saga_backlog(&bridge, &lanes).await }
            });
            actix_rt::spawn(async move {
                tokio::select! {
                    () = watch => {}
                    () = stop.cancelled() => {}
                }
            });
        }
        if gateway.is_some() {
            tracing::info!("{}", admin.describe());
        }
        let server = HttpServer::new(move || {
            let app = App::new()
                .wrap(ErrorHandlers::new().default_handler(error::json_errors))
                .wrap(from_fn(jetflow_gateway::rate_limit::middleware))
                .wrap(from_fn(jetflow_gateway::requests_first::middleware))
                .wrap(from_fn(correlation::middleware))
                .wrap(from_fn(access_log::middleware))
                .wrap(from_fn(http_metrics::middleware))
                .wrap(TracingLogger::<jetflow_gateway::access_log::RequestSpan>::new())
                .app_data(web::Data::new(h.clone()))
                .app_data(web::Data::new(limiter.clone()))
                .default_service(web::to(not_found));
            let app = match &foreground {
                Some(f) => app.app_data(web::Data::new(f.clone())),
                None => app,
            };
            let app = if probes_on_main {
                app.configure(routes::health::configure)
            } else {
                app
            };
            let app = match &gateway {
                Some(state) => app
                    .app_data(web::Data::new(state.clone()))
                    .app_data(web::Data::new(admin.clone()))
                    .app_data(web::Data::new(admission.clone()))
                    .configure(routes::orders::configure)
                    .configure(routes::inventory::configure)
                    .configure(routes::openapi::configure),
                None => app,
            };
            match &main_provider {
                Some(state) => app.configure(jetflow_provider::configure(state.clone())),
                None => app,
            }
        });
        let mut servers = Vec::new();
        let (server, http_addr) = match listen(server, &settings, settings.http.addr, None) {
            Ok(bound) => bound,
            Err(e) => return Err((running, e)),
        };
        servers.push(server);

        let mut admin_addr = None;
        if let Some(addr) = settings.http.admin_addr {
            let h = health.clone();
            let server = HttpServer::new(move || {
                App::new()
                    .wrap(ErrorHandlers::new().default_handler(error::json_errors))
                    .wrap(from_fn(http_metrics::middleware))
                    .app_data(web::Data::new(h.clone()))
                    .configure(routes::health::configure)
                    .default_service(web::to(not_found))
            });
            let (server, bound) = match listen(server, &settings, addr, Some(1)) {
                Ok(bound) => bound,
                Err(e) => return Err((running, e)),
            };
            servers.push(server);
            admin_addr = Some(bound);
        }

        let mut provider_addr = None;
        let mut provider_server = None;
        if roles.provider && !provider_only {
            let h = health.clone();
            let state = provider_state.clone();
            let server = HttpServer::new(move || {
                App::new()
                    .wrap(ErrorHandlers::new().default_handler(error::json_errors))
                    .wrap(from_fn(http_metrics::middleware))
                    .app_data(web::Data::new(h.clone()))
                    .configure(routes::health::configure)
                    .configure(jetflow_provider::configure(state.clone()))
                    .default_service(web::to(not_found))
            });
            let (server, bound) = match listen(server, &settings, settings.provider.addr, Some(1)) {
                Ok(bound) => bound,
                Err(e) => return Err((running, e)),
            };
            provider_server = Some(server);
            provider_addr = Some(bound);
        }
        tracing::info!(%http_addr, ?admin_addr, ?provider_addr, ?roles, "jetflow started");
        Ok(Self {
            running,
            servers,
            provider_server,
            http_addr,
            admin_addr,
            provider_addr,
        })
    }

    /// Where the main HTTP server listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the probes and metrics are served, when not on the main address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Where the simulated payment provider listens, when it has its own server.
    pub fn provider_addr(&self) -> Option<SocketAddr> {
        self.provider_addr
    }

    /// The health registry.
    pub fn health(&self) -> &Health {
        self.running.health()
    }

    /// The bridge, when the roles use NATS.
    pub fn bridge(&self) -> Option<&Bridge> {
        self.running.bridge()
    }

    /// The database, when the roles use one.
    pub fn database(&self) -> Option<&Database> {
        self.running.database()
    }

    /// The outbox relay, when the roles have one.
    pub fn outbox(&self) -> Option<&OutboxHandle> {
        self.running.started_outbox()
    }

    /// Serves until `shutdown` resolves, then stops in order (see the module docs).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> StopReport {
        for server in self.servers.drain(..) {
            let handle = server.handle();
            actix_rt::spawn(async move {
                if let Err(e) = server.await {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            });
            self.running
                .server(move || async move { handle.stop(true).await });
        }
        // The simulated provider (in `jetflow all`) outlives the payments it answers.
        if let Some(server) = self.provider_server.take() {
            let handle = server.handle();
            actix_rt::spawn(async move {
                if let Err(e) = server.await {
                    tracing::error!(error = %e, "provider HTTP server failed");
                }
            });
            self.running
                .after_drain(move || async move { handle.stop(true).await });
        }
        self.running.run_until(shutdown).await
    }
}

/// Orders waiting for the saga's first step: the inventory consumers' pending and
/// unacknowledged `orders.created` (none known while they do not exist yet).
async fn saga_backlog(bridge: &Bridge, durables: &[String]) -> Option<u64> {
    let js = bridge.jetstream()?;
    let stream = js.get_stream_no_info(topology::ORDERS).await.ok()?;
    let mut backlog = 0;
    for durable in durables {
        if let Ok(info) = stream.consumer_info(durable).await {
            backlog += info.num_pending + info.num_ack_pending as u64;
        }
    }
    Some(backlog)
}

/// Binds a server (no signal handling of its own: the application stops it).
fn listen<F, I, S, B>(
    server: HttpServer<F, I, S, B>,
    settings: &Settings,
    addr: SocketAddr,
    workers: Option<usize>,
) -> Result<(Server, SocketAddr), StartupError>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: actix_service::IntoServiceFactory<S, actix_http::Request>,
    S: actix_service::ServiceFactory<actix_http::Request, Config = actix_web::dev::AppConfig>
        + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: std::fmt::Debug,
    S::Response: Into<actix_http::Response<B>> + 'static,
    <S::Service as actix_service::Service<actix_http::Request>>::Future: 'static,
    S::Service: 'static,
    B: actix_web::body::MessageBody + 'static,
{
    let timeout = settings.http.shutdown_timeout.as_secs().max(1);
    let server = server.disable_signals().shutdown_timeout(timeout);
    let server = match workers.or(settings.http.workers) {
        Some(n) => server.workers(n.max(1)),
        None => server,
    };
    let server = server
        .bind(addr)
        .map_err(|source| StartupError::Bind { addr, source })?;
    let bound = server.addrs().first().copied().unwrap_or(addr);
    Ok((server.run(), bound))
}

async fn not_found() -> Result<actix_web::HttpResponse, error::ApiError> {
    Err(error::ApiError::not_found("not_found", "no such route"))
}
