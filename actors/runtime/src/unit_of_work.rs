//! A unit of work: state changes and the messages they produce, committed together or not
//! at all.
//!
//! Handlers of a transactional route get one (the runtime opens it, claims the deliveries in
//! the inbox, commits and then acks); commands such as an HTTP request or a timer open their
//! own with [`UnitOfWork::begin`]. State changes go through [`UnitOfWork::conn`], messages
//! through [`UnitOfWork::emit`]; [`UnitOfWork::commit`] writes the messages to the outbox in
//! the same transaction, commits, and hands them to the relay, which publishes them at once.

use sqlx::AnyConnection;

use crate::db::{Backend, Database, WriteTx};
use crate::delivery::DeliveryMeta;
use crate::headers;
use crate::outbox;
use crate::publisher::OutgoingMessage;
use crate::relay::OutboxHandle;
use crate::trace;

/// Work to do once the transaction committed.
type AfterCommit = Box<dyn FnOnce() + Send>;

/// An open unit of work.
pub struct UnitOfWork {
    tx: WriteTx,
    backend: Backend,
    emitted: Vec<OutgoingMessage>,
    cause: Option<Cause>,
    after_commit: Vec<AfterCommit>,
}

impl std::fmt::Debug for UnitOfWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnitOfWork")
            .field("backend", &self.backend)
            .field("emitted", &self.emitted.len())
            .finish()
    }
}

/// What the messages emitted now inherit from the delivery being handled.
#[derive(Debug, Clone, Default)]
struct Cause {
    traceparent: Option<String>,
    correlation_id: Option<String>,
}

impl UnitOfWork {
    /// Opens a transaction (a write transaction on SQLite).
    pub async fn begin(db: &Database) -> Result<Self, sqlx::Error> {
        Ok(Self {
            tx: db.begin().await?,
            backend: db.backend(),
            emitted: Vec::new(),
            cause: None,
            after_commit: Vec::new(),
        })
    }

    /// The transaction's connection, for the handler's queries.
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// The engine (for the rare query that must differ, such as `FOR UPDATE`).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Queues a message to publish once the transaction commits. While a delivery is
    /// handled, the message inherits its correlation id and continues its trace (a child
    /// `traceparent`), unless it already carries its own.
    pub fn emit(&mut self, mut message: OutgoingMessage) {
        if let Some(cause) = &self.cause {
            if message.header_value(headers::TRACEPARENT).is_none() {
                message = message.header(
                    headers::TRACEPARENT,
                    trace::child_of(cause.traceparent.as_deref()),
                );
            }
            if message.header_value(headers::CORRELATION_ID).is_none()
                && let Some(c) = &cause.correlation_id
            {
                message = message.correlation_id(c.clone());
            }
        }
        self.emitted.push(message);
    }

    /// The messages queued so far.
    pub fn emitted(&self) -> &[OutgoingMessage] {
        &self.emitted
    }

    /// Runs `f` once the transaction committed (never if it rolls back): to wake an actor
    /// that acts on what was just written, for instance.
    pub fn after_commit(&mut self, f: impl FnOnce() + Send + 'static) {
        self.after_commit.push(Box::new(f));
    }

    /// Sets the delivery whose handling emits the next messages.
    pub(crate) fn caused_by(&mut self, meta: Option<&DeliveryMeta>) {
        self.cause = meta.map(|m| Cause {
            traceparent: m.traceparent().map(str::to_string),
            correlation_id: m.correlation_id().map(str::to_string),
        });
    }

    /// Writes the outbox and commits; then hands the messages to the relay and runs the
    /// after-commit work.
    pub async fn commit(mut self, relay: &OutboxHandle) -> Result<(), sqlx::Error> {
        outbox::enqueue(&mut self.tx, &self.emitted).await?;
        Database::commit(self.tx).await?;
        relay.committed(self.emitted);
        for f in self.after_commit {
            f();
        }
        Ok(())
    }

    /// Abandons every change.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}
