//! OpenTelemetry traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, `jetflow all` exports its
//! spans over OTLP (`http/protobuf` and `grpc`) to a real receiver, and one order is one trace,
//! from the HTTP request (continuing the caller's `traceparent`) through every event of the
//! saga to its final status: each delivery's parents, span by span, arrive and lead to the request.

use std::time::Duration;

use jetflow_integration::otlp::{OtlpReceiver, ReceivedSpan};
use jetflow_integration::{JetflowProcess, NatsServer, eventually};
use serde_json::{Value, json};

/// The caller's trace: the order's spans must join it.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// The events of a confirmed order, each consumed in a delivery span.
const EVENTS: [&str; 4] = [
    "orders.created",
    "inventory.reserved",
    "payments.succeeded",
    "orders.confirmed",
];

/// Whether `span` is a delivery of `event` (in any version: `orders.created.v2`).
fn delivery_of(span: &ReceivedSpan, event: &str) -> bool {
    span.name == "delivery"
        && span.attributes.get("subject").is_some_and(|subject| {
            subject == event
                || subject
                    .strip_prefix(event)
                    .is_some_and(|v| v.starts_with('.'))
        })
}

async fn one_order_is_one_trace(protocol: &'static str) {
    let nats = NatsServer::start();
    let receiver = OtlpReceiver::start();
    let (endpoint, arrived_over) = match protocol {
        "grpc" => (receiver.grpc_endpoint(), "grpc"),
        _ => (receiver.http_endpoint(), "http"),
    };
    let (app, _dir) = JetflowProcess::all(
        &nats.url(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    app.until("/ready").await;
    app.put_stock("sku-trace", 10, 500).await;
    let client = reqwest::Client::new();
    let accepted: Value = client
        .post(format!("{}/orders", app.url()))
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .json(&json!({"customer_id": "c-trace", "items": [{"product_id": "sku-trace", "quantity": 1}]}))
        .send()
        .await
        .expect("POST /orders")
        .json()
        .await
        .expect("a JSON answer");
    let order_id = accepted["order_id"]
        .as_str()
        .expect("an order id")
        .to_string();
    let order = app.wait_finished(&order_id, Duration::from_secs(30)).await;
    assert_eq!(order["status"], "confirmed", "{order}");

    // Spans are exported as they end, in batches: wait until the request span and a delivery
    // span of each event are there, each delivery's chain of parents reaching the request.
    let trace = eventually(
        "the order's trace at the receiver",
        Duration::from_secs(30),
        || {
            let spans: Vec<ReceivedSpan> = receiver
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == TRACE)
                .collect();
            async move {
                match chains(&spans) {
                    Ok(()) => Ok(spans),
                    Err(why) => {
                        let seen: Vec<String> = spans
                            .iter()
                            .map(|s| format!("{} {:?}", s.name, s.attributes.get("subject")))
                            .collect();
                        Err(format!("{why}; the trace so far: {seen:?}"))
                    }
                }
            }
        },
    )
    .await;

    assert!(
        trace
            .iter()
            .all(|s| s.protocol == arrived_over && s.service == "jetflow-all"),
        "every span came over {protocol} from jetflow-all: {trace:#?}"
    );
    let request = trace
        .iter()
        .find(|s| s.name == "request")
        .expect("the request span");
    assert_eq!(
        request.parent_span_id, CALLER_SPAN,
        "the request continues the caller's span"
    );
    assert_eq!(
        request.attributes.get("route").map(String::as_str),
        Some("/orders")
    );
}

/// Whether the spans hold the request and a delivery of each event whose parents lead, span
/// by span, to the request: one trace, not fragments.
fn chains(spans: &[ReceivedSpan]) -> Result<(), String> {
    let request = spans
        .iter()
        .find(|s| s.name == "request")
        .ok_or("no request span yet")?;
    let parent_of = |id: &str| {
        spans
            .iter()
            .find(|s| s.span_id == id)
            .map(|s| s.parent_span_id.as_str())
    };
    for event in EVENTS {
        let delivery = spans
            .iter()
            .find(|s| delivery_of(s, event))
            .ok_or_else(|| format!("no delivery span of {event} yet"))?;
        let mut at = delivery.span_id.as_str();
        let mut hops = 0;
        while at != request.span_id {
            at = parent_of(at).ok_or_else(|| format!("{event}'s chain breaks at {at}"))?;
            hops += 1;
            if hops > 64 {
                return Err(format!("{event}'s chain does not reach the request"));
            }
        }
    }
    Ok(())
}

#[test]
fn one_order_is_one_trace_over_otlp_http() {
    jetflow_integration::run(one_order_is_one_trace("http/protobuf"));
}

#[test]
fn one_order_is_one_trace_over_otlp_grpc() {
    jetflow_integration::run(one_order_is_one_trace("grpc"));
}
