//! The database: SQLite on a laptop, PostgreSQL in production, one code path for both.
//!
//! Everything goes through sqlx's `Any` driver with portable SQL (TEXT, BIGINT, `$n`
//! parameters, `ON CONFLICT DO NOTHING`), and one migration set runs at start. SQLite allows
//! one writer at a time, so its write transactions start with `BEGIN IMMEDIATE`: they queue
//! for the write lock (busy timeout) instead of failing half-way when two writers meet.

use std::path::Path;
use std::time::Duration;

use jetflow_runtime::Health;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Transaction};

/// The migrations, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The readiness component the database reports as.
pub const HEALTH_COMPONENT: &str = "database";

/// Which engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite (a file).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL is not `sqlite:` or `postgres:`.
    #[error("DATABASE_URL {0:?} is neither sqlite:// nor postgres://")]
    UnsupportedUrl(String),
    /// The SQLite file's directory could not be created.
    #[error("cannot create the directory of {path}: {source}")]
    CreateDir {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Connecting failed.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL, password hidden.
        url: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
}

/// A pool and the engine behind it.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
    url: String,
}

/// Hides the password of a URL (`postgres://u:***@h/db`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

impl Database {
    /// Connects (creating a SQLite file and its directory if needed) and runs migrations.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(DbError::UnsupportedUrl(redact_url(url)));
        };
        let url = match backend {
            Backend::Sqlite => prepare_sqlite_url(url)?,
            Backend::Postgres => url.to_string(),
        };
        let redacted = redact_url(&url);
        let options: AnyConnectOptions = url.parse().map_err(|source| DbError::Connect {
            url: redacted.clone(),
            source,
        })?;
        let pool_options = AnyPoolOptions::new()
            .acquire_timeout(Duration::from_secs(5))
            .max_connections(match backend {
                Backend::Sqlite => 8,
                Backend::Postgres => 16,
            });
        let pool = pool_options
            .connect_with(options)
            .await
            .map_err(|source| DbError::Connect {
                url: redacted.clone(),
                source,
            })?;
        if backend == Backend::Sqlite {
            // WAL lets readers (GET /orders) run beside the writer; it is a property of the
            // file, so setting it once is enough.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        MIGRATOR.run(&pool).await?;
        tracing::info!(url = %redacted, "database ready");
        Ok(Self {
            pool,
            backend,
            url: redacted,
        })
    }

    /// The pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The engine.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL with its password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Starts a write transaction.
    pub async fn begin(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// Pings every `every` and reports the result as the `database` readiness component.
    pub fn spawn_health_probe(&self, health: Health, every: Duration) {
        let db = self.clone();
        actix_rt::spawn(async move {
            loop {
                match tokio::time::timeout(Duration::from_secs(3), db.ping()).await {
                    Ok(Ok(())) => health.set_ready(HEALTH_COMPONENT, db.url.clone()),
                    Ok(Err(e)) => health.set_not_ready(HEALTH_COMPONENT, e.to_string()),
                    Err(_) => health.set_not_ready(HEALTH_COMPONENT, "no answer within 3s"),
                }
                tokio::time::sleep(every).await;
            }
        });
    }
}

/// Makes sure a SQLite URL creates its file, and that the file's directory exists.
fn prepare_sqlite_url(url: &str) -> Result<String, DbError> {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path != ":memory:" && !path.is_empty() {
        if let Some(dir) = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|source| DbError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
    }
    let query = match query {
        Some(q) if q.contains("mode=") => q.to_string(),
        Some(q) => format!("{q}&mode=rwc"),
        None => "mode=rwc".to_string(),
    };
    Ok(format!("sqlite://{path}?{query}"))
}

/// Milliseconds since the Unix epoch, the time format of every table.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/jetflow"),
            "postgres://app:***@db:5432/jetflow"
        );
        assert_eq!(redact_url("sqlite://./data/x.db"), "sqlite://./data/x.db");
        assert_eq!(
            redact_url("postgres://app@db/jetflow"),
            "postgres://app@db/jetflow"
        );
    }

    #[test]
    fn sqlite_urls_create_their_file() {
        assert_eq!(
            prepare_sqlite_url("sqlite::memory:").unwrap(),
            "sqlite://:memory:?mode=rwc"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/j.db");
        let url = prepare_sqlite_url(&format!("sqlite://{}", path.display())).unwrap();
        assert!(url.ends_with("j.db?mode=rwc"));
        assert!(path.parent().unwrap().exists());
    }

    #[tokio::test]
    async fn migrations_run_on_sqlite_and_bad_urls_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::connect(&format!("sqlite://{}/j.db", dir.path().display()))
            .await
            .unwrap();
        db.ping().await.unwrap();
        let err = Database::connect("mysql://x")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("neither sqlite"), "{err}");
    }
}
