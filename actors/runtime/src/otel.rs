//! OpenTelemetry traces over OTLP.
//!
//! When `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, [`layer`]
//! gives a `tracing` layer that exports every span over OTLP, with the standard variables:
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or `grpc`), `_HEADERS`,
//! `_TIMEOUT`, `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`, and the batch processor's
//! `OTEL_BSP_*`. `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn it off.
//!
//! One order is one trace: the spans of one process nest as `tracing` nests them, and across
//! NATS a delivery's span continues the `traceparent` of its message ([`continue_trace`]),
//! whose parent is the span that emitted it ([`crate::trace::for_message`]).
//!
//! ```no_run
//! use tracing_subscriber::prelude::*;
//! let exported = jetflow_runtime::otel::spans_of(&["my_service"]);
//! let otlp = jetflow_runtime::otel::layer("my-service")
//!     .expect("OTLP settings")
//!     .map(|layer| layer.with_filter(exported));
//! tracing_subscriber::registry()
//!     .with(tracing_subscriber::fmt::layer().with_filter(tracing_subscriber::EnvFilter::from_default_env()))
//!     .with(otlp)
//!     .init();
//! // ... run the service, then flush what is left:
//! jetflow_runtime::otel::shutdown();
//! ```

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;

/// Why traces cannot be exported as configured.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    /// The exporter could not be built from the `OTEL_*` variables.
    #[error("OTEL_EXPORTER_OTLP_ENDPOINT: cannot export traces: {0}")]
    Exporter(String),
    /// The protocol is not one this build speaks.
    #[error("{variable}: {value:?} is not grpc or http/protobuf")]
    Protocol {
        /// The variable that names it.
        variable: &'static str,
        /// What it says.
        value: String,
    },
}

/// The environment, as the checks below read it (tests give them a map instead).
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Checks the protocol the variables ask for (the exporter would quietly use another).
fn check_protocol(env: impl Fn(&str) -> Option<String>) -> Result<(), OtelError> {
    for variable in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        // As the exporter reads them: an empty value is unset, case does not matter.
        match env(variable) {
            Some(value) if value.is_empty() => continue,
            Some(value) => {
                return match value.to_lowercase().as_str() {
                    "grpc" | "http/protobuf" => Ok(()),
                    _ => Err(OtelError::Protocol { variable, value }),
                };
            }
            None => continue,
        }
    }
    Ok(())
}

/// Whether spans are exported (checked before any per-delivery work).
static ON: AtomicBool = AtomicBool::new(false);

/// The provider (flushed by [`shutdown`]) and the runtime the gRPC client runs on.
struct Installed {
    provider: SdkTracerProvider,
    _runtime: tokio::runtime::Runtime,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Whether the environment asks for OTLP traces.
pub fn configured() -> bool {
    configured_by(env)
}

fn configured_by(env: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
    let is = |name: &str, value: &str| env(name).is_some_and(|v| v.eq_ignore_ascii_case(value));
    let off = is("OTEL_SDK_DISABLED", "true") || is("OTEL_TRACES_EXPORTER", "none");
    !off && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Whether spans are being exported.
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The `tracing` layer that exports spans over OTLP, or `None` when the environment does not
/// ask for it. `service` names the process unless `OTEL_SERVICE_NAME` does. Call once.
pub fn layer<S>(
    service: &str,
) -> Result<
    Option<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>>,
    OtelError,
>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    if !configured() {
        return Ok(None);
    }
    check_protocol(env)?;
    // An https:// endpoint needs a TLS provider; the process may not have chosen one yet.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The gRPC client needs a Tokio runtime of its own, alive as long as the process.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp")
        .enable_all()
        .build()
        .map_err(|e| OtelError::Exporter(e.to_string()))?;
    let exporter = {
        let _in_runtime = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .build()
            .map_err(|e| OtelError::Exporter(e.to_string()))?
    };
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_string());
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("jetflow");
    let installed = Installed {
        provider,
        _runtime: runtime,
    };
    if INSTALLED.set(installed).is_err() {
        return Err(OtelError::Exporter("traces are already exported".into()));
    }
    ON.store(true, Ordering::Relaxed);
    Ok(Some(tracing_opentelemetry::layer().with_tracer(tracer)))
}

/// The spans worth exporting: those of the runtime and of the service's own `crates`, at
/// `info` and above (a request, a delivery, a handler). Give the [`layer`] this filter, so
/// that `RUST_LOG` decides what is logged but not what is exported, and the exporter's own
/// HTTP and gRPC spans are never exported.
pub fn spans_of(crates: &[&str]) -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new().with_targets(
        std::iter::once("jetflow_runtime")
            .chain(crates.iter().copied())
            .map(|name| (name.to_string(), tracing::Level::INFO)),
    )
}

/// Exports what is left (within 5 s) and stops exporting. Call once, when the process stops.
pub fn shutdown() {
    if let Some(installed) = INSTALLED.get() {
        ON.store(false, Ordering::Relaxed);
        if let Err(e) = installed
            .provider
            .shutdown_with_timeout(Duration::from_secs(5))
        {
            tracing::warn!(error = %e, "the last spans were not exported");
        }
    }
}

/// Makes `span` a child of the span a W3C `traceparent` names (a message's, a request's), so
/// the spans of every process join one trace. Nothing happens when spans are not exported or
/// the header is not valid.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if !enabled() {
        return;
    }
    let Some(remote) = traceparent.and_then(span_context) else {
        return;
    };
    let cx = opentelemetry::Context::new().with_remote_span_context(remote);
    let _ = span.set_parent(cx);
}

/// The `traceparent` of the span that is current, when spans are exported and there is one.
pub fn current_traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The span context a valid `traceparent` names.
fn span_context(tp: &str) -> Option<SpanContext> {
    if !crate::trace::is_valid(tp) {
        return None;
    }
    let mut parts = tp.split('-').skip(1);
    let trace = TraceId::from_hex(parts.next()?).ok()?;
    let span = SpanId::from_hex(parts.next()?).ok()?;
    let flags = u8::from_str_radix(parts.next()?, 16).ok()?;
    Some(SpanContext::new(
        trace,
        span,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_names_its_span_context() {
        let sc =
            span_context("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid");
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        assert!(span_context("00-xyz-00f067aa0ba902b7-01").is_none());
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn the_standard_variables_turn_it_on_and_off() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert!(!configured_by(vars(&[])));
        assert!(configured_by(vars(&[endpoint])));
        assert!(configured_by(vars(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://127.0.0.1:4318/v1/traces"
        )])));
        assert!(!configured_by(vars(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            " "
        )])));
        assert!(!configured_by(vars(&[
            endpoint,
            ("OTEL_SDK_DISABLED", "TRUE")
        ])));
        assert!(!configured_by(vars(&[
            endpoint,
            ("OTEL_TRACES_EXPORTER", "none")
        ])));
        assert!(configured_by(vars(&[
            endpoint,
            ("OTEL_SDK_DISABLED", "false")
        ])));
    }

    #[test]
    fn only_the_protocols_this_build_speaks_are_taken() {
        assert!(check_protocol(vars(&[])).is_ok());
        assert!(check_protocol(vars(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "")])).is_ok());
        assert!(check_protocol(vars(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "GRPC")])).is_ok());
        // The exporter would ignore a value with spaces and use another protocol.
        assert!(check_protocol(vars(&[("OTEL_EXPORTER_OTLP_PROTOCOL", " grpc")])).is_err());
        assert!(check_protocol(vars(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])).is_ok());
        assert!(check_protocol(vars(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])).is_ok());
        let e = check_protocol(vars(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]))
            .expect_err("no JSON exporter in this build");
        assert!(
            e.to_string().starts_with("OTEL_EXPORTER_OTLP_PROTOCOL: "),
            "{e}"
        );
        // The traces' own variable wins over the general one.
        let e = check_protocol(vars(&[
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]))
        .expect_err("thrift");
        assert!(
            e.to_string()
                .starts_with("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
            "{e}"
        );
    }
}
