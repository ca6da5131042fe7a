//! Publishing events: what a publish is, what it returns, and the trait that lets an actor
//! publish without knowing whether a live bridge or the test kit is behind it.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::future::BoxFuture;

use crate::headers;

/// An event to store in JetStream.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    /// The subject.
    pub subject: String,
    /// The payload.
    pub payload: Bytes,
    /// The `Nats-Msg-Id` (the event id): a re-publish within the stream's duplicate window
    /// is dropped by JetStream.
    pub msg_id: String,
    /// Further headers (correlation id, traceparent, …).
    pub headers: Vec<(String, String)>,
}

impl OutgoingMessage {
    /// A message with its de-duplication id.
    pub fn new(
        subject: impl Into<String>,
        msg_id: impl Into<String>,
        payload: impl Into<Bytes>,
    ) -> Self {
        Self {
            subject: subject.into(),
            payload: payload.into(),
            msg_id: msg_id.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the correlation id header.
    pub fn correlation_id(self, id: impl Into<String>) -> Self {
        self.header(headers::CORRELATION_ID, id)
    }

    /// The NATS headers, `Nats-Msg-Id` included.
    pub fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in &self.headers {
            map.append(k.as_str(), v.as_str());
        }
        map.insert(headers::MSG_ID, self.msg_id.as_str());
        map
    }

    /// One header's value.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        if name == headers::MSG_ID {
            return Some(&self.msg_id);
        }
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// JetStream's receipt for a stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishReceipt {
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence there.
    pub sequence: u64,
    /// True when JetStream recognised the `Nats-Msg-Id` and dropped this copy.
    pub duplicate: bool,
}

/// Why a publish did not get a PubAck.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    /// The bridge has no connection right now (nothing was sent).
    #[error("not connected to NATS")]
    NotConnected,
    /// No PubAck arrived in time (the message may or may not be stored; publish again with
    /// the same id to be sure).
    #[error("no PubAck within {0:?}")]
    Timeout(Duration),
    /// JetStream refused this message (no stream for its subject, too large, an expectation
    /// not met): publishing it again as it is will not help.
    #[error("JetStream refused the message: {0}")]
    Rejected(String),
    /// The publish failed for another reason (it may succeed later).
    #[error("publish failed: {0}")]
    Failed(String),
    /// The bridge actor is gone.
    #[error("the NATS bridge is not running")]
    BridgeGone,
}

/// Something that stores events in JetStream and waits for the PubAck.
pub trait Publisher: Send + Sync + 'static {
    /// Publishes and resolves once the message is stored.
    fn publish(
        &self,
        message: OutgoingMessage,
    ) -> BoxFuture<'static, Result<PublishReceipt, PublishError>>;

    /// Publishes every message, pipelined (all sent before any PubAck is awaited); one result
    /// per message, in order.
    fn publish_many(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> BoxFuture<'static, Vec<Result<PublishReceipt, PublishError>>> {
        let publishes: Vec<_> = messages.into_iter().map(|m| self.publish(m)).collect();
        Box::pin(futures::future::join_all(publishes))
    }
}

impl<P: Publisher + ?Sized> Publisher for std::sync::Arc<P> {
    fn publish(
        &self,
        message: OutgoingMessage,
    ) -> BoxFuture<'static, Result<PublishReceipt, PublishError>> {
        (**self).publish(message)
    }

    fn publish_many(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> BoxFuture<'static, Vec<Result<PublishReceipt, PublishError>>> {
        (**self).publish_many(messages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_id_becomes_the_dedup_header() {
        let m = OutgoingMessage::new("readings.taken", "evt-1", "{}").correlation_id("c-1");
        let h = m.header_map();
        assert_eq!(h.get(headers::MSG_ID).map(|v| v.as_str()), Some("evt-1"));
        assert_eq!(
            h.get(headers::CORRELATION_ID).map(|v| v.as_str()),
            Some("c-1")
        );
        assert_eq!(m.header_value("x-correlation-id"), Some("c-1"));
    }
}
