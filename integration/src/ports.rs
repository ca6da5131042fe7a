//! Free loopback ports, never handed out twice in one test process.

/// A port nothing listens on now, not given out before by this process
/// ([`jetflow_runtime::local_nats::free_port`], the one the binary uses).
pub fn free_port() -> u16 {
    jetflow_runtime::local_nats::free_port().expect("the OS hands out a free port")
}
