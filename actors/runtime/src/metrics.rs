//! Prometheus metrics of the runtime.
//!
//! Every metric the framework exports is declared here, once, so that the names in
//! the metrics table of `docs/operations.md`, the Grafana dashboard and the alerts cannot drift from the code. They live in the
//! process-wide default registry: one process exports one `/metrics` page, whatever roles
//! it runs, and applications register their own metrics beside these.

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    TextEncoder,
};

/// Buckets for handler and publish latencies: half a millisecond to ten seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The runtime's metric families.
pub struct Metrics {
    /// `jetflow_actor_mailbox_depth{actor,shard}`: messages sent to an actor and not yet
    /// handled, per instance (shard) of a pool.
    pub actor_mailbox_depth: IntGaugeVec,
    /// `jetflow_actor_messages_total{actor,outcome}`: messages an actor handled, by outcome.
    pub actor_messages: IntCounterVec,
    /// `jetflow_actor_handle_seconds{actor}`: time from enqueue to reply.
    pub actor_handle_seconds: HistogramVec,
    /// `jetflow_actor_restarts_total{actor}`: restarts done by the supervisor.
    pub actor_restarts: IntCounterVec,
    /// `jetflow_actor_panics_total{actor}`: panics caught inside an actor.
    pub actor_panics: IntCounterVec,
    /// `jetflow_actor_failed{actor}`: 1 once an actor exhausted its restart budget.
    pub actor_failed: IntGaugeVec,
    /// `jetflow_nats_connected`: 1 while the bridge holds a live connection.
    pub nats_connected: IntGauge,
    /// `jetflow_nats_connections_total`: connections the bridge established after the first.
    pub nats_connections: IntCounterVec,
    /// `jetflow_nats_published_total{subject}`: messages stored by JetStream (PubAck received).
    pub nats_published: IntCounterVec,
    /// `jetflow_nats_publish_errors_total{subject}`: publishes that failed or timed out.
    pub nats_publish_errors: IntCounterVec,
    /// `jetflow_nats_publish_seconds{subject}`: publish to PubAck latency.
    pub nats_publish_seconds: HistogramVec,
    /// `jetflow_nats_consumed_total{subject,outcome}`: deliveries and what became of them.
    pub nats_consumed: IntCounterVec,
    /// `jetflow_consumer_pending{consumer}`: messages not yet delivered, read from JetStream.
    pub consumer_pending: IntGaugeVec,
    /// `jetflow_consumer_ack_pending{consumer}`: delivered and not yet acknowledged.
    pub consumer_ack_pending: IntGaugeVec,
    /// `jetflow_consumer_redelivered{consumer}`: messages redelivered at least once, still pending.
    pub consumer_redelivered: IntGaugeVec,
    /// `jetflow_dlq_messages_total{subject}`: messages dead-lettered, by original subject.
    pub dlq_messages: IntCounterVec,
    /// `jetflow_breaker_state{breaker}`: 0 closed, 1 half-open, 2 open.
    pub breaker_state: IntGaugeVec,
    /// `jetflow_breaker_calls_total{breaker,result}`: calls through a breaker.
    pub breaker_calls: IntCounterVec,
    /// `jetflow_pace_limit{downstream}`: calls a [`Pacer`](crate::pacing::Pacer) lets in
    /// flight to a downstream now.
    pub pace_limit: IntGaugeVec,
    /// `jetflow_pace_pushbacks_total{downstream}`: calls a downstream pushed back (`429`,
    /// `503` with `Retry-After`), made again after its pause.
    pub pace_pushbacks: IntCounterVec,
    /// `jetflow_breaker_transitions_total{breaker,to}`: state changes of a breaker.
    pub breaker_transitions: IntCounterVec,
    /// `jetflow_db_commits_total`: write transactions committed by the runtime (handler
    /// batches, commands, outbox bookkeeping is not counted: it does not commit state).
    pub db_commits: IntCounter,
    /// `jetflow_batch_size{route}`: deliveries handled per transaction.
    pub batch_size: HistogramVec,
    /// `jetflow_inbox_duplicates_total{consumer}`: deliveries the inbox found already applied.
    pub inbox_duplicates: IntCounterVec,
    /// `jetflow_outbox_pending`: outbox rows not yet acknowledged by JetStream.
    pub outbox_pending: IntGauge,
    /// `jetflow_outbox_published_total`: outbox rows published.
    pub outbox_published: IntCounter,
    /// `jetflow_outbox_publish_errors_total`: outbox publishes that failed (retried later).
    pub outbox_publish_errors: IntCounter,
    /// `jetflow_outbox_dead_letters_total`: outbox rows JetStream kept refusing, moved to the
    /// dead-letter stream.
    pub outbox_dead_letters: IntCounter,
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    prometheus::register(Box::new(vec.clone())).expect("metric registered once");
    vec
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    prometheus::register(Box::new(vec.clone())).expect("metric registered once");
    vec
}

fn histogram_vec(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    let vec = HistogramVec::new(opts, labels).expect("valid metric definition");
    prometheus::register(Box::new(vec.clone())).expect("metric registered once");
    vec
}

fn counter(name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric definition");
    prometheus::register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn gauge(name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric definition");
    prometheus::register(Box::new(g.clone())).expect("metric registered once");
    g
}

/// Buckets for batch sizes: 1 to 1024 deliveries.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let nats_connected = gauge(
        "jetflow_nats_connected",
        "1 while the NATS bridge holds a live connection, else 0.",
    );
    let batch_size = HistogramVec::new(
        HistogramOpts::new(
            "jetflow_batch_size",
            "Deliveries handled in one transaction, by route.",
        )
        .buckets(BATCH_BUCKETS.to_vec()),
        &["route"],
    )
    .expect("valid metric definition");
    prometheus::register(Box::new(batch_size.clone())).expect("metric registered once");
    Metrics {
        actor_mailbox_depth: gauge_vec(
            "jetflow_actor_mailbox_depth",
            "Messages sent to an actor and not yet handled (live), per instance (shard) of it.",
            &["actor", "shard"],
        ),
        actor_messages: counter_vec(
            "jetflow_actor_messages_total",
            "Messages handled by an actor, by outcome.",
            &["actor", "outcome"],
        ),
        actor_handle_seconds: histogram_vec(
            "jetflow_actor_handle_seconds",
            "Time from sending a message to an actor to its reply (queueing and handling).",
            &["actor"],
        ),
        actor_restarts: counter_vec(
            "jetflow_actor_restarts_total",
            "Actor restarts done by the jetflow supervisor.",
            &["actor"],
        ),
        actor_panics: counter_vec(
            "jetflow_actor_panics_total",
            "Panics caught inside an actor and turned into a restart.",
            &["actor"],
        ),
        actor_failed: gauge_vec(
            "jetflow_actor_failed",
            "1 once an actor exhausted its restart budget and was left stopped.",
            &["actor"],
        ),
        nats_connected,
        nats_connections: counter_vec(
            "jetflow_nats_connections_total",
            "NATS connections established by the bridge (the first one and every reconnect).",
            &["bridge"],
        ),
        nats_published: counter_vec(
            "jetflow_nats_published_total",
            "Messages stored by JetStream (PubAck received), by subject.",
            &["subject"],
        ),
        nats_publish_errors: counter_vec(
            "jetflow_nats_publish_errors_total",
            "Publishes that failed, timed out or found no connection, by subject.",
            &["subject"],
        ),
        nats_publish_seconds: histogram_vec(
            "jetflow_nats_publish_seconds",
            "Time from publish to PubAck, by subject.",
            &["subject"],
        ),
        nats_consumed: counter_vec(
            "jetflow_nats_consumed_total",
            "JetStream deliveries handled, by subject and outcome (ack, retry, dead_letter, ack_error).",
            &["subject", "outcome"],
        ),
        consumer_pending: gauge_vec(
            "jetflow_consumer_pending",
            "Messages of a durable consumer not yet delivered, as JetStream reports it.",
            &["consumer"],
        ),
        consumer_ack_pending: gauge_vec(
            "jetflow_consumer_ack_pending",
            "Messages of a durable consumer delivered and not yet acknowledged.",
            &["consumer"],
        ),
        consumer_redelivered: gauge_vec(
            "jetflow_consumer_redelivered",
            "Messages of a durable consumer redelivered and still not acknowledged.",
            &["consumer"],
        ),
        dlq_messages: counter_vec(
            "jetflow_dlq_messages_total",
            "Messages sent to the dead-letter stream, by original subject.",
            &["subject"],
        ),
        breaker_state: gauge_vec(
            "jetflow_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            &["breaker"],
        ),
        pace_limit: gauge_vec(
            "jetflow_pace_limit",
            "Calls let in flight to a downstream now (grows on answers, halves on push-back).",
            &["downstream"],
        ),
        pace_pushbacks: counter_vec(
            "jetflow_pace_pushbacks_total",
            "Calls a downstream pushed back (429, or 503 with Retry-After), made again after its pause.",
            &["downstream"],
        ),
        breaker_calls: counter_vec(
            "jetflow_breaker_calls_total",
            "Calls through a circuit breaker, by result (success, failure, timeout, rejected).",
            &["breaker", "result"],
        ),
        breaker_transitions: counter_vec(
            "jetflow_breaker_transitions_total",
            "Circuit breaker state changes, by new state.",
            &["breaker", "to"],
        ),
        db_commits: counter(
            "jetflow_db_commits_total",
            "Write transactions committed by jetflow (handler batches and commands).",
        ),
        batch_size,
        inbox_duplicates: counter_vec(
            "jetflow_inbox_duplicates_total",
            "Deliveries the inbox found already applied (redeliveries, re-publishes), by consumer.",
            &["consumer"],
        ),
        outbox_pending: gauge(
            "jetflow_outbox_pending",
            "Outbox rows not yet acknowledged by JetStream.",
        ),
        outbox_published: counter("jetflow_outbox_published_total", "Outbox rows published."),
        outbox_publish_errors: counter(
            "jetflow_outbox_publish_errors_total",
            "Outbox publishes that failed and will be retried.",
        ),
        outbox_dead_letters: counter(
            "jetflow_outbox_dead_letters_total",
            "Outbox rows JetStream kept refusing, moved to the dead-letter stream.",
        ),
    }
});

/// The runtime's metrics, registered in the default registry on first use.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Creates the per-subject series of `subjects` at 0 (published, publish errors, consumed by
/// outcome, dead letters), so dashboards and `increase()`-based alerts see the first event.
pub fn init_subjects<S: AsRef<str>>(subjects: &[S]) {
    let m = metrics();
    for subject in subjects {
        let s = subject.as_ref();
        m.nats_published.with_label_values(&[s]);
        m.nats_publish_errors.with_label_values(&[s]);
        m.dlq_messages.with_label_values(&[s]);
        for outcome in ["ack", "retry", "dead_letter", "ack_error"] {
            m.nats_consumed.with_label_values(&[s, outcome]);
        }
    }
}

/// Renders every metric of the default registry in the Prometheus text format.
pub fn render() -> Result<String, prometheus::Error> {
    // Touch the runtime metrics so that a fresh process exports them even before use.
    let _ = metrics();
    let families = prometheus::gather();
    let mut buf = Vec::new();
    TextEncoder::new().encode(&families, &mut buf)?;
    String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// The content type of [`render`]'s output.
pub fn content_type() -> &'static str {
    prometheus::TEXT_FORMAT
}
