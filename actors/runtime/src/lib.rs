//! # jetflow runtime
//!
//! Supervised, instrumented actix actors and a bridge that carries their typed messages over
//! NATS JetStream, with retries, dead letters, circuit breaking and metrics built in. It knows
//! nothing about any business domain: a service brings its message types (with [`Decode`]),
//! its actors (handling [`Delivery<M>`] and answering an [`Outcome`]) and a [`Topology`].
//!
//! ```text
//!  JetStream ──pull──► NatsBridge ──route (decode, middleware)──► ActorRef ──► your actor
//!      ▲                   │                                                     │
//!      └──── PubAck ◄──────┴────────────── Publish(OutgoingMessage) ◄────────────┘
//! ```

pub mod actor_ref;
pub mod advisory;
pub mod breaker;
pub mod bridge;
pub mod codec;
pub mod connection;
mod consumer;
pub mod dead_letter;
pub mod delivery;
pub mod headers;
pub mod health;
pub mod metrics;
pub mod middleware;
pub mod outcome;
pub mod publisher;
pub mod route;
pub mod supervisor;
pub mod testkit;
pub mod topology;

pub use actor_ref::{ActorRef, TrackedRecipient};
pub use async_nats::HeaderMap;
pub use breaker::{BreakerActor, BreakerConfig, BreakerError, BreakerState};
pub use bridge::{BridgeConfig, BridgeStatus, NatsBridge, Publish};
pub use codec::{Decode, DecodeError, Json};
pub use connection::{NatsAuth, NatsConfig, Secret};
pub use delivery::{Delivery, DeliveryMeta};
pub use health::Health;
pub use outcome::{DeadLetterReason, Decision, Outcome, ReplyOutcome};
pub use publisher::{OutgoingMessage, PublishError, PublishReceipt, Publisher};
pub use route::Route;
pub use supervisor::{RestartPolicy, Supervisor};
pub use topology::{ConsumerSpec, StreamSpec, Topology};
