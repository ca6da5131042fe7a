//! `jetflow bench`: measured load, always against a baseline measured in the same run.
//!
//! * `jetflow bench bridge` compares the framework with raw async-nats on the same broker:
//!   publishing with PubAck (raw `jetstream.publish` vs `NatsBridge` `Publish`) and
//!   consuming with ack (a raw pull consumer vs a bridge route into an actor, through the
//!   default middleware stack), and reports the ratios. With no `NATS_URL` it starts its own
//!   nats-server twice, once with the default flush policy and once with
//!   `sync_interval: always`, so the cost of durable writes is reported too.
//! * `jetflow bench orders` drives a running gateway: it stocks products, posts orders from
//!   concurrent clients, waits until every order is finished and reports accept latency,
//!   end-to-end latency (accepted → confirmed/cancelled) and throughput.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use async_nats::jetstream;
use bytes::Bytes;
use clap::{Args, Subcommand};
use futures::StreamExt;
use jetflow_runtime::{
    BridgeConfig, ConsumerSpec, Decode, DecodeError, Delivery, HeaderMap, Health, NatsBridge,
    NatsConfig, Outcome, OutgoingMessage, Publish, Route, StreamSpec, Supervisor, Topology,
};
use serde::Serialize;

use crate::cli::{Common, parse_duration};
use crate::local_nats::LocalNats;

/// Options of `jetflow bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[command(subcommand)]
    pub mode: BenchMode,
    /// Print the report as JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The benchmarks.
#[derive(Debug, Clone, Subcommand)]
pub enum BenchMode {
    /// The bridge against raw async-nats: publish and consume throughput and latency.
    Bridge(BridgeBench),
    /// Orders end to end through a running gateway.
    Orders(OrdersBench),
}

/// Options of `jetflow bench bridge`.
#[derive(Debug, Clone, Args)]
pub struct BridgeBench {
    /// Messages per measurement.
    #[arg(long, default_value_t = 20_000)]
    pub messages: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// Publishes (and deliveries) in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Skip the second broker with `sync_interval: always` (when starting our own).
    #[arg(long)]
    pub no_sync_compare: bool,
}

/// Options of `jetflow bench orders`.
#[derive(Debug, Clone, Args)]
pub struct OrdersBench {
    /// The gateway's base URL.
    #[arg(
        long,
        env = "JETFLOW_GATEWAY_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub gateway: String,
    /// Orders to place.
    #[arg(long, default_value_t = 1000)]
    pub orders: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Distinct products ordered.
    #[arg(long, default_value_t = 20)]
    pub products: usize,
    /// Share of express orders, 0 to 1.
    #[arg(long, default_value_t = 0.1)]
    pub express: f64,
    /// How long to wait for every order to finish.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// 50th.
    pub p50_ms: f64,
    /// 90th.
    pub p90_ms: f64,
    /// 99th.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Percentiles {
    /// Percentiles of `samples`.
    pub fn of(samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        let at = |q: f64| -> f64 {
            if samples.is_empty() {
                return 0.0;
            }
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples[i].as_secs_f64() * 1000.0
        };
        Self {
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// What was measured.
    pub name: String,
    /// Operations per second.
    pub per_second: f64,
    /// Latencies.
    pub latency: Percentiles,
}

fn measurement(name: &str, n: usize, elapsed: Duration, mut samples: Vec<Duration>) -> Measurement {
    Measurement {
        name: name.to_string(),
        per_second: n as f64 / elapsed.as_secs_f64().max(1e-9),
        latency: Percentiles::of(&mut samples),
    }
}

/// Runs a benchmark.
pub async fn run(common: &Common, args: BenchArgs) -> Result<(), String> {
    match args.mode {
        BenchMode::Bridge(b) => bridge_bench(common, b, args.json).await,
        BenchMode::Orders(o) => orders_bench(o, args.json).await,
    }
}

// ---------------------------------------------------------------- bridge vs raw async-nats

/// Raw bytes, undecoded (what a benchmark actor receives).
#[derive(Debug, Clone)]
struct RawBytes(#[allow(dead_code)] Bytes);

impl Decode for RawBytes {
    fn decode(_: &str, _: &HeaderMap, payload: &[u8]) -> Result<Self, DecodeError> {
        Ok(RawBytes(Bytes::copy_from_slice(payload)))
    }
}

/// Acks everything and counts.
struct Sink {
    seen: Arc<std::sync::atomic::AtomicUsize>,
}

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Supervised for Sink {}

impl Handler<Delivery<RawBytes>> for Sink {
    type Result = Outcome;

    fn handle(&mut self, _: Delivery<RawBytes>, _: &mut Context<Self>) -> Outcome {
        self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Outcome::Ack
    }
}

#[derive(Debug, Serialize)]
struct BrokerReport {
    broker: String,
    publish_raw: Measurement,
    publish_bridge: Measurement,
    publish_ratio: f64,
    consume_raw: Measurement,
    consume_bridge: Measurement,
    consume_ratio: f64,
}

async fn publish_raw(
    js: &jetstream::Context,
    subject: &str,
    b: &BridgeBench,
) -> Result<Measurement, String> {
    let payload = Bytes::from(vec![b'x'; b.payload]);
    let per_task = b.messages.div_ceil(b.concurrency);
    let started = Instant::now();
    let tasks = (0..b.concurrency).map(|t| {
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
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())?;
                lat.push(t0.elapsed());
            }
            Ok::<_, String>(lat)
        })
    });
    let mut samples = Vec::new();
    for r in futures::future::join_all(tasks).await {
        samples.extend(r.map_err(|e| e.to_string())??);
    }
    Ok(measurement(
        "publish (raw async-nats)",
        samples.len(),
        started.elapsed(),
        samples,
    ))
}

async fn publish_bridge(
    bridge: &jetflow_runtime::ActorRef<NatsBridge>,
    subject: &str,
    b: &BridgeBench,
) -> Result<Measurement, String> {
    let payload = Bytes::from(vec![b'x'; b.payload]);
    let per_task = b.messages.div_ceil(b.concurrency);
    let started = Instant::now();
    let tasks = (0..b.concurrency).map(|t| {
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
                bridge
                    .send(Publish(msg))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                lat.push(t0.elapsed());
            }
            Ok::<_, String>(lat)
        }
    });
    let mut samples = Vec::new();
    for r in futures::future::join_all(tasks).await {
        samples.extend(r?);
    }
    Ok(measurement(
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
) -> Result<Measurement, String> {
    let spec = ConsumerSpec::new(stream, "bench-raw", &[subject]);
    let consumer = jetflow_runtime::topology::ensure_consumer(js, &spec)
        .await
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let messages = consumer
        .stream()
        .max_messages_per_batch(b.concurrency)
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let samples = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
    let d = done.clone();
    let s = samples.clone();
    let consume = messages
        .take(n)
        .for_each_concurrent(b.concurrency, move |m| {
            let d = d.clone();
            let s = s.clone();
            async move {
                if let Ok(m) = m {
                    let t0 = Instant::now();
                    if m.ack().await.is_ok() {
                        d.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if let Ok(mut g) = s.lock() {
                            g.push(t0.elapsed());
                        }
                    }
                }
            }
        });
    tokio::time::timeout(Duration::from_secs(120), consume)
        .await
        .map_err(|_| "raw consumer did not finish in 120s".to_string())?;
    let elapsed = started.elapsed();
    let samples = samples.lock().map(|g| g.clone()).unwrap_or_default();
    Ok(measurement(
        "consume+ack (raw async-nats)",
        done.load(std::sync::atomic::Ordering::Relaxed),
        elapsed,
        samples,
    ))
}

async fn consume_bridge(
    bridge: &jetflow_runtime::ActorRef<NatsBridge>,
    stream: &str,
    subject: &str,
    n: usize,
    b: &BridgeBench,
) -> Result<Measurement, String> {
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s = seen.clone();
    let sink = Supervisor::new("bench-sink")
        .mailbox_capacity(b.concurrency * 2)
        .start(move |_| Sink { seen: s });
    let started = Instant::now();
    let route = Route::new(
        ConsumerSpec::new(stream, "bench-bridge", &[subject]),
        sink.recipient::<Delivery<RawBytes>>(),
    )
    .concurrency(b.concurrency);
    bridge.subscribe(route).await.map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.load(std::sync::atomic::Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            return Err("bridge consumer did not finish in 120s".to_string());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    // Per-delivery handle time as the actor metrics saw it is in /metrics; here: throughput.
    let per = elapsed / n.max(1) as u32;
    Ok(measurement(
        "consume+ack (jetflow route → actor)",
        n,
        elapsed,
        vec![per; n],
    ))
}

async fn bench_broker(url: &str, label: &str, b: &BridgeBench) -> Result<BrokerReport, String> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let stream = format!("BENCH_{id}");
    let raw_subject = format!("bench.{id}.raw");
    let bridge_subject = format!("bench.{id}.bridge");
    let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
    let js = jetstream::new(client);
    let spec = StreamSpec::new(&stream, &[&format!("bench.{id}.>")]);
    jetflow_runtime::topology::ensure_stream(&js, &spec)
        .await
        .map_err(|e| e.to_string())?;
    let mut config = BridgeConfig::new(
        NatsConfig::new(url).name("jetflow-bench"),
        Topology::new().stream(spec),
    );
    config.dead_letter_exhausted = false;
    let bridge = NatsBridge::start(config, Health::new());
    let deadline = Instant::now() + Duration::from_secs(15);
    while !bridge.status().await.map(|s| s.connected).unwrap_or(false) {
        if Instant::now() > deadline {
            return Err(format!("the bridge did not connect to {url}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Warm up both paths so connection set-up is not measured.
    let warm = BridgeBench {
        messages: b.concurrency * 4,
        ..b.clone()
    };
    publish_raw(&js, &format!("bench.{id}.warm"), &warm).await?;
    publish_bridge(&bridge, &format!("bench.{id}.warm"), &warm).await?;

    let publish_raw = publish_raw(&js, &raw_subject, b).await?;
    let publish_bridge = publish_bridge(&bridge, &bridge_subject, b).await?;
    let n_raw = b.messages.div_ceil(b.concurrency) * b.concurrency;
    let consume_raw = consume_raw(&js, &stream, &raw_subject, n_raw, b).await?;
    let consume_bridge = consume_bridge(&bridge, &stream, &bridge_subject, n_raw, b).await?;
    let _ = js.delete_stream(&stream).await;
    Ok(BrokerReport {
        broker: label.to_string(),
        publish_ratio: publish_bridge.per_second / publish_raw.per_second,
        consume_ratio: consume_bridge.per_second / consume_raw.per_second,
        publish_raw,
        publish_bridge,
        consume_raw,
        consume_bridge,
    })
}

fn print_measurement(m: &Measurement) {
    println!(
        "  {:<38} {:>10.0}/s   p50 {:>7.2} ms   p90 {:>7.2} ms   p99 {:>7.2} ms",
        m.name, m.per_second, m.latency.p50_ms, m.latency.p90_ms, m.latency.p99_ms
    );
}

async fn bridge_bench(common: &Common, b: BridgeBench, json: bool) -> Result<(), String> {
    let mut reports = Vec::new();
    let mut servers = Vec::new();
    let mut targets = Vec::new();
    match &common.nats_url {
        Some(url) => targets.push((url.clone(), format!("NATS_URL {url}"))),
        None => {
            let modes: &[bool] = if b.no_sync_compare {
                &[false]
            } else {
                &[false, true]
            };
            for &sync in modes {
                let dir = std::env::temp_dir()
                    .join(format!("jetflow-bench-{}", uuid::Uuid::new_v4().simple()));
                let server = LocalNats::start(&dir, 0, sync).map_err(|e| e.to_string())?;
                let label = if sync {
                    "local nats-server, sync_interval: always".to_string()
                } else {
                    "local nats-server, default flush".to_string()
                };
                targets.push((server.url().to_string(), label));
                servers.push((server, dir));
            }
        }
    }
    for (url, label) in &targets {
        reports.push(bench_broker(url, label, &b).await?);
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).map_err(|e| e.to_string())?
        );
    } else {
        println!(
            "jetflow bench bridge: {} messages of {} bytes, {} in flight",
            b.messages, b.payload, b.concurrency
        );
        for r in &reports {
            println!("\n{}", r.broker);
            print_measurement(&r.publish_raw);
            print_measurement(&r.publish_bridge);
            println!("  bridge/raw publish throughput: {:.2}", r.publish_ratio);
            print_measurement(&r.consume_raw);
            print_measurement(&r.consume_bridge);
            println!("  bridge/raw consume throughput: {:.2}", r.consume_ratio);
        }
    }
    for (server, dir) in servers {
        drop(server);
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

// ---------------------------------------------------------------- orders end to end

#[derive(Debug, Serialize)]
struct OrdersReport {
    orders: usize,
    accepted: usize,
    rejected: usize,
    confirmed: usize,
    cancelled: usize,
    unfinished: usize,
    accept: Measurement,
    end_to_end: Percentiles,
    finished_per_second: f64,
}

async fn orders_bench(o: OrdersBench, json: bool) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let base = o.gateway.trim_end_matches('/').to_string();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let products: Vec<String> = (0..o.products.max(1))
        .map(|i| format!("bench-{run}-{i}"))
        .collect();
    for p in &products {
        let r = http
            .put(format!("{base}/inventory/{p}"))
            .json(&serde_json::json!({"available": 1_000_000, "price_cents": 1000}))
            .send()
            .await
            .map_err(|e| format!("cannot reach the gateway at {base}: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("PUT /inventory answered {}", r.status()));
        }
    }
    let started = Instant::now();
    let per_client = o.orders.div_ceil(o.concurrency.max(1));
    let clients = (0..o.concurrency.max(1)).map(|c| {
        let http = http.clone();
        let base = base.clone();
        let products = products.clone();
        let express = o.express;
        async move {
            let mut out = Vec::new();
            for i in 0..per_client {
                let n = c * per_client + i;
                let priority = if (n as f64 * express).fract() + express >= 1.0 {
                    "express"
                } else {
                    "standard"
                };
                let body = serde_json::json!({
                    "customer_id": format!("bench-{c}"),
                    "items": [{"product_id": products[n % products.len()], "quantity": 1}],
                    "priority": priority,
                });
                let t0 = Instant::now();
                let r = http.post(format!("{base}/orders")).json(&body).send().await;
                let lat = t0.elapsed();
                let id = match r {
                    Ok(r) if r.status().as_u16() == 202 => r
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|v| v["order_id"].as_str().map(str::to_string)),
                    _ => None,
                };
                out.push((id, lat));
            }
            out
        }
    });
    let results: Vec<(Option<String>, Duration)> = futures::future::join_all(clients)
        .await
        .into_iter()
        .flatten()
        .collect();
    let accept_elapsed = started.elapsed();
    let accepted: Vec<String> = results.iter().filter_map(|(id, _)| id.clone()).collect();
    let accept = measurement(
        "POST /orders (202 after PubAck)",
        results.len(),
        accept_elapsed,
        results.iter().map(|(_, l)| *l).collect(),
    );
    let deadline = Instant::now() + o.timeout;
    let mut pending: std::collections::VecDeque<String> = accepted.iter().cloned().collect();
    let (mut confirmed, mut cancelled) = (0, 0);
    let mut e2e = Vec::new();
    while let Some(id) = pending.pop_front() {
        if Instant::now() > deadline {
            pending.push_back(id);
            break;
        }
        let v: serde_json::Value = match http.get(format!("{base}/orders/{id}")).send().await {
            Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
            _ => serde_json::Value::Null,
        };
        match v["status"].as_str() {
            Some(s @ ("confirmed" | "cancelled")) => {
                if s == "confirmed" {
                    confirmed += 1;
                } else {
                    cancelled += 1;
                }
                let times: Vec<chrono::DateTime<chrono::FixedOffset>> = v["history"]
                    .as_array()
                    .map(|h| {
                        h.iter()
                            .filter_map(|e| {
                                chrono::DateTime::parse_from_rfc3339(e["at"].as_str()?).ok()
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) {
                    e2e.push((*last - *first).to_std().unwrap_or_default());
                }
            }
            _ => {
                pending.push_back(id);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let total = started.elapsed();
    let report = OrdersReport {
        orders: results.len(),
        accepted: accepted.len(),
        rejected: results.len() - accepted.len(),
        confirmed,
        cancelled,
        unfinished: pending.len(),
        accept,
        end_to_end: Percentiles::of(&mut e2e),
        finished_per_second: (confirmed + cancelled) as f64 / total.as_secs_f64().max(1e-9),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        println!(
            "jetflow bench orders against {base}: {} orders from {} clients",
            report.orders, o.concurrency
        );
        print_measurement(&report.accept);
        println!(
            "  end to end (accepted → finished)       p50 {:>7.2} ms   p90 {:>7.2} ms   p99 {:>7.2} ms",
            report.end_to_end.p50_ms, report.end_to_end.p90_ms, report.end_to_end.p99_ms
        );
        println!(
            "  finished {:.0}/s; {} confirmed, {} cancelled, {} rejected, {} unfinished",
            report.finished_per_second,
            report.confirmed,
            report.cancelled,
            report.rejected,
            report.unfinished
        );
    }
    if report.unfinished > 0 {
        return Err(format!(
            "{} orders did not finish within {:?}",
            report.unfinished, o.timeout
        ));
    }
    Ok(())
}
