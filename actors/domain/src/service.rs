//! Starting the roles: one transactional route per consumer of the role (both lanes, so a
//! backlog of standard orders never delays an express one), and the actors a role needs
//! beside its handler (the sweeper of overdue orders, the breaker and the voider of
//! payments).

use std::path::PathBuf;
use std::time::Duration;

use jetflow_runtime::{
    ActorRef, BreakerActor, BreakerConfig, Bridge, Health, PreparedTxHandler, RestartPolicy,
    Supervisor, TxRoute,
};

use crate::handling::Deps;
use crate::order_handler::{self, OrderHandler};
use crate::order_sweeper::OrderSweeper;
use crate::payment_client::{PaymentClient, ProviderError};
use crate::payment_handler::{self, PaymentHandler};
use crate::payment_voider::PaymentVoider;
use crate::stock_handler::{self, StockHandler};
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

/// The actors a role started beside its routes (for a clean stop).
#[derive(Default)]
pub struct RoleActors {
    /// The sweeper of overdue orders (orders role).
    pub sweeper: Option<ActorRef<OrderSweeper>>,
    /// The voider of cancelled orders' charges (payments role).
    pub voider: Option<ActorRef<PaymentVoider>>,
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
    }
}

/// The name a lane's handler shows in metrics and logs: `order`, `order-express`, ….
fn target(name: &str, durable: &str) -> String {
    if durable.ends_with("-express") {
        format!("{name}-express")
    } else {
        name.to_string()
    }
}

async fn subscribe<H: PreparedTxHandler + Clone>(
    deps: &Deps,
    bridge: &Bridge,
    role: Role,
    name: &str,
    inbox: &str,
    handler: H,
) {
    for spec in consumers(&deps.config, role) {
        let route = TxRoute::new(spec.clone(), handler.clone(), &deps.outbox)
            .name(target(name, &spec.durable))
            .inbox(inbox)
            .batch(deps.config.batch)
            .double_ack(deps.config.double_ack);
        if bridge.subscribe(route).await.is_err() {
            tracing::error!(role = role.name(), "the bridge is gone; cannot subscribe");
        }
    }
}

/// Starts the orders role: its routes and the sweeper of overdue orders.
pub async fn start_orders(deps: &Deps, bridge: &Bridge, health: &Health) -> RoleActors {
    subscribe(
        deps,
        bridge,
        Role::Orders,
        "order",
        order_handler::CONSUMER,
        OrderHandler,
    )
    .await;
    let d = deps.clone();
    let sweeper = Supervisor::new("order-sweeper")
        .health(health.clone())
        .start(move |_| OrderSweeper::new(d));
    RoleActors {
        sweeper: Some(sweeper),
        voider: None,
    }
}

/// Starts the inventory role.
pub async fn start_inventory(deps: &Deps, bridge: &Bridge) -> RoleActors {
    subscribe(
        deps,
        bridge,
        Role::Inventory,
        "stock",
        stock_handler::CONSUMER,
        StockHandler,
    )
    .await;
    RoleActors::default()
}

/// Starts the payments role: one breaker for the provider shared by both lanes, and the
/// voider.
pub async fn start_payments(
    deps: &Deps,
    bridge: &Bridge,
    health: &Health,
    settings: &PaymentSettings,
) -> Result<RoleActors, ProviderError> {
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
    subscribe(
        deps,
        bridge,
        Role::Payments,
        "payment",
        payment_handler::CONSUMER,
        handler,
    )
    .await;
    Ok(RoleActors {
        sweeper: None,
        voider: Some(voider),
    })
}
