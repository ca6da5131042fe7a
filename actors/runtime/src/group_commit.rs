//! Group commit: small writes from many concurrent callers (HTTP requests, say) share one
//! transaction and one commit.
//!
//! A caller submits a [`Job`] and awaits its answer. One worker takes the first job waiting
//! and every other job already queued (up to a maximum), runs them in one transaction, in the
//! order they came, commits, and answers each caller. While it commits, new jobs queue up and
//! form the next group, so under load a commit serves many callers, and a lone caller is
//! served at once: grouping never adds a wait of its own. A job type may also write a whole
//! group in fewer statements ([`Job::run_group`]: one multi-row insert, say). A group that
//! fails is halved until the job to blame is alone ([`settle`](crate::settle), as the
//! actors' batches are): only that job is answered with the error, so one bad write never
//! fails its neighbours.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::db::{self, Conn, Database};
use crate::settle::{self, Verdict};

/// One write to commit with others.
pub trait Job: Send + Sync + 'static {
    /// What the caller gets back.
    type Output: Send + 'static;

    /// Runs the write in the shared transaction. It may run again (in a later transaction)
    /// if a neighbour failed, so it must not have effects outside the database.
    fn run<'c>(&'c self, conn: Conn<'c>) -> BoxFuture<'c, Result<Self::Output, sqlx::Error>>;

    /// Runs a whole group in the shared transaction and answers each job, in the group's
    /// order. The default runs each job with [`Job::run`], one after the other; override it
    /// to write what a group's jobs have in common in fewer statements. If it fails (and the
    /// connection did not), the transaction is rolled back and each half of the group runs
    /// again on its own, halving until the job to blame is alone and answered with the error.
    fn run_group<'c>(
        jobs: &'c [&'c Self],
        conn: Conn<'c>,
    ) -> BoxFuture<'c, Result<Vec<Self::Output>, sqlx::Error>>
    where
        Self: Sized,
    {
        Box::pin(async move {
            let mut conn = conn;
            let mut outputs = Vec::with_capacity(jobs.len());
            for job in jobs {
                outputs.push(job.run(conn.reborrow()).await?);
            }
            Ok(outputs)
        })
    }
}

/// Why a submitted job has no answer.
#[derive(Debug, thiserror::Error)]
pub enum GroupCommitError {
    /// The write, or its transaction, failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The worker is gone (the process is stopping).
    #[error("the database writer has stopped")]
    Stopped,
}

type Pending<J> = (J, Reply<J>);

/// The handle callers submit jobs through (cheap to clone).
pub struct GroupCommit<J: Job> {
    queue: mpsc::Sender<Pending<J>>,
}

impl<J: Job> Clone for GroupCommit<J> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<J: Job> std::fmt::Debug for GroupCommit<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish()
    }
}

impl<J: Job> GroupCommit<J> {
    /// Starts the worker on `db`, committing at most `max_group` jobs together. It stops
    /// when every handle is dropped.
    pub fn start(db: Database, max_group: usize) -> Self {
        Self::start_writers(db, max_group, 1)
    }

    /// Starts `writers` workers on `db` that take turns gathering groups: while one waits
    /// for its commit (a WAL flush, most of the time), the next gathers the jobs that came
    /// meanwhile and commits them in a transaction of its own, so a job waits for at most
    /// one commit instead of the one in progress and then its own. Worth it where commits
    /// run in parallel (PostgreSQL flushes concurrent commits together); SQLite has a single
    /// writer, so one is right there. Jobs of concurrent groups must not depend on each
    /// other's order (each caller's own jobs are in order: it awaits one before the next).
    pub fn start_writers(db: Database, max_group: usize, writers: usize) -> Self {
        let max_group = max_group.max(1);
        let writers = writers.max(1);
        let (queue, rx) = mpsc::channel(max_group * 4 * writers);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers {
            tokio::spawn(work(db.clone(), rx.clone(), max_group));
        }
        Self { queue }
    }

    /// Runs `job` in the next group's transaction and returns its output once committed.
    pub async fn submit(&self, job: J) -> Result<J::Output, GroupCommitError> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send((job, tx))
            .await
            .map_err(|_| GroupCommitError::Stopped)?;
        rx.await.map_err(|_| GroupCommitError::Stopped)?
    }
}

async fn work<J: Job>(db: Database, rx: Arc<Mutex<mpsc::Receiver<Pending<J>>>>, max_group: usize) {
    loop {
        // The queue is held only while a group is gathered, never during its commit.
        let group = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut group = vec![first];
            while group.len() < max_group {
                match rx.try_recv() {
                    Ok(p) => group.push(p),
                    Err(_) => break,
                }
            }
            group
        };
        commit_group(&db, group).await;
    }
}

/// Commits a group ([`settle`](crate::settle)): together first ([`Job::run_group`]); a group
/// refused as a whole is halved until the bad job is alone, and only it is answered with
/// the error.
async fn commit_group<J: Job>(db: &Database, group: Vec<Pending<J>>) {
    let members = (0..group.len()).collect();
    let mut settling = Settling {
        db,
        jobs: group
            .into_iter()
            .map(|(job, reply)| (job, Some(reply)))
            .collect(),
    };
    settle::settle(&mut settling, members).await;
}

/// A group being committed: its jobs and the callers still waiting for an answer.
struct Settling<'a, J: Job> {
    db: &'a Database,
    jobs: Vec<(J, Option<Reply<J>>)>,
}

/// Where a caller waits for its job's answer.
type Reply<J> = oneshot::Sender<Result<<J as Job>::Output, GroupCommitError>>;

impl<J: Job> Settling<'_, J> {
    fn answer(&mut self, member: usize, result: Result<J::Output, GroupCommitError>) {
        if let Some(reply) = self.jobs[member].1.take() {
            let _ = reply.send(result);
        }
    }
}

impl<J: Job> settle::Group for Settling<'_, J> {
    type Error = String;

    async fn attempt(&mut self, members: &[usize]) -> Verdict<String> {
        let verdict = |e: sqlx::Error, whole: bool| {
            let text = e.to_string();
            if db::is_conflict(&e) {
                Verdict::Conflict(text)
            } else if whole && !db::is_connection(&e) {
                Verdict::Refused(text)
            } else {
                Verdict::Failed(text)
            }
        };
        let mut tx = match self.db.begin().await {
            Ok(tx) => tx,
            Err(e) => return verdict(e, false),
        };
        let jobs: Vec<&J> = members.iter().map(|&m| &self.jobs[m].0).collect();
        let outputs = match J::run_group(&jobs, tx.conn()).await {
            Ok(outputs) if outputs.len() == jobs.len() => outputs,
            Ok(outputs) => {
                let _ = tx.rollback().await;
                return Verdict::Refused(format!(
                    "run_group answered {} of {} jobs",
                    outputs.len(),
                    jobs.len()
                ));
            }
            Err(e) => {
                let _ = tx.rollback().await;
                return verdict(e, true);
            }
        };
        if let Err(e) = Database::commit(tx).await {
            return verdict(e, true);
        }
        for (&m, output) in members.iter().zip(outputs) {
            self.answer(m, Ok(output));
        }
        Verdict::Done
    }

    fn done(&mut self, _: &[usize]) {
        // Answered with their outputs in `attempt`.
    }

    fn failed(&mut self, member: usize, error: String) {
        self.answer(
            member,
            Err(GroupCommitError::Database(sqlx::Error::Protocol(error))),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Insert(i64);

    impl Job for Insert {
        type Output = i64;

        fn run<'c>(&'c self, conn: Conn<'c>) -> BoxFuture<'c, Result<i64, sqlx::Error>> {
            Box::pin(async move {
                db::query("INSERT INTO t (n) VALUES ($1)")
                    .bind(self.0)
                    .execute(conn)
                    .await?;
                Ok(self.0 * 10)
            })
        }
    }

    /// 200 writes through a group commit of `max_group` on a fresh table `table`, one of them a
    /// duplicate key (write 150 repeats write 3): exactly one of those two fails, on its own, and
    /// the 199 others are stored. Returns every write's answer.
    async fn two_hundred_writes_with_one_duplicate<J: Job<Output = i64>>(
        table: &str,
        max_group: usize,
        job: impl Fn(i64) -> J,
    ) -> Vec<Result<i64, GroupCommitError>> {
        let db = Database::connect_url("sqlite::memory:").await.unwrap();
        db::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {table} (n BIGINT PRIMARY KEY)"
        )))
        .execute(&db)
        .await
        .unwrap();
        let gc = GroupCommit::start(db.clone(), max_group);
        let jobs = (0..200).map(|i| {
            let (gc, job) = (gc.clone(), job(if i == 150 { 3 } else { i }));
            async move { gc.submit(job).await }
        });
        let results = futures::future::join_all(jobs).await;
        let failed: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_err())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0] == 3 || failed[0] == 150, "{failed:?}");
        let n: i64 = db::query(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_scalar(&db)
            .await
            .unwrap();
        assert_eq!(n, 199);
        results
    }

    #[tokio::test]
    async fn many_callers_share_commits_and_a_bad_write_fails_alone() {
        let commits = crate::metrics::metrics().db_commits.get();
        let results = two_hundred_writes_with_one_duplicate("t", 64, Insert).await;
        assert_eq!(results[10].as_ref().ok(), Some(&100));
        let used = crate::metrics::metrics().db_commits.get() - commits;
        assert!(used < 100, "200 writes took {used} commits");
    }

    /// Inserts its number; a group is one multi-row insert, counted.
    struct Batched(i64);

    static GROUP_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static SINGLE_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    impl Job for Batched {
        type Output = i64;

        fn run<'c>(&'c self, conn: Conn<'c>) -> BoxFuture<'c, Result<i64, sqlx::Error>> {
            SINGLE_CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                db::query("INSERT INTO b (n) VALUES ($1)")
                    .bind(self.0)
                    .execute(conn)
                    .await?;
                Ok(self.0)
            })
        }

        fn run_group<'c>(
            jobs: &'c [&'c Self],
            conn: Conn<'c>,
        ) -> BoxFuture<'c, Result<Vec<i64>, sqlx::Error>> {
            GROUP_CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                let sql = format!(
                    "INSERT INTO b (n) VALUES {}",
                    (1..=jobs.len())
                        .map(|i| format!("(${i})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let mut q = db::query(sqlx::AssertSqlSafe(sql));
                for job in jobs {
                    q = q.bind(job.0);
                }
                q.execute(conn).await?;
                Ok(jobs.iter().map(|j| j.0).collect())
            })
        }
    }

    #[tokio::test]
    async fn a_group_written_together_is_halved_to_fail_only_the_bad_job() {
        let max_group = 64;
        let results = two_hundred_writes_with_one_duplicate("b", max_group, Batched).await;
        assert_eq!(results[10].as_ref().ok(), Some(&10));
        let (groups, singles) = (
            GROUP_CALLS.load(std::sync::atomic::Ordering::SeqCst),
            SINGLE_CALLS.load(std::sync::atomic::Ordering::SeqCst),
        );
        assert_eq!(singles, 0, "every write went through run_group");
        assert!(groups >= 1, "the groups were written together");
    }
}
