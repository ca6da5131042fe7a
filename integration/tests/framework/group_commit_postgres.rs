//! The group commit's writers on PostgreSQL, where commits run side by side: with two, a
//! group does not wait for the other's commit.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use jetflow_integration::TestDatabase;
use jetflow_runtime::{Database, GroupCommit, Job};
use sqlx::AnyConnection;
use tokio::sync::Notify;

/// Inserts its number; a held write then waits to be released before its group commits.
struct Write {
    n: i64,
    held: Option<(Arc<Notify>, Arc<Notify>)>,
}

impl Job for Write {
    type Output = i64;

    fn run<'c>(&'c self, conn: &'c mut AnyConnection) -> BoxFuture<'c, Result<i64, sqlx::Error>> {
        Box::pin(async move {
            sqlx::query("INSERT INTO written (n) VALUES ($1)")
                .bind(self.n)
                .execute(&mut *conn)
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
        sqlx::query("CREATE TABLE written (n BIGINT PRIMARY KEY)")
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
        let visible: Vec<i64> = sqlx::query_scalar("SELECT n FROM written")
            .fetch_all(db.pool())
            .await
            .expect("read");
        assert_eq!(
            visible,
            vec![2],
            "only the second group is committed so far"
        );
        release.notify_one();
        let first = held.await.expect("task").expect("committed");
        assert_eq!(first, 1);
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM written")
            .fetch_one(db.pool())
            .await
            .expect("count");
        assert_eq!(n, 2);
        db.close().await;
    });
}
