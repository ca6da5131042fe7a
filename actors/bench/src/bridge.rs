//! The bridge against raw async-nats on the same broker: publishing with PubAck, and
//! consuming with ack (a raw pull consumer against a bridge route into an actor, through the
//! default middleware stack).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use jetflow_runtime::{
    Batch, BatchConfig, Bridge, BridgeConfig, ConsumerSpec, Decode, DecodeError, Delivery,
    HeaderMap, Health, NatsBridge, NatsConfig, Outcome, OutgoingMessage, Publisher, Route,
    StreamSpec, Supervisor, Topology,
};
use serde::Serialize;

use crate::BenchError;
use crate::report::Measurement;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BridgeBench {
    /// Messages per measurement.
    pub messages: usize,
    /// Payload size in bytes.
    pub payload: usize,
    /// Publishes (and deliveries) in flight at once.
    pub in_flight: usize,
}

/// Both paths on one broker.
#[derive(Debug, Serialize)]
pub struct BridgeReport {
    /// Which broker.
    pub broker: String,
    /// Raw async-nats publishing.
    pub publish_raw: Measurement,
    /// Publishing through the bridge.
    pub publish_bridge: Measurement,
    /// bridge ÷ raw.
    pub publish_ratio: f64,
    /// Raw async-nats consuming (throughput: draining a filled stream; latency: publish to
    /// handler while publishing).
    pub consume_raw: Measurement,
    /// Consuming through a bridge route into an actor.
    pub consume_bridge: Measurement,
    /// bridge ÷ raw.
    pub consume_ratio: f64,
    /// Raw async-nats consuming in chunks of `in_flight`, each acked after the chunk.
    pub consume_raw_batches: Measurement,
    /// A batched route: the actor gets batches of up to `in_flight`, acked after the batch.
    pub consume_route_batches: Measurement,
    /// batched route ÷ raw batches.
    pub consume_batches_ratio: f64,
}

/// Raw bytes, undecoded (what the benchmark actor receives).
#[derive(Debug, Clone)]
struct RawBytes;

impl Decode for RawBytes {
    fn decode(_: &str, _: &HeaderMap, _: &[u8]) -> Result<Self, DecodeError> {
        Ok(RawBytes)
    }
}

/// The header that carries when a message was published (nanoseconds since the Unix epoch).
const SENT_HEADER: &str = "Bench-Sent-Ns";

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What the consumers of one measurement saw: how many, and each one's latency from its
/// publish to its handler, in slots written without a lock (both paths pay the same).
struct Seen {
    count: AtomicUsize,
    latencies_ns: Vec<std::sync::atomic::AtomicU64>,
}

impl Seen {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            count: AtomicUsize::new(0),
            latencies_ns: (0..n)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        })
    }

    /// Counts one delivery that reached its handler, with its publish time from `headers`.
    fn record(&self, headers: Option<&HeaderMap>) {
        let i = self.count.fetch_add(1, Ordering::Relaxed);
        let sent = headers
            .and_then(|h| h.get(SENT_HEADER))
            .and_then(|v| v.as_str().parse::<u64>().ok());
        if let (Some(slot), Some(sent)) = (self.latencies_ns.get(i), sent) {
            slot.store(now_ns().saturating_sub(sent).max(1), Ordering::Relaxed);
        }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Every recorded latency.
    fn latencies(&self) -> Vec<Duration> {
        self.latencies_ns
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .filter(|&ns| ns > 0)
            .map(Duration::from_nanos)
            .collect()
    }

    /// Waits (up to 120 s) until `n` were seen.
    async fn wait_for(&self, n: usize, what: &str) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.count() < n {
            if Instant::now() > deadline {
                return Err(err(format!("{what} did not finish in 120s")));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }
}

/// Acks everything and records what it saw: one delivery at a time, or whole batches.
struct Sink {
    seen: Arc<Seen>,
}

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Supervised for Sink {}

impl Handler<Delivery<RawBytes>> for Sink {
    type Result = Outcome;

    fn handle(&mut self, d: Delivery<RawBytes>, _: &mut Context<Self>) -> Outcome {
        self.seen.record(Some(&d.meta.headers));
        Outcome::Ack
    }
}

impl Handler<Batch<RawBytes>> for Sink {
    type Result = MessageResult<Batch<RawBytes>>;

    fn handle(&mut self, b: Batch<RawBytes>, _: &mut Context<Self>) -> Self::Result {
        for d in &b.deliveries {
            self.seen.record(Some(&d.meta.headers));
        }
        MessageResult(vec![Outcome::Ack; b.deliveries.len()])
    }
}

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError::new(e)
}

async fn publish_raw(
    js: &jetstream::Context,
    subject: &str,
    b: &BridgeBench,
) -> Result<Measurement, BenchError> {
    let payload = Bytes::from(vec![b'x'; b.payload]);
    let per_task = b.messages.div_ceil(b.in_flight);
    let started = Instant::now();
    let tasks = (0..b.in_flight).map(|t| {
        let js = js.clone();
        let payload = payload.clone();
        let subject = subject.to_string();
        tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let t0 = Instant::now();
                let mut h = HeaderMap::new();
                // Unique per run and subject: the stream's duplicate window spans the warm-up.
                h.insert("Nats-Msg-Id", format!("{subject}-{t}-{i}"));
                h.insert(SENT_HEADER, now_ns().to_string());
                js.publish_with_headers(subject.clone(), h, payload.clone())
                    .await
                    .map_err(err)?
                    .await
                    .map_err(err)?;
                lat.push(t0.elapsed());
            }
            Ok::<_, BenchError>(lat)
        })
    });
    let mut samples = Vec::new();
    for r in futures::future::join_all(tasks).await {
        samples.extend(r.map_err(err)??);
    }
    Ok(Measurement::new(
        "publish (raw async-nats)",
        samples.len(),
        started.elapsed(),
        samples,
    ))
}

/// Publishes `b.messages` to `subject` as the raw publisher does, outside any measurement.
async fn fill(js: &jetstream::Context, subject: &str, b: &BridgeBench) -> Result<(), BenchError> {
    publish_raw(js, subject, b).await.map(|_| ())
}

/// Messages per second published while the latency is measured: well below what either
/// path consumes, so the latency is the path's, not a queue's.
pub const LIVE_RATE: usize = 2_000;

/// Publishes `n` messages to `subject` at `LIVE_RATE` (a few every millisecond, without
/// waiting for one PubAck before the next publish), each with its publish time.
async fn publish_paced(js: &jetstream::Context, subject: &str, n: usize) -> Result<(), BenchError> {
    let per_tick = (LIVE_RATE / 1000).max(1);
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    let mut acks = Vec::with_capacity(n);
    let mut sent = 0;
    while sent < n {
        ticker.tick().await;
        for _ in 0..per_tick.min(n - sent) {
            let mut h = HeaderMap::new();
            h.insert("Nats-Msg-Id", format!("{subject}-{sent}"));
            h.insert(SENT_HEADER, now_ns().to_string());
            let ack = js
                .publish_with_headers(subject.to_string(), h, Bytes::from_static(b"live"))
                .await
                .map_err(err)?;
            acks.push(ack.into_future());
            sent += 1;
        }
    }
    for ack in futures::future::join_all(acks).await {
        ack.map_err(err)?;
    }
    Ok(())
}

async fn publish_bridge(
    bridge: &Bridge,
    subject: &str,
    b: &BridgeBench,
) -> Result<Measurement, BenchError> {
    let payload = Bytes::from(vec![b'x'; b.payload]);
    let per_task = b.messages.div_ceil(b.in_flight);
    let started = Instant::now();
    let tasks = (0..b.in_flight).map(|t| {
        let bridge = bridge.clone();
        let payload = payload.clone();
        let subject = subject.to_string();
        async move {
            let mut lat = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let t0 = Instant::now();
                let msg = OutgoingMessage::new(
                    subject.clone(),
                    format!("{subject}-{t}-{i}"),
                    payload.clone(),
                )
                .header(SENT_HEADER, now_ns().to_string());
                bridge.publish(msg).await.map_err(err)?;
                lat.push(t0.elapsed());
            }
            Ok::<_, BenchError>(lat)
        }
    });
    let mut samples = Vec::new();
    for r in futures::future::join_all(tasks).await {
        samples.extend(r?);
    }
    Ok(Measurement::new(
        "publish (jetflow bridge)",
        samples.len(),
        started.elapsed(),
        samples,
    ))
}

/// A way of consuming: raw async-nats or a jetflow route into an actor, one delivery at a
/// time or in batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// async-nats' pull stream, `in_flight` handled and acked at once.
    Raw,
    /// A jetflow route into an actor, `in_flight` deliveries at once.
    Route,
    /// async-nats' pull stream in chunks of `in_flight`, each acked after the chunk.
    RawBatches,
    /// A batched jetflow route: the actor gets batches of up to `in_flight`, acked after.
    RouteBatches,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Raw => "consume+ack (raw async-nats)",
            Path::Route => "consume+ack (jetflow route → actor)",
            Path::RawBatches => "consume+ack batches (raw async-nats)",
            Path::RouteBatches => "consume+ack batches (route → actor)",
        }
    }
}

/// Where the consumers run.
struct Env<'a> {
    bridge: &'a Bridge,
    js: &'a jetstream::Context,
    stream: &'a str,
    b: &'a BridgeBench,
}

/// A consumer started for one measurement; the raw ones stop when this is dropped (a route
/// stops with the bridge).
struct Running(Option<tokio::task::JoinHandle<()>>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Starts consuming `subject` along `path` with the durable `durable`, recording into `seen`.
async fn start(
    env: &Env<'_>,
    path: Path,
    subject: &str,
    durable: &str,
    seen: &Arc<Seen>,
) -> Result<Running, BenchError> {
    let spec = ConsumerSpec::new(env.stream, durable, &[subject]);
    let in_flight = env.b.in_flight;
    match path {
        Path::Raw | Path::RawBatches => {
            let consumer = jetflow_runtime::topology::ensure_consumer(env.js, &spec)
                .await
                .map_err(err)?;
            let messages = consumer
                .stream()
                .max_messages_per_batch(in_flight)
                .messages()
                .await
                .map_err(err)?;
            let seen = seen.clone();
            // On the arbiter, where the routes' pull loops run too.
            let task = if path == Path::Raw {
                actix::spawn(messages.for_each_concurrent(in_flight, move |m| {
                    let seen = seen.clone();
                    async move {
                        if let Ok(m) = m {
                            seen.record(m.headers.as_ref());
                            let _ = m.ack().await;
                        }
                    }
                }))
            } else {
                actix::spawn(messages.ready_chunks(in_flight).for_each(move |chunk| {
                    let seen = seen.clone();
                    async move {
                        let msgs: Vec<_> = chunk.into_iter().filter_map(Result::ok).collect();
                        for m in &msgs {
                            seen.record(m.headers.as_ref());
                        }
                        futures::future::join_all(msgs.iter().map(|m| m.ack())).await;
                    }
                }))
            };
            Ok(Running(Some(task)))
        }
        Path::Route | Path::RouteBatches => {
            let s = seen.clone();
            let sink = Supervisor::new(format!("bench-{durable}"))
                .mailbox_capacity(in_flight * 2)
                .start(move |_| Sink { seen: s.clone() });
            let route = if path == Path::Route {
                Route::new(spec, sink.recipient::<Delivery<RawBytes>>()).concurrency(in_flight)
            } else {
                let batches = BatchConfig {
                    max: in_flight,
                    ..BatchConfig::default()
                };
                Route::batches(spec, sink.recipient::<Batch<RawBytes>>(), batches)
            };
            env.bridge.subscribe(route).await.map_err(err)?;
            Ok(Running(None))
        }
    }
}

/// Consumes the `n` messages already stored on `filled` along `path`: messages per second.
async fn drain(env: &Env<'_>, path: Path, filled: &str, n: usize) -> Result<f64, BenchError> {
    let seen = Seen::new(n);
    let started = Instant::now();
    let durable = format!("drain-{}", uuid::Uuid::new_v4().simple());
    let consumer = start(env, path, filled, &durable, &seen).await?;
    seen.wait_for(n, path.name()).await?;
    let elapsed = started.elapsed();
    drop(consumer);
    Ok(n as f64 / elapsed.as_secs_f64().max(1e-9))
}

/// Consumes up to `LIVE_RATE` messages on a fresh subject along `path` while they are
/// published at `LIVE_RATE` per second: each one's latency from its publish to its handler.
async fn live(
    env: &Env<'_>,
    run: &RunStream,
    path: Path,
    n: usize,
) -> Result<Vec<Duration>, BenchError> {
    let tag = format!("{path:?}").to_ascii_lowercase();
    let n_live = (n / 2).clamp(1, LIVE_RATE);
    let subject = run.subject(&format!("live-{tag}"));
    let seen = Seen::new(n_live);
    let consumer = start(env, path, &subject, &format!("live-{tag}"), &seen).await?;
    publish_paced(env.js, &subject, n_live).await?;
    seen.wait_for(n_live, path.name()).await?;
    drop(consumer);
    Ok(seen.latencies())
}

/// Rounds of each throughput comparison: each round fills two subjects and drains them, the
/// order alternating, and the median of the rounds is reported, so a moment of machine
/// noise falls on one round of one side, not on a whole side.
const ROUNDS: usize = 3;

/// Measures `raw` against `jetflow` (throughput: median of the rounds; latency: live).
async fn compare(
    env: &Env<'_>,
    run: &RunStream,
    raw: Path,
    jetflow: Path,
    n: usize,
) -> Result<(Measurement, Measurement), BenchError> {
    let (mut raw_rates, mut jetflow_rates) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (a, b) = (
            run.subject(&format!("fill-{raw:?}-{round}")),
            run.subject(&format!("fill-{jetflow:?}-{round}")),
        );
        fill(env.js, &a, env.b).await?;
        fill(env.js, &b, env.b).await?;
        if round % 2 == 0 {
            raw_rates.push(drain(env, raw, &a, n).await?);
            jetflow_rates.push(drain(env, jetflow, &b, n).await?);
        } else {
            jetflow_rates.push(drain(env, jetflow, &b, n).await?);
            raw_rates.push(drain(env, raw, &a, n).await?);
        }
    }
    let measured = |path: Path, rates: &mut Vec<f64>, latencies: Vec<Duration>| {
        rates.sort_by(f64::total_cmp);
        let median = rates.get(rates.len() / 2).copied().unwrap_or(0.0);
        let mut m = Measurement::new(path.name(), 0, Duration::from_secs(1), latencies);
        m.per_second = median;
        m
    };
    let raw_latencies = live(env, run, raw, n).await?;
    let jetflow_latencies = live(env, run, jetflow, n).await?;
    Ok((
        measured(raw, &mut raw_rates, raw_latencies),
        measured(jetflow, &mut jetflow_rates, jetflow_latencies),
    ))
}

/// A stream of its own for one run (`BENCH_<id>`, subjects `bench.<id>.>`), on a new
/// connection.
struct RunStream {
    id: String,
    name: String,
    spec: StreamSpec,
    js: jetstream::Context,
}

impl RunStream {
    async fn create(url: &str) -> Result<Self, BenchError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("BENCH_{id}");
        let client = async_nats::connect(url).await.map_err(err)?;
        let js = jetstream::new(client);
        let spec = StreamSpec::new(&name, &[&format!("bench.{id}.>")]);
        jetflow_runtime::topology::ensure_stream(&js, &spec)
            .await
            .map_err(err)?;
        Ok(Self { id, name, spec, js })
    }

    /// The subject `bench.<id>.<leaf>`.
    fn subject(&self, leaf: &str) -> String {
        format!("bench.{}.{leaf}", self.id)
    }

    /// Four messages per publisher in flight, so connection set-up is not measured.
    fn warm_up(b: &BridgeBench) -> BridgeBench {
        BridgeBench {
            messages: b.in_flight * 4,
            ..b.clone()
        }
    }

    async fn delete(self) {
        let _ = self.js.delete_stream(&self.name).await;
    }
}

/// Runs both paths against the broker at `url` (described as `label`); cleans up its stream.
pub async fn run(url: &str, label: &str, b: &BridgeBench) -> Result<BridgeReport, BenchError> {
    let run = RunStream::create(url).await?;
    let (js, stream, spec) = (run.js.clone(), run.name.clone(), run.spec.clone());
    let raw_subject = run.subject("raw");
    let bridge_subject = run.subject("bridge");
    let mut config = BridgeConfig::new(
        NatsConfig::new(url).name("jetflow-bench"),
        Topology::new().stream(spec),
    );
    config.dead_letter_exhausted = false;
    let bridge = NatsBridge::start(config, Health::new());
    let deadline = Instant::now() + Duration::from_secs(15);
    while bridge.jetstream().is_none() {
        if Instant::now() > deadline {
            return Err(err(format!("the bridge did not connect to {url}")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let result = async {
        // Warm up both paths so connection set-up is not measured.
        let warm = RunStream::warm_up(b);
        publish_raw(&js, &run.subject("warm"), &warm).await?;
        publish_bridge(&bridge, &run.subject("warm"), &warm).await?;
        let publish_raw = publish_raw(&js, &raw_subject, b).await?;
        let publish_bridge = publish_bridge(&bridge, &bridge_subject, b).await?;
        let n = b.messages.div_ceil(b.in_flight) * b.in_flight;
        let env = Env {
            bridge: &bridge,
            js: &js,
            stream: &stream,
            b,
        };
        let (consume_raw, consume_bridge) = compare(&env, &run, Path::Raw, Path::Route, n).await?;
        let (consume_raw_batches, consume_route_batches) =
            compare(&env, &run, Path::RawBatches, Path::RouteBatches, n).await?;
        Ok(BridgeReport {
            broker: label.to_string(),
            publish_ratio: publish_bridge.per_second / publish_raw.per_second,
            consume_ratio: consume_bridge.per_second / consume_raw.per_second,
            consume_batches_ratio: consume_route_batches.per_second
                / consume_raw_batches.per_second,
            publish_raw,
            publish_bridge,
            consume_raw,
            consume_bridge,
            consume_raw_batches,
            consume_route_batches,
        })
    }
    .await;
    bridge.drain(Duration::from_secs(5)).await;
    bridge.close().await;
    run.delete().await;
    result
}

/// Raw async-nats publishing alone, with PubAck and `Nats-Msg-Id`, `b.in_flight` publishers
/// at once, each waiting for its PubAck before the next publish (as a client waits for its
/// answer): the floor under anything that answers after JetStream stored an event. Warmed
/// up first; cleans up its stream.
pub async fn publish_only(url: &str, b: &BridgeBench) -> Result<Measurement, BenchError> {
    let run = RunStream::create(url).await?;
    let result = async {
        publish_raw(&run.js, &run.subject("warm"), &RunStream::warm_up(b)).await?;
        publish_raw(&run.js, &run.subject("raw"), b).await
    }
    .await;
    run.delete().await;
    result
}
