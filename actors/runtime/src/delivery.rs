//! A JetStream message as the actor that handles it sees it.
//!
//! Handlers receive [`Delivery<M>`]: the decoded, typed message and the facts about this
//! delivery that decide what to do on failure (which attempt this is, whether it is the
//! last one) and that must travel on (correlation id, trace context).

use std::time::Duration;

use actix::Message;
use async_nats::HeaderMap;

use crate::headers;
use crate::outcome::Outcome;

/// Facts about one delivery of a JetStream message.
#[derive(Debug, Clone)]
pub struct DeliveryMeta {
    /// The subject the message was published on.
    pub subject: String,
    /// The stream holding it.
    pub stream: String,
    /// The durable consumer that delivered it.
    pub consumer: String,
    /// Its sequence in the stream.
    pub stream_sequence: u64,
    /// How many times it has been delivered, this time included (1 on first delivery).
    pub delivered: u32,
    /// The consumer's delivery limit (0 when unlimited).
    pub max_deliver: u32,
    /// The consumer's ack wait.
    pub ack_wait: Duration,
    /// The message headers as published.
    pub headers: HeaderMap,
}

impl DeliveryMeta {
    /// Meta data for a first delivery on `subject`, for tests and tools.
    pub fn new(subject: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            stream: String::new(),
            consumer: String::new(),
            stream_sequence: 0,
            delivered: 1,
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
            headers: HeaderMap::new(),
        }
    }

    /// True when JetStream will not deliver this message again after this attempt.
    pub fn is_last_delivery(&self) -> bool {
        self.max_deliver > 0 && self.delivered >= self.max_deliver
    }

    /// One header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.as_str())
    }

    /// The `Nats-Msg-Id` the publisher set.
    pub fn msg_id(&self) -> Option<&str> {
        self.header(headers::MSG_ID)
    }

    /// The correlation id carried in the headers.
    pub fn correlation_id(&self) -> Option<&str> {
        self.header(headers::CORRELATION_ID)
    }

    /// The W3C `traceparent` carried in the headers.
    pub fn traceparent(&self) -> Option<&str> {
        self.header(headers::TRACEPARENT)
    }
}

/// A typed message delivered from JetStream; the handler replies with an [`Outcome`].
#[derive(Debug, Clone)]
pub struct Delivery<M> {
    /// The decoded message.
    pub message: M,
    /// Facts about this delivery.
    pub meta: DeliveryMeta,
}

impl<M> Message for Delivery<M> {
    type Result = Outcome;
}

impl DeliveryMeta {
    /// Sets the delivery count (for tests: `delivered == max_deliver` is the last attempt).
    pub fn with_delivered(mut self, delivered: u32) -> Self {
        self.delivered = delivered;
        self
    }

    /// Sets the delivery limit.
    pub fn with_max_deliver(mut self, max_deliver: u32) -> Self {
        self.max_deliver = max_deliver;
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Sets the stream and sequence.
    pub fn with_sequence(mut self, stream: &str, sequence: u64) -> Self {
        self.stream = stream.to_string();
        self.stream_sequence = sequence;
        self
    }
}
