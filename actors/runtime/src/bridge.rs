//! `NatsBridge`: the actor that carries typed messages to and from NATS JetStream, and
//! [`Bridge`], the handle the rest of a service holds.
//!
//! The actor owns the connection: it applies the topology, runs one pull loop per [`Route`]
//! and keeps `/ready` honest. A lost connection stops it; its supervisor starts it again (with
//! backoff), which reconnects with exponential backoff and jitter and resumes every route.
//! The pull loops and publishes run on the I/O runtime, not in the actor: the handle shares
//! the live JetStream context, so a publish is one call into the client (pipelined when there
//! are many) and never waits in the actor's mailbox. While disconnected, publishes fail at
//! once with [`PublishError::NotConnected`] (callers answer 503, never hang). Deliveries in
//! flight when the connection drops are never acknowledged early: JetStream redelivers them.
//!
//! Stopping is two steps: [`Bridge::drain`] stops every route from pulling and waits until
//! what was pulled is handled and acknowledged; [`Bridge::close`] flushes and closes the
//! connection and retires the actor.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use async_nats::jetstream;
use async_nats::{Client, Event};
use backon::Retryable;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::actor_ref::ActorRef;
use crate::advisory;
use crate::backoff::Backoff;
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

/// Drops the connection and stops the actor (after [`ActorRef::retire`], for good).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
struct Close;

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

/// A connection event, tagged with the connection it belongs to.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct ConnectionEvent {
    generation: u64,
    event: Event,
}

/// What the actor shares with its handle: the live connection and the route tasks.
struct Shared {
    connection: RwLock<Option<(Client, jetstream::Context)>>,
    publish_timeout: Duration,
    /// Places for PubAcks awaited at once, fewer than async-nats keeps (`PUBACKS_IN_FLIGHT`).
    pubacks: Arc<tokio::sync::Semaphore>,
    stop_routes: CancellationToken,
    tasks: TaskTracker,
}

impl Shared {
    fn js(&self) -> Option<jetstream::Context> {
        let guard = match self.connection.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        guard.as_ref().map(|(_, js)| js.clone())
    }

    fn set(&self, connection: Option<(Client, jetstream::Context)>) -> Option<Client> {
        let mut guard = match self.connection.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        std::mem::replace(&mut *guard, connection).map(|(c, _)| c)
    }
}

/// The JetStream bridge actor.
pub struct NatsBridge {
    config: BridgeConfig,
    health: Health,
    shared: Arc<Shared>,
    routes: Vec<Route>,
    server: Option<String>,
    generation: u64,
    generation_stop: CancellationToken,
    connections: u64,
    last_error: Option<String>,
    connecting_since: Instant,
    closed: bool,
}

/// The handle to a running bridge: subscribe routes, publish, drain, close.
#[derive(Clone)]
pub struct Bridge {
    actor: ActorRef<NatsBridge>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("actor", &self.actor.name())
            .finish()
    }
}

impl NatsBridge {
    /// Starts the bridge under a supervisor that restarts it (with backoff) on every lost
    /// connection, however often.
    pub fn start(config: BridgeConfig, health: Health) -> Bridge {
        let shared = Arc::new(Shared {
            connection: RwLock::new(None),
            publish_timeout: config.publish_timeout,
            pubacks: Arc::new(tokio::sync::Semaphore::new(PUBACKS_IN_FLIGHT)),
            stop_routes: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let (h, s) = (health.clone(), shared.clone());
        let actor = Supervisor::new("nats-bridge")
            .policy(RestartPolicy::unlimited())
            .mailbox_capacity(1024)
            .health(health)
            .start(move |_| NatsBridge {
                config,
                health: h,
                shared: s,
                routes: Vec::new(),
                server: None,
                generation: 0,
                generation_stop: CancellationToken::new(),
                connections: 0,
                last_error: None,
                connecting_since: Instant::now(),
                closed: false,
            });
        Bridge { actor, shared }
    }

    fn mark_down(&mut self, why: &str) {
        self.generation_stop.cancel();
        self.shared.set(None);
        self.server = None;
        metrics().nats_connected.set(0);
        self.health.set_not_ready(HEALTH_COMPONENT, why.to_string());
        self.last_error = Some(why.to_string());
    }

    fn start_route(&self, route: Route) {
        if self.shared.stop_routes.is_cancelled() {
            return;
        }
        if let Some(js) = self.shared.js() {
            // A route that hands each delivery to an actor runs beside the actors (the
            // bridge's arbiter): a delivery then costs one thread hop less each way. A
            // batched route decodes whole batches and its actors run their transactions on
            // the I/O runtime: its loop runs there too, off the actors' thread.
            let each = route.is_each();
            let run = consumer::run(js, route, self.generation_stop.clone());
            if each {
                actix_rt::spawn(self.shared.tasks.track_future(run));
            } else {
                self.shared.tasks.spawn(run);
            }
        }
    }

    fn on_connected(&mut self, client: Client, js: jetstream::Context) {
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
        self.server = Some(server);
        self.generation_stop = self.shared.stop_routes.child_token();
        self.shared.set(Some((client, js.clone())));
        let mut specs: Vec<_> = self.routes.iter().map(|r| r.consumer.clone()).collect();
        for route in self.routes.clone() {
            self.start_route(route);
        }
        if self.config.dead_letter_exhausted {
            let ignore = vec![
                dead_letter::STREAM.to_string(),
                advisory::STREAM.to_string(),
            ];
            let route = advisory::route(js.clone(), ignore);
            specs.push(route.consumer.clone());
            self.start_route(route);
        }
        self.shared.tasks.spawn(consumer::poll_pending(
            js,
            specs,
            self.config.pending_interval,
            self.generation_stop.clone(),
        ));
    }
}

impl Actor for NatsBridge {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.closed {
            ctx.stop();
            return;
        }
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
            let backoff = Backoff::exponential(Duration::from_millis(200), Duration::from_secs(3));
            (|| topology.ensure(&js))
                .retry(backoff.builder().with_max_times(20))
                .notify(|e, d| tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "applying the JetStream topology failed"))
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((client, js))
        };
        ctx.spawn(connect.into_actor(self).map(move |result, act, ctx| {
            if act.generation != generation || act.closed {
                return;
            }
            match result {
                Ok((client, js)) => act.on_connected(client, js),
                Err(e) => {
                    tracing::error!(error = %e, "NATS setup failed; restarting the bridge");
                    act.mark_down(&e);
                    ctx.stop();
                }
            }
        }));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.generation_stop.cancel();
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
        if msg.generation != self.generation || self.server.is_none() || self.closed {
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

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        if let Err(e) = msg.0.consumer.validate() {
            tracing::error!(error = %e, "route refused");
            return;
        }
        self.routes.push(msg.0.clone());
        self.start_route(msg.0);
    }
}

impl Handler<GetStatus> for NatsBridge {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(BridgeStatus {
            connected: self.server.is_some(),
            connections: self.connections,
            last_error: self.last_error.clone(),
            server: self.server.clone(),
        })
    }
}

impl Handler<Close> for NatsBridge {
    type Result = ();

    fn handle(&mut self, _: Close, ctx: &mut Context<Self>) {
        self.closed = true;
        self.mark_down("closed");
        ctx.stop();
    }
}

/// Publishes on `js` and waits for the PubAck, at most `timeout`.
pub async fn publish_with_ack(
    js: &jetstream::Context,
    message: OutgoingMessage,
    timeout: Duration,
) -> Result<PublishReceipt, PublishError> {
    let started = Instant::now();
    let subject = message.subject.clone();
    let headers = message.header_map();
    let result = tokio::time::timeout(timeout, async {
        js.publish_with_headers(message.subject, headers, message.payload)
            .await?
            .await
    })
    .await;
    let result = match result {
        Ok(Ok(ack)) => Ok(ack),
        Ok(Err(e)) => Err(classify(js, &subject, e).await),
        Err(_) => Err(PublishError::Timeout(timeout)),
    };
    record(&subject, started, result)
}

/// What a refused publish means. async-nats reports "no responders" as "stream not found",
/// and that is also what a stream answers while it elects a leader (a node of the cluster
/// went away): the publish is refused for good only when JetStream itself says that no
/// stream holds the subject; otherwise it is a refusal for now, and is tried again.
async fn classify(
    js: &jetstream::Context,
    subject: &str,
    e: async_nats::jetstream::context::PublishError,
) -> PublishError {
    use async_nats::jetstream::context::{GetStreamByNameErrorKind, PublishErrorKind};
    if e.kind() != PublishErrorKind::StreamNotFound {
        return publish_error(e);
    }
    let lookup = tokio::time::timeout(Duration::from_secs(2), js.stream_by_subject(subject)).await;
    let Ok(lookup) = lookup else {
        return PublishError::Failed(format!(
            "no responders for {subject}, and JetStream did not say in time which stream holds it"
        ));
    };
    match lookup {
        Err(lookup) if matches!(lookup.kind(), GetStreamByNameErrorKind::NotFound) => {
            PublishError::Rejected(format!("no stream holds {subject}"))
        }
        Ok(stream) => PublishError::Failed(format!(
            "stream {stream} did not answer (no responders: electing a leader?)"
        )),
        Err(lookup) => PublishError::Failed(format!(
            "no responders for {subject}, and JetStream could not say which stream holds it: {lookup}"
        )),
    }
}

/// PubAcks the bridge awaits at once, over every caller: below async-nats' own limit
/// (5,000, beyond which a publish fails at once with "max ack pending"), so a large
/// pipelined publish (the relay's, after an outage) never makes a request's publish fail.
const PUBACKS_IN_FLIGHT: usize = 4_096;

/// Messages one pipelined publish sends before it awaits their PubAcks.
const PIPELINE_WINDOW: usize = 256;

/// Publishes every message, a window at a time (the window's messages all sent, then their
/// PubAcks awaited together). A window takes its places among `pubacks` all at once before it
/// sends anything, so callers never hold some places while waiting for more (no deadlock),
/// and all of them together never await more PubAcks than async-nats allows.
pub async fn publish_pipelined(
    js: &jetstream::Context,
    messages: Vec<OutgoingMessage>,
    timeout: Duration,
    pubacks: &tokio::sync::Semaphore,
) -> Vec<Result<PublishReceipt, PublishError>> {
    let mut results = Vec::with_capacity(messages.len());
    let mut messages = messages.into_iter().peekable();
    while messages.peek().is_some() {
        let window: Vec<OutgoingMessage> = messages.by_ref().take(PIPELINE_WINDOW).collect();
        let places = u32::try_from(window.len()).unwrap_or(u32::MAX);
        let Ok(Ok(_places)) = tokio::time::timeout(timeout, pubacks.acquire_many(places)).await
        else {
            results.extend(window.iter().map(|_| {
                Err(PublishError::Failed(
                    "too many publishes waiting for their PubAck; nothing was sent".into(),
                ))
            }));
            continue;
        };
        results.extend(publish_window(js, window, timeout).await);
    }
    results
}

/// Sends every message, then awaits every PubAck together.
async fn publish_window(
    js: &jetstream::Context,
    messages: Vec<OutgoingMessage>,
    timeout: Duration,
) -> Vec<Result<PublishReceipt, PublishError>> {
    let started = Instant::now();
    let mut pending = Vec::with_capacity(messages.len());
    for message in messages {
        let subject = message.subject.clone();
        let headers = message.header_map();
        let sent = js
            .publish_with_headers(message.subject, headers, message.payload)
            .await;
        pending.push((subject, sent));
    }
    let acks = pending.into_iter().map(|(subject, sent)| async move {
        let result = match sent {
            Ok(ack) => match tokio::time::timeout(timeout, ack).await {
                Ok(Ok(ack)) => Ok(ack),
                Ok(Err(e)) => Err(classify(js, &subject, e).await),
                Err(_) => Err(PublishError::Timeout(timeout)),
            },
            Err(e) => Err(classify(js, &subject, e).await),
        };
        record(&subject, started, result)
    });
    futures::future::join_all(acks).await
}

fn record(
    subject: &str,
    started: Instant,
    result: Result<jetstream::publish::PublishAck, PublishError>,
) -> Result<PublishReceipt, PublishError> {
    let m = metrics();
    match result {
        Ok(ack) => {
            m.nats_published.with_label_values(&[subject]).inc();
            m.nats_publish_seconds
                .with_label_values(&[subject])
                .observe(started.elapsed().as_secs_f64());
            Ok(PublishReceipt {
                stream: ack.stream,
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            })
        }
        Err(e) => {
            m.nats_publish_errors.with_label_values(&[subject]).inc();
            Err(e)
        }
    }
}

/// Sorts the client's publish errors into what the caller can act on.
fn publish_error(e: async_nats::jetstream::context::PublishError) -> PublishError {
    use async_nats::jetstream::context::PublishErrorKind as K;
    match e.kind() {
        K::StreamNotFound
        | K::WrongLastMessageId
        | K::WrongLastSequence
        | K::MaxPayloadExceeded => PublishError::Rejected(e.to_string()),
        K::TimedOut => PublishError::Timeout(Duration::ZERO),
        // The request went out and its reply channel closed (the connection broke, or the
        // client is draining): the message may be stored, like a PubAck that never came.
        K::BrokenPipe => PublishError::Timeout(Duration::ZERO),
        _ => PublishError::Failed(e.to_string()),
    }
}

impl Handler<Publish> for NatsBridge {
    type Result = ResponseFuture<Result<PublishReceipt, PublishError>>;

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) -> Self::Result {
        let shared = self.shared.clone();
        Box::pin(async move { Bridge::publish_on(&shared, msg.0).await })
    }
}

impl Bridge {
    async fn publish_on(
        shared: &Shared,
        message: OutgoingMessage,
    ) -> Result<PublishReceipt, PublishError> {
        let Some(js) = shared.js() else {
            metrics()
                .nats_publish_errors
                .with_label_values(&[message.subject.as_str()])
                .inc();
            return Err(PublishError::NotConnected);
        };
        // Waiting for a place counts against the publish's timeout; nothing was sent if the
        // wait runs out.
        let place = tokio::time::timeout(shared.publish_timeout, shared.pubacks.acquire()).await;
        let Ok(Ok(_place)) = place else {
            return Err(PublishError::Failed(
                "too many publishes waiting for their PubAck; nothing was sent".into(),
            ));
        };
        publish_with_ack(&js, message, shared.publish_timeout).await
    }

    /// Adds a route (a [`Route`] or a [`TxRoute`](crate::TxRoute)).
    pub async fn subscribe(&self, route: impl Into<Route>) -> Result<(), MailboxError> {
        self.actor.send(Subscribe(route.into())).await
    }

    /// The bridge's connection state.
    pub async fn status(&self) -> Result<BridgeStatus, MailboxError> {
        self.actor.send(GetStatus).await
    }

    /// The JetStream context, while connected.
    pub fn jetstream(&self) -> Option<jetstream::Context> {
        self.shared.js()
    }

    /// The actor.
    pub fn actor(&self) -> &ActorRef<NatsBridge> {
        &self.actor
    }

    /// Stops every route from pulling and waits, at most `timeout`, until what they pulled
    /// is handled and acknowledged. Returns whether everything finished in time.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.shared.stop_routes.cancel();
        self.shared.tasks.close();
        tokio::time::timeout(timeout, self.shared.tasks.wait())
            .await
            .is_ok()
    }

    /// Flushes what was published and closes the connection; the actor stops for good.
    pub async fn close(&self) {
        self.shared.stop_routes.cancel();
        self.actor.retire();
        if let Some(js) = self.shared.js() {
            let client = js.client();
            if let Err(e) = tokio::time::timeout(Duration::from_secs(2), client.flush()).await {
                tracing::debug!(error = %e, "NATS flush before closing timed out");
            }
        }
        let _ = self.actor.send(Close).await;
        if let Some(client) = self.shared.set(None)
            && let Err(e) = client.drain().await
        {
            tracing::debug!(error = %e, "NATS drain on close failed");
        }
        metrics().nats_connected.set(0);
    }
}

impl Publisher for Bridge {
    fn publish(
        &self,
        message: OutgoingMessage,
    ) -> BoxFuture<'static, Result<PublishReceipt, PublishError>> {
        let shared = self.shared.clone();
        Box::pin(async move { Bridge::publish_on(&shared, message).await })
    }

    fn publish_many(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> BoxFuture<'static, Vec<Result<PublishReceipt, PublishError>>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let Some(js) = shared.js() else {
                return messages
                    .iter()
                    .map(|m| {
                        metrics()
                            .nats_publish_errors
                            .with_label_values(&[m.subject.as_str()])
                            .inc();
                        Err(PublishError::NotConnected)
                    })
                    .collect();
            };
            publish_pipelined(&js, messages, shared.publish_timeout, &shared.pubacks).await
        })
    }
}
