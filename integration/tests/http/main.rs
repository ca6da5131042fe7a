//! The REST gateway: the walking skeleton against a real nats-server (an accepted order is an
//! event; NATS going away answers 503, never hangs), the HTTP contract beyond the happy path,
//! and property-based bad input at every endpoint.

mod contract;
mod fuzz;
mod gateway_nats;
