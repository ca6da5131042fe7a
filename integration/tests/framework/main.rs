//! The framework (`jetflow-runtime`) against real nats-server processes and real databases:
//! the bridge's conformance suite, the effectively-once pieces (outbox relay, inbox), the row
//! helpers and group commit on both engines, the PostgreSQL sockets, and the example service
//! run as a user runs it.

mod bridge_conformance;
mod db_rows;
mod effectively_once;
mod group_commit_postgres;
mod postgres_socket;
mod thermostat_example;
