//! The `jetflow` command line: one subcommand per role and per tool. Every setting is a flag
//! with an environment variable; each subcommand takes only the flags it uses, grouped by
//! concern (NATS, database, HTTP, streams, consumers, orders, payments), and `--help` on each
//! shows exactly those.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

/// Parses `500ms`, `30s`, `1m30s`, `15m`, `2h` (humantime), or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{text:?} is not a duration such as 500ms, 30s, 1m30s or 15m ({e})"))
}

/// Like [`parse_duration`], but zero is refused (a timeout or an interval of zero would
/// make everything time out at once, or spin).
pub fn positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err(format!("{text:?}: must be longer than zero")),
        d => Ok(d),
    }
}

/// Parses `host:port` (a name such as `localhost:8080`, or an address), resolving the name.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("an address is required, such as 127.0.0.1:8080 or localhost:8080".into());
    }
    t.to_socket_addrs()
        .map_err(|e| format!("{text:?} is not host:port ({e})"))?
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

/// Parses a number that must be at least 1.
pub fn at_least_one(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{text:?} is not a whole number")),
    }
}

/// Parses a delivery limit: at least 2 (one delivery and one retry).
pub fn max_deliver(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(n) if n >= 2 => Ok(n),
        Ok(_) => Err("must be at least 2 (a first delivery and one retry)".into()),
        Err(_) => Err(format!("{text:?} is not a whole number")),
    }
}

/// Parses a non-empty text (an empty environment variable is a mistake, not a value).
pub fn non_empty(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(text.trim().to_string())
    }
}

/// jetflow: an event-driven order pipeline on actix actors and NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "jetflow", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log lines as json or pretty text; filter with RUST_LOG (default info).
    #[arg(
        long,
        env = "JETFLOW_LOG_FORMAT",
        global = true,
        value_enum,
        default_value = "pretty"
    )]
    pub log_format: LogFormat,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every role in one process: gateway, orders, inventory, payments and the simulated
    /// payment provider (and a local nats-server when NATS_URL is unset).
    All(Box<AllArgs>),
    /// The REST gateway.
    Gateway(Box<GatewayArgs>),
    /// The order role (order state machine, read model, timeout sweeper).
    Orders(Box<OrdersArgs>),
    /// The inventory role (stock and reservations).
    Inventory(Box<InventoryArgs>),
    /// The payments role (charges through the circuit breaker, voids).
    Payments(Box<PaymentsArgs>),
    /// The simulated payment provider.
    PaymentProvider(ProviderArgs),
    /// Inspect, replay and delete dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Drive load and report throughput and latency, with a baseline measured in the same
    /// run.
    Bench(jetflow_bench::command::BenchArgs),
    /// GET a URL and exit 0 on a 200 (container health checks: `jetflow probe
    /// http://127.0.0.1:8080/ready`).
    Probe {
        /// The URL.
        url: String,
    },
}

/// How to reach NATS.
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS seed URLs, comma-separated (give every node of a cluster): nats://host:4222,
    /// tls://host:4222.
    #[arg(long, env = "NATS_URL", value_parser = non_empty)]
    pub nats_url: Option<String>,
    /// A NATS credentials (.creds) file.
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// NATS user (with --nats-password).
    #[arg(long, env = "NATS_USER", value_parser = non_empty)]
    pub nats_user: Option<String>,
    /// NATS password (never logged).
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// PEM bundle of certificate authorities to trust for TLS to NATS.
    #[arg(long, env = "NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS to NATS (with --nats-tls-key).
    #[arg(long, env = "NATS_TLS_CERT")]
    pub nats_tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "NATS_TLS_KEY")]
    pub nats_tls_key: Option<PathBuf>,
}

/// Where the state lives.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// sqlite://path, sqlite::memory:, or postgres://user@host/db (TLS: ?sslmode=require,
    /// verify-ca or verify-full, and sslrootcert=/path/ca.pem).
    #[arg(long, env = "DATABASE_URL", default_value = crate::settings::DEFAULT_DATABASE_URL, value_parser = non_empty)]
    pub database_url: String,
    /// Connections in the database pool (default 8 for SQLite, 16 for PostgreSQL; an
    /// in-memory SQLite database has exactly 1).
    #[arg(long, env = "JETFLOW_DB_POOL", value_parser = at_least_one)]
    pub db_pool: Option<u32>,
}

/// How this process serves HTTP and how it stops.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Where this role serves HTTP (the API, /health, /ready, /metrics).
    #[arg(long, env = "JETFLOW_HTTP_ADDR", default_value = crate::settings::DEFAULT_HTTP_ADDR, value_parser = parse_addr)]
    pub http_addr: SocketAddr,
    /// Serve /health, /ready and /metrics here instead of on the HTTP address.
    #[arg(long, env = "JETFLOW_ADMIN_ADDR", value_parser = parse_addr)]
    pub admin_addr: Option<SocketAddr>,
    /// How long a stop (SIGTERM, SIGINT) may take: drain HTTP, consumers and the outbox.
    #[arg(long, env = "JETFLOW_SHUTDOWN_TIMEOUT", default_value = "15s", value_parser = positive_duration)]
    pub shutdown_timeout: Duration,
}

/// The streams every role declares.
#[derive(Debug, Clone, Args)]
pub struct StreamArgs {
    /// Replicas of every stream (3 on a 3-node cluster).
    #[arg(long, env = "JETFLOW_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,
    /// How long the saga's streams keep events.
    #[arg(long, env = "JETFLOW_STREAM_MAX_AGE", default_value = "7d", value_parser = positive_duration)]
    pub stream_max_age: Duration,
    /// Most bytes each saga stream keeps (0: no limit).
    #[arg(long, env = "JETFLOW_STREAM_MAX_BYTES", default_value_t = 0)]
    pub stream_max_bytes: u64,
    /// What a full stream does: old (drop the oldest events) or new (refuse new ones).
    #[arg(
        long,
        env = "JETFLOW_STREAM_DISCARD",
        value_enum,
        default_value = "old"
    )]
    pub stream_discard: DiscardArg,
}

/// What a full stream does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiscardArg {
    /// Drop the oldest events.
    Old,
    /// Refuse new events.
    New,
}

/// How consumers handle their deliveries.
#[derive(Debug, Clone, Args)]
pub struct ConsumerArgs {
    /// Ack wait of every consumer (redelivery delay after a crash).
    #[arg(long, env = "JETFLOW_ACK_WAIT", default_value = "30s", value_parser = positive_duration)]
    pub ack_wait: Duration,
    /// Deliveries of an event before it is dead-lettered (at least 2); for a payment, the
    /// attempts before the order ends payment_unavailable.
    #[arg(long, env = "JETFLOW_MAX_DELIVER", default_value_t = 5, value_parser = max_deliver)]
    pub max_deliver: u32,
    /// Most deliveries handled in one transaction.
    #[arg(long, env = "JETFLOW_BATCH_MAX", default_value_t = 256, value_parser = at_least_one)]
    pub batch_max: u32,
}

/// What only the gateway uses.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The bearer token that writes other than order submission (PUT /inventory) need; with
    /// none, those writes are accepted only from loopback clients. Never logged.
    #[arg(long, env = "JETFLOW_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Orders are refused (503 with Retry-After, nothing stored) while more orders than this
    /// wait for the saga's first step, so none waits longer than JETFLOW_ORDER_TIMEOUT only
    /// for being in line (0: no bound).
    #[arg(long, env = "JETFLOW_MAX_BACKLOG", default_value_t = crate::settings::Settings::default().max_backlog)]
    pub max_backlog: u64,
    /// Requests per second allowed per client at the gateway, with a burst of twice as many
    /// (0: no limit).
    #[arg(long, env = "JETFLOW_RATE_LIMIT", default_value_t = 500)]
    pub rate_limit: u32,
    /// Proxies whose X-Forwarded-For is believed (comma-separated CIDRs): the rate limit
    /// then keys on the real client.
    #[arg(long, env = "JETFLOW_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
}

/// What only the orders role uses.
#[derive(Debug, Clone, Args)]
pub struct OrderArgs {
    /// Orders not finished after this long are cancelled as timed_out (they are looked for
    /// every sixtieth of it, but not more often than once a second nor less often than every
    /// 15s).
    #[arg(long, env = "JETFLOW_ORDER_TIMEOUT", default_value = "15m", value_parser = positive_duration)]
    pub order_timeout: Duration,
}

/// What only the payments role uses.
#[derive(Debug, Clone, Args)]
pub struct PaymentArgs {
    /// The payment provider's base URL (http:// or https://; default: the simulated one).
    #[arg(long, env = "PAYMENT_PROVIDER_URL", value_parser = non_empty)]
    pub payment_provider_url: Option<String>,
    /// PEM bundle of certificate authorities to trust for an https:// provider (besides the
    /// system's).
    #[arg(long, env = "PAYMENT_PROVIDER_CA")]
    pub payment_provider_ca: Option<PathBuf>,
    /// Timeout of one call to the payment provider. While the provider is down a payment is
    /// retried after one timeout, then twice as long each time, at most 30s, until
    /// JETFLOW_MAX_DELIVER attempts end the order payment_unavailable; a charge that could not
    /// be voided yet is retried every 15 timeouts (at most every minute).
    #[arg(long, env = "JETFLOW_PAYMENT_TIMEOUT", default_value = "2s", value_parser = positive_duration)]
    pub payment_timeout: Duration,
    /// Consecutive provider failures that open the circuit breaker (it stays open five
    /// payment timeouts before a probe).
    #[arg(long, env = "JETFLOW_BREAKER_THRESHOLD", default_value_t = 5, value_parser = at_least_one)]
    pub breaker_threshold: u32,
}

/// Options of `jetflow all`.
#[derive(Debug, Clone, Args)]
pub struct AllArgs {
    /// The NATS settings.
    #[command(flatten, next_help_heading = "NATS")]
    pub nats: NatsArgs,
    /// The Database settings.
    #[command(flatten, next_help_heading = "Database")]
    pub database: DatabaseArgs,
    /// The HTTP and lifecycle settings.
    #[command(flatten, next_help_heading = "HTTP and lifecycle")]
    pub http: HttpArgs,
    /// The Streams settings.
    #[command(flatten, next_help_heading = "Streams")]
    pub streams: StreamArgs,
    /// The Consumers settings.
    #[command(flatten, next_help_heading = "Consumers")]
    pub consumers: ConsumerArgs,
    /// The Gateway settings.
    #[command(flatten, next_help_heading = "Gateway")]
    pub api: ApiArgs,
    /// The Orders settings.
    #[command(flatten, next_help_heading = "Orders")]
    pub orders: OrderArgs,
    /// The Payments settings.
    #[command(flatten, next_help_heading = "Payments")]
    pub payments: PaymentArgs,
    /// Where the simulated payment provider listens (unless PAYMENT_PROVIDER_URL is set).
    #[arg(long, env = "JETFLOW_PROVIDER_ADDR", default_value = crate::settings::DEFAULT_PROVIDER_ADDR, value_parser = parse_addr, help_heading = "Local services")]
    pub provider_addr: SocketAddr,
    /// Requests first: while this many HTTP requests (or more) are in flight, the standard
    /// lane's consumers take turns and rest, so a burst of orders is accepted at once and the
    /// saga works through the stream with what is left; the express lane never waits (0: off,
    /// both share alike).
    #[arg(
        long,
        env = "JETFLOW_REQUESTS_FIRST",
        default_value_t = crate::settings::Settings::default().requests_first,
        help_heading = "Consumers"
    )]
    pub requests_first: u32,
}

/// Options of `jetflow gateway`.
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// The NATS settings.
    #[command(flatten, next_help_heading = "NATS")]
    pub nats: NatsArgs,
    /// The Database settings.
    #[command(flatten, next_help_heading = "Database")]
    pub database: DatabaseArgs,
    /// The HTTP and lifecycle settings.
    #[command(flatten, next_help_heading = "HTTP and lifecycle")]
    pub http: HttpArgs,
    /// The Streams settings.
    #[command(flatten, next_help_heading = "Streams")]
    pub streams: StreamArgs,
    /// The Gateway settings.
    #[command(flatten, next_help_heading = "Gateway")]
    pub api: ApiArgs,
    /// Versions of orders.created to publish: v1, v2, or both (dual publishing while the
    /// roles that read them are upgraded one by one; `jetflow all` upgrades as one and
    /// publishes v2).
    #[arg(
        long,
        env = "JETFLOW_ORDERS_CREATED_VERSIONS",
        default_value = "v2",
        help_heading = "Gateway"
    )]
    pub orders_created_versions: String,
}

/// Options of `jetflow orders`.
#[derive(Debug, Clone, Args)]
pub struct OrdersArgs {
    /// The NATS settings.
    #[command(flatten, next_help_heading = "NATS")]
    pub nats: NatsArgs,
    /// The Database settings.
    #[command(flatten, next_help_heading = "Database")]
    pub database: DatabaseArgs,
    /// The HTTP and lifecycle settings.
    #[command(flatten, next_help_heading = "HTTP and lifecycle")]
    pub http: HttpArgs,
    /// The Streams settings.
    #[command(flatten, next_help_heading = "Streams")]
    pub streams: StreamArgs,
    /// The Consumers settings.
    #[command(flatten, next_help_heading = "Consumers")]
    pub consumers: ConsumerArgs,
    /// The Orders settings.
    #[command(flatten, next_help_heading = "Orders")]
    pub orders: OrderArgs,
}

/// Options of `jetflow inventory`.
#[derive(Debug, Clone, Args)]
pub struct InventoryArgs {
    /// The NATS settings.
    #[command(flatten, next_help_heading = "NATS")]
    pub nats: NatsArgs,
    /// The Database settings.
    #[command(flatten, next_help_heading = "Database")]
    pub database: DatabaseArgs,
    /// The HTTP and lifecycle settings.
    #[command(flatten, next_help_heading = "HTTP and lifecycle")]
    pub http: HttpArgs,
    /// The Streams settings.
    #[command(flatten, next_help_heading = "Streams")]
    pub streams: StreamArgs,
    /// The Consumers settings.
    #[command(flatten, next_help_heading = "Consumers")]
    pub consumers: ConsumerArgs,
}

/// Options of `jetflow payments`.
#[derive(Debug, Clone, Args)]
pub struct PaymentsArgs {
    /// The NATS settings.
    #[command(flatten, next_help_heading = "NATS")]
    pub nats: NatsArgs,
    /// The Database settings.
    #[command(flatten, next_help_heading = "Database")]
    pub database: DatabaseArgs,
    /// The HTTP and lifecycle settings.
    #[command(flatten, next_help_heading = "HTTP and lifecycle")]
    pub http: HttpArgs,
    /// The Streams settings.
    #[command(flatten, next_help_heading = "Streams")]
    pub streams: StreamArgs,
    /// The Consumers settings.
    #[command(flatten, next_help_heading = "Consumers")]
    pub consumers: ConsumerArgs,
    /// The Payments settings.
    #[command(flatten, next_help_heading = "Payments")]
    pub payments: PaymentArgs,
}

/// Options of `jetflow payment-provider`.
#[derive(Debug, Clone, Args)]
pub struct ProviderArgs {
    /// The HTTP and lifecycle settings.
    #[command(flatten, next_help_heading = "HTTP and lifecycle")]
    pub http: HttpArgs,
    /// Charges accepted per second, as a real payment API's rate limit (0: none). Over it a
    /// charge is answered 429 with Retry-After and nothing is charged; `PUT /_control
    /// {"rate_limit_per_s": N}` changes it while running.
    #[arg(
        long,
        env = "JETFLOW_PROVIDER_RATE_LIMIT",
        default_value_t = 0,
        help_heading = "Provider"
    )]
    pub provider_rate_limit: u32,
}

/// `jetflow dlq ...`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters: subject, reason, deliveries, time, error.
    List {
        /// The NATS settings.
        #[command(flatten, next_help_heading = "NATS")]
        nats: NatsArgs,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-publish dead letters to their original subject (and remove them from the DLQ).
    Replay {
        /// The NATS settings.
        #[command(flatten, next_help_heading = "NATS")]
        nats: NatsArgs,
        /// Dead-letter sequences (from `dlq list`).
        #[arg(required_unless_present = "all")]
        sequences: Vec<u64>,
        /// Replay every dead letter.
        #[arg(long, conflicts_with = "sequences")]
        all: bool,
        /// Replay poison letters too (they are dead-lettered again unless what reads them
        /// changed).
        #[arg(long)]
        force: bool,
    },
    /// Delete dead letters for good.
    Delete {
        /// The NATS settings.
        #[command(flatten, next_help_heading = "NATS")]
        nats: NatsArgs,
        /// Dead-letter sequences (from `dlq list`).
        #[arg(required = true)]
        sequences: Vec<u64>,
    },
    /// Delete every dead letter (asks for confirmation unless --yes).
    Purge {
        /// The NATS settings.
        #[command(flatten, next_help_heading = "NATS")]
        nats: NatsArgs,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
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
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("soon").is_err());
        assert!(
            positive_duration("0s")
                .unwrap_err()
                .contains("longer than zero")
        );
        assert!(positive_duration("0").is_err());
    }

    #[test]
    fn addresses_take_host_names() {
        assert_eq!(parse_addr("127.0.0.1:8080").unwrap().port(), 8080);
        let local = parse_addr("localhost:8080").unwrap();
        assert!(local.ip().is_loopback() && local.port() == 8080);
        assert!(parse_addr("").is_err());
        assert!(parse_addr("localhost").is_err());
    }

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
