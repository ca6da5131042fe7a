//! A fresh PostgreSQL database per test, dropped afterwards.
//!
//! The server must be reachable: a test that cannot reach PostgreSQL fails loudly, it never
//! skips. `.ci/ensure-postgres.sh` (run by the test command) starts one if needed.

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// The admin URL (a database that exists, to create others from).
pub fn admin_url() -> String {
    std::env::var("JETFLOW_TEST_PG_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A database created for one test.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    admin: String,
}

fn with_database(admin: &str, name: &str) -> String {
    match admin.rfind('/') {
        Some(i) if admin[..i].contains("://") && admin[i..].len() > 1 => {
            let rest = &admin[i + 1..];
            let query = rest.find('?').map(|q| &rest[q..]).unwrap_or("");
            format!("{}/{name}{query}", &admin[..i])
        }
        _ => format!("{}/{name}", admin.trim_end_matches('/')),
    }
}

impl TestDatabase {
    /// Creates `jetflow_t_<id>`. Panics, loudly, if PostgreSQL is unreachable.
    pub async fn create() -> Self {
        let admin = admin_url();
        let name = format!(
            "jetflow_t_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {admin}: {e}\n\
                 The PostgreSQL tests never skip. Start a server (.ci/ensure-postgres.sh) or point \
                 JETFLOW_TEST_PG_ADMIN_URL at one."
            )
        });
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name} at {admin}: {e}"));
        let _ = conn.close().await;
        Self {
            url: with_database(&admin, &name),
            name,
            admin,
        }
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Makes the database unreachable for the application, as an outage would: new
    /// connections are refused and existing ones are terminated.
    pub async fn take_offline(&self) {
        let mut conn = PgConnection::connect(&self.admin)
            .await
            .expect("admin connection");
        for sql in [
            format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false", self.name),
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
                self.name
            ),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .expect("take the database offline");
        }
    }

    /// Ends [`Self::take_offline`].
    pub async fn bring_online(&self) {
        let mut conn = PgConnection::connect(&self.admin)
            .await
            .expect("admin connection");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
            self.name
        )))
        .execute(&mut conn)
        .await
        .expect("bring the database online");
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop may run inside or outside a runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok(mut conn) = PgConnection::connect(&admin).await {
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut conn)
                        .await;
                    }
                });
            }
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_are_derived_from_the_admin_url() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
