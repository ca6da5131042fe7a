//! `jetflow bench`: measured load, always against a baseline measured in the same run.
//!
//! * `jetflow bench bridge` compares the framework with raw async-nats on the same broker
//!   (publishing with PubAck, consuming with ack). With no `NATS_URL` it starts its own
//!   nats-server twice, with the default flush policy and with `sync_interval: always`.
//! * `jetflow bench orders` measures the whole pipeline. With no `--gateway-url` it starts
//!   everything itself: a local nats-server (`--sync-always` for fsync on every write), a fresh
//!   database (SQLite, or a fresh PostgreSQL database on the `--postgres` server, dropped
//!   afterwards) and a `jetflow all` process. It measures one order at a time unloaded, then
//!   `--clients` clients posting orders as fast as they are answered for `--duration`, waits
//!   until every accepted order finished, counts the database commits per finished order and
//!   the commits of the idle process, and finally runs the raw async-nats 4-event saga on the
//!   same broker as the ratio's baseline. `--gateway-url` drives a system that runs elsewhere.
//! * `jetflow bench accept` measures the accept path alone: it starts `jetflow gateway` only
//!   (nothing consumes the events), posts orders with `--clients` clients, and compares with
//!   raw JetStream publishes with PubAck at the same concurrency on the same broker. It is
//!   the capacity of one gateway replica when the pipeline runs elsewhere, and what the
//!   accept path costs when it shares the machine with the pipeline.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bridge::{self as bridge_bench, BridgeBench};
use crate::load;
use crate::report::{Measurement, Percentiles};
use crate::saga;
use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::Connection as _;

use jetflow_runtime::local_nats::{self, LocalNats};

use crate::cpu_use::{CpuPerOrder, CpuSample};

/// Options of `jetflow bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[command(subcommand)]
    pub mode: BenchMode,
    /// Print the report as JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The benchmarks.
#[derive(Debug, Clone, Subcommand)]
pub enum BenchMode {
    /// The bridge against raw async-nats: publish and consume throughput and latency.
    Bridge(BridgeArgs),
    /// Orders end to end, against the raw async-nats saga on the same broker.
    Orders(OrdersArgs),
    /// The gateway alone (no consumers): POST /orders against raw JetStream publishes with
    /// PubAck at the same concurrency.
    Accept(AcceptArgs),
}

/// Options of `jetflow bench bridge`.
#[derive(Debug, Clone, Args)]
pub struct BridgeArgs {
    /// The broker to measure on (no credentials or TLS: a broker of its own is what a
    /// benchmark wants); unset: start local nats-servers, one with the default flush policy
    /// and one with `sync_interval: always`.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// Messages per measurement.
    #[arg(long, default_value_t = 20_000)]
    pub messages: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// Publishes (and deliveries) in flight at once.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Skip the second local broker with `sync_interval: always`.
    #[arg(long)]
    pub no_sync_compare: bool,
}

/// What `bench orders` and `bench accept` drive, and how hard.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Drive the gateway at this URL instead of starting a system.
    #[arg(long, env = "JETFLOW_GATEWAY_URL")]
    pub gateway_url: Option<String>,
    /// With --gateway-url: the system's NATS URL, for the baseline on the same broker.
    #[arg(long, requires = "gateway_url")]
    pub nats_url: Option<String>,
    /// With --gateway-url: where the system serves `/ready` and `/metrics`, when they have an
    /// address of their own (JETFLOW_ADMIN_ADDR); the gateway's URL otherwise.
    #[arg(long, requires = "gateway_url")]
    pub admin_url: Option<String>,
    /// PostgreSQL: without --gateway-url, the admin URL of a server to create a fresh database
    /// on (SQLite otherwise); with --gateway-url, the system's database (its commits, and its
    /// CPU when it runs on this machine, are counted).
    #[arg(long, value_parser = postgres_url)]
    pub postgres: Option<String>,
    /// Start the local nats-server with `sync_interval: always` (fsync every write).
    #[arg(long, conflicts_with = "gateway_url")]
    pub sync_always: bool,
    /// Clients posting orders at once.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// How long the clients post (ignored with --orders).
    #[arg(long, default_value = "10s", value_parser = positive)]
    pub duration: Duration,
    /// Post exactly this many orders instead of posting for --duration.
    #[arg(long)]
    pub orders: Option<usize>,
}

/// Options of `jetflow bench orders`.
#[derive(Debug, Clone, Args)]
pub struct OrdersArgs {
    /// The system and the load.
    #[command(flatten)]
    pub load: LoadArgs,
    /// Orders placed one at a time first, each waited for, to measure unloaded latency.
    #[arg(long, default_value_t = 50)]
    pub unloaded: usize,
    /// Distinct products ordered (bench-0 … bench-N, stocked at start).
    #[arg(long, default_value_t = 20)]
    pub products: usize,
    /// Share of express orders, 0 to 1.
    #[arg(long, default_value_t = 0.1)]
    pub express: f64,
    /// How long to wait for every accepted order to finish.
    #[arg(long, default_value = "180s", value_parser = positive)]
    pub timeout: Duration,
    /// How long the idle process is watched for commits.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub idle: Duration,
    /// Orders the raw saga baseline takes through (0: skip it).
    #[arg(long, default_value_t = 20_000)]
    pub baseline_orders: usize,
    /// Batch size of the started system's consumers (JETFLOW_BATCH_MAX).
    #[arg(long)]
    pub batch_max: Option<u32>,
    /// Run the payment provider as its own process (as deployed) accepting at most this
    /// many charges per second (429 with Retry-After over it), and report finished orders
    /// per second against it. Offer more than that: `--orders` posts a fixed backlog.
    #[arg(long)]
    pub provider_rate_limit: Option<u32>,
}

/// Options of `jetflow bench accept`.
#[derive(Debug, Clone, Args)]
pub struct AcceptArgs {
    /// The gateway and the load (as many raw publishers in flight as clients).
    #[command(flatten)]
    pub load: LoadArgs,
    /// Messages the raw publish baseline publishes (0: skip it).
    #[arg(long, default_value_t = 50_000)]
    pub baseline_messages: usize,
}

/// A duration such as `10s` or `3m` (humantime) that is longer than zero.
fn positive(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d.is_zero() => Err(format!("{text:?}: must be longer than zero")),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "{text:?} is not a duration such as 10s or 3m ({e})"
        )),
    }
}

/// Runs a benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.mode {
        BenchMode::Bridge(b) => bridge(b, args.json).await,
        BenchMode::Orders(o) => orders(o, args.json).await,
        BenchMode::Accept(a) => accept(a, args.json).await,
    }
}

// ---------------------------------------------------------------- bridge vs raw async-nats

async fn bridge(b: BridgeArgs, json: bool) -> anyhow::Result<()> {
    let config = BridgeBench {
        messages: b.messages,
        payload: b.payload,
        in_flight: b.in_flight.max(1),
    };
    let mut reports = Vec::new();
    match &b.nats_url {
        Some(url) => {
            reports.push(bridge_bench::run(url, &format!("NATS_URL {url}"), &config).await?)
        }
        None => {
            let modes: &[bool] = if b.no_sync_compare {
                &[false]
            } else {
                &[false, true]
            };
            for &sync in modes {
                let dir = tempfile::Builder::new()
                    .prefix("jetflow-bench-")
                    .tempdir()?;
                let server = LocalNats::start(dir.path(), 0, sync)?;
                let label = if sync {
                    "local nats-server, sync_interval: always"
                } else {
                    "local nats-server, default flush"
                };
                reports.push(bridge_bench::run(server.url(), label, &config).await?);
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    println!(
        "jetflow bench bridge: {} messages of {} bytes, {} in flight",
        b.messages, b.payload, config.in_flight
    );
    for r in &reports {
        println!("\n{}", r.broker);
        println!("{}", r.publish_raw.line());
        println!("{}", r.publish_bridge.line());
        println!("  bridge/raw publish throughput: {:.2}", r.publish_ratio);
        println!("{}", r.consume_raw.line());
        println!("{}", r.consume_bridge.line());
        println!("  bridge/raw consume throughput: {:.2}", r.consume_ratio);
        println!("{}", r.consume_raw_batches.line());
        println!("{}", r.consume_route_batches.line());
        println!(
            "  route/raw batched consume throughput: {:.2}",
            r.consume_batches_ratio
        );
    }
    println!(
        "\nconsume throughput: draining {} stored messages; consume latency: from publish to \
         handler, every message of a second run published at {}/s while it is consumed",
        b.messages,
        crate::bridge::LIVE_RATE
    );
    Ok(())
}

// ---------------------------------------------------------------- orders end to end

/// What `bench orders` measured.
#[derive(Debug, Serialize)]
pub struct OrdersReport {
    /// Which database.
    pub database: String,
    /// Whether the broker fsyncs every write.
    pub sync_always: bool,
    /// Clients posting at once.
    pub clients: usize,
    /// POST → confirmed, one order at a time.
    pub unloaded_confirm: Percentiles,
    /// Orders posted under load.
    pub posted: usize,
    /// Answered 202.
    pub accepted: usize,
    /// Orders the system itself counted as created during the load
    /// (`jetflow_orders_total{status="pending"}` at the gateway).
    pub created: usize,
    /// Answered anything else.
    pub refused: usize,
    /// POSTs per second and their latency.
    pub accept: Measurement,
    /// Finished (confirmed or cancelled) orders per second, from the first POST to the last
    /// order finishing.
    pub finished_per_second: f64,
    /// Accepted → finished, from the orders' histories (a sample).
    pub end_to_end: Percentiles,
    /// Confirmed orders.
    pub confirmed: usize,
    /// Cancelled orders.
    pub cancelled: usize,
    /// Write transactions jetflow committed per finished order (`jetflow_db_commits_total`).
    pub commits_per_order: f64,
    /// Every transaction PostgreSQL committed per finished order (`pg_stat_database`).
    pub pg_commits_per_order: Option<f64>,
    /// Write transactions per second of the idle process.
    pub idle_commits_per_second: f64,
    /// Every PostgreSQL transaction per second of the idle process (polling included).
    pub idle_pg_commits_per_second: Option<f64>,
    /// The raw async-nats saga on the same broker.
    pub baseline: Option<saga::SagaReport>,
    /// finished per second ÷ the baseline's.
    pub ratio: Option<f64>,
    /// CPU per finished order, from the first POST to the last order finishing: of the
    /// started jetflow process and nats-server, and of PostgreSQL when it runs on this
    /// machine.
    pub cpu: CpuPerOrder,
    /// CPU per order of the raw saga: the nats-server's and its client's (only when the
    /// benchmark started the nats-server).
    pub baseline_cpu_ms: Option<f64>,
    /// The provider's own process and its limit, when `--provider-rate-limit` ran one.
    pub provider: Option<ProviderRun>,
}

/// How the saga fared against a rate-limited provider in its own process.
#[derive(Debug, Serialize)]
pub struct ProviderRun {
    /// Charges per second it accepted at most.
    pub rate_limit_per_s: u32,
    /// Finished orders per second ÷ the limit.
    pub finished_per_limit: f64,
    /// Times the payment breaker opened during the run (0: the limit never looked like a
    /// failure).
    pub breaker_opened: u64,
    /// Charges the provider pushed back (429), each made again after its Retry-After.
    pub pushbacks: u64,
}

/// A system `bench orders` started, removed on drop.
struct System {
    child: Option<Child>,
    /// The payment provider's own process, when the bench started one.
    provider: Option<Child>,
    nats: Option<LocalNats>,
    _dir: tempfile::TempDir,
    pg: Option<(String, String)>,
    gateway: String,
    nats_url: String,
    database_url: String,
    log: PathBuf,
}

impl System {
    /// The process ids of `jetflow all` and of the nats-server.
    fn pids(&self) -> (Option<u32>, Option<u32>) {
        (
            self.child.as_ref().map(Child::id),
            self.nats.as_ref().map(LocalNats::pid),
        )
    }
}

/// Whether a database URL points at this machine (loopback or a Unix socket), whose
/// `postgres` processes are then the server's.
fn on_this_machine(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| match u.host_str() {
        None | Some("" | "localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
    })
}

/// A PostgreSQL URL (`postgres://` or `postgresql://`), checked when the flags are read.
fn postgres_url(s: &str) -> Result<String, String> {
    match reqwest::Url::parse(s) {
        Ok(url) if matches!(url.scheme(), "postgres" | "postgresql") => Ok(s.to_string()),
        Ok(url) => Err(format!(
            "expected a postgres:// URL, not a {}:// one",
            url.scheme()
        )),
        Err(e) => Err(format!("not a URL: {e}")),
    }
}

/// The admin URL with its database replaced by `name` (host, port, credentials and query
/// kept, a Unix socket directory in `?host=` included).
fn with_database(admin: &str, name: &str) -> anyhow::Result<String> {
    let mut url = reqwest::Url::parse(admin).with_context(|| {
        format!(
            "--postgres {} is not a URL",
            jetflow_runtime::db::redact_url(admin)
        )
    })?;
    url.set_path(&format!("/{name}"));
    Ok(url.into())
}

/// What [`System::start`] starts.
struct SystemSpec<'a> {
    /// `all`, or `gateway` for the accept path alone.
    role: &'static str,
    /// PostgreSQL admin URL, or SQLite.
    postgres: Option<&'a String>,
    /// `sync_interval: always` for the nats-server.
    sync_always: bool,
    /// Further environment of the jetflow process.
    env: Vec<(&'static str, String)>,
    /// A payment provider of its own process with this rate limit.
    provider_rate_limit: Option<u32>,
}

impl System {
    async fn start(spec: SystemSpec<'_>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("jetflow-bench-")
            .tempdir()?;
        let nats = LocalNats::start(&dir.path().join("nats"), 0, spec.sync_always)?;
        let (database_url, pg) = match spec.postgres {
            None => (
                format!("sqlite://{}/jetflow.db", dir.path().display()),
                None,
            ),
            Some(admin) => {
                let name = format!(
                    "jetflow_bench_{}",
                    &uuid::Uuid::new_v4().simple().to_string()[..12]
                );
                let mut conn = sqlx::postgres::PgConnection::connect(admin)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot reach PostgreSQL at {}",
                            jetflow_runtime::db::redact_url(admin)
                        )
                    })?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await?;
                (with_database(admin, &name)?, Some((admin.clone(), name)))
            }
        };
        let port = local_nats::free_port()?;
        let log = dir.path().join("jetflow.log");
        let mut env = spec.env;
        let provider = match spec.provider_rate_limit {
            Some(limit) => {
                let pport = local_nats::free_port()?;
                let mut cmd = Command::new(std::env::current_exe()?);
                cmd.arg("payment-provider")
                    .env("JETFLOW_HTTP_ADDR", format!("127.0.0.1:{pport}"))
                    .env("JETFLOW_PROVIDER_RATE_LIMIT", limit.to_string())
                    .env("RUST_LOG", "warn")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(dir.path().join("provider.log"))?);
                local_nats::die_with_parent(&mut cmd, libc::SIGTERM);
                let child = cmd
                    .spawn()
                    .context("cannot start jetflow payment-provider")?;
                env.push(("PAYMENT_PROVIDER_URL", format!("http://127.0.0.1:{pport}")));
                Some(child)
            }
            None => None,
        };
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg(spec.role)
            .env("NATS_URL", nats.url())
            .env("DATABASE_URL", &database_url)
            .env("JETFLOW_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env(
                "JETFLOW_PROVIDER_ADDR",
                format!("127.0.0.1:{}", local_nats::free_port()?),
            )
            .env("JETFLOW_RATE_LIMIT", "0")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        cmd.envs(env);
        local_nats::die_with_parent(&mut cmd, libc::SIGTERM);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start jetflow {}", spec.role))?;
        let system = Self {
            child: Some(child),
            provider,
            nats_url: nats.url().to_string(),
            nats: Some(nats),
            _dir: dir,
            pg,
            gateway: format!("http://127.0.0.1:{port}"),
            database_url,
            log,
        };
        Ok(system)
    }

    /// Stops the process (SIGTERM, waiting for its clean stop) and the broker, drops the
    /// database.
    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            local_nats::terminate(&mut child, Duration::from_secs(20));
        }
        if let Some(mut provider) = self.provider.take() {
            local_nats::terminate(&mut provider, Duration::from_secs(10));
        }
        self.nats.take();
        if let Some((admin, name)) = self.pg.take() {
            let mut conn = sqlx::postgres::PgConnection::connect(&admin).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await?;
        }
        Ok(())
    }
}

impl Drop for System {
    fn drop(&mut self) {
        for mut child in [self.child.take(), self.provider.take()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A metric's sum over every series matching `labels`, from a Prometheus text page.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    Ok(http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

/// Counts the transactions PostgreSQL committed in the system's database, through one
/// connection kept open so that the count's own queries are known: each reading is one
/// transaction of ours, which [`PgCounter::read`] leaves out.
struct PgCounter {
    conn: sqlx::postgres::PgConnection,
    reads: i64,
}

impl PgCounter {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            conn: sqlx::postgres::PgConnection::connect(url).await?,
            reads: 0,
        })
    }

    /// The database's commits so far, less the readings before this one.
    async fn read(&mut self) -> anyhow::Result<i64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&mut self.conn)
        .await?;
        let ours = self.reads;
        self.reads += 1;
        Ok(n - ours)
    }
}

/// Polls `f` until it answers `Some`, every 20 ms, at most `deadline`.
/// How often an order's status is polled when its latency is measured: often enough not to
/// blur it.
const POLL_LATENCY: Duration = Duration::from_millis(1);
/// How long PostgreSQL may take to report a backend's transactions.
const PG_STATS_SETTLE: Duration = Duration::from_secs(11);
/// How often other conditions are checked.
const POLL: Duration = Duration::from_millis(50);

/// Calls `f` every `every` until it answers, for at most `deadline`.
async fn until<T, F, Fut>(
    what: &str,
    deadline: Duration,
    every: Duration,
    mut f: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(t) = f().await {
            return Ok(t);
        }
        if Instant::now() > end {
            bail!("{what} did not happen within {deadline:?}");
        }
        tokio::time::sleep(every).await;
    }
}

/// The order `id` once it finished (confirmed or cancelled), as `GET /orders/{id}` shows it.
async fn status(http: &reqwest::Client, base: &str, id: &str) -> Option<Value> {
    let v: Value = http
        .get(format!("{base}/orders/{id}"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    matches!(v["status"].as_str(), Some("confirmed" | "cancelled")).then_some(v)
}

/// The benchmark's load: `clients` posting for `duration` (or exactly `orders`), each order
/// once and without a key, over `products` products `bench-0`, `bench-1`, …
fn bench_load(
    base: &str,
    clients: usize,
    duration: Duration,
    orders: Option<usize>,
    products: usize,
) -> load::LoadConfig {
    let products = (0..products.max(1)).map(|i| format!("bench-{i}")).collect();
    let mut config = load::LoadConfig::closed_loop(base, products, clients, duration);
    config.orders = orders;
    config
}

/// Posts `config`'s orders on `http` and measures the POSTs (`POST /orders (202 after
/// PubAck)`).
async fn post_orders(
    http: &reqwest::Client,
    config: load::LoadConfig,
) -> anyhow::Result<(Vec<(Option<String>, Duration)>, Measurement)> {
    let report = load::run_on(http, config).await;
    if let Some(failed) = report.failed.first() {
        bail!("posting orders: {failed}");
    }
    let accept = Measurement::new(
        "POST /orders (202 after PubAck)",
        report.posts.len(),
        report.elapsed,
        report.posts.iter().map(|(_, l)| *l).collect(),
    );
    Ok((report.posts, accept))
}

fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

async fn orders(o: OrdersArgs, json_out: bool) -> anyhow::Result<()> {
    let mut env = Vec::new();
    if let Some(n) = o.batch_max {
        env.push(("JETFLOW_BATCH_MAX", n.to_string()));
    }
    let report = drive(&o.load, "all", env, o.provider_rate_limit, async |system| {
        measure(&o, system).await
    })
    .await?;
    show(&report, json_out, print_report)
}

/// Prints a report as JSON, or as `print` writes it for people.
fn show<R: Serialize>(report: &R, json: bool, print: fn(&R)) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print(report);
    }
    Ok(())
}

/// Starts `jetflow <role>` with a local nats-server and a fresh database (unless
/// `--gateway-url` points at a system running elsewhere), measures it, shows the end of its log
/// if the measurement failed, and stops it.
async fn drive<R>(
    load: &LoadArgs,
    role: &'static str,
    env: Vec<(&'static str, String)>,
    provider_rate_limit: Option<u32>,
    measure: impl AsyncFnOnce(Option<&System>) -> anyhow::Result<R>,
) -> anyhow::Result<R> {
    let system = match &load.gateway_url {
        Some(_) => None,
        None => Some(
            System::start(SystemSpec {
                role,
                postgres: load.postgres.as_ref(),
                sync_always: load.sync_always,
                env,
                provider_rate_limit,
            })
            .await?,
        ),
    };
    let result = measure(system.as_ref()).await;
    if let Some(system) = system {
        if result.is_err() {
            eprintln!(
                "jetflow bench: the last lines of jetflow {role}'s log:\n{}",
                tail(&system.log)
            );
        }
        system.stop().await?;
    }
    result
}

/// The gateway a measurement drives, ready.
struct Driven {
    http: reqwest::Client,
    /// The gateway's base URL.
    base: String,
    /// Where `/ready` and `/metrics` are (the gateway's URL, or its admin address).
    admin: String,
    /// The broker, for the baseline.
    nats_url: Option<String>,
    /// The database (PostgreSQL), if any.
    pg_url: Option<String>,
    /// "PostgreSQL", "SQLite" or "the gateway's".
    database: &'static str,
    /// The processes whose CPU the measurement reads.
    processes: Processes,
}

/// The processes of a run whose CPU time is read: the started jetflow and nats-server, and
/// PostgreSQL when it runs on this machine.
#[derive(Debug, Clone, Copy)]
struct Processes {
    jetflow: Option<u32>,
    nats: Option<u32>,
    postgres: bool,
}

impl Processes {
    fn read(self) -> CpuSample {
        CpuSample::read(self.jetflow, self.nats, self.postgres)
    }
}

impl Driven {
    /// Waits until the gateway is ready.
    async fn ready(load: &LoadArgs, system: Option<&System>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(load.clients.max(1))
            .build()?;
        let base = system
            .map(|s| s.gateway.clone())
            .or_else(|| load.gateway_url.clone())
            .ok_or_else(|| anyhow!("no gateway"))?
            .trim_end_matches('/')
            .to_string();
        let admin = match (system, &load.admin_url) {
            (None, Some(url)) => url.trim_end_matches('/').to_string(),
            _ => base.clone(),
        };
        let nats_url = system
            .map(|s| s.nats_url.clone())
            .or_else(|| load.nats_url.clone());
        let pg_url = match system {
            Some(s) if load.postgres.is_some() => Some(s.database_url.clone()),
            Some(_) => None,
            None => load.postgres.clone(),
        };
        let database = match (&pg_url, system) {
            (Some(_), _) => "PostgreSQL",
            (None, Some(_)) => "SQLite",
            (None, None) => "the gateway's",
        };
        until(
            "the gateway to be ready",
            Duration::from_secs(60),
            POLL,
            || async {
                let r = http.get(format!("{admin}/ready")).send().await.ok()?;
                (r.status().as_u16() == 200).then_some(())
            },
        )
        .await?;
        let (jetflow, nats) = system.map(System::pids).unwrap_or_default();
        let processes = Processes {
            jetflow,
            nats,
            postgres: pg_url.as_deref().is_some_and(on_this_machine),
        };
        Ok(Self {
            http,
            base,
            admin,
            nats_url,
            pg_url,
            database,
            processes,
        })
    }
}

fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

async fn measure(o: &OrdersArgs, system: Option<&System>) -> anyhow::Result<OrdersReport> {
    let bar = spinner("waiting for the system to be ready");
    let Driven {
        http,
        base,
        admin,
        nats_url,
        pg_url,
        database,
        processes,
    } = Driven::ready(&o.load, system).await?;
    let products = o.products.max(1);
    for i in 0..products {
        let r = http
            .put(format!("{base}/inventory/bench-{i}"))
            .json(&json!({"available": 100_000_000, "price_cents": 1000}))
            .send()
            .await
            .with_context(|| format!("cannot reach the gateway at {base}"))?;
        if !r.status().is_success() {
            bail!("PUT /inventory answered {}", r.status());
        }
    }

    // 1. Unloaded: one order at a time, POST → confirmed.
    bar.set_message(format!("{} orders one at a time", o.unloaded));
    let mut unloaded = Vec::with_capacity(o.unloaded);
    let one = bench_load(&base, 1, Duration::ZERO, None, products);
    for n in 0..o.unloaded {
        let t0 = Instant::now();
        let posted = load::one_order(&http, &one, n).await;
        let id = posted.accepted.first().cloned().ok_or_else(|| {
            anyhow!(
                "POST /orders was not accepted: {:?}",
                (
                    posted.unavailable,
                    posted.connection_errors,
                    &posted.unexpected
                )
            )
        })?;
        until(
            "an unloaded order to finish",
            Duration::from_secs(30),
            POLL_LATENCY,
            || status(&http, &base, &id),
        )
        .await?;
        unloaded.push(t0.elapsed());
    }
    let unloaded_confirm = Percentiles::of(&mut unloaded);

    let mut pg = match &pg_url {
        Some(url) => Some(PgCounter::connect(url).await?),
        None => None,
    };
    // 2. Load.
    let before = metrics(&http, &admin).await?;
    let pg_before = match pg.as_mut() {
        Some(c) => Some(c.read().await?),
        None => None,
    };
    let cpu_before = processes.read();
    let finished_before = metric_sum(&before, "jetflow_orders_total", &[("status", "confirmed")])
        + metric_sum(&before, "jetflow_orders_total", &[("status", "cancelled")]);
    bar.set_message(format!("{} clients posting orders", o.load.clients));
    let started = Instant::now();
    let config = load::LoadConfig {
        express: o.express,
        first: o.unloaded,
        ..bench_load(
            &base,
            o.load.clients,
            o.load.duration,
            o.load.orders,
            products,
        )
    };
    let (results, accept) = post_orders(&http, config).await?;
    let accepted: Vec<String> = results.iter().filter_map(|(id, _)| id.clone()).collect();

    // 3. Drain: until every accepted order finished.
    bar.set_message(format!("waiting for {} orders to finish", accepted.len()));
    let target = finished_before + accepted.len() as f64;
    let after = until(
        "every accepted order to finish",
        o.timeout,
        POLL,
        || async {
            let text = metrics(&http, &admin).await.ok()?;
            let done = metric_sum(&text, "jetflow_orders_total", &[("status", "confirmed")])
                + metric_sum(&text, "jetflow_orders_total", &[("status", "cancelled")]);
            (done >= target).then_some(text)
        },
    )
    .await?;
    let elapsed = started.elapsed();
    let cpu_after = processes.read();
    let pg_after = match pg.as_mut() {
        Some(c) => Some(c.read().await?),
        None => None,
    };
    let finished = accepted.len();
    let created = (metric_sum(&after, "jetflow_orders_total", &[("status", "pending")])
        - metric_sum(&before, "jetflow_orders_total", &[("status", "pending")]))
        as usize;
    let confirmed = (metric_sum(&after, "jetflow_orders_total", &[("status", "confirmed")])
        - metric_sum(&before, "jetflow_orders_total", &[("status", "confirmed")]))
        as usize;
    let commits = metric_sum(&after, "jetflow_db_commits_total", &[])
        - metric_sum(&before, "jetflow_db_commits_total", &[]);
    let mut e2e = Vec::new();
    let sample: Vec<&String> = accepted
        .iter()
        .step_by((accepted.len() / 500).max(1))
        .collect();
    for id in sample {
        if let Some(v) = status(&http, &base, id).await {
            let times: Vec<chrono::DateTime<chrono::FixedOffset>> = v["history"]
                .as_array()
                .map(|h| {
                    h.iter()
                        .filter_map(|e| {
                            chrono::DateTime::parse_from_rfc3339(e["at"].as_str()?).ok()
                        })
                        .collect()
                })
                .unwrap_or_default();
            if let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) {
                e2e.push((*last - *first).to_std().unwrap_or_default());
            }
        }
    }

    // 4. Idle.
    // The process is idle once its outbox is empty and no consumer has anything left (the
    // saga's last events, stock sold say, follow an order's confirmation, later still when
    // the consumers took turns behind the requests); PostgreSQL reports a backend's counts
    // up to 10 s after the fact (PGSTAT_IDLE_INTERVAL), so the load must not leak into the
    // idle window.
    bar.set_message("waiting for the process to be idle");
    until(
        "the outbox and every consumer to be empty",
        o.timeout,
        POLL,
        || async {
            let text = metrics(&http, &admin).await.ok()?;
            let left = metric_sum(&text, "jetflow_outbox_pending", &[])
                + metric_sum(&text, "jetflow_consumer_pending", &[])
                + metric_sum(&text, "jetflow_consumer_ack_pending", &[]);
            (left == 0.0).then_some(())
        },
    )
    .await?;
    if pg_url.is_some() {
        tokio::time::sleep(PG_STATS_SETTLE).await;
    }
    bar.set_message("watching the idle process");
    let idle_before = metric_sum(
        &metrics(&http, &admin).await?,
        "jetflow_db_commits_total",
        &[],
    );
    let pg_idle_before = match pg.as_mut() {
        Some(c) => Some(c.read().await?),
        None => None,
    };
    tokio::time::sleep(o.idle).await;
    let idle_after = metric_sum(
        &metrics(&http, &admin).await?,
        "jetflow_db_commits_total",
        &[],
    );
    let pg_idle_after = match pg.as_mut() {
        Some(c) => Some(c.read().await?),
        None => None,
    };
    let idle_secs = o.idle.as_secs_f64().max(1e-9);

    // 5. The baseline on the same broker.
    let mut baseline_cpu_ms = None;
    let baseline = match (&nats_url, o.baseline_orders) {
        (Some(url), n) if n > 0 => {
            bar.set_message(format!("raw async-nats saga: {n} orders"));
            // Its client runs in this process.
            let before = CpuSample::read(Some(std::process::id()), processes.nats, false);
            let report = saga::run(url, n, 256).await?;
            let cost = before.per_order(
                &CpuSample::read(Some(std::process::id()), processes.nats, false),
                report.orders,
            );
            baseline_cpu_ms = cost.jetflow_ms.zip(cost.nats_ms).map(|(c, n)| c + n);
            Some(report)
        }
        _ => None,
    };
    bar.finish_and_clear();
    let finished_per_second = finished as f64 / elapsed.as_secs_f64().max(1e-9);
    let per_order = |n: f64| n / finished.max(1) as f64;
    let provider = o.provider_rate_limit.map(|limit| {
        let delta = |name: &str, labels: &[(&str, &str)]| {
            (metric_sum(&after, name, labels) - metric_sum(&before, name, labels)).max(0.0) as u64
        };
        ProviderRun {
            rate_limit_per_s: limit,
            finished_per_limit: finished_per_second / f64::from(limit.max(1)),
            breaker_opened: delta("jetflow_breaker_transitions_total", &[("to", "open")]),
            pushbacks: delta("jetflow_pace_pushbacks_total", &[]),
        }
    });
    Ok(OrdersReport {
        database: database.to_string(),
        sync_always: o.load.sync_always,
        clients: o.load.clients,
        unloaded_confirm,
        posted: results.len(),
        accepted: accepted.len(),
        created,
        refused: results.len() - accepted.len(),
        accept,
        finished_per_second,
        end_to_end: Percentiles::of(&mut e2e),
        confirmed,
        cancelled: finished.saturating_sub(confirmed),
        commits_per_order: per_order(commits),
        pg_commits_per_order: pg_before
            .zip(pg_after)
            .map(|(b, a)| per_order((a - b) as f64)),
        idle_commits_per_second: (idle_after - idle_before) / idle_secs,
        idle_pg_commits_per_second: pg_idle_before
            .zip(pg_idle_after)
            .map(|(b, a)| (a - b) as f64 / idle_secs),
        ratio: baseline
            .as_ref()
            .map(|b| finished_per_second / b.per_second),
        baseline,
        cpu: cpu_before.per_order(&cpu_after, finished),
        baseline_cpu_ms,
        provider,
    })
}

fn print_report(r: &OrdersReport) {
    println!(
        "jetflow bench orders: {} database, {} clients{}",
        r.database,
        r.clients,
        if r.sync_always {
            ", sync_interval: always"
        } else {
            ""
        }
    );
    println!(
        "  unloaded POST → confirmed              p50 {:>7.2} ms   p99 {:>7.2} ms",
        r.unloaded_confirm.p50_ms, r.unloaded_confirm.p99_ms
    );
    println!("{}", r.accept.line());
    println!(
        "  finished {:.0} orders/s ({} accepted: {} confirmed, {} cancelled; {} refused)",
        r.finished_per_second, r.accepted, r.confirmed, r.cancelled, r.refused
    );
    println!(
        "  accepted → finished                    p50 {:>7.2} ms   p99 {:>7.2} ms",
        r.end_to_end.p50_ms, r.end_to_end.p99_ms
    );
    if let Some(p) = &r.provider {
        println!(
            "  provider in its own process, {} charges/s at most: finished/limit = {:.2}; breaker opened {} times; {} charges pushed back (429) and made again",
            p.rate_limit_per_s, p.finished_per_limit, p.breaker_opened, p.pushbacks
        );
    }
    print!(
        "  commits per finished order: {:.2} (jetflow)",
        r.commits_per_order
    );
    match r.pg_commits_per_order {
        Some(pg) => println!(", {pg:.2} (PostgreSQL, every transaction)"),
        None => println!(),
    }
    print!(
        "  idle commits/s: {:.2} (jetflow)",
        r.idle_commits_per_second
    );
    match r.idle_pg_commits_per_second {
        Some(pg) => println!(", {pg:.2} (PostgreSQL, polling included)"),
        None => println!(),
    }
    if let Some(line) = r.cpu.line("finished order") {
        println!("{line}");
    }
    if let (Some(b), Some(ratio)) = (&r.baseline, r.ratio) {
        println!(
            "  raw async-nats saga on the same broker: {:.0} orders/s; jetflow/raw = {:.3}",
            b.per_second, ratio
        );
    }
    if let Some(ms) = r.baseline_cpu_ms {
        println!("  raw saga CPU per order: {ms:.3} ms (nats-server and its client)");
    }
}

// ---------------------------------------------------------------- the accept path alone

/// What `bench accept` measured.
#[derive(Debug, Serialize)]
pub struct AcceptReport {
    /// Which database.
    pub database: String,
    /// Whether the broker fsyncs every write.
    pub sync_always: bool,
    /// Clients posting at once.
    pub clients: usize,
    /// Orders posted.
    pub posted: usize,
    /// Answered 202.
    pub accepted: usize,
    /// Orders the gateway itself counted as created (`jetflow_orders_total{status="pending"}`).
    pub created: usize,
    /// Answered anything else.
    pub refused: usize,
    /// POSTs per second and their latency.
    pub accept: Measurement,
    /// CPU per accepted order (`jetflow_ms` is the gateway's).
    pub cpu: CpuPerOrder,
    /// Raw JetStream publishes with PubAck, as many in flight as there are clients, on the
    /// same broker.
    pub baseline: Option<Measurement>,
    /// accepted per second ÷ the baseline's publishes per second.
    pub ratio: Option<f64>,
}

async fn accept(a: AcceptArgs, json_out: bool) -> anyhow::Result<()> {
    let report = drive(&a.load, "gateway", Vec::new(), None, async |system| {
        measure_accept(&a, system).await
    })
    .await?;
    show(&report, json_out, print_accept_report)
}

async fn measure_accept(a: &AcceptArgs, system: Option<&System>) -> anyhow::Result<AcceptReport> {
    let bar = spinner("waiting for the gateway to be ready");
    let Driven {
        http,
        base,
        admin,
        nats_url,
        pg_url: _,
        database,
        processes,
    } = Driven::ready(&a.load, system).await?;
    let clients = a.load.clients.max(1);
    let load = |orders: Option<usize>, duration: Duration, first: usize| {
        let config = load::LoadConfig {
            express: 0.1,
            first,
            ..bench_load(&base, clients, duration, orders, 20)
        };
        post_orders(&http, config)
    };
    // Warm up: every client's connection, and the gateway's pool and statements.
    bar.set_message("warming up");
    load(Some(clients * 4), a.load.duration, 0).await?;

    let pending = |text: &str| metric_sum(text, "jetflow_orders_total", &[("status", "pending")]);
    let created_before = pending(&metrics(&http, &admin).await?);
    let cpu_before = processes.read();
    bar.set_message(format!("{clients} clients posting orders"));
    let (results, measured) = load(a.load.orders, a.load.duration, clients * 4).await?;
    let cpu_after = processes.read();
    let created = (pending(&metrics(&http, &admin).await?) - created_before) as usize;
    let accepted = results.iter().filter(|(id, _)| id.is_some()).count();

    let baseline = match (&nats_url, a.baseline_messages) {
        (Some(url), n) if n > 0 => {
            bar.set_message(format!("raw JetStream publishes: {n}"));
            let config = BridgeBench {
                messages: n,
                // About an orders.created event with one item.
                payload: 400,
                in_flight: clients,
            };
            Some(bridge_bench::publish_only(url, &config).await?)
        }
        _ => None,
    };
    bar.finish_and_clear();
    Ok(AcceptReport {
        database: database.to_string(),
        sync_always: a.load.sync_always,
        clients,
        posted: results.len(),
        accepted,
        created,
        refused: results.len() - accepted,
        cpu: cpu_before.per_order(&cpu_after, accepted),
        ratio: baseline
            .as_ref()
            .map(|b| measured.per_second / b.per_second),
        accept: measured,
        baseline,
    })
}

fn print_accept_report(r: &AcceptReport) {
    println!(
        "jetflow bench accept: the gateway alone, {} database, {} clients{}",
        r.database,
        r.clients,
        if r.sync_always {
            ", sync_interval: always"
        } else {
            ""
        }
    );
    println!("{}", r.accept.line());
    println!(
        "  {} accepted ({} recorded by the gateway; {} refused)",
        r.accepted, r.created, r.refused
    );
    if let Some(line) = r.cpu.line("accepted order") {
        println!("{line}");
    }
    if let (Some(b), Some(ratio)) = (&r.baseline, r.ratio) {
        println!(
            "  raw JetStream publish with PubAck, {} in flight: {:.0}/s   p50 {:.2} ms   p99 {:.2} ms; accept/raw = {:.3}",
            r.clients, b.per_second, b.latency.p50_ms, b.latency.p99_ms, ratio
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_match_names_exactly() {
        let text = "# HELP x\njetflow_orders_total{status=\"confirmed\"} 3\njetflow_orders_total{status=\"cancelled\"} 2\njetflow_orders_total_other 9\njetflow_db_commits_total 7\n";
        assert_eq!(
            metric_sum(text, "jetflow_orders_total", &[("status", "confirmed")]),
            3.0
        );
        assert_eq!(metric_sum(text, "jetflow_orders_total", &[]), 5.0);
        assert_eq!(metric_sum(text, "jetflow_db_commits_total", &[]), 7.0);
    }

    #[test]
    fn admin_urls_point_at_the_new_database() {
        let cases = [
            ("postgres://u@h:5432/postgres", "postgres://u@h:5432/db1"),
            (
                "postgres://u@h/postgres?sslmode=require",
                "postgres://u@h/db1?sslmode=require",
            ),
            (
                "postgres://u@localhost/postgres?host=/var/run/postgresql",
                "postgres://u@localhost/db1?host=/var/run/postgresql",
            ),
            ("postgres://u@h", "postgres://u@h/db1"),
        ];
        for (admin, expected) in cases {
            assert_eq!(with_database(admin, "db1").expect(admin), expected);
        }
        assert!(with_database("not a url", "db1").is_err());
    }

    #[test]
    fn the_postgres_flag_takes_only_postgres_urls() {
        assert!(postgres_url("postgres://u@h/postgres").is_ok());
        assert!(postgres_url("postgresql://u@localhost/p?host=/var/run/postgresql").is_ok());
        assert!(postgres_url("mysql://u@h/db").is_err());
        assert!(postgres_url("127.0.0.1:5432").is_err());
    }

    #[test]
    fn only_a_database_on_this_machine_has_its_processes_counted() {
        for local in [
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgres://postgres@localhost/postgres?sslmode=disable",
            "postgresql://u@[::1]:5432/p",
            "postgresql:///p?host=/var/run/postgresql",
        ] {
            assert!(on_this_machine(local), "{local}");
        }
        for remote in [
            "postgres://postgres@db.example.com/postgres",
            "postgres://postgres@10.0.0.7:5432/postgres",
            "not a url",
        ] {
            assert!(!on_this_machine(remote), "{remote}");
        }
    }
}
