//! `NatsBridge`: the actor that carries typed messages to and from NATS JetStream.
//!
//! It owns the connection, applies the topology, runs one pull loop per [`Route`] and
//! publishes [`Publish`] requests, answering only after JetStream's PubAck. A lost connection
//! stops it; its supervisor (unlimited restarts) starts it again, which reconnects with
//! exponential backoff and jitter and resumes every route. While it is disconnected,
//! publishes fail at once with [`PublishError::NotConnected`] (callers answer 503, never
//! hang) and `/ready` says why. Deliveries in flight when the connection drops are never
//! acknowledged early: JetStream redelivers them.

use std::time::{Duration, Instant};

use actix::prelude::*;
use async_nats::jetstream;
use async_nats::{Client, Event};
use backon::{ExponentialBuilder, Retryable};
use futures::FutureExt;
use futures::future::BoxFuture;

use crate::actor_ref::ActorRef;
use crate::advisory;
use crate::connection::{NatsConfig, connect_with_retry};
use crate::consumer;
use crate::dead_letter;
use crate::health::Health;
use crate::metrics::metrics;
use crate::outcome::ReplyOutcome;
use crate::publisher::{OutgoingMessage, PublishError, PublishReceipt, Publisher};
use crate::route::Route;
use crate::supervisor::{RestartPolicy, Supervisor};
use crate::topology::Topology;

/// The readiness component the bridge reports as.
pub const HEALTH_COMPONENT: &str = "nats";

/// How the bridge runs.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Connection settings.
    pub nats: NatsConfig,
    /// Streams and consumers to apply on every connect (the dead-letter stream is added).
    pub topology: Topology,
    /// How long a publish waits for its PubAck.
    pub publish_timeout: Duration,
    /// Whether to capture max-deliveries advisories and dead-letter those messages.
    pub dead_letter_exhausted: bool,
    /// How often consumer state is read into the `jetflow_consumer_*` gauges.
    pub pending_interval: Duration,
}

impl BridgeConfig {
    /// A configuration with the defaults: 5 s publish timeout, advisories on.
    pub fn new(nats: NatsConfig, topology: Topology) -> Self {
        Self {
            nats,
            topology,
            publish_timeout: Duration::from_secs(5),
            dead_letter_exhausted: true,
            pending_interval: Duration::from_secs(5),
        }
    }

    fn full_topology(&self) -> Topology {
        let mut t = self.topology.clone();
        let replicas = t.streams.iter().map(|s| s.replicas).max().unwrap_or(1);
        if !t.streams.iter().any(|s| s.name == dead_letter::STREAM) {
            t.streams
                .push(dead_letter::stream_spec().replicas(replicas));
        }
        if self.dead_letter_exhausted && !t.streams.iter().any(|s| s.name == advisory::STREAM) {
            t.streams.push(advisory::stream_spec().replicas(replicas));
        }
        t
    }
}

/// Publishes a message and waits for the PubAck.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<PublishReceipt, PublishError>")]
pub struct Publish(pub OutgoingMessage);

/// Adds a route; it starts now if connected, else on connect, and after every restart.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub Route);

/// Asks for the connection state.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "BridgeStatus")]
pub struct GetStatus;

/// Asks for the JetStream context (for tools such as the dead-letter CLI).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Option<jetstream::Context>")]
pub struct GetJetStream;

/// The bridge's view of its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeStatus {
    /// Whether a connection is up and the topology applied.
    pub connected: bool,
    /// Connections made so far.
    pub connections: u64,
    /// The last error, if the bridge is not connected.
    pub last_error: Option<String>,
    /// The name of the server the bridge is connected to.
    pub server: Option<String>,
}

impl ReplyOutcome for BridgeStatus {
    fn outcome_label(&self) -> &'static str {
        "ok"
    }
}

impl ReplyOutcome for Option<jetstream::Context> {
    fn outcome_label(&self) -> &'static str {
        "ok"
    }
}

/// A connection event, tagged with the connection it belongs to.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct ConnectionEvent {
    generation: u64,
    event: Event,
}

struct Connection {
    client: Client,
    js: jetstream::Context,
}

/// The JetStream bridge actor.
pub struct NatsBridge {
    config: BridgeConfig,
    health: Health,
    routes: Vec<Route>,
    connection: Option<Connection>,
    generation: u64,
    connections: u64,
    last_error: Option<String>,
    connecting_since: Instant,
}

impl NatsBridge {
    /// A bridge that has not started yet.
    pub fn new(config: BridgeConfig, health: Health) -> Self {
        Self {
            config,
            health,
            routes: Vec::new(),
            connection: None,
            generation: 0,
            connections: 0,
            last_error: None,
            connecting_since: Instant::now(),
        }
    }

    /// Starts the bridge under a supervisor that restarts it on every lost connection.
    pub fn start(config: BridgeConfig, health: Health) -> ActorRef<NatsBridge> {
        let h = health.clone();
        Supervisor::new("nats-bridge")
            .policy(RestartPolicy::unlimited())
            .mailbox_capacity(1024)
            .health(health)
            .start(move |_| NatsBridge::new(config, h))
    }

    fn mark_down(&mut self, why: &str) {
        self.connection = None;
        metrics().nats_connected.set(0);
        self.health.set_not_ready(HEALTH_COMPONENT, why.to_string());
        self.last_error = Some(why.to_string());
    }

    fn start_route(&self, route: Route, ctx: &mut Context<Self>) {
        if let Some(conn) = &self.connection {
            ctx.spawn(consumer::run(conn.js.clone(), route).into_actor(self));
        }
    }

    fn on_connected(&mut self, client: Client, js: jetstream::Context, ctx: &mut Context<Self>) {
        self.connections += 1;
        self.last_error = None;
        metrics().nats_connected.set(1);
        metrics()
            .nats_connections
            .with_label_values(&["nats-bridge"])
            .inc();
        let server = client.server_info().server_name.clone();
        tracing::info!(
            seeds = %self.config.nats.seeds(),
            %server,
            took_ms = self.connecting_since.elapsed().as_millis() as u64,
            connections = self.connections,
            "NATS connected"
        );
        self.health
            .set_ready(HEALTH_COMPONENT, format!("connected to {server}"));
        self.connection = Some(Connection {
            client,
            js: js.clone(),
        });
        let mut specs: Vec<_> = self.routes.iter().map(|r| r.consumer.clone()).collect();
        for route in self.routes.clone() {
            self.start_route(route, ctx);
        }
        if self.config.dead_letter_exhausted {
            let ignore = vec![
                dead_letter::STREAM.to_string(),
                advisory::STREAM.to_string(),
            ];
            let route = advisory::route(js.clone(), ignore);
            specs.push(route.consumer.clone());
            self.start_route(route, ctx);
        }
        ctx.spawn(consumer::poll_pending(js, specs, self.config.pending_interval).into_actor(self));
    }
}

impl Actor for NatsBridge {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.generation += 1;
        self.connecting_since = Instant::now();
        let generation = self.generation;
        self.mark_down(&format!("connecting to {}", self.config.nats.seeds()));
        let addr = ctx.address();
        let nats = self.config.nats.clone();
        let topology = self.config.full_topology();
        let on_event = move |event: Event| addr.do_send(ConnectionEvent { generation, event });
        let connect = async move {
            let client = connect_with_retry(&nats, on_event)
                .await
                .map_err(|e| e.to_string())?;
            let js = jetstream::ContextBuilder::new()
                .timeout(nats.request_timeout)
                .build(client.clone());
            // The topology may fail while a cluster elects leaders: retry it too.
            (|| topology.ensure(&js))
                .retry(
                    ExponentialBuilder::default()
                        .with_min_delay(Duration::from_millis(200))
                        .with_max_delay(Duration::from_secs(3))
                        .with_jitter()
                        .with_max_times(20),
                )
                .notify(|e, d| tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "applying the JetStream topology failed"))
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((client, js))
        };
        ctx.spawn(connect.into_actor(self).map(move |result, act, ctx| {
            if act.generation != generation {
                return;
            }
            match result {
                Ok((client, js)) => act.on_connected(client, js, ctx),
                Err(e) => {
                    tracing::error!(error = %e, "NATS setup failed; restarting the bridge");
                    act.mark_down(&e);
                    ctx.stop();
                }
            }
        }));
    }
}

impl Supervised for NatsBridge {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.mark_down("connection lost; reconnecting");
    }
}

impl Handler<ConnectionEvent> for NatsBridge {
    type Result = ();

    fn handle(&mut self, msg: ConnectionEvent, ctx: &mut Context<Self>) {
        if msg.generation != self.generation || self.connection.is_none() {
            return;
        }
        match msg.event {
            Event::Disconnected | Event::Closed => {
                tracing::warn!(event = %msg.event, "NATS connection lost; restarting the bridge");
                self.mark_down(&format!("NATS {}", msg.event));
                ctx.stop();
            }
            Event::Connected => {}
            other => tracing::warn!(event = %other, "NATS connection event"),
        }
    }
}

impl Handler<Subscribe> for NatsBridge {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, ctx: &mut Context<Self>) {
        if let Err(e) = msg.0.consumer.validate() {
            tracing::error!(error = %e, "route refused");
            return;
        }
        self.routes.push(msg.0.clone());
        self.start_route(msg.0, ctx);
    }
}

impl Handler<GetStatus> for NatsBridge {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(BridgeStatus {
            connected: self.connection.is_some(),
            connections: self.connections,
            last_error: self.last_error.clone(),
            server: self
                .connection
                .as_ref()
                .map(|c| c.client.server_info().server_name.clone()),
        })
    }
}

impl Handler<GetJetStream> for NatsBridge {
    type Result = MessageResult<GetJetStream>;

    fn handle(&mut self, _: GetJetStream, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.connection.as_ref().map(|c| c.js.clone()))
    }
}

/// Publishes on `js` and waits for the PubAck, at most `timeout`.
pub async fn publish_with_ack(
    js: &jetstream::Context,
    message: OutgoingMessage,
    timeout: Duration,
) -> Result<PublishReceipt, PublishError> {
    let m = metrics();
    let started = Instant::now();
    let subject = message.subject.clone();
    let headers = message.header_map();
    let result = tokio::time::timeout(timeout, async {
        js.publish_with_headers(message.subject, headers, message.payload)
            .await
            .map_err(|e| PublishError::Failed(e.to_string()))?
            .await
            .map_err(|e| PublishError::Failed(e.to_string()))
    })
    .await
    .unwrap_or(Err(PublishError::Timeout(timeout)));
    match result {
        Ok(ack) => {
            m.nats_published
                .with_label_values(&[subject.as_str()])
                .inc();
            m.nats_publish_seconds
                .with_label_values(&[subject.as_str()])
                .observe(started.elapsed().as_secs_f64());
            Ok(PublishReceipt {
                stream: ack.stream,
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            })
        }
        Err(e) => {
            m.nats_publish_errors
                .with_label_values(&[subject.as_str()])
                .inc();
            Err(e)
        }
    }
}

impl Handler<Publish> for NatsBridge {
    type Result = ResponseFuture<Result<PublishReceipt, PublishError>>;

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) -> Self::Result {
        let Some(conn) = &self.connection else {
            metrics()
                .nats_publish_errors
                .with_label_values(&[msg.0.subject.as_str()])
                .inc();
            return Box::pin(futures::future::ready(Err(PublishError::NotConnected)));
        };
        let js = conn.js.clone();
        let timeout = self.config.publish_timeout;
        Box::pin(async move { publish_with_ack(&js, msg.0, timeout).await })
    }
}

impl Publisher for ActorRef<NatsBridge> {
    fn publish(
        &self,
        message: OutgoingMessage,
    ) -> BoxFuture<'static, Result<PublishReceipt, PublishError>> {
        let bridge = self.clone();
        async move {
            match bridge.send(Publish(message)).await {
                Ok(result) => result,
                Err(_) => Err(PublishError::BridgeGone),
            }
        }
        .boxed()
    }
}

impl ActorRef<NatsBridge> {
    /// Adds a route to the bridge.
    pub async fn subscribe(&self, route: Route) -> Result<(), MailboxError> {
        self.send(Subscribe(route)).await
    }

    /// The bridge's connection state.
    pub async fn status(&self) -> Result<BridgeStatus, MailboxError> {
        self.send(GetStatus).await
    }

    /// The JetStream context, while connected.
    pub async fn jetstream(&self) -> Option<jetstream::Context> {
        self.send(GetJetStream).await.ok().flatten()
    }
}
