//! Logging and metrics set-up.
//!
//! Logging: `tracing` to stderr (stdout stays clean for command output such as
//! `jetflow dlq list --json`; containers collect both), JSON or human-readable, filtered by
//! `RUST_LOG`.
//!
//! JSON lines carry the fields of every enclosing span (a delivery's correlation id, an HTTP
//! request's id), so one `jq` over the logs follows one order through every role. Panics
//! are logged through tracing too, so they reach the same place as everything else.
//!
//! Traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, every span is also exported over OTLP
//! ([`jetflow_runtime::otel`]), one trace per order across every role.

use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// The crates of the reference system whose spans are exported (with the runtime's).
const SPAN_CRATES: &[&str] = &[
    "jetflow_domain",
    "jetflow_gateway",
    "jetflow_provider",
    "jetflow_app",
];

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for machines).
    Json,
    /// Colourless human-readable lines.
    Pretty,
}

/// Installs the global subscriber (once; later calls are ignored) and the panic hook; with
/// the `OTEL_*` variables set, spans are exported over OTLP as `service` (unless
/// `OTEL_SERVICE_NAME` names it).
pub fn init(
    format: LogFormat,
    default_filter: &str,
    service: &str,
) -> Result<(), jetflow_runtime::otel::OtelError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_span_events(FmtSpan::NONE)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // RUST_LOG decides what is logged, not what is exported: the spans of the jetflow crates
    // are exported whatever it says, and never the exporter's own HTTP and gRPC spans.
    let otlp = jetflow_runtime::otel::layer(service)?
        .map(|layer| layer.with_filter(jetflow_runtime::otel::spans_of(SPAN_CRATES)));
    let result = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(otlp)
        .try_init();
    if result.is_ok() {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            tracing::error!(panic = %jetflow_runtime::supervisor::panic_message(info.payload()), %location, "panic");
            if std::env::var_os("JETFLOW_PANIC_BACKTRACE").is_some() {
                default_hook(info);
            }
        }));
    }
    Ok(())
}

/// Registers every metric family at start, each known series at 0 (so the first dead letter
/// or publish error shows as an increase), and the process collector (`process_*`: CPU,
/// memory, open files). Idempotent.
pub fn register_metrics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        jetflow_gateway::http_metrics::init();
        jetflow_domain::metrics::init();
        jetflow_runtime::metrics::init_subjects(&jetflow_domain::topology::subjects());
        let _ = jetflow_runtime::metrics::render();
        #[cfg(target_os = "linux")]
        {
            let collector = prometheus::process_collector::ProcessCollector::for_self();
            if let Err(e) = prometheus::register(Box::new(collector)) {
                tracing::debug!(error = %e, "process collector not registered");
            }
        }
    });
}
