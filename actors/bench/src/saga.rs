//! The baseline of the order pipeline: a hand-written async-nats 4-event saga.
//!
//! `created → reserved → succeeded → confirmed`, on three streams like the real system's, with
//! durable pull consumers, `Nats-Msg-Id` on every publish and an ack per message after its
//! next event is stored: what the broker does for an order when nothing else (HTTP, JSON
//! schemas, a database) is in the way. A finished order is one whose `confirmed` event was
//! consumed. Everything it creates is deleted afterwards.

use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::PullConsumer};
use bytes::Bytes;
use futures::StreamExt;
use jetflow_runtime::{ConsumerSpec, StreamSpec};
use serde::Serialize;

use crate::BenchError;

/// What the baseline achieved.
#[derive(Debug, Clone, Serialize)]
pub struct SagaReport {
    /// Orders taken through all four events.
    pub orders: usize,
    /// Finished orders per second.
    pub per_second: f64,
}

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError::new(e)
}

/// Consumes `from`, publishes the next event on `to` for each message (pipelined, then every
/// PubAck awaited), acks, and counts.
async fn stage(
    js: jetstream::Context,
    consumer: PullConsumer,
    to: Option<String>,
    done: Arc<AtomicUsize>,
    total: usize,
) -> Result<(), BenchError> {
    let messages = consumer
        .stream()
        .max_messages_per_batch(512)
        .messages()
        .await
        .map_err(err)?;
    let mut chunks = messages.ready_chunks(512);
    while done.load(Ordering::Relaxed) < total {
        let Some(chunk) = chunks.next().await else {
            break;
        };
        let msgs: Vec<jetstream::Message> = chunk.into_iter().filter_map(Result::ok).collect();
        if let Some(to) = &to {
            let mut acks = Vec::with_capacity(msgs.len());
            for m in &msgs {
                let id = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                let mut h = HeaderMap::new();
                h.insert("Nats-Msg-Id", format!("{id}>{to}"));
                acks.push(
                    js.publish_with_headers(to.clone(), h, m.payload.clone())
                        .await
                        .map_err(err)?
                        .into_future(),
                );
            }
            for ack in futures::future::join_all(acks).await {
                ack.map_err(err)?;
            }
        }
        for r in futures::future::join_all(msgs.iter().map(|m| m.ack())).await {
            r.map_err(err)?;
        }
        done.fetch_add(msgs.len(), Ordering::Relaxed);
    }
    Ok(())
}

/// Takes `orders` orders through the saga on the broker at `url`, `in_flight` created events
/// outstanding at once; returns the finished orders per second.
pub async fn run(url: &str, orders: usize, in_flight: usize) -> Result<SagaReport, BenchError> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let client = async_nats::connect(url).await.map_err(err)?;
    let js = jetstream::new(client);
    let streams = ["O", "I", "P"].map(|s| format!("RAWSAGA_{s}_{id}"));
    let subject = |s: &str| format!("rawsaga.{id}.{s}");
    let specs = [
        StreamSpec::new(&streams[0], &[&subject("orders.>")]),
        StreamSpec::new(&streams[1], &[&subject("inventory.>")]),
        StreamSpec::new(&streams[2], &[&subject("payments.>")]),
    ];
    for spec in &specs {
        jetflow_runtime::topology::ensure_stream(&js, spec)
            .await
            .map_err(err)?;
    }
    let consumer = |stream: &str, durable: &str, filter: String| {
        let js = js.clone();
        let spec = ConsumerSpec::new(stream, durable, &[filter.as_str()]);
        async move {
            jetflow_runtime::topology::ensure_consumer(&js, &spec)
                .await
                .map_err(err)
        }
    };
    let stock = consumer(&streams[0], "stock", subject("orders.created")).await?;
    let payment = consumer(&streams[1], "payment", subject("inventory.reserved")).await?;
    let order = consumer(&streams[2], "order", subject("payments.succeeded")).await?;
    let confirm = consumer(&streams[0], "confirm", subject("orders.confirmed")).await?;
    let counters: Vec<Arc<AtomicUsize>> = (0..4).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let finished = counters[3].clone();
    let stages = vec![
        tokio::spawn(stage(
            js.clone(),
            stock,
            Some(subject("inventory.reserved")),
            counters[0].clone(),
            orders,
        )),
        tokio::spawn(stage(
            js.clone(),
            payment,
            Some(subject("payments.succeeded")),
            counters[1].clone(),
            orders,
        )),
        tokio::spawn(stage(
            js.clone(),
            order,
            Some(subject("orders.confirmed")),
            counters[2].clone(),
            orders,
        )),
        tokio::spawn(stage(
            js.clone(),
            confirm,
            None,
            counters[3].clone(),
            orders,
        )),
    ];
    let payload =
        Bytes::from_static(br#"{"order":"bench","items":[{"product_id":"p","quantity":1}]}"#);
    let started = Instant::now();
    let producer = async {
        let created = subject("orders.created");
        let mut pending = futures::stream::FuturesUnordered::new();
        for i in 0..orders {
            let mut h = HeaderMap::new();
            h.insert("Nats-Msg-Id", format!("{id}-{i}"));
            pending.push(
                js.publish_with_headers(created.clone(), h, payload.clone())
                    .await
                    .map_err(err)?
                    .into_future(),
            );
            while pending.len() >= in_flight {
                if let Some(r) = pending.next().await {
                    r.map_err(err)?;
                }
            }
        }
        while let Some(r) = pending.next().await {
            r.map_err(err)?;
        }
        Ok::<_, BenchError>(())
    };
    let result = async {
        producer.await?;
        let deadline = Instant::now() + Duration::from_secs(300);
        while finished.load(Ordering::Relaxed) < orders {
            if Instant::now() > deadline {
                return Err(err("the raw saga did not finish in 300s"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(SagaReport {
            orders,
            per_second: orders as f64 / started.elapsed().as_secs_f64().max(1e-9),
        })
    }
    .await;
    for s in stages {
        s.abort();
    }
    for s in &streams {
        let _ = js.delete_stream(s).await;
    }
    result
}
