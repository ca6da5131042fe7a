//! How jetflow starts and stops: a bad setting stops every command at once with exit code 2
//! and one line; SIGTERM and SIGINT stop every command in order, under load.

mod bad_config;
mod stop;
