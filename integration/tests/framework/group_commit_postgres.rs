//! The group commit's writers on PostgreSQL, where commits run side by side: with two, a
//! group does not wait for the other's commit.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use jetflow_integration::TestDatabase;
use jetflow_runtime::{Database, GroupCommit, Job};
use tokio::sync::Notify;

/// Inserts its number; a held write then waits to be released before its group commits.
struct Write {
    n: i64,
    held: Option<(Arc<Notify>, Arc<Notify>)>,
}

impl Job for Write {
    type Output = i64;

    fn run<'c>(
        &'c self,
        conn: jetflow_runtime::db::Conn<'c>,
    ) -> BoxFuture<'c, Result<i64, sqlx::Error>> {
        Box::pin(async move {
            jetflow_runtime::db::query("INSERT INTO written (n) VALUES ($1)")
                .bind(self.n)
                .execute(conn)
                .await?;
            if let Some((entered, release)) = &self.held {
                entered.notify_one();
                release.notified().await;
            }
            Ok(self.n)
        })
    }
}

#[test]
fn with_two_writers_a_group_commits_while_the_other_is_held() {
    jetflow_integration::run(async {
        let pg = TestDatabase::create().await;
        let db = Database::connect_url(pg.url()).await.expect("postgres");
        jetflow_runtime::db::query("CREATE TABLE written (n BIGINT PRIMARY KEY)")
            .execute(db.pool())
            .await
            .expect("table");
        let writes = GroupCommit::start_writers(db.clone(), 64, 2);
        let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let held = {
            let (writes, held) = (writes.clone(), (entered.clone(), release.clone()));
            tokio::spawn(async move {
                writes
                    .submit(Write {
                        n: 1,
                        held: Some(held),
                    })
                    .await
            })
        };
        tokio::time::timeout(Duration::from_secs(10), entered.notified())
            .await
            .expect("the held write started");
        let other = tokio::time::timeout(
            Duration::from_secs(10),
            writes.submit(Write { n: 2, held: None }),
        )
        .await
        .expect("the second writer committed while the first was held");
        assert_eq!(other.expect("committed"), 2);
        let visible: Vec<i64> = jetflow_runtime::db::query("SELECT n FROM written")
            .fetch_all(db.pool())
            .await
            .expect("read")
            .iter()
            .map(|r| r.try_get("n").expect("n"))
            .collect();
        assert_eq!(
            visible,
            vec![2],
            "only the second group is committed so far"
        );
        release.notify_one();
        let first = held.await.expect("task").expect("committed");
        assert_eq!(first, 1);
        let n: i64 = jetflow_runtime::db::query("SELECT COUNT(*) FROM written")
            .fetch_scalar(db.pool())
            .await
            .expect("count");
        assert_eq!(n, 2);
        db.close().await;
    });
}
