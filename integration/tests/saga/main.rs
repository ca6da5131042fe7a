//! The order saga end to end against real nats-server processes: every scenario on SQLite (the
//! laptop default) and on PostgreSQL (the production database), replicas sharing a role's
//! consumers, and the races only PostgreSQL shows.

mod postgres;
mod races_postgres;
mod sqlite;
