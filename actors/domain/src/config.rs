//! Settings of the order saga (the binary fills them from flags and environment).

use std::time::Duration;

/// How the saga's consumers and producers behave.
#[derive(Debug, Clone)]
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
    /// Deliveries handled at once per consumer.
    pub concurrency: usize,
    /// Orders not finished after this long are cancelled (`timed_out`).
    pub order_timeout: Duration,
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
            concurrency: 32,
            order_timeout: Duration::from_secs(15 * 60),
        }
    }
}

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
}
