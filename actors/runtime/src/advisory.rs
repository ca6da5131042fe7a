//! Dead letters for deliveries that never got an answer.
//!
//! The bridge dead-letters a message on its last delivery when the handler answers. But a
//! handler can also never answer: the process is killed, the handler hangs past the ack wait.
//! Then JetStream gives up after `max_deliver` attempts and only says so in a
//! `MAX_DELIVERIES` advisory, a plain NATS message that nobody may be listening to. jetflow
//! captures those advisories in a stream of their own and consumes them durably: each one
//! becomes a dead letter of the original message (read back from its stream by sequence),
//! so exhausted messages are never silently dropped, whichever process was alive at the time.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use serde::Deserialize;

use crate::dead_letter;
use crate::delivery::DeliveryMeta;
use crate::middleware::{HandlerFn, Inbound};
use crate::outcome::{DeadLetterReason, Outcome};
use crate::route::Route;
use crate::topology::{ConsumerSpec, StreamSpec};

/// The stream that keeps max-deliveries advisories.
pub const STREAM: &str = "JETFLOW_ADVISORIES";
/// The advisories it captures.
pub const SUBJECTS: &str = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>";
/// The durable consumer that turns them into dead letters.
pub const CONSUMER: &str = "jetflow-max-deliveries";

/// The advisory stream (kept a day: it only needs to outlive an outage).
pub fn stream_spec() -> StreamSpec {
    let mut spec = StreamSpec::new(STREAM, &[SUBJECTS])
        .description("JetStream max-deliveries advisories, turned into dead letters by jetflow");
    spec.max_age = Duration::from_secs(24 * 3600);
    spec
}

/// What JetStream says when it gives up on a message.
#[derive(Debug, Deserialize)]
struct MaxDeliveries {
    stream: String,
    consumer: String,
    stream_seq: u64,
    deliveries: u32,
}

/// The route that dead-letters exhausted messages; `ignore` lists streams to skip.
pub fn route(js: jetstream::Context, ignore: Vec<String>) -> Route {
    let ignore = Arc::new(ignore);
    let handler: HandlerFn = Arc::new(move |inbound: Inbound| {
        let js = js.clone();
        let ignore = ignore.clone();
        Box::pin(async move { handle(&js, &ignore, inbound).await })
    });
    Route::from_handler(
        ConsumerSpec::new(STREAM, CONSUMER, &[])
            .ack_wait(Duration::from_secs(30))
            .max_deliver(10)
            .description("turns max-deliveries advisories into dead letters"),
        "max-deliveries",
        handler,
    )
    .concurrency(4)
}

async fn handle(js: &jetstream::Context, ignore: &[String], inbound: Inbound) -> Outcome {
    let advisory: MaxDeliveries = match serde_json::from_slice(&inbound.payload) {
        Ok(a) => a,
        Err(e) => return Outcome::poison(format!("not a max-deliveries advisory: {e}")),
    };
    if ignore.iter().any(|s| s == &advisory.stream) {
        return Outcome::Ack;
    }
    let stream = match js.get_stream_no_info(&advisory.stream).await {
        Ok(s) => s,
        Err(e) => return Outcome::retry(format!("stream {}: {e}", advisory.stream)),
    };
    let original = match stream.get_raw_message(advisory.stream_seq).await {
        Ok(m) => m,
        Err(e) => {
            use jetstream::stream::RawMessageErrorKind as K;
            if matches!(e.kind(), K::NoMessageFound) {
                tracing::warn!(stream = %advisory.stream, seq = advisory.stream_seq, "exhausted message is gone from its stream; nothing to dead-letter");
                return Outcome::Ack;
            }
            return Outcome::retry(format!(
                "reading {}#{}: {e}",
                advisory.stream, advisory.stream_seq
            ));
        }
    };
    let meta = DeliveryMeta {
        subject: original.subject.to_string(),
        stream: advisory.stream.clone(),
        consumer: advisory.consumer.clone(),
        stream_sequence: advisory.stream_seq,
        delivered: advisory.deliveries,
        max_deliver: advisory.deliveries,
        ack_wait: Duration::ZERO,
        headers: original.headers.clone(),
    };
    let reason = DeadLetterReason::Exhausted {
        deliveries: advisory.deliveries,
        last_error: "no acknowledgement within the ack wait (handler crashed, hung or was killed)"
            .to_string(),
    };
    match dead_letter::publish(js, &meta, original.payload.clone(), &reason).await {
        Ok(_) => Outcome::Ack,
        Err(e) => Outcome::retry(e.to_string()),
    }
}
