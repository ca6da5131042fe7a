//! The transactional outbox and the relay that empties it.
//!
//! Events a state change produces are rows in `outbox`, written in the same transaction, so
//! they exist exactly when the change does. The [`OutboxRelay`] publishes them with their
//! event id as `Nats-Msg-Id` and deletes a row only after JetStream's PubAck. It gets fresh
//! rows straight from the committing handler (low latency) and sweeps the table every second
//! for rows older than two seconds (what a crash, a restart or a NATS outage left behind).
//! Publishing a row twice (a sweep racing a slow publish, two replicas sweeping) is harmless:
//! JetStream drops the copy by its `Nats-Msg-Id`, and consumers' inboxes drop anything older
//! than the duplicate window.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use jetflow_runtime::{ActorRef, OutgoingMessage, Publisher, Supervisor};
use sqlx::{AnyConnection, Row};

use crate::db::{Database, now_ms};
use crate::metrics::domain_metrics;

/// Writes events to the outbox inside the caller's transaction.
pub async fn enqueue(
    conn: &mut AnyConnection,
    events: &[OutgoingMessage],
) -> Result<(), sqlx::Error> {
    let now = now_ms();
    for e in events {
        let headers = serde_json::to_string(&e.headers).unwrap_or_else(|_| "[]".to_string());
        sqlx::query(
            "INSERT INTO outbox (id, subject, payload, headers, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&e.msg_id)
        .bind(&e.subject)
        .bind(String::from_utf8_lossy(&e.payload).into_owned())
        .bind(headers)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Rows waiting in the outbox (for tests and the invariant checks).
pub async fn pending(db: &Database) -> Result<i64, sqlx::Error> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM outbox")
        .fetch_one(db.pool())
        .await?;
    row.try_get::<i64, _>("n")
}

/// How the relay works.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// How often the table is swept.
    pub sweep_every: Duration,
    /// Rows younger than this are left to the fast path.
    pub min_age: Duration,
    /// Rows read per sweep.
    pub batch: i64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            sweep_every: Duration::from_secs(1),
            min_age: Duration::from_secs(2),
            batch: 500,
        }
    }
}

/// Publish these freshly committed events.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Dispatch(pub Vec<OutgoingMessage>);

/// Sweep now, including fresh rows (for tests and shutdown).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct SweepNow;

/// The relay actor.
pub struct OutboxRelay {
    db: Database,
    publisher: Arc<dyn Publisher>,
    config: RelayConfig,
    in_flight: HashSet<String>,
    acked: Vec<String>,
    deleting: bool,
    sweeping: bool,
}

/// A cheap handle that committing handlers use to pass events to the relay.
#[derive(Clone)]
pub struct OutboxHandle {
    relay: ActorRef<OutboxRelay>,
}

impl OutboxHandle {
    /// Hands events to the relay without waiting (the sweep covers anything lost here).
    pub fn dispatch(&self, events: Vec<OutgoingMessage>) {
        if events.is_empty() {
            return;
        }
        let relay = self.relay.clone();
        actix_rt::spawn(async move {
            let _ = relay.send(Dispatch(events)).await;
        });
    }

    /// Sweeps now and waits for the publishes it started.
    pub async fn sweep_now(&self) {
        let _ = self.relay.send(SweepNow).await;
    }

    /// The relay's address.
    pub fn relay(&self) -> &ActorRef<OutboxRelay> {
        &self.relay
    }
}

impl OutboxRelay {
    /// Starts a supervised relay.
    pub fn start(db: Database, publisher: Arc<dyn Publisher>, config: RelayConfig) -> OutboxHandle {
        let relay = Supervisor::new("outbox-relay")
            .mailbox_capacity(1024)
            .start(move |_| OutboxRelay {
                db,
                publisher,
                config,
                in_flight: HashSet::new(),
                acked: Vec::new(),
                deleting: false,
                sweeping: false,
            });
        OutboxHandle { relay }
    }

    fn publish(&mut self, events: Vec<OutgoingMessage>, ctx: &mut Context<Self>) {
        for event in events {
            if !self.in_flight.insert(event.msg_id.clone()) {
                continue;
            }
            let id = event.msg_id.clone();
            let fut = self.publisher.publish(event);
            ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
                act.in_flight.remove(&id);
                let m = domain_metrics();
                match result {
                    Ok(_) => {
                        m.outbox_published.inc();
                        act.acked.push(id);
                        if act.acked.len() >= 256 {
                            act.delete_acked(ctx);
                        }
                    }
                    Err(e) => {
                        m.outbox_publish_errors.inc();
                        tracing::debug!(msg_id = %id, error = %e, "outbox publish failed; the sweep will retry");
                    }
                }
            }));
        }
    }

    fn delete_acked(&mut self, ctx: &mut Context<Self>) {
        if self.deleting || self.acked.is_empty() {
            return;
        }
        self.deleting = true;
        let ids: Vec<String> = self.acked.drain(..self.acked.len().min(500)).collect();
        let db = self.db.clone();
        let fut = async move {
            let placeholders: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "DELETE FROM outbox WHERE id IN ({})",
                placeholders.join(", ")
            );
            // Only generated placeholders are interpolated.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in &ids {
                q = q.bind(id);
            }
            q.execute(db.pool()).await.map(|_| ()).map_err(|e| (e, ids))
        };
        ctx.spawn(fut.into_actor(self).map(|result, act, _| {
            act.deleting = false;
            if let Err((e, ids)) = result {
                tracing::warn!(error = %e, "deleting published outbox rows failed; will retry");
                act.acked.extend(ids);
            }
        }));
    }

    fn sweep(&mut self, min_age: Duration, ctx: &mut Context<Self>) {
        if self.sweeping {
            return;
        }
        self.sweeping = true;
        let db = self.db.clone();
        let batch = self.config.batch;
        let cutoff = now_ms() - i64::try_from(min_age.as_millis()).unwrap_or(i64::MAX);
        let fut = async move {
            let rows = sqlx::query(
                "SELECT id, subject, payload, headers FROM outbox WHERE created_at <= $1 \
                 ORDER BY created_at LIMIT $2",
            )
            .bind(cutoff)
            .bind(batch)
            .fetch_all(db.pool())
            .await?;
            let count = sqlx::query("SELECT COUNT(*) AS n FROM outbox")
                .fetch_one(db.pool())
                .await?
                .try_get::<i64, _>("n")?;
            let events = rows
                .into_iter()
                .map(|row| {
                    let headers: Vec<(String, String)> =
                        serde_json::from_str(&row.try_get::<String, _>("headers")?)
                            .unwrap_or_default();
                    Ok(OutgoingMessage {
                        subject: row.try_get("subject")?,
                        payload: row.try_get::<String, _>("payload")?.into(),
                        msg_id: row.try_get("id")?,
                        headers,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            Ok::<_, sqlx::Error>((events, count))
        };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
            act.sweeping = false;
            match result {
                Ok((events, count)) => {
                    domain_metrics().outbox_pending.set(count);
                    if !events.is_empty() {
                        tracing::debug!(rows = events.len(), "outbox sweep publishing");
                    }
                    act.publish(events, ctx);
                }
                Err(e) => tracing::warn!(error = %e, "outbox sweep failed"),
            }
        }));
    }
}

impl Actor for OutboxRelay {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.in_flight.clear();
        self.deleting = false;
        self.sweeping = false;
        ctx.run_interval(self.config.sweep_every, |act, ctx| {
            let min_age = act.config.min_age;
            act.sweep(min_age, ctx);
        });
        ctx.run_interval(Duration::from_millis(25), |act, ctx| act.delete_acked(ctx));
    }
}

impl Supervised for OutboxRelay {}

impl Handler<Dispatch> for OutboxRelay {
    type Result = ();

    fn handle(&mut self, msg: Dispatch, ctx: &mut Context<Self>) {
        self.publish(msg.0, ctx);
    }
}

impl Handler<SweepNow> for OutboxRelay {
    type Result = ();

    fn handle(&mut self, _: SweepNow, ctx: &mut Context<Self>) {
        self.sweep(Duration::ZERO, ctx);
    }
}
