//! OpenTelemetry traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, `jetflow all` exports its
//! spans over OTLP (`http/protobuf` and `grpc`) to a real receiver, and one order is one trace,
//! from the HTTP request (continuing the caller's `traceparent`) through every event of the
//! saga to its final status, every span's parent among the spans received.

use std::collections::HashSet;
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
    eventually("the order to be confirmed", Duration::from_secs(30), || {
        let (client, url) = (client.clone(), format!("{}/orders/{order_id}", app.url()));
        async move {
            let order: Value = client
                .get(url)
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            (order["status"] == "confirmed")
                .then_some(())
                .ok_or_else(|| format!("{order}"))
        }
    })
    .await;

    let consumed =
        |spans: &[ReceivedSpan], event: &str| spans.iter().any(|s| delivery_of(s, event));
    let trace = eventually(
        "every span of the order at the receiver",
        Duration::from_secs(30),
        || {
            let spans: Vec<ReceivedSpan> = receiver
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == TRACE)
                .collect();
            async move {
                let request = spans.iter().any(|s| s.name == "request");
                let missing: Vec<&str> = EVENTS
                    .iter()
                    .copied()
                    .filter(|e| !consumed(&spans, e))
                    .collect();
                if request && missing.is_empty() {
                    Ok(spans)
                } else {
                    let seen: Vec<String> = spans
                        .iter()
                        .map(|s| format!("{} {:?}", s.name, s.attributes.get("subject")))
                        .collect();
                    Err(format!(
                        "request span: {request}; no delivery span yet for {missing:?}; the trace so far: {seen:?}"
                    ))
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
    // One trace, not fragments: every span's parent arrived too (the caller's is outside).
    let ids: HashSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
    let orphans: Vec<&ReceivedSpan> = trace
        .iter()
        .filter(|s| s.parent_span_id != CALLER_SPAN && !ids.contains(s.parent_span_id.as_str()))
        .collect();
    assert!(
        orphans.is_empty(),
        "spans whose parent never arrived: {orphans:#?}"
    );
    // The events follow each other: each delivery descends from the request.
    let parent_of = |id: &str| {
        trace
            .iter()
            .find(|s| s.span_id == id)
            .map(|s| s.parent_span_id.clone())
    };
    for event in EVENTS {
        let delivery = trace
            .iter()
            .find(|s| delivery_of(s, event))
            .expect("a delivery span");
        let mut at = delivery.span_id.clone();
        let mut hops = 0;
        while at != request.span_id {
            at = parent_of(&at).unwrap_or_else(|| panic!("{event}'s chain breaks at {at}"));
            hops += 1;
            assert!(hops < 64, "{event}'s chain does not reach the request");
        }
    }
}

#[test]
fn one_order_is_one_trace_over_otlp_http() {
    jetflow_integration::run(one_order_is_one_trace("http/protobuf"));
}

#[test]
fn one_order_is_one_trace_over_otlp_grpc() {
    jetflow_integration::run(one_order_is_one_trace("grpc"));
}
