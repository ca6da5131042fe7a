//! The order saga end to end on SQLite (the laptop default), against a real nats-server.

use jetflow_integration::scenarios::Backend;

jetflow_integration::saga_suite!(Backend::Sqlite);
