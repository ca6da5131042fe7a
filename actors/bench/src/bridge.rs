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
    Bridge, BridgeConfig, ConsumerSpec, Decode, DecodeError, Delivery, HeaderMap, Health,
    NatsBridge, NatsConfig, Outcome, OutgoingMessage, Publisher, Route, StreamSpec, Supervisor,
    Topology,
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
    /// Raw async-nats consuming.
    pub consume_raw: Measurement,
    /// Consuming through a bridge route into an actor.
    pub consume_bridge: Measurement,
    /// bridge ÷ raw.
    pub consume_ratio: f64,
}

/// Raw bytes, undecoded (what the benchmark actor receives).
#[derive(Debug, Clone)]
struct RawBytes;

impl Decode for RawBytes {
    fn decode(_: &str, _: &HeaderMap, _: &[u8]) -> Result<Self, DecodeError> {
        Ok(RawBytes)
    }
}

/// Acks everything and counts.
struct Sink {
    seen: Arc<AtomicUsize>,
}

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Supervised for Sink {}

impl Handler<Delivery<RawBytes>> for Sink {
    type Result = Outcome;

    fn handle(&mut self, _: Delivery<RawBytes>, _: &mut Context<Self>) -> Outcome {
        self.seen.fetch_add(1, Ordering::Relaxed);
        Outcome::Ack
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
                );
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

async fn consume_raw(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
    n: usize,
    b: &BridgeBench,
) -> Result<Measurement, BenchError> {
    let spec = ConsumerSpec::new(stream, "bench-raw", &[subject]);
    let consumer = jetflow_runtime::topology::ensure_consumer(js, &spec)
        .await
        .map_err(err)?;
    let started = Instant::now();
    let messages = consumer
        .stream()
        .max_messages_per_batch(b.in_flight)
        .messages()
        .await
        .map_err(err)?;
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let consume = messages.take(n).for_each_concurrent(b.in_flight, move |m| {
        let d = d.clone();
        async move {
            if let Ok(m) = m
                && m.ack().await.is_ok()
            {
                d.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(120), consume)
        .await
        .map_err(|_| err("the raw consumer did not finish in 120s"))?;
    let elapsed = started.elapsed();
    let n = done.load(Ordering::Relaxed);
    Ok(Measurement::new(
        "consume+ack (raw async-nats)",
        n,
        elapsed,
        vec![elapsed / n.max(1) as u32; n],
    ))
}

async fn consume_bridge(
    bridge: &Bridge,
    stream: &str,
    subject: &str,
    n: usize,
    b: &BridgeBench,
) -> Result<Measurement, BenchError> {
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let sink = Supervisor::new("bench-sink")
        .mailbox_capacity(b.in_flight * 2)
        .start(move |_| Sink { seen: s });
    let started = Instant::now();
    let route = Route::new(
        ConsumerSpec::new(stream, "bench-bridge", &[subject]),
        sink.recipient::<Delivery<RawBytes>>(),
    )
    .concurrency(b.in_flight);
    bridge.subscribe(route).await.map_err(err)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            return Err(err("the bridge consumer did not finish in 120s"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    Ok(Measurement::new(
        "consume+ack (jetflow route → actor)",
        n,
        elapsed,
        vec![elapsed / n.max(1) as u32; n],
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
        let consume_raw = consume_raw(&js, &stream, &raw_subject, n, b).await?;
        let consume_bridge = consume_bridge(&bridge, &stream, &bridge_subject, n, b).await?;
        Ok(BridgeReport {
            broker: label.to_string(),
            publish_ratio: publish_bridge.per_second / publish_raw.per_second,
            consume_ratio: consume_bridge.per_second / consume_raw.per_second,
            publish_raw,
            publish_bridge,
            consume_raw,
            consume_bridge,
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
