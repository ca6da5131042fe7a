//! Starting the roles: each role's actor under supervision, and one bridge route per
//! consumer of the role (both lanes).

use std::time::Duration;

use jetflow_runtime::{
    ActorRef, BreakerActor, BreakerConfig, Health, NatsBridge, Route, Supervisor,
};

use crate::handling::Deps;
use crate::order_actor::OrderActor;
use crate::payment_actor::PaymentActor;
use crate::payment_client::{PaymentClient, ProviderError};
use crate::stock_actor::StockActor;
use crate::topology::{Role, consumers};

/// How the payments role reaches its provider.
#[derive(Debug, Clone)]
pub struct PaymentSettings {
    /// The provider's base URL.
    pub provider_url: String,
    /// Timeout of one call.
    pub call_timeout: Duration,
    /// Consecutive failures that open the circuit.
    pub breaker_threshold: u32,
    /// How long the circuit stays open.
    pub breaker_open: Duration,
}

async fn subscribe<A>(deps: &Deps, bridge: &ActorRef<NatsBridge>, role: Role, actor: &ActorRef<A>)
where
    A: actix::Actor<Context = actix::Context<A>>
        + actix::Handler<jetflow_runtime::Delivery<crate::input::InboundEvent>>,
{
    for spec in consumers(&deps.config, role) {
        let route = Route::new(spec, actor.recipient()).concurrency(deps.config.concurrency);
        if bridge.subscribe(route).await.is_err() {
            tracing::error!(role = role.name(), "the bridge is gone; cannot subscribe");
        }
    }
}

/// Starts the order role.
pub async fn start_orders(
    deps: &Deps,
    bridge: &ActorRef<NatsBridge>,
    health: &Health,
) -> ActorRef<OrderActor> {
    let d = deps.clone();
    let actor = Supervisor::new("order")
        .health(health.clone())
        .mailbox_capacity(deps.config.concurrency * 8)
        .start(move |_| OrderActor::new(d));
    subscribe(deps, bridge, Role::Orders, &actor).await;
    actor
}

/// Starts the inventory role.
pub async fn start_inventory(
    deps: &Deps,
    bridge: &ActorRef<NatsBridge>,
    health: &Health,
) -> ActorRef<StockActor> {
    let d = deps.clone();
    let actor = Supervisor::new("stock")
        .health(health.clone())
        .mailbox_capacity(deps.config.concurrency * 4)
        .start(move |_| StockActor::new(d));
    subscribe(deps, bridge, Role::Inventory, &actor).await;
    actor
}

/// Starts the payments role.
pub async fn start_payments(
    deps: &Deps,
    bridge: &ActorRef<NatsBridge>,
    health: &Health,
    settings: &PaymentSettings,
) -> Result<ActorRef<PaymentActor>, ProviderError> {
    let client = PaymentClient::new(
        &settings.provider_url,
        settings.call_timeout + Duration::from_millis(500),
    )?;
    let breaker = BreakerActor::start(BreakerConfig {
        name: "payment-provider".to_string(),
        failure_threshold: settings.breaker_threshold,
        open_timeout: settings.breaker_open,
        call_timeout: settings.call_timeout,
    });
    let d = deps.clone();
    let actor = Supervisor::new("payment")
        .health(health.clone())
        .mailbox_capacity(deps.config.concurrency * 4)
        .start(move |_| PaymentActor::new(d, client, breaker));
    subscribe(deps, bridge, Role::Payments, &actor).await;
    Ok(actor)
}
