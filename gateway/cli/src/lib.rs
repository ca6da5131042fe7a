//! # The `jetflow` binary, as a library
//!
//! Everything the binary does besides parsing its arguments (which `src/main.rs` hands to
//! [`run::main`]): the command line ([`cli`]), the settings it becomes ([`settings`]), the
//! composition root that starts any set of roles and stops them in order ([`startup`]), the
//! local nats-server of `jetflow all` ([`local_nats`]), and the operator tools (`dlq`,
//! `bench` with [`cpu_use`], `probe`). Tests build the application in-process through [`startup::Application`].

#![warn(missing_docs)]

pub mod bench;
pub mod cli;
pub mod cpu_use;
pub mod dlq;
pub mod local_nats;
pub mod probe;
pub mod reference;
pub mod run;
pub mod settings;
pub mod startup;
pub mod telemetry;
