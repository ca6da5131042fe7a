//! `Idempotency-Key` records of the gateway.
//!
//! The first request with a key stores the order id and the exact events it will publish;
//! a repeat of the key gets the same order id and re-publishes the same events (same
//! `Nats-Msg-Id`, so JetStream keeps one copy, and consumers' inboxes drop a copy that comes
//! after the duplicate window) until one publish was acknowledged. A key reused with a
//! different body is refused. Keys are kept for the idempotency retention (24 hours by
//! default), then pruned.

use std::time::Duration;

use jetflow_runtime::db::{Conn, query};
use jetflow_runtime::{Database, OutgoingMessage};
use serde::{Deserialize, Serialize};

use crate::now_ms;

/// A message as stored with its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Subject.
    pub subject: String,
    /// `Nats-Msg-Id`.
    pub msg_id: String,
    /// Payload (JSON text).
    pub payload: String,
    /// Headers.
    pub headers: Vec<(String, String)>,
}

impl From<&OutgoingMessage> for StoredMessage {
    fn from(m: &OutgoingMessage) -> Self {
        Self {
            subject: m.subject.clone(),
            msg_id: m.msg_id.clone(),
            payload: String::from_utf8_lossy(&m.payload).into_owned(),
            headers: m.headers.clone(),
        }
    }
}

impl From<StoredMessage> for OutgoingMessage {
    fn from(m: StoredMessage) -> Self {
        OutgoingMessage {
            subject: m.subject,
            payload: m.payload.into(),
            msg_id: m.msg_id,
            headers: m.headers,
        }
    }
}

/// What a key stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The request body as validated (canonical JSON), to detect a reused key.
    pub request: String,
    /// The order id given out.
    pub order_id: String,
    /// The correlation id given out.
    pub correlation_id: String,
    /// The events of the order.
    pub messages: Vec<StoredMessage>,
    /// Whether JetStream acknowledged them.
    pub published: bool,
}

/// The result of claiming a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is new and now stands for the given record.
    New,
    /// The key was used before, for this record.
    Existing(IdempotencyRecord),
}

/// Claims `key` for `record`, or returns what it already stands for.
pub async fn claim(
    mut conn: Conn<'_>,
    key: &str,
    record: &IdempotencyRecord,
) -> Result<Claim, sqlx::Error> {
    let messages =
        serde_json::to_string(&record.messages).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let inserted = query(
        "INSERT INTO idempotency_keys (idempotency_key, request, order_id, correlation_id, messages, published, created_at) \
         VALUES ($1, $2, $3, $4, $5, 0, $6) ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(key)
    .bind(&record.request)
    .bind(&record.order_id)
    .bind(&record.correlation_id)
    .bind(messages)
    .bind(now_ms())
    .execute(conn.reborrow())
    .await?
    .rows_affected()
        == 1;
    if inserted {
        return Ok(Claim::New);
    }
    let row = query(
        "SELECT request, order_id, correlation_id, messages, published FROM idempotency_keys WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_one(conn.reborrow())
    .await?;
    let messages: String = row.try_get("messages")?;
    Ok(Claim::Existing(IdempotencyRecord {
        request: row.try_get("request")?,
        order_id: row.try_get("order_id")?,
        correlation_id: row.try_get("correlation_id")?,
        messages: serde_json::from_str(&messages).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        published: row.try_get::<i64, _>("published")? != 0,
    }))
}

/// Notes that the key's events were acknowledged by JetStream.
pub async fn mark_published(conn: Conn<'_>, key: &str) -> Result<(), sqlx::Error> {
    query("UPDATE idempotency_keys SET published = 1 WHERE idempotency_key = $1")
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}

/// Forgets keys older than `retention`.
pub async fn purge_expired(db: &Database, retention: Duration) -> Result<u64, sqlx::Error> {
    let before = now_ms().saturating_sub(jetflow_runtime::db::millis(retention));
    jetflow_runtime::db::delete_older_than(
        db,
        "idempotency_keys",
        "idempotency_key",
        "created_at",
        before,
    )
    .await
}
