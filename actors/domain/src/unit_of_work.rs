//! A unit of work: one input event, its state changes and the events it produces, committed
//! together or not at all.
//!
//! `begin` opens the transaction and claims the event in the inbox (or reports it as already
//! applied); the handler changes state through `conn()` and queues events with `emit`;
//! `commit` writes those events to the outbox in the same transaction, commits, and hands
//! them to the relay for publishing. The input may be acked after `commit` returns: what it
//! caused is durable, and what it must publish will be published.

use jetflow_runtime::OutgoingMessage;
use sqlx::{Any, AnyConnection, Transaction};

use crate::db::Database;
use crate::inbox;
use crate::outbox::{self, OutboxHandle};

/// An open unit of work.
pub struct UnitOfWork {
    tx: Transaction<'static, Any>,
    events: Vec<OutgoingMessage>,
}

impl UnitOfWork {
    /// Opens a transaction and claims `event_key` for `consumer`; `None` if it was applied
    /// before (nothing is left open).
    pub async fn begin(
        db: &Database,
        consumer: &str,
        event_key: &str,
    ) -> Result<Option<Self>, sqlx::Error> {
        let mut tx = db.begin().await?;
        if !inbox::claim(&mut tx, consumer, event_key).await? {
            tx.rollback().await?;
            return Ok(None);
        }
        Ok(Some(Self {
            tx,
            events: Vec::new(),
        }))
    }

    /// Opens a transaction with no inbox claim (for commands such as an HTTP request).
    pub async fn begin_command(db: &Database) -> Result<Self, sqlx::Error> {
        Ok(Self {
            tx: db.begin().await?,
            events: Vec::new(),
        })
    }

    /// The transaction's connection.
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// Queues an event to publish once the transaction commits.
    pub fn emit(&mut self, event: OutgoingMessage) {
        self.events.push(event);
    }

    /// The events queued so far.
    pub fn events(&self) -> &[OutgoingMessage] {
        &self.events
    }

    /// Writes the outbox, commits, and hands the events to the relay.
    pub async fn commit(mut self, relay: &OutboxHandle) -> Result<(), sqlx::Error> {
        outbox::enqueue(&mut self.tx, &self.events).await?;
        self.tx.commit().await?;
        relay.dispatch(self.events);
        Ok(())
    }

    /// Abandons every change.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}
