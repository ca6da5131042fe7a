//! The composition root: builds what a set of roles needs, serves HTTP, and stops it all in
//! order.
//!
//! [`Application::build`] checks the settings, connects (database, NATS), starts each role's
//! routes and actors and binds the HTTP servers, returning before serving so a caller (the
//! binary, or a test) learns the bound ports. [`Application::run`] serves until its shutdown
//! future resolves (a signal, or a test's stop), then stops in the order the design gives:
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
use std::time::{Duration, Instant};

use actix_web::dev::Server;
use actix_web::middleware::{ErrorHandlers, from_fn};
use actix_web::{App, HttpServer, web};
use backon::Retryable;
use jetflow_domain::service::{self, PaymentSettings, RoleActors};
use jetflow_domain::{Deps, Role, topology};
use jetflow_gateway::admin::AdminAccess;
use jetflow_gateway::admission::Admission;
use jetflow_gateway::rate_limit::RateLimiter;
use jetflow_gateway::routes;
use jetflow_gateway::{GatewayState, access_log, correlation, error, http_metrics};
use jetflow_provider::ProviderState;
use jetflow_runtime::service::Stopping;
use jetflow_runtime::{
    Backoff, Bridge, BridgeConfig, Database, DbError, Health, Housekeeping, NatsBridge,
    OutboxHandle, OutboxRelay, Publisher, priority::Foreground,
};
use jetflow_schemas::Priority;
use tokio_util::sync::CancellationToken;
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
    settings: Settings,
    health: Health,
    servers: Vec<Server>,
    /// The embedded simulated provider: a dependency of payments, stopped after the drain.
    provider_server: Option<Server>,
    http_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    provider_addr: Option<SocketAddr>,
    bridge: Option<Bridge>,
    db: Option<Database>,
    outbox: Option<OutboxHandle>,
    actors: Vec<RoleActors>,
    background: CancellationToken,
}

/// Connects to the database, retrying for up to `patience` (a database that starts a little
/// after us is normal in compose or Kubernetes), and runs the migrations.
async fn connect_database(settings: &Settings, patience: Duration) -> Result<Database, DbError> {
    let started = Instant::now();
    let db = (|| Database::connect(&settings.database))
        .retry(
            Backoff::exponential(Duration::from_millis(200), Duration::from_secs(3))
                .builder(),
        )
        .when(|e| matches!(e, DbError::Connect { .. }) && started.elapsed() < patience)
        .notify(|e, d| tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "database not reachable yet"))
        .await?;
    db.migrate(&jetflow_domain::MIGRATOR).await?;
    Ok(db)
}

impl Application {
    /// Checks the settings, connects, starts the roles and binds the HTTP servers.
    pub async fn build(settings: Settings, roles: Roles) -> Result<Self, StartupError> {
        settings.validate(roles.uses())?;
        crate::telemetry::register_metrics();
        let health = Health::new();
        let background = CancellationToken::new();
        let saga = settings.saga();

        let db = if roles.uses().database {
            let db = connect_database(&settings, Duration::from_secs(30)).await?;
            db.spawn_health_probe(health.clone(), Duration::from_secs(5), background.clone());
            Some(db)
        } else {
            None
        };
        // One process that answers requests and consumes: each lane's consumers take turns
        // (their own) while requests are in flight (`jetflow_runtime::priority`).
        let requests_first = (settings.requests_first > 0 && roles.gateway && roles.consumes())
            .then(|| Foreground::new(settings.requests_first as usize, settings.consumer_share));
        let bridge = roles.needs_nats().then(|| {
            let name = format!("jetflow-{}", settings.role_name);
            let mut config =
                BridgeConfig::new(settings.nats.connection(&name), topology::topology(&saga));
            config.publish_timeout = settings.nats.publish_timeout;
            NatsBridge::start(config, health.clone())
        });

        let mut outbox = None;
        let mut actors = Vec::new();
        if let (Some(db), Some(bridge)) = (&db, &bridge) {
            let mut housekeeping = Housekeeping::new(db.clone(), settings.retention);
            if roles.consumes() {
                let publisher: Arc<dyn Publisher> = Arc::new(bridge.clone());
                let relay = OutboxRelay::start(db.clone(), publisher, settings.relay.clone());
                let deps = Deps {
                    db: db.clone(),
                    outbox: relay.clone(),
                    config: saga.clone(),
                    requests_first: requests_first
                        .clone()
                        .map(jetflow_domain::handling::RequestsFirst::new),
                };
                let refused = |e: service::RoleError| {
                    StartupError::Config(ConfigError {
                        setting: "JETFLOW_REQUESTS_FIRST",
                        message: e.to_string(),
                    })
                };
                if roles.orders {
                    actors.push(
                        service::start_orders(&deps, bridge, &health)
                            .await
                            .map_err(refused)?,
                    );
                }
                if roles.inventory {
                    actors.push(
                        service::start_inventory(&deps, bridge, &health)
                            .await
                            .map_err(refused)?,
                    );
                }
                if roles.payments {
                    let payment = PaymentSettings {
                        provider_url: settings.provider.url(),
                        provider_ca: settings.provider.ca.clone(),
                        call_timeout: settings.provider.timeout,
                        breaker_threshold: settings.provider.breaker_threshold,
                        breaker_open: settings.provider.breaker_open,
                    };
                    let started = service::start_payments(&deps, bridge, &health, &payment)
                        .await
                        .map_err(|e| match e {
                            service::RoleError::Provider(e) => StartupError::Config(ConfigError {
                                setting: "PAYMENT_PROVIDER_URL",
                                message: e.to_string(),
                            }),
                            other => refused(other),
                        })?;
                    actors.push(started);
                }
                outbox = Some(relay);
            }
            if roles.payments {
                // Charge attempts are kept as long as processed events: every order they
                // belong to has finished by then.
                let retention = settings.retention.inbox;
                housekeeping = housekeeping.also(
                    "payment_attempts",
                    Arc::new(move |db: Database| {
                        Box::pin(async move {
                            jetflow_domain::payment_store::purge_attempts(&db, retention).await
                        })
                    }),
                );
            }
            if roles.gateway {
                let retention = saga.idempotency_retention;
                housekeeping = housekeeping.also(
                    "idempotency_keys",
                    Arc::new(move |db: Database| {
                        Box::pin(async move {
                            jetflow_domain::idempotency_store::purge_expired(&db, retention).await
                        })
                    }),
                );
            }
            housekeeping.spawn(background.clone());
        }

        let gateway = match (&db, &bridge) {
            (Some(db), Some(bridge)) if roles.gateway => Some(GatewayState::new(
                db.clone(),
                Arc::new(bridge.clone()),
                saga.clone(),
            )),
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
        let (server, http_addr) = listen(server, &settings, settings.http.addr, None)?;
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
            let (server, bound) = listen(server, &settings, addr, Some(1))?;
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
            let (server, bound) = listen(server, &settings, settings.provider.addr, Some(1))?;
            provider_server = Some(server);
            provider_addr = Some(bound);
        }
        tracing::info!(%http_addr, ?admin_addr, ?provider_addr, ?roles, "jetflow started");
        Ok(Self {
            settings,
            health,
            servers,
            provider_server,
            http_addr,
            admin_addr,
            provider_addr,
            bridge,
            db,
            outbox,
            actors,
            background,
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
        &self.health
    }

    /// The bridge, when the roles use NATS.
    pub fn bridge(&self) -> Option<&Bridge> {
        self.bridge.as_ref()
    }

    /// The database, when the roles use one.
    pub fn database(&self) -> Option<&Database> {
        self.db.as_ref()
    }

    /// The outbox relay, when the roles have one.
    pub fn outbox(&self) -> Option<&OutboxHandle> {
        self.outbox.as_ref()
    }

    /// Serves until `shutdown` resolves, then stops in order (see the module docs).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> StopReport {
        let mut stopping = Stopping::new(self.health.clone(), self.background.clone());
        for server in self.servers.drain(..) {
            let handle = server.handle();
            actix_rt::spawn(async move {
                if let Err(e) = server.await {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            });
            stopping.server(move || async move { handle.stop(true).await });
        }
        // The simulated provider (in `jetflow all`) outlives the payments it answers.
        if let Some(server) = self.provider_server.take() {
            let handle = server.handle();
            actix_rt::spawn(async move {
                if let Err(e) = server.await {
                    tracing::error!(error = %e, "provider HTTP server failed");
                }
            });
            stopping.after_drain(move || async move { handle.stop(true).await });
        }
        stopping.bridge = self.bridge;
        stopping.outbox = self.outbox;
        stopping.db = self.db;
        for actors in self.actors {
            stopping.actor(move || actors.stop());
        }
        stopping
            .run_until(shutdown, self.settings.http.shutdown_timeout)
            .await
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
