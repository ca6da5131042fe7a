//! jetflow-gateway
