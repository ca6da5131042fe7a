//! The span every delivery is handled in, and the line that says what became of it.
//!
//! Every log line written while a delivery is handled carries its subject, stream sequence,
//! delivery count, correlation id and trace id, whichever service writes it; a handler can add
//! its own fields (a business id) by returning a span of its own that nests these.

use crate::delivery::DeliveryMeta;
use crate::outcome::Outcome;
use crate::trace;

/// The span of one delivery to `target` (a handler or actor name).
pub fn delivery_span(target: &str, meta: &DeliveryMeta) -> tracing::Span {
    let span = tracing::info_span!(
        "delivery",
        target,
        subject = %meta.subject,
        stream_seq = meta.stream_sequence,
        delivered = meta.delivered,
        correlation_id = meta.correlation_id().unwrap_or(""),
        trace_id = meta.traceparent().and_then(trace::trace_id).unwrap_or(""),
    );
    crate::otel::continue_trace(&span, meta.traceparent());
    span
}

/// Logs what became of a delivery (inside its span): acks at debug (they are the normal
/// case, and many), retries at warn, dead letters at error.
pub fn log_outcome(outcome: &Outcome) {
    match outcome {
        Outcome::Ack => tracing::debug!(outcome = "ack", "delivery handled"),
        Outcome::Retry { reason, delay } => {
            tracing::warn!(outcome = "retry", %reason, retry_in_ms = delay.map(|d| d.as_millis() as u64), "delivery to be retried")
        }
        Outcome::DeadLetter(reason) => {
            tracing::error!(outcome = "dead_letter", kind = reason.kind(), %reason, "delivery dead-lettered")
        }
    }
}
