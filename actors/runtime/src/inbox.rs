//! The inbox: which input messages a consumer has already applied.
//!
//! Claiming a message inserts its key in the same transaction as the state change it causes.
//! A redelivered message finds its key and changes nothing; if the transaction rolls back,
//! the claim goes with it, so a message is applied exactly when its effects are. A batch
//! claims all its keys in one statement. Keys are kept for a retention period (longer than
//! the stream's duplicate window plus the longest redelivery horizon) and then pruned.

use std::collections::HashSet;

use crate::db::{Conn, Database, Param, insert_rows, now_ms};

/// Claims `key` for `consumer`. `false`: it was applied before, do nothing.
pub async fn claim(conn: Conn<'_>, consumer: &str, key: &str) -> Result<bool, sqlx::Error> {
    Ok(claim_all(conn, consumer, &[key]).await?.contains(key))
}

/// Claims every key for `consumer` in as few statements as possible; returns the keys that
/// were new (the others were applied before). Duplicates within `keys` are claimed once.
pub async fn claim_all(
    conn: Conn<'_>,
    consumer: &str,
    keys: &[&str],
) -> Result<HashSet<String>, sqlx::Error> {
    let mut unique: Vec<&str> = Vec::with_capacity(keys.len());
    let mut seen = HashSet::with_capacity(keys.len());
    for k in keys {
        if seen.insert(*k) {
            unique.push(k);
        }
    }
    let now = now_ms();
    let rows: Vec<Vec<Param>> = unique
        .iter()
        .map(|key| vec![consumer.into(), (*key).into(), now.into()])
        .collect();
    insert_rows(
        conn,
        "inbox",
        &["consumer", "message_key", "processed_at"],
        &rows,
        "ON CONFLICT (consumer, message_key) DO NOTHING RETURNING message_key",
    )
    .await?
    .iter()
    .map(|row| row.try_get::<String, _>("message_key"))
    .collect()
}

/// Forgets keys processed before `before_ms`; returns how many.
pub async fn prune(db: &Database, before_ms: i64) -> Result<u64, sqlx::Error> {
    crate::db::delete_older_than(
        db,
        "inbox",
        "consumer, message_key",
        "processed_at",
        before_ms,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_claimed_once_per_consumer() {
        let db = Database::connect_url("sqlite::memory:").await.unwrap();
        let mut tx = db.begin().await.unwrap();
        let claimed = claim_all(tx.conn(), "c1", &["a", "b", "a"]).await.unwrap();
        assert_eq!(claimed.len(), 2);
        assert!(!claim(tx.conn(), "c1", "a").await.unwrap());
        assert!(
            claim(tx.conn(), "c2", "a").await.unwrap(),
            "another consumer"
        );
        let again = claim_all(tx.conn(), "c1", &["a", "c"]).await.unwrap();
        assert_eq!(again, HashSet::from(["c".to_string()]));
        Database::commit(tx).await.unwrap();
        assert_eq!(prune(&db, now_ms() + 1).await.unwrap(), 4);
    }

    #[tokio::test]
    async fn a_rolled_back_claim_is_forgotten() {
        let db = Database::connect_url("sqlite::memory:").await.unwrap();
        let mut tx = db.begin().await.unwrap();
        assert!(claim(tx.conn(), "c", "k").await.unwrap());
        tx.rollback().await.unwrap();
        let mut tx = db.begin().await.unwrap();
        assert!(claim(tx.conn(), "c", "k").await.unwrap());
    }
}
