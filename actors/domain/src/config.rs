//! Settings of the order saga (the binary fills them from flags and environment; tests start
//! from [`SagaConfig::default`] too, so defaults live here once).

use std::time::Duration;

use jetflow_runtime::{BatchConfig, Discard};

/// How the saga's consumers and producers behave.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaConfig {
    /// Ack wait of every consumer; redelivery after a crash starts this long after delivery.
    pub ack_wait: Duration,
    /// Deliveries of an event before it is dead-lettered.
    pub max_deliver: u32,
    /// Deliveries of a payment attempt before the order ends `payment_unavailable`.
    pub payment_max_deliver: u32,
    /// First delay before a payment is retried while the provider is unavailable (doubles).
    pub payment_retry_base: Duration,
    /// Longest delay between payment retries.
    pub payment_retry_max: Duration,
    /// Which versions of `orders.created` the gateway publishes: `[1]`, `[2]` or `[1, 2]`
    /// (dual publishing while consumers migrate).
    pub created_versions: Vec<u8>,
    /// Replicas of the saga's streams (3 on a 3-node cluster).
    pub stream_replicas: usize,
    /// How long the saga's streams keep events.
    pub stream_max_age: Duration,
    /// Most bytes each saga stream keeps (`None`: no limit), and what a full one does.
    pub stream_max_bytes: Option<i64>,
    /// What a full stream does with a new event.
    pub stream_discard: Discard,
    /// How each consumer gathers batches (one transaction per batch).
    pub batch: BatchConfig,
    /// Instances of each saga actor per lane (sharded by the order's id).
    pub actor_instances: usize,
    /// Whether acks wait for JetStream's confirmation.
    pub double_ack: bool,
    /// Orders not finished after this long are cancelled (`timed_out`).
    pub order_timeout: Duration,
    /// How often overdue orders are looked for.
    pub order_sweep_interval: Duration,
    /// How often charges of cancelled orders that could not be voided yet are tried again.
    pub void_scan_interval: Duration,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_retention: Duration,
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            payment_max_deliver: 5,
            payment_retry_base: Duration::from_secs(2),
            payment_retry_max: Duration::from_secs(30),
            created_versions: vec![2],
            stream_replicas: 1,
            stream_max_age: Duration::from_secs(7 * 24 * 3600),
            stream_max_bytes: None,
            stream_discard: Discard::Old,
            batch: BatchConfig::default(),
            actor_instances: 2,
            double_ack: false,
            order_timeout: Duration::from_secs(15 * 60),
            order_sweep_interval: Duration::from_secs(15),
            void_scan_interval: Duration::from_secs(30),
            idempotency_retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// JetStream's duplicate window on the saga's streams.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

impl SagaConfig {
    /// Parses `1`, `2`, `v1`, `v2`, `1,2`, `v1,v2`, `both`.
    pub fn parse_versions(text: &str) -> Result<Vec<u8>, String> {
        if text.trim() == "both" {
            return Ok(vec![1, 2]);
        }
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let v = part.trim_start_matches('v');
            match v {
                "1" => out.push(1),
                "2" => out.push(2),
                _ => {
                    return Err(format!(
                        "unknown orders.created version {part:?} (expected v1, v2 or both)"
                    ));
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        if out.is_empty() {
            return Err("at least one orders.created version is needed".to_string());
        }
        Ok(out)
    }

    /// The longest time after which the same event can reach a consumer again: a repeated
    /// `Idempotency-Key` re-publishes its events within the key's retention, a re-publish
    /// within the duplicate window is dropped by JetStream, and redeliveries follow the
    /// consumers' backoff. The inbox must remember events longer than this.
    pub fn redelivery_horizon(&self) -> Duration {
        let deliveries = self.max_deliver.max(self.payment_max_deliver);
        // ack wait, then a doubling backoff: ack_wait · (2^(n-1) - 1) in all, plus the last.
        let backoff = self
            .ack_wait
            .saturating_mul((1u32 << deliveries.saturating_sub(1).min(16)).saturating_sub(1));
        self.idempotency_retention
            .saturating_add(DUPLICATE_WINDOW)
            .saturating_add(backoff)
            .saturating_add(self.ack_wait.saturating_mul(deliveries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(SagaConfig::parse_versions("v1").unwrap(), vec![1]);
        assert_eq!(SagaConfig::parse_versions("2,1").unwrap(), vec![1, 2]);
        assert_eq!(SagaConfig::parse_versions("both").unwrap(), vec![1, 2]);
        assert!(SagaConfig::parse_versions("v3").unwrap_err().contains("v3"));
        assert!(SagaConfig::parse_versions("").is_err());
    }

    #[test]
    fn the_default_inbox_retention_outlives_every_redelivery() {
        let c = SagaConfig::default();
        let horizon = c.redelivery_horizon();
        assert!(horizon > c.idempotency_retention, "{horizon:?}");
        assert!(
            jetflow_runtime::Retention::default().check(horizon).is_ok(),
            "{horizon:?}"
        );
    }
}
