//! Running a command: parse, check the settings, run, and exit with a code that says how it
//! went.
//!
//! | exit code | meaning |
//! |---|---|
//! | 0 | done, or stopped cleanly by SIGTERM/SIGINT within `JETFLOW_SHUTDOWN_TIMEOUT` |
//! | 1 | failed while running (a dependency unreachable at start, a port taken, a stop that did not finish in time) |
//! | 2 | a setting cannot work (one line on stderr names it) |
//! | 130 / 143 | a second SIGINT / SIGTERM during the stop: exited at once |

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command};
use crate::settings::{ConfigError, Settings, Uses};
use crate::startup::{Application, Roles, StartupError, StopReport};
use crate::telemetry;
use jetflow_runtime::local_nats::LocalNats;

/// How a command failed.
enum Failure {
    /// A bad setting: exit 2.
    Config(ConfigError),
    /// Anything else: exit 1.
    Other(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

impl From<StartupError> for Failure {
    fn from(e: StartupError) -> Self {
        match e {
            StartupError::Config(c) => Failure::Config(c),
            other => Failure::Other(other.into()),
        }
    }
}

fn runtime() -> std::io::Result<actix_rt::SystemRunner> {
    // Actors run on the system thread; NATS, database I/O and the consumers' handlers on
    // tokio's worker threads (`jetflow all` gives its consumers a runtime of their own:
    // `jetflow_runtime::priority`).
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("jetflow-io")
        .build()?;
    Ok(actix_rt::System::with_tokio_rt(move || tokio))
}

/// Resolves at the first SIGTERM or SIGINT, and from then on exits the process at once on a
/// second one.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals; stop with SIGKILL");
        return futures::future::pending().await;
    };
    let first = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = first, "stopping (a second signal exits at once)");
    tokio::spawn(async move {
        let code = tokio::select! {
            _ = term.recv() => 143,
            _ = int.recv() => 130,
        };
        eprintln!("jetflow: second signal; exiting at once");
        std::process::exit(code);
    });
}

async fn serve(settings: Settings, roles: Roles) -> Result<StopReport, Failure> {
    let app = Application::build(settings, roles).await?;
    Ok(app.run(shutdown_signal()).await)
}

fn stopped(report: StopReport) -> ExitCode {
    if let Some((component, why)) = &report.failed {
        eprintln!("jetflow: stopped because {component} gave up: {why}");
        return ExitCode::FAILURE;
    }
    if report.clean {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "jetflow: the stop took longer than JETFLOW_SHUTDOWN_TIMEOUT ({:.1}s); unfinished deliveries are redelivered",
            report.took.as_secs_f64()
        );
        ExitCode::FAILURE
    }
}

fn run(cli: Cli) -> Result<ExitCode, Failure> {
    crate::settings::refuse_removed(
        |name| std::env::var_os(name).is_some(),
        matches!(cli.command, Command::All(_)),
    )?;
    let rt = runtime().context("cannot start the runtime")?;
    match cli.command {
        Command::All(args) => {
            let mut settings = Settings::for_all(&args)?;
            // The simulated provider runs here unless PAYMENT_PROVIDER_URL points elsewhere.
            let roles = Roles {
                provider: settings.provider.url.is_none(),
                ..Roles::all()
            };
            // Check everything but the NATS URL before starting a local server for it.
            settings.validate(Uses {
                nats: settings.nats.url.is_some(),
                ..roles.uses()
            })?;
            let local = match &settings.nats.url {
                Some(_) => None,
                None => {
                    let data = settings.local_nats_data();
                    let before = std::path::Path::new("./data/nats/jetstream");
                    if data != std::path::Path::new("./data/nats") && before.is_dir() {
                        tracing::warn!(
                            data = %data.display(),
                            "./data/nats holds a local nats-server's streams of an earlier version; this one keeps them beside the SQLite file: move ./data/nats there to keep events not yet handled"
                        );
                    }
                    let nats = LocalNats::start(&data, crate::settings::LOCAL_NATS_PORT, false)
                        .context("cannot start the local nats-server")?;
                    settings.nats.url = Some(nats.url().to_string());
                    Some(nats)
                }
            };
            let report = rt.block_on(serve(settings, roles));
            drop(local);
            Ok(stopped(report?))
        }
        Command::Gateway(args) => {
            let settings = Settings::for_gateway(&args)?;
            let roles = Roles {
                gateway: true,
                ..Roles::default()
            };
            Ok(stopped(rt.block_on(serve(settings, roles))?))
        }
        Command::Orders(args) => {
            let settings = Settings::for_orders(&args)?;
            let roles = Roles {
                orders: true,
                ..Roles::default()
            };
            Ok(stopped(rt.block_on(serve(settings, roles))?))
        }
        Command::Inventory(args) => {
            let settings = Settings::for_inventory(&args)?;
            let roles = Roles {
                inventory: true,
                ..Roles::default()
            };
            Ok(stopped(rt.block_on(serve(settings, roles))?))
        }
        Command::Payments(args) => {
            let settings = Settings::for_payments(&args)?;
            let roles = Roles {
                payments: true,
                ..Roles::default()
            };
            Ok(stopped(rt.block_on(serve(settings, roles))?))
        }
        Command::PaymentProvider(args) => {
            let settings = Settings::for_provider(&args);
            let roles = Roles {
                provider: true,
                ..Roles::default()
            };
            Ok(stopped(rt.block_on(serve(settings, roles))?))
        }
        Command::Dlq(command) => {
            let settings = Settings::for_tool(command.nats())?;
            settings.validate(Uses {
                nats: true,
                ..Uses::default()
            })?;
            Ok(rt.block_on(crate::dlq::run(&settings, command))?)
        }
        Command::Bench(args) => {
            rt.block_on(jetflow_bench::command::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Probe { .. } => Ok(ExitCode::SUCCESS),
    }
}

/// The environment variable of the argument a clap error is about, if it has one.
fn env_of(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let ContextValue::String(arg) = e.get(ContextKind::InvalidArg)? else {
        return None;
    };
    let long = arg
        .split_whitespace()
        .next()?
        .trim_start_matches("--")
        .to_string();
    fn find(cmd: &clap::Command, long: &str) -> Option<String> {
        cmd.get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(|a| a.get_env())
            .map(|env| env.to_string_lossy().into_owned())
            .or_else(|| cmd.get_subcommands().find_map(|c| find(c, long)))
    }
    find(&Cli::command(), &long)
}

/// Prints a command-line error as one line (naming the environment variable as well as the
/// flag) and returns exit code 2; help and version go to stdout with 0.
fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.exit_code() == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        };
    }
    let text = e.render().to_string();
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid command line")
        .trim_start_matches("error: ");
    match env_of(&e) {
        Some(env) => eprintln!("jetflow: {env}: {line}"),
        None => eprintln!("jetflow: {line} (see jetflow --help)"),
    }
    ExitCode::from(2)
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    jetflow_domain::payment_client::install_crypto_provider();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    if let Command::Probe { url } = &cli.command {
        return match crate::probe::probe(url) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("jetflow probe: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let service = match &cli.command {
        Command::All(_) => "jetflow-all",
        Command::Gateway(_) => "jetflow-gateway",
        Command::Orders(_) => "jetflow-orders",
        Command::Inventory(_) => "jetflow-inventory",
        Command::Payments(_) => "jetflow-payments",
        Command::PaymentProvider(_) => "jetflow-payment-provider",
        Command::Dlq(_) | Command::Bench(_) | Command::Probe { .. } => "jetflow",
    };
    if let Err(e) = telemetry::init(cli.log_format, "info", service) {
        eprintln!("jetflow: {e}");
        return ExitCode::from(2);
    }
    let outcome = run(cli);
    jetflow_runtime::otel::shutdown();
    match outcome {
        Ok(code) => code,
        Err(Failure::Config(e)) => {
            eprintln!("jetflow: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Other(e)) => {
            eprintln!("jetflow: {e:#}");
            ExitCode::FAILURE
        }
    }
}
