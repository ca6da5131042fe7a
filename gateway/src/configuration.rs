//! Settings of a process, resolved from the command line and environment once at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use jetflow_domain::SagaConfig;

use crate::cli::Common;

/// Everything a role needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The role's name (for the NATS connection name and logs).
    pub role_name: String,
    /// NATS seeds, comma-separated.
    pub nats_url: String,
    /// NATS creds file.
    pub nats_creds: Option<PathBuf>,
    /// NATS user.
    pub nats_user: Option<String>,
    /// NATS password.
    pub nats_password: Option<String>,
    /// Database URL.
    pub database_url: String,
    /// Main HTTP address.
    pub http_addr: SocketAddr,
    /// Simulated provider address (`all`, `payment-provider`).
    pub provider_addr: SocketAddr,
    /// Payment provider base URL.
    pub payment_provider_url: String,
    /// Timeout of one payment call.
    pub payment_timeout: Duration,
    /// Breaker threshold.
    pub breaker_threshold: u32,
    /// Breaker open time.
    pub breaker_open: Duration,
    /// How long a publish waits for the PubAck.
    pub publish_timeout: Duration,
    /// Requests per second per client (0: off).
    pub rate_limit: u32,
    /// Burst per client.
    pub rate_burst: u32,
    /// HTTP workers.
    pub http_workers: Option<usize>,
    /// The saga.
    pub saga: SagaConfig,
}

impl Settings {
    /// Settings from the common flags, for `role`.
    pub fn from_cli(
        common: &Common,
        role: &str,
        nats_url: Option<String>,
        provider_addr: SocketAddr,
        needs_nats: bool,
    ) -> Result<Self, String> {
        let nats_url = match nats_url.or_else(|| common.nats_url.clone()) {
            Some(url) => url,
            None if needs_nats => {
                return Err("NATS_URL is not set (give --nats-url or NATS_URL)".to_string());
            }
            None => String::new(),
        };
        if common.nats_user.is_some() != common.nats_password.is_some() {
            return Err("NATS_USER and NATS_PASSWORD go together".to_string());
        }
        if common.max_deliver < 2 || common.payment_max_deliver < 2 {
            return Err(
                "JETFLOW_MAX_DELIVER and JETFLOW_PAYMENT_MAX_DELIVER must be at least 2"
                    .to_string(),
            );
        }
        if common.concurrency == 0 {
            return Err("JETFLOW_CONCURRENCY must be at least 1".to_string());
        }
        let created_versions = SagaConfig::parse_versions(&common.orders_created_versions)?;
        let payment_provider_url = common
            .payment_provider_url
            .clone()
            .unwrap_or_else(|| format!("http://{provider_addr}"));
        Ok(Self {
            role_name: role.to_string(),
            nats_url,
            nats_creds: common.nats_creds.clone(),
            nats_user: common.nats_user.clone(),
            nats_password: common.nats_password.clone(),
            database_url: common.database_url.clone(),
            http_addr: common.http_addr,
            provider_addr,
            payment_provider_url,
            payment_timeout: common.payment_timeout,
            breaker_threshold: common.breaker_threshold.max(1),
            breaker_open: common.breaker_open,
            publish_timeout: Duration::from_secs(5),
            rate_limit: common.rate_limit,
            rate_burst: common.rate_burst,
            http_workers: common.http_workers,
            saga: SagaConfig {
                ack_wait: common.ack_wait.max(Duration::from_millis(500)),
                max_deliver: common.max_deliver,
                payment_max_deliver: common.payment_max_deliver,
                payment_retry_base: common.payment_retry,
                payment_retry_max: Duration::from_secs(30).max(common.payment_retry),
                created_versions,
                stream_replicas: common.stream_replicas.max(1),
                concurrency: common.concurrency,
                order_timeout: common.order_timeout,
            },
        })
    }
}
