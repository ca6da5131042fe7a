//! The composition root: builds the parts a set of roles needs and serves HTTP.
//!
//! [`Application::build`] connects (database, NATS), starts the actors of each role and binds
//! the HTTP servers, returning before serving so a caller (the binary, or a test) learns the
//! bound ports; [`Application::run_until_stopped`] serves until a signal or a stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::{ErrorHandlers, from_fn};
use actix_web::{App, HttpServer, web};
use backon_retry::retry_connect;
use jetflow_domain::service::{self, PaymentSettings};
use jetflow_domain::{Database, Deps, OutboxHandle, OutboxRelay, RelayConfig, topology};
use jetflow_runtime::{
    ActorRef, BridgeConfig, Health, NatsAuth, NatsBridge, NatsConfig, Publisher, Secret,
};
use tracing_actix_web::TracingLogger;

use crate::configuration::Settings;
use crate::payment_provider::{self, ProviderState};
use crate::rate_limit::{self, RateLimiter};
use crate::routes;
use crate::state::GatewayState;
use crate::{correlation, error, http_metrics};

/// Which roles a process runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Roles {
    /// The REST gateway.
    pub gateway: bool,
    /// The order actor.
    pub orders: bool,
    /// The stock actor.
    pub inventory: bool,
    /// The payment actor.
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

    fn needs_nats(&self) -> bool {
        self.gateway || self.orders || self.inventory || self.payments
    }

    fn needs_outbox(&self) -> bool {
        self.orders || self.inventory || self.payments
    }
}

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The database.
    #[error(transparent)]
    Database(#[from] jetflow_domain::db::DbError),
    /// An HTTP address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The payment provider client.
    #[error(transparent)]
    Provider(#[from] jetflow_domain::payment_client::ProviderError),
    /// A setting.
    #[error("{0}")]
    Config(String),
}

mod backon_retry {
    use std::time::Duration;

    use jetflow_domain::Database;
    use jetflow_domain::db::DbError;

    /// Connects to the database, retrying with backoff for up to `patience` (a database
    /// that starts a little after us is normal in a compose or Kubernetes deployment).
    pub async fn retry_connect(url: &str, patience: Duration) -> Result<Database, DbError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut delay = Duration::from_millis(200);
        loop {
            match Database::connect(url).await {
                Ok(db) => return Ok(db),
                Err(e @ (DbError::Connect { .. } | DbError::Query(_)))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database not reachable yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(3));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A built application, not serving yet.
pub struct Application {
    http_addr: SocketAddr,
    provider_addr: Option<SocketAddr>,
    servers: Vec<Server>,
    health: Health,
    bridge: Option<ActorRef<NatsBridge>>,
    db: Option<Database>,
    outbox: Option<OutboxHandle>,
}

/// The NATS connection settings of `settings`.
pub fn nats_config(settings: &Settings, name: &str) -> NatsConfig {
    let auth = if let Some(creds) = &settings.nats_creds {
        NatsAuth::CredsFile(creds.clone())
    } else if let (Some(user), Some(password)) = (&settings.nats_user, &settings.nats_password) {
        NatsAuth::UserPassword {
            user: user.clone(),
            password: Secret::new(password.clone()),
        }
    } else {
        NatsAuth::None
    };
    NatsConfig::new(&settings.nats_url).auth(auth).name(name)
}

impl Application {
    /// Connects, starts the roles' actors and binds the HTTP servers.
    pub async fn build(settings: Settings, roles: Roles) -> Result<Self, StartupError> {
        let health = Health::new();
        http_metrics::init();
        let saga = Arc::new(settings.saga.clone());
        let needs_db = roles.gateway || roles.needs_outbox();
        let db = if needs_db {
            let db = retry_connect(&settings.database_url, Duration::from_secs(30)).await?;
            db.spawn_health_probe(health.clone(), Duration::from_secs(2));
            Some(db)
        } else {
            None
        };
        let bridge = if roles.needs_nats() {
            let name = format!("jetflow-{}", settings.role_name);
            let mut config =
                BridgeConfig::new(nats_config(&settings, &name), topology::topology(&saga));
            config.publish_timeout = settings.publish_timeout;
            Some(NatsBridge::start(config, health.clone()))
        } else {
            None
        };
        let mut outbox = None;
        if let (Some(db), Some(bridge)) = (&db, &bridge) {
            if roles.needs_outbox() {
                let publisher: Arc<dyn Publisher> = Arc::new(bridge.clone());
                let relay = OutboxRelay::start(db.clone(), publisher, RelayConfig::default());
                let deps = Deps {
                    db: db.clone(),
                    outbox: relay.clone(),
                    config: saga.clone(),
                };
                if roles.orders {
                    service::start_orders(&deps, bridge, &health).await;
                }
                if roles.inventory {
                    service::start_inventory(&deps, bridge, &health).await;
                }
                if roles.payments {
                    let provider_url = settings.payment_provider_url.clone();
                    service::start_payments(
                        &deps,
                        bridge,
                        &health,
                        &PaymentSettings {
                            provider_url,
                            call_timeout: settings.payment_timeout,
                            breaker_threshold: settings.breaker_threshold,
                            breaker_open: settings.breaker_open,
                        },
                    )
                    .await?;
                }
                outbox = Some(relay);
            }
        }

        let mut servers = Vec::new();
        let gateway_state = match (&db, &bridge) {
            (Some(db), Some(bridge)) if roles.gateway => Some(GatewayState {
                db: db.clone(),
                publisher: Arc::new(bridge.clone()),
                saga: saga.clone(),
            }),
            _ => None,
        };
        let limiter = RateLimiter::new(settings.rate_limit, settings.rate_burst);
        let h = health.clone();
        let provider_in_main = roles.provider && !roles.gateway && !roles.needs_outbox();
        let provider_state = ProviderState::default();
        let main_provider = provider_in_main.then(|| provider_state.clone());
        let workers = settings.http_workers;
        let server = HttpServer::new(move || {
            let app = App::new()
                .wrap(ErrorHandlers::new().default_handler(error::json_errors))
                .wrap(from_fn(rate_limit::middleware))
                .wrap(from_fn(correlation::middleware))
                .wrap(from_fn(http_metrics::middleware))
                .wrap(TracingLogger::default())
                .app_data(web::Data::new(h.clone()))
                .configure(routes::health::configure)
                .default_service(web::to(|| async {
                    Err::<actix_web::HttpResponse, _>(error::ApiError::not_found(
                        "not_found",
                        "no such route",
                    ))
                }));
            let app = match &gateway_state {
                Some(state) => app
                    .app_data(web::Data::new(state.clone()))
                    .app_data(web::Data::new(limiter.clone()))
                    .configure(routes::orders::configure)
                    .configure(routes::inventory::configure)
                    .configure(routes::openapi::configure),
                None => app,
            };
            match &main_provider {
                Some(state) => app.configure(payment_provider::configure(state.clone())),
                None => app,
            }
        });
        let server = match workers {
            Some(n) => server.workers(n.max(1)),
            None => server,
        };
        let server = server
            .bind(settings.http_addr)
            .map_err(|source| StartupError::Bind {
                addr: settings.http_addr,
                source,
            })?;
        let http_addr = server
            .addrs()
            .first()
            .copied()
            .unwrap_or(settings.http_addr);
        servers.push(server.run());

        let mut provider_addr = None;
        if roles.provider && !provider_in_main {
            let h = health.clone();
            let state = provider_state.clone();
            let server = HttpServer::new(move || {
                App::new()
                    .wrap(ErrorHandlers::new().default_handler(error::json_errors))
                    .wrap(from_fn(http_metrics::middleware))
                    .app_data(web::Data::new(h.clone()))
                    .configure(routes::health::configure)
                    .configure(payment_provider::configure(state.clone()))
            })
            .workers(1)
            .bind(settings.provider_addr)
            .map_err(|source| StartupError::Bind {
                addr: settings.provider_addr,
                source,
            })?;
            provider_addr = server.addrs().first().copied();
            servers.push(server.run());
        }
        tracing::info!(%http_addr, ?provider_addr, ?roles, "jetflow started");
        Ok(Self {
            http_addr,
            provider_addr,
            servers,
            health,
            bridge,
            db,
            outbox,
        })
    }

    /// Where the main HTTP server listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
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
    pub fn bridge(&self) -> Option<&ActorRef<NatsBridge>> {
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

    /// Handles that stop the HTTP servers.
    pub fn server_handles(&self) -> Vec<ServerHandle> {
        self.servers.iter().map(Server::handle).collect()
    }

    /// Serves until every server stopped (Ctrl-C, SIGTERM, or a handle's `stop`).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handles = self.server_handles();
        if self.servers.is_empty() {
            return Ok(());
        }
        // When one server stops (a signal stops them all anyway), stop the others too.
        let (first, _, rest) = futures::future::select_all(self.servers).await;
        for h in &handles {
            h.stop(true).await;
        }
        for r in futures::future::join_all(rest).await {
            r?;
        }
        first
    }
}
