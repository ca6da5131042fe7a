//! The dead-letter stream: where poison and exhausted messages go, and how they come back.
//!
//! A dead letter is the original payload and headers, published to `dlq.<original subject>`
//! with `Jetflow-Dlq-*` headers saying where it came from (stream, sequence, consumer), how
//! often it was delivered and why it was given up. Its `Nats-Msg-Id` is derived from the
//! original stream and sequence, so dead-lettering the same message twice (a crash between
//! the dead-letter publish and the `+TERM`) stores it once. [`list`] reads the stream back and
//! [`replay`] re-publishes a dead letter to its original subject.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;

use crate::delivery::DeliveryMeta;
use crate::headers;
use crate::metrics::metrics;
use crate::outbox::OutboxRow;
use crate::outcome::DeadLetterReason;
use crate::publisher::OutgoingMessage;
use crate::topology::StreamSpec;

/// The dead-letter stream's name.
pub const STREAM: &str = "DLQ";
/// The first token of every dead-letter subject.
pub const SUBJECT_PREFIX: &str = "dlq";
/// Longest error text kept in a header.
const MAX_ERROR_LEN: usize = 1024;

/// The dead-letter stream: `dlq.>`, kept 30 days.
pub fn stream_spec() -> StreamSpec {
    let mut spec = StreamSpec::new(STREAM, &["dlq.>"])
        .description("jetflow dead letters: poison and exhausted messages, with their reason");
    spec.max_age = Duration::from_secs(30 * 24 * 3600);
    spec
}

/// `dlq.<subject>`.
pub fn subject_for(original: &str) -> String {
    format!("{SUBJECT_PREFIX}.{original}")
}

/// The de-duplication id of the dead letter of `stream`/`sequence`.
pub fn msg_id_for(stream: &str, sequence: u64) -> String {
    format!("dlq:{stream}:{sequence}")
}

/// Header values must be one line; long errors are cut.
fn one_line(text: &str) -> String {
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() > MAX_ERROR_LEN {
        let mut cut = MAX_ERROR_LEN;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    line
}

/// The headers of the dead letter of a delivery.
pub fn headers_for(meta: &DeliveryMeta, reason: &DeadLetterReason) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, values) in meta.headers.iter() {
        if AsRef::<str>::as_ref(name) == headers::MSG_ID {
            continue;
        }
        for v in values {
            out.append(name.clone(), v.clone());
        }
    }
    if let Some(id) = meta
        .header(headers::ORIGINAL_MSG_ID)
        .or_else(|| meta.msg_id())
    {
        out.insert(headers::DLQ_MSG_ID, id);
    }
    out.insert(
        headers::MSG_ID,
        msg_id_for(&meta.stream, meta.stream_sequence),
    );
    out.insert(headers::DLQ_SUBJECT, meta.subject.as_str());
    out.insert(headers::DLQ_STREAM, meta.stream.as_str());
    out.insert(headers::DLQ_SEQUENCE, meta.stream_sequence.to_string());
    out.insert(headers::DLQ_CONSUMER, meta.consumer.as_str());
    out.insert(headers::DLQ_DELIVERIES, meta.delivered.to_string());
    out.insert(headers::DLQ_REASON, reason.kind());
    out.insert(headers::DLQ_ERROR, one_line(&reason.to_string()));
    out.insert(headers::DLQ_TIME, Utc::now().to_rfc3339());
    out
}

/// Why dead-lettering or replaying failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// JetStream did not store the message.
    #[error("publishing to {subject} failed: {source}")]
    Publish {
        /// The subject.
        subject: String,
        /// The client's error.
        #[source]
        source: async_nats::Error,
    },
    /// Reading the dead-letter stream failed.
    #[error("reading the dead-letter stream failed: {0}")]
    Read(#[source] async_nats::Error),
    /// No dead letter with this sequence.
    #[error("no dead letter with sequence {0}")]
    NotFound(u64),
    /// The dead letter lacks the header naming its original subject.
    #[error("dead letter {0} has no {header} header", header = headers::DLQ_SUBJECT)]
    NoOriginalSubject(u64),
}

/// The dead letter of a delivery, as a message to publish.
pub fn message_for(
    meta: &DeliveryMeta,
    payload: Bytes,
    reason: &DeadLetterReason,
) -> OutgoingMessage {
    let headers = headers_for(meta, reason);
    let mut message = OutgoingMessage::new(
        subject_for(&meta.subject),
        msg_id_for(&meta.stream, meta.stream_sequence),
        payload,
    );
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        if name == headers::MSG_ID {
            continue;
        }
        for v in values {
            message = message.header(name, v.as_str());
        }
    }
    message
}

/// The dead letter of an outbox row JetStream kept refusing (it was never stored in a
/// stream: its de-duplication id is derived from the row's id).
pub fn for_outbox_row(row: &OutboxRow, reason: &DeadLetterReason) -> OutgoingMessage {
    let mut meta = DeliveryMeta::new(row.message.subject.clone());
    meta.stream = "outbox".to_string();
    meta.consumer = "outbox-relay".to_string();
    meta.delivered = 0;
    // Without the row's publish expectations (`Nats-Expected-*`): they are about the
    // original stream, and would refuse the letter too.
    let mut kept = HeaderMap::new();
    for (k, v) in &row.message.headers {
        if !k.starts_with("Nats-Expected") {
            kept.append(k.as_str(), v.as_str());
        }
    }
    kept.insert(headers::MSG_ID, row.message.msg_id.as_str());
    meta.headers = kept;
    let mut letter = message_for(&meta, row.message.payload.clone(), reason);
    letter.msg_id = format!("dlq:outbox:{}", row.message.msg_id);
    letter
        .headers
        .retain(|(k, _)| k != headers::DLQ_SEQUENCE && k != headers::DLQ_DELIVERIES);
    letter
}

/// Publishes the dead letter of a delivery and waits for JetStream to store it. A letter is
/// counted once in `jetflow_dlq_messages_total`, however many consumers dead-letter the same
/// message (the copies share a `Nats-Msg-Id` and JetStream keeps one).
pub async fn publish(
    js: &jetstream::Context,
    meta: &DeliveryMeta,
    payload: Bytes,
    reason: &DeadLetterReason,
) -> Result<jetstream::publish::PublishAck, DeadLetterError> {
    let subject = subject_for(&meta.subject);
    let err = |e: async_nats::Error| DeadLetterError::Publish {
        subject: subject.clone(),
        source: e,
    };
    let ack = js
        .publish_with_headers(subject.clone(), headers_for(meta, reason), payload)
        .await
        .map_err(|e| err(Box::new(e)))?
        .await
        .map_err(|e| err(Box::new(e)))?;
    if !ack.duplicate {
        metrics()
            .dlq_messages
            .with_label_values(&[meta.subject.as_str()])
            .inc();
    }
    tracing::warn!(
        subject = %meta.subject,
        stream = %meta.stream,
        stream_seq = meta.stream_sequence,
        deliveries = meta.delivered,
        reason = reason.kind(),
        error = %reason,
        dlq_seq = ack.sequence,
        duplicate = ack.duplicate,
        "message dead-lettered"
    );
    Ok(ack)
}

/// One dead letter as `jetflow dlq list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream (what `replay` takes).
    pub dlq_sequence: u64,
    /// When it was dead-lettered.
    pub time: DateTime<Utc>,
    /// The subject it was published on.
    pub subject: String,
    /// The stream it was stored in.
    pub stream: String,
    /// Its sequence there.
    pub sequence: Option<u64>,
    /// The consumer that gave up on it.
    pub consumer: String,
    /// How often it was delivered.
    pub deliveries: Option<u32>,
    /// `poison`, `rejected`, `exhausted` or `unpublishable`.
    pub reason: String,
    /// The error.
    pub error: String,
    /// The original payload, as text when it is UTF-8.
    pub payload: String,
    /// The `Nats-Msg-Id` the message was first published with.
    pub original_msg_id: Option<String>,
    /// The original headers (without the dead-letter ones).
    #[serde(skip)]
    pub original_headers: HeaderMap,
    /// The raw payload.
    #[serde(skip)]
    pub raw_payload: Bytes,
}

impl DeadLetter {
    fn from_message(msg: jetstream::message::StreamMessage) -> Self {
        let h = |name: &str| {
            msg.headers
                .get(name)
                .map(|v| v.as_str().to_string())
                .unwrap_or_default()
        };
        let subject = match h(headers::DLQ_SUBJECT) {
            s if s.is_empty() => msg
                .subject
                .strip_prefix("dlq.")
                .unwrap_or(&msg.subject)
                .to_string(),
            s => s,
        };
        let mut original_headers = HeaderMap::new();
        for (name, values) in msg.headers.iter() {
            let n = AsRef::<str>::as_ref(name);
            if n.starts_with("Jetflow-Dlq-") || n == headers::MSG_ID {
                continue;
            }
            for v in values {
                original_headers.append(name.clone(), v.clone());
            }
        }
        let time = DateTime::parse_from_rfc3339(&h(headers::DLQ_TIME))
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(msg.time);
        Self {
            dlq_sequence: msg.sequence,
            time,
            subject,
            stream: h(headers::DLQ_STREAM),
            sequence: h(headers::DLQ_SEQUENCE).parse().ok(),
            consumer: h(headers::DLQ_CONSUMER),
            deliveries: h(headers::DLQ_DELIVERIES).parse().ok(),
            reason: h(headers::DLQ_REASON),
            error: h(headers::DLQ_ERROR),
            original_msg_id: Some(h(headers::DLQ_MSG_ID)).filter(|id| !id.is_empty()),
            payload: String::from_utf8_lossy(&msg.payload).into_owned(),
            original_headers,
            raw_payload: msg.payload,
        }
    }
}

/// Every dead letter currently in the stream, oldest first.
pub async fn list(js: &jetstream::Context) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let mut stream = js
        .get_stream(STREAM)
        .await
        .map_err(|e| DeadLetterError::Read(Box::new(e)))?;
    let info = stream
        .info()
        .await
        .map_err(|e| DeadLetterError::Read(Box::new(e)))?;
    if info.state.messages == 0 {
        return Ok(Vec::new());
    }
    // An ephemeral ordered consumer reads everything without touching any durable state.
    let consumer = js
        .get_stream_no_info(STREAM)
        .await
        .map_err(|e| DeadLetterError::Read(Box::new(e)))?
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| DeadLetterError::Read(Box::new(e)))?;
    let last = info.state.last_sequence;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| DeadLetterError::Read(Box::new(e)))?;
    let mut out = Vec::new();
    while let Some(next) = tokio::time::timeout(Duration::from_secs(5), messages.next())
        .await
        .map_err(|e| DeadLetterError::Read(Box::new(e)))?
    {
        let msg = next.map_err(|e| DeadLetterError::Read(Box::new(e)))?;
        let (seq, pending) = msg
            .info()
            .map(|i| (i.stream_sequence, i.pending))
            .unwrap_or((0, 0));
        let stream_msg = jetstream::message::StreamMessage {
            subject: msg.subject.clone(),
            sequence: seq,
            headers: msg.headers.clone().unwrap_or_default(),
            payload: msg.payload.clone(),
            time: msg
                .info()
                .map(|i| i.published)
                .unwrap_or_else(|_| Utc::now()),
        };
        out.push(DeadLetter::from_message(stream_msg));
        // Deleted messages (replayed ones) leave gaps: stop when nothing is pending.
        if seq >= last || pending == 0 {
            break;
        }
    }
    Ok(out)
}

/// One dead letter by its sequence.
pub async fn get(
    js: &jetstream::Context,
    dlq_sequence: u64,
) -> Result<DeadLetter, DeadLetterError> {
    let stream = js
        .get_stream(STREAM)
        .await
        .map_err(|e| DeadLetterError::Read(Box::new(e)))?;
    let msg = stream
        .get_raw_message(dlq_sequence)
        .await
        .map_err(|_| DeadLetterError::NotFound(dlq_sequence))?;
    Ok(DeadLetter::from_message(msg))
}

/// Re-publishes a dead letter to its original subject (with its original headers and a
/// fresh `Nats-Msg-Id`, so JetStream does not drop it as a duplicate of the original), then
/// removes it from the dead-letter stream. Returns where it was stored.
pub async fn replay(
    js: &jetstream::Context,
    dlq_sequence: u64,
) -> Result<jetstream::publish::PublishAck, DeadLetterError> {
    let letter = get(js, dlq_sequence).await?;
    if letter.subject.is_empty() {
        return Err(DeadLetterError::NoOriginalSubject(dlq_sequence));
    }
    let mut headers = letter.original_headers.clone();
    headers.insert(headers::REPLAYED_FROM, dlq_sequence.to_string());
    if let Some(original) = &letter.original_msg_id {
        headers.insert(headers::ORIGINAL_MSG_ID, original.as_str());
    }
    headers.insert(
        headers::MSG_ID,
        format!("replay:{}:{}", STREAM, dlq_sequence),
    );
    let err = |e: async_nats::Error| DeadLetterError::Publish {
        subject: letter.subject.clone(),
        source: e,
    };
    let ack = js
        .publish_with_headers(letter.subject.clone(), headers, letter.raw_payload.clone())
        .await
        .map_err(|e| err(Box::new(e)))?
        .await
        .map_err(|e| err(Box::new(e)))?;
    let stream = js
        .get_stream(STREAM)
        .await
        .map_err(|e| DeadLetterError::Read(Box::new(e)))?;
    stream
        .delete_message(dlq_sequence)
        .await
        .map_err(|e| DeadLetterError::Read(Box::new(e)))?;
    tracing::info!(dlq_seq = dlq_sequence, subject = %letter.subject, seq = ack.sequence, "dead letter replayed");
    Ok(ack)
}

/// Deletes one dead letter for good.
pub async fn delete(js: &jetstream::Context, dlq_sequence: u64) -> Result<(), DeadLetterError> {
    let stream = js
        .get_stream(STREAM)
        .await
        .map_err(|e| DeadLetterError::Read(Box::new(e)))?;
    stream
        .delete_message(dlq_sequence)
        .await
        .map_err(|_| DeadLetterError::NotFound(dlq_sequence))?;
    tracing::info!(dlq_seq = dlq_sequence, "dead letter deleted");
    Ok(())
}

/// Deletes every dead letter; returns how many there were.
pub async fn purge(js: &jetstream::Context) -> Result<u64, DeadLetterError> {
    let stream = js
        .get_stream(STREAM)
        .await
        .map_err(|e| DeadLetterError::Read(Box::new(e)))?;
    let purged = stream
        .purge()
        .await
        .map_err(|e| DeadLetterError::Read(Box::new(e)))?;
    tracing::info!(purged = purged.purged, "dead letters purged");
    Ok(purged.purged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_headers_say_where_and_why() {
        let mut meta = DeliveryMeta::new("readings.taken");
        meta.stream = "READINGS".into();
        meta.stream_sequence = 42;
        meta.consumer = "thermostat".into();
        meta.delivered = 5;
        meta.headers.insert(headers::MSG_ID, "evt-1");
        meta.headers.insert(headers::CORRELATION_ID, "corr-9");
        let reason = DeadLetterReason::Exhausted {
            deliveries: 5,
            last_error: "db\ndown".into(),
        };
        let h = headers_for(&meta, &reason);
        let get = |n: &str| h.get(n).map(|v| v.as_str().to_string()).unwrap_or_default();
        assert_eq!(get(headers::MSG_ID), "dlq:READINGS:42");
        assert_eq!(get(headers::DLQ_MSG_ID), "evt-1");
        assert_eq!(get(headers::DLQ_SUBJECT), "readings.taken");
        assert_eq!(get(headers::DLQ_SEQUENCE), "42");
        assert_eq!(get(headers::DLQ_DELIVERIES), "5");
        assert_eq!(get(headers::DLQ_REASON), "exhausted");
        assert_eq!(get(headers::CORRELATION_ID), "corr-9");
        assert!(!get(headers::DLQ_ERROR).contains('\n'));
        assert_eq!(subject_for("readings.taken"), "dlq.readings.taken");
    }

    #[test]
    fn long_errors_are_cut_on_a_char_boundary() {
        let long = "é".repeat(2000);
        let line = one_line(&long);
        assert!(line.len() <= MAX_ERROR_LEN + '…'.len_utf8());
        assert!(line.ends_with('…'));
    }
}
