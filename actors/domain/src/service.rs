//! Starting the roles: each role's actor under supervision, and one bridge route per
//! consumer of the role (both lanes).

use std::time::Duration;

use jetflow_runtime::{
    ActorRef, BreakerActor, BreakerConfig, Health, NatsBridge, Route, Supervisor,
};

use jetflow_schemas::Priority;

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

/// The actors of one role: one per lane, so a backlog in the standard lane's mailbox never
/// delays an express order (they share the database and the breaker, not a queue).
pub struct LaneActors<A: actix::Actor<Context = actix::Context<A>>> {
    /// The standard lane's actor.
    pub standard: ActorRef<A>,
    /// The express lane's actor.
    pub express: ActorRef<A>,
}

async fn start_lanes<A>(
    deps: &Deps,
    bridge: &ActorRef<NatsBridge>,
    health: &Health,
    role: Role,
    name: &str,
    mailbox: usize,
    make: impl Fn(Priority) -> A + Clone + 'static,
) -> LaneActors<A>
where
    A: actix::Actor<Context = actix::Context<A>>
        + actix::Supervised
        + actix::Handler<jetflow_runtime::Delivery<crate::input::InboundEvent>>,
{
    let start = |lane: Priority, actor_name: String| {
        let make = make.clone();
        Supervisor::new(&actor_name)
            .health(health.clone())
            .mailbox_capacity(mailbox)
            .start(move |_| make(lane))
    };
    let lanes = LaneActors {
        standard: start(Priority::Standard, name.to_string()),
        express: start(Priority::Express, format!("{name}-express")),
    };
    for spec in consumers(&deps.config, role) {
        let actor = if spec.durable.ends_with("-express") {
            &lanes.express
        } else {
            &lanes.standard
        };
        let route = Route::new(spec, actor.recipient()).concurrency(deps.config.concurrency);
        if bridge.subscribe(route).await.is_err() {
            tracing::error!(role = role.name(), "the bridge is gone; cannot subscribe");
        }
    }
    lanes
}

/// Starts the orders role: its actors (the standard one also sweeps overdue orders) and
/// their consumers.
pub async fn start_orders(
    deps: &Deps,
    bridge: &ActorRef<NatsBridge>,
    health: &Health,
) -> LaneActors<OrderActor> {
    let d = deps.clone();
    start_lanes(
        deps,
        bridge,
        health,
        Role::Orders,
        "order",
        deps.config.concurrency * 8,
        move |lane| match lane {
            Priority::Standard => OrderActor::new(d.clone()),
            Priority::Express => OrderActor::without_sweeper(d.clone()),
        },
    )
    .await
}

/// Starts the inventory role.
pub async fn start_inventory(
    deps: &Deps,
    bridge: &ActorRef<NatsBridge>,
    health: &Health,
) -> LaneActors<StockActor> {
    let d = deps.clone();
    start_lanes(
        deps,
        bridge,
        health,
        Role::Inventory,
        "stock",
        deps.config.concurrency * 4,
        move |_| StockActor::new(d.clone()),
    )
    .await
}

/// Starts the payments role: one breaker for the provider, shared by both lanes.
pub async fn start_payments(
    deps: &Deps,
    bridge: &ActorRef<NatsBridge>,
    health: &Health,
    settings: &PaymentSettings,
) -> Result<LaneActors<PaymentActor>, ProviderError> {
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
    Ok(start_lanes(
        deps,
        bridge,
        health,
        Role::Payments,
        "payment",
        deps.config.concurrency * 4,
        move |_| PaymentActor::new(d.clone(), client.clone(), breaker.clone()),
    )
    .await)
}
