//! A service that owns its lifecycle: declare what it consumes and emits; [`Service::run`]
//! does the rest.
//!
//! From the routes it is given, a service derives its streams (one per first subject token:
//! `readings.>` lives in `READINGS`) and its durable consumers (`<service>-<stream>`). `run`
//! checks and connects the database (running the service's own schema), starts the
//! [`NatsBridge`], the [`OutboxRelay`], a supervised [`TxActors`] pool per route and the
//! [`Housekeeping`] of the inbox, then waits for `SIGTERM` or `SIGINT`. The stop is ordered
//! and bounded by the shutdown timeout: consumers stop pulling and what they pulled is
//! handled and acked, the actors stop, what was committed is published, then NATS and the
//! database close. A part of the service that gives up (an actor that spent its restart
//! budget) stops it the same way, and `run` returns the error, so the process exits non-zero.
//!
//! A service with parts of its own (actors beside its routes, an HTTP server, a role of the
//! `jetflow` binary) adds them with [`Service::part`]: a [`Part`] starts once the connections
//! are up, on the [`Running`] service, where it finds the database, the bridge and the outbox,
//! subscribes routes, and says how it stops; the service stops it in the same order as the
//! rest. [`Service::start`] returns the [`Running`] service before it waits, for a caller
//! that wants to know what was started (the addresses it bound, say).
//!
//! ```no_run
//! use jetflow_runtime::prelude::*;
//!
//! struct Echo;
//!
//! impl TxHandler for Echo {
//!     type Message = Json<serde_json::Value>;
//!
//!     async fn handle(&self, uow: &mut UnitOfWork, d: &Delivery<Self::Message>) -> Result<(), TxError> {
//!         uow.publish("echoes.seen", d.message.0.to_string());
//!         Ok(())
//!     }
//! }
//!
//! #[actix::main]
//! async fn main() -> Result<(), jetflow_runtime::ServiceError> {
//!     Service::new("echo").route("things.>", Echo).emits("echoes.>").run().await
//! }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::Retryable;
use futures::future::LocalBoxFuture;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

use crate::bridge::{Bridge, BridgeConfig, NatsBridge};
use crate::connection::NatsConfig;
use crate::db::{Database, DbConfig, Migrations};
use crate::health::Health;
use crate::housekeeping::{Housekeeping, PruneFn, Retention};
use crate::relay::{OutboxHandle, OutboxRelay, RelayConfig};
use crate::route::{BatchConfig, Route};
use crate::topology::{ConsumerSpec, StreamSpec, Topology};
use crate::tx_actor::TxActors;
use crate::tx_route::PreparedTxHandler;

/// Why a service could not start, or stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A setting is wrong (checked before anything starts).
    #[error("{setting}: {message}")]
    Config {
        /// The setting.
        setting: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The database could not be reached.
    #[error(transparent)]
    Connect(#[from] crate::db::DbError),
    /// The service's schema could not be set up.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A part of the service gave up (an actor that spent its restart budget).
    #[error("{component} gave up: {reason}")]
    Died {
        /// The part.
        component: String,
        /// Why.
        reason: String,
    },
    /// The stop did not finish within the shutdown timeout (what was left is redelivered).
    #[error("the stop took longer than {0:?}")]
    StopTimedOut(Duration),
    /// A part needs something the service was built without (an outbox without a database
    /// or NATS, say).
    #[error("{part} needs {what}, which this service was built without")]
    Missing {
        /// The part.
        part: String,
        /// What it needs.
        what: &'static str,
    },
    /// A part could not start.
    #[error("{part}: {reason}")]
    Part {
        /// The part.
        part: String,
        /// Why.
        reason: String,
    },
}

/// A part of a service that is not a route: actors, an HTTP server, a role. It starts once
/// the service's connections are up, on the [`Running`] service, and registers there how it
/// stops.
pub trait Part: 'static {
    /// The part's name, for errors and logs.
    fn name(&self) -> String {
        let full = std::any::type_name::<Self>();
        full.rsplit("::").next().unwrap_or(full).to_string()
    }

    /// Starts the part: subscribe its routes, start its actors, and register their stop with
    /// [`Running::on_stop`] (or [`Running::server`] for what takes requests).
    fn start<'a>(
        self: Box<Self>,
        service: &'a mut Running,
    ) -> LocalBoxFuture<'a, Result<(), ServiceError>>;
}

/// Starts a route's actors once the outbox exists: the route, and how to stop them.
type RouteStarter = Box<dyn FnOnce(&OutboxHandle, &Health) -> (Route, Box<dyn Fn()>)>;

/// A service: its name, connections, routes and the streams it writes (see the
/// [module](self)).
pub struct Service {
    name: String,
    nats: Option<NatsConfig>,
    publish_timeout: Option<Duration>,
    database: Option<DbConfig>,
    connect_patience: Duration,
    migrator: Option<Migrations>,
    schema: Vec<String>,
    streams: Vec<StreamSpec>,
    topology: Topology,
    routes: Vec<RouteStarter>,
    parts: Vec<Box<dyn Part>>,
    relay: RelayConfig,
    housekeeping: Vec<(String, PruneFn)>,
    batch: BatchConfig,
    instances: usize,
    retention: Retention,
    shutdown_timeout: Duration,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("streams", &self.streams)
            .field("routes", &self.routes.len())
            .field(
                "parts",
                &self.parts.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Service {
    /// A service called `name` (the prefix of its consumers). NATS is `NATS_URL` (default
    /// `nats://127.0.0.1:4222`), the database `DATABASE_URL` (default
    /// `sqlite://<name>.db`).
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        let nats = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let database =
            std::env::var("DATABASE_URL").unwrap_or_else(|_| format!("sqlite://{name}.db"));
        Self {
            nats: Some(NatsConfig::new(&nats).name(format!("jetflow-{name}"))),
            publish_timeout: None,
            name,
            database: Some(DbConfig::new(database)),
            connect_patience: Duration::ZERO,
            migrator: None,
            schema: Vec::new(),
            streams: Vec::new(),
            topology: Topology::new(),
            routes: Vec::new(),
            parts: Vec::new(),
            relay: RelayConfig::default(),
            housekeeping: Vec::new(),
            batch: BatchConfig::default(),
            instances: 1,
            retention: Retention::default(),
            shutdown_timeout: Duration::from_secs(30),
        }
    }

    /// How to reach NATS (instead of `NATS_URL`).
    pub fn nats(mut self, config: NatsConfig) -> Self {
        self.nats = Some(config);
        self
    }

    /// No NATS: a service that only serves HTTP, say (it can have no routes).
    pub fn without_nats(mut self) -> Self {
        self.nats = None;
        self
    }

    /// How long a publish may wait for its PubAck (the bridge's default otherwise).
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = Some(timeout);
        self
    }

    /// The database URL (instead of `DATABASE_URL`).
    pub fn database(mut self, url: impl Into<String>) -> Self {
        self.database = Some(DbConfig::new(url));
        self
    }

    /// The database, with its pool settings.
    pub fn database_config(mut self, config: DbConfig) -> Self {
        self.database = Some(config);
        self
    }

    /// No database (it can have no routes).
    pub fn without_database(mut self) -> Self {
        self.database = None;
        self
    }

    /// How long to keep trying to reach a database that is not up yet (default 0: fail at
    /// once). A database that starts a little after the service is normal in compose or
    /// Kubernetes.
    pub fn connect_patience(mut self, patience: Duration) -> Self {
        self.connect_patience = patience;
        self
    }

    /// The service's own migrations, run at every start after the framework's (a
    /// `&'static Migrator`, or [`Migrations`] with PostgreSQL's own steps).
    pub fn migrations(mut self, migrations: impl Into<Migrations>) -> Self {
        self.migrator = Some(migrations.into());
        self
    }

    /// Streams and consumers made at start besides the ones the routes derive.
    pub fn topology(mut self, topology: Topology) -> Self {
        self.topology.streams.extend(topology.streams);
        self.topology.consumers.extend(topology.consumers);
        self
    }

    /// How the outbox relay publishes.
    pub fn relay(mut self, config: RelayConfig) -> Self {
        self.relay = config;
        self
    }

    /// One more pruning job for the housekeeping (besides the inbox's).
    pub fn housekeeping(mut self, name: impl Into<String>, job: PruneFn) -> Self {
        self.housekeeping.push((name.into(), job));
        self
    }

    /// A part that is not a route (see [`Part`]); parts start in the order they are given,
    /// after the routes.
    pub fn part(mut self, part: impl Part) -> Self {
        self.parts.push(Box::new(part));
        self
    }

    /// A statement run at every start, after the framework's own tables (make it
    /// idempotent: `CREATE TABLE IF NOT EXISTS …`).
    pub fn schema(mut self, statement: impl Into<String>) -> Self {
        self.schema.push(statement.into());
        self
    }

    /// The stream that holds `subjects` (named after their first token), made or merged.
    fn stream_for(&mut self, subjects: &str) -> String {
        let token = subjects.split('.').next().unwrap_or(subjects);
        let name = token.to_ascii_uppercase();
        let all = format!("{token}.>");
        if !self.streams.iter().any(|s| s.name == name) {
            self.streams.push(StreamSpec::new(&name, &[all.as_str()]));
        }
        name
    }

    /// Consumes `subjects` (`readings.>`) with `handler`, effectively once: its stream and
    /// durable consumer are derived, a supervised pool of its actors applies the batches.
    pub fn route<H: PreparedTxHandler>(mut self, subjects: &str, handler: H) -> Self {
        let stream = self.stream_for(subjects);
        let durable = format!("{}-{}", self.name, stream.to_ascii_lowercase());
        let consumer = ConsumerSpec::new(&stream, &durable, &[subjects]);
        let (batch, instances) = (self.batch, self.instances);
        self.routes.push(Box::new(move |outbox, health| {
            let actors = TxActors::new(&durable, handler, outbox)
                .instances(instances)
                .health(health.clone())
                .start();
            let route = actors.route(consumer).batch(batch);
            (route, Box::new(move || actors.stop()))
        }));
        self
    }

    /// Publishes on `subjects` (`alerts.>`): the stream that stores them is made at start.
    pub fn emits(mut self, subjects: &str) -> Self {
        self.stream_for(subjects);
        self
    }

    /// How the routes declared after this gather their batches.
    pub fn batch(mut self, batch: BatchConfig) -> Self {
        self.batch = batch;
        self
    }

    /// How many instances of each actor the routes declared after this run (default 1).
    pub fn instances(mut self, n: usize) -> Self {
        self.instances = n.max(1);
        self
    }

    /// How long processed-message ids are kept, and how often they are pruned.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// How long a stop may take (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// The streams the service makes at start.
    pub fn streams(&self) -> &[StreamSpec] {
        &self.streams
    }

    /// Runs until `SIGTERM` or `SIGINT`, then stops in order (see the [module](self)).
    /// Call it inside an actix system (`#[actix::main]`).
    pub async fn run(self) -> Result<(), ServiceError> {
        self.run_until(signal()).await
    }

    /// Runs until `stop` resolves, then stops in order.
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> Result<(), ServiceError> {
        let timeout = self.shutdown_timeout;
        let report = self.start().await?.run_until(stop).await;
        match report.failed {
            Some((component, reason)) => Err(ServiceError::Died { component, reason }),
            None if !report.clean => Err(ServiceError::StopTimedOut(timeout)),
            None => Ok(()),
        }
    }

    /// Connects, starts the routes and the parts, and returns the running service (not
    /// waiting for anything yet). What started before a failure is stopped again.
    pub async fn start(self) -> Result<Running, ServiceError> {
        let retention_horizon = Duration::from_secs(120);
        if let Err(message) = self.retention.check(retention_horizon) {
            return Err(ServiceError::Config {
                setting: "retention",
                message,
            });
        }
        if !self.routes.is_empty() && (self.database.is_none() || self.nats.is_none()) {
            return Err(ServiceError::Missing {
                part: "a route".into(),
                what: "a database and NATS",
            });
        }
        let health = Health::new();
        let background = CancellationToken::new();
        let db = match &self.database {
            Some(config) => {
                let db = connect(config, self.connect_patience).await?;
                if let Some(migrator) = self.migrator {
                    db.migrate(migrator).await?;
                }
                for statement in &self.schema {
                    crate::db::query(sqlx::AssertSqlSafe(statement.as_str()))
                        .execute(db.pool())
                        .await?;
                }
                db.spawn_health_probe(health.clone(), Duration::from_secs(5), background.clone());
                Some(db)
            }
            None => None,
        };
        let bridge = self.nats.map(|nats| {
            let mut topology = self.topology;
            for stream in self.streams {
                if !topology.streams.iter().any(|s| s.name == stream.name) {
                    topology.streams.push(stream);
                }
            }
            let mut config = BridgeConfig::new(nats, topology);
            if let Some(timeout) = self.publish_timeout {
                config.publish_timeout = timeout;
            }
            NatsBridge::start(config, health.clone())
        });
        let mut stopping = Stopping::new(health.clone(), background.clone());
        stopping.bridge = bridge.clone();
        stopping.db = db.clone();
        let mut running = Running {
            name: self.name,
            health,
            db,
            bridge,
            relay: self.relay,
            background,
            stopping,
            housekeeping: self.housekeeping,
            retention: self.retention,
            shutdown_timeout: self.shutdown_timeout,
        };
        // Everything started from here on is stopped in order, also when the start fails.
        let started = async {
            for start in self.routes {
                let outbox = running.outbox("a route")?;
                let (route, stop_actors) = start(&outbox, &running.health);
                running.on_stop(stop_actors);
                running.subscribe(route).await?;
            }
            for part in self.parts {
                let name = part.name();
                tracing::debug!(service = %running.name, part = %name, "starting");
                part.start(&mut running).await?;
            }
            Ok::<(), ServiceError>(())
        }
        .await;
        if let Err(e) = started {
            running.stop().await;
            return Err(e);
        }
        if let Some(db) = &running.db {
            let mut housekeeping = Housekeeping::new(db.clone(), running.retention);
            for (name, job) in std::mem::take(&mut running.housekeeping) {
                housekeeping = housekeeping.also(name, job);
            }
            housekeeping.spawn(running.background.clone());
        }
        tracing::info!(service = %running.name, "running");
        Ok(running)
    }
}

/// Connects to the database, retrying for up to `patience`.
async fn connect(config: &DbConfig, patience: Duration) -> Result<Database, crate::db::DbError> {
    let started = Instant::now();
    (|| Database::connect(config))
        .retry(Backoff::exponential(Duration::from_millis(200), Duration::from_secs(3)).builder())
        .when(|e| matches!(e, crate::db::DbError::Connect { .. }) && started.elapsed() < patience)
        .notify(|e, d| tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "database not reachable yet"))
        .await
}

/// A started service: what its parts find (connections, the outbox) and where they say how
/// they stop. [`Running::run_until`] waits and stops it in order.
pub struct Running {
    name: String,
    health: Health,
    db: Option<Database>,
    bridge: Option<Bridge>,
    relay: RelayConfig,
    background: CancellationToken,
    stopping: Stopping,
    housekeeping: Vec<(String, PruneFn)>,
    retention: Retention,
    shutdown_timeout: Duration,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("name", &self.name).finish()
    }
}

impl Running {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The health registry (`/ready` and `/live` read it).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The database, unless the service has none.
    pub fn database(&self) -> Option<&Database> {
        self.db.as_ref()
    }

    /// The bridge to NATS, unless the service has none.
    pub fn bridge(&self) -> Option<&Bridge> {
        self.bridge.as_ref()
    }

    /// The outbox, started at its first use (it needs the database and NATS; `part` names
    /// who asks, for the error).
    pub fn outbox(&mut self, part: &str) -> Result<OutboxHandle, ServiceError> {
        if let Some(outbox) = &self.stopping.outbox {
            return Ok(outbox.clone());
        }
        let (Some(db), Some(bridge)) = (&self.db, &self.bridge) else {
            return Err(ServiceError::Missing {
                part: part.to_string(),
                what: "an outbox (a database and NATS)",
            });
        };
        let outbox = OutboxRelay::start(db.clone(), Arc::new(bridge.clone()), self.relay.clone());
        self.stopping.outbox = Some(outbox.clone());
        Ok(outbox)
    }

    /// The outbox, if something started it.
    pub fn started_outbox(&self) -> Option<&OutboxHandle> {
        self.stopping.outbox.as_ref()
    }

    /// Cancelled once the outbox is flushed at stop: background work ends with it.
    pub fn background(&self) -> CancellationToken {
        self.background.clone()
    }

    /// Consumes a route (its consumer is made if needed).
    pub async fn subscribe(&self, route: Route) -> Result<(), ServiceError> {
        let Some(bridge) = &self.bridge else {
            return Err(ServiceError::Missing {
                part: route.target().to_string(),
                what: "NATS",
            });
        };
        bridge
            .subscribe(route)
            .await
            .map_err(|_| ServiceError::Died {
                component: "bridge".into(),
                reason: "stopped before the routes were subscribed".into(),
            })
    }

    /// Actors to stop for good once the consumers are drained.
    pub fn on_stop(&mut self, stop: impl Fn() + 'static) {
        self.stopping.actor(stop);
    }

    /// Something that takes requests (an HTTP server): stopped first (`step` starts its stop
    /// and resolves once its requests are finished).
    pub fn server<F>(&mut self, step: impl FnOnce() -> F + 'static)
    where
        F: Future<Output = ()> + 'static,
    {
        self.stopping.server(step);
    }

    /// A dependency of what was drained (a downstream served from this process): stopped
    /// after the actors.
    pub fn after_drain<F>(&mut self, step: impl FnOnce() -> F + 'static)
    where
        F: Future<Output = ()> + 'static,
    {
        self.stopping.after_drain(step);
    }

    /// How long processed-message ids are kept.
    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// One more pruning job, for a part (only while the service starts).
    pub fn housekeeping(&mut self, name: impl Into<String>, job: PruneFn) {
        self.housekeeping.push((name.into(), job));
    }

    /// Runs until `stop` resolves or a part gives up, then stops in order within the
    /// shutdown timeout.
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> StopReport {
        self.stopping.run_until(stop, self.shutdown_timeout).await
    }

    /// Stops in order now.
    pub async fn stop(self) -> StopReport {
        self.stopping.stop(self.shutdown_timeout).await
    }
}

/// How a stop went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReport {
    /// Whether every step finished within the shutdown timeout.
    pub clean: bool,
    /// How long it took.
    pub took: Duration,
    /// Outbox rows left for the next start.
    pub outbox_left: i64,
    /// The part that gave up, and why, when the service stopped on its own.
    pub failed: Option<(String, String)>,
}

/// How long closing the connections may take when the budget is spent.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// The component whose readiness a stop takes away.
const LIFECYCLE: &str = "lifecycle";

/// A running service's parts, and the order they stop in: what [`Service::run`] stops, and
/// what a process with parts of its own (HTTP servers, the `jetflow` binary's roles) fills in
/// and stops the same way. Within the shutdown timeout: `/ready` turns 503, the HTTP servers
/// stop accepting and finish their requests, the consumers stop pulling and what they pulled
/// is handled and acked, the actors stop, the dependencies of what was drained stop, what was
/// committed is published, background work ends, NATS and the database close.
pub struct Stopping {
    health: Health,
    background: CancellationToken,
    /// The bridge: drained, then closed.
    pub bridge: Option<Bridge>,
    /// The outbox: flushed.
    pub outbox: Option<OutboxHandle>,
    /// The database: closed last.
    pub db: Option<Database>,
    servers: Vec<Step>,
    actors: Vec<Box<dyn Fn()>>,
    after_drain: Vec<Step>,
}

/// A stop step that waits (an HTTP server finishing its requests, say).
type Step = Box<dyn FnOnce() -> futures::future::LocalBoxFuture<'static, ()>>;

impl Stopping {
    /// Nothing to stop yet but `background` (cancelled after the flush); readiness is
    /// reported to `health`.
    pub fn new(health: Health, background: CancellationToken) -> Self {
        Self {
            health,
            background,
            bridge: None,
            outbox: None,
            db: None,
            servers: Vec::new(),
            actors: Vec::new(),
            after_drain: Vec::new(),
        }
    }

    /// Something that takes requests: stopped first, all at once (`step` starts its stop and
    /// resolves once its requests are finished).
    pub fn server<F>(&mut self, step: impl FnOnce() -> F + 'static)
    where
        F: Future<Output = ()> + 'static,
    {
        self.servers.push(Box::new(move || Box::pin(step())));
    }

    /// Actors stopped for good once the consumers are drained.
    pub fn actor(&mut self, stop: impl Fn() + 'static) {
        self.actors.push(Box::new(stop));
    }

    /// A dependency of what was drained (a downstream served from this process): stopped
    /// after the actors.
    pub fn after_drain<F>(&mut self, step: impl FnOnce() -> F + 'static)
    where
        F: Future<Output = ()> + 'static,
    {
        self.after_drain.push(Box::new(move || Box::pin(step())));
    }

    /// Runs until `stop` resolves or a part gives up ([`Health::dead`]), then stops.
    pub async fn run_until(self, stop: impl Future<Output = ()>, timeout: Duration) -> StopReport {
        let failed = tokio::select! {
            () = stop => None,
            (component, reason) = self.health.dead() => {
                tracing::error!(%component, %reason, "stopping: a part of the process gave up");
                Some((component, reason))
            }
        };
        let mut report = self.stop(timeout).await;
        report.failed = failed;
        report
    }

    /// Stops every part in order, within `timeout`.
    pub async fn stop(self, timeout: Duration) -> StopReport {
        let started = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut clean = true;
        tracing::info!(?timeout, "stopping");
        // 1. Not ready any more; the servers stop accepting and finish their requests, in
        // half the budget at most: a stalled upload never leaves the consumers no time.
        self.health.set_not_ready(LIFECYCLE, "shutting down");
        let servers = futures::future::join_all(self.servers.into_iter().map(|step| step()));
        if tokio::time::timeout(left().min(timeout / 2), servers)
            .await
            .is_err()
        {
            tracing::warn!("HTTP servers did not finish their requests in time");
            clean = false;
        }
        // 2. Consumers stop pulling; what they pulled is handled and acknowledged.
        if let Some(bridge) = &self.bridge
            && !bridge.drain(left()).await
        {
            tracing::warn!("consumers did not finish in time; the rest is redelivered");
            clean = false;
        }
        for stop_actors in &self.actors {
            stop_actors();
        }
        for step in self.after_drain {
            let _ = tokio::time::timeout(left(), step()).await;
        }
        // 3. What was committed is published, within what is left of the budget (every
        // database call of the flush too: a database that stopped answering cannot hold the
        // stop past its deadline).
        let mut outbox_left = 0;
        if let Some(outbox) = &self.outbox {
            outbox_left = match tokio::time::timeout(left(), outbox.flush(left())).await {
                Ok(report) => report.left,
                Err(_) => {
                    tracing::warn!("the outbox flush did not finish in time");
                    -1
                }
            };
            if outbox_left != 0 {
                tracing::warn!(
                    left = outbox_left,
                    "outbox not empty at stop; published at the next start"
                );
                clean = false;
            }
        }
        // 4. Background work ends; connections close.
        self.background.cancel();
        // Closing gets what is left, and a moment more when nothing is.
        let closing = left().max(CLOSE_GRACE);
        if let Some(bridge) = &self.bridge
            && tokio::time::timeout(closing, bridge.close()).await.is_err()
        {
            clean = false;
        }
        if let Some(db) = &self.db
            && tokio::time::timeout(closing, db.close()).await.is_err()
        {
            clean = false;
        }
        let took = started.elapsed();
        tracing::info!(took_ms = took.as_millis() as u64, clean, "stopped");
        StopReport {
            clean,
            took,
            outbox_left,
            failed: None,
        }
    }
}

/// Resolves at the first `SIGTERM` or `SIGINT`.
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
    }
    if tokio::signal::ctrl_c().await.is_err() {
        tracing::error!("cannot listen for signals; stop with SIGKILL");
        futures::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Json;
    use crate::delivery::Delivery;
    use crate::tx_route::{TxError, TxHandler};
    use crate::unit_of_work::UnitOfWork;

    struct Noop;

    impl TxHandler for Noop {
        type Message = Json<u32>;

        async fn handle(&self, _: &mut UnitOfWork, _: &Delivery<Json<u32>>) -> Result<(), TxError> {
            Ok(())
        }
    }

    /// Publishes nothing, and says so.
    struct Nowhere;

    impl crate::publisher::Publisher for Nowhere {
        fn publish(
            &self,
            _: crate::publisher::OutgoingMessage,
        ) -> futures::future::BoxFuture<
            'static,
            Result<crate::publisher::PublishReceipt, crate::publisher::PublishError>,
        > {
            Box::pin(async { Err(crate::publisher::PublishError::NotConnected) })
        }
    }

    /// The database stops answering (its only connection is taken; a query waits 30 s for
    /// one): the stop still ends within its budget (and a moment to close), not clean.
    #[actix::test]
    async fn a_database_that_stopped_answering_cannot_hold_the_stop_past_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            DbConfig::new(format!("sqlite://{}", dir.path().join("stop.db").display()));
        config.max_connections = Some(1);
        config.acquire_timeout = Duration::from_secs(30);
        let db = Database::connect(&config).await.unwrap();
        let outbox = OutboxRelay::start(db.clone(), Arc::new(Nowhere), RelayConfig::default());
        let mut stopping = Stopping::new(Health::new(), CancellationToken::new());
        stopping.outbox = Some(outbox);
        stopping.db = Some(db.clone());
        let held = db.acquire().await.unwrap();
        let budget = Duration::from_secs(1);
        let report = tokio::time::timeout(Duration::from_secs(20), stopping.stop(budget))
            .await
            .expect("the stop ended");
        drop(held);
        assert!(!report.clean);
        assert!(
            report.took < budget + CLOSE_GRACE * 2 + Duration::from_millis(300),
            "took {:?}",
            report.took
        );
    }

    #[test]
    fn routes_and_emits_derive_one_stream_per_first_token() {
        let s = Service::new("thermostat")
            .route("readings.>", Noop)
            .route("readings.calibrated", Noop)
            .emits("alerts.>");
        let streams: Vec<(&str, Vec<String>)> = s
            .streams()
            .iter()
            .map(|s| (s.name.as_str(), s.subjects.clone()))
            .collect();
        assert_eq!(
            streams,
            [
                ("READINGS", vec!["readings.>".to_string()]),
                ("ALERTS", vec!["alerts.>".to_string()])
            ]
        );
        assert_eq!(s.routes.len(), 2);
    }
}
