//! A unit of work: state changes and the messages they produce, committed together or not
//! at all.
//!
//! Handlers of a transactional route get one (the runtime opens it, claims the deliveries in
//! the inbox, commits and then acks); commands such as an HTTP request or a timer open their
//! own with [`UnitOfWork::begin`]. State changes go through [`UnitOfWork::conn`] (or, for rows
//! that many deliveries add to one table, [`UnitOfWork::deferred`]), messages through
//! [`UnitOfWork::emit`]; [`UnitOfWork::commit`] writes the messages to the outbox in
//! the same transaction, commits, and hands them to the relay, which publishes them at once.

use std::any::{Any, TypeId};
use std::collections::HashMap;

use futures::future::BoxFuture;

use crate::db::{Backend, Conn, Database, WriteTx};
use crate::delivery::DeliveryMeta;
use crate::headers;
use crate::outbox;
use crate::publisher::OutgoingMessage;
use crate::relay::OutboxHandle;
use crate::trace;

/// Work to do once the transaction committed.
type AfterCommit = Box<dyn FnOnce() + Send>;

/// Rows gathered while a unit of work runs and written together, in one statement or a
/// few, just before it commits: what every delivery of a batch adds to the same table (a
/// history, an audit log) costs one round trip per batch instead of one per delivery.
///
/// ```
/// use futures::future::BoxFuture;
/// use jetflow_runtime::Deferred;
/// use jetflow_runtime::db::{self, Conn, Param};
///
/// /// Audit lines, inserted in one statement at commit.
/// #[derive(Default)]
/// struct Audit(Vec<String>);
///
/// impl Deferred for Audit {
///     fn write(self, conn: Conn<'_>) -> BoxFuture<'_, Result<(), sqlx::Error>> {
///         Box::pin(async move {
///             let rows: Vec<Vec<Param>> = self.0.into_iter().map(|l| vec![l.into()]).collect();
///             db::insert_rows(conn, "audit", &["line"], &rows, "").await?;
///             Ok(())
///         })
///     }
/// }
///
/// // In a handler: uow.deferred::<Audit>().0.push("threshold crossed".into());
/// ```
pub trait Deferred: Default + Send + 'static {
    /// Writes what was gathered, in the unit of work's transaction.
    fn write(self, conn: Conn<'_>) -> BoxFuture<'_, Result<(), sqlx::Error>>;
}

/// A [`Deferred`] of any type.
trait AnyDeferred: Send {
    fn as_any(&mut self) -> &mut dyn Any;
    fn write_boxed(self: Box<Self>, conn: Conn<'_>) -> BoxFuture<'_, Result<(), sqlx::Error>>;
}

impl<T: Deferred> AnyDeferred for T {
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }

    fn write_boxed(self: Box<Self>, conn: Conn<'_>) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        (*self).write(conn)
    }
}

/// An open unit of work.
pub struct UnitOfWork {
    tx: WriteTx,
    backend: Backend,
    emitted: Vec<OutgoingMessage>,
    cause: Option<Cause>,
    after_commit: Vec<AfterCommit>,
    deferred: HashMap<TypeId, Box<dyn AnyDeferred>>,
    deferred_order: Vec<TypeId>,
    state: HashMap<TypeId, Box<dyn Any + Send>>,
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
    /// The delivery's inbox key, and how many messages it published so far.
    key: String,
    published: u32,
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
            deferred: HashMap::new(),
            deferred_order: Vec::new(),
            state: HashMap::new(),
        })
    }

    /// The transaction's connection, for the handler's queries.
    pub fn conn(&mut self) -> Conn<'_> {
        self.tx.conn()
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
                    trace::for_message(cause.traceparent.as_deref()),
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

    /// Queues `payload` for `subject` with an id derived from the delivery being handled
    /// (its inbox key and how many messages it published before): handling the same
    /// delivery again publishes the same ids, which JetStream's duplicate window drops, so
    /// the service never chooses ids itself. Outside a delivery the id is a new UUID.
    pub fn publish(&mut self, subject: impl Into<String>, payload: impl Into<bytes::Bytes>) {
        let id = match &mut self.cause {
            Some(cause) => {
                cause.published += 1;
                format!("{}/{}", cause.key, cause.published)
            }
            None => uuid::Uuid::now_v7().to_string(),
        };
        self.emit(OutgoingMessage::new(subject, id, payload));
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

    /// The rows of type `T` gathered so far in this unit of work (empty at first), written
    /// by [`Deferred::write`] just before the commit, in the order the types were first
    /// used. A rolled-back unit of work drops them with everything else.
    pub fn deferred<T: Deferred>(&mut self) -> &mut T {
        let id = TypeId::of::<T>();
        let slot = self.deferred.entry(id).or_insert_with(|| {
            self.deferred_order.push(id);
            Box::new(T::default())
        });
        match slot.as_any().downcast_mut::<T>() {
            Some(t) => t,
            None => unreachable!("deferred rows are stored under their own type id"),
        }
    }

    /// State of type `T` kept for as long as this unit of work (`T::default()` at first):
    /// what [`TxHandler::begin_batch`](crate::TxHandler::begin_batch) read for the whole
    /// batch, for instance, for each delivery's handler to consult. A batch applied again
    /// after a failure starts from a new unit of work, and so from a fresh state.
    pub fn state<T: Default + Send + 'static>(&mut self) -> &mut T {
        let slot = self
            .state
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Box::new(T::default()));
        match slot.downcast_mut::<T>() {
            Some(t) => t,
            None => unreachable!("state is stored under its own type id"),
        }
    }

    /// Sets the delivery (and its inbox key) whose handling emits the next messages.
    pub(crate) fn caused_by(&mut self, cause: Option<(&DeliveryMeta, &str)>) {
        self.cause = cause.map(|(m, key)| Cause {
            traceparent: m.traceparent().map(str::to_string),
            correlation_id: m.correlation_id().map(str::to_string),
            key: key.to_string(),
            published: 0,
        });
    }

    /// Writes the [`deferred`](Self::deferred) rows and the outbox and commits; then hands the
    /// messages to the relay and runs the after-commit work.
    pub async fn commit(mut self, relay: &OutboxHandle) -> Result<(), sqlx::Error> {
        for id in std::mem::take(&mut self.deferred_order) {
            if let Some(rows) = self.deferred.remove(&id) {
                rows.write_boxed(self.tx.conn()).await?;
            }
        }
        outbox::enqueue(self.tx.conn(), &self.emitted).await?;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::db::query;
    use crate::relay::{OutboxRelay, RelayConfig};
    use crate::testkit::{RecordingPublisher, TestKit};

    /// Lines inserted at commit, one statement for all of them.
    #[derive(Default)]
    struct Lines(Vec<String>);

    impl Deferred for Lines {
        fn write(self, conn: Conn<'_>) -> BoxFuture<'_, Result<(), sqlx::Error>> {
            Box::pin(async move {
                let rows: Vec<Vec<crate::db::Param>> =
                    self.0.into_iter().map(|line| vec![line.into()]).collect();
                crate::db::insert_rows(conn, "lines", &["line"], &rows, "").await?;
                Ok(())
            })
        }
    }

    async fn lines(db: &Database) -> Vec<String> {
        query("SELECT line FROM lines ORDER BY line")
            .fetch_all(db)
            .await
            .expect("select")
            .iter()
            .map(|r| r.try_get::<String, _>("line").expect("line"))
            .collect()
    }

    #[actix::test]
    async fn deferred_rows_are_written_at_commit_and_dropped_on_rollback() {
        let db = TestKit::database().await;
        query("CREATE TABLE lines (line TEXT NOT NULL)")
            .execute(&db)
            .await
            .expect("table");
        let relay = OutboxRelay::start(
            db.clone(),
            Arc::new(RecordingPublisher::new()),
            RelayConfig::default(),
        );
        let mut uow = UnitOfWork::begin(&db).await.expect("begin");
        uow.deferred::<Lines>().0.push("a".into());
        uow.deferred::<Lines>().0.push("b".into());
        uow.commit(&relay).await.expect("commit");
        assert_eq!(lines(&db).await, ["a", "b"]);

        let mut uow = UnitOfWork::begin(&db).await.expect("begin");
        uow.deferred::<Lines>().0.push("c".into());
        uow.rollback().await.expect("rollback");
        let uow = UnitOfWork::begin(&db).await.expect("begin");
        uow.commit(&relay).await.expect("an empty commit");
        assert_eq!(
            lines(&db).await,
            ["a", "b"],
            "nothing of the rolled-back one"
        );
        assert_eq!(relay.flush(Duration::from_secs(5)).await.left, 0);
    }
}
