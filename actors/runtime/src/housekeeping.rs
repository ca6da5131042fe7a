//! Housekeeping: tables that grow with traffic are pruned after a retention.
//!
//! The inbox must remember a message longer than anything can bring it back: the stream's
//! duplicate window (a re-publish within it is dropped by JetStream anyway) plus the longest
//! redelivery horizon (every delivery with its ack wait and backoff), plus whatever an
//! application re-publishes on its own (an idempotency key repeated within its retention).
//! [`Retention::check`] refuses a retention shorter than that. Applications add their own
//! tables with [`Housekeeping::also`].

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::db::{Database, millis, now_ms};
use crate::inbox;

/// How long processed-message keys are kept, and how often pruning runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Inbox keys older than this are forgotten.
    pub inbox: Duration,
    /// How often to prune.
    pub every: Duration,
}

impl Default for Retention {
    /// Keys are kept seven days; pruning runs hourly.
    fn default() -> Self {
        Self {
            inbox: Duration::from_secs(7 * 24 * 3600),
            every: Duration::from_secs(3600),
        }
    }
}

impl Retention {
    /// Refuses an inbox retention that does not outlive `horizon` (the longest time after
    /// which the same message can arrive again).
    pub fn check(&self, horizon: Duration) -> Result<(), String> {
        if self.every.is_zero() {
            return Err("the pruning interval must be positive".into());
        }
        if self.inbox <= horizon {
            return Err(format!(
                "the inbox retention ({}) must exceed the longest time a message can come back ({}): the duplicate window, every redelivery and every re-publish",
                humantime::format_duration(self.inbox),
                humantime::format_duration(horizon)
            ));
        }
        Ok(())
    }
}

/// A pruning job of an application's own: returns the rows it removed.
pub type PruneFn =
    Arc<dyn Fn(Database) -> BoxFuture<'static, Result<u64, sqlx::Error>> + Send + Sync>;

/// The pruning of one database.
#[derive(Clone)]
pub struct Housekeeping {
    db: Database,
    retention: Retention,
    extra: Vec<(String, PruneFn)>,
}

impl std::fmt::Debug for Housekeeping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Housekeeping")
            .field("retention", &self.retention)
            .field(
                "extra",
                &self.extra.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Housekeeping {
    /// Prunes the inbox of `db` after `retention`.
    pub fn new(db: Database, retention: Retention) -> Self {
        Self {
            db,
            retention,
            extra: Vec::new(),
        }
    }

    /// Adds a job of the application's own (e.g. expired idempotency keys).
    pub fn also(mut self, name: impl Into<String>, job: PruneFn) -> Self {
        self.extra.push((name.into(), job));
        self
    }

    /// Runs every job once; returns what each removed.
    pub async fn run_once(&self) -> Vec<(String, Result<u64, sqlx::Error>)> {
        let before = now_ms().saturating_sub(millis(self.retention.inbox));
        let mut out = vec![("inbox".to_string(), inbox::prune(&self.db, before).await)];
        for (name, job) in &self.extra {
            out.push((name.clone(), job(self.db.clone()).await));
        }
        for (name, result) in &out {
            match result {
                Ok(0) => {}
                Ok(n) => tracing::info!(table = %name, rows = n, "pruned"),
                Err(e) => tracing::warn!(table = %name, error = %e, "pruning failed"),
            }
        }
        out
    }

    /// Prunes every `retention.every` (the first run right away) until `stop`.
    pub fn spawn(self, stop: CancellationToken) {
        tokio::spawn(async move {
            loop {
                self.run_once().await;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(self.retention.every) => {}
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retention_shorter_than_the_horizon_is_refused() {
        let r = Retention {
            inbox: Duration::from_secs(60),
            every: Duration::from_secs(1),
        };
        assert!(r.check(Duration::from_secs(30)).is_ok());
        let e = r.check(Duration::from_secs(120)).unwrap_err();
        assert!(e.contains("inbox retention"), "{e}");
    }

    /// A day's keys pruned while the saga writes: the prune goes a chunk at a time, each its
    /// own short transaction, so a writer gets in between chunks instead of waiting for (or,
    /// on SQLite, failing with `SQLITE_BUSY` behind) one long delete.
    #[tokio::test]
    async fn a_writer_gets_in_while_a_large_prune_runs() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("prune.db").display());
        let db = Database::connect_url(&url).await.unwrap();
        let rows = 100 * crate::db::PRUNE_CHUNK;
        crate::db::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
             INSERT INTO inbox (consumer, message_key, processed_at) \
             SELECT 'c', 'k' || i, 1 FROM n",
        )
        .bind(rows)
        .execute(db.pool())
        .await
        .unwrap();
        let count = |db: Database| async move {
            crate::db::query("SELECT COUNT(*) FROM inbox")
                .fetch_scalar::<i64>(db.pool())
                .await
                .unwrap()
        };
        let d = db.clone();
        let prune = tokio::spawn(async move { inbox::prune(&d, 2).await });
        // Once the first chunk is gone, a writer takes its turn while most rows are still
        // there (one long delete would have taken them all before anyone saw a change).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while count(db.clone()).await == rows {
            assert!(
                std::time::Instant::now() < deadline,
                "the prune never started"
            );
            tokio::task::yield_now().await;
        }
        let mut tx = db.begin().await.unwrap();
        assert!(inbox::claim(tx.conn(), "c", "fresh").await.unwrap());
        Database::commit(tx).await.unwrap();
        let left = count(db.clone()).await;
        assert!(
            left > rows / 2,
            "the writer got in only after {} of {rows} rows were deleted",
            rows + 1 - left
        );
        assert_eq!(prune.await.unwrap().unwrap(), rows as u64);
        assert_eq!(count(db.clone()).await, 1, "only the fresh key is left");
    }

    #[tokio::test]
    async fn old_keys_go_and_recent_ones_stay() {
        let db = Database::connect_url("sqlite::memory:").await.unwrap();
        crate::db::query(
            "INSERT INTO inbox (consumer, message_key, processed_at) VALUES ('c', 'old', $1), ('c', 'new', $2)",
        )
        .bind(now_ms() - 10_000)
        .bind(now_ms())
        .execute(db.pool())
        .await
        .unwrap();
        let h = Housekeeping::new(
            db.clone(),
            Retention {
                inbox: Duration::from_secs(5),
                every: Duration::from_secs(1),
            },
        );
        let out = h.run_once().await;
        assert_eq!(out[0].1.as_ref().ok(), Some(&1));
        let mut tx = db.begin().await.unwrap();
        assert!(
            inbox::claim(tx.conn(), "c", "old").await.unwrap(),
            "forgotten"
        );
        assert!(
            !inbox::claim(tx.conn(), "c", "new").await.unwrap(),
            "remembered"
        );
    }
}
