//! The NATS header names jetflow reads and writes, in one place.

/// JetStream's de-duplication id: the event id, so a re-publish is dropped.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// The correlation id of the business flow the message belongs to.
pub const CORRELATION_ID: &str = "X-Correlation-ID";
/// W3C trace context, so one flow's spans join across services.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace state that goes with `traceparent`.
pub const TRACESTATE: &str = "tracestate";

/// Dead letters: the subject the message was first published on.
pub const DLQ_SUBJECT: &str = "Jetflow-Dlq-Subject";
/// Dead letters: the stream it was stored in.
pub const DLQ_STREAM: &str = "Jetflow-Dlq-Stream";
/// Dead letters: its sequence in that stream.
pub const DLQ_SEQUENCE: &str = "Jetflow-Dlq-Sequence";
/// Dead letters: the consumer that gave up on it.
pub const DLQ_CONSUMER: &str = "Jetflow-Dlq-Consumer";
/// Dead letters: how many times it was delivered.
pub const DLQ_DELIVERIES: &str = "Jetflow-Dlq-Deliveries";
/// Dead letters: `poison`, `rejected` or `exhausted`.
pub const DLQ_REASON: &str = "Jetflow-Dlq-Reason";
/// Dead letters: the error, one line.
pub const DLQ_ERROR: &str = "Jetflow-Dlq-Error";
/// Dead letters: when it was dead-lettered (RFC 3339).
pub const DLQ_TIME: &str = "Jetflow-Dlq-Time";
/// Dead letters: the original `Nats-Msg-Id`, if it had one.
pub const DLQ_MSG_ID: &str = "Jetflow-Dlq-Msg-Id";
/// On a dead letter whose payload could not travel with it (the letter was refused too, too
/// large): the payload's size in bytes. The payload stays in the outbox row (parked).
pub const DLQ_PAYLOAD_OMITTED: &str = "Jetflow-Dlq-Payload-Omitted";
/// A replayed message: the dead-letter sequence it was replayed from.
pub const REPLAYED_FROM: &str = "Jetflow-Replayed-From";
/// A replayed message: the `Nats-Msg-Id` it was first published with (inboxes key on it, so
/// replaying something already applied changes nothing).
pub const ORIGINAL_MSG_ID: &str = "Jetflow-Original-Msg-Id";
