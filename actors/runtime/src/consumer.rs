//! The pull loop of one route: pull, hand over, decide, acknowledge.
//!
//! Messages come from successive pull requests of a bounded size and expiry, so the process
//! never holds more than it asked for and can stop cleanly: when the route is told to stop,
//! it issues no new request, handles and acknowledges what the requests in flight still
//! deliver, and returns. JetStream's `max_ack_pending` bounds the rest.
//!
//! A route that handles one delivery at a time runs up to `concurrency` at once; a batched
//! route takes what is waiting (lingering a moment only while busy) and hands the batch
//! over, one batch at a time, so its deliveries keep their stream order. While a handler
//! works, the loop sends in-progress acks so a slow but healthy handler is not redelivered
//! behind its back. The acknowledgement is sent only after the handler answered: work in
//! flight when the loop is dropped (a lost connection, a crash) is redelivered, not lost.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::{FutureExt, Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::dead_letter;
use crate::delivery::DeliveryMeta;
use crate::metrics::metrics;
use crate::middleware::{HandlerFn, Inbound};
use crate::outcome::{Decision, Outcome, decide};
use crate::route::{BatchConfig, BatchHandlerFn, Handling, Route};
use crate::topology::{ConsumerSpec, ensure_consumer};

/// Delay before re-creating a pull subscription that ended or failed.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(500);
/// Delay of a retry after the dead-letter publish itself failed.
const DEAD_LETTER_FAILED_DELAY: Duration = Duration::from_secs(5);
/// How long one pull request waits for messages: also the longest a stopping route waits
/// for the request in flight to end.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// A route prefetches only while its handlers are quick: when half a request took longer
/// than this to be taken, the next request waits until this one is done, so messages never
/// sit in a second request's buffer (where nothing keeps them in progress) behind slow
/// handlers; async-nats ends a request 5 s after its expiry, whatever it still buffers.
const PREFETCH_WITHIN: Duration = Duration::from_millis(500);

/// Runs a route until `stop` is cancelled (then finishes what was pulled) or the future is
/// dropped.
pub(crate) async fn run(js: jetstream::Context, route: Route, stop: CancellationToken) {
    let spec = route.consumer.clone();
    loop {
        if stop.is_cancelled() {
            return;
        }
        let consumer = match ensure_consumer(&js, &spec).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(consumer = %spec.durable, error = %e, "cannot create consumer; retrying");
                if pause(&stop, RESUBSCRIBE_DELAY * 4).await {
                    return;
                }
                continue;
            }
        };
        tracing::info!(consumer = %spec.durable, stream = %spec.stream, target = route.target(), "consuming");
        let double_ack = route.acks_confirmed();
        match &route.handling {
            Handling::Each {
                handler,
                concurrency,
            } => {
                pulls(consumer, *concurrency, true, stop.clone())
                    .for_each_concurrent(*concurrency, |msg| {
                        let (js, spec) = (&js, &spec);
                        async move { handle(js, spec, handler, msg, double_ack).await }
                    })
                    .await;
            }
            Handling::Batch { handler, config } => {
                let batches = Batches {
                    js: &js,
                    spec: &spec,
                    handler,
                    config: *config,
                    double_ack,
                };
                batches.run(consumer, &stop).await;
            }
        }
        if stop.is_cancelled() {
            tracing::info!(consumer = %spec.durable, "stopped consuming");
            return;
        }
        tracing::info!(consumer = %spec.durable, "pull subscription ended; re-subscribing");
        if pause(&stop, RESUBSCRIBE_DELAY).await {
            return;
        }
    }
}

/// Sleeps, or returns true at once when `stop` is cancelled.
async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

struct Pulls {
    consumer: PullConsumer,
    size: usize,
    /// The requests in flight (at most two), read from whichever has a message.
    active: futures::stream::SelectAll<jetstream::consumer::pull::Batch>,
    /// Messages taken since the last request was made.
    since_request: usize,
    /// When the last request was made.
    requested_at: tokio::time::Instant,
    prefetch: bool,
    stop: CancellationToken,
}

impl Pulls {
    async fn request(&mut self) -> Option<()> {
        let batch = self
            .consumer
            .batch()
            .max_messages(self.size)
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        match batch {
            Ok(batch) => {
                self.active.push(batch);
                self.since_request = 0;
                self.requested_at = tokio::time::Instant::now();
                Some(())
            }
            Err(e) => {
                tracing::warn!(consumer = ?self.consumer.cached_info().name, error = %e, "pull request failed");
                None
            }
        }
    }
}

/// The messages of successive pull requests of `size` messages each. With `prefetch`, the
/// next request is made once half as many messages were taken since the last one, and both
/// are read at once (JetStream hands messages to waiting requests in turn): a route that
/// handles one delivery at a time never waits a round trip between requests, nor for a
/// request to expire while the other holds messages. At most two requests are in flight,
/// and the second is made only while the handlers are quick (`PREFETCH_WITHIN`). A batched route does not prefetch: what it holds
/// while a batch runs is kept alive with in-progress acks, and a second request would hold
/// more than that. Ends at an error that ends the subscription, or once `stop` is cancelled
/// and the requests in flight are done.
fn pulls(
    consumer: PullConsumer,
    size: usize,
    prefetch: bool,
    stop: CancellationToken,
) -> impl Stream<Item = jetstream::Message> + Send {
    let state = Pulls {
        consumer,
        size: size.max(1),
        active: futures::stream::SelectAll::new(),
        since_request: 0,
        requested_at: tokio::time::Instant::now(),
        prefetch,
        stop,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.active.is_empty() {
                if st.stop.is_cancelled() {
                    return None;
                }
                st.request().await?;
            }
            if st.prefetch
                && st.active.len() < 2
                && st.since_request * 2 >= st.size
                && st.requested_at.elapsed() < PREFETCH_WITHIN
                && !st.stop.is_cancelled()
            {
                st.request().await?;
            }
            match st.active.next().await {
                Some(Ok(msg)) => {
                    st.since_request += 1;
                    return Some((msg, st));
                }
                Some(Err(e)) => {
                    // The consumer is gone, or the server refuses the request: end here; the
                    // route re-creates the consumer and pulls again after a pause.
                    tracing::warn!(error = %e, "pull error; re-subscribing");
                    return None;
                }
                // Every request in flight ended: make the next one.
                None => {}
            }
        }
    })
}

/// Gathers batches: the first delivery, whatever else is already here, and (while busy)
/// what arrives within the linger, up to the maximum; hands them over one batch at a time.
/// A batch route's consumer loop and what it needs.
struct Batches<'a> {
    js: &'a jetstream::Context,
    spec: &'a ConsumerSpec,
    handler: &'a BatchHandlerFn,
    config: BatchConfig,
    double_ack: bool,
}

impl Batches<'_> {
    /// Pulls a batch's worth at a time. While a batch is handled, what arrives is read into
    /// the next one (at most a batch) and told to JetStream to be in progress, so nothing
    /// pulled waits unacknowledged behind a long batch and comes back behind the route's
    /// back; a stopping route hands over what it read before it returns.
    async fn run(&self, consumer: PullConsumer, stop: &CancellationToken) {
        let config = self.config;
        let stream = pulls(consumer, config.max, false, stop.clone());
        tokio::pin!(stream);
        let every = progress_interval(self.spec);
        let mut busy = false;
        let mut ended = false;
        let mut carried: Vec<jetstream::Message> = Vec::new();
        loop {
            let mut batch = std::mem::take(&mut carried);
            if batch.is_empty() {
                if ended {
                    break;
                }
                match stream.next().await {
                    Some(first) => batch.push(first),
                    None => break,
                }
            }
            while batch.len() < config.max && !ended {
                match stream.next().now_or_never() {
                    Some(Some(m)) => batch.push(m),
                    Some(None) => ended = true,
                    None => break,
                }
            }
            if busy && !ended && batch.len() < config.max && !config.linger.is_zero() {
                let until = tokio::time::Instant::now() + config.linger;
                while batch.len() < config.max {
                    match tokio::time::timeout_at(until, stream.next()).await {
                        Ok(Some(m)) => batch.push(m),
                        Ok(None) => {
                            ended = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            busy = batch.len() > 1;
            let work = handle_batch(self.js, self.spec, self.handler, batch, self.double_ack);
            tokio::pin!(work);
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! {
                    biased;
                    () = &mut work => break,
                    _ = ticker.tick() => {
                        for msg in &carried {
                            if let Err(e) = msg.ack_with(AckKind::Progress).await {
                                tracing::debug!(error = %e, "in-progress ack failed");
                            }
                        }
                    }
                    next = stream.next(), if !ended && carried.len() < config.max => match next {
                        Some(m) => carried.push(m),
                        None => ended = true,
                    },
                }
            }
        }
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

/// Awaits `work` while sending in-progress acks for `msgs` every `every`.
async fn with_progress<T>(
    work: impl std::future::Future<Output = T>,
    msgs: &[&jetstream::Message],
    every: Duration,
) -> T {
    tokio::pin!(work);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = ticker.tick() => {
                for msg in msgs {
                    if let Err(e) = msg.ack_with(AckKind::Progress).await {
                        tracing::debug!(error = %e, "in-progress ack failed");
                    }
                }
            }
        }
    }
}

/// What deciding and acknowledging a delivery needs of it once its handler took the rest.
struct Facts {
    subject: String,
    stream_sequence: u64,
    delivered: u32,
    max_deliver: u32,
}

impl Facts {
    fn of(meta: &DeliveryMeta) -> Self {
        Self {
            subject: meta.subject.clone(),
            stream_sequence: meta.stream_sequence,
            delivered: meta.delivered,
            max_deliver: meta.max_deliver,
        }
    }
}

/// Handles one delivery end to end.
async fn handle(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    handler: &HandlerFn,
    msg: jetstream::Message,
    double_ack: bool,
) {
    let Some(meta) = meta_of(&msg, spec) else {
        return;
    };
    let facts = Facts::of(&meta);
    let inbound = Inbound {
        payload: msg.payload.clone(),
        meta,
    };
    let outcome = with_progress(handler(inbound), &[&msg], progress_interval(spec)).await;
    if let Outcome::Retry { reason, .. } = &outcome {
        tracing::debug!(subject = %facts.subject, stream_seq = facts.stream_sequence, delivered = facts.delivered, %reason, "delivery will be retried");
    }
    let decision = decide(outcome, facts.delivered, facts.max_deliver);
    apply(js, spec, &msg, &facts, decision, double_ack).await;
}

/// Handles one batch end to end: one outcome per delivery, then every acknowledgement.
async fn handle_batch(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    handler: &BatchHandlerFn,
    msgs: Vec<jetstream::Message>,
    double_ack: bool,
) {
    let mut kept = Vec::with_capacity(msgs.len());
    let mut inbound = Vec::with_capacity(msgs.len());
    for msg in msgs {
        if let Some(meta) = meta_of(&msg, spec) {
            let facts = Facts::of(&meta);
            inbound.push(Inbound {
                payload: msg.payload.clone(),
                meta,
            });
            kept.push((msg, facts));
        }
    }
    if kept.is_empty() {
        return;
    }
    let refs: Vec<&jetstream::Message> = kept.iter().map(|(m, _)| m).collect();
    let outcomes = with_progress(handler(inbound), &refs, progress_interval(spec)).await;
    let acks = kept
        .iter()
        .zip(outcomes.into_iter().chain(std::iter::repeat_with(|| {
            Outcome::retry("the batch handler gave no outcome")
        })))
        .map(|((msg, facts), outcome)| {
            let decision = decide(outcome, facts.delivered, facts.max_deliver);
            apply(js, spec, msg, facts, decision, double_ack)
        });
    futures::future::join_all(acks).await;
}

/// Carries out a decision; records it in `jetflow_nats_consumed_total`.
async fn apply(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    msg: &jetstream::Message,
    facts: &Facts,
    decision: Decision,
    double_ack: bool,
) {
    let (label, result) = match decision {
        Decision::Ack if double_ack => ("ack", msg.double_ack().await),
        Decision::Ack => ("ack", msg.ack().await),
        Decision::Nak(delay) => ("retry", msg.ack_with(AckKind::Nak(Some(delay))).await),
        Decision::DeadLetter(reason) => {
            // The handler took the delivery's facts; read them again (a rare path).
            let published = match meta_of(msg, spec) {
                Some(meta) => dead_letter::publish(js, &meta, msg.payload.clone(), &reason)
                    .await
                    .map(|_| ()),
                None => Ok(()),
            };
            match published {
                Ok(()) => ("dead_letter", msg.ack_with(AckKind::Term).await),
                Err(e) => {
                    tracing::error!(subject = %facts.subject, stream_seq = facts.stream_sequence, error = %e, "dead-letter publish failed; will retry the delivery");
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
            tracing::warn!(subject = %facts.subject, stream_seq = facts.stream_sequence, error = %e, "acknowledgement failed; JetStream will redeliver");
            "ack_error"
        }
    };
    metrics()
        .nats_consumed
        .with_label_values(&[facts.subject.as_str(), label])
        .inc();
}

/// Reads consumer state from JetStream into `jetflow_consumer_*` gauges, every `every`,
/// until `stop`.
pub(crate) async fn poll_pending(
    js: jetstream::Context,
    specs: Vec<ConsumerSpec>,
    every: Duration,
    stop: CancellationToken,
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
        if pause(&stop, every).await {
            return;
        }
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
