//! # The `jetflow` binary, as a library
//!
//! Everything the binary does besides parsing its arguments (which `src/main.rs` hands to
//! [`run::main`]): the command line ([`cli`]), the settings it becomes ([`settings`]), the
//! composition root that starts any set of roles and stops them in order ([`startup`]), and
//! the operator tools (`dlq`, `probe`; `jetflow bench` is the `jetflow-bench` crate's
//! [`jetflow_bench::command`]). Tests build the application in-process through
//! [`startup::Application`].

#![warn(missing_docs)]

pub mod cli;
pub mod dlq;
pub mod probe;
pub mod reference;
pub mod run;
pub mod settings;
pub mod startup;
pub mod telemetry;
