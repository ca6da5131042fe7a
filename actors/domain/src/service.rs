//! Starting the roles: each role's saga actor (one pool of supervised instances per lane, so
//! a backlog of standard orders never delays an express one) with a route from each of its
//! consumers, and the actors a role needs beside it (the sweeper of overdue orders, the
//! breaker and the voider of payments).

use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use futures::future::LocalBoxFuture;
use jetflow_runtime::middleware::LayerRefused;
use jetflow_runtime::{
    ActorRef, BatchActor, BreakerActor, BreakerConfig, Bridge, Database, Health, Part,
    RestartPolicy, Running, ServiceError, Supervisor, TxActors, YieldTo,
};
use jetflow_schemas::Priority;

use crate::config::SagaConfig;
use crate::handling::{Deps, LaneTurns};
use crate::order_actor::{self, OrderActor, OrderHandler};
use crate::order_sweeper::OrderSweeper;
use crate::payment_actor::{self, PaymentActor, PaymentHandler};
use crate::payment_client::{PaymentClient, ProviderError};
use crate::payment_voider::PaymentVoider;
use crate::stock_actor::{self, StockActor, StockHandler};
use crate::topology::{Role, consumers};

/// How the payments role reaches its provider.
#[derive(Debug, Clone)]
pub struct PaymentSettings {
    /// The provider's base URL.
    pub provider_url: String,
    /// Extra certificate authorities to trust for an `https://` provider (PEM).
    pub provider_ca: Option<PathBuf>,
    /// Timeout of one call.
    pub call_timeout: Duration,
    /// Consecutive failures that open the circuit.
    pub breaker_threshold: u32,
    /// How long the circuit stays open.
    pub breaker_open: Duration,
}

/// The actors a role started (for a clean stop).
#[derive(Default)]
pub struct RoleActors {
    /// The sweeper of overdue orders (orders role).
    pub sweeper: Option<ActorRef<OrderSweeper>>,
    /// The voider of cancelled orders' charges (payments role).
    pub voider: Option<ActorRef<PaymentVoider>>,
    /// How to stop the role's saga actors (one pool per lane).
    pools: Vec<Box<dyn Fn() + Send + Sync>>,
    /// The saga actors' mailbox depth, summed over the role's pools.
    depths: Vec<Box<dyn Fn() -> i64 + Send + Sync>>,
}

impl RoleActors {
    /// Stops them for good.
    pub fn stop(&self) {
        if let Some(s) = &self.sweeper {
            s.stop();
        }
        if let Some(v) = &self.voider {
            v.stop();
        }
        for stop in &self.pools {
            stop();
        }
    }

    /// Batches waiting in (or being handled by) the role's saga actors.
    pub fn mailbox_depth(&self) -> i64 {
        self.depths.iter().map(|depth| depth()).sum()
    }
}

/// Where a role starts: its dependencies, the bridge, the health registry.
#[derive(Clone, Copy)]
struct On<'a> {
    deps: &'a Deps,
    bridge: &'a Bridge,
    health: &'a Health,
}

impl<'a> On<'a> {
    fn new(deps: &'a Deps, bridge: &'a Bridge, health: &'a Health) -> Self {
        Self {
            deps,
            bridge,
            health,
        }
    }

    /// A role's saga actor `A`: one pool per lane, and a route from each consumer.
    async fn role<A: BatchActor>(
        self,
        role: Role,
        name: &str,
        inbox: &str,
        handler: A::Handler,
    ) -> Result<RoleActors, RoleError>
    where
        A::Handler: Clone,
    {
        let mut actors = RoleActors::default();
        actors
            .start_pools::<A>(self, role, name, inbox, handler)
            .await?;
        Ok(actors)
    }
}

impl RoleActors {
    /// Starts one pool of the actor `A` per lane, each fed by the role's consumers of that
    /// lane (so a backlog of standard orders never delays an express one).
    async fn start_pools<A: BatchActor>(
        &mut self,
        on: On<'_>,
        role: Role,
        name: &str,
        inbox: &str,
        handler: A::Handler,
    ) -> Result<(), RoleError>
    where
        A::Handler: Clone,
    {
        let On {
            deps,
            bridge,
            health,
        } = on;
        let specs = consumers(&deps.config, role);
        for lane in [Priority::Standard, Priority::Express] {
            let lane_name = match lane {
                Priority::Express => format!("{name}-express"),
                Priority::Standard => name.to_string(),
            };
            let pool = TxActors::new(lane_name, handler.clone(), &deps.outbox)
                .inbox(inbox)
                .instances(deps.config.actor_instances)
                .health(health.clone())
                .start_as::<A>();
            let express = lane == Priority::Express;
            for spec in specs
                .iter()
                .filter(|s| s.durable.ends_with("-express") == express)
            {
                let mut route = pool
                    .route(spec.clone())
                    .batch(deps.config.batch)
                    .double_ack(deps.config.double_ack);
                if let Some(requests) = &deps.requests_first {
                    let lane = if express {
                        &requests.express
                    } else {
                        &requests.standard
                    };
                    route = route.layer(YieldTo(lane.clone()))?;
                }
                if bridge.subscribe(route).await.is_err() {
                    tracing::error!(role = role.name(), "the bridge is gone; cannot subscribe");
                }
            }
            let (stop, depth) = (pool.clone(), pool);
            self.pools.push(Box::new(move || stop.stop()));
            self.depths.push(Box::new(move || depth.mailbox_depth()));
        }
        Ok(())
    }
}

/// Why a role could not start.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    /// The payment provider's client could not be built.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// A route refused a layer.
    #[error(transparent)]
    Route(#[from] LayerRefused),
}

/// Starts the orders role: its routes and the sweeper of overdue orders.
pub async fn start_orders(
    deps: &Deps,
    bridge: &Bridge,
    health: &Health,
) -> Result<RoleActors, RoleError> {
    let mut actors = On::new(deps, bridge, health)
        .role::<OrderActor>(Role::Orders, "order", order_actor::CONSUMER, OrderHandler)
        .await?;
    let d = deps.clone();
    actors.sweeper = Some(
        Supervisor::new("order-sweeper")
            .health(health.clone())
            .start(move |_| OrderSweeper::new(d)),
    );
    Ok(actors)
}

/// Starts the inventory role.
pub async fn start_inventory(
    deps: &Deps,
    bridge: &Bridge,
    health: &Health,
) -> Result<RoleActors, RoleError> {
    On::new(deps, bridge, health)
        .role::<StockActor>(
            Role::Inventory,
            "stock",
            stock_actor::CONSUMER,
            StockHandler,
        )
        .await
}

/// Starts the payments role: one breaker for the provider shared by both lanes, and the
/// voider.
pub async fn start_payments(
    deps: &Deps,
    bridge: &Bridge,
    health: &Health,
    settings: &PaymentSettings,
) -> Result<RoleActors, RoleError> {
    let client = PaymentClient::new(
        &settings.provider_url,
        settings.call_timeout + Duration::from_millis(500),
        settings.provider_ca.as_deref(),
    )?;
    let breaker = BreakerActor::start(BreakerConfig {
        name: "payment-provider".to_string(),
        failure_threshold: settings.breaker_threshold,
        open_timeout: settings.breaker_open,
        call_timeout: settings.call_timeout,
    });
    let (db, c, every) = (
        deps.db.clone(),
        client.clone(),
        deps.config.void_scan_interval,
    );
    let voider = Supervisor::new("payment-voider")
        .policy(RestartPolicy::default())
        .health(health.clone())
        .start(move |_| PaymentVoider::new(db, c, every));
    let handler = PaymentHandler::new(deps.clone(), client, breaker, voider.clone());
    let mut actors = On::new(deps, bridge, health)
        .role::<PaymentActor>(Role::Payments, "payment", payment_actor::CONSUMER, handler)
        .await?;
    actors.voider = Some(voider);
    Ok(actors)
}

/// One role of the saga as a part of a [`Service`](jetflow_runtime::Service): its saga actor
/// (a pool per lane) with a route from each of its consumers, and what the role needs beside
/// it; stopped with the service once its consumers are drained.
pub struct RolePart {
    role: Role,
    config: Arc<SagaConfig>,
    requests_first: Option<LaneTurns>,
    payment: Option<PaymentSettings>,
}

impl RolePart {
    /// The orders role: order actors and the sweeper of overdue orders.
    pub fn orders(config: Arc<SagaConfig>, requests_first: Option<LaneTurns>) -> Self {
        Self {
            role: Role::Orders,
            config,
            requests_first,
            payment: None,
        }
    }

    /// The inventory role: stock actors.
    pub fn inventory(config: Arc<SagaConfig>, requests_first: Option<LaneTurns>) -> Self {
        Self {
            role: Role::Inventory,
            ..Self::orders(config, requests_first)
        }
    }

    /// The payments role: payment actors, the provider's breaker and the voider, and the
    /// pruning of charge attempts (kept as long as processed events: every order they belong
    /// to has finished by then).
    pub fn payments(
        config: Arc<SagaConfig>,
        requests_first: Option<LaneTurns>,
        provider: PaymentSettings,
    ) -> Self {
        Self {
            role: Role::Payments,
            payment: Some(provider),
            ..Self::orders(config, requests_first)
        }
    }
}

impl Part for RolePart {
    fn name(&self) -> String {
        format!("{} role", self.role.name())
    }

    fn start<'a>(
        self: Box<Self>,
        service: &'a mut Running,
    ) -> LocalBoxFuture<'a, Result<(), ServiceError>> {
        Box::pin(async move {
            let name = self.name();
            let outbox = service.outbox(&name)?;
            let (Some(db), Some(bridge)) = (service.database().cloned(), service.bridge().cloned())
            else {
                return Err(ServiceError::Missing {
                    part: name,
                    what: "a database and NATS",
                });
            };
            let health = service.health().clone();
            let deps = Deps {
                db,
                outbox,
                config: self.config,
                requests_first: self.requests_first,
            };
            let started = match (self.role, &self.payment) {
                (Role::Orders, _) => start_orders(&deps, &bridge, &health).await,
                (Role::Inventory, _) => start_inventory(&deps, &bridge, &health).await,
                (Role::Payments, Some(provider)) => {
                    let retention = service.retention().inbox;
                    service.housekeeping(
                        "payment_attempts",
                        Arc::new(move |db: Database| {
                            Box::pin(async move {
                                crate::payment_store::purge_attempts(&db, retention).await
                            })
                        }),
                    );
                    start_payments(&deps, &bridge, &health, provider).await
                }
                (Role::Payments, None) => {
                    return Err(ServiceError::Part {
                        part: name,
                        reason: "no payment provider settings".into(),
                    });
                }
            };
            let actors = started.map_err(|e| match e {
                RoleError::Provider(e) => ServiceError::Config {
                    setting: "PAYMENT_PROVIDER_URL",
                    message: e.to_string(),
                },
                RoleError::Route(e) => ServiceError::Config {
                    setting: "JETFLOW_REQUESTS_FIRST",
                    message: e.to_string(),
                },
            })?;
            service.on_stop(move || actors.stop());
            Ok(())
        })
    }
}
