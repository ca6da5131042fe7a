//! The settings of a process, nested by concern, with one source of defaults
//! ([`Settings::default`], which tests start from too), built from the command line and
//! checked before anything starts: a setting that cannot work stops the command with exit
//! code 2 and one line that names it ([`ConfigError`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use jetflow_domain::SagaConfig;
use jetflow_runtime::{
    BatchConfig, DbConfig, Discard, NatsAuth, NatsConfig, NatsTls, RelayConfig, Retention, Secret,
};

use crate::cli::{
    AllArgs, ApiArgs, ConsumerArgs, DatabaseArgs, DiscardArg, GatewayArgs, HttpArgs, InventoryArgs,
    NatsArgs, OrderArgs, OrdersArgs, PaymentArgs, PaymentsArgs, ProviderArgs, StreamArgs,
};

/// The laptop default database.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://./data/jetflow.db";
/// Where a role serves HTTP by default.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
/// Where `jetflow all` serves its simulated provider by default.
pub const DEFAULT_PROVIDER_ADDR: &str = "127.0.0.1:8081";

/// The client port `jetflow all` gives the nats-server it starts when NATS_URL is unset (a
/// free one when it is taken; the start-up log and the configuration file in its data directory say which).
pub const LOCAL_NATS_PORT: u16 = 4222;

/// A setting that cannot work: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    /// The environment variable (and flag) that holds it.
    pub setting: &'static str,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    fn new(setting: &'static str, message: impl Into<String>) -> Self {
        Self {
            setting,
            message: message.into(),
        }
    }
}

/// Settings earlier versions took and this one does not, with what replaced each: one that is
/// still set stops the command at start (exit 2) instead of being ignored without a word.
const REMOVED: &[(&str, &str)] = &[
    (
        "JETFLOW_PAYMENT_MAX_DELIVER",
        "is gone: a payment's attempts are its deliveries, JETFLOW_MAX_DELIVER",
    ),
    (
        "JETFLOW_PAYMENT_RETRY",
        "is gone: a payment is retried after one JETFLOW_PAYMENT_TIMEOUT, then twice as long each time",
    ),
    (
        "JETFLOW_NATS_DATA",
        "is gone: jetflow all's nats-server keeps its streams in nats/ beside the SQLite file (move an existing ./data/nats there)",
    ),
    (
        "JETFLOW_NATS_PORT",
        "is gone: jetflow all's nats-server listens on 4222, or on a free port when 4222 is taken (the log says which)",
    ),
    (
        "JETFLOW_NATS_SYNC_ALWAYS",
        "is gone: for a nats-server configured otherwise, start one and give its NATS_URL",
    ),
];

/// Refuses a setting this version no longer takes (see [`REMOVED`]).
pub fn refuse_removed(set: impl Fn(&str) -> bool, command_is_all: bool) -> Result<(), ConfigError> {
    if let Some((name, why)) = REMOVED.iter().find(|(name, _)| set(name)) {
        return Err(ConfigError::new(name, *why));
    }
    if command_is_all && set("JETFLOW_ORDERS_CREATED_VERSIONS") {
        return Err(ConfigError::new(
            "JETFLOW_ORDERS_CREATED_VERSIONS",
            "is for jetflow gateway alone: dual publishing bridges roles upgraded one by one, and jetflow all upgrades as one (it publishes v2)",
        ));
    }
    Ok(())
}

/// How to reach NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSettings {
    /// Comma-separated seeds (`None`: `jetflow all` starts a local server).
    pub url: Option<String>,
    /// Credentials.
    pub auth: NatsAuth,
    /// TLS trust and client certificate.
    pub tls: NatsTls,
    /// How long a publish waits for its PubAck.
    pub publish_timeout: Duration,
}

impl Default for NatsSettings {
    fn default() -> Self {
        Self {
            url: None,
            auth: NatsAuth::None,
            tls: NatsTls::default(),
            publish_timeout: Duration::from_secs(5),
        }
    }
}

impl NatsSettings {
    /// The connection settings under connection name `name`.
    pub fn connection(&self, name: &str) -> NatsConfig {
        NatsConfig::new(self.url.as_deref().unwrap_or_default())
            .auth(self.auth.clone())
            .tls(self.tls.clone())
            .name(name)
    }
}

/// How this process serves HTTP and stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// The main address.
    pub addr: SocketAddr,
    /// Where the probes and metrics go, if not on the main address.
    pub admin_addr: Option<SocketAddr>,
    /// Worker threads (default: one per core).
    pub workers: Option<usize>,
    /// Requests per second per client (0: off).
    pub rate_limit: u32,
    /// Burst per client.
    pub rate_burst: u32,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// How long a stop may take.
    pub shutdown_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_addr: None,
            workers: None,
            rate_limit: 500,
            rate_burst: 1000,
            trusted_proxies: Vec::new(),
            shutdown_timeout: Duration::from_secs(15),
        }
    }
}

/// How the payments role reaches its provider, and where `jetflow all` serves the simulated
/// one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderSettings {
    /// The provider's base URL (`None`: the simulated one at `addr`).
    pub url: Option<String>,
    /// Extra CAs to trust for an `https://` provider.
    pub ca: Option<PathBuf>,
    /// Timeout of one call.
    pub timeout: Duration,
    /// Consecutive failures that open the breaker.
    pub breaker_threshold: u32,
    /// How long it stays open.
    pub breaker_open: Duration,
    /// Where the simulated provider listens.
    pub addr: SocketAddr,
    /// The simulated provider's rate limit, charges per second (0: none).
    pub rate_limit_per_s: u32,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self {
            url: None,
            ca: None,
            timeout: Duration::from_secs(2),
            breaker_threshold: 5,
            breaker_open: Duration::from_secs(10),
            addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            rate_limit_per_s: 0,
        }
    }
}

impl ProviderSettings {
    /// The URL payments calls.
    pub fn url(&self) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.addr))
    }
}

/// Everything a process needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The role's name (the NATS connection name and logs).
    pub role_name: String,
    /// NATS.
    pub nats: NatsSettings,
    /// The database.
    pub database: DbConfig,
    /// HTTP and lifecycle.
    pub http: HttpSettings,
    /// The saga: streams, consumers, orders, payments.
    pub saga: SagaConfig,
    /// The payment provider.
    pub provider: ProviderSettings,
    /// How long processed events are remembered.
    pub retention: Retention,
    /// The outbox relay.
    pub relay: RelayConfig,
    /// When one process serves requests and consumes: from how many requests in flight the
    /// standard lane's consumers take turns (0: never). The default, 2: a lone request (one
    /// order placed and polled at a time) is not a burst, and its own saga runs at full speed.
    pub requests_first: u32,
    /// With `requests_first`: the share of the time the consumers take while requests are
    /// in flight.
    pub consumer_share: f64,
    /// The bearer token of writes other than order submission (none: loopback clients only).
    pub admin_token: Option<Secret>,
    /// Orders waiting for the saga past which the gateway refuses new ones (0: no bound).
    /// 100,000 is under a minute of the saga's pace on a laptop, far inside the 15 minutes
    /// of the order timeout.
    pub max_backlog: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            role_name: "jetflow".to_string(),
            nats: NatsSettings::default(),
            database: DbConfig::new(DEFAULT_DATABASE_URL),
            http: HttpSettings::default(),
            saga: SagaConfig::default(),
            provider: ProviderSettings::default(),
            retention: Retention::default(),
            relay: RelayConfig::default(),
            requests_first: 2,
            consumer_share: 0.5,
            admin_token: None,
            max_backlog: 100_000,
        }
    }
}

fn readable(setting: &'static str, path: &Path) -> Result<(), ConfigError> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| ConfigError::new(setting, format!("cannot read {}: {e}", path.display())))
}

impl Settings {
    /// Where the nats-server `jetflow all` starts keeps its streams: `nats/` beside the SQLite
    /// database, so one directory holds all the laptop shape's state (`./data/nats` by
    /// default), or `./data/nats` with PostgreSQL.
    pub fn local_nats_data(&self) -> PathBuf {
        jetflow_runtime::db::sqlite_file(&self.database.url)
            .and_then(|file| file.parent().map(|dir| dir.join("nats")))
            .unwrap_or_else(|| PathBuf::from("./data/nats"))
    }

    fn apply_nats(&mut self, a: &NatsArgs) -> Result<(), ConfigError> {
        self.nats.url = a.nats_url.clone();
        self.nats.auth = match (&a.nats_creds, &a.nats_user, &a.nats_password) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(ConfigError::new(
                    "NATS_CREDS",
                    "give a creds file or a user and password, not both",
                ));
            }
            (Some(creds), None, None) => NatsAuth::CredsFile(creds.clone()),
            (None, Some(user), Some(password)) => NatsAuth::UserPassword {
                user: user.clone(),
                password: Secret::new(password.clone()),
            },
            (None, Some(_), None) => {
                return Err(ConfigError::new(
                    "NATS_PASSWORD",
                    "NATS_USER needs NATS_PASSWORD",
                ));
            }
            (None, None, Some(_)) => {
                return Err(ConfigError::new(
                    "NATS_USER",
                    "NATS_PASSWORD needs NATS_USER",
                ));
            }
            (None, None, None) => NatsAuth::None,
        };
        self.nats.tls = NatsTls {
            ca: a.nats_tls_ca.clone(),
            cert: a.nats_tls_cert.clone(),
            key: a.nats_tls_key.clone(),
        };
        Ok(())
    }

    fn apply_database(&mut self, a: &DatabaseArgs) {
        self.database = DbConfig {
            url: a.database_url.clone(),
            max_connections: a.db_pool,
            ..DbConfig::new(a.database_url.clone())
        };
    }

    fn apply_http(&mut self, a: &HttpArgs) {
        self.http.addr = a.http_addr;
        self.http.admin_addr = a.admin_addr;
        self.http.shutdown_timeout = a.shutdown_timeout;
    }

    fn apply_streams(&mut self, a: &StreamArgs) {
        self.saga.stream_replicas = usize::from(a.stream_replicas);
        self.saga.stream_max_age = a.stream_max_age;
        self.saga.stream_max_bytes =
            (a.stream_max_bytes > 0).then(|| i64::try_from(a.stream_max_bytes).unwrap_or(i64::MAX));
        self.saga.stream_discard = match a.stream_discard {
            DiscardArg::Old => Discard::Old,
            DiscardArg::New => Discard::New,
        };
    }

    fn apply_consumers(&mut self, a: &ConsumerArgs) {
        self.saga.ack_wait = a.ack_wait;
        self.saga.max_deliver = a.max_deliver;
        self.saga.payment_max_deliver = a.max_deliver;
        self.saga.batch = BatchConfig {
            max: a.batch_max as usize,
            ..self.saga.batch
        };
    }

    /// What follows from the settings given: the inbox remembers an event twice as long as it
    /// can come back (at least the default week), so no setting can make it forget too soon.
    fn derive(&mut self) {
        let horizon = self.saga.redelivery_horizon();
        self.retention.inbox = Retention::default().inbox.max(horizon.saturating_mul(2));
    }

    fn apply_api(&mut self, a: &ApiArgs) -> Result<(), ConfigError> {
        self.admin_token = a.admin_token.clone().map(Secret::new);
        self.max_backlog = a.max_backlog;
        self.http.rate_limit = a.rate_limit;
        self.http.rate_burst = a.rate_limit.saturating_mul(2);
        self.http.trusted_proxies = jetflow_gateway::rate_limit::parse_proxies(&a.trusted_proxies)
            .map_err(|e| ConfigError::new("JETFLOW_TRUSTED_PROXIES", e))?;
        Ok(())
    }

    fn apply_orders(&mut self, a: &OrderArgs) {
        self.saga.order_timeout = a.order_timeout;
        self.saga.order_sweep_interval = (a.order_timeout / 60)
            .clamp(Duration::from_secs(1), Duration::from_secs(15))
            .min(a.order_timeout);
    }

    fn apply_payments(&mut self, a: &PaymentArgs) {
        self.provider.url = a.payment_provider_url.clone();
        self.provider.ca = a.payment_provider_ca.clone();
        self.provider.timeout = a.payment_timeout;
        self.provider.breaker_threshold = a.breaker_threshold;
        self.provider.breaker_open = a.payment_timeout.saturating_mul(5);
        self.saga.payment_retry_base = a.payment_timeout;
        self.saga.payment_retry_max = Duration::from_secs(30).max(a.payment_timeout);
        self.saga.void_scan_interval = a
            .payment_timeout
            .saturating_mul(15)
            .min(Duration::from_secs(60));
    }

    fn named(role: &str) -> Self {
        Self {
            role_name: role.to_string(),
            ..Self::default()
        }
    }

    /// The settings of `jetflow all` (the NATS URL may be missing: a local server is
    /// started).
    pub fn for_all(a: &AllArgs) -> Result<Self, ConfigError> {
        let mut s = Self::named("all");
        s.apply_nats(&a.nats)?;
        s.apply_database(&a.database);
        s.apply_http(&a.http);
        s.apply_streams(&a.streams);
        s.apply_consumers(&a.consumers);
        s.apply_api(&a.api)?;
        s.apply_orders(&a.orders);
        s.apply_payments(&a.payments);
        s.provider.addr = a.provider_addr;
        s.requests_first = a.requests_first;
        s.derive();
        Ok(s)
    }

    /// The settings of `jetflow gateway`.
    pub fn for_gateway(a: &GatewayArgs) -> Result<Self, ConfigError> {
        let mut s = Self::named("gateway");
        s.apply_nats(&a.nats)?;
        s.apply_database(&a.database);
        s.apply_http(&a.http);
        s.apply_streams(&a.streams);
        s.apply_api(&a.api)?;
        s.saga.created_versions = SagaConfig::parse_versions(&a.orders_created_versions)
            .map_err(|e| ConfigError::new("JETFLOW_ORDERS_CREATED_VERSIONS", e))?;
        Ok(s)
    }

    /// The settings of `jetflow orders`.
    pub fn for_orders(a: &OrdersArgs) -> Result<Self, ConfigError> {
        let mut s = Self::named("orders");
        s.apply_nats(&a.nats)?;
        s.apply_database(&a.database);
        s.apply_http(&a.http);
        s.apply_streams(&a.streams);
        s.apply_consumers(&a.consumers);
        s.apply_orders(&a.orders);
        s.derive();
        Ok(s)
    }

    /// The settings of `jetflow inventory`.
    pub fn for_inventory(a: &InventoryArgs) -> Result<Self, ConfigError> {
        let mut s = Self::named("inventory");
        s.apply_nats(&a.nats)?;
        s.apply_database(&a.database);
        s.apply_http(&a.http);
        s.apply_streams(&a.streams);
        s.apply_consumers(&a.consumers);
        s.derive();
        Ok(s)
    }

    /// The settings of `jetflow payments`.
    pub fn for_payments(a: &PaymentsArgs) -> Result<Self, ConfigError> {
        let mut s = Self::named("payments");
        s.apply_nats(&a.nats)?;
        s.apply_database(&a.database);
        s.apply_http(&a.http);
        s.apply_streams(&a.streams);
        s.apply_consumers(&a.consumers);
        s.apply_payments(&a.payments);
        s.derive();
        Ok(s)
    }

    /// The settings of `jetflow payment-provider`.
    pub fn for_provider(a: &ProviderArgs) -> Self {
        let mut s = Self::named("payment-provider");
        s.apply_http(&a.http);
        s.provider.rate_limit_per_s = a.provider_rate_limit;
        // A provider has its own limit (above), not the gateway's per-client one.
        s.http.rate_limit = 0;
        s
    }

    /// The settings of the `dlq` tools.
    pub fn for_tool(nats: &NatsArgs) -> Result<Self, ConfigError> {
        let mut s = Self::named("dlq");
        s.apply_nats(nats)?;
        Ok(s)
    }

    /// Checks what can be checked before connecting to anything. `uses` says which parts
    /// the command uses.
    pub fn validate(&self, uses: Uses) -> Result<(), ConfigError> {
        if uses.nats {
            self.validate_nats()?;
        }
        if uses.database {
            self.database
                .validate()
                .map_err(|e| ConfigError::new("DATABASE_URL", e.to_string()))?;
        }
        if uses.consumers {
            let horizon = self.saga.redelivery_horizon();
            self.retention
                .check(horizon)
                .map_err(|e| ConfigError::new("JETFLOW_ACK_WAIT", e))?;
        }
        if uses.payments {
            match &self.provider.url {
                Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                    return Err(ConfigError::new(
                        "PAYMENT_PROVIDER_URL",
                        format!("{url:?} must start with http:// or https://"),
                    ));
                }
                _ => {}
            }
            if let Some(ca) = &self.provider.ca {
                readable("PAYMENT_PROVIDER_CA", ca)?;
            }
        }
        if let (Some(admin), true) = (self.http.admin_addr, uses.http)
            && admin == self.http.addr
        {
            return Err(ConfigError::new(
                "JETFLOW_ADMIN_ADDR",
                "must differ from JETFLOW_HTTP_ADDR",
            ));
        }
        Ok(())
    }

    fn validate_nats(&self) -> Result<(), ConfigError> {
        if self.nats.url.is_none() {
            return Err(ConfigError::new(
                "NATS_URL",
                "is not set (for example nats://127.0.0.1:4222; comma-separate the nodes of a cluster)",
            ));
        }
        self.nats.connection("check").validate().map_err(|e| {
            use jetflow_runtime::connection::ConnectError as E;
            match e {
                E::Unreadable {
                    setting,
                    path,
                    source,
                } => ConfigError::new(setting, format!("cannot read {}: {source}", path.display())),
                E::Invalid(m) if m.contains("NATS_TLS") => ConfigError::new("NATS_TLS_CERT", m),
                other => ConfigError::new("NATS_URL", other.to_string()),
            }
        })
    }

    /// The saga settings, shared.
    pub fn saga(&self) -> Arc<SagaConfig> {
        Arc::new(self.saga.clone())
    }
}

/// Which parts of the settings a command uses (only those are checked).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uses {
    /// NATS.
    pub nats: bool,
    /// The database.
    pub database: bool,
    /// Consumers (inbox retention against redeliveries).
    pub consumers: bool,
    /// The payment provider client.
    pub payments: bool,
    /// HTTP servers.
    pub http: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One place holds each default: what `jetflow all` runs with when given nothing is
    /// `Settings::default()` (the command line's defaults are read from it, and this checks
    /// every other one too).
    #[test]
    fn the_command_lines_defaults_are_settings_default() {
        use clap::Parser;
        let set: Vec<String> = std::env::vars()
            .map(|(k, _)| k)
            .filter(|k| {
                k.starts_with("JETFLOW_") && !k.starts_with("JETFLOW_TEST_") && k != "JETFLOW_BIN"
                    || ["NATS_URL", "DATABASE_URL", "PAYMENT_PROVIDER_URL"].contains(&k.as_str())
            })
            .collect();
        assert!(
            set.is_empty(),
            "the test reads defaults, but these are set: {set:?}"
        );
        let cli = crate::cli::Cli::try_parse_from(["jetflow", "all"]).expect("parses");
        let crate::cli::Command::All(args) = cli.command else {
            panic!("jetflow all");
        };
        let from_cli = Settings::for_all(&args).expect("valid");
        let default = Settings::named("all");
        assert_eq!(format!("{from_cli:#?}"), format!("{default:#?}"));
    }

    #[test]
    fn the_local_nats_server_keeps_its_streams_beside_the_sqlite_database() {
        let at = |url: &str| {
            let mut s = Settings::default();
            s.database.url = url.to_string();
            s.local_nats_data()
        };
        assert_eq!(at(DEFAULT_DATABASE_URL), PathBuf::from("./data/nats"));
        assert_eq!(at("sqlite:///tmp/x/j.db"), PathBuf::from("/tmp/x/nats"));
        assert_eq!(at("sqlite://j.db"), PathBuf::from("nats"));
        assert_eq!(at("sqlite::memory:"), PathBuf::from("./data/nats"));
        assert_eq!(at("postgres://u@h/db"), PathBuf::from("./data/nats"));
    }

    /// A payment is retried after one payment timeout, as many times as any delivery.
    #[test]
    fn payment_retries_follow_the_payment_timeout_and_max_deliver() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "jetflow",
            "payments",
            "--payment-timeout",
            "700ms",
            "--max-deliver",
            "7",
        ])
        .expect("parses");
        let crate::cli::Command::Payments(args) = cli.command else {
            panic!("jetflow payments");
        };
        let s = Settings::for_payments(&args).expect("valid");
        assert_eq!(s.saga.payment_retry_base, Duration::from_millis(700));
        assert_eq!(s.saga.void_scan_interval, Duration::from_millis(700 * 15));
        assert_eq!((s.saga.max_deliver, s.saga.payment_max_deliver), (7, 7));
    }

    fn uses_all() -> Uses {
        Uses {
            nats: true,
            database: true,
            consumers: true,
            payments: true,
            http: true,
        }
    }

    #[test]
    fn defaults_pass_except_the_missing_nats_url() {
        let mut s = Settings::default();
        let e = s.validate(uses_all()).unwrap_err();
        assert_eq!(e.setting, "NATS_URL");
        s.nats.url = Some("nats://127.0.0.1:4222".into());
        s.validate(uses_all()).unwrap();
    }

    #[test]
    fn bad_settings_are_named() {
        let mut s = Settings::default();
        s.nats.url = Some("nats://127.0.0.1:4222".into());
        s.database = DbConfig {
            max_connections: Some(8),
            ..DbConfig::new("sqlite::memory:")
        };
        assert_eq!(s.validate(uses_all()).unwrap_err().setting, "DATABASE_URL");
        s.database = DbConfig::new("sqlite::memory:");
        s.retention.inbox = Duration::from_secs(60);
        assert_eq!(
            s.validate(uses_all()).unwrap_err().setting,
            "JETFLOW_ACK_WAIT"
        );
        s.retention = Retention::default();
        s.provider.url = Some("ftp://x".into());
        assert_eq!(
            s.validate(uses_all()).unwrap_err().setting,
            "PAYMENT_PROVIDER_URL"
        );
        s.provider.url = None;
        s.nats.auth = NatsAuth::CredsFile("/nonexistent.creds".into());
        let e = s.validate(uses_all()).unwrap_err();
        assert_eq!(e.setting, "NATS_CREDS", "{e}");
    }
}
