//! # jetflow runtime
//!
//! Supervised, instrumented actix actors and a bridge that carries their typed messages over
//! NATS JetStream, with retries, dead letters, circuit breaking, metrics and
//! effectively-once handling built in. It knows nothing about any business domain: a service
//! brings its message types (with [`Decode`]), its handlers and a [`Topology`].
//!
//! ```text
//!  JetStream ──pull──► Bridge ──route──Batch──► TxActor (supervised, bounded mailbox):
//!      ▲                  │                       one transaction per batch: inbox, state, outbox
//!      │                  │ ◄──── outcomes ───────┘ commit, then reply; the route acks
//!      └──── PubAck ◄─────┴──── OutboxRelay ◄──── publishes what was committed, at once
//! ```
//!
//! * **A service in a few lines**: [`Service`] takes routes (`"readings.>"` and a handler),
//!   derives streams and consumers, runs the relay and housekeeping, and stops in order on
//!   `SIGTERM`.
//! * **Effectively once**: a [`TxRoute`] sends what is waiting as one [`Batch`] to a
//!   [`TxActor`], which applies its [`TxHandler`] to it in one transaction ([`UnitOfWork`]):
//!   the runtime claims each delivery in the inbox (a redelivery changes nothing), the handler
//!   changes state and publishes messages, the runtime writes them to the outbox, commits,
//!   the route acks, and the [`OutboxRelay`] publishes them at once with their id as
//!   `Nats-Msg-Id`. A panic restarts the actor and nothing of its batch is kept. SQLite or
//!   PostgreSQL ([`Database`]).
//! * **Actors**: [`Supervisor`] restarts actors that stop or panic, with backoff and a
//!   budget; [`ActorRef`] counts and times every message; [`Route::new`] delivers a consumer's
//!   messages to an actor, through composable [`middleware`].
//! * **Failure**: an [`Outcome`] decides between ack, retry later and the dead-letter stream
//!   ([`dead_letter`]); [`BreakerActor`] guards a downstream.
//! * **Tests**: [`testkit`] drives actors and transactional handlers the way the bridge
//!   does, without NATS.
//!
//! Start with the [`prelude`] and `examples/thermostat.rs` (a complete effectively-once service).

#![warn(missing_docs)]

pub mod actor_ref;
pub mod advisory;
pub mod backoff;
pub mod breaker;
pub mod bridge;
pub mod codec;
pub mod connection;
mod consumer;
pub mod db;
pub mod dead_letter;
pub mod delivery;
pub mod group_commit;
pub mod headers;
pub mod health;
pub mod housekeeping;
pub mod inbox;
pub mod local_nats;
pub mod lookup;
pub mod metrics;
pub mod middleware;
pub mod otel;
pub mod outbox;
pub mod outcome;
pub mod pacing;
pub mod priority;
pub mod publisher;
pub mod relay;
pub mod route;
pub mod service;
mod settle;
pub mod span;
pub mod supervisor;
pub mod testkit;
pub mod topology;
pub mod trace;
pub mod tx_actor;
pub mod tx_route;
pub mod unit_of_work;

pub use actor_ref::{ActorRef, StopActor, TrackedRecipient};
pub use async_nats::HeaderMap;
pub use backoff::Backoff;
pub use breaker::{BreakerActor, BreakerConfig, BreakerError, BreakerState};
pub use bridge::{Bridge, BridgeConfig, BridgeStatus, NatsBridge, Publish};
pub use codec::{Decode, DecodeError, Json};
pub use connection::{NatsAuth, NatsConfig, NatsTls, Secret};
pub use db::{Backend, Database, DbConfig, DbError, WriteTx};
pub use delivery::{Delivery, DeliveryMeta};
pub use group_commit::{GroupCommit, GroupCommitError, Job};
pub use health::Health;
pub use housekeeping::{Housekeeping, Retention};
pub use lookup::Lookup;
pub use outcome::{DeadLetterReason, Decision, Outcome, ReplyOutcome};
pub use priority::{RequestsFirst, YieldTo};
pub use publisher::{OutgoingMessage, PublishError, PublishReceipt, Publisher};
pub use relay::{FlushReport, OutboxHandle, OutboxRelay, RelayConfig};
pub use route::{BatchConfig, Route};
pub use service::{Part, Running, Service, ServiceError};
pub use supervisor::{RestartPolicy, Supervisor};
pub use topology::{ConsumerSpec, Discard, StreamSpec, Topology};
pub use tx_actor::{Batch, BatchActor, TxActor, TxActors, TxCore};
pub use tx_route::{PreparedTxHandler, Preparing, TxError, TxHandler, TxRoute};
pub use unit_of_work::{Deferred, UnitOfWork};

/// actix, for the expansion of [`batch_actor!`].
#[doc(hidden)]
pub use actix as __actix;

/// What a service built on jetflow usually needs, in one `use`.
pub mod prelude {
    pub use crate::db::query;
    pub use crate::{
        ActorRef, BatchConfig, Bridge, BridgeConfig, ConsumerSpec, Database, DbConfig, Decode,
        DecodeError, Deferred, Delivery, DeliveryMeta, Health, Json, Lookup, NatsBridge,
        NatsConfig, OutboxHandle, OutboxRelay, Outcome, OutgoingMessage, PreparedTxHandler,
        Preparing, Publisher, RelayConfig, RestartPolicy, Route, Service, ServiceError, StreamSpec,
        Supervisor, Topology, TxActors, TxError, TxHandler, TxRoute, UnitOfWork,
    };
}

/// The Rust examples of the repository's README, compiled as doc tests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
