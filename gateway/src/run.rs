//! Running a command: the actix system, the roles, the tools.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::configuration::Settings;
use crate::local_nats::LocalNats;
use crate::startup::{Application, Roles};
use crate::telemetry;

const DEFAULT_PROVIDER_ADDR: &str = "127.0.0.1:8081";

fn runtime() -> actix_rt::SystemRunner {
    // Actors run on the system thread; NATS and database I/O on tokio's worker threads.
    actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("jetflow-io")
            .build()
            .expect("the tokio runtime starts")
    })
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    tracing::error!("{message}");
    eprintln!("jetflow: {message}");
    ExitCode::FAILURE
}

async fn serve(settings: Settings, roles: Roles) -> Result<(), String> {
    let app = Application::build(settings, roles)
        .await
        .map_err(|e| e.to_string())?;
    app.run_until_stopped().await.map_err(|e| e.to_string())
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Probe { url } = &cli.command {
        return match crate::probe::probe(url) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("jetflow probe: {e}");
                ExitCode::FAILURE
            }
        };
    }
    telemetry::init(cli.common.log_format, "info");
    let default_provider: SocketAddr = DEFAULT_PROVIDER_ADDR
        .parse()
        .expect("a valid constant address");
    let common = cli.common;
    let result = match cli.command {
        Command::All(args) => {
            let local = if common.nats_url.is_none() {
                match LocalNats::start(&args.nats_data, args.nats_port, args.nats_sync_always) {
                    Ok(n) => Some(n),
                    Err(e) => return fail(e),
                }
            } else {
                None
            };
            let url = local.as_ref().map(|n| n.url().to_string());
            let settings = match Settings::from_cli(&common, "all", url, args.provider_addr, true) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            // The simulated provider runs here unless PAYMENT_PROVIDER_URL points elsewhere.
            let roles = Roles {
                provider: common.payment_provider_url.is_none(),
                ..Roles::all()
            };
            let result = runtime().block_on(serve(settings, roles));
            drop(local);
            result
        }
        Command::Gateway | Command::Orders | Command::Inventory | Command::Payments => {
            let (name, roles) = match cli.command {
                Command::Gateway => (
                    "gateway",
                    Roles {
                        gateway: true,
                        ..Roles::default()
                    },
                ),
                Command::Orders => (
                    "orders",
                    Roles {
                        orders: true,
                        ..Roles::default()
                    },
                ),
                Command::Inventory => (
                    "inventory",
                    Roles {
                        inventory: true,
                        ..Roles::default()
                    },
                ),
                _ => (
                    "payments",
                    Roles {
                        payments: true,
                        ..Roles::default()
                    },
                ),
            };
            match Settings::from_cli(&common, name, None, default_provider, true) {
                Ok(settings) => runtime().block_on(serve(settings, roles)),
                Err(e) => Err(e),
            }
        }
        Command::PaymentProvider(args) => {
            match Settings::from_cli(&common, "payment-provider", None, args.addr, false) {
                Ok(mut settings) => {
                    settings.http_addr = args.addr;
                    runtime().block_on(serve(
                        settings,
                        Roles {
                            provider: true,
                            ..Roles::default()
                        },
                    ))
                }
                Err(e) => Err(e),
            }
        }
        Command::Dlq(command) => {
            match Settings::from_cli(&common, "dlq", None, default_provider, true) {
                Ok(settings) => runtime().block_on(crate::dlq::run(&settings, command)),
                Err(e) => Err(e),
            }
        }
        Command::Bench(args) => runtime().block_on(crate::bench::run(&common, args)),
        Command::Probe { .. } => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}
