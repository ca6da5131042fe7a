//! jetflow-domain
