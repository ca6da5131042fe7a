//! `OutboxRelay`: publishes what transactions wrote to the outbox.
//!
//! A committed transaction hands its messages to the relay at once
//! ([`OutboxHandle::committed`]): they are published pipelined (all sent, then every PubAck
//! awaited) with their id as `Nats-Msg-Id`, and the acknowledged rows are deleted together a
//! few milliseconds later, in one statement for many transactions. The sweep only picks up
//! what a crash, a restart or a NATS outage left behind: rows older than `min_age` whose
//! retry time has come. It runs every second while the relay knows of rows left behind (at
//! start, after a failed publish, while a sweep finds rows), and every `idle_sweep_every`
//! otherwise (for what another replica left when it crashed). So an idle relay costs one
//! small query every few seconds.
//!
//! A row JetStream refuses for good (no stream for its subject, too large, an expectation
//! not met) counts an attempt, keeps the error and waits longer each time; after
//! `max_attempts` it is moved to the dead-letter stream with its reason
//! (`outbox_dead_letters_total`); when the letter is refused for good too (a payload too
//! large for any message), the letter goes without the payload and the row stays in the
//! table, parked, never published again. A refusal for now (a full stream that discards new
//! messages, any other JetStream error that may pass) is retried with the same growing
//! wait however often it happens (`outbox_publish_errors_total` counts them), and rows that
//! fail because NATS is unreachable are only retried: neither an outage nor a full stream
//! ever turns a saga's event into a dead letter.
//! Publishing a row twice (a sweep racing a slow publish, two replicas sweeping) is harmless:
//! JetStream drops the copy by its `Nats-Msg-Id`, and consumers' inboxes drop anything older.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::actor_ref::ActorRef;
use crate::backoff::Backoff;
use crate::db::{Database, millis, now_ms};
use crate::dead_letter;
use crate::headers;
use crate::metrics::metrics;
use crate::outbox::{self, OutboxRow};
use crate::outcome::{DeadLetterReason, ReplyOutcome};
use crate::publisher::{OutgoingMessage, PublishError, Publisher};
use crate::supervisor::Supervisor;

/// How the relay works.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// How often the table is swept while rows are known to be left behind.
    pub sweep_every: Duration,
    /// How often it is swept otherwise (what another replica's crash left behind).
    pub idle_sweep_every: Duration,
    /// Rows younger than this are left to the fast path.
    pub min_age: Duration,
    /// Rows read per sweep.
    pub batch: usize,
    /// Refusals for good (no stream, too large) of one row before it is dead-lettered; a
    /// refusal for now (a full stream) is retried however often.
    pub max_attempts: u32,
    /// The wait before retrying a refused row, doubling per attempt.
    pub retry: Backoff,
    /// How long acknowledged rows wait to be deleted together.
    pub delete_every: Duration,
    /// How often `outbox_pending` is refreshed while it is 0 (every sweep otherwise).
    pub count_every: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            sweep_every: Duration::from_secs(1),
            idle_sweep_every: Duration::from_secs(5),
            min_age: Duration::from_secs(2),
            batch: 500,
            max_attempts: 20,
            retry: Backoff::exponential(Duration::from_secs(1), Duration::from_secs(300)),
            delete_every: Duration::from_millis(50),
            count_every: Duration::from_secs(15),
        }
    }
}

/// Publish these freshly committed messages.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Committed(Vec<OutgoingMessage>);

/// Sweep now, including fresh rows.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
struct SweepNow;

/// How many publishes are in flight; hands over the acknowledged ids not deleted yet.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Quiesce")]
struct TakeAcked;

#[derive(Debug, Default)]
struct Quiesce {
    in_flight: usize,
    acked: Vec<String>,
}

impl ReplyOutcome for Quiesce {
    fn outcome_label(&self) -> &'static str {
        "ok"
    }
}

/// The relay actor.
pub struct OutboxRelay {
    db: Database,
    publisher: Arc<dyn Publisher>,
    config: RelayConfig,
    in_flight: HashSet<String>,
    acked: Vec<String>,
    deleting: bool,
    sweeping: bool,
    last_count: Option<Instant>,
    /// Rows may be left behind: sweep every `sweep_every`.
    dirty: bool,
    last_sweep: Option<Instant>,
}

/// What a flush left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushReport {
    /// Rows published by the flush itself.
    pub published: usize,
    /// Rows still in the outbox (published at the next start).
    pub left: i64,
}

/// A cheap handle to the relay, for whoever commits transactions.
#[derive(Clone)]
pub struct OutboxHandle {
    relay: ActorRef<OutboxRelay>,
    db: Database,
    publisher: Arc<dyn Publisher>,
}

impl std::fmt::Debug for OutboxHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxHandle")
            .field("db", &self.db.url())
            .finish()
    }
}

impl OutboxHandle {
    /// Hands the messages of a committed transaction to the relay, which publishes them at
    /// once. Never waits: the sweep covers anything lost here.
    pub fn committed(&self, messages: Vec<OutgoingMessage>) {
        if !messages.is_empty() {
            self.relay.addr().do_send(Committed(messages));
        }
    }

    /// Sweeps now, including rows younger than `min_age` (for tests and tools).
    pub async fn sweep_now(&self) {
        let _ = self.relay.send(SweepNow).await;
    }

    /// Publishes everything the outbox holds, waiting at most `deadline`: for a clean stop,
    /// after the consumers stopped. Publishes that fail are left for the next start.
    pub async fn flush(&self, deadline: Duration) -> FlushReport {
        let until = tokio::time::Instant::now() + deadline;
        let mut to_delete = Vec::new();
        // 1. Let the publishes in flight finish.
        loop {
            match self.relay.send(TakeAcked).await {
                Ok(q) => {
                    to_delete.extend(q.acked);
                    if q.in_flight == 0 {
                        break;
                    }
                }
                Err(_) => break,
            }
            if tokio::time::Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut published = 0;
        // 2. Publish whatever is left, whatever its age or retry time.
        loop {
            // Everything but parked rows (never due).
            let rows = match outbox::due(&self.db, i64::MAX, outbox::PARKED - 1, 1000).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the outbox for the flush failed");
                    break;
                }
            };
            if rows.is_empty() || tokio::time::Instant::now() >= until {
                break;
            }
            let ids: Vec<String> = rows.iter().map(|r| r.message.msg_id.clone()).collect();
            let tried = ids.len();
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let results = tokio::time::timeout(
                left,
                self.publisher
                    .publish_many(rows.into_iter().map(|r| r.message).collect()),
            )
            .await
            .unwrap_or_default();
            let ok: Vec<String> = ids
                .into_iter()
                .zip(results)
                .filter(|(_, r)| r.is_ok())
                .map(|(id, _)| id)
                .collect();
            let any_failed = ok.len() < tried;
            published += ok.len();
            metrics().outbox_published.inc_by(ok.len() as u64);
            if ok.is_empty() {
                break;
            }
            to_delete.extend(ok);
            if let Err(e) = outbox::delete(&self.db, &to_delete).await {
                tracing::warn!(error = %e, "deleting published outbox rows failed");
                break;
            }
            to_delete.clear();
            if any_failed {
                break;
            }
        }
        if !to_delete.is_empty()
            && let Err(e) = outbox::delete(&self.db, &to_delete).await
        {
            tracing::warn!(error = %e, "deleting published outbox rows failed");
        }
        let left = outbox::pending(&self.db).await.unwrap_or(-1);
        if left >= 0 {
            metrics().outbox_pending.set(left);
        }
        FlushReport { published, left }
    }

    /// The relay's address.
    pub fn relay(&self) -> &ActorRef<OutboxRelay> {
        &self.relay
    }

    /// The database the relay empties.
    pub fn database(&self) -> &Database {
        &self.db
    }
}

impl OutboxRelay {
    /// Starts a supervised relay over `db`, publishing through `publisher`.
    pub fn start(db: Database, publisher: Arc<dyn Publisher>, config: RelayConfig) -> OutboxHandle {
        let (d, p) = (db.clone(), publisher.clone());
        let relay = Supervisor::new("outbox-relay")
            .mailbox_capacity(4096)
            .start(move |_| OutboxRelay {
                db: d,
                publisher: p,
                config,
                in_flight: HashSet::new(),
                acked: Vec::new(),
                deleting: false,
                sweeping: false,
                last_count: None,
                dirty: true,
                last_sweep: None,
            });
        OutboxHandle {
            relay,
            db,
            publisher,
        }
    }

    fn publish(&mut self, rows: Vec<OutboxRow>, ctx: &mut Context<Self>) {
        let rows: Vec<OutboxRow> = rows
            .into_iter()
            .filter(|r| self.in_flight.insert(r.message.msg_id.clone()))
            .collect();
        if rows.is_empty() {
            return;
        }
        let messages: Vec<OutgoingMessage> = rows.iter().map(|r| r.message.clone()).collect();
        let fut = self.publisher.publish_many(messages);
        ctx.spawn(fut.into_actor(self).map(move |results, act, ctx| {
            let m = metrics();
            let mut failed = Vec::new();
            for (row, result) in rows.into_iter().zip(results) {
                match result {
                    Ok(_) => {
                        m.outbox_published.inc();
                        act.in_flight.remove(&row.message.msg_id);
                        act.acked.push(row.message.msg_id);
                    }
                    // Stays in flight until its failure is recorded, so that no sweep picks
                    // it up meanwhile.
                    Err(e) => {
                        m.outbox_publish_errors.inc();
                        act.dirty = true;
                        failed.push((row, e));
                    }
                }
            }
            if act.acked.len() >= 500 {
                act.delete_acked(ctx);
            }
            if !failed.is_empty() {
                act.after_failures(failed, ctx);
            }
        }));
    }

    /// Counts refusals, schedules retries, and dead-letters rows over their budget; rows that
    /// failed because NATS was unreachable are only left to the sweep. The rows leave
    /// `in_flight` once this is done.
    fn after_failures(&mut self, failed: Vec<(OutboxRow, PublishError)>, ctx: &mut Context<Self>) {
        let db = self.db.clone();
        let publisher = self.publisher.clone();
        let config = self.config.clone();
        let ids: Vec<String> = failed
            .iter()
            .map(|(r, _)| r.message.msg_id.clone())
            .collect();
        let fut = async move {
            let (mut refused, mut dead) = (0usize, 0usize);
            let mut example = None;
            for (row, error) in failed {
                if !counts_as_refusal(&error) {
                    tracing::debug!(msg_id = %row.message.msg_id, %error, "outbox publish failed; the sweep retries it");
                    continue;
                }
                let attempts = row.attempts.saturating_add(1);
                if attempts >= config.max_attempts && is_permanent(&error) {
                    let wait = config.retry.delay_for(attempts);
                    if dead_letter_row(&db, publisher.as_ref(), &row, attempts, &error, wait).await
                    {
                        dead += 1;
                    }
                    continue;
                }
                refused += 1;
                let wait = config.retry.delay_for(attempts);
                tracing::debug!(msg_id = %row.message.msg_id, attempts, retry_in_ms = millis(wait), %error, "JetStream refused an outbox message");
                if let Err(e) =
                    outbox::record_failure(&db, &row.message.msg_id, &error.to_string(), wait).await
                {
                    tracing::warn!(error = %e, "recording an outbox failure failed");
                }
                example.get_or_insert((row.message.subject, error));
            }
            if let Some((subject, error)) = example {
                tracing::warn!(refused, %subject, %error, "JetStream refused outbox messages; retrying them later");
            }
            if dead > 0 {
                tracing::error!(
                    dead,
                    "outbox messages JetStream kept refusing were dead-lettered"
                );
            }
        };
        ctx.spawn(fut.into_actor(self).map(move |(), act, _| {
            for id in ids {
                act.in_flight.remove(&id);
            }
        }));
    }

    fn delete_acked(&mut self, ctx: &mut Context<Self>) {
        if self.deleting || self.acked.is_empty() {
            return;
        }
        self.deleting = true;
        let ids = std::mem::take(&mut self.acked);
        let db = self.db.clone();
        let fut = async move { outbox::delete(&db, &ids).await.map_err(|e| (e, ids)) };
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
        self.last_sweep = Some(Instant::now());
        let db = self.db.clone();
        let batch = self.config.batch;
        // Counted at every sweep while rows are or may be left (so the gauge falls back to 0
        // as soon as they are gone, and the sweep knows when to slow down), else every
        // `count_every`.
        let count = self.dirty
            || metrics().outbox_pending.get() != 0
            || self
                .last_count
                .is_none_or(|t| t.elapsed() >= self.config.count_every);
        if count {
            self.last_count = Some(Instant::now());
        }
        // Cleared now, so that a publish failing while this sweep runs keeps it set.
        self.dirty = false;
        let now = now_ms();
        let cutoff = now.saturating_sub(millis(min_age));
        let fut = async move {
            let rows = outbox::due(&db, cutoff, now, batch).await?;
            let pending = if count || !rows.is_empty() {
                Some(outbox::pending(&db).await?)
            } else {
                None
            };
            Ok::<_, sqlx::Error>((rows, pending))
        };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
            act.sweeping = false;
            match result {
                Ok((rows, pending)) => {
                    if let Some(n) = pending {
                        metrics().outbox_pending.set(n);
                    }
                    // Rows waiting for their retry time are in `pending`: keep sweeping often
                    // until none is left.
                    if !rows.is_empty() || pending.is_some_and(|n| n > 0) {
                        act.dirty = true;
                    }
                    if !rows.is_empty() {
                        tracing::debug!(rows = rows.len(), "outbox sweep publishing");
                        act.publish(rows, ctx);
                    }
                }
                Err(e) => {
                    act.dirty = true;
                    tracing::warn!(error = %e, "outbox sweep failed");
                }
            }
        }));
    }
}

/// Whether a failed publish was JetStream's refusal of this message (retried later with a
/// growing wait), rather than NATS being unreachable or slow (left to the sweep).
fn counts_as_refusal(error: &PublishError) -> bool {
    matches!(error, PublishError::Rejected(_) | PublishError::Failed(_))
}

/// Whether a refusal is for good (the message as it is can never be stored: only those are
/// dead-lettered after `max_attempts`); any other refusal may pass (a full stream that
/// discards new messages) and is retried however often it happens.
fn is_permanent(error: &PublishError) -> bool {
    matches!(error, PublishError::Rejected(_))
}

/// Moves a row to the dead-letter stream; true once it is there and gone from the outbox.
/// A letter refused for good itself (the payload is too large for any message, say) goes
/// without the payload, which stays in the outbox row, parked (never published again); if
/// even that fails, the row waits its retry delay like any refused row.
async fn dead_letter_row(
    db: &Database,
    publisher: &dyn Publisher,
    row: &OutboxRow,
    attempts: u32,
    error: &PublishError,
    retry_in: Duration,
) -> bool {
    let reason = DeadLetterReason::Unpublishable {
        attempts,
        last_error: error.to_string(),
    };
    let letter = dead_letter::for_outbox_row(row, &reason);
    let (receipt, parked) = match publisher.publish(letter).await {
        Ok(receipt) => (receipt, None),
        Err(refused @ PublishError::Rejected(_)) => {
            let size = row.message.payload.len();
            let why = format!(
                "{error}; the dead letter was refused too ({refused}): its payload ({size} bytes) \
                 stays in the outbox row {}, parked",
                row.message.msg_id
            );
            let reason = DeadLetterReason::Unpublishable {
                attempts,
                last_error: why.clone(),
            };
            let mut stub = dead_letter::for_outbox_row(row, &reason);
            stub.payload = bytes::Bytes::new();
            stub = stub.header(headers::DLQ_PAYLOAD_OMITTED, size.to_string());
            match publisher.publish(stub).await {
                Ok(receipt) => (receipt, Some(why)),
                Err(e) => {
                    tracing::warn!(msg_id = %row.message.msg_id, error = %e, "dead-lettering an outbox row failed; retrying later");
                    let _ = outbox::record_failure(db, &row.message.msg_id, &why, retry_in).await;
                    return false;
                }
            }
        }
        Err(e) => {
            tracing::warn!(msg_id = %row.message.msg_id, error = %e, "dead-lettering an outbox row failed; retrying later");
            let _ =
                outbox::record_failure(db, &row.message.msg_id, &error.to_string(), retry_in).await;
            return false;
        }
    };
    let gone = match &parked {
        Some(why) => outbox::park(db, &row.message.msg_id, why).await,
        None => outbox::delete(db, std::slice::from_ref(&row.message.msg_id)).await,
    };
    if let Err(e) = gone {
        tracing::warn!(error = %e, "removing a dead-lettered outbox row failed");
        return false;
    }
    if !receipt.duplicate {
        metrics().outbox_dead_letters.inc();
        metrics()
            .dlq_messages
            .with_label_values(&[row.message.subject.as_str()])
            .inc();
    }
    match parked {
        Some(why) => {
            tracing::error!(msg_id = %row.message.msg_id, subject = %row.message.subject, %why, "outbox message dead-lettered without its payload; the row is parked")
        }
        None => {
            tracing::debug!(msg_id = %row.message.msg_id, subject = %row.message.subject, attempts, %error, "outbox message dead-lettered")
        }
    }
    true
}

impl Actor for OutboxRelay {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.in_flight.clear();
        self.deleting = false;
        self.sweeping = false;
        self.dirty = true;
        self.last_sweep = None;
        ctx.run_interval(self.config.sweep_every, |act, ctx| {
            let due = act.dirty
                || act
                    .last_sweep
                    .is_none_or(|t| t.elapsed() >= act.config.idle_sweep_every);
            if due {
                let min_age = act.config.min_age;
                act.sweep(min_age, ctx);
            }
        });
        ctx.run_interval(self.config.delete_every, |act, ctx| act.delete_acked(ctx));
    }
}

impl Supervised for OutboxRelay {}

impl Handler<Committed> for OutboxRelay {
    type Result = ();

    fn handle(&mut self, msg: Committed, ctx: &mut Context<Self>) {
        let rows = msg
            .0
            .into_iter()
            .map(|message| OutboxRow {
                message,
                created_at: now_ms(),
                attempts: 0,
                last_error: None,
            })
            .collect();
        self.publish(rows, ctx);
    }
}

impl Handler<SweepNow> for OutboxRelay {
    type Result = ();

    fn handle(&mut self, _: SweepNow, ctx: &mut Context<Self>) {
        self.sweep(Duration::ZERO, ctx);
    }
}

impl Handler<TakeAcked> for OutboxRelay {
    type Result = MessageResult<TakeAcked>;

    fn handle(&mut self, _: TakeAcked, _: &mut Context<Self>) -> Self::Result {
        MessageResult(Quiesce {
            in_flight: self.in_flight.len(),
            acked: std::mem::take(&mut self.acked),
        })
    }
}
