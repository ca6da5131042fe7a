//! What a transaction read of one table, by key, so that a batch reads once and each of its
//! deliveries decides in memory: see [`Lookup`].

use std::collections::{BTreeMap, BTreeSet};

/// What a transaction read of one table, by key: the rows found, and the keys looked for and
/// not found. A batch reads the rows all its deliveries need in one query (in `begin_batch`,
/// with [`crate::db::fetch_locked`]), keeps them in a `Lookup` inside a
/// [`Deferred`](crate::Deferred), decides every delivery against it in memory, and writes
/// what changed when the transaction commits.
///
/// ```
/// use jetflow_runtime::Lookup;
///
/// let mut levels: Lookup<i64> = Lookup::default();
/// // What to read: the keys not looked for yet, sorted, once each.
/// assert_eq!(levels.unread(["b", "a", "b"]), ["a", "b"]);
/// // The read found "a" only.
/// levels.read(&["a", "b"], [("a".to_string(), 7)]);
/// assert_eq!(levels.get("a"), Some(&7));
/// assert!(levels.is_absent("b"));
/// assert!(levels.unread(["a", "b"]).is_empty());
/// // A row this transaction writes is known from now on.
/// levels.insert("b", 1);
/// assert_eq!(levels.get("b"), Some(&1));
/// ```
#[derive(Debug, Clone)]
pub struct Lookup<V> {
    found: BTreeMap<String, V>,
    absent: BTreeSet<String>,
}

impl<V> Default for Lookup<V> {
    fn default() -> Self {
        Self {
            found: Default::default(),
            absent: Default::default(),
        }
    }
}

impl<V> Lookup<V> {
    /// The keys neither found nor known to be absent: what is left to read, sorted and once
    /// each (the order in which to lock them).
    pub fn unread<'k>(&self, keys: impl IntoIterator<Item = &'k str>) -> Vec<&'k str> {
        let keys: BTreeSet<&str> = keys
            .into_iter()
            .filter(|k| !self.found.contains_key(*k) && !self.absent.contains(*k))
            .collect();
        keys.into_iter().collect()
    }

    /// Records a read of `keys` that found `rows`: the other keys are absent.
    pub fn read(&mut self, keys: &[&str], rows: impl IntoIterator<Item = (String, V)>) {
        self.absent.extend(keys.iter().map(|k| (*k).to_string()));
        for (key, row) in rows {
            self.absent.remove(&key);
            self.found.insert(key, row);
        }
    }

    /// The row of `key`, if it was found or inserted.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.found.get(key)
    }

    /// The row of `key`, to change.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.found.get_mut(key)
    }

    /// Whether `key` was looked for and not found.
    pub fn is_absent(&self, key: &str) -> bool {
        self.absent.contains(key)
    }

    /// A row this transaction writes: known from now on.
    pub fn insert(&mut self, key: &str, row: V) {
        self.absent.remove(key);
        self.found.insert(key.to_string(), row);
    }

    /// Forgets that `key` was absent, so that it is read again (another transaction wrote it
    /// since).
    pub fn forget_absent(&mut self, key: &str) {
        self.absent.remove(key);
    }

    /// Every row found or inserted, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.found.iter()
    }
}
