//! The `jetflow` command line: one subcommand per role and per tool, every setting a flag
//! with an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

/// Parses `250ms`, `2s`, `5m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 250ms, 2s, 5m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ));
        }
    };
    if !(0.0..=1e9).contains(&secs) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// jetflow: an event-driven order pipeline on actix actors and NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "jetflow", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Settings shared by every command.
    #[command(flatten)]
    pub common: Common,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Connection and tuning settings.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// NATS seed URLs, comma-separated (give every node of a cluster). Unset with `all`: a
    /// local nats-server is started.
    #[arg(long, env = "NATS_URL", global = true)]
    pub nats_url: Option<String>,
    /// A NATS credentials (.creds) file.
    #[arg(long, env = "NATS_CREDS", global = true)]
    pub nats_creds: Option<PathBuf>,
    /// NATS user (with --nats-password).
    #[arg(long, env = "NATS_USER", global = true)]
    pub nats_user: Option<String>,
    /// NATS password (never logged).
    #[arg(long, env = "NATS_PASSWORD", global = true, hide_env_values = true)]
    pub nats_password: Option<String>,
    /// sqlite://path or postgres://user@host/db.
    #[arg(
        long,
        env = "DATABASE_URL",
        global = true,
        default_value = "sqlite://./data/jetflow.db"
    )]
    pub database_url: String,
    /// Where this role serves HTTP (/health, /ready, /metrics, and the REST API for the
    /// gateway).
    #[arg(
        long,
        env = "JETFLOW_HTTP_ADDR",
        global = true,
        default_value = "127.0.0.1:8080"
    )]
    pub http_addr: SocketAddr,
    /// The payment provider's base URL (default: the simulated one, http://127.0.0.1:8081).
    #[arg(long, env = "PAYMENT_PROVIDER_URL", global = true)]
    pub payment_provider_url: Option<String>,
    /// Log lines as json or pretty text; filter with RUST_LOG (default info).
    #[arg(
        long,
        env = "JETFLOW_LOG_FORMAT",
        global = true,
        value_enum,
        default_value = "pretty"
    )]
    pub log_format: LogFormat,
    /// Replicas of every stream (3 on a 3-node cluster).
    #[arg(
        long,
        env = "JETFLOW_STREAM_REPLICAS",
        global = true,
        default_value_t = 1
    )]
    pub stream_replicas: usize,
    /// Ack wait of every consumer (redelivery delay after a crash).
    #[arg(long, env = "JETFLOW_ACK_WAIT", global = true, default_value = "30s", value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// Deliveries of an event before it is dead-lettered.
    #[arg(long, env = "JETFLOW_MAX_DELIVER", global = true, default_value_t = 5)]
    pub max_deliver: u32,
    /// Payment attempts before an order ends payment_unavailable.
    #[arg(
        long,
        env = "JETFLOW_PAYMENT_MAX_DELIVER",
        global = true,
        default_value_t = 5
    )]
    pub payment_max_deliver: u32,
    /// First delay before retrying a payment while the provider is down (doubles, at most 30s).
    #[arg(long, env = "JETFLOW_PAYMENT_RETRY", global = true, default_value = "2s", value_parser = parse_duration)]
    pub payment_retry: Duration,
    /// Timeout of one call to the payment provider.
    #[arg(long, env = "JETFLOW_PAYMENT_TIMEOUT", global = true, default_value = "2s", value_parser = parse_duration)]
    pub payment_timeout: Duration,
    /// Consecutive provider failures that open the circuit breaker.
    #[arg(
        long,
        env = "JETFLOW_BREAKER_THRESHOLD",
        global = true,
        default_value_t = 5
    )]
    pub breaker_threshold: u32,
    /// How long the breaker stays open before a probe.
    #[arg(long, env = "JETFLOW_BREAKER_OPEN", global = true, default_value = "10s", value_parser = parse_duration)]
    pub breaker_open: Duration,
    /// Versions of orders.created to publish: v1, v2, or both (dual publishing).
    #[arg(
        long,
        env = "JETFLOW_ORDERS_CREATED_VERSIONS",
        global = true,
        default_value = "v2"
    )]
    pub orders_created_versions: String,
    /// Orders not finished after this long are cancelled as timed_out.
    #[arg(long, env = "JETFLOW_ORDER_TIMEOUT", global = true, default_value = "15m", value_parser = parse_duration)]
    pub order_timeout: Duration,
    /// Deliveries handled at once per consumer.
    #[arg(long, env = "JETFLOW_CONCURRENCY", global = true, default_value_t = 32)]
    pub concurrency: usize,
    /// Requests per second allowed per client IP at the gateway (0: no limit).
    #[arg(long, env = "JETFLOW_RATE_LIMIT", global = true, default_value_t = 500)]
    pub rate_limit: u32,
    /// Burst allowed above the rate per client IP.
    #[arg(
        long,
        env = "JETFLOW_RATE_BURST",
        global = true,
        default_value_t = 1000
    )]
    pub rate_burst: u32,
    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "JETFLOW_HTTP_WORKERS", global = true)]
    pub http_workers: Option<usize>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every role in one process: gateway, orders, inventory, payments and the simulated
    /// payment provider (and a local nats-server when NATS_URL is unset).
    All(AllArgs),
    /// The REST gateway.
    Gateway,
    /// The order role (order state machine and read model).
    Orders,
    /// The inventory role (stock and reservations).
    Inventory,
    /// The payments role (charges through the circuit breaker).
    Payments,
    /// The simulated payment provider.
    PaymentProvider(ProviderArgs),
    /// Inspect and replay the dead-letter stream.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Drive load through the system and report throughput and latency percentiles.
    Bench(crate::bench::BenchArgs),
    /// GET a URL and exit 0 on a 200 (container health checks: `jetflow probe
    /// http://127.0.0.1:8080/ready`).
    Probe {
        /// The URL.
        url: String,
    },
}

/// Options of `jetflow all`.
#[derive(Debug, Clone, Args)]
pub struct AllArgs {
    /// Where the simulated payment provider listens.
    #[arg(long, env = "JETFLOW_PROVIDER_ADDR", default_value = "127.0.0.1:8081")]
    pub provider_addr: SocketAddr,
    /// Data directory of the local nats-server (when NATS_URL is unset).
    #[arg(long, env = "JETFLOW_NATS_DATA", default_value = "./data/nats")]
    pub nats_data: PathBuf,
    /// Client port of the local nats-server (a free one is chosen if it is taken).
    #[arg(long, env = "JETFLOW_NATS_PORT", default_value_t = 4222)]
    pub nats_port: u16,
    /// Make the local nats-server fsync every write (sync_interval: always).
    #[arg(long, env = "JETFLOW_NATS_SYNC_ALWAYS")]
    pub nats_sync_always: bool,
}

/// Options of `jetflow payment-provider`.
#[derive(Debug, Clone, Args)]
pub struct ProviderArgs {
    /// Where to listen.
    #[arg(long, env = "JETFLOW_PROVIDER_ADDR", default_value = "127.0.0.1:8081")]
    pub addr: SocketAddr,
}

/// `jetflow dlq ...`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters: subject, reason, deliveries, time.
    List {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-publish dead letters to their original subject (and remove them from the DLQ).
    Replay {
        /// Dead-letter sequences (from `dlq list`).
        #[arg(required_unless_present = "all")]
        sequences: Vec<u64>,
        /// Replay every dead letter.
        #[arg(long, conflicts_with = "sequences")]
        all: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").unwrap_err().contains("unit"));
    }

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
