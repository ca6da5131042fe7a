//! The pull loop of one route: fetch, hand over, decide, acknowledge.
//!
//! Backpressure comes from the loop's shape: at most `concurrency` deliveries are being
//! handled, and the pull batch is the same size, so the process never holds more messages
//! than it can hand over; JetStream's `max_ack_pending` bounds the rest. While a handler
//! works, the loop sends in-progress acks so a slow but healthy handler is not redelivered
//! behind its back. The acknowledgement is sent only after the handler answered: work in
//! flight when the loop is dropped (a lost connection, a restart) is redelivered, not lost.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;

use crate::dead_letter;
use crate::delivery::DeliveryMeta;
use crate::metrics::metrics;
use crate::middleware::{HandlerFn, Inbound};
use crate::outcome::{Decision, Outcome, decide};
use crate::route::Route;
use crate::topology::{ConsumerSpec, ensure_consumer};

/// Delay before re-creating a pull subscription that ended or failed.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(500);
/// Delay of a retry after the dead-letter publish itself failed.
const DEAD_LETTER_FAILED_DELAY: Duration = Duration::from_secs(5);

/// Runs a route until the future is dropped.
pub(crate) async fn run(js: jetstream::Context, route: Route) {
    let handler = route.handler();
    let spec = route.consumer.clone();
    loop {
        let consumer = match ensure_consumer(&js, &spec).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(consumer = %spec.durable, error = %e, "cannot create consumer; retrying");
                tokio::time::sleep(RESUBSCRIBE_DELAY * 4).await;
                continue;
            }
        };
        let messages = consumer
            .stream()
            .max_messages_per_batch(route.concurrency)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await;
        let messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(consumer = %spec.durable, error = %e, "cannot pull; retrying");
                tokio::time::sleep(RESUBSCRIBE_DELAY).await;
                continue;
            }
        };
        tracing::info!(consumer = %spec.durable, stream = %spec.stream, target = route.target(), "consuming");
        // Stop at the first error that ends the subscription; transient ones are logged.
        let messages = messages.take_while(|item| {
            let keep = match item {
                Ok(_) => true,
                Err(e) => {
                    use jetstream::consumer::pull::MessagesErrorKind as K;
                    tracing::warn!(consumer = %spec.durable, error = %e, "pull error");
                    !matches!(
                        e.kind(),
                        K::ConsumerDeleted
                            | K::NoResponders
                            | K::PushBasedConsumer
                            | K::RequestLimitExceeded
                    )
                }
            };
            futures::future::ready(keep)
        });
        messages
            .for_each_concurrent(route.concurrency, |item| {
                let js = js.clone();
                let handler = handler.clone();
                let spec = &spec;
                async move {
                    if let Ok(msg) = item {
                        handle(&js, spec, &handler, msg).await;
                    }
                }
            })
            .await;
        tracing::info!(consumer = %spec.durable, "pull subscription ended; re-subscribing");
        tokio::time::sleep(RESUBSCRIBE_DELAY).await;
    }
}

/// The facts the handler gets about a delivery.
fn meta_of(msg: &jetstream::Message, spec: &ConsumerSpec) -> Option<DeliveryMeta> {
    let info = match msg.info() {
        Ok(info) => info,
        Err(e) => {
            tracing::warn!(subject = %msg.subject, error = %e, "message without JetStream metadata");
            return None;
        }
    };
    Some(DeliveryMeta {
        subject: msg.subject.to_string(),
        stream: info.stream.to_string(),
        consumer: info.consumer.to_string(),
        stream_sequence: info.stream_sequence,
        delivered: u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX),
        max_deliver: spec.max_deliver,
        ack_wait: spec.ack_wait,
        headers: msg.headers.clone().unwrap_or_default(),
    })
}

/// How often to tell JetStream a delivery is still being worked on.
fn progress_interval(spec: &ConsumerSpec) -> Duration {
    let wait = spec
        .backoff
        .first()
        .copied()
        .unwrap_or(spec.ack_wait)
        .min(spec.ack_wait);
    (wait / 2).max(Duration::from_millis(100))
}

/// Runs the handler while sending in-progress acks.
async fn run_handler(
    handler: &HandlerFn,
    inbound: Inbound,
    msg: &jetstream::Message,
    every: Duration,
) -> Outcome {
    let fut = handler(inbound);
    tokio::pin!(fut);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            outcome = &mut fut => return outcome,
            _ = ticker.tick() => {
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %e, "in-progress ack failed");
                }
            }
        }
    }
}

/// Handles one delivery end to end.
async fn handle(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    handler: &HandlerFn,
    msg: jetstream::Message,
) {
    let Some(meta) = meta_of(&msg, spec) else {
        return;
    };
    let inbound = Inbound {
        payload: msg.payload.clone(),
        meta: meta.clone(),
    };
    let outcome = run_handler(handler, inbound, &msg, progress_interval(spec)).await;
    if let Outcome::Retry { reason, .. } = &outcome {
        tracing::debug!(subject = %meta.subject, stream_seq = meta.stream_sequence, delivered = meta.delivered, %reason, "delivery will be retried");
    }
    let decision = decide(outcome, meta.delivered, meta.max_deliver);
    apply(js, &msg, &meta, decision).await;
}

/// Carries out a decision; records it in `jetflow_nats_consumed_total`.
pub(crate) async fn apply(
    js: &jetstream::Context,
    msg: &jetstream::Message,
    meta: &DeliveryMeta,
    decision: Decision,
) {
    let (label, result) = match decision {
        Decision::Ack => ("ack", msg.ack().await),
        Decision::Nak(delay) => ("retry", msg.ack_with(AckKind::Nak(Some(delay))).await),
        Decision::DeadLetter(reason) => {
            match dead_letter::publish(js, meta, msg.payload.clone(), &reason).await {
                Ok(_) => ("dead_letter", msg.ack_with(AckKind::Term).await),
                Err(e) => {
                    tracing::error!(subject = %meta.subject, stream_seq = meta.stream_sequence, error = %e, "dead-letter publish failed; will retry the delivery");
                    (
                        "retry",
                        msg.ack_with(AckKind::Nak(Some(DEAD_LETTER_FAILED_DELAY)))
                            .await,
                    )
                }
            }
        }
    };
    let label = match result {
        Ok(()) => label,
        Err(e) => {
            tracing::warn!(subject = %meta.subject, stream_seq = meta.stream_sequence, error = %e, "acknowledgement failed; JetStream will redeliver");
            "ack_error"
        }
    };
    metrics()
        .nats_consumed
        .with_label_values(&[meta.subject.as_str(), label])
        .inc();
}

/// Reads consumer state from JetStream into `jetflow_consumer_*` gauges, every `every`.
pub(crate) async fn poll_pending(
    js: jetstream::Context,
    specs: Vec<ConsumerSpec>,
    every: Duration,
) {
    let m = metrics();
    loop {
        for spec in &specs {
            let info = async {
                let stream = js.get_stream_no_info(&spec.stream).await.ok()?;
                stream.consumer_info(&spec.durable).await.ok()
            }
            .await;
            if let Some(info) = info {
                let label = [spec.durable.as_str()];
                m.consumer_pending
                    .with_label_values(&label)
                    .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
                m.consumer_ack_pending
                    .with_label_values(&label)
                    .set(i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX));
                m.consumer_redelivered
                    .with_label_values(&label)
                    .set(i64::try_from(info.num_redelivered).unwrap_or(i64::MAX));
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_sent_twice_per_ack_wait() {
        let spec = ConsumerSpec::new("S", "d", &[]).ack_wait(Duration::from_secs(10));
        assert_eq!(progress_interval(&spec), Duration::from_secs(5));
        let spec = spec.backoff(vec![Duration::from_secs(2), Duration::from_secs(4)]);
        assert_eq!(progress_interval(&spec), Duration::from_secs(1));
    }
}
